"""Talking to a Kubernetes API server from tests: kubectl, helm and raw API requests.

:class:`ClusterClient` is what a test needs from a cluster, whoever runs it: the local control
plane (:class:`modelfleet.testing.cluster.Cluster` is a client that also owns its processes) or an
existing cluster reached through a kubeconfig (:meth:`ClusterClient.from_kubeconfig`, used to run
the same suite on kind). kubectl and helm are the binaries of :class:`Binaries`, never whatever
happens to be on PATH, and their caches live in a private directory so runs do not share state.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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
    """How to reach one API server: its URL, TLS context, optional bearer token, and the
    kubeconfig kubectl/helm use. ``cache_dir`` holds their caches."""

    server: str
    kubeconfig: Path
    ssl_context: ssl.SSLContext
    cache_dir: Path
    token: str = ""


def _pem(entry: dict[str, Any], data_key: str, file_key: str, out: Path) -> Path | None:
    """A kubeconfig credential as a file: ``*-data`` (base64) is written to ``out``."""
    if data := entry.get(data_key):
        out.write_bytes(base64.b64decode(data))
        out.chmod(0o600)
        return out
    if path := entry.get(file_key):
        return Path(path).expanduser()
    return None


class ClusterClient:
    """kubectl, helm and raw requests against one API server (see the module docstring)."""

    def __init__(self, binaries: Binaries, *, wait_timeout: float = 90.0) -> None:
        self.binaries = binaries
        self.wait_timeout = wait_timeout
        self._conn: Connection | None = None
        self._owned_cache: Path | None = None

    @classmethod
    def from_kubeconfig(
        cls, binaries: Binaries, kubeconfig: Path, context: str | None = None
    ) -> ClusterClient:
        """A client for an existing cluster (current or named context of ``kubeconfig``).

        Supports client certificates, bearer tokens and CA data or files, inline or by path —
        what kind, kubeadm and the local control plane write. Call :meth:`close` when done.
        """
        try:
            config = yaml.safe_load(kubeconfig.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ClusterError(f"kubeconfig {kubeconfig}: {err}") from err
        name = context or config.get("current-context")

        def pick(section: str, key: str) -> dict[str, Any]:
            for item in config.get(section) or []:
                if item.get("name") == key:
                    return dict(item.get(section.rstrip("s")) or {})
            raise ClusterError(f"kubeconfig {kubeconfig}: no {section[:-1]} named {key!r}")

        ctx = pick("contexts", str(name))
        cluster, user = pick("clusters", ctx["cluster"]), pick("users", ctx["user"])
        client = cls(binaries)
        cache = Path(tempfile.mkdtemp(prefix="modelfleet-client-"))
        client._owned_cache = cache
        ca = _pem(cluster, "certificate-authority-data", "certificate-authority", cache / "ca.crt")
        if cluster.get("insecure-skip-tls-verify"):
            tls = ssl.create_default_context()
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        else:
            tls = ssl.create_default_context(cafile=str(ca) if ca else None)
        cert = _pem(user, "client-certificate-data", "client-certificate", cache / "client.crt")
        key = _pem(user, "client-key-data", "client-key", cache / "client.key")
        if cert and key:
            tls.load_cert_chain(str(cert), str(key))
        # kubectl gets its own copy pinned to the chosen context.
        own = cache / "kubeconfig"
        own.write_text(yaml.safe_dump({**config, "current-context": name}, sort_keys=False))
        own.chmod(0o600)
        client.connect(
            Connection(str(cluster["server"]), own, tls, cache, token=str(user.get("token", "")))
        )
        return client

    def connect(self, conn: Connection | None) -> None:
        """Point the client at a server (``None``: disconnected)."""
        self._conn = conn

    def close(self) -> None:
        """Disconnect and remove the private cache of a :meth:`from_kubeconfig` client."""
        self._conn = None
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
        argv = [str(self.binaries.kubectl), f"--kubeconfig={self.kubeconfig}", *args]
        return self._run_tool(argv, input, check, timeout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against this cluster (helm's cache and config are private to the client)."""
        argv = [str(self.binaries.helm), f"--kubeconfig={self.kubeconfig}", *args]
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
        """One request to the API server. Non-2xx statuses are returned, not raised, so callers
        can inspect a refusal's ``Status`` object (``details.causes[].field``). ``accept`` may
        ask for another representation, e.g. the server-side ``Table`` kubectl prints:
        ``application/json;as=Table;v=v1;g=meta.k8s.io``."""
        conn = self.connection
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(conn.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        req.add_header("Accept", accept)
        if conn.token:
            req.add_header("Authorization", f"Bearer {conn.token}")
        try:
            with urllib.request.urlopen(req, context=conn.ssl_context, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        text = raw.decode(errors="replace")
        try:
            decoded = json.loads(text)
        except ValueError:
            decoded = None
        return ApiResponse(status, decoded if isinstance(decoded, dict) else {}, text)

    def resource_path(self, api_version: str, kind: str, namespace: str | None = None) -> str:
        """The collection URL path for ``kind`` in ``api_version`` (via API discovery)."""
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        resp = self.api("GET", base)
        if resp.status != 200:
            raise ClusterError(
                f"discovery of {api_version} failed ({resp.status}): {resp.text[:200]}"
            )
        for res in resp.body.get("resources", []):
            if res.get("kind") == kind and "/" not in res.get("name", "/"):
                if res.get("namespaced"):
                    return f"{base}/namespaces/{namespace or 'default'}/{res['name']}"
                return f"{base}/{res['name']}"
        raise ClusterError(f"the API server serves no kind {kind} in {api_version}")

    def create_namespace(self, name: str) -> None:
        """Create a namespace and wait until its ``default`` service account exists (pods are
        refused before that, and the first pod of a test must not race the controller).
        Raw API calls rather than kubectl: tests create one per test, so this is hot."""
        created = self.api("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
        if created.status != 201:
            raise ClusterError(
                f"create namespace {name}: HTTP {created.status}: {created.text[:300]}"
            )
        deadline = time.monotonic() + self.wait_timeout
        delay = 0.02
        while self.api("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default").status != 200:
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"namespace {name}: no default service account after {self.wait_timeout} s"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def delete_namespace(self, name: str) -> None:
        """Start deleting a namespace (and everything in it); does not wait for it to go."""
        resp = self.api("DELETE", f"/api/v1/namespaces/{name}")
        if resp.status not in (200, 202, 404):
            raise ClusterError(f"delete namespace {name}: HTTP {resp.status}: {resp.text[:300]}")
