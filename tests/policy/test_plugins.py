"""Every built-in filter, scorer and picker: empty input, one endpoint, all equal, behaviour."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from policy_fakes import PERF, FakeClock, ep, req, state, tokens

from modelfleet.policy import params as P
from modelfleet.policy.filters import (
    BoundedLoadFilter,
    HealthyFilter,
    ShortlistFilter,
    SloFeasibleFilter,
)
from modelfleet.policy.framework import CycleState
from modelfleet.policy.hashing import ApproxAutoHasher
from modelfleet.policy.pickers import (
    CacheAwarePicker,
    MaxScorePicker,
    PowerOfTwoPicker,
    RandomTopKPicker,
    RoundRobinPicker,
    WeightedRandomPicker,
)
from modelfleet.policy.prefix import ApproxPrefixIndex
from modelfleet.policy.scorers import (
    ColdSpreadScorer,
    KvUsageScorer,
    PrefixCacheScorer,
    QueueScorer,
    SessionAffinityScorer,
    SloHeadroomScorer,
)
from modelfleet.policy.types import Decision, EndpointId, RequestId, RequestView

pytestmark = pytest.mark.unit

Factory = Callable[[], Any]

SCORERS: dict[str, Factory] = {
    "prefix-cache": lambda: PrefixCacheScorer(P.PrefixCacheParams()),
    "queue": lambda: QueueScorer(P.QueueParams()),
    "kv-usage": lambda: KvUsageScorer(),
    "slo-headroom": lambda: SloHeadroomScorer(P.SloHeadroomParams()),
    "session-affinity": lambda: SessionAffinityScorer(P.SessionAffinityParams()),
    "cold-spread": lambda: ColdSpreadScorer(P.ColdSpreadParams()),
}
FILTERS: dict[str, Factory] = {
    "healthy": lambda: HealthyFilter(),
    "bounded-load": lambda: BoundedLoadFilter(P.BoundedLoadParams()),
    "slo-feasible": lambda: SloFeasibleFilter(P.SloFeasibleParams()),
    "shortlist": lambda: ShortlistFilter(P.ShortlistParams(k=2)),
}
PICKERS: dict[str, Factory] = {
    "max-score": lambda: MaxScorePicker(),
    "random-top-k": lambda: RandomTopKPicker(P.RandomTopKParams()),
    "weighted-random": lambda: WeightedRandomPicker(),
    "round-robin": lambda: RoundRobinPicker(),
    "power-of-two": lambda: PowerOfTwoPicker(P.PowerOfTwoParams()),
    "cache-aware": lambda: CacheAwarePicker(P.CacheAwareParams(), FakeClock()),
}


def st(**kw: Any) -> CycleState:
    index = ApproxPrefixIndex(ApproxAutoHasher(block_size=16))
    return state(req(prompt_tokens=64, token_ids=tokens(64), session_id="s1", **kw), index)


# -- the three cases every plugin must cover --------------------------------------------


@pytest.mark.parametrize("name", list(SCORERS), ids=list(SCORERS))
def test_scorer_empty_input(name: str) -> None:
    assert list(SCORERS[name]().score(st(), [])) == []


# one idle endpoint: no prefix hit (0), otherwise the best there is (1)
ONE_ENDPOINT = {
    "prefix-cache": 0.0,
    "queue": 1.0,
    "kv-usage": 1.0,
    "slo-headroom": 1.0,
    "session-affinity": 1.0,
    "cold-spread": 1.0,
}


@pytest.mark.parametrize("name", list(SCORERS), ids=list(SCORERS))
def test_scorer_one_endpoint(name: str) -> None:
    assert list(SCORERS[name]().score(st(), [ep("a", perf=PERF)])) == [ONE_ENDPOINT[name]]


@pytest.mark.parametrize("name", list(SCORERS), ids=list(SCORERS))
def test_scorer_all_equal_gives_equal_scores(name: str) -> None:
    eps = [ep(n, perf=PERF, running=3, waiting=1, kv_cache_usage=0.4) for n in "abcd"]
    out = list(SCORERS[name]().score(st(), eps))
    if name == "session-affinity":  # exactly one owner of the session, by design
        assert sorted(out) == [0.0, 0.0, 0.0, 1.0]
    else:
        assert len(set(out)) == 1


@pytest.mark.parametrize("name", list(FILTERS), ids=list(FILTERS))
def test_filter_empty_one_all_equal(name: str) -> None:
    f = FILTERS[name]()
    assert f.filter(st(), []) == []
    one = [ep("a", perf=PERF)]
    assert f.filter(st(), one) == one
    eps = [ep(n, perf=PERF, inflight_requests=2) for n in "ab"]
    assert f.filter(st(), eps) == eps


# what a picker chooses among four equal candidates over many seeds: the random ones spread
# over all of them (random-top-k over its k=2 first), the stateful ones take the first
ALL_EQUAL_PICKS = {
    "max-score": {0, 1, 2, 3},
    "random-top-k": {0, 1},
    "weighted-random": {0, 1, 2, 3},
    "round-robin": {0},
    "power-of-two": {0, 1, 2, 3},
    "cache-aware": {0},
}


@pytest.mark.parametrize("name", list(PICKERS), ids=list(PICKERS))
def test_picker_one_and_all_equal(name: str) -> None:
    p = PICKERS[name]()
    assert p.pick(st(), [ep("a")], [0.3]) == 0
    eps = [ep(n) for n in "abcd"]
    picks = {p.pick(state(req(), seed=seed), eps, [0.5] * 4) for seed in range(60)}
    assert picks == ALL_EQUAL_PICKS[name]


# -- behaviour ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "field", "values", "expected"),
    [
        pytest.param("waiting", "waiting", [0, 5, 10], [1.0, 0.5, 0.0], id="waiting"),
        pytest.param(
            "inflight-requests", "inflight_requests", [4, 2, 2], [0.0, 1.0, 1.0], id="inflight"
        ),
        pytest.param(
            "inflight-tokens", "inflight_tokens", [100, 300, 200], [1.0, 0.0, 0.5], id="tokens"
        ),
    ],
)
def test_queue_scorer_min_max(
    metric: str, field: str, values: list[int], expected: list[float]
) -> None:
    eps = [ep(f"e{i}", **{field: v}) for i, v in enumerate(values)]
    assert QueueScorer(P.QueueParams(metric=metric)).score(st(), eps) == expected  # type: ignore[arg-type]


def test_kv_usage_scorer() -> None:
    eps = [ep("a", kv_cache_usage=0.9), ep("b", kv_cache_usage=0.1)]
    assert KvUsageScorer().score(st(), eps) == pytest.approx([0.1, 0.9])


def test_prefix_cache_scorer_prefers_longest_hit() -> None:
    s = st()
    assert s.prefix_index is not None
    chain = s.request.chain(s.prefix_index.hasher).hashes
    s.prefix_index.insert(EndpointId("a"), chain[:1])  # type: ignore[attr-defined]
    s.prefix_index.insert(EndpointId("b"), chain)  # type: ignore[attr-defined]
    out = PrefixCacheScorer(P.PrefixCacheParams(length_weight=0.0)).score(
        s, [ep("a"), ep("b"), ep("c")]
    )
    assert out == [0.25, 1.0, 0.0]


def test_slo_headroom_prefers_faster_accelerator_and_cache() -> None:
    slow = dataclasses.replace(PERF, prefill_s_per_token=4e-4)
    r = req(prompt_tokens=4000, ttft_slo_s=1.0, tpot_slo_s=0.05)
    s = state(r)
    out = SloHeadroomScorer(P.SloHeadroomParams()).score(
        s,
        [
            ep("fast", perf=PERF),
            ep("slow", perf=slow),
            ep("busy", perf=PERF, inflight_prefill_tokens=20000),
        ],
    )
    assert out[0] > out[1] and out[0] > out[2]
    # fast: TTFT 0.41 s -> 0.5*(0.5+0.5*0.59)+0.5*1 = 0.8975; TPOT 0.011 s -> 0.945
    assert out[0] == pytest.approx(0.75 * 0.8975 + 0.25 * 0.945)


# TPOT = decode_base + per_seq·(running + 1): fast PERF 0.01 + 2·1e-3 = 0.012 s, slow decoder
# 0.01 + 2·3e-3 = 0.016 s; both well within the 0.05 s target.
SLOW_DECODE = dataclasses.replace(PERF, decode_s_per_seq=3e-3)


def _headroom_pair(**kw: float) -> tuple[float, float]:
    """TPOT-only scores (tpot_weight 1, relative term only) of a fast and a slow decoder."""
    r = req(prompt_tokens=1000, ttft_slo_s=1.0, tpot_slo_s=0.05)
    sc = SloHeadroomScorer(P.SloHeadroomParams(tpot_weight=1.0, relative_weight=1.0, **kw))
    out = sc.score(
        state(r), [ep("fast", perf=PERF, running=1), ep("slow", perf=SLOW_DECODE, running=1)]
    )
    return out[0], out[1]


@pytest.mark.parametrize(
    ("floor", "expected_slow"),
    [
        # plain best/pred: 0.012 / 0.016
        pytest.param(0.0, 0.012 / 0.016, id="no-floor-is-best-over-pred"),
        # F = 2·0.05 = 0.1 s: (0.012 + 0.1) / (0.016 + 0.1)
        pytest.param(2.0, 0.112 / 0.116, id="floor-2-nearly-ties-within-target"),
        pytest.param(10.0, 0.512 / 0.516, id="large-floor-flattens-further"),
    ],
)
def test_slo_headroom_tpot_floor_flattens_differences_below_target(
    floor: float, expected_slow: float
) -> None:
    fast, slow = _headroom_pair(tpot_floor=floor)
    assert fast == pytest.approx(1.0)
    assert slow == pytest.approx(expected_slow)
    assert slow < fast, "a floor never reverses the order"


@pytest.mark.parametrize(
    ("kw", "changed"),
    [
        pytest.param({"ttft_floor": 1.0}, False, id="ttft-floor-leaves-tpot-term"),
        pytest.param({"tpot_floor": 1.0}, True, id="tpot-floor-moves-tpot-term"),
    ],
)
def test_slo_headroom_floors_are_independent(kw: dict[str, float], changed: bool) -> None:
    assert (_headroom_pair(**kw) != _headroom_pair()) is changed


@pytest.mark.parametrize(
    ("ttft_slo", "floor", "expected_slow"),
    [
        # TTFT: fast 0.01 + 1000·1e-4 = 0.11 s, slow (4e-4/token) 0.41 s
        pytest.param(None, 1.0, 0.11 / 0.41, id="no-target-floor-ignored"),
        pytest.param(1.0, 0.0, 0.11 / 0.41, id="target-no-floor"),
        pytest.param(1.0, 1.0, 1.11 / 1.41, id="target-floor-1"),
    ],
)
def test_slo_headroom_ttft_floor_needs_a_target(
    ttft_slo: float | None, floor: float, expected_slow: float
) -> None:
    slow_prefill = dataclasses.replace(PERF, prefill_s_per_token=4e-4)
    r = req(prompt_tokens=1000, ttft_slo_s=ttft_slo)
    sc = SloHeadroomScorer(
        P.SloHeadroomParams(tpot_weight=0.0, relative_weight=1.0, ttft_floor=floor)
    )
    fast, slow = sc.score(state(r), [ep("fast", perf=PERF), ep("slow", perf=slow_prefill)])
    assert fast == pytest.approx(1.0)
    assert slow == pytest.approx(expected_slow)


def test_slo_headroom_without_perf_is_neutral() -> None:
    out = SloHeadroomScorer(P.SloHeadroomParams()).score(st(), [ep("a"), ep("b", perf=PERF)])
    assert out[0] == 0.5


def test_session_affinity_is_sticky_then_spills_when_overloaded() -> None:
    sc = SessionAffinityScorer(P.SessionAffinityParams(max_load_factor=1.25))
    eps = [ep(n) for n in "abcd"]
    owner = sc.score(st(), eps).index(1.0)
    # stable across calls and candidate order
    assert sc.score(st(), list(reversed(eps))).index(1.0) == 3 - owner
    loaded = [ep(e.id, inflight_requests=10 if i == owner else 0) for i, e in enumerate(eps)]
    assert sc.score(st(), loaded).index(1.0) != owner


def test_session_affinity_remembers_where_the_session_went() -> None:
    sc = SessionAffinityScorer(P.SessionAffinityParams(max_sessions=1))
    eps = [ep(n) for n in "abcd"]
    owner = sc.score(st(), eps).index(1.0)
    other = eps[(owner + 1) % 4].id
    sc.on_routed(st().request, Decision(other, RequestId("r"), (), {}, {}, (), {}, {}, {}))
    assert eps[sc.score(st(), eps).index(1.0)].id == other
    # a migration from another endpoint than the session's is not the session moving
    dst = eps[(owner + 2) % 4].id
    sc.on_migrated(st().request, dst, eps[(owner + 3) % 4].id, 5)
    assert eps[sc.score(st(), eps).index(1.0)].id == other
    sc.on_migrated(st().request, other, dst, 5)  # dst is neither the owner nor `other`
    assert eps[sc.score(st(), eps).index(1.0)].id == dst
    sc.on_migrated(req(), dst, other, 5)  # a request without a session moves nothing
    assert eps[sc.score(st(), eps).index(1.0)].id == dst
    # LRU bound of one session: a second session evicts the first
    s2 = state(req(session_id="s2"))
    sc.on_routed(s2.request, Decision(dst, RequestId("q"), (), {}, {}, (), {}, {}, {}))
    assert sc.score(st(), eps).index(1.0) == owner


def test_session_affinity_without_key_is_neutral() -> None:
    sc = SessionAffinityScorer(P.SessionAffinityParams())
    s = state(req())
    assert sc.score(s, [ep("a"), ep("b")]) == [0.0, 0.0]


def test_session_affinity_reads_configured_header() -> None:
    sc = SessionAffinityScorer(P.SessionAffinityParams(header="x-user"))
    s = state(req(headers={"x-user": "u1"}))
    assert sorted(sc.score(s, [ep("a"), ep("b")])) == [0.0, 1.0]


def test_cold_spread_rotates_cold_requests() -> None:
    sc = ColdSpreadScorer(P.ColdSpreadParams())
    eps = [ep("a"), ep("b"), ep("c")]
    cold = Decision(EndpointId("a"), RequestId("r"), (), {}, {}, (), {}, {}, {}, 0, 0)
    sc.on_routed(req(), cold)
    out = sc.score(st(), eps)
    assert out[0] < out[1] == out[2] == 1.0


@pytest.mark.parametrize(
    ("min_hit_fraction", "hit_blocks", "cold"),
    [
        # st(): 64-token prompt, 16-token blocks; the hit sits on endpoint "b"
        pytest.param(0.0, 0, True, id="no-hit-is-cold"),
        pytest.param(0.0, 1, False, id="default-any-hit-is-warm"),
        pytest.param(0.3, 1, True, id="short-shared-preamble-is-cold"),
        pytest.param(0.3, 2, False, id="hit-above-threshold-is-warm"),
    ],
)
def test_cold_spread_min_hit_fraction(min_hit_fraction: float, hit_blocks: int, cold: bool) -> None:
    sc = ColdSpreadScorer(P.ColdSpreadParams(min_hit_fraction=min_hit_fraction))
    s = st()
    assert s.prefix_index is not None
    chain = s.request.chain(s.prefix_index.hasher).hashes
    if hit_blocks:
        s.prefix_index.insert(EndpointId("b"), chain[:hit_blocks])  # type: ignore[attr-defined]
    # "a" received the last cold request; the routing of a request with this hit records it
    # as cold use exactly when it is scored as cold
    first = Decision(EndpointId("a"), RequestId("r0"), (), {}, {}, (), {}, {}, {}, 0, 0)
    sc.on_routed(s.request, first)
    out = sc.score(s, [ep("a"), ep("b"), ep("c")])
    if cold:
        assert out[0] < out[1] == out[2] == 1.0
    else:
        assert out == [0.5, 0.5, 0.5]
    this = Decision(
        EndpointId("c"), RequestId("r1"), (), {}, {}, (), {}, {}, {}, 0, 16 * hit_blocks
    )
    sc.on_routed(s.request, this)
    assert (sc.score(state(req(prompt_tokens=64)), [ep("a"), ep("c")])[1] < 1.0) is cold


def _routed(endpoint: str, prompt: int, cached: int = 0) -> tuple[RequestView, Decision]:
    d = Decision(EndpointId(endpoint), RequestId("r"), (), {}, {}, (), {}, {}, {}, cached, cached)
    return req(prompt_tokens=prompt), d


def test_cold_spread_by_prompt_tokens_balances_prefill_work() -> None:
    """spreadBy prompt-tokens: the endpoint that received the least uncached prompt work per
    unit of speed scores 1; by recency, the same history would favour the other endpoint."""
    now = [0.0]
    sc = ColdSpreadScorer(P.ColdSpreadParams(spread_by="prompt-tokens"), lambda: now[0])
    by_recency = ColdSpreadScorer(P.ColdSpreadParams())
    for r, d in (_routed("a", 8000), _routed("b", 500)):  # "a": one long prompt, then "b"
        sc.on_routed(r, d)
        by_recency.on_routed(r, d)
    eps = [ep("a"), ep("b")]
    assert sc.score(st(), eps) == [0.0, 1.0]
    recency = by_recency.score(st(), eps)
    assert recency[0] > recency[1]
    # speed-normalised: "a" is 20x faster, so 8000 tokens there is less work than 500 on "b"
    assert sc.score(st(), [ep("a", relative_speed=20.0), ep("b")]) == [1.0, 0.0]
    # the prompt's predicted hit is not work; and old work decays (half-life 30 s)
    sc.on_routed(*_routed("b", 9000, cached=8500))
    assert sc.score(st(), eps) == [0.0, 1.0]
    sc.on_routed(*_routed("b", 8000))
    assert sc.score(st(), eps) == [1.0, 0.0]
    now[0] = 300.0  # ten half-lives: both near zero, "b"'s larger residue still ranks last
    assert sc.score(st(), eps) == [1.0, 0.0]
    assert sc._work_at(EndpointId("b"), now[0]) < 9000 / 1000


def test_cold_spread_by_prompt_tokens_needs_a_clock() -> None:
    with pytest.raises(ValueError, match="clock"):
        ColdSpreadScorer(P.ColdSpreadParams(spread_by="prompt-tokens"))


def test_bounded_load_filter_drops_hot_endpoint() -> None:
    f = BoundedLoadFilter(P.BoundedLoadParams(max_load_factor=1.25, min_slack=0))
    eps = [ep("a", inflight_requests=10), ep("b", inflight_requests=1), ep("c")]
    kept = [e.id for e in f.filter(st(), eps)]
    assert kept == ["b", "c"]


def test_bounded_load_filter_weights_by_speed() -> None:
    f = BoundedLoadFilter(P.BoundedLoadParams(max_load_factor=1.25, min_slack=0))
    eps = [ep("fast", inflight_requests=6, relative_speed=3.0), ep("slow", inflight_requests=2)]
    assert [e.id for e in f.filter(st(), eps)] == ["fast", "slow"]


def test_shortlist_keeps_best_hits_and_least_loaded_in_input_order() -> None:
    s = st()
    assert s.prefix_index is not None
    chain = s.request.chain(s.prefix_index.hasher).hashes
    s.prefix_index.insert(EndpointId("hit1"), chain)  # type: ignore[attr-defined]
    s.prefix_index.insert(EndpointId("hit2"), chain[:1])  # type: ignore[attr-defined]
    eps = [
        ep("busy", inflight_tokens=900),
        ep("hit2", inflight_tokens=800),
        ep("idle", inflight_tokens=10),
        ep("hit1", inflight_tokens=700),
        ep("fast", inflight_tokens=300, relative_speed=100.0),
    ]
    f = ShortlistFilter(P.ShortlistParams(k=3, prefix_share=0.34))
    # quota ceil(0.34*3) = 2 hits (hit1, hit2), then the least loaded per speed: fast (3/unit)
    assert [e.id for e in f.filter(s, eps)] == ["hit2", "hit1", "fast"]
    no_hits = ShortlistFilter(P.ShortlistParams(k=2)).filter(st(), eps)
    assert [e.id for e in no_hits] == ["idle", "fast"]


def test_slo_feasible_filter_keeps_feasible_or_all() -> None:
    f = SloFeasibleFilter(P.SloFeasibleParams())
    r = req(prompt_tokens=1000, ttft_slo_s=0.5)
    eps = [ep("ok", perf=PERF), ep("late", perf=PERF, inflight_prefill_tokens=10_000)]
    assert [e.id for e in f.filter(state(r), eps)] == ["ok"]
    only_late = [eps[1]]
    assert f.filter(state(r), only_late) == only_late


def test_max_score_breaks_ties_with_the_injected_rng() -> None:
    eps = [ep(n) for n in "abcd"]
    picks = {MaxScorePicker().pick(state(seed=s), eps, [1.0, 1.0, 0.0, 1.0]) for s in range(50)}
    assert picks == {0, 1, 3}


def test_round_robin_cycles_in_id_order() -> None:
    rr = RoundRobinPicker()
    eps = [ep("c"), ep("a"), ep("b")]
    seen = []
    for _ in range(4):
        i = rr.pick(st(), eps, [0, 0, 0])
        seen.append(eps[i].id)
        rr.on_routed(req(), Decision(eps[i].id, RequestId("r"), (), {}, {}, (), {}, {}, {}))
    assert seen == ["a", "b", "c", "a"]


def test_power_of_two_takes_less_loaded_of_sample() -> None:
    p2 = PowerOfTwoPicker(P.PowerOfTwoParams())
    eps = [ep("a", inflight_requests=5), ep("b", inflight_requests=1)]
    assert all(p2.pick(state(seed=s), eps, [0, 0]) == 1 for s in range(10))


def test_random_top_k_stays_in_top_k() -> None:
    p = RandomTopKPicker(P.RandomTopKParams(k=2))
    picks = {
        p.pick(state(seed=s), [ep(n) for n in "abcd"], [0.1, 0.9, 0.8, 0.2]) for s in range(40)
    }
    assert picks == {1, 2}


def test_weighted_random_never_picks_zero_weight() -> None:
    p = WeightedRandomPicker()
    picks = {p.pick(state(seed=s), [ep(n) for n in "abc"], [0.0, 1.0, 3.0]) for s in range(60)}
    assert picks == {1, 2}


class TestCacheAware:
    def decide(self, pk: CacheAwarePicker, r: Any, eps: list[Any]) -> str:
        i = pk.pick(state(r), eps, [0.0] * len(eps))
        pk.on_routed(r, Decision(eps[i].id, r.id, (), {}, {}, (), {}, {}, {}))
        return str(eps[i].id)

    def test_follows_cache_when_balanced(self) -> None:
        pk = CacheAwarePicker(P.CacheAwareParams(), FakeClock())
        eps = [ep("a"), ep("b")]
        first = self.decide(pk, req("1", text="hello world, tell me a story"), eps)
        again = self.decide(pk, req("2", text="hello world, tell me a story please"), eps)
        assert again == first

    def test_miss_goes_to_smallest_tree(self) -> None:
        pk = CacheAwarePicker(P.CacheAwareParams(), FakeClock())
        eps = [ep("a"), ep("b")]
        first = self.decide(pk, req("1", text="x" * 100), eps)
        other = self.decide(pk, req("2", text="completely different"), eps)
        assert other != first

    def test_imbalance_overrides_cache(self) -> None:
        pk = CacheAwarePicker(P.CacheAwareParams(), FakeClock())
        eps = [ep("a"), ep("b")]
        first = self.decide(pk, req("1", text="shared prefix " * 10), eps)
        busy = [ep(e.id, inflight_requests=100 if e.id == first else 0) for e in eps]
        assert self.decide(pk, req("2", text="shared prefix " * 10), busy) != first

    def test_token_prompts_work(self) -> None:
        pk = CacheAwarePicker(P.CacheAwareParams(), FakeClock())
        eps = [ep("a"), ep("b")]
        first = self.decide(pk, req("1", token_ids=list(range(50))), eps)
        assert self.decide(pk, req("2", token_ids=list(range(60))), eps) == first


def test_bounded_load_never_empties_the_set() -> None:
    f = BoundedLoadFilter(P.BoundedLoadParams(metric="inflight-tokens", min_slack=0))
    s = state(req(prompt_tokens=100_000))
    eps = [ep("a"), ep("b")]
    assert f.filter(s, eps) == eps


# -- exact values at the edges (each pins a formula the direction tests only order) -----------


class Perf0:
    """A perf model predicting zero latency (or ``value``), to reach the guards of the formulas."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def predict_ttft(self, prompt_tokens: int, cached_tokens: int, **kw: Any) -> float:
        return self.value

    def predict_tpot(self, *, running: int) -> float:
        return self.value


