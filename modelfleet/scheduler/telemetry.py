"""The scheduler's own metrics (``modelfleet_*``, never ``vllm:``) and windowed statistics.

Prometheus (one ``CollectorRegistry`` per scheduler; several may share a test process):

=====================================================  ========================================
``modelfleet_requests_total``                          counter {model, pool, variant,
                                                       slo_class, outcome}; outcome ok |
                                                       client_error | error | aborted
``modelfleet_request_errors_total``                    counter {model, pool, status}: every
                                                       answer >= 400, the scheduler's and the
                                                       engines' (pool "" when none was chosen)
``modelfleet_ttft_seconds``, ``_tpot_seconds``,        histograms {pool, variant, slo_class}
``_e2e_seconds``
``modelfleet_routing_decisions_total``                 counter {pool, reason}: prefix-hit
                                                       (the best cached endpoint won),
                                                       prefix-traded (a cached endpoint lost to
                                                       load or SLO), cold (nothing cached),
                                                       retry
``modelfleet_selection_decisions_total``               counter {model, pool, rule}: which pool
                                                       model selection chose (rule "default")
``modelfleet_prompt_tokens_total``,                    counters {pool, variant}: prompt tokens
``modelfleet_prefix_hit_tokens_total``                 routed and those predicted cached
``modelfleet_output_tokens_total``                     counter {pool, variant}
``modelfleet_decision_seconds``                        histogram {pool}: selection + admission
                                                       + placement of one request
``modelfleet_requests_shed_total``,                    counters {model, slo_class}
``modelfleet_requests_downgraded_total``,
``modelfleet_requests_queued_total``
``modelfleet_rate_limited_total``                      counter {model, key}: key is the key id
                                                       for keys the policy lists, else default
``modelfleet_retries_total``                           counter {pool, reason}
``modelfleet_inflight_requests``                       gauge {pool, endpoint}
``modelfleet_endpoint_up``                             gauge {pool, variant, endpoint}: healthy
``modelfleet_engine_scrape_errors_total``              counter {endpoint}
``modelfleet_kv_events_total``                         counter {endpoint}
``modelfleet_config_reloads_total``                    counter {result}: applied | rejected
``modelfleet_event_loop_lag_seconds``                  histogram: how late a 100 ms timer ran
``modelfleet_migrations_total``                        counter {pool, trigger, outcome}: live
                                                       migrations; outcome switched | failed |
                                                       superseded (finished on the source
                                                       before the switch) | aborted (the
                                                       client went away)
``modelfleet_migration_failures_total``                counter {pool, reason}
``modelfleet_migration_stall_seconds``                 histogram {pool, trigger}: the client's
                                                       gap across the switch
``modelfleet_migration_stall_steps``                   histogram {pool, trigger}: that gap in
                                                       decode steps of the destination
``modelfleet_migration_reprefill_tokens_total``,       counters {pool}: context tokens sent
``modelfleet_migration_prefix_hit_tokens_total``       to destinations, and those predicted
                                                       cached there
``modelfleet_drain_seconds``                           histogram {reason, state}
=====================================================  ========================================

Windowed statistics (:class:`WindowStats`) keep the finished requests of the last
``horizon_s`` seconds for the control API's ``Stats`` (load, hit rate, latency percentiles and
SLO attainment per pool, variant and SLO class): what the operator's autoscaler reads.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["FinishedRecord", "Telemetry", "WindowStats", "percentile"]

LATENCY_BUCKETS = (
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0,
    3.0, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0,
)  # fmt: skip
TPOT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.3, 0.5, 1.0, 2.5,
)  # fmt: skip
LAG_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
STALL_BUCKETS = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0,
    5.0,
)  # fmt: skip
DECISION_BUCKETS = (
    0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class FinishedRecord:
    """One finished request, as the window keeps it."""

    at: float
    namespace: str
    pool: str
    variant: str
    slo_class: str
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int
    ttft_s: float | None
    tpot_s: float | None
    slo_met: bool
    error: bool


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


class WindowStats:
    """Finished requests and placements of the last ``horizon_s`` seconds (clock injected)."""

    def __init__(self, clock: Callable[[], float], horizon_s: float = 600.0) -> None:
        self.clock = clock
        self.horizon_s = horizon_s
        self.finished: deque[FinishedRecord] = deque()
        self.placed: deque[tuple[float, str, str, str]] = deque()  # (at, ns, pool, variant)
        self.unplaced: deque[tuple[float, str, str]] = deque()  # (at, ns, pool)
        self.admission: deque[tuple[float, str, str, str, str]] = deque()  # ns, pool, cls, act

    def _prune(self, now: float) -> None:
        cut = now - self.horizon_s
        finished = self.finished
        while finished and finished[0].at < cut:
            finished.popleft()
        for q in (self.placed, self.unplaced, self.admission):
            while q and q[0][0] < cut:
                q.popleft()

    def on_finished(self, record: FinishedRecord) -> None:
        self.finished.append(record)
        self._prune(record.at)

    def on_placed(self, namespace: str, pool: str, variant: str) -> None:
        now = self.clock()
        self.placed.append((now, namespace, pool, variant))
        self._prune(now)

    def on_unplaced(self, namespace: str, pool: str) -> None:
        now = self.clock()
        self.unplaced.append((now, namespace, pool))

    def on_admission(self, namespace: str, pool: str, slo_class: str, action: str) -> None:
        self.admission.append((self.clock(), namespace, pool, slo_class, action))

    def since(self, window_s: float) -> tuple[list[FinishedRecord], float]:
        """Records finished within the last ``window_s`` seconds, and the window's start."""
        now = self.clock()
        self._prune(now)
        start = now - min(window_s, self.horizon_s)
        return [r for r in self.finished if r.at >= start], start


