"""The placement pipeline: filters → weighted scorers → picker, grouped in a named profile.

Contract (after the Gateway API Inference Extension's endpoint picker):

* A **filter** returns the subset of candidates it keeps. A filter that raises is logged and
  keeps everything (fail open: a broken guard must not take the pool down). When a filter
  leaves nothing, :class:`~.types.NoEndpointError` names it.
* A **scorer** returns one score per candidate. The framework clamps each score to [0, 1]
  (NaN → 0), multiplies by the scorer's weight and sums. A scorer that raises or returns the
  wrong number of scores is logged and scores 0 everywhere, so it cannot decide alone.
* A **picker** turns the totals into one candidate index. A failing picker falls back to the
  first maximum.
* Every plugin is timed with the injected clock; timings and errors land in the
  :class:`~.types.Decision`.
* Every plugin declares the data it reads in ``consumes`` (keys of :class:`Data`), as the
  endpoint picker's ``Consumes()`` does. The profile builder derives from it whether a prefix
  index is needed, and a host derives what to feed (a KV-event subscription, perf models,
  scrapes) from :attr:`Profile.consumes` instead of probing the profile's parts.
* State lives in trackers (the prefix index, the session ring, round-robin's counter) and is
  changed only by lifecycle hooks (:meth:`Profile.on_routed` and friends), which the profile
  fans out to every plugin and tracker once. ``filter``/``score``/``pick`` only read.

Per-decision shared work (the prefix match over the request's chain, TTFT predictions) is
memoised in a :class:`CycleState` so that several plugins can use it at the cost of one.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ValidationError

from modelfleet.policy.perf import predict_ttft
from modelfleet.policy.types import (
    Decision,
    EndpointId,
    EndpointView,
    NoEndpointError,
    RequestId,
    RequestView,
)

if TYPE_CHECKING:
    from modelfleet.policy.prefix import PrefixIndex

log = logging.getLogger(__name__)

Clock = Callable[[], float]
PluginKind = Literal["filter", "scorer", "picker"]


class Data(StrEnum):
    """What a plugin (or tracker, or the migration planner) reads besides the request's ids.

    A host uses the union of these over a profile to know what it must provide: a KV-event
    subscription, a perf model per endpoint, a metrics poller, the prompt's tokens or text.
    """

    PREFIX_HITS = "prefix-hits"
    """Predicted cached tokens per endpoint: the profile builds a prefix index."""
    KV_EVENTS = "kv-events"
    """Engine KV-cache events (the precise prefix index): subscribe and call ``on_kv_event``."""
    PERF_MODEL = "perf-model"
    """``EndpointView.perf``, the endpoint's latency model (without it SLO terms are neutral)."""
    ENGINE_METRICS = "engine-metrics"
    """Scraped engine gauges: ``running``, ``waiting``, ``kv_cache_usage``."""
    INFLIGHT = "inflight"
    """This scheduler's own counters: ``inflight_requests/_tokens/_prefill_tokens``."""
    PROMPT = "prompt"
    """The raw prompt (``RequestView.text`` or ``token_ids``), not only its block chain."""


class Plugin:
    """Base class of every plugin and tracker: a name, declared inputs and no-op hooks.

    ``consumes`` lists the :class:`Data` the plugin reads; a class sets its default and an
    instance may narrow it from its parameters (a queue scorer on in-flight tokens reads no
    scrape).
    """

    name: str = ""
    consumes: frozenset[Data] = frozenset()

    def on_routed(self, request: RequestView, decision: Decision) -> None:
        """The request was sent to ``decision.endpoint``."""

    def on_first_token(self, request_id: RequestId, endpoint: EndpointId) -> None:
        """The first token of the request arrived from ``endpoint``."""

    def on_completed(self, request_id: RequestId, endpoint: EndpointId) -> None:
        """The request finished, failed or was aborted on ``endpoint``."""

    def on_migrated(
        self, request: RequestView, src: EndpointId, dst: EndpointId, generated_tokens: int
    ) -> None:
        """The request now runs on ``dst`` (it left ``src``) after ``generated_tokens`` tokens."""

    def on_kv_event(self, endpoint: EndpointId, event: object) -> None:
        """An engine published a KV-cache event (see ``modelfleet.policy.prefix``)."""


