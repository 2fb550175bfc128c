"""ModelPool: one served model, its vLLM engine settings, one variant per accelerator type.

A pool is what a RoutingPolicy sends requests to. Each variant becomes one Deployment of vLLM
on one GPU type, with its own replica bounds; the autoscaler picks the cheapest mix of variants
that holds the pool's SLO. The ``scale`` subresource acts on ``spec.replicas`` (total replicas
across variants; the operator spreads them cheapest-first within each variant's bounds).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from modelfleet.api.common import (
    IMAGE_PATTERN,
    LABEL_PATTERN,
    NAME_PATTERN,
    ApiModel,
    Condition,
    EnvVar,
    PoolMeta,
    Resource,
    Rule,
    SecretKeyRef,
    cel_string,
    unique,
)
from modelfleet.api.names import KV_EVENTS_PORT, MANAGED_ENV, MANAGED_VLLM_FLAGS

DEFAULT_ENGINE_IMAGE = "vllm/vllm-openai:v0.32.0"


def _flag_of(arg: str) -> str:
    """The flag an argument sets, as vLLM's parser reads it: ``--max_model_len=9`` →
    ``--max-model-len`` (vLLM's FlexibleArgumentParser treats ``_`` and ``-`` alike)."""
    return arg.split("=", 1)[0].replace("_", "-")


def _sets_managed_flag(arg: str) -> bool:
    return _flag_of(arg) in MANAGED_VLLM_FLAGS


_MANAGED_FLAGS_CEL = "[" + ", ".join(cel_string(f) for f in MANAGED_VLLM_FLAGS) + "]"
_MANAGED_ENV_CEL = "[" + ", ".join(cel_string(e) for e in MANAGED_ENV) + "]"


class EngineSpec(ApiModel):
    """vLLM engine settings shared by every variant of the pool."""

    image: str = Field(
        default=DEFAULT_ENGINE_IMAGE,
        min_length=1,
        max_length=512,
        pattern=IMAGE_PATTERN,
        description=(
            f"Engine container image, [registry/]repository[:tag][@sha256:digest]. "
            f"Default {DEFAULT_ENGINE_IMAGE}."
        ),
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
    port: int = Field(
        default=8000,
        ge=1024,
        le=65535,
        description=(
            f"HTTP port of the engine (1024..65535, not {KV_EVENTS_PORT}, the KV-events port). "
            "Default 8000."
        ),
    )
    extra_args: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Further vLLM arguments, appended verbatim. Flags the operator renders from the "
            "fields above (" + ", ".join(MANAGED_VLLM_FLAGS) + ") are refused here: set the "
            "field instead."
        ),
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Extra environment variables (unique names; "
            + ", ".join(MANAGED_ENV)
            + " are set by the operator)."
        ),
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.maxNumBatchedTokens >= self.maxNumSeqs",
            message="maxNumBatchedTokens must be >= maxNumSeqs (vLLM refuses to start otherwise)",
            field="maxNumBatchedTokens",
            check=lambda e: e.max_num_batched_tokens >= e.max_num_seqs,
        ),
        Rule(
            cel=f"self.port != {KV_EVENTS_PORT}",
            message=f"port {KV_EVENTS_PORT} is the KV-events port; choose another",
            field="port",
            check=lambda e: e.port != KV_EVENTS_PORT,
        ),
        Rule(
            cel=(
                f"self.extraArgs.all(a, !{_MANAGED_FLAGS_CEL}.exists(f, "
                "a.replace('_', '-') == f || a.replace('_', '-').startsWith(f + '=')))"
            ),
            message="extraArgs must not set a flag the operator renders from a field",
            field="extraArgs",
            check=lambda e: not any(_sets_managed_flag(a) for a in e.extra_args),
        ),
        Rule(
            cel="self.env.all(a, self.env.exists_one(b, b.name == a.name))",
            message="env names must be unique",
            field="env",
            check=lambda e: unique([v.name for v in e.env]),
        ),
        Rule(
            cel=f"self.env.all(v, !(v.name in {_MANAGED_ENV_CEL}))",
            message="env must not set a variable the operator sets",
            field="env",
            check=lambda e: not any(v.name in MANAGED_ENV for v in e.env),
        ),
    )


