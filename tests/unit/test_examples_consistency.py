"""The example folders agree where they share a cluster-scoped name.

AcceleratorProfiles are cluster-scoped: applying ``examples/quickstart`` on a cluster that holds
the walkthrough (``examples/01``) replaces its profiles by name, so a profile declared in
several folders must be declared the same everywhere (the quickstart's profiles once lacked
the GPU taint's toleration that the walkthrough's have).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_a_profile_declared_in_several_folders_is_declared_the_same() -> None:
    specs: dict[str, dict[str, list[str]]] = {}
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "AcceleratorProfile":
                spec = json.dumps(doc["spec"], sort_keys=True)
                by_spec = specs.setdefault(doc["metadata"]["name"], {})
                by_spec.setdefault(spec, []).append(str(path.relative_to(EXAMPLES)))
    assert len(specs) >= 4
    differ = {name: list(v.values()) for name, v in specs.items() if len(v) > 1}
    assert not differ, f"profiles declared differently in these files: {differ}"
