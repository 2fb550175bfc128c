"""Built-in filters, scorers and pickers, and :func:`default_registry` that registers them.

Scores are in [0, 1], higher is better; every scorer gives all candidates the same score when
it has nothing to say (so it cannot tip a decision), which is also what "all endpoints equal"
yields. Plugins read :class:`~.framework.CycleState` and the views; only hooks change state.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from modelfleet.policy import params as P
from modelfleet.policy.framework import BuildContext, CycleState, Plugin, PluginRegistry
from modelfleet.policy.radix import RadixTree, tokens_as_text
from modelfleet.policy.types import Decision, EndpointId, EndpointView, RequestView

_LOADS: Mapping[str, Callable[[EndpointView], float]] = MappingProxyType(
    {
        "waiting": lambda e: e.waiting,
        "running-waiting": lambda e: e.running + e.waiting,
        "inflight-requests": lambda e: e.inflight_requests,
        "inflight-tokens": lambda e: e.inflight_tokens,
        "speed-weighted": lambda e: e.inflight_tokens / max(e.relative_speed, 1e-9),
    }
)


def load_of(metric: P.LoadMetric, e: EndpointView) -> float:
    """The load signal ``metric`` of endpoint ``e`` (higher = busier)."""
    return _LOADS[metric](e)


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


# -- filters ------------------------------------------------------------------------------


class HealthyFilter(Plugin):
    """Keeps endpoints that are healthy and not draining."""

    def filter(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[EndpointView]:
        return [e for e in endpoints if e.healthy and not e.draining]


class BoundedLoadFilter(Plugin):
    """Drops endpoints whose load is above ``c`` times their speed-weighted fair share.

    Bound for endpoint e: ``ceil(c · (L + r) · s_e / S) + slack`` where L is the total load,
    r the request's own load (1 request or its prompt tokens), s_e the relative speed and S the
    sum of speeds; e is kept if ``load_e + r <= bound`` (slack is in requests, or in units of
    the request's tokens for the token metric). Counting in requests, the least loaded endpoint
    per unit of speed always passes (c ≥ 1 and the ceiling); if nothing passes (possible with
    the token metric, slack 0 and a request large against the pool's load) every candidate is
    kept. So the filter never empties the set; it only stops affinity scorers from hot-spotting.
    """

    def __init__(self, p: P.BoundedLoadParams) -> None:
        self.p = p

    def filter(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[EndpointView]:
        if len(endpoints) <= 1:
            return list(endpoints)
        by_requests = self.p.metric == "inflight-requests"
        own = 1 if by_requests else max(1, state.request.prompt_tokens)
        slack = self.p.min_slack * own
        speed_sum = sum(e.relative_speed for e in endpoints)
        if speed_sum <= 0:
            return list(endpoints)
        if by_requests:
            total = sum(e.inflight_requests for e in endpoints)
        else:
            total = sum(e.inflight_tokens for e in endpoints)
        unit = self.p.max_load_factor * (total + own) / speed_sum
        # integer load L is within the bound iff L <= ceil(x) + slack, i.e. L - slack - 1 < x
        shift = own - slack - 1
        if by_requests:
            kept = [e for e in endpoints if e.inflight_requests + shift < unit * e.relative_speed]
        else:
            kept = [e for e in endpoints if e.inflight_tokens + shift < unit * e.relative_speed]
        return kept or list(endpoints)


class ShortlistFilter(Plugin):
    """Keeps at most ``k`` candidates: the longest prefix hits plus the least loaded.

    Up to ``ceil(prefix_share·k)`` endpoints with the longest predicted prefix hit, then the
    least loaded (in-flight tokens per unit of relative speed) fill the list to ``k``. This is
    the "power of k choices" idea applied to placement: the scorers that follow only look at
    candidates that can win on cache or on load, which divides their per-endpoint cost by
    ``n/k`` on large pools (64 endpoints → 16) at little loss, since an endpoint with neither a
    hit nor spare capacity rarely wins. Order of the input is kept; never returns empty.
    """

    def __init__(self, p: P.ShortlistParams) -> None:
        self.p = p

    def filter(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[EndpointView]:
        k = self.p.k
        n = len(endpoints)
        if n <= k:
            return list(endpoints)
        hits = state.prefix_hits()
        keep: set[int] = set()
        if hits:
            with_hit = [(hits[e.id], i) for i, e in enumerate(endpoints) if e.id in hits]
            with_hit.sort(reverse=True)
            quota = math.ceil(self.p.prefix_share * k)
            keep.update(i for _, i in with_hit[:quota])
        if len(keep) < k:
            loads = [e.inflight_tokens / (e.relative_speed or 1e-9) for e in endpoints]
            for i in sorted(range(n), key=loads.__getitem__):
                if len(keep) >= k:
                    break
                keep.add(i)
        return [endpoints[i] for i in sorted(keep)]


class SloFeasibleFilter(Plugin):
    """Keeps endpoints predicted to meet the request's TTFT target; all if none can.

    Failing open (keep all) leaves the choice between queueing, shedding and downgrading to
    admission (``modelfleet.policy.admission``), which sees the same predictions.
    """

    def __init__(self, p: P.SloFeasibleParams) -> None:
        self.p = p

    def filter(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[EndpointView]:
        target = state.request.ttft_slo_s
        if target is None:
            return list(endpoints)
        limit = target * self.p.slack
        kept = []
        for e in endpoints:
            pred = state.predicted_ttft(e)
            if pred is None or pred <= limit:
                kept.append(e)
        return kept or list(endpoints)


# -- scorers ------------------------------------------------------------------------------


class PrefixCacheScorer(Plugin):
    """Predicted prefix hit: ``w·min(1, hit/scale)² + (1−w)·hit/prompt``.

    The ratio term rewards the endpoint holding most of *this* prompt; the absolute term makes
    a long hit worth more than a short one of equal ratio (llm-d's ``prefix-cache-scorer``).
    Hits come from the profile's prefix index through one walk of the chain per decision.
    """

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
        self._load = _LOADS[p.metric]

    def score(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[float]:
        return min_max_low_is_best(list(map(self._load, endpoints)))


class KvUsageScorer(Plugin):
    """``1 − kv_cache_usage`` (llm-d's ``kv-cache-utilization-scorer``)."""

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
    accelerator as if it missed, and all traffic piles onto the fastest one (measured: 87 % of
    the Mooncake trace on 6 of 16 engines). With the floor, differences far below the target
    shrink toward a tie (which load, cache and spreading terms then break) while differences
    near or above the target keep almost their full weight. Invariant: for ``F ≥ 0`` the term is
    in (0, 1], 1 for the best candidate, and monotone decreasing in ``pred``, so the scorer never
    prefers a slower prediction; a floor only flattens the gradient.
    """

    def __init__(self, p: P.SloHeadroomParams) -> None:
        self.p = p

    def score(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[float]:
        req = state.request
        hits = state.prefix_hits()
        prompt = req.prompt_tokens
        ttfts: list[float] = []
        tpots: list[float] = []
        known: list[bool] = []
        for e in endpoints:
            perf = e.perf
            if perf is None:
                ttfts.append(0.0)
                tpots.append(0.0)
                known.append(False)
                continue
            ttfts.append(
                perf.predict_ttft(
                    prompt,
                    hits.get(e.id, 0),
                    running=e.running,
                    waiting=e.waiting,
                    pending_prefill_tokens=e.inflight_prefill_tokens,
                )
            )
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
    request has a short hit everywhere and the scorer never fires (measured on the Mooncake
    trace: 3,657 of 3,658 requests); with a threshold, a new conversation behind a shared
    preamble still counts as new. Scoring and ``on_routed`` use the same test, so the table
    records exactly the requests that were scored as cold.
    """

    def __init__(self, p: P.ColdSpreadParams) -> None:
        self.p = p
        self._last: dict[EndpointId, int] = {}
        self._seq = 0

    def score(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[float]:
        n = len(endpoints)
        hits = state.prefix_hits()
        if hits:
            best = max((hits.get(e.id, 0) for e in endpoints), default=0)
            if not self._cold(best, state.request.prompt_tokens):
                return [self.p.neutral_score] * n
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
        if self._cold(decision.max_cached_tokens, request.prompt_tokens):
            self._seq += 1
            self._last[decision.endpoint] = self._seq


# -- pickers ------------------------------------------------------------------------------


def _argmax_ties(totals: Sequence[float]) -> list[int]:
    best = max(totals)
    eps = 1e-12 * max(1.0, abs(best))
    return [i for i, v in enumerate(totals) if v >= best - eps]


class MaxScorePicker(Plugin):
    """Highest total; ties broken uniformly with the injected RNG (as llm-d does)."""

    def pick(
        self, state: CycleState, endpoints: Sequence[EndpointView], totals: Sequence[float]
    ) -> int:
        ties = _argmax_ties(totals)
        return ties[0] if len(ties) == 1 else ties[state.rng.randrange(len(ties))]


class RandomTopKPicker(Plugin):
    """Uniform among the ``k`` highest totals (exploration against herding)."""

    def __init__(self, p: P.RandomTopKParams) -> None:
        self.p = p

    def pick(
        self, state: CycleState, endpoints: Sequence[EndpointView], totals: Sequence[float]
    ) -> int:
        order = sorted(range(len(totals)), key=lambda i: -totals[i])
        top = order[: self.p.k]
        return top[state.rng.randrange(len(top))]


class WeightedRandomPicker(Plugin):
    """Probability proportional to the total (uniform when all totals are 0)."""

    def pick(
        self, state: CycleState, endpoints: Sequence[EndpointView], totals: Sequence[float]
    ) -> int:
        s = sum(totals)
        if s <= 0:
            return state.rng.randrange(len(totals))
        x = state.rng.random() * s
        acc = 0.0
        for i, v in enumerate(totals):
            acc += v
            if x < acc:
                return i
        return len(totals) - 1


class RoundRobinPicker(Plugin):
    """Cycles through the candidates sorted by id; the counter advances in ``on_routed``."""

    def __init__(self) -> None:
        self._next = 0

    def pick(
        self, state: CycleState, endpoints: Sequence[EndpointView], totals: Sequence[float]
    ) -> int:
        order = sorted(range(len(endpoints)), key=lambda i: endpoints[i].id)
        return order[self._next % len(order)]

    def on_routed(self, request: RequestView, decision: Decision) -> None:
        self._next += 1


class PowerOfTwoPicker(Plugin):
    """Power of two choices: two distinct random candidates, the less loaded wins."""

    def __init__(self, p: P.PowerOfTwoParams) -> None:
        self.p = p

    def pick(
        self, state: CycleState, endpoints: Sequence[EndpointView], totals: Sequence[float]
    ) -> int:
        n = len(endpoints)
        if n == 1:
            return 0
        a, b = state.rng.sample(range(n), 2)
        la, lb = load_of(self.p.metric, endpoints[a]), load_of(self.p.metric, endpoints[b])
        return a if la <= lb else b


class CacheAwarePicker(Plugin):
    """SGLang / vLLM router ``cache_aware`` policy, faithful to its published algorithm.

    Loads are the router's in-flight request counts. If the candidates are imbalanced —
    ``max − min > balance_abs_threshold`` and ``max > balance_rel_threshold · min`` — take the
    least loaded. Otherwise match the prompt (text, or token ids as code points) in the shared
    radix tree: if the match rate exceeds ``cache_threshold`` take the matched endpoint, else
    the endpoint with the smallest tree (most free cache). The prompt is inserted for the chosen
    endpoint in ``on_routed``, and the tree is pruned to ``max_tree_size`` characters per
    endpoint every ``eviction_interval_s`` (the routers do it on a timer; here on the first
    routed request after the interval, using the injected clock).
    """

    def __init__(self, p: P.CacheAwareParams, clock: Callable[[], float]) -> None:
        self.p = p
        self.clock = clock
        self.tree = RadixTree()
        self._last_evict = clock()

    @staticmethod
    def key_of(req: RequestView) -> str:
        if req.text is not None:
            return req.text
        if req.token_ids is not None:
            return tokens_as_text(req.token_ids)
        return ""

    def pick(
        self, state: CycleState, endpoints: Sequence[EndpointView], totals: Sequence[float]
    ) -> int:
        loads = [e.inflight_requests for e in endpoints]
        lo, hi = min(loads), max(loads)
        p = self.p
        if hi - lo > p.balance_abs_threshold and hi > lo * p.balance_rel_threshold:
            return loads.index(lo)
        text = self.key_of(state.request)
        ids = {e.id for e in endpoints}
        if text:
            matched, tenant = self.tree.match(text, ids)
            if tenant is not None and matched / len(text) > p.cache_threshold:
                return next(i for i, e in enumerate(endpoints) if e.id == tenant)
        sizes = [(self.tree.size.get(e.id, 0), i) for i, e in enumerate(endpoints)]
        return min(sizes)[1]

    def on_routed(self, request: RequestView, decision: Decision) -> None:
        now = self.clock()
        text = self.key_of(request)
        if text:
            self.tree.insert(text, decision.endpoint, now)
        if now - self._last_evict >= self.p.eviction_interval_s:
            self.tree.evict(self.p.max_tree_size)
            self._last_evict = now


# -- registry -----------------------------------------------------------------------------


def _prefix_factory(name: str, p: P.PrefixCacheParams, ctx: BuildContext) -> PrefixCacheScorer:
    if ctx.prefix_index is None:
        raise ValueError(f"plugin {name!r} needs a prefix index but the profile has none")
    return PrefixCacheScorer(p)


def default_registry() -> PluginRegistry:
    """A registry with every built-in plugin, registered explicitly (no import side effect)."""
    r = PluginRegistry()

    filters: list[tuple[str, Any, type[P.Params]]] = [
        ("healthy", lambda n, p, c: HealthyFilter(), P.NoParams),
        ("bounded-load", lambda n, p, c: BoundedLoadFilter(p), P.BoundedLoadParams),
        ("slo-feasible", lambda n, p, c: SloFeasibleFilter(p), P.SloFeasibleParams),
        ("shortlist", lambda n, p, c: ShortlistFilter(p), P.ShortlistParams),
    ]
    scorers: list[tuple[str, Any, type[P.Params]]] = [
        ("prefix-cache", _prefix_factory, P.PrefixCacheParams),
        ("queue", lambda n, p, c: QueueScorer(p), P.QueueParams),
        ("kv-usage", lambda n, p, c: KvUsageScorer(), P.NoParams),
        ("slo-headroom", lambda n, p, c: SloHeadroomScorer(p), P.SloHeadroomParams),
        ("session-affinity", lambda n, p, c: SessionAffinityScorer(p), P.SessionAffinityParams),
        ("cold-spread", lambda n, p, c: ColdSpreadScorer(p), P.ColdSpreadParams),
    ]
    pickers: list[tuple[str, Any, type[P.Params]]] = [
        ("max-score", lambda n, p, c: MaxScorePicker(), P.NoParams),
        ("random-top-k", lambda n, p, c: RandomTopKPicker(p), P.RandomTopKParams),
        ("weighted-random", lambda n, p, c: WeightedRandomPicker(), P.NoParams),
        ("round-robin", lambda n, p, c: RoundRobinPicker(), P.NoParams),
        ("power-of-two", lambda n, p, c: PowerOfTwoPicker(p), P.PowerOfTwoParams),
        ("cache-aware", lambda n, p, c: CacheAwarePicker(p, c.clock), P.CacheAwareParams),
    ]
    for type_name, factory, model in filters:
        r.register(type_name, factory, model, kind="filter")
    for type_name, factory, model in scorers:
        r.register(type_name, factory, model, kind="scorer")
    for type_name, factory, model in pickers:
        r.register(type_name, factory, model, kind="picker")
    return r
