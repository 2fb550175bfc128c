"""The operator on the real control plane: examples, scheduling, status, edits, scaling,
drains, invalid objects, restarts, leader election and metrics.

The operator runs in-process (kopf in a thread, built as ``modelfleet operator`` builds it)
watching the test's namespace, with a 1 s resync; where a test needs the scheduler, a real
gRPC server implementing the control API stands in for it (``tests/support/fake_control.py``).
Pods are run by kwok on simulated GPU nodes and scheduled by the real kube-scheduler.
"""

from __future__ import annotations

import copy
import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import (
    InProcessOperator,
    OperatorProcess,
    condition_is,
    conditions,
    events,
    get,
    kube,
    thread_names,
    wait_until,
)
from support.fake_control import FakeControl, endpoint, pool_stats

from modelfleet.control import control_pb2 as pb
from modelfleet.operator.metrics import OperatorMetrics
from modelfleet.operator.runtime import LeaderElector
from modelfleet.testing.cluster import ClusterClient
from modelfleet.testing.cluster_manifests import load_manifests

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TOKEN = "operator-test-token"
StartOperator = Callable[..., InProcessOperator]


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def start_operator(
    cluster: ClusterClient, installed_crds: list[dict[str, Any]], namespace: str
) -> Iterator[StartOperator]:
    """Start the operator for the test's namespace; stopped after the test, which fails if
    a thread the operator started is still alive then."""
    before = thread_names()
    running: list[InProcessOperator] = []

    def start(scheduler: FakeControl | None = None, resync_s: float = 1.0) -> InProcessOperator:
        op = InProcessOperator(
            cluster,
            namespace,
            scheduler_address=scheduler.address if scheduler else "",
            scheduler_token=TOKEN if scheduler else "",
            resync_s=resync_s,
        ).start()
        running.append(op)
        return op

    yield start
    for op in running:
        op.stop()
    deadline = time.monotonic() + 10
    while (leaked := thread_names() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not leaked, f"threads outlived the operator: {sorted(leaked)}"


@pytest.fixture
def scheduler() -> Iterator[FakeControl]:
    with FakeControl(token=TOKEN) as fake:
        yield fake


def apply(cluster: ClusterClient, namespace: str, *docs: dict[str, Any]) -> None:
    text = yaml.safe_dump_all(list(docs), sort_keys=False)
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=text)


def apply_under_older_crd(
    cluster: ClusterClient, namespace: str, doc: dict[str, Any], path: list[str], dropped: str
) -> None:
    """Store ``doc`` as an older CRD would have: its kind's CRD without the CEL rules that
    mention ``dropped`` on the schema at ``path`` (below spec; "[]" = the list's items), then
    today's CRD back (from crds/)."""
    plural = {"ModelPool": "modelpools", "RoutingPolicy": "routingpolicies"}[doc["kind"]]
    crd = json.loads(cluster.kubectl("get", "crd", f"{plural}.modelfleet.io", "-o", "json").stdout)
    lax = copy.deepcopy(crd)
    schema = lax["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for step in path:
        schema = schema["items"] if step == "[]" else schema["properties"][step]
    schema["x-kubernetes-validations"] = [
        r for r in schema["x-kubernetes-validations"] if dropped not in r["rule"]
    ]
    for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
        lax["metadata"].pop(key, None)
    lax.pop("status", None)
    try:
        cluster.kubectl("replace", "-f", "-", input=json.dumps(lax))
        wait_until(
            lambda: (
                cluster.kubectl(
                    "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False
                ).returncode
                == 0
            ),
            "the older CRD to accept the object",
        )
    finally:
        cluster.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            str(REPO / "crds" / f"modelfleet.io_{plural}.yaml"),
        )


def example(path: str, namespace: str) -> list[dict[str, Any]]:
    docs = load_manifests(EXAMPLES / path)
    for d in docs:
        if "namespace" in d.get("metadata", {}):
            d["metadata"]["namespace"] = namespace
    return docs


def profile(name: str, product: str, **spec: Any) -> dict[str, Any]:
    body = {
        "gpuProduct": product,
        "memoryGiB": 80,
        "costPerHour": 2.0,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    body.update(spec)
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "AcceleratorProfile",
        "metadata": {"name": name},
        "spec": body,
    }


def pool(name: str, namespace: str, variants: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "meta-llama/Llama-3.1-8B-Instruct", "servedModelName": name}
    body["variants"] = variants
    body.update(spec)
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def pods_of(cluster: ClusterClient, namespace: str, selector: str) -> list[dict[str, Any]]:
    return kube(cluster).list_objects("Pod", namespace, selector)


