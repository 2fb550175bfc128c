"""Migration planner: drain, SLO rescue, load balance, cost model and limits."""

from __future__ import annotations

import dataclasses

import pytest
from policy_fakes import PERF, ep, req, tokens

from modelfleet.policy.hashing import ApproxTokenHasher
from modelfleet.policy.migration import InflightView, Migration, MigrationParams, MigrationPlanner
from modelfleet.policy.prefix import ApproxPrefixIndex
from modelfleet.policy.types import EndpointId, EndpointView

pytestmark = pytest.mark.unit

ONLY_DRAIN = MigrationParams(enable_slo_rescue=False, enable_load_balance=False)
ONLY_RESCUE = MigrationParams(enable_drain=False, enable_load_balance=False)
ONLY_BALANCE = MigrationParams(enable_drain=False, enable_slo_rescue=False)


def inflight(
    name: str, src: str, *, prompt: int = 1000, gen: int = 10, max_tokens: int = 200, **kw
) -> InflightView:  # type: ignore[no-untyped-def]
    r = req(
        name,
        prompt_tokens=prompt,
        max_tokens=max_tokens,
        ttft_slo_s=kw.pop("ttft", None),
        tpot_slo_s=kw.pop("tpot", None),
        token_ids=kw.pop("ids", None),
        priority=kw.pop("priority", 0),
    )
    return InflightView(r, EndpointId(src), generated_tokens=gen, **kw)


def test_empty_inputs_plan_nothing() -> None:
    pl = MigrationPlanner()
    assert pl.plan([], []) == []
    assert pl.plan([ep("a", perf=PERF)], []) == []


def test_one_endpoint_has_nowhere_to_go() -> None:
    pl = MigrationPlanner()
    eps = [ep("a", perf=PERF, draining=True, running=1)]
    assert pl.plan(eps, [inflight("r", "a")]) == []


def test_all_equal_endpoints_are_left_alone() -> None:
    eps = [ep(n, perf=PERF, running=2, inflight_requests=2) for n in "abc"]
    flights = [inflight(f"{n}{i}", n) for n in "abc" for i in range(2)]
    assert MigrationPlanner().plan(eps, flights) == []


def test_drain_moves_every_request_to_best_destination() -> None:
    eps = [
        ep("old", perf=PERF, draining=True, running=2, inflight_requests=2),
        ep("busy", perf=PERF, running=30, inflight_requests=30, inflight_prefill_tokens=50_000),
        ep("idle", perf=PERF),
    ]
    flights = [inflight("r1", "old"), inflight("r2", "old", priority=5)]
    plan = MigrationPlanner(ONLY_DRAIN).plan(eps, flights)
    assert [(m.request_id, m.dst, m.reason) for m in plan] == [
        ("r2", "idle", "drain"),
        ("r1", "idle", "drain"),
    ]
    assert all(m.est_cost_s > 0 for m in plan)


def test_drain_skips_non_migratable_and_unhealthy_destinations() -> None:
    eps = [
        ep("old", perf=PERF, draining=True),
        ep("sick", perf=PERF, healthy=False),
        ep("ok", perf=PERF),
    ]
    flights = [inflight("r1", "old", migratable=False), inflight("r2", "old")]
    plan = MigrationPlanner(ONLY_DRAIN).plan(eps, flights)
    assert [(m.request_id, m.dst) for m in plan] == [("r2", "ok")]


def test_concurrency_limits() -> None:
    eps = [ep("old", perf=PERF, draining=True), ep("a", perf=PERF), ep("b", perf=PERF)]
    flights = [inflight(f"r{i}", "old") for i in range(10)]
    p = MigrationParams(max_concurrent=3, max_per_endpoint=10, enable_load_balance=False)
    assert len(MigrationPlanner(p).plan(eps, flights)) == 3
    assert len(MigrationPlanner(p).plan(eps, flights, in_progress={"x", "y"})) == 1
    assert MigrationPlanner(p).plan(eps, flights, in_progress={"x", "y", "z"}) == []
    # per-endpoint limit: old can only send 2 per plan
    p2 = MigrationParams(max_concurrent=10, max_per_endpoint=2)
    assert len(MigrationPlanner(p2).plan(eps, flights)) == 2


