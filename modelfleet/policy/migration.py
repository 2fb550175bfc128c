"""The migration planner: which in-flight requests to move, where, and why. Pure.

``MigrationPlanner.plan(endpoints, inflight, in_progress)`` returns :class:`Migration` values;
an executor in the host carries them out (make-before-break: the destination re-prefills prompt
+ tokens generated so far, then the stream switches over).

Cost model: moving a request costs its re-prefill on the destination — ``dst.perf`` predicting
the TTFT of ``prompt + generated`` tokens minus the destination's prefix hit on the prompt,
behind the prefill already queued there. The gain is the predicted remaining latency on the
source minus (re-prefill + remaining latency) on the destination. A request is moved only if
the gain exceeds ``min_gain_s`` (never to where it would be worse), except when its source is
draining, where staying is not an option and the best destination is taken.

Triggers, in priority order (each request moves at most once per plan):

1. **drain** — every migratable request on a draining endpoint, to the destination with the
   lowest predicted remaining latency.
2. **slo-rescue** — a queued request whose predicted time to first token on its source exceeds
   what is left of its TTFT target, or a decoding request whose observed (else predicted) TPOT
   exceeds its TPOT target, when some destination is predicted to do better.
3. **load-balance** (Llumnix-style pairing) — while the most loaded endpoint's load exceeds
   the least loaded's by more than ``imbalance_threshold`` (load = in-flight requests per unit
   of relative speed), move one request chosen by ``selection`` ("SR": shortest, the cheapest
   to re-prefill; "LR": longest) from the most to the least loaded, if it gains.

Limits: at most ``max_concurrent`` migrations in flight (``in_progress`` counts against it) and
at most ``max_per_endpoint`` new ones into or out of any endpoint per plan, and planned moves
update the virtual loads so one plan does not pile onto one destination.

Structure: :meth:`MigrationPlanner.plan` builds one :class:`_Round` (the virtual loads, the
moves so far, the per-endpoint budget) and runs one method per trigger on it in the order
above; a trigger stops as soon as the round's budget is spent.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from modelfleet.policy.framework import Data
from modelfleet.policy.perf import PerfModel, predict_ttft
from modelfleet.policy.prefix import PrefixIndex
from modelfleet.policy.types import EndpointId, EndpointView, RequestId, RequestView

MigrationReason = Literal["drain", "slo-rescue", "load-balance"]
Phase = Literal["queued", "prefill", "decode"]


@dataclass(frozen=True, slots=True)
class InflightView:
    """One in-flight request as the planner sees it."""

    request: RequestView
    src: EndpointId
    generated_tokens: int = 0
    phase: Phase = "decode"
    age_s: float = 0.0
    observed_tpot_s: float | None = None
    migratable: bool = True

    @property
    def remaining_tokens(self) -> int:
        return max(1, self.request.max_tokens - self.generated_tokens)

    @property
    def context_tokens(self) -> int:
        return self.request.prompt_tokens + self.generated_tokens


@dataclass(frozen=True, slots=True)
class Migration:
    request_id: RequestId
    src: EndpointId
    dst: EndpointId
    reason: MigrationReason
    est_cost_s: float = 0.0
    est_gain_s: float = 0.0


@dataclass(frozen=True, slots=True)
class MigrationParams:
    """Planner knobs. Units: seconds, requests, requests per unit of relative speed."""

    max_concurrent: int = 4
    max_per_endpoint: int = 2
    min_gain_s: float = 0.05
    enable_drain: bool = True
    enable_slo_rescue: bool = True
    enable_load_balance: bool = True
    imbalance_threshold: float = 4.0
    selection: Literal["SR", "LR"] = "SR"
    period_s: float = 0.5

    def __post_init__(self) -> None:
        if self.max_concurrent < 0 or self.max_per_endpoint < 1:
            raise ValueError("MigrationParams: max_concurrent >= 0 and max_per_endpoint >= 1")
        if self.min_gain_s < 0 or self.imbalance_threshold < 0 or self.period_s <= 0:
            raise ValueError("MigrationParams: min_gain_s, imbalance_threshold >= 0, period_s > 0")


@dataclass
class _Load:
    """Virtual load of one endpoint during a plan (a :class:`~.perf.QueueState`).

    Starts from the view and is updated by every committed move, so later moves in the same
    round see the queue the earlier ones created.
    """

    running: int
    waiting: int
    inflight_prefill_tokens: int
    requests: float


@dataclass
class _Round:
    """The state of one :meth:`MigrationPlanner.plan` call, shared by its triggers."""

    params: MigrationParams
    budget: int
    by_id: dict[EndpointId, EndpointView]
    loads: dict[EndpointId, _Load]
    targets: list[EndpointView]
    moved: set[RequestId]
    touched: dict[EndpointId, int] = field(default_factory=dict)
    out: list[Migration] = field(default_factory=list)

    @property
    def full(self) -> bool:
        return len(self.out) >= self.budget

    def can_touch(self, ep: EndpointId) -> bool:
        return self.touched.get(ep, 0) < self.params.max_per_endpoint

    def commit(
        self, r: InflightView, dst: EndpointView, reason: MigrationReason, cost: float, gain: float
    ) -> None:
        """Record the move and update the virtual loads of its source and destination."""
        self.out.append(Migration(r.request.id, r.src, dst.id, reason, cost, gain))
        self.moved.add(r.request.id)
        touched = self.touched
        touched[r.src] = touched.get(r.src, 0) + 1
        touched[dst.id] = touched.get(dst.id, 0) + 1
        by_id = self.by_id
        speed_src = max(by_id[r.src].relative_speed, 1e-9) if r.src in by_id else 1.0
        speed_dst = max(dst.relative_speed, 1e-9)
        ls, ld = self.loads.get(r.src), self.loads[dst.id]
        if ls is not None:
            ls.requests -= 1 / speed_src
            if r.phase == "decode":
                ls.running = max(0, ls.running - 1)
            else:
                ls.waiting = max(0, ls.waiting - 1)
                ls.inflight_prefill_tokens = max(
                    0, ls.inflight_prefill_tokens - r.request.prompt_tokens
                )
        ld.requests += 1 / speed_dst
        ld.inflight_prefill_tokens += r.context_tokens
        ld.waiting += 1


class MigrationPlanner:
    """Plans migrations (see the module docstring); pure, holds no state between plans.

    ``consumes``: the endpoints' perf models (without one an endpoint is neither a source of
    an SLO rescue nor a destination), the scraped queues and this scheduler's in-flight
    counters, and prefix hits when given the profile's prefix index (cheaper re-prefills).
    """

    def __init__(
        self, params: MigrationParams | None = None, *, prefix_index: PrefixIndex | None = None
    ) -> None:
        self.params = params or MigrationParams()
        self.prefix_index = prefix_index
        consumes = {Data.PERF_MODEL, Data.ENGINE_METRICS, Data.INFLIGHT}
        if prefix_index is not None:
            consumes.add(Data.PREFIX_HITS)
        self.consumes: frozenset[Data] = frozenset(consumes)

    # -- cost model ------------------------------------------------------------------------
    def _hits(self, req: RequestView) -> Mapping[EndpointId, int]:
        return self.prefix_index.match(req) if self.prefix_index is not None else {}

    @staticmethod
    def _wait_in_place(perf: PerfModel, r: InflightView, load: _Load) -> float:
        """Predicted seconds until a queued request's first token if it stays where it is."""
        return predict_ttft(perf, load, r.request.prompt_tokens, 0, queued_itself=True)

    def remaining_on_src(self, r: InflightView, src: EndpointView, load: _Load) -> float | None:
        """Predicted seconds until the request finishes if it stays on ``src``."""
        if src.perf is None:
            return None
        if r.phase == "decode":
            tpot = r.observed_tpot_s or src.perf.predict_tpot(running=load.running)
            return tpot * r.remaining_tokens
        ttft = self._wait_in_place(src.perf, r, load)
        return ttft + src.perf.predict_tpot(running=load.running) * r.remaining_tokens

    def remaining_on_dst(
        self, r: InflightView, dst: EndpointView, load: _Load, cached: int
    ) -> tuple[float, float] | None:
        """(re-prefill seconds, total remaining seconds) if the request moves to ``dst``."""
        if dst.perf is None:
            return None
        cost = predict_ttft(dst.perf, load, r.context_tokens, cached)
        return cost, cost + dst.perf.predict_tpot(running=load.running + 1) * r.remaining_tokens

    def _violating(self, r: InflightView, src: EndpointView, load: _Load) -> bool:
        """The request is predicted to miss its TTFT target, or observed missing its TPOT."""
        req = r.request
        if src.perf is None:
            return False
        if r.phase == "queued" and req.ttft_slo_s is not None:
            return self._wait_in_place(src.perf, r, load) > req.ttft_slo_s - r.age_s
        if r.phase == "decode" and req.tpot_slo_s is not None:
            tpot = r.observed_tpot_s or src.perf.predict_tpot(running=load.running)
            return tpot > req.tpot_slo_s
        return False

    def _best_dst(
        self, rnd: _Round, r: InflightView, require_gain: bool
    ) -> tuple[EndpointView, float, float] | None:
        """(destination, re-prefill cost, gain) with the lowest predicted remaining time.

        With ``require_gain`` only destinations that beat staying by more than ``min_gain_s``
        qualify; without it (drain) the best destination is taken and the gain may be 0.
        """
        src = rnd.by_id.get(r.src)
        stay = None
        if src is not None and not src.draining and src.healthy:
            stay = self.remaining_on_src(r, src, rnd.loads[r.src])
            if stay is None:
                return None
        hits = self._hits(r.request)
        best: tuple[EndpointView, float, float] | None = None
        for d in rnd.targets:
            if d.id == r.src or not rnd.can_touch(d.id):
                continue
            est = self.remaining_on_dst(r, d, rnd.loads[d.id], hits.get(d.id, 0))
            if est is None:
                continue
            cost, total = est
            gain = (stay - total) if stay is not None else 0.0
            if require_gain and (stay is None or gain <= self.params.min_gain_s):
                continue
            if best is None or total < best[2]:
                best = (d, cost, total)
        if best is None:
            return None
        d, cost, total = best
        return d, cost, ((stay - total) if stay is not None else 0.0)

    # -- planning --------------------------------------------------------------------------
    def plan(
        self,
        endpoints: Sequence[EndpointView],
        inflight: Sequence[InflightView],
        in_progress: Collection[RequestId] = (),
    ) -> list[Migration]:
        """The migrations to start now, drain first, then SLO rescue, then load balance."""
        p = self.params
        budget = p.max_concurrent - len(in_progress)
        if budget <= 0 or not endpoints:
            return []
        rnd = _Round(
            params=p,
            budget=budget,
            by_id={e.id: e for e in endpoints},
            loads={
                e.id: _Load(
                    e.running,
                    e.waiting,
                    e.inflight_prefill_tokens,
                    max(e.inflight_requests, e.running + e.waiting) / max(e.relative_speed, 1e-9),
                )
                for e in endpoints
            },
            targets=[e for e in endpoints if e.healthy and not e.draining],
            moved=set(in_progress),
        )
        candidates = [r for r in inflight if r.migratable and r.request.id not in rnd.moved]
        if p.enable_drain:
            self._plan_drain(rnd, candidates)
        if p.enable_slo_rescue and not rnd.full:
            self._plan_slo_rescue(rnd, candidates)
        if p.enable_load_balance and not rnd.full:
            self._plan_load_balance(rnd, candidates)
        return rnd.out

    def _plan_drain(self, rnd: _Round, candidates: Sequence[InflightView]) -> None:
        """Every request on a draining endpoint, most urgent first, to its best destination."""
        by_id = rnd.by_id
        draining = [r for r in candidates if r.src in by_id and by_id[r.src].draining]
        # most urgent first: higher priority, then the most work left
        draining.sort(key=lambda r: (-r.request.priority, -r.remaining_tokens, r.request.id))
        self._move_each(rnd, draining, "drain", require_gain=False)

    def _plan_slo_rescue(self, rnd: _Round, candidates: Sequence[InflightView]) -> None:
        """Requests predicted to miss their SLO where they are, oldest first, if one gains."""
        by_id = rnd.by_id
        rescue: list[InflightView] = []
        for r in candidates:
            if r.request.id in rnd.moved or r.src not in by_id or by_id[r.src].draining:
                continue
            if self._violating(r, by_id[r.src], rnd.loads[r.src]):
                rescue.append(r)
        rescue.sort(key=lambda r: (-r.request.priority, -r.age_s, r.request.id))
        self._move_each(rnd, rescue, "slo-rescue", require_gain=True)

    def _move_each(
        self,
        rnd: _Round,
        requests: Sequence[InflightView],
        reason: MigrationReason,
        *,
        require_gain: bool,
    ) -> None:
        """Move each request in order to its best destination until the budget is spent."""
        for r in requests:
            if rnd.full:
                return
            if not rnd.can_touch(r.src):
                continue
            found = self._best_dst(rnd, r, require_gain)
            if found is not None:
                rnd.commit(r, found[0], reason, found[1], found[2])

    def _plan_load_balance(self, rnd: _Round, candidates: Sequence[InflightView]) -> None:
        """Pair the most with the least loaded endpoint while they differ by the threshold."""
        p = self.params
        loads = rnd.loads
        if len(rnd.targets) < 2:
            return
        while not rnd.full:
            movable = [e for e in rnd.targets if rnd.can_touch(e.id)]
            if len(movable) < 2:
                return
            hi = max(movable, key=lambda e: (loads[e.id].requests, e.id))
            lo = min(movable, key=lambda e: (loads[e.id].requests, e.id))
            if loads[hi.id].requests - loads[lo.id].requests <= p.imbalance_threshold:
                return
            pool = [
                r
                for r in candidates
                if r.src == hi.id and r.request.id not in rnd.moved and r.phase == "decode"
            ] or [r for r in candidates if r.src == hi.id and r.request.id not in rnd.moved]
            pool.sort(key=lambda r: (r.context_tokens, r.request.id), reverse=p.selection == "LR")
            for r in pool:
                stay = self.remaining_on_src(r, hi, loads[hi.id])
                est = self.remaining_on_dst(
                    r, lo, loads[lo.id], self._hits(r.request).get(lo.id, 0)
                )
                if stay is None or est is None:
                    continue
                cost, total = est
                if stay - total > p.min_gain_s:
                    rnd.commit(r, lo, "load-balance", cost, stay - total)
                    break
            else:
                return
