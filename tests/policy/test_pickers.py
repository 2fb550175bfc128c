"""The pickers' rules at their boundaries and every parameter of ``cache-aware``.

``cache-aware`` follows vllm-router's published algorithm: the least loaded when
``max − min > balanceAbsThreshold`` and ``max > balanceRelThreshold × min``; otherwise the
endpoint whose radix tree matches more than ``cacheThreshold`` of the prompt; otherwise the
smallest tree; the tree is pruned to ``maxTreeSize`` characters per endpoint on the first
routed request at least ``evictionIntervalS`` after the previous pruning.
"""

from __future__ import annotations

from typing import Any

import pytest
from policy_fakes import FakeClock, ep, req, state

from modelfleet.policy import params as P
from modelfleet.policy.pickers import CacheAwarePicker, MaxScorePicker, WeightedRandomPicker
from modelfleet.policy.types import Decision, EndpointId, EndpointView, RequestView

pytestmark = pytest.mark.unit

SEEDS = range(60)


def picks(picker: Any, totals: list[float]) -> set[int]:
    eps = [ep(f"e{i}") for i in range(len(totals))]
    return {picker.pick(state(req(), seed=s), eps, totals) for s in SEEDS}


@pytest.mark.parametrize(
    ("totals", "expected"),
    [
        pytest.param([1.0, 1.0 - 1.5e-12], {0}, id="below-the-tolerance-is-no-tie"),
        pytest.param([1.0, 1.0 - 1e-12], {0, 1}, id="at-the-tolerance-is-a-tie"),
        # the tolerance is relative above 1: 1e-12 x 1000
        pytest.param([1000.0, 1000.0 - 5e-10], {0, 1}, id="relative-tolerance"),
        pytest.param([0.2, 0.9, 0.9], {1, 2}, id="two-way-tie"),
    ],
)
def test_max_score_ties(totals: list[float], expected: set[int]) -> None:
    assert picks(MaxScorePicker(), totals) == expected


@pytest.mark.parametrize(
    ("totals", "expected"),
    [
        pytest.param([0.0, 0.0, 0.0], {0, 1, 2}, id="all-zero-is-uniform"),
        pytest.param([0.0, 0.6], {1}, id="total-below-one"),
        pytest.param([0.3, 0.0, 0.3], {0, 2}, id="zero-weight-in-the-middle"),
    ],
)
def test_weighted_random(totals: list[float], expected: set[int]) -> None:
    assert picks(WeightedRandomPicker(), totals) == expected


def test_weighted_random_follows_the_weights() -> None:
    p = WeightedRandomPicker()
    eps = [ep("a"), ep("b")]
    n = sum(p.pick(state(req(), seed=s), eps, [1.0, 3.0]) for s in range(400))
    # 3/4 of 400 pick "b" (index 1): 300, within three binomial sds (8.7 each)
    assert 274 <= n <= 326


def routed(pk: CacheAwarePicker, r: RequestView, endpoint: str) -> None:
    pk.on_routed(r, Decision(EndpointId(endpoint), r.id, (), {}, {}, (), {}, {}, {}))


def choose(pk: CacheAwarePicker, r: RequestView, eps: list[EndpointView]) -> str:
    return str(eps[pk.pick(state(r), eps, [0.0] * len(eps))].id)


TEXT = "0123456789"  # the cached prompt on "a"


@pytest.mark.parametrize(
    ("loads", "winner"),
    [
        # abs 4, rel 2: a (cached) at 6, b at 2: 6 − 2 > 4 is false at the boundary -> cache
        pytest.param((6, 2), "a", id="abs-gap-at-threshold-follows-cache"),
        pytest.param((7, 2), "b", id="abs-and-rel-exceeded-balances"),
        # 10 − 5 > 4 but 10 > 2·5 is false -> cache
        pytest.param((10, 5), "a", id="rel-at-threshold-follows-cache"),
        pytest.param((11, 5), "b", id="both-exceeded-balances"),
        # 3 + 2 > 4 but 3 − 2 > 4 is false -> cache
        pytest.param((3, 2), "a", id="small-gap-follows-cache"),
        # gap 5 > 4, but 30 > 2·25 is false -> cache
        pytest.param((30, 25), "a", id="large-gap-small-ratio-follows-cache"),
    ],
)
def test_cache_aware_balance_thresholds(loads: tuple[int, int], winner: str) -> None:
    params = P.CacheAwareParams(balance_abs_threshold=4, balance_rel_threshold=2.0)
    pk = CacheAwarePicker(params, FakeClock())
    routed(pk, req("0", text=TEXT), "a")
    eps = [ep(n, inflight_requests=load) for n, load in zip("ab", loads, strict=True)]
    assert choose(pk, req("1", text=TEXT), eps) == winner


