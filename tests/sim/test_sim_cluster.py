"""The cluster event loop: conservation, migrations, determinism, fused steps, staleness."""

from __future__ import annotations

import dataclasses

import pytest

from modelfleet.engine.timing import StepTimer
from modelfleet.policy.migration import MigrationParams
from modelfleet.sim.cluster import ClusterSimulator, SimConfig, SimResult, sim_next_token
from modelfleet.sim.fleet import EngineSpec, fit_perf_model, mixed_fleet
from modelfleet.sim.policies import policy_factory
from modelfleet.sim.traces import Trace

from .tiny import tiny_fleet, tiny_trace

pytestmark = pytest.mark.unit


def _run(name: str, trace: Trace, fleet: tuple[EngineSpec, ...], **cfg: object) -> SimResult:
    config = SimConfig(ttft_slo_s=1.0, **cfg)  # type: ignore[arg-type]
    return ClusterSimulator(trace, fleet, policy_factory(name), config).run()


def _signature(r: SimResult) -> list[tuple[object, ...]]:
    return [
        (
            x.request_id,
            x.first_endpoint,
            x.endpoint,
            x.first_token_s,
            x.finish_s,
            x.output_tokens,
            x.cached_tokens,
            x.migrations,
        )
        for x in r.records
    ]


@pytest.mark.parametrize("name", ["round-robin", "llm-d", "llumnix", "modelfleet"])
def test_every_request_completes_once_with_all_its_tokens(name: str) -> None:
    trace = tiny_trace().compressed(2.0)
    r = _run(name, trace, tiny_fleet())
    r.check_conservation()
    assert [x.request_id for x in r.records] == [q.request_id for q in trace]
    assert all(x.output_tokens == q.output_tokens for x, q in zip(r.records, trace, strict=True))
    assert r.metrics.completed == len(trace)
    assert r.engine_leftovers == 0
    assert sum(r.metrics.per_instance_requests.values()) == len(trace)


def test_migrations_are_counted_and_keep_the_stream_exact() -> None:
    trace = tiny_trace().compressed(2.0)
    eager = MigrationParams(imbalance_threshold=0.5, min_gain_s=0.0, max_concurrent=8)
    r = ClusterSimulator(
        trace, tiny_fleet(), policy_factory("llumnix", migration=eager), SimConfig(ttft_slo_s=1.0)
    ).run()
    r.check_conservation()
    assert r.migrations_started > 0
    assert r.migrations_done + r.migrations_cancelled <= r.migrations_started
    assert r.metrics.migrations == r.migrations_done == sum(x.migrations for x in r.records)
    moved = [x for x in r.records if x.migrations]
    assert moved and all(x.endpoint != x.first_endpoint or x.migrations > 1 for x in moved)
    assert r.token_mismatches == 0 and r.token_gaps == 0


def test_migration_disabled_means_none() -> None:
    r = _run("llumnix", tiny_trace().compressed(2.0), tiny_fleet(), enable_migration=False)
    assert r.migrations_started == 0 and r.metrics.migrations == 0


@pytest.mark.parametrize("name", ["power-of-two", "modelfleet"])
def test_same_seed_same_run_and_seed_matters(name: str) -> None:
    trace = tiny_trace().compressed(2.0)
    a = _run(name, trace, tiny_fleet(), seed=1)
    b = _run(name, trace, tiny_fleet(), seed=1)
    assert _signature(a) == _signature(b)
    assert a.metrics.as_dict() == b.metrics.as_dict()
    if name == "power-of-two":
        c = _run(name, trace, tiny_fleet(), seed=2)
        assert [x.first_endpoint for x in a.records] != [x.first_endpoint for x in c.records]


def test_fused_decode_steps_change_nothing() -> None:
    """Fusing pure-decode steps up to the next event is an optimisation only."""
    trace = tiny_trace().compressed(1.0)
    fused = _run("modelfleet", trace, tiny_fleet(), max_fused_steps=256)
    single = _run("modelfleet", trace, tiny_fleet(), max_fused_steps=1)
    assert _signature(fused) == _signature(single)
    assert fused.steps == single.steps


def test_metric_staleness_is_a_parameter_that_matters() -> None:
    trace = tiny_trace().compressed(3.0)
    fresh = _run("llm-d", trace, tiny_fleet(), metrics_refresh_s=0.0)
    stale = _run("llm-d", trace, tiny_fleet(), metrics_refresh_s=2.0)
    fresh.check_conservation()
    stale.check_conservation()
    assert [x.first_endpoint for x in fresh.records] != [x.first_endpoint for x in stale.records]


def test_prefix_hits_bounded_by_the_trace_bounds() -> None:
    r = _run("llm-d", tiny_trace(), tiny_fleet())
    m = r.metrics
    assert m.bounds is not None
    assert 0 < m.prefix_hit_rate <= m.bounds.infinite_cache + 1e-9
    assert m.bounds.pooled_capacity <= m.bounds.infinite_cache + 1e-9


def test_too_long_requests_are_rejected_not_lost() -> None:
    trace = tiny_trace()
    fleet = mixed_fleet(
        {"h100-80gb": 2},
        overrides={"num_gpu_blocks": 600, "max_model_len": 1200, "max_num_seqs": 16},
    )
    r = _run("round-robin", trace, fleet)
    too_long = {q.request_id for q in trace if q.input_tokens + q.output_tokens > 1200}
    assert too_long
    assert {x.request_id for x in r.records if x.failed} == too_long
    assert not any(x.shed for x in r.records)
    r.check_conservation()
    counts = r.outcome_counts()
    assert counts == {
        "in": len(trace),
        "served": len(trace) - len(too_long),
        "failed": len(too_long),
        "shed": 0,
    }
    m = r.metrics
    assert m.failed == len(too_long) and m.extra["rejected_by_engine"] == len(too_long)
    # failed requests are misses and unserved latencies, never quietly left out
    assert m.attainment <= 1 - len(too_long) / len(trace)
    assert m.ttft.unserved == len(too_long)
    if len(too_long) / len(trace) > 0.01:
        assert m.ttft.p99 == float("inf")
    r.check_conservation()
    assert r.metrics.extra["rejected_by_engine"] == len(too_long)


