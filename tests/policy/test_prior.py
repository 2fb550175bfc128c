"""Priors from declared hardware: the latency model and the KV capacity before any evidence."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from modelfleet.policy.prior import DeclaredHardware, kv_capacity_tokens, prior_perf_model

pytestmark = pytest.mark.unit

H100_8B = DeclaredHardware()


def _ttft(hw: DeclaredHardware, prompt: int = 4000) -> float:
    return prior_perf_model(hw).predict_ttft(
        prompt, 0, running=8, waiting=1, pending_prefill_tokens=2000
    )


def _tpot(hw: DeclaredHardware) -> float:
    return prior_perf_model(hw).predict_tpot(running=16)


def test_h100_llama_8b_is_of_the_published_order() -> None:
    p = prior_perf_model(H100_8B)
    # 2.7e-5 s/token prefill (about 37k tokens/s) and a 7.5 ms decode step at batch 1, the
    # published order (the figures term by term: test_perf_figures.py)
    assert p.prefill_s_per_token == pytest.approx(2.706e-5, rel=1e-3)
    assert p.decode_base_s == pytest.approx(7.49e-3, rel=1e-3)
    assert p.front_end_s > 0 and p.front_end_per_stream_s == 0  # unknown until observed


@pytest.mark.parametrize(
    ("change", "ttft_up", "tpot_up"),
    [
        ({"prefill_speed": 0.37}, True, False),
        ({"decode_speed": 0.26}, True, True),  # decode steps interleave with prefill chunks
        ({"model_params": 70.6e9, "kv_bytes_per_token": 327_680.0}, True, True),
    ],
    ids=["slower-prefill", "slower-decode", "bigger-model"],
)
def test_latencies_follow_the_declared_numbers(
    change: dict[str, Any], ttft_up: bool, tpot_up: bool
) -> None:
    hw = replace(H100_8B, **change)
    assert (_ttft(hw) > _ttft(H100_8B)) is ttft_up
    assert (_tpot(hw) > _tpot(H100_8B)) is tpot_up


def test_tensor_parallelism_speeds_up_but_not_linearly() -> None:
    big = replace(H100_8B, model_params=70.6e9, kv_bytes_per_token=327_680.0)
    tp4 = replace(big, gpus=4)
    assert _tpot(tp4) < _tpot(big)
    ratio = prior_perf_model(big).prefill_s_per_token / prior_perf_model(tp4).prefill_s_per_token
    assert ratio == pytest.approx(4 * 0.85)  # four GPUs at the reference's 85 % TP efficiency


def test_kv_capacity_from_memory_model_and_utilisation() -> None:
    cap = kv_capacity_tokens(H100_8B)
    # (80 GiB * 0.98 * 0.9 - 16.06 GB of weights - 2 GiB reserve) // 128 KiB per token
    assert cap == 439_115
    assert kv_capacity_tokens(replace(H100_8B, gpu_memory_utilization=0.5)) < cap
    assert kv_capacity_tokens(replace(H100_8B, memory_gib=48)) < cap
    # 70B does not fit on one 80 GiB GPU, fits at TP 4 with a per-shard KV
    big = replace(H100_8B, model_params=70.6e9, kv_bytes_per_token=327_680.0)
    assert kv_capacity_tokens(big) == 0
    assert (
        kv_capacity_tokens(replace(big, gpus=4)) == 467_721
    )  # (70.56 GiB - 35.3 GB - 2 GiB) // 80 KiB


@pytest.mark.parametrize(
    "kw",
    [{"prefill_speed": 0}, {"memory_gib": float("nan")}, {"gpus": 0},
     {"gpu_memory_utilization": 1.5}, {"max_num_seqs": 0}],
)  # fmt: skip
def test_bad_declarations_are_refused_naming_the_field(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="DeclaredHardware"):
        DeclaredHardware(**kw)
