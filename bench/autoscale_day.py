"""A simulated day: the SLO autoscaler against a static peak-sized fleet and single-GPU fleets.

The pool is ``examples/02-llama-8b-mixed`` (Llama-3.1-8B; variants L4 1..8 and H100 0..2;
SLO TTFT 800 ms / TPOT 60 ms at p90) on the profiles of ``examples/01-accelerators``. The
autoscaler's inputs are built exactly as the operator builds them
(:func:`modelfleet.operator.decisions.slo_inputs`: per-variant prior performance models from
the profiles' declared speeds, costs, windows), and each decision is
:func:`modelfleet.policy.autoscale.decide` — the function the operator's timer calls.

Demand: a diurnal curve (``trough`` at 04:00, ``peak`` at 16:00, a cosine between) with
``--bursts`` bursts of 2.5x the curve for 5 "minutes" each at seeded random times; arrivals
are an inhomogeneous Poisson process (thinning). Requests share one of 16 system prompts of
1024 tokens, plus a user part (exponential, mean 300 tokens) and an answer (exponential, mean
150 tokens, at most 1024). ``--hour-s`` compresses the day (600: a day of 24 "hours" of 10
minutes each); the autoscaler's windows stay in real seconds.

Loop: the day is cut into segments of ``--segment-s``. Each segment runs in the cluster
simulator (:class:`modelfleet.sim.cluster.ClusterSimulator`, the ``modelfleet`` placement
policy, virtual time) on the fleet in force. At the end of a segment the autoscaler sees
what the scheduler's ``Stats`` would report for it (arrival rate, mean prompt and output,
prefix hit rate, p90 TTFT and TPOT, finished count, unplaced requests) — measured from the
segment's request records, never the simulator's timing model — and decides; the decision
takes effect one segment later (the time a new replica takes to load the model). Each
segment starts on fresh engines (cold prefix caches) and runs until its last request
finishes; requests do not carry over between segments. Both simplifications apply equally
to every fleet compared.

Fleets compared (same demand, same seed):

- ``autoscaled (L4 + H100)``: the example pool under the autoscaler;
- ``static peak-sized``: the cheapest mix that holds the SLO at the day's highest segment
  rate (known in hindsight; sized with the same capacity model), all day;
- ``autoscaled, L4 only`` / ``autoscaled, H100 only``: the autoscaler with one variant
  (bounds 1..16 and 1..6).

SLO attainment = share of requests with TTFT ≤ 800 ms and TPOT ≤ 60 ms (a request the fleet
could not serve counts as a miss). Cost per hour = replica-hours x profile cost / hours.

Usage: ``python bench/autoscale_day.py [--hour-s 600] [--trough 1.0] [--peak 6.0]
[--tpot-ms 100] [--out bench/results/autoscale-day.md]``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from modelfleet.api.accelerator import AcceleratorProfile
from modelfleet.api.modelpool import ModelPool
from modelfleet.operator.decisions import demand_from_stats, slo_inputs
from modelfleet.policy.autoscale import (
    AutoscalerMemory,
    Demand,
    SloTarget,
    VariantModel,
    cheapest_mix,
    decide,
    replica_capacity,
)
from modelfleet.sim.cluster import ClusterSimulator
from modelfleet.sim.fleet import EngineSpec
from modelfleet.sim.metrics import RequestRecord, percentile
from modelfleet.sim.policies import policy_factory
from modelfleet.sim.run import SimConfig
from modelfleet.sim.traces import Trace, TraceRequest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
BLOCK = 64
SYSTEMS = 16
SYSTEM_TOKENS = 1024


# ------------------------------------------------------------------------------ demand


def rate_at(t: float, args: argparse.Namespace, bursts: Sequence[float]) -> float:
    """Requests/s at time t (s) of the compressed day."""
    hour = t / args.hour_s
    base = (
        args.trough + (args.peak - args.trough) * (1 - math.cos(2 * math.pi * (hour - 4) / 24)) / 2
    )
    burst_len = 5 * args.hour_s / 60
    if any(b <= t < b + burst_len for b in bursts):
        base *= 2.5
    return base


def day_trace(args: argparse.Namespace) -> tuple[list[TraceRequest], list[float]]:
    rng = np.random.default_rng(args.seed)
    day = 24 * args.hour_s
    bursts = sorted(float(b) for b in rng.uniform(0, day, size=args.bursts))
    top = args.peak * 2.5
    out: list[TraceRequest] = []
    next_id = SYSTEMS * (SYSTEM_TOKENS // BLOCK)
    t = 0.0
    while True:
        t += float(rng.exponential(1.0 / top))
        if t >= day:
            break
        if rng.random() * top > rate_at(t, args, bursts):
            continue  # thinning
        g = int(rng.integers(SYSTEMS))
        user = max(1, int(rng.exponential(300)))
        n_in = SYSTEM_TOKENS + user
        n_out = min(1024, max(2, int(rng.exponential(150))))
        ids = list(range(g * SYSTEM_TOKENS // BLOCK, (g + 1) * SYSTEM_TOKENS // BLOCK))
        extra = -(-n_in // BLOCK) - len(ids)
        ids.extend(range(next_id, next_id + extra))
        next_id += extra
        out.append(TraceRequest(len(out), t, n_in, n_out, tuple(ids)))
    return out, bursts


# ------------------------------------------------------------------------------ fleets


@dataclass
class Fleet:
    label: str
    variants: list[VariantModel]
    accelerator: dict[str, str]  # variant -> simulator accelerator
    cost: dict[str, float]
    static: dict[str, int] | None = None  # None: autoscaled
    replicas: dict[str, int] = field(default_factory=dict)
    memory: AutoscalerMemory = field(default_factory=AutoscalerMemory)
    # accumulated
    records: list[RequestRecord] = field(default_factory=list)
    arrived: int = 0
    replica_seconds: dict[str, float] = field(default_factory=dict)
    trajectory: list[dict[str, int]] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)


def engines(fleet: Fleet) -> list[EngineSpec]:
    out = []
    for v, n in fleet.replicas.items():
        out.extend(EngineSpec(f"{v}-{i}", fleet.accelerator[v], "llama-3.1-8b") for i in range(n))
    return out


def segment_demand(records: Sequence[RequestRecord], arrived: int, seg_s: float) -> Demand:
    """What the scheduler's Stats would say of one window (measured, not modelled)."""
    served = [r for r in records if r.finished]
    ttfts = [r.ttft_s for r in served if r.ttft_s is not None]
    tpots = [r.tpot_s for r in served if r.tpot_s is not None]
    prompt = sum(r.prompt_tokens for r in records)
    return demand_from_stats(
        arrival_rate=(arrived - sum(1 for r in records if r.shed)) / seg_s,
        mean_prompt_tokens=prompt / max(1, len(records)),
        mean_output_tokens=sum(r.max_tokens for r in records) / max(1, len(records)),
        prefix_hit_rate=sum(r.cached_tokens for r in served)
        / max(1, sum(r.prompt_tokens for r in served)),
        queued=0,
        unplaced=sum(1 for r in records if r.shed),
        inflight=0,
        window_s=seg_s,
        ttft_s=percentile(ttfts, 90) if ttfts else None,
        tpot_s=percentile(tpots, 90) if tpots else None,
        samples=len(served),
    )


