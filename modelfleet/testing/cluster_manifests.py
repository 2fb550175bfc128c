"""Reading manifests and the API server's refusals, for cluster tests.

The API server reports an invalid object as a ``Status`` (HTTP 422, reason ``Invalid``) whose
``details.causes[].field`` names each offending field as a dotted path from the object root
(``spec.variants[0].minReplicas``). Two refusals carry no causes and name the field only in the
message: an unknown field under strict field validation (HTTP 400,
``strict decoding error: unknown field "spec.foo"``) and a duplicate field. :func:`refused_fields`
reads both forms, so a test can compare the field the server names with the one
``modelfleet validate`` names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

#: The cause the API server adds when CEL rules were skipped because the schema already failed;
#: it names no field of its own.
_SKIPPED_RULES = "some validation rules were not checked"
_UNKNOWN_FIELD = re.compile(r'(?:unknown|duplicate) field "([^"]+)"')
_INDEX = re.compile(r"\[[^\]]*\]")


def load_manifests(path: Path) -> list[dict[str, Any]]:
    """The Kubernetes objects in a YAML file: documents that are mappings with a ``kind``."""
    docs = yaml.safe_load_all(path.read_text())
    return [d for d in docs if isinstance(d, dict) and "kind" in d and "apiVersion" in d]


def refused_fields(status: dict[str, Any]) -> list[str]:
    """Field paths an API server ``Status`` body blames, in the order it lists them."""
    out: list[str] = []
    for cause in (status.get("details") or {}).get("causes") or []:
        field = str(cause.get("field") or "")
        if field and field != "<nil>" and _SKIPPED_RULES not in str(cause.get("message", "")):
            out.append(field)
    if not out:
        out = _UNKNOWN_FIELD.findall(str(status.get("message", "")))
    return out


def normalise_field(path: str) -> str:
    """A field path without list indexes or map keys, and without a leading dot.

    ``spec.variants[0].minReplicas`` → ``spec.variants.minReplicas``. Indexes are dropped
    because the two sides reach an item differently (a CEL rule's ``fieldPath`` versus a
    validator walking the list); the chain of field names is what must agree.
    """
    return _INDEX.sub("", path).lstrip(".")
