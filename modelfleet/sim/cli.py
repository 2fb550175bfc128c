"""``modelfleet simulate``: a local fleet of simulated vLLM engines, every placement policy.

The embedded default needs no cluster and no data file: a shared-prefix multi-turn workload
(system prompts shared by groups of conversations, each turn extending the previous one) is
generated from a seed and replayed in virtual time on a mixed fleet of H100, A100 and L40S
engines running Llama-3-8B. The modelfleet default profile and every baseline place the same
requests; the table shows latency percentiles, goodput under the SLO, prefix-cache hit rate,
load imbalance and migrations, with ratios against the best baseline. A real trace (Mooncake
or Azure) can replace the synthetic workload.

Every run checks conservation (requests in = served + failed + shed; every served request
gets every token, none repeated); a violation is an error, not a footnote. A request an engine
refuses (longer than ``max_model_len``) is *failed*: it counts as a miss in attainment and as an
unserved (infinite) latency in the percentiles, and the command warns with the count.
``max_model_len`` is sized from the trace by default (the longest prompt + output), or the
command refuses the trace, naming the request, when no engine's KV cache can hold it.

Several pools: ``--fleet 'llama-3-8b:h100-80gb=2,l40s=2;llama-3-70b/tp4:h100-80gb=1'`` runs one
router per pool; requests are mapped to pools by conversation in proportion to each pool's
declared capacity over its model size (``sim.cluster.pool_shares``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from modelfleet.cliargs import positive_float, positive_int
from modelfleet.engine.profiles import get_model
from modelfleet.policy.baselines import POLICY_NAMES
from modelfleet.sim.cluster import ClusterSimulator, SimConfig, pool_shares
from modelfleet.sim.fleet import EngineSpec, pooled_fleet
from modelfleet.sim.metrics import RunMetrics
from modelfleet.sim.policies import policy_factory
from modelfleet.sim.report import markdown_table
from modelfleet.sim.run import PERF_MODELS
from modelfleet.sim.traces import (
    SharedPrefixConfig,
    Trace,
    TraceError,
    assign_pools,
    generate_shared_prefix,
    load_azure,
    load_mooncake,
)

DEFAULT_FLEET = "h100-80gb=2,a100-80gb=2,l40s=2"
DEFAULT_MODEL = "llama-3-8b"
MAIN_POLICY = "modelfleet"

#: (model, tensor parallel size, engines per accelerator) of one pool
PoolSpec = tuple[str, int, dict[str, int]]


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


def parse_pools(text: str, default_model: str = DEFAULT_MODEL) -> list[PoolSpec]:
    """``MODEL[/tpN]:ACC=N,...`` pools separated by ``;`` (argparse type).

    Without ``MODEL:`` the text is one pool of ``default_model`` at TP 1 (``h100-80gb=2``).
    """
    pools: list[PoolSpec] = []
    for part in (p.strip() for p in text.replace("\n", ";").split(";")):
        if not part:
            continue
        head, sep, counts = part.rpartition(":")
        model, tp = default_model, 1
        if sep:
            name, slash, tp_text = head.partition("/")
            model = name.strip()
            if slash:
                if not tp_text.startswith("tp") or not tp_text[2:].isdigit():
                    raise argparse.ArgumentTypeError(
                        f"expected MODEL/tpN (e.g. llama-3-70b/tp4), got {head!r}"
                    )
                tp = int(tp_text[2:])
            try:
                get_model(model)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None
        pools.append((model, tp, parse_fleet(counts)))
    if not pools:
        raise argparse.ArgumentTypeError("expected at least one pool: ACC=N[,ACC=N...]")
    return pools


def parse_prior_error(text: str) -> dict[str, float]:
    """``l40s=-0.3,a100-80gb=0.15``: each GPU's real speed relative to its declared one - 1."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            err = float(value)
        except ValueError:
            err = float("nan")
        if not sep or not name.strip() or not err > -1.0:
            raise argparse.ArgumentTypeError(
                f"expected ACCELERATOR=ERROR with ERROR > -1 (e.g. l40s=-0.3), got {part!r}"
            )
        out[name.strip()] = err
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trace",
        default="synthetic",
        metavar="synthetic|mooncake:PATH|azure:PATH",
        help="workload: the generated shared-prefix multi-turn default, or a trace file",
    )
    p.add_argument(
        "--fleet",
        type=parse_pools,
        default=parse_pools(DEFAULT_FLEET),
        metavar="[MODEL[/tpN]:]ACC=N,...[;...]",
        help=(
            f"engines per accelerator of one pool of {DEFAULT_MODEL} (default {DEFAULT_FLEET}), "
            "or several pools separated by ';', e.g. "
            "'llama-3-8b:h100-80gb=2,l40s=2;llama-3-70b/tp4:h100-80gb=1'"
        ),
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
        type=positive_int,
        default=1000,
        help="synthetic: number of conversations (default 1000)",
    )
    p.add_argument(
        "--rate",
        type=positive_float,
        default=1.6,
        help="synthetic: new conversations per second before compression (default 1.6)",
    )
    p.add_argument(
        "--compression",
        type=positive_float,
        default=None,
        help=(
            "divide every arrival time by this (>1 = more load). Default: 12 for the synthetic "
            "workload (round-robin then misses the SLO for about a quarter of the requests), "
            "1 for a trace file"
        ),
    )
    p.add_argument("--ttft-slo", type=positive_float, default=2.0, help="TTFT SLO, s")
    p.add_argument("--tpot-slo", type=positive_float, default=0.1, help="TPOT SLO, s")
    p.add_argument(
        "--max-model-len",
        type=positive_int,
        default=None,
        help=(
            "engines' max_model_len (default: sized from the trace, the longest prompt + "
            "output). Longer requests are refused by the engines and counted as failed"
        ),
    )
    p.add_argument(
        "--perf-model",
        choices=PERF_MODELS,
        default="learned",
        help=(
            "what the policies know of latencies: learned online from a prior built from each "
            "GPU's declared speeds (default, as a live scheduler), the prior alone, or the "
            "oracle fitted to the simulated engines (an upper bound for benchmarks)"
        ),
    )
    p.add_argument(
        "--prior-error",
        type=parse_prior_error,
        default={},
        metavar="ACC=E,...",
        help="make the declared speeds wrong: l40s=-0.3 = the L40S runs 30%% slower than declared",
    )
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


