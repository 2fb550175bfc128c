"""Metrics on tiny hand-made inputs: percentiles, goodput/attainment, prefix bounds, imbalance."""

from __future__ import annotations

import math

import pytest

from modelfleet.sim.metrics import (
    LoadSample,
    RequestRecord,
    compute_metrics,
    infinite_cache_bound,
    load_imbalance,
    percentile,
    pooled_capacity_bound,
)
from modelfleet.sim.traces import TraceRequest, trace_from_requests

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([1.0, 2.0], 50, 1.5), ([3.0], 99, 3.0), (list(range(101)), 99, 99.0), ([5, 1, 3], 0, 1.0)],
    ids=["interpolated", "single", "hundred", "min"],
)
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_empty_and_bad_q() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], 120)


def _rec(
    rid: str,
    arrival: float,
    first: float | None,
    finish: float | None,
    out: int,
    *,
    endpoint: str = "e0",
    cached: int = 0,
    prompt: int = 100,
) -> RequestRecord:
    return RequestRecord(
        request_id=rid,
        arrival_s=arrival,
        prompt_tokens=prompt,
        max_tokens=out,
        ttft_slo_s=1.0,
        tpot_slo_s=0.1,
        first_endpoint=endpoint,
        endpoint=endpoint,
        first_token_s=first,
        finish_s=finish,
        output_tokens=out,
        cached_tokens=cached,
    )


def test_latencies_goodput_and_attainment() -> None:
    recs = [
        _rec("ok", 0.0, 0.5, 1.4, 10),  # ttft 0.5, tpot 0.1 -> meets both
        _rec("slow-ttft", 1.0, 2.5, 3.4, 10),  # ttft 1.5 -> misses
        _rec("slow-tpot", 2.0, 2.2, 5.0, 11),  # tpot 0.28 -> misses
        _rec("one-token", 3.0, 3.2, 3.2, 1),  # no TPOT, meets
        _rec("unfinished", 4.0, None, None, 0),  # miss
    ]
    m = compute_metrics(recs, [], ["e0"])
    assert recs[0].tpot_s == pytest.approx(0.1)
    assert [r.met_slo() for r in recs] == [True, False, False, True, False]
    assert m.completed == 4
    assert m.duration_s == pytest.approx(5.0)
    assert m.goodput_rps == pytest.approx(2 / 5.0)
    assert m.attainment == pytest.approx(2 / 5)
    assert (m.ttft.count, m.ttft.unserved) == (4, 1)
    # TTFTs 0.5, 1.5, 0.2, 0.2 and the unfinished request's infinite one: the median is 0.5
    assert m.ttft.p50 == pytest.approx(0.5)
    assert m.ttft.mean == pytest.approx((0.5 + 1.5 + 0.2 + 0.2) / 4)
    assert m.tpot.count == 3 and m.tpot.unserved == 0
    assert m.e2e.p50 == pytest.approx(2.4)  # 0.2, 1.4, 2.4, 3.0, inf
    assert m.e2e.p99 == math.inf
    served = compute_metrics(recs[:4], [], ["e0"])
    assert served.e2e.p99 == pytest.approx(percentile([1.4, 2.4, 3.0, 0.2], 99))


def test_hit_rate_and_per_instance_counts() -> None:
    recs = [
        _rec("a", 0.0, 0.1, 0.2, 2, endpoint="e0", cached=0),
        _rec("b", 0.0, 0.1, 0.2, 2, endpoint="e1", cached=64),
    ]
    samples = [LoadSample(0.0, (2, 0)), LoadSample(1.0, (1, 1))]
    m = compute_metrics(recs, samples, ["e0", "e1"])
    assert m.prefix_hit_rate == pytest.approx(64 / 200)
    assert dict(m.per_instance_requests) == {"e0": 1, "e1": 1}
    assert dict(m.per_instance_mean_load) == {"e0": 1.5, "e1": 0.5}
    assert m.load_imbalance == pytest.approx((2.0 + 1.0) / 2)


@pytest.mark.parametrize(
    ("loads", "expected"),
    [([(0, 0)], 1.0), ([(4, 0, 0, 0)], 4.0), ([(2, 2), (3, 1)], (1.0 + 1.5) / 2)],
    ids=["idle", "hot-spot", "average"],
)
def test_load_imbalance(loads: list[tuple[int, ...]], expected: float) -> None:
    assert load_imbalance([LoadSample(float(i), x) for i, x in enumerate(loads)]) == pytest.approx(
        expected
    )


# Block size 32 trace blocks = 2 engine blocks of 16.
TINY = [
    TraceRequest(0, 0.0, 64, 1, (1, 2)),  # cold
    TraceRequest(1, 1.0, 64, 1, (1, 2)),  # same prompt: all but the last token -> 48
    TraceRequest(2, 2.0, 80, 1, (1, 2, 3)),  # 64 shared + 16 new: 64
    TraceRequest(3, 3.0, 40, 1, (4, 5)),  # cold
    TraceRequest(4, 4.0, 48, 1, (1, 6)),  # shares block 1 only: 32
]


def test_infinite_cache_bound_by_hand() -> None:
    tr = trace_from_requests("tiny", TINY, block_tokens=32)
    hits, total = infinite_cache_bound(tr)
    assert total == 64 + 64 + 80 + 40 + 48
    assert hits == 0 + 48 + 64 + 0 + 32


def test_partial_block_only_hits_what_was_seen() -> None:
    reqs = [TraceRequest(0, 0.0, 48, 1, (1, 2)), TraceRequest(1, 1.0, 64, 1, (1, 2))]
    hits, _ = infinite_cache_bound(trace_from_requests("p", reqs, block_tokens=32))
    assert hits == 48  # block 2 was seen with 16 tokens only: 32 + 16


def test_pooled_bound_equals_infinite_with_room_and_drops_with_small_cache() -> None:
    tr = trace_from_requests("tiny", TINY, block_tokens=32)
    big = pooled_capacity_bound(tr, 10_000)
    assert big == infinite_cache_bound(tr)
    # Capacity 3 engine blocks: request 0 leaves only block 1 (its tail, block 2, is evicted
    # first), so requests 1 and 2 hit 32 tokens each; request 3 then evicts block 1, so
    # request 4 misses: 0 + 32 + 32 + 0 + 0.
    small_hits, total = pooled_capacity_bound(tr, 3)
    assert small_hits == 64
    assert total == big[1]
    with pytest.raises(ValueError, match="capacity_blocks"):
        pooled_capacity_bound(tr, 0)