def live_pods(cluster: ClusterClient, namespace: str, selector: str) -> list[dict[str, Any]]:
    return [
        p
        for p in pods_of(cluster, namespace, selector)
        if not p["metadata"].get("deletionTimestamp")
    ]


def node_product(cluster: ClusterClient, node: str) -> str:
    obj = get(cluster, "Node", None, node)
    return str(obj["metadata"]["labels"].get("nvidia.com/gpu.product", ""))


def deployment_args(cluster: ClusterClient, namespace: str, name: str) -> list[str]:
    dep = get(cluster, "Deployment", namespace, name)
    return list(dep["spec"]["template"]["spec"]["containers"][0]["args"])


# ------------------------------------------------------------------------------ examples


def test_examples_become_deployments_on_the_right_node_types(
    cluster: ClusterClient, namespace: str, start_operator: StartOperator
) -> None:
    # The 70B example reads its weights from a PVC: a static volume for it.
    pv = f"weights-{namespace}"
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                 "storageClassName": "", "hostPath": {"path": "/tmp/weights"},
                 "claimRef": {"namespace": namespace, "name": "model-weights"}},
    }))  # fmt: skip
    apply(cluster, namespace, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "model-weights", "namespace": namespace},
        "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": pv,
                 "resources": {"requests": {"storage": "1Gi"}}},
    })  # fmt: skip
    cluster.kubectl(
        "create", "secret", "generic", "hf-token", "-n", namespace, "--from-literal=token=hf_x"
    )
    apply(cluster, namespace, *example("01-accelerators/profiles.yaml", namespace))
    for path in ("02-llama-8b-mixed", "03-llama-70b-tp4", "04-coder-pool", "05-routing-policy"):
        apply(
            cluster,
            namespace,
            *example(f"{path}/{'policy' if path.startswith('05') else 'pool'}.yaml", namespace),
        )
    start_operator()

    expected = {  # pool -> {variant: (replicas, GPU product)}
        "llama-8b": {"l4": (1, "NVIDIA-L4"), "h100": (0, "NVIDIA-H100-80GB-HBM3")},
        "llama-70b": {"h100-tp4": (1, "NVIDIA-H100-80GB-HBM3")},
        "coder": {"l40s": (1, "NVIDIA-L40S")},
    }
    for name, variants in expected.items():
        wait_until(
            lambda n=name: condition_is(cluster, "ModelPool", namespace, n, "Ready", "True"),
            f"{name} Ready",
        )
        mp = get(cluster, "ModelPool", namespace, name)
        assert mp["status"]["observedGeneration"] == mp["metadata"]["generation"]
        assert conditions(mp)["Accepted"]["status"] == "True"
        assert conditions(mp)["Degraded"]["status"] == "False"
        for variant, (replicas, product) in variants.items():
            dep = get(cluster, "Deployment", namespace, f"{name}-{variant}")
            assert dep["spec"]["replicas"] == replicas
            assert dep["metadata"]["ownerReferences"][0]["uid"] == mp["metadata"]["uid"]
            pods = live_pods(
                cluster, namespace, f"modelfleet.io/pool={name},modelfleet.io/variant={variant}"
            )
            assert len(pods) == replicas
            for p in pods:
                assert node_product(cluster, p["spec"]["nodeName"]) == product
        assert get(cluster, "Service", namespace, name)["spec"]["clusterIP"] == "None"
        assert get(cluster, "PodDisruptionBudget", namespace, name)["spec"]["maxUnavailable"] == 1

    # The policy routes by exact prefix (KV events): every pool it names publishes them.
    for dep in ("llama-8b-l4", "llama-70b-h100-tp4", "coder-l40s"):
        assert "--kv-events-config" in deployment_args(cluster, namespace, dep)
    rp = wait_until(
        lambda: condition_is(
            cluster, "RoutingPolicy", namespace, "assistant", "ResolvedRefs", "True"
        ),
        "assistant ResolvedRefs",
    )
    assert rp["reason"] == "ResolvedRefs"
    assert condition_is(cluster, "RoutingPolicy", namespace, "assistant", "Accepted", "True")

    table = cluster.kubectl("get", "mp", "-n", namespace).stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "MODEL",
        "READY",
        "VARIANTS",
        "MODE",
        "COST/H",
        "STATUS",
        "AGE",
    ]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["llama-8b"][1:7] == [
        "llama-3.1-8b",
        "1/1",
        "l4:1/1,h100:0/0",
        "SLO",
        "0.7",
        "ReplicasReady",
    ]
    assert rows["llama-70b"][1:7] == [
        "llama-3.1-70b",
        "1/1",
        "h100-tp4:1/1",
        "Manual",
        "15.6",
        "ReplicasReady",
    ]
    assert rows["coder"][1:7] == [
        "qwen-coder-7b",
        "1/1",
        "l40s:1/1",
        "Manual",
        "1.2",
        "ReplicasReady",
    ]
    reasons = {e["reason"] for e in events(cluster, namespace, "llama-70b")}
    assert "ScaledUp" in reasons

    # Deleting a pool removes its children (owner references) and the policy says it is gone.
    cluster.kubectl("delete", "mp", "coder", "-n", namespace)
    wait_until(
        lambda: (
            kube(cluster).get("Deployment", namespace, "coder-l40s") is None
            and kube(cluster).get("Service", namespace, "coder") is None
            and kube(cluster).get("PodDisruptionBudget", namespace, "coder") is None
        ),
        "coder's children to be garbage-collected",
    )
    missing = wait_until(
        lambda: condition_is(
            cluster, "RoutingPolicy", namespace, "assistant", "ResolvedRefs", "False"
        ),
        "assistant to report the missing pool",
    )
    assert (missing["reason"], missing["message"]) == ("PoolNotFound", "no ModelPool named coder")
    cluster.kubectl("delete", "pv", pv, "--wait=false")


