"""The RoutingPolicy API maps onto the policy layer: same types, same meaning."""

from __future__ import annotations

import random
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelfleet.api import RoutingPolicy
from modelfleet.api.routingpolicy import (
    FilterType,
    MigrationSpec,
    PickerType,
    PlacementSpec,
    ProfileName,
    ScorerType,
)
from modelfleet.cli import main
from modelfleet.policy.baselines import POLICY_NAMES, policy_spec
from modelfleet.policy.config import build_profile
from modelfleet.policy.from_api import (
    check_placement,
    migration_params_from_api,
    profile_spec_from_placement,
)
from modelfleet.policy.plugins import default_registry

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("api_type", "kind"),
    [(ScorerType, "scorer"), (FilterType, "filter"), (PickerType, "picker")],
    ids=["scorers", "filters", "pickers"],
)
def test_every_api_plugin_type_is_registered(api_type: Any, kind: Any) -> None:
    registry = default_registry()
    for name in typing.get_args(api_type):
        registry.get(name, kind)  # raises ValueError naming it if missing


def test_every_named_profile_is_a_policy() -> None:
    named = [n for n in typing.get_args(ProfileName) if n != "custom"]
    assert sorted(named) == sorted(POLICY_NAMES)


@pytest.mark.parametrize("name", [n for n in typing.get_args(ProfileName) if n != "custom"])
def test_named_profile_maps_to_its_policy_spec(name: str) -> None:
    spec = profile_spec_from_placement(PlacementSpec.model_validate({"profile": name}))
    expected = policy_spec(name)
    assert spec.scorers == expected.scorers
    assert spec.filters == expected.filters
    assert spec.picker == expected.picker


def test_custom_profile_builds_and_overrides_apply() -> None:
    placement = PlacementSpec.model_validate(
        {
            "profile": "custom",
            "scorers": [
                {"type": "prefix-cache", "weight": 2},
                {"type": "queue", "weight": 1, "parameters": {"metric": "inflight-tokens"}},
            ],
            "picker": {"type": "random-top-k", "parameters": {"k": 3}},
            "prefixSource": "approximate",
            "prefixIndex": {"blockSize": 32},
            "sessionAffinity": {"header": "x-user", "maxLoadFactor": 2},
        }
    )
    assert check_placement(placement) == []
    spec = profile_spec_from_placement(placement)
    assert [s.type for s in spec.scorers] == ["prefix-cache", "queue"]
    assert spec.filters[0].type == "healthy"
    assert spec.prefix_index.block_size == 32
    assert spec.session_affinity is not None and spec.session_affinity.header == "x-user"
    profile = build_profile(spec, default_registry(), lambda: 0.0, random.Random(0))
    assert profile is not None


def test_check_placement_names_bad_parameters() -> None:
    placement = PlacementSpec.model_validate(
        {
            "profile": "custom",
            "scorers": [
                {"type": "prefix-cache"},
                {"type": "queue", "parameters": {"metric": "vibes"}},
            ],
            "picker": {"type": "max-score", "parameters": {"topk": 2}},
        }
    )
    fields = [f for f, _ in check_placement(placement)]
    assert fields == ["scorers[1].parameters.metric", "picker.parameters.topk"]


def test_validate_cli_reports_bad_plugin_parameters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "05-routing-policy" / "policy.yaml").read_text())
    doc["spec"]["placement"] = {
        "profile": "custom",
        "scorers": [{"type": "kv-usage", "parameters": {"threshold": 0.9}}],
    }
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(f)]) == 1
    out = capsys.readouterr().out
    assert "spec.placement.scorers[0].parameters.threshold: unknown parameter" in out


@pytest.mark.parametrize(
    ("spec", "expect"),
    [
        ({"enabled": False}, None),
        ({"enabled": True}, (True, False, False)),
        ({"enabled": True, "triggers": ["slo-rescue", "load-imbalance"]}, (False, True, True)),
    ],
    ids=["off", "default-drain", "rescue-and-balance"],
)
def test_migration_params(spec: dict[str, Any], expect: tuple[bool, bool, bool] | None) -> None:
    params = migration_params_from_api(MigrationSpec.model_validate(spec))
    if expect is None:
        assert params is None
    else:
        assert params is not None
        got = (params.enable_drain, params.enable_slo_rescue, params.enable_load_balance)
        assert got == expect


def test_example_policy_builds_a_profile() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "05-routing-policy" / "policy.yaml").read_text())
    rp = RoutingPolicy.model_validate(doc)
    spec = profile_spec_from_placement(rp.spec.placement)
    assert spec.prefix_source == "kv-events"
    assert spec.session_affinity is not None
    assert spec.session_affinity.max_load_factor == 1.5
