"""A real Kubernetes control plane on loopback, for tests and local development.

:class:`Cluster` runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler (all from the
one ``controlplane`` binary that ``e2e/controlplane/build.sh`` builds from the upstream Go
modules) and kwok, which keeps simulated GPU nodes Ready and runs the pods bound to them. Pods are
scheduled by the real scheduler, CRDs and their CEL rules are evaluated by the real API server,
and the real garbage collector follows owner references; only kubelets and containers are fake.

Start (``Cluster.start`` / ``with Cluster(...)``), in a fresh temp dir, every port a free
loopback port:

1. certificates and an admin kubeconfig (:mod:`modelfleet.testing.cluster_pki`);
2. etcd, then kube-apiserver; wait for ``/readyz`` to answer ``ok``;
3. controller-manager, scheduler and kwok together; wait for their ``/healthz``;
4. the nodes (:mod:`modelfleet.testing.cluster_nodes`); wait until kwok reports them Ready and
   the ``default`` service account exists, so the first pod a test creates is admitted.

Stop runs in reverse order: kwok, scheduler and controller-manager, then the API server, then etcd
(an API server whose etcd is gone keeps retrying it instead of exiting). Each component runs in
its own process group; it gets SIGTERM, a bounded wait, then SIGKILL of the whole group, so
``stop`` never leaves a process behind. Children also carry ``PR_SET_PDEATHSIG=SIGKILL``: if the
Python process that started them dies without cleaning up, the kernel kills them. (That signal
is tied to the *thread* that started them: start and stop a cluster from the same long-lived
thread.)

``modelfleet dev-cluster`` (:mod:`modelfleet.testing.cluster_cli`) runs one in the background
for local development.

Binaries are found in ``$MODELFLEET_CONTROLPLANE_BIN`` if set, else in the build cache
(``${MODELFLEET_CACHE:-~/.cache/modelfleet}/controlplane/<key>/bin``) that ``build.sh``
reports; :func:`locate_binaries` can run the build (a cold build compiles Kubernetes from Go
modules; ``e2e/controlplane/README.md`` says how long that takes).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from modelfleet.testing.cluster_client import (
    ApiResponse,
    Binaries,
    ClusterClient,
    ClusterError,
    Connection,
    KubectlError,
)
from modelfleet.testing.cluster_nodes import DEFAULT_NODES, NodeSpec
from modelfleet.testing.cluster_pki import make_pki, write_kubeconfig

__all__ = [
    "DEFAULT_NODES",
    "ApiResponse",
    "Binaries",
    "Cluster",
    "ClusterClient",
    "ClusterError",
    "KubectlError",
    "NodeSpec",
    "cache_root",
    "locate_binaries",
]

#: Overrides the cache root (default ``~/.cache/modelfleet``).
ENV_CACHE = "MODELFLEET_CACHE"
#: A directory holding ``controlplane``, ``kubectl``, ``kwok``, ``helm`` (skips build.sh).
ENV_BIN = "MODELFLEET_CONTROLPLANE_BIN"
#: Run the cluster tests against this existing cluster (e.g. kind) instead of starting one.
ENV_TEST_KUBECONFIG = "MODELFLEET_TEST_KUBECONFIG"

#: Component names, in start order. Also the names of their log files.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

_PR_SET_PDEATHSIG = 1


def cache_root() -> Path:
    """``$MODELFLEET_CACHE`` or ``~/.cache/modelfleet``."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "modelfleet"


# --------------------------------------------------------------------------------------------
# binaries


def build_script() -> Path | None:
    """``e2e/controlplane/build.sh`` of the checkout this package runs from, if any."""
    script = Path(__file__).resolve().parents[2] / "e2e" / "controlplane" / "build.sh"
    return script if script.is_file() else None


def locate_binaries(build: bool = False, client_only: bool = False) -> Binaries:
    """Find the control-plane binaries; with ``build=True`` build them if they are missing.

    Order: ``$MODELFLEET_CONTROLPLANE_BIN``; else ``build.sh --check`` (which names the cache
    directory for the pinned versions); else, if allowed, ``build.sh`` (its progress goes to
    stderr). Raises :class:`ClusterError` saying what to run when nothing usable is found.
    ``client_only``: kubectl and helm suffice (``$MODELFLEET_CONTROLPLANE_BIN`` may hold just
    those, e.g. links to a system kubectl and helm when testing a kind cluster).
    """
    if env := os.environ.get(ENV_BIN):
        found = Binaries(Path(env).expanduser())
        if missing := found.missing(client_only):
            raise ClusterError(f"${ENV_BIN}={env} lacks: {', '.join(missing)}")
        return found
    script = build_script()
    if script is None:
        raise ClusterError(
            f"no control-plane binaries: set ${ENV_BIN} to a directory holding "
            "controlplane, kubectl, kwok and helm, or run from a modelfleet checkout "
            "(e2e/controlplane/build.sh)"
        )
    check = subprocess.run(
        ["bash", str(script), "--check"], capture_output=True, text=True, check=False, timeout=60
    )
    if check.returncode == 0:
        return Binaries(Path(check.stdout.strip().splitlines()[-1]))
    if check.returncode != 3:
        raise ClusterError(f"{script} --check failed ({check.returncode}): {check.stderr.strip()}")
    if not build:
        raise ClusterError(
            f"control-plane binaries are not built (expected in {check.stdout.strip()}); "
            f"run `bash {script}` (12-25 minutes on 2 cores the first time, depending on load)"
        )
    proc = subprocess.run(
        ["bash", str(script)], stdout=subprocess.PIPE, text=True, check=False, timeout=7200
    )
    if proc.returncode != 0:
        raise ClusterError(
            f"`bash {script}` failed with exit code {proc.returncode}; see its output"
        )
    found = Binaries(Path(proc.stdout.strip().splitlines()[-1]))
    if missing := found.missing():
        raise ClusterError(f"{script} finished but these are missing: {', '.join(missing)}")
    return found