def test_request_already_migrating_is_not_planned_again() -> None:
    eps = [ep("old", perf=PERF, draining=True), ep("a", perf=PERF)]
    plan = MigrationPlanner(ONLY_DRAIN).plan(eps, [inflight("r1", "old")], in_progress={"r1"})
    assert plan == []


def test_slo_rescue_of_a_queued_request() -> None:
    eps = [
        ep("src", perf=PERF, running=10, waiting=5, inflight_prefill_tokens=30_000),
        ep("dst", perf=PERF),
    ]
    late = inflight("late", "src", gen=0, phase="queued", age_s=0.5, ttft=1.0)
    fine = inflight("fine", "src", gen=0, phase="queued", age_s=0.0, ttft=100.0)
    plan = MigrationPlanner(ONLY_RESCUE).plan(eps, [late, fine])
    assert [(m.request_id, m.dst, m.reason) for m in plan] == [("late", "dst", "slo-rescue")]
    assert plan[0].est_gain_s > ONLY_RESCUE.min_gain_s  # the planner moves only above it


def test_slo_rescue_of_a_slow_decode() -> None:
    eps = [ep("src", perf=PERF, running=60), ep("dst", perf=PERF, running=1)]
    slow = inflight("slow", "src", gen=50, max_tokens=2000, observed_tpot_s=0.08, tpot=0.05)
    plan = MigrationPlanner(ONLY_RESCUE).plan(eps, [slow])
    assert [(m.request_id, m.reason) for m in plan] == [("slow", "slo-rescue")]


def test_never_migrates_to_a_worse_place() -> None:
    # the request is violating, but the only destination is worse than staying
    slower = dataclasses.replace(PERF, decode_base_s=0.1)
    eps = [ep("src", perf=PERF, running=60), ep("dst", perf=slower)]
    slow = inflight("slow", "src", gen=50, max_tokens=2000, observed_tpot_s=0.08, tpot=0.05)
    assert MigrationPlanner(ONLY_RESCUE).plan(eps, [slow]) == []
    # nearly done: re-prefilling a long context costs more than finishing here
    eps2 = [ep("src", perf=PERF, running=60), ep("dst", perf=PERF)]
    tail = inflight(
        "tail", "src", prompt=30_000, gen=1990, max_tokens=2000, observed_tpot_s=0.08, tpot=0.05
    )
    assert MigrationPlanner(ONLY_RESCUE).plan(eps2, [tail]) == []


def test_load_balance_moves_shortest_from_hot_to_cold() -> None:
    eps = [
        ep("hot", perf=PERF, running=12, inflight_requests=12),
        ep("cold", perf=PERF, running=0),
    ]
    flights = [inflight(f"r{i}", "hot", prompt=1000 + 100 * i, max_tokens=2000) for i in range(12)]
    plan = MigrationPlanner(ONLY_BALANCE).plan(eps, flights)
    assert plan and plan[0] == Migration(
        plan[0].request_id,
        EndpointId("hot"),
        EndpointId("cold"),
        "load-balance",
        plan[0].est_cost_s,
        plan[0].est_gain_s,
        1000 + 10,  # the whole context is recomputed on the cold endpoint (no index)
    )
    assert plan[0].request_id == "r0"  # SR: shortest first
    # virtual loads are updated, and at most max_per_endpoint (2) moves leave "hot"
    assert [m.request_id for m in plan] == ["r0", "r1"]
    lr = MigrationPlanner(
        MigrationParams(enable_drain=False, enable_slo_rescue=False, selection="LR")
    ).plan(eps, flights)
    assert lr[0].request_id == "r11"


def test_load_balance_below_threshold_does_nothing() -> None:
    eps = [ep("a", perf=PERF, inflight_requests=5), ep("b", perf=PERF, inflight_requests=2)]
    flights = [inflight(f"r{i}", "a") for i in range(5)]
    assert MigrationPlanner(ONLY_BALANCE).plan(eps, flights) == []


def test_prefix_hits_lower_the_cost_and_choose_the_destination() -> None:
    ids = tokens(4096)
    idx = ApproxPrefixIndex(ApproxTokenHasher(64))
    flight = inflight("r", "old", prompt=4096, ids=ids)
    idx.insert(EndpointId("warm"), flight.request.chain(idx.hasher).hashes)
    eps: list[EndpointView] = [
        ep("old", perf=PERF, draining=True),
        ep("cold", perf=PERF),
        ep("warm", perf=PERF),
    ]
    with_index = MigrationPlanner(ONLY_DRAIN, prefix_index=idx).plan(eps, [flight])
    without = MigrationPlanner(ONLY_DRAIN).plan(eps, [flight])
    assert with_index[0].dst == "warm"
    assert with_index[0].est_cost_s < without[0].est_cost_s


