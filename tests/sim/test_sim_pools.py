"""Fleets of several pools: one router per pool, requests and migrations stay in their pool,
model-size-aware mapping of a trace onto the pools, and parity per pool."""

from __future__ import annotations

import pytest

from modelfleet.policy.learn import LatencyLearner
from modelfleet.policy.migration import MigrationParams
from modelfleet.policy.types import NoEndpointError
from modelfleet.sim.cluster import ClusterSimulator, SimConfig, pool_rng_seed, pool_shares
from modelfleet.sim.fleet import pooled_fleet
from modelfleet.sim.policies import policy_factory
from modelfleet.sim.traces import assign_pools

from .fake_scheduler import FakeScheduler
from .tiny import tiny_trace

pytestmark = pytest.mark.unit

SMALL = {"num_gpu_blocks": 800, "max_model_len": 8192, "max_num_seqs": 16}


def two_pools() -> tuple:  # type: ignore[type-arg]
    return pooled_fleet(
        [
            ("llama-3-8b", 1, {"h100-80gb": 1, "l40s": 2}),
            ("llama-3-70b", 4, {"h100-80gb": 1, "a100-80gb": 1}),
        ],
        overrides=SMALL,
    )


def test_shares_follow_declared_capacity_over_model_size() -> None:
    shares = pool_shares(two_pools())
    assert set(shares) == {"llama-3-8b", "llama-3-70b"}
    assert sum(shares.values()) == pytest.approx(1.0)
    # 8B: (1 + 2 x 0.366) / 8.03e9 = 2.2e-10; 70B: 4 x (1 + 0.315) / 70.6e9 = 7.5e-11
    assert shares["llama-3-8b"] == pytest.approx(0.743, abs=0.01)


def test_requests_and_migrations_stay_in_their_pool() -> None:
    fleet = two_pools()
    trace = assign_pools(tiny_trace(n_conv=40).compressed(3.0), pool_shares(fleet), seed=1)
    eager = MigrationParams(
        imbalance_threshold=0.5, min_gain_s=0.0, min_gain_fraction=0.0, confidence_z=0.0
    )
    sim = ClusterSimulator(
        trace, fleet, policy_factory("modelfleet", migration=eager), SimConfig(ttft_slo_s=1.0)
    )
    result = sim.run()
    result.check_conservation()
    assert set(sim.routers) == {"llama-3-8b", "llama-3-70b"}
    pool_of = {s.id: s.pool for s in fleet}
    for rec, req in zip(result.records, trace.requests, strict=True):
        assert pool_of[rec.first_endpoint] == req.pool == pool_of[rec.endpoint]
    assert result.migrations_done > 0, "the test needs migrations to mean something"
    assert set(result.pool_metrics) == {"llama-3-8b", "llama-3-70b"}
    served = sum(m.completed for m in result.pool_metrics.values())
    assert served == result.metrics.completed == len(trace)


def test_a_multi_pool_fleet_needs_pools_on_every_request() -> None:
    fleet = two_pools()
    with pytest.raises(ValueError, match="every request must name its pool"):
        ClusterSimulator(tiny_trace(), fleet, policy_factory("round-robin"))
    wrong = assign_pools(tiny_trace(), {"llama-3-8b": 1, "mistral": 1})
    with pytest.raises(ValueError, match="mistral"):
        ClusterSimulator(wrong, fleet, policy_factory("round-robin"))


def test_conversations_stay_together_and_the_mapping_is_deterministic() -> None:
    trace = tiny_trace(n_conv=40)
    a = assign_pools(trace, {"x": 1, "y": 3}, seed=2)
    assert a == assign_pools(trace, {"x": 1, "y": 3}, seed=2)
    by_session: dict[str | None, set[str | None]] = {}
    for r in a.requests:
        by_session.setdefault(r.session_id, set()).add(r.pool)
    assert all(len(p) == 1 for p in by_session.values())
    share_y = sum(r.pool == "y" for r in a.requests) / len(a)
    assert 0.55 < share_y < 0.95


def test_each_pool_replays_identically_into_its_own_live_router() -> None:
    """Parity per pool: the fake live scheduler keeps one router per pool, like the live one."""
    fleet = two_pools()
    trace = assign_pools(tiny_trace(n_conv=30).compressed(2.0), pool_shares(fleet), seed=3)
    factory = policy_factory("modelfleet")
    config = SimConfig(record_decisions=True, seed=5, ttft_slo_s=1.0)
    sim = ClusterSimulator(trace, fleet, factory, config)
    result = sim.run()
    fakes = {
        pool: FakeScheduler(
            factory,
            pool_rng_seed(config.seed, i),
            router.endpoints(),
            pool,
            LatencyLearner(config.learner),
        )
        for i, (pool, router) in enumerate(sim.routers.items())
    }
    picks = 0
    for entry in result.decisions:
        fake = fakes[entry.pool]
        fake.now = entry.time_s
        if entry.kind == "pick":
            assert entry.request is not None
            fake.scraped(entry.scrapes)
            try:
                chosen, views = fake.route(entry.request)
            except NoEndpointError:
                chosen, views = "", fake.router.views()
            assert views == entry.views and chosen == entry.chosen
            picks += 1
        elif entry.kind == "plan":
            fake.scraped(entry.scrapes)
            assert fake.plan().migrations == entry.migrations
        else:
            fake.replay_event(entry)
    assert picks == len(trace)
    assert all(f.router.in_flight == 0 for f in fakes.values())
