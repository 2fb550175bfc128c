"""Simulated GPU nodes for the test control plane.

A :class:`NodeSpec` describes one node the way GPU feature discovery and the NVIDIA device plugin
would present it on a real cluster: the ``nvidia.com/gpu.product`` / ``.count`` / ``.memory``
labels, ``nvidia.com/gpu`` (or another extended resource) in capacity and allocatable, and the
taint GPU node pools usually carry so that only pods tolerating it land there. kwok keeps nodes
annotated ``kwok.x-k8s.io/node: fake`` Ready and runs the pods bound to them, so the real
kube-scheduler places pods by these labels, resources and taints exactly as it would on GPUs.

Nodes come from :data:`DEFAULT_NODES` (one node each of H100-80GB, A100-80GB, L40S and L4, plus a
plain CPU node for operators and other system pods) or from AcceleratorProfile manifests
(:func:`nodes_from_profiles`), so a test can build the cluster its profiles describe.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Annotation kwok is told to manage (``--manage-nodes-with-annotation-selector``).
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_RESOURCE = "nvidia.com/gpu"
_GKE_ACCELERATOR = "cloud.google.com/gke-accelerator"

_DNS_LABEL = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class Taint:
    """A node taint (``core/v1 Taint``)."""

    key: str
    value: str = ""
    effect: str = "NoSchedule"

    def manifest(self) -> dict[str, str]:
        out = {"key": self.key, "effect": self.effect}
        if self.value:
            out["value"] = self.value
        return out


#: The taint GPU node pools carry (GKE's convention; most clusters use the same key).
GPU_TAINT = Taint(key=GPU_RESOURCE, value="present", effect="NoSchedule")


@dataclass(frozen=True)
class NodeSpec:
    """One simulated node. ``gpus == 0`` makes a CPU node (no GPU labels or taint).

    ``labels`` are added to (and override) the GPU labels. ``taints=None`` (default) gives a GPU
    node ``[GPU_TAINT]`` and a CPU node none; any tuple replaces that (``()`` = untainted).
    """

    name: str
    gpu_product: str = ""
    gpus: int = 0
    gpu_memory_mib: int = 0
    resource_name: str = GPU_RESOURCE
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] | None = None
    cpu: str = "64"
    memory: str = "512Gi"
    pods: str = "110"

    def __post_init__(self) -> None:
        if self.gpus < 0:
            raise ValueError(f"node {self.name}: gpus must be >= 0, got {self.gpus}")
        if self.gpus and not self.gpu_product:
            raise ValueError(f"node {self.name}: gpus={self.gpus} needs a gpu_product")

    def effective_taints(self) -> tuple[Taint, ...]:
        if self.taints is not None:
            return self.taints
        return (GPU_TAINT,) if self.gpus else ()

    def manifest(self) -> dict[str, Any]:
        """The ``v1/Node`` object to create (status included: the API server keeps it on create,
        as it does for a kubelet registering itself)."""
        labels: dict[str, str] = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
        }
        capacity = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods}
        if self.gpus:
            labels |= {
                GPU_PRODUCT_LABEL: self.gpu_product,
                "nvidia.com/gpu.count": str(self.gpus),
                "nvidia.com/gpu.present": "true",
            }
            if self.gpu_memory_mib:
                labels["nvidia.com/gpu.memory"] = str(self.gpu_memory_mib)
            capacity[self.resource_name] = str(self.gpus)
        labels |= dict(self.labels)
        spec: dict[str, Any] = {}
        if taints := self.effective_taints():
            spec["taints"] = [t.manifest() for t in taints]
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {
                    KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE,
                    "node.alpha.kubernetes.io/ttl": "0",
                },
            },
            "spec": spec,
            "status": {"capacity": capacity, "allocatable": dict(capacity)},
        }


#: One node per accelerator the project's benchmarks and examples use, plus a CPU node.
#: Products and memory are what GPU feature discovery reports on those machines.
#: GPU nodes also carry GKE's accelerator label where GKE has one, as GKE nodes running GPU
#: feature discovery do, so profiles selecting either label find them.
DEFAULT_NODES: tuple[NodeSpec, ...] = (
    NodeSpec(
        "gpu-h100-0",
        "NVIDIA-H100-80GB-HBM3",
        gpus=8,
        gpu_memory_mib=81559,
        labels={_GKE_ACCELERATOR: "nvidia-h100-80gb"},
    ),
    NodeSpec(
        "gpu-a100-0",
        "NVIDIA-A100-SXM4-80GB",
        gpus=8,
        gpu_memory_mib=81920,
        labels={_GKE_ACCELERATOR: "nvidia-a100-80gb"},
    ),
    NodeSpec("gpu-l40s-0", "NVIDIA-L40S", gpus=4, gpu_memory_mib=46068),
    NodeSpec(
        "gpu-l4-0",
        "NVIDIA-L4",
        gpus=4,
        gpu_memory_mib=23034,
        labels={_GKE_ACCELERATOR: "nvidia-l4"},
    ),
    NodeSpec("cpu-0", cpu="32", memory="128Gi"),
)


def _taints_from_tolerations(tolerations: Iterable[Mapping[str, Any]]) -> tuple[Taint, ...]:
    """The taints a node must carry for exactly these tolerations to be needed.

    ``Equal`` → a taint with that key and value; ``Exists`` with a key → that key with value
    ``present``; an empty effect means "all effects", mapped to ``NoSchedule``. A toleration
    without a key (tolerate everything) implies no particular taint.
    """
    out: list[Taint] = []
    for tol in tolerations:
        key = str(tol.get("key", ""))
        if not key:
            continue
        value = "present" if tol.get("operator") == "Exists" else str(tol.get("value", ""))
        effect = str(tol.get("effect") or "NoSchedule")
        out.append(Taint(key=key, value=value, effect=effect))
    return tuple(out)


def nodes_from_profiles(
    profiles: Iterable[Mapping[str, Any]], nodes_per_profile: int = 1, gpus_per_node: int = 8
) -> tuple[NodeSpec, ...]:
    """Node specs matching AcceleratorProfile manifests (``kind: AcceleratorProfile`` dicts).

    For each profile: nodes labelled with its selector (``spec.nodeSelector`` or
    ``nvidia.com/gpu.product: spec.gpuProduct``), tainted so that ``spec.tolerations`` are
    required, with ``gpus_per_node`` devices of ``spec.resourceName`` and
    ``spec.memoryGiB * 1024`` MiB each. A CPU node is always added for non-GPU pods.
    """
    out: list[NodeSpec] = []
    for profile in profiles:
        if profile.get("kind") != "AcceleratorProfile":
            continue
        name = str(profile.get("metadata", {}).get("name", ""))
        spec = profile.get("spec") or {}
        product = str(spec.get("gpuProduct", ""))
        if not name or not product:
            raise ValueError(
                f"AcceleratorProfile {name or '<unnamed>'}: needs a name and gpuProduct"
            )
        slug = _DNS_LABEL.sub("-", name.lower()).strip("-")
        for i in range(nodes_per_profile):
            out.append(
                NodeSpec(
                    name=f"gpu-{slug}-{i}",
                    gpu_product=product,
                    gpus=gpus_per_node,
                    gpu_memory_mib=int(spec.get("memoryGiB", 0)) * 1024,
                    resource_name=str(spec.get("resourceName") or GPU_RESOURCE),
                    labels=dict(spec.get("nodeSelector") or {}),
                    taints=_taints_from_tolerations(spec.get("tolerations") or ()),
                )
            )
    out.append(NodeSpec("cpu-0", cpu="32", memory="128Gi"))
    return tuple(out)
