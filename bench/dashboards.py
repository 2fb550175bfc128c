"""Render the Grafana dashboards as a person would see them, from a real Prometheus.

No Grafana here (neither PyPI nor Debian ships it), so this does what Grafana does with each
panel: a real Prometheus (Debian's ``prometheus`` package: ``apt-get install prometheus``)
scrapes a local fleet on loopback — ``modelfleet scheduler --no-ray --launch-engines`` over
example 06's engines (simulated vLLM, vLLM's metric names) — while a client sends OpenAI
chat requests at a rate that ramps up and down; then every panel's expression is sent to
Prometheus's ``query_range`` API with Grafana's variables filled in, and the series are drawn
in the dashboard's own grid (gridPos), titled and with legends from ``legendFormat``.

Panels whose metrics come from a component that is not running here (the operator needs a
cluster) are drawn empty and marked "no data".

    python bench/dashboards.py [--seconds 240] [--out bench/results/dashboards]

Writes ``<out>/<dashboard>.png`` and ``bench/results/dashboards.md`` (the command, the load,
and the number of series each panel returned).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = REPO / "charts" / "modelfleet" / "dashboards"
FLEET = REPO / "examples" / "06-local-fleet"
SCRAPE_S = 1
RATE_INTERVAL = "15s"  # Grafana's $__rate_interval: 4 x the scrape interval, rounded up
STEP_S = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_fleet(fleet: Path, tmp: Path) -> list[dict[str, str]]:
    """Example 06 copied to ``tmp`` with its engines on free ports; returns the endpoints."""
    tmp.mkdir()
    shutil.copy(fleet / "fleet.yaml", tmp / "fleet.yaml")
    doc = yaml.safe_load((fleet / "endpoints.yaml").read_text())
    for e in doc["spec"]["endpoints"]:
        e["url"] = f"http://127.0.0.1:{free_port()}"
    (tmp / "endpoints.yaml").write_text(yaml.safe_dump(doc))
    return list(doc["spec"]["endpoints"])


def prometheus_config(endpoints: list[dict[str, str]], scheduler_port: int) -> dict[str, Any]:
    """Scrape targets labelled as the chart's PodMonitor relabels engine pods."""
    engine_groups = [
        {
            "targets": [e["url"].removeprefix("http://")],
            "labels": {
                "namespace": "default",
                "pool": e["pool"],
                "variant": e["variant"],
                "pod": f"{e['pool']}-{e['variant']}-{i}",
            },
        }
        for i, e in enumerate(endpoints)
    ]
    return {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "scrape_configs": [
            {"job_name": "engines", "static_configs": engine_groups},
            {
                "job_name": "scheduler",
                "static_configs": [{"targets": [f"127.0.0.1:{scheduler_port}"]}],
            },
        ],
    }


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


