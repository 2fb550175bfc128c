"""What the operator reads back from the cluster, parsed once into frozen values (pure).

The Kubernetes API returns plain objects; these functions turn a Deployment or a Pod into the
few facts the decisions and the status need, so nothing downstream indexes into raw dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelfleet.api.names import POD_DELETION_COST_ANNOTATION, POOL_LABEL, VARIANT_LABEL


@dataclass(frozen=True)
class PodInfo:
    """One engine pod."""

    name: str
    variant: str
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    ready: bool
    terminating: bool  # metadata.deletionTimestamp is set
    scheduled: bool
    unschedulable: str  # the scheduler's message when PodScheduled=False/Unschedulable
    crash_loop: str  # "<container>: <message>" when a container is in CrashLoopBackOff
    deletion_cost: int | None
    created: str  # RFC 3339; sorts chronologically
    ip: str = ""


@dataclass(frozen=True)
class DeploymentInfo:
    """One variant's Deployment."""

    name: str
    variant: str
    replicas: int  # spec.replicas (what the operator last set)
    ready: int
    updated: int  # pods of the current template
    available: int
    current: bool  # the controller has seen the latest spec (observedGeneration)


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for c in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and "type" in c:
            out[str(c["type"])] = c
    return out


def pod_info(obj: dict[str, Any]) -> PodInfo:
    """Parse a Pod (as the API returns it, camelCase)."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    conds = _conditions(obj)
    sched = conds.get("PodScheduled", {})
    unschedulable = ""
    if sched.get("status") == "False" and sched.get("reason") == "Unschedulable":
        unschedulable = str(sched.get("message") or "no node fits")
    crash = ""
    for cs in status.get("containerStatuses") or []:
        waiting = ((cs or {}).get("state") or {}).get("waiting") or {}
        if waiting.get("reason") == "CrashLoopBackOff":
            crash = f"{cs.get('name', '?')}: {waiting.get('message') or 'CrashLoopBackOff'}"
    cost_raw = (meta.get("annotations") or {}).get(POD_DELETION_COST_ANNOTATION)
    try:
        cost = int(cost_raw) if cost_raw is not None else None
    except ValueError:
        cost = None
    return PodInfo(
        name=str(meta.get("name", "")),
        variant=str((meta.get("labels") or {}).get(VARIANT_LABEL, "")),
        phase=str(status.get("phase", "Unknown")),
        ready=conds.get("Ready", {}).get("status") == "True",
        terminating=meta.get("deletionTimestamp") is not None,
        scheduled=sched.get("status") == "True" or bool((obj.get("spec") or {}).get("nodeName")),
        unschedulable=unschedulable,
        crash_loop=crash,
        deletion_cost=cost,
        created=str(meta.get("creationTimestamp", "")),
        ip=str(status.get("podIP", "")),
    )


def deployment_info(obj: dict[str, Any]) -> DeploymentInfo:
    """Parse a Deployment."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    spec = obj.get("spec") or {}
    generation = meta.get("generation")
    return DeploymentInfo(
        name=str(meta.get("name", "")),
        variant=str((meta.get("labels") or {}).get(VARIANT_LABEL, "")),
        replicas=int(spec.get("replicas", 1)),
        ready=int(status.get("readyReplicas", 0) or 0),
        updated=int(status.get("updatedReplicas", 0) or 0),
        available=int(status.get("availableReplicas", 0) or 0),
        current=generation is None or status.get("observedGeneration") == generation,
    )


def pool_of(obj: dict[str, Any]) -> str:
    """The pool label of a child object ('' if none)."""
    return str(((obj.get("metadata") or {}).get("labels") or {}).get(POOL_LABEL, ""))
