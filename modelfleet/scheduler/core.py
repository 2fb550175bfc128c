"""The scheduler's decision path: fleet snapshot in, per-request placements out.

:class:`SchedulerCore` owns the policy objects of one scheduler replica and nothing that does
I/O, so the same wiring runs in the Ray Serve replica, in a plain ASGI server and in the parity
test (``tests/sim/test_sim_parity.py`` replays a simulator's event log through it):

* **Per RoutingPolicy** (:class:`PolicyState`): the :class:`~modelfleet.policy.selection.Selector`
  (rules, then the strategy), the API-key limiter, the SLO classes and an RNG.
* **Per ModelPool** (:class:`PoolState`): one :class:`~modelfleet.policy.host.Router` with the
  profile built from the placement of the policy that targets the pool (the first by
  namespace/name when several do; the default placement when none does), the pool's endpoints
  as :class:`~modelfleet.policy.host.EndpointInfo` (relative speed and perf model from the
  AcceleratorProfile, corrected by observed latencies, :mod:`~modelfleet.scheduler.perf`).

A request goes :meth:`~SchedulerCore.open` (model name → policy, API key, rate limit, SLO
class, model selection) → :meth:`~SchedulerCore.place` (admission by SLO class, then the
pool's router) → an :class:`Attempt` whose lifecycle the proxy reports
(:meth:`~SchedulerCore.on_tokens`, :meth:`~SchedulerCore.finish`,
:meth:`~SchedulerCore.abandon` before a retry).

:meth:`~SchedulerCore.apply` takes a new :class:`~modelfleet.scheduler.fleet.FleetSnapshot`
without dropping anything in flight: a changed placement swaps the pool router's profile
(:meth:`Router.set_profile` keeps the endpoint set, scrapes and in-flight counters), a changed
policy rebuilds its selector, endpoints are added, updated and removed in place, and an
attempt keeps a reference to its pool, so a removed pool's requests finish normally.

Not thread-safe: every method runs on the replica's event loop.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from modelfleet.api.accelerator import AcceleratorProfile
from modelfleet.api.modelpool import ModelPool
from modelfleet.api.names import PREFIX_HASH_ALGO, PREFIX_HASH_SEED
from modelfleet.api.routingpolicy import MigrationSpec, PlacementSpec, RoutingPolicy, SLOClass
from modelfleet.policy.admission import SloClassPolicy, admit
from modelfleet.policy.baselines import build_policy
from modelfleet.policy.framework import Data, Profile
from modelfleet.policy.from_api import migration_params_from_api, profile_spec_from_placement
from modelfleet.policy.hashing import FunctionBlockHasher
from modelfleet.policy.host import EndpointInfo, EndpointMetrics, Router
from modelfleet.policy.learn import LatencyLearner, LearnerParams
from modelfleet.policy.migration import MigrationPlanner
from modelfleet.policy.perf import PerfModel
from modelfleet.policy.prefix import ApproxPrefixIndex
from modelfleet.policy.selection import (
    Outcome,
    PoolView,
    SelectionDecision,
    SelectionRequest,
    Selector,
)
from modelfleet.policy.types import (
    Decision,
    EndpointId,
    NoEndpointError,
    RequestId,
    RequestView,
)
from modelfleet.policy.vllm_hash import BlockHasher as VllmBlockHasher
from modelfleet.policy.vllm_hash import event_hash
from modelfleet.scheduler.errors import ApiError
from modelfleet.scheduler.fleet import (
    EndpointSpec,
    FleetSnapshot,
    PoolKey,
    PredictorCache,
    make_selector,
)
from modelfleet.scheduler.perf import prior_perf, relative_speed
from modelfleet.scheduler.protocol import ParsedRequest
from modelfleet.scheduler.ratelimit import KeyLimiter
from modelfleet.scheduler.telemetry import FinishedRecord, Telemetry

_DEFAULT_LEARNER = LearnerParams()

__all__ = [
    "Attempt",
    "FleetChange",
    "PolicyState",
    "PoolState",
    "SchedulerCore",
    "Ticket",
    "Wait",
]

Outcome_ = Literal["ok", "client_error", "error", "aborted"]
PerfProvider = Callable[[EndpointSpec, ModelPool, AcceleratorProfile | None], PerfModel | None]
RngFactory = Callable[[str], random.Random]


def _sig(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _hash_settings(pool: ModelPool) -> tuple[str, str | None, bool]:
    """(algo, PYTHONHASHSEED, int hashes) the pool's engines hash blocks with.

    With ``engine.kvEvents`` the operator (and ``--launch-engines``) render the hash algorithm
    and seed themselves (``PREFIX_HASH_ALGO``, ``PREFIX_HASH_SEED``; the API refuses both in
    ``extraArgs``/``env``), so an exact index can reproduce the engines' block hashes.
    Without it the engines keep vLLM's defaults (sha256, a random seed per process).
    """
    engine = pool.spec.engine
    env = {e.name: e.value for e in engine.env}
    as_int = env.get("VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES", "1") != "0"
    if engine.kv_events:
        return PREFIX_HASH_ALGO, PREFIX_HASH_SEED, as_int
    return "sha256", None, as_int


def precise_hasher_for(pool: ModelPool) -> FunctionBlockHasher:
    """The pool's engines' vLLM block-hash recipe as a policy hasher (KV-event hashes)."""
    bs = pool.spec.engine.block_size
    algo, seed, as_int = _hash_settings(pool)
    hasher = VllmBlockHasher(bs, algo if algo != "builtin" else "sha256", seed)

    def chain(ids: Sequence[int]) -> list[int | bytes]:
        return [event_hash(d, as_int=as_int) for d in hasher.hashes(ids)]

    return FunctionBlockHasher(f"vllm-{algo}-{bs}-{seed}-{as_int}", bs, chain)


@dataclass
class PoolState:
    """One ModelPool: its router and the endpoints behind it."""

    key: PoolKey
    spec: ModelPool
    router: Router
    placement_sig: str
    owner: PoolKey | None
    endpoints: dict[EndpointId, EndpointSpec] = field(default_factory=dict)
    down_reasons: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.key[1]

    @property
    def served_model(self) -> str:
        return self.spec.spec.served_model_name

    @property
    def needs_token_ids(self) -> bool:
        """The profile matches prefixes with the engines' own hashes (KV events)."""
        return Data.KV_EVENTS in self.router.consumes

    def available(self) -> bool:
        return any(v.healthy and not v.draining for v in self.router.endpoints())

    def variant_of(self, endpoint: EndpointId) -> str:
        spec = self.endpoints.get(endpoint)
        return spec.variant if spec is not None else ""


