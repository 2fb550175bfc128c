"""Render the Grafana dashboards as a person would see them, from a real Prometheus over the
whole system under ramping load.

No Grafana here (neither PyPI nor Debian ships it), so this does what Grafana does with each
panel: a real Prometheus (Debian's ``prometheus`` package: ``apt-get install prometheus``)
scrapes the system on loopback while a client sends OpenAI chat requests at a rate that ramps
up and down; then every panel's expression is sent to Prometheus's ``query_range`` API with
Grafana's variables filled in, and the series are drawn in the dashboard's own grid (gridPos),
titled and with legends from ``legendFormat``.

The system: the real control plane (:mod:`modelfleet.testing.cluster`, the e2e tier's; pod IPs
on 127.42.x.x, not the cluster tier's 127.1.x.x) with example 06's profiles, pools and policies
applied; ``modelfleet operator`` as a process with its metrics port; kwok running the engine
pods and :class:`~modelfleet.testing.kwok_engines.KwokEngines` serving an engine simulator on
each pod's IP; ``modelfleet scheduler --kubernetes --no-ray`` in front. Until the scheduler
serves its gRPC control API (issue 16) the SLO autoscaler has no demand, so an external
autoscaler rule in this script (:func:`external_autoscaler`) scales ``chat-large`` through the
scale subresource; the result file says so.

    python bench/dashboards.py [--seconds 300] [--out bench/results/dashboards]

Needs the control-plane binaries (``e2e/controlplane/build.sh``; cached in
``~/.cache/modelfleet``). Writes ``<out>/<dashboard>.png`` and ``bench/results/dashboards.md``
(the command, the load, the scale changes, the panels without data and why, and the number of
series each panel returned).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = REPO / "charts" / "modelfleet" / "dashboards"
FLEET = REPO / "examples" / "06-local-fleet"
SCRAPE_S = 1
RATE_INTERVAL = "15s"  # Grafana's $__rate_interval: 4 x the scrape interval, rounded up
STEP_S = 5
NS = "default"  # where example 06 puts its objects
#: kwok's pod IPs: loopback, so engine simulators can serve them; not the cluster tier's
#: 127.1.0.0/16, so that a test session's engines on this machine never hold our addresses
POD_CIDR = "127.42.0.0/16"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SCALED_POOL = "chat-large"
MAX_REPLICAS = 4
EVAL_S = 10
INFLIGHT_PER_REPLICA = 2.0
BURST_RATE = 12.0
BURST_S = 15.0
BURST_PROMPT_WORDS = 1500
#: The bench's addition to example 06's "code" policy, so the rate-limit panel has work.
CODE_RATE_LIMIT = {"default": {"requestsPerMinute": 20}}
TAIL_S = 60
#: Why a panel can be empty in this run (a panel title -> the reason).
EMPTY_BECAUSE: dict[str, str] = {
    "Drains before scale-down": "the operator asked for no drain: no scale-down in the window",
    "Shed, downgraded, queued": "no request was shed, downgraded or queued (the counters "
    "appear with their first increment): the SLO classes' targets held",
    "Rate limited and retried": "no request exceeded the code policy's budget and no "
    "placement was retried",
    "Errors by status": "no request failed (a 429 of the rate limit counts here too)",
    "Admission queue": "no request waited for admission (the gauge appears with the first)",
    "Scrape errors": "the scheduler's scrapes of the engines never failed",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


def load(
    base: str,
    seconds: float,
    stop: threading.Event,
    counts: dict[str, int],
    first_errors: dict[str, str] | None = None,
) -> None:
    """Chat and code requests, Poisson arrivals at a rate ramping 0.5 -> 6 -> 0.5 req/s, with
    shared system prompts (so prefix hits show); chat requests name an SLO class (1 in 5
    ``batch``, the rest ``interactive``). At 60 % of the run a burst of ``BURST_RATE`` req/s
    of long prefix-free chat prompts lasts ``BURST_S`` s (so the SLO classes act)."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{base}/v1", api_key="bench", max_retries=0, timeout=120)
    rng = random.Random(0)
    house = "Follow the house style. " * 40
    systems = [f"You are assistant number {i}. {house}" for i in range(4)]
    lock = threading.Lock()

    def one(model: str, system: str, prompt: str, max_tokens: int, slo: str) -> None:
        try:
            stream = client.chat.completions.create(
                model=model,
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": prompt},
                ],
                max_tokens=max_tokens,
                stream=True,
                extra_headers={"x-slo-class": slo} if slo else None,
            )
            for _ in stream:
                pass
            key = "ok"
        except Exception as err:  # counted, shown in the results
            key = type(err).__name__
            if first_errors is not None:
                with lock:
                    first_errors.setdefault(key, str(err)[:300])
        with lock:
            counts[key] = counts.get(key, 0) + 1

    start = time.monotonic()
    burst_at = 0.6 * seconds
    threads: list[threading.Thread] = []
    while not stop.is_set() and (t := time.monotonic() - start) < seconds:
        rate = 0.5 + 5.5 * math.sin(math.pi * t / seconds) ** 2
        burst = burst_at <= t < burst_at + BURST_S
        if burst:
            rate += BURST_RATE
        if burst and rng.random() < BURST_RATE / rate:
            model, system, slo = "chat", f"Session {rng.randrange(10**9)}.", "interactive"
            words = [f"w{rng.randrange(10**6)}" for _ in range(BURST_PROMPT_WORDS)]
            prompt = " ".join(words)
        else:
            model = "code" if rng.random() < 0.25 else "chat"
            system = rng.choice(systems)
            slo = "" if model == "code" else "batch" if rng.random() < 0.2 else "interactive"
            prompt = f"Question {rng.randrange(10_000)}: " + "explain it please " * rng.randrange(
                5, 60
            )
        args = (model, system, prompt, rng.randrange(16, 160), slo)
        th = threading.Thread(target=one, args=args)
        th.start()
        threads.append(th)
        stop.wait(rng.expovariate(rate))
    for th in threads:
        th.join(180)


