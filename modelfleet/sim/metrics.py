"""Per-run metrics of a simulated cluster: latency percentiles, goodput, prefix reuse, balance.

Definitions follow ``shared/reference/bench-conventions.md``:

- TTFT = first token time - arrival; TPOT = (finish - first token) / (output tokens - 1), the mean
  time per output token after the first, per request (undefined for 1-token outputs, which then
  meet any TPOT target); e2e = finish - arrival. Percentiles use linear interpolation between
  order statistics (numpy's default), so p50 of [1, 2] is 1.5. A request that never got its first
  token (shed, refused or still waiting) counts as an *unserved* request with infinite TTFT and
  e2e latency in the percentiles (so 2 % unserved requests make p99 TTFT infinite: a policy
  cannot improve its tail by dropping requests); means and counts are over served requests.
- Goodput = completed requests that met *both* their TTFT and TPOT targets, per second of run
  (first arrival to last finish). Attainment = those requests / all requests (unfinished = miss).
- Prefix hit rate = prompt tokens served from the cache at the request's first placement /
  prompt tokens sent. Bounds on the same trace (engine block granularity, 16 tokens):
  the infinite-cache bound (every block whose whole prefix appeared before) and the
  pooled-capacity bound (one LRU cache with the fleet's total KV capacity). Both apply vLLM's rule
  that the last prompt token is always computed, so a fully cached prompt hits at most
  ``((n - 1) // block) * block`` tokens.
- Load imbalance = time-average of (max / mean) over instances of running + waiting requests,
  from samples taken at a fixed period (so the sample mean is the time average); samples where
  the whole fleet is idle count as perfectly balanced (1.0).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from modelfleet.sim.traces import Trace

__all__ = [
    "LatencySummary",
    "LoadSample",
    "PrefixBounds",
    "RequestRecord",
    "RunMetrics",
    "compute_metrics",
    "infinite_cache_bound",
    "load_imbalance",
    "percentile",
    "pooled_capacity_bound",
    "prefix_bounds",
]


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request (filled by the cluster loop; times in virtual seconds)."""

    request_id: str
    arrival_s: float
    prompt_tokens: int
    max_tokens: int
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    slo_class: str = "standard"
    first_endpoint: str = ""
    endpoint: str = ""
    first_token_s: float | None = None
    finish_s: float | None = None
    output_tokens: int = 0
    cached_tokens: int = 0
    migrations: int = 0
    shed: bool = False
    failed: bool = False  # refused by the engine it was sent to (too long, queue full)

    @property
    def finished(self) -> bool:
        return self.finish_s is not None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        if self.first_token_s is None or self.finish_s is None or self.output_tokens < 2:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)

    @property
    def e2e_s(self) -> float | None:
        return None if self.finish_s is None else self.finish_s - self.arrival_s

    def met_slo(self) -> bool:
        """Finished, and both TTFT and TPOT within target (a missing target always holds)."""
        ttft = self.ttft_s
        if self.finish_s is None or ttft is None:
            return False
        if self.ttft_slo_s is not None and ttft > self.ttft_slo_s:
            return False
        tpot = self.tpot_s
        return not (self.tpot_slo_s is not None and tpot is not None and tpot > self.tpot_slo_s)


@dataclass(frozen=True, slots=True)
class LoadSample:
    """Running + waiting requests per instance (fleet order) at one sample time."""

    time_s: float
    loads: tuple[int, ...]


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-th percentile (0..100, linear interpolation); NaN for an empty input."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return float("nan")
    return float(np.percentile(arr, q))


@dataclass(frozen=True)
class LatencySummary:
    """p50 / p90 / p99 of one latency (seconds) with unserved requests as infinite latencies;
    mean and count over the requests that have the latency."""

    p50: float
    p90: float
    p99: float
    mean: float
    count: int
    unserved: int = 0

    @classmethod
    def of(cls, values: Sequence[float], unserved: int = 0) -> LatencySummary:
        """Summary of `values` plus `unserved` requests that never got this latency (+inf)."""
        if unserved < 0:
            raise ValueError(f"unserved must be >= 0, got {unserved}")
        arr = np.asarray(values, dtype=float)
        if arr.size + unserved == 0:
            nan = float("nan")
            return cls(nan, nan, nan, nan, 0)
        mean = float(arr.mean()) if arr.size else float("nan")
        if unserved:
            p50, p90, p99 = (_percentile_with_inf(np.sort(arr), unserved, q) for q in (50, 90, 99))
        else:
            p50, p90, p99 = (float(x) for x in np.percentile(arr, [50, 90, 99]))
        return cls(p50, p90, p99, mean, int(arr.size), unserved)


