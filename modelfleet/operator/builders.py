"""Pure builders: a ModelPool (and its AcceleratorProfiles) → the child objects it owns.

Every function here is a pure function of typed inputs returning a plain Kubernetes object
(``dict``), so the whole rendering is tested without a cluster (``tests/operator``) and the
reconciler only applies what these return. Children of pool ``p`` in its namespace:

- per variant ``v``, the Deployment ``p-v`` running ``vllm serve`` (:func:`build_deployment`);
- the headless Service ``p`` for discovery (:func:`build_service`);
- the PodDisruptionBudget ``p`` (:func:`build_pdb`), ``maxUnavailable: 1``, so a node drain
  evicts one engine at a time and each one drains before the next goes.

All carry an owner reference to the pool (controller), so deleting the pool removes them
through the garbage collector; labels and annotations are the ones of
:mod:`modelfleet.api.names`.

The engine container, and why each part is there:

- ``vllm serve <model>`` with flags rendered from the typed engine spec (:func:`vllm_args`);
  ``engine.extraArgs`` are appended and cannot repeat a rendered flag (the API refuses it).
- ``<resourceName>: gpusPerReplica`` as request and limit; node selector and tolerations from
  the variant's AcceleratorProfile. ``gpusPerReplica / tensorParallelSize > 1`` becomes vLLM
  data parallelism inside the pod, so every requested GPU is used.
- Startup probe on ``/health`` allowing 30 minutes (large models load slowly; liveness starts
  only after it), readiness every 5 s, liveness every 10 s with 6 failures (1 minute).
- ``/dev/shm`` as a memory-backed volume (NCCL for tensor parallelism needs more than the
  64 MiB default; 8 GiB per GPU), a model cache volume at ``HF_HOME``, the PVC of
  ``source.pvcName`` read-only at ``/models``, and ``HF_TOKEN`` from ``source.hfTokenSecret``.
- KV events (``engine.kvEvents``, or a RoutingPolicy with ``prefixSource: kv-events`` that
  names the pool): ``--kv-events-config`` publishing on ZMQ port 5557 (topic
  ``kv@<pod>@<served name>``), ``--prefix-caching-hash-algo sha256_cbor`` and
  ``PYTHONHASHSEED=0``, the block hashing an exact prefix index must reproduce; the same
  values are annotated on the pod for the scheduler.
- A ``preStop`` hook and ``terminationGracePeriodSeconds = drainTimeoutSeconds + 30``: when a
  pod is removed by anything but the operator's own scale-down (a rollout, a node drain, an
  eviction), the operator sees the pod terminating and asks the scheduler to drain it, while
  the hook keeps vLLM serving until its ``/metrics`` show no running or waiting request
  (two polls a second apart) or the drain timeout passes. The hook needs only ``python3``,
  which every vLLM image has, and no credentials.
- Rolling updates surge one replica and never go below the desired count
  (``maxSurge: 1, maxUnavailable: 0``): a rollout needs one replica's worth of free GPUs and
  never lowers serving capacity.
"""

from __future__ import annotations

import json
from typing import Any

from modelfleet.api.accelerator import AcceleratorProfile
from modelfleet.api.modelpool import ModelPool, ModelPoolSpec, Variant
from modelfleet.api.names import (
    ACCELERATOR_ANNOTATION,
    APP_COMPONENT_LABEL,
    APP_INSTANCE_LABEL,
    APP_MANAGED_BY_LABEL,
    APP_NAME,
    APP_NAME_LABEL,
    APP_PART_OF_LABEL,
    BLOCK_SIZE_ANNOTATION,
    CACHE_MOUNT_PATH,
    ENGINE_COMPONENT,
    FIELD_MANAGER,
    HASH_ALGO_ANNOTATION,
    HASH_SEED_ANNOTATION,
    HTTP_PORT_NAME,
    KV_EVENTS_PORT,
    KV_EVENTS_PORT_ANNOTATION,
    KV_EVENTS_PORT_NAME,
    MODEL_MOUNT_PATH,
    PART_OF,
    POOL_LABEL,
    PREFIX_HASH_ALGO,
    PREFIX_HASH_SEED,
    SERVED_MODEL_ANNOTATION,
    SIMULATOR_PROFILE_ANNOTATION,
    VARIANT_LABEL,
)

# Re-exported: the reconciler prices replicas as the autoscaler does.
from modelfleet.policy.autoscale_inputs import replica_cost_per_hour as replica_cost_per_hour

ENGINE_CONTAINER = "vllm"
#: Seconds the pod may take to terminate beyond the drain timeout (vLLM's own shutdown).
SHUTDOWN_GRACE_S = 30
SHM_GIB_PER_GPU = 8

