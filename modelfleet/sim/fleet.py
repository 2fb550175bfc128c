"""Fleet description for the simulator and per-endpoint performance models fitted to the engine.

A fleet is a tuple of :class:`EngineSpec` (one engine instance each). :func:`mixed_fleet`
builds the benchmark's mixed H100/A100/L40S fleet. :func:`fit_perf_model` fits the policy
layer's :class:`~modelfleet.policy.perf.ParametricPerfModel` to the engine's step-time model by
least squares, so the SLO scorers predict with the same physics the engines run on (the live
scheduler fits the same coefficients from observed latencies instead).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from modelfleet.engine.core import EngineConfig
from modelfleet.engine.profiles import get_accelerator
from modelfleet.engine.timing import StepTimer
from modelfleet.policy.perf import ParametricPerfModel

__all__ = ["EngineSpec", "fit_perf_model", "mixed_fleet", "relative_speeds"]


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


def relative_speeds(fleet: tuple[EngineSpec, ...]) -> dict[str, float]:
    """HBM bandwidth relative to the fastest engine of the fleet (decode-bound capacity weight)."""
    bw = {s.id: get_accelerator(s.accelerator).hbm_bandwidth for s in fleet}
    top = max(bw.values())
    return {k: v / top for k, v in bw.items()}


def fit_perf_model(
    config: EngineConfig, *, typical_context: int = 4096, mean_output_tokens: float = 256.0
) -> ParametricPerfModel:
    """Least-squares fit of ParametricPerfModel to the engine's StepTimer for one config.

    Prefill: one-chunk prefill times for prompts of 256..max chunk tokens, fitted as
    ``base + per_token * n``. Decode: step times of batches 1..min(max_num_seqs, 128) with
    ``typical_context`` tokens each, fitted as ``base + per_seq * batch``. The slot wait uses
    ``mean_output_tokens`` decode steps at a half-full batch.
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
    )
