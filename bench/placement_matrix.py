"""The placement scenario matrix (``python bench/placement.py --matrix``).

Cells: fleet (homogeneous A100s | mixed H100/A100/L40S) x trace (Mooncake conversation:
prefix-rich | Azure conversation, Azure code: prefix-free) x load (steady | bursty: the middle
third of the window arrives 4x faster) x pools (one Llama-3-8B pool | that pool plus a
Llama-3-70B TP4 pool, requests mapped by conversation in proportion to each pool's declared
capacity over its model size). Per cell: every baseline, and the modelfleet default, on at least
3 seeds (policy RNG + arrival jitter); one seed of each labelled variant (the oracle latency
model as an upper bound, the prior without learning, and each migration trigger ablated).

Every run (baselines included) sees the same *wrong* declarations: the L40S runs 30 % slower
and the A100 15 % faster than their AcceleratorProfiles say (``PRIOR_ERROR``); the default
learns latencies online from that prior, as a live scheduler would. Ratios are against the best
baseline in the same cell (p99 TTFT: the lowest mean; goodput: the highest mean). Tuning cells
(``TUNING``) are where the default was chosen; every other cell is held out.

The conservation check (requests in = served + failed + shed, every token once) runs in every
run and fails the benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modelfleet.policy.config import ProfileSpec, default_profile_spec  # noqa: E402
from modelfleet.policy.migration import default_migration_params  # noqa: E402
from modelfleet.sim.cluster import ClusterSimulator, SimConfig, pool_shares  # noqa: E402
from modelfleet.sim.fleet import EngineSpec, pooled_fleet  # noqa: E402
from modelfleet.sim.policies import POLICY_NAMES, policy_factory  # noqa: E402
from modelfleet.sim.traces import Trace, assign_pools, load_azure, load_mooncake  # noqa: E402

MAIN = "modelfleet"
BASELINES = [p for p in POLICY_NAMES if p != MAIN]
PRIOR_ERROR = {"l40s": -0.3, "a100-80gb": 0.15}
SEEDS = (0, 1, 2)
WINDOW_S = 600.0
MOONCAKE_WINDOW_S = 300.0
JITTER_MS = 50.0
BURST = (1 / 3, 1 / 3, 4.0)  # start and length as fractions of the window, rate factor

TRACES = {
    "mooncake": ("bench/data/mooncake/conversation_trace.jsonl.gz", 5.0, 0.1),
    "azure-conv": ("bench/data/azure/AzureLLMInferenceTrace_conv.csv.gz", 2.0, 0.1),
    "azure-code": ("bench/data/azure/AzureLLMInferenceTrace_code.csv.gz", 2.0, 0.1),
}
EIGHT_B, SEVENTY_B = "llama-3-8b", "llama-3-70b"
FLEETS: dict[tuple[str, int], list[tuple[str, int, dict[str, int]]]] = {
    ("homogeneous", 1): [(EIGHT_B, 1, {"a100-80gb": 6})],
    ("mixed", 1): [(EIGHT_B, 1, {"h100-80gb": 2, "a100-80gb": 2, "l40s": 2})],
    ("homogeneous", 2): [(EIGHT_B, 1, {"a100-80gb": 4}), (SEVENTY_B, 4, {"a100-80gb": 2})],
    ("mixed", 2): [
        (EIGHT_B, 1, {"h100-80gb": 1, "a100-80gb": 1, "l40s": 2}),
        (SEVENTY_B, 4, {"h100-80gb": 1, "a100-80gb": 1}),
    ],
}
#: arrival-time compression per (trace, fleet): round-robin's p99 TTFT at 3-5x the SLO on the
#: steady one-pool cell (``--calibrate-matrix``, seed 0)
COMPRESSION: dict[tuple[str, str], float] = {
    ("mooncake", "homogeneous"): 0.4,
    ("mooncake", "mixed"): 0.45,
    ("azure-conv", "homogeneous"): 12.0,
    ("azure-conv", "mixed"): 7.0,
    ("azure-code", "homogeneous"): 4.0,
    ("azure-code", "mixed"): 6.0,
}
TUNING = {("mooncake", "mixed", "steady", 1), ("azure-conv", "homogeneous", "steady", 1)}

VARIANTS: dict[str, dict[str, Any]] = {
    "modelfleet/oracle": {"perf_model": "oracle"},
    "modelfleet/prior": {"perf_model": "prior"},
    "modelfleet/rescue": {"migration": {"enable_slo_rescue": True}},
    "modelfleet/no-balance": {"migration": {"enable_load_balance": False}},
    "modelfleet/no-migration": {"enable_migration": False},
    # round 1's default, run in the same session: cold requests spread by recency, every move
    # valued by remaining time, rescues into any queue and on by default, no arrival charge
    "modelfleet/round-1": {
        "cold_spread": {"spreadBy": "recency"},
        "migration": {
            "enable_slo_rescue": True,
            "rescue_needs_free_dst": False,
            "gain_basis": "remaining-time",
            "arrival_window_s": 0.0,
        },
    },
    # round 2's default: the queue term counts raw in-flight tokens, blind to speed (the
    # default now counts them per unit of speed; on a homogeneous fleet the two are identical)
    "modelfleet/token-balance": {"queue_metric": "inflight-tokens"},
}
#: variants run only on some fleets (token-balance differs from the default only on mixed ones)
VARIANT_FLEETS: dict[str, tuple[str, ...]] = {"modelfleet/token-balance": ("mixed",)}
#: ``--variants ablations``: the trigger ablations and round 2's load term, without the oracle,
#: the prior and round 1
#: ``--reuse-baselines``: the baseline rerun in every cell to check the reused runs
CHECK_BASELINE = "least-load-speed"
ABLATIONS = ("modelfleet/rescue", "modelfleet/no-balance", "modelfleet/no-migration",
             "modelfleet/token-balance")  # fmt: skip


def variant_spec(opts: dict[str, Any]) -> ProfileSpec | None:
    """The default profile with a variant's scorer changes (None: the default itself)."""
    if "cold_spread" not in opts and "queue_metric" not in opts:
        return None
    spec = default_profile_spec()
    scorers = []
    for s in spec.scorers:
        if s.type == "cold-spread" and "cold_spread" in opts:
            s = s.model_copy(update={"parameters": {**s.parameters, **opts["cold_spread"]}})
        if s.type == "queue" and "queue_metric" in opts:
            metric = {"metric": opts["queue_metric"]}
            s = s.model_copy(update={"parameters": {**s.parameters, **metric}})
        scorers.append(s)
    return spec.model_copy(update={"scorers": scorers})


