"""Streams dropped mid-flight through ``modelfleet scheduler`` under Ray Serve: what it costs.

    .venv/bin/python bench/scheduler_drop.py --streams 300 --concurrency 50 \
        --intervals 0 0.05 --out bench/results/scheduler-dataplane.md

Two real-time engine simulators (``--time-scale 1``, H100, Llama-3-8B) behind one scheduler
(one Serve replica, Serve's HTTP proxy). ``--streams`` clients, ``--concurrency`` at a time,
each ask for 4000 tokens and hang up after the first token. For each ``--write-interval`` a
fresh scheduler runs the same load; measured from outside, on the engines' own ``/metrics``:

* drop phase: wall seconds until every client got its first token and hung up;
* peak running+waiting on the engines during it (the clients hold at most ``concurrency``
  requests; anything above is requests whose client was gone and the abort had not reached);
* drain: seconds from the last hang-up until the engines run nothing;
* tokens generated in all, against ``streams`` × 1 wanted.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import signal
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.scheduler.conftest import free_port, start_scheduler, wait_listening
from tests.scheduler.fleet_helpers import (
    endpoints_yaml,
    fleet_yaml,
    pool_yaml,
    start_engine,
    stop_all,
)

POLICY = """apiVersion: modelfleet.io/v1alpha1
kind: RoutingPolicy
metadata: {name: steady, namespace: default}
spec:
  modelNames: [steady]
  defaultTargets: [{pool: steady}]
"""


def _metric(urls: list[str], *names: str) -> float:
    total = 0.0
    for url in urls:
        for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
            if line.startswith(tuple(n + "{" for n in names)):
                total += float(line.rsplit(" ", 1)[1])
    return total


def run_one(interval: float, streams: int, concurrency: int, work: Path) -> dict[str, float]:
    engines = [start_engine("steady-8b", time_scale=1.0) for _ in range(2)]
    urls = [e.url for e in engines]
    work.mkdir(parents=True, exist_ok=True)
    rows = [("steady", "h100", e) for e in engines]
    pool = pool_yaml("steady", "steady-8b", {"h100": "h100-80gb"})
    (work / "fleet.yaml").write_text(fleet_yaml(pool, POLICY, endpoints_yaml(rows)))
    proc = start_scheduler(work / "fleet.yaml", free_port(), "--write-interval", str(interval))
    running = ("vllm:num_requests_running", "vllm:num_requests_waiting")
    try:
        url = wait_listening(proc)
        gen0 = _metric(urls, "vllm:generation_tokens_total")

        async def drop(client: httpx.AsyncClient, sem: asyncio.Semaphore, i: int) -> None:
            body = {
                "model": "steady", "messages": [{"role": "user", "content": f"drop {i}"}],
                "max_tokens": 4000, "ignore_eos": True, "stream": True,
            }  # fmt: skip
            async with sem, client.stream("POST", "/v1/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if '"token_ids"' in line and '"content":""' not in line:
                        return

        async def load() -> None:
            limits = httpx.Limits(max_connections=concurrency)
            async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600) as client:
                sem = asyncio.Semaphore(concurrency)
                await asyncio.gather(*(drop(client, sem, i) for i in range(streams)))

        peak = [0.0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.5):
                peak[0] = max(peak[0], _metric(urls, *running))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        asyncio.run(load())
        phase = time.monotonic() - t0
        done.set()
        sampler.join()
        t1 = time.monotonic()
        while _metric(urls, *running) > 0 and time.monotonic() - t1 < 300:
            time.sleep(0.2)
        drain = time.monotonic() - t1
        generated = _metric(urls, "vllm:generation_tokens_total") - gen0
        return {"phase": phase, "peak": peak[0], "drain": drain, "generated": generated}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except Exception:
            proc.kill()
        stop_all(engines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--intervals", type=float, nargs="+", default=[0.0, 0.05])
    ap.add_argument("--work", type=Path, default=Path("/tmp/modelfleet-bench-drop"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    results = {
        i: run_one(i, args.streams, args.concurrency, args.work / f"w{i}") for i in args.intervals
    }
    cmd = " ".join(["bench/scheduler_drop.py", *sys.argv[1:]])
    lines = [
        "# Streams dropped mid-flight through the scheduler under Ray Serve",
        "",
        f"Generated by `.venv/bin/python {cmd}` on CPython {platform.python_version()}, "
        f"{platform.machine()} (2 cores shared with other jobs: wall times move with the load).",
        "",
        f"{args.streams} clients, {args.concurrency} at a time, each asking for 4000 tokens from "
        "two real-time engine simulators and hanging up after the first token; one Serve "
        "replica behind Serve's HTTP proxy. `--write-interval 0` writes each token as it "
        "arrives (one Serve message per token per stream); 0.05 batches a stream's tokens "
        "every 50 ms after its first.",
        "",
        "| --write-interval | drop phase s | peak engine running+waiting | drain after last "
        "hang-up s | tokens generated |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, r in results.items():
        lines.append(
            f"| {i:g} | {r['phase']:.1f} | {r['peak']:.0f} | {r['drain']:.1f} | "
            f"{r['generated']:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
