"""The test client on the maintained ``kubernetes`` client: kubeconfig loading with contexts,
the typed core API, the dynamic client's discovery of custom kinds, raw requests, and the
errors a wrong kubeconfig or kind gets."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelfleet.testing.cluster import ClusterClient, ClusterError
from modelfleet.testing.cluster_manifests import load_manifests

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "02-llama-8b-mixed" / "pool.yaml"


def _two_context_kubeconfig(source: Path, out: Path) -> Path:
    """``source`` plus a second context, made current, that points at a closed port."""
    config = yaml.safe_load(source.read_text())
    real = config["current-context"]
    ctx = next(c for c in config["contexts"] if c["name"] == real)
    cluster = next(c for c in config["clusters"] if c["name"] == ctx["context"]["cluster"])
    dead = {"name": "dead", "cluster": {**cluster["cluster"], "server": "https://127.0.0.1:1"}}
    config["clusters"].append(dead)
    config["contexts"].append({"name": "dead", "context": {**ctx["context"], "cluster": "dead"}})
    config["current-context"] = "dead"
    out.write_text(yaml.safe_dump(config))
    return out


@pytest.fixture
def named_client(cluster: ClusterClient, tmp_path: Path) -> Iterator[ClusterClient]:
    """A second client of the same cluster, through a kubeconfig whose *current* context is
    unreachable: it must use the context it was given, for the API and for kubectl alike."""
    path = _two_context_kubeconfig(cluster.kubeconfig, tmp_path / "kubeconfig")
    real = yaml.safe_load(cluster.kubeconfig.read_text())["current-context"]
    client = ClusterClient.from_kubeconfig(cluster.binaries, path, context=real)
    yield client
    client.close()


@pytest.mark.unit
def test_a_bad_kubeconfig_names_the_file(tmp_path: Path) -> None:
    from modelfleet.testing.cluster_client import Binaries

    path = tmp_path / "kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    with pytest.raises(ClusterError, match=re.escape(str(path))):
        ClusterClient.from_kubeconfig(Binaries(tmp_path), path)


@pytest.mark.cluster
def test_named_context_reaches_the_cluster(
    cluster: ClusterClient, named_client: ClusterClient
) -> None:
    assert named_client.server == cluster.server
    nodes = {n.metadata.name for n in named_client.core.list_node().items}
    assert "gpu-h100-0" in nodes
    out = named_client.kubectl("get", "nodes", "-o", "name").stdout
    assert "node/gpu-h100-0" in out.split()


@pytest.mark.cluster
def test_unknown_context_is_refused(cluster: ClusterClient, tmp_path: Path) -> None:
    path = _two_context_kubeconfig(cluster.kubeconfig, tmp_path / "kubeconfig")
    with pytest.raises(ClusterError, match="no context named 'nope'"):
        ClusterClient.from_kubeconfig(cluster.binaries, path, context="nope")


@pytest.mark.cluster
def test_dynamic_client_creates_a_custom_object(
    cluster: ClusterClient, installed_crds: list[dict[str, Any]], namespace: str
) -> None:
    profiles = cluster.resource("modelfleet.io/v1alpha1", "AcceleratorProfile")
    assert not profiles.namespaced
    pools = cluster.resource("modelfleet.io/v1alpha1", "ModelPool")
    assert pools.namespaced
    assert cluster.resource_path("modelfleet.io/v1alpha1", "ModelPool", namespace) == (
        f"/apis/modelfleet.io/v1alpha1/namespaces/{namespace}/modelpools"
    )
    with pytest.raises(ClusterError, match="no kind Frobnicator"):
        cluster.resource("modelfleet.io/v1alpha1", "Frobnicator")

    pool = next(d for d in load_manifests(EXAMPLES) if d["kind"] == "ModelPool")
    pool["metadata"] = {"name": pool["metadata"]["name"], "namespace": namespace}
    pools.create(body=pool, namespace=namespace)
    live = pools.get(name=pool["metadata"]["name"], namespace=namespace)
    assert live.spec.servedModelName == pool["spec"]["servedModelName"]
    assert live.metadata.uid  # stored by the API server, defaults applied


@pytest.mark.cluster
def test_raw_request_returns_a_refusal_instead_of_raising(cluster: ClusterClient) -> None:
    resp = cluster.api("GET", "/api/v1/namespaces/does-not-exist-here")
    assert resp.status == 404
    assert resp.body["kind"] == "Status" and resp.body["reason"] == "NotFound"
    assert cluster.api("GET", "/readyz").text.strip() == "ok"


@pytest.mark.cluster
def test_unreachable_server_is_a_cluster_error(cluster: ClusterClient, tmp_path: Path) -> None:
    path = _two_context_kubeconfig(cluster.kubeconfig, tmp_path / "kubeconfig")
    dead = ClusterClient.from_kubeconfig(cluster.binaries, path)  # current context: "dead"
    try:
        with pytest.raises(ClusterError, match=re.escape("127.0.0.1:1")):
            dead.api("GET", "/readyz", timeout=5)
    finally:
        dead.close()