class _LiveCollector(Collector):
    """Gauges read at scrape time from the runtime (in-flight counts, endpoint health)."""

    def __init__(self, read: Callable[[], Iterable[tuple[str, str, str, bool, int]]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        inflight = GaugeMetricFamily(
            "modelfleet_inflight_requests",
            "Requests this scheduler sent to the endpoint and has not seen finish.",
            labels=["pool", "endpoint"],
        )
        up = GaugeMetricFamily(
            "modelfleet_endpoint_up",
            "1 if the endpoint is healthy (its last scrape succeeded), else 0.",
            labels=["pool", "variant", "endpoint"],
        )
        for pool, variant, endpoint, healthy, n in self._read():
            inflight.add_metric([pool, endpoint], n)
            up.add_metric([pool, variant, endpoint], 1.0 if healthy else 0.0)
        yield inflight
        yield up


class Telemetry:
    """The Prometheus families above, registered in one private registry."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.window = WindowStats(clock)
        self.requests = Counter(
            "modelfleet_requests",
            "Requests answered, by outcome (ok, client_error, error, aborted).",
            ["model", "pool", "variant", "slo_class", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "modelfleet_request_errors",
            "Answers with an HTTP status >= 400, by status.",
            ["model", "pool", "status"],
            registry=r,
        )
        labels = ["pool", "variant", "slo_class"]
        self.ttft = Histogram(
            "modelfleet_ttft_seconds",
            "Time from the request's arrival at the scheduler to its first token.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "modelfleet_tpot_seconds",
            "Mean time per output token after the first, per request.",
            labels,
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "modelfleet_e2e_seconds",
            "Time from arrival to the last byte of the answer.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.routing = Counter(
            "modelfleet_routing_decisions",
            "Placements by reason (prefix-hit, prefix-traded, cold, retry).",
            ["pool", "reason"],
            registry=r,
        )
        self.selection = Counter(
            "modelfleet_selection_decisions",
            "Model-selection decisions: the pool chosen and the rule that matched.",
            ["model", "pool", "rule"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "modelfleet_prompt_tokens",
            "Prompt tokens of routed requests (estimated when the scheduler did not tokenise).",
            ["pool", "variant"],
            registry=r,
        )
        self.prefix_hit_tokens = Counter(
            "modelfleet_prefix_hit_tokens",
            "Prompt tokens the prefix index predicted cached on the chosen endpoint.",
            ["pool", "variant"],
            registry=r,
        )
        self.output_tokens = Counter(
            "modelfleet_output_tokens",
            "Output tokens streamed to clients.",
            ["pool", "variant"],
            registry=r,
        )
        self.decision = Histogram(
            "modelfleet_decision_seconds",
            "Selection + admission + placement time of one request.",
            ["pool"],
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "modelfleet_event_loop_lag_seconds",
            "How late the replica's event loop ran a timer (sampled every 100 ms): the delay "
            "a busy loop adds to every request it serves.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        cls = ["model", "slo_class"]
        self.shed = Counter(
            "modelfleet_requests_shed", "Requests shed by admission.", cls, registry=r
        )
        self.downgraded = Counter(
            "modelfleet_requests_downgraded",
            "Requests sent to their class's downgrade pool.",
            cls,
            registry=r,
        )
        self.queued = Counter(
            "modelfleet_requests_queued",
            "Requests held at the scheduler by admission before placement.",
            cls,
            registry=r,
        )
        self.rate_limited = Counter(
            "modelfleet_rate_limited",
            "Requests refused with 429 by a per-key rate limit.",
            ["model", "key"],
            registry=r,
        )
        self.retries = Counter(
            "modelfleet_retries",
            "Attempts repeated on another endpoint before the first token.",
            ["pool", "reason"],
            registry=r,
        )
        self.scrape_errors = Counter(
            "modelfleet_engine_scrape_errors",
            "Failed scrapes of an engine's /metrics.",
            ["endpoint"],
            registry=r,
        )
        self.kv_events = Counter(
            "modelfleet_kv_events",
            "KV-cache events received from an engine.",
            ["endpoint"],
            registry=r,
        )
        self.reloads = Counter(
            "modelfleet_config_reloads",
            "Fleet snapshots applied or rejected.",
            ["result"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "modelfleet_admission_queue",
            "Requests waiting for admission right now.",
            ["model"],
            registry=r,
        )
        self.migrations = Counter(
            "modelfleet_migrations",
            "Live migrations of a running request by trigger (drain | resume | slo-rescue | "
            "load-balance | manual) and outcome (switched | failed | superseded | aborted).",
            ["pool", "trigger", "outcome"],
            registry=r,
        )
        self.migration_failures = Counter(
            "modelfleet_migration_failures",
            "Hand-offs given up, by reason (connect, engine-<status>, mismatch, eof, ...).",
            ["pool", "reason"],
            registry=r,
        )
        self.migration_stall = Histogram(
            "modelfleet_migration_stall_seconds",
            "The client's gap at the switch: last token before it to first token after it.",
            ["pool", "trigger"],
            buckets=STALL_BUCKETS,
            registry=r,
        )
        self.migration_stall_steps = Histogram(
            "modelfleet_migration_stall_steps",
            "The switch stall in decode steps of the destination (its mean step while it caught "
            "up with the client; greedy hand-offs that overlapped only).",
            ["pool", "trigger"],
            buckets=(0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 50.0),
            registry=r,
        )
        self.migration_reprefill_tokens = Counter(
            "modelfleet_migration_reprefill_tokens",
            "Context tokens (prompt + generated up to the cut) sent to hand-off destinations.",
            ["pool"],
            registry=r,
        )
        self.migration_prefix_hit_tokens = Counter(
            "modelfleet_migration_prefix_hit_tokens",
            "Of those, the tokens the placement predicted cached on the destination.",
            ["pool"],
            registry=r,
        )
        self.drain_seconds = Histogram(
            "modelfleet_drain_seconds",
            "How long drains took, by reason and final state (empty | deadline).",
            ["reason", "state"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def add_live(self, read: Callable[[], Iterable[tuple[str, str, str, bool, int]]]) -> None:
        """Register the scrape-time gauges (in-flight and health per endpoint)."""
        self.registry.register(_LiveCollector(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)
