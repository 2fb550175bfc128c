"""The filters against their documented rules, including every parameter.

``bounded-load`` is checked against an independent reference of its docstring's formula,
in exact rational arithmetic: keep e iff ``load_e + r <= ceil(c·(L + r)·s_e/S) + slack·r``
(r = 1 request, or the request's prompt tokens, at least 1, for the token metric), and keep
every candidate when none passes. The grid uses speeds and factors that are exact in binary
floating point, so the reference and the filter see the same numbers.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Any

import pytest
from policy_fakes import ep, req, state

from modelfleet.policy import params as P
from modelfleet.policy.filters import (
    BoundedLoadFilter,
    HealthyFilter,
    ShortlistFilter,
    SloFeasibleFilter,
)
from modelfleet.policy.hashing import ApproxAutoHasher
from modelfleet.policy.prefix import ApproxPrefixIndex
from modelfleet.policy.types import EndpointId, EndpointView

pytestmark = pytest.mark.unit


def reference_bounded(
    metric: str,
    c: float,
    slack: int,
    prompt: int,
    loads: tuple[int, ...],
    speeds: tuple[float, ...],
) -> list[int]:
    r = 1 if metric == "inflight-requests" else max(1, prompt)
    total = sum(loads)
    s_sum = sum(Fraction(s) for s in speeds)
    kept = [
        i
        for i, (load, s) in enumerate(zip(loads, speeds, strict=True))
        if load + r <= math.ceil(Fraction(c) * (total + r) * Fraction(s) / s_sum) + slack * r
    ]
    return kept or list(range(len(loads)))


GRID = list(
    itertools.product(
        ["inflight-requests", "inflight-tokens"],
        [1.0, 1.25, 2.0],  # c
        [0, 1, 2],  # slack
        [0, 1, 3, 100],  # prompt tokens
        [(0, 0), (1, 0), (2, 1), (3, 0), (5, 1, 0), (150, 40), (400, 0, 90)],  # loads
        [(1.0, 1.0, 1.0), (0.5, 1.5, 1.0), (1.0, 3.0, 0.25), (0.25, 0.25, 0.25)],  # speeds
    )
)


def test_bounded_load_matches_its_formula_over_a_grid() -> None:
    mismatches = []
    for metric, c, slack, prompt, loads, speeds3 in GRID:
        speeds = speeds3[: len(loads)]
        f = BoundedLoadFilter(
            P.BoundedLoadParams(max_load_factor=c, min_slack=slack, metric=metric)  # type: ignore[arg-type]
        )
        field = "inflight_requests" if metric == "inflight-requests" else "inflight_tokens"
        eps = [
            ep(f"e{i}", relative_speed=s, **{field: load})
            for i, (load, s) in enumerate(zip(loads, speeds, strict=True))
        ]
        got = [int(e.id[1:]) for e in f.filter(state(req(prompt_tokens=prompt)), eps)]
        want = reference_bounded(metric, c, slack, prompt, loads, speeds)
        if got != want:
            mismatches.append((metric, c, slack, prompt, loads, speeds, got, want))
    assert not mismatches, mismatches[:5]
    # the grid is not vacuous: the filter drops someone in many cells, and keeps all in many
    dropped = sum(
        len(reference_bounded(m, c, s, p, lo, sp[: len(lo)])) < len(lo)
        for m, c, s, p, lo, sp in GRID
    )
    assert 100 < dropped < len(GRID) - 100


def test_bounded_load_keeps_everything_when_speeds_sum_to_zero() -> None:
    f = BoundedLoadFilter(P.BoundedLoadParams(min_slack=0))
    eps = [ep("a", relative_speed=0.0, inflight_requests=9), ep("b", relative_speed=0.0)]
    assert f.filter(state(), eps) == eps


@pytest.mark.parametrize(
    ("healthy", "draining", "kept"),
    [
        pytest.param(True, False, True, id="healthy"),
        pytest.param(False, False, False, id="unhealthy"),
        pytest.param(True, True, False, id="draining"),
        pytest.param(False, True, False, id="both"),
    ],
)
def test_healthy_filter(healthy: bool, draining: bool, kept: bool) -> None:
    e = ep("x", healthy=healthy, draining=draining)
    other = ep("ok")
    assert HealthyFilter().filter(state(), [e, other]) == ([e, other] if kept else [other])


def _shortlist_state(hits: dict[str, int]) -> Any:
    index = ApproxPrefixIndex(ApproxAutoHasher(block_size=16))
    r = req(prompt_tokens=128, block_hashes=list(range(1, 9)), block_size=16)
    s = state(r, index)
    for name, n in hits.items():
        index.insert(EndpointId(name), list(range(1, n + 1)))
    return s


def _ids(eps: list[EndpointView]) -> list[str]:
    return [str(e.id) for e in eps]


@pytest.mark.parametrize(
    ("k", "share", "expected"),
    [
        # quota ceil(0.25·4) = 1: only the longest hit (h8), then the least loaded per speed
        pytest.param(4, 0.25, ["h8", "idle", "fast", "mid"], id="longest-hit-first"),
        # quota ceil(0.5·4) = 2: the two longest hits, h8 and h4, not h2
        pytest.param(4, 0.5, ["h4", "h8", "idle", "fast"], id="two-longest-hits"),
        pytest.param(4, 0.0, ["idle", "fast", "mid", "h2"], id="no-hit-quota"),
        # k = n: a no-op
        pytest.param(7, 0.5, ["h4", "h2", "h8", "busy", "idle", "fast", "mid"], id="k-equals-n"),
    ],
)
def test_shortlist_quota_and_fill(k: int, share: float, expected: list[str]) -> None:
    s = _shortlist_state({"h4": 4, "h2": 2, "h8": 8})
    eps = [
        ep("h4", inflight_tokens=900),
        ep("h2", inflight_tokens=500),
        ep("h8", inflight_tokens=950),
        ep("busy", inflight_tokens=1000),
        ep("idle", inflight_tokens=0),
        ep("fast", inflight_tokens=300, relative_speed=4.0),  # 75 per unit of speed
        ep("mid", inflight_tokens=400),
    ]
    got = ShortlistFilter(P.ShortlistParams(k=k, prefix_share=share)).filter(s, eps)
    assert sorted(_ids(got)) == sorted(expected) and len(got) == min(k, len(eps))
    assert _ids(got) == [e.id for e in eps if e.id in expected]  # input order kept


def test_shortlist_zero_speed_endpoint_counts_as_fully_loaded() -> None:
    s = _shortlist_state({})
    eps = [ep("stalled", inflight_tokens=10, relative_speed=0.0), ep("a", inflight_tokens=100)]
    eps += [ep("b", inflight_tokens=200)]
    got = ShortlistFilter(P.ShortlistParams(k=2)).filter(s, eps)
    assert _ids(got) == ["a", "b"]


class FixedPerf:
    def __init__(self, ttft: float) -> None:
        self.ttft = ttft

    def predict_ttft(self, prompt_tokens: int, cached_tokens: int, **kw: Any) -> float:
        return self.ttft

    def predict_tpot(self, *, running: int) -> float:
        return 0.01


@pytest.mark.parametrize(
    ("slack", "ttfts", "kept"),
    [
        pytest.param(1.0, (0.5, 0.1), ["a", "b"], id="exactly-at-the-target-is-feasible"),
        pytest.param(1.0, (0.6, 0.1), ["b"], id="above-the-target-is-not"),
        pytest.param(2.0, (0.9, 0.1, 1.2), ["a", "b"], id="slack-scales-the-target"),
        pytest.param(0.5, (0.3, 0.2), ["b"], id="slack-below-one-tightens"),
        pytest.param(1.0, (0.9, 0.8), ["a", "b"], id="none-feasible-keeps-all"),
    ],
)
def test_slo_feasible_slack(slack: float, ttfts: tuple[float, ...], kept: list[str]) -> None:
    f = SloFeasibleFilter(P.SloFeasibleParams(slack=slack))
    eps = [ep(n, perf=FixedPerf(t)) for n, t in zip("abc", ttfts, strict=False)]
    got = f.filter(state(req(prompt_tokens=10, ttft_slo_s=0.5)), eps)
    assert _ids(got) == kept


def test_slo_feasible_without_target_or_perf_keeps() -> None:
    f = SloFeasibleFilter(P.SloFeasibleParams())
    eps = [ep("a", perf=FixedPerf(9.0)), ep("b")]
    assert f.filter(state(req(prompt_tokens=10)), eps) == eps
    assert _ids(f.filter(state(req(prompt_tokens=10, ttft_slo_s=1.0)), eps)) == ["b"]
