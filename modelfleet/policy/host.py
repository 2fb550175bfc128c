"""The routing host: the one object the simulator, the live scheduler and the parity harness call.

A host (the discrete-event simulator, the Ray Serve proxy, a test) owns I/O and time; a
:class:`Router` owns everything between the host and the policy objects, so that every host
drives the policy the same way (after the endpoint picker's request *director*, the one thing
its server calls, and Ray Serve's ``RequestRouter``, which owns the replica set and its
queue-length cache):

* **The endpoint set** of one pool: static :class:`EndpointInfo` (id, pool, model,
  accelerator, relative speed, perf model, healthy/draining), added, updated, drained and
  removed at run time, plus the latest scrape of each (:class:`EndpointMetrics`: running,
  waiting, KV usage). :meth:`Router.views` turns both, with the fresh in-flight counters, into
  the :class:`~.types.EndpointView` snapshots policies read, in the order endpoints were added.
* **The request lifecycle**: :meth:`~Router.route` places a request (pick, then ``on_routed``);
  ``on_first_token``, ``on_tokens``, ``on_completed``, ``on_migration_started``,
  ``on_migration_aborted``, ``on_migrated`` and ``on_kv_event`` each fan out exactly once to
  the profile's hooks and to the :class:`~.load.InflightTracker`.
* **The planner's inputs**: what the host observed per request (tokens streamed, time of the
  first token, migration in progress) becomes one :class:`~.migration.InflightView` each, and
  :meth:`~Router.plan` calls the planner with them.
* **What the policy consumes** (:attr:`Router.consumes`, keys of :class:`~.framework.Data`), so
  a host knows whether to subscribe to KV events or fit perf models without probing the
  profile's parts.
* **Latency learning** (optional, ``learner=``): each endpoint's ``perf`` is then the *prior*
  of its variant, and the views carry the :class:`~.learn.LatencyLearner`'s current snapshot
  instead. The router feeds the learner from the same hooks: at ``route`` it records the
  prior's TTFT prediction for the chosen endpoint's queue (and the streams it serves), at the
  first token the observed TTFT, at completion (or switch-over) the observed TPOT of the
  request on that endpoint against its batch. A live proxy gets this for free by calling the
  hooks with the times it saw.
* **Prefix-index sizing**: an endpoint's ``kv_capacity_tokens`` (from its declared memory,
  model and ``gpuMemoryUtilization``, :func:`~.prior.kv_capacity_tokens`) is handed to the
  profile's prefix index when the index can use it (``set_capacity``).

Pools: one router serves one pool (a request may only go to an endpoint of its own pool, and a
migration may only move it within the pool), like one endpoint picker per InferencePool; a
host with several pools keeps one router per pool, each with its own profile and planner.

Pure: no clock of its own (it uses the profile's injected clock), no I/O, no threads. Every
method is synchronous and cheap: ``on_tokens`` is two dict lookups, so an asyncio proxy can call
it per streamed chunk; ``route`` costs one view per endpoint plus the profile's decision.
Hooks for a request the router does not know (already completed) are ignored, so a late chunk
after an abort cannot corrupt the counters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from modelfleet.policy.framework import Clock, Data, Profile
from modelfleet.policy.learn import LatencyLearner
from modelfleet.policy.load import InflightTracker
from modelfleet.policy.migration import InflightView, Migration, MigrationPlanner
from modelfleet.policy.perf import PerfModel
from modelfleet.policy.types import Decision, EndpointId, EndpointView, RequestId, RequestView

__all__ = ["EndpointInfo", "EndpointMetrics", "PlanRound", "Router"]


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """What a host knows about one endpoint from configuration and discovery, not from scrapes.

    ``relative_speed`` is the accelerator's capacity weight (finite, > 0); ``perf`` its latency
    model (``None``: SLO terms are neutral for it; with a learning router, the prior it starts
    from); ``draining`` is set by the operator's drain (no new requests; the planner moves the
    running ones out). ``tensor_parallel_size`` completes the variant's identity;
    ``kv_capacity_tokens`` (0 = unknown) sizes the approximate prefix index for it.
    """

    id: EndpointId
    pool: str = ""
    model: str = ""
    accelerator: str = ""
    relative_speed: float = 1.0
    perf: PerfModel | None = None
    healthy: bool = True
    draining: bool = False
    tensor_parallel_size: int = 1
    kv_capacity_tokens: int = 0

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("EndpointInfo.id must not be empty")
        if self.tensor_parallel_size < 1 or self.kv_capacity_tokens < 0:
            raise ValueError(
                f"EndpointInfo {self.id!r}: tensor_parallel_size must be >= 1 and "
                f"kv_capacity_tokens >= 0"
            )
        if not (math.isfinite(self.relative_speed) and self.relative_speed > 0):
            raise ValueError(
                f"EndpointInfo {self.id!r}: relative_speed must be finite and > 0, "
                f"got {self.relative_speed}"
            )


@dataclass(frozen=True, slots=True)
class EndpointMetrics:
    """One scrape of an engine's gauges (vLLM names in brackets).

    ``running`` (``vllm:num_requests_running``) and ``waiting`` (``vllm:num_requests_waiting``)
    are request counts >= 0; ``kv_cache_usage`` (``vllm:kv_cache_usage_perc``) is a fraction
    in [0, 1].
    """

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0

    def __post_init__(self) -> None:
        if self.running < 0 or self.waiting < 0:
            raise ValueError(
                f"EndpointMetrics: running and waiting must be >= 0, got {self.running}, "
                f"{self.waiting}"
            )
        if not 0.0 <= self.kv_cache_usage <= 1.0:
            raise ValueError(
                f"EndpointMetrics: kv_cache_usage must be in [0, 1], got {self.kv_cache_usage}"
            )


@dataclass(frozen=True, slots=True)
class PlanRound:
    """One call of :meth:`Router.plan`: the planner's inputs and its answer."""

    views: tuple[EndpointView, ...]
    inflight: tuple[InflightView, ...]
    in_progress: frozenset[RequestId]
    migrations: tuple[Migration, ...]