def load(base: str, seconds: float, stop: threading.Event, counts: dict[str, int]) -> None:
    """Chat and code requests, Poisson arrivals at a rate ramping 0.5 -> 6 -> 0.5 req/s, with
    shared system prompts (so prefix hits show)."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{base}/v1", api_key="bench", max_retries=0, timeout=120)
    rng = random.Random(0)
    house = "Follow the house style. " * 40
    systems = [f"You are assistant number {i}. {house}" for i in range(4)]
    lock = threading.Lock()

    def one(model: str, prompt: str, max_tokens: int) -> None:
        try:
            stream = client.chat.completions.create(
                model=model,
                messages=[
                    {"role": "system", "content": rng.choice(systems)},
                    {"role": "user", "content": prompt},
                ],
                max_tokens=max_tokens,
                stream=True,
            )
            for _ in stream:
                pass
            key = "ok"
        except Exception as err:  # counted, shown in the results
            key = type(err).__name__
        with lock:
            counts[key] = counts.get(key, 0) + 1

    start = time.monotonic()
    threads: list[threading.Thread] = []
    while not stop.is_set() and (t := time.monotonic() - start) < seconds:
        rate = 0.5 + 5.5 * math.sin(math.pi * t / seconds) ** 2
        model = "code" if rng.random() < 0.25 else "chat"
        prompt = f"Question {rng.randrange(10_000)}: " + "explain it please " * rng.randrange(5, 60)
        th = threading.Thread(target=one, args=(model, prompt, rng.randrange(16, 160)))
        th.start()
        threads.append(th)
        stop.wait(rng.expovariate(rate))
    for th in threads:
        th.join(180)


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


def plot(dashboard: dict[str, Any], prom: str, start: float, end: float, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dashboard["panels"])
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(24, rows * 0.62), facecolor="#181b1f")
    grid = fig.add_gridspec(
        rows, 24, hspace=0.0, wspace=0.0, left=0.01, right=0.99, top=0.97, bottom=0.01
    )
    report = []
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
        for t in p["targets"]:
            series = query_range(prom, grafana_expr(t["expr"], dashboard), start, end)
            slo = any(
                o["matcher"]["options"] == t["refId"] for o in p["fieldConfig"].get("overrides", [])
            )
            for s in series:
                xs = [(float(v[0]) - start) / 60 for v in s["values"]]
                ys = [float(v[1]) * scale for v in s["values"]]
                style = {"color": "red", "linestyle": "--"} if slo else {}
                name = legend(t["legendFormat"], s["metric"])
                ax.plot(xs, ys, linewidth=1.6, label=name, **style)
                drawn += 1
            report.append(f"| {dashboard['title']} | {p['title']} | {t['refId']} | {len(series)} |")
        if drawn:
            ax.legend(fontsize=7, loc="upper left", facecolor="#181b1f", labelcolor="#ccc",
                      framealpha=0.6, ncol=2)  # fmt: skip
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="#888",
                    fontsize=12)  # fmt: skip
        ax.set_xlabel("minutes", color="#888", fontsize=8)
        if suffix:
            ax.set_ylabel(suffix, color="#888", fontsize=8)
        ax.set_ylim(bottom=0)
    fig.suptitle(dashboard["title"], color="#d8d9da", fontsize=16, x=0.01, ha="left")
    fig.savefig(out, dpi=60, facecolor=fig.get_facecolor(), bbox_inches="tight")
    plt.close(fig)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0, help="load duration (240)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "dashboards")
    parser.add_argument("--fleet", type=Path, default=FLEET, help="a local fleet (example 06)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups on SIGTERM
    prom_bin = shutil.which("prometheus")
    if prom_bin is None:
        print("needs Prometheus: apt-get install prometheus", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mf-dash-") as tmp_s:
        tmp = Path(tmp_s)
        endpoints = local_fleet(args.fleet, tmp / "fleet")
        sched_port, prom_port = free_port(), free_port()
        (tmp / "prometheus.yml").write_text(
            yaml.safe_dump(prometheus_config(endpoints, sched_port))
        )
        modelfleet = str(Path(sys.executable).parent / "modelfleet")
        scheduler = [modelfleet, "scheduler", "--config", str(tmp / "fleet"), "--launch-engines",
                     "--no-ray", "--port", str(sched_port)]  # fmt: skip
        prometheus = [prom_bin, f"--config.file={tmp / 'prometheus.yml'}",
                      f"--storage.tsdb.path={tmp / 'tsdb'}",
                      f"--web.listen-address=127.0.0.1:{prom_port}"]  # fmt: skip
        counts: dict[str, int] = {}
        with (
            process(scheduler, tmp / "scheduler.log") as sched,
            process(prometheus, tmp / "prom.log") as prom_proc,
        ):
            base = f"http://127.0.0.1:{sched_port}"
            prom = f"http://127.0.0.1:{prom_port}"
            try:
                wait_http(f"{base}/health", sched, 300)
                wait_http(f"{prom}/-/ready", prom_proc)
            except RuntimeError:
                sys.stderr.write((tmp / "scheduler.log").read_text()[-3000:])
                raise
            start = time.time()
            load(base, args.seconds, threading.Event(), counts)
            time.sleep(3 * SCRAPE_S)
            end = time.time()
            report: list[str] = []
            for path in sorted(DASHBOARDS.glob("*.json")):
                dashboard = json.loads(path.read_text())
                report += plot(dashboard, prom, start, end, args.out / f"{path.stem}.png")
    cmd = "python bench/dashboards.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    lines = [
        f"# {cmd}",
        "",
        "Dashboards rendered from a real Prometheus (Debian's prometheus, scraping every "
        f"{SCRAPE_S} s) over `modelfleet scheduler --no-ray --launch-engines` on example 06 "
        f"(4 simulated vLLM engines), {args.seconds:.0f} s of OpenAI chat requests ramping "
        "0.5 -> 6 -> 0.5 req/s. Requests: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + ". The operator does not run here (it needs a cluster): its panels are empty.",
        "",
        *[f"![{p.stem}](dashboards/{p.stem}.png)" for p in sorted(DASHBOARDS.glob("*.json"))],
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
