"""Framework: registry errors, clamping/weights, failing-plugin isolation, timings, hooks."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest
from policy_fakes import Const, FakeClock, ep, req

from modelfleet.policy.config import PluginSpec, ProfileSpec, build_profile
from modelfleet.policy.filters import HealthyFilter
from modelfleet.policy.framework import (
    BuildContext,
    CycleState,
    Plugin,
    PluginRegistry,
    Profile,
)
from modelfleet.policy.params import NoParams, QueueParams
from modelfleet.policy.pickers import MaxScorePicker
from modelfleet.policy.plugins import default_registry
from modelfleet.policy.types import Decision, EndpointView, NoEndpointError, RequestView

pytestmark = pytest.mark.unit


class Boom(Plugin):
    def __init__(self, name: str = "boom") -> None:
        self.name = name

    def score(self, state: CycleState, endpoints: Sequence[EndpointView]) -> Sequence[float]:
        raise RuntimeError("kaput")

    def filter(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[EndpointView]:
        raise RuntimeError("kaput")

    def pick(
        self, state: CycleState, endpoints: Sequence[EndpointView], totals: Sequence[float]
    ) -> int:
        raise RuntimeError("kaput")


class DropAll(Plugin):
    name = "drop-all"

    def filter(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[EndpointView]:
        return []


class Recorder(Plugin):
    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_routed(self, request: RequestView, decision: Decision) -> None:
        self.calls.append(f"routed:{decision.endpoint}")

    def on_completed(self, request_id: str, endpoint: str) -> None:  # type: ignore[override]
        self.calls.append(f"completed:{request_id}")


def make(scorers, filters=(), picker=None, clock=None, trackers=()) -> Profile:  # type: ignore[no-untyped-def]
    picker = picker or MaxScorePicker()
    picker.name = picker.name or "max-score"
    return Profile(
        "t",
        filters=list(filters),
        scorers=list(scorers),
        picker=picker,
        clock=clock or FakeClock(),
        rng=random.Random(0),
        trackers=trackers,
    )


EPS = [ep("a"), ep("b"), ep("c")]


def test_weights_are_applied_and_summed() -> None:
    p = make([(Const("x", [1.0, 0.0, 0.5]), 1.0), (Const("y", [0.0, 1.0, 0.5]), 3.0)])
    d = p.pick(req(), EPS)
    assert d.totals == (1.0, 3.0, 2.0)
    assert d.endpoint == "b"
    assert d.weights == {"x": 1.0, "y": 3.0}


@pytest.mark.parametrize(
    ("raw", "clamped"),
    [
        pytest.param([-1.0, 2.0, 0.3], (0.0, 1.0, 0.3), id="out-of-range"),
        pytest.param([math.nan, math.inf, 0.0], (0.0, 1.0, 0.0), id="nan-inf"),
    ],
)
def test_scores_are_clamped(raw: list[float], clamped: tuple[float, ...]) -> None:
    d = make([(Const("x", raw), 1.0)]).pick(req(), EPS)
    assert d.scores["x"] == clamped


def test_failing_scorer_scores_zero_and_is_reported() -> None:
    p = make([(Boom(), 10.0), (Const("x", [0.0, 1.0, 0.0]), 1.0)])
    d = p.pick(req(), EPS)
    assert d.endpoint == "b"
    assert d.scores["boom"] == (0.0, 0.0, 0.0)
    assert d.errors["boom"] == "RuntimeError: kaput"


def test_scorer_with_wrong_length_is_isolated() -> None:
    d = make([(Const("short", [1.0]), 1.0)]).pick(req(), EPS)
    assert "short" in d.errors and "1 scores for 3" in d.errors["short"]
    assert d.scores["short"] == (0.0, 0.0, 0.0)


def test_failing_filter_keeps_all_candidates() -> None:
    d = make([], filters=[Boom("bad-filter")]).pick(req(), EPS)
    assert d.candidates == ("a", "b", "c")
    assert "bad-filter" in d.errors


def test_failing_picker_falls_back_to_first_maximum() -> None:
    p = make([(Const("x", [0.1, 0.9, 0.9]), 1.0)], picker=Boom("bad-picker"))
    d = p.pick(req(), EPS)
    assert d.endpoint == "b"
    assert "bad-picker" in d.errors


def test_no_endpoints_given_raises_clear_error() -> None:
    with pytest.raises(NoEndpointError, match="no endpoints were given"):
        make([]).pick(req("r9"), [])


def test_filter_removing_everything_is_named() -> None:
    with pytest.raises(NoEndpointError, match="filter 'drop-all' removed the last 3"):
        make([], filters=[DropAll()]).pick(req(), EPS)


def test_filtered_out_is_recorded() -> None:
    f = HealthyFilter()
    f.name = "healthy"
    d = make([], filters=[f]).pick(req(), [ep("a"), ep("b", draining=True), ep("c", healthy=False)])
    assert d.endpoint == "a"
    assert d.filtered_out == {"healthy": ("b", "c")}


def test_every_plugin_is_timed_with_the_injected_clock() -> None:
    clock = FakeClock(step=0.001)
    d = make([(Const("x", [1, 1, 1]), 1.0)], clock=clock).pick(req(), EPS)
    assert set(d.timings_s) == {"x", "max-score"}
    assert d.timings_s["x"] == pytest.approx(0.001)


def test_hooks_fan_out_once_per_object() -> None:
    rec = Recorder()
    p = make([(Const("x", [1, 0, 0]), 1.0)], trackers=(rec, rec))
    d = p.pick(req("q"), EPS)
    p.on_routed(req("q"), d)
    p.on_completed(req("q").id, d.endpoint)
    assert rec.calls == ["routed:a", "completed:q"]


def test_negative_weight_and_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        make([(Const("x", [1]), -1.0)])
    with pytest.raises(ValueError, match="duplicate plugin names"):
        make([(Const("x", [1]), 1.0), (Const("x", [1]), 1.0)])


# -- registry ---------------------------------------------------------------------------


def ctx() -> BuildContext:
    return BuildContext(clock=FakeClock(), rng=random.Random(0))


def test_registry_refuses_duplicate_type() -> None:
    r = PluginRegistry()
    r.register("x", lambda n, p, c: HealthyFilter(), NoParams, kind="filter")
    with pytest.raises(ValueError, match="'x' is already registered"):
        r.register("x", lambda n, p, c: HealthyFilter(), NoParams, kind="filter")


def test_registry_unknown_type_lists_valid_types() -> None:
    with pytest.raises(ValueError) as info:
        default_registry().create("prefx-cache", "scorer", {}, ctx())
    msg = str(info.value)
    assert "unknown scorer type 'prefx-cache'" in msg
    assert "prefix-cache" in msg and "queue" in msg and "healthy" not in msg


def test_registry_wrong_kind_is_unknown() -> None:
    with pytest.raises(ValueError, match="unknown picker type 'queue'"):
        default_registry().create("queue", "picker", {}, ctx())


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        pytest.param({"metric": "bogus"}, "metric", id="bad-enum"),
        pytest.param({"metrc": "waiting"}, "metrc", id="unknown-field"),
    ],
)
def test_registry_invalid_parameters_name_plugin_and_field(params: dict, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        default_registry().create("queue", "scorer", params, ctx())
    assert "invalid parameters for scorer 'queue'" in str(info.value)
    assert needle in str(info.value)


def test_registry_accepts_camel_case_parameters() -> None:
    s = default_registry().create("queue", "scorer", {"metric": "inflight-tokens"}, ctx())
    assert s.p == QueueParams(metric="inflight-tokens")


def test_build_profile_names_duplicate_types_distinctly() -> None:
    spec = ProfileSpec(scorers=[PluginSpec(type="kv-usage"), PluginSpec(type="kv-usage", weight=2)])
    p = build_profile(spec, default_registry(), FakeClock(), random.Random(0))
    assert [s.name for s, _ in p.scorers] == ["kv-usage", "kv-usage#2"]
