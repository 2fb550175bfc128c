"""Prometheus metrics with vLLM's names, types, labels and buckets (vLLM 0.32, V1 engine).

One :class:`EngineMetrics` per server, each with its *own* ``CollectorRegistry`` (never the
global one: several engines may live in one process in tests).

- Gauges and cumulative counters that the engine model already keeps
  (``num_requests_running``, ``num_requests_waiting``, ``kv_cache_usage_perc``, prefix-cache
  queries/hits, preemptions, prompt/generation tokens) are read from ``EngineStats`` *at
  scrape time* by a custom collector, so there is no second copy that could drift and
  nothing runs between scrapes.
- Per-request observations (``request_success`` by ``finished_reason``, the latency and
  size histograms) are recorded by the server when a request ends.

prometheus-client appends ``_total`` to counter samples, so counters are declared under
vLLM's base name (``vllm:prefix_cache_hits``) and appear on the wire exactly as vLLM's
(``vllm:prefix_cache_hits_total``), each with its ``_created`` sample, as vLLM's do.
Every family carries ``model_name`` and ``engine`` labels (``engine="0"``: no data parallelism).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelfleet.engine.core import EngineStats

__all__ = ["FINISH_REASONS", "EngineMetrics", "RequestTimings"]

FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")

# Bucket boundaries as in vLLM's PrometheusStatLogger.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


# vLLM's buckets without CUDA graphs (``--enforce-eager``, the CPU backend); with CUDA graphs
# vLLM adds its capture sizes, which depend on the deployment.
ITERATION_TOKEN_BUCKETS = (
    1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
)  # fmt: skip
PREEMPTION_BUCKETS = (1, 2, 3, 4, 5, 10, 20)
CACHED_SOURCES = ("device", "host", "p2p", "disk", "external_unspecified")
"""Cache tiers of ``vllm:prompt_tokens_cached_by_source``; the simulator has only ``device``."""
ADMISSION_REJECTION_REASONS = ("max_num_queued_reqs", "max_num_queued_tokens")


def _token_buckets(max_model_len: int) -> tuple[float, ...]:
    """vLLM's ``build_1_2_5_buckets(max_model_len)``: 1, 2, 5, 10, 20, 50 ... up to the limit."""
    out: list[float] = []
    exp = 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exp
            if v > max_model_len:
                return tuple(out)
            out.append(float(v))
        exp += 1


@dataclass(frozen=True)
class RequestTimings:
    """One finished request's timeline, in seconds of engine time."""

    arrival: float
    first_scheduled: float
    first_token: float
    finished: float
    token_times: tuple[float, ...]
    prompt_tokens: int
    generation_tokens: int
    max_tokens: int
    num_cached_tokens: int = 0
    num_preemptions: int = 0


class _StatsCollector(Collector):
    """Reads the engine's gauges and cumulative counters when Prometheus scrapes."""

    def __init__(self, stats: Callable[[], EngineStats], labels: Mapping[str, str]) -> None:
        self._stats = stats
        self._names = list(labels)
        self._values = list(labels.values())
        self._created = time.time()  # the counters' ``_created`` sample, as vLLM's counters
        self._model_name = labels["model_name"]

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=self._names)
        g.add_metric(self._values, value)
        return g

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(name, doc, labels=self._names)
        c.add_metric(self._values, value, created=self._created)
        return c

    def collect(self) -> Iterable[Metric]:
        s = self._stats()
        yield self._gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.",
            s.num_running,
        )  # fmt: skip
        yield self._gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.",
            s.num_waiting,
        )  # fmt: skip
        by_reason = GaugeMetricFamily(
            "vllm:num_requests_waiting_by_reason",
            "Number of requests waiting, by reason (capacity: KV cache or batch limits; "
            "deferred: waiting on remote KV or grammar, never in the simulator).",
            labels=[*self._names, "reason"],
        )
        by_reason.add_metric([*self._values, "capacity"], s.num_waiting)
        by_reason.add_metric([*self._values, "deferred"], 0)
        yield by_reason
        sleep = GaugeMetricFamily(
            "vllm:engine_sleep_state", "Engine sleep state (the simulator never sleeps).",
            labels=[*self._names, "sleep_state"],
        )  # fmt: skip
        for state, value in (("awake", 1), ("weights_offloaded", 0), ("discard_all", 0)):
            sleep.add_metric([*self._values, state], value)
        yield sleep
        yield self._gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
            s.kv_cache_usage,
        )  # fmt: skip
        yield self._counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            s.prefix_cache_queries,
        )
        yield self._counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            s.prefix_cache_hits,
        )
        yield self._counter(
            "vllm:prompt_tokens_cached",
            "Number of cached prompt tokens (local prefix cache).",
            s.prefix_cache_hits,
        )
        yield self._counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine.",
            s.num_preemptions,
        )  # fmt: skip
        # Families vLLM exports that stay zero here (no KV connector, no multimodal encoder,
        # no admission control); exported so that clients reading them find them.
        for name, doc in (
            ("vllm:external_prefix_cache_queries",
             "External prefix cache queries from KV connector cross-instance cache sharing."),
            ("vllm:external_prefix_cache_hits",
             "External prefix cache hits from KV connector cross-instance cache sharing."),
            ("vllm:mm_cache_queries", "Multi-modal cache queries, in terms of number of items."),
            ("vllm:mm_cache_hits", "Multi-modal cache hits, in terms of number of items."),
        ):  # fmt: skip
            yield self._counter(name, doc, 0)
        # vLLM labels this one by reason and, unlike the others, not by engine.
        rejections = CounterMetricFamily(
            "vllm:admission_rejections", "Number of admission attempts rejected.",
            labels=["model_name", "reason"],
        )  # fmt: skip
        for reason in ADMISSION_REJECTION_REASONS:
            rejections.add_metric([self._model_name, reason], 0, created=self._created)
        yield rejections
        by_source = CounterMetricFamily(
            "vllm:prompt_tokens_by_source", "Number of prompt tokens by source.",
            labels=[*self._names, "source"],
        )  # fmt: skip
        computed = max(0, s.prompt_tokens_total - s.prefix_cache_hits)
        for source, value in (
            ("local_compute", computed),
            ("local_cache_hit", s.prefix_cache_hits),
            ("external_kv_transfer", 0),
        ):
            by_source.add_metric([*self._values, source], value, created=self._created)
        yield by_source
        cached_by_source = CounterMetricFamily(
            "vllm:prompt_tokens_cached_by_source", "Number of cached prompt tokens by source.",
            labels=[*self._names, "source"],
        )  # fmt: skip
        for source in CACHED_SOURCES:
            value = s.prefix_cache_hits if source == "device" else 0
            cached_by_source.add_metric([*self._values, source], value, created=self._created)
        yield cached_by_source
        yield self._counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens_total
        )
        yield self._counter(
            "vllm:generation_tokens", "Number of generation tokens processed.",
            s.generation_tokens_total,
        )  # fmt: skip


