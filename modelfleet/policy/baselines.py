"""Every policy the benchmarks compare, built by name with the clock and RNG injected.

=================  =====================================================================
name               what (source of the published behaviour, ``reference/anchors.md``)
=================  =====================================================================
round-robin        cycle through healthy endpoints (production-stack / Dynamo default)
least-request      fewest in-flight requests sent by this router (AIBrix ``least-request``)
least-load-speed   fewest in-flight tokens per unit of declared relative speed: the simple
                   speed-aware least-load baseline (what a mixed-GPU fleet needs at least)
power-of-two       two random endpoints, the one with fewer in-flight wins (Ray Serve default)
cache-aware        SGLang / vLLM router ``cache_aware``: radix tree + balance thresholds
                   (``cache_threshold`` 0.5, ``balance_abs_threshold`` 32,
                   ``balance_rel_threshold`` 1.1, eviction 30 s, ``max_tree_size`` 10000)
llm-d              llm-d optimized baseline: prefix-cache 3, queue 2 (waiting),
                   kv-cache-utilization 2 (the published weights), plus the no-hit-LRU
                   scorer the guide lists (weight 1: its weight is not published), max-score
llumnix            Llumnix-style: dispatch to the least loaded (running + waiting, KV usage)
                   and a migration planner that pairs the most with the least loaded
                   instance and moves the shortest request (``SR``), plus drain
modelfleet         ``config.default_profile_spec()`` + the full planner (drain, SLO rescue,
                   load balance)
=================  =====================================================================
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from modelfleet.policy.config import (
    PickerSpec,
    PluginSpec,
    ProfileSpec,
    build_profile,
    default_profile_spec,
)
from modelfleet.policy.framework import Profile
from modelfleet.policy.hashing import BlockHasher
from modelfleet.policy.migration import MigrationParams, MigrationPlanner
from modelfleet.policy.plugins import default_registry

POLICY_NAMES: tuple[str, ...] = (
    "round-robin",
    "least-request",
    "least-load-speed",
    "power-of-two",
    "cache-aware",
    "llm-d",
    "llumnix",
    "modelfleet",
)


@dataclass(frozen=True)
class Policy:
    """A placement profile plus, for policies that migrate, a migration planner."""

    name: str
    profile: Profile
    planner: MigrationPlanner | None = None


def policy_spec(name: str) -> ProfileSpec:
    """The placement spec of the named policy (raises ``ValueError`` for an unknown name)."""
    healthy = [PluginSpec(type="healthy")]
    if name == "round-robin":
        return ProfileSpec(filters=healthy, picker=PickerSpec(type="round-robin"))
    if name == "least-request":
        return ProfileSpec(
            filters=healthy,
            scorers=[PluginSpec(type="queue", parameters={"metric": "inflight-requests"})],
        )
    if name == "least-load-speed":
        return ProfileSpec(
            filters=healthy,
            scorers=[PluginSpec(type="queue", parameters={"metric": "speed-weighted"})],
        )
    if name == "power-of-two":
        return ProfileSpec(filters=healthy, picker=PickerSpec(type="power-of-two"))
    if name == "cache-aware":
        return ProfileSpec(filters=healthy, picker=PickerSpec(type="cache-aware"))
    if name == "llm-d":
        return ProfileSpec(
            filters=healthy,
            scorers=[
                PluginSpec(type="prefix-cache", weight=3.0),
                PluginSpec(type="queue", weight=2.0, parameters={"metric": "waiting"}),
                PluginSpec(type="kv-usage", weight=2.0),
                PluginSpec(type="cold-spread", weight=1.0),
            ],
            picker=PickerSpec(type="max-score"),
            prefix_source="approximate",
        )
    if name == "llumnix":
        return ProfileSpec(
            filters=healthy,
            scorers=[
                PluginSpec(type="queue", weight=1.0, parameters={"metric": "running-waiting"}),
                PluginSpec(type="kv-usage", weight=1.0),
            ],
        )
    if name == "modelfleet":
        return default_profile_spec()
    raise ValueError(f"unknown policy {name!r}; valid policies: {', '.join(POLICY_NAMES)}")


def build_policy(
    name: str,
    *,
    clock: Callable[[], float],
    rng: random.Random,
    precise_hasher: BlockHasher | None = None,
    approx_hasher: BlockHasher | None = None,
    spec: ProfileSpec | None = None,
    migration: MigrationParams | None = None,
) -> Policy:
    """Build the named policy. ``spec`` overrides the placement spec (e.g. from a RoutingPolicy);
    ``migration`` overrides the planner parameters of ``llumnix`` and ``modelfleet``."""
    profile_spec = spec if spec is not None else policy_spec(name)
    profile = build_profile(
        profile_spec,
        default_registry(),
        clock,
        rng,
        name=name,
        precise_hasher=precise_hasher,
        approx_hasher=approx_hasher,
    )
    planner: MigrationPlanner | None = None
    if name == "llumnix":
        planner = MigrationPlanner(
            migration or MigrationParams(enable_slo_rescue=False, selection="SR"),
            prefix_index=None,
        )
    elif name == "modelfleet":
        planner = MigrationPlanner(
            migration or MigrationParams(), prefix_index=profile.prefix_index
        )
    return Policy(name, profile, planner)