@pytest.mark.parametrize(
    ("target", "value", "rel_w", "expected"),
    [
        pytest.param(None, 0.0, 0.5, 1.0, id="zero-latency-no-target"),
        pytest.param(1.0, 0.0, 1.0, 1.0, id="zero-latency-target-no-floor"),
        pytest.param(0.0, 0.2, 1.0, 1.0, id="zero-target-is-no-target"),
        pytest.param(1.0, 3.0, 0.0, 0.0, id="past-twice-the-target-scores-0"),
        pytest.param(1.0, -0.6, 0.0, 1.0, id="below-zero-prediction-capped-at-1"),
    ],
)
def test_slo_headroom_guards(
    target: float | None, value: float, rel_w: float, expected: float
) -> None:
    sc = SloHeadroomScorer(P.SloHeadroomParams(tpot_weight=0.0, relative_weight=rel_w))
    r = req(prompt_tokens=100, ttft_slo_s=target)
    assert sc.score(state(r), [ep("a", perf=Perf0(value))]) == [pytest.approx(expected)]


def test_slo_headroom_tpot_batch_is_the_larger_of_running_and_own_active_count() -> None:
    # TPOT-only, absolute term only: a = 0.5 + 0.5·(0.05 − tpot)/0.05, tpot = 0.01 + 1e-3·batch
    sc = SloHeadroomScorer(P.SloHeadroomParams(tpot_weight=1.0, relative_weight=0.0))
    r = req(prompt_tokens=100, tpot_slo_s=0.05)

    def a(batch: int) -> float:
        return 0.5 + 0.5 * (0.05 - (0.01 + 1e-3 * batch)) / 0.05

    eps = [
        ep("own", perf=PERF, inflight_requests=4, waiting=3),  # 4 sent, 3 queued: 1 active
        ep("scrape", perf=PERF, running=5, inflight_requests=2),
    ]
    assert sc.score(state(r), eps) == [pytest.approx(a(2)), pytest.approx(a(6))]


