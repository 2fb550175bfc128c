"""The ``/metrics`` contract a client reads: every ``vllm:`` family by exact name, type, labels
and help text, parsed with ``prometheus_client.parser`` (a renamed metric, a changed type or a
lost label fails here), plus the values each family must carry.

The family table is vLLM 0.32's (V1 engine, ``PrometheusStatLogger``) for the families the
simulator claims in ``modelfleet.engine.metrics``; counters are listed under their base name
(the wire samples are ``<name>_total``, each with ``<name>_created``, as vLLM's).
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.engine_server import running_engine

from modelfleet.engine.core import EngineStats
from modelfleet.engine.metrics import (
    ITL_BUCKETS,
    REQUEST_LATENCY_BUCKETS,
    TTFT_BUCKETS,
    EngineMetrics,
    RequestTimings,
)

pytestmark = pytest.mark.unit

M = ("engine", "model_name")

#: name -> (type, label names besides ``le``, HELP text)
FAMILIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "vllm:num_requests_running": ("gauge", M, "Number of requests in model execution batches."),
    "vllm:num_requests_waiting": ("gauge", M, "Number of requests waiting to be processed."),
    "vllm:num_requests_waiting_by_reason": (
        "gauge",
        (*M, "reason"),
        "Number of requests waiting, by reason (capacity: KV cache or batch limits; "
        "deferred: waiting on remote KV or grammar, never in the simulator).",
    ),
    "vllm:engine_sleep_state": (
        "gauge",
        (*M, "sleep_state"),
        "Engine sleep state (the simulator never sleeps).",
    ),
    "vllm:kv_cache_usage_perc": ("gauge", M, "KV-cache usage. 1 means 100 percent usage."),
    "vllm:prefix_cache_queries": (
        "counter",
        M,
        "Prefix cache queries, in terms of number of queried tokens.",
    ),
    "vllm:prefix_cache_hits": (
        "counter",
        M,
        "Prefix cache hits, in terms of number of cached tokens.",
    ),
    "vllm:prompt_tokens_cached": (
        "counter",
        M,
        "Number of cached prompt tokens (local prefix cache).",
    ),
    "vllm:num_preemptions": ("counter", M, "Cumulative number of preemption from the engine."),
    "vllm:prompt_tokens": ("counter", M, "Number of prefill tokens processed."),
    "vllm:generation_tokens": ("counter", M, "Number of generation tokens processed."),
    "vllm:cache_config_info": (
        "gauge",
        ("block_size", "engine", "num_gpu_blocks"),
        "Information of the LLMEngine CacheConfig",
    ),
    "vllm:request_success": (
        "counter",
        (*M, "finished_reason"),
        "Count of successfully processed requests.",
    ),
    "vllm:time_to_first_token_seconds": (
        "histogram",
        M,
        "Histogram of time to first token in seconds.",
    ),
    "vllm:inter_token_latency_seconds": (
        "histogram",
        M,
        "Histogram of inter-token latency in seconds.",
    ),
    "vllm:request_time_per_output_token_seconds": (
        "histogram",
        M,
        "Histogram of time_per_output_token_seconds per request.",
    ),
    "vllm:e2e_request_latency_seconds": (
        "histogram",
        M,
        "Histogram of e2e request latency in seconds.",
    ),
    "vllm:request_queue_time_seconds": (
        "histogram",
        M,
        "Histogram of time spent in WAITING phase for request.",
    ),
    "vllm:request_inference_time_seconds": (
        "histogram",
        M,
        "Histogram of time spent in RUNNING phase for request.",
    ),
    "vllm:request_prefill_time_seconds": (
        "histogram",
        M,
        "Histogram of time spent in PREFILL phase for request.",
    ),
    "vllm:request_decode_time_seconds": (
        "histogram",
        M,
        "Histogram of time spent in DECODE phase for request.",
    ),
    "vllm:request_prompt_tokens": ("histogram", M, "Number of prefill tokens processed."),
    "vllm:request_generation_tokens": ("histogram", M, "Number of generation tokens processed."),
    "vllm:request_params_max_tokens": (
        "histogram",
        M,
        "Histogram of the max_tokens request parameter.",
    ),
    "vllm:iteration_tokens_total": (
        "histogram",
        M,
        "Histogram of number of tokens per engine_step.",
    ),
    # Families added with the vLLM 0.32 conformance pass (tests/vllm/test_conformance.py checks
    # these names and types against a real vLLM server).
    "vllm:admission_rejections": (
        "counter",
        ("model_name", "reason"),
        "Number of admission attempts rejected.",
    ),
    "vllm:external_prefix_cache_hits": (
        "counter",
        M,
        "External prefix cache hits from KV connector cross-instance cache sharing.",
    ),
    "vllm:external_prefix_cache_queries": (
        "counter",
        M,
        "External prefix cache queries from KV connector cross-instance cache sharing.",
    ),
    "vllm:mm_cache_hits": ("counter", M, "Multi-modal cache hits, in terms of number of items."),
    "vllm:mm_cache_queries": (
        "counter",
        M,
        "Multi-modal cache queries, in terms of number of items.",
    ),
    "vllm:prompt_tokens_by_source": (
        "counter",
        (*M, "source"),
        "Number of prompt tokens by source.",
    ),
    "vllm:prompt_tokens_cached_by_source": (
        "counter",
        (*M, "source"),
        "Number of cached prompt tokens by source.",
    ),
    "vllm:request_max_num_generation_tokens": (
        "histogram",
        M,
        "Histogram of maximum number of requested generation tokens.",
    ),
    "vllm:request_num_preemptions": ("histogram", M, "Number of preemptions per request."),
    "vllm:request_params_n": ("histogram", M, "Histogram of the n request parameter."),
    "vllm:request_prefill_kv_computed_tokens": (
        "histogram",
        M,
        "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
    ),
}


def _stats() -> EngineStats:
    return EngineStats(
        num_running=3, num_waiting=2, kv_cache_usage=0.25, prefix_cache_queries=1000,
        prefix_cache_hits=480, num_preemptions=1, prompt_tokens_total=900,
        generation_tokens_total=77, num_gpu_blocks=100, block_size=16,
    )  # fmt: skip


def _metrics(max_model_len: int = 8192) -> EngineMetrics:
    return EngineMetrics(
        model_name="m1", stats=_stats, max_model_len=max_model_len,
        cache_config={"block_size": "16", "num_gpu_blocks": "100"},
    )  # fmt: skip


def _families(text: str) -> dict[str, Any]:
    return {
        f.name: f for f in text_string_to_metric_families(text) if not f.name.endswith("_created")
    }


def _value(fams: dict[str, Any], sample: str, **labels: str) -> float:
    base = sample
    for suffix in ("_total", "_sum", "_count", "_bucket"):
        if sample.endswith(suffix) and sample.removesuffix(suffix) in fams:
            base = sample.removesuffix(suffix)
    found = [
        s.value
        for s in fams[base].samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (sample, labels, found)
    return float(found[0])


def _check_families(text: str) -> dict[str, Any]:
    fams = _families(text)
    assert sorted(fams) == sorted(FAMILIES), "the engine's vllm: families changed"
    for name, (kind, labels, doc) in FAMILIES.items():
        fam = fams[name]
        assert (fam.type, fam.documentation) == (kind, doc), name
        for s in fam.samples:
            got = set(s.labels) - {"le"}
            if name == "vllm:cache_config_info":  # one label per cache setting given
                assert got >= set(labels), (name, s)
            else:
                assert got == set(labels), (name, s)
        wire = {s.name for s in fam.samples}
        if kind == "counter":
            assert wire == {f"{name}_total"}, wire
            assert f"\n{name}_created{{" in text, f"{name} has no _created sample"
        elif kind == "histogram":
            assert wire == {f"{name}_bucket", f"{name}_sum", f"{name}_count"}, wire
        else:
            assert wire == {name}, wire
    return fams


@pytest.mark.integration
async def test_scrape_of_a_live_engine_has_every_family() -> None:
    """Over real HTTP: the exact family table, and the values one request leaves behind."""
    async with running_engine() as eng:
        body = {"model": "llama-3-8b", "prompt": [1, 2, 3, 4, 5], "max_tokens": 7}
        status, resp = await eng.post("/v1/completions", {**body, "ignore_eos": True})
        assert status == 200, resp
        async with eng.session.get(eng.url + "/metrics") as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await r.text()
        blocks = eng.server.core.stats().num_gpu_blocks
    fams = _check_families(text)
    lab = {"model_name": "llama-3-8b", "engine": "0"}
    assert _value(fams, "vllm:request_success_total", finished_reason="length", **lab) == 1
    for reason in ("stop", "abort", "error", "repetition"):
        assert _value(fams, "vllm:request_success_total", finished_reason=reason) == 0
    assert _value(fams, "vllm:generation_tokens_total", **lab) == 7
    assert _value(fams, "vllm:prompt_tokens_total", **lab) == 5
    assert _value(fams, "vllm:request_prompt_tokens_sum", **lab) == 5
    assert _value(fams, "vllm:request_generation_tokens_sum", **lab) == 7
    assert _value(fams, "vllm:request_params_max_tokens_sum", **lab) == 7
    assert _value(fams, "vllm:inter_token_latency_seconds_count", **lab) == 6
    assert _value(fams, "vllm:num_requests_running", **lab) == 0
    assert _value(fams, "vllm:kv_cache_usage_perc", **lab) == 0
    assert _value(fams, "vllm:engine_sleep_state", sleep_state="awake") == 1
    info = fams["vllm:cache_config_info"].samples[0]
    assert info.labels["num_gpu_blocks"] == str(blocks) and info.value == 1
    # one prefill step of 5 tokens, then 6 decode steps of 1
    assert _value(fams, "vllm:iteration_tokens_total_count", **lab) == 7
    assert _value(fams, "vllm:iteration_tokens_total_sum", **lab) == 5 + 6


def test_gauges_and_counters_are_read_from_the_engine_at_scrape_time() -> None:
    fams = _check_families(_metrics().render().decode())
    lab = {"model_name": "m1", "engine": "0"}
    assert _value(fams, "vllm:num_requests_running", **lab) == 3
    assert _value(fams, "vllm:num_requests_waiting", **lab) == 2
    assert _value(fams, "vllm:num_requests_waiting_by_reason", reason="capacity") == 2
    assert _value(fams, "vllm:num_requests_waiting_by_reason", reason="deferred") == 0
    assert _value(fams, "vllm:kv_cache_usage_perc", **lab) == 0.25
    assert _value(fams, "vllm:prefix_cache_queries_total", **lab) == 1000
    assert _value(fams, "vllm:prefix_cache_hits_total", **lab) == 480
    assert _value(fams, "vllm:prompt_tokens_cached_total", **lab) == 480
    assert _value(fams, "vllm:num_preemptions_total", **lab) == 1
    assert _value(fams, "vllm:prompt_tokens_total", **lab) == 900
    assert _value(fams, "vllm:generation_tokens_total", **lab) == 77
    sleep = {s.labels["sleep_state"]: s.value for s in fams["vllm:engine_sleep_state"].samples}
    assert sleep == {"awake": 1, "weights_offloaded": 0, "discard_all": 0}
    assert "vllm:prefix_cache_hits_total_total" not in _metrics().render().decode()


def _buckets(fams: dict[str, Any], name: str) -> list[float]:
    return [float(s.labels["le"]) for s in fams[name].samples if s.name == f"{name}_bucket"]


@pytest.mark.parametrize(
    ("max_model_len", "expected"),
    [
        (100, [1, 2, 5, 10, 20, 50, 100]),
        (8192, [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]),
    ],
)
def test_bucket_boundaries_are_vllms(max_model_len: int, expected: list[float]) -> None:
    fams = _families(_metrics(max_model_len).render().decode())
    inf = [float("inf")]
    for name in ("vllm:request_prompt_tokens", "vllm:request_generation_tokens",
                 "vllm:request_params_max_tokens"):  # fmt: skip
        assert _buckets(fams, name) == [*expected, *inf]  # vLLM's build_1_2_5_buckets
    assert _buckets(fams, "vllm:time_to_first_token_seconds") == [*TTFT_BUCKETS, *inf]
    assert _buckets(fams, "vllm:inter_token_latency_seconds") == [*ITL_BUCKETS, *inf]
    assert _buckets(fams, "vllm:e2e_request_latency_seconds") == [*REQUEST_LATENCY_BUCKETS, *inf]


def test_a_finished_request_lands_in_every_latency_histogram() -> None:
    """Each phase is its own difference of the request's timestamps (arrival not at 0, so a
    sum in place of a difference shows); a request of one token has no TPOT."""
    m = _metrics()
    m.observe_finished(
        "stop",
        RequestTimings(arrival=10.0, first_scheduled=10.25, first_token=10.5, finished=10.75,
                       token_times=(10.5, 10.625, 10.75), prompt_tokens=12,
                       generation_tokens=3, max_tokens=20),
    )  # fmt: skip
    m.observe_finished(
        "length",
        RequestTimings(arrival=20.0, first_scheduled=20.0, first_token=20.5, finished=20.5,
                       token_times=(20.5,), prompt_tokens=4, generation_tokens=1,
                       max_tokens=1),
    )  # fmt: skip
    m.observe_finished(
        "length",
        RequestTimings(arrival=30.0, first_scheduled=30.0, first_token=30.25, finished=30.5,
                       token_times=(30.25, 30.5), prompt_tokens=4, generation_tokens=2,
                       max_tokens=2),
    )  # fmt: skip
    fams = _families(m.render().decode())
    lab = {"model_name": "m1", "engine": "0"}

    def hist(name: str) -> tuple[float, float]:
        return (_value(fams, f"{name}_sum", **lab), _value(fams, f"{name}_count", **lab))

    assert hist("vllm:time_to_first_token_seconds") == (0.5 + 0.5 + 0.25, 3)
    assert hist("vllm:inter_token_latency_seconds") == (0.125 + 0.125 + 0.25, 3)
    assert hist("vllm:request_time_per_output_token_seconds") == (0.125 + 0.25, 2)
    assert hist("vllm:e2e_request_latency_seconds") == (0.75 + 0.5 + 0.5, 3)
    assert hist("vllm:request_queue_time_seconds") == (0.25 + 0 + 0, 3)
    assert hist("vllm:request_inference_time_seconds") == (0.5 + 0.5 + 0.5, 3)
    assert hist("vllm:request_prefill_time_seconds") == (0.25 + 0.5 + 0.25, 3)
    assert hist("vllm:request_decode_time_seconds") == (0.25 + 0 + 0.25, 3)
    assert hist("vllm:request_prompt_tokens") == (20, 3)
    assert hist("vllm:request_generation_tokens") == (6, 3)
    assert hist("vllm:request_params_max_tokens") == (23, 3)
    assert _value(fams, "vllm:request_success_total", finished_reason="stop") == 1
    assert _value(fams, "vllm:request_success_total", finished_reason="length") == 2


def test_step_sizes_are_observed_only_for_steps_that_ran() -> None:
    m = _metrics()
    for n in (0, 1, 37):
        m.observe_step(n)
    fams = _families(m.render().decode())
    assert _value(fams, "vllm:iteration_tokens_total_count") == 2
    assert _value(fams, "vllm:iteration_tokens_total_sum") == 38
    assert _value(fams, "vllm:iteration_tokens_total_bucket", le="1.0") == 1


def test_each_server_has_its_own_registry() -> None:
    a, b = _metrics(), _metrics()
    a.request_success.labels("m1", "0", "stop").inc()
    assert _value(_families(a.render().decode()), "vllm:request_success_total",
                  finished_reason="stop") == 1  # fmt: skip
    assert _value(_families(b.render().decode()), "vllm:request_success_total",
                  finished_reason="stop") == 0  # fmt: skip