#: The preStop hook's program (``python3 -c PRESTOP_WAIT PORT TIMEOUT_S``): wait until the
#: engine's /metrics show no running or waiting request twice in a row, one second apart, or
#: until TIMEOUT_S. An engine that does not answer has nothing to wait for.
PRESTOP_WAIT = """\
import sys, time, urllib.request
port, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
names = ("vllm:num_requests_running", "vllm:num_requests_waiting")
quiet = 0
while quiet < 2 and time.monotonic() < deadline:
    try:
        url = "http://127.0.0.1:%d/metrics" % port
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        busy = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(names))
    except Exception:
        busy = 0
    quiet = quiet + 1 if busy == 0 else 0
    time.sleep(1)
"""


def deployment_name(pool: str, variant: str) -> str:
    """``<pool>-<variant>``: at most 63 + 1 + 40 characters, a valid object name."""
    return f"{pool}-{variant}"


def variant_labels(pool: str, variant: str) -> dict[str, str]:
    """Labels of a variant's Deployment and pods (the first two select them)."""
    return {
        POOL_LABEL: pool,
        VARIANT_LABEL: variant,
        APP_NAME_LABEL: APP_NAME,
        APP_INSTANCE_LABEL: pool,
        APP_COMPONENT_LABEL: ENGINE_COMPONENT,
        APP_PART_OF_LABEL: PART_OF,
        APP_MANAGED_BY_LABEL: FIELD_MANAGER,
    }


def pool_labels(pool: str) -> dict[str, str]:
    """Labels of the pool-wide children (Service, PodDisruptionBudget)."""
    labels = variant_labels(pool, "")
    del labels[VARIANT_LABEL]
    return labels


def owner_reference(pool: ModelPool) -> dict[str, Any]:
    """The controller reference every child carries (the garbage collector follows it)."""
    if not pool.metadata.uid:
        raise ValueError(f"ModelPool {pool.metadata.name}: metadata.uid is needed to own objects")
    return {
        "apiVersion": pool.api_version,
        "kind": pool.KIND,
        "name": pool.metadata.name,
        "uid": pool.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(pool: ModelPool, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": pool.metadata.namespace or "default",
        "labels": labels,
        "ownerReferences": [owner_reference(pool)],
    }


def model_argument(spec: ModelPoolSpec) -> str:
    """What ``vllm serve`` loads: the PVC path, an absolute path, or the model id."""
    src = spec.source
    if src.pvc_name:
        return f"{MODEL_MOUNT_PATH}/{src.path}".rstrip("/") if src.path else MODEL_MOUNT_PATH
    return src.path or spec.model


def kv_events_config(served_model_name: str) -> str:
    """vLLM's ``--kv-events-config`` JSON: a ZMQ publisher on port 5557, topic per pod.

    ``$(POD_NAME)`` is expanded by the kubelet from the container's environment.
    """
    return json.dumps(
        {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": f"tcp://*:{KV_EVENTS_PORT}",
            "topic": f"kv@$(POD_NAME)@{served_model_name}",
        },
        separators=(",", ":"),
    )


def vllm_args(spec: ModelPoolSpec, variant: Variant, *, kv_events: bool) -> list[str]:
    """The arguments of ``vllm serve`` for one variant (model first, then flags).

    Every flag comes from a typed field; ``kv_events`` is the effective setting (the pool's
    own, or forced on by a RoutingPolicy using exact prefix routing).
    """
    eng = spec.engine
    args = [
        model_argument(spec),
        "--served-model-name", spec.served_model_name,
        "--host", "0.0.0.0",
        "--port", str(eng.port),
        "--tensor-parallel-size", str(variant.tensor_parallel_size),
    ]  # fmt: skip
    data_parallel = variant.gpus_per_replica // variant.tensor_parallel_size
    if data_parallel > 1:
        args += ["--data-parallel-size", str(data_parallel)]
    args += [
        "--max-model-len", str(eng.max_model_len),
        "--gpu-memory-utilization", repr(eng.gpu_memory_utilization),
        "--block-size", str(eng.block_size),
        "--max-num-seqs", str(eng.max_num_seqs),
        "--max-num-batched-tokens", str(eng.max_num_batched_tokens),
        "--enable-prefix-caching" if eng.enable_prefix_caching else "--no-enable-prefix-caching",
    ]  # fmt: skip
    if kv_events:
        args += [
            "--kv-events-config", kv_events_config(spec.served_model_name),
            "--prefix-caching-hash-algo", PREFIX_HASH_ALGO,
        ]  # fmt: skip
    return args + list(eng.extra_args)


def _env(spec: ModelPoolSpec, kv_events: bool) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "HF_HOME", "value": CACHE_MOUNT_PATH},
    ]
    if secret := spec.source.hf_token_secret:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}},
            }
        )
    if kv_events:
        env.append({"name": "PYTHONHASHSEED", "value": PREFIX_HASH_SEED})
    env += [{"name": e.name, "value": e.value} for e in spec.engine.env]
    return env


