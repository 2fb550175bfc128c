"""kubectl against the CRDs: printer columns for mp/rp/ap and the ModelPool scale subresource.

The example objects (examples/**/*.yaml) are applied into the test's namespace first, so each
kind has rows to print.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.example_objects import WALKTHROUGH

from modelfleet.testing.cluster import ClusterClient
from modelfleet.testing.cluster_manifests import load_manifests

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
SHORT_NAMES = {"mp": "ModelPool", "rp": "RoutingPolicy", "ap": "AcceleratorProfile"}
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
_SIMPLE_PATH = re.compile(r"^(\.[A-Za-z0-9_]+)+$")


def example_docs(namespace: str) -> list[dict[str, Any]]:
    docs = [
        d
        for folder in WALKTHROUGH
        for p in sorted(folder.glob("*.yaml"))
        for d in load_manifests(p)
    ]
    for d in docs:
        if "namespace" in d.get("metadata", {}):
            d["metadata"]["namespace"] = namespace
    return docs


@pytest.fixture
def examples(
    cluster: ClusterClient, installed_crds: list[dict[str, Any]], namespace: str
) -> Iterator[list[dict[str, Any]]]:
    docs = example_docs(namespace)
    text = yaml.safe_dump_all(docs, sort_keys=False)
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=text)
    yield docs
    cluster.kubectl("delete", "-n", namespace, "-f", "-", "--wait=false", input=text, check=False)


def crd_for(crds: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(c for c in crds if c["spec"]["names"]["kind"] == kind)


def columns_of(crd: dict[str, Any]) -> list[dict[str, Any]]:
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return list(version.get("additionalPrinterColumns", []))


def lookup(obj: dict[str, Any], json_path: str) -> Any:
    node: Any = obj
    for part in json_path.lstrip(".").split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


@pytest.mark.parametrize(("short", "kind"), SHORT_NAMES.items(), ids=SHORT_NAMES.keys())
def test_printer_columns(
    cluster: ClusterClient,
    installed_crds: list[dict[str, Any]],
    examples: list[dict[str, Any]],
    namespace: str,
    short: str,
    kind: str,
) -> None:
    crd = crd_for(installed_crds, kind)
    assert short in crd["spec"]["names"].get("shortNames", []), f"{kind} lacks short name {short}"
    columns = columns_of(crd)
    assert columns, f"{kind} declares no additionalPrinterColumns"
    objects = [d for d in examples if d["kind"] == kind]
    assert objects, f"examples/ hold no {kind}"

    # What kubectl prints: NAME, then every column (-o wide includes priority > 0 ones).
    out = cluster.kubectl("get", short, "-n", namespace, "-o", "wide").stdout
    assert re.split(r"\s{2,}", out.splitlines()[0].strip()) == [
        "NAME",
        *[c["name"].upper() for c in columns],
    ]
    # The cells, from the server-side Table kubectl renders (empty cells cannot be told apart
    # in the text). Columns reading a plain field show the value we applied.
    group, version = crd["spec"]["group"], crd["spec"]["versions"][0]["name"]
    plural = crd["spec"]["names"]["plural"]
    scope = f"namespaces/{namespace}/" if crd["spec"]["scope"] == "Namespaced" else ""
    table = cluster.api("GET", f"/apis/{group}/{version}/{scope}{plural}", accept=TABLE).body
    names = [c["name"] for c in table["columnDefinitions"]]
    assert names == ["Name", *[c["name"] for c in columns]]
    rows = {r["cells"][0]: r["cells"] for r in table["rows"]}
    for obj in objects:
        cells = rows[obj["metadata"]["name"]]
        for i, col in enumerate(columns, start=1):
            value = lookup(obj, col["jsonPath"])
            if _SIMPLE_PATH.match(col["jsonPath"]) and value is not None:
                # A list or object in a string column is printed as JSON.
                cell = json.loads(cells[i]) if isinstance(value, list | dict) else cells[i]
                assert cell == value, f"{kind} column {col['name']}: {cells[i]!r} != {value!r}"


def test_get_mp_rp_ap_together(
    cluster: ClusterClient, examples: list[dict[str, Any]], namespace: str
) -> None:
    out = cluster.kubectl("get", ",".join(SHORT_NAMES), "-n", namespace).stdout
    for obj in examples:
        if obj["kind"] in SHORT_NAMES.values():
            group = obj["apiVersion"].split("/")[0]
            assert f"{obj['kind'].lower()}.{group}/{obj['metadata']['name']}" in out


def test_kubectl_scale_uses_the_scale_subresource(
    cluster: ClusterClient,
    installed_crds: list[dict[str, Any]],
    examples: list[dict[str, Any]],
    namespace: str,
) -> None:
    crd = crd_for(installed_crds, "ModelPool")
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    scale = version["subresources"]["scale"]
    pool = next(d for d in examples if d["kind"] == "ModelPool")
    name = pool["metadata"]["name"]
    bounds = [(v.get("minReplicas", 1), v.get("maxReplicas", 1)) for v in pool["spec"]["variants"]]
    target = min(sum(lo for lo, _ in bounds) + 1, sum(hi for _, hi in bounds))

    cluster.kubectl("scale", "mp", name, "-n", namespace, f"--replicas={target}")

    group, ver = crd["spec"]["group"], version["name"]
    raw = cluster.kubectl(
        "get", "--raw", f"/apis/{group}/{ver}/namespaces/{namespace}/modelpools/{name}/scale"
    ).stdout
    scale_obj = json.loads(raw)
    assert scale_obj["kind"] == "Scale"
    assert scale_obj["spec"]["replicas"] == target
    live = json.loads(cluster.kubectl("get", "mp", name, "-n", namespace, "-o", "json").stdout)
    assert lookup(live, scale["specReplicasPath"]) == target