class Filter(Protocol):
    name: str

    def filter(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[EndpointView]:
        """The candidates to keep, in input order."""
        ...


class Scorer(Protocol):
    name: str

    def score(self, state: CycleState, endpoints: Sequence[EndpointView]) -> Sequence[float]:
        """One score per candidate, nominally in [0, 1] (higher is better)."""
        ...


class Picker(Protocol):
    name: str

    def pick(
        self, state: CycleState, endpoints: Sequence[EndpointView], totals: Sequence[float]
    ) -> int:
        """The index of the chosen candidate."""
        ...


@dataclass
class CycleState:
    """Inputs and memos of one placement decision (one request, one call to ``pick``).

    ``prefix_hits()`` walks the request's chain through the profile's prefix index once and
    returns cached tokens per endpoint (absent = 0); plugins that need it share the result.
    """

    request: RequestView
    now: float
    rng: random.Random
    prefix_index: PrefixIndex | None = None
    _hits: dict[EndpointId, int] | None = field(default=None, repr=False)
    _ttft: dict[EndpointId, float] = field(default_factory=dict, repr=False)

    def prefix_hits(self) -> Mapping[EndpointId, int]:
        if self._hits is None:
            if self.prefix_index is None:
                self._hits = {}
            else:
                self._hits = self.prefix_index.match(self.request)
        return self._hits

    def predicted_ttft(self, endpoint: EndpointView) -> float | None:
        """Predicted TTFT of this request on ``endpoint`` (None without a perf model)."""
        perf = endpoint.perf
        if perf is None:
            return None
        found = self._ttft.get(endpoint.id)
        if found is None:
            found = predict_ttft(
                perf, endpoint, self.request.prompt_tokens, self.prefix_hits().get(endpoint.id, 0)
            )
            self._ttft[endpoint.id] = found
        return found


class Profile:
    """A named pipeline plus the trackers it feeds.

    ``pick`` is the decision; the ``on_*`` methods are the lifecycle hooks. Hooks are fanned
    out once to every distinct plugin/tracker (a shared prefix index is notified once).
    ``consumes`` is the union of what its plugins and trackers declare. Hosts normally drive
    a profile through :class:`modelfleet.policy.host.Router`, which pairs these hooks with the
    in-flight counters.
    """

    def __init__(
        self,
        name: str,
        *,
        filters: Sequence[Filter],
        scorers: Sequence[tuple[Scorer, float]],
        picker: Picker,
        clock: Clock,
        rng: random.Random,
        prefix_index: PrefixIndex | None = None,
        trackers: Sequence[Plugin] = (),
    ) -> None:
        for scorer, weight in scorers:
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"profile {name!r}: weight of {scorer.name!r} must be >= 0")
        names = [f.name for f in filters] + [s.name for s, _ in scorers] + [picker.name]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"profile {name!r}: duplicate plugin names {dupes}")
        self.name = name
        self.filters = tuple(filters)
        self.scorers = tuple(scorers)
        self.picker = picker
        self.clock = clock
        self.rng = rng
        self.prefix_index = prefix_index
        hooked: list[Any] = []
        for obj in [prefix_index, *trackers, *filters, *(s for s, _ in scorers), picker]:
            if isinstance(obj, Plugin) and all(obj is not h for h in hooked):
                hooked.append(obj)
        self._hooked: tuple[Plugin, ...] = tuple(hooked)
        parts: list[Any] = [prefix_index, *trackers, *filters, *(s for s, _ in scorers), picker]
        self.consumes: frozenset[Data] = frozenset().union(
            *(getattr(p, "consumes", frozenset()) for p in parts if p is not None)
        )

    # -- decision -----------------------------------------------------------------------
    def pick(self, request: RequestView, endpoints: Sequence[EndpointView]) -> Decision:
        """Place ``request`` on one of ``endpoints``; see the module docstring for the rules."""
        clock = self.clock
        state = CycleState(request, clock(), self.rng, self.prefix_index)
        timings: dict[str, float] = {}
        errors: dict[str, str] = {}
        filtered_out: dict[str, tuple[EndpointId, ...]] = {}
        if not endpoints:
            raise NoEndpointError(
                f"no endpoint left for request {request.id!r}: no endpoints were given "
                f"(pool {request.pool!r})"
            )
        cands: list[EndpointView] = list(endpoints)
        for flt in self.filters:
            t0 = clock()
            try:
                kept = flt.filter(state, cands)
            except Exception as exc:
                log.warning("filter %s failed, keeping all candidates: %r", flt.name, exc)
                errors[flt.name] = f"{type(exc).__name__}: {exc}"
                kept = cands
            timings[flt.name] = clock() - t0
            if len(kept) != len(cands):
                kept_ids = {e.id for e in kept}
                filtered_out[flt.name] = tuple(e.id for e in cands if e.id not in kept_ids)
            if not kept:
                raise NoEndpointError(
                    f"no endpoint left for request {request.id!r}: filter {flt.name!r} "
                    f"removed the last {len(cands)} candidate(s) "
                    f"{[str(e.id) for e in cands][:8]}"
                )
            cands = kept

        n = len(cands)
        totals = [0.0] * n
        scores: dict[str, tuple[float, ...]] = {}
        weights: dict[str, float] = {}
        for scorer, weight in self.scorers:
            t0 = clock()
            try:
                raw = scorer.score(state, cands)
                if len(raw) != n:
                    raise ValueError(f"returned {len(raw)} scores for {n} candidates")
                # clamp to [0, 1]; NaN fails "v > 0.0" and becomes 0, +inf becomes 1
                clamped = tuple((v if v < 1.0 else 1.0) if v > 0.0 else 0.0 for v in raw)
            except Exception as exc:
                log.warning("scorer %s failed, scoring 0: %r", scorer.name, exc)
                errors[scorer.name] = f"{type(exc).__name__}: {exc}"
                clamped = (0.0,) * n
            timings[scorer.name] = clock() - t0
            scores[scorer.name] = clamped
            weights[scorer.name] = weight
            if weight:
                totals = [t + weight * v for t, v in zip(totals, clamped, strict=True)]

        t0 = clock()
        try:
            idx = self.picker.pick(state, cands, totals)
            if not 0 <= idx < n:
                raise IndexError(f"picked index {idx} of {n} candidates")
        except Exception as exc:
            log.warning("picker %s failed, taking the first maximum: %r", self.picker.name, exc)
            errors[self.picker.name] = f"{type(exc).__name__}: {exc}"
            idx = max(range(n), key=totals.__getitem__)
        timings[self.picker.name] = clock() - t0

        chosen = cands[idx]
        hits = state.prefix_hits() if self.prefix_index is not None else {}
        cached = hits.get(chosen.id, 0)
        best = max((hits.get(e.id, 0) for e in cands), default=0)
        return Decision(
            endpoint=chosen.id,
            request_id=request.id,
            candidates=tuple(e.id for e in cands),
            scores=scores,
            weights=weights,
            totals=tuple(totals),
            filtered_out=filtered_out,
            timings_s=timings,
            errors=errors,
            cached_tokens=cached,
            max_cached_tokens=best,
        )

    # -- lifecycle hooks ----------------------------------------------------------------
    def _fan_out(self, hook: str, *args: Any) -> None:
        for obj in self._hooked:
            try:
                getattr(obj, hook)(*args)
            except Exception as exc:
                log.warning("%s.%s failed: %r", obj.name or type(obj).__name__, hook, exc)

    def on_routed(self, request: RequestView, decision: Decision) -> None:
        self._fan_out("on_routed", request, decision)

    def on_first_token(self, request_id: RequestId, endpoint: EndpointId) -> None:
        self._fan_out("on_first_token", request_id, endpoint)

    def on_completed(self, request_id: RequestId, endpoint: EndpointId) -> None:
        self._fan_out("on_completed", request_id, endpoint)

    def on_migrated(
        self, request: RequestView, src: EndpointId, dst: EndpointId, generated_tokens: int
    ) -> None:
        self._fan_out("on_migrated", request, src, dst, generated_tokens)

    def on_kv_event(self, endpoint: EndpointId, event: object) -> None:
        self._fan_out("on_kv_event", endpoint, event)


