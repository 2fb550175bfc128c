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
2. **RoutingPolicy edits**: E sequential edits of one policy (a new public model name and
   target weight), with ``modelfleet scheduler --kubernetes`` running as its own process on
   the same control plane; for each, the time from the edit's response until the scheduler
   routes the new name (``GET /v1/models``), the goal's "time until the scheduler uses it"
   (≤ 1 s p99), and until the operator's ``status.observedGeneration`` reaches the new
   generation.

Also reported: the operator's API calls (``Kube.calls``), every request the API server
served (and refused) meanwhile, and the CPU time each process used from the apply until
every Deployment existed, which depends far less on the machine's load than wall time.

Usage: ``python bench/operator_scale.py [--pools 200] [--edits 50] [--out
bench/results/operator-scale.md]``. Needs the control-plane binaries (``e2e/controlplane``);
every process is stopped at the end, also on error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
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


def apiserver_requests(cluster: Cluster) -> dict[tuple[str, str, str], float]:
    """The API server's own count of requests served (``apiserver_request_total``), by
    (verb, resource, code): every client's, kopf's watches and patches and the controllers'
    too."""
    out: dict[tuple[str, str, str], float] = {}
    for line in cluster.kubectl("get", "--raw", "/metrics", timeout=120).stdout.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        resource = labels.get("resource", "") + (
            "/" + labels["subresource"] if labels.get("subresource") else ""
        )
        key = (labels.get("verb", ""), resource, labels.get("code", ""))
        out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time (user + system) each process has used so far, s; this process's as
    ``operator`` (the operator runs in it, with this bench's own polling)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"operator (this process)": time.process_time()}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / tick
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


def start_scheduler(cluster: Cluster, scrape_period: float) -> tuple[subprocess.Popen[str], str]:
    """``modelfleet scheduler --kubernetes`` on this control plane, watching the bench's
    namespace (its 200 pools and pods, and the edited policy), served with uvicorn in its
    own process (``--no-ray``: the same watch and routing code as a Serve replica, without
    Ray's processes on a shared 2-core machine); returns it and its URL once it listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("modelfleet")
    proc = subprocess.Popen(
        [str(exe), "scheduler", "--kubernetes", f"--kubeconfig={cluster.kubeconfig}",
         f"--namespace={NAMESPACE}", "--no-ray", "--host=127.0.0.1", f"--port={port}",
         f"--scrape-period={scrape_period}", "--log-level=error"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if "listening on" in line:
            return proc, f"http://127.0.0.1:{port}"
    proc.wait(10)
    raise RuntimeError(f"the scheduler exited ({proc.returncode}) before it listened")


def stop_scheduler(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def public_models(url: str) -> set[str]:
    """The model names the scheduler routes (``GET /v1/models``)."""
    with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as resp:
        return {m["id"] for m in json.loads(resp.read())["data"]}


def percentiles(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    return {
        "n": len(v),
        "p50_s": statistics.median(v),
        "p99_s": v[min(len(v) - 1, int(0.99 * len(v)))],
        "max_s": v[-1],
    }


def policy_edits(kube: Kube, url: str, edits: int) -> dict[str, Any]:
    """``edits`` sequential edits of the policy, each a new public model name and target
    weight; for each, the time from the edit's response until the scheduler routes the new
    name (``/v1/models``, polled every 5 ms) and until the operator's ``observedGeneration``
    reaches the edit's generation (polled every 20 ms)."""
    path = f"/apis/modelfleet.io/v1alpha1/namespaces/{NAMESPACE}/routingpolicies/edited"
    to_scheduler, to_status = [], []
    for i in range(edits):
        name = f"edit-{i}"
        body = {
            "spec": {
                "modelNames": [name],
                "defaultTargets": [{"pool": "pool-000", "weight": 2 + i}, {"pool": "pool-001"}],
            }
        }
        t0 = time.monotonic()
        gen = kube.request("PATCH", path, body, content_type="application/merge-patch+json")[
            "metadata"
        ]["generation"]
        seen: float | None = None
        observed: float | None = None
        last_status = 0.0
        while seen is None or observed is None:
            now = time.monotonic()
            if now - t0 > 60:
                raise TimeoutError(f"edit {i}: scheduler {seen}, operator {observed}")
            if seen is None and name in public_models(url):
                seen = time.monotonic()
            if observed is None and now - last_status >= 0.02:
                last_status = now
                obj = kube.get("RoutingPolicy", NAMESPACE, "edited") or {}
                if (obj.get("status") or {}).get("observedGeneration") == gen:
                    observed = time.monotonic()
            time.sleep(0.005)
        to_scheduler.append(seen - t0)
        to_status.append(observed - t0)
    return {"scheduler": percentiles(to_scheduler), "operator": percentiles(to_status)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pools", type=int, default=200)
    ap.add_argument("--edits", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--scrape-period",
        type=float,
        default=1.0,
        help="the scheduler's engine /metrics period, s (its pods run no engine here)",
    )
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
            cpu_before = cpu_seconds(cluster.pids())
            t0 = time.monotonic()
            cluster.kubectl("apply", "--server-side", "-f", "-", input=text, timeout=600)
            t_applied = time.monotonic()
            t_exist = wait(lambda: len(kube.list_objects("Deployment", NAMESPACE)) == n, 300)
            cpu_after = cpu_seconds(cluster.pids())
            results["cpu_to_exist"] = {
                k: v - cpu_before[k] for k, v in cpu_after.items() if k in cpu_before
            }
            t_run = wait(lambda: running_pods(kube, NAMESPACE) == n, 600, 0.2)
            t_ready = wait(lambda: ready_pools(kube) == n, 600, 0.2)
            results["calls_to_ready"] = dict(op.kube.calls)
            served = apiserver_requests(cluster)
            results["served_to_ready"] = {}
            results["refused_to_ready"] = {}
            for (verb, res, code), v in served.items():
                d = v - served_before.get((verb, res, code), 0.0)
                if d >= 1:
                    results["served_to_ready"][(verb, res)] = (
                        results["served_to_ready"].get((verb, res), 0.0) + d
                    )
                    if code.startswith("4"):
                        key = (verb, res, code)
                        results["refused_to_ready"][key] = d
            results["operator"] = {
                "apply_s": t_applied - t0,
                "exist_s": t_exist - t0,
                "running_s": t_run - t0,
                "ready_s": t_ready - t0,
            }

            # -- RoutingPolicy edits: the operator's status, and the scheduler's routing
            policy = {
                "apiVersion": "modelfleet.io/v1alpha1",
                "kind": "RoutingPolicy",
                "metadata": {"name": "edited", "namespace": NAMESPACE},
                "spec": {
                    "modelNames": ["edit-start"],
                    "defaultTargets": [{"pool": "pool-000", "weight": 1}, {"pool": "pool-001"}],
                },
            }
            cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(policy))
            wait(lambda: (kube.get("RoutingPolicy", NAMESPACE, "edited") or {}).get("status"), 60)
            scheduler = start_scheduler(cluster, args.scrape_period)
            try:
                url = scheduler[1]
                wait(lambda: "edit-start" in public_models(url), 120, 0.05)
                pid = {"scheduler": scheduler[0].pid}
                idle0, t_idle = cpu_seconds(pid)["scheduler"], time.monotonic()
                time.sleep(20)  # its CPU without edits: watches, 1 Hz scrapes, timers
                idle_rate = (cpu_seconds(pid)["scheduler"] - idle0) / (time.monotonic() - t_idle)
                cpu0 = cpu_seconds(pid)["scheduler"]
                t_edits = time.monotonic()
                results["policy_edit"] = policy_edits(kube, url, args.edits)
                results["policy_edit"]["scheduler_cpu_s"] = (
                    cpu_seconds({"scheduler": scheduler[0].pid})["scheduler"] - cpu0
                )
                results["policy_edit"]["edits_s"] = time.monotonic() - t_edits
                results["policy_edit"]["scheduler_idle_cpu_rate"] = idle_rate
            finally:
                stop_scheduler(scheduler[0])
        finally:
            thread.stop()
            op.close()
        print("operator API calls until every pool was Ready:", file=sys.stderr)
        for (verb, res), count in sorted(
            results.get("calls_to_ready", {}).items(), key=lambda x: -x[1]
        ):
            print(f"  {verb:6} {res:24} {count}", file=sys.stderr)

        print("CPU seconds from the apply until every Deployment existed:", file=sys.stderr)
        for proc, sec in sorted(results.get("cpu_to_exist", {}).items(), key=lambda x: -x[1]):
            print(f"  {proc:28} {sec:.1f}", file=sys.stderr)

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
    refused = sorted(r.get("refused_to_ready", {}).items(), key=lambda x: -x[1])
    refused_text = ", ".join(f"{v} {res} {code}: {c:.0f}" for (v, res, code), c in refused[:8])
    cpu = sorted(r.get("cpu_to_exist", {}).items(), key=lambda x: -x[1])
    cpu_text = ", ".join(f"{name} {sec:.1f} s" for name, sec in cpu)
    reads = sum(n for (verb, _), n in calls if verb == "GET")
    b, o, p = r["baseline"], r["operator"], r["policy_edit"]
    ok = "met" if o["exist_s"] <= 30 else "NOT met"
    ps, po = p["scheduler"], p["operator"]
    edit_ok = "met" if ps["p99_s"] <= 1.0 else "NOT met"
    per_edit = (p["scheduler_cpu_s"] - p["scheduler_idle_cpu_rate"] * p["edits_s"]) / ps["n"]
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
        f"RoutingPolicy edits ({ps['n']} sequential, each a new public model name and "
        "target weight), time from the edit's response until **the scheduler routes it** "
        "(`modelfleet scheduler --kubernetes --no-ray` watching this namespace — its "
        f"{args.pools} pools, their pods and the policy — lists the new name in `/v1/models`): "
        f"p50 {ps['p50_s'] * 1000:.0f} ms, p99 {ps['p99_s'] * 1000:.0f} ms, max "
        f"{ps['max_s'] * 1000:.0f} ms; goal ≤ 1 s p99: **{edit_ok}**. Until the operator's "
        "`status.observedGeneration` = the new generation (Accepted and ResolvedRefs "
        f"recomputed): p50 {po['p50_s'] * 1000:.0f} ms, p99 {po['p99_s'] * 1000:.0f} ms, max "
        f"{po['max_s'] * 1000:.0f} ms. The two run in parallel: the scheduler does not wait "
        "for the operator's status. The scheduler process used "
        f"{p['scheduler_cpu_s']:.1f} s of CPU over the {p['edits_s']:.0f} s of edits; "
        f"without edits it uses {p['scheduler_idle_cpu_rate'] * 1000:.0f} ms per s (watches, "
        "its 1 Hz scrapes of the pods, which serve nothing here, timers; measured over "
        "20 s before the edits), so an edit cost it "
        f"{per_edit * 1000:.0f} ms of CPU: at this load a process gets a small share of a "
        "core, and waits for it.",
        "",
        f"The operator's API calls until every pool was Ready (`Kube.calls`): {calls_text} "
        f"({total} in all, {reads} reads). Before the watch caches (commit 42ac045, 200 pools, "
        f"the same bench): {before_text} ({sum(BEFORE_CACHES.values())} in all, "
        f"{sum(n for (v, _), n in BEFORE_CACHES.items() if v == 'GET')} reads).",
        "",
        "Everything the API server served from the operator's apply until every pool was Ready "
        f"(`apiserver_request_total`, every client: kubectl, kopf, the operator, the "
        f"controllers, kwok, this bench's polling; {served_total:.0f} in all; the 16 largest): "
        f"{served_text}. Of these, refused (4xx): {sum(c for _, c in refused):.0f} "
        f"({refused_text}).",
        "",
        "CPU time from the apply until every Deployment existed, by process (user + system, "
        f"`/proc/<pid>/stat`): {cpu_text}; {sum(s for _, s in cpu):.1f} s in all.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