def load_process(base: str, seconds: float, out: Path) -> None:
    """:func:`load` in a process of its own (the client's threads would otherwise compete for
    this process's interpreter with the engine simulators); writes counts and first errors
    to ``out`` as JSON."""
    counts: dict[str, int] = {}
    first_errors: dict[str, str] = {}
    load(base, seconds, threading.Event(), counts, first_errors)
    out.write_text(json.dumps({"counts": counts, "errors": first_errors}))


def query_range(prom: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": STEP_S})
    with urllib.request.urlopen(f"{prom}/api/v1/query_range?{q}", timeout=60) as r:
        body = json.loads(r.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return list(body["data"]["result"])


def grafana_expr(expr: str, dashboard: dict[str, Any]) -> str:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    for v in dashboard["templating"]["list"]:
        current = v.get("current", {}).get("value")
        value = ".*" if current in (None, "$__all") else str(current)
        expr = re.sub(r"\$\{?" + re.escape(v["name"]) + r"\}?\b", value, expr)
    return expr


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or str(labels)


def unit_scale(unit: str) -> tuple[float, str]:
    return {"percentunit": (100.0, "%"), "s": (1.0, "s"), "reqps": (1.0, "req/s"),
            "currencyUSD": (1.0, "USD/h")}.get(unit, (1.0, ""))  # fmt: skip


def plot(
    dashboard: dict[str, Any], prom: str, start: float, end: float, out: Path
) -> tuple[list[str], list[str]]:
    """Draw ``dashboard`` to ``out``; returns the report rows and the titles of empty panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dashboard["panels"])
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(24, rows * 0.62), facecolor="#181b1f")
    grid = fig.add_gridspec(
        rows, 24, hspace=0.0, wspace=0.0, left=0.01, right=0.99, top=0.97, bottom=0.01
    )
    report: list[str] = []
    blanks: list[str] = []
    for p in panels:
        g = p["gridPos"]
        if p["type"] == "row":
            ax = fig.add_subplot(grid[g["y"] : g["y"] + 1, :])
            ax.axis("off")
            ax.text(0.0, 0.2, p["title"], color="#d8d9da", fontsize=14, weight="bold")
            continue
        y0, x0 = g["y"] + 1, g["x"] + 1
        ax = fig.add_subplot(grid[y0 : g["y"] + g["h"] - 1, x0 : g["x"] + g["w"] - 1])
        ax.set_facecolor("#111217")
        for s in ax.spines.values():
            s.set_color("#444")
        ax.tick_params(colors="#aaa", labelsize=8)
        ax.set_title(p["title"], color="#d8d9da", fontsize=11, loc="left")
        scale, suffix = unit_scale(p["fieldConfig"]["defaults"].get("unit", ""))
        drawn = 0
        for i, t in enumerate(p["targets"]):
            # later queries thinner, so series that coincide (desired = existing = ready)
            # stay visible as nested lines
            width = 2.6 - 0.8 * i if len(p["targets"]) > 1 else 1.6
            series = query_range(prom, grafana_expr(t["expr"], dashboard), start, end)
            slo = any(
                o["matcher"]["options"] == t["refId"] for o in p["fieldConfig"].get("overrides", [])
            )
            for s in series:
                xs = [(float(v[0]) - start) / 60 for v in s["values"]]
                ys = [float(v[1]) * scale for v in s["values"]]
                style = {"color": "red", "linestyle": "--"} if slo else {}
                name = legend(t["legendFormat"], s["metric"])
                ax.plot(xs, ys, linewidth=width, label=name, **style)
                drawn += 1
            report.append(f"| {dashboard['title']} | {p['title']} | {t['refId']} | {len(series)} |")
        if drawn:
            ax.legend(fontsize=7, loc="best", facecolor="#181b1f", labelcolor="#ccc",
                      framealpha=0.6, ncol=2)  # fmt: skip
        else:
            blanks.append(p["title"])
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="#888",
                    fontsize=12)  # fmt: skip
        ax.set_xlabel("minutes", color="#888", fontsize=8)
        if suffix:
            ax.set_ylabel(suffix, color="#888", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.set_xlim(0, (end - start) / 60)
    fig.suptitle(dashboard["title"], color="#d8d9da", fontsize=16, x=0.01, ha="left")
    fig.savefig(out, dpi=80, facecolor=fig.get_facecolor(), bbox_inches="tight")
    plt.close(fig)
    return report, blanks


def fleet_manifests(fleet: Path) -> list[dict[str, Any]]:
    """Example 06's profiles, pools and policies as this bench applies them to the cluster:
    every profile tolerates the GPU nodes' taint, and ``chat-large`` scales (mode Manual,
    1..``MAX_REPLICAS`` H100 replicas through the scale subresource), and the policy ``code``
    gets a request budget (``CODE_RATE_LIMIT``)."""
    docs = [d for d in yaml.safe_load_all((fleet / "fleet.yaml").read_text()) if d]
    for d in docs:
        spec = d["spec"]
        if d["kind"] == "AcceleratorProfile":
            spec.setdefault("tolerations", [GPU_TOLERATION])
        if d["kind"] == "ModelPool" and d["metadata"]["name"] == SCALED_POOL:
            for v in spec["variants"]:
                v["minReplicas"], v["maxReplicas"] = 1, MAX_REPLICAS
            spec["scaling"] = {**spec.get("scaling", {}), "mode": "Manual"}
            spec["replicas"] = 1
        if d["kind"] == "RoutingPolicy" and d["metadata"]["name"] == "code":
            spec["rateLimits"] = CODE_RATE_LIMIT
    return docs


def prometheus_config(targets: Path, operator_port: int, scheduler_port: int) -> dict[str, Any]:
    """Scrape the operator and the scheduler by address, and the engine pods from the file
    :func:`discover_engines` keeps (Debian's Prometheus is built without Kubernetes service
    discovery)."""
    return {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "scrape_configs": [
            {"job_name": "engines",
             "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "5s"}]},
            {"job_name": "operator",
             "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"]}]},
            {"job_name": "scheduler",
             "static_configs": [{"targets": [f"127.0.0.1:{scheduler_port}"]}]},
        ],
    }  # fmt: skip


def engine_targets(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the chart's PodMonitor selects and relabels, as Prometheus file_sd target groups:
    engine pods of the operator with a ``modelfleet.io/pool`` label and an IP, scraped on the
    container port named ``http``, labelled pool, variant, namespace (and pod, as Prometheus's
    Kubernetes discovery adds)."""
    groups = []
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        labels = meta.get("labels") or {}
        if (
            labels.get("app.kubernetes.io/component") != "engine"
            or "modelfleet.io/pool" not in labels
        ):
            continue
        ports = [
            p["containerPort"]
            for c in pod["spec"]["containers"]
            for p in c.get("ports") or []
            if p.get("name") == "http"
        ]
        if not status.get("podIP") or not ports:
            continue
        groups.append(
            {
                "targets": [f"{status['podIP']}:{ports[0]}"],
                "labels": {
                    "pool": labels["modelfleet.io/pool"],
                    "variant": labels.get("modelfleet.io/variant", ""),
                    "namespace": meta["namespace"],
                    "pod": meta["name"],
                },
            }
        )
    return groups


def discover_engines(
    list_pods: Callable[[], list[dict[str, Any]]], targets: Path, stop: threading.Event
) -> None:
    """Keep ``targets`` (file_sd JSON) in step with the engine pods, every second."""
    last = None
    while True:
        with contextlib.suppress(Exception):  # the API may be briefly unreachable
            groups = engine_targets(list_pods())
            if groups != last:
                tmp = targets.with_suffix(".tmp")
                tmp.write_text(json.dumps(groups))
                tmp.replace(targets)
                last = groups
        if stop.wait(1.0):
            return


def instant(prom: str, expr: str) -> float:
    q = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{prom}/api/v1/query?{q}", timeout=10) as r:
        result = json.loads(r.read())["data"]["result"]
    return sum(float(s["value"][1]) for s in result)


def external_autoscaler(
    prom: str,
    scale: Callable[[int], None],
    stop: threading.Event,
    log: list[tuple[float, float, int, int]],
    t0: float,
) -> None:
    """What an external autoscaler (KEDA or an HPA on a Prometheus query) does with the
    ModelPool's scale subresource: every ``EVAL_S`` s, replicas = ceil(in-flight requests of
    ``chat-large``'s engines, averaged over 20 s / ``INFLIGHT_PER_REPLICA``), within
    1..``MAX_REPLICAS``; up at once, down one step after two lower readings in a row.
    ``log`` gets (s since t0, in flight, replicas before, after) for every change."""
    sel = f'{{pool="{SCALED_POOL}"}}'
    expr = (f"sum(avg_over_time(vllm:num_requests_running{sel}[20s]))"
            f" + sum(avg_over_time(vllm:num_requests_waiting{sel}[20s]))")  # fmt: skip
    current, lower = 1, 0
    while not stop.wait(EVAL_S):
        try:
            inflight = instant(prom, expr)
        except OSError:
            continue
        want = min(MAX_REPLICAS, max(1, math.ceil(inflight / INFLIGHT_PER_REPLICA)))
        lower = lower + 1 if want < current else 0
        after = want if want > current else current - 1 if lower >= 2 else current
        if after != current:
            scale(after)
            log.append((time.time() - t0, inflight, current, after))
            current, lower = after, 0


def wait_answer(base: str, model: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Until one chat request for ``model`` is answered through the scheduler."""
    body = json.dumps({"model": model, "max_tokens": 4,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()  # fmt: skip
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the scheduler exited with {proc.returncode}")
        req = urllib.request.Request(
            f"{base}/v1/chat/completions", body, {"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                if r.status == 200:
                    return
        except OSError as err:
            last = str(err)
        time.sleep(1)
    raise RuntimeError(f"no answer for {model} within {timeout_s} s: {last}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="load duration (300)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "dashboards")
    parser.add_argument("--fleet", type=Path, default=FLEET, help="a local fleet (example 06)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups on SIGTERM
    prom_bin = shutil.which("prometheus")
    if prom_bin is None:
        print("needs Prometheus: apt-get install prometheus", file=sys.stderr)
        return 2
    from modelfleet.operator.kube import Kube
    from modelfleet.testing.cluster import Cluster, ClusterError, locate_binaries
    from modelfleet.testing.kwok_engines import KwokEngines

    try:
        binaries = locate_binaries(build=False)
    except ClusterError as err:
        print(f"needs the control plane (e2e/controlplane/build.sh): {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    first_errors: dict[str, str] = {}
    scale_log: list[tuple[float, float, int, int]] = []
    with (
        contextlib.ExitStack() as stack,
        tempfile.TemporaryDirectory(prefix="mf-dash-") as tmp_s,
        Cluster(binaries, log_dir=Path(tmp_s) / "controlplane", pod_cidr=POD_CIDR) as cluster,
    ):
        tmp = Path(tmp_s)
        for crd in sorted((REPO / "crds").glob("*.yaml")):
            cluster.kubectl("apply", "--server-side", "-f", str(crd))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        docs = fleet_manifests(args.fleet)
        cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(docs))
        pools = [d["metadata"]["name"] for d in docs if d["kind"] == "ModelPool"]
        op_port, sched_port, prom_port, no_control = (free_port() for _ in range(4))
        (tmp / "token").write_text("bench\n")
        targets = tmp / "engines.json"
        targets.write_text("[]")
        (tmp / "prometheus.yml").write_text(
            yaml.safe_dump(prometheus_config(targets, op_port, sched_port))
        )
        modelfleet = str(Path(sys.executable).parent / "modelfleet")
        kube = Kube(cluster.api_client)
        operator = [modelfleet, "operator", "--kubeconfig", str(cluster.kubeconfig), "-n", NS,
                    "--resync-seconds", "2", "--metrics-port", str(op_port),
                    "--metrics-address", "127.0.0.1", "--health-port", "0",
                    "--scheduler-address", f"127.0.0.1:{no_control}",
                    "--scheduler-token-file", str(tmp / "token")]  # fmt: skip
        scheduler = [modelfleet, "scheduler", "--kubernetes", "--kubeconfig",
                     str(cluster.kubeconfig), "--namespace", NS, "--no-ray",
                     "--port", str(sched_port)]  # fmt: skip
        prometheus = [prom_bin, f"--config.file={tmp / 'prometheus.yml'}",
                      f"--storage.tsdb.path={tmp / 'tsdb'}",
                      f"--web.listen-address=127.0.0.1:{prom_port}"]  # fmt: skip
        selector = "app.kubernetes.io/managed-by=modelfleet-operator"
        discovery_stop = threading.Event()
        discovery = threading.Thread(
            target=discover_engines,
            args=(lambda: kube.list_objects("Pod", NS, selector), targets, discovery_stop),
            daemon=True,
        )
        discovery.start()
        stack.callback(discovery.join)
        stack.callback(discovery_stop.set)
        engines = KwokEngines(lambda ns, sel: kube.list_objects("Pod", ns, sel), NS, time_scale=1.0)
        with (
            engines,
            process(operator, tmp / "operator.log") as op_proc,
            process(scheduler, tmp / "scheduler.log") as sched,
            process(prometheus, tmp / "prom.log") as prom_proc,
        ):
            base = f"http://127.0.0.1:{sched_port}"
            prom = f"http://127.0.0.1:{prom_port}"
            try:
                engines.wait_for(len(pools), timeout=180)
                wait_http(f"{base}/health", sched, 300)
                wait_http(f"{prom}/-/ready", prom_proc)
                wait_http(f"http://127.0.0.1:{op_port}/metrics", op_proc)
                for model in ("chat", "code"):
                    wait_answer(base, model, sched, 120)
            except (RuntimeError, TimeoutError):
                sys.stderr.write(f"--- kwok engines: {engines.errors}\n")
                for name in ("operator", "scheduler", "prom"):
                    sys.stderr.write(f"--- {name}\n{(tmp / f'{name}.log').read_text()[-3000:]}")
                raise
            time.sleep(10 * SCRAPE_S)  # a flat start on every panel
            start = time.time()
            load_before = os.getloadavg()[1]
            stop = threading.Event()

            def scale(n: int) -> None:
                cluster.kubectl("scale", "-n", NS, f"modelpool/{SCALED_POOL}", f"--replicas={n}")

            scaler = threading.Thread(
                target=external_autoscaler, args=(prom, scale, stop, scale_log, start)
            )
            scaler.start()
            try:
                client = multiprocessing.get_context("spawn").Process(
                    target=load_process, args=(base, args.seconds, tmp / "load.json")
                )
                client.start()
                client.join(args.seconds + 300)
                if client.is_alive():
                    client.terminate()
                    client.join()
                    raise RuntimeError("the load client did not finish")
                done = json.loads((tmp / "load.json").read_text())
                counts, first_errors = done["counts"], done["errors"]
                time.sleep(TAIL_S)  # the last scale-down and its drain
            finally:
                stop.set()
                scaler.join()
            end = time.time()
            load_after = os.getloadavg()[1]
            report: list[str] = []
            empty: list[str] = []
            for path in sorted(DASHBOARDS.glob("*.json")):
                dashboard = json.loads(path.read_text())
                rows, blanks = plot(dashboard, prom, start, end, args.out / f"{path.stem}.png")
                report += rows
                empty += [f"{dashboard['title']} / {t}" for t in blanks]
            served = sorted(engines.served_ever)
            problems = list(engines.errors)
            op_log = (tmp / "operator.log").read_text(errors="replace")
            if "Traceback" in op_log:
                problems.append("the operator logged a traceback: " + op_log[-1500:])
    cmd = "python bench/dashboards.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    lines = [
        f"# {cmd}",
        "",
        "The whole system on the real control plane (`modelfleet.testing.cluster`: etcd, "
        "kube-apiserver, controller-manager, scheduler, kwok GPU nodes; pod IPs on 127.42.x.x): "
        f"example 06's profiles, pools and policies applied with kubectl; `modelfleet operator` "
        f"(metrics port) creating the engine Deployments; kwok running the pods and an engine "
        f"simulator (time scale 1.0) serving each pod's IP ({len(served)} pods served in all); "
        "`modelfleet scheduler --kubernetes --no-ray` in front, discovering the pods; Debian's "
        f"Prometheus scraping operator, scheduler and engines every {SCRAPE_S} s (engines by "
        "a file_sd list this script keeps from the API server's pods every second, selected and "
        "labelled as the chart's PodMonitor does: Debian's Prometheus has no Kubernetes "
        "discovery). Load: "
        f"{args.seconds:.0f} s of OpenAI chat requests (75 % model `chat` with header "
        "`x-slo-class` 4:1 interactive:batch, 25 % `code`) ramping 0.5 -> 6 -> 0.5 req/s, "
        f"plus at 60 % of the run a {BURST_S:.0f} s burst of {BURST_RATE:.0f} req/s of "
        f"prefix-free {BURST_PROMPT_WORDS}-word interactive chat prompts, then {TAIL_S} s "
        "idle. Added to example 06 for this run: `chat-large` scales 1..4 (below), and the "
        f"policy `code` has `rateLimits: {json.dumps(CODE_RATE_LIMIT)}`. Requests: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + ".",
        "",
        f"The machine (2 cores, shared with other work) had a 5-minute load average of "
        f"{load_before:.1f} at the start and {load_after:.1f} at the end: the engine simulators "
        "sleep in real time, so their latencies include what CPU contention adds to every "
        "step; read the latency panels as this machine's, not as the simulated GPUs'.",
        "",
        "What moves the replica panels: nothing serves the scheduler's gRPC control API yet "
        "(issue 16), so the SLO autoscaler has no Stats. This bench plays an external "
        f"autoscaler (KEDA-style) on `{SCALED_POOL}` (mode Manual): every {EVAL_S} s it reads "
        "the pool engines' running + waiting requests from Prometheus and sets "
        f"`kubectl scale modelpool/{SCALED_POOL} --replicas=N` (N = ceil(in flight / "
        f"{INFLIGHT_PER_REPLICA}), 1..{MAX_REPLICAS}, down one step after two lower readings). "
        "The operator does the rest: Deployment replicas, scale decisions (reason `manual`), "
        "cost, and a drain before each scale-down. The operator is given a control-API address "
        "where nothing listens, so each drain ends `unavailable` and the pod goes with its "
        "preStop wait (kwok engines keep serving a leaving pod until its requests finish).",
        "",
        "| t (s) | in flight | replicas |",
        "| --- | --- | --- |",
        *[f"| {t:.0f} | {x:.1f} | {a} -> {b} |" for t, x, a, b in scale_log],
        "",
        *[f"![{p.stem}](dashboards/{p.stem}.png)" for p in sorted(DASHBOARDS.glob("*.json"))],
        "",
        "Panels without data: "
        + (
            "none."
            if not empty
            else "; ".join(
                f"{e} ({EMPTY_BECAUSE.get(e.split(' / ')[-1], 'no reason known')})" for e in empty
            )
        ),
        *(["", "Problems: " + "; ".join(problems)] if problems else []),
        *(["", "First error of each kind the client saw:", ""] if first_errors else []),
        *[f"- {k}: {v}" for k, v in sorted(first_errors.items())],
        "",
        "| dashboard | panel | query | series |",
        "| --- | --- | --- | --- |",
        *report,
    ]
    (args.out.parent / "dashboards.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
