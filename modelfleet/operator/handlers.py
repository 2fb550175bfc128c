"""The kopf handlers: thin — each names an object and calls a reconciler.

:func:`build_registry` registers them on a fresh ``kopf.OperatorRegistry`` (nothing registers
as an import side effect), for one :class:`~modelfleet.operator.reconcile.Reconciler`:

============================================ =============================================
watch                                        does
============================================ =============================================
ModelPool, RoutingPolicy, engine             the reconcilers' watch cache (every read of a
Deployments and Pods (any event)             reconcile is served from it, no API call)
ModelPool resume / create / update           full reconcile of the pool
ModelPool ADDED / DELETED events             re-resolve the namespace's RoutingPolicies
                                             (coalesced)
engine Deployments, Pods (any event)         status refresh of their pool (coalesced); a
                                             Deployment deleted or edited by someone else is
                                             re-applied; a pod starting to terminate is
                                             drained through the scheduler
AcceleratorProfile (any)                     the reconcilers' cache of profiles
RoutingPolicy resume / create / update       Accepted / ResolvedRefs
AcceleratorProfile resume / create / update, status (matching nodes, GPUs), re-render the
DELETED                                      pools that use it
============================================ =============================================

Every resync period, :meth:`~modelfleet.operator.reconcile.Reconciler.resync` reconciles
every pool and policy again (autoscaling, drift, status); it runs in its own thread
(:class:`~modelfleet.operator.runtime.OperatorThread`), not as a kopf timer, because kopf puts
a finalizer on every object a timer watches, and then a pool could not be deleted while no
operator runs. Nothing the operator does on deletion needs a finalizer: children go by owner
references, their pods drain on the way out.

Handlers that reconcile are synchronous: kopf runs them in its thread pool, where the
blocking Kubernetes and gRPC clients belong. The watch-event handlers that only feed the cache
and queue passes are ``async`` (they never block), so a thread pool busy reconciling does not
delay what the cache sees. kopf keeps its own bookkeeping in annotations under ``modelfleet.io/``
(the status is the operator's alone).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
import kubernetes.client as k8s

from modelfleet.api.common import GROUP, VERSION
from modelfleet.api.names import APP_MANAGED_BY_LABEL, FIELD_MANAGER
from modelfleet.operator.reconcile import Reconciler

_CHILD = {APP_MANAGED_BY_LABEL: FIELD_MANAGER}


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

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="modelfleet.io"
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="modelfleet.io", key="last-handled-configuration"
        )
        settings.persistence.finalizer = "modelfleet.io/operator"
        settings.posting.level = logging.WARNING
        settings.execution.executor = executor
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 60

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection

    # -- ModelPool ----------------------------------------------------------------------

    @kopf.on.resume(GROUP, VERSION, "modelpools", registry=registry)
    @kopf.on.create(GROUP, VERSION, "modelpools", registry=registry)
    @kopf.on.update(GROUP, VERSION, "modelpools", registry=registry)
    def pool_changed(namespace: str | None, name: str, body: Any, **_: Any) -> None:
        rec.observe("ModelPool", _plain(body))
        rec.reconcile_pool(str(namespace), name)

    @kopf.on.event(GROUP, VERSION, "modelpools", registry=registry)
    async def pool_event(type: str | None, body: Any, **_: Any) -> None:
        raw = _plain(body)
        rec.observe("ModelPool", raw, deleted=type == "DELETED")
        meta = raw.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        seen = pools_seen.setdefault(namespace, set())
        if type == "DELETED":
            seen.discard(name)
            rec.forget_pool(namespace, name, str(meta.get("uid", "")))
            rec.request_policies(namespace)
        elif name not in seen:  # a new pool (or the first sight after a start)
            seen.add(name)
            rec.request_policies(namespace)

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
        rec.observe("RoutingPolicy", _plain(body), deleted=type == "DELETED")

    @kopf.on.resume(GROUP, VERSION, "routingpolicies", registry=registry)
    @kopf.on.create(GROUP, VERSION, "routingpolicies", registry=registry)
    @kopf.on.update(GROUP, VERSION, "routingpolicies", registry=registry)
    def policy_changed(namespace: str | None, name: str, body: Any, **_: Any) -> None:
        rec.observe("RoutingPolicy", _plain(body))
        rec.reconcile_policy(str(namespace), name)

    # -- AcceleratorProfile -------------------------------------------------------------

    @kopf.on.resume(GROUP, VERSION, "acceleratorprofiles", registry=registry)
    @kopf.on.create(GROUP, VERSION, "acceleratorprofiles", registry=registry)
    @kopf.on.update(GROUP, VERSION, "acceleratorprofiles", registry=registry)
    def profile_changed(name: str, **_: Any) -> None:
        rec.reconcile_profile(name)

    @kopf.on.event(GROUP, VERSION, "acceleratorprofiles", registry=registry)
    def profile_event(type: str | None, name: str, body: Any, **_: Any) -> None:
        rec.observe_profile(name, None if type == "DELETED" else _plain(body))
        if type == "DELETED":
            rec.rerender_pools_using(name)

    return registry
