"""The migration planner: which in-flight requests to move, where, and why. Pure.

``MigrationPlanner.plan(endpoints, inflight, in_progress)`` returns :class:`Migration` values;
an executor in the host carries them out (make-before-break: the destination re-prefills prompt
+ tokens generated so far, then the stream switches over).

Cost model (like with like): both sides of the comparison come from the same latency models,
never an observation on one side and a clean prediction on the other.

* Staying: the source's model predicts the request's remaining time — its wait for a first
  token if it is still queued, then ``remaining tokens x TPOT`` at the source's batch.
* Moving: the destination's model predicts the re-prefill of ``prompt + generated`` tokens
  minus the destination's prefix hit, behind the prefill already queued there, then
  ``remaining tokens x TPOT`` at the destination's batch plus this request.
* The gain is staying minus moving. A move must gain more than ``min_gain_s`` and more than
  ``min_gain_fraction`` of staying after subtracting ``confidence_z`` times its uncertainty:
  the spread between each model's central and upper predictions
  (:func:`~modelfleet.policy.perf.ttft_estimate`), combined in quadrature. A model that has
  not seen the destination's variant work (a learned model with little evidence) cannot
  justify a move.
* Prefix locality: the tokens of the context the destination does not hold
  (``lost_hit_tokens``) are recomputed there, and every request waiting on the destination
  waits for that computation too; ``queue_externality`` times that delay is charged to the
  move.

Observed TPOT only *triggers* an SLO rescue (a request visibly missing its target); it never
enters the gain. Except when its source is draining, where staying is not an option and the
best destination is taken, a request is only moved where it is predicted to be better off.

Pools and models: a migration never crosses them. Destinations of another pool or model are
skipped, and committing such a move raises ``AssertionError`` (a defect, not a decision).

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

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from modelfleet.policy.framework import Data
from modelfleet.policy.perf import PerfModel, central_model, tpot_estimate, ttft_estimate
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
    """One planned move: ``est_cost_s`` is the predicted re-prefill on ``dst``, ``est_gain_s``
    the central predicted gain (after the locality charge), ``lost_hit_tokens`` the context
    tokens ``dst`` must recompute."""

    request_id: RequestId
    src: EndpointId
    dst: EndpointId
    reason: MigrationReason
    est_cost_s: float = 0.0
    est_gain_s: float = 0.0
    lost_hit_tokens: int = 0


@dataclass(frozen=True, slots=True)
class MigrationParams:
    """Planner knobs. Units: seconds, requests, requests per unit of relative speed.

    ``confidence_z`` (standard deviations of the predicted gain that must be cleared),
    ``min_gain_fraction`` (share of the remaining time a move must save) and
    ``queue_externality`` (weight of the delay a re-prefill imposes on the destination's
    queue) make a move pay; see the module docstring.
    """

    max_concurrent: int = 4
    max_per_endpoint: int = 2
    min_gain_s: float = 0.05
    enable_drain: bool = True
    enable_slo_rescue: bool = True
    enable_load_balance: bool = True
    imbalance_threshold: float = 4.0
    selection: Literal["SR", "LR"] = "SR"
    period_s: float = 0.5
    confidence_z: float = 1.0
    min_gain_fraction: float = 0.1
    queue_externality: float = 1.0

    def __post_init__(self) -> None:
        if self.max_concurrent < 0 or self.max_per_endpoint < 1:
            raise ValueError("MigrationParams: max_concurrent >= 0 and max_per_endpoint >= 1")
        if self.min_gain_s < 0 or self.imbalance_threshold < 0 or self.period_s <= 0:
            raise ValueError("MigrationParams: min_gain_s, imbalance_threshold >= 0, period_s > 0")
        if self.confidence_z < 0 or self.queue_externality < 0:
            raise ValueError("MigrationParams: confidence_z and queue_externality must be >= 0")
        if not 0 <= self.min_gain_fraction < 1:
            raise ValueError("MigrationParams: min_gain_fraction must be in [0, 1)")


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
    inflight_requests: int = 0


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

    def commit(self, r: InflightView, dst: EndpointView, reason: MigrationReason, m: _Move) -> None:
        """Record the move and update the virtual loads of its source and destination."""
        src = self.by_id.get(r.src)
        if src is not None and (src.pool != dst.pool or src.model != dst.model):
            raise AssertionError(
                f"migration of {r.request.id!r} from {src.id!r} (pool {src.pool!r}, model "
                f"{src.model!r}) to {dst.id!r} (pool {dst.pool!r}, model {dst.model!r}) "
                "crosses pools or models"
            )
        self.out.append(
            Migration(r.request.id, r.src, dst.id, reason, m.cost, m.gain, m.lost_hit_tokens)
        )
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
            ls.inflight_requests = max(0, ls.inflight_requests - 1)
            if r.phase == "decode":
                ls.running = max(0, ls.running - 1)
            else:
                ls.waiting = max(0, ls.waiting - 1)
                ls.inflight_prefill_tokens = max(
                    0, ls.inflight_prefill_tokens - r.request.prompt_tokens
                )
        ld.requests += 1 / speed_dst
        ld.inflight_requests += 1
        ld.inflight_prefill_tokens += r.context_tokens
        ld.waiting += 1


@dataclass(frozen=True, slots=True)
class _Move:
    """A candidate move's predicted figures (central gain after the locality charge)."""

    cost: float
    total: float
    gain: float
    lost_hit_tokens: int = 0


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
    def _wait_in_place(perf: PerfModel, r: InflightView, load: _Load) -> tuple[float, float]:
        """(central, upper) seconds until a queued request's first token where it is."""
        return ttft_estimate(perf, load, r.request.prompt_tokens, 0, queued_itself=True)

    def stay_estimate(
        self, r: InflightView, src: EndpointView, load: _Load
    ) -> tuple[float, float] | None:
        """(central, upper) predicted seconds until the request finishes on ``src``."""
        if src.perf is None:
            return None
        mid, up = tpot_estimate(src.perf, max(load.running, 1))
        mid, up = mid * r.remaining_tokens, up * r.remaining_tokens
        if r.phase != "decode":
            w_mid, w_up = self._wait_in_place(src.perf, r, load)
            mid, up = mid + w_mid, up + w_up
        return mid, up

    def move_estimate(
        self, r: InflightView, dst: EndpointView, load: _Load, cached: int
    ) -> tuple[float, float, float, float] | None:
        """(re-prefill central, total central, total upper, locality charge) on ``dst``."""
        if dst.perf is None:
            return None
        ctx = r.context_tokens
        c_mid, c_up = ttft_estimate(dst.perf, load, ctx, cached)
        t_mid, t_up = tpot_estimate(dst.perf, load.running + 1)
        charge = 0.0
        if load.waiting and self.params.queue_externality:
            compute = central_model(dst.perf).predict_ttft(
                ctx, cached, running=load.running, waiting=0, pending_prefill_tokens=0
            )
            charge = self.params.queue_externality * compute * load.waiting
        n = r.remaining_tokens
        return c_mid, c_mid + t_mid * n, c_up + t_up * n, charge

    def remaining_on_src(self, r: InflightView, src: EndpointView, load: _Load) -> float | None:
        """Central predicted seconds until the request finishes if it stays on ``src``."""
        est = self.stay_estimate(r, src, load)
        return None if est is None else est[0]

    def remaining_on_dst(
        self, r: InflightView, dst: EndpointView, load: _Load, cached: int
    ) -> tuple[float, float] | None:
        """(central re-prefill seconds, central total remaining seconds) if it moves to ``dst``."""
        est = self.move_estimate(r, dst, load, cached)
        return None if est is None else (est[0], est[1])

    def _violating(self, r: InflightView, src: EndpointView, load: _Load) -> bool:
        """The request is predicted to miss its TTFT target, or observed missing its TPOT."""
        req = r.request
        if src.perf is None:
            return False
        if r.phase == "queued" and req.ttft_slo_s is not None:
            return self._wait_in_place(src.perf, r, load)[0] > req.ttft_slo_s - r.age_s
        if r.phase == "decode" and req.tpot_slo_s is not None:
            tpot = r.observed_tpot_s or src.perf.predict_tpot(running=load.running)
            return tpot > req.tpot_slo_s
        return False

    def _move(
        self,
        rnd: _Round,
        r: InflightView,
        d: EndpointView,
        stay: tuple[float, float] | None,
        cached: int,
        require_gain: bool,
    ) -> _Move | None:
        """The move of ``r`` to ``d`` if it qualifies (see the module docstring)."""
        est = self.move_estimate(r, d, rnd.loads[d.id], cached)
        if est is None:
            return None
        cost, total, total_up, charge = est
        lost = max(0, r.context_tokens - cached)
        if stay is None:
            return None if require_gain else _Move(cost, total, 0.0, lost)
        gain = stay[0] - total - charge
        if require_gain:
            p = self.params
            spread = math.hypot(stay[1] - stay[0], total_up - total)
            sure = gain - p.confidence_z * spread
            if sure <= p.min_gain_s or sure <= p.min_gain_fraction * stay[0]:
                return None
        return _Move(cost, total, gain, lost)

    def _best_dst(
        self, rnd: _Round, r: InflightView, require_gain: bool
    ) -> tuple[EndpointView, _Move] | None:
        """The destination with the lowest predicted remaining time, and its figures.

        With ``require_gain`` only destinations whose gain clears the margin qualify; without
        it (drain) the best destination is taken and the gain may be 0.
        """
        src = rnd.by_id.get(r.src)
        stay = None
        if src is not None and not src.draining and src.healthy:
            stay = self.stay_estimate(r, src, rnd.loads[r.src])
            if stay is None:
                return None
        hits = self._hits(r.request)
        best: tuple[EndpointView, _Move] | None = None
        for d in rnd.targets:
            if d.id == r.src or not rnd.can_touch(d.id):
                continue
            if src is not None and (d.pool != src.pool or d.model != src.model):
                continue
            m = self._move(rnd, r, d, stay, hits.get(d.id, 0), require_gain)
            if m is not None and (best is None or m.total < best[1].total):
                best = (d, m)
        return best

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
                    e.inflight_requests,
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
                rnd.commit(r, found[0], reason, found[1])

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
            peers = [e for e in movable if e.pool == hi.pool and e.model == hi.model]
            lo = min(peers, key=lambda e: (loads[e.id].requests, e.id))
            if loads[hi.id].requests - loads[lo.id].requests <= p.imbalance_threshold:
                return
            pool = [
                r
                for r in candidates
                if r.src == hi.id and r.request.id not in rnd.moved and r.phase == "decode"
            ] or [r for r in candidates if r.src == hi.id and r.request.id not in rnd.moved]
            pool.sort(key=lambda r: (r.context_tokens, r.request.id), reverse=p.selection == "LR")
            for r in pool:
                stay = self.stay_estimate(r, hi, loads[hi.id])
                if stay is None:
                    continue
                m = self._move(rnd, r, lo, stay, self._hits(r.request).get(lo.id, 0), True)
                if m is not None:
                    rnd.commit(r, lo, "load-balance", m)
                    break
            else:
                return
