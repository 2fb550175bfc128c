"""Placement benchmark: every policy on the same trace, fleet, load and seeds, in the simulator.

    .venv/bin/python bench/placement.py --matrix        # the scenario matrix (placement-matrix.md)
    .venv/bin/python bench/placement.py                 # one cell at length (placement.md)
    .venv/bin/python bench/placement.py --calibrate     # round-robin p99 TTFT vs compression

The matrix (``--matrix``, see :data:`MATRIX` and ``placement_matrix.py``) runs every baseline,
the modelfleet default (latency model learned online from a deliberately wrong prior) and its
labelled variants over fleets (homogeneous, mixed GPUs) x traces (Mooncake, Azure conversation
and code) x load (steady, bursty) x pools (one, two of different model sizes), at least 3 seeds
per cell, and reports every goal as met or not.

Runs the modelfleet default profile and every baseline (round-robin, least-request,
power-of-two, cache-aware, llm-d, llumnix) through :class:`modelfleet.sim.cluster.ClusterSimulator`
on the Mooncake conversation trace and a mixed H100/A100/L40S fleet of Llama-3-8B engines,
for several seeds, prints a table of ratios against the best baseline (the baseline with the
lowest mean p99 TTFT) and writes ``<out>.md``, ``<out>.json`` and PNG plots next to them.

What a seed changes: the policies' RNG and a uniform jitter of every arrival time in
``[0, --jitter-ms)`` (so deterministic policies also see different traces); trace content,
fleet and load are fixed. Figures are ratios within this run (bench-conventions.md).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from modelfleet.sim.cli import parse_fleet as _parse_fleet  # noqa: E402
from modelfleet.sim.cluster import ClusterSimulator, SimConfig  # noqa: E402
from modelfleet.sim.fleet import EngineSpec, mixed_fleet  # noqa: E402
from modelfleet.sim.metrics import LoadSample, RequestRecord, RunMetrics  # noqa: E402
from modelfleet.sim.policies import POLICY_NAMES, policy_factory  # noqa: E402
from modelfleet.sim.report import (  # noqa: E402
    markdown_table,
    plot_instance_load,
    plot_latency_cdfs,
    plot_load_over_time,
)
from modelfleet.sim.traces import Trace, TraceError, load_azure, load_mooncake  # noqa: E402

DEFAULT_TRACE = "bench/data/mooncake/conversation_trace.jsonl.gz"
DEFAULT_FLEET = "h100-80gb=6,a100-80gb=6,l40s=4"
MAIN = "modelfleet"


def parse_fleet(text: str) -> dict[str, int]:
    """``--fleet`` as ``{accelerator: count}``; exits naming the flag on a malformed value."""
    try:
        return _parse_fleet(text)
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"--fleet: {exc}") from None


def load_trace(path: str, window: tuple[float, float] | None) -> Trace:
    p = REPO / path if not Path(path).is_absolute() else Path(path)
    try:
        tr = load_azure(p) if "azure" in p.name.lower() else load_mooncake(p)
    except TraceError as exc:
        raise SystemExit(f"--trace: {exc}") from exc
    if window is not None:
        tr = tr.window(*window)
    return tr


def jittered(trace: Trace, seed: int, jitter_ms: float) -> Trace:
    if jitter_ms <= 0:
        return trace
    rng = np.random.default_rng(seed)
    shift = rng.uniform(0.0, jitter_ms / 1000.0, size=len(trace))
    reqs = sorted(
        (replace(r, arrival_s=r.arrival_s + float(d)) for r, d in zip(trace, shift, strict=True)),
        key=lambda r: r.arrival_s,
    )
    return replace(trace, requests=tuple(reqs))


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One (policy, seed) run in a worker process; returns metrics + what the plots need."""
    trace = load_trace(job["trace"], job["window"]).compressed(job["compression"])
    trace = jittered(trace, job["seed"], job["jitter_ms"])
    fleet: tuple[EngineSpec, ...] = mixed_fleet(
        job["fleet"], model=job["model"], overrides={"max_model_len": 131_072}
    )
    config = SimConfig(
        ttft_slo_s=job["ttft_slo"],
        tpot_slo_s=job["tpot_slo"],
        metrics_refresh_s=job["refresh"],
        seed=job["seed"],
        compute_bounds=job["bounds"],
        front_end=job.get("front_end", True),
        perf_model=job.get("perf_model", "learned"),
    )
    t0 = time.perf_counter()
    result = ClusterSimulator(trace, fleet, policy_factory(job["policy"]), config).run()
    wall = time.perf_counter() - t0
    result.check_conservation()
    return {
        "policy": job["policy"],
        "seed": job["seed"],
        "wall_s": wall,
        "metrics": result.metrics,
        "records": result.records if job["keep"] else [],
        "samples": result.samples if job["keep"] else [],
        "endpoints": result.endpoint_ids,
        "steps": result.steps,
    }