_NO_METRICS = EndpointMetrics()


class _Slot:
    """One endpoint of the set: its static info, latest scrape and peers' in-flight counts."""

    __slots__ = ("info", "metrics", "peer")

    def __init__(self, info: EndpointInfo) -> None:
        self.info = info
        self.metrics = _NO_METRICS
        self.peer: tuple[int, int, int] = (0, 0, 0)


class _Flight:
    """What the router observed of one in-flight request."""

    __slots__ = (
        "batch",
        "endpoint",
        "first_token_s",
        "generated",
        "migrating_to",
        "prior_ttft",
        "request",
        "routed_s",
        "segment_s",
        "segment_tokens",
        "streams",
    )

    def __init__(self, request: RequestView, endpoint: EndpointId) -> None:
        self.request = request
        self.endpoint = endpoint
        self.generated = 0  # tokens streamed to the client so far (all endpoints)
        self.first_token_s: float | None = None
        self.migrating_to: EndpointId | None = None  # a destination copy is being prepared
        # latency learning: what the prior predicted at routing, and the current decode
        # segment on one endpoint (first token or switch-over time, tokens before it, batch)
        self.routed_s = 0.0
        self.prior_ttft = 0.0
        self.streams = 0
        self.segment_s: float | None = None
        self.segment_tokens = 0
        self.batch = 0

    def view(self, now: float) -> InflightView:
        """The planner's view, from what a proxy can observe.

        A proxy cannot tell a queued request from one in prefill, so a request without a first
        token is ``queued``; the observed TPOT is the mean since the first token.
        """
        generated = self.generated
        first = self.first_token_s
        tpot = None
        if generated >= 2 and first is not None:
            tpot = (now - first) / (generated - 1)
        return InflightView(
            request=self.request,
            src=self.endpoint,
            generated_tokens=generated,
            phase="queued" if first is None else "decode",
            age_s=now - self.request.arrival_s,
            observed_tpot_s=tpot,
        )


