"""``modelfleet load``: replay a trace against any OpenAI endpoint, the user's quick look.

    modelfleet load [--url URL] [--trace synthetic|mooncake:PATH|azure:PATH]
                    [--duration 30] [--speed 1] [--model chat,code] [--out modelfleet-load]

Open loop: request *i* is sent at its trace arrival time (divided by ``--speed``), whatever
the server's state, up to ``--duration`` seconds of arrivals; then the command waits for the
answers still streaming (at most ``--drain-timeout``). Traces come from
:mod:`modelfleet.sim.traces` (the Mooncake and Azure readers, the shared-prefix generator);
prompts are made of words so that two requests sharing trace blocks share a text prefix, which
is what an engine's prefix cache (and the scheduler's prefix scorer) sees. Lengths are capped
by ``--max-prompt-tokens`` and ``--max-tokens`` (one word is about one token).

Each request is a streamed chat completion (``stream_options.include_usage``); TTFT is the
time to the first content, TPOT the mean time per output token after it, E2E the time to the
end of the stream. The command prints a summary table per model and overall, writes
``latency-cdf.png`` (CDFs of TTFT, TPOT and E2E) and ``summary.json`` under ``--out``, and exits
1 when the error rate exceeds ``--max-error-rate`` or nothing succeeded. It is not a benchmark
client: the benchmarks use independent ones (inference-perf, guidellm).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from modelfleet import cliargs
from modelfleet.sim.traces import (
    SharedPrefixConfig,
    Trace,
    TraceError,
    TraceRequest,
    generate_shared_prefix,
    load_azure,
    load_mooncake,
    prompt_token_ids,
)

__all__ = ["Result", "add_arguments", "load_trace", "prompt_text", "run", "summarise"]

#: Prompt vocabulary: common words that a Llama or Qwen tokenizer keeps as one token each.
WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which she "
    "do how their if will up other about out many then them these so some her would make like "
    "him into time has look two more write go see number no way could people my than first "
    "water been call who oil its now find long down day did get come made may part over new "
    "sound take only little work know place year live me back give most very after thing our "
    "just name good sentence man think say great where help through much before line right too "
    "mean old any same tell boy follow came want show also around form three small set put end "
    "does another well large must big even such because turn here why ask went men read need "
    "land different home us move try kind hand picture again change off play spell air away "
    "animal house point page letter mother answer found study still learn should world high"
).split()


def load_trace(spec: str, seed: int) -> Trace:
    """``synthetic`` (shared system prompts, multi-turn, sized for a laptop), or
    ``mooncake:PATH`` / ``azure:PATH`` (``TraceError`` naming what is wrong)."""
    if spec == "synthetic":
        config = SharedPrefixConfig(
            num_conversations=2000,
            num_groups=4,
            system_prompt_tokens=512,
            max_turns=4,
            user_tokens_mean=80.0,
            output_tokens_mean=48.0,
            conversation_rate=1.5,
            think_time_s=4.0,
            max_prompt_tokens=3000,
        )
        return generate_shared_prefix(config, seed=seed)
    kind, sep, path = spec.partition(":")
    if not sep or kind not in ("mooncake", "azure") or not path:
        raise TraceError(f"--trace: expected synthetic, mooncake:PATH or azure:PATH, got {spec!r}")
    return load_mooncake(path) if kind == "mooncake" else load_azure(path)


def prompt_text(req: TraceRequest, block_tokens: int, max_tokens: int) -> str:
    """The request's prompt as words, one per trace token, cut to ``max_tokens`` words."""
    capped = replace(req, input_tokens=min(req.input_tokens, max_tokens))
    ids = prompt_token_ids(capped, block_tokens=block_tokens)
    return " ".join(WORDS[i % len(WORDS)] for i in ids)


@dataclass
class Result:
    """One request's outcome; latencies in seconds (None when not reached)."""

    index: int
    model: str
    sent_at: float
    ok: bool
    status: int
    error: str
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float | None
    output_tokens: int


