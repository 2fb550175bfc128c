"""Decision-cost microbenchmark of the default modelfleet placement profile.

Goal (reference/decision-cost.md): a placement decision in <= 0.1 ms p99 with 64 endpoints and
8k-token prompts, and <= 0.05 CPU-seconds per request at 100k-token prompts.

What is timed, per request, in one process:

* ``hash``          — the request's approximate chain (ApproxAutoHasher, block 64) from a numpy
                      array of token ids (``hash-list``: from a Python list, as a host that keeps
                      ids in lists would pay).
* ``pick``          — ``profile.pick`` with the chain already computed (the host hashes once and
                      reuses the chain for every endpoint, scorer and the migration planner).
* ``pick, no shortlist`` — the same profile without its ``shortlist`` filter: every scorer
                      looks at all endpoints.
* ``pick+hash``     — ``pick`` on a fresh view, hashing included.
* ``full``          — hash + pick + ``on_routed`` (the index learning the chain).
* ``naive``         — the baseline the goal was set against, run here in the same process:
                      vLLM's block-hash recipe in pure Python (sha256 of pickled
                      ``(parent, tuple(block), None)``, block 16) and a longest-prefix match
                      against 64 per-endpoint hash sets, then the least-loaded tie-break.
* ``round-robin``   — the cheapest policy, as a floor for framework overhead.

Timing on a shared machine: wall-clock p99 here measures the OS and hypervisor (load average
above 10 on 2 cores while other jobs run; preemptions of several ms), and thread CPU time is
inflated by steal time on this VM. So every side-effect-free operation (hash, pick, naive) is
timed ``--repeats`` times per request and the minimum is kept: the per-request intrinsic cost,
whose distribution over requests (different prompts, different match depths) gives p50/p99.
``full`` changes state (``on_routed``), so it is timed on ``--repeats`` fresh requests.

The fleet: 64 endpoints with load and perf models; the approximate index is warmed with
``--warm`` routed requests drawn from ``--prefixes`` shared prefixes, and every measured
request shares a random prefix (so the chain walk goes deep) plus a fresh suffix.

Usage::

    .venv/bin/python bench/decision_cost.py            # writes bench/results/decision-cost.md
    .venv/bin/python bench/decision_cost.py --quick    # smaller run, prints only
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import pickle
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelfleet.policy.baselines import build_policy
from modelfleet.policy.config import default_profile_spec
from modelfleet.policy.hashing import ApproxAutoHasher
from modelfleet.policy.perf import ParametricPerfModel
from modelfleet.policy.types import EndpointId, EndpointView, RequestId, RequestView

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "decision-cost.md"
PERF = ParametricPerfModel()
FROZEN = "pick, after gc.freeze()"
KEYS = (
    "hash",
    "hash-list",
    "pick",
    "pick, after gc.freeze()",
    "pick, no shortlist",
    "pick+hash",
    "full",
    "round-robin",
    "naive",
)


def vllm_chain(ids: Sequence[int], block: int = 16) -> list[bytes]:
    """vLLM's default recipe (sha256 of pickled tuples), pure Python — the naive hasher."""
    parent = hashlib.sha256(pickle.dumps("vllm-none-hash", protocol=5)).digest()
    out = []
    for i in range(len(ids) // block):
        parent = hashlib.sha256(
            pickle.dumps((parent, tuple(ids[i * block : (i + 1) * block]), None), protocol=5)
        ).digest()
        out.append(parent)
    return out


@dataclass
class Workload:
    prefixes: list[np.ndarray]
    rng: np.random.Generator

    def prompt(self, tokens: int, shared: float = 0.75) -> np.ndarray:
        pre = self.prefixes[int(self.rng.integers(len(self.prefixes)))]
        k = min(len(pre), int(tokens * shared))
        tail = self.rng.integers(0, 150_000, tokens - k, dtype=np.int64)
        return np.concatenate([pre[:k], tail])


def fleet(n: int, rng: random.Random) -> list[EndpointView]:
    return [
        EndpointView(
            id=EndpointId(f"ep-{i:03d}"),
            accelerator=("h100", "a100", "l40s")[i % 3],
            running=rng.randrange(0, 40),
            waiting=rng.randrange(0, 5),
            kv_cache_usage=rng.random(),
            inflight_requests=rng.randrange(0, 45),
            inflight_tokens=rng.randrange(0, 400_000),
            inflight_prefill_tokens=rng.randrange(0, 30_000),
            relative_speed=(2.0, 1.3, 1.0)[i % 3],
            perf=PERF,
        )
        for i in range(n)
    ]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


class Naive:
    """Per-endpoint hash sets; longest prefix per endpoint by probing each set along the chain."""

    def __init__(self, endpoints: Sequence[EndpointView]) -> None:
        self.sets: dict[EndpointId, set[bytes]] = {e.id: set() for e in endpoints}

    def learn(self, ep: EndpointId, chain: list[bytes]) -> None:
        self.sets[ep].update(chain)

    def pick(self, ids: np.ndarray, endpoints: Sequence[EndpointView]) -> tuple[EndpointId, list]:
        chain = vllm_chain(ids.tolist())
        best, best_key = endpoints[0].id, (-1, 0)
        for e in endpoints:
            s = self.sets[e.id]
            n = 0
            for h in chain:
                if h not in s:
                    break
                n += 1
            key = (n, -e.inflight_requests)
            if key > best_key:
                best, best_key = e.id, key
        return best, chain


def run(
    seed: int, endpoints: int, tokens: int, n: int, warm: int, n_prefixes: int, repeats: int
) -> dict:
    rnd = random.Random(seed)
    wl = Workload(
        [np.random.default_rng(seed + i).integers(0, 150_000, tokens) for i in range(n_prefixes)],
        np.random.default_rng(seed),
    )
    eps = fleet(endpoints, rnd)
    pol = build_policy("modelfleet", clock=time.perf_counter, rng=random.Random(seed))
    rr = build_policy("round-robin", clock=time.perf_counter, rng=random.Random(seed))
    spec = default_profile_spec()
    spec.filters = [f for f in spec.filters if f.type != "shortlist"]
    full_scan = build_policy(
        "modelfleet", clock=time.perf_counter, rng=random.Random(seed), spec=spec
    )
    naive = Naive(eps)
    hasher = ApproxAutoHasher(block_size=64)
    for i in range(warm):
        ids = wl.prompt(tokens)
        r = RequestView(id=RequestId(f"w{i}"), prompt_tokens=tokens, token_ids=ids)
        d = pol.profile.pick(r, eps)
        pol.profile.on_routed(r, d)
        full_scan.profile.on_routed(r, d)
        naive.learn(d.endpoint, vllm_chain(ids.tolist()))

    res: dict[str, list[float]] = {k: [] for k in KEYS}
    clock = time.perf_counter

    def best_of(fn: Callable[[], object]) -> float:
        """Min wall time over ``repeats`` runs of a side-effect-free call (see module doc)."""
        best = float("inf")
        for _ in range(repeats):
            t0 = clock()
            fn()
            best = min(best, clock() - t0)
        return best

    gc.collect()
    for i in range(n):
        ids = wl.prompt(tokens)
        lst = ids.tolist()

        def mk(tag: str, ids: object = ids, i: int = i) -> RequestView:
            return RequestView(id=RequestId(f"{tag}{i}"), prompt_tokens=tokens, token_ids=ids)  # type: ignore[arg-type]

        r = mk("p")
        r.chain(hasher)  # the host hashed once already
        res["hash"].append(best_of(lambda mk=mk: hasher.chain(mk("h"))))
        res["hash-list"].append(best_of(lambda mk=mk, lst=lst: hasher.chain(mk("l", lst))))
        res["pick"].append(best_of(lambda r=r: pol.profile.pick(r, eps)))
        res["pick, no shortlist"].append(best_of(lambda r=r: full_scan.profile.pick(r, eps)))
        res["pick+hash"].append(best_of(lambda mk=mk: pol.profile.pick(mk("q"), eps)))
        res["naive"].append(best_of(lambda ids=ids: naive.pick(ids, eps)))
        res["round-robin"].append(best_of(lambda r=r: rr.profile.pick(r, eps)))
        rr.profile.on_routed(r, rr.profile.pick(r, eps))

        # stateful (the index learns the chain): min over `repeats` fresh requests
        best = float("inf")
        for k in range(repeats):
            r = mk(f"f{k}-", wl.prompt(tokens))
            t0 = clock()
            d = pol.profile.pick(r, eps)
            pol.profile.on_routed(r, d)
            best = min(best, clock() - t0)
        res["full"].append(best)

    # The p99 above includes CPython's cyclic GC: every few hundred allocations a collection
    # scans the young objects, and older generations hold the whole prefix index. A latency-
    # sensitive host calls gc.freeze() after warm-up (and periodically), which moves existing
    # objects out of the collector's scans. Same requests, same process:
    gc.collect()
    gc.freeze()
    try:
        for i in range(n):
            r = RequestView(
                id=RequestId(f"z{i}"), prompt_tokens=tokens, token_ids=wl.prompt(tokens)
            )
            r.chain(hasher)
            res[FROZEN].append(best_of(lambda r=r: pol.profile.pick(r, eps)))
    finally:
        gc.unfreeze()
    return {k: (statistics.median(v), pct(v, 0.99)) for k, v in res.items()}


def cpu_per_request(seed: int, endpoints: int, tokens: int, n: int) -> tuple[float, float]:
    """CPU seconds per request (hash + pick + on_routed) and for the naive path."""
    rnd = random.Random(seed)
    wl = Workload(
        [np.random.default_rng(seed + i).integers(0, 150_000, tokens) for i in range(8)],
        np.random.default_rng(seed),
    )
    eps = fleet(endpoints, rnd)
    pol = build_policy("modelfleet", clock=time.perf_counter, rng=random.Random(seed))
    prompts = [wl.prompt(tokens) for _ in range(n)]
    t0 = time.process_time()
    for i, ids in enumerate(prompts):
        r = RequestView(id=RequestId(f"c{i}"), prompt_tokens=tokens, token_ids=ids)
        d = pol.profile.pick(r, eps)
        pol.profile.on_routed(r, d)
    ours = (time.process_time() - t0) / n
    naive = Naive(eps)
    m = max(2, n // 4)
    t0 = time.process_time()
    for ids in prompts[:m]:
        ep, chain = naive.pick(ids, eps)
        naive.learn(ep, chain)
    theirs = (time.process_time() - t0) / m
    return ours, theirs


def commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoints", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--warm", type=int, default=1000)
    ap.add_argument("--prefixes", type=int, default=64)
    ap.add_argument("--long-tokens", type=int, default=100_000)
    ap.add_argument("--long-requests", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--repeats", type=int, default=5, help="timings per request (min kept)")
    ap.add_argument("--quick", action="store_true", help="small run, print only")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.warm, args.long_requests, args.seeds = 200, 200, 8, [1]

    per_seed = []
    for s in args.seeds:
        per_seed.append(
            run(
                s,
                args.endpoints,
                args.tokens,
                args.requests,
                args.warm,
                args.prefixes,
                args.repeats,
            )
        )
        print(
            f"seed {s}: "
            + ", ".join(f"{k} p99 {v[1] * 1e6:.0f}us" for k, v in per_seed[-1].items()),
            file=sys.stderr,
        )
    cpu = [
        cpu_per_request(s, args.endpoints, args.long_tokens, args.long_requests) for s in args.seeds
    ]

    def agg(key: str, which: int) -> tuple[float, float, float]:
        xs = [r[key][which] for r in per_seed]
        return statistics.median(xs), min(xs), max(xs)

    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Decision cost of the default modelfleet profile",
        "",
        f"Command: `.venv/bin/python bench/decision_cost.py"
        f"{' --quick' if args.quick else ''}` · commit `{commit()}` · "
        f"{platform.python_implementation()} {platform.python_version()} · "
        f"{platform.machine()} ({nproc} cores; "
        "shared with other jobs, so absolute times are this machine's and noisy — the ratios "
        "against the naive baseline, run in the same process, are the result).",
        "",
        f"Setup: {args.endpoints} endpoints, {args.tokens}-token prompts (75% shared with one of "
        f"{args.prefixes} prefixes, the rest fresh), index warmed with {args.warm} routed "
        f"requests, {args.requests} measured requests per seed, seeds {args.seeds} "
        "(median over seeds, [min–max]).",
        "",
        f"Per-request wall time, min of {args.repeats} repeats (`full`, which changes the "
        f"index, over {args.repeats} fresh requests): the intrinsic cost; this VM's raw "
        "wall-clock p99 is dominated by preemption (load average > 10 on 2 cores).",
        "",
        "| what | p50 (µs) | p99 (µs) | p99 naive / p99 this |",
        "| --- | ---: | ---: | ---: |",
    ]
    naive99 = agg("naive", 1)[0]
    for key in KEYS:
        p50, p99 = agg(key, 0), agg(key, 1)
        lines.append(
            f"| {key} | {p50[0] * 1e6:.0f} [{p50[1] * 1e6:.0f}–{p50[2] * 1e6:.0f}] "
            f"| {p99[0] * 1e6:.0f} [{p99[1] * 1e6:.0f}–{p99[2] * 1e6:.0f}] "
            f"| {naive99 / p99[0]:.1f}× |"
        )
    ours = statistics.median(c[0] for c in cpu)
    theirs = statistics.median(c[1] for c in cpu)
    lines += [
        "",
        f"CPU per request at {args.long_tokens:,}-token prompts (hash + pick + on_routed, "
        f"{args.long_requests} requests per seed, `time.process_time`): "
        f"**{ours * 1e3:.2f} ms** (goal ≤ 50 ms); naive path {theirs * 1e3:.1f} ms "
        f"(**{theirs / ours:.0f}×** more).",
        "",
        "Against the goals (this machine):",
        f"- {args.tokens // 1024}k tokens × {args.endpoints} endpoints, goal ≤ 100 µs p99. "
        f"The decision with the request's chain already computed (`pick`): "
        f"{agg(FROZEN, 1)[0] * 1e6:.0f} µs p99 [{agg(FROZEN, 1)[1] * 1e6:.0f}–"
        f"{agg(FROZEN, 1)[2] * 1e6:.0f} over seeds] after `gc.freeze()`, "
        f"{agg('pick', 1)[0] * 1e6:.0f} µs p99 with CPython's GC left as is — "
        + (
            "**met** (median of seeds) when the host freezes the GC after warm-up."
            if agg(FROZEN, 1)[0] <= 100e-6
            else "**not met** on this machine."
        )
        + f" Counting the hashing of the request too (`pick+hash`): "
        f"{agg('pick+hash', 0)[0] * 1e6:.0f} µs p50 / {agg('pick+hash', 1)[0] * 1e6:.0f} µs p99 "
        + (
            "— **met**."
            if agg("pick+hash", 1)[0] <= 100e-6
            else "— **not met**: the numpy hash costs ~25-40 µs; a native chain hash "
            "(~5 µs for 32 KB) or hashes passed in by the caller (`block_hashes`) close the gap."
        ),
        f"- {args.long_tokens:,} tokens, goal ≤ 50 ms CPU per request: {ours * 1e3:.2f} ms — "
        + (f"**met** ({50e-3 / ours:.0f}× under)." if ours <= 50e-3 else "**not met**."),
        "",
        "Reading the table:",
        "- `pick, after gc.freeze()` is `pick` on fresh requests after `gc.freeze()`: the gap "
        "to `pick` at p99 is CPython's cyclic GC (the index is a large heap), not the policy.",
        "- `pick, no shortlist` is the same profile scoring all endpoints: the shortlist "
        "(8 longest prefix hits + least loaded, k = 16) is what brings the scorers' "
        "per-endpoint Python down; below 16 endpoints it is a no-op.",
        "- `pick` is the decision as the scheduler runs it when the request's chain is computed "
        "once (by the host, or memoised on the RequestView) and reused for all endpoints and "
        "plugins; `pick+hash` adds hashing from a numpy array; `full` adds the index update "
        "(`on_routed`), which the scheduler can do after forwarding the request.",
        "- `hash-list` shows what converting a Python list of ids costs; hosts should keep "
        "token ids as numpy arrays (or pass `block_hashes`).",
        "- Prefix lookup: one map block-hash → endpoint bitmask for the whole pool; the "
        "approximate index keeps every endpoint's blocks of a chain prefix-closed (LRU touches "
        "tails first), so the walk binary-searches the depths where endpoints drop out "
        "(~10-20 dict lookups for 128 blocks) instead of probing 64 endpoints × 128 blocks. "
        "The rest of `pick` is 3 filters and 6 scorers in Python over the shortlist.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