def summarise(runs: list[dict[str, Any]], policies: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for p in policies:
        ms: list[RunMetrics] = [r["metrics"] for r in runs if r["policy"] == p]

        def arr(f: Any, ms: list[RunMetrics] = ms) -> np.ndarray:
            return np.array([f(m) for m in ms], dtype=float)

        out[p] = {
            "p99_ttft": arr(lambda m: m.ttft.p99),
            "p90_ttft": arr(lambda m: m.ttft.p90),
            "p50_ttft": arr(lambda m: m.ttft.p50),
            "p99_tpot": arr(lambda m: m.tpot.p99),
            "p99_e2e": arr(lambda m: m.e2e.p99),
            "goodput": arr(lambda m: m.goodput_rps),
            "attainment": arr(lambda m: m.attainment),
            "hit": arr(lambda m: m.prefix_hit_rate),
            "imbalance": arr(lambda m: m.load_imbalance),
            "migrations": arr(lambda m: m.migrations),
        }
    return out


def git_commit() -> str:
    """Short HEAD commit, marked "+ uncommitted changes" when the work tree is dirty."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "modelfleet", "bench"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        return "(git unavailable)"
    if not head:
        return "(no commit yet)"
    return f"{head} + uncommitted changes" if dirty else head


def calibrate(args: argparse.Namespace) -> None:
    """Round-robin p99 TTFT / SLO at several compression factors (the load-level statement)."""
    fleet = parse_fleet(args.fleet)
    print(f"round-robin, TTFT SLO {args.ttft_slo}s, seed 0")
    for c in args.calibrate_factors:
        job = dict(
            trace=args.trace,
            window=args.window,
            compression=c,
            seed=0,
            jitter_ms=0.0,
            fleet=fleet,
            model=args.model,
            ttft_slo=args.ttft_slo,
            tpot_slo=args.tpot_slo,
            refresh=args.metrics_refresh,
            bounds=False,
            keep=False,
            policy="round-robin",
        )
        r = run_one(job)
        m: RunMetrics = r["metrics"]
        print(
            f"compression {c:5.2f}: p99 TTFT {m.ttft.p99:7.2f}s = {m.ttft.p99 / args.ttft_slo:5.2f}"
            f" x SLO, attainment {m.attainment:.1%}, wall {r['wall_s']:.1f}s",
            flush=True,
        )


def speed(args: argparse.Namespace) -> None:
    """Wall and CPU time of simulating the whole trace (no window), one run per policy."""
    fleet = parse_fleet(args.fleet)
    rows = []
    for p in args.policies:
        trace = load_trace(args.trace, None).compressed(args.compression)
        specs = mixed_fleet(fleet, model=args.model, overrides={"max_model_len": 131_072})
        config = SimConfig(ttft_slo_s=args.ttft_slo, tpot_slo_s=args.tpot_slo, compute_bounds=False)
        w0, c0 = time.perf_counter(), time.process_time()
        sim = ClusterSimulator(trace, specs, policy_factory(p), config)
        result = sim.run()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        result.check_conservation()
        rows.append((p, len(trace), trace.duration_s, wall, cpu, result.steps))
        print(
            f"{p}: {len(trace)} requests, {trace.duration_s:.0f} s of trace, wall {wall:.1f} s, "
            f"CPU {cpu:.1f} s, {result.steps} engine steps",
            flush=True,
        )
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    md = [
        "# Simulator speed: the whole Mooncake conversation trace on 16 engines",
        "",
        f"- Command: `python bench/placement.py --speed --policies {' '.join(args.policies)}"
        f" --compression {args.compression:g}`",
        f"- Commit: `{git_commit()}`; machine: {platform.machine()}, {mp.cpu_count()} cpus, "
        f"Python {platform.python_version()}; load average at the end {' '.join(load)}"
        + (
            " (other jobs shared the cores, so wall time > CPU time)"
            if any(w > 1.2 * c for _p, _n, _s, w, c, _st in rows)
            else ""
        ),
        f"- Fleet: {fleet} x {args.model}; goal: <= 30 s",
        "",
        "| policy | requests | trace span s | wall s | CPU s | engine steps | goal met (CPU) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for p, n, span, wall, cpu, steps in rows:
        md.append(
            f"| {p} | {n} | {span:.0f} | {wall:.1f} | {cpu:.1f} | {steps} | "
            f"{'yes' if cpu <= 30 else 'no'} |"
        )
    target = REPO / "bench/results/sim-speed.md"
    if target.exists():  # keep the hand-written sections ("## ...") of the previous file
        old = target.read_text()
        cut = old.find("\n## ")
        if cut >= 0:
            md += ["", old[cut + 1 :].rstrip()]
    target.write_text("\n".join(md) + "\n")
    print("wrote bench/results/sim-speed.md")


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if "--matrix" in args_list or "--calibrate-matrix" in args_list:
        from placement_matrix import matrix_main

        return matrix_main(args_list)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trace", default=DEFAULT_TRACE, help="Mooncake JSONL or Azure CSV (.gz ok)")
    ap.add_argument(
        "--window",
        type=float,
        nargs=2,
        metavar=("START_S", "END_S"),
        default=None,
        help="use only arrivals in [START_S, END_S) of the trace",
    )
    ap.add_argument(
        "--compression",
        type=float,
        default=1.0,
        help="arrival-time compression factor (>1 = more load); default 1.0",
    )
    ap.add_argument("--fleet", default=DEFAULT_FLEET, help=f"default {DEFAULT_FLEET}")
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--policies", nargs="+", default=list(POLICY_NAMES), choices=POLICY_NAMES)
    ap.add_argument("--ttft-slo", type=float, default=5.0, help="TTFT target, seconds")
    ap.add_argument("--tpot-slo", type=float, default=0.1, help="TPOT target, seconds")
    ap.add_argument(
        "--metrics-refresh",
        type=float,
        default=0.05,
        help="engine-metrics scrape period (staleness), seconds",
    )
    ap.add_argument("--jitter-ms", type=float, default=50.0)
    ap.add_argument(
        "--no-front-end",
        action="store_true",
        help="engines without the front-end latency of timing model v2 (the v1 timing)",
    )
    ap.add_argument(
        "--perf-model",
        default="learned",
        choices=["learned", "prior", "oracle"],
        help="what the policies know of latencies (default learned, as a live scheduler)",
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="bench/results/placement")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--speed", action="store_true", help="time the whole trace -> sim-speed.md")
    ap.add_argument("--calibrate-factors", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.5])
    args = ap.parse_args(argv)
    if args.compression <= 0:
        ap.error("--compression must be > 0")
    if args.ttft_slo <= 0 or args.tpot_slo <= 0:
        ap.error("--ttft-slo and --tpot-slo must be > 0")
    if args.calibrate:
        calibrate(args)
        return 0
    if args.speed:
        speed(args)
        return 0

    fleet = parse_fleet(args.fleet)
    jobs = [
        dict(
            trace=args.trace,
            window=args.window,
            compression=args.compression,
            seed=s,
            jitter_ms=args.jitter_ms,
            fleet=fleet,
            model=args.model,
            ttft_slo=args.ttft_slo,
            tpot_slo=args.tpot_slo,
            refresh=args.metrics_refresh,
            bounds=(s == args.seeds[0]),
            keep=(s == args.seeds[0]),
            policy=p,
            front_end=not args.no_front_end,
            perf_model=args.perf_model,
        )
        for s in args.seeds
        for p in args.policies
    ]
    t0 = time.perf_counter()
    if args.workers > 1:
        with mp.get_context("fork").Pool(args.workers) as pool:
            runs = []
            for r in pool.imap_unordered(run_one, jobs):
                runs.append(r)
                print(f"  done {r['policy']:14s} seed {r['seed']}  {r['wall_s']:6.1f}s", flush=True)
    else:
        runs = []
        for j in jobs:
            runs.append(run_one(j))
            r = runs[-1]
            print(f"  done {r['policy']:14s} seed {r['seed']}  {r['wall_s']:6.1f}s", flush=True)
    total_wall = time.perf_counter() - t0

    summary = summarise(runs, args.policies)
    baselines = [p for p in args.policies if p != MAIN]
    best = min(baselines, key=lambda p: float(summary[p]["p99_ttft"].mean())) if baselines else MAIN
    best_good = (
        max(baselines, key=lambda p: float(summary[p]["goodput"].mean())) if baselines else MAIN
    )

    def cell(p: str, key: str, fmt: str = "{:.3g}") -> str:
        a = summary[p][key]
        return f"{fmt.format(a.mean())} ± {fmt.format(a.std())}"

    lines = [
        "| policy | p50 TTFT s | p99 TTFT s | p99 TTFT / best | p99 TPOT s | p99 e2e s "
        "| goodput req/s | goodput / best | attainment | prefix hit | imbalance | migrations |",
        "|" + " --- |" * 12,
    ]
    ref_ttft = summary[best]["p99_ttft"].mean()
    ref_good = summary[best_good]["goodput"].mean()
    for p in args.policies:
        s = summary[p]
        lines.append(
            f"| {p} | {cell(p, 'p50_ttft')} | {cell(p, 'p99_ttft')} | "
            f"{s['p99_ttft'].mean() / ref_ttft:.2f} | {cell(p, 'p99_tpot')} | "
            f"{cell(p, 'p99_e2e')} | "
            f"{cell(p, 'goodput')} | {s['goodput'].mean() / ref_good:.2f} | "
            f"{s['attainment'].mean():.1%} | {s['hit'].mean():.1%} | {cell(p, 'imbalance')} | "
            f"{s['migrations'].mean():.0f} |"
        )
    table = "\n".join(lines)
    print()
    print(table)

    out = REPO / args.out if not Path(args.out).is_absolute() else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    first = {r["policy"]: r for r in runs if r["seed"] == args.seeds[0]}
    recs: dict[str, list[RequestRecord]] = {p: first[p]["records"] for p in args.policies}
    samples: dict[str, list[LoadSample]] = {p: first[p]["samples"] for p in args.policies}
    stem = out.name
    plot_latency_cdfs(recs, out.with_name(f"{stem}-latency-cdf.png"))
    plot_load_over_time(samples, out.with_name(f"{stem}-load.png"))
    for p in (MAIN, best):
        if p in first:
            plot_instance_load(
                samples[p],
                [str(e) for e in first[p]["endpoints"]],
                out.with_name(f"{stem}-instances-{p}.png"),
                f"{p}: running + waiting per instance",
            )
    bounds = first[args.policies[0]]["metrics"].bounds
    cmd = "python bench/placement.py " + " ".join(sys.argv[1:] if argv is None else argv)
    per_seed = markdown_table({p: first[p]["metrics"] for p in args.policies}, best)
    payload = {
        "command": cmd.strip(),
        "commit": git_commit(),
        "machine": (
            f"{platform.machine()}, {mp.cpu_count()} cpus, Python {platform.python_version()}"
        ),
        "trace": args.trace,
        "window": args.window,
        "compression": args.compression,
        "fleet": fleet,
        "ttft_slo_s": args.ttft_slo,
        "tpot_slo_s": args.tpot_slo,
        "seeds": args.seeds,
        "best_baseline_p99_ttft": best,
        "best_baseline_goodput": best_good,
        "bounds": None
        if bounds is None
        else {
            "infinite_cache": bounds.infinite_cache,
            "pooled_capacity": bounds.pooled_capacity,
            "capacity_blocks": bounds.capacity_blocks,
        },
        "runs": [
            {
                "policy": r["policy"],
                "seed": r["seed"],
                "wall_s": r["wall_s"],
                "steps": r["steps"],
                **r["metrics"].as_dict(),
            }
            for r in sorted(runs, key=lambda r: (r["policy"], r["seed"]))
        ],
        "total_wall_s": total_wall,
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=float))
    main_ratio = summary[MAIN]["p99_ttft"].mean() / ref_ttft if MAIN in summary else float("nan")
    md = [
        "# Placement benchmark (simulated)",
        "",
        f"- Command: `{payload['command']}`",
        f"- Commit: `{payload['commit']}`; machine: {payload['machine']}; "
        f"total wall {total_wall:.0f} s",
        f"- Trace: `{args.trace}`"
        + (f", window {args.window}" if args.window else "")
        + f", arrival compression ×{args.compression:g}, seeds {args.seeds} (policy RNG + "
        f"arrival jitter < {args.jitter_ms:g} ms)",
        f"- Fleet: {fleet} × {args.model}, engine metrics scraped every {args.metrics_refresh:g} s",
        f"- Engines {'without' if args.no_front_end else 'with'} the front-end latency of timing "
        f"model v2; policies' latency model: {args.perf_model} (declarations honest)",
        f"- SLO: TTFT ≤ {args.ttft_slo:g} s and TPOT ≤ {args.tpot_slo:g} s",
        f"- Best baseline by mean p99 TTFT: **{best}**; by goodput: **{best_good}**",
        f"- modelfleet p99 TTFT / best baseline: **{main_ratio:.2f}** (aim ≤ 0.5)",
    ]
    if bounds is not None:
        md.append(
            f"- Prefix-reuse bounds on this trace: infinite cache {bounds.infinite_cache:.1%}, "
            f"pooled fleet capacity ({bounds.capacity_blocks} blocks) {bounds.pooled_capacity:.1%}"
        )
    md += [
        "",
        "## Mean ± std over seeds (ratios against the best baseline)",
        "",
        table,
        "",
        f"## Seed {args.seeds[0]} only (ratios against {best})",
        "",
        per_seed,
        "",
        "Plots: "
        f"`{stem}-latency-cdf.png`, `{stem}-load.png`, `{stem}-instances-*.png` "
        f"(seed {args.seeds[0]}).",
        "",
    ]
    notes = out.with_name(f"{stem}-notes.md")
    if notes.exists():  # the hand-written analysis of the committed run
        md += ["", notes.read_text()]
    out.with_suffix(".md").write_text("\n".join(md))
    print(f"\nwrote {out.with_suffix('.md')} and .json, plots next to it ({total_wall:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
