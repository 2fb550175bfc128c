"""Every CRD in crds/ is accepted by a real API server (structural schema, CEL cost budget,
printer columns, subresources) and becomes Established with the names it declares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelfleet.testing.cluster import ClusterClient
from modelfleet.testing.cluster_manifests import load_manifests

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CRD_FILES = sorted((REPO / "crds").glob("*.yaml"))


def test_crd_directory_is_not_empty() -> None:
    assert CRD_FILES, "crds/*.yaml: no CRD files (the cluster tier tests them all)"


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_crd_applies_and_is_established(cluster: ClusterClient, path: Path) -> None:
    crds = [d for d in load_manifests(path) if d["kind"] == "CustomResourceDefinition"]
    assert crds, f"{path} holds no CustomResourceDefinition"
    # Server-side apply: large CRDs exceed the 256 KiB last-applied annotation of client-side.
    cluster.kubectl("apply", "--server-side", "-f", str(path))
    for crd in crds:
        name = crd["metadata"]["name"]
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
        live = json.loads(cluster.kubectl("get", f"crd/{name}", "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in live["status"]["conditions"]}
        assert conditions.get("NamesAccepted") == "True", conditions
        assert live["status"]["acceptedNames"]["kind"] == crd["spec"]["names"]["kind"]
        assert sorted(live["status"]["acceptedNames"].get("shortNames", [])) == sorted(
            crd["spec"]["names"].get("shortNames", [])
        )