def test_slo_headroom_endpoints_without_perf_stay_neutral_wherever_they_are() -> None:
    sc = SloHeadroomScorer(P.SloHeadroomParams())
    assert sc.score(st(), [ep("a"), ep("b", perf=PERF), ep("c")]) == [0.5, 1.0, 0.5]
    assert sc.score(st(), [ep("a"), ep("b")]) == [0.5, 0.5]


def _hits(s: CycleState, blocks: dict[str, int]) -> CycleState:
    assert s.prefix_index is not None
    chain = s.request.chain(s.prefix_index.hasher).hashes
    for name, n in blocks.items():
        s.prefix_index.insert(EndpointId(name), chain[:n])  # type: ignore[attr-defined]
    return s


@pytest.mark.parametrize(
    ("kw", "blocks", "expected"),
    [
        # ratio only, prompt_tokens unknown (0): hits count against the longest hit
        pytest.param({"length_weight": 0.0}, {"a": 2, "b": 4}, [0.5, 1.0], id="no-prompt-length"),
        # length only, scale 32 tokens: 2 blocks (32) and 4 blocks (64) both earn the full term
        pytest.param(
            {"length_weight": 1.0, "match_length_scale_tokens": 32},
            {"a": 2, "b": 4},
            [1.0, 1.0],
            id="length-capped-at-scale",
        ),
        pytest.param(
            {"length_weight": 1.0, "match_length_scale_tokens": 64},
            {"a": 2, "b": 4},
            [0.25, 1.0],
            id="length-squared",
        ),
    ],
)
def test_prefix_cache_scorer_terms(
    kw: dict[str, Any], blocks: dict[str, int], expected: list[float]
) -> None:
    index = ApproxPrefixIndex(ApproxAutoHasher(block_size=16))
    s = _hits(state(req(prompt_tokens=0, token_ids=tokens(64)), index), blocks)
    out = PrefixCacheScorer(P.PrefixCacheParams(**kw)).score(s, [ep("a"), ep("b")])
    assert out == pytest.approx(expected)


