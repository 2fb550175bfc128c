"""The CRDs in crds/ are generated from the models and stay in sync."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import Field

from modelfleet.api import KINDS
from modelfleet.api.common import ApiModel
from modelfleet.api.crdgen import build_crd, crd_filename, openapi_schema, render_crd
from modelfleet.api.modelpool import EngineSpec, ModelSource
from modelfleet.api.routingpolicy import PlacementSpec
from modelfleet.cli import main

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.KIND)
def test_checked_in_crd_matches_fresh_generation(kind: Any) -> None:
    path = CRD_DIR / crd_filename(kind)
    assert path.read_text() == render_crd(kind), f"{path} is stale: run `modelfleet crds`"


def test_crds_check_flag_detects_drift(tmp_path: Path) -> None:
    assert main(["crds", "--out", str(tmp_path)]) == 0
    assert main(["crds", "--check", "--out", str(tmp_path)]) == 0
    victim = tmp_path / crd_filename(KINDS[0])
    victim.write_text(victim.read_text().replace("memoryGiB", "memoryGB"))
    assert main(["crds", "--check", "--out", str(tmp_path)]) == 1


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.get("properties", {}).items():
            out.extend(_walk(value, f"{path}.{key}"))
        if "items" in node:
            out.extend(_walk(node["items"], f"{path}[]"))
        if isinstance(node.get("additionalProperties"), dict):
            out.extend(_walk(node["additionalProperties"], f"{path}{{}}"))
    return out


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.KIND)
def test_crd_schema_is_structural(kind: Any) -> None:
    """Every node has a type; no $ref, anyOf or title survive; preserve-unknown is explicit."""
    crd = build_crd(kind)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(schema)
    assert "$ref" not in text and "anyOf" not in text and "title:" not in text
    for path, node in _walk(schema):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.KIND)
def test_crd_has_cel_rules_printer_columns_status(kind: Any) -> None:
    crd = build_crd(kind)
    version = crd["spec"]["versions"][0]
    rules = [
        rule
        for _, node in _walk(version["schema"]["openAPIV3Schema"])
        for rule in node.get("x-kubernetes-validations", [])
    ]
    assert rules, "no CEL rules"
    assert all(r["message"] and r["rule"] for r in rules)
    assert "status" in version["subresources"]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert "Age" in names and len(names) >= 4
    assert crd["spec"]["names"]["categories"] == ["modelfleet"]
    assert crd["spec"]["names"]["shortNames"]


def test_modelpool_has_scale_subresource_and_columns() -> None:
    (mp,) = [k for k in KINDS if k.KIND == "ModelPool"]
    version = build_crd(mp)["spec"]["versions"][0]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    paths = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert paths["Model"] == ".spec.servedModelName"
    assert paths["Ready"] == ".status.ready"


def test_every_list_touched_by_a_cel_rule_is_bounded() -> None:
    """The API server refuses CEL rules over unbounded lists (cost budget)."""
    for kind in KINDS:
        schema = build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(schema):
            for rule in node.get("x-kubernetes-validations", []):
                for prop, sub in node.get("properties", {}).items():
                    if f"self.{prop}." in rule["rule"] and sub.get("type") == "array":
                        assert "maxItems" in sub, f"{path}.{prop} unbounded in {rule['rule']}"


def test_nested_defaults_are_the_models_defaults() -> None:
    """A nested spec object defaults to the fully defaulted model, as pydantic fills it in.

    (The API server checks CEL rules against defaults when the CRD is created, so ``{}``
    would fail every rule that reads a field of the nested object.)
    """
    (mp,) = [k for k in KINDS if k.KIND == "ModelPool"]
    spec = build_crd(mp)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["engine"]["default"] == EngineSpec().to_wire()
    assert spec["properties"]["source"]["default"] == ModelSource().to_wire()
    (rp,) = [k for k in KINDS if k.KIND == "RoutingPolicy"]
    rspec = build_crd(rp)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert rspec["properties"]["placement"]["default"] == PlacementSpec().to_wire()


def _model_defaults_vs_schema(model: type[ApiModel], schema: dict[str, Any], path: str) -> None:
    """Every field the model defaults (to a non-None value) has that default in the schema."""
    for name, info in model.model_fields.items():
        alias = info.alias or name
        prop = schema["properties"][alias]
        if info.is_required():
            assert "default" not in prop, f"{path}.{alias}"
            continue
        value = info.get_default(call_default_factory=True)
        if value is None:
            assert "default" not in prop, f"{path}.{alias}: unset means None"
            continue
        wire = value.to_wire() if isinstance(value, ApiModel) else value
        assert prop.get("default") == wire, f"{path}.{alias}: CRD {prop.get('default')} != {wire}"
        nested = info.annotation
        if isinstance(nested, type) and issubclass(nested, ApiModel):
            _model_defaults_vs_schema(nested, prop, f"{path}.{alias}")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.KIND)
def test_every_model_default_is_the_crd_default(kind: Any) -> None:
    """Found by the cluster tier: list defaults made by a factory (migration ``triggers``:
    ["drain"], cascade ``fallbackOn``) were missing, so the API server stored ``[]``."""
    spec = build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    _model_defaults_vs_schema(kind.model_fields["spec"].annotation, spec["spec"], "spec")


class _Bounds(ApiModel):
    share: float = Field(default=0.5, ge=0.1, le=0.99)
    speed: float = Field(default=1.0, gt=0.5, lt=2.5)
    count: int = Field(default=1, ge=1, le=10)
    weight: float = Field(default=1.0, ge=0, le=1000)
    share_max: float = Field(default=0.5, ge=0, le=0.99)
    ruled: float = Field(
        default=0.5,
        ge=0.25,
        json_schema_extra={"x-kubernetes-validations": [{"rule": "self != 0.3", "message": "m"}]},
    )


def test_fractional_bounds_are_repeated_as_cel_rules() -> None:
    """The API server truncates a fractional minimum/maximum for integer values; CEL does not."""
    props = openapi_schema(_Bounds)["properties"]
    assert props["share"]["x-kubernetes-validations"] == [
        {"rule": "self >= 0.1", "message": "must be greater than or equal to 0.1"},
        {"rule": "self <= 0.99", "message": "must be less than or equal to 0.99"},
    ]
    assert props["speed"]["x-kubernetes-validations"] == [
        {"rule": "self > 0.5", "message": "must be greater than 0.5"},
        {"rule": "self < 2.5", "message": "must be less than 2.5"},
    ]
    assert (props["speed"]["minimum"], props["speed"]["exclusiveMinimum"]) == (0.5, True)
    assert (props["speed"]["maximum"], props["speed"]["exclusiveMaximum"]) == (2.5, True)
    # an integer minimum needs no rule, the fractional maximum next to it still does
    assert props["shareMax"]["x-kubernetes-validations"] == [
        {"rule": "self <= 0.99", "message": "must be less than or equal to 0.99"}
    ]
    # a field's own rules are kept, the bound's rule comes after them
    assert props["ruled"]["x-kubernetes-validations"] == [
        {"rule": "self != 0.3", "message": "m"},
        {"rule": "self >= 0.25", "message": "must be greater than or equal to 0.25"},
    ]
    assert "x-kubernetes-validations" not in props["count"]
    assert "x-kubernetes-validations" not in props["weight"]
