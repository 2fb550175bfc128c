"""Generate the CustomResourceDefinitions in ``crds/`` from the pydantic models.

pydantic emits JSON Schema 2020-12; a CRD needs a *structural* OpenAPI v3.0 schema. The
translation is mechanical and lossless for the constructs the API uses:

* ``$ref``/``$defs`` are inlined (CRD schemas cannot reference);
* ``anyOf [X, null]`` (an optional field) becomes ``X`` (absence is how Kubernetes says "unset");
* a numeric ``exclusiveMinimum: v`` becomes ``minimum: v, exclusiveMinimum: true``;
* ``additionalProperties: false`` is dropped (structural schemas prune and kubectl's strict
  field validation refuses unknown fields); ``dict[str, Any]`` becomes
  ``x-kubernetes-preserve-unknown-fields``;
* nested objects that default to all-defaults get that fully defaulted object as ``default``,
  so the API server fills in the inner defaults as the Python models do (and CEL rules, which
  the server checks against defaults, see every field they read);
* titles are dropped; descriptions, defaults, enums, bounds and the models' CEL rules
  (``x-kubernetes-validations``) are kept;
* a fractional bound on a number (``ge=0.1``) is also emitted as a CEL rule on the field
  (``self >= 0.1``): the API server checks ``minimum``/``maximum`` against an *integer* value
  with the bound truncated to an integer, so ``0`` would pass ``minimum: 0.1`` while
  ``modelfleet validate`` refuses it. CEL compares the value as a double.

The output is deterministic (sorted keys, stable order), so a test can regenerate and compare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from modelfleet.api.common import GROUP, VERSION, ObjectMeta, Resource

PRINTER_COLUMNS: dict[str, list[dict[str, Any]]] = {
    "AcceleratorProfile": [
        {"name": "GPU", "type": "string", "jsonPath": ".spec.gpuProduct"},
        {"name": "Memory GiB", "type": "integer", "jsonPath": ".spec.memoryGiB"},
        {"name": "Cost/h", "type": "number", "jsonPath": ".spec.costPerHour"},
        {"name": "Nodes", "type": "integer", "jsonPath": ".status.nodes"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "ModelPool": [
        {"name": "Model", "type": "string", "jsonPath": ".spec.servedModelName"},
        {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
        {"name": "Variants", "type": "string", "jsonPath": ".status.variantSummary"},
        {"name": "Mode", "type": "string", "jsonPath": ".spec.scaling.mode"},
        {"name": "Cost/h", "type": "number", "jsonPath": ".status.estimatedCostPerHour"},
        {
            "name": "Status",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "RoutingPolicy": [
        {"name": "Models", "type": "string", "jsonPath": ".spec.modelNames"},
        {"name": "Selection", "type": "string", "jsonPath": ".spec.selection.strategy"},
        {"name": "Placement", "type": "string", "jsonPath": ".spec.placement.profile"},
        {
            "name": "Accepted",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Accepted")].status',
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
}

_DROP = {"title", "additionalProperties", "$defs"}
#: Marker on a resolved node that came from ``X | None`` (removed before output).
_OPTIONAL = "__optional__"


def _defaults_of(schema: dict[str, Any]) -> dict[str, Any]:
    """The object an all-defaults instance of ``schema`` is (its children already resolved).

    The API server evaluates CEL rules against a schema's ``default`` when the CRD is created,
    so a nested default must be the fully defaulted object, not ``{}``.
    """
    return {k: v["default"] for k, v in schema["properties"].items() if "default" in v}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline refs and translate one schema node (recursively)."""
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf with {len(options)} non-null options")
        merged = {**options[0], **{k: v for k, v in node.items() if k != "anyOf"}}
        if merged.get("default", 0) is None:
            del merged["default"]
        resolved = _resolve(merged, defs)
        resolved[_OPTIONAL] = True  # unset means None: never give it a default
        return resolved
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "exclusiveMinimum":
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "exclusiveMaximum":
            out["maximum"] = value
            out["exclusiveMaximum"] = True
        elif key == "properties":
            out[key] = {k: _resolve(v, defs) for k, v in value.items()}
        else:
            out[key] = _resolve(value, defs)
    if out.get("type") == "number":
        rules = _fractional_bound_rules(out)
        if rules:
            out["x-kubernetes-validations"] = [*out.get("x-kubernetes-validations", []), *rules]
    if out.get("type") == "object" or "properties" in out:
        out["type"] = "object"
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            out["additionalProperties"] = _resolve(extra, defs)
        elif extra is True or ("properties" not in out and extra is None):
            out["x-kubernetes-preserve-unknown-fields"] = True
    if "properties" in out:
        required = set(out.get("required", ()))
        for name, prop in out["properties"].items():
            optional = prop.pop(_OPTIONAL, False)
            if name in required or "default" in prop or optional:
                continue
            # (Lists and maps already carry their default: ApiModel's schema hook adds the
            # value of every default_factory, so CEL rules may read them safely.)
            # A nested object with every field defaulted defaults to that object, so the API
            # server applies the inner defaults exactly as the Python model does.
            if (
                prop.get("type") == "object"
                and "properties" in prop
                and "default" not in prop
                and not prop.get("required")
            ):
                prop["default"] = _defaults_of(prop)
    return out