def build_fleet(
    pools: list[PoolSpec], trace: Trace, max_model_len: int | None
) -> tuple[EngineSpec, ...]:
    """The engines, with ``max_model_len`` given or sized from the trace.

    Sized: the longest prompt + output of the trace (rounded up to 16 tokens). ValueError,
    naming the request and the engine, when an engine's KV cache cannot hold it even alone
    (the run would otherwise refuse it on every engine).
    """
    need = trace.max_request_tokens()
    length = max_model_len or max(16, -(-need // 16) * 16)
    fleet = pooled_fleet(pools, overrides={"max_model_len": length})
    if max_model_len is None and trace.requests:
        longest = max(trace.requests, key=lambda r: r.input_tokens + r.output_tokens)
        for spec in fleet:
            cfg = spec.engine_config()
            capacity = cfg.resolved_num_gpu_blocks() * cfg.block_size
            if capacity < need:
                raise ValueError(
                    f"request {longest.request_id} needs {need} tokens (prompt + output) but "
                    f"{spec.id} ({spec.model} on {spec.accelerator}) holds {capacity} KV tokens; "
                    "pass --max-model-len to refuse longer requests (they count as failed), "
                    "or use a fleet with more memory per engine"
                )
    return fleet


def run(args: argparse.Namespace) -> int:
    try:
        trace = load_trace(args)
        compression = args.compression or (12.0 if args.trace == "synthetic" else 1.0)
        if compression != 1.0:
            trace = trace.compressed(compression)
        fleet = build_fleet(args.fleet, trace, args.max_model_len)
        if len(args.fleet) > 1:
            trace = assign_pools(trace, pool_shares(fleet, args.prior_error), seed=args.seed)
    except (TraceError, ValueError, OSError) as exc:
        print(f"modelfleet simulate: {exc}", file=sys.stderr)
        return 2
    config = SimConfig(
        ttft_slo_s=args.ttft_slo,
        tpot_slo_s=args.tpot_slo,
        seed=args.seed,
        perf_model=args.perf_model,
        prior_error=args.prior_error,
    )
    pools = "; ".join(
        f"{model}{f' TP{tp}' if tp > 1 else ''}: "
        + ", ".join(f"{n}×{a}" for a, n in counts.items())
        for model, tp, counts in args.fleet
    )
    max_len = fleet[0].engine_config().max_model_len
    print(
        f"{len(trace)} requests over {trace.duration_s:.0f} s on "
        f"{len(fleet)} engines ({pools}), max_model_len {max_len}, "
        f"SLO TTFT ≤ {args.ttft_slo} s, TPOT ≤ {args.tpot_slo} s",
        flush=True,
    )
    rows: dict[str, RunMetrics] = {}
    for name in args.policies:
        t0 = time.perf_counter()
        result = ClusterSimulator(trace, fleet, policy_factory(name), config).run()
        result.check_conservation()
        rows[name] = result.metrics
        counts = result.outcome_counts()
        print(f"  {name}: simulated in {time.perf_counter() - t0:.1f} s", flush=True)
        if counts["failed"] or counts["shed"]:
            print(
                f"modelfleet simulate: warning: {name}: {counts['failed']} of {counts['in']} "
                f"requests failed (refused by the engines: longer than max_model_len "
                f"{max_len}) and {counts['shed']} were shed; they count as misses in "
                "attainment and as unserved (infinite) latencies in the percentiles",
                file=sys.stderr,
                flush=True,
            )
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
