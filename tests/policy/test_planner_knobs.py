"""Every knob the migration planner reads changes a decision when flipped.

One row per :class:`MigrationParams` field: a scenario, the decision with the knob at one
value and the decision with it flipped, both exact (request, destination, reason). A field
without a row fails ``test_every_planner_knob_has_a_row``, so a knob the planner ignores, or
one added without a test, cannot pass. The RoutingPolicy's ``spec.migration`` fields are
checked the same way, through ``migration_params_from_api`` and the planner.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from policy_fakes import PERF, FakeClock, ep, req

from modelfleet.api.routingpolicy import MigrationSpec
from modelfleet.policy.baselines import build_policy
from modelfleet.policy.from_api import migration_params_from_api
from modelfleet.policy.host import Router
from modelfleet.policy.learn import LearnedPerfModel
from modelfleet.policy.migration import InflightView, MigrationParams, MigrationPlanner
from modelfleet.policy.types import EndpointId, EndpointView

pytestmark = pytest.mark.unit

Scene = tuple[list[EndpointView], list[InflightView]]
OFF = {"enable_drain": False, "enable_slo_rescue": False, "enable_load_balance": False}
# round 1's valuation (remaining time, no arrivals charged): the rows that tune a rescue's
# gain threshold are set in those terms; the SLO-excess basis has its own row
ROUND1 = {"gain_basis": "remaining-time", "arrival_window_s": 0.0}


def flight(name: str, src: str, **kw: Any) -> InflightView:
    r = req(
        name,
        prompt_tokens=kw.pop("prompt", 1000),
        max_tokens=kw.pop("max_tokens", 200),
        ttft_slo_s=kw.pop("ttft", None),
        tpot_slo_s=kw.pop("tpot", None),
    )
    return InflightView(r, EndpointId(src), generated_tokens=kw.pop("gen", 10), **kw)


def drain_one() -> Scene:
    eps = [ep("old", perf=PERF, draining=True, running=1, inflight_requests=1), ep("a", perf=PERF)]
    return eps, [flight("r", "old")]


def drain_many() -> Scene:
    eps = [ep("old", perf=PERF, draining=True), ep("a", perf=PERF), ep("b", perf=PERF)]
    return eps, [flight(f"r{i}", "old") for i in range(10)]


def late_queued(src_perf: Any = PERF, dst_perf: Any = PERF) -> Callable[[], Scene]:
    """A queued request predicted to miss its TTFT target; an idle destination."""

    def scene() -> Scene:
        src = ep("src", perf=src_perf, running=10, waiting=3, inflight_prefill_tokens=8_000)
        late = flight("late", "src", gen=0, phase="queued", age_s=0.5, ttft=1.0, prompt=1000)
        return [src, ep("dst", perf=dst_perf)], [late]

    return scene


def crowded_destination() -> Scene:
    """A long re-prefill onto a destination where 6 requests wait: they pay for it too."""
    src = ep("src", perf=PERF, running=10, waiting=4, inflight_prefill_tokens=20_000)
    dst = ep("dst", perf=PERF, waiting=6, inflight_prefill_tokens=1_000)
    late = flight("late", "src", gen=0, phase="queued", age_s=0.5, ttft=1.0, prompt=6000)
    return [src, dst], [late]


def young_pool() -> Scene:
    """A late 6000-token prompt; 40 requests arrived at its pool in the last 0.1 s, so the
    re-prefill on the idle destination would sit in front of the ones arriving meanwhile."""
    src = ep("src", perf=PERF, running=10, waiting=3, inflight_prefill_tokens=14_000)
    late = flight("late", "src", gen=0, phase="queued", age_s=0.5, ttft=1.0, prompt=6000)
    young = [flight(f"y{i}", "src", age_s=0.1) for i in range(40)]
    return [src, ep("dst", perf=PERF)], [late, *young]


def hot_and_cold(tpot: float | None = None) -> Scene:
    eps = [ep("hot", perf=PERF, running=12, inflight_requests=12), ep("cold", perf=PERF)]
    flights = [
        flight(f"r{i:02d}", "hot", prompt=1000 + 100 * i, max_tokens=2000, tpot=tpot)
        for i in range(12)
    ]
    return eps, flights


def hot_and_cold_within_target() -> Scene:
    """The hot endpoint's decode is slower than the cold one's, but inside a 1 s TPOT target."""
    return hot_and_cold(tpot=1.0)


SURE = LearnedPerfModel(PERF, central=LearnedPerfModel(PERF))
# no evidence yet: the upper prediction of prefill is 3x the central one
UNSURE = LearnedPerfModel(PERF, (0.0, 2.0, 0.0), (0.0, 2.0), central=LearnedPerfModel(PERF))


@dataclass(frozen=True)
class Knob:
    scene: Callable[[], Scene]
    base: dict[str, Any]
    flipped: dict[str, Any]
    expect_base: list[tuple[str, str, str]] | int
    expect_flipped: list[tuple[str, str, str]] | int


KNOBS: dict[str, Knob] = {
    "enable_drain": Knob(drain_one, {}, {"enable_drain": False}, [("r", "a", "drain")], []),
    "enable_slo_rescue": Knob(
        late_queued(),
        OFF | {"enable_slo_rescue": True},
        OFF,
        [("late", "dst", "slo-rescue")],
        [],
    ),
    "enable_load_balance": Knob(
        hot_and_cold,
        OFF | {"enable_load_balance": True, "max_concurrent": 1},
        OFF | {"max_concurrent": 1},
        [("r00", "cold", "load-balance")],
        [],
    ),
    # 12 − 0 > 4 moves; 12 − 0 > 12 does not
    "imbalance_threshold": Knob(
        hot_and_cold,
        OFF | {"enable_load_balance": True, "max_concurrent": 1},
        OFF | {"enable_load_balance": True, "max_concurrent": 1, "imbalance_threshold": 12.0},
        [("r00", "cold", "load-balance")],
        [],
    ),
    "selection": Knob(
        hot_and_cold,
        OFF | {"enable_load_balance": True, "max_concurrent": 1},
        OFF | {"enable_load_balance": True, "max_concurrent": 1, "selection": "LR"},
        [("r00", "cold", "load-balance")],
        [("r11", "cold", "load-balance")],
    ),
    "max_concurrent": Knob(
        drain_many, {"max_per_endpoint": 10, "max_concurrent": 3}, {"max_per_endpoint": 10}, 3, 4
    ),
    "max_per_endpoint": Knob(drain_many, {}, {"max_per_endpoint": 3}, 2, 3),
    "min_gain_s": Knob(
        late_queued(),
        OFF | {"enable_slo_rescue": True},
        OFF | {"enable_slo_rescue": True, "min_gain_s": 5.0},
        [("late", "dst", "slo-rescue")],
        [],
    ),
    "min_gain_fraction": Knob(
        late_queued(),
        OFF | ROUND1 | {"enable_slo_rescue": True},
        OFF | ROUND1 | {"enable_slo_rescue": True, "min_gain_fraction": 0.95},
        [("late", "dst", "slo-rescue")],
        [],
    ),
    "confidence_z": Knob(
        late_queued(SURE, UNSURE),
        OFF | ROUND1 | {"enable_slo_rescue": True},
        OFF | ROUND1 | {"enable_slo_rescue": True, "confidence_z": 0.0},
        [],
        [("late", "dst", "slo-rescue")],
    ),
    "queue_externality": Knob(
        crowded_destination,
        OFF | ROUND1 | {"enable_slo_rescue": True, "rescue_needs_free_dst": False},
        OFF
        | ROUND1
        | {"enable_slo_rescue": True, "rescue_needs_free_dst": False, "queue_externality": 0.1},
        [],
        [("late", "dst", "slo-rescue")],
    ),
    # 6 requests wait on the destination: a rescue needs an empty queue unless told otherwise
    "rescue_needs_free_dst": Knob(
        crowded_destination,
        OFF | ROUND1 | {"enable_slo_rescue": True, "queue_externality": 0.0},
        OFF
        | ROUND1
        | {"enable_slo_rescue": True, "queue_externality": 0.0, "rescue_needs_free_dst": False},
        [],
        [("late", "dst", "slo-rescue")],
    ),
    # within its TPOT target, a request gains nothing in SLO terms from a faster decode
    "gain_basis": Knob(
        hot_and_cold_within_target,
        OFF | {"enable_load_balance": True, "max_concurrent": 1},
        OFF | {"enable_load_balance": True, "max_concurrent": 1, "gain_basis": "remaining-time"},
        [],
        [("r00", "cold", "load-balance")],
    ),
    "arrival_window_s": Knob(
        young_pool,
        OFF | {"enable_slo_rescue": True},
        OFF | {"enable_slo_rescue": True, "arrival_window_s": 0.0},
        [],
        [("late", "dst", "slo-rescue")],
    ),
}


def decide(params: MigrationParams, scene: Scene) -> list[tuple[str, str, str]]:
    eps, flights = scene
    return [(m.request_id, m.dst, m.reason) for m in MigrationPlanner(params).plan(eps, flights)]


def _matches(got: list[tuple[str, str, str]], expect: list[tuple[str, str, str]] | int) -> bool:
    return len(got) == expect if isinstance(expect, int) else got == expect


def test_every_planner_knob_has_a_row() -> None:
    fields = {f.name for f in dataclasses.fields(MigrationParams)}
    # period_s is the host's planning period: tested on the Router below
    assert fields - {"period_s"} == set(KNOBS)


@pytest.mark.parametrize("name", list(KNOBS), ids=list(KNOBS))
def test_flipping_a_planner_knob_changes_the_decision(name: str) -> None:
    k = KNOBS[name]
    base = decide(MigrationParams(**k.base), k.scene())
    flipped = decide(MigrationParams(**k.flipped), k.scene())
    assert _matches(base, k.expect_base), base
    assert _matches(flipped, k.expect_flipped), flipped
    assert base != flipped


@pytest.mark.parametrize("period", [0.25, 2.0])
def test_the_planning_period_reaches_the_host(period: float) -> None:
    policy = build_policy(
        "modelfleet",
        clock=FakeClock(),
        rng=random.Random(0),
        migration=MigrationParams(period_s=period),
    )
    assert Router(policy.profile, planner=policy.planner).plan_period_s == period


API = {"enabled": True, "triggers": ["drain", "slo-rescue", "load-imbalance"]}


@pytest.mark.parametrize(
    ("scene", "spec", "flipped", "expect", "expect_flipped"),
    [
        pytest.param(
            drain_one, API, API | {"enabled": False}, [("r", "a", "drain")], None, id="enabled"
        ),
        pytest.param(
            drain_one,
            API,
            API | {"triggers": ["slo-rescue"]},
            [("r", "a", "drain")],
            [],
            id="trigger-drain",
        ),
        pytest.param(
            late_queued(),
            API | {"triggers": ["slo-rescue"]},
            API | {"triggers": ["drain"]},
            [("late", "dst", "slo-rescue")],
            [],
            id="trigger-slo-rescue",
        ),
        pytest.param(
            hot_and_cold,
            API | {"triggers": ["load-imbalance"], "maxConcurrent": 1},
            API | {"triggers": ["drain"], "maxConcurrent": 1},
            [("r00", "cold", "load-balance")],
            [],
            id="trigger-load-imbalance",
        ),
        pytest.param(drain_many, API, API | {"maxConcurrent": 1}, 2, 1, id="maxConcurrent"),
        # the rescue gains about 2.5 s: a 5 s minimum refuses it
        pytest.param(
            late_queued(),
            API,
            API | {"minGainMs": 5000},
            [("late", "dst", "slo-rescue")],
            [],
            id="minGainMs",
        ),
    ],
)
def test_flipping_a_routing_policy_migration_field_changes_the_decision(
    scene: Callable[[], Scene],
    spec: dict[str, Any],
    flipped: dict[str, Any],
    expect: list[tuple[str, str, str]] | int,
    expect_flipped: list[tuple[str, str, str]] | int | None,
) -> None:
    params = migration_params_from_api(MigrationSpec.model_validate(spec))
    assert params is not None
    base = decide(params, scene())
    assert _matches(base, expect), base
    other = migration_params_from_api(MigrationSpec.model_validate(flipped))
    if expect_flipped is None:
        assert other is None  # migration off: the host builds no planner
        return
    assert other is not None
    got = decide(other, scene())
    assert _matches(got, expect_flipped), got
    assert got != base