class Router:
    """Routes the requests of one pool through one profile (and planner); see the module doc.

    Invariants: every request placed by :meth:`route` is in flight until ``on_completed``;
    the in-flight counters in :meth:`views` are exactly what :class:`InflightTracker` computes
    from the hooks called so far; each hook reaches each profile plugin and the tracker once.
    """

    def __init__(
        self,
        profile: Profile,
        *,
        planner: MigrationPlanner | None = None,
        pool: str = "",
        endpoints: Iterable[EndpointInfo] = (),
        learner: LatencyLearner | None = None,
    ) -> None:
        self.profile = profile
        self.planner = planner
        self.pool = pool
        self.learner = learner
        self.tracker = InflightTracker()
        self._slots: dict[EndpointId, _Slot] = {}
        self._flights: dict[RequestId, _Flight] = {}
        self.consumes: frozenset[Data] = self._consumes(profile, planner)
        for info in endpoints:
            self.add_endpoint(info)

    @staticmethod
    def _consumes(profile: Profile, planner: MigrationPlanner | None) -> frozenset[Data]:
        consumes = set(profile.consumes)
        if planner is not None:
            consumes |= planner.consumes
        return frozenset(consumes)

    def set_profile(self, profile: Profile, planner: MigrationPlanner | None = None) -> None:
        """Replace the profile and planner (a RoutingPolicy's placement was edited).

        The endpoint set, the scrapes, the in-flight counters and the requests in flight are
        kept, so nothing is dropped and the load the new profile sees is right; the new
        profile's trackers (its prefix index, session ring) start empty. Hooks of requests
        routed before the swap reach the new profile, which ignores ids it does not know.
        """
        self.profile = profile
        self.planner = planner
        self.consumes = self._consumes(profile, planner)

    @property
    def clock(self) -> Clock:
        """The injected clock (the profile's): virtual seconds in the simulator."""
        return self.profile.clock

    @property
    def plan_period_s(self) -> float | None:
        """How often the host should call :meth:`plan` (``None``: no planner)."""
        return None if self.planner is None else float(self.planner.params.period_s)

    # -- the endpoint set --------------------------------------------------------------------
    def add_endpoint(self, info: EndpointInfo) -> None:
        """Add an endpoint of this router's pool (ValueError for a known id or another pool)."""
        if info.pool != self.pool:
            raise ValueError(
                f"endpoint {info.id!r} is in pool {info.pool!r}, this router serves pool "
                f"{self.pool!r} (use one router per pool)"
            )
        if info.id in self._slots:
            raise ValueError(f"endpoint {info.id!r} is already in pool {self.pool!r}")
        self._slots[info.id] = _Slot(info)
        self._configure(info)

    def _configure(self, info: EndpointInfo) -> None:
        """Hand an endpoint's static info to the learner and the prefix index."""
        if self.learner is not None:
            self.learner.register(info.id, info.accelerator, info.model, info.perf)
        index = self.profile.prefix_index
        set_capacity = getattr(index, "set_capacity", None)
        if set_capacity is not None and info.kv_capacity_tokens > 0:
            set_capacity(info.id, info.kv_capacity_tokens)

    def update_endpoint(self, info: EndpointInfo) -> None:
        """Replace the static info of a known endpoint (its position and scrape are kept)."""
        slot = self._slot(info.id)
        if info.pool != self.pool:
            raise ValueError(
                f"endpoint {info.id!r} cannot move from pool {self.pool!r} to {info.pool!r}"
            )
        slot.info = info
        self._configure(info)

    def set_draining(self, endpoint: EndpointId, draining: bool = True) -> None:
        """Mark an endpoint draining: no new requests; the next :meth:`plan` moves its own out."""
        slot = self._slot(endpoint)
        slot.info = replace(slot.info, draining=draining)

    def set_healthy(self, endpoint: EndpointId, healthy: bool) -> None:
        slot = self._slot(endpoint)
        slot.info = replace(slot.info, healthy=healthy)

    def remove_endpoint(self, endpoint: EndpointId) -> None:
        """Forget an endpoint and what the prefix index knew of its cache.

        Requests still in flight on it stay counted until the host reports them completed
        (aborted) or migrated; nothing is dropped silently.
        """
        self._slot(endpoint)
        del self._slots[endpoint]
        index = self.profile.prefix_index
        if index is not None:
            index.forget(endpoint)
        if self.learner is not None:
            self.learner.forget(endpoint)

    def endpoint(self, endpoint: EndpointId) -> EndpointInfo:
        return self._slot(endpoint).info

    def endpoints(self) -> tuple[EndpointInfo, ...]:
        return tuple(s.info for s in self._slots.values())

    def update_metrics(self, endpoint: EndpointId, metrics: EndpointMetrics) -> None:
        """Store the latest scrape of ``endpoint``; a scrape of an unknown endpoint is dropped
        (a poller may report once more after the endpoint was removed)."""
        slot = self._slots.get(endpoint)
        if slot is not None:
            slot.metrics = metrics

    def set_peer_inflight(
        self, endpoint: EndpointId, requests: int, tokens: int, prefill_tokens: int
    ) -> None:
        """What the *other* scheduler replicas have in flight on ``endpoint`` (scale-out).

        Added to this router's own counters in :meth:`views` (never to its tracker), so the
        load a policy sees is the fleet's whole scheduler-side load. Unknown endpoints are
        ignored (a peer may know an endpoint this replica has not discovered yet).
        """
        slot = self._slots.get(endpoint)
        if slot is not None:
            slot.peer = (max(0, requests), max(0, tokens), max(0, prefill_tokens))

    def _slot(self, endpoint: EndpointId) -> _Slot:
        slot = self._slots.get(endpoint)
        if slot is None:
            raise KeyError(f"unknown endpoint {endpoint!r} in pool {self.pool!r}")
        return slot

    # -- snapshots ---------------------------------------------------------------------------
    def views(self) -> tuple[EndpointView, ...]:
        """One view per endpoint: static info, latest scrape (zeros before the first one) and
        the in-flight counters as of now (plus peers', see :meth:`set_peer_inflight`), in the
        order the endpoints were added."""
        counters = self.tracker.counters
        learned = self.learner.model_for if self.learner is not None else None
        out = []
        for ep, slot in self._slots.items():
            info, m = slot.info, slot.metrics
            reqs, toks, prefill = counters(ep)
            if slot.peer[0] or slot.peer[1]:
                reqs, toks, prefill = (
                    reqs + slot.peer[0],
                    toks + slot.peer[1],
                    prefill + slot.peer[2],
                )
            perf = info.perf
            if learned is not None and perf is not None:
                perf = learned(ep) or perf
            out.append(
                EndpointView(
                    id=ep,
                    pool=info.pool,
                    model=info.model,
                    accelerator=info.accelerator,
                    running=m.running,
                    waiting=m.waiting,
                    kv_cache_usage=m.kv_cache_usage,
                    inflight_requests=reqs,
                    inflight_tokens=toks,
                    inflight_prefill_tokens=prefill,
                    healthy=info.healthy,
                    draining=info.draining,
                    relative_speed=info.relative_speed,
                    perf=perf,
                )
            )
        return tuple(out)

    def inflight(self) -> tuple[InflightView, ...]:
        """The planner's view of every request in flight, at the clock's now."""
        now = self.clock()
        return tuple(f.view(now) for f in self._flights.values())

    def endpoint_of(self, request_id: RequestId) -> EndpointId | None:
        """Where the request runs now (``None`` when not in flight)."""
        flight = self._flights.get(request_id)
        return None if flight is None else flight.endpoint

    @property
    def in_flight(self) -> int:
        """Requests routed and not completed yet."""
        return len(self._flights)

    # -- the request lifecycle ---------------------------------------------------------------
    def route(self, request: RequestView) -> Decision:
        """Place ``request`` on an endpoint of this pool and record it as in flight.

        Raises :class:`~.types.NoEndpointError` (nothing recorded) when no endpoint is left,
        and ``ValueError`` for a request of another pool or one already in flight (a host that
        retries reports the failed attempt with ``on_completed`` first).
        """
        if request.pool and request.pool != self.pool:
            raise ValueError(
                f"request {request.id!r} is for pool {request.pool!r}, this router serves "
                f"pool {self.pool!r}"
            )
        if request.id in self._flights:
            raise ValueError(f"request {request.id!r} is already in flight")
        views = self.views()
        decision = self.profile.pick(request, views)
        self.profile.on_routed(request, decision)
        endpoint = decision.endpoint
        flight = _Flight(request, endpoint)
        if self.learner is not None:
            self._note_routing(flight, views, decision.cached_tokens)
        self.tracker.on_routed(request, endpoint)
        self._flights[request.id] = flight
        return decision

    def _note_routing(
        self, flight: _Flight, views: tuple[EndpointView, ...], cached_tokens: int
    ) -> None:
        """Record what the prior predicts for the request where it goes (the learner's x)."""
        assert self.learner is not None
        prior = self.learner.prior_for(flight.endpoint)
        if prior is None:
            return
        view = next(v for v in views if v.id == flight.endpoint)
        flight.routed_s = self.clock()
        flight.streams = view.inflight_requests
        flight.prior_ttft = prior.predict_ttft(
            flight.request.prompt_tokens,
            cached_tokens,
            running=view.running,
            waiting=view.waiting,
            pending_prefill_tokens=view.inflight_prefill_tokens,
        )

    def _batch(self, endpoint: EndpointId) -> int:
        """Sequences decoding on ``endpoint`` now: the scrape, or this router's own count."""
        slot = self._slots.get(endpoint)
        if slot is None:
            return 0
        reqs, _tok, _pre = self.tracker.counters(endpoint)
        m = slot.metrics
        active = reqs - m.waiting
        return m.running if m.running > active else active

    def _end_segment(self, flight: _Flight, at: float) -> None:
        """Observe the TPOT of the request's decode segment on its current endpoint."""
        learner = self.learner
        start = flight.segment_s
        if learner is None or start is None:
            return
        n = flight.generated - flight.segment_tokens
        flight.segment_s = None
        if n < 2 or at <= start:
            return
        prior = learner.prior_for(flight.endpoint)
        if prior is None:
            return
        batch = (flight.batch + self._batch(flight.endpoint) + 1) // 2
        learner.observe_tpot(
            flight.endpoint, prior.predict_tpot(running=batch), (at - start) / (n - 1)
        )

    def on_first_token(self, request_id: RequestId, *, at: float | None = None) -> None:
        """The first token reached the client (``at``: when, default the clock's now).

        Idempotent: only the first call per request counts (a switch-over is not a new first
        token for the client; :meth:`on_migrated` handles the destination's).
        """
        flight = self._flights.get(request_id)
        if flight is None or flight.first_token_s is not None:
            return
        now = self.clock() if at is None else at
        flight.first_token_s = now
        self.profile.on_first_token(request_id, flight.endpoint)
        self.tracker.on_first_token(request_id)
        learner = self.learner
        if learner is not None and flight.prior_ttft > 0:
            learner.observe_ttft(
                flight.endpoint, flight.prior_ttft, flight.streams, now - flight.routed_s
            )
            flight.segment_s = now
            flight.segment_tokens = flight.generated
            flight.batch = self._batch(flight.endpoint)

    def on_tokens(self, request_id: RequestId, n: int = 1, *, at: float | None = None) -> None:
        """``n`` more tokens reached the client; the first ones also count as the first token.

        Cheap enough for every streamed chunk: two dict lookups when the first token is known.
        """
        flight = self._flights.get(request_id)
        if flight is None:
            return
        if flight.first_token_s is None:
            self.on_first_token(request_id, at=at)
        flight.generated += n
        self.tracker.on_token(request_id, n)

    def on_completed(self, request_id: RequestId, *, at: float | None = None) -> None:
        """The request finished, failed or was aborted (also cancels a migration in progress).

        ``at``: when its last token arrived (default the clock's now); a learning router
        observes the request's TPOT on its endpoint from it.
        """
        flight = self._flights.get(request_id)
        if flight is None:
            return
        if self.learner is not None:
            self._end_segment(flight, self.clock() if at is None else at)
        del self._flights[request_id]
        self.profile.on_completed(request_id, flight.endpoint)
        self.tracker.on_completed(request_id)

    def on_migration_started(self, request_id: RequestId, dst: EndpointId) -> None:
        """The executor started a destination copy of the request on ``dst``.

        It counts against the planner's ``max_concurrent`` (and the request is not planned
        again) until it switches over (:meth:`on_migrated`), is given up
        (:meth:`on_migration_aborted`) or the request ends (:meth:`on_completed`).
        """
        flight = self._flights.get(request_id)
        if flight is not None:
            flight.migrating_to = dst

    def on_migration_aborted(self, request_id: RequestId) -> None:
        """The destination copy was given up; the request keeps running where it was."""
        flight = self._flights.get(request_id)
        if flight is not None:
            flight.migrating_to = None

    def on_migrated(self, request_id: RequestId, dst: EndpointId) -> None:
        """The stream switched over to ``dst`` (make-before-break: on ``dst``'s first token).

        The tracker moves the request with its context (prompt + tokens so far) to ``dst`` and
        marks it past prefill there; the profile learns the move with the tokens generated.
        """
        flight = self._flights.get(request_id)
        if flight is None:
            return
        if self.learner is not None:
            now = self.clock()
            self._end_segment(flight, now)
            flight.segment_s = now
            flight.segment_tokens = flight.generated
            flight.batch = self._batch(dst)
        src = flight.endpoint
        flight.endpoint = dst
        flight.migrating_to = None
        self.tracker.on_migrated(request_id, src, dst)
        self.tracker.on_first_token(request_id)
        self.profile.on_migrated(flight.request, src, dst, flight.generated)

    def on_kv_event(self, endpoint: EndpointId, event: object) -> None:
        """An engine published a KV-cache event (only useful if ``Data.KV_EVENTS`` is consumed)."""
        self.profile.on_kv_event(endpoint, event)

    # -- migration planning ------------------------------------------------------------------
    def plan(self) -> PlanRound:
        """Ask the planner which in-flight requests to move now (empty without a planner).

        The host executes the migrations and reports them with ``on_migration_started`` and
        then ``on_migrated`` or ``on_migration_aborted``; call it every :attr:`plan_period_s`
        and right after :meth:`set_draining`.
        """
        planner = self.planner
        if planner is None:
            return PlanRound((), (), frozenset(), ())
        views = self.views()
        inflight = self.inflight()
        in_progress = frozenset(
            f.request.id for f in self._flights.values() if f.migrating_to is not None
        )
        migrations = planner.plan(views, inflight, in_progress=in_progress)
        for m in migrations:  # never out of this router's pool: raise, not assert (-O)
            if m.dst not in self._slots or m.src not in self._slots:
                raise AssertionError(
                    f"planner proposed {m.request_id!r} {m.src!r} -> {m.dst!r}, outside pool "
                    f"{self.pool!r}"
                )
        return PlanRound(views, inflight, in_progress, tuple(migrations))