async def _one(
    client: Any, url: str, model: str, req: TraceRequest, text: str, max_tokens: int, t0: float
) -> Result:
    import httpx

    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max(1, min(req.output_tokens, max_tokens)),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.monotonic()
    first: float | None = None
    chunks = 0
    usage_tokens: int | None = None
    status = 0
    try:
        async with client.stream("POST", f"{url}/chat/completions", json=body) as r:
            status = r.status_code
            if status != 200:
                detail = (await r.aread()).decode(errors="replace")[:200]
                return Result(
                    req.index, model, start - t0, False, status, detail, None, None, None, 0
                )
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    raise ValueError(str(event["error"])[:200])
                if event.get("usage"):
                    usage_tokens = int(event["usage"].get("completion_tokens") or 0)
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        chunks += 1
                        if first is None:
                            first = time.monotonic()
    except (httpx.HTTPError, ValueError) as e:
        return Result(
            req.index, model, start - t0, False, status, str(e)[:200], None, None, None, 0
        )
    end = time.monotonic()
    tokens = usage_tokens if usage_tokens is not None else chunks
    ttft = None if first is None else first - start
    tpot = (end - first) / (tokens - 1) if first is not None and tokens > 1 else None
    return Result(req.index, model, start - t0, True, status, "", ttft, tpot, end - start, tokens)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


def summarise(results: list[Result], wall_s: float) -> list[dict[str, Any]]:
    """One row per model and one for all: counts, rates, latency percentiles (seconds)."""
    rows = []
    models = sorted({r.model for r in results})
    for name in [*models, "all"] if len(models) > 1 else models:
        rs = [r for r in results if name in ("all", r.model)]
        ok = [r for r in rs if r.ok]
        row: dict[str, Any] = {
            "model": name,
            "requests": len(rs),
            "errors": len(rs) - len(ok),
            "req_per_s": len(ok) / wall_s if wall_s > 0 else 0.0,
            "output_tok_per_s": sum(r.output_tokens for r in ok) / wall_s if wall_s > 0 else 0.0,
        }
        for metric in ("ttft_s", "tpot_s", "e2e_s"):
            vals = [v for r in ok if (v := getattr(r, metric)) is not None]
            for q in (50, 90, 99):
                row[f"{metric[:-2]}_p{q}_s"] = _pct(vals, q)
        rows.append(row)
    return rows


def _fmt(v: float | None, unit: str = "s") -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} ms" if unit == "s" and v < 1 else f"{v:.2f} {unit}"


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("model", "ok", "errors", "req/s", "out tok/s", "TTFT p50", "TTFT p99",
                "TPOT p50", "TPOT p99", "E2E p50", "E2E p99"):  # fmt: skip
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(
            r["model"], str(r["requests"] - r["errors"]), str(r["errors"]),
            f"{r['req_per_s']:.2f}", f"{r['output_tok_per_s']:.0f}",
            _fmt(r["ttft_p50_s"]), _fmt(r["ttft_p99_s"]), _fmt(r["tpot_p50_s"]),
            _fmt(r["tpot_p99_s"]), _fmt(r["e2e_p50_s"]), _fmt(r["e2e_p99_s"]),
        )  # fmt: skip
    Console(width=140).print(table)