# ------------------------------------------------------------------------------ scheduling


def test_unschedulable_variant_reports_why(
    cluster: ClusterClient, namespace: str, start_operator: StartOperator
) -> None:
    b200 = unique("b200")
    apply(cluster, namespace, profile(b200, "NVIDIA-B200"))
    apply(
        cluster, namespace, pool("big", namespace, [{"name": "b200", "acceleratorProfile": b200}])
    )
    start_operator()
    ready = wait_until(
        lambda: condition_is(
            cluster, "ModelPool", namespace, "big", "Ready", "False", "Unschedulable"
        ),
        "Ready=False/Unschedulable",
    )
    assert "didn't match Pod's node affinity/selector" in ready["message"]
    degraded = conditions(get(cluster, "ModelPool", namespace, "big"))["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "Unschedulable")
    assert degraded["message"].startswith("variant b200: 0/")
    warning = wait_until(
        lambda: [e for e in events(cluster, namespace, "big") if e["reason"] == "Unschedulable"],
        "an Unschedulable event",
    )
    assert warning[0]["type"] == "Warning"
    cluster.kubectl("delete", "ap", b200)


def test_missing_profile_is_named_and_its_creation_renders_the_variant(
    cluster: ClusterClient, namespace: str, start_operator: StartOperator
) -> None:
    name = unique("late")
    apply(
        cluster, namespace, pool("waiting", namespace, [{"name": "v", "acceleratorProfile": name}])
    )
    start_operator()
    degraded = wait_until(
        lambda: condition_is(
            cluster,
            "ModelPool",
            namespace,
            "waiting",
            "Degraded",
            "True",
            "MissingAcceleratorProfile",
        ),
        "Degraded=MissingAcceleratorProfile",
    )
    assert name in degraded["message"]
    assert kube(cluster).get("Deployment", namespace, "waiting-v") is None
    ready = conditions(get(cluster, "ModelPool", namespace, "waiting"))["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "MissingAcceleratorProfile")
    apply(cluster, namespace, profile(name, "NVIDIA-A100-SXM4-80GB"))
    wait_until(
        lambda: condition_is(
            cluster, "ModelPool", namespace, "waiting", "Ready", "True", "ReplicasReady"
        ),
        "the variant to be rendered once its profile exists",
    )
    (p,) = live_pods(cluster, namespace, "modelfleet.io/pool=waiting")
    assert node_product(cluster, p["spec"]["nodeName"]) == "NVIDIA-A100-SXM4-80GB"
    cluster.kubectl("delete", "ap", name)


def test_profile_change_rerenders_the_pools_using_it(
    cluster: ClusterClient, namespace: str, start_operator: StartOperator
) -> None:
    name = unique("moving")
    apply(cluster, namespace, profile(name, "NVIDIA-H100-80GB-HBM3"))
    apply(cluster, namespace, pool("mover", namespace, [{"name": "v", "acceleratorProfile": name}]))
    start_operator()
    wait_until(
        lambda: condition_is(cluster, "ModelPool", namespace, "mover", "Ready", "True"), "Ready"
    )
    apply(cluster, namespace, profile(name, "NVIDIA-A100-SXM4-80GB"))

    def moved() -> bool:
        dep = get(cluster, "Deployment", namespace, "mover-v")
        selector = dep["spec"]["template"]["spec"]["nodeSelector"]
        pods = live_pods(cluster, namespace, "modelfleet.io/pool=mover")
        return (
            selector == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
            and len(pods) == 1
            and all(
                node_product(cluster, p["spec"].get("nodeName", "")) == "NVIDIA-A100-SXM4-80GB"
                for p in pods
            )
        )

    wait_until(moved, "the pool's pods to move to the profile's new GPU")
    cluster.kubectl("delete", "ap", name)


# ------------------------------------------------------------------------------ edits


def test_editing_a_pool_rolls_its_deployments(
    cluster: ClusterClient, namespace: str, start_operator: StartOperator
) -> None:
    apply(cluster, namespace, *example("01-accelerators/profiles.yaml", namespace))
    apply(
        cluster,
        namespace,
        pool(
            "edit",
            namespace,
            [{"name": "a", "acceleratorProfile": "a100-80gb", "minReplicas": 2, "maxReplicas": 2}],
        ),
    )
    start_operator()
    wait_until(
        lambda: condition_is(cluster, "ModelPool", namespace, "edit", "Ready", "True"), "Ready"
    )
    before = {
        p["metadata"]["name"] for p in live_pods(cluster, namespace, "modelfleet.io/pool=edit")
    }
    cluster.kubectl(
        "patch",
        "mp",
        "edit",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"engine": {"maxModelLen": 4096}}}),
    )

    def rolled() -> bool:
        args = deployment_args(cluster, namespace, "edit-a")
        pods = live_pods(cluster, namespace, "modelfleet.io/pool=edit")
        names = {p["metadata"]["name"] for p in pods}
        return (
            args[args.index("--max-model-len") + 1] == "4096"
            and len(pods) == 2
            and not names & before
            and bool(condition_is(cluster, "ModelPool", namespace, "edit", "Ready", "True"))
        )

    wait_until(rolled, "a rollout to new pods with --max-model-len 4096")
    mp = get(cluster, "ModelPool", namespace, "edit")
    assert mp["status"]["observedGeneration"] == mp["metadata"]["generation"] == 2
    rs = json.loads(
        cluster.kubectl(
            "get", "rs", "-n", namespace, "-l", "modelfleet.io/pool=edit", "-o", "json"
        ).stdout
    )["items"]
    assert len(rs) == 2  # the old template's ReplicaSet (scaled to 0) and the new one


