"""Every named policy builds, decides, and behaves like the system it stands for."""

from __future__ import annotations

import random

import pytest
from policy_fakes import PERF, FakeClock, ep, req, tokens

from modelfleet.policy.baselines import POLICY_NAMES, build_policy, policy_spec
from modelfleet.policy.migration import MigrationPlanner
from modelfleet.policy.types import EndpointView, RequestView

pytestmark = pytest.mark.unit


def fleet(**kw: object) -> list[EndpointView]:
    return [ep(n, perf=PERF, **kw) for n in ("e0", "e1", "e2", "e3")]  # type: ignore[arg-type]


def route(policy, r: RequestView, eps: list[EndpointView]) -> str:  # type: ignore[no-untyped-def]
    d = policy.profile.pick(r, eps)
    policy.profile.on_routed(r, d)
    return str(d.endpoint)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_policy_builds_and_decides(name: str) -> None:
    pol = build_policy(name, clock=FakeClock(), rng=random.Random(0))
    r = req(prompt_tokens=256, token_ids=tokens(256), text="hello " * 40)
    with pytest.raises(Exception, match="no endpoint"):
        pol.profile.pick(r, [])
    assert route(pol, r, [ep("only", perf=PERF)]) == "only"
    assert route(pol, r, fleet()) in {"e0", "e1", "e2", "e3"}
    assert (pol.planner is not None) == (name in {"llumnix", "modelfleet"})
    assert pol.name == name


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_policies_never_pick_draining_endpoints(name: str) -> None:
    pol = build_policy(name, clock=FakeClock(), rng=random.Random(0))
    eps = [ep("gone", perf=PERF, draining=True), ep("here", perf=PERF)]
    for i in range(5):
        assert route(pol, req(f"r{i}", prompt_tokens=10, token_ids=tokens(10)), eps) == "here"


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_same_seed_same_decisions(name: str) -> None:
    def run() -> list[str]:
        pol = build_policy(name, clock=FakeClock(), rng=random.Random(3))
        out = []
        for i in range(20):
            eps = [ep(f"e{j}", perf=PERF, inflight_requests=(i * j) % 5) for j in range(6)]
            r = req(f"r{i}", prompt_tokens=128, token_ids=tokens(128, start=1000 * (i % 4)))
            out.append(route(pol, r, eps))
        return out

    assert run() == run()


def test_unknown_policy_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown policy 'random'; valid policies: round-robin"):
        policy_spec("random")


def test_round_robin_cycles() -> None:
    pol = build_policy("round-robin", clock=FakeClock(), rng=random.Random(0))
    got = [route(pol, req(f"r{i}"), fleet()) for i in range(5)]
    assert got == ["e0", "e1", "e2", "e3", "e0"]


def test_least_request_picks_fewest_inflight() -> None:
    pol = build_policy("least-request", clock=FakeClock(), rng=random.Random(0))
    eps = [ep("a", inflight_requests=3), ep("b", inflight_requests=1), ep("c", inflight_requests=2)]
    assert route(pol, req(), eps) == "b"


def test_llm_d_follows_prefix_and_avoids_queues() -> None:
    pol = build_policy("llm-d", clock=FakeClock(), rng=random.Random(0))
    first = route(pol, req("1", prompt_tokens=1024, token_ids=tokens(1024)), fleet())
    again = route(pol, req("2", prompt_tokens=1024, token_ids=tokens(1024)), fleet())
    assert again == first
    # a 1k-token full hit scores 3·(0.5·(1024/8192)² + 0.5·1) = 1.52, less than the queue
    # scorer's min-max spread (2·1): with the queue on the hit endpoint, llm-d moves away
    queued = [ep(e.id, perf=PERF, waiting=50 if e.id == first else 0) for e in fleet()]
    assert route(pol, req("3", prompt_tokens=1024, token_ids=tokens(1024)), queued) != first
    # an 8k-token hit earns the full 3 and outweighs the queue
    long_first = route(pol, req("4", prompt_tokens=8192, token_ids=tokens(8192, 7)), fleet())
    queued = [ep(e.id, perf=PERF, waiting=50 if e.id == long_first else 0) for e in fleet()]
    assert route(pol, req("5", prompt_tokens=8192, token_ids=tokens(8192, 7)), queued) == long_first


def test_llumnix_dispatches_to_least_loaded_and_plans_balance() -> None:
    pol = build_policy("llumnix", clock=FakeClock(), rng=random.Random(0))
    eps = [ep("a", perf=PERF, running=5, kv_cache_usage=0.5), ep("b", perf=PERF, running=1)]
    assert route(pol, req(), eps) == "b"
    assert isinstance(pol.planner, MigrationPlanner)
    assert not pol.planner.params.enable_slo_rescue


def test_modelfleet_planner_shares_the_profile_prefix_index() -> None:
    pol = build_policy("modelfleet", clock=FakeClock(), rng=random.Random(0))
    assert pol.planner is not None and pol.planner.prefix_index is pol.profile.prefix_index
