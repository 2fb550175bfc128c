"""The Kubernetes fleet source: list and watch the cluster's objects over plain HTTP.

The scheduler talks to the API server read-only and without the ``kubernetes`` package (its
image carries no Kubernetes client; ``.importlinter`` forbids one): a small client over httpx
that lists a collection, then watches it from the list's ``resourceVersion`` (with bookmarks),
and lists again when the server says the version is gone (410) or the watch ends.

Connection (:func:`load_connection`): in a pod, the service-account token and CA
(``/var/run/secrets/kubernetes.io/serviceaccount``) and ``KUBERNETES_SERVICE_HOST/PORT``;
otherwise a kubeconfig (``--kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``), its
current context, with a bearer token (``token`` or ``tokenFile``) or a client certificate
(files or ``*-data``) and the cluster's CA. Exec and auth-provider plugins are not supported
(a clear error says so).

What is watched (:class:`KubernetesSource`), in one namespace or all:

* AcceleratorProfiles (cluster-scoped), ModelPools, RoutingPolicies (``modelfleet.io/v1alpha1``);
* pods labelled ``modelfleet.io/pool`` (the operator labels each engine pod with
  ``modelfleet.io/pool=<pool>`` and ``modelfleet.io/variant=<variant>``). A pod is an endpoint
  while it is Ready, has an IP and is not being deleted; its URL is
  ``http://<podIP>:<port>``, the port being the container port named ``http`` (else 8000);
  its id ``<namespace>/<pod>``. When the pool's ``engine.kvEvents`` is on, its KV events are
  found through the engine's ``/kv_event_sources``.

Every change (debounced by ``debounce_s``) gives a new snapshot. Objects the API models
refuse, and RoutingPolicies :func:`~modelfleet.scheduler.fleet.check_fleet` finds unusable,
are left out with a log line naming the field; the rest of the fleet keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from modelfleet.api.accelerator import AcceleratorProfile
from modelfleet.api.common import API_VERSION
from modelfleet.api.modelpool import ModelPool
from modelfleet.api.routingpolicy import RoutingPolicy
from modelfleet.api.validate import validate_object
from modelfleet.scheduler.fleet import (
    EndpointSpec,
    FleetSnapshot,
    PoolKey,
    PredictorCache,
    check_fleet,
)

__all__ = [
    "POOL_LABEL",
    "VARIANT_LABEL",
    "KubeClient",
    "KubeConnection",
    "KubeError",
    "KubernetesSource",
    "endpoint_of_pod",
    "load_connection",
]

log = logging.getLogger("modelfleet.scheduler.kube")

POOL_LABEL = "modelfleet.io/pool"
VARIANT_LABEL = "modelfleet.io/variant"
DEFAULT_ENGINE_PORT = 8000
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeError(RuntimeError):
    """The cluster cannot be reached or the credentials cannot be used."""


@dataclass
class KubeConnection:
    """Where the API server is and how to authenticate."""

    server: str
    verify: ssl.SSLContext | bool
    headers: dict[str, str] = field(default_factory=dict)
    namespace: str = "default"
    _tmp: list[str] = field(default_factory=list, repr=False)

    def close(self) -> None:
        for path in self._tmp:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._tmp.clear()


def _data_file(conn: KubeConnection, data: str) -> str:
    fd, path = tempfile.mkstemp(prefix="modelfleet-kube-")
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64decode(data))
    conn._tmp.append(path)
    return path


def _relative(base: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def load_connection(kubeconfig: str | None = None) -> KubeConnection:
    """The in-cluster connection, or the current context of a kubeconfig (``KubeError``)."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if kubeconfig is None and host and (SERVICE_ACCOUNT / "token").is_file():
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        ctx = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
        token = (SERVICE_ACCOUNT / "token").read_text().strip()
        ns_file = SERVICE_ACCOUNT / "namespace"
        ns = ns_file.read_text().strip() if ns_file.is_file() else "default"
        h = f"[{host}]" if ":" in host else host
        return KubeConnection(f"https://{h}:{port}", ctx, {"Authorization": f"Bearer {token}"}, ns)
    path = kubeconfig or (os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None)
    path = path or str(Path.home() / ".kube" / "config")
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise KubeError(f"kubeconfig {path}: cannot read: {e}") from None
    if not isinstance(config, dict):
        raise KubeError(f"kubeconfig {path}: not a mapping")
    base = Path(path).resolve().parent

    def named(kind: str, name: str) -> dict[str, Any]:
        for item in config.get(kind) or []:
            if isinstance(item, dict) and item.get("name") == name:
                return dict(item.get(kind[:-1]) or {})
        raise KubeError(f"kubeconfig {path}: no {kind[:-1]} named {name!r}")

    current = config.get("current-context")
    if not current:
        raise KubeError(f"kubeconfig {path}: no current-context")
    context = named("contexts", current)
    cluster = named("clusters", str(context.get("cluster")))
    user = named("users", str(context.get("user"))) if context.get("user") else {}
    server = str(cluster.get("server") or "").rstrip("/")
    if not server:
        raise KubeError(f"kubeconfig {path}: cluster of context {current!r} has no server")
    for unsupported in ("exec", "auth-provider"):
        if unsupported in user:
            raise KubeError(
                f"kubeconfig {path}: user {context.get('user')!r} uses {unsupported}, which "
                "the scheduler does not run; give it a token or a client certificate"
            )
    conn = KubeConnection(server, True, {}, str(context.get("namespace") or "default"))
    verify: ssl.SSLContext | bool = True
    if server.startswith("https://"):
        if cluster.get("insecure-skip-tls-verify"):
            verify = False
        else:
            ctx = ssl.create_default_context()
            if cluster.get("certificate-authority-data"):
                ctx.load_verify_locations(
                    cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
                )
            elif cluster.get("certificate-authority"):
                ctx.load_verify_locations(_relative(base, cluster["certificate-authority"]))
            verify = ctx
        cert: str | None = user.get("client-certificate")
        key: str | None = user.get("client-key")
        if user.get("client-certificate-data"):
            cert = _data_file(conn, user["client-certificate-data"])
        elif cert:
            cert = _relative(base, cert)
        if user.get("client-key-data"):
            key = _data_file(conn, user["client-key-data"])
        elif key:
            key = _relative(base, key)
        if cert and key:
            if not isinstance(verify, ssl.SSLContext):
                verify = ssl.create_default_context()
                verify.check_hostname = False
                verify.verify_mode = ssl.CERT_NONE
            verify.load_cert_chain(cert, key)
    conn.verify = verify
    bearer: str | None = user.get("token")
    if not bearer and user.get("tokenFile"):
        bearer = Path(_relative(base, user["tokenFile"])).read_text().strip()
    if bearer:
        conn.headers["Authorization"] = f"Bearer {bearer}"
    return conn


