"""The latency models' figures, exactly: the parametric model term by term, the (central, upper)
estimates, the priors from declared hardware, and admission's decisions with their numbers.

Every expected figure is composed by hand from the formula the docstrings state, with the
model's numbers written out, so a changed term, bound or rounding shows as a different figure.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from policy_fakes import PERF, ep, req

from modelfleet.policy.admission import SloClassPolicy, admit
from modelfleet.policy.learn import LearnedPerfModel
from modelfleet.policy.perf import (
    ParametricPerfModel,
    central_model,
    predict_ttft,
    tpot_estimate,
    ttft_estimate,
)
from modelfleet.policy.prior import DeclaredHardware, kv_capacity_tokens, prior_perf_model
from modelfleet.policy.types import EndpointId

pytestmark = pytest.mark.unit

# small numbers so every term of the formula is visible in a figure
M = ParametricPerfModel(
    prefill_base_s=0.01,
    prefill_s_per_token=1e-4,
    decode_base_s=0.02,
    decode_s_per_seq=1e-3,
    chunk_tokens=1000,
    max_num_seqs=4,
    mean_decode_s_per_request=3.0,
    front_end_s=0.05,
    front_end_per_stream_s=0.002,
)


@pytest.mark.parametrize(
    ("prompt", "cached", "running", "waiting", "pending", "streams", "expected"),
    [
        # own 2000 + pending 1200 = 3200 tokens; base x (1 + 1 waiting); 4 chunks x 1 ms x 2
        # running; no overflow (2 + 1 + 1 = 4 seats); front end 0.05 + 3 x 0.002
        (2500, 500, 2, 1, 1200, 3, 0.01 * 2 + 3200 * 1e-4 + 4 * 1e-3 * 2 + 0.05 + 3 * 0.002),
        # all cached, nothing queued, nothing running: one base and the front end only
        (500, 800, 0, 0, 0, 0, 0.01 + 0.05),
        # one pending token counts; 3001 tokens are 4 chunks, not 3
        (3000, 0, 1, 0, 1, 0, 0.01 + 3001 * 1e-4 + 4 * 1e-3 * 1 + 0.05),
        # exactly 3000 tokens: 3 chunks
        (3000, 0, 1, 0, 0, 0, 0.01 + 3000 * 1e-4 + 3 * 1e-3 * 1 + 0.05),
        # batch full: 4 + 4 + 1 - 4 = 5 over, ceil(5 / 4) = 2 batch-fulls of 3 s ahead
        (100, 0, 4, 4, 0, 0, 0.01 * 5 + 100 * 1e-4 + 1 * 1e-3 * 4 + 2 * 3.0 + 0.05),
        # one over (4 running + itself): one batch-full ahead
        (100, 0, 4, 0, 0, 0, 0.01 + 100 * 1e-4 + 1e-3 * 4 + 3.0 + 0.05),
        # 3 running + itself fill the 4 seats exactly: no wait for a slot
        (100, 0, 3, 0, 0, 0, 0.01 + 100 * 1e-4 + 1e-3 * 3 + 0.05),
    ],
    ids=["busy", "all-cached", "one-pending", "whole-chunks", "overflow", "one-over", "full"],
)
def test_parametric_ttft_term_by_term(
    prompt: int,
    cached: int,
    running: int,
    waiting: int,
    pending: int,
    streams: int,
    expected: float,
) -> None:
    got = M.predict_ttft(
        prompt,
        cached,
        running=running,
        waiting=waiting,
        pending_prefill_tokens=pending,
        streams=streams,
    )
    assert got == pytest.approx(expected, rel=1e-12)


def test_front_end_per_stream_alone_still_counts() -> None:
    m = replace(M, front_end_s=0.0)
    got = m.predict_ttft(0, 0, running=0, waiting=0, pending_prefill_tokens=0, streams=5)
    assert got == pytest.approx(0.01 + 5 * 0.002)
    # a caller that does not know the streams passes none: no stream term
    assert m.predict_ttft(0, 0, running=0, waiting=0, pending_prefill_tokens=0) == 0.01
    none = replace(M, front_end_s=0.0, front_end_per_stream_s=0.0)
    assert none.predict_ttft(0, 0, running=0, waiting=0, pending_prefill_tokens=0, streams=5) == (
        pytest.approx(0.01)
    )


@pytest.mark.parametrize(
    ("running", "batch"), [(0, 1), (1, 1), (2, 2), (3, 3), (4, 4), (10, 4)], ids=str
)
def test_parametric_tpot_batch_floor_and_cap(running: int, batch: int) -> None:
    assert M.predict_tpot(running=running) == pytest.approx(0.02 + 1e-3 * batch, rel=1e-12)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prefill_base_s", -1.0),
        ("prefill_s_per_token", float("nan")),
        ("decode_base_s", float("inf")),
        ("decode_s_per_seq", -1e-9),
        ("mean_decode_s_per_request", -2.0),
        ("front_end_s", -0.1),
        ("front_end_per_stream_s", -0.1),
    ],
)
def test_bad_coefficients_are_refused_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"ParametricPerfModel\.{field} must be finite"):
        ParametricPerfModel(**{field: value})
    ParametricPerfModel(**{field: 0.0})  # zero is a valid coefficient


@pytest.mark.parametrize("kw", [{"chunk_tokens": 0}, {"max_num_seqs": 0}], ids=str)
def test_chunk_and_batch_must_be_positive(kw: dict[str, Any]) -> None:
    with pytest.raises(
        ValueError, match=r"^ParametricPerfModel\.chunk_tokens and max_num_seqs must be > 0$"
    ):
        ParametricPerfModel(**kw)
    ParametricPerfModel(**{next(iter(kw)): 1})


def test_a_queued_request_is_taken_out_of_every_count_including_the_streams() -> None:
    view = ep("a", running=1, waiting=2, inflight_prefill_tokens=1500, inflight_requests=3)
    # queued itself: 1 waiting, 500 pending, 2 streams ahead of it
    expected = M.predict_ttft(1000, 0, running=1, waiting=1, pending_prefill_tokens=500, streams=2)
    assert predict_ttft(M, view, 1000, queued_itself=True) == expected
    # not queued: everything counts, the 3 streams too
    assert predict_ttft(M, view, 1000) == M.predict_ttft(
        1000, 0, running=1, waiting=2, pending_prefill_tokens=1500, streams=3
    )
    # counters that lag behind the request never go below zero
    lagging = ep("a", running=1, waiting=0, inflight_prefill_tokens=0, inflight_requests=0)
    assert predict_ttft(M, lagging, 1000, queued_itself=True) == M.predict_ttft(
        1000, 0, running=1, waiting=0, pending_prefill_tokens=0, streams=0
    )


def _learned() -> LearnedPerfModel:
    central = LearnedPerfModel(M, (0.0, 1.0, 0.0), (0.0, 1.0))
    return LearnedPerfModel(M, (0.1, 2.0, 0.01), (0.005, 3.0), central)


def test_estimates_pair_the_central_and_the_upper_model() -> None:
    learned = _learned()
    assert central_model(learned) is learned.central
    assert central_model(M) is M
    view = ep("a", running=2, waiting=1, inflight_prefill_tokens=1200, inflight_requests=3)
    # a learned model scales the prior without its front-end stream term and adds its own
    base = M.predict_ttft(2500, 500, running=2, waiting=1, pending_prefill_tokens=1200)
    assert ttft_estimate(learned, view, 2500, 500) == pytest.approx(
        (base, 0.1 + 2.0 * base + 0.01 * 3)
    )
    own = M.predict_ttft(2500, 500, running=2, waiting=0, pending_prefill_tokens=0)
    assert ttft_estimate(learned, view, 2500, 500, queued_itself=True) == pytest.approx(
        (own, 0.1 + 2.0 * own + 0.01 * 2)
    )
    plain = predict_ttft(M, view, 2500, 500)
    assert ttft_estimate(M, view, 2500, 500) == (plain, plain)
    # defaults: nothing cached, not queued itself
    assert ttft_estimate(M, view, 2500) == (predict_ttft(M, view, 2500, 0),) * 2
    # a learned model without the streams argument has no stream term
    assert learned.predict_ttft(2500, 500, running=2, waiting=1, pending_prefill_tokens=1200) == (
        pytest.approx(0.1 + 2.0 * base)
    )
    tpot = M.predict_tpot(running=3)
    assert tpot_estimate(learned, 3) == pytest.approx((tpot, 0.005 + 3.0 * tpot))
    assert tpot_estimate(M, 3) == (tpot, tpot)


# -- priors from declared hardware ------------------------------------------------------------

H100_8B = DeclaredHardware()
BIG = replace(H100_8B, model_params=70.6e9, kv_bytes_per_token=327_680.0)


def test_prior_of_an_h100_running_8b_term_by_term() -> None:
    p = prior_perf_model(H100_8B)
    flops = 989e12 * 0.6  # datasheet x prefill efficiency, declared speed 1, one GPU
    bw = 3.35e12 * 0.8  # datasheet x decode efficiency
    decode_base = 8.03e9 * 2 / bw + 0.0015  # the weights read once + the step overhead
    per_seq = 131_072 * 4096 / bw + 2e-5  # KV of a typical context + host cost per sequence
    assert p.prefill_base_s == 0.0015
    assert p.prefill_s_per_token == pytest.approx(2 * 8.03e9 / flops, rel=1e-12)
    assert p.decode_base_s == pytest.approx(decode_base, rel=1e-12)
    assert p.decode_s_per_seq == pytest.approx(per_seq, rel=1e-12)
    assert (p.chunk_tokens, p.max_num_seqs) == (8192, 256)
    other = prior_perf_model(replace(H100_8B, max_num_batched_tokens=2048, max_num_seqs=64))
    assert (other.chunk_tokens, other.max_num_seqs) == (2048, 64)
    # the slot wait: 256 mean output tokens of decode steps at a half-full batch (128)
    assert p.mean_decode_s_per_request == pytest.approx(256 * (decode_base + per_seq * 128))
    assert (p.front_end_s, p.front_end_per_stream_s) == (0.01, 0.0)


def test_prior_scales_with_the_declared_speeds_and_tensor_parallelism() -> None:
    base = prior_perf_model(BIG)
    slow = prior_perf_model(replace(BIG, prefill_speed=0.5, decode_speed=0.25))
    assert slow.prefill_s_per_token == pytest.approx(2 * base.prefill_s_per_token)
    assert slow.decode_base_s - 0.0015 == pytest.approx(4 * (base.decode_base_s - 0.0015))
    tp2 = prior_perf_model(replace(BIG, gpus=2))  # two GPUs already lose 15 %
    assert base.prefill_s_per_token / tp2.prefill_s_per_token == pytest.approx(1.7)
    tp4 = prior_perf_model(replace(BIG, gpus=4))
    # four GPUs at 85 % efficiency each: 3.4 times the single GPU's throughput
    assert base.prefill_s_per_token / tp4.prefill_s_per_token == pytest.approx(3.4)
    assert (base.decode_s_per_seq - 2e-5) / (tp4.decode_s_per_seq - 2e-5) == pytest.approx(3.4)
    # a batch of one sequence still has a slot wait (half of max 1 is floored at 1)
    one = prior_perf_model(replace(H100_8B, max_num_seqs=1))
    assert one.mean_decode_s_per_request == pytest.approx(
        256 * (one.decode_base_s + one.decode_s_per_seq * 1)
    )
    five = prior_perf_model(replace(H100_8B, max_num_seqs=5))  # half of 5 is 2 sequences
    assert five.mean_decode_s_per_request == pytest.approx(
        256 * (five.decode_base_s + five.decode_s_per_seq * 2)
    )


def test_kv_capacity_term_by_term() -> None:
    gib = 1024**3
    # 80 GiB x 0.98 usable x 0.9 utilisation - 16.06 GB of bf16 weights - 2 GiB reserve,
    # over 128 KiB per token
    free = 80 * 0.98 * gib * 0.9 - 8.03e9 * 2 - 2 * gib
    assert kv_capacity_tokens(H100_8B) == int(free // 131_072) == 439_115
    # TP 4: a quarter of the weights and a quarter of the KV bytes per GPU
    free4 = 80 * 0.98 * gib * 0.9 - 70.6e9 * 2 / 4 - 2 * gib
    assert kv_capacity_tokens(replace(BIG, gpus=4)) == int(free4 // (327_680 / 4)) == 467_721
    assert kv_capacity_tokens(BIG) == 0  # 141 GB of weights do not fit on one GPU


_SEQS = "max_num_seqs and max_num_batched_tokens must be >= 1"


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"decode_speed": -1.0}, "decode_speed must be finite and > 0, got -1.0"),
     ({"model_params": float("inf")}, "model_params must be finite and > 0, got inf"),
     ({"kv_bytes_per_token": 0.0}, "kv_bytes_per_token must be finite and > 0, got 0.0"),
     ({"mean_output_tokens": 0.0}, "mean_output_tokens must be finite and > 0, got 0.0"),
     ({"dtype_bytes": 0}, "gpus and dtype_bytes must be >= 1"),
     ({"gpus": 0}, "gpus and dtype_bytes must be >= 1"),
     ({"gpu_memory_utilization": 0.0}, r"gpu_memory_utilization must be in \(0, 1\]"),
     ({"max_num_seqs": 0}, _SEQS), ({"max_num_batched_tokens": 0}, _SEQS)],
)  # fmt: skip
def test_more_bad_declarations_are_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=rf"^DeclaredHardware\.{message}$"):
        DeclaredHardware(**kw)


def test_boundary_declarations_are_accepted() -> None:
    hw = DeclaredHardware(gpu_memory_utilization=1.0, max_num_seqs=1, max_num_batched_tokens=1)
    assert kv_capacity_tokens(hw) > kv_capacity_tokens(H100_8B)
    one_byte = DeclaredHardware(dtype_bytes=1)  # 8-bit weights: half the bytes of bf16
    assert prior_perf_model(one_byte).decode_base_s == pytest.approx(
        8.03e9 / (3.35e12 * 0.8) + 0.0015
    )


# -- admission with its figures ---------------------------------------------------------------


def test_admit_reports_the_best_endpoint_and_its_prediction() -> None:
    slow_kw = {"inflight_prefill_tokens": 1000}
    eps = [ep("slow", perf=PERF, **slow_kw), ep("fast", perf=PERF)]
    r = req(prompt_tokens=2000, ttft_slo_s=5.0)
    d = admit(r, eps, {}, SloClassPolicy("c"))
    assert (d.action, d.best_endpoint, d.reason) == ("admit", "fast", "target met")
    assert d.best_predicted_ttft_s == pytest.approx(0.01 + 2000 * 1e-4)
    # the slow endpoint's prefix hit of the whole prompt leaves only its queue: 0.11 s < 0.21 s
    d = admit(r, eps, {EndpointId("slow"): 2000}, SloClassPolicy("c"))
    assert (d.best_endpoint, d.best_predicted_ttft_s) == ("slow", pytest.approx(0.01 + 0.1))


def test_slack_stretches_the_target_and_the_retry_after() -> None:
    jam = {"inflight_prefill_tokens": 20_000}
    pred = 0.01 + 22_000 * 1e-4  # 2.21 s
    r = req(prompt_tokens=2000, ttft_slo_s=1.0)
    eps = [ep("j", perf=PERF, **jam)]
    assert admit(r, eps, {}, SloClassPolicy("c", slack=3.0)).action == "admit"
    d = admit(r, eps, {}, SloClassPolicy("c", slack=2.0))
    assert (d.action, d.best_endpoint) == ("queue", "j")
    assert d.best_predicted_ttft_s == pytest.approx(pred)
    assert d.retry_after_s == pytest.approx(pred - 2.0)
    assert d.reason == f"best predicted TTFT {pred:.3f}s on j exceeds class 'c' target 1.000s"
    shed = admit(r, eps, {}, SloClassPolicy("s", on_unmeetable="shed"))
    assert (shed.action, shed.best_endpoint, shed.retry_after_s) == ("shed", "j", None)
    assert shed.best_predicted_ttft_s == pytest.approx(pred)
    down = admit(r, eps, {}, SloClassPolicy("d", on_unmeetable="downgrade", downgrade_pool="s"))
    assert (down.action, down.best_endpoint, down.downgrade_pool) == ("downgrade", "j", "s")
    assert down.best_predicted_ttft_s == pytest.approx(pred) and down.reason == shed.reason.replace(
        "'s'", "'d'"
    )


def test_unhealthy_endpoints_do_not_count() -> None:
    r = req(prompt_tokens=10, ttft_slo_s=5.0)
    sick = ep("sick", perf=PERF, healthy=False)
    d = admit(r, [sick], {}, SloClassPolicy("c", on_unmeetable="downgrade", downgrade_pool="p"))
    assert (d.action, d.reason, d.downgrade_pool) == ("downgrade", "no healthy endpoint", "p")
    assert admit(r, [sick], {}, SloClassPolicy("c")).reason == "no healthy endpoint"
    d = admit(r, [sick, ep("ok", perf=PERF)], {}, SloClassPolicy("c"))
    assert (d.action, d.best_endpoint) == ("admit", "ok")
    # no target: admitted with that reason, before any prediction
    assert admit(req(prompt_tokens=10), [ep("ok")], {}, SloClassPolicy("c")).reason == (
        "no TTFT target"
    )
    assert admit(r, [ep("blind")], {}, SloClassPolicy("c")).reason == (
        "no perf model to judge the target"
    )


def test_a_prediction_exactly_on_target_is_admitted() -> None:
    flat = ParametricPerfModel(prefill_base_s=0.25, prefill_s_per_token=0.0)  # 0.25 s, exactly
    r = req(prompt_tokens=100, ttft_slo_s=0.25)
    assert admit(r, [ep("a", perf=flat)], {}, SloClassPolicy("c")).action == "admit"
    late = req(prompt_tokens=100, ttft_slo_s=0.125)
    assert admit(late, [ep("a", perf=flat)], {}, SloClassPolicy("c", slack=2.0)).action == "admit"


@pytest.mark.parametrize("slack", [0.0, -1.0])
def test_slack_must_be_positive(slack: float) -> None:
    with pytest.raises(ValueError, match="SLO class 'x': slack must be > 0"):
        SloClassPolicy("x", slack=slack)
    with pytest.raises(ValueError, match="SLO class 'x': onUnmeetable 'downgrade' needs"):
        SloClassPolicy("x", on_unmeetable="downgrade")
