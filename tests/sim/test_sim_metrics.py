"""Metrics on tiny hand-made inputs: percentiles, goodput/attainment, prefix bounds, imbalance."""

from __future__ import annotations

import math

import pytest

from modelfleet.sim.metrics import (
    LatencySummary,
    LoadSample,
    PrefixBounds,
    RequestRecord,
    compute_metrics,
    infinite_cache_bound,
    load_imbalance,
    percentile,
    pooled_capacity_bound,
    prefix_bounds,
)
from modelfleet.sim.traces import Trace, TraceRequest, trace_from_requests

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


def test_percentile_bounds_of_q() -> None:
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], 100.5)
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], -0.5)


def test_load_imbalance_skips_empty_samples_and_is_nan_without_any() -> None:
    samples = [LoadSample(0.0, ()), LoadSample(1.0, (3, 1)), LoadSample(2.0, ())]
    assert load_imbalance(samples) == pytest.approx(1.5)
    assert math.isnan(load_imbalance([LoadSample(0.0, ())]))


def test_defaults_and_unknown_endpoints_in_the_summary() -> None:
    """No migrations passed means 0; a request placed on an endpoint outside the fleet list is
    still counted (1, not 0 or 2); a run with no finished request lasts 0 s."""
    recs = [_rec("a", 1.0, None, None, 0, endpoint="gone"), _rec("b", 2.0, None, None, 0)]
    m = compute_metrics(recs, [], ["e0"])
    assert m.migrations == 0 and m.migrated_requests == 0
    assert dict(m.per_instance_requests) == {"e0": 1, "gone": 1}
    assert m.duration_s == 0.0 and m.goodput_rps == 0.0 and m.attainment == 0.0
    assert m.bounds is None and dict(m.extra) == {}
    empty = compute_metrics([], [], ["e0"])
    assert (empty.requests, empty.duration_s, empty.attainment, empty.prefix_hit_rate) == (
        0,
        0.0,
        0.0,
        0.0,
    )


def test_as_dict_has_every_figure() -> None:
    recs = [_rec("ok", 0.0, 0.5, 1.4, 10, cached=16), _rec("lost", 0.0, None, None, 0)]
    recs[0].migrations = 1
    tr = trace_from_requests("tiny", TINY, block_tokens=32)
    bounds = prefix_bounds(tr, 3)
    m = compute_metrics(
        recs, [LoadSample(0.0, (2,))], ["e0"], migrations=3, bounds=bounds, extra={"k": 2.0}
    )
    d = m.as_dict()
    assert d["ttft_s"] == {
        "p50": math.inf,
        "p90": math.inf,
        "p99": math.inf,
        "mean": 0.5,
        "count": 1,
        "unserved": 1,
    }
    tpot = d["tpot_s"]
    assert isinstance(tpot, dict) and tpot["count"] == 1 and tpot["p99"] == pytest.approx(0.1)
    assert d["e2e_s"] == {**d["ttft_s"], "mean": 1.4}  # type: ignore[dict-item]
    rest = {k: v for k, v in d.items() if not k.endswith("_s") or k == "duration_s"}
    assert rest == {
        "requests": 2,
        "completed": 1,
        "shed": 0,
        "failed": 0,
        "duration_s": 1.4,
        "goodput_rps": pytest.approx(1 / 1.4),
        "attainment": 0.5,
        "prefix_hit_rate": 16 / 200,
        "migrations": 3,
        "migrated_requests": 1,
        "load_imbalance": 1.0,
        "per_instance_mean_load": {"e0": 2.0},
        "per_instance_requests": {"e0": 2},
        "extra": {"k": 2.0},
        "prefix_bound_infinite": 144 / 296,
        "prefix_bound_pooled": 64 / 296,
    }
    assert "prefix_bound_infinite" not in compute_metrics(recs, [], ["e0"]).as_dict()