def test_a_deployment_edited_or_deleted_by_hand_is_repaired_from_its_watch(
    cluster: ClusterClient, namespace: str, start_operator: StartOperator
) -> None:
    """No resync runs (1 h period): the repair comes from the Deployment's watch events."""
    apply(cluster, namespace, *example("01-accelerators/profiles.yaml", namespace))
    variant = {"name": "a", "acceleratorProfile": "a100-80gb", "minReplicas": 1, "maxReplicas": 1}
    apply(cluster, namespace, pool("hand", namespace, [variant]))
    start_operator(resync_s=3600)
    wait_until(lambda: deployment_args(cluster, namespace, "hand-a"), "the Deployment")
    rendered = deployment_args(cluster, namespace, "hand-a")
    cluster.kubectl(
        "patch", "deployment", "hand-a", "-n", namespace, "--type=json", "-p",
        json.dumps([{"op": "replace", "path": "/spec/template/spec/containers/0/args",
                     "value": ["--hand-edited"]}]),
    )  # fmt: skip
    wait_until(
        lambda: deployment_args(cluster, namespace, "hand-a") == rendered,
        "the hand-edited args replaced by the rendered ones",
    )
    uid = get(cluster, "Deployment", namespace, "hand-a")["metadata"]["uid"]
    cluster.kubectl("delete", "deployment", "hand-a", "-n", namespace, "--wait=false")

    def recreated() -> bool:
        dep = kube(cluster).get("Deployment", namespace, "hand-a")
        return dep is not None and dep["metadata"]["uid"] != uid

    wait_until(recreated, "the deleted Deployment created again")
    assert deployment_args(cluster, namespace, "hand-a") == rendered


