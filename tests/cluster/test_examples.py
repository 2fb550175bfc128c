"""Every example manifest applies to a real API server with the CRDs installed.

Each file of examples/**/*.yaml holding Kubernetes objects is applied (server-side) with its
namespaced objects moved into the test's own namespace, then read back. Cluster-scoped objects
(AcceleratorProfiles) are applied as they are. Files without Kubernetes objects (none today) are
not collected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.example_objects import CLUSTER_KINDS

from modelfleet.testing.cluster import ClusterClient
from modelfleet.testing.cluster_manifests import load_manifests

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
# every file holding cluster objects (the scheduler's StaticEndpoints files are local config)
EXAMPLE_FILES = [
    p
    for p in sorted((REPO / "examples").rglob("*.yaml"))
    if load_manifests(p) and all(d["kind"] in CLUSTER_KINDS for d in load_manifests(p))
]


def in_namespace(docs: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """Copies of ``docs`` with every declared namespace replaced by ``namespace``."""
    out = []
    for doc in docs:
        doc = json.loads(json.dumps(doc))
        if "namespace" in doc.get("metadata", {}):
            doc["metadata"]["namespace"] = namespace
        out.append(doc)
    return out


def is_subset(ours: Any, stored: Any) -> bool:
    """True if every field and list item of ``ours`` is in ``stored`` with the same value."""
    if isinstance(ours, dict):
        return isinstance(stored, dict) and all(
            k in stored and is_subset(v, stored[k]) for k, v in ours.items()
        )
    if isinstance(ours, list):
        return (
            isinstance(stored, list)
            and len(ours) == len(stored)
            and all(is_subset(a, b) for a, b in zip(ours, stored, strict=True))
        )
    return bool(ours == stored)


def test_examples_exist() -> None:
    assert EXAMPLE_FILES, "examples/**/*.yaml: no Kubernetes manifests found"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(REPO / "examples")))
def test_example_applies(
    cluster: ClusterClient, installed_crds: list[dict[str, Any]], namespace: str, path: Path
) -> None:
    docs = in_namespace(load_manifests(path), namespace)
    text = yaml.safe_dump_all(docs, sort_keys=False)
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=text)
    live = json.loads(
        cluster.kubectl("get", "-n", namespace, "-f", "-", "-o", "json", input=text).stdout
    )
    items = live.get("items", [live])
    assert [(i["kind"], i["metadata"]["name"]) for i in items] == [
        (d["kind"], d["metadata"]["name"]) for d in docs
    ]
    # Nothing was pruned: everything we sent is stored (the server may add defaults).
    for doc, item in zip(docs, items, strict=True):
        assert is_subset(doc.get("spec", {}), item.get("spec", {})), (
            f"{doc['kind']}/{doc['metadata']['name']}: stored spec lost fields we sent"
        )
    cluster.kubectl("delete", "-n", namespace, "-f", "-", "--wait=false", input=text)