def test_prefix_bounds_are_fractions_of_prompt_tokens() -> None:
    tr = trace_from_requests("tiny", TINY, block_tokens=32)
    b = prefix_bounds(tr, 3)
    assert (b.infinite_cache, b.pooled_capacity, b.capacity_blocks) == (144 / 296, 64 / 296, 3)
    empty = prefix_bounds(trace_from_requests("empty", [], block_tokens=32), 3)
    assert (empty.infinite_cache, empty.pooled_capacity) == (0.0, 0.0)


# Trace blocks of 64 tokens = 4 engine blocks of 16.
def _t64(*reqs: tuple[int, tuple[int, ...]]) -> Trace:
    return trace_from_requests(
        "t64",
        [TraceRequest(i, float(i), n, 1, ids) for i, (n, ids) in enumerate(reqs)],
        block_tokens=64,
    )


def test_infinite_bound_reads_the_partial_last_block_exactly() -> None:
    # A's last block holds 20 tokens; B continues past it, so B hits the 16 whole engine
    # tokens of it and stops: 64 + 64 + 16.
    tr = _t64((148, (1, 2, 3)), (222, (1, 2, 3, 4)))
    assert infinite_cache_bound(tr) == (144, 370)


def test_infinite_bound_keeps_the_longest_span_seen() -> None:
    # B sees block 3 with 10 tokens after A saw it with 20: C still hits 16 tokens of it.
    tr = _t64((148, (1, 2, 3)), (138, (1, 2, 3)), (222, (1, 2, 3, 4)))
    hits, _ = infinite_cache_bound(tr)
    assert hits == 0 + 128 + 144


def test_the_last_prompt_token_is_never_a_hit() -> None:
    # 17 tokens: the 16 before the last one form one engine block that can hit.
    assert infinite_cache_bound(_t64((17, (1,)), (17, (1,)))) == (16, 34)


def test_pooled_bound_holds_exactly_its_capacity() -> None:
    # 64 tokens = 4 engine blocks fill a capacity of 4 exactly: nothing is evicted.
    assert pooled_capacity_bound(_t64((64, (1,)), (64, (1,))), 4) == (48, 128)
    assert pooled_capacity_bound(_t64((64, (1,)), (64, (1,))), 3) == (0, 128)
    # a partial last block takes its whole engine blocks only: 4 + 4 + 1 = 9 fit in 9
    tr = _t64((148, (1, 2, 3)), (148, (1, 2, 3)))
    assert pooled_capacity_bound(tr, 9) == (144, 296)
    assert pooled_capacity_bound(tr, 1) == (0, 296)  # the smallest capacity is allowed


def test_percentiles_with_few_unserved_requests_stay_finite_below_their_share() -> None:
    """200 served (0..199 s) and 1 unserved: p99 is the 199th order statistic, still finite."""
    s = LatencySummary.of([float(v) for v in range(200)], unserved=1)
    assert (s.p50, s.p90, s.p99) == (100.0, 180.0, 198.0)
    assert (s.count, s.unserved, s.mean) == (200, 1, 99.5)
    with pytest.raises(ValueError, match=r"^unserved must be >= 0, got -1$"):
        LatencySummary.of([1.0], unserved=-1)


def test_a_latency_exactly_at_its_target_meets_it() -> None:
    # TTFT 1.0 = target 1.0, TPOT (2.0 - 1.0) / 10 = 0.1 = target 0.1
    rec = _rec("edge", 0.0, 1.0, 2.0, 11)
    assert rec.ttft_s == 1.0 and rec.tpot_s == 0.1
    assert rec.met_slo()
    assert not _rec("late", 0.0, 1.25, 2.0, 11).met_slo()


def test_prefix_bounds_use_the_engine_block_given() -> None:
    tr = trace_from_requests("tiny", TINY, block_tokens=32)
    assert prefix_bounds(tr, 1000, engine_block=32) == PrefixBounds(128 / 296, 128 / 296, 1000)
    assert prefix_bounds(tr, 1000).infinite_cache == 144 / 296


def test_goodput_of_a_run_shorter_than_a_second() -> None:
    m = compute_metrics([_rec("ok", 0.0, 0.25, 0.5, 1)], [], ["e0"])
    assert (m.duration_s, m.goodput_rps) == (0.5, 2.0)
