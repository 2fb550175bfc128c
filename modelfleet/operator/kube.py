"""Every Kubernetes API call the operator makes, in one place.

:class:`Kube` wraps one configured ``kubernetes.client.ApiClient`` (the maintained client: its
kubeconfig and in-cluster loading, TLS, credentials and token refresh) and sends plain JSON
requests through it, so objects stay the ``dict`` s the builders return and the API serves
(no translation through generated model classes). Writes of children are server-side apply
under one field manager, ``modelfleet-operator``, with conflicts forced: the operator owns the
fields it renders, and a restarted operator re-applies the same objects (no duplicates, by
construction of the names). Status is written through the status subresource with a JSON
merge patch of the whole status the operator computed.

Calls are synchronous; the kopf handlers that call them run in kopf's thread pool. Errors
surface as :class:`ApiError` (HTTP status and the API's ``Status`` message).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import kubernetes.client as k8s
import urllib3

from modelfleet.api.common import GROUP, VERSION
from modelfleet.api.names import FIELD_MANAGER

JSON = dict[str, Any]

#: Collection paths by kind (``{ns}`` = namespace).
_PATHS = {
    "ModelPool": f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/modelpools",
    "RoutingPolicy": f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/routingpolicies",
    "AcceleratorProfile": f"/apis/{GROUP}/{VERSION}/acceleratorprofiles",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Service": "/api/v1/namespaces/{ns}/services",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Event": "/api/v1/namespaces/{ns}/events",
    "Lease": "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
    "Node": "/api/v1/nodes",
}


def _resource_of(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    for p in reversed(parts):
        if p in _RESOURCES:
            return p
    return parts[-1] if parts else ""


_RESOURCES = {p.rsplit("/", 1)[-1] for p in _PATHS.values()} | {"status"}


class ApiError(RuntimeError):
    """A non-2xx answer, or no answer at all (``status`` 0)."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        self.status = status
        self.api_message = message
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


class Kube:
    """The operator's Kubernetes API (module docstring). ``timeout_s`` bounds every call."""

    def __init__(self, api_client: k8s.ApiClient, *, timeout_s: float = 30.0) -> None:
        self.api_client = api_client
        self.timeout_s = timeout_s
        #: Requests made, by (method, last path segment that names a collection).
        self.calls: Counter[tuple[str, str]] = Counter()

    # -- transport ------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> JSON:
        """One API request; returns the decoded JSON body, raises :class:`ApiError`."""
        client = self.api_client
        self.calls[(method, _resource_of(path))] += 1
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        full = path
        if query:
            full += "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        m, url, hdrs, payload, _ = client.param_serialize(
            method, full, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            resp = client.call_api(
                m, url, header_params=hdrs, body=payload, _request_timeout=self.timeout_s
            )
        except urllib3.exceptions.HTTPError as err:
            raise ApiError(method, path, 0, str(err)) from err
        text = resp.read().decode(errors="replace")
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        if not 200 <= resp.status < 300:
            message = data.get("message", text[:500]) if isinstance(data, dict) else text[:500]
            raise ApiError(method, path, resp.status, str(message))
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _collection(kind: str, namespace: str | None) -> str:
        return _PATHS[kind].format(ns=namespace or "default")

    def get(self, kind: str, namespace: str | None, name: str) -> JSON | None:
        """The object, or None if it does not exist."""
        try:
            return self.request("GET", f"{self._collection(kind, namespace)}/{name}")
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def list_objects(
        self, kind: str, namespace: str | None, selector: str = "", field_selector: str = ""
    ) -> list[JSON]:
        query = {}
        if selector:
            query["labelSelector"] = selector
        if field_selector:
            query["fieldSelector"] = field_selector
        items = self.request("GET", self._collection(kind, namespace), query=query).get("items")
        return [i for i in items or [] if isinstance(i, dict)]

    def list_snapshot(
        self, kind: str, namespace: str | None, selector: str = ""
    ) -> tuple[list[JSON], str]:
        """Every object of ``kind`` in ``namespace`` (None: in every namespace) matching
        ``selector``, and the list's ``resourceVersion`` (the snapshot it shows)."""
        path = self._collection(kind, namespace or "x")
        if namespace is None:
            path = path.replace("/namespaces/x", "")
        data = self.request("GET", path, query={"labelSelector": selector} if selector else None)
        items = [i for i in data.get("items") or [] if isinstance(i, dict)]
        return items, str((data.get("metadata") or {}).get("resourceVersion") or "")

    def list_all_namespaces(self, kind: str) -> list[JSON]:
        """Every object of a namespaced kind in every namespace."""
        path = self._collection(kind, "x").replace("/namespaces/x", "")
        return [i for i in self.request("GET", path).get("items") or [] if isinstance(i, dict)]

    # -- writes ---------------------------------------------------------------------------

    def apply(self, obj: JSON) -> JSON:
        """Server-side apply of a child object under the operator's field manager."""
        meta = obj["metadata"]
        path = f"{self._collection(obj['kind'], meta.get('namespace'))}/{meta['name']}"
        return self.request(
            "PATCH",
            path,
            obj,
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
        )

    def patch_status(self, kind: str, namespace: str | None, name: str, status: JSON) -> JSON:
        """Replace what the operator computed of an object's status (JSON merge patch);
        returns the object as stored after it."""
        path = f"{self._collection(kind, namespace)}/{name}/status"
        return self.request(
            "PATCH", path, {"status": status}, content_type="application/merge-patch+json"
        )

    def annotate(
        self, kind: str, namespace: str | None, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        """Set (or with None remove) annotations of an object (JSON merge patch)."""
        path = f"{self._collection(kind, namespace)}/{name}"
        body = {"metadata": {"annotations": dict(annotations)}}
        self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        """Delete an object (background propagation); a missing object is not an error."""
        try:
            self.request(
                "DELETE",
                f"{self._collection(kind, namespace)}/{name}",
                {"propagationPolicy": "Background"},
            )
        except ApiError as err:
            if err.status != 404:
                raise

    def emit_event(
        self, involved: JSON, type_: str, reason: str, message: str, now: datetime | None = None
    ) -> None:
        """A core/v1 Event about ``involved`` (an object as the API returns it), as
        ``kubectl describe`` shows them: reporting component ``modelfleet-operator``."""
        meta = involved.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta.get('name', 'object')}.{uuid.uuid4().hex[:16]}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", ""),
                "kind": involved.get("kind", ""),
                "name": meta.get("name", ""),
                "namespace": meta.get("namespace", ""),
                "uid": meta.get("uid", ""),
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": FIELD_MANAGER,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        self.request("POST", self._collection("Event", namespace), event)

    # -- leases (leader election) -----------------------------------------------------------

    def get_lease(self, namespace: str, name: str) -> JSON | None:
        return self.get("Lease", namespace, name)

    def write_lease(self, namespace: str, lease: JSON) -> bool:
        """Create the Lease (no resourceVersion) or replace it (with the resourceVersion that
        was read: optimistic concurrency). False if another writer got there first."""
        path = self._collection("Lease", namespace)
        rv = (lease.get("metadata") or {}).get("resourceVersion")
        try:
            if rv:
                self.request("PUT", f"{path}/{lease['metadata']['name']}", lease)
            else:
                self.request("POST", path, lease)
        except ApiError as err:
            if err.status in (409, 422):
                return False
            raise
        return True