def _percentile_with_inf(finite: np.ndarray, n_inf: int, q: float) -> float:
    """The q-th percentile (linear interpolation) of sorted `finite` values plus `n_inf` +inf.

    numpy's interpolation computes ``inf - inf`` (NaN) next to an infinite order statistic, so
    the order statistics are read here: the result is infinite as soon as it interpolates
    towards (or lands on) an infinite one.
    """
    n = finite.size + n_inf
    pos = q / 100 * (n - 1)
    lo = math.floor(pos)
    frac = pos - lo
    if lo >= finite.size or (frac > 0 and lo + 1 >= finite.size):
        return math.inf
    a = float(finite[lo])
    return a if frac == 0 else a + (float(finite[lo + 1]) - a) * frac


def load_imbalance(samples: Iterable[LoadSample]) -> float:
    """Time-average of max/mean load over instances (idle samples count as 1.0); NaN if none."""
    ratios: list[float] = []
    for s in samples:
        if not s.loads:
            continue
        mean = sum(s.loads) / len(s.loads)
        ratios.append(1.0 if mean == 0 else max(s.loads) / mean)
    return float(np.mean(ratios)) if ratios else float("nan")


# --------------------------------------------------------------------------- prefix-reuse bounds


def _block_spans(n_tokens: int, n_blocks: int, block_tokens: int) -> list[int]:
    """Tokens of the prompt inside each trace block (all full except possibly the last)."""
    spans = [block_tokens] * n_blocks
    if n_blocks:
        spans[-1] = n_tokens - (n_blocks - 1) * block_tokens
    return spans


