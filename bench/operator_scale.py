"""The operator at scale on the real control plane: 200 ModelPools, and RoutingPolicy edits.

Starts the project's local control plane (etcd, kube-apiserver, controller-manager, scheduler,
kwok) with simulated A100 nodes roomy enough for every pod, runs the operator in-process (as
``modelfleet operator`` builds it), then measures:

1. **Pools**: ``kubectl apply`` of N ModelPools (one variant, one replica each) in one
   request into a namespace no operator watches (the API server's admission cost alone);
   then the same into the operator's namespace, and the time until all N Deployments exist
   (goal ≤ 30 s for N = 200), until every pod is Running, and until every pool reports
   Ready=True. Baseline in the same session: ``kubectl apply`` of the same N Deployments
   directly (what the API server and kwok take without the operator), until they exist and
   until their pods run.
2. **RoutingPolicy edits**: E sequential edits of one policy (a target weight); for each,
   the time from the edit's response to ``status.observedGeneration`` reaching the new
   generation (the operator accepted it). This is the operator's half of "the time until
   the scheduler uses it"; the scheduler's half (it watches the object) is measured with it.

Usage: ``python bench/operator_scale.py [--pools 200] [--edits 50] [--out
bench/results/operator-scale.md]``. Needs the control-plane binaries (``e2e/controlplane``);
every process is stopped at the end, also on error.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from modelfleet.operator.kube import Kube
from modelfleet.operator.reconcile import OperatorConfig
from modelfleet.operator.runtime import build_operator
from modelfleet.testing.cluster import Cluster, locate_binaries
from modelfleet.testing.cluster_nodes import NodeSpec

NAMESPACE = "bench"
PROFILE = {
    "apiVersion": "modelfleet.io/v1alpha1",
    "kind": "AcceleratorProfile",
    "metadata": {"name": "a100-80gb"},
    "spec": {
        "gpuProduct": "NVIDIA-A100-SXM4-80GB",
        "memoryGiB": 80,
        "costPerHour": 2.2,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


def pools(n: int, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "modelfleet.io/v1alpha1",
            "kind": "ModelPool",
            "metadata": {"name": f"pool-{i:03d}", "namespace": namespace},
            "spec": {
                "model": "meta-llama/Llama-3.1-8B-Instruct",
                "servedModelName": f"model-{i:03d}",
                "variants": [{"name": "a100", "acceleratorProfile": "a100-80gb"}],
            },
        }
        for i in range(n)
    ]


def plain_deployments(n: int) -> list[dict[str, Any]]:
    """The baseline: N Deployments like the operator's, applied directly."""
    out = []
    for i in range(n):
        labels = {"app": f"plain-{i:03d}"}
        out.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": f"plain-{i:03d}", "namespace": "baseline"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
                            "tolerations": PROFILE["spec"]["tolerations"],
                            "containers": [
                                {
                                    "name": "vllm",
                                    "image": "vllm/vllm-openai:v0.32.0",
                                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                                }
                            ],
                        },
                    },
                },
            }
        )
    return out


def apiserver_requests(cluster: Cluster) -> dict[tuple[str, str], float]:
    """The API server's own count of requests served (``apiserver_request_total``), by
    (verb, resource): every client's, kopf's watches and patches and the controllers' too."""
    out: dict[tuple[str, str], float] = {}
    for line in cluster.kubectl("get", "--raw", "/metrics", timeout=120).stdout.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        resource = labels.get("resource", "") + (
            "/" + labels["subresource"] if labels.get("subresource") else ""
        )
        key = (labels.get("verb", ""), resource)
        out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def wait(check: Any, timeout: float, poll: float = 0.05) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(poll)
    return time.monotonic()


def running_pods(kube: Kube, namespace: str) -> int:
    return sum(
        1
        for p in kube.list_objects("Pod", namespace)
        if (p.get("status") or {}).get("phase") == "Running"
    )


