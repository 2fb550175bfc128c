"""Talking to a Kubernetes API server from tests: kubectl, helm and the ``kubernetes`` client.

:class:`ClusterClient` is what a test needs from a cluster, whoever runs it: the local control
plane (:class:`modelfleet.testing.cluster.Cluster` is a client that also owns its processes) or an
existing cluster reached through a kubeconfig (:meth:`ClusterClient.from_kubeconfig`, used to run
the same suite on kind). API calls go through the maintained ``kubernetes`` client, configured
from the same kubeconfig file and context as the tools: the typed core API, the dynamic client
(any kind, found by API discovery) and raw requests for tests that inspect a refusal. kubectl
and helm are the binaries of :class:`Binaries`, never whatever happens to be on PATH, and their
caches live in a private directory so runs do not share state.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import kubernetes.config as k8s_config
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError
from kubernetes.dynamic.resource import Resource

_TOOLS = ("controlplane", "kubectl", "kwok", "helm")
#: What a client of an existing cluster needs.
CLIENT_TOOLS = ("kubectl", "helm")


class ClusterError(RuntimeError):
    """The control plane could not be built, started or reached. The message says which part."""


class KubectlError(ClusterError):
    """A kubectl/helm command exited non-zero; carries its arguments and output."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"{Path(argv[0]).name} {' '.join(argv[1:])} exited {returncode}:\n"
            f"{stderr.strip() or stdout.strip()}"
        )


@dataclass(frozen=True)
class Binaries:
    """Where the built tools are. ``bin_dir/../share/kwok-stages.yaml`` holds kwok's stages."""

    bin_dir: Path

    @property
    def controlplane(self) -> Path:
        return self.bin_dir / "controlplane"

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def kwok(self) -> Path:
        return self.bin_dir / "kwok"

    @property
    def helm(self) -> Path:
        return self.bin_dir / "helm"

    @property
    def kwok_stages(self) -> Path:
        return self.bin_dir.parent / "share" / "kwok-stages.yaml"

    def missing(self, client_only: bool = False) -> list[str]:
        """Paths that should exist and do not (empty = usable). ``client_only``: only kubectl
        and helm matter (to test an existing cluster)."""
        tools = CLIENT_TOOLS if client_only else _TOOLS
        out = [str(self.bin_dir / t) for t in tools if not os.access(self.bin_dir / t, os.X_OK)]
        if not client_only and not self.kwok_stages.is_file():
            out.append(str(self.kwok_stages))
        return out


