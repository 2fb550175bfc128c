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
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from modelfleet.policy.perf import PerfModel
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
    running: int
    waiting: int
    pending_prefill: int
    requests: float


class MigrationPlanner:
    def __init__(
        self, params: MigrationParams | None = None, *, prefix_index: PrefixIndex | None = None
    ) -> None:
        self.params = params or MigrationParams()
        self.prefix_index = prefix_index

    # -- cost model ------------------------------------------------------------------------
    def _hits(self, req: RequestView) -> Mapping[EndpointId, int]:
        return self.prefix_index.match(req) if self.prefix_index is not None else {}

    @staticmethod
    def _reprefill(
        perf: PerfModel, r: InflightView, cached: int, load: _Load, extra_pending: int = 0
    ) -> float:
        return perf.predict_ttft(
            r.context_tokens,
            cached,
            running=load.running,
            waiting=load.waiting,
            pending_prefill_tokens=load.pending_prefill + extra_pending,
        )

    def remaining_on_src(self, r: InflightView, src: EndpointView, load: _Load) -> float | None:
        """Predicted seconds until the request finishes if it stays on ``src``."""
        if src.perf is None:
            return None
        if r.phase == "decode":
            tpot = r.observed_tpot_s or src.perf.predict_tpot(running=load.running)
            return tpot * r.remaining_tokens
        ahead = max(0, load.pending_prefill - r.request.prompt_tokens)
        ttft = src.perf.predict_ttft(
            r.request.prompt_tokens,
            0,
            running=load.running,
            waiting=max(0, load.waiting - 1),
            pending_prefill_tokens=ahead,
        )
        return ttft + src.perf.predict_tpot(running=load.running) * r.remaining_tokens

    def remaining_on_dst(
        self, r: InflightView, dst: EndpointView, load: _Load, cached: int
    ) -> tuple[float, float] | None:
        """(re-prefill seconds, total remaining seconds) if the request moves to ``dst``."""
        if dst.perf is None:
            return None
        cost = self._reprefill(dst.perf, r, cached, load)
        return cost, cost + dst.perf.predict_tpot(running=load.running + 1) * r.remaining_tokens

    # -- planning --------------------------------------------------------------------------
    def plan(
        self,
        endpoints: Sequence[EndpointView],
        inflight: Sequence[InflightView],
        in_progress: Collection[RequestId] = (),
    ) -> list[Migration]:
        p = self.params
        budget = p.max_concurrent - len(in_progress)
        if budget <= 0 or not endpoints:
            return []
        by_id = {e.id: e for e in endpoints}
        loads = {
            e.id: _Load(
                e.running,
                e.waiting,
                e.inflight_prefill_tokens,
                max(e.inflight_requests, e.running + e.waiting) / max(e.relative_speed, 1e-9),
            )
            for e in endpoints
        }
        targets = [e for e in endpoints if e.healthy and not e.draining]
        moved: set[RequestId] = set(in_progress)
        touched: dict[EndpointId, int] = {}
        out: list[Migration] = []

        def can_touch(ep: EndpointId) -> bool:
            return touched.get(ep, 0) < p.max_per_endpoint

        def commit(
            r: InflightView, dst: EndpointView, reason: MigrationReason, cost: float, gain: float
        ) -> None:
            out.append(Migration(r.request.id, r.src, dst.id, reason, cost, gain))
            moved.add(r.request.id)
            touched[r.src] = touched.get(r.src, 0) + 1
            touched[dst.id] = touched.get(dst.id, 0) + 1
            speed_src = max(by_id[r.src].relative_speed, 1e-9) if r.src in by_id else 1.0
            speed_dst = max(dst.relative_speed, 1e-9)
            ls, ld = loads.get(r.src), loads[dst.id]
            if ls is not None:
                ls.requests -= 1 / speed_src
                if r.phase == "decode":
                    ls.running = max(0, ls.running - 1)
                else:
                    ls.waiting = max(0, ls.waiting - 1)
                    ls.pending_prefill = max(0, ls.pending_prefill - r.request.prompt_tokens)
            ld.requests += 1 / speed_dst
            ld.pending_prefill += r.context_tokens
            ld.waiting += 1

        def best_dst(
            r: InflightView, require_gain: bool
        ) -> tuple[EndpointView, float, float] | None:
            src = by_id.get(r.src)
            stay = None
            if src is not None and not src.draining and src.healthy:
                stay = self.remaining_on_src(r, src, loads[r.src])
                if stay is None:
                    return None
            hits = self._hits(r.request)
            best: tuple[EndpointView, float, float] | None = None
            for d in targets:
                if d.id == r.src or not can_touch(d.id):
                    continue
                est = self.remaining_on_dst(r, d, loads[d.id], hits.get(d.id, 0))
                if est is None:
                    continue
                cost, total = est
                gain = (stay - total) if stay is not None else 0.0
                if require_gain and (stay is None or gain <= p.min_gain_s):
                    continue
                if best is None or total < best[2]:
                    best = (d, cost, total)
            if best is None:
                return None
            d, cost, total = best
            return d, cost, ((stay - total) if stay is not None else 0.0)

        candidates = [r for r in inflight if r.migratable and r.request.id not in moved]

        if p.enable_drain:
            draining = [r for r in candidates if r.src in by_id and by_id[r.src].draining]
            # most urgent first: higher priority, then the most work left
            draining.sort(key=lambda r: (-r.request.priority, -r.remaining_tokens, r.request.id))
            for r in draining:
                if len(out) >= budget:
                    return out
                if not can_touch(r.src):
                    continue
                found = best_dst(r, require_gain=False)
                if found is not None:
                    commit(r, found[0], "drain", found[1], found[2])

        if p.enable_slo_rescue:
            rescue: list[InflightView] = []
            for r in candidates:
                if r.request.id in moved or r.src not in by_id or by_id[r.src].draining:
                    continue
                if self._violating(r, by_id[r.src], loads[r.src]):
                    rescue.append(r)
            rescue.sort(key=lambda r: (-r.request.priority, -r.age_s, r.request.id))
            for r in rescue:
                if len(out) >= budget:
                    return out
                if not can_touch(r.src):
                    continue
                found = best_dst(r, require_gain=True)
                if found is not None:
                    commit(r, found[0], "slo-rescue", found[1], found[2])

        if p.enable_load_balance and len(targets) >= 2:
            while len(out) < budget:
                movable = [e for e in targets if can_touch(e.id)]
                if len(movable) < 2:
                    break
                hi = max(movable, key=lambda e: (loads[e.id].requests, e.id))
                lo = min(movable, key=lambda e: (loads[e.id].requests, e.id))
                if loads[hi.id].requests - loads[lo.id].requests <= p.imbalance_threshold:
                    break
                pool = [
                    r
                    for r in candidates
                    if r.src == hi.id and r.request.id not in moved and r.phase == "decode"
                ] or [r for r in candidates if r.src == hi.id and r.request.id not in moved]
                pool.sort(
                    key=lambda r: (r.context_tokens, r.request.id),
                    reverse=p.selection == "LR",
                )
                done = False
                for r in pool:
                    stay = self.remaining_on_src(r, hi, loads[hi.id])
                    est = self.remaining_on_dst(
                        r, lo, loads[lo.id], self._hits(r.request).get(lo.id, 0)
                    )
                    if stay is None or est is None:
                        continue
                    cost, total = est
                    if stay - total > p.min_gain_s:
                        commit(r, lo, "load-balance", cost, stay - total)
                        done = True
                        break
                if not done:
                    break
        return out

    def _violating(self, r: InflightView, src: EndpointView, load: _Load) -> bool:
        req = r.request
        if src.perf is None:
            return False
        if r.phase == "queued" and req.ttft_slo_s is not None:
            ahead = max(0, load.pending_prefill - req.prompt_tokens)
            pred = src.perf.predict_ttft(
                req.prompt_tokens,
                0,
                running=load.running,
                waiting=max(0, load.waiting - 1),
                pending_prefill_tokens=ahead,
            )
            return pred > req.ttft_slo_s - r.age_s
        if r.phase == "decode" and req.tpot_slo_s is not None:
            tpot = r.observed_tpot_s or src.perf.predict_tpot(running=load.running)
            return tpot > req.tpot_slo_s
        return False
