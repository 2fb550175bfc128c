"""The placement framework where mutation testing found the suite blind
(bench/results/mutation.md): exact refusals and errors, the per-decision memos, weight 0, the
picker's bounds, the cached-token fields, every hook, and the registry's listing."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest
from policy_fakes import PERF, Const, FakeClock, ep, req, tokens

from modelfleet.policy.framework import (
    BuildContext,
    CycleState,
    Data,
    Plugin,
    PluginRegistry,
    Profile,
    unknown_type_error,
)
from modelfleet.policy.hashing import ApproxTokenHasher
from modelfleet.policy.params import NoParams, QueueParams
from modelfleet.policy.perf import predict_ttft
from modelfleet.policy.pickers import MaxScorePicker
from modelfleet.policy.prefix import ApproxPrefixIndex
from modelfleet.policy.types import (
    Decision,
    EndpointId,
    EndpointView,
    NoEndpointError,
    RequestId,
    RequestView,
)

pytestmark = pytest.mark.unit

A, B, C = EndpointId("a"), EndpointId("b"), EndpointId("c")
EPS = [ep("a"), ep("b"), ep("c")]


class Boom(Plugin):
    def __init__(self, name: str = "boom") -> None:
        self.name = name

    def filter(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[EndpointView]:
        raise RuntimeError("kaput")

    def pick(
        self, state: CycleState, endpoints: Sequence[EndpointView], totals: Sequence[float]
    ) -> int:
        raise RuntimeError("kaput")


class Fixed(Plugin):
    """A picker that answers a fixed index (possibly out of range)."""

    def __init__(self, index: int) -> None:
        self.name = "fixed"
        self.index = index

    def pick(
        self, state: CycleState, endpoints: Sequence[EndpointView], totals: Sequence[float]
    ) -> int:
        return self.index


class Keep(Plugin):
    """A filter that keeps the named endpoints."""

    def __init__(self, name: str, keep: set[str]) -> None:
        self.name = name
        self.keep = keep

    def filter(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[EndpointView]:
        return [e for e in endpoints if e.id in self.keep]


class Hooks(Plugin):
    name = "hooks"
    consumes = frozenset({Data.KV_EVENTS})

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

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


class Broken(Plugin):
    name = "broken"

    def on_routed(self, request: RequestView, decision: Decision) -> None:
        raise RuntimeError("tracker down")


def make(scorers=(), filters=(), picker=None, clock=None, trackers=(), index=None) -> Profile:  # type: ignore[no-untyped-def]
    if picker is None:
        picker = MaxScorePicker()
        picker.name = "max-score"
    return Profile(
        "t",
        filters=list(filters),
        scorers=list(scorers),
        picker=picker,
        clock=clock or FakeClock(),
        rng=random.Random(0),
        prefix_index=index,
        trackers=trackers,
    )


# -- refusals and errors, exactly ------------------------------------------------------------


@pytest.mark.parametrize("weight", [-1.0, math.nan, math.inf])
def test_a_weight_that_is_not_finite_and_non_negative_is_refused(weight: float) -> None:
    with pytest.raises(ValueError, match=r"^profile 't': weight of 'x' must be >= 0$"):
        make([(Const("x", [1]), weight)])


def test_duplicate_names_are_listed_sorted_once() -> None:
    picker = MaxScorePicker()
    picker.name = "y"
    with pytest.raises(ValueError, match=r"^profile 't': duplicate plugin names \['x', 'y'\]$"):
        make(
            [(Const("x", [1]), 1.0), (Const("x", [1]), 1.0), (Const("y", [1]), 0.0)],
            picker=picker,
        )


def test_no_endpoints_message_names_request_and_pool() -> None:
    with pytest.raises(NoEndpointError) as info:
        make().pick(req("r9", pool="gpu"), [])
    assert (
        str(info.value) == "no endpoint left for request 'r9': no endpoints were given (pool 'gpu')"
    )


def test_a_filter_that_leaves_nothing_names_itself_and_the_candidates() -> None:
    with pytest.raises(NoEndpointError) as info:
        make(filters=[Keep("only-b", {"b"}), Keep("none", set())]).pick(req("r"), EPS)
    assert str(info.value) == (
        "no endpoint left for request 'r': filter 'none' removed the last 1 candidate(s) ['b']"
    )


def test_the_message_lists_at_most_eight_candidates() -> None:
    many = [ep(f"e{i}") for i in range(10)]
    with pytest.raises(NoEndpointError) as info:
        make(filters=[Keep("none", set())]).pick(req("r"), many)
    assert str(info.value).endswith(
        "removed the last 10 candidate(s) ['e0', 'e1', 'e2', 'e3', 'e4', 'e5', 'e6', 'e7']"
    )


def test_a_failing_filter_is_reported_and_timed_and_the_next_filter_still_runs() -> None:
    clock = FakeClock(step=0.5)
    d = make(filters=[Boom("bad"), Keep("ab", {"a", "b"})], clock=clock).pick(req(), EPS)
    assert d.errors == {"bad": "RuntimeError: kaput"}
    assert d.candidates == (A, B) and d.filtered_out == {"ab": (C,)}
    assert d.timings_s == {"bad": 0.5, "ab": 0.5, "max-score": 0.5}


def test_a_filter_that_keeps_everything_is_not_in_filtered_out() -> None:
    d = make(filters=[Keep("all", {"a", "b", "c"})]).pick(req(), EPS)
    assert d.filtered_out == {} and d.candidates == (A, B, C)


def test_a_scorer_with_the_wrong_count_is_named_exactly() -> None:
    d = make([(Const("short", [1.0]), 1.0)]).pick(req(), EPS)
    assert d.errors == {"short": "ValueError: returned 1 scores for 3 candidates"}


def test_scores_at_the_bounds_stay() -> None:
    d = make([(Const("x", [0.0, 1.0, 0.5]), 2.0)]).pick(req(), EPS)
    assert d.scores["x"] == (0.0, 1.0, 0.5) and d.totals == (0.0, 2.0, 1.0)


def test_a_weight_0_scorer_is_recorded_but_decides_nothing() -> None:
    d = make([(Const("x", [1.0, 0.0, 0.0]), 0.0), (Const("y", [0.0, 0.0, 1.0]), 1.0)]).pick(
        req(), EPS
    )
    assert d.scores["x"] == (1.0, 0.0, 0.0) and d.weights["x"] == 0.0
    assert d.totals == (0.0, 0.0, 1.0) and d.endpoint == C


@pytest.mark.parametrize("index", [-1, 3])
def test_a_picked_index_out_of_range_falls_back_to_the_first_maximum(index: int) -> None:
    d = make([(Const("x", [0.2, 0.9, 0.9]), 1.0)], picker=Fixed(index)).pick(req(), EPS)
    assert d.endpoint == B
    assert d.errors == {"fixed": f"IndexError: picked index {index} of 3 candidates"}


@pytest.mark.parametrize("index", [0, 2])
def test_a_picked_index_at_the_bounds_is_taken(index: int) -> None:
    d = make([(Const("x", [0.2, 0.9, 0.9]), 1.0)], picker=Fixed(index)).pick(req(), EPS)
    assert d.endpoint == EPS[index].id and d.errors == {}


def test_a_failing_picker_is_timed_and_reported() -> None:
    clock = FakeClock(step=0.25)
    d = make([(Const("x", [0.2, 0.9, 0.1]), 1.0)], picker=Boom("bad"), clock=clock).pick(req(), EPS)
    assert d.endpoint == B and d.errors == {"bad": "RuntimeError: kaput"}
    assert d.timings_s == {"x": 0.25, "bad": 0.25}


# -- the decision's cache fields and the per-decision memos -----------------------------------


def test_cached_tokens_of_the_choice_and_the_best_candidate() -> None:
    index = ApproxPrefixIndex(ApproxTokenHasher(16))
    r = req("r", prompt_tokens=64, token_ids=tokens(64))
    index.insert(A, r.chain(index.hasher).hashes[:2])
    index.insert(C, r.chain(index.hasher).hashes)
    d = make([(Const("x", [0.0, 1.0, 0.0]), 1.0)], index=index).pick(r, EPS)
    assert (d.endpoint, d.cached_tokens, d.max_cached_tokens) == (B, 0, 64)
    d = make([(Const("x", [1.0, 0.0, 0.0]), 1.0)], index=index).pick(r, EPS)
    assert (d.endpoint, d.cached_tokens, d.max_cached_tokens) == (A, 32, 64)


def test_without_an_index_nothing_is_cached() -> None:
    d = make([(Const("x", [1.0, 0.0, 0.0]), 1.0)]).pick(req(), EPS)
    assert (d.cached_tokens, d.max_cached_tokens) == (0, 0)


class CountingIndex:
    hasher = ApproxTokenHasher(16)

    def __init__(self, hits: dict[EndpointId, int]) -> None:
        self.hits = hits
        self.calls = 0

    def match(self, request: RequestView) -> dict[EndpointId, int]:
        self.calls += 1
        return dict(self.hits)

    def forget(self, endpoint: EndpointId) -> None:
        pass


def test_prefix_hits_are_matched_once_per_decision() -> None:
    index = CountingIndex({A: 16})
    state = CycleState(req(), 0.0, random.Random(0), index)
    assert state.prefix_hits() == {A: 16} and state.prefix_hits() == {A: 16}
    assert index.calls == 1
    assert CycleState(req(), 0.0, random.Random(0)).prefix_hits() == {}


def test_predicted_ttft_uses_the_hit_and_is_memoised() -> None:
    index = CountingIndex({A: 512})
    r = req("r", prompt_tokens=1024)
    state = CycleState(r, 0.0, random.Random(0), index)
    busy = ep("a", perf=PERF, running=4, waiting=2, inflight_prefill_tokens=300)
    cold = ep("b", perf=PERF)
    got = state.predicted_ttft(busy)
    assert got == predict_ttft(PERF, busy, 1024, 512)
    assert state.predicted_ttft(cold) == predict_ttft(PERF, cold, 1024, 0)
    assert got != predict_ttft(PERF, busy, 1024, 0)  # the hit counts
    state._ttft[A] = 123.0  # a second call reads the memo
    assert state.predicted_ttft(busy) == 123.0
    assert state.predicted_ttft(ep("c")) is None  # no perf model, no prediction
    assert index.calls == 1


# -- hooks and consumes --------------------------------------------------------------------


def test_every_hook_reaches_every_plugin_once_and_a_failing_one_is_isolated() -> None:
    h = Hooks()
    p = make(trackers=(Broken(), h, h))
    r = req("q")
    d = p.pick(r, EPS)
    p.on_routed(r, d)
    p.on_first_token(r.id, A)
    p.on_completed(r.id, A)
    p.on_migrated(r, A, B, 7)
    p.on_kv_event(B, {"type": "AllBlocksCleared"})
    assert h.calls == [
        ("routed", "q", d.endpoint),
        ("first", "q", A),
        ("completed", "q", A),
        ("migrated", "q", A, B, 7),
        ("kv", B, {"type": "AllBlocksCleared"}),
    ]


def test_the_base_plugin_hooks_do_nothing() -> None:
    p = Plugin()
    r = req("q")
    d = make().pick(r, EPS)
    assert p.on_routed(r, d) is None and p.on_first_token(r.id, A) is None
    assert p.on_completed(r.id, A) is None and p.on_migrated(r, A, B, 1) is None
    assert p.on_kv_event(A, {}) is None and p.consumes == frozenset()


def test_consumes_is_the_union_of_every_part() -> None:
    index = ApproxPrefixIndex(ApproxTokenHasher(16))
    p = make(trackers=(Hooks(),), index=index)
    assert p.consumes == {Data.KV_EVENTS} | index.consumes
    assert make().consumes == MaxScorePicker().consumes


# -- the registry ---------------------------------------------------------------------------


def ctx() -> BuildContext:
    return BuildContext(clock=FakeClock(), rng=random.Random(0))


def test_unknown_type_error_lists_the_valid_types_or_none() -> None:
    assert str(unknown_type_error("scorer", "x", ["a", "b"])) == (
        "unknown scorer type 'x'; valid scorer types: a, b"
    )
    assert str(unknown_type_error("picker", "x", [])) == (
        "unknown picker type 'x'; valid picker types: (none registered)"
    )


def test_registry_lists_types_sorted_by_kind_and_refuses_an_empty_name() -> None:
    r = PluginRegistry()
    r.register("zeta", lambda n, p, c: Const(n, [1]), NoParams, kind="scorer")
    r.register("alpha", lambda n, p, c: Const(n, [1]), NoParams, kind="scorer")
    r.register("keep", lambda n, p, c: Keep(n, set()), NoParams, kind="filter")
    assert r.types() == ["alpha", "keep", "zeta"]
    assert r.types("scorer") == ["alpha", "zeta"] and r.types("filter") == ["keep"]
    assert r.get("keep", "filter").kind == "filter"
    with pytest.raises(ValueError, match=r"^plugin type name must not be empty$"):
        r.register("", lambda n, p, c: Const(n, [1]), NoParams, kind="scorer")
    with pytest.raises(ValueError, match=r"^plugin type 'zeta' is already registered$"):
        r.register("zeta", lambda n, p, c: Const(n, [1]), NoParams, kind="filter")
    with pytest.raises(ValueError, match=r"^unknown filter type 'zeta'; valid filter types: keep$"):
        r.get("zeta", "filter")


def test_create_names_the_plugin_and_passes_parsed_parameters() -> None:
    r = PluginRegistry()
    seen: list[tuple[str, object]] = []

    def factory(name: str, params: object, c: BuildContext) -> Plugin:
        seen.append((name, params))
        return Const("ignored", [1])

    r.register("queue", factory, QueueParams, kind="scorer")
    made = r.create("queue", "scorer", None, ctx(), name="q2")
    assert made.name == "q2" and seen == [("q2", QueueParams())]
    made = r.create("queue", "scorer", {"metric": "inflight-tokens"}, ctx())
    assert made.name == "queue" and seen[-1] == ("queue", QueueParams(metric="inflight-tokens"))


def test_invalid_parameters_list_every_problem_with_its_field() -> None:
    r = PluginRegistry()
    r.register("queue", lambda n, p, c: Const(n, [1]), QueueParams, kind="scorer")
    with pytest.raises(ValueError) as info:
        r.create("queue", "scorer", {"metric": "bogus", "extra": 1}, ctx())
    msg = str(info.value)
    assert msg.startswith("invalid parameters for scorer 'queue': metric: ")
    assert "; extra: " in msg
