"""The operator's decisions, each a pure function of (spec, observed state, now).

- :func:`manual_replicas`: mode Manual — ``spec.replicas`` spread cheapest-first within each
  variant's bounds (or every variant's ``minReplicas`` when unset).
- :func:`slo_inputs`: mode SLO — the autoscaler's inputs from the spec, the profiles and the
  scheduler's stats (the decision itself is :func:`modelfleet.policy.autoscale.decide`).
- :func:`choose_victims`: which pods a scale-down removes — least in-flight work first.
- :func:`stale_victims`: which pods marked by an earlier scale-down are to serve again.
- :func:`lease_action`: leader election — take, renew or wait for the operator's Lease.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from modelfleet.api.accelerator import AcceleratorProfile, AcceleratorProfileSpec
from modelfleet.api.modelpool import ModelPoolSpec, Variant
from modelfleet.operator.builders import replica_cost_per_hour
from modelfleet.operator.observe import PodInfo
from modelfleet.policy.autoscale import (
    Demand,
    ScalingWindows,
    SloTarget,
    VariantModel,
)
from modelfleet.policy.prior import DeclaredHardware, params_from_model_id, prior_perf_model


@dataclass(frozen=True)
class ManualTarget:
    replicas: dict[str, int]
    note: str  # "" or why spec.replicas was not taken as it is


def manual_replicas(
    spec: ModelPoolSpec, profiles: Mapping[str, AcceleratorProfile | None]
) -> ManualTarget:
    """Replicas per variant in mode Manual.

    Unset ``spec.replicas``: every variant at its ``minReplicas``. Set: start every variant
    at its minimum and give the rest to variants in order of replica cost (cheapest first, a
    missing profile last), each up to its maximum. A total outside
    ``[Σ minReplicas, Σ maxReplicas]`` is clamped, and the note says so.
    """
    mins = {v.name: v.min_replicas for v in spec.variants}
    if spec.replicas is None:
        return ManualTarget(mins, "")
    lo = sum(mins.values())
    hi = sum(v.max_replicas for v in spec.variants)
    total = min(max(spec.replicas, lo), hi)
    note = ""
    if total != spec.replicas:
        bound = "sum of minReplicas" if total == lo else "sum of maxReplicas"
        note = f"spec.replicas {spec.replicas} clamped to {total} ({bound})"
    out = dict(mins)
    left = total - lo
    order = sorted(
        spec.variants,
        key=lambda v: (replica_cost_per_hour(v, profiles.get(v.accelerator_profile)), v.name),
    )
    for v in order:
        add = min(left, v.max_replicas - v.min_replicas)
        out[v.name] += add
        left -= add
    return ManualTarget(out, note)


def declared_hardware(
    spec: ModelPoolSpec, variant: Variant, profile: AcceleratorProfileSpec
) -> DeclaredHardware:
    """What a variant's replica declares (:class:`~modelfleet.policy.prior.DeclaredHardware`):
    the profile's speeds and memory, the variant's tensor parallelism, the pool's engine
    settings, and the model's parameter count as its id states it
    (:func:`~modelfleet.policy.prior.params_from_model_id`: ``Llama-3.1-70B-Instruct`` is
    70e9). An id that states none keeps the prior's default (an 8B model): a ModelPool does
    not declare its model's architecture, and the operator reads no model files. The KV bytes
    per token stay the default's (an 8B Llama's)."""
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


@dataclass(frozen=True)
class EndpointLoad:
    """What the scheduler reports of one engine (``ListEndpoints``)."""

    inflight_requests: int = 0
    running: int = 0
    waiting: int = 0
    draining: bool = False

    @property
    def work(self) -> int:
        return max(self.inflight_requests, self.running + self.waiting)


def choose_victims(
    pods: Sequence[PodInfo], loads: Mapping[str, EndpointLoad], count: int
) -> list[str]:
    """Names of the ``count`` pods a scale-down removes, first to go first.

    Pods already terminating are not candidates (they are going anyway). Order: pods not
    yet scheduled, then pods not ready (neither serves), then least in-flight work as the
    scheduler reports it (an engine the scheduler does not know has none of its requests),
    then the newest pod (its prefix cache is the coldest), then by name.
    """
    if count <= 0:
        return []
    live = [p for p in pods if not p.terminating]
    # Stable sorts, least significant key first: name, then newest first, then the rest.
    live.sort(key=lambda p: p.name)
    live.sort(key=lambda p: p.created, reverse=True)
    live.sort(
        key=lambda p: (int(p.scheduled), int(p.ready), loads.get(p.name, EndpointLoad()).work)
    )
    return [p.name for p in live[:count]]


#: The pod-deletion-cost a drained scale-down victim gets (others have none, i.e. 0), so the
#: ReplicaSet removes exactly the victims.
VICTIM_COST = -1_000_000


def stale_victims(
    pods: Sequence[PodInfo], chosen: Sequence[str], desired: Mapping[str, int]
) -> list[str]:
    """Pods marked as victims (:data:`VICTIM_COST`) by an earlier pass that are to serve
    again: alive, not chosen this time, and of a variant that no longer loses pods (its live
    pods fit its desired replicas — the scale-down was called off).

    A variant whose live pods still outnumber its desired replicas keeps its marks: the
    Deployment is already scaled down and the ReplicaSet is about to remove exactly those pods
    (the operator's view of them may lag behind their deletion), so they must stay drained.
    """
    live: dict[str, int] = {}
    for p in pods:
        if not p.terminating:
            live[p.variant] = live.get(p.variant, 0) + 1
    return [
        p.name
        for p in pods
        if p.deletion_cost == VICTIM_COST
        and not p.terminating
        and p.name not in chosen
        and live.get(p.variant, 0) <= desired.get(p.variant, 0)
    ]


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


LeaseVerdict = Literal["acquire", "renew", "wait"]


def lease_action(
    holder: str | None, renewed_s: float | None, duration_s: float, identity: str, now: float
) -> LeaseVerdict:
    """What a candidate does with the operator's Lease.

    ``renew`` if it holds it; ``acquire`` if nobody does or the holder's last renewal is
    older than the lease duration (the holder is presumed dead); ``wait`` otherwise.
    """
    if holder == identity:
        return "renew"
    if not holder or renewed_s is None or now - renewed_s > duration_s:
        return "acquire"
    return "wait"