@dataclass(frozen=True)
class Cell:
    trace: str
    fleet: str
    load: str
    pools: int

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.trace, self.fleet, self.load, self.pools)

    @property
    def name(self) -> str:
        pools = f"{self.pools} pool{'s' * (self.pools > 1)}"
        return f"{self.trace} · {self.fleet} · {self.load} · {pools}"

    @property
    def tuning(self) -> bool:
        return self.key in TUNING


def cells() -> list[Cell]:
    return [
        Cell(t, f, load, pools)
        for t in TRACES
        for f in ("homogeneous", "mixed")
        for load in ("steady", "bursty")
        for pools in (1, 2)
    ]


_TRACE_CACHE: dict[str, Trace] = {}


def base_trace(name: str) -> Trace:
    if name not in _TRACE_CACHE:
        path = REPO / TRACES[name][0]
        tr = load_mooncake(path) if name == "mooncake" else load_azure(path)
        _TRACE_CACHE[name] = tr.window(0.0, MOONCAKE_WINDOW_S if name == "mooncake" else WINDOW_S)
    return _TRACE_CACHE[name]


def cell_trace(cell: Cell, seed: int, fleet: tuple[EngineSpec, ...], compression: float) -> Trace:
    tr = base_trace(cell.trace).compressed(compression)
    if cell.load == "bursty":
        span = tr.duration_s
        tr = tr.burst(BURST[0] * span, BURST[1] * span, BURST[2])
    rng = np.random.default_rng(seed)
    shift = rng.uniform(0.0, JITTER_MS / 1000.0, size=len(tr))
    reqs = sorted(
        (replace(r, arrival_s=r.arrival_s + float(d)) for r, d in zip(tr, shift, strict=True)),
        key=lambda r: r.arrival_s,
    )
    tr = replace(tr, requests=tuple(reqs))
    if cell.pools > 1:
        tr = assign_pools(tr, pool_shares(fleet, PRIOR_ERROR), seed=0)
    return tr


