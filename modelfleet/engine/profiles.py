"""Accelerator and model specs, presets, and the KV-cache capacity vLLM would derive from them.

An accelerator is its datasheet numbers (dense bf16 tensor FLOP/s, HBM bandwidth, the memory
vLLM sees as "total GPU memory", slightly under the marketing size). Its timing constants are
either *fitted* to measurements of that GPU (``calibrated=True``; ``timing.CALIBRATED``) or
*derived*: borrowed from the fitted GPU named in ``derived_from`` and applied to the GPU's own
FLOP/s and bandwidth, so decode scales by bandwidth and prefill by FLOPs. A user describes
any other GPU with :func:`parse_accelerator` (``name=...,memory_gib=...,hbm_tbps=...,
bf16_tflops=...``) or from an AcceleratorProfile (:func:`accelerator_from_profile`, whose
speeds are relative to an H100).

A model is its architecture numbers (layers, hidden size, heads, KV heads, intermediate size,
vocabulary, dtype), from a preset, a Hugging Face ``config.json`` (:func:`model_from_hf_config`)
or CLI flags; the parameter count follows from them when not given. Presets are the published
configs of the Llama-3, Llama-3.2, Qwen2.5 and Mistral families plus ``tiny``, a toy model for
tests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ACCELERATORS",
    "MODELS",
    "AcceleratorSpec",
    "ModelSpec",
    "accelerator_from_profile",
    "derive_num_gpu_blocks",
    "get_accelerator",
    "get_model",
    "model_from_hf_config",
    "parse_accelerator",
    "resolve_accelerator",
    "resolve_model",
    "vllm_default_max_num_batched_tokens",
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

    def __post_init__(self) -> None:
        for name in ("memory_gib", "hbm_bandwidth", "bf16_flops", "interconnect_bandwidth"):
            if not getattr(self, name) > 0:
                raise ValueError(f"accelerator {self.name!r}: {name} must be positive")
        if not self.calibrated and not self.derived_from:
            raise ValueError(
                f"accelerator {self.name!r} is neither calibrated nor derived_from a calibrated one"
            )


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
    num_params: float = 0.0  # 0 = derived from the architecture numbers
    dtype_bytes: int = 2
    hf_name: str = ""
    explicit_head_dim: int = 0  # 0 = hidden_size // num_heads
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model {self.name!r}: {name} must be positive")
        for name in ("intermediate_size", "vocab_size", "dtype_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model {self.name!r}: {name} must be positive")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model {self.name!r}: num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.num_params <= 0:
            object.__setattr__(self, "num_params", self.derived_num_params())

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden_size // self.num_heads

    def derived_num_params(self) -> float:
        """Weights of a Llama-layout decoder: embeddings, per layer QKV/O + gated MLP + norms."""
        hd = self.head_dim
        attn = self.hidden_size * (self.num_heads + 2 * self.num_kv_heads) * hd
        attn += self.num_heads * hd * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        embed = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embed
        return float(embed + head + self.num_layers * (attn + mlp + 2 * self.hidden_size))

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
        # fitted: timing constants fitted to kernel tables of this GPU (timing.CALIBRATED)
        AcceleratorSpec("h100-80gb", 79.1, 3.35e12, 989e12, 450e9, calibrated=True),
        AcceleratorSpec("a100-80gb", 79.2, 2.039e12, 312e12, 300e9, calibrated=True),
        AcceleratorSpec("l40s", 44.4, 864e9, 362e12, 32e9, calibrated=True),
        # derived: datasheet FLOP/s and bandwidth, constants of `derived_from`
        AcceleratorSpec("l4", 22.0, 300e9, 121e12, 32e9, calibrated=False, derived_from="l40s"),
        # A10G: AWS's A10 variant; datasheet dense bf16 of the A10 (125 TFLOPs), 600 GB/s.
        AcceleratorSpec("a10g", 22.0, 600e9, 125e12, 32e9, calibrated=False, derived_from="l40s"),
        AcceleratorSpec(
            "a100-40gb", 39.4, 1.555e12, 312e12, 300e9, calibrated=False, derived_from="a100-80gb"
        ),
        AcceleratorSpec(
            "h200", 139.8, 4.8e12, 989e12, 450e9, calibrated=False, derived_from="h100-80gb"
        ),
        AcceleratorSpec(
            "mi300x", 191.5, 5.3e12, 1307e12, 448e9, calibrated=False, derived_from="h100-80gb"
        ),
        AcceleratorSpec(
            "rtx-4090", 23.6, 1.008e12, 165e12, 32e9, calibrated=False, derived_from="l40s"
        ),
    )
}

_LLAMA3_8B = ModelSpec(
    "llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8.03e9, hf_name="meta-llama/Meta-Llama-3-8B"
)
_LLAMA3_70B = ModelSpec(
    "llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 70.6e9, hf_name="meta-llama/Meta-Llama-3-70B"
)


def _m(name: str, hf: str, *arch: int, tie: bool = False, head_dim: int = 0) -> ModelSpec:
    layers, hidden, heads, kv, inter, vocab = arch
    return ModelSpec(
        name, layers, hidden, heads, kv, inter, vocab, hf_name=hf, explicit_head_dim=head_dim,
        tie_word_embeddings=tie,
    )  # fmt: skip


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        _LLAMA3_8B,
        _LLAMA3_70B,
        ModelSpec(
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
        ModelSpec(
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
        _m(
            "llama-3.2-1b",
            "meta-llama/Llama-3.2-1B-Instruct",
            16,
            2048,
            32,
            8,
            8192,
            128256,
            tie=True,
            head_dim=64,
        ),
        _m(
            "llama-3.2-3b",
            "meta-llama/Llama-3.2-3B-Instruct",
            28,
            3072,
            24,
            8,
            8192,
            128256,
            tie=True,
            head_dim=128,
        ),
        _m("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", 24, 896, 14, 2, 4864, 151936, tie=True),
        _m("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B-Instruct", 28, 1536, 12, 2, 8960, 151936, tie=True),
        _m("qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", 28, 3584, 28, 4, 18944, 152064),
        _m("mistral-7b", "mistralai/Mistral-7B-Instruct-v0.3", 32, 4096, 32, 8, 14336, 32768),
        # Toy model for tests: tiny KV footprint, timing still follows the same formulas.
        ModelSpec("tiny", 2, 256, 4, 2, 512, 1024, 2.0e6, hf_name="modelfleet/tiny"),
    )
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


def resolve_accelerator(accel: str | AcceleratorSpec) -> AcceleratorSpec:
    """A spec as given, or the preset of that name."""
    return accel if isinstance(accel, AcceleratorSpec) else get_accelerator(accel)


def resolve_model(model: str | ModelSpec) -> ModelSpec:
    """A spec as given, the preset of that name, or a model folder's ``config.json``."""
    if isinstance(model, ModelSpec):
        return model
    if model not in MODELS and (Path(model).expanduser() / "config.json").is_file():
        return model_from_hf_config(Path(model).expanduser(), name=model)
    return get_model(model)


