"""Parity: the simulator and a fake scheduler make identical decisions from identical snapshots.

The simulator runs a trace with ``record_decisions=True``; the fake scheduler (``fake_scheduler``)
gets a *fresh* policy built the same way with the same seed and replays the recorded sequence —
scrapes, streamed tokens, completions, switch-overs, KV events — building its own snapshots.
Each snapshot must equal the simulator's and each decision (placement and migration plan) must
be the same. A different seed must be able to change decisions (the test would otherwise pass
with a policy that ignores its RNG... for policies that use one).
"""

from __future__ import annotations

import pytest

from modelfleet.policy.types import NoEndpointError
from modelfleet.sim.cluster import ClusterSimulator, SimConfig, SimResult, build_request_view
from modelfleet.sim.policies import POLICY_NAMES, policy_factory
from modelfleet.sim.traces import Trace

from .fake_scheduler import FakeScheduler, StaticEndpoint
from .tiny import tiny_fleet, tiny_trace

pytestmark = pytest.mark.unit


def _run(name: str, trace: Trace, seed: int, feed_kv: bool | None = None) -> ClusterSimulator:
    sim = ClusterSimulator(
        trace,
        tiny_fleet(),
        policy_factory(name),
        SimConfig(record_decisions=True, seed=seed, ttft_slo_s=1.0, feed_kv_events=feed_kv),
    )
    sim.result = sim.run()  # type: ignore[attr-defined]
    return sim


def _replay(sim: ClusterSimulator, name: str, seed: int) -> tuple[int, int]:
    """Replay the recorded sequence; return (placements, plans) compared."""
    result: SimResult = sim.result  # type: ignore[attr-defined]
    statics = [
        StaticEndpoint(str(e.id), e.spec.pool, e.spec.model, e.spec.accelerator, e.speed, e.perf)
        for e in sim.engines
    ]
    fake = FakeScheduler(policy_factory(name), seed, statics)
    by_id = {r.request_id: r for r in sim.trace.requests}
    placements = plans = 0
    for entry in result.decisions:
        fake.now = entry.time_s
        if entry.kind == "pick":
            treq = by_id[entry.request_id]
            chain = treq.block_ids[: treq.input_tokens // sim.trace.block_tokens]
            view = build_request_view(
                treq,
                chain,
                sim.trace.block_tokens,
                sim.config,
                pool="default",
                model="llama-3-8b",
            )
            assert view == entry.request
            try:
                chosen, views = fake.route(view, entry.scrapes)
            except NoEndpointError:
                chosen, views = "", fake.views(entry.scrapes)
            assert views == entry.views, f"snapshot differs at {entry.request_id}"
            assert chosen == entry.chosen, f"decision differs at {entry.request_id}"
            placements += 1
        elif entry.kind == "first_token":
            fake.on_first_token(entry.request_id)
        elif entry.kind == "tokens":
            fake.on_tokens(entry.request_id, entry.n)
        elif entry.kind == "completed":
            fake.on_completed(entry.request_id)
        elif entry.kind == "migrated":
            fake.on_migrated(entry.request_id, entry.src, entry.endpoint, entry.n)
        elif entry.kind == "kv":
            fake.on_kv_event(entry.endpoint, entry.event)
        elif entry.kind == "plan":
            migrations, views = fake.plan(entry.scrapes, entry.in_progress)
            assert views == entry.views
            assert tuple(migrations) == entry.migrations, f"plan differs at t={entry.time_s}"
            plans += 1
        else:  # pragma: no cover - a new log kind must be replayed here
            raise AssertionError(f"unknown log entry {entry.kind}")
    return placements, plans


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_simulator_and_fake_scheduler_decide_identically(name: str) -> None:
    trace = tiny_trace().compressed(2.0)
    sim = _run(name, trace, seed=7)
    placements, plans = _replay(sim, name, seed=7)
    assert placements == len(trace)
    if name in ("llumnix", "modelfleet"):
        assert plans > 0
        assert sim.result.migrations_started > 0  # type: ignore[attr-defined]


def test_parity_with_kv_events_feeding_a_precise_index() -> None:
    """llm-d's profile with the precise (KV-event) prefix index: events replayed in order."""
    from modelfleet.policy.baselines import policy_spec
    from modelfleet.sim.policies import policy_factory as pf

    spec = policy_spec("llm-d").model_copy(update={"prefix_source": "kv-events"})
    trace = tiny_trace().compressed(2.0)
    factory = pf("llm-d", spec=spec)
    sim = ClusterSimulator(
        trace, tiny_fleet(), factory, SimConfig(record_decisions=True, seed=3, ttft_slo_s=1.0)
    )
    result = sim.run()
    kv = [e for e in result.decisions if e.kind == "kv"]
    assert kv, "the precise profile must receive KV events"
    statics = [
        StaticEndpoint(str(e.id), e.spec.pool, e.spec.model, e.spec.accelerator, e.speed, e.perf)
        for e in sim.engines
    ]
    fake = FakeScheduler(factory, 3, statics)
    by_id = {r.request_id: r for r in trace.requests}
    for entry in result.decisions:
        fake.now = entry.time_s
        if entry.kind == "pick":
            assert entry.request is not None
            chosen, views = fake.route(entry.request, entry.scrapes)
            assert views == entry.views
            assert chosen == entry.chosen
            assert (
                len(entry.request.block_hashes or ()) == by_id[entry.request_id].input_tokens // 16
            )
        elif entry.kind == "first_token":
            fake.on_first_token(entry.request_id)
        elif entry.kind == "tokens":
            fake.on_tokens(entry.request_id, entry.n)
        elif entry.kind == "completed":
            fake.on_completed(entry.request_id)
        elif entry.kind == "kv":
            fake.on_kv_event(entry.endpoint, entry.event)


def test_replay_detects_a_different_seed() -> None:
    """power-of-two samples with its RNG: replaying with another seed must diverge."""
    trace = tiny_trace().compressed(2.0)
    sim = _run("power-of-two", trace, seed=7)
    with pytest.raises(AssertionError, match="differs"):
        _replay(sim, "power-of-two", seed=8)
