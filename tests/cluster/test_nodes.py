"""Simulated node specs (pure): the Node objects and the nodes derived from profiles.

Unit tier: these need no cluster (the cluster tier checks that the scheduler honours them).
"""

from __future__ import annotations

from typing import Any

import pytest

from modelfleet.testing.cluster_nodes import (
    DEFAULT_NODES,
    GPU_PRODUCT_LABEL,
    GPU_TAINT,
    NodeSpec,
    Taint,
    nodes_from_profiles,
)

pytestmark = pytest.mark.unit


def profile(name: str, **spec: Any) -> dict[str, Any]:
    return {"kind": "AcceleratorProfile", "metadata": {"name": name}, "spec": spec}


def test_gpu_node_manifest_has_labels_capacity_taint_and_kwok_annotation() -> None:
    node = NodeSpec("g", "NVIDIA-L4", gpus=4, gpu_memory_mib=23034).manifest()
    labels = node["metadata"]["labels"]
    assert labels[GPU_PRODUCT_LABEL] == "NVIDIA-L4"
    assert labels["nvidia.com/gpu.count"] == "4"
    assert labels["nvidia.com/gpu.memory"] == "23034"
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "4"
    assert node["status"]["allocatable"] == node["status"]["capacity"]
    assert node["spec"]["taints"] == [GPU_TAINT.manifest()]


def test_cpu_node_has_no_gpu_and_no_taint() -> None:
    node = NodeSpec("c").manifest()
    assert GPU_PRODUCT_LABEL not in node["metadata"]["labels"]
    assert "nvidia.com/gpu" not in node["status"]["capacity"]
    assert "taints" not in node["spec"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"gpus": -1}, "gpus must be >= 0"), ({"gpus": 2}, "needs a gpu_product")],
    ids=["negative", "no-product"],
)
def test_invalid_node_spec_is_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NodeSpec("bad", **kwargs)


def test_default_nodes_cover_the_four_gpu_types_and_a_cpu_node() -> None:
    products = sorted(n.gpu_product for n in DEFAULT_NODES if n.gpus)
    assert products == [
        "NVIDIA-A100-SXM4-80GB",
        "NVIDIA-H100-80GB-HBM3",
        "NVIDIA-L4",
        "NVIDIA-L40S",
    ]
    assert [n.name for n in DEFAULT_NODES if not n.gpus] == ["cpu-0"]


@pytest.mark.parametrize(
    ("tolerations", "taints"),
    [
        ([], ()),
        (
            [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            (Taint("nvidia.com/gpu", "present", "NoSchedule"),),
        ),
        (
            [{"key": "pool", "operator": "Equal", "value": "llm", "effect": ""}],
            (Taint("pool", "llm", "NoSchedule"),),
        ),
        ([{"operator": "Exists"}], ()),
    ],
    ids=["none", "exists", "equal-any-effect", "tolerate-all"],
)
def test_profile_tolerations_become_the_taints_they_require(
    tolerations: list[dict[str, str]], taints: tuple[Taint, ...]
) -> None:
    (gpu, cpu) = nodes_from_profiles(
        [profile("P_1", gpuProduct="NVIDIA-L4", memoryGiB=24, tolerations=tolerations)]
    )
    assert gpu.name == "gpu-p-1-0"
    assert gpu.effective_taints() == taints
    assert cpu.gpus == 0


def test_profile_selector_resource_and_memory_reach_the_node() -> None:
    docs = [
        {"kind": "ModelPool", "metadata": {"name": "ignored"}},
        profile(
            "l4",
            gpuProduct="NVIDIA-L4",
            memoryGiB=24,
            resourceName="example.com/gpu",
            nodeSelector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        ),
    ]
    gpu, _ = nodes_from_profiles(docs, nodes_per_profile=1, gpus_per_node=2)
    manifest = gpu.manifest()
    assert manifest["metadata"]["labels"]["cloud.google.com/gke-accelerator"] == "nvidia-l4"
    assert manifest["metadata"]["labels"]["nvidia.com/gpu.memory"] == str(24 * 1024)
    assert manifest["status"]["capacity"]["example.com/gpu"] == "2"


def test_profile_without_gpu_product_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a name and gpuProduct"):
        nodes_from_profiles([profile("x", memoryGiB=24)])
