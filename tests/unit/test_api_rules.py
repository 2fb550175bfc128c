"""The offline validator's exact answers: every problem it reports (source, kind, name, field,
message), cross-object references, the documented defaults, and the CRD generator's edges."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from modelfleet.api import KINDS
from modelfleet.api.common import API_VERSION, ApiModel, Condition
from modelfleet.api.crdgen import openapi_schema, write_crds
from modelfleet.api.routingpolicy import RoutingPolicySpec
from modelfleet.api.validate import (
    ManifestError,
    Problem,
    check_references,
    expand_paths,
    iter_documents,
    validate_object,
    validate_text,
)

pytestmark = pytest.mark.unit

POOL: dict[str, Any] = {
    "apiVersion": API_VERSION,
    "kind": "ModelPool",
    "metadata": {"name": "p"},
    "spec": {
        "model": "m",
        "servedModelName": "m",
        "variants": [{"name": "a", "acceleratorProfile": "h100"}],
    },
}
PROFILE: dict[str, Any] = {
    "apiVersion": API_VERSION,
    "kind": "AcceleratorProfile",
    "metadata": {"name": "h100"},
    "spec": {"gpuProduct": "g", "memoryGiB": 80, "costPerHour": 1},
}
VALID_KINDS = "unknown kind; valid kinds: AcceleratorProfile, ModelPool, RoutingPolicy"


def _edit(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with ``a.b.0.c`` set (or deleted when value is ...)."""
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = out
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


@pytest.mark.parametrize(
    ("doc", "problems"),
    [
        ([1], [("?", "?", "<root>", "a manifest must be a mapping")]),
        (
            _edit(POOL, "apiVersion", "v1"),
            [("ModelPool", "p", "apiVersion", "must be modelfleet.io/v1alpha1, not 'v1'")],
        ),
        ({"apiVersion": API_VERSION, "metadata": "x"}, [("?", "?", "kind", VALID_KINDS)]),
        (
            {"apiVersion": API_VERSION, "kind": "Foo", "metadata": {}},
            [("Foo", "?", "kind", VALID_KINDS)],
        ),
        (
            _edit(PROFILE, "metadata.namespace", "x"),
            [
                (
                    "AcceleratorProfile",
                    "h100",
                    "metadata.namespace",
                    "AcceleratorProfile is cluster-scoped",
                )
            ],
        ),
        (
            _edit(
                _edit(_edit(POOL, "spec.foo", 1), "spec.model", ...),
                "spec.variants.0.minReplicas",
                5,
            ),
            [
                ("ModelPool", "p", "spec.model", "required field is missing"),
                (
                    "ModelPool",
                    "p",
                    "spec.variants[0].minReplicas",
                    "minReplicas must be <= maxReplicas",
                ),
                ("ModelPool", "p", "spec.foo", "unknown field"),
            ],
        ),
        (
            _edit(POOL, "spec.variants", [{"name": "a", "acceleratorProfile": "x"}] * 2),
            [("ModelPool", "p", "spec.variants", "variant names must be unique")],
        ),
        (
            _edit(POOL, "spec.engine", {"port": "x"}),
            [("ModelPool", "p", "spec.engine.port", "Input should be a valid integer")],
        ),
        (
            _edit(POOL, "kind", "AcceleratorProfile"),
            [
                ("AcceleratorProfile", "p", "spec.gpuProduct", "required field is missing"),
                ("AcceleratorProfile", "p", "spec.memoryGiB", "required field is missing"),
                ("AcceleratorProfile", "p", "spec.costPerHour", "required field is missing"),
                ("AcceleratorProfile", "p", "spec.model", "unknown field"),
                ("AcceleratorProfile", "p", "spec.servedModelName", "unknown field"),
                ("AcceleratorProfile", "p", "spec.variants", "unknown field"),
            ],
        ),
    ],
    ids=[
        "not-a-mapping",
        "api-version",
        "no-kind",
        "unknown-kind",
        "cluster-scoped",
        "three-at-once",
        "spec-rule",
        "type",
        "other-kind",
    ],
)
def test_validate_object_names_kind_object_field_and_reason(
    doc: Any, problems: list[tuple[str, str, str, str]]
) -> None:
    parsed, found = validate_object(doc, "f.yaml")
    assert parsed is None
    assert found == [Problem("f.yaml", *p) for p in problems]
    _, default_source = validate_object(doc)
    assert {p.source for p in default_source} == {"<input>"}
    assert (
        str(found[0])
        == f"f.yaml: {problems[0][0]}/{problems[0][1]}: {problems[0][2]}: {problems[0][3]}"
    )


def test_iter_documents_skips_empty_documents_only() -> None:
    text = "---\n---\nkind: A\n---\n\n---\nkind: B\n"
    # YAML's leading "---" opens document 0: the empty ones are 0 and 2
    assert list(iter_documents(text, "f")) == [("f#1", {"kind": "A"}), ("f#3", {"kind": "B"})]
    assert list(iter_documents("kind: A\n", "g")) == [("g", {"kind": "A"})]
    with pytest.raises(ManifestError, match=r"^f: not valid YAML: "):
        list(iter_documents("a: [", "f"))