def test_bad_config_is_named() -> None:
    with pytest.raises(ValueError, match="metrics_refresh_s"):
        SimConfig(metrics_refresh_s=-1).validate()
    with pytest.raises(ValueError, match="unique"):
        ClusterSimulator(tiny_trace(), tiny_fleet() * 2, policy_factory("round-robin"))
    with pytest.raises(ValueError, match="unknown policy"):
        policy_factory("nope")


def test_next_token_is_a_pure_function_of_the_context() -> None:
    ctx = [5, 6, 7]
    assert sim_next_token(ctx) == sim_next_token(list(ctx))
    assert sim_next_token(ctx) >= 1000
    assert sim_next_token([*ctx, 1]) != sim_next_token([*ctx, 2])


def test_perf_model_fit_tracks_the_engine_timing() -> None:
    h100 = fit_perf_model(tiny_fleet()[0].engine_config())
    l40s = fit_perf_model(tiny_fleet()[2].engine_config())
    assert l40s.prefill_s_per_token > h100.prefill_s_per_token
    assert l40s.predict_tpot(running=8) > h100.predict_tpot(running=8)
    assert dataclasses.is_dataclass(h100)


def test_builtin_block_hash_behaves_like_vllm_sha256() -> None:
    """The cheap hash only has to preserve which prefixes are equal: same run either way."""
    trace = tiny_trace().compressed(2.0)
    fast = _run("llm-d", trace, tiny_fleet(), fast_block_hash=True)
    exact = _run("llm-d", trace, tiny_fleet(), fast_block_hash=False)
    assert _signature(fast) == _signature(exact)
    assert fast.metrics.prefix_hit_rate > 0


@pytest.mark.parametrize(("seed", "compression"), [(35, 2.0), (36, 4.0), (39, 4.0)])
def test_no_migration_of_a_request_the_engine_already_finished(
    seed: int, compression: float
) -> None:
    """Regression: a planner tick between a request's end on the engine and the delivery of its
    last tokens used to start a copy with a short prompt, and the client lost tokens."""
    eager = MigrationParams(
        imbalance_threshold=0.5, min_gain_s=0.0, max_concurrent=8, period_s=0.05
    )
    r = ClusterSimulator(
        tiny_trace(seed=seed).compressed(compression),
        tiny_fleet(),
        policy_factory("llumnix", migration=eager),
        SimConfig(ttft_slo_s=1.0),
    ).run()
    r.check_conservation()
    assert r.migrations_started > 0


def test_conservation_check_catches_a_lost_token() -> None:
    r = _run("round-robin", tiny_trace().compressed(2.0), tiny_fleet())
    r.check_conservation()
    r.records[3].output_tokens -= 1
    with pytest.raises(AssertionError, match="delivered"):
        r.check_conservation()


def test_load_samples_do_not_depend_on_step_fusion() -> None:
    trace = tiny_trace().compressed(1.0)
    fused = _run("least-request", trace, tiny_fleet(), max_fused_steps=256, sample_period_s=0.1)
    single = _run("least-request", trace, tiny_fleet(), max_fused_steps=1, sample_period_s=0.1)
    assert fused.samples == single.samples
    assert fused.metrics.load_imbalance == single.metrics.load_imbalance


# -- conservation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: r.records.pop(), "arrived but"),
        (lambda r: setattr(r.records[0], "failed", True), "2 outcomes"),
        (lambda r: setattr(r.records[1], "finish_s", None), "never finished"),
        (lambda r: setattr(r.records[2], "output_tokens", 1), "delivered 1 of"),
    ],
    ids=["lost-request", "served-and-failed", "unfinished", "lost-tokens"],
)
def test_conservation_fails_loudly(damage: object, message: str) -> None:
    r = _run("modelfleet", tiny_trace().compressed(2.0), tiny_fleet())
    r.check_conservation()
    damage(r)  # type: ignore[operator]
    with pytest.raises(AssertionError, match=message):
        r.check_conservation()


# -- the engines' front end (timing model v2) -------------------------------------------------


def test_the_front_end_delays_each_request_as_the_live_engine_does() -> None:
    """One request on an idle engine: its first token comes exactly the front end's
    per-request latency later than without a front end; with streams in flight it waits
    more (the live server's ``front_end_latency(len(streams))``)."""
    one = tiny_trace().head(1)
    fleet = mixed_fleet({"h100-80gb": 1}, overrides={"num_gpu_blocks": 600, "max_num_seqs": 16})
    with_fe = _run("round-robin", one, fleet)
    without = _run("round-robin", one, fleet, front_end=False)
    timer = StepTimer("h100-80gb", "llama-3-8b")
    delta = with_fe.records[0].first_token_s - without.records[0].first_token_s  # type: ignore[operator]
    assert delta == pytest.approx(timer.front_end_latency(0))
    busy = tiny_trace().compressed(4.0)
    slow, fast = _run("round-robin", busy, fleet), _run("round-robin", busy, fleet, front_end=False)
    extra = [
        a.ttft_s - b.ttft_s  # type: ignore[operator]
        for a, b in zip(slow.records, fast.records, strict=True)
    ]
    assert max(extra) > timer.front_end_latency(3)  # some requests arrived behind streams
    slow.check_conservation()