def recovery(preds: list[tuple[float, str, float, float, float]]) -> dict[str, dict[str, float]]:
    """Per accelerator: how wrong the prior was, and when the learned model caught up.

    ``recovered_after`` counts the requests (and ``recovered_s`` the seconds of trace) until the
    median observed/predicted TTFT of 20 consecutive requests first lies within 20 % of 1.
    """
    out: dict[str, dict[str, float]] = {}
    for accel in sorted({p[1] for p in preds}):
        own = [p for p in preds if p[1] == accel]
        if len(own) < 20:
            continue
        ratios = [p[4] / p[2] for p in own if p[2] > 0]
        prior = [p[4] / p[3] for p in own if p[3] > 0]
        found_n, found_t = math.nan, math.nan
        for i in range(0, len(ratios) - 19):
            med = statistics.median(ratios[i : i + 20])
            if 1 / 1.2 <= med <= 1.2:
                found_n, found_t = float(i + 20), own[i + 19][0] - own[0][0]
                break
        tail = ratios[len(ratios) * 4 // 5 :]
        out[accel] = {
            "requests": float(len(own)),
            "prior_ratio": statistics.median(prior),
            "first20_ratio": statistics.median(ratios[:20]),
            "last20pct_ratio": statistics.median(tail),
            "recovered_after": found_n,
            "recovered_s": found_t,
        }
    return out


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    cell: Cell = job["cell"]
    variant: str = job["variant"]
    seed: int = job["seed"]
    fleet = pooled_fleet(FLEETS[(cell.fleet, cell.pools)], overrides={"max_model_len": 131_072})
    trace = cell_trace(cell, seed, fleet, job["compression"])
    _path, ttft_slo, tpot_slo = TRACES[cell.trace]
    opts = VARIANTS.get(variant, {})
    migration = None
    if "migration" in opts:
        migration = replace(default_migration_params(), **opts["migration"])
    name = MAIN if variant.startswith(MAIN) else variant
    config = SimConfig(
        ttft_slo_s=ttft_slo,
        tpot_slo_s=tpot_slo,
        seed=seed,
        prior_error=PRIOR_ERROR,
        perf_model=opts.get("perf_model", "learned"),
        enable_migration=opts.get("enable_migration", True),
        track_predictions=variant == MAIN,
        compute_bounds=job["bounds"],
    )
    t0 = time.process_time()
    factory = policy_factory(name, migration=migration, spec=variant_spec(opts))
    result = ClusterSimulator(trace, fleet, factory, config).run()
    cpu = time.process_time() - t0
    result.check_conservation()  # fails the benchmark loudly
    m = result.metrics
    out: dict[str, Any] = {
        "cell": cell.key,
        "variant": variant,
        "seed": seed,
        "cpu_s": cpu,
        "requests": m.requests,
        "outcomes": result.outcome_counts(),
        "p50_ttft": m.ttft.p50,
        "p99_ttft": m.ttft.p99,
        "p99_tpot": m.tpot.p99,
        "goodput": m.goodput_rps,
        "attainment": m.attainment,
        "hit": m.prefix_hit_rate,
        "imbalance": m.load_imbalance,
        "migrations": m.migrations,
        "hit_prediction_ratio": m.extra.get("hit_prediction_ratio", math.nan),
        "pooled_bound": m.bounds.pooled_capacity if m.bounds else math.nan,
        "infinite_bound": m.bounds.infinite_cache if m.bounds else math.nan,
    }
    if variant == MAIN:
        out["recovery"] = recovery(result.extra["ttft_predictions"])
    if job.get("check"):
        out["check"] = True
    return out


def _mean(xs: list[float]) -> float:
    finite = [x for x in xs if not math.isnan(x)]
    return float(np.mean(finite)) if finite else math.nan


def _fmt(x: float, digits: int = 3) -> str:
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}g}"