def run_segment(
    fleet: Fleet, reqs: Sequence[TraceRequest], start: float, seg_s: float, config: SimConfig
) -> list[RequestRecord]:
    local = tuple(replace(r, index=i, arrival_s=r.arrival_s - start) for i, r in enumerate(reqs))
    specs = engines(fleet)
    if not local:
        return []
    if not specs:  # nothing runs: every request is unplaced
        return [
            RequestRecord(r.request_id, r.arrival_s, r.input_tokens, r.output_tokens, shed=True)
            for r in local
        ]
    trace = Trace("day-segment", local, BLOCK)
    result = ClusterSimulator(trace, specs, policy_factory("modelfleet"), config).run()
    result.check_conservation()
    return result.records


def met(r: RequestRecord, slo: SloTarget) -> bool:
    if not r.finished or r.ttft_s is None or r.ttft_s > slo.ttft_s:
        return False
    return r.tpot_s is None or r.tpot_s <= slo.tpot_s


# ------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hour-s", type=float, default=600.0, help="seconds per simulated hour")
    p.add_argument("--segment-s", type=float, default=60.0)
    p.add_argument("--trough", type=float, default=1.0, help="requests/s at 04:00")
    p.add_argument("--peak", type=float, default=6.0, help="requests/s at 16:00")
    p.add_argument("--bursts", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tpot-ms", type=float, default=None, help="override the pool's TPOT SLO")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    profiles = {}
    for doc in yaml.safe_load_all((EXAMPLES / "01-accelerators" / "profiles.yaml").read_text()):
        prof = AcceleratorProfile.model_validate(doc)
        profiles[prof.metadata.name] = prof
    pool = next(
        ModelPool.model_validate(d)
        for f in sorted((EXAMPLES / "02-llama-8b-mixed").glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if d and d.get("kind") == "ModelPool"
    )
    spec = pool.spec
    if args.tpot_ms is not None:
        spec = spec.model_copy(
            update={"slo": spec.slo.model_copy(update={"tpot_ms": args.tpot_ms})}
        )
    variants, slo, windows = slo_inputs(spec, profiles)
    sim_accel = {
        v.name: profiles[v.accelerator_profile].spec.simulator_profile or v.accelerator_profile
        for v in spec.variants
    }
    cost = {v.name: v.cost_per_hour for v in variants}

    def only(name: str, lo: int, hi: int) -> list[VariantModel]:
        base = next(v for v in variants if v.name == name)
        return [replace(base, min_replicas=lo, max_replicas=hi)]

    reqs, bursts = day_trace(args)
    seg = args.segment_s
    n_seg = math.ceil(24 * args.hour_s / seg)
    by_seg: list[list[TraceRequest]] = [[] for _ in range(n_seg)]
    for r in reqs:
        by_seg[min(n_seg - 1, int(r.arrival_s // seg))].append(r)

    # The static fleet: the cheapest mix for the busiest segment, sized like the autoscaler.
    peak_i = max(range(n_seg), key=lambda i: len(by_seg[i]))
    peak_d = Demand(
        arrival_rate=len(by_seg[peak_i]) / seg,
        mean_prompt_tokens=float(np.mean([r.input_tokens for r in reqs])),
        mean_output_tokens=float(np.mean([r.output_tokens for r in reqs])),
        prefix_hit_rate=SYSTEM_TOKENS / float(np.mean([r.input_tokens for r in reqs])),
    )
    cap = {v.name: replica_capacity(v.perf, peak_d, slo) for v in variants if v.perf}
    static_mix, covered = cheapest_mix(variants, cap, peak_d.rate(), {})
    fleets = [
        Fleet("autoscaled (L4 + H100)", list(variants), sim_accel, cost),
        Fleet("static peak-sized (L4 + H100)", list(variants), sim_accel, cost, static=static_mix),
        Fleet("autoscaled, L4 only", only("l4", 1, 16), sim_accel, cost),
        Fleet("autoscaled, H100 only", only("h100", 1, 6), sim_accel, cost),
    ]
    config = SimConfig(ttft_slo_s=slo.ttft_s, tpot_slo_s=slo.tpot_s, seed=args.seed)
    t0 = time.perf_counter()
    for fleet in fleets:
        names = [v.name for v in fleet.variants]
        fleet.replicas = (
            dict(fleet.static) if fleet.static else {v.name: v.min_replicas for v in fleet.variants}
        )
        pending: dict[str, int] | None = None
        for i in range(n_seg):
            start = i * seg
            if pending is not None:
                fleet.replicas = pending  # last segment's decision is loaded now
            fleet.trajectory.append(dict(fleet.replicas))
            for v, n in fleet.replicas.items():
                fleet.replica_seconds[v] = fleet.replica_seconds.get(v, 0.0) + n * seg
            records = run_segment(fleet, by_seg[i], start, seg, config)
            fleet.records.extend(records)
            fleet.arrived += len(by_seg[i])
            if fleet.static is None:
                d = segment_demand(records, len(by_seg[i]), seg)
                decision = decide(
                    fleet.variants, slo, windows, d, fleet.replicas, fleet.memory, start + seg
                )
                fleet.memory = decision.memory
                pending = {n: decision.replicas.get(n, 0) for n in names}
                for reason in decision.reasons.values():
                    fleet.reasons[reason] = fleet.reasons.get(reason, 0) + 1
        print(f"{fleet.label}: done at {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    hours = 24 * args.hour_s / 3600
    rows = []
    for fleet in fleets:
        ok = sum(1 for r in fleet.records if met(r, slo))
        unserved = sum(1 for r in fleet.records if not r.finished)
        usd = sum(fleet.replica_seconds[v] / 3600 * fleet.cost[v] for v in fleet.replica_seconds)
        ttfts = [r.ttft_s if r.ttft_s is not None else math.inf for r in fleet.records]
        peak_replicas = max(sum(t.values()) for t in fleet.trajectory)
        mix = {
            v: (
                min(t.get(v, 0) for t in fleet.trajectory),
                max(t.get(v, 0) for t in fleet.trajectory),
            )
            for v in fleet.replica_seconds
        }
        rows.append(
            (
                fleet.label,
                ok / max(1, len(fleet.records)),
                usd / hours,
                percentile(ttfts, 90),
                unserved,
                peak_replicas,
                ", ".join(f"{v} {lo}-{hi}" for v, (lo, hi) in mix.items()),
            )
        )
    base_cost = rows[1][2]
    load = os.getloadavg()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    burst_hours = ", ".join(f"{b / args.hour_s:.1f} h" for b in bursts)
    cmd = "python bench/autoscale_day.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# A simulated day: SLO autoscaling vs a static peak-sized fleet and single-GPU fleets",
        "",
        f"- Command: `{cmd.strip()}`",
        f"- Commit: {commit}; machine: {platform.machine()}, {os.cpu_count()} cpus, Python "
        f"{platform.python_version()}; load average at the end {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}; wall {time.perf_counter() - t0:.0f} s",
        f"- Pool: examples/02-llama-8b-mixed (SLO TTFT {slo.ttft_s * 1000:.0f} ms, TPOT "
        f"{slo.tpot_s * 1000:.0f} ms at p{slo.percentile * 100:.0f}; scale-down window "
        f"{windows.down_s:.0f} s); profiles from examples/01-accelerators (L4 ${cost['l4']}/h, "
        f"H100 ${cost['h100']}/h)",
        f"- Demand: {len(reqs)} requests over a day of 24 x {args.hour_s:.0f} s; "
        f"{args.trough} req/s at 04:00 to {args.peak} req/s at 16:00, {args.bursts} bursts of "
        f"2.5x for 5 simulated minutes (at {burst_hours}); "
        f"segments of {seg:.0f} s, decisions effective one segment later",
        f"- Static fleet: the cheapest mix at the busiest segment's rate "
        f"({peak_d.arrival_rate:.1f} req/s): {static_mix}"
        + ("" if covered else " (every variant at its maximum still falls short)"),
        "- One replica's capacity at the SLO by the autoscaler's prior (same demand shape): "
        + ", ".join(f"{v} {c:.2f} req/s" for v, c in cap.items()),
        "",
        "| fleet | SLO attainment | cost $/h | vs static | TTFT p90 s | unserved | peak replicas "
        "| replicas (min-max) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for label, att, usd_h, p90, unserved, peak_r, mix_text in rows:
        lines.append(
            f"| {label} | {att * 100:.1f} % | {usd_h:.2f} | {usd_h / base_cost:.2f} | {p90:.3f} "
            f"| {unserved} | {peak_r} | {mix_text} |"
        )
    lines += [
        "",
        "Autoscaler decisions by reason (variant-decisions, autoscaled mixed fleet): "
        + ", ".join(f"{k} {v}" for k, v in sorted(fleets[0].reasons.items())),
        "",
        "Caveats: each segment starts on cold engines and runs its last requests to completion "
        "on the fleet it started with (no carry-over); the same for every fleet. The "
        "autoscaler's performance model is the prior from the profiles' declared speeds, "
        "corrected only by its measured-latency feedback (reason `slo-violation`).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