@pytest.mark.parametrize(
    ("prompt", "winner"),
    [
        pytest.param(TEXT, "a", id="full-match"),
        # 5 of 10 characters match: exactly the 0.5 threshold is not above it -> smallest tree
        pytest.param("01234abcde", "b", id="match-at-threshold-goes-to-smallest-tree"),
        pytest.param("012345abcd", "a", id="match-above-threshold-follows-cache"),
        pytest.param("0abcdefghi", "b", id="low-match-goes-to-smallest-tree"),
    ],
)
def test_cache_aware_cache_threshold(prompt: str, winner: str) -> None:
    pk = CacheAwarePicker(P.CacheAwareParams(cache_threshold=0.5), FakeClock())
    routed(pk, req("0", text=TEXT), "a")
    assert choose(pk, req("1", text=prompt), [ep("a"), ep("b")]) == winner


def test_cache_aware_ignores_a_tenant_that_is_not_a_candidate() -> None:
    pk = CacheAwarePicker(P.CacheAwareParams(), FakeClock())
    routed(pk, req("0", text=TEXT), "gone")
    routed(pk, req("1", text="x"), "b")
    # "gone" holds the prompt but is not a candidate: the smallest tree among a, b is a
    assert choose(pk, req("2", text=TEXT), [ep("b"), ep("a")]) == "a"


def test_cache_aware_token_prompts_follow_their_endpoint() -> None:
    pk = CacheAwarePicker(P.CacheAwareParams(), FakeClock())
    routed(pk, req("0", token_ids=list(range(50))), "b")
    assert choose(pk, req("1", token_ids=list(range(60))), [ep("a"), ep("b")]) == "b"


def test_cache_aware_a_request_without_prompt_leaves_the_tree_alone() -> None:
    pk = CacheAwarePicker(P.CacheAwareParams(), FakeClock())
    routed(pk, req("0"), "a")
    assert pk.tree.size.get(EndpointId("a"), 0) == 0
    assert choose(pk, req("1"), [ep("a"), ep("b")]) == "a"  # equal (empty) trees: first


def test_cache_aware_smallest_tree_counts_absent_endpoints_as_empty() -> None:
    pk = CacheAwarePicker(P.CacheAwareParams(), FakeClock())
    routed(pk, req("0", text="x"), "a")
    assert choose(pk, req("1", text="zzz"), [ep("a"), ep("b")]) == "b"


def test_cache_aware_evicts_on_its_interval() -> None:
    clock = FakeClock()
    pk = CacheAwarePicker(P.CacheAwareParams(max_tree_size=10, eviction_interval_s=10.0), clock)
    a = EndpointId("a")
    routed(pk, req("0", text="A" * 8), "a")  # t=0
    clock.now = 5.0
    routed(pk, req("1", text="B" * 8), "a")  # t=5: 16 characters, no pruning yet
    assert pk.tree.size[a] == 16
    clock.now = 10.0
    routed(pk, req("2", text="C" * 2), "a")  # t=10: exactly the interval: prune to <= 10
    # the least recently used leaf ("A"*8, t=0) goes first: 8 + 2 left
    assert pk.tree.size[a] == 10
    assert pk.tree.match("B" * 8, {a})[0] == 8 and pk.tree.match("A" * 8, {a})[0] == 0
    clock.now = 15.0
    routed(pk, req("3", text="D" * 8), "a")  # 5 s after the pruning: none
    assert pk.tree.size[a] == 18
    clock.now = 20.0
    routed(pk, req("4", text="E"), "a")
    # pruned again: "B"*8 (t=5) and "C"*2 (t=10) go, "D"*8 (t=15) and "E" (t=20) stay
    assert pk.tree.size[a] == 9