def _ratio(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b) or b <= 0 or math.isinf(b):
        return math.nan
    return a / b


def summarise(runs: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Per cell: mean of every metric per variant, best baselines and the goals."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for cell in cells():
        own = [r for r in runs if tuple(r["cell"]) == cell.key]
        if not own:
            continue
        rows: dict[str, dict[str, float]] = {}
        variants = sorted({r["variant"] for r in own}, key=_order)
        if MAIN in variants:  # the default on the variants' seed alone, for the ablation table
            variants.append(MAIN + "@seed0")
        for v in variants:
            if v == MAIN + "@seed0":
                rs = [r for r in own if r["variant"] == MAIN and r["seed"] == SEEDS[0]]
            else:
                rs = [r for r in own if r["variant"] == v]
            row = {
                k: _mean([r[k] for r in rs])
                for k in (
                    "p50_ttft",
                    "p99_ttft",
                    "p99_tpot",
                    "goodput",
                    "attainment",
                    "hit",
                    "imbalance",
                    "migrations",
                    "hit_prediction_ratio",
                    "pooled_bound",
                )
            }
            row["p99_sd"] = float(np.std([r["p99_ttft"] for r in rs])) if len(rs) > 1 else 0.0
            row["seeds"] = float(len(rs))
            rows[v] = row
        base = [b for b in BASELINES if b in rows]
        best = min(base, key=lambda b: rows[b]["p99_ttft"])
        best_good = max(base, key=lambda b: rows[b]["goodput"])
        for row in rows.values():
            row["p99_ratio"] = _ratio(row["p99_ttft"], rows[best]["p99_ttft"])
            row["goodput_ratio"] = _ratio(row["goodput"], rows[best_good]["goodput"])
        main = rows.get(MAIN, {})
        goals: dict[str, bool] = {}
        if main:
            goals["p99 ≤ 1.05× best"] = main["p99_ratio"] <= 1.05
            goals["goodput ≥ 0.97× best"] = main["goodput_ratio"] >= 0.97
            if cell.trace == "mooncake" and cell.fleet == "mixed":
                goals["p99 ≤ 0.5× best"] = main["p99_ratio"] <= 0.5
                goals["goodput ≥ 1.1× best"] = main["goodput_ratio"] >= 1.1
            if cell.trace == "mooncake":
                share = _ratio(main["hit"], main["pooled_bound"])
                main["hit_vs_pooled"] = share
                goals["hit ≥ 0.9× pooled LRU"] = share >= 0.9
                goals["imbalance ≤ 1.3"] = main["imbalance"] <= 1.3
        recov = [r["recovery"] for r in own if r["variant"] == MAIN and r.get("recovery")]
        out[cell.key] = {
            "cell": cell,
            "rows": rows,
            "best": best,
            "best_goodput": best_good,
            "goals": goals,
            "recovery": recov,
        }
    return out


def _order(v: str) -> tuple[int, str]:
    if v in BASELINES:
        return (0, f"{BASELINES.index(v):02d}")
    if v == MAIN:
        return (1, v)
    return (2, v)


def write_report(
    runs: list[dict[str, Any]], summary: dict[tuple[Any, ...], dict[str, Any]], args: Any
) -> str:
    cmd = "python bench/placement.py " + " ".join(args.argv)
    cpu = sum(r["cpu_s"] for r in runs)
    lines = [
        "# Placement scenario matrix (simulated)",
        "",
        f"- Command: `{cmd.strip()}`",
        f"- Commit: `{args.commit}`; machine: {platform.machine()}, {mp.cpu_count()} cpus "
        f"(shared), Python {platform.python_version()}; {len(runs)} runs, {cpu / 60:.0f} CPU-min, "
        f"wall {args.wall / 60:.0f} min",
        f"- Windows: the first {MOONCAKE_WINDOW_S:.0f} s of Mooncake and {WINDOW_S:.0f} s of "
        "each Azure trace, arrival compression per "
        "(trace, fleet) below; bursty = the middle third of the window arrives "
        f"{BURST[2]:g}x faster; seeds {list(SEEDS)} (policy RNG + arrival jitter < "
        f"{JITTER_MS:g} ms) for every baseline and the default, seed 0 for the labelled variants",
        f"- Declarations wrong on purpose in every run: {PRIOR_ERROR} (real speed / declared "
        "- 1); the default learns latencies online from that prior",
        "- SLOs: Mooncake TTFT ≤ 5 s, Azure TTFT ≤ 2 s, TPOT ≤ 0.1 s everywhere",
        f"- Tuning cells (where the default was chosen): {sorted(TUNING)}; every other cell is "
        "held out",
        *(
            [
                f"- Reused from `{args.reused['from']}` (commit `{args.reused['commit']}`): "
                + (
                    "the baselines' and the default's runs (only the variants ran here)"
                    if args.reused.get("default")
                    else "the baselines' runs (only the default and its variants ran here)"
                )
                + (
                    f", and every run of the cells carried over unchanged: "
                    f"{'; '.join(args.reused['carried'])}"
                    if args.reused.get("carried")
                    else ""
                )
                + ". Rerun and reproduced exactly (the benchmark fails otherwise): "
                + "; ".join(args.reused.get("checked", []))
            ]
            if getattr(args, "reused", None)
            else []
        ),
        "- Conservation (requests in = served + failed + shed, every token once) checked in every "
        f"run: {sum(r['outcomes']['served'] for r in runs)} served, "
        f"{sum(r['outcomes']['failed'] for r in runs)} failed, "
        f"{sum(r['outcomes']['shed'] for r in runs)} shed",
        "",
        "## Summary: the default (learned latency model, wrong prior) against the best baseline",
        "",
        "| cell | tuning | best p99 baseline | p99 TTFT / best | goodput / best | hit rate "
        "| imbalance | goals met |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    met_all = 0
    total_goals = 0
    for s in summary.values():
        cell: Cell = s["cell"]
        main = s["rows"].get(MAIN)
        if main is None:
            continue
        goals = s["goals"]
        met = [k for k, ok in goals.items() if ok]
        missed = [k for k, ok in goals.items() if not ok]
        met_all += len(met)
        total_goals += len(goals)
        verdict = "all met" if not missed else "NOT met: " + "; ".join(missed)
        lines.append(
            f"| {cell.name} | {'tuning' if cell.tuning else 'held out'} | {s['best']} | "
            f"{_fmt(main['p99_ratio'], 2)} | {_fmt(main['goodput_ratio'], 2)} | "
            f"{main['hit']:.1%} | {_fmt(main['imbalance'], 2)} | {verdict} |"
        )
    lines += ["", f"Goals met: {met_all} of {total_goals}.", ""]
    # ablations and labelled variants (those that ran)
    ran = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    lines += [
        "## Labelled variants and trigger ablations (seed 0): p99 TTFT / best baseline "
        "(goodput / best)",
        "",
        "Every column is seed 0 (the default too); the best baseline is the one of the summary "
        "(mean over seeds).",
        "",
        "| cell | default | " + " | ".join(ran) + " |",
        "| --- |" + " ---: |" * (len(ran) + 1),
    ]
    for s in summary.values():
        rows = s["rows"]
        if MAIN not in rows:
            continue
        cols = [MAIN + "@seed0", *ran]
        vals = [
            f"{_fmt(rows[v]['p99_ratio'], 2)} ({_fmt(rows[v]['goodput_ratio'], 2)})"
            if v in rows
            else "–"
            for v in cols
        ]
        lines.append(f"| {s['cell'].name} | " + " | ".join(vals) + " |")
    # recovery
    lines += [
        "",
        "## Recovery of the learned latency model from the wrong prior (default, all seeds)",
        "",
        "Median observed / predicted TTFT per GPU type: with the prior alone, over the first 20 "
        "requests the default placed there, and over the last fifth of the run; 'recovered "
        "after' = requests (seconds of trace) until 20 consecutive ones first have a median within "
        "20 % of 1.",
        "",
        "| cell | GPU | prior | first 20 | last fifth | recovered after |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for s in summary.values():
        per: dict[str, list[dict[str, float]]] = {}
        for rec in s["recovery"]:
            for accel, d in rec.items():
                per.setdefault(accel, []).append(d)
        for accel, ds in sorted(per.items()):
            n = _mean([d["recovered_after"] for d in ds])
            t = _mean([d["recovered_s"] for d in ds])
            lines.append(
                f"| {s['cell'].name} | {accel} | {_mean([d['prior_ratio'] for d in ds]):.2f} | "
                f"{_mean([d['first20_ratio'] for d in ds]):.2f} | "
                f"{_mean([d['last20pct_ratio'] for d in ds]):.2f} | "
                + ("never" if math.isnan(n) else f"{n:.0f} requests ({t:.0f} s)")
                + " |"
            )
    # per cell tables
    lines += ["", "## Every cell (mean over seeds; ratios against the best baseline)", ""]
    for s in summary.values():
        cell = s["cell"]
        comp = COMPRESSION[(cell.trace, cell.fleet)]
        lines += [
            f"### {cell.name}{' (tuning)' if cell.tuning else ''}",
            "",
            f"Compression ×{comp:g}; best baseline by p99 TTFT **{s['best']}**, by goodput "
            f"**{s['best_goodput']}**.",
            "",
            "| policy | seeds | p50 TTFT s | p99 TTFT s | p99 / best | goodput req/s | goodput / "
            "best | attainment | hit rate | predicted / delivered hits | imbalance | migrations |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for v, row in s["rows"].items():
            if v.endswith("@seed0"):
                continue
            lines.append(
                f"| {v} | {row['seeds']:.0f} | {_fmt(row['p50_ttft'])} | "
                f"{_fmt(row['p99_ttft'])} ± {_fmt(row['p99_sd'], 2)} | "
                f"{_fmt(row['p99_ratio'], 2)} | {_fmt(row['goodput'])} | "
                f"{_fmt(row['goodput_ratio'], 2)} | {row['attainment']:.1%} | {row['hit']:.1%} | "
                f"{_fmt(row['hit_prediction_ratio'], 2)} | {_fmt(row['imbalance'], 2)} | "
                f"{row['migrations']:.0f} |"
            )
        if cell.trace == "mooncake" and MAIN in s["rows"]:
            main = s["rows"][MAIN]
            lines.append(
                f"\nPooled-LRU bound (same total KV capacity): {main['pooled_bound']:.1%}; the "
                f"default's hit rate is {_fmt(main.get('hit_vs_pooled', math.nan), 2)}× it."
            )
        lines.append("")
    return "\n".join(lines)


def calibrate(args: Any) -> None:
    """Round-robin p99 TTFT / SLO per (trace, fleet) at several compressions (steady, 1 pool)."""
    for trace in TRACES:
        for fleet_kind in ("homogeneous", "mixed"):
            for c in args.factors:
                if args.only and not any(o in trace for o in args.only):
                    continue
                cell = Cell(trace, fleet_kind, "steady", 1)
                r = run_job(
                    {"cell": cell, "variant": "round-robin", "seed": 0, "compression": c,
                     "bounds": False}
                )  # fmt: skip
                slo = TRACES[trace][1]
                print(
                    f"{trace:10s} {fleet_kind:11s} x{c:4.1f}: round-robin p99 TTFT "
                    f"{r['p99_ttft']:7.2f} s = {r['p99_ttft'] / slo:5.1f}x SLO, attainment "
                    f"{r['attainment']:.1%}, cpu {r['cpu_s']:.1f} s",
                    flush=True,
                )


def matrix_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="placement.py --matrix", description=__doc__)
    ap.add_argument("--matrix", action="store_true")
    ap.add_argument("--calibrate-matrix", action="store_true")
    ap.add_argument("--factors", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--only", nargs="*", default=[], help="run only cells whose name contains one of these"
    )
    ap.add_argument(
        "--variants",
        default="all",
        choices=("all", "main", "ablations"),
        help="all | main (baselines + default) | ablations (main + trigger ablations, round 1)",
    )
    ap.add_argument("--out", default="bench/results/placement-matrix")
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json")
    ap.add_argument(
        "--reuse-baselines",
        metavar="JSON",
        default=None,
        help="take the baselines' runs from an earlier matrix JSON instead of rerunning them "
        "(for a change that touches only the default); least-load-speed seed 0 of every cell "
        "is rerun and must reproduce that file exactly, or the benchmark fails",
    )
    ap.add_argument(
        "--carry-over",
        action="store_true",
        help="with --reuse-baselines and --only: keep every run of the cells not selected "
        "(for a change that cannot act there, e.g. a speed term on homogeneous fleets)",
    )
    ap.add_argument(
        "--check-carried",
        nargs="*",
        default=[],
        help="carried-over cells whose name contains one of these: rerun the default on seed 0 "
        "and require it to reproduce the carried run exactly",
    )
    ap.add_argument(
        "--reuse-default",
        action="store_true",
        help="with --reuse-baselines: take the default's runs from that file too (to add "
        "variants only); its seed 0 is rerun in every cell and must reproduce it exactly",
    )
    args = ap.parse_args(argv)
    args.argv = argv
    if args.reuse_default and not args.reuse_baselines:
        ap.error("--reuse-default needs --reuse-baselines")
    if (args.carry_over or args.check_carried) and not args.reuse_baselines:
        ap.error("--carry-over and --check-carried need --reuse-baselines")
    if args.calibrate_matrix:
        calibrate(args)
        return 0
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        runs = json.loads(out.with_suffix(".json").read_text())
        meta = json.loads(out.with_name(out.name + "-meta.json").read_text())
        args.argv, args.commit, args.wall = meta["argv"], meta["commit"], meta["wall"]
        args.reused = meta.get("reused")
        _write(runs, args, out)
        return 0
    reused: list[dict[str, Any]] = []
    if args.reuse_baselines:
        old_path = REPO / args.reuse_baselines
        old_meta_path = old_path.with_name(old_path.stem + "-meta.json")
        old_commit = (
            json.loads(old_meta_path.read_text())["commit"] if old_meta_path.exists() else "?"
        )
        reused = json.loads(old_path.read_text())
        args.reused = {
            "from": args.reuse_baselines,
            "commit": old_commit,
            "carried": [],
            "default": args.reuse_default,
        }
    else:
        args.reused = None
    jobs = []
    for cell in cells():
        comp = COMPRESSION[(cell.trace, cell.fleet)]
        if args.only and not any(o in cell.name for o in args.only):
            if args.carry_over:
                args.reused["carried"].append(cell.name)
                if any(o in cell.name for o in args.check_carried):
                    jobs.append({"cell": cell, "variant": MAIN, "seed": SEEDS[0],
                                 "compression": comp, "bounds": False, "check": True})  # fmt: skip
            continue
        if args.reuse_baselines:  # the reproducibility check of the reused runs
            jobs.append({"cell": cell, "variant": CHECK_BASELINE, "seed": SEEDS[0],
                         "compression": comp, "bounds": False, "check": True})  # fmt: skip
        if args.reuse_default:
            jobs.append({"cell": cell, "variant": MAIN, "seed": SEEDS[0],
                         "compression": comp, "bounds": False, "check": True,
                         "rerun": True})  # fmt: skip
        for seed in SEEDS:
            if args.reuse_default:
                variants = []
            elif args.reuse_baselines:
                variants = [MAIN]
            else:
                variants = [*BASELINES, MAIN]
            if seed == SEEDS[0] and args.variants != "main":
                variants += [
                    v
                    for v in (VARIANTS if args.variants == "all" else ABLATIONS)
                    if cell.fleet in VARIANT_FLEETS.get(v, (cell.fleet,))
                ]
            for v in variants:
                jobs.append(
                    {"cell": cell, "variant": v, "seed": seed, "compression": comp,
                     "bounds": v == MAIN and seed == SEEDS[0] and cell.trace == "mooncake"}
                )  # fmt: skip
    # longest first (Mooncake), so the pool's tail is short
    jobs.sort(key=lambda j: (j["cell"].trace != "mooncake", j["cell"].pools == 1))
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with mp.get_context("fork").Pool(args.workers) as pool:
        for r in pool.imap_unordered(run_job, jobs):
            runs.append(r)
            if len(runs) % 25 == 0 or len(runs) == len(jobs):
                print(
                    f"  {len(runs)}/{len(jobs)} runs, {time.perf_counter() - t0:.0f} s",
                    flush=True,
                )
    args.wall = time.perf_counter() - t0
    if args.reuse_baselines:
        rerun = {
            j["cell"].key
            for j in jobs
            if not j.get("check") or j["variant"] != MAIN or j.get("rerun")
        }
        runs = _merge_reused(
            runs, reused, rerun, carry_over=args.carry_over, keep_default=args.reuse_default
        )
        args.reused["checked"] = [
            f"{j['variant']} seed {j['seed']} on {j['cell'].name}" for j in jobs if j.get("check")
        ]
    from placement import git_commit

    args.commit = git_commit()
    out.with_suffix(".json").write_text(json.dumps(runs, indent=0, default=float))
    meta = {"argv": args.argv, "commit": args.commit, "wall": args.wall, "reused": args.reused}
    out.with_name(out.name + "-meta.json").write_text(json.dumps(meta))
    _write(runs, args, out)
    return 0


def _merge_reused(
    runs: list[dict[str, Any]],
    reused: list[dict[str, Any]],
    rerun: set[tuple[Any, ...]],
    *,
    carry_over: bool,
    keep_default: bool = False,
) -> list[dict[str, Any]]:
    """This run's default and variants + the reused baselines of the cells that ran (+ every
    reused run of the other cells with ``carry_over``); fails loudly unless every check run
    equals the reused run of the same (cell, policy, seed)."""
    old = {(tuple(r["cell"]), r["variant"], r["seed"]): r for r in reused}
    fresh = []
    for r in runs:
        if not r.pop("check", False):
            fresh.append(r)
            continue
        was = old.get((tuple(r["cell"]), r["variant"], r["seed"]))
        same = was is not None and all(
            was[k] == r[k] for k in ("requests", "outcomes", "p99_ttft", "goodput", "hit")
        )
        if not same:
            raise SystemExit(
                f"--reuse-baselines: {r['variant']} seed {r['seed']} on {r['cell']} does not "
                "reproduce the reused file; rerun the baselines"
            )
    kept = [
        r
        for r in reused
        if (
            tuple(r["cell"]) in rerun
            and (r["variant"] in BASELINES or (keep_default and r["variant"] == MAIN))
        )
        or (carry_over and tuple(r["cell"]) not in rerun)
    ]
    return kept + fresh


def _write(runs: list[dict[str, Any]], args: Any, out: Path) -> None:
    for r in runs:  # JSON turns the cell key into a list
        r["cell"] = tuple(r["cell"])
    summary = summarise(runs)
    report = write_report(runs, summary, args)
    notes = out.with_name(out.name + "-notes.md")
    if notes.exists():
        report += "\n\n" + notes.read_text()
    out.with_suffix(".md").write_text(report + "\n")
    print(report.split("## Labelled")[0])
    print(f"wrote {out.with_suffix('.md')} ({args.wall / 60:.1f} min)")
