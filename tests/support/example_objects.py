"""The example manifests (``examples/``), parsed with the API models, for tests of the pure
builders and decisions. Pools get a fixed ``metadata.uid`` so they can own objects.

The objects are those of the cluster walkthrough (:data:`WALKTHROUGH`, ``examples/01`` to
``05``), one consistent set: ``examples/06-local-fleet`` and ``examples/quickstart`` are
standalone local fleets that reuse some of its names (``coder``, ``h100-80gb``) with other
specs, so they are applied on their own, never together with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from modelfleet.api import AcceleratorProfile, ModelPool, RoutingPolicy
from modelfleet.api.validate import validate_object

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
#: The cluster walkthrough's folders, in the order their READMEs apply them.
WALKTHROUGH = [
    EXAMPLES / name
    for name in (
        "01-accelerators",
        "02-llama-8b-mixed",
        "03-llama-70b-tp4",
        "04-coder-pool",
        "05-routing-policy",
    )
]
#: Kinds a cluster stores (the CRDs); ``StaticEndpoints`` is the scheduler's local config only.
CLUSTER_KINDS = frozenset({"AcceleratorProfile", "ModelPool", "RoutingPolicy"})


def example_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(p for folder in WALKTHROUGH for p in folder.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    return docs


def _parse(doc: dict[str, Any]) -> Any:
    parsed, problems = validate_object(doc)
    assert not problems, problems
    return parsed


def example_profiles() -> dict[str, AcceleratorProfile]:
    return {
        d["metadata"]["name"]: _parse(d)
        for d in example_docs()
        if d.get("kind") == "AcceleratorProfile"
    }


def example_pools() -> dict[str, ModelPool]:
    out = {}
    for d in example_docs():
        if d.get("kind") == "ModelPool":
            d = {**d, "metadata": {**d["metadata"], "uid": f"uid-{d['metadata']['name']}"}}
            out[d["metadata"]["name"]] = _parse(d)
    return out


def example_policies() -> dict[str, RoutingPolicy]:
    return {
        d["metadata"]["name"]: _parse(d) for d in example_docs() if d.get("kind") == "RoutingPolicy"
    }


def flag_values(args: list[str]) -> dict[str, str]:
    """``["m", "--a", "1", "--b", "--c=2"]`` → ``{"--a": "1", "--b": "", "--c": "2"}``."""
    out: dict[str, str] = {}
    i = 1
    while i < len(args):
        arg = args[i]
        if "=" in arg:
            k, v = arg.split("=", 1)
            out[k] = v
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            out[arg] = args[i + 1]
            i += 1
        else:
            out[arg] = ""
        i += 1
    return out
