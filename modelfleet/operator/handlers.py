"""The kopf handlers: thin — each names an object and calls a reconciler.

:func:`build_registry` registers them on a fresh ``kopf.OperatorRegistry`` (nothing registers
as an import side effect), for one :class:`~modelfleet.operator.reconcile.Reconciler`. Every
handler is a watch-event handler (``kopf.on.event``):

============================================ =============================================
watch                                        does
============================================ =============================================
ModelPool, RoutingPolicy, engine             the reconcilers' watch cache (every read of a
Deployments and Pods (any event)             reconcile is served from it, no API call)
ModelPool, first sight or changed            full reconcile of the pool
ModelPool first sight / DELETED              re-resolve the namespace's RoutingPolicies
                                             (coalesced)
engine Deployments, Pods (any event)         status refresh of their pool (coalesced); a
                                             Deployment deleted or edited by someone else is
                                             re-applied; a pod starting to terminate is
                                             drained through the scheduler
RoutingPolicy, first sight or changed        Accepted / ResolvedRefs
AcceleratorProfile, first sight or changed   the reconcilers' cache of profiles, status
                                             (matching nodes, GPUs), re-render the pools
                                             that use it; DELETED: re-render them
============================================ =============================================

"Changed" is a new ``generation``, labels or annotations (:class:`Handled`): the operator's
own status writes are no change, and what was handled is remembered in memory, not in
annotations, so kopf writes nothing to the objects (its create/update/resume handlers would
patch a diff-base annotation on each after every handled change). After a start every object
is seen once more, which reconciles it (what resume handlers did).

Every resync period, :meth:`~modelfleet.operator.reconcile.Reconciler.resync` reconciles
every pool and policy again (autoscaling, drift, status, and any reconcile that failed); it
runs in its own thread (:class:`~modelfleet.operator.runtime.OperatorThread`), not as a kopf
timer, because kopf puts a finalizer on every object a timer watches, and then a pool could not
be deleted while no operator runs. Nothing the operator does on deletion needs a finalizer:
children go by owner references, their pods drain on the way out.

Reconciles block (the Kubernetes and gRPC clients are synchronous): they run in the handler
thread pool, and kopf's worker for that object waits for the one in flight, so an object is
reconciled by one pass at a time. Handlers that only feed the cache and queue passes never
block, so a thread pool busy reconciling does not delay what the cache sees.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
import kubernetes.client as k8s

from modelfleet.api.common import GROUP, VERSION
from modelfleet.api.names import APP_MANAGED_BY_LABEL, FIELD_MANAGER
from modelfleet.operator.reconcile import Reconciler

_CHILD = {APP_MANAGED_BY_LABEL: FIELD_MANAGER}

log = logging.getLogger(__name__)


def connection_info(config: k8s.Configuration) -> kopf.ConnectionInfo:
    """kopf's connection from the ``kubernetes`` client's configuration, so kopf's watches
    and the operator's own calls use one kubeconfig (or the in-cluster service account)."""
    token = config.api_key.get("BearerToken") or config.api_key.get("authorization") or ""
    scheme = None
    if token:
        scheme, _, rest = token.partition(" ") if " " in token else ("Bearer", "", token)
        token = rest or token
    return kopf.ConnectionInfo(
        server=str(config.host),
        ca_path=config.ssl_ca_cert or None,
        insecure=not config.verify_ssl,
        certificate_path=config.cert_file or None,
        private_key_path=config.key_file or None,
        scheme=scheme,
        token=token or None,
    )


def _plain(body: Any) -> dict[str, Any]:
    """A kopf body as plain nested dicts."""
    if isinstance(body, dict):
        return {k: _plain(v) for k, v in body.items()}
    if hasattr(body, "items") and hasattr(body, "keys"):
        return {k: _plain(v) for k, v in body.items()}
    if isinstance(body, list):
        return [_plain(v) for v in body]  # type: ignore[return-value]
    return body  # type: ignore[no-any-return]


#: Annotations that are bookkeeping, not intent: a change of only these is no change.
_BOOKKEEPING = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        "modelfleet.io/last-handled-configuration",  # kopf's diff base, before 2026-12
    }
)


def essence(raw: Mapping[str, Any]) -> str:
    """What a change of an object means to act on: its ``generation`` (the API server bumps
    it on every spec change), labels and annotations — not its status (the operator's own
    writes) nor its ``resourceVersion``."""
    meta = raw.get("metadata") or {}
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k not in _BOOKKEEPING
    }
    return json.dumps(
        [meta.get("generation"), meta.get("labels") or {}, annotations], sort_keys=True
    )