def test_prefix_cache_scorer_a_one_token_hit_counts() -> None:
    # a one-token prompt whose (partial) first block is cached: the hit is capped at 1 token
    index = ApproxPrefixIndex(ApproxAutoHasher(block_size=16))
    s = _hits(state(req(prompt_tokens=1, block_hashes=[5], block_size=16), index), {"a": 1})
    out = PrefixCacheScorer(P.PrefixCacheParams(length_weight=0.0)).score(s, [ep("a"), ep("b")])
    assert out == [1.0, 0.0]


def _cold(endpoint: str, cached: int = 0) -> Decision:
    return Decision(EndpointId(endpoint), RequestId("r"), (), {}, {}, (), {}, {}, {}, 0, cached)


def test_cold_spread_ranks_by_recency_exactly() -> None:
    sc = ColdSpreadScorer(P.ColdSpreadParams())
    eps = [ep("a"), ep("b"), ep("c")]
    sc.on_routed(req(prompt_tokens=64), _cold("a"))
    assert sc.score(st(), eps) == [0.5, 1.0, 1.0]  # one used: 1 − 1/2
    sc.on_routed(req(prompt_tokens=64), _cold("b"))
    # a least recent of two used: 1 − 1/3, b most recent: 1 − 2/3; c never: 1
    assert sc.score(st(), eps) == pytest.approx([2 / 3, 1 / 3, 1.0])


