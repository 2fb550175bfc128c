"""The routing host: views from static info + scrapes + counters, hooks fanned out once, plans."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from policy_fakes import PERF, FakeClock, req, tokens

from modelfleet.policy.baselines import build_policy, policy_spec
from modelfleet.policy.config import ProfileSpec, build_profile
from modelfleet.policy.framework import Data, Plugin
from modelfleet.policy.hashing import FunctionBlockHasher
from modelfleet.policy.host import EndpointInfo, EndpointMetrics, Router
from modelfleet.policy.load import InflightTracker
from modelfleet.policy.migration import MigrationParams, MigrationPlanner
from modelfleet.policy.plugins import default_registry
from modelfleet.policy.types import Decision, EndpointId, NoEndpointError, RequestId, RequestView

pytestmark = pytest.mark.unit

A, B, C = EndpointId("a"), EndpointId("b"), EndpointId("c")


class Recorder(Plugin):
    """A tracker that counts every hook it receives (to check the one-fan-out rule)."""

    def __init__(self) -> None:
        self.name = "recorder"
        self.calls: Counter[str] = Counter()
        self.migrated: list[tuple[str, str, str, int]] = []

    def on_routed(self, request: RequestView, decision: Decision) -> None:
        self.calls["routed"] += 1

    def on_first_token(self, request_id: RequestId, endpoint: EndpointId) -> None:
        self.calls["first_token"] += 1

    def on_completed(self, request_id: RequestId, endpoint: EndpointId) -> None:
        self.calls["completed"] += 1

    def on_migrated(
        self, request: RequestView, src: EndpointId, dst: EndpointId, generated_tokens: int
    ) -> None:
        self.calls["migrated"] += 1
        self.migrated.append((request.id, src, dst, generated_tokens))

    def on_kv_event(self, endpoint: EndpointId, event: object) -> None:
        self.calls["kv"] += 1


def info(name: str, **kw: Any) -> EndpointInfo:
    return EndpointInfo(EndpointId(name), pool="p", perf=PERF, **kw)


def router(
    spec: ProfileSpec | None = None,
    *,
    planner: MigrationPlanner | None = None,
    clock: FakeClock | None = None,
    names: tuple[str, ...] = ("a", "b", "c"),
) -> tuple[Router, Recorder]:
    rec = Recorder()
    profile = build_profile(
        spec
        or ProfileSpec.model_validate(
            {"scorers": [{"type": "queue", "parameters": {"metric": "inflight-requests"}}]}
        ),
        default_registry(),
        clock or FakeClock(),
        random.Random(0),
        extra_trackers=(rec,),
    )
    return Router(profile, planner=planner, pool="p", endpoints=[info(n) for n in names]), rec


def rq(name: str, **kw: Any) -> RequestView:
    return req(name, pool="p", prompt_tokens=kw.pop("prompt", 100), **kw)


# -- the endpoint set and the views ------------------------------------------------------------


def test_views_join_static_info_latest_scrape_and_fresh_counters() -> None:
    r, _ = router()
    r.update_metrics(B, EndpointMetrics(running=3, waiting=2, kv_cache_usage=0.5))
    r.update_metrics(B, EndpointMetrics(running=4, waiting=1, kv_cache_usage=0.25))
    r.update_metrics(EndpointId("gone"), EndpointMetrics(running=9))  # dropped, no error
    d = r.route(rq("r1"))
    views = {v.id: v for v in r.views()}
    assert [v.id for v in r.views()] == [A, B, C]  # the order endpoints were added
    assert (views[B].running, views[B].waiting, views[B].kv_cache_usage) == (4, 1, 0.25)
    assert (views[A].running, views[A].waiting) == (0, 0)  # no scrape yet
    chosen = views[d.endpoint]
    assert (chosen.inflight_requests, chosen.inflight_tokens) == (1, 100)
    assert chosen.inflight_prefill_tokens == 100
    assert all(v.perf is PERF and v.pool == "p" for v in views.values())


def test_endpoints_can_be_added_drained_and_removed_at_run_time() -> None:
    r, _ = router(names=("a",))
    r.add_endpoint(info("b"))
    assert [v.id for v in r.views()] == [A, B]
    r.set_draining(A)
    r.set_healthy(B, False)
    views = r.views()
    assert views[0].draining and not views[1].healthy
    with pytest.raises(NoEndpointError, match="healthy"):
        r.route(rq("r1"))
    assert r.in_flight == 0  # nothing recorded for a request that was not placed
    r.set_healthy(B, True)
    assert r.route(rq("r2")).endpoint == B
    r.remove_endpoint(A)
    assert [v.id for v in r.views()] == [B]
    with pytest.raises(KeyError, match="unknown endpoint 'a'"):
        r.set_draining(A)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.add_endpoint(info("a")), "already in pool 'p'"),
        (
            lambda r: r.add_endpoint(EndpointInfo(EndpointId("x"), pool="q")),
            "pool 'q', this router serves pool 'p'",
        ),
        (lambda r: r.route(req("x", pool="q")), "for pool 'q'"),
        (lambda r: EndpointInfo(EndpointId("x"), relative_speed=0.0), "relative_speed"),
        (lambda r: EndpointMetrics(running=-1), "running and waiting"),
        (lambda r: EndpointMetrics(kv_cache_usage=1.5), "kv_cache_usage"),
    ],
    ids=["duplicate", "other-pool-endpoint", "other-pool-request", "speed", "running", "kv"],
)
def test_bad_input_is_refused_naming_it(call: Any, message: str) -> None:
    r, _ = router()
    with pytest.raises(ValueError, match=message):
        call(r)


def test_a_request_in_flight_cannot_be_routed_twice() -> None:
    r, _ = router()
    r.route(rq("r1"))
    with pytest.raises(ValueError, match="already in flight"):
        r.route(rq("r1"))
    r.on_completed(RequestId("r1"))
    r.route(rq("r1"))  # a retry after the failed attempt was reported


# -- hooks ---------------------------------------------------------------------------------------


def test_each_hook_reaches_the_profile_and_the_tracker_once() -> None:
    r, rec = router()
    d = r.route(rq("r1"))
    rid = RequestId("r1")
    r.on_first_token(rid)
    r.on_first_token(rid)  # idempotent
    r.on_tokens(rid, 3)
    r.on_kv_event(d.endpoint, {"type": "AllBlocksCleared"})
    dst = next(e for e in (A, B, C) if e != d.endpoint)
    r.on_migrated(rid, dst)
    r.on_completed(rid)
    r.on_completed(rid)  # already gone: ignored
    r.on_tokens(rid, 5)  # a late chunk after completion: ignored
    assert rec.calls == Counter(routed=1, first_token=1, kv=1, migrated=1, completed=1)
    assert rec.migrated == [("r1", d.endpoint, dst, 3)]
    assert all(r.tracker.counters(e) == (0, 0, 0) for e in (A, B, C))
    assert r.in_flight == 0


def test_counters_match_an_inflight_tracker_fed_by_hand() -> None:
    r, _ = router()
    ref = InflightTracker()
    for i in range(6):
        d = r.route(rq(f"r{i}", prompt=100 + i))
        ref.on_routed(rq(f"r{i}", prompt=100 + i), d.endpoint)
    for i in range(4):
        rid = RequestId(f"r{i}")
        r.on_tokens(rid, 1 + i)  # the first chunk also marks the first token
        ref.on_first_token(rid)
        ref.on_token(rid, 1 + i)
    src = r.endpoint_of(RequestId("r1"))
    assert src is not None
    dst = next(e for e in (A, B, C) if e != src)
    r.on_migrated(RequestId("r1"), dst)
    ref.on_migrated(RequestId("r1"), src, dst)
    ref.on_first_token(RequestId("r1"))
    r.on_completed(RequestId("r2"))
    ref.on_completed(RequestId("r2"))
    for v in r.views():
        assert (v.inflight_requests, v.inflight_tokens, v.inflight_prefill_tokens) == (
            ref.counters(v.id)
        )
    assert r.endpoint_of(RequestId("r1")) == dst


def test_migrated_request_teaches_the_prefix_index_its_destination() -> None:
    spec = ProfileSpec.model_validate({"scorers": [{"type": "prefix-cache"}]})
    r, _ = router(spec)
    first = rq("r1", prompt=640, token_ids=tokens(640))
    d = r.route(first)
    dst = next(e for e in (A, B, C) if e != d.endpoint)
    r.on_migrated(RequestId("r1"), dst)
    index = r.profile.prefix_index
    assert index is not None
    hits = index.match(rq("r2", prompt=640, token_ids=tokens(640)))
    assert hits[d.endpoint] == hits[dst] == 640


# -- what the policy consumes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "spec_update", "expected"),
    [
        ("round-robin", {}, set()),
        ("least-request", {}, {Data.INFLIGHT}),
        ("llm-d", {}, {Data.PREFIX_HITS, Data.ENGINE_METRICS}),
        ("llm-d", {"prefix_source": "kv-events"}, {Data.PREFIX_HITS, Data.ENGINE_METRICS}),
        ("cache-aware", {}, {Data.INFLIGHT, Data.PROMPT}),
        (
            "modelfleet",
            {},
            {Data.PREFIX_HITS, Data.PERF_MODEL, Data.ENGINE_METRICS, Data.INFLIGHT},
        ),
    ],
    ids=["round-robin", "least-request", "llm-d", "llm-d-kv-events", "cache-aware", "modelfleet"],
)
def test_router_says_what_the_policy_consumes(
    name: str, spec_update: dict[str, Any], expected: set[Data]
) -> None:
    hasher = FunctionBlockHasher("f", 16, lambda ids: list(ids))
    spec = policy_spec(name).model_copy(update=spec_update)
    pol = build_policy(
        name, clock=FakeClock(), rng=random.Random(0), spec=spec, precise_hasher=hasher
    )
    r = Router(pol.profile, planner=pol.planner)
    kv = spec_update.get("prefix_source") == "kv-events"
    assert r.consumes == frozenset(expected | ({Data.KV_EVENTS} if kv else set()))


# -- planning ------------------------------------------------------------------------------------


def test_plan_builds_inflight_views_from_what_the_host_observed() -> None:
    clock = FakeClock(start=10.0)
    r, _ = router(planner=MigrationPlanner(MigrationParams(enable_load_balance=False)), clock=clock)
    r.route(rq("q", arrival_s=10.0))  # no token yet
    r.route(rq("d", arrival_s=10.0, max_tokens=50))
    clock.advance(1.0)
    r.on_tokens(RequestId("d"), 1)  # first token at 11.0
    clock.advance(0.5)
    r.on_tokens(RequestId("d"), 4)
    clock.advance(0.5)  # now 12.0
    rnd = r.plan()
    by_id = {str(v.request.id): v for v in rnd.inflight}
    assert by_id["q"].phase == "queued" and by_id["q"].observed_tpot_s is None
    assert by_id["q"].age_s == pytest.approx(2.0)
    d = by_id["d"]
    assert (d.phase, d.generated_tokens, d.src) == ("decode", 5, r.endpoint_of(RequestId("d")))
    assert d.observed_tpot_s == pytest.approx(1.0 / 4)  # (12 - 11) / (5 - 1)
    assert rnd.views == r.views()
    assert rnd.in_progress == frozenset() and rnd.migrations == ()


def test_drain_moves_everything_out_and_started_migrations_are_not_planned_twice() -> None:
    clock = FakeClock()
    planner = MigrationPlanner(MigrationParams(enable_slo_rescue=False, enable_load_balance=False))
    r, _ = router(planner=planner, clock=clock, names=("a", "b"))
    for i in range(2):
        r.route(rq(f"r{i}", max_tokens=100))
    on_a = [RequestId(f"r{i}") for i in range(2) if r.endpoint_of(RequestId(f"r{i}")) == A]
    assert len(on_a) == 1, "the queue scorer spreads two requests over two endpoints"
    r.set_draining(A)
    rnd = r.plan()
    assert [(m.request_id, m.src, m.dst, m.reason) for m in rnd.migrations] == [
        (rid, A, B, "drain") for rid in on_a
    ]
    for m in rnd.migrations:
        r.on_migration_started(m.request_id, m.dst)
    again = r.plan()
    assert again.in_progress == frozenset(on_a) and again.migrations == ()
    r.on_migration_aborted(on_a[0])
    assert [m.request_id for m in r.plan().migrations] == [on_a[0]]
    r.on_migrated(on_a[0], B)
    assert r.endpoint_of(on_a[0]) == B and on_a[0] not in r.plan().in_progress


def test_without_a_planner_plan_is_empty() -> None:
    r, _ = router()
    r.route(rq("r1"))
    assert r.plan_period_s is None
    rnd = r.plan()
    assert (rnd.views, rnd.inflight, rnd.migrations) == ((), (), ())


# -- live configuration and scale-out ----------------------------------------------------------


def test_set_profile_keeps_endpoints_scrapes_and_requests_in_flight() -> None:
    r, rec = router()
    r.update_metrics(B, EndpointMetrics(running=2))
    d = r.route(rq("r1"))
    new_rec = Recorder()
    profile = build_profile(
        ProfileSpec.model_validate({"picker": {"type": "round-robin"}}),
        default_registry(),
        FakeClock(),
        random.Random(0),
        extra_trackers=(new_rec,),
    )
    r.set_profile(profile)
    assert r.profile is profile and Data.PREFIX_HITS not in r.consumes
    views = {v.id: v for v in r.views()}
    assert views[B].running == 2 and views[d.endpoint].inflight_requests == 1
    r.on_tokens(RequestId("r1"), 2)
    r.on_completed(RequestId("r1"))  # reaches the new profile only, which ignores the id
    assert new_rec.calls["completed"] == 1 and rec.calls["completed"] == 0
    assert r.in_flight == 0 and all(v.inflight_requests == 0 for v in r.views())
    r.route(rq("r2"))
    assert new_rec.calls["routed"] == 1


def test_peer_inflight_adds_to_the_views_only() -> None:
    r, _ = router()
    r.set_peer_inflight(A, 3, 300, 100)
    r.set_peer_inflight(EndpointId("unknown"), 9, 9, 9)  # ignored
    d = r.route(rq("r1"))
    assert d.endpoint != A  # least in-flight requests: A is busy with the peers' requests
    views = {v.id: v for v in r.views()}
    assert (views[A].inflight_requests, views[A].inflight_tokens) == (3, 300)
    assert views[A].inflight_prefill_tokens == 100
    assert r.tracker.counters(A) == (0, 0, 0)
    r.set_peer_inflight(A, 0, 0, 0)
    assert {v.id: v for v in r.views()}[A].inflight_requests == 0


def test_plan_refuses_a_migration_out_of_the_pool() -> None:
    """The router is the last guard: a planner bug that names an endpoint of another pool
    raises instead of reaching the executor."""

    class Rogue(MigrationPlanner):
        def plan(self, endpoints, inflight, in_progress=()):  # type: ignore[no-untyped-def]
            from modelfleet.policy.migration import Migration

            return [Migration(inflight[0].request.id, inflight[0].src, EndpointId("x"), "drain")]

    r, _ = router(planner=Rogue())
    r.route(rq("r1"))
    with pytest.raises(AssertionError, match="outside pool 'p'"):
        r.plan()


def test_declared_kv_capacity_sizes_the_approximate_index() -> None:
    spec = policy_spec("llm-d")
    profile = build_profile(spec, default_registry(), FakeClock(), random.Random(0))
    Router(
        profile,
        pool="p",
        endpoints=[info("a", kv_capacity_tokens=1000), info("b"), info("c", kv_capacity_tokens=50)],
    )
    index = profile.prefix_index
    assert index is not None
    assert index.capacity_tokens(A) == 1000  # type: ignore[attr-defined]
    assert index.capacity_tokens(C) == 50  # type: ignore[attr-defined]
    assert index.capacity_tokens(B) == 31_250 * 64  # type: ignore[attr-defined]