def test_endpoints_without_perf_model_are_not_destinations() -> None:
    eps = [ep("old", perf=PERF, draining=True), ep("blind")]
    assert MigrationPlanner(ONLY_DRAIN).plan(eps, [inflight("r", "old")]) == []


def test_params_are_validated() -> None:
    with pytest.raises(ValueError):
        MigrationParams(max_per_endpoint=0)
    with pytest.raises(ValueError):
        MigrationParams(period_s=0)


# -- pools and models ------------------------------------------------------------------------


def test_drain_never_moves_a_request_to_another_pool_or_model() -> None:
    eps = [
        ep("old", perf=PERF, pool="8b", model="llama-3-8b", draining=True, running=1),
        ep("other-pool", perf=PERF, pool="70b", model="llama-3-70b"),
        ep("other-model", perf=PERF, pool="8b", model="llama-3-70b"),
    ]
    assert MigrationPlanner(ONLY_DRAIN).plan(eps, [inflight("r", "old")]) == []
    eps.append(ep("peer", perf=PERF, pool="8b", model="llama-3-8b"))
    plan = MigrationPlanner(ONLY_DRAIN).plan(eps, [inflight("r", "old")])
    assert [m.dst for m in plan] == ["peer"]


def test_rescue_and_balance_stay_within_the_pool() -> None:
    hot = dict(perf=PERF, pool="8b", model="m8", running=40, inflight_requests=40)
    eps = [
        ep("hot", waiting=6, inflight_prefill_tokens=40_000, **hot),
        ep("idle-70b", perf=PERF, pool="70b", model="m70"),
    ]
    flights = [inflight(f"r{i}", "hot", max_tokens=3000, ttft=0.5, age_s=0.4) for i in range(10)]
    flights += [inflight("q", "hot", gen=0, phase="queued", ttft=0.5, age_s=0.4)]
    eager = MigrationParams(imbalance_threshold=0.0, min_gain_s=0.0, min_gain_fraction=0.0)
    assert MigrationPlanner(eager).plan(eps, flights) == []


def test_committing_a_cross_pool_move_is_a_defect_not_a_decision() -> None:
    from modelfleet.policy.migration import _Load, _Move, _Round

    a = ep("a", perf=PERF, pool="8b", model="m")
    b = ep("b", perf=PERF, pool="70b", model="m")
    rnd = _Round(
        params=MigrationParams(),
        budget=4,
        by_id={a.id: a, b.id: b},
        loads={e.id: _Load(0, 0, 0, 0.0) for e in (a, b)},
        targets=[a, b],
        moved=set(),
    )
    with pytest.raises(AssertionError, match="crosses pools or models"):
        rnd.commit(inflight("r", "a"), b, "drain", _Move(0.1, 1.0, 0.0))


# -- moves that pay ----------------------------------------------------------------------


def test_an_observed_tpot_never_enters_the_gain() -> None:
    """Like with like: a slow observed TPOT triggers a look, but the gain compares the two
    endpoints' models; with identical endpoints and loads nothing is gained, so nothing moves."""
    eps = [ep("src", perf=PERF, running=5), ep("dst", perf=PERF, running=5)]
    slow = inflight("slow", "src", gen=50, max_tokens=2000, observed_tpot_s=1.0, tpot=0.05)
    assert MigrationPlanner(ONLY_RESCUE).plan(eps, [slow]) == []


