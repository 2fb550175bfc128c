"""Parse one engine's Prometheus scrape (vLLM's metric names) into :class:`EngineMetrics`.

Pure: text in, value out, tested on golden scrapes of a real vLLM 0.32 and of the engine
simulator (``tests/scheduler/data/``). What it reads (vLLM V1 names,
``shared/reference/vllm-migration.md`` section 7):

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
import re
from dataclasses import dataclass

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


_INFO = "vllm:cache_config_info"
_NAMES = (*_SUMS, *_USAGE, _INFO)
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = re.compile(r"\\(.)")
#: The rest of a sample line after its name: the text inside its braces, its value.
_REST = re.compile(r"(?:\{(.*)\})?[ \t]+(\S+)")


def _samples(text: str) -> list[tuple[str, str, str]]:
    """(name, label text, value text) of every sample line of the metrics read here.

    ``str.find`` per name (a C scan of the body) instead of a pass over every line: the
    families read here are a dozen lines of a body of hundreds.
    """
    out = []
    if not text.startswith("\n"):
        text = "\n" + text
    for name in _NAMES:
        needle = "\n" + name
        pos = text.find(needle)
        while pos != -1:
            start = pos + len(needle)
            end = text.find("\n", start)
            line = text[start : end if end != -1 else len(text)]
            m = _REST.match(line)
            if m is not None:  # else another name that starts with this one
                out.append((name, m.group(1) or "", m.group(2)))
            pos = text.find(needle, start)
    return out


def _labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if m is None:
            if text[pos:].strip():
                raise ScrapeError(f"bad label set {{{text}}}")
            break
        value = m.group(2)
        if "\\" in value:
            value = _UNESCAPE.sub(lambda e: "\n" if e.group(1) == "n" else e.group(1), value)
        out[m.group(1)] = value
        pos = m.end()
    return out


def parse_vllm_metrics(text: str) -> EngineMetrics:
    """Parse a vLLM (or simulator) ``/metrics`` body; ``ScrapeError`` if it is not one.

    One regular-expression scan, not a full exposition parser: a scrape is ~40-50 kB of which
    the scheduler reads a dozen lines, and it scrapes every engine 20 times a second in the
    event loop that also relays tokens. Only sample lines of the metrics above are split into
    name, labels and value (a bad value or label set is a ``ScrapeError``); comments,
    histograms and every other family are never looked at. ``prometheus_client``'s parser
    took ~30 ms per scrape on this busy 2-core machine (six engines at 20 Hz were more than
    a core); this scan takes a few hundred microseconds and gives the same result
    (``tests/scheduler/test_scrape.py`` compares the two).
    """
    sums: dict[str, float] = {}
    usage: dict[str, list[float]] = {name: [] for name in _USAGE}
    models: set[str] = set()
    block_size = num_blocks = None
    algo = None
    for name, label_text, raw in _samples(text):
        try:
            value = float(raw)
        except ValueError:
            raise ScrapeError(f"bad sample value {raw!r} of {name}") from None
        labels = _labels(label_text) if label_text else {}
        key = _SUMS.get(name)
        if name == _INFO:
            block_size = _int_label(labels.get("block_size"))
            num_blocks = _int_label(labels.get("num_gpu_blocks"))
            algo = labels.get("prefix_caching_hash_algo") or None
        elif not math.isfinite(value):
            continue
        elif key is not None:
            sums[key] = sums.get(key, 0.0) + value
        else:
            usage[name].append(value)
        model = labels.get("model_name")
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
