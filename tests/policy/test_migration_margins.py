"""The migration planner's SLO-excess valuation, its margins and its arrival charge, exactly.

A move qualifies when ``sure = gain - confidence_z x spread`` is above ``min_gain_s`` and above
``min_gain_fraction x staying``. ``est_gain_s`` shows the central gain; the spread (the upper
predictions) is pinned by planning twice around the hand-composed ``sure``: a threshold a hair
below it lets the move through, a hair above it stops it. Models with uncertainty are learned
models scaled by 1.5 (upper) around the plain prior (central), so every upper figure differs
from its central one.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from policy_fakes import PERF, ep, req

from modelfleet.policy.learn import LearnedPerfModel
from modelfleet.policy.migration import (
    InflightView,
    Migration,
    MigrationParams,
    MigrationPlanner,
    _Load,
    default_migration_params,
)
from modelfleet.policy.perf import ParametricPerfModel
from modelfleet.policy.types import EndpointId, EndpointView

pytestmark = pytest.mark.unit

# upper = 1.5 x the prior on every term, central = the prior
UNSURE = LearnedPerfModel(PERF, (0.0, 1.5, 0.0), (0.0, 1.5), central=LearnedPerfModel(PERF))
RESCUE: dict[str, Any] = {
    "enable_drain": False,
    "enable_slo_rescue": True,
    "enable_load_balance": False,
    "arrival_window_s": 0.0,
    "min_gain_fraction": 0.0,
}


def flight(name: str, src: str, **kw: Any) -> InflightView:
    r = req(
        name,
        prompt_tokens=kw.pop("prompt", 1000),
        max_tokens=kw.pop("max_tokens", 200),
        ttft_slo_s=kw.pop("ttft", None),
        tpot_slo_s=kw.pop("tpot", None),
    )
    return InflightView(r, EndpointId(src), generated_tokens=kw.pop("gen", 10), **kw)


def tpot(running: int) -> float:
    return PERF.predict_tpot(running=running)


def ttft(prompt: int, running: int = 0, waiting: int = 0, pending: int = 0) -> float:
    return PERF.predict_ttft(
        prompt, 0, running=running, waiting=waiting, pending_prefill_tokens=pending
    )


def plan(eps: list[EndpointView], flights: list[InflightView], **kw: Any) -> list[Migration]:
    return MigrationPlanner(MigrationParams(**RESCUE | kw)).plan(eps, flights)


def assert_margin(eps: list[EndpointView], r: InflightView, sure: float, **kw: Any) -> None:
    """The move passes ``min_gain_s`` a hair below ``sure`` and stops a hair above it."""
    assert plan(eps, [r], min_gain_s=sure * (1 - 1e-9), **kw), "below the margin: moves"
    assert plan(eps, [r], min_gain_s=sure * (1 + 1e-9), **kw) == [], "above it: stays"


def test_a_decoding_request_valued_by_its_tpot_excess() -> None:
    """Both TPOTs miss the target; the tokens decoded while the destination re-prefills keep
    the source's TPOT, the rest get the destination's."""
    src = ep("src", perf=UNSURE, running=30)
    dst = ep("dst", perf=UNSURE, running=5)
    r = flight("r", "src", gen=10, tpot=0.012, observed_tpot_s=0.05)
    n, target = 190, 0.012
    s_mid, s_up = tpot(30), 1.5 * tpot(30)
    d_mid, d_up = tpot(6), 1.5 * tpot(6)  # the destination's batch plus this request
    cost = ttft(1010, running=5)  # prompt + generated re-prefilled behind 5 running
    on_src = cost / s_mid
    on_dst = n - on_src
    stay = (n * (s_mid - target), n * (s_up - target))
    move = (
        on_src * (s_mid - target) + on_dst * (d_mid - target),
        on_src * (s_up - target) + on_dst * (d_up - target),
    )
    (m,) = plan([src, dst], [r], confidence_z=0.0, min_gain_s=0.0)
    assert m.est_cost_s == pytest.approx(cost)
    assert m.est_gain_s == pytest.approx(stay[0] - move[0])
    spread = math.hypot(stay[1] - stay[0], move[1] - move[0])
    assert_margin([src, dst], r, stay[0] - move[0] - spread)


def test_a_decoding_request_within_its_target_on_the_destination() -> None:
    """Tokens within target count nothing: moving to an idle destination saves every token
    the source decodes beyond target, but those decoded during the re-prefill."""
    src = ep("src", perf=PERF, running=30)
    r = flight("r", "src", gen=10, tpot=0.02, observed_tpot_s=0.05)
    cost = ttft(1010)
    (m,) = plan([src, ep("dst", perf=PERF)], [r], min_gain_s=0.0)
    excess = tpot(30) - 0.02  # the destination's 11 ms is within the 20 ms target
    assert m.est_gain_s == pytest.approx(190 * excess - cost / tpot(30) * excess)


def test_a_queued_request_valued_by_its_wait_and_its_tpot_beyond_targets() -> None:
    src = ep("src", perf=UNSURE, running=30, waiting=3, inflight_prefill_tokens=8_000)
    dst = ep("dst", perf=UNSURE, running=2)
    # 0.1 s left: the re-prefill (0.112 s central, 0.168 s upper) is late on both figures
    r = flight("r", "src", gen=0, phase="queued", age_s=0.9, ttft=1.0, tpot=0.012)
    n, left, target = 200, 1.0 - 0.9, 0.012
    # waiting in place: not ahead of itself (2 waiting, 7000 pending)
    w_mid = ttft(1000, running=30, waiting=2, pending=7_000)
    cost = ttft(1000, running=2)
    assert 1.5 * cost - left > cost - left > 0
    s_mid, d_mid = tpot(30), tpot(3)
    stay = (
        max(0.0, w_mid - left) + n * (s_mid - target),
        max(0.0, 1.5 * w_mid - left) + n * (1.5 * s_mid - target),
    )
    move = (
        max(0.0, cost - left) + n * (d_mid - target),
        max(0.0, 1.5 * cost - left) + n * (1.5 * d_mid - target),
    )
    (m,) = plan([src, dst], [r], confidence_z=0.0, min_gain_s=0.0)
    assert m.est_gain_s == pytest.approx(stay[0] - move[0])
    spread = math.hypot(stay[1] - stay[0], move[1] - move[0])
    assert_margin([src, dst], r, stay[0] - move[0] - spread)


def test_the_fraction_margin_is_taken_of_the_central_stay() -> None:
    src = ep("src", perf=UNSURE, running=30)
    r = flight("r", "src", gen=10, tpot=0.02, observed_tpot_s=0.05)
    eps = [src, ep("dst", perf=PERF)]
    (m,) = plan(eps, [r], confidence_z=0.0, min_gain_s=0.0)
    stay_mid = 190 * (tpot(30) - 0.02)
    fraction = m.est_gain_s / stay_mid
    assert plan(eps, [r], confidence_z=0.0, min_gain_s=0.0, min_gain_fraction=fraction * 0.999)
    assert (
        plan(eps, [r], confidence_z=0.0, min_gain_s=0.0, min_gain_fraction=fraction * 1.001) == []
    )


def test_a_source_predicted_to_decode_for_free_keeps_its_tokens() -> None:
    """A zero TPOT (a valid model) means every token is decoded on the source before the
    re-prefill ends: nothing to gain, and no division by zero."""
    free = ParametricPerfModel(decode_base_s=0.0, decode_s_per_seq=0.0)
    src = ep("src", perf=free, running=3)
    r = flight("r", "src", gen=10, tpot=0.01, observed_tpot_s=0.05)
    assert plan([src, ep("dst", perf=PERF)], [r], min_gain_s=0.0) == []


# -- a move must gain MORE than the thresholds (exact binary figures) ---------------------------

# staying: 2 tokens at 0.5 s; moving: a free re-prefill then 2 tokens at 0.25 s; gain 0.5 s
SLOW = ParametricPerfModel(prefill_base_s=0.0, prefill_s_per_token=0.0, decode_base_s=0.5,
                           decode_s_per_seq=0.0)  # fmt: skip
FAST = ParametricPerfModel(prefill_base_s=0.0, prefill_s_per_token=0.0, decode_base_s=0.25,
                           decode_s_per_seq=0.0)  # fmt: skip


def _exact() -> tuple[list[EndpointView], InflightView]:
    r = flight("r", "src", gen=0, max_tokens=2, tpot=0.1, observed_tpot_s=0.5)
    return [ep("src", perf=SLOW, running=1), ep("dst", perf=FAST)], r


@pytest.mark.parametrize(
    ("min_gain_s", "fraction", "moves"),
    [(0.25, 0.0, True), (0.5, 0.0, False), (0.0, 0.25, True), (0.0, 0.5, False)],
    ids=["below-min-gain", "equal-min-gain", "below-fraction", "equal-fraction"],
)
def test_a_gain_equal_to_a_threshold_is_not_enough(
    min_gain_s: float, fraction: float, moves: bool
) -> None:
    eps, r = _exact()
    got = plan(
        eps,
        [r],
        gain_basis="remaining-time",
        min_gain_s=min_gain_s,
        min_gain_fraction=fraction,
    )
    assert [m.est_gain_s for m in got] == ([0.5] if moves else [])


# -- the trigger ----------------------------------------------------------------------------


def test_the_ttft_trigger_reads_the_central_wait() -> None:
    """Queued on an unsure source whose central wait is within the time left and whose upper
    wait is not: the central one decides (a move would gain in remaining time)."""
    src = ep("src", perf=UNSURE, running=0, waiting=3, inflight_prefill_tokens=3_000)
    wait = ttft(1000, waiting=2, pending=2_000)
    assert wait < 0.4 < 1.5 * wait
    eps = [src, ep("dst", perf=PERF)]
    on_time = flight("r", "src", gen=0, phase="queued", age_s=0.6, ttft=1.0)
    kw = {"gain_basis": "remaining-time", "confidence_z": 0.0}
    assert plan(eps, [on_time], **kw) == []
    late = flight("r", "src", gen=0, phase="queued", age_s=1.0 - wait * 0.9, ttft=1.0)
    assert [m.reason for m in plan(eps, [late], **kw)] == ["slo-rescue"]


def test_a_decoding_request_is_not_judged_by_its_ttft_target() -> None:
    src = ep("src", perf=PERF, running=30, waiting=5, inflight_prefill_tokens=20_000)
    r = flight("r", "src", gen=10, ttft=0.1, age_s=10.0)  # long past its TTFT, decoding
    eps = [src, ep("dst", perf=PERF)]
    assert plan(eps, [r], gain_basis="remaining-time") == []
    slow = flight("r", "src", gen=10, ttft=0.1, age_s=10.0, tpot=0.02, observed_tpot_s=0.05)
    assert [m.reason for m in plan(eps, [slow], gain_basis="remaining-time")] == ["slo-rescue"]


def test_rescue_skips_unknown_and_draining_sources_and_goes_on() -> None:
    eps = [
        ep("src", perf=PERF, running=30),
        ep("gone", perf=PERF, running=30, draining=True),
        ep("dst", perf=PERF),
        ep("dst2", perf=PERF),
    ]
    late = {"gen": 10, "tpot": 0.02, "observed_tpot_s": 0.05}
    flights = [
        flight("a", "lost", **late),  # its source is not an endpoint of this plan
        flight("b", "gone", **late),  # on a draining source (drain is off here)
        flight("c", "src", **late),
    ]
    assert [(m.request_id, m.reason) for m in plan(eps, flights)] == [("c", "slo-rescue")]


def test_a_queued_request_whose_counters_lag_waits_for_its_own_prompt() -> None:
    """The scrape shows 2 waiting but no pending prefill yet: its own 1000 tokens still count."""
    src = ep("src", perf=PERF, running=10, waiting=2, inflight_prefill_tokens=0)
    r = flight("r", "src", gen=0, phase="queued", age_s=0.9, ttft=1.0)
    (m,) = plan([src, ep("dst", perf=PERF)], [r], gain_basis="remaining-time")
    stay = ttft(1000, running=10, waiting=1) + tpot(10) * 200
    move = ttft(1000) + tpot(1) * 200
    assert m.est_gain_s == pytest.approx(stay - move)


def test_a_source_with_one_running_decodes_at_batch_one() -> None:
    slow = ParametricPerfModel(decode_base_s=0.05, decode_s_per_seq=0.01)
    r = flight("r", "src", gen=10, tpot=0.02, observed_tpot_s=0.07)
    for running in (0, 1):
        src = ep("src", perf=slow, running=running)
        (m,) = plan([src, ep("dst", perf=PERF)], [r], gain_basis="remaining-time")
        stay = slow.predict_tpot(running=1) * 190
        assert m.est_gain_s == pytest.approx(stay - ttft(1010) - tpot(1) * 190)
        (x,) = plan([src, ep("dst", perf=PERF)], [r])  # in SLO terms, the same batch of one
        excess = slow.predict_tpot(running=1) - 0.02
        on_src = ttft(1010) / slow.predict_tpot(running=1)
        assert x.est_gain_s == pytest.approx(190 * excess - on_src * excess)


def test_the_destinations_streams_reach_its_front_end() -> None:
    fe = ParametricPerfModel(prefill_base_s=0.01, prefill_s_per_token=1e-4, decode_base_s=0.01,
                             decode_s_per_seq=1e-3, front_end_per_stream_s=0.01)  # fmt: skip
    src = ep("src", perf=fe, running=30)
    dst = ep("dst", perf=fe, inflight_requests=3)
    r = flight("r", "src", gen=10, tpot=0.02, observed_tpot_s=0.05)
    (m,) = plan([src, dst], [r], gain_basis="remaining-time")
    assert m.est_cost_s == pytest.approx(0.01 + 1010 * 1e-4 + 3 * 0.01)


# -- the arrival charge ---------------------------------------------------------------------


def _arrivals(window: float, ages: list[float]) -> float:
    """The arrival charge of the standard rescue, from the gain lost to it."""
    src = ep("src", perf=PERF, running=10, waiting=3, inflight_prefill_tokens=8_000)
    late = flight("late", "src", gen=0, phase="queued", age_s=0.5, ttft=1.0)
    others = [flight(f"o{i}", "src", age_s=a) for i, a in enumerate(ages)]
    eps = [src, ep("dst", perf=PERF)]
    kw = {"gain_basis": "remaining-time", "min_gain_s": 0.0}
    (plain,) = plan(eps, [late, *others], **kw)
    (charged,) = plan(eps, [late, *others], **kw | {"arrival_window_s": window})
    return plain.est_gain_s - charged.est_gain_s


def test_arrivals_counted_within_the_window_only() -> None:
    compute = ttft(1000)
    # a 0.5 s window: late (0.5 s old, on the edge) and one 0.2 s old; the 3 s old one is not
    rate = 2 / 0.5 / 2
    assert _arrivals(0.5, [0.2, 3.0]) == pytest.approx(compute * rate * compute / 2)
    # nothing young but late itself in a 0.4 s window: no arrivals, no charge
    assert _arrivals(0.4, [3.0, 5.0]) == 0.0


def test_move_estimate_charges_arrivals_even_with_an_empty_queue() -> None:
    pl = MigrationPlanner()
    r = flight("r", "a", gen=10, max_tokens=110)
    load = _Load(running=0, waiting=0, inflight_prefill_tokens=0, requests=0.0)
    dst = ep("b", perf=PERF)
    assert pl.move_estimate(r, dst, load, 0) == pytest.approx(
        (ttft(1010), ttft(1010) + tpot(1) * 100, ttft(1010) + tpot(1) * 100, 0.0)
    )
    est = pl.move_estimate(r, dst, load, 0, arrivals_per_s=0.5)
    assert est is not None and est[3] == pytest.approx(ttft(1010) * 0.5 * ttft(1010) / 2)


def test_public_remaining_estimates_are_the_central_ones() -> None:
    pl = MigrationPlanner()
    r = flight("r", "a", gen=10, max_tokens=110)
    load = _Load(running=4, waiting=0, inflight_prefill_tokens=0, requests=4.0)
    assert pl.remaining_on_src(r, ep("a", perf=UNSURE), load) == pytest.approx(tpot(4) * 100)
    cost, total = pl.remaining_on_dst(r, ep("b", perf=UNSURE), load, 10) or (0.0, 0.0)
    c = PERF.predict_ttft(1010, 10, running=4, waiting=0, pending_prefill_tokens=0)
    assert (cost, total) == pytest.approx((c, c + tpot(5) * 100))


def test_the_default_planner_has_no_slo_rescue() -> None:
    p = default_migration_params()
    assert p.enable_slo_rescue is False
    assert p == MigrationParams(enable_slo_rescue=False)


def test_a_cross_pool_commit_names_both_ends() -> None:
    src = ep("src", perf=PERF, pool="p1", draining=True)
    dst = ep("dst", perf=PERF, pool="p2")
    from modelfleet.policy.migration import _Move, _Round

    rnd = _Round(
        params=MigrationParams(),
        budget=4,
        by_id={src.id: src, dst.id: dst},
        loads={e.id: _Load(0, 0, 0, 0.0) for e in (src, dst)},
        targets=[dst],
        moved=set(),
    )
    message = (
        "migration of 'r' from 'src' (pool 'p1', model '') to 'dst' (pool 'p2', model '') "
        "crosses pools or models"
    )
    with pytest.raises(AssertionError, match=f"^{re.escape(message)}$"):
        rnd.commit(flight("r", "src"), dst, "drain", _Move(0.0, 0.0, 0.0))
