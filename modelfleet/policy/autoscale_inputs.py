"""The SLO autoscaler's inputs from the API objects: what every host that scales a pool reads.

The operator (replicas of Deployments) and ``modelfleet up`` (engine simulator processes) both
decide with :func:`modelfleet.policy.autoscale.decide`; they must see a pool the same way, so
the translation from a ModelPool, its AcceleratorProfiles and the scheduler's stats lives
here, once:

- :func:`replica_cost_per_hour` — what one replica of a variant costs;
- :func:`declared_hardware` and :func:`slo_inputs` — per variant its cost and the prior
  performance model the scheduler starts every endpoint from, the SLO at its percentile, and
  the stabilisation windows;
- :func:`demand_from_stats` — a :class:`~modelfleet.policy.autoscale.Demand` from the
  figures of the scheduler's ``Stats``, non-finite numbers dropped.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from modelfleet.api.accelerator import AcceleratorProfile, AcceleratorProfileSpec
from modelfleet.api.modelpool import ModelPoolSpec, Variant
from modelfleet.policy.autoscale import Demand, ScalingWindows, SloTarget, VariantModel
from modelfleet.policy.prior import DeclaredHardware, params_from_model_id, prior_perf_model

__all__ = ["declared_hardware", "demand_from_stats", "replica_cost_per_hour", "slo_inputs"]


def replica_cost_per_hour(variant: Variant, profile: AcceleratorProfile | None) -> float:
    """USD per replica-hour: the variant's override, else the profile's GPU price × GPUs.

    ``inf`` when neither is known (a variant whose profile is missing is never the cheapest).
    """
    if variant.cost_per_hour is not None:
        return variant.cost_per_hour
    if profile is None:
        return math.inf
    return profile.spec.cost_per_hour * variant.gpus_per_replica


def declared_hardware(
    spec: ModelPoolSpec, variant: Variant, profile: AcceleratorProfileSpec
) -> DeclaredHardware:
    """What a variant's replica declares (:class:`~modelfleet.policy.prior.DeclaredHardware`):
    the profile's speeds and memory, the variant's tensor parallelism, the pool's engine
    settings, and the model's parameter count as its id states it
    (:func:`~modelfleet.policy.prior.params_from_model_id`: ``Llama-3.1-70B-Instruct`` is
    70e9). An id that states none keeps the prior's default (an 8B model): a ModelPool does
    not declare its model's architecture, and no host reads model files to scale. The KV
    bytes per token stay the default's (an 8B Llama's)."""
    params = params_from_model_id(spec.model)
    hw = DeclaredHardware(
        prefill_speed=profile.prefill_speed,
        decode_speed=profile.decode_speed,
        memory_gib=float(profile.memory_gib),
        gpus=variant.tensor_parallel_size,
        gpu_memory_utilization=spec.engine.gpu_memory_utilization,
        max_num_seqs=spec.engine.max_num_seqs,
        max_num_batched_tokens=spec.engine.max_num_batched_tokens,
    )
    return hw if params is None else replace(hw, model_params=params)


def slo_inputs(
    spec: ModelPoolSpec, profiles: Mapping[str, AcceleratorProfile | None]
) -> tuple[list[VariantModel], SloTarget, ScalingWindows]:
    """The autoscaler's view of a pool: per-variant cost and performance model — the prior
    the scheduler starts every endpoint from (:func:`modelfleet.policy.prior.prior_perf_model`
    of :func:`declared_hardware`), ``None`` when the profile is missing — the SLO at its
    percentile, and the windows."""
    variants = []
    for v in spec.variants:
        profile = profiles.get(v.accelerator_profile)
        perf = (
            prior_perf_model(declared_hardware(spec, v, profile.spec))
            if profile is not None
            else None
        )
        variants.append(
            VariantModel(
                name=v.name,
                cost_per_hour=replica_cost_per_hour(v, profile),
                perf=perf,
                min_replicas=v.min_replicas,
                max_replicas=v.max_replicas,
            )
        )
    slo = SloTarget(
        ttft_s=spec.slo.ttft_ms / 1000.0,
        tpot_s=spec.slo.tpot_ms / 1000.0,
        percentile=spec.slo.percentile / 100.0,
    )
    sc = spec.scaling
    windows = ScalingWindows(
        up_s=float(sc.scale_up_stabilization_seconds),
        down_s=float(sc.scale_down_stabilization_seconds),
        zero_after_s=float(sc.scale_to_zero_after_seconds),
    )
    return variants, slo, windows


def demand_from_stats(
    *,
    arrival_rate: float,
    mean_prompt_tokens: float,
    mean_output_tokens: float,
    prefix_hit_rate: float,
    queued: int,
    unplaced: int,
    inflight: int,
    window_s: float,
    ttft_s: float | None,
    tpot_s: float | None,
    samples: int,
) -> Demand:
    """A :class:`~modelfleet.policy.autoscale.Demand`, with non-finite numbers dropped."""

    def finite(x: float) -> float:
        return x if math.isfinite(x) and x >= 0 else 0.0

    return Demand(
        arrival_rate=finite(arrival_rate),
        mean_prompt_tokens=finite(mean_prompt_tokens),
        mean_output_tokens=finite(mean_output_tokens),
        prefix_hit_rate=min(1.0, finite(prefix_hit_rate)),
        queued=max(0, queued),
        unplaced=max(0, unplaced),
        inflight=max(0, inflight),
        window_s=window_s if window_s > 0 else 60.0,
        ttft_s=ttft_s if ttft_s is not None and math.isfinite(ttft_s) else None,
        tpot_s=tpot_s if tpot_s is not None and math.isfinite(tpot_s) else None,
        samples=max(0, samples),
    )
