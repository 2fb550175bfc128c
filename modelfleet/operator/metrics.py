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

Every label set a counter (or a labelled histogram) can take is created at 0 before its first
increment, so Prometheus sees the 0 -> 1 step (``rate``/``increase`` miss a series that starts
at 1): the fixed ones (kinds, error reasons, drain outcomes) at construction, a pool's scale
decisions (each variant, direction and reason its scaling mode can give) by
:meth:`OperatorMetrics.declare_pool` before its first decision, removed with the pool.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_POOL = ("namespace", "pool")
_VARIANT = ("namespace", "pool", "variant")

#: The kinds the operator reconciles (``kind`` label).
KINDS = ("ModelPool", "RoutingPolicy", "AcceleratorProfile")
#: ``reason`` of ``reconcile_errors_total`` by kind: an API error, or an invalid object
#: (a RoutingPolicy's plugin parameters are ``InvalidParameters``).
ERROR_REASONS: Mapping[str, tuple[str, ...]] = {
    "ModelPool": ("ApiError", "InvalidSpec"),
    "RoutingPolicy": ("ApiError", "InvalidSpec", "InvalidParameters"),
    "AcceleratorProfile": ("ApiError",),
}
#: Every ``outcome`` of a drain (:data:`~modelfleet.operator.control_client.DrainOutcome`).
DRAIN_OUTCOMES = ("empty", "deadline", "unknown", "unavailable", "refused", "error")
#: ``direction`` of a scale decision.
DIRECTIONS = ("up", "down")


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
        self._decision_labels: dict[tuple[str, str], set[tuple[str, ...]]] = {}
        self._lock = threading.Lock()
        for kind in KINDS:
            self.reconcile_duration.labels(kind)
            for reason in ERROR_REASONS[kind]:
                self.reconcile_errors.labels(kind, reason)
        for outcome in DRAIN_OUTCOMES:
            self.drains.labels(outcome)
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

    def declare_pool(
        self, namespace: str, pool: str, variants: Iterable[str], reasons: Iterable[str]
    ) -> None:
        """Create at 0 the scale-decision counters of a pool: each of ``variants``, each
        direction, each of ``reasons`` (what the pool's scaling mode can give). Counters of
        variants or reasons no longer declared are kept (they may have counted)."""
        wanted = {(namespace, pool, v, d, r) for v in variants for d in DIRECTIONS for r in reasons}
        with self._lock:
            known = self._decision_labels.setdefault((namespace, pool), set())
            new = wanted - known
            known |= new
        for labels in new:
            self.decisions.labels(*labels)

    def forget_pool(self, namespace: str, pool: str) -> None:
        """Remove a deleted pool's series."""
        for v in self._variants.pop((namespace, pool), set()):
            self._remove_variant(namespace, pool, v)
        with self._lock:
            declared = self._decision_labels.pop((namespace, pool), set())
        for labels in declared:
            try:
                self.decisions.remove(*labels)
            except KeyError:
                pass
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