def test_reconciles_read_the_watch_cache_not_the_api(
    cluster: ClusterClient, namespace: str, start_operator: StartOperator
) -> None:
    apply(cluster, namespace, *example("01-accelerators/profiles.yaml", namespace))
    variant = {"name": "a", "acceleratorProfile": "a100-80gb", "minReplicas": 1, "maxReplicas": 1}
    apply(cluster, namespace, pool("cached", namespace, [variant]))
    apply(
        cluster,
        namespace,
        {
            "apiVersion": "modelfleet.io/v1alpha1",
            "kind": "RoutingPolicy",
            "metadata": {"name": "to-cached", "namespace": namespace},
            "spec": {"modelNames": ["cached"], "defaultTargets": [{"pool": "cached"}]},
        },
    )
    op = start_operator(resync_s=3600)
    wait_until(
        lambda: condition_is(cluster, "ModelPool", namespace, "cached", "Ready", "True"), "Ready"
    )
    wait_until(
        lambda: condition_is(
            cluster, "RoutingPolicy", namespace, "to-cached", "ResolvedRefs", "True"
        ),
        "ResolvedRefs",
    )
    rec = op.op.reconciler
    before = dict(op.op.kube.calls)
    for _ in range(3):
        rec.reconcile_pool(namespace, "cached")
        rec.reconcile_pool(namespace, "cached", status_only=True)
        rec.reconcile_policy(namespace, "to-cached")
    reads = {k: n - before.get(k, 0) for k, n in op.op.kube.calls.items() if k[0] == "GET"}
    assert not any(reads.values()), f"reconciles read the API: {reads}"
    # the cache follows the cluster: a pod deleted by hand is replaced and the new one seen
    old = {
        p["metadata"]["name"] for p in live_pods(cluster, namespace, "modelfleet.io/pool=cached")
    }
    cluster.kubectl("delete", "pod", "-n", namespace, *old, "--wait=false")

    def new_pod_cached() -> bool:
        cached = {
            p["metadata"]["name"]
            for p in rec.cache.list("Pod", namespace, pool="cached")
            if not p["metadata"].get("deletionTimestamp")
        }
        return bool(cached) and not cached & old

    wait_until(new_pod_cached, "the replacement pod in the cache, the deleted one gone")


# ------------------------------------------------------------------------------ scaling


def test_manual_mode_honours_kubectl_scale_and_drains_the_least_busy_pods(
    cluster: ClusterClient, namespace: str, start_operator: StartOperator, scheduler: FakeControl
) -> None:
    apply(cluster, namespace, *example("01-accelerators/profiles.yaml", namespace))
    apply(cluster, namespace, pool("scaled", namespace, [
        {"name": "l4", "acceleratorProfile": "l4", "minReplicas": 1, "maxReplicas": 3},
        {"name": "h100", "acceleratorProfile": "h100-80gb", "minReplicas": 0, "maxReplicas": 2},
    ]))  # fmt: skip
    start_operator(scheduler)
    wait_until(
        lambda: condition_is(cluster, "ModelPool", namespace, "scaled", "Ready", "True"), "Ready"
    )
    cluster.kubectl("scale", "mp", "scaled", "-n", namespace, "--replicas=5")

    def at(l4: int, h100: int) -> bool:
        mp = get(cluster, "ModelPool", namespace, "scaled")
        rows = {v["name"]: v for v in mp["status"].get("variants", [])}
        return (
            rows.get("l4", {}).get("readyReplicas") == l4
            and rows.get("h100", {}).get("readyReplicas") == h100
            and mp["status"]["replicas"] == l4 + h100
            and len(live_pods(cluster, namespace, "modelfleet.io/pool=scaled")) == l4 + h100
        )

    wait_until(lambda: at(3, 2), "cheapest first: 3 x l4 (its max) then 2 x h100")
    # The scheduler reports in-flight work per engine; scale-down must remove the idlest.
    l4_pods = sorted(
        p["metadata"]["name"] for p in live_pods(cluster, namespace, "modelfleet.io/variant=l4")
    )
    h100_pods = sorted(
        p["metadata"]["name"] for p in live_pods(cluster, namespace, "modelfleet.io/variant=h100")
    )
    work = {l4_pods[0]: 7, l4_pods[1]: 0, l4_pods[2]: 3, h100_pods[0]: 2, h100_pods[1]: 9}
    for pod_name, inflight in work.items():
        variant = "l4" if pod_name in l4_pods else "h100"
        scheduler.endpoints[f"{namespace}/{pod_name}"] = endpoint(
            namespace, pod_name, "scaled", variant, inflight=inflight
        )
    scheduler.drain_plans[f"{namespace}/{l4_pods[1]}"] = [(pb.DRAINING, 1, 0.0), (pb.EMPTY, 0, 0.3)]
    cluster.kubectl("scale", "mp", "scaled", "-n", namespace, "--replicas=2")
    # 2 = l4 gets 2 (1 min + 1 cheapest), h100 gets 0: one l4 and both h100 go
    wait_until(lambda: at(2, 0), "scale-down to 2 x l4")
    remaining = {
        p["metadata"]["name"] for p in live_pods(cluster, namespace, "modelfleet.io/pool=scaled")
    }
    assert remaining == {l4_pods[0], l4_pods[2]}  # the idlest l4 went, the busy ones stayed
    drained = {req.endpoint for req in scheduler.calls_of("Drain") if req.reason == "scale-down"}
    assert drained == {f"{namespace}/{l4_pods[1]}", *(f"{namespace}/{p}" for p in h100_pods)}
    reasons = [e["reason"] for e in events(cluster, namespace, "scaled")]
    assert "Drained" in reasons and "ScaledDown" in reasons