def plot_cdfs(results: list[Result], path: Path, title: str) -> None:
    """TTFT, TPOT and E2E CDFs, one line per model (and all, when several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r.model for r in results})
    groups = [*models, "all"] if len(models) > 1 else models
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, metric, label in zip(
        axes,
        ("ttft_s", "tpot_s", "e2e_s"),
        ("TTFT (s)", "TPOT (s)", "end-to-end latency (s)"),
        strict=True,
    ):
        for name in groups:
            vals = sorted(
                v for r in results if r.ok and name in ("all", r.model)
                if (v := getattr(r, metric)) is not None
            )  # fmt: skip
            if not vals:
                continue
            ys = [(i + 1) / len(vals) for i in range(len(vals))]
            ax.step(vals, ys, where="post", label=f"{name} (n={len(vals)})",
                    linewidth=2.2 if name == "all" else 1.4)  # fmt: skip
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.01)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", default="http://127.0.0.1:8000/v1",
        help="OpenAI base URL (default http://127.0.0.1:8000/v1, where modelfleet up serves)",
    )  # fmt: skip
    p.add_argument(
        "--trace", default="synthetic", metavar="synthetic|mooncake:PATH|azure:PATH",
        help="what to replay (default synthetic: shared system prompts, multi-turn)",
    )  # fmt: skip
    p.add_argument(
        "--duration", type=cliargs.positive_float, default=30.0, metavar="S",
        help="seconds of trace arrivals to send (default 30)",
    )  # fmt: skip
    p.add_argument(
        "--speed", type=cliargs.positive_float, default=1.0, metavar="X",
        help="arrival-time compression: 2 sends the trace twice as fast (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--model", default="",
        help="public model names, comma-separated; each conversation goes to one "
        "(default: every name the endpoint's /models lists)",
    )  # fmt: skip
    p.add_argument("--max-prompt-tokens", type=cliargs.positive_int, default=3000, metavar="N")
    p.add_argument("--max-tokens", type=cliargs.positive_int, default=256, metavar="N")
    p.add_argument(
        "--drain-timeout", type=cliargs.positive_float, default=60.0, metavar="S",
        help="after the last arrival, wait at most this long for open streams (default 60)",
    )  # fmt: skip
    p.add_argument("--api-key", default="unused", help="sent as a bearer token")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic trace (default 0)")
    p.add_argument("--out", type=Path, default=Path("modelfleet-load"), help="output folder")
    p.add_argument(
        "--max-error-rate", type=cliargs.fraction, default=0.01, metavar="F",
        help="exit 1 above this fraction of failed requests (default 0.01)",
    )  # fmt: skip


async def _models(client: Any, url: str) -> list[str]:
    r = await client.get(f"{url}/models")
    r.raise_for_status()
    return sorted(m["id"] for m in r.json()["data"])


async def _replay(
    args: argparse.Namespace, trace: Trace, models: list[str], url: str, client: Any
) -> tuple[list[Result], float]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    reqs = [r for r in trace.requests if r.arrival_s / args.speed < args.duration]
    results: list[Result] = []
    failed = 0
    t0 = time.monotonic()
    with Progress(
        TextColumn("[bold]load[/]"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
    ) as progress:  # fmt: skip
        task = progress.add_task("load", total=len(reqs), failed=0)

        async def fire(req: TraceRequest) -> None:
            nonlocal failed
            await asyncio.sleep(max(0.0, t0 + req.arrival_s / args.speed - time.monotonic()))
            key = req.session_id or str(req.index)
            model = models[zlib.crc32(key.encode()) % len(models)]
            text = prompt_text(req, trace.block_tokens, args.max_prompt_tokens)
            res = await _one(client, url, model, req, text, args.max_tokens, t0)
            results.append(res)
            failed += not res.ok
            progress.update(task, advance=1, failed=failed)

        tasks = [asyncio.create_task(fire(r)) for r in reqs]
        _, pending = await asyncio.wait(tasks, timeout=args.duration + args.drain_timeout)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    missing = len(reqs) - len(results)
    results += [
        Result(-1, "", 0.0, False, 0, "not finished before the drain timeout", None, None, None, 0)
        for _ in range(missing)
    ]
    return results, time.monotonic() - t0


async def _main(args: argparse.Namespace, trace: Trace) -> int:
    import httpx

    url = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"}
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    timeout = httpx.Timeout(args.duration + args.drain_timeout, connect=10.0)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout) as client:
        try:
            available = await _models(client, url)
        except (httpx.HTTPError, KeyError, ValueError) as e:
            print(f"modelfleet load: {url}/models: {e}", file=sys.stderr)
            return 2
        models = [m for m in args.model.split(",") if m] or available
        unknown = [m for m in models if m not in available]
        if unknown or not models:
            print(
                f"modelfleet load: --model: {url} serves {', '.join(available) or 'nothing'}; "
                f"not {', '.join(unknown)}",
                file=sys.stderr,
            )
            return 2
        results, wall = await _replay(args, trace, models, url, client)
    rows = summarise(results, wall)
    title = f"{trace.name}: {len(results)} requests in {wall:.1f} s against {url}"
    print_table(rows, title)
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "latency-cdf.png"
    plot_cdfs(results, png, title)
    (args.out / "summary.json").write_text(
        json.dumps(
            {"title": title, "rows": rows, "results": [asdict(r) for r in results]}, indent=1
        )
    )
    print(f"wrote {png} and {args.out / 'summary.json'}")
    errors = sum(not r.ok for r in results)
    for r in [r for r in results if not r.ok][:3]:
        print(f"  failed: request {r.index} ({r.model}): status {r.status}: {r.error}")
    if not results or errors == len(results) or errors / len(results) > args.max_error_rate:
        print(f"modelfleet load: {errors} of {len(results)} requests failed", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        trace = load_trace(args.trace, args.seed)
    except (TraceError, OSError) as e:
        print(f"modelfleet load: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main(args, trace))
    except KeyboardInterrupt:
        return 130