def ready_pools(kube: Kube) -> int:
    n = 0
    for p in kube.list_objects("ModelPool", NAMESPACE):
        conds = {c["type"]: c for c in (p.get("status") or {}).get("conditions") or []}
        n += conds.get("Ready", {}).get("status") == "True"
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pools", type=int, default=200)
    ap.add_argument("--edits", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    n = args.pools
    nodes = [
        NodeSpec(f"a100-{i}", "NVIDIA-A100-SXM4-80GB", gpus=128, pods="1000", cpu="1000",
                 memory="8Ti", labels={"cloud.google.com/gke-accelerator": "nvidia-a100-80gb"})
        for i in range(4)
    ]  # fmt: skip
    cluster = Cluster(locate_binaries(), nodes=nodes, pod_cidr="127.1.0.0/16")
    repo = Path(__file__).resolve().parents[1]
    results: dict[str, Any] = {}
    with cluster:
        for f in sorted((repo / "crds").glob("*.yaml")):
            cluster.kubectl("apply", "--server-side", "-f", str(f))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        cluster.create_namespace(NAMESPACE)
        cluster.create_namespace("baseline")
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(PROFILE))
        kube = Kube(cluster.api_client)

        # -- baseline: the same number of Deployments, applied directly
        text = yaml.safe_dump_all(plain_deployments(n))
        t0 = time.monotonic()
        cluster.kubectl("apply", "--server-side", "-f", "-", input=text, timeout=600)
        t_exist = wait(lambda: len(kube.list_objects("Deployment", "baseline")) == n, 300)
        t_run = wait(lambda: running_pods(kube, "baseline") == n, 600, 0.2)
        results["baseline"] = {"exist_s": t_exist - t0, "running_s": t_run - t0}
        cluster.kubectl("delete", "namespace", "baseline", "--wait=false")

        # -- baseline: the same ModelPools admitted with no operator watching (their namespace)
        cluster.create_namespace("admission")
        text = yaml.safe_dump_all(pools(n, "admission"))
        t0 = time.monotonic()
        cluster.kubectl("apply", "--server-side", "-f", "-", input=text, timeout=600)
        results["admission"] = {"apply_s": time.monotonic() - t0}
        cluster.kubectl("delete", "namespace", "admission", "--wait=false")

        # -- the operator, once the baselines' namespaces are gone (their teardown — 200
        # Deployments, ReplicaSets and pods — would otherwise load the API server meanwhile)
        for ns in ("baseline", "admission"):
            cluster.kubectl(
                "wait", "--for=delete", f"namespace/{ns}", "--timeout=600s", timeout=700
            )
        import kubernetes.config as k8s_config

        client = k8s_config.new_client_from_config(str(cluster.kubeconfig))
        op = build_operator(client, config=OperatorConfig(resync_s=15.0, namespaces=(NAMESPACE,)))
        thread = op.thread([NAMESPACE])
        thread.start()
        try:
            text = yaml.safe_dump_all(pools(n))
            served_before = apiserver_requests(cluster)
            t0 = time.monotonic()
            cluster.kubectl("apply", "--server-side", "-f", "-", input=text, timeout=600)
            t_applied = time.monotonic()
            t_exist = wait(lambda: len(kube.list_objects("Deployment", NAMESPACE)) == n, 300)
            t_run = wait(lambda: running_pods(kube, NAMESPACE) == n, 600, 0.2)
            t_ready = wait(lambda: ready_pools(kube) == n, 600, 0.2)
            results["calls_to_ready"] = dict(op.kube.calls)
            served = apiserver_requests(cluster)
            results["served_to_ready"] = {
                k: v - served_before.get(k, 0.0)
                for k, v in served.items()
                if v - served_before.get(k, 0.0) >= 1
            }
            results["operator"] = {
                "apply_s": t_applied - t0,
                "exist_s": t_exist - t0,
                "running_s": t_run - t0,
                "ready_s": t_ready - t0,
            }

            # -- RoutingPolicy edits
            policy = {
                "apiVersion": "modelfleet.io/v1alpha1",
                "kind": "RoutingPolicy",
                "metadata": {"name": "edited", "namespace": NAMESPACE},
                "spec": {
                    "modelNames": ["m"],
                    "defaultTargets": [{"pool": "pool-000", "weight": 1}, {"pool": "pool-001"}],
                },
            }
            cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(policy))
            wait(lambda: (kube.get("RoutingPolicy", NAMESPACE, "edited") or {}).get("status"), 60)
            latencies = []
            path = f"/apis/modelfleet.io/v1alpha1/namespaces/{NAMESPACE}/routingpolicies/edited"
            for i in range(args.edits):
                body = {
                    "spec": {
                        "defaultTargets": [
                            {"pool": "pool-000", "weight": 2 + i},
                            {"pool": "pool-001"},
                        ]
                    }
                }
                t0 = time.monotonic()
                obj = kube.request("PATCH", path, body, content_type="application/merge-patch+json")
                gen = obj["metadata"]["generation"]
                t1 = wait(
                    lambda g=gen: (
                        (kube.get("RoutingPolicy", NAMESPACE, "edited") or {})
                        .get("status", {})
                        .get("observedGeneration")
                        == g
                    ),
                    30,
                    0.005,
                )
                latencies.append(t1 - t0)
            lat = sorted(latencies)
            results["policy_edit"] = {
                "edits": len(lat),
                "p50_s": statistics.median(lat),
                "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
                "max_s": lat[-1],
            }
        finally:
            thread.stop()
            op.close()
        print("operator API calls until every pool was Ready:", file=sys.stderr)
        for (verb, res), count in sorted(
            results.get("calls_to_ready", {}).items(), key=lambda x: -x[1]
        ):
            print(f"  {verb:6} {res:24} {count}", file=sys.stderr)

    report = render(args, results)
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