@dataclass
class ApiResponse:
    """An API server reply: HTTP status and the decoded JSON body (``{}`` if not JSON)."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)
    text: str = ""


@dataclass(frozen=True)
class Connection:
    """How to reach one API server: the ``kubernetes`` client configured from ``kubeconfig`` at
    ``context`` (kubectl and helm use the same file and context), and ``cache_dir`` for caches."""

    kubeconfig: Path
    context: str
    api_client: k8s.ApiClient
    cache_dir: Path

    @classmethod
    def from_kubeconfig(
        cls, kubeconfig: Path, cache_dir: Path, context: str | None = None
    ) -> Connection:
        """Load ``kubeconfig`` with the ``kubernetes`` client at its current context or the one
        named: client certificates, bearer tokens, exec plugins, CA data or files, whatever
        that client supports. A bad file or an unknown context raises :class:`ClusterError`."""
        try:
            contexts, current = k8s_config.list_kube_config_contexts(str(kubeconfig))
            name = context or str(current["name"])
            if name not in {c["name"] for c in contexts}:
                raise ClusterError(f"kubeconfig {kubeconfig}: no context named {name!r}")
            api_client = k8s_config.new_client_from_config(str(kubeconfig), context=name)
        except (k8s_config.ConfigException, OSError, KeyError, TypeError) as err:
            raise ClusterError(f"kubeconfig {kubeconfig}: {err}") from err
        return cls(kubeconfig, name, api_client, cache_dir)

    @property
    def server(self) -> str:
        return str(self.api_client.configuration.host)


class ClusterClient:
    """kubectl, helm and the ``kubernetes`` client against one API server (module docstring).

    API access, from most to least typed: :attr:`core` (``CoreV1Api``; any other typed API
    class takes :attr:`api_client`), :meth:`resource` (a dynamic-client resource of any kind,
    custom ones included: ``create``/``get``/``patch``/``delete``), and :meth:`api` (one raw
    request whose non-2xx reply is returned, not raised, for tests that inspect a refusal).
    """

    def __init__(self, binaries: Binaries, *, wait_timeout: float = 90.0) -> None:
        self.binaries = binaries
        self.wait_timeout = wait_timeout
        self._conn: Connection | None = None
        self._dynamic: DynamicClient | None = None
        self._owned_cache: Path | None = None

    @classmethod
    def from_kubeconfig(
        cls, binaries: Binaries, kubeconfig: Path, context: str | None = None
    ) -> ClusterClient:
        """A client for an existing cluster (current or named context of ``kubeconfig``), e.g.
        kind's. Call :meth:`close` when done."""
        cache = Path(tempfile.mkdtemp(prefix="modelfleet-client-"))
        try:
            conn = Connection.from_kubeconfig(kubeconfig, cache, context)
        except ClusterError:
            shutil.rmtree(cache, ignore_errors=True)
            raise
        client = cls(binaries)
        client._owned_cache = cache
        client.connect(conn)
        return client

    def connect(self, conn: Connection | None) -> None:
        """Point the client at a server (``None``: disconnected); closes the previous one."""
        if self._conn is not None and self._conn is not conn:
            self._conn.api_client.close()
        self._conn = conn
        self._dynamic = None

    def close(self) -> None:
        """Disconnect and remove the private cache of a :meth:`from_kubeconfig` client."""
        self.connect(None)
        if self._owned_cache is not None:
            shutil.rmtree(self._owned_cache, ignore_errors=True)
            self._owned_cache = None

    @property
    def connection(self) -> Connection:
        if self._conn is None:
            raise ClusterError("not connected to a cluster (not started, or already stopped)")
        return self._conn

    @property
    def server(self) -> str:
        return self.connection.server

    @property
    def kubeconfig(self) -> Path:
        return self.connection.kubeconfig

    @property
    def api_client(self) -> k8s.ApiClient:
        """The configured ``kubernetes.client.ApiClient``, for any typed API class."""
        return self.connection.api_client

    @property
    def core(self) -> k8s.CoreV1Api:
        """The core/v1 API: namespaces, pods, services, nodes, ..."""
        return k8s.CoreV1Api(self.api_client)

    @property
    def dynamic(self) -> DynamicClient:
        """The dynamic client, created on first use (it runs API discovery); its discovery
        cache lives in this client's cache directory."""
        if self._dynamic is None:
            cache = self.connection.cache_dir / "client-cache" / "discovery.json"
            cache.parent.mkdir(parents=True, exist_ok=True)
            self._dynamic = DynamicClient(self.api_client, cache_file=str(cache))
        return self._dynamic

    def resource(self, api_version: str, kind: str) -> Resource:
        """The dynamic-client resource serving ``kind`` in ``api_version``. Discovery is
        refreshed once on a miss, so CRDs installed after the first lookup are found."""
        try:
            found: Resource = self.dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError as err:
            raise ClusterError(f"the API server serves no kind {kind} in {api_version}") from err
        return found

    def _tool_env(self) -> dict[str, str]:
        env = dict(os.environ)
        cache = self.connection.cache_dir / "client-cache"
        env |= {
            "KUBECONFIG": str(self.kubeconfig),
            "KUBECACHEDIR": str(cache / "kube"),
            "HELM_CACHE_HOME": str(cache / "helm-cache"),
            "HELM_CONFIG_HOME": str(cache / "helm-config"),
            "HELM_DATA_HOME": str(cache / "helm-data"),
        }
        return env

    def _run_tool(
        self, argv: list[str], input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env=self._tool_env(),
            check=False,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise KubectlError(argv, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; raise :class:`KubectlError` on failure if ``check``."""
        conn = self.connection
        argv = [str(self.binaries.kubectl), f"--kubeconfig={conn.kubeconfig}",
                f"--context={conn.context}", *args]  # fmt: skip
        return self._run_tool(argv, input, check, timeout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against this cluster (helm's cache and config are private to the client)."""
        conn = self.connection
        argv = [str(self.binaries.helm), f"--kubeconfig={conn.kubeconfig}",
                f"--kube-context={conn.context}", *args]  # fmt: skip
        return self._run_tool(argv, input, check, timeout)

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        accept: str = "application/json",
        timeout: float = 30,
    ) -> ApiResponse:
        """One request to the API server through the ``kubernetes`` client's transport (its
        TLS and credentials). Non-2xx statuses are returned, not raised, so callers can inspect
        a refusal's ``Status`` object (``details.causes[].field``); an unreachable server
        raises :class:`ClusterError`. ``accept`` may ask for
        another representation, e.g. the server-side ``Table`` kubectl prints:
        ``application/json;as=Table;v=v1;g=meta.k8s.io``."""
        client = self.api_client
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = "application/json"
        method, url, headers, payload, _ = client.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            resp = client.call_api(
                method, url, header_params=headers, body=payload, _request_timeout=timeout
            )
        except urllib3.exceptions.HTTPError as err:  # refused, reset, timed out, TLS
            raise ClusterError(f"{method} {self.server}{path}: {err}") from err
        text = resp.read().decode(errors="replace")
        try:
            decoded = json.loads(text)
        except ValueError:
            decoded = None
        return ApiResponse(resp.status, decoded if isinstance(decoded, dict) else {}, text)

    def resource_path(self, api_version: str, kind: str, namespace: str | None = None) -> str:
        """The collection URL path of ``kind`` in ``api_version`` (a namespaced kind's in
        ``namespace``, default ``default``), for :meth:`api`."""
        res = self.resource(api_version, kind)
        path: str = res.path(namespace=(namespace or "default") if res.namespaced else None)
        return path

    def create_namespace(self, name: str) -> None:
        """Create a namespace and wait until its ``default`` service account exists (pods are
        refused before that, and the first pod of a test must not race the controller)."""
        core = self.core
        try:
            core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
        except ApiException as err:
            raise ClusterError(f"create namespace {name}: HTTP {err.status}: {err.body}") from err
        deadline = time.monotonic() + self.wait_timeout
        delay = 0.02
        while True:
            try:
                core.read_namespaced_service_account("default", name)
                return
            except ApiException as err:
                if err.status != 404:
                    raise ClusterError(f"namespace {name}: HTTP {err.status}: {err.body}") from err
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"namespace {name}: no default service account after {self.wait_timeout} s"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def delete_namespace(self, name: str) -> None:
        """Start deleting a namespace (and everything in it); does not wait for it to go."""
        try:
            self.core.delete_namespace(name)
        except ApiException as err:
            if err.status != 404:
                raise ClusterError(
                    f"delete namespace {name}: HTTP {err.status}: {err.body}"
                ) from err