_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float8_e4m3fn": 1}


def model_from_hf_config(source: Path | Mapping[str, Any], *, name: str = "") -> ModelSpec:
    """A ModelSpec from a Hugging Face ``config.json`` (a path, its folder, or the parsed dict).

    Reads the Llama-layout fields (``num_hidden_layers``, ``hidden_size``,
    ``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``, ``vocab_size``,
    ``head_dim``, ``tie_word_embeddings``, ``torch_dtype``/``dtype``); ValueError naming a
    missing or non-positive field.
    """
    if isinstance(source, Mapping):
        cfg: Mapping[str, Any] = source
        label = name or str(cfg.get("_name_or_path", "model"))
    else:
        path = source / "config.json" if source.is_dir() else source
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read {path}: {e}") from None
        label = name or str(source)

    def need(key: str) -> int:
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{label}: config.json field {key!r} must be a positive integer")
        return value

    heads = need("num_attention_heads")
    kv = cfg.get("num_key_value_heads") or heads
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    head_dim = cfg.get("head_dim")
    return ModelSpec(
        label,
        need("num_hidden_layers"),
        need("hidden_size"),
        heads,
        int(kv),
        need("intermediate_size"),
        need("vocab_size"),
        # served in bf16 unless the config says fp8 (vLLM's --dtype auto casts fp32 to bf16)
        dtype_bytes=1 if _DTYPE_BYTES.get(dtype) == 1 else 2,
        hf_name=label,
        explicit_head_dim=int(head_dim) if isinstance(head_dim, int) else 0,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


_ACCEL_KEYS = {
    "name": str,
    "memory_gib": float,
    "hbm_tbps": float,
    "bf16_tflops": float,
    "interconnect_gbps": float,
    "derived_from": str,
}


def parse_accelerator(text: str) -> AcceleratorSpec:
    """A preset name, or datasheet numbers ``name=x,memory_gib=..,hbm_tbps=..,bf16_tflops=..``
    (optional ``interconnect_gbps``, ``derived_from``: the fitted GPU whose constants apply,
    default ``h100-80gb``). ValueError naming the bad key."""
    if "=" not in text:
        return get_accelerator(text)
    values: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or key not in _ACCEL_KEYS:
            raise ValueError(
                f"accelerator spec: unknown key {key!r}; keys: {', '.join(_ACCEL_KEYS)}"
            )
        try:
            values[key] = _ACCEL_KEYS[key](raw.strip())
        except ValueError:
            raise ValueError(f"accelerator spec: {key}={raw!r} is not a number") from None
    missing = [k for k in ("name", "memory_gib", "hbm_tbps", "bf16_tflops") if k not in values]
    if missing:
        raise ValueError(f"accelerator spec: missing {', '.join(missing)}")
    base = values.get("derived_from", "h100-80gb")
    if not get_accelerator(base).calibrated:
        raise ValueError(f"accelerator spec: derived_from={base!r} is not a fitted accelerator")
    return AcceleratorSpec(
        values["name"],
        values["memory_gib"],
        values["hbm_tbps"] * 1e12,
        values["bf16_tflops"] * 1e12,
        values.get("interconnect_gbps", 32.0) * 1e9,
        calibrated=False,
        derived_from=base,
    )


def accelerator_from_profile(
    name: str, *, memory_gib: float, prefill_speed: float, decode_speed: float
) -> AcceleratorSpec:
    """An AcceleratorProfile's GPU: FLOP/s and bandwidth as multiples of the H100's."""
    ref = ACCELERATORS["h100-80gb"]
    return AcceleratorSpec(
        name,
        memory_gib * 0.98,  # what vLLM reports as total memory
        ref.hbm_bandwidth * decode_speed,
        ref.bf16_flops * prefill_speed,
        32e9,
        calibrated=False,
        derived_from=ref.name,
    )


def vllm_default_max_num_batched_tokens(accel: AcceleratorSpec) -> int:
    """vLLM V1's default token budget for ``vllm serve``: 8192 on GPUs with >= 70 GiB that are
    not A100s, else 2048 (``EngineArgs._set_default_args``)."""
    return 8192 if accel.memory_gib >= 70 and "a100" not in accel.name else 2048


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