def test_slo_mode_follows_demand_to_zero_and_back(
    cluster: ClusterClient, namespace: str, start_operator: StartOperator, scheduler: FakeControl
) -> None:
    apply(cluster, namespace, *example("01-accelerators/profiles.yaml", namespace))
    apply(cluster, namespace, pool("elastic", namespace, [
        {"name": "a100", "acceleratorProfile": "a100-80gb", "minReplicas": 0, "maxReplicas": 4},
        {"name": "h100", "acceleratorProfile": "h100-80gb", "minReplicas": 0, "maxReplicas": 2},
    ], slo={"ttftMs": 1000, "tpotMs": 80}, scaling={
        "mode": "SLO", "scaleDownStabilizationSeconds": 0, "scaleToZeroAfterSeconds": 2,
    }))  # fmt: skip
    start_operator(scheduler)

    def replicas() -> dict[str, int]:
        mp = get(cluster, "ModelPool", namespace, "elastic")
        return {v["name"]: v["desiredReplicas"] for v in mp.get("status", {}).get("variants", [])}

    scheduler.stats[(namespace, "elastic")] = pool_stats(namespace, "elastic", rate=12.0)
    high = wait_until(
        lambda: (r := replicas()) and sum(r.values()) >= 2 and r, "scale-up for 12 rps"
    )
    wait_until(
        lambda: condition_is(cluster, "ModelPool", namespace, "elastic", "Ready", "True"), "Ready"
    )
    scheduler.stats[(namespace, "elastic")] = pool_stats(namespace, "elastic", rate=0.0)
    wait_until(lambda: sum(replicas().values()) == 0, "scale to zero after the idle window")
    wait_until(
        lambda: not live_pods(cluster, namespace, "modelfleet.io/pool=elastic"), "no pods left"
    )
    zero = wait_until(
        lambda: condition_is(
            cluster, "ModelPool", namespace, "elastic", "Ready", "True", "ScaledToZero"
        ),
        "Ready=True/ScaledToZero",
    )
    assert zero
    scheduler.stats[(namespace, "elastic")] = pool_stats(namespace, "elastic", queued=3)
    wait_until(lambda: sum(replicas().values()) >= 1, "wake from zero on queued requests")
    mp = get(cluster, "ModelPool", namespace, "elastic")
    assert mp["status"]["autoscaler"]["lastDemandTime"]
    reasons = {e["reason"]: e["message"] for e in events(cluster, namespace, "elastic")}
    assert "ScaledUp" in reasons and "ScaledDown" in reasons
    assert sum(high.values()) >= 2


def test_a_pod_removed_by_someone_else_is_drained(
    cluster: ClusterClient, namespace: str, start_operator: StartOperator, scheduler: FakeControl
) -> None:
    apply(cluster, namespace, *example("01-accelerators/profiles.yaml", namespace))
    apply(
        cluster,
        namespace,
        pool("evicted", namespace, [{"name": "a", "acceleratorProfile": "a100-80gb"}]),
    )
    start_operator(scheduler)
    wait_until(
        lambda: condition_is(cluster, "ModelPool", namespace, "evicted", "Ready", "True"), "Ready"
    )
    (p,) = live_pods(cluster, namespace, "modelfleet.io/pool=evicted")
    name = p["metadata"]["name"]
    cluster.kubectl("delete", "pod", name, "-n", namespace, "--wait=false")
    wait_until(
        lambda: any(
            r.endpoint == f"{namespace}/{name}" and r.reason == "pod-deletion"
            for r in scheduler.calls_of("Drain")
        ),
        "a Drain of the deleted pod",
    )


# ------------------------------------------------------------------------------ invalid


