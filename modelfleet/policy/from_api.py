"""From the RoutingPolicy API to the policy layer's own configuration.

The API (``modelfleet.api.routingpolicy``) describes placement in the same JSON shape as
:class:`~modelfleet.policy.config.ProfileSpec`, plus a ``profile`` name that selects a built-in
profile. This module is the one place that maps one onto the other, so the live scheduler, the
operator's status check and ``modelfleet validate`` agree on what a policy means.

Plugin ``parameters`` are free-form in the CRD (each plugin has its own schema); they are
checked here against the registry's parameter models, and every problem names the field as a
path under ``spec.placement``.
"""

from __future__ import annotations

from pydantic import ValidationError

from modelfleet.api.routingpolicy import MigrationSpec, PlacementSpec
from modelfleet.policy.baselines import policy_spec
from modelfleet.policy.config import (
    PickerSpec,
    PluginSpec,
    PrefixIndexSpec,
    ProfileSpec,
    SessionAffinitySpec,
)
from modelfleet.policy.framework import PluginKind, PluginRegistry
from modelfleet.policy.migration import MigrationParams
from modelfleet.policy.plugins import default_registry


def profile_spec_from_placement(placement: PlacementSpec) -> ProfileSpec:
    """The :class:`ProfileSpec` a RoutingPolicy's ``spec.placement`` stands for.

    A named profile starts from that profile's spec; ``custom`` starts empty (filter
    ``healthy`` unless filters are given). ``prefixSource``, ``prefixIndex`` and, when set,
    ``sessionAffinity`` then apply on top.
    """
    if placement.profile == "custom":
        base = ProfileSpec(
            filters=[
                PluginSpec(type=f.type, parameters=dict(f.parameters)) for f in placement.filters
            ]
            or [PluginSpec(type="healthy")],
            scorers=[
                PluginSpec(type=s.type, weight=s.weight, parameters=dict(s.parameters))
                for s in placement.scorers
            ],
            picker=PickerSpec(
                type=placement.picker.type, parameters=dict(placement.picker.parameters)
            ),
        )
    else:
        base = policy_spec(placement.profile)
    update: dict[str, object] = {
        "prefix_source": placement.prefix_source,
        "prefix_index": PrefixIndexSpec(
            block_size=placement.prefix_index.block_size,
            capacity_blocks=placement.prefix_index.capacity_blocks,
            speculative_ttl_s=placement.prefix_index.speculative_ttl_s,
        ),
    }
    if placement.session_affinity is not None:
        update["session_affinity"] = SessionAffinitySpec(
            header=placement.session_affinity.header,
            max_load_factor=placement.session_affinity.max_load_factor,
        )
    return base.model_copy(update=update)


def migration_params_from_api(migration: MigrationSpec) -> MigrationParams | None:
    """Planner parameters for ``spec.migration``; ``None`` when migration is off."""
    if not migration.enabled:
        return None
    triggers = set(migration.triggers)
    return MigrationParams(
        max_concurrent=migration.max_concurrent,
        min_gain_s=migration.min_gain_ms / 1000.0,
        enable_drain="drain" in triggers,
        enable_slo_rescue="slo-rescue" in triggers,
        enable_load_balance="load-imbalance" in triggers,
    )


def _check(
    registry: PluginRegistry,
    kind: PluginKind,
    type_name: str,
    params: dict[str, object],
    where: str,
) -> list[tuple[str, str]]:
    model = registry.get(type_name, kind).params_model
    try:
        model.model_validate(params)
    except ValidationError as exc:
        out = []
        for err in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in err["loc"])
            msg = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
            out.append((f"{where}.parameters" + (f".{loc}" if loc else ""), msg))
        return out
    return []


def check_placement(
    placement: PlacementSpec, registry: PluginRegistry | None = None
) -> list[tuple[str, str]]:
    """Problems with the plugin parameters of a placement: ``(field path, message)`` pairs.

    Paths are relative to ``spec.placement``, e.g. ``scorers[1].parameters.metric``.
    """
    reg = registry or default_registry()
    problems: list[tuple[str, str]] = []
    for i, f in enumerate(placement.filters):
        problems += _check(reg, "filter", f.type, dict(f.parameters), f"filters[{i}]")
    for i, s in enumerate(placement.scorers):
        problems += _check(reg, "scorer", s.type, dict(s.parameters), f"scorers[{i}]")
    problems += _check(
        reg, "picker", placement.picker.type, dict(placement.picker.parameters), "picker"
    )
    return problems
