"""AcceleratorProfile: one GPU type, declared once per cluster.

ModelPool variants refer to a profile by name, so how a GPU type is selected (node labels,
tolerations, resource name) and what it costs is written in one place. Cluster-scoped.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from modelfleet.api.common import (
    EXTENDED_RESOURCE_PATTERN,
    LABEL_VALUE_PATTERN,
    QUALIFIED_NAME_PATTERN,
    ApiModel,
    Condition,
    Resource,
    Rule,
    cel_string,
    full_match,
)


class Toleration(ApiModel):
    """A pod toleration, as in ``core/v1 Toleration`` (the subset GPU nodes use)."""

    key: str = Field(
        default="",
        max_length=316,
        pattern=r"^$|" + QUALIFIED_NAME_PATTERN,
        description="Taint key (a label key); empty with Exists = every taint.",
    )
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str = Field(
        default="",
        max_length=63,
        pattern=LABEL_VALUE_PATTERN,
        description="Taint value (Equal only; a label value).",
    )
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = Field(
        default="", description="Taint effect to tolerate; empty = all effects."
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.operator != 'Exists' || self.value == ''",
            message="value must be empty when operator is Exists",
            field="value",
            check=lambda t: t.operator != "Exists" or t.value == "",
        ),
        Rule(
            cel="self.key != '' || self.operator == 'Exists'",
            message="operator must be Exists when key is empty (a toleration of every taint)",
            field="operator",
            check=lambda t: t.key != "" or t.operator == "Exists",
        ),
    )


class AcceleratorProfileSpec(ApiModel):
    """What a GPU type is and how pods land on it."""

    gpu_product: str = Field(
        min_length=1,
        max_length=63,
        pattern=LABEL_VALUE_PATTERN,
        description=(
            "Value of the node label nvidia.com/gpu.product (GPU feature discovery), e.g. "
            "NVIDIA-H100-80GB-HBM3 (a label value). Used as the node selector unless "
            "nodeSelector is set."
        ),
    )
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict,
        max_length=16,
        description=(
            "Node labels that select this GPU type (label keys and values). Empty (default) = "
            "{nvidia.com/gpu.product: <gpuProduct>}."
        ),
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=16, description="Tolerations added to engine pods."
    )
    resource_name: str = Field(
        default="nvidia.com/gpu",
        min_length=1,
        max_length=316,
        pattern=EXTENDED_RESOURCE_PATTERN,
        description=(
            "Extended resource the device plugin exposes, with its domain (e.g. amd.com/gpu; "
            "not in kubernetes.io). Default nvidia.com/gpu."
        ),
    )
    memory_gib: int = Field(
        alias="memoryGiB",
        ge=1,
        le=1024,
        description="GPU memory per device, GiB (1..1024). Sizes the KV cache.",
    )
    prefill_speed: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description=(
            "Prefill (compute-bound) throughput relative to an H100-80GB = 1.0. Default 1.0, "
            "range (0, 100]. Used by the autoscaler and SLO scorer before measurements exist."
        ),
    )
    decode_speed: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description=(
            "Decode (memory-bandwidth-bound) throughput relative to an H100-80GB = 1.0. "
            "Default 1.0, range (0, 100]."
        ),
    )
    cost_per_hour: float = Field(
        ge=0,
        le=10000,
        description="Price of one GPU for one hour, in USD (0..10000).",
    )
    simulator_profile: str = Field(
        default="",
        max_length=63,
        description=(
            "Engine-simulator timing profile for this GPU (e.g. h100-80gb) used by the local "
            "fleet and the benchmarks; empty = derived from gpuProduct."
        ),
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=(
                f"self.nodeSelector.all(k, k.matches({cel_string(QUALIFIED_NAME_PATTERN)}) && "
                f"self.nodeSelector[k].matches({cel_string(LABEL_VALUE_PATTERN)}))"
            ),
            message="nodeSelector keys must be label keys and values label values",
            field="nodeSelector",
            check=lambda s: all(
                full_match(QUALIFIED_NAME_PATTERN, k) and full_match(LABEL_VALUE_PATTERN, v)
                for k, v in s.node_selector.items()
            ),
        ),
        Rule(
            cel=(
                "!(self.resourceName.startsWith('kubernetes.io/') || "
                "self.resourceName.contains('.kubernetes.io/'))"
            ),
            message="resourceName must be an extended resource outside kubernetes.io",
            field="resourceName",
            check=lambda s: (
                not (
                    s.resource_name.startswith("kubernetes.io/")
                    or ".kubernetes.io/" in s.resource_name
                )
            ),
        ),
    )


class AcceleratorProfileStatus(ApiModel):
    """Observed state: how many matching nodes and GPUs the cluster has."""

    observed_generation: int = Field(default=0, ge=0, description="Generation last processed.")
    nodes: int = Field(default=0, ge=0, description="Nodes matching the selector.")
    allocatable_gpus: int = Field(default=0, ge=0, description="Sum of allocatable GPUs on them.")
    conditions: list[Condition] = Field(default_factory=list, max_length=8)


class AcceleratorProfile(Resource):
    """A GPU type (cluster-scoped)."""

    KIND: ClassVar[str] = "AcceleratorProfile"
    PLURAL: ClassVar[str] = "acceleratorprofiles"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("ap",)
    NAMESPACED: ClassVar[bool] = False

    kind: Literal["AcceleratorProfile"] = "AcceleratorProfile"
    spec: AcceleratorProfileSpec
    status: AcceleratorProfileStatus | None = None

    def selector(self) -> dict[str, str]:
        """The node selector engine pods of this GPU type get."""
        return dict(self.spec.node_selector) or {"nvidia.com/gpu.product": self.spec.gpu_product}
