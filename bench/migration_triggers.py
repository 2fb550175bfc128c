"""Does triggered migration pay, live? The same open-loop profile with and without it.

Usage::

    .venv/bin/python bench/migration_triggers.py --profiles mixed,homogeneous --engines 8 \\
        --rate 3 --duration 60 [--append bench/results/migration-live.md]

What runs, per profile and arm (``off`` first, then ``on``; fresh engines and a fresh
scheduler for each arm, so no prefix cache or learned model carries over):

* ``--engines`` engine simulators (llama-3-8b, at ``--time-scale``) in one pool behind
  ``modelfleet scheduler --no-ray`` (least-request placement). ``mixed``: half H100, half
  L40S (about 8 and 31 ms per token at time scale 1); ``homogeneous``: all H100 (the
  opposite case). Pool SLO: TTFT 1 s, TPOT 20 ms at time scale 1 (the L40S misses the TPOT
  target, the H100 meets it); both scaled by ``--time-scale``.
* arm ``on``: the RoutingPolicy enables migration (triggers load-imbalance and slo-rescue,
  maxConcurrent 4, minGainMs 200; the planner on the scheduler's live state); arm ``off``: no
  migration.
* a warm-up (4 short streams per engine), then Poisson arrivals at ``--rate`` per second for
  ``--duration`` seconds: greedy streaming requests, prompts unique (prefix-free, 20..80
  words), output 64..256 tokens (``ignore_eos``), completions and chat alternating, from a
  seeded RNG (the same requests and arrival times in both arms).

Figures per arm: the client's TTFT and TPOT (mean gap after the first token) p50/p99, SLO
attainment (TTFT and TPOT within target; and TPOT alone, what a move of a decoding request
can change), goodput (requests within SLO per second of the
arrival window), errors; from the scheduler's ``/metrics``: migrations switched by trigger,
failed hand-offs, tokens re-prefilled on destinations (the cost) and their share of output
tokens. The load average of the machine is printed with each arm.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.scheduler.conftest import free_port, start_scheduler, wait_listening  # noqa: E402
from tests.scheduler.fleet_helpers import (  # noqa: E402
    EngineProc,
    endpoints_yaml,
    fleet_yaml,
    pool_yaml,
    start_engine,
)

#: The pool's SLO at time scale 1 (multiplied by ``--time-scale``, like every latency).
TTFT_S, TPOT_S = 1.0, 0.020
MIGRATION = """  migration:
    enabled: true
    triggers: [load-imbalance, slo-rescue]
    maxConcurrent: 4
    minGainMs: 200