@dataclass
class PolicyState:
    """One RoutingPolicy: selection, keys and limits, SLO classes."""

    key: PoolKey
    spec: RoutingPolicy
    selector: Selector
    limiter: KeyLimiter
    rng: random.Random
    sig: str

    @property
    def classes(self) -> dict[str, SLOClass]:
        return {c.name: c for c in self.spec.spec.slo_classes}


@dataclass
class Ticket:
    """One client request after the checks that need no pool (see :meth:`SchedulerCore.open`)."""

    request_id: RequestId
    parsed: ParsedRequest
    policy: PolicyState
    key_id: str
    slo: SLOClass | None
    headers: Mapping[str, str]
    arrival_s: float
    selection: SelectionDecision
    pool_key: PoolKey
    tried_pools: list[PoolKey] = field(default_factory=list)
    failed_on: set[str] = field(default_factory=set)
    token_ids: list[int] | None = None
    tokenized_for: PoolKey | None = None
    downgraded: bool = False
    queued: bool = False

    @property
    def slo_class(self) -> str:
        return self.slo.name if self.slo is not None else ""


@dataclass
class Attempt:
    """One try of a ticket on one endpoint (the proxy reports its lifecycle)."""

    ticket: Ticket
    pool: PoolState
    endpoint: EndpointSpec
    decision: Decision
    view: RequestView
    started_s: float
    first_token_s: float | None = None
    tokens: int = 0
    done: bool = False

    @property
    def variant(self) -> str:
        return self.endpoint.variant


@dataclass(frozen=True)
class Wait:
    """Admission queued the request: try :meth:`SchedulerCore.place` again after this."""

    retry_after_s: float
    reason: str


@dataclass(frozen=True)
class FleetChange:
    """What :meth:`SchedulerCore.apply` changed in the endpoint set (pollers follow it)."""

    added: tuple[EndpointSpec, ...] = ()
    removed: tuple[EndpointSpec, ...] = ()
    changed: tuple[EndpointSpec, ...] = ()


def _placement_of(policy: RoutingPolicy | None) -> tuple[PlacementSpec, MigrationSpec | None]:
    if policy is None:
        return PlacementSpec(), None
    return policy.spec.placement, policy.spec.migration


def _placement_sig(placement: PlacementSpec, migration: MigrationSpec | None) -> str:
    return _sig([placement.to_wire(), None if migration is None else migration.to_wire()])


