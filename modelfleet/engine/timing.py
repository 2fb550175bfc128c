"""Step-time model: how long one engine step takes on a given (accelerator, model, TP).

Algorithm (a roofline per kernel, the decomposition vLLM's forward pass has; per TP shard):

    per layer, m = tokens in the step (prefill chunk tokens + one per decoding sequence)
      GEMM(m, n, k)   = max(2mnk / (F * e_c),  2(nk + mn + mk) / (B * e_m)) + g0
                        for QKV, O, gate+up, down, with n or k divided by TP
      prefill attn    = 4 * heads/TP * head_dim * pairs / (F * e_ap) + a_pt * heads/TP * new
                        + a_p0
                        pairs = sum over chunks of new*ctx + new*(new+1)/2 (causal)
      decode attn     = KV bytes/TP of all decoding contexts / (B * e_ad) + a_d0 + a_ds * seqs
      all-reduce      = 2 * (r0[TP] + 2 bytes * m * hidden / r_bw[TP])   (TP > 1: after attn
                        and after the MLP; fitted per TP size, PCIe and NVLink differ a lot)
      elementwise     = m * hidden * w / B                        (norms, RoPE, SiLU, residual)
    step = layers * per_layer + GEMM(seqs, vocab/TP, hidden) + c0

F and B are the datasheet bf16 FLOP/s and HBM bandwidth of the accelerator; the
efficiencies, floors and constants are fitted per accelerator by `bench/engine_calibration.py`
to vLLM kernel measurements (aiconfigurator-core) and end-to-end measurements (splitwise-sim)
and pasted into `CALIBRATED` below. L4 and A10G reuse L40S's constants with their own F and B,
i.e. decode scales by bandwidth and prefill by FLOPs; they are marked uncalibrated.

Why a roofline and not a lookup table: it is monotone in every input by construction (more
tokens, more context or more sequences never make a step faster), it extrapolates to shapes
the tables lack, and it costs a few microseconds per step, which virtual time needs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from modelfleet.engine.profiles import (
    AcceleratorSpec,
    ModelSpec,
    resolve_accelerator,
    resolve_model,
)

__all__ = ["CALIBRATED", "HOST_OVERHEADS", "StepTimer", "TimingParams", "params_for"]

_TP_INDEX = {1: 0, 2: 0, 4: 1, 8: 2}


@dataclass(frozen=True)
class TimingParams:
    """Fitted constants of one accelerator (seconds, fractions of peak, bytes/s)."""

    gemm_compute_eff: float
    gemm_memory_eff: float
    gemm_floor: float
    attn_prefill_eff: float
    attn_prefill_floor: float
    attn_prefill_per_token: float  # seconds per (token x head): Q/K/V loads, tile waste
    attn_decode_eff: float
    attn_decode_floor: float
    attn_decode_per_seq: float
    allreduce_latency: tuple[float, float, float]  # TP 2, 4, 8
    allreduce_bandwidth: tuple[float, float, float]  # elements*2 bytes / s, TP 2, 4, 8
    elementwise_bytes_per_hidden: float
    step_overhead: float
    # Host-side costs (timing model v2; fitted to public end-to-end vLLM measurements by
    # bench/engine_fidelity.py, the same for every GPU): per sequence per step (scheduling,
    # input preparation, sampling, output processing) and per request (HTTP, tokenisation,
    # detokenisation and streaming in the API server; latency, not GPU time).
    per_seq_overhead: float = 0.0
    request_overhead: float = 0.0
    request_overhead_per_stream: float = 0.0  # grows with the streams the front end serves


# Fitted by bench/engine_calibration.py (see bench/results/engine-calibration.md).
CALIBRATED: dict[str, TimingParams] = {
    "h100-80gb": TimingParams(
        gemm_compute_eff=0.7895,
        gemm_memory_eff=0.8187,
        gemm_floor=3.408e-06,
        attn_prefill_eff=0.682,
        attn_prefill_floor=1.289e-05,
        attn_prefill_per_token=4.991e-10,
        attn_decode_eff=0.9562,
        attn_decode_floor=1.194e-05,
        attn_decode_per_seq=3.842e-08,
        allreduce_latency=(4.226e-06, 4.85e-06, 5.66e-06),
        allreduce_bandwidth=(2.326e11, 1.763e11, 1.726e11),
        elementwise_bytes_per_hidden=54.11,
        step_overhead=0.001,
    ),
    "a100-80gb": TimingParams(
        gemm_compute_eff=0.7253,
        gemm_memory_eff=0.7092,
        gemm_floor=5.698e-06,
        attn_prefill_eff=0.554,
        attn_prefill_floor=1.137e-05,
        attn_prefill_per_token=1.151e-09,
        attn_decode_eff=0.7867,
        attn_decode_floor=1.853e-05,
        attn_decode_per_seq=1.233e-08,
        allreduce_latency=(4.98e-06, 5.671e-06, 8.1e-06),
        allreduce_bandwidth=(1.696e11, 1.05e11, 9.426e10),
        elementwise_bytes_per_hidden=62.23,
        step_overhead=0.001,
    ),
    "l40s": TimingParams(
        gemm_compute_eff=0.5892,
        gemm_memory_eff=0.8282,
        gemm_floor=1.285e-21,
        attn_prefill_eff=0.5395,
        attn_prefill_floor=7.496e-06,
        attn_prefill_per_token=7.768e-10,
        attn_decode_eff=0.8121,
        attn_decode_floor=8.398e-06,
        attn_decode_per_seq=1.374e-22,
        allreduce_latency=(5.413e-06, 1.27e-05, 2.276e-05),
        allreduce_bandwidth=(1.896e10, 2.634e09, 1.286e09),
        elementwise_bytes_per_hidden=62.23,
        step_overhead=0.001,
    ),
}


# Host-side overheads (per_seq_overhead, request_overhead, request_overhead_per_stream; s),
# fitted by
# bench/engine_fidelity.py to public vLLM concurrency sweeps (bench/results/engine-fidelity.md).
HOST_OVERHEADS: tuple[float, float, float] = (1.763e-05, 0.009076, 0.004535)


def params_for(accel: AcceleratorSpec) -> TimingParams:
    """Kernel constants fitted for this GPU, or those of the GPU it is derived from, plus the
    host overheads (the same for every GPU)."""
    if accel.name in CALIBRATED:
        base = CALIBRATED[accel.name]
    elif accel.derived_from is not None and accel.derived_from in CALIBRATED:
        base = CALIBRATED[accel.derived_from]
    else:
        raise ValueError(f"no timing constants for accelerator {accel.name!r}")
    per_seq, per_request, per_stream = HOST_OVERHEADS
    return replace(
        base,
        per_seq_overhead=per_seq,
        request_overhead=per_request,
        request_overhead_per_stream=per_stream,
    )


class StepTimer:
    """Step durations for one (accelerator, model, TP). Pure; caches the token-count part."""

    def __init__(
        self,
        accelerator: AcceleratorSpec | str,
        model: ModelSpec | str,
        tensor_parallel_size: int = 1,
        params: TimingParams | None = None,
    ) -> None:
        self.accel = resolve_accelerator(accelerator)
        self.model = resolve_model(model)
        tp = tensor_parallel_size
        if tp not in (1, 2, 4, 8):
            raise ValueError(f"tensor_parallel_size must be 1, 2, 4 or 8, got {tp}")
        if self.model.num_heads % tp:
            raise ValueError(
                f"{self.model.name} has {self.model.num_heads} heads, not divisible by TP {tp}"
            )
        self.tp = tp
        self.p = params if params is not None else params_for(self.accel)
        self.request_overhead = self.p.request_overhead

        m = self.model
        hd = m.head_dim
        self._gemm_shapes = (
            ((m.num_heads + 2 * m.num_kv_heads) * hd // tp, m.hidden_size),
            (m.hidden_size, m.hidden_size // tp),
            (2 * m.intermediate_size // tp, m.hidden_size),
            (m.hidden_size, m.intermediate_size // tp),
        )
        self._lm_head = (m.vocab_size // tp, m.hidden_size)
        self._flops = self.accel.bf16_flops
        self._bw = self.accel.hbm_bandwidth
        self._heads = m.num_heads // tp
        self._attn_flops_per_pair = 4.0 * self._heads * hd
        self._kv_bytes_per_token_layer = 2.0 * max(1, m.num_kv_heads // tp) * hd * m.dtype_bytes
        self._dense_cache: dict[tuple[int, int], float] = {}
        self._decode_base: dict[int, float] = {}
        self._decode_ctx_coef = (
            self.model.num_layers
            * self._kv_bytes_per_token_layer
            / (self._bw * self.p.attn_decode_eff)
        )

    def front_end_latency(self, streams_in_flight: int) -> float:
        """Seconds between a request's arrival and its reaching the engine core: the API
        server's per-request work, which waits behind the streams it is already serving."""
        p = self.p
        return p.request_overhead + p.request_overhead_per_stream * streams_in_flight

    # -- pieces (seconds)
    def gemm(self, m: int, n: int, k: int) -> float:
        """Roofline time of one bf16 GEMM [m x k] @ [k x n]."""
        p = self.p
        compute = 2.0 * m * n * k / (self._flops * p.gemm_compute_eff)
        memory = 2.0 * (n * k + m * n + m * k) / (self._bw * p.gemm_memory_eff)
        return max(compute, memory) + p.gemm_floor

    def dense_layer(self, tokens: int) -> float:
        """Per layer: GEMMs + all-reduces + elementwise ops for `tokens` tokens."""
        p = self.p
        t = sum(self.gemm(tokens, n, k) for n, k in self._gemm_shapes)
        if self.tp > 1:
            t += 2.0 * self.allreduce(tokens * self.model.hidden_size)
        t += tokens * self.model.hidden_size * p.elementwise_bytes_per_hidden / self._bw
        return t

    def allreduce(self, elements: int) -> float:
        """One all-reduce of `elements` bf16 values across the TP group."""
        i = _TP_INDEX[self.tp]
        return self.p.allreduce_latency[i] + 2.0 * elements / self.p.allreduce_bandwidth[i]

    def prefill_attention(self, tokens: int, pairs: float) -> float:
        """Per layer: causal attention of `tokens` new tokens over `pairs` (query, key) pairs."""
        p = self.p
        return (
            self._attn_flops_per_pair * pairs / (self._flops * p.attn_prefill_eff)
            + p.attn_prefill_per_token * self._heads * tokens
            + p.attn_prefill_floor
        )

    def decode_attention(self, seqs: int, context_tokens: int) -> float:
        """Per layer: `seqs` one-token queries reading `context_tokens` cached tokens in all."""
        p = self.p
        return (
            self._kv_bytes_per_token_layer * context_tokens / (self._bw * p.attn_decode_eff)
            + p.attn_decode_floor
            + p.attn_decode_per_seq * seqs
        )

    # -- the step
    def dense_part(self, tokens: int, seqs: int) -> float:
        """Everything but attention for a step of `tokens` tokens and `seqs` sampling sequences."""
        key = (tokens, seqs)
        t = self._dense_cache.get(key)
        if t is None:
            t = self.model.num_layers * self.dense_layer(tokens)
            t += self.gemm(max(seqs, 1), *self._lm_head) + self.p.step_overhead
            t += self.p.per_seq_overhead * max(seqs, 1)
            if len(self._dense_cache) < 65536:
                self._dense_cache[key] = t
        return t

    def step_time(
        self,
        prefill_tokens: int,
        prefill_pairs: float,
        decode_seqs: int,
        decode_context: int,
        sampling_seqs: int | None = None,
    ) -> float:
        """Seconds for a step with the given prefill chunks and decoding sequences.

        `prefill_pairs` is sum(new*ctx + new*(new+1)/2) over prefill chunks; `decode_context` is
        the total number of cached tokens the decoding sequences attend to.
        """
        tokens = prefill_tokens + decode_seqs
        if tokens <= 0:
            return 0.0
        seqs = decode_seqs if sampling_seqs is None else sampling_seqs
        if prefill_tokens == 0 and seqs == decode_seqs:
            return self.decode_step_time(decode_seqs, decode_context)
        t = self.dense_part(tokens, seqs)
        layers = self.model.num_layers
        if prefill_tokens:
            t += layers * self.prefill_attention(prefill_tokens, prefill_pairs)
        if decode_seqs:
            t += layers * self.decode_attention(decode_seqs, decode_context)
        return t

    def decode_step_time(self, seqs: int, context: int) -> float:
        """A pure-decode step (the virtual-time fast path calls this directly).

        = dense part + layers * decode attention, with everything but the context term
        cached per batch size (this runs once per simulated decode step).
        """
        base = self._decode_base.get(seqs)
        if base is None:
            p = self.p
            base = self.dense_part(seqs, seqs) + self.model.num_layers * (
                p.attn_decode_floor + p.attn_decode_per_seq * seqs
            )
            self._decode_base[seqs] = base
        return base + self._decode_ctx_coef * context

    # -- convenience for callers and tests
    def prefill_time(self, prompt_tokens: int, cached_tokens: int = 0) -> float:
        """One-chunk prefill of a single request (TTFT without queueing)."""
        new = prompt_tokens - cached_tokens
        pairs = new * cached_tokens + new * (new + 1) / 2
        return self.step_time(new, pairs, 0, 0, sampling_seqs=1)

    def decode_time(self, batch: int, context_per_seq: int) -> float:
        """One decode step of `batch` sequences with `context_per_seq` cached tokens each."""
        return self.step_time(0, 0.0, batch, batch * context_per_seq)