def test_an_uncertain_destination_needs_a_larger_gain() -> None:
    """The same move is taken with a confident destination model and refused when the
    destination's model has not seen evidence (its upper prediction is far above its central)."""
    from modelfleet.policy.learn import LearnedPerfModel

    sure = LearnedPerfModel(PERF, central=LearnedPerfModel(PERF))
    unsure = LearnedPerfModel(PERF, (0.0, 2.0, 0.0), (0.0, 2.0), central=LearnedPerfModel(PERF))
    flights = [inflight("late", "src", gen=0, phase="queued", age_s=0.5, ttft=1.0)]
    src = ep("src", perf=sure, running=10, waiting=3, inflight_prefill_tokens=8_000)
    # valued by remaining time, the destination's uncertain decode speed is in the spread
    # (in SLO terms it is not: this request has no TPOT target, and even the destination's
    # upper TTFT prediction is within what is left of its TTFT target)
    params = dataclasses.replace(ONLY_RESCUE, gain_basis="remaining-time")
    assert MigrationPlanner(params).plan([src, ep("dst", perf=sure)], flights)
    assert MigrationPlanner(params).plan([src, ep("dst", perf=unsure)], flights) == []
    assert MigrationPlanner(ONLY_RESCUE).plan([src, ep("dst", perf=unsure)], flights)


def test_the_destination_queue_is_charged_for_the_re_prefill() -> None:
    """Prefix locality: re-prefilling a long context delays everyone waiting on the
    destination; with that externality counted, a crowded destination stops paying."""
    flights = [inflight("late", "src", gen=0, phase="queued", age_s=0.5, ttft=1.0, prompt=6000)]
    src = ep("src", perf=PERF, running=10, waiting=4, inflight_prefill_tokens=20_000)
    dst = ep("dst", perf=PERF, waiting=6, inflight_prefill_tokens=1_000)
    # (a rescue into a destination with a queue is allowed here, to isolate the charge)
    free = MigrationParams(
        enable_drain=False,
        enable_load_balance=False,
        queue_externality=0.0,
        rescue_needs_free_dst=False,
    )
    charged = dataclasses.replace(free, queue_externality=1.0)
    assert MigrationPlanner(free).plan([src, dst], flights)
    assert MigrationPlanner(charged).plan([src, dst], flights) == []


# -- rescues need free capacity; decode moves are valued in SLO terms ---------------------


def test_a_rescue_only_goes_where_nothing_waits() -> None:
    """Free capacity as a live host sees it: during a burst every queue is long, and a rescue
    into a queue only re-prefills a context in front of requests that were already waiting.
    The same late request is rescued to an idle endpoint, not to one with a queue."""
    flights = [inflight("late", "src", gen=0, phase="queued", age_s=0.5, ttft=1.0)]
    src = ep("src", perf=PERF, running=10, waiting=8, inflight_prefill_tokens=40_000)
    queued_dst = ep("dst", perf=PERF, waiting=1, inflight_prefill_tokens=500)
    idle_dst = ep("dst", perf=PERF)
    gate_off = dataclasses.replace(ONLY_RESCUE, rescue_needs_free_dst=False)
    assert MigrationPlanner(gate_off).plan([src, queued_dst], flights)
    assert MigrationPlanner(ONLY_RESCUE).plan([src, queued_dst], flights) == []
    assert MigrationPlanner(ONLY_RESCUE).plan([src, idle_dst], flights)


def test_one_rescue_per_free_destination_per_plan() -> None:
    """The rescue budget is the fleet's free capacity: one idle destination takes one rescue
    (it is no longer free once a re-prefill waits on it)."""
    src = ep("src", perf=PERF, running=10, waiting=8, inflight_prefill_tokens=40_000)
    flights = [
        inflight(f"late{i}", "src", gen=0, phase="queued", age_s=0.5 + i, ttft=1.0)
        for i in range(3)
    ]
    params = dataclasses.replace(ONLY_RESCUE, max_per_endpoint=4)
    one = MigrationPlanner(params).plan([src, ep("idle", perf=PERF)], flights)
    two = MigrationPlanner(params).plan(
        [src, ep("idle", perf=PERF), ep("idle2", perf=PERF)], flights
    )
    assert len(one) == 1 and len(two) == 2
    assert {m.dst for m in two} == {"idle", "idle2"}


def test_a_decode_within_its_tpot_target_is_not_moved_for_speed() -> None:
    """slo-excess: a decoding request that meets its TPOT target gains nothing from a faster
    decode elsewhere, so load balancing does not re-prefill it (the remaining-time basis
    would: the destination finishes it sooner). One that misses its target still moves."""
    hot = ep("hot", perf=PERF, running=40, inflight_requests=40)
    cold = ep("cold", perf=PERF, running=0)
    # TPOT at batch 40 is 0.05 s: within a 0.1 s target, beyond a 0.03 s one
    within = [inflight(f"r{i}", "hot", max_tokens=2000, tpot=0.1) for i in range(40)]
    missing = [inflight(f"r{i}", "hot", max_tokens=2000, tpot=0.03) for i in range(40)]
    by_time = dataclasses.replace(ONLY_BALANCE, gain_basis="remaining-time")
    assert MigrationPlanner(by_time).plan([hot, cold], within)
    assert MigrationPlanner(ONLY_BALANCE).plan([hot, cold], within) == []
    moved = MigrationPlanner(ONLY_BALANCE).plan([hot, cold], missing)
    assert moved and moved[0].reason == "load-balance" and moved[0].est_gain_s > 0


