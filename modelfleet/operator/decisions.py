"""The operator's decisions, each a pure function of (spec, observed state, now).

- :func:`manual_replicas`: mode Manual — ``spec.replicas`` spread cheapest-first within each
  variant's bounds (or every variant's ``minReplicas`` when unset).
- :func:`slo_inputs`: mode SLO — the autoscaler's inputs from the spec, the profiles and the
  scheduler's stats (:mod:`modelfleet.policy.autoscale_inputs`, shared with ``modelfleet up``;
  the decision itself is :func:`modelfleet.policy.autoscale.decide`).
- :func:`choose_victims`: which pods a scale-down removes — least in-flight work first.
- :func:`stale_victims`: which pods marked by an earlier scale-down are to serve again.
- :func:`lease_action`: leader election — take, renew or wait for the operator's Lease.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from modelfleet.api.accelerator import AcceleratorProfile
from modelfleet.api.modelpool import ModelPoolSpec
from modelfleet.operator.observe import PodInfo

# Shared with `modelfleet up`, which scales engine processes with the same decision.
from modelfleet.policy.autoscale_inputs import (
    declared_hardware,
    demand_from_stats,
    replica_cost_per_hour,
    slo_inputs,
)

__all__ = [
    "VICTIM_COST",
    "EndpointLoad",
    "ManualTarget",
    "choose_victims",
    "declared_hardware",
    "demand_from_stats",
    "lease_action",
    "manual_replicas",
    "slo_inputs",
    "stale_victims",
]


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
