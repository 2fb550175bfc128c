"""Well-known names shared by the operator, the scheduler and the test tooling.

The operator puts these labels, annotations and ports on every engine pod it creates; the
scheduler's Kubernetes source discovers engines by them (``docs/operator.md`` lists them with
what each is for). They are part of the API: change one and both sides change with it.

Labels (selectable):

- ``modelfleet.io/pool`` = ModelPool name, ``modelfleet.io/variant`` = variant name: the pods
  of one variant are ``modelfleet.io/pool=<pool>,modelfleet.io/variant=<variant>`` in the pool's
  namespace. The pool's Service and PodDisruptionBudget select on the pool label alone.
- the ``app.kubernetes.io/*`` recommended labels (name ``vllm``, instance = pool, component
  ``engine``, part-of ``modelfleet``, managed-by ``modelfleet-operator``).

Annotations on the pod template (values a label cannot hold):

- ``modelfleet.io/served-model-name``: the OpenAI ``model`` name the engine answers to;
- ``modelfleet.io/accelerator-profile``: the AcceleratorProfile of the variant;
- ``modelfleet.io/simulator-profile``: the engine-simulator timing profile of that GPU;
- ``modelfleet.io/block-size``, ``modelfleet.io/prefix-hash-algo``,
  ``modelfleet.io/prefix-hash-seed``: how the engine hashes prompt blocks (what an exact
  prefix index must reproduce);
- ``modelfleet.io/kv-events-port``: set when the engine publishes KV-cache events (ZMQ PUB on
  ``tcp://<pod IP>:<port>``).

Ports: the engine's OpenAI API and ``/metrics`` are on the container port named ``http``; KV
events on the port named ``kv-events``.
"""

from __future__ import annotations

GROUP_PREFIX = "modelfleet.io/"

POOL_LABEL = "modelfleet.io/pool"
VARIANT_LABEL = "modelfleet.io/variant"
APP_NAME_LABEL = "app.kubernetes.io/name"
APP_INSTANCE_LABEL = "app.kubernetes.io/instance"
APP_COMPONENT_LABEL = "app.kubernetes.io/component"
APP_PART_OF_LABEL = "app.kubernetes.io/part-of"
APP_MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

APP_NAME = "vllm"
ENGINE_COMPONENT = "engine"
PART_OF = "modelfleet"
#: The field manager of every server-side apply, and the managed-by label value.
FIELD_MANAGER = "modelfleet-operator"

SERVED_MODEL_ANNOTATION = "modelfleet.io/served-model-name"
ACCELERATOR_ANNOTATION = "modelfleet.io/accelerator-profile"
SIMULATOR_PROFILE_ANNOTATION = "modelfleet.io/simulator-profile"
BLOCK_SIZE_ANNOTATION = "modelfleet.io/block-size"
HASH_ALGO_ANNOTATION = "modelfleet.io/prefix-hash-algo"
HASH_SEED_ANNOTATION = "modelfleet.io/prefix-hash-seed"
KV_EVENTS_PORT_ANNOTATION = "modelfleet.io/kv-events-port"
#: On a Deployment: the hash of the AcceleratorProfile spec it was rendered from (a profile
#: change re-renders and so rolls the variant only when something the pods use changed).
PROFILE_HASH_ANNOTATION = "modelfleet.io/profile-hash"

#: The ReplicaSet controller removes the pod with the lowest cost first (Kubernetes >= 1.22).
POD_DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"

HTTP_PORT_NAME = "http"
KV_EVENTS_PORT_NAME = "kv-events"
#: vLLM's conventional KV-events port (``--kv-events-config ... "endpoint": "tcp://*:5557"``).
KV_EVENTS_PORT = 5557
#: Block hashing the operator configures when KV events are on: vLLM's CBOR-encoded SHA-256,
#: seeded by ``PYTHONHASHSEED`` (an integer string, as Python requires of that variable).
PREFIX_HASH_ALGO = "sha256_cbor"
PREFIX_HASH_SEED = "0"

#: Where a pool's PVC is mounted (read-only) in the engine container.
MODEL_MOUNT_PATH = "/models"
#: The model cache volume (Hugging Face downloads); HF_HOME points here.
CACHE_MOUNT_PATH = "/root/.cache/huggingface"

#: vLLM flags the operator renders from typed ModelPool fields; ``engine.extraArgs`` may not
#: set them (an extra ``--port`` or ``--tensor-parallel-size`` would silently override the
#: value the probes, the GPU request and the scheduler rely on).
MANAGED_VLLM_FLAGS: tuple[str, ...] = (
    "--model",
    "--served-model-name",
    "--host",
    "--port",
    "--tensor-parallel-size",
    "-tp",
    "--data-parallel-size",
    "-dp",
    "--max-model-len",
    "--gpu-memory-utilization",
    "--block-size",
    "--max-num-seqs",
    "--max-num-batched-tokens",
    "--enable-prefix-caching",
    "--no-enable-prefix-caching",
    "--kv-events-config",
    "--prefix-caching-hash-algo",
)
#: Environment variables the operator sets in the engine container.
MANAGED_ENV: tuple[str, ...] = (
    "HF_TOKEN",
    "HF_HOME",
    "PYTHONHASHSEED",
    "POD_NAME",
    "POD_NAMESPACE",
)


def pod_selector(pool: str, variant: str | None = None) -> dict[str, str]:
    """The labels that select a pool's engine pods (one variant's, when given)."""
    out = {POOL_LABEL: pool}
    if variant is not None:
        out[VARIANT_LABEL] = variant
    return out


def selector_string(labels: dict[str, str]) -> str:
    """``{"a": "1", "b": "2"}`` → ``a=1,b=2`` (a label selector, sorted)."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def endpoint_id(namespace: str, pod: str) -> str:
    """The scheduler's id of the engine in a pod (``control.proto``: ``<namespace>/<pod>``)."""
    return f"{namespace}/{pod}"
