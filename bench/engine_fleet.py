"""How many simulated engines one machine runs: memory and CPU per engine, idle and loaded.

Starts N ``modelfleet engine`` processes (real processes, real HTTP on loopback, mixed
accelerators), waits until each answers ``/health``, then measures

* idle: RSS per engine (from /proc) and CPU seconds used by all engines over an idle window;
* loaded: C concurrent streaming completions per engine, all engines at once; every stream
  must deliver exactly ``max_tokens`` tokens. Reports wall time and engine CPU seconds.

Usage: ``python bench/engine_fleet.py [--engines 16] [--streams 8] [--tokens 128]
[--out bench/results/engine-fleet.md]``. Only loopback traffic; every process is stopped at
the end, also on error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ACCELERATORS = ("h100-80gb", "a100-80gb", "l40s", "l4")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Engine:
    proc: subprocess.Popen[str]
    url: str
    accelerator: str


def start(n: int, time_scale: float) -> list[Engine]:
    engines = []
    for i in range(n):
        acc = ACCELERATORS[i % len(ACCELERATORS)]
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelfleet.engine",
                "--accelerator",
                acc,
                "--model",
                "llama-3-8b",
                "--port",
                "0",
                "--time-scale",
                str(time_scale),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        engines.append(Engine(proc, "", acc))
    for e in engines:
        assert e.proc.stdout is not None
        line = e.proc.stdout.readline()
        m = re.search(r"listening on (http://\S+)", line)
        if not m:
            raise RuntimeError(f"engine did not start: {line!r}")
        e.url = m.group(1)
    return engines


def stop(engines: list[Engine]) -> None:
    for e in engines:
        if e.proc.poll() is None:
            os.killpg(e.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for e in engines:
        try:
            e.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(e.proc.pid, signal.SIGKILL)
            e.proc.wait()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def wait_healthy(engines: list[Engine]) -> None:
    async with aiohttp.ClientSession() as s:
        for e in engines:
            for _ in range(300):
                try:
                    async with s.get(e.url + "/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"{e.url} never became healthy")


async def stream(s: aiohttp.ClientSession, url: str, tokens: int) -> int:
    body = {
        "model": "llama-3-8b",
        "prompt": "Tell me about GPUs. " * 40,
        "max_tokens": tokens,
        "stream": True,
        "ignore_eos": True,
    }
    got = 0
    async with s.post(url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                got += sum(1 for c in chunk["choices"] if c.get("text") is not None)
    return got


async def load(engines: list[Engine], streams: int, tokens: int) -> tuple[float, list[int]]:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(600)) as s:
        t0 = time.perf_counter()
        counts = await asyncio.gather(
            *(stream(s, e.url, tokens) for e in engines for _ in range(streams))
        )
        return time.perf_counter() - t0, list(counts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", type=int, default=16)
    ap.add_argument("--streams", type=int, default=8, help="concurrent streams per engine")
    ap.add_argument("--tokens", type=int, default=128, help="max_tokens per stream")
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    t0 = time.perf_counter()
    engines = start(args.engines, args.time_scale)
    try:
        asyncio.run(wait_healthy(engines))
        startup = time.perf_counter() - t0
        rss = [rss_mib(e.proc.pid) for e in engines]
        cpu0 = sum(cpu_s(e.proc.pid) for e in engines)
        time.sleep(args.idle_seconds)
        idle_cpu = sum(cpu_s(e.proc.pid) for e in engines) - cpu0
        cpu1 = sum(cpu_s(e.proc.pid) for e in engines)
        wall, counts = asyncio.run(load(engines, args.streams, args.tokens))
        load_cpu = sum(cpu_s(e.proc.pid) for e in engines) - cpu1
        rss_loaded = [rss_mib(e.proc.pid) for e in engines]
        alive = sum(e.proc.poll() is None for e in engines)
    finally:
        stop(engines)
    complete = sum(c == args.tokens for c in counts)
    lines = [
        "# Simulated engines on one machine",
        "",
        f"- Command: `python bench/engine_fleet.py --engines {args.engines} --streams "
        f"{args.streams} --tokens {args.tokens}`",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cpus, Python "
        f"{platform.python_version()}; load average at the end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- Engines: {args.engines} × llama-3-8b over {', '.join(ACCELERATORS)}, time scale "
        f"{args.time_scale}",
        "",
        "| what | figure |",
        "| --- | --- |",
        f"| all engines started and healthy | {startup:.1f} s |",
        f"| idle RSS per engine (min / median / max) | {min(rss):.1f} / "
        f"{sorted(rss)[len(rss) // 2]:.1f} / {max(rss):.1f} MiB |",
        f"| idle CPU, all engines, over {args.idle_seconds:.0f} s | {idle_cpu:.2f} CPU-s |",
        f"| streams completed with every token | {complete} / {len(counts)} |",
        f"| load: wall time for all streams | {wall:.2f} s |",
        f"| load: engine CPU, all engines | {load_cpu:.2f} CPU-s |",
        f"| RSS per engine after load (max) | {max(rss_loaded):.1f} MiB |",
        f"| engines alive at the end | {alive} / {args.engines} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if complete == len(counts) and alive == args.engines else 1


if __name__ == "__main__":
    sys.exit(main())
