"""The operator's Prometheus metrics, all under ``modelfleet_operator_``.

One :class:`OperatorMetrics` per process, on its own registry (no module-level state), served
by :meth:`OperatorMetrics.serve` on the metrics port:

============================================== ========= ========================================
name                                           type      labels
============================================== ========= ========================================
modelfleet_operator_reconcile_duration_seconds histogram kind
modelfleet_operator_reconcile_errors_total     counter   kind, reason
modelfleet_operator_desired_replicas           gauge     namespace, pool, variant
modelfleet_operator_replicas                   gauge     namespace, pool, variant (existing pods)
modelfleet_operator_ready_replicas             gauge     namespace, pool, variant
modelfleet_operator_scale_decisions_total      counter   namespace, pool, variant, direction, reason
modelfleet_operator_estimated_cost_per_hour    gauge     namespace, pool (USD/h of existing pods)
modelfleet_operator_drains_total               counter   outcome (empty, deadline, unknown, ...)
modelfleet_operator_drain_duration_seconds     histogram (none)
modelfleet_operator_leader                     gauge     (1 while this process leads)
============================================== ========= ========================================
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_POOL = ("namespace", "pool")
_VARIANT = ("namespace", "pool", "variant")


class OperatorMetrics:
    """The metric families of the module docstring, on ``registry`` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconcile_duration = Histogram(
            "modelfleet_operator_reconcile_duration_seconds",
            "Time of one reconcile of one object.",
            ["kind"],
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.reconcile_errors = Counter(
            "modelfleet_operator_reconcile_errors",
            "Reconciles that failed (API errors) or met an invalid object.",
            ["kind", "reason"],
            registry=r,
        )
        self.desired = Gauge(
            "modelfleet_operator_desired_replicas",
            "Replicas the operator wants.",
            _VARIANT,
            registry=r,
        )
        self.actual = Gauge(
            "modelfleet_operator_replicas", "Engine pods that exist.", _VARIANT, registry=r
        )
        self.ready = Gauge(
            "modelfleet_operator_ready_replicas",
            "Engine pods that are Ready.",
            _VARIANT,
            registry=r,
        )
        self.decisions = Counter(
            "modelfleet_operator_scale_decisions",
            "Replica changes the operator applied, by direction and reason.",
            ["namespace", "pool", "variant", "direction", "reason"],
            registry=r,
        )
        self.cost = Gauge(
            "modelfleet_operator_estimated_cost_per_hour",
            "USD per hour of the pool's existing engine pods.",
            _POOL,
            registry=r,
        )
        self.drains = Counter(
            "modelfleet_operator_drains",
            "Drains the operator asked for, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.drain_duration = Histogram(
            "modelfleet_operator_drain_duration_seconds",
            "Time from asking for a drain to its final state.",
            registry=r,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
        )
        self.leader = Gauge(
            "modelfleet_operator_leader", "1 while this process holds the lease.", registry=r
        )
        self._variants: dict[tuple[str, str], set[str]] = {}
        self._server: tuple[Any, threading.Thread] | None = None

    def set_pool(
        self,
        namespace: str,
        pool: str,
        *,
        desired: Mapping[str, int],
        actual: Mapping[str, int],
        ready: Mapping[str, int],
        cost_per_hour: float,
    ) -> None:
        """Replica gauges and cost of one pool (variants no longer present are removed)."""
        names = set(desired) | set(actual) | set(ready)
        for gone in self._variants.get((namespace, pool), set()) - names:
            self._remove_variant(namespace, pool, gone)
        self._variants[(namespace, pool)] = names
        for v in names:
            self.desired.labels(namespace, pool, v).set(desired.get(v, 0))
            self.actual.labels(namespace, pool, v).set(actual.get(v, 0))
            self.ready.labels(namespace, pool, v).set(ready.get(v, 0))
        self.cost.labels(namespace, pool).set(cost_per_hour)

    def forget_pool(self, namespace: str, pool: str) -> None:
        """Remove a deleted pool's series."""
        for v in self._variants.pop((namespace, pool), set()):
            self._remove_variant(namespace, pool, v)
        try:
            self.cost.remove(namespace, pool)
        except KeyError:
            pass

    def _remove_variant(self, namespace: str, pool: str, variant: str) -> None:
        for g in (self.desired, self.actual, self.ready):
            try:
                g.remove(namespace, pool, variant)
            except KeyError:
                pass

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``addr:port`` (0 = any free port) from a thread; returns the
        port. :meth:`close` stops it."""
        server, thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = (server, thread)
        return int(server.server_port)

    def close(self) -> None:
        """Stop the metrics server, if one runs."""
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._server = None