#: The same run before the watch caches (commit 42ac045, bench/results/operator-scale.md of
#: that commit): API calls until every pool was Ready, by (verb, resource).
BEFORE_CACHES = {
    ("GET", "modelpools"): 1068,
    ("GET", "deployments"): 1063,
    ("GET", "pods"): 1063,
    ("PATCH", "status"): 576,
    ("PATCH", "deployments"): 414,
    ("PATCH", "services"): 411,
    ("PATCH", "poddisruptionbudgets"): 411,
    ("GET", "routingpolicies"): 205,
    ("POST", "events"): 200,
    ("GET", "acceleratorprofiles"): 1,
    ("GET", "nodes"): 1,
}


def render(args: argparse.Namespace, r: dict[str, Any]) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    cmd = "python bench/operator_scale.py " + " ".join(sys.argv[1:])
    calls = sorted(r.get("calls_to_ready", {}).items(), key=lambda x: -x[1])
    calls_text = ", ".join(f"{verb} {res} {count}" for (verb, res), count in calls)
    before_text = ", ".join(f"{verb} {res} {n}" for (verb, res), n in BEFORE_CACHES.items())
    total = sum(n for _, n in calls)
    served = sorted(r.get("served_to_ready", {}).items(), key=lambda x: -x[1])
    served_text = ", ".join(f"{verb} {res} {count:.0f}" for (verb, res), count in served[:16])
    served_total = sum(c for _, c in served)
    reads = sum(n for (verb, _), n in calls if verb == "GET")
    b, o, p = r["baseline"], r["operator"], r["policy_edit"]
    ok = "met" if o["exist_s"] <= 30 else "NOT met"
    lines = [
        f"Command: `{cmd.strip()}`",
        "",
        "# The operator at scale on the real control plane",
        "",
        f"- Commit: {commit}; machine: {platform.machine()}, {os.cpu_count()} cpus, "
        f"Python {platform.python_version()}; load average at the end "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        f"- {args.pools} ModelPools (one variant, one replica each) applied in one "
        "`kubectl apply --server-side`; the operator in-process, one namespace, 16 handler "
        "threads; kwok runs the pods on 4 simulated A100 nodes.",
        "",
        "| | Deployments exist | pods Running | pools Ready |",
        "| --- | --- | --- | --- |",
        f"| baseline: {args.pools} Deployments applied directly | {b['exist_s']:.1f} s | "
        f"{b['running_s']:.1f} s | — |",
        f"| operator: {args.pools} ModelPools | {o['exist_s']:.1f} s | {o['running_s']:.1f} s | "
        f"{o['ready_s']:.1f} s |",
        f"| ratio operator / baseline | {o['exist_s'] / b['exist_s']:.2f} | "
        f"{o['running_s'] / b['running_s']:.2f} | |",
        "",
        f"Goal: all Deployments within 30 s of the apply: **{ok}** ({o['exist_s']:.1f} s; the "
        f"apply itself took {o['apply_s']:.1f} s; the same apply into a namespace no operator "
        f"watches took {r['admission']['apply_s']:.1f} s, the floor any operator starts from; "
        f"the last Deployment existed {o['exist_s'] - o['apply_s']:.1f} s after the apply "
        "returned).",
        "",
        f"RoutingPolicy edits ({p['edits']} sequential, each a new target weight): time from "
        "the edit's response to `status.observedGeneration` = the new generation (Accepted and "
        f"ResolvedRefs recomputed): p50 {p['p50_s'] * 1000:.0f} ms, p99 {p['p99_s'] * 1000:.0f} "
        f"ms, max {p['max_s'] * 1000:.0f} ms. This is the operator's half of the ≤ 1 s p99 goal; "
        "the scheduler picks the policy up from its own watch of the object, which is not "
        "built yet, so the end-to-end figure is still to be measured.",
        "",
        f"The operator's API calls until every pool was Ready (`Kube.calls`): {calls_text} "
        f"({total} in all, {reads} reads). Before the watch caches (commit 42ac045, 200 pools, "
        f"the same bench): {before_text} ({sum(BEFORE_CACHES.values())} in all, "
        f"{sum(n for (v, _), n in BEFORE_CACHES.items() if v == 'GET')} reads).",
        "",
        "Everything the API server served from the operator's apply until every pool was Ready "
        f"(`apiserver_request_total`, every client: kubectl, kopf, the operator, the "
        f"controllers, kwok, this bench's polling; {served_total:.0f} in all; the 16 largest): "
        f"{served_text}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
