"""Timing model: monotonicity, derived GPUs, host overheads (calibration bar: tests/bench)."""

from __future__ import annotations

import dataclasses

import pytest

from modelfleet.engine.profiles import ACCELERATORS, get_accelerator, get_model
from modelfleet.engine.timing import CALIBRATED, StepTimer

pytestmark = pytest.mark.unit

CONFIGS = [
    (a, m, tp)
    for a in ACCELERATORS
    for m, tp in (("llama-3-8b", 1), ("llama-3-8b", 2), ("llama-3-70b", 4), ("llama-3-70b", 8))
]


@pytest.mark.parametrize(
    ("accel", "model", "tp"), CONFIGS, ids=[f"{a}-{m}-tp{t}" for a, m, t in CONFIGS]
)
def test_step_time_is_monotone(accel, model, tp):
    timer = StepTimer(accel, model, tp)
    prefill = [timer.prefill_time(n) for n in (1, 16, 128, 512, 2048, 8192)]
    assert prefill == sorted(prefill) and prefill[0] < prefill[-1]
    # cached prefix: less to compute, but the new tokens attend to more context
    assert timer.prefill_time(2048, cached_tokens=1024) < timer.prefill_time(2048)
    assert timer.prefill_time(1024 + 1024, 1024) > timer.prefill_time(1024)
    for ctx in (128, 2048):
        by_batch = [timer.decode_time(b, ctx) for b in (1, 4, 16, 64, 256)]
        assert by_batch == sorted(by_batch) and by_batch[0] < by_batch[-1]
    by_ctx = [timer.decode_time(32, c) for c in (16, 512, 4096, 32768)]
    assert by_ctx == sorted(by_ctx) and by_ctx[0] < by_ctx[-1]
    # mixed step costs more than either part
    mixed = timer.step_time(512, 512 * 513 / 2, 32, 32 * 1024)
    assert mixed > timer.step_time(512, 512 * 513 / 2, 0, 0, sampling_seqs=1)
    assert mixed > timer.decode_time(32, 1024)


def test_faster_gpu_is_faster_and_tp_helps_decode():
    for model in ("llama-3-8b",):
        h100 = StepTimer("h100-80gb", model).decode_time(1, 1024)
        a100 = StepTimer("a100-80gb", model).decode_time(1, 1024)
        l4 = StepTimer("l4", model).decode_time(1, 1024)
        assert h100 < a100 < l4
    assert StepTimer("h100-80gb", "llama-3-70b", 8).decode_time(1, 1024) < StepTimer(
        "h100-80gb", "llama-3-70b", 4
    ).decode_time(1, 1024)


def test_l4_and_a10g_are_derived_from_l40s_and_uncalibrated():
    l40s = StepTimer("l40s", "llama-3-8b")
    for name in ("l4", "a10g"):
        spec = get_accelerator(name)
        assert spec.calibrated is False and spec.derived_from == "l40s"
        derived = StepTimer(name, "llama-3-8b")
        kernel = dataclasses.replace(
            derived.p, per_seq_overhead=0.0, request_overhead=0.0, request_overhead_per_stream=0.0
        )
        assert kernel == CALIBRATED["l40s"]
        # decode is bandwidth-bound: the ratio roughly follows the bandwidth ratio
        ratio = derived.decode_time(1, 512) / l40s.decode_time(1, 512)
        bw_ratio = get_accelerator("l40s").hbm_bandwidth / spec.hbm_bandwidth
        assert 0.6 * bw_ratio < ratio < 1.1 * bw_ratio
        # prefill of a long prompt is compute-bound: follows the FLOPs ratio
        ratio_p = derived.prefill_time(4096) / l40s.prefill_time(4096)
        fl_ratio = get_accelerator("l40s").bf16_flops / spec.bf16_flops
        assert 0.6 * fl_ratio < ratio_p < 1.1 * fl_ratio
    for name in ("h100-80gb", "a100-80gb", "l40s"):
        assert get_accelerator(name).calibrated is True


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: get_accelerator("b200"),
            "b200.*valid: a100-40gb, a100-80gb, a10g, h100-80gb, h200, l4, l40s, mi300x, rtx-4090",
        ),
        (lambda: get_model("gpt-5"), "gpt-5.*valid: .*llama-3-8b"),
        (lambda: StepTimer("h100-80gb", "llama-3-8b", 3), "tensor_parallel_size"),
    ],
    ids=["accelerator", "model", "tp"],
)
def test_bad_names_raise_listing_valid_ones(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_host_overheads_grow_decode_with_batch_and_ttft_with_streams():
    """Timing model v2: per-sequence step cost and a front end that waits behind its streams."""
    from modelfleet.engine.timing import HOST_OVERHEADS, params_for

    accel = get_accelerator("h100-80gb")
    v2 = StepTimer(accel, "llama-3-8b")
    v1 = StepTimer(accel, "llama-3-8b", params=CALIBRATED["h100-80gb"])
    per_seq, per_request, per_stream = HOST_OVERHEADS
    assert per_seq > 0 and per_request > 0 and per_stream > 0
    assert v2.p == params_for(accel) and v1.p.per_seq_overhead == 0.0
    growth_v2 = v2.decode_time(32, 1024) - v1.decode_time(32, 1024)
    assert abs(growth_v2 - 32 * per_seq) < 1e-12
    assert v2.front_end_latency(0) == per_request
    assert v2.front_end_latency(10) == per_request + 10 * per_stream
    off = dataclasses.replace(v2.p, request_overhead=0.0, request_overhead_per_stream=0.0)
    assert StepTimer(accel, "llama-3-8b", params=off).front_end_latency(50) == 0.0
