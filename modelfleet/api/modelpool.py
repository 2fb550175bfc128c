"""ModelPool: one served model, its vLLM engine settings, one variant per accelerator type.

A pool is what a RoutingPolicy sends requests to. Each variant becomes one Deployment of vLLM
on one GPU type, with its own replica bounds; the autoscaler picks the cheapest mix of variants
that holds the pool's SLO. The ``scale`` subresource acts on ``spec.replicas`` (total replicas
across variants; the operator spreads them cheapest-first within each variant's bounds).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from modelfleet.api.common import (
    LABEL_PATTERN,
    NAME_PATTERN,
    ApiModel,
    Condition,
    EnvVar,
    Resource,
    Rule,
    SecretKeyRef,
    unique,
)

DEFAULT_ENGINE_IMAGE = "vllm/vllm-openai:v0.32.0"


class EngineSpec(ApiModel):
    """vLLM engine settings shared by every variant of the pool."""

    image: str = Field(
        default=DEFAULT_ENGINE_IMAGE,
        min_length=1,
        max_length=512,
        description=f"Engine container image. Default {DEFAULT_ENGINE_IMAGE}.",
    )
    max_model_len: int = Field(
        default=8192,
        ge=128,
        le=1048576,
        description="--max-model-len: longest prompt + output, tokens. Default 8192.",
    )
    enable_prefix_caching: bool = Field(
        default=True, description="--enable-prefix-caching. Default true."
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        ge=0.1,
        le=0.99,
        description="--gpu-memory-utilization: share of GPU memory vLLM may use (0.1..0.99).",
    )
    block_size: Literal[8, 16, 32, 64, 128] = Field(
        default=16, description="--block-size: KV-cache block, tokens (8..128). Default 16."
    )
    max_num_seqs: int = Field(
        default=256, ge=1, le=4096, description="--max-num-seqs: running sequences per step."
    )
    max_num_batched_tokens: int = Field(
        default=8192,
        ge=16,
        le=1048576,
        description="--max-num-batched-tokens: token budget per step (chunked prefill).",
    )
    kv_events: bool = Field(
        default=False,
        description=(
            "Publish KV-cache events (--kv-events-config, ZMQ) so the scheduler keeps an exact "
            "prefix index. Default false (the scheduler then learns prefixes approximately)."
        ),
    )
    port: int = Field(default=8000, ge=1024, le=65535, description="HTTP port of the engine.")
    extra_args: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Further vLLM arguments, appended verbatim.",
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=64, description="Extra environment variables."
    )


class ModelSource(ApiModel):
    """Where the weights come from."""

    pvc_name: str = Field(
        default="",
        max_length=253,
        description="PersistentVolumeClaim holding the weights; empty = download at start.",
    )
    path: str = Field(
        default="",
        max_length=1024,
        description="Path of the model inside the PVC (or a local path); empty = the model id.",
    )
    hf_token_secret: SecretKeyRef | None = Field(
        default=None, description="Secret with a Hugging Face token, for gated models."
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.pvcName != '' || self.path == '' || self.path.startsWith('/')",
            message="path must be absolute when no pvcName is given",
            field="path",
            check=lambda s: s.pvc_name != "" or s.path == "" or s.path.startswith("/"),
        ),
    )


class Variant(ApiModel):
    """The pool on one accelerator type: one Deployment of vLLM."""

    name: str = Field(
        min_length=1,
        max_length=40,
        pattern=LABEL_PATTERN,
        description="Variant name, unique in the pool (DNS label, 1..40 chars).",
    )
    accelerator_profile: str = Field(
        min_length=1,
        max_length=253,
        pattern=NAME_PATTERN,
        description="Name of the AcceleratorProfile this variant runs on.",
    )
    gpus_per_replica: int = Field(
        default=1, ge=1, le=16, description="GPUs per engine pod (1..16). Default 1."
    )
    tensor_parallel_size: int = Field(
        default=1,
        ge=1,
        le=16,
        description="--tensor-parallel-size (1..16); gpusPerReplica must be a multiple of it.",
    )
    min_replicas: int = Field(default=1, ge=0, le=1000, description="Lower bound (0..1000).")
    max_replicas: int = Field(default=1, ge=1, le=1000, description="Upper bound (1..1000).")
    cost_per_hour: float | None = Field(
        default=None,
        ge=0,
        le=100000,
        description=("USD per replica-hour; overrides the profile's costPerHour × gpusPerReplica."),
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must be <= maxReplicas",
            field="minReplicas",
            check=lambda v: v.min_replicas <= v.max_replicas,
        ),
        Rule(
            cel="self.gpusPerReplica % self.tensorParallelSize == 0",
            message="gpusPerReplica must be a multiple of tensorParallelSize",
            field="tensorParallelSize",
            check=lambda v: v.gpus_per_replica % v.tensor_parallel_size == 0,
        ),
    )


class SLOSpec(ApiModel):
    """Latency targets the pool is scaled and routed to hold (p90 by default)."""

    ttft_ms: int = Field(
        default=2000, ge=1, le=600000, description="Time to first token target, ms."
    )
    tpot_ms: int = Field(
        default=100, ge=1, le=60000, description="Time per output token target, ms."
    )
    percentile: Literal[50, 90, 95, 99] = Field(
        default=90, description="Latency percentile the targets apply to. Default 90."
    )


class ScalingSpec(ApiModel):
    """How replica counts are decided."""

    mode: Literal["Manual", "SLO"] = Field(
        default="Manual",
        description=(
            "Manual: spec.replicas (or each variant's minReplicas) is kept. SLO: the autoscaler "
            "picks the cheapest variant mix that holds the SLO at the observed load."
        ),
    )
    scale_up_stabilization_seconds: int = Field(
        default=0, ge=0, le=3600, description="Wait before acting on a higher target, s."
    )
    scale_down_stabilization_seconds: int = Field(
        default=300, ge=0, le=86400, description="Wait before acting on a lower target, s."
    )
    drain_timeout_seconds: int = Field(
        default=600,
        ge=0,
        le=86400,
        description="Longest wait for running requests to finish or migrate on scale-down, s.",
    )


class ModelPoolSpec(ApiModel):
    """Desired state of a pool."""

    model: str = Field(
        min_length=1,
        max_length=253,
        description="Model id as vLLM loads it, e.g. meta-llama/Llama-3.1-8B-Instruct.",
    )
    served_model_name: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="Name clients use in the OpenAI 'model' field (--served-model-name).",
    )
    engine: EngineSpec = Field(default_factory=EngineSpec, description="vLLM settings.")
    source: ModelSource = Field(default_factory=ModelSource, description="Where weights are.")
    variants: list[Variant] = Field(
        min_length=1, max_length=16, description="One entry per accelerator type (1..16)."
    )
    slo: SLOSpec = Field(default_factory=SLOSpec, description="Latency targets.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Autoscaling.")
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=16000,
        description=(
            "Total replicas across variants (scale subresource). Unset = sum of minReplicas. "
            "Clamped to the variants' bounds."
        ),
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.variants.all(a, self.variants.exists_one(b, b.name == a.name))",
            message="variant names must be unique",
            field="variants",
            check=lambda s: unique([v.name for v in s.variants]),
        ),
    )


class VariantStatus(ApiModel):
    """Observed state of one variant."""

    name: str = Field(max_length=40, description="Variant name.")
    accelerator_profile: str = Field(default="", max_length=253, description="Its profile.")
    replicas: int = Field(default=0, ge=0, description="Pods that exist.")
    ready_replicas: int = Field(default=0, ge=0, description="Pods that are Ready.")
    desired_replicas: int = Field(default=0, ge=0, description="Target the operator set.")


class ModelPoolStatus(ApiModel):
    """Observed state of a pool, written by the operator."""

    observed_generation: int = Field(default=0, ge=0, description="Generation last reconciled.")
    replicas: int = Field(default=0, ge=0, description="Total pods (scale subresource).")
    ready_replicas: int = Field(default=0, ge=0, description="Total Ready pods.")
    desired_replicas: int = Field(default=0, ge=0, description="Total target.")
    ready: str = Field(default="", max_length=32, description="'ready/desired', for kubectl.")
    selector: str = Field(default="", max_length=1024, description="Label selector of pods.")
    variants: list[VariantStatus] = Field(default_factory=list, max_length=16)
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        description=(
            "Ready (all desired replicas ready), Progressing (a rollout or scale is under way), "
            "Degraded (a variant cannot reach its target: reason Unschedulable, "
            "MissingAcceleratorProfile, EngineCrashLoop)."
        ),
    )


class ModelPool(Resource):
    """One served model (namespaced, short name mp)."""

    KIND: ClassVar[str] = "ModelPool"
    PLURAL: ClassVar[str] = "modelpools"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("mp",)
    NAMESPACED: ClassVar[bool] = True

    kind: Literal["ModelPool"] = "ModelPool"
    spec: ModelPoolSpec
    status: ModelPoolStatus | None = None
