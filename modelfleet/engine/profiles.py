"""Accelerator and model specs, and the KV-cache capacity vLLM would derive from them.

Accelerator figures are datasheet values (dense bf16 tensor TFLOPs, HBM bandwidth) plus the
memory vLLM sees as "total GPU memory" (slightly under the marketing size). `calibrated`
says whether `timing.py` holds constants fitted to measurements for this GPU; L4 and A10G are
derived from L40S by bandwidth (decode) and FLOPs (prefill) and are marked uncalibrated.

Model figures are the Hugging Face configs of the Llama-3 family; `tiny` is a toy model for
tests (small enough that a handful of blocks fill the cache).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ACCELERATORS",
    "MODELS",
    "AcceleratorSpec",
    "ModelSpec",
    "derive_num_gpu_blocks",
    "get_accelerator",
    "get_model",
]

GIB = 1024**3


@dataclass(frozen=True)
class AcceleratorSpec:
    """One GPU type. Bandwidths in bytes/s, FLOPs in FLOP/s, memory in GiB."""

    name: str
    memory_gib: float  # as reported by torch.cuda.mem_get_info total
    hbm_bandwidth: float  # bytes/s
    bf16_flops: float  # dense bf16 tensor-core FLOP/s
    interconnect_bandwidth: float  # bytes/s per direction between GPUs of one TP group
    calibrated: bool
    derived_from: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer (Llama layout: GQA attention, gated MLP)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    num_params: float
    dtype_bytes: int = 2
    hf_name: str = ""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def weight_bytes(self) -> float:
        return self.num_params * self.dtype_bytes

    def kv_bytes_per_token(self, tensor_parallel_size: int = 1) -> float:
        """K and V for one token across all layers on one TP shard (KV heads are split, min 1)."""
        kv_heads = max(1, self.num_kv_heads // tensor_parallel_size)
        return 2.0 * self.num_layers * kv_heads * self.head_dim * self.dtype_bytes


ACCELERATORS: dict[str, AcceleratorSpec] = {
    a.name: a
    for a in (
        AcceleratorSpec("h100-80gb", 79.1, 3.35e12, 989e12, 450e9, calibrated=True),
        AcceleratorSpec("a100-80gb", 79.2, 2.039e12, 312e12, 300e9, calibrated=True),
        AcceleratorSpec("l40s", 44.4, 864e9, 362e12, 32e9, calibrated=True),
        AcceleratorSpec("l4", 22.0, 300e9, 121e12, 32e9, calibrated=False, derived_from="l40s"),
        # A10G: AWS's A10 variant; datasheet dense bf16 of the A10 (125 TFLOPs), 600 GB/s.
        AcceleratorSpec("a10g", 22.0, 600e9, 125e12, 32e9, calibrated=False, derived_from="l40s"),
    )
}

_LLAMA3_8B = ModelSpec(
    "llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8.03e9, hf_name="meta-llama/Meta-Llama-3-8B"
)
_LLAMA3_70B = ModelSpec(
    "llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 70.6e9, hf_name="meta-llama/Meta-Llama-3-70B"
)

MODELS: dict[str, ModelSpec] = {
    "llama-3-8b": _LLAMA3_8B,
    "llama-3-70b": _LLAMA3_70B,
    "llama-3.1-8b": ModelSpec(
        "llama-3.1-8b",
        32,
        4096,
        32,
        8,
        14336,
        128256,
        8.03e9,
        hf_name="meta-llama/Llama-3.1-8B-Instruct",
    ),
    "llama-3.1-70b": ModelSpec(
        "llama-3.1-70b",
        80,
        8192,
        64,
        8,
        28672,
        128256,
        70.6e9,
        hf_name="meta-llama/Llama-3.1-70B-Instruct",
    ),
    # Toy model for tests: tiny KV footprint, timing still follows the same formulas.
    "tiny": ModelSpec("tiny", 2, 256, 4, 2, 512, 1024, 2.0e6, hf_name="modelfleet/tiny"),
}

# Memory vLLM keeps outside the KV cache besides the weights: activations of the largest
# profiled batch, CUDA graphs, NCCL buffers, the CUDA context (measured: ~1-3 GiB on 8B).
_NON_KV_RESERVE_GIB = 2.0


def _choices(d: dict[str, object]) -> str:
    return ", ".join(sorted(d))


def get_accelerator(name: str) -> AcceleratorSpec:
    """The spec for `name`; ValueError listing the valid names otherwise."""
    try:
        return ACCELERATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown accelerator {name!r}; valid: {_choices(dict(ACCELERATORS))}"
        ) from None


def get_model(name: str) -> ModelSpec:
    """The spec for `name`; ValueError listing the valid names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid: {_choices(dict(MODELS))}") from None


def derive_num_gpu_blocks(
    accel: AcceleratorSpec,
    model: ModelSpec,
    tensor_parallel_size: int,
    block_size: int,
    gpu_memory_utilization: float,
) -> int:
    """KV blocks per engine, as vLLM computes them (per shard; every shard holds the same).

    free = total * utilization - weights / TP - reserve;  blocks = free // (block bytes / shard).
    ValueError when the weights do not fit, naming the numbers.
    """
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    budget = accel.memory_gib * GIB * gpu_memory_utilization
    weights = model.weight_bytes / tensor_parallel_size
    free = budget - weights - _NON_KV_RESERVE_GIB * GIB
    block_bytes = model.kv_bytes_per_token(tensor_parallel_size) * block_size
    blocks = int(free // block_bytes)
    if blocks <= 0:
        raise ValueError(
            f"{model.name} at tensor_parallel_size={tensor_parallel_size} does not fit on "
            f"{accel.name}: {weights / GIB:.1f} GiB of weights per GPU vs "
            f"{budget / GIB:.1f} GiB usable ({accel.memory_gib} GiB x {gpu_memory_utilization})"
        )
    return blocks
