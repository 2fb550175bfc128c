"""Parity: the simulator and a fake live scheduler make identical decisions from one event log.

Both drive the policy through the same object, :class:`~modelfleet.policy.host.Router`. The
simulator runs a trace with ``record_decisions=True``; the fake scheduler (``fake_scheduler``)
gets a *fresh* policy built the same way with the same seed, its endpoints from configuration,
and replays the recorded events — scrapes, requests (rebuilt from the trace), streamed tokens,
completions, migrations started and switched over, KV events — building its own snapshots.
Each snapshot, each placement and each migration plan (with the planner's in-flight views)
must equal the simulator's. A different seed must be able to change decisions (the test would
otherwise pass with a policy that ignores its RNG... for policies that use one).
"""

from __future__ import annotations

import pytest

from modelfleet.policy.baselines import policy_spec
from modelfleet.policy.framework import Data
from modelfleet.policy.from_api import migration_params_from_api, profile_spec_from_placement
from modelfleet.policy.learn import LatencyLearner, LearnedPerfModel
from modelfleet.policy.migration import MigrationParams
from modelfleet.policy.types import NoEndpointError
from modelfleet.sim.cluster import ClusterSimulator, SimConfig, SimResult, build_request_view
from modelfleet.sim.policies import POLICY_NAMES, PolicyFactory, policy_factory
from modelfleet.sim.traces import Trace

from .fake_scheduler import FakeScheduler
from .live_scheduler import LiveScheduler, live_policy
from .tiny import tiny_fleet, tiny_trace

pytestmark = pytest.mark.unit


def _run(
    factory: PolicyFactory, trace: Trace, seed: int, ttft_slo_s: float = 1.0
) -> tuple[ClusterSimulator, SimResult]:
    sim = ClusterSimulator(
        trace,
        tiny_fleet(),
        factory,
        SimConfig(record_decisions=True, seed=seed, ttft_slo_s=ttft_slo_s),
    )
    return sim, sim.run()


