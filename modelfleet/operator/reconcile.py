"""Reconcilers: fetch what is, decide what should be, apply it, write status.

Each ``reconcile_*`` is level-triggered and idempotent: it reads the object and everything it
depends on from the API, computes the desired children with the pure builders and the
desired replicas with the pure decisions, applies them (server-side apply, owner references),
and writes the status it observed. Running it twice, or after a restart mid-way, converges on
the same objects: children have fixed names, so nothing is created twice, and a child no
variant wants any more is removed by the next pass (after its pods are drained).

Concurrency: one pool is reconciled by one thread at a time (:class:`PoolLocks`). A request
for a pool that is busy marks it dirty and returns; the thread that holds it runs one more
pass before letting go, so bursts of watch events coalesce into at most one extra pass.

Scale-down is zero-loss by construction (``docs/operator.md``): the pods to remove are chosen
by :func:`~modelfleet.operator.decisions.choose_victims`, each is drained through the
scheduler (bounded by ``drainTimeoutSeconds``), annotated with the lowest
``controller.kubernetes.io/pod-deletion-cost`` so that the ReplicaSet removes exactly those,
and only then is the Deployment scaled. Pods removed by anything else (rollouts, node drains,
a deleted pool) are drained when the operator sees them terminating, while their ``preStop``
hook keeps the engine serving.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from modelfleet.api.accelerator import AcceleratorProfile
from modelfleet.api.modelpool import ModelPool
from modelfleet.api.names import (
    POD_DELETION_COST_ANNOTATION,
    POOL_LABEL,
    endpoint_id,
    selector_string,
)
from modelfleet.api.routingpolicy import RoutingPolicy
from modelfleet.api.validate import Problem, validate_object
from modelfleet.operator import status as st
from modelfleet.operator.builders import (
    build_deployment,
    build_pdb,
    build_service,
    replica_cost_per_hour,
)
from modelfleet.operator.cache import WatchCache
from modelfleet.operator.control_client import DrainResult, SchedulerClient
from modelfleet.operator.decisions import (
    VICTIM_COST,
    EndpointLoad,
    choose_victims,
    manual_replicas,
    slo_inputs,
    stale_victims,
)
from modelfleet.operator.kube import ApiError, Kube
from modelfleet.operator.metrics import OperatorMetrics
from modelfleet.operator.observe import DeploymentInfo, PodInfo, deployment_info, pod_info
from modelfleet.policy.autoscale import REASONS, AutoscalerMemory, decide

log = logging.getLogger(__name__)

JSON = dict[str, Any]
#: Status refreshes asked for by watch events wait this long, so a burst becomes one, s.
REFRESH_DELAY_S = 0.3
#: Levels of a queued pool pass (see :meth:`Reconciler.request_refresh`).
STATUS, FULL, FORCED = 0, 1, 2
#: Every this many resync periods a pool's children are applied even if unchanged (repairs
#: hand edits of them; in between, only what changed is sent).
FORCE_APPLY_EVERY = 10


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class OperatorConfig:
    """Knobs of the reconcilers (the CLI sets them)."""

    #: Period of the full reconcile of every pool and policy (timers), s.
    resync_s: float = 15.0
    #: Window of the scheduler's Stats the autoscaler reads, s.
    stats_window_s: float = 60.0
    #: Drains run in parallel up to this many.
    max_parallel_drains: int = 8
    #: Namespaces watched (empty = all); profiles re-render pools only there.
    namespaces: tuple[str, ...] = ()


class Busy(Exception):
    """The pool is being reconciled by another thread (the request was recorded)."""


class PoolLocks:
    """One lock per object key, taken without waiting, with a dirty flag (module docstring)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: set[tuple[str, str]] = set()
        self._dirty: set[tuple[str, str]] = set()

    @contextlib.contextmanager
    def hold(self, key: tuple[str, str]) -> Iterator[Callable[[], bool]]:
        """Hold ``key`` or raise :class:`Busy` (marking it dirty). Yields ``again()``: True
        (once) if someone asked for the key while it was held."""
        with self._guard:
            if key in self._held:
                self._dirty.add(key)
                raise Busy(key)
            self._held.add(key)

        def again() -> bool:
            with self._guard:
                if key in self._dirty:
                    self._dirty.discard(key)
                    return True
                return False

        try:
            yield again
        finally:
            with self._guard:
                self._held.discard(key)