def _cap_last_token(hit: int, n_tokens: int, engine_block: int) -> int:
    return min(hit, ((n_tokens - 1) // engine_block) * engine_block)


def infinite_cache_bound(trace: Trace, *, engine_block: int = 16) -> tuple[int, int]:
    """(hit tokens, prompt tokens) with an infinite cache shared by the whole fleet.

    A trace block id identifies its prefix, so the cache is a map id -> most tokens of that block
    seen so far; a request hits, walking its blocks in order, the whole engine blocks it finds,
    and stops at the first block not fully covered.
    """
    seen: dict[int, int] = {}
    hits = 0
    total = 0
    bt = trace.block_tokens
    for r in trace.requests:
        spans = _block_spans(r.input_tokens, len(r.block_ids), bt)
        hit = 0
        for bid, need in zip(r.block_ids, spans, strict=True):
            have = seen.get(bid, 0)
            hit += (min(have, need) // engine_block) * engine_block
            if have < need:
                break
        hits += _cap_last_token(hit, r.input_tokens, engine_block)
        total += r.input_tokens
        for bid, need in zip(r.block_ids, spans, strict=True):
            if seen.get(bid, 0) < need:
                seen[bid] = need
    return hits, total


def pooled_capacity_bound(
    trace: Trace, capacity_blocks: int, *, engine_block: int = 16
) -> tuple[int, int]:
    """(hit tokens, prompt tokens) for one LRU cache holding ``capacity_blocks`` engine blocks.

    Entries are trace blocks holding a whole number of engine blocks. After each request its
    blocks are touched last-to-first, like vLLM's free queue (a request's tail is evicted before
    its head), and the least recently used entries are evicted until the total fits. Running
    requests' own blocks are not reserved, so this is an optimistic bound for the fleet.
    """
    if capacity_blocks <= 0:
        raise ValueError(f"capacity_blocks must be positive, got {capacity_blocks}")
    lru: OrderedDict[int, int] = OrderedDict()  # block id -> cached engine blocks
    used = 0
    hits = 0
    total = 0
    bt = trace.block_tokens
    for r in trace.requests:
        spans = _block_spans(r.input_tokens, len(r.block_ids), bt)
        hit = 0
        for bid, need in zip(r.block_ids, spans, strict=True):
            have = lru.get(bid, 0) * engine_block
            hit += (min(have, need) // engine_block) * engine_block
            if have < need:
                break
        hits += _cap_last_token(hit, r.input_tokens, engine_block)
        total += r.input_tokens
        for bid, need in zip(reversed(r.block_ids), reversed(spans), strict=True):
            have = lru.get(bid, 0)
            want = max(have, need // engine_block)
            if bid in lru:
                lru.move_to_end(bid)
            if want:
                lru[bid] = want
                used += want - have
        while used > capacity_blocks and lru:
            _, n = lru.popitem(last=False)
            used -= n
    return hits, total


@dataclass(frozen=True)
class PrefixBounds:
    """Hit-rate bounds of a trace (fractions of prompt tokens)."""

    infinite_cache: float
    pooled_capacity: float
    capacity_blocks: int


def prefix_bounds(trace: Trace, capacity_blocks: int, *, engine_block: int = 16) -> PrefixBounds:
    h1, t1 = infinite_cache_bound(trace, engine_block=engine_block)
    h2, t2 = pooled_capacity_bound(trace, capacity_blocks, engine_block=engine_block)
    return PrefixBounds(h1 / t1 if t1 else 0.0, h2 / t2 if t2 else 0.0, capacity_blocks)


# --------------------------------------------------------------------------- run summary


@dataclass(frozen=True)
class RunMetrics:
    """Everything a benchmark table needs from one simulated run."""

    requests: int
    completed: int
    shed: int
    duration_s: float
    ttft: LatencySummary
    tpot: LatencySummary
    e2e: LatencySummary
    goodput_rps: float
    attainment: float
    prefix_hit_rate: float
    migrations: int
    migrated_requests: int
    load_imbalance: float
    per_instance_mean_load: Mapping[str, float]
    per_instance_requests: Mapping[str, int]
    bounds: PrefixBounds | None = None
    extra: Mapping[str, float] = field(default_factory=dict)
    failed: int = 0

    def as_dict(self) -> dict[str, object]:
        def lat(s: LatencySummary) -> dict[str, float]:
            return {
                "p50": s.p50,
                "p90": s.p90,
                "p99": s.p99,
                "mean": s.mean,
                "count": s.count,
                "unserved": s.unserved,
            }

        out: dict[str, object] = {
            "requests": self.requests,
            "completed": self.completed,
            "shed": self.shed,
            "failed": self.failed,
            "duration_s": self.duration_s,
            "ttft_s": lat(self.ttft),
            "tpot_s": lat(self.tpot),
            "e2e_s": lat(self.e2e),
            "goodput_rps": self.goodput_rps,
            "attainment": self.attainment,
            "prefix_hit_rate": self.prefix_hit_rate,
            "migrations": self.migrations,
            "migrated_requests": self.migrated_requests,
            "load_imbalance": self.load_imbalance,
            "per_instance_mean_load": dict(self.per_instance_mean_load),
            "per_instance_requests": dict(self.per_instance_requests),
            "extra": dict(self.extra),
        }
        if self.bounds is not None:
            out["prefix_bound_infinite"] = self.bounds.infinite_cache
            out["prefix_bound_pooled"] = self.bounds.pooled_capacity
        return out


def compute_metrics(
    records: Sequence[RequestRecord],
    samples: Sequence[LoadSample],
    endpoint_ids: Sequence[str],
    *,
    migrations: int = 0,
    bounds: PrefixBounds | None = None,
    extra: Mapping[str, float] | None = None,
) -> RunMetrics:
    """Summarise one run (see the module docstring for every definition)."""
    done = [r for r in records if r.finished]
    ttft = [t for r in records if (t := r.ttft_s) is not None]
    unserved_ttft = len(records) - len(ttft)
    tpot = [t for r in done if (t := r.tpot_s) is not None]
    e2e = [t for r in done if (t := r.e2e_s) is not None]
    met = sum(1 for r in records if r.met_slo())
    if records:
        start = min(r.arrival_s for r in records)
        end = max((r.finish_s for r in done if r.finish_s is not None), default=start)
        duration = max(end - start, 0.0)
    else:
        duration = 0.0
    sent = sum(r.prompt_tokens for r in records if r.first_endpoint)
    cached = sum(r.cached_tokens for r in records if r.first_endpoint)
    mean_load: dict[str, float] = {}
    if samples:
        arr = np.asarray([s.loads for s in samples], dtype=float)
        for i, eid in enumerate(endpoint_ids):
            mean_load[eid] = float(arr[:, i].mean())
    per_req: dict[str, int] = dict.fromkeys(endpoint_ids, 0)
    for r in records:
        if r.first_endpoint:
            per_req[r.first_endpoint] = per_req.get(r.first_endpoint, 0) + 1
    return RunMetrics(
        requests=len(records),
        completed=len(done),
        shed=sum(1 for r in records if r.shed),
        duration_s=duration,
        ttft=LatencySummary.of(ttft, unserved=unserved_ttft),
        tpot=LatencySummary.of(tpot),
        e2e=LatencySummary.of(e2e, unserved=len(records) - len(e2e)),
        goodput_rps=met / duration if duration > 0 else 0.0,
        attainment=met / len(records) if records else 0.0,
        prefix_hit_rate=cached / sent if sent else 0.0,
        migrations=migrations,
        migrated_requests=sum(1 for r in records if r.migrations),
        load_imbalance=load_imbalance(samples),
        per_instance_mean_load=mean_load,
        per_instance_requests=per_req,
        bounds=bounds,
        extra=dict(extra or {}),
        failed=sum(1 for r in records if r.failed),
    )
