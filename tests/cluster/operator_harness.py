"""Running the real operator against the test control plane, in-process or as a process.

:class:`InProcessOperator` builds the operator exactly as ``modelfleet operator`` does
(:func:`modelfleet.operator.runtime.build_operator`) and runs kopf in a thread
(:class:`~modelfleet.operator.runtime.OperatorThread`), watching one namespace, with a short
resync period. :class:`OperatorProcess` runs the ``modelfleet operator`` command itself, for
tests that kill it. Both are stopped by the fixtures that start them, and the fixtures fail
the test if a thread or a process outlives it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import kubernetes.config as k8s_config

from modelfleet.operator.kube import Kube
from modelfleet.operator.reconcile import OperatorConfig
from modelfleet.operator.runtime import Operator, build_operator
from modelfleet.testing.cluster import ClusterClient

T = TypeVar("T")


def wait_until(
    check: Callable[[], T | None], what: str, timeout: float = 60.0, interval: float = 0.1
) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except AssertionError as err:
            last = err
        if last and not isinstance(last, AssertionError):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last}")
        time.sleep(interval)


class InProcessOperator:
    """The operator in a kopf thread of this process (module docstring)."""

    def __init__(
        self,
        cluster: ClusterClient,
        namespace: str,
        *,
        scheduler_address: str = "",
        scheduler_token: str = "",
        resync_s: float = 1.0,
    ) -> None:
        client = k8s_config.new_client_from_config(str(cluster.kubeconfig))
        self.op: Operator = build_operator(
            client,
            config=OperatorConfig(resync_s=resync_s, stats_window_s=60, namespaces=(namespace,)),
            scheduler_address=scheduler_address,
            scheduler_token=scheduler_token,
        )
        self.thread = self.op.thread([namespace])

    def start(self) -> InProcessOperator:
        self.thread.start()
        return self

    def stop(self) -> None:
        try:
            self.thread.stop()
        finally:
            self.op.close()


class OperatorProcess:
    """``modelfleet operator`` as a child process (stopped by pid, never by name)."""

    def __init__(self, cluster: ClusterClient, namespace: str, log: Path, *extra: str) -> None:
        """``extra``: more ``modelfleet operator`` arguments (e.g. the scheduler's address)."""
        exe = Path(sys.executable).parent / "modelfleet"
        self.argv = [
            str(exe), "operator", "--kubeconfig", str(cluster.kubeconfig), "-n", namespace,
            "--resync-seconds", "1", "--metrics-port", "0", "--health-port", "0", *extra,
        ]  # fmt: skip
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crash or an OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.returncode)


def kube(cluster: ClusterClient) -> Kube:
    return Kube(cluster.api_client)


def get(cluster: ClusterClient, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
    obj = kube(cluster).get(kind, namespace, name)
    assert obj is not None, f"{kind} {namespace}/{name} does not exist"
    return obj


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def condition_is(
    cluster: ClusterClient, kind: str, namespace: str | None, name: str, type_: str, status: str,
    reason: str | None = None,
) -> dict[str, Any] | None:  # fmt: skip
    obj = kube(cluster).get(kind, namespace, name)
    if obj is None:
        return None
    c = conditions(obj).get(type_)
    if c and c["status"] == status and (reason is None or c["reason"] == reason):
        return c
    return None


def events(
    cluster: ClusterClient, namespace: str, name: str, kind: str = "ModelPool"
) -> list[dict[str, Any]]:
    out = cluster.kubectl(
        "get", "events", "-n", namespace, "-o", "json",
        f"--field-selector=involvedObject.name={name},involvedObject.kind={kind}",
    ).stdout  # fmt: skip
    return list(json.loads(out)["items"])


def thread_names() -> set[str]:
    return {t.name for t in threading.enumerate()}
