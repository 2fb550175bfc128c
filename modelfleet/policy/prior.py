"""What configuration declares about an endpoint, and the priors a host derives from it.

Before a scheduler has observed a single request it knows, per endpoint, only what was
declared: the AcceleratorProfile (``memoryGiB``, ``prefillSpeed`` and ``decodeSpeed`` relative
to an H100-80GB), the ModelPool (``gpuMemoryUtilization``, ``maxNumSeqs``,
``maxNumBatchedTokens``, tensor parallel size) and the model's architecture (its
``config.json``: parameters, KV bytes per token). :class:`DeclaredHardware` holds exactly that;
two pure functions turn it into what the policy needs at start-up:

* :func:`prior_perf_model`: a :class:`~modelfleet.policy.perf.ParametricPerfModel` from
  rooflines of an H100 (datasheet 989 dense bf16 TFLOP/s and 3.35 TB/s) scaled by the declared
  speeds, with generic efficiencies (:data:`H100_REFERENCE`). It is deliberately a *prior*:
  the routing host refines it from observed latencies (:mod:`modelfleet.policy.learn`), so a
  declared speed that is off (a throttled GPU, a slower driver, a wrong profile) costs a few
  dozen requests, not the run.
* :func:`kv_capacity_tokens`: the KV-cache capacity vLLM derives from the same numbers (memory
  x utilisation, minus the weights per GPU and a fixed reserve, over the KV bytes of one token
  per shard), which sizes the approximate prefix index per endpoint.
* :func:`params_from_model_id`: the parameter count a model id states by convention
  (``Llama-3.1-70B-Instruct``: 70e9), for hosts that know only the id (the operator: a
  ModelPool names its model, it does not carry its ``config.json``).

Nothing here reads an engine or a simulator; the numbers are the configuration's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from modelfleet.policy.perf import ParametricPerfModel

__all__ = [
    "H100_REFERENCE",
    "DeclaredHardware",
    "Reference",
    "kv_capacity_tokens",
    "params_from_model_id",
    "prior_perf_model",
]

GIB = 1024**3


@dataclass(frozen=True, slots=True)
class Reference:
    """The H100-80GB the declared speeds are relative to, and generic efficiencies.

    Datasheet numbers (dense bf16 FLOP/s, HBM bytes/s) and efficiencies typical of vLLM on
    one GPU: prefill reaches ~60 % of peak FLOP/s on long chunks, decode ~80 % of the HBM
    bandwidth when reading the weights; tensor parallelism loses ~15 % to all-reduces. Fixed
    costs: a step's host overhead, and the API server's per-request work (front end). These
    are priors, not measurements of any deployment.
    """

    flops: float = 989e12
    hbm_bytes_per_s: float = 3.35e12
    prefill_efficiency: float = 0.6
    decode_efficiency: float = 0.8
    tp_efficiency: float = 0.85
    step_overhead_s: float = 0.0015
    per_seq_overhead_s: float = 2e-5
    typical_context_tokens: int = 4096
    front_end_s: float = 0.01
    reserve_gib: float = 2.0
    usable_memory_fraction: float = 0.98


H100_REFERENCE = Reference()


@dataclass(frozen=True, slots=True)
class DeclaredHardware:
    """One endpoint as configuration declares it (units: GiB, parameters, bytes, tokens).

    ``kv_bytes_per_token`` is K and V of one token over all layers for the whole model
    (``2 * layers * kv_heads * head_dim * dtype bytes``); with ``gpus`` > 1 each shard holds
    ``1/gpus`` of it (KV heads split by tensor parallelism).
    """

    prefill_speed: float = 1.0
    decode_speed: float = 1.0
    memory_gib: float = 80.0
    gpus: int = 1
    model_params: float = 8.03e9
    kv_bytes_per_token: float = 131_072.0
    dtype_bytes: int = 2
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    mean_output_tokens: float = 256.0

    def __post_init__(self) -> None:
        for name in (
            "prefill_speed",
            "decode_speed",
            "memory_gib",
            "model_params",
            "kv_bytes_per_token",
            "mean_output_tokens",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"DeclaredHardware.{name} must be finite and > 0, got {value}")
        if self.gpus < 1 or self.dtype_bytes < 1:
            raise ValueError("DeclaredHardware.gpus and dtype_bytes must be >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("DeclaredHardware.gpu_memory_utilization must be in (0, 1]")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError(
                "DeclaredHardware.max_num_seqs and max_num_batched_tokens must be >= 1"
            )


def prior_perf_model(hw: DeclaredHardware, ref: Reference = H100_REFERENCE) -> ParametricPerfModel:
    """The latency model an endpoint is assumed to have before anything is observed.

    Prefill (compute-bound): ``2 * params`` FLOPs per token at the declared share of the
    reference's FLOP/s. Decode step (bandwidth-bound): the weights of one shard read once at the
    declared share of its bandwidth, plus the step overhead; each sequence adds its KV cache at
    a typical context and a per-sequence host cost. TP > 1 divides the work by the GPUs at the
    reference's TP efficiency. The slot wait of a full batch is ``mean_output_tokens`` decode
    steps at a half-full batch.
    """
    par = hw.gpus * (ref.tp_efficiency if hw.gpus > 1 else 1.0)
    flops = ref.flops * ref.prefill_efficiency * hw.prefill_speed * par
    bw = ref.hbm_bytes_per_s * ref.decode_efficiency * hw.decode_speed * par
    per_token = 2.0 * hw.model_params / flops
    weights = hw.model_params * hw.dtype_bytes
    decode_base = weights / bw + ref.step_overhead_s
    per_seq = hw.kv_bytes_per_token * ref.typical_context_tokens / bw + ref.per_seq_overhead_s
    half = max(1, hw.max_num_seqs // 2)
    return ParametricPerfModel(
        prefill_base_s=ref.step_overhead_s,
        prefill_s_per_token=per_token,
        decode_base_s=decode_base,
        decode_s_per_seq=per_seq,
        chunk_tokens=hw.max_num_batched_tokens,
        max_num_seqs=hw.max_num_seqs,
        mean_decode_s_per_request=hw.mean_output_tokens * (decode_base + per_seq * half),
        front_end_s=ref.front_end_s,
    )


def kv_capacity_tokens(hw: DeclaredHardware, ref: Reference = H100_REFERENCE) -> int:
    """KV-cache tokens of one endpoint as vLLM sizes its cache from the declared numbers.

    ``usable = memoryGiB * usable_memory_fraction`` (what the driver reports is a little under
    the label), ``free = usable * gpuMemoryUtilization - weights / gpus - reserve`` per GPU,
    divided by the KV bytes of one token per shard. 0 when the weights do not fit.
    """
    usable = hw.memory_gib * ref.usable_memory_fraction * GIB
    free = usable * hw.gpu_memory_utilization
    free -= hw.model_params * hw.dtype_bytes / hw.gpus + ref.reserve_gib * GIB
    per_token = hw.kv_bytes_per_token / hw.gpus
    return max(0, int(free // per_token))


#: A size token of a model id: ``8B``, ``0.5B``, ``135M``, ``8x7B`` (experts x size), set off
#: by ``-``, ``_``, ``.``, ``/`` or the ends.
_SIZE = re.compile(r"(?:^|(?<=[-_./]))(?:(\d+)x)?(\d+(?:\.\d+)?)([bBmM])(?=$|[-_./])")


def params_from_model_id(model: str) -> float | None:
    """The parameter count a model id (or a path ending in one) states, or None.

    Reads the first size token of the last path component that has one (module docstring):
    ``meta-llama/Llama-3.1-8B-Instruct`` 8e9, ``Qwen/Qwen2.5-0.5B`` 0.5e9,
    ``HuggingFaceTB/SmolLM2-135M`` 0.135e9, ``mistralai/Mixtral-8x7B-v0.1`` 56e9 (every
    expert counted: the weights a replica holds, an upper bound of what a step reads). A
    name without one (``gpt2``, ``/models/my-model``) gives None: the caller keeps its
    default. A stated size is the family's rounded name, within a few % of the real count.
    """
    for part in reversed([p for p in model.split("/") if p]):
        m = _SIZE.search(part)
        if m is None:
            continue
        experts = int(m.group(1)) if m.group(1) else 1
        value = float(m.group(2)) * (1e9 if m.group(3) in "bB" else 1e6) * experts
        return value if value > 0 else None
    return None
