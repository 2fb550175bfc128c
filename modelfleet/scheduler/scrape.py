"""Parse one engine's Prometheus scrape (vLLM's metric names) into :class:`EngineMetrics`.

Pure: text in, value out, tested on golden scrapes of a real vLLM 0.32 and of the engine
simulator (``tests/scheduler/data/``). The parser is ``prometheus_client``'s text parser; what
it reads (vLLM V1 names, ``shared/reference/vllm-migration.md`` section 7):

==================================  =====================================================
``vllm:num_requests_running``       gauge, summed over ``engine`` (data-parallel ranks)
``vllm:num_requests_waiting``       gauge, summed
``vllm:kv_cache_usage_perc``        gauge 0..1, mean over ranks (``vllm:gpu_cache_usage_perc``
                                    of older versions when absent)
``vllm:prefix_cache_queries_total`` counter of prompt tokens looked up, summed
``vllm:prefix_cache_hits_total``    counter of those found cached, summed
``vllm:num_preemptions_total``      counter, summed
``vllm:prompt_tokens_total``,       counters, summed
``vllm:generation_tokens_total``
``vllm:cache_config_info``          info gauge: ``block_size``, ``num_gpu_blocks``,
                                    ``prefix_caching_hash_algo`` labels
==================================  =====================================================

A scrape without the two queue gauges is not an engine's: :class:`ScrapeError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from modelfleet.policy.host import EndpointMetrics

__all__ = ["EngineMetrics", "ScrapeError", "parse_vllm_metrics"]


class ScrapeError(ValueError):
    """The text is not a parseable engine scrape."""


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """What the scheduler reads from one scrape of one engine."""

    running: int
    waiting: int
    kv_cache_usage: float
    prefix_cache_queries: float = 0.0
    prefix_cache_hits: float = 0.0
    preemptions: float = 0.0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    hash_algo: str | None = None
    model_names: tuple[str, ...] = ()

    def endpoint_metrics(self) -> EndpointMetrics:
        """The routing host's view of this scrape (running, waiting, KV usage)."""
        return EndpointMetrics(
            running=self.running, waiting=self.waiting, kv_cache_usage=self.kv_cache_usage
        )


_SUMS = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:prefix_cache_queries_total": "prefix_cache_queries",
    "vllm:prefix_cache_hits_total": "prefix_cache_hits",
    "vllm:num_preemptions_total": "preemptions",
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:generation_tokens_total": "generation_tokens",
}
_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


def _int_label(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def parse_vllm_metrics(text: str) -> EngineMetrics:
    """Parse a vLLM (or simulator) ``/metrics`` body; ``ScrapeError`` if it is not one."""
    sums: dict[str, float] = {}
    usage: dict[str, list[float]] = {name: [] for name in _USAGE}
    models: set[str] = set()
    block_size = num_blocks = None
    algo = None
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as e:
        raise ScrapeError(f"not Prometheus text exposition: {e}") from None
    for family in families:
        for s in family.samples:
            name = s.name
            value = float(s.value)
            if not math.isfinite(value):
                continue
            key = _SUMS.get(name)
            if key is not None:
                sums[key] = sums.get(key, 0.0) + value
            elif name in usage:
                usage[name].append(value)
            elif name == "vllm:cache_config_info":
                block_size = _int_label(s.labels.get("block_size"))
                num_blocks = _int_label(s.labels.get("num_gpu_blocks"))
                algo = s.labels.get("prefix_caching_hash_algo") or None
            else:
                continue
            model = s.labels.get("model_name")
            if model:
                models.add(model)
    if "running" not in sums or "waiting" not in sums:
        raise ScrapeError(
            "no vllm:num_requests_running / vllm:num_requests_waiting gauges: not an engine scrape"
        )
    samples = usage[_USAGE[0]] or usage[_USAGE[1]]
    kv = sum(samples) / len(samples) if samples else 0.0
    return EngineMetrics(
        running=max(0, round(sums["running"])),
        waiting=max(0, round(sums["waiting"])),
        kv_cache_usage=min(1.0, max(0.0, kv)),
        prefix_cache_queries=sums.get("prefix_cache_queries", 0.0),
        prefix_cache_hits=sums.get("prefix_cache_hits", 0.0),
        preemptions=sums.get("preemptions", 0.0),
        prompt_tokens=sums.get("prompt_tokens", 0.0),
        generation_tokens=sums.get("generation_tokens", 0.0),
        block_size=block_size,
        num_gpu_blocks=num_blocks,
        hash_algo=algo,
        model_names=tuple(sorted(models)),
    )
