"""Built-in scorers: one score in [0, 1] per candidate, higher is better.

Every scorer gives all candidates the same score when it has nothing to say (so it cannot tip
a decision), which is also what "all endpoints equal" yields. Scorers read
:class:`~.framework.CycleState` and the views; only their hooks change state (the session
table, the cold-spread recency table).
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

from modelfleet.policy import params as P
from modelfleet.policy.framework import CycleState, Data, Plugin
from modelfleet.policy.load import load_consumes, load_signal
from modelfleet.policy.types import Decision, EndpointId, EndpointView, RequestView


def min_max_low_is_best(values: Sequence[float]) -> list[float]:
    """1 for the minimum, 0 for the maximum, linear between; all 1 when all equal."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi <= lo:
        return [1.0] * len(values)
    span = hi - lo
    return [(hi - v) / span for v in values]


def stable_hash64(text: str) -> int:
    """A process-independent 64-bit hash (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class PrefixCacheScorer(Plugin):
    """Predicted prefix hit: ``w·min(1, hit/scale)² + (1−w)·hit/prompt``.

    The ratio term rewards the endpoint holding most of *this* prompt; the absolute term makes
    a long hit worth more than a short one of equal ratio (llm-d's ``prefix-cache-scorer``).
    Hits come from the profile's prefix index through one walk of the chain per decision.
    """

    consumes = frozenset({Data.PREFIX_HITS})

    def __init__(self, p: P.PrefixCacheParams) -> None:
        self.p = p

    def score(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[float]:
        hits = state.prefix_hits()
        if not hits:
            return [0.0] * len(endpoints)
        prompt = state.request.prompt_tokens or max(hits.values())
        w, scale = self.p.length_weight, self.p.match_length_scale_tokens
        get = hits.get
        out = []
        for e in endpoints:
            h = get(e.id, 0)
            if h == 0:
                out.append(0.0)
                continue
            a = h / scale if h < scale else 1.0
            r = h / prompt if h < prompt else 1.0
            out.append(w * a * a + (1.0 - w) * r)
        return out


class QueueScorer(Plugin):
    """Min-max normalised load (``metric``), 1 for the least loaded; 1 for all if equal."""

    def __init__(self, p: P.QueueParams) -> None:
        self.p = p
        self._load = load_signal(p.metric)
        self.consumes = load_consumes(p.metric)

    def score(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[float]:
        return min_max_low_is_best(list(map(self._load, endpoints)))


class KvUsageScorer(Plugin):
    """``1 − kv_cache_usage`` (llm-d's ``kv-cache-utilization-scorer``)."""

    consumes = frozenset({Data.ENGINE_METRICS})

    def score(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[float]:
        return [1.0 - e.kv_cache_usage for e in endpoints]


def _headroom(
    pred: list[float], best: float, target: float | None, rel_w: float, floor: float = 0.0
) -> list[float]:
    """Per-candidate headroom score of predicted latencies ``pred`` (see SloHeadroomScorer)."""
    if target is None or target <= 0:
        return [best / x if x > 0 else 1.0 for x in pred]
    f = floor * target
    rel = [(best + f) / (x + f) if x + f > 0 else 1.0 for x in pred]
    half = 0.5 / target
    out = []
    for x, r in zip(pred, rel, strict=True):
        a = 0.5 + half * (target - x)
        a = 0.0 if a < 0.0 else (1.0 if a > 1.0 else a)
        out.append((1.0 - rel_w) * a + rel_w * r)
    return out


class SloHeadroomScorer(Plugin):
    """Headroom of predicted TTFT and TPOT against the request's SLO targets.

    Per candidate with a perf model: TTFT predicted with its prefix hit and the prefill queued on
    it; TPOT predicted at its batch plus this request. Each latency scores
    ``(1−r)·clamp(0.5 + 0.5·(target − pred)/target) + r·rel``: 1 at zero latency, 0.5 exactly
    at the target, 0 at twice the target, plus a relative term that still ranks candidates when
    all of them miss (or when the request has no target). TTFT and TPOT mix as
    ``(1−t)·ttft + t·tpot``. Candidates without a perf model score 0.5 (neutral).

    The relative term is ``(best + F)/(pred + F)`` with ``F = floor·target`` (``ttftFloor`` and
    ``tpotFloor``; plain ``best/pred`` when the floor is 0 or there is no target). Why a floor:
    ``best/pred`` is scale-free, so a candidate at 30 ms TPOT scores a third of one at 10 ms even
    when the target is 100 ms and both meet it easily; on a mixed fleet that ranks every slower
    accelerator as if it missed, and traffic piles onto the fastest one (the measured shares
    before and after the floors are in ``bench/results/placement-notes.md``). With the floor,
    differences far below the target shrink toward a tie (which load, cache and spreading terms
    then break) while differences near or above the target keep almost their full weight.
    Invariant: for ``F ≥ 0`` the term is in (0, 1], 1 for the best candidate, and monotone
    decreasing in ``pred``, so the scorer never prefers a slower prediction; a floor only
    flattens the gradient.
    """

    consumes = frozenset({Data.PERF_MODEL, Data.PREFIX_HITS, Data.ENGINE_METRICS, Data.INFLIGHT})

    def __init__(self, p: P.SloHeadroomParams) -> None:
        self.p = p

    def score(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[float]:
        req = state.request
        ttfts: list[float] = []
        tpots: list[float] = []
        known: list[bool] = []
        for e in endpoints:
            perf = e.perf
            ttft = state.predicted_ttft(e)
            if perf is None or ttft is None:
                ttfts.append(0.0)
                tpots.append(0.0)
                known.append(False)
                continue
            ttfts.append(ttft)
            active = e.inflight_requests - e.waiting
            tpots.append(
                perf.predict_tpot(running=(e.running if e.running > active else active) + 1)
            )
            known.append(True)
        if not any(known):
            return [0.5] * len(endpoints)
        tw, rw = self.p.tpot_weight, self.p.relative_weight
        best1 = min(t for t, k in zip(ttfts, known, strict=True) if k)
        best2 = min(t for t, k in zip(tpots, known, strict=True) if k)
        h1 = _headroom(ttfts, best1, req.ttft_slo_s, rw, self.p.ttft_floor)
        h2 = _headroom(tpots, best2, req.tpot_slo_s, rw, self.p.tpot_floor)
        return [
            (1.0 - tw) * a + tw * b if k else 0.5 for a, b, k in zip(h1, h2, known, strict=True)
        ]


class SessionAffinityScorer(Plugin):
    """Session stickiness with bounded loads.

    The session key is ``RequestView.session_id`` or the configured header. The preferred
    endpoint is the one the session was last routed to (a table updated in ``on_routed``, LRU
    bounded at ``maxSessions``), where its KV cache is; a new session (or one whose endpoint
    left) takes its owner on a consistent-hash ring of ``virtualNodes`` points per candidate.
    Either way the preference is bounded: walking from the preferred endpoint along the ring,
    the first endpoint whose in-flight load plus this request stays within
    ``ceil(c·(L+1)·s_e/S)`` scores 1, all others 0 (consistent hashing with bounded loads,
    Mirrokni et al.), so a hot session spills to a stable second choice instead of piling up.
    The ring uses blake2b, so scheduler replicas agree on new sessions. No key → 0 for all.
    """

    consumes = frozenset({Data.INFLIGHT})

    def __init__(self, p: P.SessionAffinityParams) -> None:
        self.p = p
        self._last: OrderedDict[str, EndpointId] = OrderedDict()
        self._ring_key: tuple[EndpointId, ...] = ()
        self._ring: tuple[list[int], list[EndpointId]] = ([], [])
        self._first: dict[EndpointId, int] = {}

    def session_key(self, req: RequestView) -> str | None:
        return req.session_id or req.headers.get(self.p.header)

    def _ring_for(self, ids: tuple[EndpointId, ...]) -> tuple[list[int], list[EndpointId]]:
        if ids != self._ring_key:
            points = sorted(
                (stable_hash64(f"{ep}#{v}"), ep) for ep in ids for v in range(self.p.virtual_nodes)
            )
            self._ring = ([h for h, _ in points], [ep for _, ep in points])
            self._first = {}
            for i, (_, ep) in enumerate(points):
                self._first.setdefault(ep, i)
            self._ring_key = ids
        return self._ring

    def score(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[float]:
        key = self.session_key(state.request)
        n = len(endpoints)
        if key is None or n == 0:
            return [0.0] * n
        if n == 1:
            return [1.0]
        ids = tuple(sorted(e.id for e in endpoints))
        hashes, owners = self._ring_for(ids)
        by_id = {e.id: e for e in endpoints}
        total = sum(e.inflight_requests for e in endpoints)
        speed_sum = sum(max(e.relative_speed, 1e-9) for e in endpoints)
        c = self.p.max_load_factor
        last = self._last.get(key)
        if last is not None and last in by_id:
            # start the walk at the sticky endpoint's first ring point
            start = self._first[last]
        else:
            start = bisect.bisect(hashes, stable_hash64(key))
        chosen: EndpointId | None = None
        seen: set[EndpointId] = set()
        for i in range(len(owners)):
            ep = owners[(start + i) % len(owners)]
            if ep in seen:
                continue
            seen.add(ep)
            e = by_id[ep]
            bound = math.ceil(c * (total + 1) * max(e.relative_speed, 1e-9) / speed_sum)
            if e.inflight_requests + 1 <= bound:
                chosen = ep
                break
            if len(seen) == n:
                break
        if chosen is None:
            chosen = owners[start % len(owners)]
        return [1.0 if e.id == chosen else 0.0 for e in endpoints]

    def on_routed(self, request: RequestView, decision: Decision) -> None:
        key = self.session_key(request)
        if key is None:
            return
        self._last[key] = decision.endpoint
        self._last.move_to_end(key)
        while len(self._last) > self.p.max_sessions:
            self._last.popitem(last=False)

    def on_migrated(
        self, request: RequestView, src: EndpointId, dst: EndpointId, generated_tokens: int
    ) -> None:
        key = self.session_key(request)
        if key is not None and self._last.get(key) == src:
            self._last[key] = dst


class ColdSpreadScorer(Plugin):
    """Spreads cold requests (no prefix hit on any candidate) by least-recent cold use.

    Like llm-d's ``no-hit-lru-scorer``: a new prefix should start on the endpoint that has gone
    longest without receiving one, so new conversations fan out and caches stay diverse. Never
    used → 1; otherwise rank by recency, least recent → 1, most recent → 0. Requests with a hit
    somewhere get ``neutralScore`` everywhere. The recency table changes only in ``on_routed``.

    "A hit somewhere" means a best hit above ``minHitFraction`` of the prompt (default 0: any
    hit). Why the threshold: when every request starts with the same system prompt, every
    request has a short hit everywhere and the scorer never fires (as on the Mooncake trace,
    ``bench/results/placement-notes.md``); with a threshold, a new conversation behind a shared
    preamble still counts as new. Scoring and ``on_routed`` use the same test, so the table
    records exactly the requests that were scored as cold.

    ``spreadBy: prompt-tokens`` ranks by prefill work instead of recency: every routed request
    adds its uncached prompt tokens (prompt minus the predicted hit) to its endpoint's counter,
    which decays with half-life ``halfLifeS`` on the injected clock; a cold request scores
    ``1`` on the endpoint with the least counted work per unit of ``relative_speed`` and ``0``
    on the most (min-max). Why: on prefix-free, decode-bound traffic the requests that miss
    their TTFT are those queued behind other prefills, and spreading by request count lets one
    endpoint collect the long prompts; the SGLang router's smallest-tree fallback spreads by
    prompt characters for the same reason (it won goodput on Azure conversation,
    ``bench/results/placement-matrix-notes.md``). Speed-normalised, so a faster GPU takes its
    share of the prefill work, not an equal one.
    """

    consumes = frozenset({Data.PREFIX_HITS})

    def __init__(self, p: P.ColdSpreadParams, clock: Callable[[], float] | None = None) -> None:
        self.p = p
        self.clock = clock
        self._last: dict[EndpointId, int] = {}
        self._seq = 0
        self._work: dict[EndpointId, tuple[float, float]] = {}  # endpoint -> (tokens, at)
        if p.spread_by == "prompt-tokens" and clock is None:
            raise ValueError("cold-spread: spreadBy 'prompt-tokens' needs the injected clock")

    def _work_at(self, ep: EndpointId, now: float) -> float:
        got = self._work.get(ep)
        if got is None:
            return 0.0
        tokens, at = got
        return float(tokens * 0.5 ** (max(0.0, now - at) / self.p.half_life_s))

    def score(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[float]:
        n = len(endpoints)
        hits = state.prefix_hits()
        if hits:
            best = max((hits.get(e.id, 0) for e in endpoints), default=0)
            if not self._cold(best, state.request.prompt_tokens):
                return [self.p.neutral_score] * n
        if self.clock is not None and self.p.spread_by == "prompt-tokens":
            now = self.clock()
            return min_max_low_is_best(
                [self._work_at(e.id, now) / max(e.relative_speed, 1e-9) for e in endpoints]
            )
        used = sorted({self._last[e.id] for e in endpoints if e.id in self._last})
        if not used:
            return [1.0] * n
        rank = {seq: i for i, seq in enumerate(used)}
        denom = max(1, len(used))
        out = []
        for e in endpoints:
            seq = self._last.get(e.id)
            out.append(1.0 if seq is None else 1.0 - (rank[seq] + 1) / (denom + 1))
        return out

    def _cold(self, best_hit: int, prompt_tokens: int) -> bool:
        """Cold: no hit, or the best hit is at most ``minHitFraction`` of the prompt."""
        return best_hit <= 0 or best_hit <= self.p.min_hit_fraction * prompt_tokens

    def on_routed(self, request: RequestView, decision: Decision) -> None:
        if self.clock is not None and self.p.spread_by == "prompt-tokens":
            now = self.clock()
            ep = decision.endpoint
            work = max(0, request.prompt_tokens - decision.cached_tokens)
            self._work[ep] = (self._work_at(ep, now) + work, now)
            return
        if self._cold(decision.max_cached_tokens, request.prompt_tokens):
            self._seq += 1
            self._last[decision.endpoint] = self._seq
