"""Running the operator: the composition root's parts, kopf in a thread, leader election.

:func:`build_operator` makes everything one process needs from a kubeconfig (or the
in-cluster service account): the ``kubernetes`` client, :class:`~.kube.Kube`, the scheduler
client, metrics, the :class:`~.reconcile.Reconciler` and the kopf registry.

:class:`OperatorThread` runs kopf in a thread with its own event loop and stops it on demand
(``kopf.operator`` with ready and stop flags): the CLI uses it under leader election, the
tests to run the real operator in-process against the real control plane.

:class:`LeaderElector` implements leader election on a ``coordination.k8s.io/v1`` Lease, the
way Kubernetes controllers do: a candidate takes the Lease when it is free or its holder has
not renewed it for ``lease_s``, renews it every ``renew_s``, and a leader that cannot renew
within ``lease_s`` stops (the CLI then exits non-zero and the pod restarts as a candidate).
Only the leader runs handlers, so two replicas never reconcile at once; the decision is the
pure :func:`~.decisions.lease_action`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import kopf
import kubernetes.client as k8s
import kubernetes.config as k8s_config

from modelfleet.operator.control_client import SchedulerClient
from modelfleet.operator.decisions import lease_action
from modelfleet.operator.handlers import build_registry, connection_info
from modelfleet.operator.kube import ApiError, Kube
from modelfleet.operator.metrics import OperatorMetrics
from modelfleet.operator.reconcile import OperatorConfig, Reconciler

log = logging.getLogger(__name__)


def api_client(kubeconfig: Path | None = None, context: str | None = None) -> k8s.ApiClient:
    """A ``kubernetes`` client from ``kubeconfig`` (its current or named context), else from
    the in-cluster service account, else from ``$KUBECONFIG`` / ``~/.kube/config``."""
    client: k8s.ApiClient
    if kubeconfig is not None:
        client = k8s_config.new_client_from_config(str(kubeconfig), context=context)
        return client
    try:
        config = k8s.Configuration()
        k8s_config.load_incluster_config(client_configuration=config)
        return k8s.ApiClient(config)
    except k8s_config.ConfigException:
        client = k8s_config.new_client_from_config(context=context)
        return client


@dataclass
class Operator:
    """Everything one operator process runs (see :func:`build_operator`)."""

    client: k8s.ApiClient
    kube: Kube
    scheduler: SchedulerClient | None
    metrics: OperatorMetrics
    reconciler: Reconciler
    registry: kopf.OperatorRegistry
    executor: ThreadPoolExecutor
    #: The resync's own threads: a resync of every pool must not queue kopf's handlers (a
    #: RoutingPolicy edit, a new pool) behind hundreds of routine passes.
    resync_executor: ThreadPoolExecutor

    def thread(
        self, namespaces: Sequence[str] = (), *, liveness_endpoint: str | None = None
    ) -> OperatorThread:
        """kopf and the resync loop for this operator (not started)."""
        return OperatorThread(
            self.registry,
            namespaces,
            liveness_endpoint=liveness_endpoint,
            resync=lambda: self.reconciler.resync(self.resync_executor),
            resync_s=self.reconciler.config.resync_s,
        )

    def close(self) -> None:
        """Release everything (after kopf has stopped)."""
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.resync_executor.shutdown(wait=True, cancel_futures=True)
        self.reconciler.close()
        if self.scheduler is not None:
            self.scheduler.close()
        self.metrics.close()
        self.client.close()


def build_operator(
    client: k8s.ApiClient,
    *,
    config: OperatorConfig | None = None,
    scheduler_address: str = "",
    scheduler_token: str = "",
    metrics: OperatorMetrics | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    handler_threads: int = 16,
) -> Operator:
    """The composition root's objects for one process."""
    kube = Kube(client)
    scheduler = SchedulerClient(scheduler_address, scheduler_token) if scheduler_address else None
    metrics = metrics or OperatorMetrics()
    reconciler = Reconciler(kube, scheduler, metrics, config, clock=clock)
    executor = ThreadPoolExecutor(
        max_workers=handler_threads, thread_name_prefix="modelfleet-handler"
    )
    resync_executor = ThreadPoolExecutor(
        max_workers=max(1, handler_threads // 4), thread_name_prefix="modelfleet-resync"
    )
    registry = build_registry(reconciler, connection_info(client.configuration), executor)
    return Operator(
        client, kube, scheduler, metrics, reconciler, registry, executor, resync_executor
    )


class OperatorThread:
    """kopf for ``registry`` in a thread of its own, and the resync loop (module docstring).

    ``namespaces`` empty = cluster-wide. :meth:`start` returns once kopf is watching and the
    loop runs ``resync()`` every ``resync_s`` seconds in a second thread; :meth:`stop` stops
    both and joins them.
    """

    def __init__(
        self,
        registry: kopf.OperatorRegistry,
        namespaces: Sequence[str] = (),
        *,
        liveness_endpoint: str | None = None,
        resync: Callable[[], object] | None = None,
        resync_s: float = 15.0,
        name: str = "modelfleet-operator",
    ) -> None:
        self.registry = registry
        self.namespaces = tuple(namespaces)
        self.liveness_endpoint = liveness_endpoint
        self.resync = resync
        self.resync_s = resync_s
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._resync_thread = threading.Thread(
            target=self._resync_loop, name=f"{name}-resync", daemon=True
        )

    def _resync_loop(self) -> None:
        assert self.resync is not None
        while not self._stop.wait(self.resync_s):
            try:
                self.resync()
            except Exception:  # the API may be briefly unreachable; try again next period
                log.exception("resync failed")

    def _run(self) -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=self.registry,
                    standalone=True,
                    clusterwide=not self.namespaces,
                    namespaces=list(self.namespaces),
                    ready_flag=self._ready,
                    stop_flag=self._stop,
                    liveness_endpoint=self.liveness_endpoint,
                )
            )
        except BaseException as err:  # surfaced by start()/stop()/join()
            self._error = err
        finally:
            self._ready.set()

    def start(self, timeout: float = 60.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"kopf did not become ready within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"kopf failed to start: {self._error!r}") from self._error
        if self.resync is not None:
            self._resync_thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._resync_thread.is_alive():
            self._resync_thread.join(timeout)
        self._thread.join(timeout)
        if self._thread.is_alive() or self._resync_thread.is_alive():
            raise RuntimeError(f"the operator did not stop within {timeout} s")

    def join(self) -> None:
        """Wait until kopf exits (a stop, a signal, or a failure, which is re-raised)."""
        while self._thread.is_alive():
            self._thread.join(0.5)
        if self._error is not None and not isinstance(self._error, asyncio.CancelledError):
            raise self._error

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def _lease_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


class LeaderElector:
    """Leader election on a Lease (module docstring). ``clock`` gives epoch seconds."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_s: float = 15.0,
        renew_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < renew_s < lease_s:
            raise ValueError("renew period must be shorter than the lease duration")
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.clock = clock

    def try_lead(self) -> bool:
        """One attempt to take or renew the Lease; True if this candidate holds it now."""
        lease = self.kube.get_lease(self.namespace, self.name)
        spec = (lease or {}).get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = _lease_time(spec.get("renewTime"))
        duration = float(spec.get("leaseDurationSeconds") or self.lease_s)
        action = lease_action(holder, renewed, duration, self.identity, self.clock())
        if action == "wait":
            return False
        now = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        new_spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_s),
            "renewTime": now,
            "acquireTime": spec.get("acquireTime") if action == "renew" else now,
            "leaseTransitions": int(spec.get("leaseTransitions") or 0)
            + (1 if action == "acquire" and holder else 0),
        }
        meta = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            meta["resourceVersion"] = lease["metadata"]["resourceVersion"]
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": new_spec,
        }
        return self.kube.write_lease(self.namespace, body)

    def wait_to_lead(self, stop: threading.Event) -> bool:
        """Block until this candidate leads (True) or ``stop`` is set (False)."""
        while not stop.is_set():
            try:
                if self.try_lead():
                    return True
            except ApiError as err:
                log.warning("lease %s/%s: %s", self.namespace, self.name, err)
            stop.wait(self.renew_s)
        return False

    def keep_leading(self, stop: threading.Event, lost: Callable[[], None]) -> None:
        """Renew every ``renew_s`` until ``stop``; call ``lost`` (once) if renewal has failed
        for ``lease_s``."""
        last_ok = self.clock()
        while not stop.wait(self.renew_s):
            try:
                ok = self.try_lead()
            except ApiError as err:
                log.warning("lease renewal: %s", err)
                ok = False
            if ok:
                last_ok = self.clock()
            elif self.clock() - last_ok >= self.lease_s:
                lost()
                return

    def release(self) -> None:
        """Give the Lease up (a clean shutdown), so a standby takes over at once."""
        lease = self.kube.get_lease(self.namespace, self.name)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        lease["spec"]["holderIdentity"] = ""
        try:
            self.kube.write_lease(self.namespace, lease)
        except ApiError as err:
            log.warning("lease release: %s", err)
