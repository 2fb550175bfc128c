"""The operator's watch caches: what its watches last delivered, so a reconcile reads no API.

kopf already streams every ModelPool, RoutingPolicy, engine Deployment and engine Pod of the
watched namespaces to the handlers; :class:`WatchCache` keeps the latest version of each
(:meth:`WatchCache.observe`), plus what the operator's own writes returned
(:meth:`WatchCache.store`), so the reconcilers serve their reads from memory instead of a GET
and two label-selected LISTs per pass (what made 200 pools take 100 s: ``docs/operator.md``).

Consistency is the informer's: per object, a version replaces the cached one only if its
``resourceVersion`` is newer (a write's response and the watch event of the same write may
arrive in either order). The first read of a kind in a namespace lists it once (the watches
may not have delivered it yet), and :meth:`WatchCache.relist` (every resync period) lists it
again and merges the snapshot with :func:`merge_listing`: an object the list no longer shows
and that no event newer than the list re-delivered is dropped (a deletion a watch missed), a
deletion newer than the list is not undone. So the cache is at most one resync period behind
the API even if a watch event were lost, and the resync stays a level-triggered safety net.

Objects are the API's plain ``dict`` s, shared, never mutated: readers must copy to change.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from modelfleet.api.names import APP_MANAGED_BY_LABEL, FIELD_MANAGER, POOL_LABEL, selector_string
from modelfleet.operator.kube import Kube

JSON = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)

#: The kinds cached, and the label selector the operator watches each with.
KINDS: Mapping[str, str] = {
    "ModelPool": "",
    "RoutingPolicy": "",
    "Deployment": selector_string({APP_MANAGED_BY_LABEL: FIELD_MANAGER}),
    "Pod": selector_string({APP_MANAGED_BY_LABEL: FIELD_MANAGER}),
}


def resource_version(obj: Mapping[str, Any]) -> int | None:
    """An object's ``metadata.resourceVersion`` as a number (etcd's revision), or None."""
    text = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(text) if text.isdigit() else None


def is_newer(candidate: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Does ``candidate`` replace ``current`` (the same object)? Yes when its version is
    higher, or when either version is not a number (then the later arrival wins)."""
    a, b = resource_version(candidate), resource_version(current)
    return a is None or b is None or a > b


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def merge_listing(
    cached: Mapping[Key, JSON],
    gone: Mapping[Key, int],
    listed: Iterable[JSON],
    list_version: str,
    in_scope: Iterable[Key],
) -> tuple[dict[Key, JSON], dict[Key, int]]:
    """The cache after a LIST (pure). ``cached``: objects by key; ``gone``: deletions seen,
    by key, with the deletion's version; ``listed``: the LIST's items, a snapshot at
    ``list_version``; ``in_scope``: the cached keys the LIST covers (its namespace).

    Returns the new objects and deletions: a listed object is taken unless the cache holds a
    newer version of it or a deletion newer than it; a cached object in scope that the list
    does not show is dropped unless it is newer than the list (created after it); deletions
    the list has caught up with are forgotten."""
    objs = dict(cached)
    tombs = dict(gone)
    snapshot = int(list_version) if list_version.isdigit() else None
    seen: set[Key] = set()
    for obj in listed:
        key = key_of(obj)
        seen.add(key)
        version = resource_version(obj)
        if key in tombs and (version is None or tombs[key] >= version):
            continue
        current = objs.get(key)
        if current is None or is_newer(obj, current):
            objs[key] = obj
    for key in set(in_scope) - seen:
        version = resource_version(objs[key]) if key in objs else None
        if snapshot is None or version is None or version <= snapshot:
            objs.pop(key, None)
    if snapshot is not None:
        tombs = {k: v for k, v in tombs.items() if v > snapshot}
    return objs, tombs


class WatchCache:
    """Latest versions of the watched objects (module docstring). ``namespaces``: the
    watched ones (empty: every namespace, listed cluster-wide)."""

    def __init__(self, kube: Kube, namespaces: tuple[str, ...] = ()) -> None:
        self.kube = kube
        self.namespaces = namespaces
        self._lock = threading.Lock()
        self._list_lock = threading.Lock()
        self._objs: dict[str, dict[Key, JSON]] = {k: {} for k in KINDS}
        self._gone: dict[str, dict[Key, int]] = {k: {} for k in KINDS}
        self._listed: set[tuple[str, str]] = set()  # (kind, namespace or "*")

    # -- feeding --------------------------------------------------------------------------

    def observe(self, kind: str, obj: JSON, *, deleted: bool = False) -> None:
        """A watch event of ``obj`` (``deleted``: a DELETED event)."""
        key = key_of(obj)
        with self._lock:
            objs, gone = self._objs[kind], self._gone[kind]
            current = objs.get(key)
            if deleted:
                held = resource_version(current) if current is not None else None
                version = resource_version(obj)
                if held is None or version is None or held <= version:
                    objs.pop(key, None)
                    gone[key] = resource_version(obj) or 0
                return
            tomb = gone.get(key)
            version = resource_version(obj)
            if tomb is not None and version is not None and version <= tomb:
                return
            if current is None or is_newer(obj, current):
                objs[key] = obj
                gone.pop(key, None)

    def store(self, kind: str, obj: JSON) -> None:
        """What a write of the operator's returned (the object as stored after it)."""
        if obj.get("metadata"):
            self.observe(kind, obj)

    def relist(self, kinds: Iterable[str] = tuple(KINDS)) -> None:
        """List ``kinds`` again in every watched namespace and merge (module docstring)."""
        for kind in kinds:
            for scope in self.namespaces or ("*",):
                with self._list_lock:
                    self._list(kind, scope)

    def _list(self, kind: str, scope: str) -> None:
        items, version = self.kube.list_snapshot(kind, None if scope == "*" else scope, KINDS[kind])
        with self._lock:
            objs = self._objs[kind]
            in_scope = [k for k in objs if scope == "*" or k[0] == scope]
            self._objs[kind], self._gone[kind] = merge_listing(
                objs, self._gone[kind], items, version, in_scope
            )
            self._listed.add((kind, scope))

    def _ensure(self, kind: str, namespace: str | None) -> None:
        """List ``kind`` once where it was never listed (the watches may still be starting)."""
        if not self.namespaces:
            scopes: tuple[str, ...] = ("*",)
        else:
            scopes = self.namespaces if namespace is None else (namespace,)
        for scope in scopes:
            with self._lock:
                if (kind, scope) in self._listed:
                    continue
            with self._list_lock:
                with self._lock:
                    done = (kind, scope) in self._listed
                if not done:
                    self._list(kind, scope)

    # -- reading --------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> JSON | None:
        self._ensure(kind, namespace)
        with self._lock:
            return self._objs[kind].get((namespace, name))

    def list(self, kind: str, namespace: str | None = None, pool: str | None = None) -> list[JSON]:
        """Objects of ``kind`` in ``namespace`` (None: every watched one), only those
        labelled with ``pool`` when given, by name."""
        self._ensure(kind, namespace)
        with self._lock:
            out = [
                o
                for (ns, _), o in self._objs[kind].items()
                if (namespace is None or ns == namespace)
                and (
                    pool is None
                    or ((o.get("metadata") or {}).get("labels") or {}).get(POOL_LABEL) == pool
                )
            ]
        return sorted(out, key=key_of)
