"""The routing host's feeding of the latency learner, the hooks' arguments, and its edges.

A recording learner (a real :class:`LatencyLearner` that also writes down every observation)
checks what the Router observes, exactly: at the first token the TTFT with the prior's
prediction for the queue it was routed into and the streams the endpoint served then; at
completion (or switch-over) the TPOT of the request's decode segment on that endpoint with
the prior's TPOT at the segment's batch (first token and end averaged, the scrape or the
router's own count, whichever is larger).
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Any

import pytest
from policy_fakes import PERF, FakeClock, req

from modelfleet.policy.config import ProfileSpec, build_profile
from modelfleet.policy.framework import Data, Plugin
from modelfleet.policy.host import EndpointInfo, EndpointMetrics, PlanRound, Router
from modelfleet.policy.learn import LatencyLearner
from modelfleet.policy.load import load_of
from modelfleet.policy.migration import MigrationPlanner
from modelfleet.policy.plugins import default_registry
from modelfleet.policy.types import Decision, EndpointId, EndpointView, RequestId, RequestView

pytestmark = pytest.mark.unit

A, B = EndpointId("a"), EndpointId("b")
R = RequestId("r")


class RecordingLearner(LatencyLearner):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Any, ...]] = []

    def observe_ttft(
        self, endpoint: Hashable, prior_ttft: float, streams: int, ttft: float
    ) -> None:
        self.seen.append(("ttft", endpoint, prior_ttft, streams, ttft))
        super().observe_ttft(endpoint, prior_ttft, streams, ttft)

    def observe_tpot(self, endpoint: Hashable, prior_tpot: float, tpot: float) -> None:
        self.seen.append(("tpot", endpoint, prior_tpot, tpot))
        super().observe_tpot(endpoint, prior_tpot, tpot)


class Hooks(Plugin):
    """A tracker writing down every hook with its arguments."""

    def __init__(self) -> None:
        self.name = "hooks"
        self.calls: list[tuple[Any, ...]] = []

    def on_routed(self, request: RequestView, decision: Decision) -> None:
        self.calls.append(("routed", request.id, decision.endpoint))

    def on_first_token(self, request_id: RequestId, endpoint: EndpointId) -> None:
        self.calls.append(("first", request_id, endpoint))

    def on_completed(self, request_id: RequestId, endpoint: EndpointId) -> None:
        self.calls.append(("completed", request_id, endpoint))

    def on_migrated(
        self, request: RequestView, src: EndpointId, dst: EndpointId, generated_tokens: int
    ) -> None:
        self.calls.append(("migrated", request.id, src, dst, generated_tokens))

    def on_kv_event(self, endpoint: EndpointId, event: object) -> None:
        self.calls.append(("kv", endpoint, event))


def make(
    names: tuple[str, ...] = ("a",), *, perf: Any = PERF, learner: LatencyLearner | None = None
) -> tuple[Router, FakeClock, Hooks]:
    clock = FakeClock()
    hooks = Hooks()
    spec = ProfileSpec.model_validate(
        {"scorers": [{"type": "queue", "parameters": {"metric": "inflight-requests"}}]}
    )
    profile = build_profile(
        spec, default_registry(), clock, random.Random(0), extra_trackers=(hooks,)
    )
    infos = [EndpointInfo(EndpointId(n), accelerator="h100", model="m", perf=perf) for n in names]
    return Router(profile, endpoints=infos, learner=learner), clock, hooks


def test_ttft_and_tpot_observations_are_exact() -> None:
    learner = RecordingLearner()
    router, clock, _ = make(learner=learner)
    router.route(req("r", prompt_tokens=100))
    prior_ttft = PERF.predict_ttft(100, 0, running=0, waiting=0, pending_prefill_tokens=0)
    # first token at 0.5 s (explicit time, the clock is elsewhere): own count 1 > scrape 0
    clock.now = 7.0
    router.on_tokens(R, 1, at=0.5)
    assert learner.seen == [("ttft", A, prior_ttft, 0, 0.5)]
    router.on_tokens(R, 4)
    # at the end the scrape says 1 running (own active count 1 − 1 waiting = 0): batch
    # (1 + 1 + 1) // 2 = 1
    router.update_metrics(A, EndpointMetrics(running=1, waiting=1))
    router.on_completed(R, at=2.5)
    assert learner.seen[1] == ("tpot", A, PERF.predict_tpot(running=1), (2.5 - 0.5) / 4)
    assert len(learner.seen) == 2


def test_a_switch_over_ends_one_segment_and_starts_another() -> None:
    learner = RecordingLearner()
    router, clock, _ = make(("a", "b"), learner=learner)
    router.route(req("r", prompt_tokens=100))
    src = router.endpoint_of(R)
    dst = B if src == A else A
    router.on_tokens(R, 3, at=1.0)  # first token at 1.0; 3 tokens
    clock.now = 2.0
    router.on_migrated(R, dst)  # segment on src: 3 tokens over 1 s
    assert learner.seen[1] == ("tpot", src, PERF.predict_tpot(running=1), 1.0 / 2)
    router.on_tokens(R, 2)  # 2 tokens on dst: the least that measures a TPOT
    router.on_completed(R, at=3.0)
    # dst's batch at switch-over: 1 (this request, counted there), and 1 at the end
    assert learner.seen[2] == ("tpot", dst, PERF.predict_tpot(running=1), 1.0 / 1)
    assert len(learner.seen) == 3


def test_segments_too_short_or_without_time_observe_nothing() -> None:
    learner = RecordingLearner()
    router, _, _ = make(learner=learner)
    router.route(req("r", prompt_tokens=100))
    router.on_completed(R)  # no first token: no segment
    router.route(req("q", prompt_tokens=100))
    router.on_tokens(RequestId("q"), 5, at=1.0)
    router.on_completed(RequestId("q"), at=1.0)  # ends when it started
    router.route(req("s", prompt_tokens=100))
    router.on_tokens(RequestId("s"), 1, at=2.0)
    router.on_completed(RequestId("s"), at=3.0)  # one token: no TPOT
    assert [s[0] for s in learner.seen] == ["ttft", "ttft"]


def test_streams_and_prior_come_from_the_chosen_endpoints_queue() -> None:
    learner = RecordingLearner()
    router, _, _ = make(("a", "b"), learner=learner)
    router.update_metrics(A, EndpointMetrics(running=2))
    router.update_metrics(B, EndpointMetrics(running=2))
    first = router.route(req("r0", prompt_tokens=100)).endpoint
    second = router.route(req("r1", prompt_tokens=100)).endpoint  # the other one: 0 in flight
    assert second != first
    router.on_tokens(RequestId("r1"), 1, at=0.25)
    prior = PERF.predict_ttft(100, 0, running=2, waiting=0, pending_prefill_tokens=0)
    assert learner.seen == [("ttft", second, prior, 0, 0.25)]


def test_endpoints_without_a_perf_model_teach_nothing() -> None:
    learner = RecordingLearner()
    router, _, _ = make(perf=None, learner=learner)
    router.route(req("r", prompt_tokens=100))
    router.on_tokens(R, 3, at=1.0)
    router.on_completed(R, at=2.0)
    assert learner.seen == []


def test_variants_are_told_apart_by_model() -> None:
    learner = LatencyLearner()
    clock = FakeClock()
    profile = build_profile(ProfileSpec(), default_registry(), clock, random.Random(0))
    Router(
        profile,
        learner=learner,
        endpoints=[
            EndpointInfo(A, accelerator="h100", model="m1", perf=PERF),
            EndpointInfo(B, accelerator="h100", model="m2", perf=PERF),
        ],
    )
    assert {k[:2] for k in learner.variants()} == {("h100", "m1"), ("h100", "m2")}


def test_hooks_reach_the_profile_with_their_arguments() -> None:
    router, _, hooks = make(("a", "b"))
    src = router.route(req("r", prompt_tokens=10)).endpoint
    dst = B if src == A else A
    router.on_tokens(R, 2)
    router.on_migrated(R, dst)
    event = {"type": "AllBlocksCleared"}
    router.on_kv_event(dst, event)
    router.on_completed(R)
    assert hooks.calls == [
        ("routed", R, src),
        ("first", R, src),
        ("migrated", R, src, dst, 2),
        ("kv", dst, event),
        ("completed", R, dst),
    ]


def test_one_token_by_default_and_an_explicit_first_token_time() -> None:
    router, clock, _ = make()
    router.route(req("r", prompt_tokens=10))
    clock.now = 9.0
    router.on_tokens(R, at=1.0)  # n defaults to 1; first token at 1.0, not the clock's 9.0
    router.on_tokens(R)
    (view,) = router.inflight()
    assert view.generated_tokens == 2 and view.phase == "decode"
    assert view.observed_tpot_s == pytest.approx((9.0 - 1.0) / 1)  # two tokens: one interval


def test_inflight_view_tpot_needs_two_tokens() -> None:
    router, clock, _ = make()
    router.route(req("r", prompt_tokens=10))
    assert router.inflight()[0].observed_tpot_s is None  # queued
    router.on_tokens(R, 1, at=0.0)
    clock.now = 1.0
    assert router.inflight()[0].observed_tpot_s is None  # one token: no interval yet


def test_views_carry_the_static_info() -> None:
    router, _, _ = make()
    info = EndpointInfo(B, accelerator="l40s", model="m", relative_speed=0.5, perf=PERF)
    router.add_endpoint(info)
    v = router.views()[1]
    assert v == EndpointView(
        id=B, model="m", accelerator="l40s", relative_speed=0.5, perf=PERF, pool=""
    )
    assert router.endpoint(B) == info and router.endpoints()[1] == info


def test_update_endpoint_replaces_the_info_in_place() -> None:
    router, _, _ = make(("a", "b"))
    router.update_endpoint(EndpointInfo(A, model="m", relative_speed=2.0, kv_capacity_tokens=64))
    assert [v.id for v in router.views()] == [A, B]
    assert router.views()[0].relative_speed == 2.0 and router.endpoint(A).kv_capacity_tokens == 64
    with pytest.raises(ValueError, match="cannot move from pool '' to 'q'"):
        router.update_endpoint(EndpointInfo(A, pool="q"))
    with pytest.raises(KeyError, match="unknown endpoint 'x'"):
        router.update_endpoint(EndpointInfo(EndpointId("x")))


def test_remove_endpoint_forgets_its_cache_and_its_variant() -> None:
    learner = LatencyLearner()
    default = build_profile(
        ProfileSpec.model_validate({"scorers": [{"type": "prefix-cache"}]}),
        default_registry(),
        FakeClock(),
        random.Random(0),
    )
    r2 = Router(default, learner=learner, endpoints=[EndpointInfo(A, perf=PERF)])
    q = req("q", prompt_tokens=64, block_hashes=[1], block_size=64)
    r2.route(q)
    assert default.prefix_index is not None and default.prefix_index.match(q) == {A: 64}
    r2.remove_endpoint(A)
    assert default.prefix_index.match(q) == {} and learner.prior_for(A) is None


def test_a_capacity_of_one_token_is_still_a_capacity() -> None:
    profile = build_profile(
        ProfileSpec.model_validate({"scorers": [{"type": "prefix-cache"}]}),
        default_registry(),
        FakeClock(),
        random.Random(0),
    )
    Router(profile, endpoints=[EndpointInfo(A, kv_capacity_tokens=1)])
    assert profile.prefix_index.capacity_tokens(A) == 1  # type: ignore[union-attr]


def test_router_consumes_the_union_of_profile_and_planner() -> None:
    profile = build_profile(
        ProfileSpec.model_validate({"scorers": [{"type": "prefix-cache"}]}),
        default_registry(),
        FakeClock(),
        random.Random(0),
    )
    planner = MigrationPlanner()
    router = Router(profile, planner=planner)
    assert router.consumes == profile.consumes | planner.consumes
    assert Data.PREFIX_HITS in router.consumes and Data.PERF_MODEL in router.consumes


def test_default_pool_and_an_empty_plan() -> None:
    router, _, _ = make()
    assert router.pool == "" and router.plan() == PlanRound((), (), frozenset(), ())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: EndpointInfo(EndpointId("")), "EndpointInfo.id must not be empty"),
        (lambda: EndpointInfo(A, tensor_parallel_size=0), "tensor_parallel_size must be >= 1"),
        (lambda: EndpointInfo(A, kv_capacity_tokens=-1), "kv_capacity_tokens >= 0"),
    ],
    ids=["empty-id", "tp", "kv-capacity"],
)
def test_endpoint_info_refusals_name_the_field(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_a_full_kv_cache_is_a_valid_scrape() -> None:
    assert EndpointMetrics(kv_cache_usage=1.0).kv_cache_usage == 1.0


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("waiting", 2),
        ("running-waiting", 5),
        ("inflight-requests", 4),
        ("inflight-tokens", 800),
        ("speed-weighted", 400),
    ],
)
def test_load_of_each_metric(metric: Any, expected: float) -> None:
    e = EndpointView(
        id=A, running=3, waiting=2, inflight_requests=4, inflight_tokens=800, relative_speed=2.0
    )
    assert load_of(metric, e) == expected
