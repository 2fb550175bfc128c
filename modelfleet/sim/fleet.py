"""Fleet description for the simulator: engines, pools, what is declared about them, and the
oracle latency model.

A fleet is a tuple of :class:`EngineSpec` (one engine instance each, in one pool).
:func:`mixed_fleet` builds one pool of engines per accelerator count; :func:`pooled_fleet`
several pools (e.g. Llama-3-8B on mixed GPUs next to Llama-3-70B at TP 4).

What the policy may know about an engine is what a cluster *declares*
(:func:`declared_hardware`): the AcceleratorProfile's memory and its speeds relative to an
H100 (datasheet ratios of dense bf16 FLOP/s and HBM bandwidth, as ``examples/01-accelerators``
declares them), the model's size and KV bytes per token (its ``config.json``), and the engine
flags. ``prior_error`` makes a declaration wrong on purpose (``{"l40s": -0.3}``: the L40S is
30 % slower than declared), to measure how fast the learned latency model recovers.

:func:`fit_perf_model` fits the policy layer's
:class:`~modelfleet.policy.perf.ParametricPerfModel` to the engine's own step-time model by
least squares, front end included: the simulator's ground truth. Benchmarks use it only as a
labelled upper bound (``SimConfig(perf_model="oracle")``); no default component reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from modelfleet.engine.core import EngineConfig
from modelfleet.engine.profiles import get_accelerator, resolve_accelerator, resolve_model
from modelfleet.engine.timing import StepTimer
from modelfleet.policy.perf import ParametricPerfModel
from modelfleet.policy.prior import DeclaredHardware

__all__ = [
    "EngineSpec",
    "declared_hardware",
    "declared_speeds",
    "fit_perf_model",
    "mixed_fleet",
    "pooled_fleet",
    "relative_speeds",
]

_REFERENCE_GPU = "h100-80gb"


@dataclass(frozen=True)
class EngineSpec:
    """One engine instance: id, accelerator profile, model, TP and engine-flag overrides."""

    id: str
    accelerator: str
    model: str = "llama-3-8b"
    tensor_parallel_size: int = 1
    pool: str = "default"
    overrides: Mapping[str, object] = field(default_factory=dict)

    def engine_config(self) -> EngineConfig:
        return EngineConfig.for_model(
            self.accelerator, self.model, self.tensor_parallel_size, **dict(self.overrides)
        )


def mixed_fleet(
    counts: Mapping[str, int],
    *,
    model: str = "llama-3-8b",
    overrides: Mapping[str, object] | None = None,
) -> tuple[EngineSpec, ...]:
    """``{"h100-80gb": 6, "a100-80gb": 6, "l40s": 4}`` -> 16 specs with ids ``h100-80gb-0`` ..."""
    if not counts or any(n < 0 for n in counts.values()) or sum(counts.values()) == 0:
        raise ValueError(f"fleet counts must be non-negative and not all zero, got {dict(counts)}")
    out: list[EngineSpec] = []
    for accel, n in counts.items():
        get_accelerator(accel)  # ValueError naming the valid accelerators
        out.extend(
            EngineSpec(f"{accel}-{i}", accel, model, overrides=dict(overrides or {}))
            for i in range(n)
        )
    return tuple(out)


def pooled_fleet(
    pools: Sequence[tuple[str, int, Mapping[str, int]]],
    *,
    overrides: Mapping[str, object] | None = None,
) -> tuple[EngineSpec, ...]:
    """Several pools, one per ``(model, tensor parallel size, {accelerator: count})``.

    The pool is named after the model (``llama-3-70b``, or ``llama-3-70b-tp4`` when two pools
    serve one model at different TP); engine ids are ``<pool>/<accelerator>-<i>`` when there is
    more than one pool, else ``<accelerator>-<i>`` as :func:`mixed_fleet`.
    """
    if not pools:
        raise ValueError("a fleet needs at least one pool")
    models = [m for m, _tp, _c in pools]
    out: list[EngineSpec] = []
    for model, tp, counts in pools:
        name = model if models.count(model) == 1 else f"{model}-tp{tp}"
        if not counts or any(n < 0 for n in counts.values()) or sum(counts.values()) == 0:
            raise ValueError(f"pool {name}: counts must be non-negative and not all zero")
        for accel, n in counts.items():
            get_accelerator(accel)
            for i in range(n):
                eid = f"{accel}-{i}" if len(pools) == 1 else f"{name}/{accel}-{i}"
                out.append(
                    EngineSpec(eid, accel, model, tp, pool=name, overrides=dict(overrides or {}))
                )
    ids = [s.id for s in out]
    if len(set(ids)) != len(ids):
        raise ValueError(f"two pools have the same name: {sorted(set(models))}")
    return tuple(out)


def declared_speeds(accelerator: str) -> tuple[float, float]:
    """(prefillSpeed, decodeSpeed) an AcceleratorProfile declares: the GPU's datasheet dense
    bf16 FLOP/s and HBM bandwidth relative to an H100-80GB (``examples/01-accelerators``)."""
    a, ref = resolve_accelerator(accelerator), get_accelerator(_REFERENCE_GPU)
    return a.bf16_flops / ref.bf16_flops, a.hbm_bandwidth / ref.hbm_bandwidth


def declared_hardware(
    spec: EngineSpec,
    *,
    prior_error: Mapping[str, float] | None = None,
    mean_output_tokens: float = 256.0,
) -> DeclaredHardware:
    """What a cluster declares about ``spec``'s engine (see the module docstring).

    ``prior_error[accelerator] = e`` means the GPU really runs at ``(1 + e)`` times its
    declared speed (``-0.3``: 30 % slower than declared); the declaration is the datasheet
    ratio divided by ``1 + e``, so the policy's prior is wrong by that factor.
    """
    cfg = spec.engine_config()
    accel, model = resolve_accelerator(cfg.accelerator), resolve_model(cfg.model)
    prefill, decode = declared_speeds(spec.accelerator)
    err = (prior_error or {}).get(spec.accelerator, 0.0)
    if not err > -1.0:
        raise ValueError(f"prior error of {spec.accelerator} must be > -1, got {err}")
    return DeclaredHardware(
        prefill_speed=prefill / (1.0 + err),
        decode_speed=decode / (1.0 + err),
        # an AcceleratorProfile declares whole GiB of what the driver reports
        memory_gib=float(round(accel.memory_gib)),
        gpus=cfg.tensor_parallel_size,
        model_params=model.num_params,
        kv_bytes_per_token=model.kv_bytes_per_token(1),
        dtype_bytes=model.dtype_bytes,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        max_num_seqs=cfg.max_num_seqs,
        max_num_batched_tokens=cfg.max_num_batched_tokens,
        mean_output_tokens=mean_output_tokens,
    )


def relative_speeds(
    fleet: Sequence[EngineSpec], prior_error: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Declared decode speed x GPUs, relative to the fastest engine of its pool (the
    capacity weight of load-balancing terms; wrong when ``prior_error`` says so)."""
    speed = {}
    for s in fleet:
        err = (prior_error or {}).get(s.accelerator, 0.0)
        speed[s.id] = declared_speeds(s.accelerator)[1] / (1.0 + err) * s.tensor_parallel_size
    top: dict[str, float] = {}
    for s in fleet:
        top[s.pool] = max(top.get(s.pool, 0.0), speed[s.id])
    return {s.id: speed[s.id] / top[s.pool] for s in fleet}