def test_a_policy_the_scheduler_cannot_use_is_not_accepted(
    cluster: ClusterClient, namespace: str, start_operator: StartOperator
) -> None:
    # \\pL is a letter class in RE2 but not in Python's re (the scheduler): today's CRD refuses
    # it (the syntax both share), one from before that rule stored it.
    policy = {
        "apiVersion": "modelfleet.io/v1alpha1", "kind": "RoutingPolicy",
        "metadata": {"name": "letters", "namespace": namespace},
        "spec": {"modelNames": ["x"], "defaultTargets": [{"pool": "nowhere"}],
                 "rules": [{"name": "words", "match": {"regex": "\\pL+"},
                            "targets": [{"pool": "nowhere"}]}]},
    }  # fmt: skip
    apply_under_older_crd(cluster, namespace, policy, ["rules", "[]", "match"], "self.regex")
    params = copy.deepcopy(policy)
    params["metadata"]["name"] = "params"
    params["spec"]["rules"] = []
    params["spec"]["placement"] = {
        "profile": "custom", "scorers": [{"type": "queue", "parameters": {"nonsense": 1}}]
    }  # fmt: skip
    apply(cluster, namespace, params)
    start_operator()
    bad = wait_until(
        lambda: condition_is(
            cluster, "RoutingPolicy", namespace, "letters", "Accepted", "False", "InvalidSpec"
        ),
        "Accepted=False/InvalidSpec",
    )
    # the model's rule (Python re must compile it) names the field as the API server would
    assert bad["message"].startswith("spec.rules[0].match: regex must compile")
    missing = conditions(get(cluster, "RoutingPolicy", namespace, "letters"))["ResolvedRefs"]
    assert (missing["status"], missing["message"]) == ("False", "no ModelPool named nowhere")
    bad_params = wait_until(
        lambda: condition_is(
            cluster, "RoutingPolicy", namespace, "params", "Accepted", "False", "InvalidParameters"
        ),
        "Accepted=False/InvalidParameters",
    )
    assert "spec.placement.scorers[0].parameters" in bad_params["message"]
    warned = wait_until(
        lambda: [
            e
            for e in events(cluster, namespace, "letters", "RoutingPolicy")
            if e["reason"] == "InvalidSpec"
        ],
        "an InvalidSpec event",
    )
    assert warned[0]["type"] == "Warning"


def test_a_pool_stored_before_a_stricter_crd_gets_a_condition_not_a_crash(
    cluster: ClusterClient, namespace: str, start_operator: StartOperator
) -> None:
    """An object the API server accepted under an older CRD (without today's extraArgs rule)
    is refused by the operator's model: Accepted=False naming the field, a Warning event,
    nothing rendered — and the operator keeps reconciling the other pools."""
    apply(cluster, namespace, *example("01-accelerators/profiles.yaml", namespace))
    wrong = pool(
        "wrong",
        namespace,
        [{"name": "a", "acceleratorProfile": "a100-80gb"}],
        engine={"extraArgs": ["--port=9000"]},
    )
    apply_under_older_crd(cluster, namespace, wrong, ["engine"], "extraArgs")
    start_operator()
    accepted = wait_until(
        lambda: condition_is(
            cluster, "ModelPool", namespace, "wrong", "Accepted", "False", "InvalidSpec"
        ),
        "Accepted=False/InvalidSpec",
    )
    assert accepted["message"].startswith("spec.engine.extraArgs: ")
    assert kube(cluster).get("Deployment", namespace, "wrong-a") is None
    warned = wait_until(
        lambda: [e for e in events(cluster, namespace, "wrong") if e["reason"] == "InvalidSpec"],
        "an InvalidSpec event",
    )
    assert "spec.engine.extraArgs" in warned[0]["message"]
    # still alive and working
    apply(
        cluster,
        namespace,
        pool("fine", namespace, [{"name": "a", "acceleratorProfile": "a100-80gb"}]),
    )
    wait_until(
        lambda: condition_is(cluster, "ModelPool", namespace, "fine", "Ready", "True"),
        "the next pool Ready",
    )


# ------------------------------------------------------------------------------ restarts, HA