@pytest.mark.parametrize(
    ("fraction", "prompt", "best_hit", "cold"),
    [
        pytest.param(0.0, 100, 1, False, id="a-one-token-hit-is-warm"),
        pytest.param(0.25, 64, 16, True, id="hit-at-the-threshold-is-cold"),
        pytest.param(0.25, 64, 17, False, id="hit-above-the-threshold-is-warm"),
    ],
)
def test_cold_spread_records_only_cold_routings(
    fraction: float, prompt: int, best_hit: int, cold: bool
) -> None:
    sc = ColdSpreadScorer(P.ColdSpreadParams(min_hit_fraction=fraction))
    sc.on_routed(req(prompt_tokens=prompt), _cold("a", cached=best_hit))
    assert (sc.score(st(), [ep("a"), ep("b")]) == [0.5, 1.0]) is cold


def test_cold_spread_hits_on_other_endpoints_do_not_warm_the_candidates() -> None:
    s = _hits(st(), {"elsewhere": 4})
    sc = ColdSpreadScorer(P.ColdSpreadParams())
    sc.on_routed(req(prompt_tokens=64), _cold("a"))
    assert sc.score(s, [ep("a"), ep("b")]) == [0.5, 1.0]
    assert sc.score(s, []) == []


@pytest.mark.parametrize(
    ("speeds", "loads", "winner"),
    [
        # c=1.25, L=1: bound(a) = ceil(1.25·2·0.5/1.0) = 2 ≥ 1+1: the sticky endpoint keeps it
        pytest.param((0.5, 0.5), (1, 0), "a", id="slow-pair-stays"),
        # bound(a) = ceil(1.25·2·0.2/1.0) = 1 < 1+1: spills to b
        pytest.param((0.2, 0.8), (1, 0), "b", id="slow-sticky-spills"),
        # L=2: bound(a) = ceil(1.25·3·0.5) = 2 < 2+1: spills
        pytest.param((1.0, 1.0), (2, 0), "b", id="bound-counts-this-request-once"),
    ],
)
def test_session_affinity_bound_is_speed_weighted(
    speeds: tuple[float, float], loads: tuple[int, int], winner: str
) -> None:
    sc = SessionAffinityScorer(P.SessionAffinityParams(max_load_factor=1.25))
    sc.on_routed(st().request, _cold("a"))
    eps = [
        ep(n, relative_speed=speed, inflight_requests=load)
        for n, speed, load in zip("ab", speeds, loads, strict=True)
    ]
    out = sc.score(st(), eps)
    assert eps[out.index(1.0)].id == winner and sorted(out) == [0.0, 1.0]


def test_session_affinity_whose_endpoint_left_takes_the_ring_owner() -> None:
    sc = SessionAffinityScorer(P.SessionAffinityParams())
    eps = [ep("a"), ep("b")]
    owner = sc.score(st(), eps)
    sc.on_routed(st().request, _cold("gone"))
    assert sc.score(st(), eps) == owner