class EngineMetrics:
    """The ``/metrics`` registry of one engine server."""

    def __init__(
        self,
        *,
        model_name: str,
        stats: Callable[[], EngineStats],
        cache_config: Mapping[str, str],
        max_model_len: int,
        engine: str = "0",
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"model_name": model_name, "engine": engine}
        self._label_values = (model_name, engine)
        names = ["model_name", "engine"]
        self.registry.register(_StatsCollector(stats, labels))

        info = Gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labelnames=[*sorted(cache_config), "engine"],
            registry=self.registry,
        )
        info.labels(**{**cache_config, "engine": engine}).set(1)

        self.request_success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labelnames=[*names, "finished_reason"],
            registry=self.registry,
        )
        for reason in FINISH_REASONS:
            self.request_success.labels(model_name, engine, reason)

        def hist(name: str, doc: str, buckets: Iterable[float]) -> Histogram:
            return Histogram(
                name, doc, labelnames=names, buckets=tuple(buckets), registry=self.registry
            )

        tok = _token_buckets(max_model_len)
        self.ttft = hist(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        ).labels(*self._label_values)  # fmt: skip
        self.itl = hist(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS,
        ).labels(*self._label_values)  # fmt: skip
        self.tpot = hist(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        ).labels(*self._label_values)
        self.e2e = hist(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        ).labels(*self._label_values)
        self.queue = hist(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        ).labels(*self._label_values)
        self.inference = hist(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        ).labels(*self._label_values)
        self.prefill = hist(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        ).labels(*self._label_values)
        self.decode = hist(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        ).labels(*self._label_values)
        self.prompt_tokens = hist(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", tok
        ).labels(*self._label_values)
        self.generation_tokens = hist(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", tok
        ).labels(*self._label_values)
        self.params_max_tokens = hist(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.",
            tok,
        ).labels(*self._label_values)  # fmt: skip
        self.max_generation_tokens = hist(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.", tok,
        ).labels(*self._label_values)  # fmt: skip
        self.params_n = hist(
            "vllm:request_params_n", "Histogram of the n request parameter.", (1, 2, 5, 10, 20)
        ).labels(*self._label_values)
        self.request_preemptions = hist(
            "vllm:request_num_preemptions", "Number of preemptions per request.",
            PREEMPTION_BUCKETS,
        ).labels(*self._label_values)  # fmt: skip
        self.prefill_kv_computed = hist(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).", tok,
        ).labels(*self._label_values)  # fmt: skip
        self.iteration_tokens = hist(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
            ITERATION_TOKEN_BUCKETS,
        ).labels(*self._label_values)  # fmt: skip

    def observe_step(self, num_tokens: int) -> None:
        """One engine step that scheduled ``num_tokens`` (prefill chunks + one per decode)."""
        if num_tokens > 0:
            self.iteration_tokens.observe(num_tokens)

    def observe_finished(self, finish_reason: str, t: RequestTimings) -> None:
        """Record a request that finished with ``stop``/``length`` (client aborts are not counted,
        like vLLM, whose ``request_success_total{finished_reason="abort"}`` stays 0 for them)."""
        self.request_success.labels(*self._label_values, finish_reason).inc()
        self.ttft.observe(max(0.0, t.first_token - t.arrival))
        prev = t.first_token
        for ts in t.token_times[1:]:
            self.itl.observe(max(0.0, ts - prev))
            prev = ts
        if t.generation_tokens > 1:
            self.tpot.observe(max(0.0, (t.finished - t.first_token) / (t.generation_tokens - 1)))
        self.e2e.observe(max(0.0, t.finished - t.arrival))
        self.queue.observe(max(0.0, t.first_scheduled - t.arrival))
        self.inference.observe(max(0.0, t.finished - t.first_scheduled))
        self.prefill.observe(max(0.0, t.first_token - t.first_scheduled))
        self.decode.observe(max(0.0, t.finished - t.first_token))
        self.prompt_tokens.observe(t.prompt_tokens)
        self.generation_tokens.observe(t.generation_tokens)
        self.params_max_tokens.observe(t.max_tokens)
        self.max_generation_tokens.observe(t.max_tokens)
        self.params_n.observe(1)
        self.request_preemptions.observe(t.num_preemptions)
        self.prefill_kv_computed.observe(max(0, t.prompt_tokens - t.num_cached_tokens))

    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of this registry."""
        return generate_latest(self.registry)