class ModelSource(ApiModel):
    """Where the weights come from."""

    pvc_name: str = Field(
        default="",
        max_length=253,
        pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$",
        description=(
            "PersistentVolumeClaim holding the weights, mounted read-only at /models; "
            "empty = vLLM downloads the model at start (into the model cache volume)."
        ),
    )
    path: str = Field(
        default="",
        max_length=1024,
        description=(
            "Where the model is: relative to the PVC's root when pvcName is set (e.g. "
            "llama-3.1-70b-instruct), else an absolute path in the container; empty = the "
            "model id (the PVC's root when pvcName is set). No '..' components."
        ),
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
        Rule(
            cel="self.pvcName == '' || !self.path.startsWith('/')",
            message="path must be relative to the PVC (mounted at /models) when pvcName is set",
            field="path",
            check=lambda s: s.pvc_name == "" or not s.path.startswith("/"),
        ),
        Rule(
            cel="!('/' + self.path + '/').contains('/../')",
            message="path must not contain '..' components",
            field="path",
            check=lambda s: "/../" not in f"/{s.path}/",
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
    scale_to_zero_after_seconds: int = Field(
        default=600,
        ge=0,
        le=86400,
        description=(
            "Mode SLO, every variant's minReplicas 0: scale to zero after this long with no "
            "request, s. Queued requests bring one replica back at once. Default 600."
        ),
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
        pattern=r"^[^-\s][^\s]*$",
        description=(
            "Model id as vLLM loads it, e.g. meta-llama/Llama-3.1-8B-Instruct (no whitespace, "
            "not starting with '-')."
        ),
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


class Recommendation(ApiModel):
    """One autoscaler recommendation for one variant (the stabilisation windows' memory)."""

    time: datetime = Field(strict=False, description="When it was made (RFC 3339).")
    variant: str = Field(max_length=40, description="Variant name.")
    replicas: int = Field(ge=0, description="Replicas the SLO needed at that time.")


class AutoscalerStatus(ApiModel):
    """What the SLO autoscaler remembers between decisions (kept in status so that a restarted
    operator decides exactly as the one before it would have)."""

    last_demand_time: datetime | None = Field(
        default=None,
        strict=False,
        description="Last time the pool had traffic or queued requests (scale-to-zero clock).",
    )
    recommendations: list[Recommendation] = Field(
        default_factory=list,
        max_length=256,
        description="Recent recommendations within the longer stabilisation window.",
    )


class ModelPoolStatus(ApiModel):
    """Observed state of a pool, written by the operator."""

    observed_generation: int = Field(default=0, ge=0, description="Generation last reconciled.")
    replicas: int = Field(default=0, ge=0, description="Total pods (scale subresource).")
    ready_replicas: int = Field(default=0, ge=0, description="Total Ready pods.")
    desired_replicas: int = Field(default=0, ge=0, description="Total target.")
    ready: str = Field(default="", max_length=32, description="'ready/desired', for kubectl.")
    variant_summary: str = Field(
        default="",
        max_length=1024,
        description="'<variant>:<ready>/<desired>,...' in spec order, for kubectl.",
    )
    selector: str = Field(default="", max_length=1024, description="Label selector of pods.")
    variants: list[VariantStatus] = Field(default_factory=list, max_length=16)
    estimated_cost_per_hour: float = Field(
        default=0.0, ge=0, description="USD per hour of the replicas that exist now."
    )
    autoscaler: AutoscalerStatus | None = Field(
        default=None, description="Autoscaler memory (mode SLO)."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        description=(
            "Accepted (False, reason InvalidSpec: the stored object breaks a rule; the message "
            "names the field), Ready (every desired replica ready; reasons ReplicasReady, "
            "ScaledToZero, ReplicasNotReady, Unschedulable, MissingAcceleratorProfile, "
            "EngineCrashLoop, InvalidSpec), Progressing (reasons RollingOut, ScalingUp, "
            "ScalingDown, Stable), Degraded (a variant cannot reach its target: reasons "
            "Unschedulable with the scheduler's message, MissingAcceleratorProfile, "
            "EngineCrashLoop; AsExpected otherwise). docs/operator.md lists them all."
        ),
    )


class ModelPool(Resource):
    """One served model (namespaced, short name mp)."""

    KIND: ClassVar[str] = "ModelPool"
    PLURAL: ClassVar[str] = "modelpools"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("mp",)
    NAMESPACED: ClassVar[bool] = True

    kind: Literal["ModelPool"] = "ModelPool"
    metadata: PoolMeta
    spec: ModelPoolSpec
    status: ModelPoolStatus | None = None
