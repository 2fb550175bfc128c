"""The pure builders on every ModelPool example: vLLM arguments, resources, node placement,
probes, volumes, secrets, KV events, owner references, Service and PodDisruptionBudget."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.example_objects import example_pools, example_profiles, flag_values

from modelfleet.api import ModelPool
from modelfleet.api.names import (
    ACCELERATOR_ANNOTATION,
    HASH_SEED_ANNOTATION,
    KV_EVENTS_PORT_ANNOTATION,
    MANAGED_VLLM_FLAGS,
    POOL_LABEL,
    SERVED_MODEL_ANNOTATION,
    VARIANT_LABEL,
)
from modelfleet.operator.builders import (
    PRESTOP_WAIT,
    build_deployment,
    build_pdb,
    build_service,
    model_argument,
    replica_cost_per_hour,
    vllm_args,
)

pytestmark = pytest.mark.unit

POOLS = example_pools()
PROFILES = example_profiles()
CASES = [(p, v.name) for p in POOLS.values() for v in p.spec.variants]


def case_id(case: tuple[ModelPool, str]) -> str:
    return f"{case[0].metadata.name}/{case[1]}"


def render(pool: ModelPool, variant_name: str, *, kv: bool = False, replicas: int = 2) -> Any:
    variant = next(v for v in pool.spec.variants if v.name == variant_name)
    profile = PROFILES[variant.accelerator_profile]
    return build_deployment(pool, variant, profile, replicas=replicas, kv_events=kv), variant


def engine(dep: dict[str, Any]) -> dict[str, Any]:
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_every_example_pool_is_covered() -> None:
    assert {p.metadata.name for p, _ in CASES} == {"llama-8b", "llama-70b", "coder"}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_vllm_arguments_come_from_the_typed_spec(case: tuple[ModelPool, str]) -> None:
    pool, vname = case
    dep, variant = render(pool, vname)
    c = engine(dep)
    eng = pool.spec.engine
    assert c["command"] == ["vllm", "serve"]
    args = c["args"]
    assert args[0] == model_argument(pool.spec)
    flags = flag_values(args)
    assert flags["--served-model-name"] == pool.spec.served_model_name
    assert flags["--port"] == str(eng.port)
    assert flags["--host"] == "0.0.0.0"
    assert flags["--tensor-parallel-size"] == str(variant.tensor_parallel_size)
    assert flags["--max-model-len"] == str(eng.max_model_len)
    assert float(flags["--gpu-memory-utilization"]) == eng.gpu_memory_utilization
    assert flags["--block-size"] == str(eng.block_size)
    assert flags["--max-num-seqs"] == str(eng.max_num_seqs)
    assert flags["--max-num-batched-tokens"] == str(eng.max_num_batched_tokens)
    caching = (
        "--enable-prefix-caching" if eng.enable_prefix_caching else "--no-enable-prefix-caching"
    )
    assert caching in flags
    # extra args come last and verbatim, after every rendered flag
    assert args[len(args) - len(eng.extra_args) :] == list(eng.extra_args)
    rendered = args[: len(args) - len(eng.extra_args)]
    assert not any(a in MANAGED_VLLM_FLAGS for a in eng.extra_args)
    assert len([a for a in rendered if a.startswith("--")]) == len(set(rendered) & set(flags))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gpus_node_selector_and_tolerations_come_from_the_profile(
    case: tuple[ModelPool, str],
) -> None:
    pool, vname = case
    dep, variant = render(pool, vname)
    profile = PROFILES[variant.accelerator_profile]
    pod = dep["spec"]["template"]["spec"]
    res = engine(dep)["resources"]
    want = {profile.spec.resource_name: str(variant.gpus_per_replica)}
    assert res["requests"] == want and res["limits"] == want
    assert pod["nodeSelector"] == profile.selector()
    tolerations = pod.get("tolerations", [])
    assert len(tolerations) == len(profile.spec.tolerations)
    for got, t in zip(tolerations, profile.spec.tolerations, strict=True):
        assert got["operator"] == t.operator
        assert got.get("key", "") == t.key
        assert got.get("effect", "") == t.effect


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_probes_are_sized_for_slow_model_loads(case: tuple[ModelPool, str]) -> None:
    c = engine(render(*case)[0])
    startup, ready, live = c["startupProbe"], c["readinessProbe"], c["livenessProbe"]
    for probe in (startup, ready, live):
        assert probe["httpGet"] == {"path": "/health", "port": "http"}
    # liveness only starts after startup succeeds; startup tolerates a 30-minute load
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    assert live["periodSeconds"] * live["failureThreshold"] >= 60
    assert ready["periodSeconds"] <= 5
    assert {"name": "http", "containerPort": case[0].spec.engine.port, "protocol": "TCP"} in c[
        "ports"
    ]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_shm_model_cache_and_weights_volumes(case: tuple[ModelPool, str]) -> None:
    pool, vname = case
    dep, variant = render(pool, vname)
    pod = dep["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in engine(dep)["volumeMounts"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["dshm"]["emptyDir"]["sizeLimit"] == f"{8 * variant.gpus_per_replica}Gi"
    assert mounts["dshm"]["mountPath"] == "/dev/shm"
    env = {e["name"]: e for e in engine(dep)["env"]}
    assert mounts["model-cache"]["mountPath"] == env["HF_HOME"]["value"]
    if pool.spec.source.pvc_name:
        assert volumes["model"]["persistentVolumeClaim"] == {
            "claimName": pool.spec.source.pvc_name,
            "readOnly": True,
        }
        assert mounts["model"] == {"name": "model", "mountPath": "/models", "readOnly": True}
        assert engine(dep)["args"][0] == f"/models/{pool.spec.source.path}"
    else:
        assert "model" not in volumes


def test_hf_token_comes_from_the_secret_ref() -> None:
    dep, _ = render(POOLS["llama-8b"], "l4")
    env = {e["name"]: e for e in engine(dep)["env"]}
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
    }
    dep70, _ = render(POOLS["llama-70b"], "h100-tp4")
    assert "HF_TOKEN" not in {e["name"] for e in engine(dep70)["env"]}


def test_user_env_is_kept_after_the_operators() -> None:
    dep, _ = render(POOLS["coder"], "l40s")
    names = [e["name"] for e in engine(dep)["env"]]
    assert names[-1] == "VLLM_LOGGING_LEVEL"
    assert {"POD_NAME", "POD_NAMESPACE", "HF_HOME"} <= set(names)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kv_events_inject_flags_seed_port_and_annotations_together(
    case: tuple[ModelPool, str],
) -> None:
    pool, vname = case
    on, _ = render(pool, vname, kv=True)
    off, _ = render(pool, vname, kv=False)
    flags = flag_values(engine(on)["args"])
    config = json.loads(flags["--kv-events-config"])
    assert config == {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": "tcp://*:5557",
        "topic": f"kv@$(POD_NAME)@{pool.spec.served_model_name}",
    }
    assert flags["--prefix-caching-hash-algo"] == "sha256_cbor"
    env = {e["name"]: e.get("value") for e in engine(on)["env"]}
    annotations = on["spec"]["template"]["metadata"]["annotations"]
    assert env["PYTHONHASHSEED"] == annotations[HASH_SEED_ANNOTATION] == "0"
    assert annotations[KV_EVENTS_PORT_ANNOTATION] == "5557"
    assert {"name": "kv-events", "containerPort": 5557} in engine(on)["ports"]
    # off: none of it
    assert "--kv-events-config" not in engine(off)["args"]
    assert "PYTHONHASHSEED" not in {e["name"] for e in engine(off)["env"]}
    assert KV_EVENTS_PORT_ANNOTATION not in off["spec"]["template"]["metadata"]["annotations"]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_labels_selector_annotations_and_owner(case: tuple[ModelPool, str]) -> None:
    pool, vname = case
    dep, variant = render(pool, vname, replicas=3)
    name = pool.metadata.name
    assert dep["metadata"]["name"] == f"{name}-{vname}"
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["selector"]["matchLabels"] == {POOL_LABEL: name, VARIANT_LABEL: vname}
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels[POOL_LABEL] == name and labels[VARIANT_LABEL] == vname
    assert labels["app.kubernetes.io/managed-by"] == "modelfleet-operator"
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations[SERVED_MODEL_ANNOTATION] == pool.spec.served_model_name
    assert annotations[ACCELERATOR_ANNOTATION] == variant.accelerator_profile
    (owner,) = dep["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelPool",
        "name": name,
        "uid": f"uid-{name}",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    strategy = dep["spec"]["strategy"]["rollingUpdate"]
    assert strategy == {"maxSurge": 1, "maxUnavailable": 0}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_prestop_waits_for_the_engine_up_to_the_drain_timeout(case: tuple[ModelPool, str]) -> None:
    pool, vname = case
    dep, _ = render(pool, vname)
    drain = pool.spec.scaling.drain_timeout_seconds
    hook = engine(dep)["lifecycle"]["preStop"]["exec"]["command"]
    assert hook == ["python3", "-c", PRESTOP_WAIT, str(pool.spec.engine.port), str(drain)]
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == drain + 30
    compile(PRESTOP_WAIT, "<preStop>", "exec")  # the hook's program is valid Python


def test_data_parallel_uses_every_requested_gpu() -> None:
    pool = POOLS["llama-70b"]
    variant = pool.spec.variants[0].model_copy(update={"gpus_per_replica": 8})
    args = vllm_args(pool.spec, variant, kv_events=False)
    flags = flag_values(args)
    assert flags["--tensor-parallel-size"] == "4" and flags["--data-parallel-size"] == "2"
    assert "--data-parallel-size" not in vllm_args(
        pool.spec, pool.spec.variants[0], kv_events=False
    )


@pytest.mark.parametrize("pool_name", sorted(POOLS))
def test_service_is_headless_and_pdb_allows_one_disruption(pool_name: str) -> None:
    pool = POOLS[pool_name]
    svc = build_service(pool, kv_events=False)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {POOL_LABEL: pool_name}
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": pool.spec.engine.port, "targetPort": "http"}
    ]
    assert [p["name"] for p in build_service(pool, kv_events=True)["spec"]["ports"]] == [
        "http",
        "kv-events",
    ]
    pdb = build_pdb(pool)
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {POOL_LABEL: pool_name}},
    }
    for obj in (svc, pdb):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == f"uid-{pool_name}"


def test_a_pool_without_uid_cannot_own_children() -> None:
    pool = POOLS["coder"]
    orphan = pool.model_copy(update={"metadata": pool.metadata.model_copy(update={"uid": None})})
    with pytest.raises(ValueError, match=r"metadata\.uid"):
        build_pdb(orphan)


def test_replica_cost_override_profile_and_missing() -> None:
    pool = POOLS["llama-70b"]
    variant = pool.spec.variants[0]
    assert replica_cost_per_hour(variant, PROFILES["h100-80gb"]) == pytest.approx(3.9 * 4)
    override = variant.model_copy(update={"cost_per_hour": 10.0})
    assert replica_cost_per_hour(override, PROFILES["h100-80gb"]) == 10.0
    assert replica_cost_per_hour(variant, None) == float("inf")