def _fractional_bound_rules(node: dict[str, Any]) -> list[dict[str, str]]:
    """CEL rules repeating the non-integer bounds of a number schema (see the module doc)."""
    rules = []
    for key, op, exclusive_op, words in (
        ("minimum", ">=", ">", "greater than"),
        ("maximum", "<=", "<", "less than"),
    ):
        bound = node.get(key)
        if bound is None or float(bound).is_integer():
            continue
        exclusive = node.get("exclusive" + key.capitalize(), False)
        rule_op = exclusive_op if exclusive else op
        text = words if exclusive else f"{words} or equal to"
        rules.append({"rule": f"self {rule_op} {bound!r}", "message": f"must be {text} {bound!r}"})
    return rules


def openapi_schema(model: type[Any]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _resolve(raw, raw.get("$defs", {}))
    _strip_markers(schema)
    return schema


def _strip_markers(node: Any) -> None:
    if isinstance(node, dict):
        node.pop(_OPTIONAL, None)
        for value in node.values():
            _strip_markers(value)
    elif isinstance(node, list):
        for value in node:
            _strip_markers(value)


def _metadata_schema(meta: Any) -> dict[str, Any]:
    """``metadata``: an object; a kind with stricter names (:class:`PoolMeta`) restricts
    ``metadata.name`` — the one restriction (with generateName) a CRD may put on metadata."""
    if meta is ObjectMeta:
        return {"type": "object"}
    name = openapi_schema(meta)["properties"]["name"]
    keep = {k: name[k] for k in ("type", "maxLength", "minLength", "pattern") if k in name}
    return {"type": "object", "properties": {"name": keep}}


def build_crd(resource: type[Resource]) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    fields = resource.model_fields
    spec_model: type[Any] = fields["spec"].annotation  # type: ignore[assignment]
    status_model = next(a for a in fields["status"].annotation.__args__ if a is not type(None))  # type: ignore[union-attr]
    spec_schema = openapi_schema(spec_model)
    status_schema = openapi_schema(status_model)
    # Optional nested objects inside status (e.g. per-variant lists) carry no default.
    spec_schema.setdefault("description", f"Desired state of the {resource.KIND}.")
    status_schema.setdefault("description", f"Observed state of the {resource.KIND}.")
    doc = (resource.__doc__ or resource.KIND).strip().splitlines()[0]
    schema: dict[str, Any] = {
        "type": "object",
        "description": doc,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": _metadata_schema(fields["metadata"].annotation),
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    subresources: dict[str, Any] = {"status": {}}
    if resource.KIND == "ModelPool":
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    singular = resource.KIND.lower()
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{resource.PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "modelfleet"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced" if resource.NAMESPACED else "Cluster",
            "names": {
                "kind": resource.KIND,
                "listKind": f"{resource.KIND}List",
                "plural": resource.PLURAL,
                "singular": singular,
                "shortNames": list(resource.SHORT_NAMES),
                "categories": ["modelfleet"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": subresources,
                    "additionalPrinterColumns": PRINTER_COLUMNS[resource.KIND],
                }
            ],
        },
    }


def render_crd(resource: type[Resource]) -> str:
    """The CRD as YAML text, with a header saying it is generated."""
    header = (
        "# Generated by `modelfleet crds` from modelfleet.api; do not edit by hand.\n"
        f"# Kind {resource.KIND} ({GROUP}/{VERSION}).\n"
    )
    body = yaml.safe_dump(build_crd(resource), sort_keys=True, width=100)
    return header + body


def crd_filename(resource: type[Resource]) -> str:
    return f"{GROUP}_{resource.PLURAL}.yaml"


def write_crds(out_dir: Path) -> list[Path]:
    """Write every CRD into ``out_dir``; returns the paths written."""
    from modelfleet.api import KINDS

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS:
        path = out_dir / crd_filename(kind)
        path.write_text(render_crd(kind))
        written.append(path)
    return written