def _probe(period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": "/health", "port": HTTP_PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def _tolerations(profile: AcceleratorProfile) -> list[dict[str, str]]:
    out = []
    for t in profile.spec.tolerations:
        tol: dict[str, str] = {"operator": t.operator}
        if t.key:
            tol["key"] = t.key
        if t.value:
            tol["value"] = t.value
        if t.effect:
            tol["effect"] = t.effect
        out.append(tol)
    return out


def pod_annotations(
    spec: ModelPoolSpec, variant: Variant, profile: AcceleratorProfile, *, kv_events: bool
) -> dict[str, str]:
    """What the scheduler reads from an engine pod besides its labels (module docstring of
    :mod:`modelfleet.api.names`)."""
    out = {
        SERVED_MODEL_ANNOTATION: spec.served_model_name,
        ACCELERATOR_ANNOTATION: variant.accelerator_profile,
        BLOCK_SIZE_ANNOTATION: str(spec.engine.block_size),
    }
    if profile.spec.simulator_profile:
        out[SIMULATOR_PROFILE_ANNOTATION] = profile.spec.simulator_profile
    if kv_events:
        out |= {
            KV_EVENTS_PORT_ANNOTATION: str(KV_EVENTS_PORT),
            HASH_ALGO_ANNOTATION: PREFIX_HASH_ALGO,
            HASH_SEED_ANNOTATION: PREFIX_HASH_SEED,
        }
    return out


def build_deployment(
    pool: ModelPool,
    variant: Variant,
    profile: AcceleratorProfile,
    *,
    replicas: int,
    kv_events: bool,
) -> dict[str, Any]:
    """The Deployment of one variant, with ``replicas`` pods (see the module docstring)."""
    spec = pool.spec
    eng = spec.engine
    name = pool.metadata.name
    gpus = variant.gpus_per_replica
    gpu = {profile.spec.resource_name: str(gpus)}
    ports: list[dict[str, Any]] = [
        {"name": HTTP_PORT_NAME, "containerPort": eng.port, "protocol": "TCP"}
    ]
    if kv_events:
        ports.append({"name": KV_EVENTS_PORT_NAME, "containerPort": KV_EVENTS_PORT})
    mounts: list[dict[str, Any]] = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "model-cache", "mountPath": CACHE_MOUNT_PATH},
    ]
    shm = {"medium": "Memory", "sizeLimit": f"{SHM_GIB_PER_GPU * gpus}Gi"}
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": shm},
        {"name": "model-cache", "emptyDir": {}},
    ]
    if spec.source.pvc_name:
        mounts.append({"name": "model", "mountPath": MODEL_MOUNT_PATH, "readOnly": True})
        volumes.append(
            {
                "name": "model",
                "persistentVolumeClaim": {"claimName": spec.source.pvc_name, "readOnly": True},
            }
        )
    drain = spec.scaling.drain_timeout_seconds
    container: dict[str, Any] = {
        "name": ENGINE_CONTAINER,
        "image": eng.image,
        "command": ["vllm", "serve"],
        "args": vllm_args(spec, variant, kv_events=kv_events),
        "ports": ports,
        "env": _env(spec, kv_events),
        "resources": {"requests": dict(gpu), "limits": dict(gpu)},
        "volumeMounts": mounts,
        "startupProbe": _probe(period=10, failures=180, timeout=5),
        "readinessProbe": _probe(period=5, failures=3, timeout=5),
        "livenessProbe": _probe(period=10, failures=6, timeout=10),
        "lifecycle": {
            "preStop": {
                "exec": {"command": ["python3", "-c", PRESTOP_WAIT, str(eng.port), str(drain)]}
            }
        },
    }
    labels = variant_labels(name, variant.name)
    selector = {POOL_LABEL: name, VARIANT_LABEL: variant.name}
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "nodeSelector": profile.selector(),
        "terminationGracePeriodSeconds": drain + SHUTDOWN_GRACE_S,
    }
    if tolerations := _tolerations(profile):
        pod_spec["tolerations"] = tolerations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(pool, deployment_name(name, variant.name), labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "progressDeadlineSeconds": 1800,
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": pod_annotations(spec, variant, profile, kv_events=kv_events),
                },
                "spec": pod_spec,
            },
        },
    }


def build_service(pool: ModelPool, *, kv_events: bool) -> dict[str, Any]:
    """The pool's headless Service: DNS records of its ready engine pods, port ``http``."""
    name = pool.metadata.name
    ports: list[dict[str, Any]] = [
        {"name": HTTP_PORT_NAME, "port": pool.spec.engine.port, "targetPort": HTTP_PORT_NAME}
    ]
    if kv_events:
        ports.append(
            {"name": KV_EVENTS_PORT_NAME, "port": KV_EVENTS_PORT, "targetPort": KV_EVENTS_PORT_NAME}
        )
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(pool, name, pool_labels(name)),
        "spec": {"clusterIP": "None", "selector": {POOL_LABEL: name}, "ports": ports},
    }


def build_pdb(pool: ModelPool) -> dict[str, Any]:
    """At most one engine of the pool voluntarily disrupted at a time (each one drains)."""
    name = pool.metadata.name
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(pool, name, pool_labels(name)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {POOL_LABEL: name}}},
    }