def _replay(
    sim: ClusterSimulator,
    result: SimResult,
    factory: PolicyFactory,
    seed: int,
    fake: FakeScheduler | LiveScheduler | None = None,
) -> tuple[int, int]:
    """Replay the recorded log into a fresh router; return (placements, plans) compared."""
    if fake is None:
        # a live scheduler learns latencies as the simulator's routing host does (fresh learner)
        learner = LatencyLearner(sim.config.learner) if sim.router.learner is not None else None
        fake = FakeScheduler(factory, seed, sim.router.endpoints(), sim.router.pool, learner)
    by_id = {r.request_id: r for r in sim.trace.requests}
    placements = plans = 0
    for entry in result.decisions:
        fake.now = entry.time_s
        if entry.kind == "pick":
            assert entry.request is not None
            if sim.chain_kind == "trace":
                # the proxy builds its own request view from the request it received
                treq = by_id[entry.request_id]
                chain = treq.block_ids[: treq.input_tokens // sim.trace.block_tokens]
                view = build_request_view(
                    treq,
                    chain,
                    sim.trace.block_tokens,
                    sim.config,
                    pool=sim.router.pool,
                    model="llama-3-8b",
                )
                assert view == entry.request
            else:  # the engine's vLLM chain (what its KV events carry), as recorded
                view = entry.request
            fake.scraped(entry.scrapes)
            try:
                chosen, views = fake.route(view)
            except NoEndpointError:
                chosen, views = "", fake.router.views()
            assert views == entry.views, f"snapshot differs at {entry.request_id}"
            assert chosen == entry.chosen, f"decision differs at {entry.request_id}"
            placements += 1
        elif entry.kind == "plan":
            fake.scraped(entry.scrapes)
            rnd = fake.plan()
            assert rnd.views == entry.views, f"plan snapshot differs at t={entry.time_s}"
            assert rnd.inflight == entry.inflight, f"in-flight views differ at t={entry.time_s}"
            assert rnd.in_progress == entry.in_progress, f"in progress differs at t={entry.time_s}"
            assert rnd.migrations == entry.migrations, f"plan differs at t={entry.time_s}"
            plans += 1
        else:
            fake.replay_event(entry)
    assert fake.router.in_flight == 0
    return placements, plans


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_simulator_and_fake_scheduler_decide_identically(name: str) -> None:
    trace = tiny_trace().compressed(2.0)
    sim, result = _run(policy_factory(name), trace, seed=7)
    placements, plans = _replay(sim, result, policy_factory(name), seed=7)
    assert placements == len(trace)
    # the views carry the routing host's learned latency models, and they did learn
    learned = [
        v.perf.ttft_observations
        for e in result.decisions
        for v in e.views
        if isinstance(v.perf, LearnedPerfModel)
    ]
    assert learned and max(learned) > 0
    if name in ("llumnix", "modelfleet"):
        assert plans > 0
    if name == "llumnix":
        assert result.migrations_started > 0
        assert any(e.kind == "migration_started" for e in result.decisions)


#: the default planner values moves in SLO terms and plans none on this small trace; valued by
#: remaining time (round 1) the same planner moves requests, which the replay must reproduce
MIGRATING = MigrationParams(gain_basis="remaining-time", arrival_window_s=0.0)


def test_parity_of_the_default_planner_when_it_migrates() -> None:
    factory = policy_factory("modelfleet", migration=MIGRATING)
    sim, result = _run(factory, tiny_trace().compressed(2.0), seed=7)
    placements, plans = _replay(sim, result, factory, seed=7)
    assert placements > 0 and plans > 0
    assert result.migrations_started > 0
    assert any(e.kind == "migration_started" for e in result.decisions)


def test_parity_with_kv_events_feeding_a_precise_index() -> None:
    """llm-d's profile with the precise (KV-event) prefix index: events replayed in order."""
    spec = policy_spec("llm-d").model_copy(update={"prefix_source": "kv-events"})
    factory = policy_factory("llm-d", spec=spec)
    trace = tiny_trace().compressed(2.0)
    sim, result = _run(factory, trace, seed=3)
    assert Data.KV_EVENTS in sim.router.consumes
    assert sim.chain_kind == "engine"
    kv = [e for e in result.decisions if e.kind == "kv"]
    assert kv, "the precise profile must receive KV events"
    placements, _ = _replay(sim, result, factory, seed=3)
    assert placements == len(trace)
    by_id = {r.request_id: r for r in trace.requests}
    for entry in result.decisions:
        if entry.kind == "pick":
            assert entry.request is not None
            blocks = len(entry.request.block_hashes or ())
            assert blocks == by_id[entry.request_id].input_tokens // 16


def test_replay_detects_a_different_seed() -> None:
    """power-of-two samples with its RNG: replaying with another seed must diverge."""
    trace = tiny_trace().compressed(2.0)
    sim, result = _run(policy_factory("power-of-two"), trace, seed=7)
    with pytest.raises(AssertionError, match="differs"):
        _replay(sim, result, policy_factory("power-of-two"), seed=8)


@pytest.mark.parametrize("kind", ["tokens", "completed", "migrated"])
def test_replay_detects_a_lost_event(kind: str) -> None:
    """Each kind of event the proxy reports changes the router's state: losing one shows.

    (A lost ``first_token`` does not: the first ``on_tokens`` marks the first token itself.)
    """
    factory = policy_factory("modelfleet", migration=MIGRATING)
    sim, result = _run(factory, tiny_trace().compressed(2.0), seed=7)
    lost = next(i for i, e in enumerate(result.decisions) if e.kind == kind)
    del result.decisions[lost]
    with pytest.raises(AssertionError, match="differs"):
        _replay(sim, result, factory, seed=7)


# -- the live scheduler's own wiring (modelfleet.scheduler.core) --------------------------------


def _live_factory(name: str, prefix_source: str = "approximate") -> PolicyFactory:
    """The simulator runs exactly what the live scheduler derives from its RoutingPolicy."""
    spec = live_policy(name, prefix_source=prefix_source).spec
    return policy_factory(
        name,
        spec=profile_spec_from_placement(spec.placement),
        migration=migration_params_from_api(spec.migration),
    )


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_simulator_and_live_scheduler_decide_identically(name: str) -> None:
    """A recorded run replayed through SchedulerCore (RoutingPolicy → router, selector, the
    core's scrape and KV-event entry points) gives the same snapshots, placements and plans."""
    trace = tiny_trace().compressed(2.0)
    sim, result = _run(_live_factory(name), trace, seed=7)
    live = LiveScheduler(live_policy(name), 7, sim.router.endpoints())
    placements, plans = _replay(sim, result, _live_factory(name), seed=7, fake=live)
    assert placements == len(trace)
    assert live.router.in_flight == 0
    if name in ("llumnix", "modelfleet"):
        assert plans > 0  # planning rounds compared (they move nothing on this light trace)


def test_live_scheduler_parity_when_it_migrates() -> None:
    """A run whose plans move requests: a 50 ms TTFT target puts queued requests beyond it, and
    llumnix's planner (from its RoutingPolicy, like the live scheduler) moves one; the live
    core's plans are the simulator's, move for move."""
    factory = _live_factory("llumnix")
    trace = tiny_trace().compressed(2.0)
    sim, result = _run(factory, trace, seed=7, ttft_slo_s=0.05)
    assert result.migrations_started > 0
    live = LiveScheduler(live_policy("llumnix"), 7, sim.router.endpoints())
    placements, plans = _replay(sim, result, factory, seed=7, fake=live)
    assert placements == len(trace) and plans > 0
    assert live.router.in_flight == 0


def test_live_scheduler_parity_with_kv_events() -> None:
    factory = _live_factory("llm-d", "kv-events")
    trace = tiny_trace().compressed(2.0)
    sim, result = _run(factory, trace, seed=3)
    live = LiveScheduler(live_policy("llm-d", prefix_source="kv-events"), 3, sim.router.endpoints())
    assert Data.KV_EVENTS in live.router.consumes
    placements, _ = _replay(sim, result, factory, seed=3, fake=live)
    assert placements == len(trace)


def test_live_replay_detects_a_different_seed() -> None:
    trace = tiny_trace().compressed(2.0)
    factory = _live_factory("power-of-two")
    sim, result = _run(factory, trace, seed=7)
    live = LiveScheduler(live_policy("power-of-two"), 8, sim.router.endpoints())
    with pytest.raises(AssertionError, match="differs"):
        _replay(sim, result, factory, seed=8, fake=live)