# --------------------------------------------------------------------------------------------
# processes


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together so none repeats)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with its parent (Linux), or None elsewhere.

    libc is loaded here, in the parent: loading a library between fork and exec can deadlock.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return preexec


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


def _signal_group(proc: _Proc, sig: signal.Signals) -> None:
    # Each component leads its own session, so its pgid is its pid; the group may outlive the
    # leader only if a component forked, which is exactly what the group kill is for.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.popen.pid, sig)


def _stop_all(procs: Sequence[_Proc], grace: float) -> None:
    """SIGTERM each group, wait up to ``grace`` s for all of them together, SIGKILL the rest."""
    for p in procs:
        if p.alive():
            _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        _signal_group(p, signal.SIGKILL)  # also reaps stragglers in the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.popen.wait(timeout=10)


# --------------------------------------------------------------------------------------------
# the cluster


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int


class Cluster(ClusterClient):
    """A running control plane with simulated nodes; see the module docstring.

    ``log_dir`` keeps the component logs after ``stop`` (otherwise they go with the temp dir).
    ``pod_cidr`` is the range kwok hands pod IPs out of (kwok's default ``10.0.0.0/24``); a
    loopback range such as ``127.1.0.0/16`` makes every pod's IP reachable on this machine
    (:mod:`modelfleet.testing.kwok_engines` serves an engine simulator on each). The
    EndpointSlice controller refuses loopback addresses, so Services of such pods get no
    endpoints (it logs ``FailedToUpdateEndpointSlices``); discovery by pods is unaffected.
    ``stop_grace`` bounds each teardown phase before SIGKILL; ``start_timeout`` bounds each wait
    during start.
    """

    def __init__(
        self,
        binaries: Binaries,
        nodes: Sequence[NodeSpec] = DEFAULT_NODES,
        *,
        log_dir: Path | None = None,
        stop_grace: float = 10.0,
        start_timeout: float = 90.0,
        pod_cidr: str | None = None,
    ) -> None:
        if missing := binaries.missing():
            raise ClusterError(f"control-plane binaries missing: {', '.join(missing)}")
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise ClusterError(f"node names must be unique, got {names}")
        super().__init__(binaries, wait_timeout=start_timeout)
        self.nodes = tuple(nodes)
        self.stop_grace = stop_grace
        self.start_timeout = start_timeout
        self.pod_cidr = pod_cidr
        self._log_dir = log_dir
        self._procs: list[_Proc] = []
        self._workdir: Path | None = None
        self._ports: Ports | None = None

    # -- properties ---------------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise ClusterError("cluster is not started")
        return self._workdir

    @property
    def ports(self) -> Ports:
        if self._ports is None:
            raise ClusterError("cluster is not started")
        return self._ports

    @property
    def log_dir(self) -> Path:
        return self._log_dir or self.workdir / "logs"

    def pids(self) -> dict[str, int]:
        """Component name → pid of the processes still running."""
        return {p.name: p.popen.pid for p in self._procs if p.alive()}

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start every component and the nodes; on any failure (or Ctrl-C) stop what started.

        Ports are picked free and then released, so another process can take one before the
        component binds it; a start that fails with "address already in use" is retried with
        new ports (three attempts in all).
        """
        if self._procs:
            raise ClusterError("cluster already started")
        for attempt in range(3):
            try:
                self._start()
                return
            except ClusterError as err:
                self.stop()
                if "address already in use" not in str(err) or attempt == 2:
                    raise
            except BaseException:
                self.stop()
                raise

    def _start(self) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix="modelfleet-cluster-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._ports = Ports(*_free_ports(6))
        pki = make_pki(self.workdir / "pki")
        server, kubeconfig = (
            f"https://127.0.0.1:{self._ports.apiserver}",
            self.workdir / "kubeconfig",
        )
        write_kubeconfig(kubeconfig, server, pki)
        self.connect(Connection.from_kubeconfig(kubeconfig, self.workdir))
        preexec = _pdeathsig_preexec()
        cp, ports, kc = str(self.binaries.controlplane), self.ports, str(self.kubeconfig)

        self._spawn(
            "etcd",
            [cp, "etcd", f"--data-dir={self.workdir / 'etcd'}",
             f"--listen-client-urls=http://127.0.0.1:{ports.etcd_client}",
             f"--listen-peer-urls=http://127.0.0.1:{ports.etcd_peer}",
             "--unsafe-no-fsync"],
            preexec,
        )  # fmt: skip
        self._wait("etcd ready", lambda: "etcd: ready" in self._proc("etcd").tail(50))
        self._spawn(
            "kube-apiserver",
            [cp, "kube-apiserver",
             f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
             f"--secure-port={ports.apiserver}",
             "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
             f"--cert-dir={self.workdir / 'apiserver-certs'}",
             f"--tls-cert-file={pki.apiserver_cert}", f"--tls-private-key-file={pki.apiserver_key}",
             f"--client-ca-file={pki.ca_cert}",
             f"--service-account-key-file={pki.sa_pub}",
             f"--service-account-signing-key-file={pki.sa_key}",
             "--service-account-issuer=https://kubernetes.default.svc",
             "--service-cluster-ip-range=10.96.0.0/16",
             "--authorization-mode=Node,RBAC",
             "--profiling=false"],
            preexec,
        )  # fmt: skip
        self._wait("kube-apiserver /readyz", self._apiserver_ready)
        self._spawn(
            "kube-controller-manager",
            [cp, "kube-controller-manager",
             f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
             f"--authorization-kubeconfig={kc}",
             f"--service-account-private-key-file={pki.sa_key}", f"--root-ca-file={pki.ca_cert}",
             f"--cluster-signing-cert-file={pki.ca_cert}",
             f"--cluster-signing-key-file={pki.ca_key}",
             "--leader-elect=false", "--bind-address=127.0.0.1",
             f"--secure-port={ports.controller_manager}",
             f"--cert-dir={self.workdir / 'kcm-certs'}",
             "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route",
             "--profiling=false"],
            preexec,
        )  # fmt: skip
        self._spawn(
            "kube-scheduler",
            [cp, "kube-scheduler",
             f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
             f"--authorization-kubeconfig={kc}",
             "--leader-elect=false", "--bind-address=127.0.0.1",
             f"--secure-port={ports.scheduler}", f"--cert-dir={self.workdir / 'scheduler-certs'}",
             "--profiling=false"],
            preexec,
        )  # fmt: skip
        self._spawn(
            "kwok",
            [str(self.binaries.kwok), f"--kubeconfig={kc}",
             "--manage-all-nodes=false",
             "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
             f"--server-address=127.0.0.1:{ports.kwok}",
             f"--config={self.binaries.kwok_stages}",
             *([f"--cidr={self.pod_cidr}"] if self.pod_cidr else [])],
            preexec,
        )  # fmt: skip
        self._wait(
            "kube-controller-manager /healthz", lambda: self._healthz(ports.controller_manager)
        )
        self._wait("kube-scheduler /healthz", lambda: self._healthz(ports.scheduler))
        self.kubectl("apply", "-f", "-", input=_dump_all(n.manifest() for n in self.nodes))
        timeout = f"--timeout={int(self.start_timeout)}s"
        self.kubectl("wait", "--for=condition=Ready", "node", "--all", timeout)
        self._wait(
            "service account default/default",
            lambda: (
                self.kubectl("get", "sa", "default", "-n", "default", check=False).returncode == 0
            ),
        )

    def stop(self) -> None:
        """Stop every component in reverse start order; idempotent; always removes the temp dir."""
        by_name = {p.name: p for p in self._procs}
        phases = [
            ("kwok", "kube-scheduler", "kube-controller-manager"),
            ("kube-apiserver",),
            ("etcd",),
        ]
        for phase in phases:
            _stop_all([by_name[n] for n in phase if n in by_name], self.stop_grace)
        self._procs.clear()
        self.connect(None)
        if self._workdir is not None:  # without a log_dir the logs go with it
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def _spawn(self, name: str, argv: list[str], preexec: Callable[[], None] | None) -> None:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=preexec,
            )
        self._procs.append(_Proc(name, popen, log))

    def _proc(self, name: str) -> _Proc:
        return next(p for p in self._procs if p.name == name)

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        """Poll ``ready`` until true; fail early, with the log tail, if a component exited."""
        deadline = time.monotonic() + self.start_timeout
        delay = 0.05
        while True:
            for p in self._procs:
                if not p.alive():
                    raise ClusterError(
                        f"{p.name} exited with code {p.popen.returncode} while waiting for "
                        f"{what}; last lines of {p.log}:\n{p.tail()}"
                    )
            if ready():
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {p.name}:\n{p.tail(10)}" for p in self._procs)
                raise ClusterError(
                    f"timed out after {self.start_timeout:.0f} s waiting for {what}\n{tails}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _apiserver_ready(self) -> bool:
        try:
            resp = self.api("GET", "/readyz", timeout=5)
        except (OSError, ClusterError):
            return False
        return resp.status == 200 and resp.text.strip() == "ok"

    @staticmethod
    def _healthz(port: int) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # self-signed serving cert of a loopback-only component
        try:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=5
            ) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False


def _dump_all(docs: Iterable[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False)