def fit_perf_model(
    config: EngineConfig, *, typical_context: int = 4096, mean_output_tokens: float = 256.0
) -> ParametricPerfModel:
    """Least-squares fit of ParametricPerfModel to the engine's StepTimer for one config.

    Prefill: one-chunk prefill times for prompts of 256..max chunk tokens, fitted as
    ``base + per_token * n``. Decode: step times of batches 1..min(max_num_seqs, 128) with
    ``typical_context`` tokens each, fitted as ``base + per_seq * batch``. The slot wait uses
    ``mean_output_tokens`` decode steps at a half-full batch. The front end is the timer's own
    (``front_end_latency(streams)``). The oracle: reads the simulator's ground truth.
    """
    timer = StepTimer(config.accelerator, config.model, config.tensor_parallel_size)
    chunk = config.max_num_batched_tokens
    ns = np.unique(np.linspace(256, chunk, 16).astype(int))
    pt = np.array([timer.prefill_time(int(n)) for n in ns])
    slope, base = np.polyfit(ns.astype(float), pt, 1)
    top = min(config.max_num_seqs, 128)
    bs = np.unique(np.linspace(1, top, 16).astype(int))
    dt = np.array([timer.decode_time(int(b), typical_context) for b in bs])
    d_slope, d_base = np.polyfit(bs.astype(float), dt, 1)
    half = max(1, config.max_num_seqs // 2)
    return ParametricPerfModel(
        prefill_base_s=max(0.0, float(base)),
        prefill_s_per_token=max(0.0, float(slope)),
        decode_base_s=max(0.0, float(d_base)),
        decode_s_per_seq=max(0.0, float(d_slope)),
        chunk_tokens=chunk,
        max_num_seqs=config.max_num_seqs,
        mean_decode_s_per_request=float(mean_output_tokens)
        * timer.decode_time(half, typical_context),
        front_end_s=timer.front_end_latency(0),
        front_end_per_stream_s=timer.front_end_latency(1) - timer.front_end_latency(0),
    )
