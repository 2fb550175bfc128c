"""Offline validation of manifests with the same models the operator uses.

``validate_documents`` parses YAML text (one or many documents), picks the model by
``apiVersion``/``kind`` and turns every pydantic error into a :class:`Problem` naming the
field the way the Kubernetes API server does (``spec.variants[0].minReplicas``). Rule
violations (see :class:`modelfleet.api.common.Rule`) name the rule's own field, which is also
the CEL ``fieldPath`` in the CRD, so offline and server-side errors point at the same place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modelfleet.api import KINDS
from modelfleet.api.common import API_VERSION, Resource

_BY_KIND: dict[str, type[Resource]] = {k.KIND: k for k in KINDS}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one object."""

    source: str
    kind: str
    name: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.kind}/{self.name}: {self.field}: {self.message}"


def format_loc(loc: Iterable[str | int]) -> str:
    """``("spec", "variants", 0, "minReplicas")`` → ``spec.variants[0].minReplicas``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _loc(error: Any) -> str:
    loc = [p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    if error["type"] == "rule":
        field = error.get("ctx", {}).get("field", "")
        loc.extend(f for f in field.split(".") if f)
    return format_loc(loc) or "<root>"  # an unknown field's loc already ends with its name


def _message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "missing":
        return "required field is missing"
    msg: str = error["msg"]
    return msg


def validate_object(obj: Any, source: str = "<input>") -> tuple[Resource | None, list[Problem]]:
    """Parse one decoded manifest. Returns the object (or None) and the problems found."""
    if not isinstance(obj, dict):
        return None, [Problem(source, "?", "?", "<root>", "a manifest must be a mapping")]
    kind = str(obj.get("kind", "?"))
    meta = obj.get("metadata")
    name = str(meta.get("name", "?")) if isinstance(meta, dict) else "?"
    if obj.get("apiVersion") != API_VERSION:
        return None, [
            Problem(
                source,
                kind,
                name,
                "apiVersion",
                f"must be {API_VERSION}, not {obj.get('apiVersion')!r}",
            )
        ]
    model = _BY_KIND.get(kind)
    if model is None:
        valid = ", ".join(sorted(_BY_KIND))
        return None, [Problem(source, kind, name, "kind", f"unknown kind; valid kinds: {valid}")]
    try:
        parsed = model.model_validate(obj)
    except ValidationError as exc:
        problems = [
            Problem(source, kind, name, _loc(e), _message(e)) for e in exc.errors(include_url=False)
        ]
        return None, problems
    if model.NAMESPACED is False and parsed.metadata.namespace:
        return None, [
            Problem(source, kind, name, "metadata.namespace", f"{kind} is cluster-scoped")
        ]
    return parsed, []


def iter_documents(text: str, source: str) -> Iterator[tuple[str, Any]]:
    """Decode YAML documents; yields (label, object). Empty documents are skipped."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: not valid YAML: {exc}") from exc
    multi = sum(d is not None for d in docs) > 1
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        yield (f"{source}#{i}" if multi else source), doc


class ManifestError(ValueError):
    """A file that cannot be read or decoded at all."""


def validate_text(text: str, source: str) -> tuple[list[tuple[str, Resource]], list[Problem]]:
    """Validate every document in a YAML text; objects come with their source label."""
    objects: list[tuple[str, Resource]] = []
    problems: list[Problem] = []
    for label, doc in iter_documents(text, source):
        parsed, found = validate_object(doc, label)
        problems.extend(found)
        if parsed is not None:
            objects.append((label, parsed))
    return objects, problems


def expand_paths(paths: Iterable[str]) -> list[Path]:
    """Files named, plus every *.yaml / *.yml under directories named (sorted)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.suffix in {".yaml", ".yml"}))
        elif p.exists():
            out.append(p)
        else:
            raise ManifestError(f"{raw}: no such file or directory")
    return out


def check_references(objects: list[tuple[str, Resource]]) -> list[Problem]:
    """Cross-object references among the given objects (pools → profiles, policies → pools).

    Only meaningful when the set is complete; the CLI runs it with ``--check-refs``.
    """
    from modelfleet.api.accelerator import AcceleratorProfile
    from modelfleet.api.modelpool import ModelPool
    from modelfleet.api.routingpolicy import RoutingPolicy

    profiles = {o.metadata.name for _, o in objects if isinstance(o, AcceleratorProfile)}
    pools = {
        (o.metadata.namespace or "default", o.metadata.name)
        for _, o in objects
        if isinstance(o, ModelPool)
    }
    problems = []
    for src, o in objects:
        ns = o.metadata.namespace or "default"
        if isinstance(o, ModelPool):
            for i, v in enumerate(o.spec.variants):
                if v.accelerator_profile not in profiles:
                    problems.append(
                        Problem(
                            src,
                            o.KIND,
                            o.metadata.name,
                            f"spec.variants[{i}].acceleratorProfile",
                            f"no AcceleratorProfile named {v.accelerator_profile!r}",
                        )
                    )
        if isinstance(o, RoutingPolicy):
            for pool in sorted(o.referenced_pools()):
                if (ns, pool) not in pools:
                    problems.append(
                        Problem(
                            src,
                            o.KIND,
                            o.metadata.name,
                            "spec",
                            f"no ModelPool named {pool!r} in namespace {ns}",
                        )
                    )
    return problems
