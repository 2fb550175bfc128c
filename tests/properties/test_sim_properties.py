"""The simulator's conservation and metric definitions, against independent computations.

* ``compute_metrics`` on random request records equals a brute-force reading of the
  definitions in ``modelfleet.sim.metrics``: percentiles from :func:`statistics.quantiles`
  (inclusive method = numpy's linear interpolation) with every unserved request as an
  infinite latency; goodput and attainment from requests that finished *and* met both
  targets (a target exactly met is met; a one-token answer has no TPOT and meets any TPOT
  target); hit rate, per-instance counts and loads, imbalance counted by hand.
* A real simulated run on random small traces loses nothing: every request sent is served
  (finished with all its tokens), failed (refused by an engine) or shed, exactly one of
  them, and the run's metrics count them so.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import Counter
from collections.abc import Sequence

import hypothesis.strategies as st
import pytest
from hypothesis import event, given, settings

from modelfleet.sim.cluster import ClusterSimulator, SimConfig
from modelfleet.sim.fleet import mixed_fleet
from modelfleet.sim.metrics import LoadSample, RequestRecord, compute_metrics
from modelfleet.sim.policies import policy_factory
from modelfleet.sim.traces import TraceRequest, trace_from_requests

pytestmark = pytest.mark.unit

# Times on a grid of quarter seconds: exact in binary, so latencies tie with the targets.
times = st.integers(0, 40).map(lambda k: k / 4)
slos = st.none() | st.sampled_from([0.25, 0.5, 1.0, 2.0])
ENDPOINTS = ("e0", "e1", "e2")


@st.composite
def records(draw: st.DrawFn) -> RequestRecord:
    arrival = draw(times)
    outcome = draw(st.sampled_from(["finished", "finished", "started", "waiting", "shed"]))
    out = draw(st.integers(1, 6))
    first = finish = None
    output_tokens = 0
    if outcome in ("finished", "started"):
        first = arrival + draw(times)
        output_tokens = out if outcome == "finished" else draw(st.integers(1, out))
    if outcome == "finished":
        finish = first + draw(times) if out > 1 else first  # type: ignore[operator]
    endpoint = "" if outcome == "shed" else draw(st.sampled_from(ENDPOINTS))
    prompt = draw(st.integers(1, 500))
    return RequestRecord(
        request_id=f"r{draw(st.integers(0, 10**6))}",
        arrival_s=arrival,
        prompt_tokens=prompt,
        max_tokens=out,
        ttft_slo_s=draw(slos),
        tpot_slo_s=draw(slos),
        first_endpoint=endpoint,
        endpoint=endpoint,
        first_token_s=first,
        finish_s=finish,
        output_tokens=output_tokens,
        cached_tokens=draw(st.integers(0, prompt - 1)) if endpoint else 0,
        migrations=draw(st.integers(0, 2)) if endpoint else 0,
        shed=outcome == "shed",
    )


BIG = 1e12  # stands for +inf in the reference (interpolating towards it gives >= 1e10)


def ref_percentiles(values: Sequence[float], unserved: int) -> tuple[float, float, float]:
    data = sorted([*values, *([BIG] * unserved)])
    if not data:
        return (math.nan,) * 3
    if len(data) == 1:
        cuts = [data[0]] * 99
    else:
        cuts = statistics.quantiles(data, n=100, method="inclusive")
    out = tuple(cuts[q - 1] for q in (50, 90, 99))
    return tuple(math.inf if x > 1e9 else x for x in out)  # type: ignore[return-value]


def met_both_targets(r: RequestRecord) -> bool:
    if r.finish_s is None or r.first_token_s is None:
        return False
    ttft = r.first_token_s - r.arrival_s
    if r.ttft_slo_s is not None and not ttft <= r.ttft_slo_s:
        return False
    if r.tpot_slo_s is not None and r.output_tokens >= 2:
        tpot = (r.finish_s - r.first_token_s) / (r.output_tokens - 1)
        if not tpot <= r.tpot_slo_s:
            return False
    return True


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12)


@settings(max_examples=3 * settings.default.max_examples)
@given(
    recs=st.lists(records(), max_size=40),
    loads=st.lists(st.tuples(*(st.integers(0, 5) for _ in ENDPOINTS)), max_size=6),
    migrations=st.integers(0, 9),
)
def test_compute_metrics_matches_the_definitions(
    recs: list[RequestRecord], loads: list[tuple[int, ...]], migrations: int
) -> None:
    samples = [LoadSample(float(i), lo) for i, lo in enumerate(loads)]
    m = compute_metrics(recs, samples, ENDPOINTS, migrations=migrations, extra={"x": 1.0})

    finished = [r for r in recs if r.finish_s is not None]
    assert m.requests == len(recs)
    assert m.completed == len(finished)
    assert m.shed == sum(r.shed for r in recs)
    assert m.migrations == migrations
    assert m.migrated_requests == sum(1 for r in recs if r.migrations > 0)
    assert dict(m.extra) == {"x": 1.0}

    # latencies: unserved requests are infinite in the percentiles; mean/count over served
    ttft = [r.first_token_s - r.arrival_s for r in recs if r.first_token_s is not None]
    e2e = [r.finish_s - r.arrival_s for r in finished]  # type: ignore[operator]
    tpot = [
        (r.finish_s - r.first_token_s) / (r.output_tokens - 1)  # type: ignore[operator]
        for r in finished
        if r.output_tokens >= 2
    ]
    for summary, values, unserved in (
        (m.ttft, ttft, len(recs) - len(ttft)),
        (m.e2e, e2e, len(recs) - len(finished)),
        (m.tpot, tpot, 0),
    ):
        want = ref_percentiles(values, unserved)
        got = (summary.p50, summary.p90, summary.p99)
        assert all(_same(g, w) for g, w in zip(got, want, strict=True)), (got, want)
        assert summary.count == len(values)
        assert summary.unserved == unserved
        assert _same(summary.mean, statistics.fmean(values) if values else math.nan)

    # goodput and attainment: finished requests that met both targets, nothing else
    met = sum(met_both_targets(r) for r in recs)
    assert [r.met_slo() for r in recs] == [met_both_targets(r) for r in recs]
    duration = (
        max((r.finish_s for r in finished), default=min(r.arrival_s for r in recs))  # type: ignore[type-var]
        - min(r.arrival_s for r in recs)
        if recs
        else 0.0
    )
    assert m.duration_s == pytest.approx(duration)
    assert m.goodput_rps == pytest.approx(met / duration if duration > 0 else 0.0)
    assert m.attainment == pytest.approx(met / len(recs) if recs else 0.0)

    # prefix reuse and balance
    placed = [r for r in recs if r.first_endpoint]
    sent = sum(r.prompt_tokens for r in placed)
    assert m.prefix_hit_rate == pytest.approx(
        sum(r.cached_tokens for r in placed) / sent if sent else 0.0
    )
    counts = Counter(r.first_endpoint for r in placed)
    assert dict(m.per_instance_requests) == {e: counts[e] for e in ENDPOINTS}
    if samples:
        assert dict(m.per_instance_mean_load) == pytest.approx(
            {e: statistics.fmean(s.loads[i] for s in samples) for i, e in enumerate(ENDPOINTS)}
        )
        ratios = [
            max(s.loads) * len(s.loads) / sum(s.loads) if any(s.loads) else 1.0 for s in samples
        ]
        assert m.load_imbalance == pytest.approx(statistics.fmean(ratios))
    else:
        assert dict(m.per_instance_mean_load) == {}
        assert math.isnan(m.load_imbalance)


def test_unserved_requests_make_the_tail_infinite() -> None:
    """2 of 100 requests never served: p99 TTFT is infinite, p50 is the served median."""
    served = [
        RequestRecord(f"s{i}", 0.0, 10, 1, first_token_s=1.0, finish_s=1.0) for i in range(98)
    ]
    lost = [RequestRecord(f"x{i}", 0.0, 10, 1, shed=True) for i in range(2)]
    m = compute_metrics(served + lost, [], ["e0"])
    assert m.ttft.p99 == math.inf and m.e2e.p99 == math.inf
    assert m.ttft.p50 == 1.0 and m.ttft.mean == 1.0
    assert (m.ttft.count, m.ttft.unserved) == (98, 2)
    m_served = compute_metrics(served, [], ["e0"])
    assert m_served.ttft.p99 == 1.0 and m_served.ttft.unserved == 0


# ----------------------------------------------------------------------------- a real run


@st.composite
def small_traces(draw: st.DrawFn) -> list[TraceRequest]:
    n = draw(st.integers(1, 10))
    shared = draw(st.integers(0, 3))  # leading blocks shared by every request
    reqs = []
    t = 0.0
    for i in range(n):
        t += draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
        blocks = draw(st.integers(1, 4))
        tokens = draw(st.integers((blocks - 1) * 64 + 1, blocks * 64))
        ids = tuple(range(min(shared, blocks))) + tuple(
            1000 * (i + 1) + j for j in range(blocks - min(shared, blocks))
        )
        reqs.append(TraceRequest(i, t, tokens, draw(st.integers(1, 40)), ids))
    return reqs


@settings(max_examples=settings.default.max_examples // 4)  # a simulated run each
@given(
    reqs=small_traces(),
    policy=st.sampled_from(["round-robin", "least-request", "modelfleet"]),
    short_engine=st.booleans(),
)
def test_every_request_sent_is_served_failed_or_shed(
    reqs: list[TraceRequest], policy: str, short_engine: bool
) -> None:
    trace = trace_from_requests("prop", reqs, block_tokens=64)
    fleet = mixed_fleet({"h100-80gb": 1, "l40s": 1}, overrides={"num_gpu_blocks": 200})
    if short_engine:  # one engine refuses prompts over 128 tokens: those requests fail
        short = {"num_gpu_blocks": 200, "max_model_len": 168}
        fleet = (fleet[0], dataclasses.replace(fleet[1], overrides=short))
    result = ClusterSimulator(trace, fleet, policy_factory(policy), SimConfig()).run()
    result.check_conservation()
    recs = {r.request_id: r for r in result.records}
    assert sorted(recs) == sorted(q.request_id for q in trace)
    served = [r for r in recs.values() if r.finish_s is not None]
    shed = [r for r in recs.values() if r.shed]
    failed = [r for r in recs.values() if r.failed]
    outcomes = [{r.request_id for r in group} for group in (served, shed, failed)]
    assert not (outcomes[0] & outcomes[1] or outcomes[0] & outcomes[2] or outcomes[1] & outcomes[2])
    assert len(served) + len(shed) + len(failed) == len(trace)
    if not short_engine:
        assert not failed  # only a refusal by an engine fails a request
    for q in trace:
        r = recs[q.request_id]
        if not (r.shed or r.failed):
            assert r.output_tokens == q.output_tokens and r.first_token_s is not None
    m = result.metrics
    assert (m.requests, m.completed, m.shed, m.failed) == (
        len(trace),
        len(served),
        len(shed),
        len(failed),
    )
    assert m.ttft.count + m.ttft.unserved == len(trace)
    assert m.ttft.unserved == len(shed) + len(failed)
    event("some shed or failed" if shed or failed else "none shed or failed")