class KubeClient:
    """List and watch collections of one API server (read-only)."""

    def __init__(self, conn: KubeConnection) -> None:
        self.conn = conn
        self.http = httpx.AsyncClient(
            base_url=conn.server,
            verify=conn.verify,
            headers={**conn.headers, "Accept": "application/json"},
            timeout=httpx.Timeout(connect=5.0, read=330.0, write=10.0, pool=None),
        )

    async def aclose(self) -> None:
        await self.http.aclose()
        self.conn.close()

    async def list(
        self, path: str, params: dict[str, str] | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """Every object of a collection and the collection's resourceVersion."""
        r = await self.http.get(path, params=params or {})
        if r.status_code != 200:
            raise KubeError(f"GET {path}: HTTP {r.status_code}: {r.text[:300]}")
        body = r.json()
        return list(body.get("items") or []), str(body["metadata"].get("resourceVersion", ""))

    async def watch(
        self, path: str, resource_version: str, params: dict[str, str] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events from ``resource_version`` until the server ends the watch.

        Yields ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}``.
        """
        q = {
            **(params or {}),
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "300",
        }
        async with self.http.stream("GET", path, params=q) as r:
            if r.status_code != 200:
                body = (await r.aread()).decode(errors="replace")
                raise KubeError(f"watch {path}: HTTP {r.status_code}: {body[:300]}")
            async for line in r.aiter_lines():
                if line.strip():
                    yield json.loads(line)


class _Gone(Exception):
    pass


class _Informer:
    """A collection kept in sync by list + watch; ``changed`` is set on every change."""

    def __init__(
        self,
        client: KubeClient,
        path: str,
        changed: asyncio.Event,
        params: dict[str, str] | None = None,
    ) -> None:
        self.client = client
        self.path = path
        self.params = params or {}
        self.changed = changed
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.synced = asyncio.Event()

    @staticmethod
    def _key(obj: dict[str, Any]) -> tuple[str, str]:
        meta = obj.get("metadata") or {}
        return str(meta.get("namespace") or ""), str(meta.get("name") or "")

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                items, version = await self.client.list(self.path, self.params)
                self.objects = {self._key(o): o for o in items}
                self.synced.set()
                self.changed.set()
                delay = 0.5
                while True:
                    version = await self._watch(version)
            except _Gone:
                continue
            except asyncio.CancelledError:
                raise
            except (KubeError, httpx.HTTPError, OSError, ValueError, KeyError) as e:
                log.warning("%s: %s; listing again in %.1f s", self.path, e, delay)
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)

    async def _watch(self, version: str) -> str:
        async for ev in self.client.watch(self.path, version, self.params):
            kind = ev.get("type")
            obj = ev.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Gone
                raise KubeError(f"watch error: {obj.get('message')}")
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv:
                version = str(rv)
            if kind in ("ADDED", "MODIFIED"):
                self.objects[self._key(obj)] = obj
                self.changed.set()
            elif kind == "DELETED":
                self.objects.pop(self._key(obj), None)
                self.changed.set()
        return version


def _pod_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp") or not status.get("podIP"):
        return False
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def endpoint_of_pod(pod: dict[str, Any], kv_events: bool = False) -> EndpointSpec | None:
    """The endpoint a ready engine pod stands for (``None`` when it is not one or not ready)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    pool, variant = labels.get(POOL_LABEL), labels.get(VARIANT_LABEL)
    if not pool or not variant or not _pod_ready(pod):
        return None
    port = DEFAULT_ENGINE_PORT
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == "http" and p.get("containerPort"):
                port = int(p["containerPort"])
    ip = str(pod["status"]["podIP"])
    host = f"[{ip}]" if ":" in ip else ip
    ns = str(meta.get("namespace") or "default")
    return EndpointSpec(
        id=f"{ns}/{meta.get('name')}",
        url=f"http://{host}:{port}",
        namespace=ns,
        pool=str(pool),
        variant=str(variant),
        kv_events="auto" if kv_events else "",
    )


class KubernetesSource:
    """Fleet snapshots from the cluster (see the module docstring)."""

    def __init__(
        self,
        *,
        kubeconfig: str | None = None,
        namespace: str | None = None,
        debounce_s: float = 0.02,
        predictors: PredictorCache | None = None,
        connection: KubeConnection | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.debounce_s = debounce_s
        self.predictors = predictors or PredictorCache()
        self._connection = connection
        self.skipped: list[str] = []
        # per informer: object key -> (its content as parsed, the model, its problems)
        self._parsed: dict[int, dict[Any, tuple[str, Any, list[str]]]] = {}

    def _path(self, group: str, plural: str, namespaced: bool) -> str:
        base = "/api/v1" if group == "" else f"/apis/{group}"
        if namespaced and self.namespace:
            return f"{base}/namespaces/{self.namespace}/{plural}"
        return f"{base}/{plural}"

    async def snapshots(self) -> AsyncIterator[FleetSnapshot]:
        conn = self._connection or load_connection(self.kubeconfig)
        client = KubeClient(conn)
        changed = asyncio.Event()
        group, path = API_VERSION, self._path
        informers = {
            "profiles": _Informer(client, path(group, "acceleratorprofiles", False), changed),
            "pools": _Informer(client, path(group, "modelpools", True), changed),
            "policies": _Informer(client, path(group, "routingpolicies", True), changed),
            "pods": _Informer(
                client, path("", "pods", True), changed, {"labelSelector": POOL_LABEL}
            ),
        }
        tasks = [asyncio.create_task(i.run(), name=f"watch:{k}") for k, i in informers.items()]
        try:
            await asyncio.gather(*(i.synced.wait() for i in informers.values()))
            current: FleetSnapshot | None = None
            while True:
                changed.clear()
                snapshot = self._build(informers)
                if current is None or snapshot.version != current.version:
                    current = snapshot
                    yield snapshot
                await changed.wait()
                await asyncio.sleep(self.debounce_s)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await client.aclose()

    def _parse(self, informer: _Informer, skipped: list[str]) -> list[Any]:
        """The informer's objects as API models (status and server metadata dropped). An
        object whose remaining content is what it was at the last build reuses that parse:
        a status write or one policy edit does not re-validate every pool."""
        out = []
        cache = self._parsed.setdefault(id(informer), {})
        fresh: dict[Any, tuple[str, Any, list[str]]] = {}
        for key, obj in informer.objects.items():
            obj = {k: v for k, v in obj.items() if k != "status"}
            meta = dict(obj.get("metadata") or {})
            obj["metadata"] = {
                k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta
            }
            text = json.dumps(obj, sort_keys=True)
            hit = cache.get(key)
            if hit is not None and hit[0] == text:
                parsed, problems = hit[1], hit[2]
            else:
                parsed, found = validate_object(obj, "cluster")
                problems = [str(p) for p in found]
            fresh[key] = (text, parsed, problems)
            if parsed is None:
                skipped.extend(problems)
            else:
                out.append(parsed)
        self._parsed[id(informer)] = fresh
        return out

    def _build(self, informers: dict[str, _Informer]) -> FleetSnapshot:
        skipped: list[str] = []
        profiles = {
            p.metadata.name: p
            for p in self._parse(informers["profiles"], skipped)
            if isinstance(p, AcceleratorProfile)
        }
        pools: dict[PoolKey, ModelPool] = {
            (p.metadata.namespace or "default", p.metadata.name): p
            for p in self._parse(informers["pools"], skipped)
            if isinstance(p, ModelPool)
        }
        policies: dict[PoolKey, RoutingPolicy] = {
            (p.metadata.namespace or "default", p.metadata.name): p
            for p in self._parse(informers["policies"], skipped)
            if isinstance(p, RoutingPolicy)
        }
        endpoints = []
        for pod in informers["pods"].objects.values():
            labels = (pod.get("metadata") or {}).get("labels") or {}
            ns = str((pod.get("metadata") or {}).get("namespace") or "default")
            pool = pools.get((ns, str(labels.get(POOL_LABEL))))
            if pool is None or labels.get(VARIANT_LABEL) not in {
                v.name for v in pool.spec.variants
            }:
                continue
            e = endpoint_of_pod(pod, kv_events=pool.spec.engine.kv_events)
            if e is not None:
                endpoints.append(e)
        endpoints.sort(key=lambda e: e.id)
        snapshot = FleetSnapshot(profiles, pools, policies, tuple(endpoints), "kubernetes")
        bad = {
            tuple(p.name.split("/", 1))
            for p in check_fleet(snapshot, self.predictors)
            if p.kind == "RoutingPolicy" and p.field != "spec.modelNames"
        }
        if bad:
            skipped.extend(
                f"RoutingPolicy {ns}/{name}: left out (invalid)" for ns, name in sorted(bad)
            )
            policies = {k: v for k, v in policies.items() if k not in bad}
            snapshot = FleetSnapshot(profiles, pools, policies, tuple(endpoints), "kubernetes")
        if skipped != self.skipped:
            for line in skipped:
                log.error("cluster object not used: %s", line)
        self.skipped = skipped
        return snapshot
