"""Timing model v2 against public measurements of real vLLM at several concurrencies.

    .venv/bin/python bench/engine_fidelity.py            # fit the host overheads, report
    .venv/bin/python bench/engine_fidelity.py --check    # committed constants only, report

Each public point is a closed-loop run of real vLLM (``vllm bench serve --max-concurrency C``
or an equivalent client): C requests in flight, a finished one replaced at once, fixed prompt
and output lengths, random prompts (no prefix hits). The simulator replays the same loop in
virtual time on `EngineCore` with vLLM's default scheduler budget for that GPU (the C streams
started evenly over one unloaded request lifetime, as jitter spreads a real loop), and the
front end's per-request latency (`request_overhead`) added before a request reaches the core
and to its TTFT. Reported per point: median TTFT, mean TPOT, output throughput, sim/real.

Fit: the three host-side constants of timing model v2, `per_seq_overhead` (per sequence per
step), `request_overhead` (per request) and `request_overhead_per_stream` (the front end's
per-request latency grows with the streams it already serves), by
`scipy.optimize.least_squares` on the log ratios of TTFT and TPOT of the points marked
``fit``; the kernel constants stay as fitted to the kernel tables (bench/engine_calibration.py).
Points marked ``held out`` are reported only.
Writes bench/results/engine-fidelity.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from modelfleet.engine.core import EngineConfig, EngineCore, EngineRequest
from modelfleet.engine.profiles import get_accelerator, vllm_default_max_num_batched_tokens
from modelfleet.engine.timing import HOST_OVERHEADS, StepTimer, params_for

OUT = Path(__file__).resolve().parent / "results" / "engine-fidelity.md"


@dataclass(frozen=True)
class Source:
    key: str
    where: str
    setup: str


SOURCES = [
    Source(
        "L4",
        "https://ai.wmx.dev/benchmarks (serving/raw-vllm concurrency sweep)",
        "1x L4, Qwen2.5-0.5B-Instruct bf16, vLLM 0.23.0 (V1), --gpu-memory-utilization 0.6 "
        "--max-model-len 8192, vllm bench serve random 256 in / 128 out, --ignore-eos, "
        "closed loop; TTFT p50, ITL p50 (= TPOT), output tok/s",
    ),
    Source(
        "H100",
        "https://yobitelcomm.github.io/bench/recipes/concurrency-sweep/ (InferenceBench)",
        "1x H100-80GB-HBM3, Llama-3.1-8B-Instruct fp16, vLLM 0.21.0, scenario "
        "llm.inference.chatbot-short; TTFT p50, TPOT p50, throughput. The scenario's lengths "
        "are not published: 512 in / 128 out is ASSUMED here",
    ),
    Source(
        "4090",
        "https://mushfiqrahman.dev/?p=1668",
        "1x RTX 4090 24GB, Mistral-7B-Instruct-v0.3, vLLM, 256 in / 128 out, 300 prompts, "
        "request rate inf, max concurrency C; median TTFT, req/s, output tok/s; TPOT derived "
        "here by Little's law: (C / req/s - mean TTFT) / 127",
    ),
    Source(
        "A100",
        "https://johnmusgrave.com/p/vllm-throughput-latency-sweep-on",
        "1x A100 40GB, Llama-3.1-8B-Instruct bf16, vLLM 0.23.0 defaults, random 1024 in / "
        "128 out, --ignore-eos; only the text's figures: ~75 tok/s decode at C=1, "
        "6.6x the C=1 throughput at C=8",
    ),
]


@dataclass(frozen=True)
class Point:
    source: str
    accelerator: str
    model: str
    prompt: int
    output: int
    concurrency: int
    ttft_ms: float | None
    tpot_ms: float | None
    tok_s: float | None
    fit: bool


def _l4(c: int, ttft: float, itl: float, tps: float) -> Point:
    return Point("L4", "l4", "qwen2.5-0.5b", 256, 128, c, ttft, itl, tps, fit=c <= 16)


def _h100(c: int, ttft: float, tpot: float, tps: float) -> Point:
    return Point("H100", "h100-80gb", "llama-3.1-8b", 512, 128, c, ttft, tpot, tps, fit=c <= 4)


def _4090(c: int, req_s: float, tps: float, ttft_mean: float) -> Point:
    tpot = (c / req_s - ttft_mean / 1e3) / 127 * 1e3
    return Point("4090", "rtx-4090", "mistral-7b", 256, 128, c, ttft_mean, tpot, tps, fit=False)


POINTS: list[Point] = [
    _l4(1, 27.0, 5.1, 168),
    _l4(2, 37.8, 5.2, 367),
    _l4(4, 50.1, 5.3, 698),
    _l4(8, 60.9, 5.5, 1312),
    _l4(16, 103.8, 6.0, 2277),
    _l4(32, 135.3, 7.1, 3773),
    _h100(1, 13.98, 6.48, 122.2),
    _h100(4, 22.75, 6.59, 580.3),
    _h100(16, 41.69, 10.94, 1384.2),
    _h100(64, 86.92, 46.91, 1312.3),
    _4090(4, 2.09, 210, 63),
    _4090(8, 3.78, 377, 79),
    _4090(16, 6.44, 644, 155),
    _4090(32, 9.73, 975, 362),
    Point("A100", "a100-40gb", "llama-3.1-8b", 1024, 128, 1, None, 1e3 / 75, 75.0, fit=False),
]


@dataclass
class SimResult:
    ttft_ms: float  # median
    tpot_ms: float  # mean over requests
    tok_s: float


def simulate(
    p: Point, per_seq: float, per_request: float, per_stream: float, rounds: int = 12
) -> SimResult:
    """Closed loop of ``p.concurrency`` streams in virtual time on one engine core."""
    accel = get_accelerator(p.accelerator)
    cfg = EngineConfig.for_model(
        p.accelerator,
        p.model,
        max_num_batched_tokens=vllm_default_max_num_batched_tokens(accel),
        max_model_len=max(4096, p.prompt + p.output + 16),
    )
    params = dataclasses.replace(
        params_for(accel),
        per_seq_overhead=per_seq,
        request_overhead=per_request,
        request_overhead_per_stream=per_stream,
    )
    core = EngineCore(cfg, next_token=lambda ctx: 1000 + len(ctx) % 1000, eos_token_id=None)
    core.timer = StepTimer(core.accelerator_spec, core.model_spec, 1, params)
    total = p.concurrency * rounds
    t = 0.0
    pending: list[tuple[float, float, int]] = []  # (enters core, arrival, index)
    arrival: dict[str, float] = {}
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    sent = 0

    def send(now: float) -> None:
        nonlocal sent
        in_flight = len(arrival) - len(done) + len(pending)
        pending.append((now + core.timer.front_end_latency(in_flight), now, sent))
        sent += 1

    # Real closed loops do not stay in lockstep (client and server jitter spread the streams
    # out); start the C streams evenly over one request's unloaded lifetime instead of at once.
    life = core.timer.prefill_time(p.prompt) + p.output * core.timer.decode_time(1, p.prompt)
    for i in range(min(p.concurrency, total)):
        send(i * life / p.concurrency)
    while len(done) < total:
        pending.sort()
        while pending and pending[0][0] <= t:
            _, arr, i = pending.pop(0)
            rid = f"r{i}"
            base = 7919 * (i + 1)
            prompt = [(base + 31 * k) % 100_000 + 10 for k in range(p.prompt)]
            core.add_request(EngineRequest(rid, prompt, p.output, p.output, ignore_eos=True))
            arrival[rid] = arr
        if not core.has_unfinished():
            t = pending[0][0]
            continue
        res = core.step()
        t += res.duration
        for out in res.outputs:
            first.setdefault(out.request_id, t)
            if out.finished:
                done[out.request_id] = t
                if sent < total:
                    send(t)
    warm = sorted(done, key=lambda r: arrival[r])[p.concurrency :] or list(done)
    ttfts = [first[r] - arrival[r] for r in warm]
    tpots = [(done[r] - first[r]) / (p.output - 1) for r in warm]
    span = max(done.values()) - min(arrival[r] for r in warm)
    return SimResult(
        1e3 * statistics.median(ttfts),
        1e3 * statistics.fmean(tpots),
        len(warm) * p.output / span,
    )


def _residuals(x: Sequence[float], points: list[Point]) -> np.ndarray:
    per_seq, per_request, per_stream = (math.exp(v) for v in x)
    out: list[float] = []
    for p in points:
        s = simulate(p, per_seq, per_request, per_stream, rounds=6)
        if p.ttft_ms is not None:
            out.append(math.log(s.ttft_ms / p.ttft_ms))
        if p.tpot_ms is not None:
            out.append(math.log(s.tpot_ms / p.tpot_ms))
    return np.asarray(out)


def fit(points: list[Point]) -> tuple[float, float, float]:
    res = least_squares(
        _residuals, x0=np.log([3e-5, 5e-3, 1e-3]), args=(points,), diff_step=0.05, max_nfev=80
    )
    a, b, c = (math.exp(v) for v in res.x)
    return a, b, c


def _ratio(sim: float | None, real: float | None) -> str:
    if sim is None or real is None:
        return "-"
    return f"{sim / real:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="use the committed constants only")
    args = ap.parse_args(argv)
    if args.check:
        per_seq, per_request, per_stream = HOST_OVERHEADS
    else:
        per_seq, per_request, per_stream = fit([p for p in POINTS if p.fit])
        print(
            f"HOST_OVERHEADS = ({per_seq:.4g}, {per_request:.4g}, {per_stream:.4g})  "
            "# paste into modelfleet/engine/timing.py"
        )
    rows = []
    worst = {"fit": [0.0, 0.0], "held out": [0.0, 0.0]}
    for p in POINTS:
        v1 = simulate(p, 0.0, 0.0, 0.0)
        s = simulate(p, per_seq, per_request, per_stream)
        kind = "fit" if p.fit else "held out"
        if p.tpot_ms is not None:
            worst[kind][0] = max(worst[kind][0], abs(s.tpot_ms / p.tpot_ms - 1))
        if p.ttft_ms is not None:
            worst[kind][1] = max(worst[kind][1], abs(s.ttft_ms / p.ttft_ms - 1))
        rows.append(
            f"| {p.source} | {p.model} | {p.prompt}/{p.output} | {p.concurrency} | "
            f"{p.ttft_ms if p.ttft_ms is not None else '-'} | {s.ttft_ms:.1f} | "
            f"{_ratio(s.ttft_ms, p.ttft_ms)} | {_ratio(v1.ttft_ms, p.ttft_ms)} | "
            f"{p.tpot_ms:.2f} | {s.tpot_ms:.2f} | {_ratio(s.tpot_ms, p.tpot_ms)} | "
            f"{_ratio(v1.tpot_ms, p.tpot_ms)} | "
            f"{p.tok_s if p.tok_s is not None else '-'} | {s.tok_s:.0f} | "
            f"{_ratio(s.tok_s, p.tok_s)} | {kind} |"
        )
    lines = [
        "# Engine fidelity: timing model v2 against public vLLM concurrency sweeps",
        "",
        "Command: `.venv/bin/python bench/engine_fidelity.py"
        + (" --check" if args.check else "")
        + "` (virtual time; deterministic).",
        "",
        "## Sources",
        "",
        *[f"- **{s.key}**: {s.where}. {s.setup}." for s in SOURCES],
        "",
        "## Fitted host overheads (the same for every GPU)",
        "",
        f"- `per_seq_overhead` = {per_seq * 1e6:.1f} µs per scheduled sequence per step",
        f"- `request_overhead` = {per_request * 1e3:.2f} ms per request (front end; TTFT only)",
        f"- `request_overhead_per_stream` = {per_stream * 1e3:.3f} ms more per stream the front "
        "end is already serving",
        "",
        "Kernel constants are unchanged (bench/engine_calibration.py). v1 = the same simulator "
        "with both overheads 0 (the timing model before this change).",
        "",
        "## Per point (TTFT median ms, TPOT mean ms, output tok/s)",
        "",
        "| src | model | in/out | C | TTFT real | TTFT sim | sim/real | v1 sim/real | "
        "TPOT real | TPOT sim | sim/real | v1 sim/real | tok/s real | tok/s sim | sim/real | "
        "set |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        "## Goals (decode within ±20 %, TTFT within ±35 %)",
        "",
        f"- fit points: worst TPOT error {worst['fit'][0]:.0%}, worst TTFT error "
        f"{worst['fit'][1]:.0%}",
        f"- held-out points: worst TPOT error {worst['held out'][0]:.0%}, worst TTFT error "
        f"{worst['held out'][1]:.0%}",
        "",
        "## Reading (goals NOT met in full; public data is thin)",
        "",
        "- Decode: within ±20 % on every L4 point (C 1-32), the RTX 4090 points at C >= 16 and "
        "the H100 points at C <= 4; +21 % on the A100-40GB point and +26-31 % on the 4090 at "
        "C 4-8 (derived accelerators, no kernel table of their own). NOT met on the H100 at "
        "C 16 (0.79) and C 64 (0.28): that source does not publish its lengths (512/128 is an "
        "assumption), and no assumption of ours reproduces 47 ms TPOT at C 64 with a "
        "bandwidth-bound 8B model; more public H100 sweeps with stated lengths are needed.",
        "- TTFT: NOT met. The sources disagree on the front end: the L4 run (a GKE service, "
        "0.5B model) pays ~20 ms of TTFT at C 1 outside the GPU, the H100 run ~2 ms. One "
        "host constant for every deployment cannot match both; the fit splits the difference "
        "(L4 0.6-0.85x, H100 1.6-2.2x). The new per-stream term reproduces the growth of TTFT "
        "with concurrency that v1 lacked (v1: L4 0.06-0.27x). A deployment calibrates "
        "`request_overhead` to its own front end.",
        "- Throughput follows TPOT: within ±20 % except H100 C 64.",
        "- Batch-1 kernel calibration is unchanged (bench/results/engine-calibration.md: H100 "
        "decode b=1 -2.5 %, prefill 2k -1.3 %); the host terms add 18 µs per sequence.",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
