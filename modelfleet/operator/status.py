"""ModelPool and RoutingPolicy status: typed conditions with documented reasons (pure).

ModelPool conditions (``docs/operator.md`` has the same table):

=========== ====== ============================ =============================================
type        status reason                       when
=========== ====== ============================ =============================================
Accepted    True   Valid                        the stored spec passes every rule
Accepted    False  InvalidSpec                  it breaks one; message ``field: problem``
Ready       True   ReplicasReady                every variant has its desired replicas ready
Ready       True   ScaledToZero                 the pool wants no replica and has none
Ready       False  ReplicasNotReady             some desired replica is not ready yet
Ready       False  <the Degraded reason>        a variant cannot reach its target
Ready       False  InvalidSpec                  the spec is refused (nothing was changed)
Progressing True   RollingOut                   a Deployment is replacing pods of an old spec
Progressing True   ScalingUp / ScalingDown      pods are being added / removed
Progressing False  Stable                       nothing is changing
Degraded    True   MissingAcceleratorProfile    a variant names a profile that does not exist
Degraded    True   Unschedulable                pods of a variant fit no node; the message is
                                                the scheduler's (``FailedScheduling``)
Degraded    True   EngineCrashLoop              an engine container keeps crashing
Degraded    False  AsExpected                   none of the above
=========== ====== ============================ =============================================

RoutingPolicy: ``Accepted`` (True/Valid, False/InvalidSpec or InvalidParameters naming the
field) and ``ResolvedRefs`` (True/ResolvedRefs, False/PoolNotFound naming every missing pool).

A condition keeps its ``lastTransitionTime`` while its status stays the same
(:func:`merge_conditions`), as ``metav1.Condition`` requires.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from modelfleet.operator.observe import DeploymentInfo, PodInfo

Cond = dict[str, Any]


def rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, ok: bool, reason: str, message: str, generation: int) -> Cond:
    return {
        "type": type_,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message[:32000],
        "observedGeneration": generation,
    }


def merge_conditions(old: Sequence[Cond], new: Sequence[Cond], now: datetime) -> list[Cond]:
    """``new`` with ``lastTransitionTime`` carried over from ``old`` where the status of that
    type did not change (set to ``now`` where it did, or where the type is new). Types only
    in ``old`` are kept as they are."""
    before = {c.get("type"): c for c in old if isinstance(c, dict)}
    out = []
    for c in new:
        prev = before.pop(c["type"], None)
        stamp = rfc3339(now)
        if prev is not None and prev.get("status") == c["status"]:
            stamp = str(prev.get("lastTransitionTime") or stamp)
        out.append({**c, "lastTransitionTime": stamp})
    out.extend(before.values())
    return out


def pool_conditions(
    *,
    generation: int,
    desired: Mapping[str, int],
    deployments: Mapping[str, DeploymentInfo],
    pods: Sequence[PodInfo],
    missing_profiles: Mapping[str, str],
) -> list[Cond]:
    """Accepted, Ready, Progressing and Degraded of a valid pool (module docstring)."""
    problems: list[tuple[int, str, str]] = []  # (rank, reason, message)
    for variant, profile in sorted(missing_profiles.items()):
        problems.append(
            (
                0,
                "MissingAcceleratorProfile",
                f"variant {variant}: no AcceleratorProfile {profile!r}",
            )
        )
    for variant in sorted(desired):
        mine = [p for p in pods if p.variant == variant and not p.terminating]
        if msg := next((p.unschedulable for p in mine if p.unschedulable), ""):
            problems.append((1, "Unschedulable", f"variant {variant}: {msg}"))
        if msg := next((p.crash_loop for p in mine if p.crash_loop), ""):
            problems.append((2, "EngineCrashLoop", f"variant {variant}: {msg}"))
    problems.sort(key=lambda p: p[0])
    degraded_reason = problems[0][1] if problems else "AsExpected"
    degraded_msg = "; ".join(m for _, _, m in problems)

    want = sum(desired.values())
    ready = {v: (deployments[v].ready if v in deployments else 0) for v in desired}
    all_ready = all(ready[v] >= n for v, n in desired.items())
    if missing_profiles:
        detail = ", ".join(f"{v} {ready[v]}/{n}" for v, n in sorted(desired.items()))
        ready_cond = condition(
            "Ready",
            False,
            "MissingAcceleratorProfile",
            f"ready: {detail}; {degraded_msg}",
            generation,
        )
    elif want == 0 and all_ready:
        ready_cond = condition("Ready", True, "ScaledToZero", "no replica is wanted", generation)
    elif all_ready:
        ready_cond = condition(
            "Ready", True, "ReplicasReady", f"{sum(ready.values())}/{want} ready", generation
        )
    else:
        detail = ", ".join(f"{v} {ready[v]}/{n}" for v, n in sorted(desired.items()))
        reason = degraded_reason if problems else "ReplicasNotReady"
        msg = f"ready: {detail}" + (f"; {degraded_msg}" if problems else "")
        ready_cond = condition("Ready", False, reason, msg, generation)

    rolling = [
        d.variant
        for d in deployments.values()
        if d.variant in desired and (not d.current or d.updated < d.replicas)
    ]
    live = {v: sum(1 for p in pods if p.variant == v and not p.terminating) for v in desired}
    up = [v for v, n in desired.items() if live[v] < n]
    down = [v for v, n in desired.items() if live[v] > n] + [
        d.variant for d in deployments.values() if d.variant not in desired
    ]
    if rolling:
        prog = condition(
            "Progressing",
            True,
            "RollingOut",
            f"rolling out: {', '.join(sorted(rolling))}",
            generation,
        )
    elif up:
        prog = condition(
            "Progressing", True, "ScalingUp", f"adding pods: {', '.join(sorted(up))}", generation
        )
    elif down:
        prog = condition(
            "Progressing",
            True,
            "ScalingDown",
            f"removing pods: {', '.join(sorted(down))}",
            generation,
        )
    else:
        prog = condition("Progressing", False, "Stable", "", generation)
    return [
        condition("Accepted", True, "Valid", "", generation),
        ready_cond,
        prog,
        condition("Degraded", bool(problems), degraded_reason, degraded_msg, generation),
    ]


def invalid_conditions(generation: int, message: str) -> list[Cond]:
    """Conditions of a stored pool the model refuses: nothing is acted on."""
    return [
        condition("Accepted", False, "InvalidSpec", message, generation),
        condition(
            "Ready",
            False,
            "InvalidSpec",
            "the spec is refused; children were left as they are",
            generation,
        ),
    ]


def pool_status(
    *,
    generation: int,
    pool_name: str,
    variants: Sequence[tuple[str, str]],
    desired: Mapping[str, int],
    deployments: Mapping[str, DeploymentInfo],
    pods: Sequence[PodInfo],
    cost_per_replica: Mapping[str, float],
    conditions: list[Cond],
    autoscaler: dict[str, Any] | None,
) -> dict[str, Any]:
    """The ``status`` of a valid pool (camelCase, as stored). ``variants`` are
    ``(name, acceleratorProfile)`` in spec order."""
    rows = []
    total = ready_total = 0
    cost = 0.0
    for name, profile in variants:
        n = sum(1 for p in pods if p.variant == name and not p.terminating)
        r = deployments[name].ready if name in deployments else 0
        rows.append(
            {
                "name": name,
                "acceleratorProfile": profile,
                "replicas": n,
                "readyReplicas": r,
                "desiredReplicas": desired.get(name, 0),
            }
        )
        total += n
        ready_total += r
        per = cost_per_replica.get(name, 0.0)
        if per != float("inf"):
            cost += n * per
    want = sum(desired.values())
    out: dict[str, Any] = {
        "observedGeneration": generation,
        "replicas": total,
        "readyReplicas": ready_total,
        "desiredReplicas": want,
        "ready": f"{ready_total}/{want}",
        "variantSummary": ",".join(
            f"{r['name']}:{r['readyReplicas']}/{r['desiredReplicas']}" for r in rows
        ),
        "selector": f"modelfleet.io/pool={pool_name}",
        "variants": rows,
        "estimatedCostPerHour": round(cost, 4),
        "conditions": conditions,
    }
    if autoscaler is not None:
        out["autoscaler"] = autoscaler
    return out


def policy_conditions(
    *, generation: int, invalid: str, invalid_reason: str, missing_pools: Sequence[str]
) -> list[Cond]:
    """Accepted and ResolvedRefs of a RoutingPolicy (module docstring)."""
    accepted = (
        condition("Accepted", False, invalid_reason, invalid, generation)
        if invalid
        else condition("Accepted", True, "Valid", "", generation)
    )
    if missing_pools:
        names = ", ".join(sorted(missing_pools))
        refs = condition(
            "ResolvedRefs", False, "PoolNotFound", f"no ModelPool named {names}", generation
        )
    else:
        refs = condition("ResolvedRefs", True, "ResolvedRefs", "", generation)
    return [accepted, refs]
