"""The migration planner's figures, orders, limits and virtual loads, exactly.

Expected figures are composed by hand from the endpoints' perf model, as the module docstring
states them: staying = TPOT at the source's batch × remaining tokens (+ the wait for a first
token of a queued request, not counting itself in the queue); moving = re-prefill of
``prompt + generated − hit`` behind the destination's queue + TPOT at its batch + 1 ×
remaining; gain = staying − moving − ``queue_externality`` × re-prefill compute × waiting.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from policy_fakes import PERF, ep, req

from modelfleet.policy.hashing import ApproxTokenHasher
from modelfleet.policy.learn import LearnedPerfModel
from modelfleet.policy.migration import (
    InflightView,
    MigrationParams,
    MigrationPlanner,
    _Load,
    _Round,
)
from modelfleet.policy.prefix import ApproxPrefixIndex
from modelfleet.policy.types import EndpointId, EndpointView

pytestmark = pytest.mark.unit

OFF: dict[str, Any] = {
    "enable_drain": False,
    "enable_slo_rescue": False,
    "enable_load_balance": False,
}
# round 1's valuation (the whole remaining time, no arrivals charged): the figures below are
# composed in those terms; the SLO-excess valuation has its own figures test
ROUND1: dict[str, Any] = {"gain_basis": "remaining-time", "arrival_window_s": 0.0}
DRAIN = MigrationParams(**OFF | {"enable_drain": True})
RESCUE = MigrationParams(**OFF | ROUND1 | {"enable_slo_rescue": True})
BALANCE = MigrationParams(**OFF | {"enable_load_balance": True})


def flight(name: str, src: str, **kw: Any) -> InflightView:
    r = req(
        name,
        prompt_tokens=kw.pop("prompt", 1000),
        max_tokens=kw.pop("max_tokens", 200),
        ttft_slo_s=kw.pop("ttft", None),
        tpot_slo_s=kw.pop("tpot", None),
        priority=kw.pop("priority", 0),
        token_ids=kw.pop("ids", None),
    )
    return InflightView(r, EndpointId(src), generated_tokens=kw.pop("gen", 10), **kw)


def moves(plan: list[Any]) -> list[tuple[str, str, str]]:
    return [(m.request_id, m.src, m.dst) for m in plan]


def ttft(
    prompt: int, cached: int = 0, running: int = 0, waiting: int = 0, pending: int = 0
) -> float:
    return PERF.predict_ttft(
        prompt, cached, running=running, waiting=waiting, pending_prefill_tokens=pending
    )


# -- the figures ----------------------------------------------------------------------------


def test_rescue_figures_of_a_queued_request() -> None:
    src = ep("src", perf=PERF, running=10, waiting=3, inflight_prefill_tokens=8_000)
    late = flight("late", "src", gen=0, phase="queued", age_s=0.5, ttft=1.0)
    (m,) = MigrationPlanner(RESCUE).plan([src, ep("dst", perf=PERF)], [late])
    remaining = 200
    # the request is one of the 3 waiting and 1000 of the 8000 pending tokens: not ahead of itself
    stay = ttft(1000, 0, running=10, waiting=2, pending=7_000)
    stay += PERF.predict_tpot(running=10) * remaining
    cost = ttft(1000)
    move = cost + PERF.predict_tpot(running=1) * remaining
    assert (m.est_cost_s, m.lost_hit_tokens) == (pytest.approx(cost), 1000)
    assert m.est_gain_s == pytest.approx(stay - move)


def test_rescue_figures_with_the_destination_queue_charged() -> None:
    src = ep("src", perf=PERF, running=10, waiting=4, inflight_prefill_tokens=20_000)
    dst = ep("dst", perf=PERF, waiting=6, inflight_prefill_tokens=1_000)
    late = flight("late", "src", gen=0, phase="queued", age_s=0.5, ttft=1.0, prompt=6000)
    params = MigrationParams(
        **OFF
        | ROUND1
        | {"enable_slo_rescue": True, "queue_externality": 0.1, "rescue_needs_free_dst": False}
    )
    (m,) = MigrationPlanner(params).plan([src, dst], [late])
    stay = ttft(6000, 0, running=10, waiting=3, pending=14_000)
    stay += PERF.predict_tpot(running=10) * 200
    cost = ttft(6000, 0, running=0, waiting=6, pending=1_000)
    move = cost + PERF.predict_tpot(running=1) * 200
    charge = 0.1 * ttft(6000) * 6  # the re-prefill's own compute, times the 6 waiting
    assert m.est_cost_s == pytest.approx(cost)
    assert m.est_gain_s == pytest.approx(stay - move - charge)


def test_rescue_figures_in_slo_terms() -> None:
    """A queued request is valued by its wait beyond what is left of its TTFT target."""
    src = ep("src", perf=PERF, running=10, waiting=3, inflight_prefill_tokens=8_000)
    late = flight("late", "src", gen=0, phase="queued", age_s=0.5, ttft=1.0)
    params = MigrationParams(**OFF | {"enable_slo_rescue": True, "arrival_window_s": 0.0})
    assert params.gain_basis == "slo-excess"
    (m,) = MigrationPlanner(params).plan([src, ep("dst", perf=PERF)], [late])
    left = 1.0 - 0.5
    stay = max(0.0, ttft(1000, 0, running=10, waiting=2, pending=7_000) - left)
    move = max(0.0, ttft(1000) - left)
    assert m.est_cost_s == pytest.approx(ttft(1000))
    assert m.est_gain_s == pytest.approx(stay - move)
    # the same move valued by remaining time claims the decode it speeds up as well
    (r1,) = MigrationPlanner(RESCUE).plan([src, ep("dst", perf=PERF)], [late])
    assert r1.est_gain_s > m.est_gain_s


def test_a_young_pool_charges_the_arrivals_a_re_prefill_delays() -> None:
    """In-flight requests younger than arrival_window_s are an arrival rate at the pool's
    endpoints; the re-prefill delays them by half its compute on average."""
    src = ep("src", perf=PERF, running=10, waiting=3, inflight_prefill_tokens=8_000)
    late = flight("late", "src", gen=0, phase="queued", age_s=0.5, ttft=1.0)
    young = [flight(f"y{i}", "src", age_s=0.1) for i in range(7)]  # 8 within 2 s, with late
    params = MigrationParams(**OFF | ROUND1 | {"enable_slo_rescue": True})
    windowed = dataclasses.replace(params, arrival_window_s=2.0)
    eps = [src, ep("dst", perf=PERF)]
    (plain,) = MigrationPlanner(params).plan(eps, [late, *young])
    (charged,) = MigrationPlanner(windowed).plan(eps, [late, *young])
    compute = ttft(1000)
    arrivals = 8 / 2.0 / 2  # per second, shared by the pool's two endpoints
    assert plain.est_gain_s - charged.est_gain_s == pytest.approx(compute * arrivals * compute / 2)


def test_drain_figures_and_prefix_hit() -> None:
    ids = list(range(4096))
    idx = ApproxPrefixIndex(ApproxTokenHasher(64))
    r = flight("r", "old", prompt=4096, gen=10, ids=ids)
    idx.insert(EndpointId("warm"), r.request.chain(idx.hasher).hashes[:32])  # 2048 tokens
    eps = [ep("old", perf=PERF, draining=True), ep("warm", perf=PERF, running=1)]
    (m,) = MigrationPlanner(DRAIN, prefix_index=idx).plan(eps, [r])
    # staying is no option: no gain is claimed; 4106 context tokens, 2048 of them cached
    assert m.est_gain_s == 0.0 and m.reason == "drain"
    assert m.lost_hit_tokens == 4106 - 2048
    assert m.est_cost_s == pytest.approx(ttft(4106, 2048, running=1))
    (plain,) = MigrationPlanner(DRAIN).plan(eps, [r])
    assert plain.lost_hit_tokens == 4106 and plain.est_cost_s == pytest.approx(ttft(4106, 0, 1))


def test_a_fully_cached_context_loses_nothing() -> None:
    ids = list(range(1024))
    idx = ApproxPrefixIndex(ApproxTokenHasher(64))
    r = flight("r", "old", prompt=1024, gen=0, ids=ids)
    idx.insert(EndpointId("warm"), r.request.chain(idx.hasher).hashes)
    eps = [ep("old", perf=PERF, draining=True), ep("warm", perf=PERF)]
    (m,) = MigrationPlanner(DRAIN, prefix_index=idx).plan(eps, [r])
    assert m.lost_hit_tokens == 0


def test_public_remaining_estimates() -> None:
    pl = MigrationPlanner()
    r = flight("r", "a", gen=10, max_tokens=110)
    load = _Load(running=4, waiting=0, inflight_prefill_tokens=0, requests=4.0)
    assert pl.remaining_on_src(r, ep("a", perf=PERF), load) == pytest.approx(
        PERF.predict_tpot(running=4) * 100
    )
    assert pl.remaining_on_src(r, ep("a"), load) is None
    cost, total = pl.remaining_on_dst(r, ep("b", perf=PERF), load, 10) or (0.0, 0.0)
    assert cost == pytest.approx(ttft(1010, 10, running=4))
    assert total == pytest.approx(cost + PERF.predict_tpot(running=5) * 100)
    assert pl.remaining_on_dst(r, ep("b"), load, 0) is None


def test_consumes_prefix_hits_only_with_an_index() -> None:
    from modelfleet.policy.framework import Data

    assert Data.PREFIX_HITS not in MigrationPlanner().consumes
    idx = ApproxPrefixIndex(ApproxTokenHasher(64))
    assert Data.PREFIX_HITS in MigrationPlanner(prefix_index=idx).consumes


def test_an_unsure_source_needs_a_larger_gain_too() -> None:
    """The spread of staying counts like the spread of moving (combined in quadrature)."""
    sure = LearnedPerfModel(PERF, central=LearnedPerfModel(PERF))
    unsure = LearnedPerfModel(PERF, (0.0, 3.0, 0.0), (0.0, 3.0), central=LearnedPerfModel(PERF))
    src = ep("src", perf=unsure, running=10, waiting=3, inflight_prefill_tokens=8_000)
    late = flight("late", "src", gen=0, phase="queued", age_s=0.5, ttft=1.0)
    blocked = MigrationPlanner(RESCUE).plan([src, ep("dst", perf=sure)], [late])
    free = MigrationPlanner(
        MigrationParams(**OFF | {"enable_slo_rescue": True, "confidence_z": 0.0})
    )
    assert blocked == [] and free.plan([src, ep("dst", perf=sure)], [late])


# -- orders and limits ----------------------------------------------------------------------


def test_drain_moves_the_most_work_first_and_ties_go_to_the_first_destination() -> None:
    eps = [ep("old", perf=PERF, draining=True), ep("a", perf=PERF), ep("b", perf=PERF)]
    flights = [flight("short", "old", max_tokens=50), flight("long", "old", max_tokens=900)]
    plan = MigrationPlanner(MigrationParams(**OFF | {"enable_drain": True, "max_concurrent": 1}))
    assert moves(plan.plan(eps, flights)) == [("long", "old", "a")]


def test_rescue_order_priority_then_age() -> None:
    src = ep("src", perf=PERF, running=10, waiting=3, inflight_prefill_tokens=8_000)
    eps = [src, ep("dst", perf=PERF)]
    one = MigrationParams(**OFF | ROUND1 | {"enable_slo_rescue": True, "max_concurrent": 1})

    def late(name: str, age: float, priority: int = 0) -> InflightView:
        return flight(name, "src", gen=0, phase="queued", age_s=age, ttft=1.0, priority=priority)

    assert moves(MigrationPlanner(one).plan(eps, [late("young", 0.2), late("old", 0.6)])) == [
        ("old", "src", "dst")
    ]
    urgent = [late("old", 0.6), late("vip", 0.2, priority=5)]
    assert moves(MigrationPlanner(one).plan(eps, urgent)) == [("vip", "src", "dst")]


def test_a_destination_takes_at_most_max_per_endpoint() -> None:
    eps = [
        ep("old1", perf=PERF, draining=True),
        ep("old2", perf=PERF, draining=True),
        ep("dst", perf=PERF),
    ]
    flights = [flight(f"{s}-{i}", s) for s in ("old1", "old2") for i in range(2)]
    plan = MigrationPlanner(MigrationParams(max_per_endpoint=2)).plan(eps, flights)
    assert len(plan) == 2 and {m.dst for m in plan} == {"dst"}


def test_a_source_at_its_limit_is_skipped_not_the_end() -> None:
    eps = [
        ep("old1", perf=PERF, draining=True),
        ep("old2", perf=PERF, draining=True),
        ep("a", perf=PERF),
        ep("b", perf=PERF),
    ]
    flights = [
        flight("x1", "old1", max_tokens=900),
        flight("x2", "old1", max_tokens=800),
        flight("y1", "old2", max_tokens=700),
    ]
    plan = MigrationPlanner(MigrationParams(max_per_endpoint=1)).plan(eps, flights)
    assert moves(plan) == [("x1", "old1", "a"), ("y1", "old2", "b")]


def test_a_rescued_request_is_not_balanced_again_in_the_same_plan() -> None:
    eps = [ep("hot", perf=PERF, running=60, inflight_requests=60), ep("cold", perf=PERF)]
    slow = flight("slow", "hot", gen=50, max_tokens=2000, observed_tpot_s=0.08, tpot=0.05)
    plan = MigrationPlanner(MigrationParams(max_per_endpoint=10)).plan(eps, [slow])
    assert [(m.request_id, m.reason) for m in plan] == [("slow", "slo-rescue")]


@pytest.mark.parametrize(
    ("observed", "tpot_target", "phase", "moved"),
    [
        pytest.param(0.08, 0.05, "decode", True, id="observed-above-target"),
        pytest.param(0.05, 0.05, "decode", False, id="observed-at-target"),
        pytest.param(None, None, "decode", False, id="no-target"),
        pytest.param(None, 0.0101, "decode", True, id="predicted-above-target"),
        pytest.param(0.08, 0.05, "prefill", False, id="prefill-is-not-judged"),
    ],
)
def test_what_counts_as_violating(
    observed: float | None, tpot_target: float | None, phase: str, moved: bool
) -> None:
    # src TPOT predicted at running 60: 0.07 s; dst idle: 0.011 s
    eps = [ep("src", perf=PERF, running=60), ep("dst", perf=PERF, running=0)]
    r = flight(
        "r", "src", gen=50, max_tokens=2000, observed_tpot_s=observed, tpot=tpot_target, phase=phase
    )
    assert bool(MigrationPlanner(RESCUE).plan(eps, [r])) is moved


def test_a_queued_request_exactly_on_time_is_not_rescued() -> None:
    src = ep("src", perf=PERF, running=10, waiting=3, inflight_prefill_tokens=8_000)
    wait = ttft(1000, 0, running=10, waiting=2, pending=7_000)
    on_time = flight("r", "src", gen=0, phase="queued", age_s=0.0, ttft=wait)
    assert MigrationPlanner(RESCUE).plan([src, ep("dst", perf=PERF)], [on_time]) == []


def test_an_unhealthy_source_is_not_rescued_from() -> None:
    src = ep("src", perf=PERF, running=10, waiting=3, inflight_prefill_tokens=8_000, healthy=False)
    late = flight("late", "src", gen=0, phase="queued", age_s=0.5, ttft=1.0)
    assert MigrationPlanner(RESCUE).plan([src, ep("dst", perf=PERF)], [late]) == []


# -- load balance ---------------------------------------------------------------------------


def test_balance_moves_until_the_gap_is_within_the_threshold() -> None:
    eps = [ep("hot", perf=PERF, running=12, inflight_requests=12), ep("cold", perf=PERF)]
    flights = [
        flight(f"r{i:02d}", "hot", prompt=1000 + 100 * i, max_tokens=2000) for i in range(12)
    ]
    wide = MigrationParams(
        **OFF | {"enable_load_balance": True, "max_per_endpoint": 10, "max_concurrent": 10}
    )
    # 12/0 -> 11/1 -> 10/2 -> 9/3 -> 8/4: a gap of 4 is within the threshold
    assert [m.request_id for m in MigrationPlanner(wide).plan(eps, flights)] == [
        "r00",
        "r01",
        "r02",
        "r03",
    ]


@pytest.mark.parametrize(
    ("hot", "cold", "moved"),
    [
        pytest.param({"running": 4, "waiting": 5}, {}, True, id="scraped-queue-counts"),
        pytest.param(
            {"inflight_requests": 3, "running": 3, "relative_speed": 0.5},
            {},
            True,
            id="per-unit-of-speed",
        ),
        pytest.param({"inflight_requests": 4, "running": 4}, {}, False, id="gap-at-threshold"),
        pytest.param(
            {"inflight_requests": 10, "running": 10},
            {"inflight_requests": 7},
            False,
            id="gap-below-threshold",
        ),
    ],
)
def test_balance_load_measure(hot: dict[str, Any], cold: dict[str, Any], moved: bool) -> None:
    eps = [ep("hot", perf=PERF, **hot), ep("cold", perf=PERF, **cold)]
    flights = [flight(f"r{i}", "hot", max_tokens=2000) for i in range(3)]
    assert bool(MigrationPlanner(BALANCE).plan(eps, flights)) is moved


def test_balance_prefers_decoding_requests_then_takes_queued_ones() -> None:
    eps = [ep("hot", perf=PERF, running=12, inflight_requests=12), ep("cold", perf=PERF)]
    decode = flight("decoding", "hot", prompt=3000, max_tokens=2000)
    queued = flight("queued", "hot", prompt=100, gen=0, phase="queued", max_tokens=2000)
    other = flight("elsewhere", "cold", prompt=10, max_tokens=2000)
    one = MigrationParams(**OFF | {"enable_load_balance": True, "max_concurrent": 1})
    assert moves(MigrationPlanner(one).plan(eps, [queued, decode, other])) == [
        ("decoding", "hot", "cold")
    ]
    assert moves(MigrationPlanner(one).plan(eps, [queued, other])) == [("queued", "hot", "cold")]


def test_balance_only_moves_when_it_pays() -> None:
    eps = [ep("hot", perf=PERF, running=12, inflight_requests=12), ep("cold", perf=PERF)]
    nearly_done = [flight(f"r{i}", "hot", prompt=20_000, gen=199, max_tokens=200) for i in range(3)]
    assert MigrationPlanner(BALANCE).plan(eps, nearly_done) == []


def test_balance_without_a_source_model_does_nothing() -> None:
    eps = [ep("hot", running=12, inflight_requests=12), ep("cold", perf=PERF)]
    assert MigrationPlanner(BALANCE).plan(eps, [flight("r", "hot", max_tokens=2000)]) == []


def test_balance_stays_within_the_model() -> None:
    eps = [
        ep("hot", perf=PERF, running=12, inflight_requests=12, model="m1"),
        ep("cold", perf=PERF, model="m2"),
    ]
    assert MigrationPlanner(BALANCE).plan(eps, [flight("r", "hot", max_tokens=2000)]) == []


def test_balance_uses_the_destinations_prefix_hit() -> None:
    ids = list(range(2048))
    idx = ApproxPrefixIndex(ApproxTokenHasher(64))
    r = flight("r", "hot", prompt=2048, gen=10, ids=ids, max_tokens=2000)
    idx.insert(EndpointId("cold"), r.request.chain(idx.hasher).hashes)
    eps = [ep("hot", perf=PERF, running=12, inflight_requests=12), ep("cold", perf=PERF)]
    (m,) = MigrationPlanner(BALANCE, prefix_index=idx).plan(eps, [r])
    assert m.lost_hit_tokens == 10


# -- virtual loads --------------------------------------------------------------------------


def _round(eps: list[EndpointView]) -> _Round:
    return _Round(
        params=MigrationParams(),
        budget=4,
        by_id={e.id: e for e in eps},
        loads={
            e.id: _Load(
                e.running,
                e.waiting,
                e.inflight_prefill_tokens,
                e.inflight_requests / e.relative_speed,
                e.inflight_requests,
            )
            for e in eps
        },
        targets=list(eps),
        moved=set(),
    )


def test_commit_updates_the_virtual_loads_of_both_ends() -> None:
    from modelfleet.policy.migration import _Move

    src = ep(
        "src",
        relative_speed=2.0,
        running=3,
        waiting=2,
        inflight_prefill_tokens=1500,
        inflight_requests=5,
    )
    dst = ep(
        "dst",
        relative_speed=0.5,
        running=1,
        waiting=1,
        inflight_prefill_tokens=10,
        inflight_requests=2,
    )
    rnd = _round([src, dst])
    rnd.commit(flight("d", "src", prompt=1000, gen=10), dst, "drain", _Move(0.1, 1.0, 0.5, 7))
    s, d = rnd.loads[src.id], rnd.loads[dst.id]
    assert (s.running, s.waiting, s.inflight_prefill_tokens, s.inflight_requests) == (2, 2, 1500, 4)
    assert s.requests == pytest.approx(5 / 2 - 1 / 2)
    assert (d.running, d.waiting, d.inflight_prefill_tokens, d.inflight_requests) == (1, 2, 1020, 3)
    assert d.requests == pytest.approx(2 / 0.5 + 1 / 0.5)
    rnd.commit(
        flight("q", "src", prompt=500, gen=0, phase="queued"), dst, "drain", _Move(0.1, 1.0, 0.5, 7)
    )
    assert (s.running, s.waiting, s.inflight_prefill_tokens, s.inflight_requests) == (2, 1, 1000, 3)
    assert rnd.touched == {src.id: 2, dst.id: 2}
    assert rnd.moved == {"d", "q"}
    assert [(m.request_id, m.est_cost_s, m.est_gain_s, m.lost_hit_tokens) for m in rnd.out] == [
        ("d", 0.1, 0.5, 7),
        ("q", 0.1, 0.5, 7),
    ]


def test_commit_never_drives_a_load_below_zero_and_ignores_an_unknown_source() -> None:
    from modelfleet.policy.migration import _Move

    src, dst = ep("src"), ep("dst")
    rnd = _round([src, dst])
    rnd.commit(flight("d", "src"), dst, "drain", _Move(0.0, 0.0, 0.0))
    rnd.commit(flight("q", "src", gen=0, phase="queued"), dst, "drain", _Move(0.0, 0.0, 0.0))
    s = rnd.loads[src.id]
    assert (s.running, s.waiting, s.inflight_prefill_tokens, s.inflight_requests) == (0, 0, 0, 0)
    rnd.commit(flight("g", "gone"), dst, "drain", _Move(0.0, 0.0, 0.0))
    assert rnd.loads[dst.id].inflight_requests == 3 and "gone" not in rnd.loads


def test_a_cross_model_commit_names_the_defect() -> None:
    from modelfleet.policy.migration import _Move

    src, dst = ep("src", model="m1"), ep("dst", model="m2")
    with pytest.raises(AssertionError, match="crosses pools or models"):
        _round([src, dst]).commit(flight("d", "src"), dst, "drain", _Move(0.0, 0.0, 0.0))


_NON_NEGATIVE = "confidence_z, queue_externality and arrival_window_s must be >= 0"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"max_concurrent": -1}, "max_concurrent >= 0 and max_per_endpoint >= 1"),
        ({"max_per_endpoint": 0}, "max_concurrent >= 0 and max_per_endpoint >= 1"),
        ({"min_gain_s": -0.1}, "min_gain_s, imbalance_threshold >= 0, period_s > 0"),
        ({"imbalance_threshold": -1.0}, "min_gain_s, imbalance_threshold >= 0, period_s > 0"),
        ({"period_s": 0.0}, "min_gain_s, imbalance_threshold >= 0, period_s > 0"),
        ({"confidence_z": -0.5}, _NON_NEGATIVE),
        ({"queue_externality": -1.0}, _NON_NEGATIVE),
        ({"arrival_window_s": -1.0}, _NON_NEGATIVE),
        ({"gain_basis": "latency"}, "gain_basis must be 'remaining-time' or 'slo-excess'"),
        ({"min_gain_fraction": 1.0}, r"min_gain_fraction must be in \[0, 1\)"),
        ({"min_gain_fraction": -0.1}, r"min_gain_fraction must be in \[0, 1\)"),
    ],
)
def test_params_refusals_name_the_field(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^MigrationParams: {message}"):
        MigrationParams(**kw)


def test_params_boundaries_are_accepted() -> None:
    p = MigrationParams(
        max_concurrent=0,
        max_per_endpoint=1,
        min_gain_s=0.0,
        imbalance_threshold=0.0,
        confidence_z=0.0,
        queue_externality=0.0,
        min_gain_fraction=0.99,
    )
    assert (p.max_concurrent, p.max_per_endpoint, p.min_gain_fraction) == (0, 1, 0.99)