def test_a_decode_that_would_finish_before_the_switch_over_is_not_moved() -> None:
    """The source keeps streaming during the re-prefill: tokens decoded there meanwhile keep
    the source's TPOT, so a long context with few tokens left gains nothing by moving."""
    eps = [ep("src", perf=PERF, running=60), ep("dst", perf=PERF)]
    short_ctx = inflight("a", "src", prompt=500, gen=100, max_tokens=2000, tpot=0.05)
    long_ctx = inflight("b", "src", prompt=60_000, gen=1950, max_tokens=2000, tpot=0.05)
    slow = {"observed_tpot_s": 0.08}
    plan = MigrationPlanner(ONLY_RESCUE).plan(
        eps, [dataclasses.replace(short_ctx, **slow), dataclasses.replace(long_ctx, **slow)]
    )
    assert [m.request_id for m in plan] == ["a"]


def test_a_queued_request_is_valued_by_its_ttft_beyond_target() -> None:
    """slo-excess for a queued request: the wait beyond what is left of its TTFT target. A
    destination that only decodes faster is no reason to re-prefill it when its wait where it
    is stays within target; by remaining time, the faster decode alone would move it."""
    fast = dataclasses.replace(PERF, decode_base_s=0.001, decode_s_per_seq=1e-4)
    src = ep("src", perf=PERF, running=30, waiting=3, inflight_prefill_tokens=6000)
    dst = ep("dst", perf=fast)
    early = inflight("r", "src", gen=0, phase="queued", age_s=0.0, ttft=5.0, max_tokens=2000)
    by_time = dataclasses.replace(ONLY_RESCUE, gain_basis="remaining-time")
    params = dataclasses.replace(ONLY_BALANCE, imbalance_threshold=0.0)
    assert MigrationPlanner(dataclasses.replace(params, gain_basis="remaining-time")).plan(
        [src, dst], [early]
    )
    assert MigrationPlanner(params).plan([src, dst], [early]) == []
    late = dataclasses.replace(early, age_s=4.9)  # 0.1 s left: the wait there misses it
    assert MigrationPlanner(by_time).plan([src, dst], [late])
    assert MigrationPlanner(ONLY_RESCUE).plan([src, dst], [late])


def test_arrivals_during_a_long_re_prefill_are_charged() -> None:
    """A long re-prefill on the destination delays the requests that arrive there meanwhile.
    The arrival rate is what the in-flight ages show (here 40 requests in the last 2 s over 2
    endpoints); with it counted, re-prefilling a long context stops paying, while the same
    move with nothing arriving (or the charge off) is taken, and so is a short context."""
    src = ep("src", perf=PERF, running=10, waiting=6, inflight_prefill_tokens=30_000)
    dst = ep("dst", perf=PERF)
    long_ctx = inflight("late", "src", prompt=8000, gen=0, phase="queued", age_s=3.0, ttft=1.0)
    short = inflight("short", "src", prompt=500, gen=0, phase="queued", age_s=3.0, ttft=1.0)
    busy = [
        inflight(f"new{i}", "src" if i % 2 else "dst", phase="queued", age_s=0.05 * i)
        for i in range(40)
    ]
    busy = [dataclasses.replace(r, migratable=False) for r in busy]
    off = dataclasses.replace(ONLY_RESCUE, arrival_window_s=0.0)
    assert MigrationPlanner(ONLY_RESCUE).plan([src, dst], [long_ctx])
    assert MigrationPlanner(off).plan([src, dst], [long_ctx, *busy])
    assert MigrationPlanner(ONLY_RESCUE).plan([src, dst], [long_ctx, *busy]) == []
    assert MigrationPlanner(ONLY_RESCUE).plan([src, dst], [short, *busy])