class EventLog:
    """Kubernetes Events, each (object, topic) emitted again only when its text changes, so
    a timer re-deciding the same thing every tick does not flood ``kubectl describe``."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._last: dict[tuple[str, str], tuple[str, str]] = {}
        self._lock = threading.Lock()

    def emit(self, obj: JSON, topic: str, type_: str, reason: str, message: str) -> None:
        uid = str((obj.get("metadata") or {}).get("uid", ""))
        key = (uid, topic)
        with self._lock:
            if self._last.get(key) == (reason, message):
                return
            self._last[key] = (reason, message)
        try:
            self.kube.emit_event(obj, type_, reason, message)
        except ApiError as err:
            log.warning("event %s %s: %s", reason, message, err)

    def clear(self, obj: JSON, topic: str) -> None:
        uid = str((obj.get("metadata") or {}).get("uid", ""))
        with self._lock:
            self._last.pop((uid, topic), None)

    def forget(self, uid: str) -> None:
        with self._lock:
            for key in [k for k in self._last if k[0] == uid]:
                del self._last[key]


def _problems_text(problems: Sequence[Problem]) -> str:
    return "; ".join(f"{p.field}: {p.message}" for p in problems)


def _parse(raw: JSON, source: str) -> tuple[Any, list[Problem]]:
    """Parse an object as stored, without its status (the operator's own output)."""
    return validate_object({k: v for k, v in raw.items() if k != "status"}, source)


def _raw_pool_refs(spec: Any) -> set[str]:
    """Pool names an unparsable RoutingPolicy spec names (best effort, for ResolvedRefs)."""
    if not isinstance(spec, dict):
        return set()
    targets = list(spec.get("defaultTargets") or [])
    for rule in spec.get("rules") or []:
        if isinstance(rule, dict):
            targets += rule.get("targets") or []
    names = {str(t["pool"]) for t in targets if isinstance(t, dict) and t.get("pool")}
    for c in spec.get("sloClasses") or []:
        if isinstance(c, dict) and c.get("downgradePool"):
            names.add(str(c["downgradePool"]))
    return names


def _ts(text: Any) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def _stamp(ts: float) -> str:
    return st.rfc3339(datetime.fromtimestamp(ts, UTC))


def memory_from_status(status: Mapping[str, Any] | None) -> AutoscalerMemory:
    """The autoscaler's memory as the pool's status keeps it."""
    data = (status or {}).get("autoscaler") or {}
    recs: dict[str, list[tuple[float, int]]] = {}
    for r in data.get("recommendations") or []:
        t = _ts(r.get("time"))
        if t is not None and "variant" in r:
            recs.setdefault(str(r["variant"]), []).append((t, int(r.get("replicas", 0))))
    return AutoscalerMemory(
        last_demand_s=_ts(data.get("lastDemandTime")),
        recommendations={k: tuple(sorted(v)) for k, v in recs.items()},
    )


def memory_to_status(memory: AutoscalerMemory) -> JSON:
    out: JSON = {
        "recommendations": [
            {"time": _stamp(t), "variant": v, "replicas": n}
            for v, points in sorted(memory.recommendations.items())
            for t, n in points
        ][-256:]
    }
    if memory.last_demand_s is not None:
        out["lastDemandTime"] = _stamp(memory.last_demand_s)
    return out


class Reconciler:
    """The operator's reconcilers (module docstring). One per process."""

    def __init__(
        self,
        kube: Kube,
        scheduler: SchedulerClient | None,
        metrics: OperatorMetrics,
        config: OperatorConfig | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.kube = kube
        self.scheduler = scheduler
        self.metrics = metrics
        self.config = config or OperatorConfig()
        self.clock = clock
        self.locks = PoolLocks()
        self.events = EventLog(kube)
        self._drains = ThreadPoolExecutor(
            max_workers=self.config.max_parallel_drains, thread_name_prefix="modelfleet-drain"
        )
        self._draining: set[str] = set()  # pod uids with a drain started by us
        self._draining_lock = threading.Lock()
        self._predictor: Any = None
        # Reads come from the watches (kopf handlers call observe*): pools, policies, engine
        # Deployments and pods in the WatchCache, profiles by name here (a miss reads once).
        self.cache = WatchCache(kube, self.config.namespaces)
        self._cache_lock = threading.Lock()
        self._profile_cache: dict[str, JSON | None] = {}
        self._last_full: dict[tuple[str, str], float] = {}
        # What this process last applied of each pool's children: (kind, name) -> body, the
        # generation each Deployment had after it; and when a resync last applied them
        # regardless.
        self._last_forced: dict[tuple[str, str], float] = {}
        self._applied: dict[tuple[str, str], dict[tuple[str, str], str]] = {}
        self._applied_gen: dict[tuple[str, str], dict[str, int]] = {}
        # Passes asked for by watch events, coalesced: ("pool", ns, name) -> level (STATUS,
        # FULL, FORCED), ("policies", ns, "") -> FULL. See request_refresh.
        self._refresh: dict[tuple[str, str, str], int] = {}
        self._refresh_wake = threading.Event()
        self._closing = threading.Event()
        self._refresher = threading.Thread(
            target=self._refresh_loop, name="modelfleet-refresh", daemon=True
        )
        self._refresher.start()

    def close(self) -> None:
        """Stop the refresher and the drain threads (drains in flight end when the scheduler
        channel closes)."""
        self._closing.set()
        self._refresh_wake.set()
        self._refresher.join(timeout=30)
        self._drains.shutdown(wait=True, cancel_futures=True)

    # ================================================================== watch caches

    def observe_profile(self, name: str, raw: JSON | None) -> None:
        """A watch event of an AcceleratorProfile (None: it was deleted)."""
        with self._cache_lock:
            self._profile_cache[name] = raw

    def observe(self, kind: str, raw: JSON, *, deleted: bool = False) -> None:
        """A watch event of a ModelPool or RoutingPolicy (``deleted``: a DELETED event)."""
        self.cache.observe(kind, raw, deleted=deleted)

    def _cached_profile(self, name: str) -> JSON | None:
        with self._cache_lock:
            if name in self._profile_cache:
                return self._profile_cache[name]
        raw = self.kube.get("AcceleratorProfile", None, name)
        with self._cache_lock:
            self._profile_cache.setdefault(name, raw)
        return raw

    def _cached_policies(self, namespace: str) -> list[JSON]:
        return self.cache.list("RoutingPolicy", namespace)

    # ================================================================== refreshes

    def request_refresh(self, namespace: str, name: str, level: int = STATUS) -> None:
        """Pass over a pool soon (a watch event of one of its pods or Deployments): its
        status (``STATUS``), a full reconcile (``FULL``: a Deployment went), or one that
        applies every child (``FORCED``: a Deployment was edited by someone else). Requests
        within :data:`REFRESH_DELAY_S` of each other are served by one pass, at the highest
        level asked."""
        self._enqueue(("pool", namespace, name), level)

    def request_policies(self, namespace: str) -> None:
        """Resolve every RoutingPolicy of a namespace again soon (a pool appeared or went);
        a burst of pools is served by one pass."""
        self._enqueue(("policies", namespace, ""), FULL)

    def _enqueue(self, item: tuple[str, str, str], level: int) -> None:
        with self._cache_lock:
            self._refresh[item] = max(level, self._refresh.get(item, STATUS))
        self._refresh_wake.set()

    def _refresh_loop(self) -> None:
        while not self._closing.is_set():
            self._refresh_wake.wait()
            if self._closing.wait(REFRESH_DELAY_S):
                return
            self._refresh_wake.clear()
            with self._cache_lock:
                batch, self._refresh = self._refresh, {}
            for (what, namespace, name), level in sorted(batch.items()):
                if self._closing.is_set():
                    return
                try:
                    if what == "policies":
                        self.reconcile_policies(namespace)
                    elif (
                        not self.reconcile_pool(
                            namespace,
                            name,
                            status_only=level == STATUS,
                            force_apply=level == FORCED,
                        )
                        and level == FORCED
                    ):
                        self._enqueue((what, namespace, name), level)  # busy: the force waits
                except Exception:
                    log.exception("refresh of %s %s/%s failed", what, namespace, name)

    # ================================================================== ModelPool

    def reconcile_pool(
        self, namespace: str, name: str, *, status_only: bool = False, force_apply: bool = False
    ) -> bool:
        """Reconcile one pool; False if it was busy (then it runs again once free).

        ``status_only``: observe and write status, decide and apply nothing (what watch
        events of the pool's Deployments and pods ask for). A child whose rendered object is
        the one this process last applied (and, for a Deployment, that still exists) is not
        applied again, unless ``force_apply`` (the resync, every :data:`FORCE_APPLY_EVERY`
        periods, which so also repairs edits made to the children by hand).
        """
        try:
            with self.locks.hold((namespace, name)) as again:
                full = not status_only
                while True:
                    self._timed(
                        "ModelPool", partial(self._pool, namespace, name, full, force_apply)
                    )
                    if not again():
                        return True
                    full = True
        except Busy:
            return False

    def _timed(self, kind: str, fn: Callable[[], None]) -> None:
        start = time.perf_counter()
        try:
            fn()
        except ApiError:
            self.metrics.reconcile_errors.labels(kind, "ApiError").inc()
            raise
        finally:
            self.metrics.reconcile_duration.labels(kind).observe(time.perf_counter() - start)

    def _pool(self, namespace: str, name: str, full: bool, force_apply: bool = False) -> None:
        raw = self.cache.get("ModelPool", namespace, name)
        if raw is None or (raw.get("metadata") or {}).get("deletionTimestamp"):
            return
        generation = int(raw["metadata"].get("generation") or 0)
        parsed, problems = _parse(raw, f"{namespace}/{name}")
        if problems or not isinstance(parsed, ModelPool):
            self._invalid_pool(raw, generation, problems)
            return
        self.events.clear(raw, "invalid")
        pool: ModelPool = parsed
        spec = pool.spec
        profiles = self._profiles({v.accelerator_profile for v in spec.variants})
        missing = {
            v.name: v.accelerator_profile
            for v in spec.variants
            if profiles.get(v.accelerator_profile) is None
        }
        deployments = {
            d.variant: d
            for d in map(deployment_info, self.cache.list("Deployment", namespace, pool=name))
        }
        pods = [pod_info(p) for p in self.cache.list("Pod", namespace, pool=name)]
        variants = {v.name: v for v in spec.variants}
        current = {v: (deployments[v].replicas if v in deployments else 0) for v in variants}
        old_status: JSON = raw.get("status") or {}
        autoscaler_status = old_status.get("autoscaler") if spec.scaling.mode == "SLO" else None
        reasons: dict[str, str] = {}

        if not full:
            desired = {
                str(r.get("name")): int(r.get("desiredReplicas", 0))
                for r in old_status.get("variants") or []
                if r.get("name") in variants
            }
            desired = {v: desired.get(v, current[v]) for v in variants}
        elif spec.scaling.mode == "Manual":
            target = manual_replicas(spec, profiles)
            desired = dict(target.replicas)
            reasons = dict.fromkeys(desired, "manual")
            if target.note:
                self.events.emit(raw, "manual-note", "Normal", "ReplicasClamped", target.note)
        else:
            vmodels, slo, windows = slo_inputs(spec, profiles)
            demand = (
                self.scheduler.demand(
                    namespace, name, self.config.stats_window_s, spec.slo.percentile
                )
                if self.scheduler is not None
                else None
            )
            decision = decide(
                vmodels,
                slo,
                windows,
                demand,
                current,
                memory_from_status(old_status),
                self.clock().timestamp(),
            )
            desired = dict(decision.replicas)
            reasons = dict(decision.reasons)
            autoscaler_status = memory_to_status(decision.memory)
        for v in missing:  # cannot be rendered: leave what exists as it is
            desired[v] = current[v]

        if full:
            self._last_full[(namespace, name)] = time.monotonic()
            self.metrics.declare_pool(
                namespace, name, variants, ("manual",) if spec.scaling.mode == "Manual" else REASONS
            )
            kv_events = spec.engine.kv_events or self._kv_events_forced(namespace, name)
            self._scale_down(raw, pool, pods, deployments, current, desired)
            applied = self._applied.setdefault((namespace, name), {})
            generations = self._applied_gen.setdefault((namespace, name), {})
            apply = partial(self._apply_child, applied, generations, force=force_apply)
            for v, variant in variants.items():
                profile = profiles.get(variant.accelerator_profile)
                if profile is not None:
                    deployment = build_deployment(
                        pool, variant, profile, replicas=desired[v], kv_events=kv_events
                    )
                    apply(deployment, exists=v in deployments)
            apply(build_service(pool, kv_events=kv_events), exists=True)
            apply(build_pdb(pool), exists=True)
            self._prune(raw, pool, pods, deployments, set(variants))
            self._scale_events(raw, namespace, name, current, desired, reasons)
            # the status shows the Deployments as this pass left them (an apply's answer is
            # in the cache), not as they were before it: otherwise each new or changed one
            # costs a second status write when its watch event arrives a moment later
            deployments = {
                d.variant: d
                for d in map(deployment_info, self.cache.list("Deployment", namespace, pool=name))
            }

        costs = {
            v: replica_cost_per_hour(variant, profiles.get(variant.accelerator_profile))
            for v, variant in variants.items()
        }
        conditions = st.pool_conditions(
            generation=generation,
            desired=desired,
            deployments=deployments,
            pods=pods,
            missing_profiles=missing,
        )
        self._degraded_events(raw, conditions)
        now = self.clock()
        status = st.pool_status(
            generation=generation,
            pool_name=name,
            variants=[(v.name, v.accelerator_profile) for v in spec.variants],
            desired=desired,
            deployments=deployments,
            pods=pods,
            cost_per_replica=costs,
            conditions=st.merge_conditions(old_status.get("conditions") or [], conditions, now),
            autoscaler=autoscaler_status,
        )
        if not full:
            status["observedGeneration"] = old_status.get("observedGeneration", 0)
        self._write_status("ModelPool", namespace, name, old_status, status)
        live = {v: sum(1 for p in pods if p.variant == v and not p.terminating) for v in variants}
        ready = {v: (deployments[v].ready if v in deployments else 0) for v in variants}
        self.metrics.set_pool(
            namespace,
            name,
            desired=desired,
            actual=live,
            ready=ready,
            cost_per_hour=status["estimatedCostPerHour"],
        )

    def _apply_child(
        self,
        applied: dict[tuple[str, str], str],
        generations: dict[str, int],
        obj: JSON,
        *,
        exists: bool,
        force: bool,
    ) -> None:
        """Server-side apply ``obj`` unless it is exactly what was last applied (and exists).
        A Deployment's answer goes to the cache, and its generation is remembered: a watch
        event with a later one is an edit by someone else (:meth:`on_deployment`)."""
        kind, name = str(obj["kind"]), str(obj["metadata"]["name"])
        body = json.dumps(obj, sort_keys=True)
        if not force and exists and applied.get((kind, name)) == body:
            return
        stored = self.kube.apply(obj)
        applied[(kind, name)] = body
        if kind == "Deployment":
            generations[name] = int((stored.get("metadata") or {}).get("generation") or 0)
            self.cache.store(kind, stored)

    def _invalid_pool(self, raw: JSON, generation: int, problems: Sequence[Problem]) -> None:
        meta = raw["metadata"]
        text = _problems_text(problems) or "the object does not parse"
        old_status: JSON = raw.get("status") or {}
        conditions = st.merge_conditions(
            old_status.get("conditions") or [],
            st.invalid_conditions(generation, text),
            self.clock(),
        )
        status = {**old_status, "conditions": conditions, "observedGeneration": generation}
        self._write_status("ModelPool", meta.get("namespace"), meta["name"], old_status, status)
        self.events.emit(raw, "invalid", "Warning", "InvalidSpec", text)
        self.metrics.reconcile_errors.labels("ModelPool", "InvalidSpec").inc()

    def _write_status(
        self, kind: str, namespace: str | None, name: str, old: Mapping[str, Any], new: JSON
    ) -> None:
        if dict(old) == new:
            return
        try:
            stored = self.kube.patch_status(kind, namespace, name, new)
            if kind in ("ModelPool", "RoutingPolicy"):
                self.cache.store(kind, stored)
        except ApiError as err:
            if err.status != 404:  # deleted meanwhile: nothing to report on
                raise

    def _profiles(self, names: set[str]) -> dict[str, AcceleratorProfile | None]:
        out: dict[str, AcceleratorProfile | None] = {}
        for n in sorted(names):
            raw = self._cached_profile(n)
            parsed = _parse(raw, n)[0] if raw is not None else None
            out[n] = parsed if isinstance(parsed, AcceleratorProfile) else None
        return out

    def _kv_events_forced(self, namespace: str, pool: str) -> bool:
        """Does a RoutingPolicy of the namespace route to ``pool`` by exact prefix (KV
        events)? Then the pool's engines must publish them, whatever the pool says."""
        for raw in self._cached_policies(namespace):
            policy, problems = _parse(raw, "policy")
            if (
                not problems
                and isinstance(policy, RoutingPolicy)
                and policy.spec.placement.prefix_source == "kv-events"
                and pool in policy.referenced_pools()
            ):
                return True
        return False

    # -- scale-down -----------------------------------------------------------------------

    def _scale_down(
        self,
        raw: JSON,
        pool: ModelPool,
        pods: Sequence[PodInfo],
        deployments: Mapping[str, DeploymentInfo],
        current: Mapping[str, int],
        desired: Mapping[str, int],
    ) -> None:
        """Drain the pods each shrinking variant loses, and mark them for the ReplicaSet."""
        namespace = pool.metadata.namespace or "default"
        shrinking = {v: current[v] - desired[v] for v in desired if desired[v] < current[v]}
        loads: Mapping[str, EndpointLoad] = {}
        if shrinking and self.scheduler is not None:
            loads = self.scheduler.endpoint_loads(namespace, pool.metadata.name) or {}
        victims: list[str] = []
        for v, count in sorted(shrinking.items()):
            mine = [p for p in pods if p.variant == v]
            victims += choose_victims(mine, loads, count)
        # victims of an earlier scale-down that was called off: serve again
        for name in stale_victims(pods, victims, desired):
            if self.scheduler is not None:
                self.scheduler.undrain(endpoint_id(namespace, name))
            self._annotate_pod(namespace, name, None)
        if not victims:
            return
        by_name = {p.name: p for p in pods}
        serving = [n for n in victims if by_name[n].scheduled]
        results = self._drain_all(raw, namespace, serving, "scale-down")
        for name in victims:
            self._annotate_pod(namespace, name, str(VICTIM_COST))
        for r in results:
            log.info("drained %s: %s", r.endpoint, r.outcome)

    def _annotate_pod(self, namespace: str, name: str, cost: str | None) -> None:
        """Set (or remove) a pod's deletion cost; a pod gone meanwhile needs none."""
        try:
            self.kube.annotate("Pod", namespace, name, {POD_DELETION_COST_ANNOTATION: cost})
        except ApiError as err:
            if err.status != 404:
                raise

    def _drain_all(
        self, raw: JSON, namespace: str, pods: Sequence[str], reason: str
    ) -> list[DrainResult]:
        if not pods:
            return []
        if self.scheduler is None:
            self.events.emit(
                raw,
                "drain-skipped",
                "Normal",
                "DrainSkipped",
                "no scheduler configured (--scheduler-address): "
                "pods go with their preStop hook only",
            )
            return []
        timeout = float(raw.get("spec", {}).get("scaling", {}).get("drainTimeoutSeconds", 600))
        futures = [
            self._drains.submit(self._drain_one, raw, endpoint_id(namespace, p), timeout, reason)
            for p in pods
        ]
        return [f.result() for f in futures]

    def _drain_one(self, raw: JSON, endpoint: str, timeout: float, reason: str) -> DrainResult:
        assert self.scheduler is not None
        result = self.scheduler.drain(endpoint, timeout, reason)
        self.metrics.drains.labels(result.outcome).inc()
        self.metrics.drain_duration.observe(result.elapsed_s)
        counts = (
            f"{result.migrated} migrated, {result.completed} completed, "
            f"{result.failed} failed, {result.remaining} left, {result.elapsed_s:.1f} s"
        )
        if result.outcome == "empty":
            self.events.emit(raw, f"drain:{endpoint}", "Normal", "Drained", f"{endpoint}: {counts}")
        elif result.outcome == "unknown":
            self.events.emit(
                raw,
                f"drain:{endpoint}",
                "Normal",
                "Drained",
                f"{endpoint}: unknown to the scheduler",
            )
        elif result.outcome == "deadline":
            self.events.emit(
                raw, f"drain:{endpoint}", "Warning", "DrainTimedOut", f"{endpoint}: {counts}"
            )
        else:
            self.events.emit(
                raw,
                f"drain:{endpoint}",
                "Warning",
                "DrainFailed",
                f"{endpoint}: {result.outcome} ({result.detail}); removing it anyway",
            )
        return result

    def _prune(
        self,
        raw: JSON,
        pool: ModelPool,
        pods: Sequence[PodInfo],
        deployments: Mapping[str, DeploymentInfo],
        wanted: set[str],
    ) -> None:
        """Remove the Deployments of variants the spec no longer has, draining their pods."""
        namespace = pool.metadata.namespace or "default"
        for variant, dep in sorted(deployments.items()):
            if variant in wanted:
                continue
            mine = [
                p.name for p in pods if p.variant == variant and p.scheduled and not p.terminating
            ]
            self._drain_all(raw, namespace, mine, "scale-down")
            self.kube.delete("Deployment", namespace, dep.name)
            self.events.emit(
                raw,
                f"prune:{variant}",
                "Normal",
                "VariantRemoved",
                f"variant {variant}: Deployment {dep.name} deleted",
            )

    def _scale_events(
        self,
        raw: JSON,
        namespace: str,
        name: str,
        current: Mapping[str, int],
        desired: Mapping[str, int],
        reasons: Mapping[str, str],
    ) -> None:
        for v in sorted(desired):
            before, after = current.get(v, 0), desired[v]
            if before == after:
                continue
            direction = "up" if after > before else "down"
            reason = reasons.get(v, "")
            self.metrics.decisions.labels(namespace, name, v, direction, reason or "none").inc()
            self.events.emit(
                raw,
                f"scale:{v}",
                "Normal",
                "ScaledUp" if direction == "up" else "ScaledDown",
                f"variant {v}: {before} -> {after} replicas ({reason})",
            )

    def _degraded_events(self, raw: JSON, conditions: Sequence[st.Cond]) -> None:
        degraded = next(c for c in conditions if c["type"] == "Degraded")
        if degraded["status"] == "True":
            self.events.emit(raw, "degraded", "Warning", degraded["reason"], degraded["message"])
        else:
            self.events.clear(raw, "degraded")

    # -- pods the operator did not remove -------------------------------------------------

    def on_deployment(self, event_type: str, raw: JSON) -> None:
        """A watch event of an engine Deployment: into the cache, and a pass over its pool —
        a status refresh; a full reconcile if it is gone (it is created again); one that
        applies every child if its generation passed the one this process's last apply left
        (someone else edited its spec: it is repaired)."""
        deleted = event_type == "DELETED"
        self.cache.observe("Deployment", raw, deleted=deleted)
        meta = raw.get("metadata") or {}
        namespace = str(meta.get("namespace"))
        pool = (meta.get("labels") or {}).get(POOL_LABEL)
        if not pool:
            return
        level = FULL if deleted else STATUS
        mine = self._applied_gen.get((namespace, str(pool)), {}).get(str(meta.get("name")))
        if not deleted and mine is not None and int(meta.get("generation") or 0) > mine:
            log.info("Deployment %s/%s edited by someone else: repairing", namespace, meta["name"])
            level = FORCED
        self.request_refresh(namespace, str(pool), level)

    def on_pod(self, event_type: str, raw: JSON) -> None:
        """A watch event of an engine pod: into the cache, a status refresh of its pool; drain
        it when it starts terminating (a rollout, a node drain, an eviction, a deleted pool);
        forget it when it is gone."""
        meta = raw.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        self.cache.observe("Pod", raw, deleted=event_type == "DELETED")
        pool = (meta.get("labels") or {}).get(POOL_LABEL)
        if pool:
            self.request_refresh(str(meta.get("namespace")), str(pool))
        if event_type == "DELETED":
            with self._draining_lock:
                self._draining.discard(uid)
            return
        if not meta.get("deletionTimestamp") or self.scheduler is None:
            return
        annotations = meta.get("annotations") or {}
        if annotations.get(POD_DELETION_COST_ANNOTATION) == str(VICTIM_COST):
            return  # a scale-down victim: drained before it was chosen
        with self._draining_lock:
            if uid in self._draining:
                return
            self._draining.add(uid)
        namespace = str(meta.get("namespace", "default"))
        grace = float((raw.get("spec") or {}).get("terminationGracePeriodSeconds") or 30)
        endpoint = endpoint_id(namespace, str(meta.get("name", "")))
        timeout = max(1.0, grace - 30)
        self._drains.submit(self._drain_terminating, raw, endpoint, timeout)

    def _drain_terminating(self, pod: JSON, endpoint: str, timeout: float) -> None:
        assert self.scheduler is not None
        result = self.scheduler.drain(endpoint, timeout, "pod-deletion")
        self.metrics.drains.labels(result.outcome).inc()
        self.metrics.drain_duration.observe(result.elapsed_s)
        log.info("drained terminating %s: %s", endpoint, result.outcome)

    def forget_pool(self, namespace: str, name: str, uid: str) -> None:
        """A pool is gone: drop its metric series and event memory."""
        self._last_full.pop((namespace, name), None)
        self._applied.pop((namespace, name), None)
        self._applied_gen.pop((namespace, name), None)
        self._last_forced.pop((namespace, name), None)
        self.metrics.forget_pool(namespace, name)
        self.events.forget(uid)

    # ================================================================== resync

    def resync(self, executor: ThreadPoolExecutor | None = None) -> int:
        """Reconcile every pool and policy of the watched namespaces once (what a resync
        period does), except pools fully reconciled within the last half period; returns how
        many objects it visited. Objects are reconciled in
        ``executor`` when given (the caller waits for all), else one after the other; an
        error on one object is logged and does not stop the others."""
        work: list[tuple[str, str, str]] = []
        self.cache.relist()
        for kind in ("ModelPool", "RoutingPolicy"):
            now = time.monotonic()
            for o in self.cache.list(kind):
                meta = o.get("metadata") or {}
                key = (str(meta.get("namespace")), str(meta.get("name")))
                last = self._last_full.get(key) if kind == "ModelPool" else None
                if last is not None and now - last < self.config.resync_s / 2:
                    continue  # reconciled fully a moment ago (a create, an edit, an event)
                work.append((kind, *key))

        def one(item: tuple[str, str, str]) -> None:
            kind, namespace, name = item
            try:
                if kind == "ModelPool":
                    # the first pass of this process applies every child anyway (nothing
                    # applied yet to compare with), so the first forced one is due a full
                    # FORCE_APPLY_EVERY periods after the first resync
                    now = time.monotonic()
                    last = self._last_forced.setdefault((namespace, name), now)
                    force = now - last >= FORCE_APPLY_EVERY * self.config.resync_s
                    if force:
                        self._last_forced[(namespace, name)] = now
                    self.reconcile_pool(namespace, name, force_apply=force)
                else:
                    self.reconcile_policy(namespace, name)
            except Exception:
                log.exception("resync of %s %s/%s failed", kind, namespace, name)

        if executor is None:
            for item in work:
                one(item)
        else:
            for f in [executor.submit(one, item) for item in work]:
                f.result()
        return len(work)

    # ================================================================== RoutingPolicy

    def reconcile_policy(self, namespace: str, name: str) -> None:
        self._timed("RoutingPolicy", lambda: self._policy(namespace, name))

    def reconcile_policies(self, namespace: str) -> None:
        """Every policy of a namespace (a pool appeared or went)."""
        for raw in self.cache.list("RoutingPolicy", namespace):
            meta = raw.get("metadata") or {}
            self.reconcile_policy(namespace, str(meta.get("name")))

    def _policy(self, namespace: str, name: str) -> None:
        raw = self.cache.get("RoutingPolicy", namespace, name)
        if raw is None or (raw.get("metadata") or {}).get("deletionTimestamp"):
            return
        generation = int(raw["metadata"].get("generation") or 0)
        old_status: JSON = raw.get("status") or {}
        parsed, problems = _parse(raw, f"{namespace}/{name}")
        invalid, reason = "", "InvalidSpec"
        missing: list[str] = []
        if problems or not isinstance(parsed, RoutingPolicy):
            invalid = _problems_text(problems) or "the object does not parse"
            refs = _raw_pool_refs(raw.get("spec"))
        else:
            invalid, reason = self._policy_problem(parsed)
            refs = parsed.referenced_pools()
        pools = {
            str((p.get("metadata") or {}).get("name"))
            for p in self.cache.list("ModelPool", namespace)
            if not (p.get("metadata") or {}).get("deletionTimestamp")
        }
        missing = sorted(refs - pools)
        conditions = st.policy_conditions(
            generation=generation, invalid=invalid, invalid_reason=reason, missing_pools=missing
        )
        if invalid:
            self.events.emit(raw, "invalid", "Warning", reason, invalid)
            self.metrics.reconcile_errors.labels("RoutingPolicy", reason).inc()
        else:
            self.events.clear(raw, "invalid")
        if missing:
            self.events.emit(
                raw, "refs", "Warning", "PoolNotFound", f"no ModelPool named {', '.join(missing)}"
            )
        else:
            self.events.clear(raw, "refs")
        status = {
            **old_status,
            "observedGeneration": generation,
            "conditions": st.merge_conditions(
                old_status.get("conditions") or [], conditions, self.clock()
            ),
        }
        first_time = old_status.get("observedGeneration") != generation
        self._write_status("RoutingPolicy", namespace, name, old_status, status)
        if first_time and isinstance(parsed, RoutingPolicy) and not invalid:
            if parsed.spec.placement.prefix_source == "kv-events":
                for pool in sorted(parsed.referenced_pools() - set(missing)):
                    self.reconcile_pool(namespace, pool)

    def _policy_problem(self, policy: RoutingPolicy) -> tuple[str, str]:
        """What the scheduler would refuse in a policy the model accepts: plugin parameters
        (reason InvalidParameters) and the selection it builds (InvalidSpec)."""
        from modelfleet.policy.from_api import check_placement
        from modelfleet.policy.selection import build_selector
        from modelfleet.policy.selection.predictor import load_builtin_predictor

        params = check_placement(policy.spec.placement)
        if params:
            return (
                "; ".join(f"spec.placement.{f}: {m}" for f, m in params),
                "InvalidParameters",
            )
        predictor = None
        if policy.spec.selection.strategy == "cost-quality":
            if self._predictor is None:
                self._predictor = load_builtin_predictor()
            predictor = self._predictor
        try:
            build_selector(policy.spec, predictor=predictor)
        except ValueError as err:
            return f"spec.{err}", "InvalidSpec"
        return "", "Valid"

    # ================================================================== AcceleratorProfile

    def reconcile_profile(self, name: str) -> None:
        self._timed("AcceleratorProfile", lambda: self._profile(name))

    def _profile(self, name: str) -> None:
        raw = self.kube.get("AcceleratorProfile", None, name)
        self.observe_profile(name, raw)  # the pools re-rendered below read this one
        if raw is not None and not (raw.get("metadata") or {}).get("deletionTimestamp"):
            generation = int(raw["metadata"].get("generation") or 0)
            old_status: JSON = raw.get("status") or {}
            parsed, problems = _parse(raw, name)
            if problems or not isinstance(parsed, AcceleratorProfile):
                text = _problems_text(problems)
                conditions = [st.condition("Accepted", False, "InvalidSpec", text, generation)]
                status: JSON = {"observedGeneration": generation, "nodes": 0, "allocatableGpus": 0}
                self.events.emit(raw, "invalid", "Warning", "InvalidSpec", text)
            else:
                nodes = self.kube.list_objects(
                    "Node", None, selector=selector_string(parsed.selector())
                )
                gpus = 0
                for node in nodes:
                    alloc = (node.get("status") or {}).get("allocatable") or {}
                    with contextlib.suppress(ValueError):
                        gpus += int(str(alloc.get(parsed.spec.resource_name, "0")))
                conditions = [
                    st.condition("Accepted", True, "Valid", "", generation),
                    st.condition(
                        "NodesFound",
                        bool(nodes),
                        "NodesFound" if nodes else "NoMatchingNodes",
                        f"{len(nodes)} node(s), {gpus} {parsed.spec.resource_name}",
                        generation,
                    ),
                ]
                status = {
                    "observedGeneration": generation,
                    "nodes": len(nodes),
                    "allocatableGpus": gpus,
                }
            status["conditions"] = st.merge_conditions(
                old_status.get("conditions") or [], conditions, self.clock()
            )
            self._write_status("AcceleratorProfile", None, name, old_status, status)
        self.rerender_pools_using(name)

    def rerender_pools_using(self, profile: str) -> None:
        """Reconcile every pool with a variant on ``profile`` (a profile appeared, changed or
        went): the Deployments follow its selector and tolerations, or report it missing."""
        for raw in self.cache.list("ModelPool"):
            variants = (raw.get("spec") or {}).get("variants") or []
            if any(v.get("acceleratorProfile") == profile for v in variants if isinstance(v, dict)):
                meta = raw["metadata"]
                self.reconcile_pool(str(meta.get("namespace")), str(meta["name"]))
