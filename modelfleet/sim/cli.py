"""``modelfleet simulate``: a local fleet of simulated vLLM engines, every placement policy.

The embedded default needs no cluster and no data file: a shared-prefix multi-turn workload
(system prompts shared by groups of conversations, each turn extending the previous one) is
generated from a seed and replayed in virtual time on a mixed fleet of H100, A100 and L40S
engines running Llama-3-8B. The modelfleet default profile and every baseline place the same
requests; the table shows latency percentiles, goodput under the SLO, prefix-cache hit rate,
load imbalance and migrations, with ratios against the best baseline. A real trace (Mooncake
or Azure) can replace the synthetic workload.

Every run checks conservation (every request finishes once, with every token, none repeated);
a violation is an error, not a footnote.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from modelfleet.policy.baselines import POLICY_NAMES
from modelfleet.sim.cluster import ClusterSimulator, SimConfig
from modelfleet.sim.fleet import mixed_fleet
from modelfleet.sim.metrics import RunMetrics
from modelfleet.sim.policies import policy_factory
from modelfleet.sim.report import markdown_table
from modelfleet.sim.traces import (
    SharedPrefixConfig,
    Trace,
    TraceError,
    generate_shared_prefix,
    load_azure,
    load_mooncake,
)

DEFAULT_FLEET = "h100-80gb=2,a100-80gb=2,l40s=2"
MAIN_POLICY = "modelfleet"


def parse_fleet(text: str) -> dict[str, int]:
    """``h100-80gb=2,l40s=1`` → ``{"h100-80gb": 2, "l40s": 1}`` (argparse type)."""
    out: dict[str, int] = {}
    for part in text.split(","):
        name, sep, count = part.partition("=")
        if not sep or not count.strip().isdigit() or not name.strip():
            raise argparse.ArgumentTypeError(
                f"expected ACCELERATOR=COUNT[,ACCELERATOR=COUNT...], got {part!r}"
            )
        out[name.strip()] = int(count)
    return out


def parse_policies(text: str) -> list[str]:
    """A comma-separated list of policy names (argparse type)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in POLICY_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown policy {', '.join(bad) or '(none)'}; valid: {', '.join(POLICY_NAMES)}"
        )
    return names


def _positive(kind: type[float] | type[int]) -> Callable[[str], float | int]:
    """An argparse type: a number of ``kind`` that must be > 0."""

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trace",
        default="synthetic",
        metavar="synthetic|mooncake:PATH|azure:PATH",
        help="workload: the generated shared-prefix multi-turn default, or a trace file",
    )
    p.add_argument(
        "--fleet",
        type=parse_fleet,
        default=parse_fleet(DEFAULT_FLEET),
        metavar="ACC=N,...",
        help=f"engines per accelerator (default {DEFAULT_FLEET})",
    )
    p.add_argument(
        "--policies",
        type=parse_policies,
        default=list(POLICY_NAMES),
        metavar="NAME,...",
        help=f"policies to compare (default all: {', '.join(POLICY_NAMES)})",
    )
    p.add_argument(
        "--conversations",
        type=_positive(int),
        default=1000,
        help="synthetic: number of conversations (default 1000)",
    )
    p.add_argument(
        "--rate",
        type=_positive(float),
        default=1.6,
        help="synthetic: new conversations per second before compression (default 1.6)",
    )
    p.add_argument(
        "--compression",
        type=_positive(float),
        default=None,
        help=(
            "divide every arrival time by this (>1 = more load). Default: 12 for the synthetic "
            "workload (round-robin then misses the SLO for about a quarter of the requests), "
            "1 for a trace file"
        ),
    )
    p.add_argument("--ttft-slo", type=_positive(float), default=2.0, help="TTFT SLO, s")
    p.add_argument("--tpot-slo", type=_positive(float), default=0.1, help="TPOT SLO, s")
    p.add_argument("--seed", type=int, default=0, help="workload and policy seed (default 0)")
    p.add_argument("--json", type=Path, default=None, help="also write the metrics as JSON")


def load_trace(args: argparse.Namespace) -> Trace:
    spec: str = args.trace
    if spec == "synthetic":
        return generate_shared_prefix(
            SharedPrefixConfig(num_conversations=args.conversations, conversation_rate=args.rate),
            seed=args.seed,
        )
    kind, sep, path = spec.partition(":")
    if not sep or kind not in ("mooncake", "azure") or not path:
        raise TraceError(f"--trace: expected synthetic, mooncake:PATH or azure:PATH, got {spec!r}")
    return load_mooncake(path) if kind == "mooncake" else load_azure(path)


def run(args: argparse.Namespace) -> int:
    try:
        trace = load_trace(args)
        fleet = mixed_fleet(args.fleet)
    except (TraceError, ValueError, OSError) as exc:
        print(f"modelfleet simulate: {exc}", file=sys.stderr)
        return 2
    compression = args.compression or (12.0 if args.trace == "synthetic" else 1.0)
    if compression != 1.0:
        trace = trace.compressed(compression)
    config = SimConfig(ttft_slo_s=args.ttft_slo, tpot_slo_s=args.tpot_slo, seed=args.seed)
    print(
        f"{len(trace)} requests over {trace.duration_s:.0f} s on "
        f"{len(fleet)} engines ({', '.join(f'{n}×{a}' for a, n in args.fleet.items())}), "
        f"SLO TTFT ≤ {args.ttft_slo} s, TPOT ≤ {args.tpot_slo} s",
        flush=True,
    )
    rows: dict[str, RunMetrics] = {}
    for name in args.policies:
        t0 = time.perf_counter()
        result = ClusterSimulator(trace, fleet, policy_factory(name), config).run()
        result.check_conservation()
        rows[name] = result.metrics
        print(f"  {name}: simulated in {time.perf_counter() - t0:.1f} s", flush=True)
    baselines = [n for n in rows if n != MAIN_POLICY]
    reference = min(baselines, key=lambda n: rows[n].ttft.p99) if baselines else None
    print()
    print(markdown_table(rows, reference))
    if reference and MAIN_POLICY in rows:
        ratio = rows[MAIN_POLICY].ttft.p99 / max(rows[reference].ttft.p99, 1e-9)
        print(f"\n{MAIN_POLICY} p99 TTFT = {ratio:.2f} × the best baseline ({reference})")
    if args.json:
        args.json.write_text(
            json.dumps({n: m.as_dict() for n, m in rows.items()}, indent=2, default=float)
        )
    return 0
