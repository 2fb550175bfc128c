"""The real kube-scheduler places pods on the simulated GPU nodes by GPU product label,
``nvidia.com/gpu`` capacity and taints, and leaves the rest Pending with its real reason.

Pods are shaped like an engine pod of one ModelPool variant: a node selector from the
AcceleratorProfile, its tolerations, and ``nvidia.com/gpu`` in requests and limits.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml

from modelfleet.testing.cluster import ClusterClient
from modelfleet.testing.cluster_nodes import DEFAULT_NODES, GPU_PRODUCT_LABEL, NodeSpec

pytestmark = pytest.mark.cluster

TOLERATE_GPU = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def variant_pod(
    name: str, selector: dict[str, str], gpus: int, tolerations: list[dict[str, str]]
) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": selector,
            "tolerations": tolerations,
            "containers": [
                {
                    "name": "engine",
                    "image": "vllm/vllm-openai:v0.32.0",
                    "resources": {"limits": limits},
                }
            ],
        },
    }


def create(cluster: ClusterClient, namespace: str, *pods: dict[str, Any]) -> None:
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(list(pods)))


def pod(cluster: ClusterClient, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout
    return dict(json.loads(out))


def failed_scheduling(
    cluster: ClusterClient, namespace: str, name: str, timeout: float = 60
) -> str:
    """The message of the scheduler's FailedScheduling event for the pod (waits for it)."""
    deadline = time.monotonic() + timeout
    while True:
        out = cluster.kubectl(
            "get", "events", "-n", namespace, "-o", "json",
            f"--field-selector=involvedObject.name={name},reason=FailedScheduling",
        ).stdout  # fmt: skip
        if items := json.loads(out)["items"]:
            return str(items[0]["message"])
        assert time.monotonic() < deadline, f"no FailedScheduling event for {name}"
        time.sleep(0.3)


@pytest.mark.parametrize("node", [n for n in DEFAULT_NODES if n.gpus], ids=lambda n: n.gpu_product)
def test_variant_pod_is_bound_to_its_gpu_product(
    cluster: ClusterClient, namespace: str, node: NodeSpec
) -> None:
    selector = {GPU_PRODUCT_LABEL: node.gpu_product}
    create(cluster, namespace, variant_pod("engine", selector, 1, TOLERATE_GPU))
    cluster.kubectl(
        "wait", "-n", namespace, "pod/engine", "--for=condition=PodScheduled", "--timeout=60s"
    )
    node_name = pod(cluster, namespace, "engine")["spec"]["nodeName"]
    bound = json.loads(cluster.kubectl("get", "node", node_name, "-o", "json").stdout)
    assert bound["metadata"]["labels"][GPU_PRODUCT_LABEL] == node.gpu_product


def test_variant_pod_for_missing_gpu_product_stays_pending(
    cluster: ClusterClient, namespace: str
) -> None:
    create(
        cluster,
        namespace,
        variant_pod("engine", {GPU_PRODUCT_LABEL: "NVIDIA-B200"}, 1, TOLERATE_GPU),
    )
    message = failed_scheduling(cluster, namespace, "engine")
    assert "didn't match Pod's node affinity/selector" in message
    live = pod(cluster, namespace, "engine")
    assert live["status"]["phase"] == "Pending"
    assert "nodeName" not in live["spec"]


def test_gpu_taint_keeps_untolerating_pod_off_gpu_nodes(
    cluster: ClusterClient, namespace: str
) -> None:
    create(cluster, namespace, variant_pod("engine", {GPU_PRODUCT_LABEL: "NVIDIA-L4"}, 1, []))
    assert "untolerated taint" in failed_scheduling(cluster, namespace, "engine")


def test_gpu_capacity_bounds_replicas(cluster: ClusterClient, namespace: str) -> None:
    # The L40S node has 4 GPUs: one 4-GPU replica is bound, the other two stay Pending.
    selector = {GPU_PRODUCT_LABEL: "NVIDIA-L40S"}
    names = ["engine-0", "engine-1", "engine-2"]
    create(cluster, namespace, *(variant_pod(n, selector, 4, TOLERATE_GPU) for n in names))
    deadline = time.monotonic() + 60
    while True:
        bound = {n: "nodeName" in pod(cluster, namespace, n)["spec"] for n in names}
        if any(bound.values()):
            break
        assert time.monotonic() < deadline, "no replica was bound to a node"
        time.sleep(0.3)
    pending = [n for n, is_bound in bound.items() if not is_bound]
    assert len(pending) == 2, bound
    for name in pending:
        assert "Insufficient nvidia.com/gpu" in failed_scheduling(cluster, namespace, name)
        assert pod(cluster, namespace, name)["status"]["phase"] == "Pending"