class Handled:
    """The essence (:func:`essence`) each object had when this process last reconciled it,
    so a watch event runs a reconcile only when the object changed: on the first sight of an
    object (its creation, or every object once after a start, like kopf's resume handlers),
    and on a change of its spec, labels or annotations, but not on the operator's own
    status writes. Kept in memory only: a restarted operator reconciles everything once,
    which a level-triggered reconcile needs anyway, and no bookkeeping is written to the
    objects (kopf's change handlers patch an annotation on every object after each handled
    change; at 200 pools that was 200 writes and 200 more watch events for every client).
    A reconcile that raises is not recorded: the next event, or the resync, runs it again."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self.executor = executor
        self._done: dict[tuple[str, str, str], str] = {}

    def forget(self, key: tuple[str, str, str]) -> None:
        self._done.pop(key, None)

    async def run_if_changed(
        self, key: tuple[str, str, str], raw: Mapping[str, Any], fn: Callable[[], object]
    ) -> None:
        now = essence(raw)
        if self._done.get(key) == now:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self.executor, fn)
        except Exception:
            log.exception("reconcile of %s %s/%s failed (retried by the resync)", *key)
            return
        self._done[key] = now


def build_registry(
    reconciler: Reconciler,
    connection: kopf.ConnectionInfo,
    executor: ThreadPoolExecutor,
) -> kopf.OperatorRegistry:
    """The operator's handlers (module docstring) on a new registry. Synchronous handlers run
    in ``executor``, which the caller owns (and shuts down after kopf stops)."""
    registry = kopf.OperatorRegistry()
    rec = reconciler
    pools_seen: dict[str, set[str]] = {}
    handled = Handled(executor)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING
        settings.execution.executor = executor
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 60

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection

    def run(fn: Callable[[], object]) -> Awaitable[object]:
        """A blocking reconcile in the handler threads; kopf's worker for the object waits
        for it (one pass per object at a time, as kopf's own change handlers run)."""
        return asyncio.get_running_loop().run_in_executor(executor, fn)

    # -- ModelPool ----------------------------------------------------------------------

    @kopf.on.event(GROUP, VERSION, "modelpools", registry=registry)
    async def pool_event(type: str | None, body: Any, **_: Any) -> None:
        raw = _plain(body)
        rec.observe("ModelPool", raw, deleted=type == "DELETED")
        meta = raw.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        seen = pools_seen.setdefault(namespace, set())
        if type == "DELETED":
            seen.discard(name)
            handled.forget(("ModelPool", namespace, name))
            rec.forget_pool(namespace, name, str(meta.get("uid", "")))
            rec.request_policies(namespace)
            return
        if name not in seen:  # a new pool (or the first sight after a start)
            seen.add(name)
            rec.request_policies(namespace)
        await handled.run_if_changed(
            ("ModelPool", namespace, name), raw, lambda: rec.reconcile_pool(namespace, name)
        )

    # -- children -----------------------------------------------------------------------

    @kopf.on.event("apps", "v1", "deployments", labels=_CHILD, registry=registry)
    async def deployment_event(type: str | None, body: Any, **_: Any) -> None:
        rec.on_deployment(str(type), _plain(body))

    @kopf.on.event("", "v1", "pods", labels=_CHILD, registry=registry)
    async def pod_event(type: str | None, body: Any, **_: Any) -> None:
        rec.on_pod(str(type), _plain(body))

    # -- RoutingPolicy ------------------------------------------------------------------

    @kopf.on.event(GROUP, VERSION, "routingpolicies", registry=registry)
    async def policy_event(type: str | None, body: Any, **_: Any) -> None:
        raw = _plain(body)
        rec.observe("RoutingPolicy", raw, deleted=type == "DELETED")
        meta = raw.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        if type == "DELETED":
            handled.forget(("RoutingPolicy", namespace, name))
            return
        await handled.run_if_changed(
            ("RoutingPolicy", namespace, name),
            raw,
            lambda: rec.reconcile_policy(namespace, name),
        )

    # -- AcceleratorProfile -------------------------------------------------------------

    @kopf.on.event(GROUP, VERSION, "acceleratorprofiles", registry=registry)
    async def profile_event(type: str | None, name: str, body: Any, **_: Any) -> None:
        deleted = type == "DELETED"
        raw = _plain(body)
        rec.observe_profile(name, None if deleted else raw)
        if deleted:
            handled.forget(("AcceleratorProfile", "", name))
            await run(lambda: rec.rerender_pools_using(name))
            return
        await handled.run_if_changed(
            ("AcceleratorProfile", "", name), raw, lambda: rec.reconcile_profile(name)
        )

    return registry