class SchedulerCore:
    """The decision path of one scheduler replica (see the module docstring).

    ``clock`` (seconds, monotonic) and ``rng_factory`` (an RNG per pool or policy name) are
    injected so a test can replay a recorded run; ``perf_provider`` replaces the per-variant
    perf models (the parity test passes the simulator's). ``share`` is this replica's share of
    every rate limit (1/N with N replicas). ``telemetry`` is optional (the parity test runs
    without).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        rng_factory: RngFactory | None = None,
        telemetry: Telemetry | None = None,
        predictors: PredictorCache | None = None,
        perf_provider: PerfProvider | None = None,
        share: float = 1.0,
        collect_prefix_deltas: bool = False,
        learner: LearnerParams | None = _DEFAULT_LEARNER,
    ) -> None:
        self.clock = clock
        self.rng_factory = rng_factory or (lambda _name: random.Random())
        self.telemetry = telemetry
        self.predictors = predictors or PredictorCache()
        self.perf_provider = perf_provider
        self.share = share
        self.learner_params = learner
        self.snapshot = FleetSnapshot()
        self.pools: dict[PoolKey, PoolState] = {}
        self.policies: dict[PoolKey, PolicyState] = {}
        self.models: dict[str, PolicyState] = {}
        self.collect_prefix_deltas = collect_prefix_deltas
        self.prefix_outbox: list[tuple[str, str, str, tuple[int | bytes, ...]]] = []
        self.attempts: dict[RequestId, Attempt] = {}

    # ------------------------------------------------------------------ fleet
    def apply(self, snapshot: FleetSnapshot) -> FleetChange:
        """Make the core serve ``snapshot`` (see the module docstring); returns endpoint diffs."""
        old_endpoints = {e.id: e for e in self.snapshot.endpoints}
        self.snapshot = snapshot
        self._apply_policies(snapshot)
        self._apply_pools(snapshot)
        new_endpoints = {e.id: e for e in snapshot.endpoints}
        return FleetChange(
            added=tuple(e for i, e in new_endpoints.items() if i not in old_endpoints),
            removed=tuple(e for i, e in old_endpoints.items() if i not in new_endpoints),
            changed=tuple(
                e for i, e in new_endpoints.items() if i in old_endpoints and old_endpoints[i] != e
            ),
        )

    def _apply_policies(self, snapshot: FleetSnapshot) -> None:
        policies: dict[PoolKey, PolicyState] = {}
        for key in sorted(snapshot.policies):
            rp = snapshot.policies[key]
            sig = _sig(rp.spec.to_wire())
            old = self.policies.get(key)
            if old is not None and old.sig == sig:
                policies[key] = old
                continue
            name = f"{key[0]}/{key[1]}"
            policies[key] = PolicyState(
                key=key,
                spec=rp,
                selector=make_selector(rp.spec, self.predictors),
                limiter=KeyLimiter(rp.spec.rate_limits, self.clock, self.share),
                rng=old.rng if old is not None else self.rng_factory(f"policy:{name}"),
                sig=sig,
            )
        self.policies = policies
        models: dict[str, PolicyState] = {}
        for key in sorted(policies):
            for name in policies[key].spec.spec.model_names:
                models.setdefault(name, policies[key])
        self.models = models

    def _owner(self, snapshot: FleetSnapshot, pool: PoolKey) -> PoolKey | None:
        for key in sorted(snapshot.policies):
            if key[0] == pool[0] and pool[1] in snapshot.policies[key].referenced_pools():
                return key
        return None

    def _build_router_parts(
        self, key: PoolKey, pool: ModelPool, owner: PoolKey | None, snapshot: FleetSnapshot
    ) -> tuple[Profile, MigrationPlanner | None, str]:
        placement, migration = _placement_of(snapshot.policies.get(owner) if owner else None)
        sig = _placement_sig(placement, migration)
        spec = profile_spec_from_placement(placement)
        precise = precise_hasher_for(pool) if spec.prefix_source == "kv-events" else None
        params = migration_params_from_api(migration) if migration is not None else None
        built = build_policy(
            placement.profile,
            clock=self.clock,
            rng=self.rng_factory(f"pool:{key[0]}/{key[1]}"),
            precise_hasher=precise,
            spec=spec,
            migration=params,
        )
        planner = built.planner if params is not None else None
        return built.profile, planner, sig

    def _apply_pools(self, snapshot: FleetSnapshot) -> None:
        pools: dict[PoolKey, PoolState] = {}
        by_pool: dict[PoolKey, list[EndpointSpec]] = {}
        for e in snapshot.endpoints:  # once, not once per pool (200 pools: 40,000 tests)
            by_pool.setdefault(e.pool_key, []).append(e)
        for key in sorted(snapshot.pools):
            spec = snapshot.pools[key]
            owner = self._owner(snapshot, key)
            placement, migration = _placement_of(snapshot.policies.get(owner) if owner else None)
            sig = _placement_sig(placement, migration)
            state = self.pools.get(key)
            if state is None or state.placement_sig != sig:
                profile, planner, sig = self._build_router_parts(key, spec, owner, snapshot)
                if state is None:
                    learner = (
                        LatencyLearner(self.learner_params)
                        if self.learner_params is not None
                        else None
                    )
                    router = Router(profile, planner=planner, pool=key[1], learner=learner)
                    state = PoolState(key, spec, router, sig, owner)
                else:
                    state.router.set_profile(profile, planner)
                    state.placement_sig = sig
            state.spec = spec
            state.owner = owner
            self._sync_endpoints(state, snapshot, by_pool.get(key, []))
            pools[key] = state
        for key, state in self.pools.items():
            if key not in pools:
                for ep in list(state.endpoints):
                    state.router.remove_endpoint(ep)
                state.endpoints.clear()
        self.pools = pools

    def _info(
        self, state: PoolState, e: EndpointSpec, snapshot: FleetSnapshot, fastest: float
    ) -> EndpointInfo:
        pool = state.spec
        variant = next(v for v in pool.spec.variants if v.name == e.variant)
        profile = snapshot.profiles.get(variant.accelerator_profile)
        perf: PerfModel | None
        if self.perf_provider is not None:
            perf = self.perf_provider(e, pool, profile)
        else:
            prior = prior_perf(pool, variant, profile)
            perf = prior  # the pool router's learner corrects it from what it observes
        old = (
            state.router.endpoint(EndpointId(e.id)) if EndpointId(e.id) in state.endpoints else None
        )
        return EndpointInfo(
            id=EndpointId(e.id),
            pool=state.name,
            model=pool.spec.served_model_name,
            accelerator=variant.accelerator_profile,
            relative_speed=relative_speed(profile, variant) / fastest,
            perf=perf,
            healthy=old.healthy if old is not None else True,
            draining=old.draining if old is not None else False,
        )

    def _sync_endpoints(
        self, state: PoolState, snapshot: FleetSnapshot, wanted: list[EndpointSpec]
    ) -> None:
        """The pool's router serves ``wanted``, the snapshot's endpoints of this pool."""
        variants = {v.name: v for v in state.spec.spec.variants}
        speeds = [
            relative_speed(snapshot.profiles.get(v.accelerator_profile), v)
            for v in variants.values()
        ]
        fastest = max(speeds) if speeds else 1.0
        ids = {EndpointId(e.id) for e in wanted}
        for ep in [i for i in state.endpoints if i not in ids]:
            state.router.remove_endpoint(ep)
            del state.endpoints[ep]
        for e in wanted:
            ep = EndpointId(e.id)
            info = self._info(state, e, snapshot, fastest)
            if ep in state.endpoints:
                state.router.update_endpoint(info)
            else:
                state.router.add_endpoint(info)
            state.endpoints[ep] = e

    def find_endpoint(self, endpoint: str) -> tuple[PoolState, EndpointSpec] | None:
        for state in self.pools.values():
            spec = state.endpoints.get(EndpointId(endpoint))
            if spec is not None:
                return state, spec
        return None

    def update_metrics(self, endpoint: str, metrics: EndpointMetrics) -> None:
        found = self.find_endpoint(endpoint)
        if found is not None:
            found[0].router.update_metrics(EndpointId(endpoint), metrics)

    def set_healthy(self, endpoint: str, healthy: bool, reason: str = "") -> None:
        """Mark an endpoint up or down (``reason``: why it is down, shown in refusals)."""
        found = self.find_endpoint(endpoint)
        if found is None:
            return
        state = found[0]
        if healthy:
            state.down_reasons.pop(endpoint, None)
        else:
            state.down_reasons[endpoint] = reason or "marked down"
        if state.router.endpoint(EndpointId(endpoint)).healthy != healthy:
            state.router.set_healthy(EndpointId(endpoint), healthy)

    def set_draining(self, endpoint: str, draining: bool) -> bool | None:
        """Stop (or resume) placing new requests on ``endpoint``; returns whether it was
        draining (``None`` for an unknown endpoint). The flag survives fleet snapshots."""
        found = self.find_endpoint(endpoint)
        if found is None:
            return None
        router = found[0].router
        was = router.endpoint(EndpointId(endpoint)).draining
        if was != draining:
            router.set_draining(EndpointId(endpoint), draining)
        return was

    # -------------------------------------------------------------- migration
    def migration_started(self, attempt: Attempt, dst: EndpointSpec) -> None:
        """A destination copy of ``attempt``'s request was started on ``dst``."""
        attempt.pool.router.on_migration_started(attempt.ticket.request_id, EndpointId(dst.id))

    def migration_aborted(self, attempt: Attempt) -> None:
        """The destination copy was given up; the request stays where it runs."""
        attempt.pool.router.on_migration_aborted(attempt.ticket.request_id)

    def migrated(self, attempt: Attempt, dst: EndpointSpec) -> None:
        """The client's stream switched to ``dst``: the attempt now runs there (its tokens,
        first-token time and accounting carry on; the router moves its in-flight counts)."""
        if attempt.done:
            return
        attempt.pool.router.on_migrated(attempt.ticket.request_id, EndpointId(dst.id))
        attempt.endpoint = dst

    def on_kv_event(self, endpoint: str, event: object) -> None:
        found = self.find_endpoint(endpoint)
        if found is not None:
            found[0].router.on_kv_event(EndpointId(endpoint), event)

    def public_models(self) -> list[str]:
        return sorted(self.models)

    def endpoint_rows(self) -> Iterable[tuple[str, str, str, bool, int]]:
        """(pool, variant, endpoint, healthy, in-flight) per endpoint, for the live gauges."""
        for state in self.pools.values():
            for v in state.router.views():
                yield state.name, state.variant_of(v.id), str(v.id), v.healthy, v.inflight_requests

    # --------------------------------------------------------------- requests
    def open(
        self,
        parsed: ParsedRequest,
        headers: Mapping[str, str],
        request_id: RequestId,
    ) -> Ticket:
        """Checks that need no pool, then model selection (``ApiError`` on refusal).

        ``headers`` are lower-case. Order: model name (404) → API key (401) → SLO class
        header (400) → rate limit (429) → selection (503 when no target pool is available).
        """
        policy = self.models.get(parsed.model)
        if policy is None:
            known = ", ".join(self.public_models()) or "none"
            raise ApiError(
                404,
                f"The model `{parsed.model}` does not exist; models: {known}",
                param="model",
                code="model_not_found",
            )
        spec = policy.spec.spec
        kid = policy.limiter.identify(headers.get("authorization"))
        slo = self._slo_class(policy, headers.get(spec.slo_class_header.lower()))
        try:
            policy.limiter.admit(kid, parsed.prompt_tokens)
        except ApiError:
            if self.telemetry is not None:
                listed = any(k.key_id == kid for k in spec.rate_limits.per_key)
                self.telemetry.rate_limited.labels(parsed.model, kid if listed else "default").inc()
            raise
        ns = policy.key[0]
        selection = self._select(
            policy, parsed.selection_text, parsed.prompt_tokens, headers, parsed.model, request_id
        )
        if selection.pool is None:
            if self.telemetry is not None:
                for name in sorted(policy.spec.referenced_pools()):
                    self.telemetry.window.on_unplaced(ns, name)
            down = "; ".join(
                f"{ep}: {why}"
                for name in sorted(policy.spec.referenced_pools())
                if (ns, name) in self.pools
                for ep, why in sorted(self.pools[(ns, name)].down_reasons.items())
            )
            raise ApiError(
                503,
                f"no pool of model `{parsed.model}` has a ready endpoint"
                + (f" (down: {down})" if down else ""),
                err_type="service_unavailable",
                code="no_endpoint",
                retry_after_s=1.0,
            )
        if self.telemetry is not None:
            self.telemetry.selection.labels(
                parsed.model, selection.pool, selection.rule or "default"
            ).inc()
        return Ticket(
            request_id=request_id,
            parsed=parsed,
            policy=policy,
            key_id=kid,
            slo=slo,
            headers=headers,
            arrival_s=self.clock(),
            selection=selection,
            pool_key=(ns, selection.pool),
        )

    def _select(
        self,
        policy: PolicyState,
        prompt: str,
        prompt_tokens: int,
        headers: Mapping[str, str],
        model: str,
        request_id: str,
    ) -> SelectionDecision:
        """Model selection over the policy's pools (available = a healthy endpoint)."""
        ns = policy.key[0]
        views = [
            PoolView(
                name=p,
                model=self.pools[(ns, p)].served_model if (ns, p) in self.pools else p,
                available=(ns, p) in self.pools and self.pools[(ns, p)].available(),
            )
            for p in sorted(policy.spec.referenced_pools())
        ]
        return policy.selector.select(
            SelectionRequest(
                prompt=prompt[-4096:],
                prompt_tokens=prompt_tokens,
                headers=headers,
                model=model,
                request_id=request_id,
            ),
            views,
            policy.rng,
        )

    def route_view(
        self, model: str, view: RequestView, headers: Mapping[str, str] | None = None
    ) -> tuple[PoolState, Decision]:
        """Selection, then placement of an already-built request view.

        For hosts that replay recorded requests (the parity test): the same selector and
        router a proxied request goes through, without body parsing, keys or admission.
        Raises ``KeyError`` for an unknown model, ``NoEndpointError`` when nothing is left.
        """
        policy = self.models[model]
        selection = self._select(
            policy, view.text or "", view.prompt_tokens, headers or {}, model, view.id
        )
        if selection.pool is None:
            raise NoEndpointError(f"no pool of model {model!r} is available")
        state = self.pools[(policy.key[0], selection.pool)]
        return state, self._route(state, view, frozenset())

    def _slo_class(self, policy: PolicyState, header: str | None) -> SLOClass | None:
        spec = policy.spec.spec
        classes = policy.classes
        if header:
            found = classes.get(header.strip())
            if found is None:
                names = ", ".join(sorted(classes)) or "none configured"
                raise ApiError(
                    400,
                    f"unknown SLO class {header.strip()!r:.64} in header "
                    f"{spec.slo_class_header}; classes: {names}",
                    param=spec.slo_class_header,
                    code="unknown_slo_class",
                )
            return found
        if spec.default_slo_class:
            return classes.get(spec.default_slo_class)
        return None

    def pool_of(self, ticket: Ticket) -> PoolState:
        state = self.pools.get(ticket.pool_key)
        if state is None:
            raise ApiError(
                503,
                f"pool {ticket.pool_key[1]} is gone",
                err_type="service_unavailable",
                code="no_endpoint",
                retry_after_s=1.0,
            )
        return state

    def _view(self, ticket: Ticket, state: PoolState) -> RequestView:
        parsed = ticket.parsed
        slo = ticket.slo
        pool_slo = state.spec.spec.slo
        ids = parsed.prompt_token_ids
        if ticket.token_ids is not None and ticket.tokenized_for == state.key:
            ids = ticket.token_ids
        return RequestView(
            id=ticket.request_id,
            pool=state.name,
            model=state.served_model,
            prompt_tokens=len(ids) if ids is not None else parsed.prompt_tokens,
            token_ids=ids,
            text=parsed.prompt_text if ids is None else None,
            headers=ticket.headers,
            slo_class=ticket.slo_class or "standard",
            priority=slo.priority if slo is not None else 0,
            ttft_slo_s=(slo.ttft_ms if slo is not None else pool_slo.ttft_ms) / 1000.0,
            tpot_slo_s=(slo.tpot_ms if slo is not None else pool_slo.tpot_ms) / 1000.0,
            max_tokens=parsed.max_tokens or 0,
            arrival_s=ticket.arrival_s,
        )

    def place(
        self, ticket: Ticket, *, avoid: frozenset[str] = frozenset(), force: bool = False
    ) -> Attempt | Wait:
        """Admission, then placement on the ticket's pool (``Wait`` when admission queues).

        ``avoid`` are endpoints this ticket already failed on (excluded for this decision
        only); ``force`` skips admission (a queued request that waited long enough). Raises
        ``ApiError`` 429 when the class sheds and 503 when no endpoint is left in any pool
        the selection allows.
        """
        t0 = self.clock()
        while True:
            state = self.pool_of(ticket)
            view = self._view(ticket, state)
            if not force and ticket.slo is not None and not ticket.downgraded:
                verdict = self._admission(ticket, state, view)
                if isinstance(verdict, Wait):
                    return verdict
                if verdict is not None:
                    continue  # downgraded: place on the new pool
            try:
                decision = self._route(state, view, avoid)
            except NoEndpointError as e:
                nxt = ticket.policy.selector.next_pool(
                    ticket.selection,
                    state.name,
                    Outcome.OVERLOAD,
                    tried=[p for _, p in ticket.tried_pools],
                )
                ticket.tried_pools.append(state.key)
                if nxt is None:
                    if self.telemetry is not None:
                        self.telemetry.window.on_unplaced(state.key[0], state.name)
                    why = "; ".join(f"{k}: {v}" for k, v in sorted(state.down_reasons.items()))
                    raise ApiError(
                        503,
                        f"no endpoint of pool {state.name} can take the request: {e}"
                        + (f" (down: {why})" if why else ""),
                        err_type="service_unavailable",
                        code="no_endpoint",
                        retry_after_s=1.0,
                    ) from None
                ticket.pool_key = (state.key[0], nxt)
                continue
            return self._started(ticket, state, view, decision, t0)

    def _route(self, state: PoolState, view: RequestView, avoid: frozenset[str]) -> Decision:
        """Route on ``state``'s router, hiding the endpoints in ``avoid`` for this decision.

        When the avoided endpoints are the only healthy ones left, none is hidden: a request
        that failed before its first token on every endpoint of its pool (a connect timeout
        on a busy engine, a 5xx) is tried again on one of them rather than refused with a
        503 that would blame endpoints the poller still sees up. The proxy's ``max_attempts``
        bounds the retries.
        """
        router = state.router
        hidden = [
            EndpointId(a)
            for a in avoid
            if EndpointId(a) in state.endpoints and router.endpoint(EndpointId(a)).healthy
        ]
        healthy = sum(1 for info in router.endpoints() if info.healthy)
        if hidden and len(hidden) == healthy:
            hidden = []
        for ep in hidden:
            router.set_healthy(ep, False)
        try:
            return router.route(view)
        finally:
            for ep in hidden:
                if ep in state.endpoints:
                    router.set_healthy(ep, True)

    def _admission(self, ticket: Ticket, state: PoolState, view: RequestView) -> Wait | str | None:
        """``None`` to place here, a ``Wait`` to queue, ``"downgraded"`` after a pool switch."""
        slo = ticket.slo
        assert slo is not None
        cls = SloClassPolicy(
            name=slo.name,
            priority=slo.priority,
            on_unmeetable=slo.on_violation,
            downgrade_pool=slo.downgrade_pool or None,
        )
        index = state.router.profile.prefix_index
        hits = index.match(view) if index is not None else {}
        verdict = admit(view, state.router.views(), hits, cls)
        tel = self.telemetry
        model = ticket.parsed.model
        if tel is not None:
            tel.window.on_admission(state.key[0], state.name, slo.name, verdict.action)
        if verdict.action == "admit":
            return None
        if verdict.action == "shed":
            if tel is not None:
                tel.shed.labels(model, slo.name).inc()
            raise ApiError(
                429,
                f"SLO class {slo.name!r} cannot be served in time now ({verdict.reason}); "
                "request shed",
                err_type="rate_limit_error",
                code="slo_shed",
                retry_after_s=max(1.0, verdict.retry_after_s or 1.0),
            )
        if verdict.action == "downgrade" and verdict.downgrade_pool:
            target = (state.key[0], verdict.downgrade_pool)
            if target in self.pools and target != state.key:
                if tel is not None:
                    tel.downgraded.labels(model, slo.name).inc()
                ticket.pool_key = target
                ticket.downgraded = True
                return "downgraded"
            return None  # nowhere to go: serve it here rather than refuse
        if not ticket.queued:
            ticket.queued = True
            if tel is not None:
                tel.queued.labels(model, slo.name).inc()
        wait = verdict.retry_after_s if verdict.retry_after_s is not None else 0.05
        return Wait(retry_after_s=min(1.0, max(0.01, wait)), reason=verdict.reason)

    def _started(
        self, ticket: Ticket, state: PoolState, view: RequestView, decision: Decision, t0: float
    ) -> Attempt:
        ep = decision.endpoint
        spec = state.endpoints[ep]
        attempt = Attempt(
            ticket=ticket,
            pool=state,
            endpoint=spec,
            decision=decision,
            view=view,
            started_s=self.clock(),
        )
        self.attempts[ticket.request_id] = attempt
        if self.collect_prefix_deltas and isinstance(
            state.router.profile.prefix_index, ApproxPrefixIndex
        ):
            index = state.router.profile.prefix_index
            hashes = view.chain(index.hasher).hashes
            if hashes:
                self.prefix_outbox.append((state.key[0], state.name, str(ep), hashes))
        tel = self.telemetry
        if tel is not None:
            variant = spec.variant
            tel.decision.labels(state.name).observe(max(0.0, self.clock() - t0))
            if decision.max_cached_tokens <= 0:
                reason = "cold"
            elif decision.cached_tokens >= decision.max_cached_tokens:
                reason = "prefix-hit"
            else:
                reason = "prefix-traded"
            tel.routing.labels(state.name, reason).inc()
            tel.prompt_tokens.labels(state.name, variant).inc(view.prompt_tokens)
            tel.prefix_hit_tokens.labels(state.name, variant).inc(
                min(decision.cached_tokens, view.prompt_tokens)
            )
            tel.window.on_placed(state.key[0], state.name, variant)
        return attempt

    def on_tokens(self, attempt: Attempt, n: int, *, streamed: bool = True) -> None:
        """``n`` output tokens of ``attempt`` reached the client.

        ``streamed=False`` for a non-streamed answer: the tokens count, but the time of the
        first token is unknown (no TTFT is recorded).
        """
        if n <= 0 or attempt.done:
            return
        if attempt.first_token_s is None and streamed:
            attempt.first_token_s = self.clock()
        attempt.tokens += n
        attempt.pool.router.on_tokens(attempt.ticket.request_id, n)

    def abandon(self, attempt: Attempt, reason: str, *, unhealthy: bool) -> None:
        """The attempt failed before its first token and will be retried elsewhere.

        The router forgets it (``on_completed``); ``unhealthy`` marks the endpoint down until
        its next good scrape (a refused connection: the engine is gone).
        """
        if attempt.done:
            return
        attempt.done = True
        rid = attempt.ticket.request_id
        attempt.pool.router.on_completed(rid)
        if self.attempts.get(rid) is attempt:
            del self.attempts[rid]
        if unhealthy:
            self.set_healthy(attempt.endpoint.id, False)
        if self.telemetry is not None:
            self.telemetry.retries.labels(attempt.pool.name, reason).inc()
            self.telemetry.routing.labels(attempt.pool.name, "retry").inc()

    def finish(self, attempt: Attempt, outcome: Outcome_, status: int = 200) -> None:
        """The attempt ended: completed, failed or aborted (client gone). Idempotent."""
        if attempt.done:
            return
        attempt.done = True
        ticket = attempt.ticket
        rid = ticket.request_id
        attempt.pool.router.on_completed(rid)
        if self.attempts.get(rid) is attempt:
            del self.attempts[rid]
        now = self.clock()
        ttft = tpot = None
        if attempt.first_token_s is not None:
            ttft = attempt.first_token_s - ticket.arrival_s
            if attempt.tokens > 1:
                tpot = (now - attempt.first_token_s) / (attempt.tokens - 1)
        if attempt.tokens and outcome == "ok":
            ticket.policy.limiter.charge_tokens(ticket.key_id, attempt.tokens)
        tel = self.telemetry
        if tel is None:
            return
        pool, variant, cls = attempt.pool.name, attempt.variant, ticket.slo_class
        tel.requests.labels(ticket.parsed.model, pool, variant, cls, outcome).inc()
        if status >= 400:
            tel.errors.labels(ticket.parsed.model, pool, str(status)).inc()
        if ttft is not None:
            tel.ttft.labels(pool, variant, cls).observe(ttft)
        if tpot is not None:
            tel.tpot.labels(pool, variant, cls).observe(tpot)
        tel.e2e.labels(pool, variant, cls).observe(now - ticket.arrival_s)
        if attempt.tokens:
            tel.output_tokens.labels(pool, variant).inc(attempt.tokens)
        view = attempt.view
        met = outcome == "ok" and (
            (ttft is None or view.ttft_slo_s is None or ttft <= view.ttft_slo_s)
            and (tpot is None or view.tpot_slo_s is None or tpot <= view.tpot_slo_s)
        )
        tel.window.on_finished(
            FinishedRecord(
                at=now,
                namespace=attempt.pool.key[0],
                pool=pool,
                variant=variant,
                slo_class=cls,
                prompt_tokens=view.prompt_tokens,
                output_tokens=attempt.tokens,
                cached_tokens=min(attempt.decision.cached_tokens, view.prompt_tokens),
                ttft_s=ttft,
                tpot_s=tpot,
                slo_met=met,
                error=outcome == "error",
            )
        )

    # ------------------------------------------------------------- scale-out
    def take_prefix_deltas(self) -> list[tuple[str, str, str, tuple[int | bytes, ...]]]:
        """The (namespace, pool, endpoint, chain) of requests routed since the last call."""
        out, self.prefix_outbox = self.prefix_outbox, []
        return out

    def apply_peer_prefixes(
        self, deltas: Iterable[tuple[str, str, str, tuple[int | bytes, ...]]]
    ) -> int:
        """Record chains other replicas routed (approximate index only); returns how many."""
        n = 0
        for ns, pool, endpoint, hashes in deltas:
            state = self.pools.get((ns, pool))
            if state is None or EndpointId(endpoint) not in state.endpoints:
                continue
            index = state.router.profile.prefix_index
            if isinstance(index, ApproxPrefixIndex):
                index.insert(EndpointId(endpoint), hashes)
                n += 1
        return n

    def inflight_counts(self) -> dict[str, tuple[int, int, int]]:
        """This replica's own (requests, tokens, prefill tokens) per endpoint id."""
        out: dict[str, tuple[int, int, int]] = {}
        for state in self.pools.values():
            counters = state.router.tracker.counters
            for ep in state.endpoints:
                c = counters(ep)
                if c[0] or c[1]:
                    out[str(ep)] = c
        return out

    def apply_peer_inflight(self, counts: Mapping[str, tuple[int, int, int]]) -> None:
        """Other replicas' in-flight counts per endpoint (absent endpoints: zero)."""
        for state in self.pools.values():
            for ep in state.endpoints:
                r, t, p = counts.get(str(ep), (0, 0, 0))
                state.router.set_peer_inflight(ep, r, t, p)