# -- registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildContext:
    """What a plugin factory may use: the injected clock and RNG.

    Shared trackers (the prefix index) are not passed in: a plugin reads them through the
    :class:`CycleState` of each decision, and the builder creates them from what the plugins
    declare in ``consumes``.
    """

    clock: Clock
    rng: random.Random


PluginFactory = Callable[[str, Any, BuildContext], Any]


@dataclass(frozen=True)
class PluginType:
    """A registered plugin type: its kind, its factory and its parameter model."""

    type_name: str
    kind: PluginKind
    factory: PluginFactory
    params_model: type[BaseModel]


def unknown_type_error(kind: str, type_name: str, valid: Sequence[str]) -> ValueError:
    """The one error for a type name no registry knows (plugins and selection strategies)."""
    return ValueError(
        f"unknown {kind} type {type_name!r}; valid {kind} types: "
        f"{', '.join(valid) or '(none registered)'}"
    )


class PluginRegistry:
    """Explicit map from plugin type name to factory; no import-time registration.

    ``register`` refuses a duplicate name; ``create`` refuses an unknown type (naming it and
    listing the valid ones of that kind) and invalid parameters (naming the plugin and field).
    """

    def __init__(self) -> None:
        self._types: dict[str, PluginType] = {}

    def register(
        self,
        type_name: str,
        factory: PluginFactory,
        params_model: type[BaseModel],
        *,
        kind: PluginKind,
    ) -> None:
        if not type_name:
            raise ValueError("plugin type name must not be empty")
        if type_name in self._types:
            raise ValueError(f"plugin type {type_name!r} is already registered")
        self._types[type_name] = PluginType(type_name, kind, factory, params_model)

    def types(self, kind: PluginKind | None = None) -> list[str]:
        return sorted(t for t, p in self._types.items() if kind is None or p.kind == kind)

    def get(self, type_name: str, kind: PluginKind) -> PluginType:
        found = self._types.get(type_name)
        if found is None or found.kind != kind:
            raise unknown_type_error(kind, type_name, self.types(kind))
        return found

    def create(
        self,
        type_name: str,
        kind: PluginKind,
        params: Mapping[str, Any] | None,
        ctx: BuildContext,
        *,
        name: str | None = None,
    ) -> Any:
        ptype = self.get(type_name, kind)
        try:
            parsed = ptype.params_model.model_validate(dict(params or {}))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ValueError(f"invalid parameters for {kind} {type_name!r}: {problems}") from exc
        plugin = ptype.factory(name or type_name, parsed, ctx)
        plugin.name = name or type_name
        return plugin
