"""The SLO autoscaler's decision: replicas per variant from (spec, observed load, memory, now).

Pure: no clock, no I/O. The operator's timer fetches the pool's load from the scheduler's
``Stats``, calls :func:`decide`, and applies the result; the simulated-day benchmark calls the
same function on the simulator's load.

Algorithm, per decision:

1. **Capacity of one replica** of each variant (:func:`replica_capacity`): the highest arrival
   rate λ (requests/s) at which the variant's performance model (:mod:`modelfleet.policy.perf`,
   the model the scheduler's SLO scorers use) still predicts both targets, with
   :data:`HEADROOM` of each target kept free for what a mean-value model does not see. With
   mean prompt ``P`` (a share ``h`` of it cached), mean output ``O``:

   - prefill of one request ``S = predict_ttft(P, hP, running=N)``, utilisation ``ρ = λS``;
   - decoding sequences ``N = λ · O · TPOT(N)`` (Little's law; solved by fixed-point
     iteration), with decode steps stretched by the prefill work interleaved with them:
     ``TPOT(N) = predict_tpot(N) / (1 - ρ)``;
   - TTFT at the SLO percentile ``q``: ``S`` plus the M/M/1 waiting-time quantile
     ``ln(ρ / (1 - q)) / (1/S - λ)`` when ``ρ > 1 - q`` (zero otherwise).

   Both predictions grow with λ, so the largest feasible λ is found by bisection.
2. **Demand**: the observed arrival rate, plus the requests that found no ready endpoint over
   the window (demand a scaled-to-zero pool cannot place). If the measured latency at the SLO
   percentile breaks a target while the model says the current fleet suffices, the model is
   optimistic: demand is raised to what the current fleet holds plus one replica of the best
   value variant (reason ``slo-violation``) — the closed loop that corrects a wrong prior.
3. **Cheapest mix** (:func:`cheapest_mix`): integer replicas ``n_v`` within each variant's
   ``[minReplicas, maxReplicas]`` minimising ``Σ n_v · cost_v`` subject to
   ``Σ n_v · λ_v ≥ demand``, by branch and bound over variants ordered by cost per unit of
   capacity; among mixes of equal cost, the one closest to the current replicas (less churn).
   If even every variant at its maximum falls short, every variant gets its maximum.
4. **Stabilisation** (as the Horizontal Pod Autoscaler does it): each variant's raw
   recommendations are remembered; the applied value rises only to the *lowest*
   recommendation of the scale-up window and falls only to the *highest* of the scale-down
   window, so a short dip or spike moves nothing.
5. **Zero**: when every variant allows 0 replicas and the pool has seen no request, queued
   request or unplaced request for ``scaleToZeroAfterSeconds``, every variant goes to 0
   (reason ``idle``); before that an idle pool holds its replicas (``idle-hold``). A pool at
   zero with queued or unplaced requests gets at least one replica of the cheapest variant
   that can serve at once, skipping the scale-up window (``wake-from-zero``).

Recommendations are kept as change points per variant (a value and when it began), so the
memory stays small; a change point is dropped once its successor is older than the longest
window. The memory lives in the pool's status, so a restarted operator decides as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from modelfleet.policy.perf import PerfModel

__all__ = [
    "HEADROOM",
    "REASONS",
    "AutoscalerMemory",
    "Demand",
    "ScaleDecision",
    "ScalingWindows",
    "SloTarget",
    "VariantModel",
    "cheapest_mix",
    "decide",
    "replica_capacity",
]

#: Every reason :func:`decide` gives a variant's replicas (module docstring).
REASONS = (
    "slo",
    "slo-violation",
    "at-max",
    "idle",
    "idle-hold",
    "wake-from-zero",
    "stabilizing-up",
    "stabilizing-down",
    "no-metrics",
)
#: Share of each SLO target the sizing aims at (the rest absorbs variance the model ignores).
HEADROOM = 0.85
#: Measured latencies are trusted for the feedback once a window holds this many requests.
MIN_SAMPLES = 20
#: Branch-and-bound node budget before the mix search falls back to its greedy start.
SEARCH_BUDGET = 200_000


@dataclass(frozen=True)
class VariantModel:
    """What the autoscaler knows of one variant."""

    name: str
    cost_per_hour: float  # USD per replica-hour
    perf: PerfModel | None  # None: the variant cannot run (e.g. its profile is missing)
    min_replicas: int = 0
    max_replicas: int = 1

    @property
    def available(self) -> bool:
        return self.perf is not None and math.isfinite(self.cost_per_hour)


@dataclass(frozen=True)
class SloTarget:
    """Latency targets at a percentile (seconds; ``percentile`` in (0, 1))."""

    ttft_s: float
    tpot_s: float
    percentile: float = 0.9


@dataclass(frozen=True)
class ScalingWindows:
    """Stabilisation windows and the idle time before zero, seconds."""

    up_s: float = 0.0
    down_s: float = 300.0
    zero_after_s: float = 600.0


@dataclass(frozen=True)
class Demand:
    """The pool's load over the last window, as the scheduler's ``Stats`` reports it."""

    arrival_rate: float = 0.0  # requests placed per second
    mean_prompt_tokens: float = 0.0
    mean_output_tokens: float = 0.0
    prefix_hit_rate: float = 0.0  # cached prompt tokens / prompt tokens
    queued: int = 0  # waiting for an endpoint right now
    unplaced: int = 0  # found no ready endpoint during the window
    inflight: int = 0
    window_s: float = 60.0
    ttft_s: float | None = None  # measured, at the SLO percentile
    tpot_s: float | None = None
    samples: int = 0  # finished requests behind the measurements

    @property
    def active(self) -> bool:
        """Any sign of traffic: placed, queued, unplaced or running requests."""
        return self.arrival_rate > 0 or self.queued > 0 or self.unplaced > 0 or self.inflight > 0

    def rate(self) -> float:
        """Requests per second to provision for: placed plus unplaced."""
        return self.arrival_rate + self.unplaced / max(self.window_s, 1e-9)


@dataclass(frozen=True)
class AutoscalerMemory:
    """What the autoscaler remembers: when demand was last seen, and each variant's
    recommendation change points ``(time, replicas)`` in time order."""

    last_demand_s: float | None = None
    recommendations: Mapping[str, tuple[tuple[float, int], ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ScaleDecision:
    """Replicas per variant, why, and what to remember."""

    replicas: dict[str, int]
    reasons: dict[str, str]
    raw: dict[str, int]  # before stabilisation
    capacity_rps: dict[str, float]  # one replica, at the SLO
    demand_rps: float
    memory: AutoscalerMemory

    def cost_per_hour(self, variants: Sequence[VariantModel]) -> float:
        cost = {v.name: v.cost_per_hour for v in variants}
        return sum(n * cost[name] for name, n in self.replicas.items() if n)


# ------------------------------------------------------------------------------ capacity


def _predict(
    perf: PerfModel, rate: float, demand: Demand, slo: SloTarget
) -> tuple[float, float] | None:
    """(TTFT at the percentile, TPOT) at ``rate`` requests/s on one replica; None if the
    replica cannot keep up at all (prefill saturated, or the batch grows without bound)."""
    prompt = max(1, round(demand.mean_prompt_tokens))
    cached = min(prompt, round(prompt * min(max(demand.prefix_hit_rate, 0.0), 1.0)))
    output = max(1.0, demand.mean_output_tokens)
    limit = getattr(perf, "max_num_seqs", 1 << 30)
    running = 0.0
    for _ in range(100):
        service = perf.predict_ttft(
            prompt, cached, running=int(running), waiting=0, pending_prefill_tokens=0
        )
        rho = rate * service
        if rho >= 1.0:
            return None
        tpot = perf.predict_tpot(running=max(1, int(running))) / (1.0 - rho)
        nxt = rate * output * tpot
        if nxt > limit:
            return None
        if abs(nxt - running) < 1e-3:
            running = nxt
            break
        running = nxt
    else:
        return None
    service = perf.predict_ttft(
        prompt, cached, running=int(running), waiting=0, pending_prefill_tokens=0
    )
    rho = rate * service
    if rho >= 1.0:
        return None
    q = slo.percentile
    wait = math.log(rho / (1.0 - q)) / (1.0 / service - rate) if rho > 1.0 - q else 0.0
    tpot = perf.predict_tpot(running=max(1, int(running))) / (1.0 - rho)
    return service + wait, tpot


def _holds(perf: PerfModel, rate: float, demand: Demand, slo: SloTarget) -> bool:
    got = _predict(perf, rate, demand, slo)
    return got is not None and got[0] <= slo.ttft_s * HEADROOM and got[1] <= slo.tpot_s * HEADROOM


def replica_capacity(perf: PerfModel, demand: Demand, slo: SloTarget) -> float:
    """Highest arrival rate (requests/s) one replica serves within the SLO (module docstring,
    step 1); 0 if it cannot hold the SLO even for a lone request."""
    if not _holds(perf, 1e-9, demand, slo):
        return 0.0
    hi = 1.0
    while _holds(perf, hi, demand, slo):
        hi *= 2.0
        if hi > 1e6:
            return hi
    lo = hi / 2.0 if hi > 1.0 else 0.0
    for _ in range(40):
        mid = (lo + hi) / 2.0
        if _holds(perf, mid, demand, slo):
            lo = mid
        else:
            hi = mid
    return lo


# ------------------------------------------------------------------------------ the mix


def cheapest_mix(
    variants: Sequence[VariantModel],
    capacity: Mapping[str, float],
    demand_rps: float,
    current: Mapping[str, int],
) -> tuple[dict[str, int], bool]:
    """Cheapest replicas per variant covering ``demand_rps`` (module docstring, step 3).

    Returns the mix and whether it covers the demand (False: every variant at its maximum).
    Unavailable variants get 0 and count for nothing. Ties in cost go to the mix closest to
    ``current``, then to fewer replicas.
    """
    usable = [v for v in variants if v.available]
    mins = {v.name: v.min_replicas for v in usable}
    base = sum(mins[v.name] * capacity.get(v.name, 0.0) for v in usable)
    need = demand_rps - base
    out = {v.name: 0 for v in variants} | mins
    if need <= 1e-12:
        return out, True
    # Only variants that add capacity can help; order by cost per unit of capacity.
    helpers = sorted(
        (v for v in usable if capacity.get(v.name, 0.0) > 0 and v.max_replicas > v.min_replicas),
        key=lambda v: (v.cost_per_hour / capacity[v.name], v.name),
    )
    room = sum((v.max_replicas - v.min_replicas) * capacity[v.name] for v in helpers)
    if room < need - 1e-12:
        return out | {v.name: v.max_replicas for v in usable}, False

    def extra_needed(v: VariantModel, left: float) -> int:
        return min(v.max_replicas - v.min_replicas, math.ceil(left / capacity[v.name] - 1e-9))

    # Greedy start: fill in value order (a feasible upper bound on the cost).
    greedy: dict[str, int] = {}
    left = need
    for v in helpers:
        k = extra_needed(v, left) if left > 0 else 0
        greedy[v.name] = k
        left -= k * capacity[v.name]

    def key(extra: Mapping[str, int]) -> tuple[float, int, int]:
        cost = sum(extra[n] * c for n, c in ((v.name, v.cost_per_hour) for v in helpers))
        churn = sum(abs(mins[n] + extra.get(n, 0) - current.get(n, 0)) for n in mins)
        return (round(cost, 9), churn, sum(extra.values()))

    best = dict(greedy)
    best_key = key(best)
    nodes = 0
    suffix_room = [0.0] * (len(helpers) + 1)
    for i in range(len(helpers) - 1, -1, -1):
        v = helpers[i]
        suffix_room[i] = suffix_room[i + 1] + (v.max_replicas - v.min_replicas) * capacity[v.name]
    chosen: dict[str, int] = {}

    def search(i: int, left: float, cost: float) -> None:
        nonlocal best, best_key, nodes
        nodes += 1
        if nodes > SEARCH_BUDGET or cost > best_key[0] + 1e-9:
            return
        if left <= 1e-12:
            cand = {v.name: chosen.get(v.name, 0) for v in helpers}
            if (cand_key := key(cand)) < best_key:
                best, best_key = cand, cand_key
            return
        if i == len(helpers) or suffix_room[i] < left - 1e-12:
            return
        v = helpers[i]
        top = extra_needed(v, left)
        for count in range(top, -1, -1):
            chosen[v.name] = count
            search(i + 1, left - count * capacity[v.name], cost + count * v.cost_per_hour)
        chosen.pop(v.name, None)

    search(0, need, 0.0)
    for name, extra in best.items():
        out[name] = mins[name] + extra
    return out, True


# ------------------------------------------------------------------------------ memory


def _window_values(points: Sequence[tuple[float, int]], now: float, window: float) -> list[int]:
    """Values in effect at some time in ``[now - window, now]``."""
    out = []
    for i, (_t, value) in enumerate(points):
        ends = points[i + 1][0] if i + 1 < len(points) else math.inf
        if ends >= now - window:
            out.append(value)
    return out


def _remember(
    points: Sequence[tuple[float, int]], now: float, value: int, keep_s: float
) -> tuple[tuple[float, int], ...]:
    pts = list(points)
    if not pts or pts[-1][1] != value:
        pts.append((now, value))
    # drop change points whose successor began before the window
    while len(pts) > 1 and pts[1][0] < now - keep_s:
        pts.pop(0)
    return tuple(pts)


# ------------------------------------------------------------------------------ decide


def decide(
    variants: Sequence[VariantModel],
    slo: SloTarget,
    windows: ScalingWindows,
    demand: Demand | None,
    current: Mapping[str, int],
    memory: AutoscalerMemory,
    now: float,
) -> ScaleDecision:
    """Replicas per variant (module docstring). ``demand`` None = no metrics this time: every
    variant keeps its replicas (within bounds), reason ``no-metrics``."""
    names = [v.name for v in variants]
    cur = {n: max(0, int(current.get(n, 0))) for n in names}
    by_name = {v.name: v for v in variants}

    def clamp(v: VariantModel, n: int) -> int:
        if not v.available:
            return 0 if n == 0 else min(n, cur[v.name])  # never grow what cannot run
        return max(v.min_replicas, min(v.max_replicas, n))

    if demand is None:
        kept = {n: clamp(by_name[n], cur[n]) for n in names}
        return ScaleDecision(kept, dict.fromkeys(names, "no-metrics"), kept, {}, 0.0, memory)

    capacity = {
        v.name: replica_capacity(v.perf, demand, slo) if v.perf is not None else 0.0
        for v in variants
    }
    rate = demand.rate()
    reason = "slo"
    current_capacity = sum(cur[n] * capacity[n] for n in names)
    violated = demand.samples >= MIN_SAMPLES and (
        (demand.ttft_s is not None and demand.ttft_s > slo.ttft_s)
        or (demand.tpot_s is not None and demand.tpot_s > slo.tpot_s)
    )
    if violated and rate <= current_capacity + 1e-12:
        helpers = [v for v in variants if v.available and capacity[v.name] > 0]
        if helpers:
            best = min(helpers, key=lambda v: (v.cost_per_hour / capacity[v.name], v.name))
            rate = current_capacity + capacity[best.name]
            reason = "slo-violation"

    last_demand = memory.last_demand_s
    if demand.active or last_demand is None:
        last_demand = now
    all_zero_ok = all(v.min_replicas == 0 for v in variants)
    idle_for = now - last_demand
    total_cur = sum(cur.values())

    raw, covered = cheapest_mix(variants, capacity, rate, cur)
    reasons = dict.fromkeys(names, reason if covered else "at-max")
    bypass_up: set[str] = set()
    bypass_down = False
    if not demand.active and all_zero_ok:
        if idle_for >= windows.zero_after_s:
            raw = dict.fromkeys(names, 0)
            reasons = dict.fromkeys(names, "idle")
            bypass_down = True
        else:
            raw = {n: clamp(by_name[n], cur[n]) for n in names}
            reasons = dict.fromkeys(names, "idle-hold")
    elif total_cur == 0 and (demand.queued > 0 or demand.unplaced > 0):
        if sum(raw.values()) == 0:
            servers = [v for v in variants if v.available and capacity[v.name] > 0]
            servers = servers or [v for v in variants if v.available]
            if servers:
                pick = min(servers, key=lambda v: (v.cost_per_hour, v.name))
                raw[pick.name] = max(1, pick.min_replicas)
        bypass_up = {n for n, k in raw.items() if k > 0}
        reasons = {n: ("wake-from-zero" if n in bypass_up else reasons[n]) for n in names}

    keep = max(windows.up_s, windows.down_s)
    recs: dict[str, tuple[tuple[float, int], ...]] = {}
    out: dict[str, int] = {}
    for n in names:
        v = by_name[n]
        points = _remember(memory.recommendations.get(n, ()), now, raw[n], keep)
        recs[n] = points
        up = min(_window_values(points, now, windows.up_s))
        down = max(_window_values(points, now, windows.down_s))
        want = cur[n]
        if want < up or n in bypass_up:
            want = max(up, raw[n]) if n in bypass_up else up
        elif want > down:
            want = down
        if bypass_down:
            want = raw[n]
        out[n] = clamp(v, want)
        if out[n] < raw[n]:
            reasons[n] = "stabilizing-up"  # the scale-up window holds a lower recommendation
        elif out[n] > raw[n]:
            reasons[n] = "stabilizing-down"  # the scale-down window holds a higher one
    return ScaleDecision(
        out,
        reasons,
        raw,
        capacity,
        rate,
        AutoscalerMemory(last_demand_s=last_demand, recommendations=recs),
    )