"""


def policy(migrate: bool) -> str:
    return (
        "apiVersion: modelfleet.io/v1alpha1\nkind: RoutingPolicy\n"
        "metadata: {name: trig, namespace: default}\nspec:\n  modelNames: [trig]\n"
        "  defaultTargets: [{pool: trig}]\n  placement: {profile: least-request}\n"
        + (MIGRATION if migrate else "")
    )


def body(i: int, rng: random.Random) -> tuple[str, dict[str, Any]]:
    kind = "chat" if i % 2 else "completion"
    words = " ".join(f"u{rng.randrange(100000)}" for _ in range(rng.randint(20, 80)))
    b: dict[str, Any] = {
        "model": "trig",
        "max_tokens": rng.randint(64, 256),
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "return_token_ids": True,
    }
    if kind == "chat":
        b["messages"] = [{"role": "user", "content": f"Q{i}: {words}"}]
    else:
        b["prompt"] = f"Q{i}: {words}"
    return kind, b


async def one(client: httpx.AsyncClient, url: str, kind: str, b: dict[str, Any]) -> dict[str, Any]:
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    t0 = time.monotonic()
    first = last = None
    n = 0
    error = None
    try:
        async with client.stream("POST", url + path, json=b, timeout=300) as r:
            if r.status_code != 200:
                return {"error": f"http-{r.status_code}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                obj = json.loads(line[6:])
                if "error" in obj:
                    error = str(obj["error"].get("code") or obj["error"].get("message"))
                    continue
                for c in obj.get("choices") or ():
                    k = len(c.get("token_ids") or ())
                    if k:
                        now = time.monotonic()
                        first = first if first is not None else now
                        last = now
                        n += k
    except httpx.HTTPError as e:
        return {"error": type(e).__name__}
    if first is None or last is None:
        return {"error": error or "no tokens"}
    ttft = first - t0
    tpot = (last - first) / (n - 1) if n > 1 else 0.0
    return {"ttft": ttft, "tpot": tpot, "tokens": n, "error": error}


def scrape(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def total(m: dict[str, float], name: str, *labels: str) -> float:
    return sum(v for k, v in m.items() if k.startswith(name + "{") and all(x in k for x in labels))


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def run_arm(profile: str, migrate: bool, args: argparse.Namespace) -> dict[str, Any]:
    n = args.engines
    accels = ["h100-80gb"] * n if profile == "homogeneous" else (
        ["h100-80gb"] * (n // 2) + ["l40s"] * (n - n // 2)
    )  # fmt: skip
    engines: list[EngineProc] = []
    proc: subprocess.Popen[str] | None = None
    try:
        engines = [
            start_engine("trig-8b", accelerator=a, time_scale=args.time_scale) for a in accels
        ]
        tmp = Path(tempfile.mkdtemp(prefix="trigbench-"))
        variants = {"h100": "h100-80gb"} if profile == "homogeneous" else {
            "h100": "h100-80gb", "l40s": "l40s"
        }  # fmt: skip
        ttft_ms, tpot_ms = (
            round(TTFT_S * 1000 * args.time_scale),
            round(TPOT_S * 1000 * args.time_scale),
        )
        pool = pool_yaml("trig", "trig-8b", variants) + (
            f"  slo: {{ttftMs: {ttft_ms}, tpotMs: {tpot_ms}}}\n"
        )
        rows = [
            ("trig", "h100" if a == "h100-80gb" else "l40s", e)
            for a, e in zip(accels, engines, strict=True)
        ]
        (tmp / "fleet.yaml").write_text(fleet_yaml(pool, policy(migrate), endpoints_yaml(rows)))
        proc = start_scheduler(tmp, free_port(), "--no-ray")
        url = wait_listening(proc)
        return asyncio.run(drive(url, args, len(engines)))
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        for e in engines:
            e.stop()


async def drive(url: str, args: argparse.Namespace, n_engines: int) -> dict[str, Any]:
    rng = random.Random(args.seed)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=None)) as client:
        warm = [body(100000 + i, rng) for i in range(4 * n_engines)]
        await asyncio.gather(*(one(client, url, k, {**b, "max_tokens": 24}) for k, b in warm))
        rng = random.Random(args.seed + 1)
        before = scrape(url)
        load0 = os.getloadavg()[0]
        t = 0.0
        plan: list[tuple[float, str, dict[str, Any]]] = []
        i = 0
        while True:
            t += rng.expovariate(args.rate)
            if t >= args.duration:
                break
            kind, b = body(i, rng)
            plan.append((t, kind, b))
            i += 1
        start = time.monotonic()

        async def at(when: float, kind: str, b: dict[str, Any]) -> dict[str, Any]:
            await asyncio.sleep(max(0.0, start + when - time.monotonic()))
            return await one(client, url, kind, b)

        results = await asyncio.gather(*(at(w, k, b) for w, k, b in plan))
        wall = time.monotonic() - start
        after = scrape(url)
        load1 = os.getloadavg()[0]
    ok = [r for r in results if not r.get("error")]
    kinds: dict[str, int] = {}
    for r in results:
        if r.get("error"):
            kinds[str(r["error"])] = kinds.get(str(r["error"]), 0) + 1
    ttfts = [r["ttft"] for r in ok]
    tpots = [r["tpot"] for r in ok]
    k = args.time_scale
    met = [r for r in ok if r["ttft"] <= TTFT_S * k and r["tpot"] <= TPOT_S * k]
    out_tokens = sum(r["tokens"] for r in ok)

    def d(name: str, *labels: str) -> float:
        return total(after, name, *labels) - total(before, name, *labels)

    reprefill = d("modelfleet_migration_reprefill_tokens_total")
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_kinds": ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) or "-",
        "ttft_p50_ms": pct(ttfts, 0.5) * 1000,
        "ttft_p99_ms": pct(ttfts, 0.99) * 1000,
        "tpot_p50_ms": pct(tpots, 0.5) * 1000,
        "tpot_p99_ms": pct(tpots, 0.99) * 1000,
        "slo_attainment_pct": 100.0 * len(met) / max(1, len(results)),
        "tpot_attainment_pct": 100.0
        * sum(r["tpot"] <= TPOT_S * k for r in ok)
        / max(1, len(results)),
        "goodput_rps": len(met) / args.duration,
        "output_tokens": out_tokens,
        "moves_load_balance": d("modelfleet_migrations_total", "trigger=load-balance", "switched"),
        "moves_slo_rescue": d("modelfleet_migrations_total", "trigger=slo-rescue", "switched"),
        "failed_handoffs": d("modelfleet_migrations_total", "outcome=failed"),
        "reprefill_tokens": reprefill,
        "reprefill_pct_of_output": 100.0 * reprefill / max(1, out_tokens),
        "wall_s": wall,
        "loadavg": f"{load0:.1f} -> {load1:.1f}",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profiles", default="mixed,homogeneous")
    ap.add_argument("--engines", type=int, default=8)
    ap.add_argument("--rate", type=float, default=3.0, help="arrivals per second")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument(
        "--time-scale",
        type=float,
        default=2.0,
        help="engines' --time-scale (2: half speed, so loaded cores keep up); SLO scaled too",
    )
    ap.add_argument("--append", default=None, help="append the report to this file")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the engines on the way out
    for p in args.profiles.split(","):
        if p not in ("mixed", "homogeneous"):
            ap.error(f"--profiles: unknown profile {p!r} (mixed, homogeneous)")
    if args.engines < 2 or args.rate <= 0 or args.duration <= 0 or args.time_scale <= 0:
        ap.error("--engines >= 2, --rate > 0, --duration > 0 and --time-scale > 0")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for p in args.profiles.split(","):
        for arm in ("off", "on"):
            r = run_arm(p, arm == "on", args)
            print(p, arm, r, flush=True)
            results.setdefault(p, {})[arm] = r
    cmd = "bench/migration_triggers.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        f"## 4. Triggered migration: does it pay? `.venv/bin/python {cmd}`",
        "",
        f"{args.engines} real-time engine simulators per arm (fresh engines and scheduler each "
        f"arm), one pool, least-request; Poisson {args.rate}/s for {args.duration:.0f} s, "
        f"seed {args.seed}; engines' time scale {args.time_scale} (every latency x"
        f"{args.time_scale}); SLO TTFT {TTFT_S * 1000 * args.time_scale:.0f} ms, "
        f"TPOT {TPOT_S * 1000 * args.time_scale:.0f} ms. "
        "Arm `on`: migration enabled (load-imbalance + slo-rescue, maxConcurrent 4, "
        "minGainMs 200); `off`: none.",
        "",
    ]
    keys = list(next(iter(next(iter(results.values())).values())))
    for p, arms in results.items():
        lines += [f"### {p}", "", "| figure | off | on |", "|---|---|---|"]
        for k in keys:
            a, b = arms["off"][k], arms["on"][k]
            fa = f"{a:.1f}" if isinstance(a, float) else str(a)
            fb = f"{b:.1f}" if isinstance(b, float) else str(b)
            lines.append(f"| {k} | {fa} | {fb} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