def test_restarting_the_operator_mid_reconcile_leaves_no_duplicate_or_orphan(
    cluster: ClusterClient, namespace: str, installed_crds: list[dict[str, Any]], tmp_path: Path
) -> None:
    apply(cluster, namespace, *example("01-accelerators/profiles.yaml", namespace))
    names = [f"p{i}" for i in range(8)]
    variants = [
        {"name": "a", "acceleratorProfile": "a100-80gb", "minReplicas": 0, "maxReplicas": 1},
        {"name": "b", "acceleratorProfile": "l40s", "minReplicas": 0, "maxReplicas": 1},
    ]
    apply(cluster, namespace, *(pool(n, namespace, variants) for n in names))
    log = tmp_path / "operator.log"
    procs = []
    try:
        for delay in (0.8, 1.6, 2.4):  # killed at different points of the first reconciles
            proc = OperatorProcess(cluster, namespace, log).start()
            procs.append(proc)
            time.sleep(delay)
            proc.kill()
        # edited while no operator runs: the next one must drop variant b and add c
        edited = [{**v} for v in variants[:1]] + [
            {"name": "c", "acceleratorProfile": "a100-80gb", "minReplicas": 0, "maxReplicas": 1}
        ]
        apply(cluster, namespace, *(pool(n, namespace, edited) for n in names))
        final = OperatorProcess(cluster, namespace, log).start()
        procs.append(final)

        def converged() -> bool:
            deps = kube(cluster).list_objects("Deployment", namespace)
            return sorted(d["metadata"]["name"] for d in deps) == sorted(
                f"{n}-{v}" for n in names for v in ("a", "c")
            ) and all(
                condition_is(cluster, "ModelPool", namespace, n, "Ready", "True") for n in names
            )

        wait_until(converged, "every pool converged with variants a and c", timeout=120)
        uids = {n: get(cluster, "ModelPool", namespace, n)["metadata"]["uid"] for n in names}
        for kind in ("Deployment", "Service", "PodDisruptionBudget"):
            for obj in kube(cluster).list_objects(kind, namespace):
                owners = obj["metadata"].get("ownerReferences") or []
                assert len(owners) == 1, f"{kind} {obj['metadata']['name']}: {owners}"
                pool_name = obj["metadata"]["labels"]["modelfleet.io/pool"]
                assert owners[0]["uid"] == uids[pool_name]
        assert len(kube(cluster).list_objects("Service", namespace)) == len(names)
        for n in names:  # nothing on deletion needs the operator, so it adds no finalizer
            assert not get(cluster, "ModelPool", namespace, n)["metadata"].get("finalizers")
        for n in names:  # no duplicate ReplicaSet: each Deployment's template never changed
            rs = json.loads(
                cluster.kubectl(
                    "get", "rs", "-n", namespace, "-l", f"modelfleet.io/pool={n}", "-o", "json"
                ).stdout
            )["items"]
            assert sorted(r["metadata"]["labels"]["modelfleet.io/variant"] for r in rs) == [
                "a",
                "c",
            ]
        assert final.terminate() == 0
    finally:
        for p in procs:
            p.kill()
    # Pools deleted while no operator runs: the garbage collector removes every child.
    cluster.kubectl("delete", "mp", "--all", "-n", namespace)
    wait_until(
        lambda: (
            not kube(cluster).list_objects("Deployment", namespace)
            and not kube(cluster).list_objects("Service", namespace)
        ),
        "children gone",
    )


def test_leader_election_on_a_lease(cluster: ClusterClient, namespace: str) -> None:
    clock = [1000.0]
    a = LeaderElector(
        kube(cluster), namespace, "lead", "a", lease_s=10, renew_s=2, clock=lambda: clock[0]
    )
    b = LeaderElector(
        kube(cluster), namespace, "lead", "b", lease_s=10, renew_s=2, clock=lambda: clock[0]
    )
    assert a.try_lead() is True
    assert b.try_lead() is False
    clock[0] += 5
    assert a.try_lead() is True  # renewed
    clock[0] += 9
    assert b.try_lead() is False  # a renewed 9 s ago, within its 10 s lease
    clock[0] += 2
    assert b.try_lead() is True  # a stopped renewing: b takes over
    assert a.try_lead() is False
    lease = get(cluster, "Lease", namespace, "lead")
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    b.release()
    assert a.try_lead() is True  # released: no need to wait for expiry


def test_metrics_are_served_under_modelfleet_operator(
    cluster: ClusterClient, namespace: str, start_operator: StartOperator
) -> None:
    apply(cluster, namespace, *example("01-accelerators/profiles.yaml", namespace))
    apply(
        cluster,
        namespace,
        pool(
            "measured",
            namespace,
            [{"name": "a", "acceleratorProfile": "a100-80gb", "maxReplicas": 2, "minReplicas": 2}],
        ),
    )
    op = start_operator()
    metrics: OperatorMetrics = op.op.metrics
    port = metrics.serve(0, "127.0.0.1")
    wait_until(
        lambda: condition_is(cluster, "ModelPool", namespace, "measured", "Ready", "True"), "Ready"
    )

    def scraped() -> str | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        want = f"modelfleet_operator_ready_replicas{{{labels}}} 2.0"
        return text if want in text else None

    labels = f'namespace="{namespace}",pool="measured",variant="a"'
    text = wait_until(scraped, "ready replicas in the scrape")
    assert f"modelfleet_operator_desired_replicas{{{labels}}} 2.0" in text
    cost = f'modelfleet_operator_estimated_cost_per_hour{{namespace="{namespace}",pool="measured"}}'
    assert f"{cost} 4.4" in text
    assert 'modelfleet_operator_reconcile_duration_seconds_count{kind="ModelPool"}' in text
    assert "modelfleet_operator_scale_decisions_total{" in text
