"""The scheduler-side in-flight counters return to zero for any interleaving of lifecycle events.

Two levels, each against a brute-force reference that recomputes every endpoint's counters
from the list of requests in flight (never from running sums):

* :class:`InflightTracker` alone, fed routed, first-token, token, completed, aborted and
  migrated events (a migration from the wrong source included, which must be ignored) in any
  order, for requests it may or may not know;
* the :class:`Router` host of the default ``modelfleet`` policy (approximate prefix index,
  planner, latency learner), driven through its public hooks only, with migrations started,
  given up and switched over, plans executed, endpoints drained, made unhealthy, removed and
  added back, and refused routes. After every event the views' counters, ``in_flight``,
  ``endpoint_of`` and the planner's ``in_progress`` equal the reference; when every request
  has ended, every counter is zero and the prefix index pins no decode room anywhere.

Found no bug in the counters (a planted one, e.g. the router not marking the first token or
the tracker accepting a migration from the wrong source, fails them).

An aborted request reaches the tracker and the router as ``on_completed`` (the documented
hook for "finished, failed or aborted").
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from modelfleet.policy.baselines import build_policy
from modelfleet.policy.host import EndpointInfo, EndpointMetrics, Router
from modelfleet.policy.learn import LatencyLearner
from modelfleet.policy.load import InflightTracker
from modelfleet.policy.perf import ParametricPerfModel
from modelfleet.policy.prefix import ApproxPrefixIndex
from modelfleet.policy.types import EndpointId, NoEndpointError, RequestId, RequestView

pytestmark = pytest.mark.unit

EPS = [EndpointId(n) for n in ("a", "b", "c")]
RIDS = [RequestId(f"r{i}") for i in range(3)]


@dataclass
class Flight:
    endpoint: EndpointId
    context: int  # prompt tokens as the endpoint sees them (prompt + generated, after a move)
    generated: int = 0  # tokens generated on this endpoint
    first_token: bool = False


def expected(flights: dict[RequestId, Flight], ep: EndpointId) -> tuple[int, int, int]:
    mine = [f for f in flights.values() if f.endpoint == ep]
    return (
        len(mine),
        sum(f.context + f.generated for f in mine),
        sum(f.context for f in mine if not f.first_token),
    )


rids = st.sampled_from(RIDS)
eps = st.sampled_from(EPS)
tracker_events = st.lists(
    st.one_of(
        st.tuples(st.just("routed"), rids, eps, st.integers(0, 300)),
        st.tuples(st.just("first-token"), rids, eps, st.just(0)),
        st.tuples(st.just("token"), rids, eps, st.integers(1, 5)),
        st.tuples(st.just("completed"), rids, eps, st.just(0)),
        st.tuples(st.just("aborted"), rids, eps, st.just(0)),
        # src is the request's endpoint, or (odd n) a given one that may be wrong
        st.tuples(st.just("migrated"), rids, eps, st.integers(0, 1)),
    ),
    min_size=8,
    max_size=40,
)


@settings(max_examples=3 * settings.default.max_examples)
@given(events=tracker_events)
def test_tracker_counts_match_the_requests_in_flight_and_return_to_zero(
    events: list[tuple[str, RequestId, EndpointId, int]],
) -> None:
    t = InflightTracker()
    ref: dict[RequestId, Flight] = {}
    for kind, rid, ep, n in events:
        f = ref.get(rid)
        if kind == "routed":  # a known id is re-routed: its old attempt ends first
            t.on_routed(RequestView(rid, prompt_tokens=n), ep)
            ref[rid] = Flight(ep, n)
        elif kind == "first-token":
            t.on_first_token(rid)
            if f is not None:
                f.first_token = True
        elif kind == "token":
            t.on_token(rid, n)
            if f is not None:
                f.generated += n
        elif kind in ("completed", "aborted"):
            t.on_completed(rid)
            ref.pop(rid, None)
        else:
            src = f.endpoint if f is not None and n == 0 else ep
            dst = EPS[(EPS.index(ep) + 1) % len(EPS)]
            t.on_migrated(rid, src, dst)
            if f is not None and f.endpoint == src:  # re-prefills everything on dst
                ref[rid] = Flight(dst, f.context + f.generated)
        for e in EPS:
            assert t.counters(e) == expected(ref, e)
        for r in RIDS:
            assert t.endpoint_of(r) == (ref[r].endpoint if r in ref else None)
    for rid in list(ref):
        t.on_completed(rid)
    assert [t.counters(e) for e in EPS] == [(0, 0, 0)] * len(EPS)


PERF = ParametricPerfModel(prefill_s_per_token=1e-4, decode_base_s=0.01, decode_s_per_seq=2e-3)


def info(ep: EndpointId) -> EndpointInfo:
    return EndpointInfo(ep, pool="p", perf=PERF, kv_capacity_tokens=4096)


def present(router: Router) -> set[EndpointId]:
    return {i.id for i in router.endpoints()}


router_events = st.lists(
    st.one_of(
        st.tuples(st.just("route"), rids, st.integers(1, 400)),
        st.tuples(st.just("first-token"), rids, st.just(0)),
        st.tuples(st.just("tokens"), rids, st.integers(1, 6)),
        st.tuples(st.just("completed"), rids, st.just(0)),
        st.tuples(st.just("aborted"), rids, st.just(0)),
        st.tuples(st.just("migration-started"), rids, st.integers(0, 2)),
        st.tuples(st.just("migration-aborted"), rids, st.just(0)),
        st.tuples(st.just("migrated"), rids, st.integers(0, 2)),
        st.tuples(st.just("plan"), rids, st.just(0)),
        st.tuples(st.just("drain"), rids, st.integers(0, 5)),  # 3..5: undrain
        st.tuples(st.just("health"), rids, st.integers(0, 5)),  # 3..5: healthy again
        st.tuples(st.just("scrape"), rids, st.integers(0, 2)),
        st.tuples(st.just("remove-or-add"), rids, st.integers(0, 2)),
        st.tuples(st.just("tick"), rids, st.integers(1, 4)),
    ),
    min_size=8,
    max_size=50,
)


@settings(max_examples=2 * settings.default.max_examples, deadline=None)
@given(events=router_events, seed=st.integers(0, 3))
def test_router_counters_follow_the_hooks_and_return_to_zero(
    events: list[tuple[str, RequestId, int]], seed: int
) -> None:
    now = [0.0]
    policy = build_policy("modelfleet", clock=lambda: now[0], rng=random.Random(seed))
    assert policy.planner is not None
    router = Router(
        policy.profile,
        planner=policy.planner,
        pool="p",
        learner=LatencyLearner(),
        endpoints=[info(ep) for ep in EPS],
    )
    index = policy.profile.prefix_index
    assert isinstance(index, ApproxPrefixIndex)
    ref: dict[RequestId, Flight] = {}
    migrating: dict[RequestId, EndpointId] = {}
    generated: dict[RequestId, int] = {}  # streamed to the client, over every endpoint

    def switch_over(rid: RequestId, dst: EndpointId) -> None:
        router.on_migrated(rid, dst)
        f = ref.get(rid)
        if f is not None:  # re-prefilled there, past its first token (dst's first token)
            ref[rid] = Flight(dst, f.context + f.generated, first_token=True)
            migrating.pop(rid, None)

    for kind, rid, n in events:
        f = ref.get(rid)
        if kind == "route":
            req = RequestView(rid, pool="p", prompt_tokens=n, max_tokens=32, arrival_s=now[0])
            before = [v.inflight_requests for v in router.views()]
            try:
                decision = router.route(req)
            except ValueError:  # already in flight: refused, nothing recorded
                assert f is not None
            except NoEndpointError:  # every endpoint unhealthy or draining: nothing recorded
                assert f is None
                assert [v.inflight_requests for v in router.views()] == before
            else:
                assert f is None
                ref[rid] = Flight(decision.endpoint, n)
                generated[rid] = 0
        elif kind == "first-token":
            router.on_first_token(rid)
            if f is not None:
                f.first_token = True
        elif kind == "tokens":
            router.on_tokens(rid, n)
            if f is not None:
                f.first_token = True
                f.generated += n
                generated[rid] += n
        elif kind in ("completed", "aborted"):
            router.on_completed(rid)
            ref.pop(rid, None)
            migrating.pop(rid, None)
        elif kind == "migration-started":
            router.on_migration_started(rid, EPS[n])
            if f is not None:
                migrating[rid] = EPS[n]
        elif kind == "migration-aborted":
            router.on_migration_aborted(rid)
            migrating.pop(rid, None)
        elif kind == "migrated":
            switch_over(rid, EPS[n])
        elif kind == "plan":
            rnd = router.plan()
            assert rnd.in_progress == frozenset(migrating)
            for m in rnd.migrations:  # the executor carries every proposal out
                assert m.request_id in ref and m.request_id not in migrating
                router.on_migration_started(m.request_id, m.dst)
                migrating[m.request_id] = m.dst
                switch_over(m.request_id, m.dst)
        elif kind == "drain" and EPS[n % 3] in present(router):
            router.set_draining(EPS[n % 3], n < 3)
        elif kind == "health" and EPS[n % 3] in present(router):
            router.set_healthy(EPS[n % 3], n >= 3)
        elif kind == "remove-or-add":  # requests still running there stay counted
            if EPS[n] in present(router):
                router.remove_endpoint(EPS[n])
            else:
                router.add_endpoint(info(EPS[n]))
        elif kind == "scrape":
            router.update_metrics(EPS[n], EndpointMetrics(running=n, waiting=1 - n % 2))
        elif kind == "tick":
            now[0] += 0.25 * n
        for v in router.views():
            e = v.id
            assert (v.inflight_requests, v.inflight_tokens, v.inflight_prefill_tokens) == (
                expected(ref, e)
            )
        assert router.in_flight == len(ref)
        for r in RIDS:
            assert router.endpoint_of(r) == (ref[r].endpoint if r in ref else None)
        assert {i.request.id: i.generated_tokens for i in router.inflight()} == {
            r: generated[r] for r in ref
        }
    for rid in list(ref):
        router.on_completed(rid)
    for ep in EPS:
        if ep not in present(router):
            router.add_endpoint(info(ep))
    assert [
        (v.inflight_requests, v.inflight_tokens, v.inflight_prefill_tokens) for v in router.views()
    ] == [(0, 0, 0)] * len(EPS)
    assert router.in_flight == 0 and router.inflight() == ()
    assert router.plan().in_progress == frozenset()
    # no decode room stays pinned in the prefix index once nothing runs
    assert all(v == 0 for v in index._pinned.values())