def test_expand_paths_takes_yaml_and_yml_under_directories(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.yml", "c.json", "sub/d.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    single = tmp_path / "c.json"
    assert expand_paths([str(tmp_path), str(single)]) == [
        tmp_path / "a.yml",
        tmp_path / "b.yaml",
        tmp_path / "sub" / "d.yaml",
        single,
    ]
    with pytest.raises(ManifestError, match=f"^{tmp_path}/nope: no such file or directory$"):
        expand_paths([str(tmp_path / "nope")])


def _policy(ns: str | None, *pools: str, downgrade: str = "") -> dict[str, Any]:
    spec: dict[str, Any] = {"modelNames": ["m"], "defaultTargets": [{"pool": p} for p in pools]}
    if downgrade:
        spec["sloClasses"] = [
            {
                "name": "g",
                "ttftMs": 1,
                "tpotMs": 1,
                "onViolation": "downgrade",
                "downgradePool": downgrade,
            }
        ]
    meta = {"name": "rp"} | ({"namespace": ns} if ns else {})
    return {"apiVersion": API_VERSION, "kind": "RoutingPolicy", "metadata": meta, "spec": spec}


def test_check_references_by_namespace() -> None:
    docs = [
        ("pool.yaml", _edit(POOL, "metadata.namespace", "default")),
        ("bare.yaml", _edit(POOL, "metadata.name", "bare")),  # no namespace: default
        ("rp0.yaml", _policy(None, "bare")),
        ("team.yaml", _edit(_edit(POOL, "metadata.name", "q"), "metadata.namespace", "team")),
        ("rp1.yaml", _policy(None, "p", downgrade="small")),  # no namespace = default
        ("rp2.yaml", _policy("team", "q", "p")),
    ]
    objects = []
    for src, doc in docs:
        parsed, problems = validate_object(doc, src)
        assert parsed is not None, problems
        objects.append((src, parsed))
    no_profile = ("spec.variants[0].acceleratorProfile", "no AcceleratorProfile named 'h100'")
    assert check_references(objects) == [
        Problem("pool.yaml", "ModelPool", "p", *no_profile),
        Problem("bare.yaml", "ModelPool", "bare", *no_profile),
        Problem("team.yaml", "ModelPool", "q", *no_profile),
        Problem("rp1.yaml", "RoutingPolicy", "rp", "spec",
                "no ModelPool named 'small' in namespace default"),
        Problem("rp2.yaml", "RoutingPolicy", "rp", "spec",
                "no ModelPool named 'p' in namespace team"),
    ]  # fmt: skip
    profile, _ = validate_object(PROFILE, "ap.yaml")
    assert profile is not None
    assert check_references([*objects, ("ap.yaml", profile)])[0].source == "rp1.yaml"


def test_validate_text_collects_objects_and_problems() -> None:
    import yaml

    text = yaml.safe_dump_all([POOL, _edit(POOL, "kind", "Nope")])
    objects, problems = validate_text(text, "x.yaml")
    assert [(src, o.metadata.name) for src, o in objects] == [("x.yaml#0", "p")]
    assert problems == [Problem("x.yaml#1", "Nope", "p", "kind", VALID_KINDS)]


def test_documented_list_defaults() -> None:
    """Migration moves requests only to drain by default; cascade falls back on all three."""
    spec = RoutingPolicySpec.model_validate(
        {"modelNames": ["m"], "defaultTargets": [{"pool": "p"}]}
    )
    wire = spec.to_wire()
    assert wire["migration"]["triggers"] == ["drain"]
    assert wire["selection"]["cascade"]["fallbackOn"] == ["overload", "error", "timeout"]


def test_to_wire_is_json_ready() -> None:
    c = Condition(
        type="Ready", status="True", last_transition_time=datetime(2024, 1, 1, tzinfo=UTC)
    )
    assert c.to_wire() == {
        "type": "Ready",
        "status": "True",
        "reason": "",
        "message": "",
        "observedGeneration": 0,
        "lastTransitionTime": "2024-01-01T00:00:00Z",
    }
    assert "lastTransitionTime" not in Condition(type="Ready", status="True").to_wire()


class _Optionals(ApiModel):
    counts: list[int | None] = Field(default_factory=list, max_length=4)
    named: dict[str, int | None] = Field(default_factory=dict)
    maybe: int | None = None


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keys(v)}
    return set()


def test_optional_values_inside_lists_and_maps_leave_no_marker() -> None:
    schema = openapi_schema(_Optionals)
    assert not any(k.startswith("__") for k in _keys(schema))
    assert schema["properties"]["counts"]["items"] == {"type": "integer"}
    assert schema["properties"]["named"]["additionalProperties"] == {"type": "integer"}
    assert "default" not in schema["properties"]["maybe"]


def test_write_crds_creates_missing_directories(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    written = write_crds(out)
    assert written == [out / f"modelfleet.io_{k.PLURAL}.yaml" for k in KINDS]
    assert all(p.read_text().startswith("# Generated by `modelfleet crds`") for p in written)
