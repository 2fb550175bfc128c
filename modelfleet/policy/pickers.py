"""Built-in pickers: turn the weighted totals into one candidate index.

Pickers that draw at random use the injected RNG of the cycle state (so a run is a function of
the seed); round-robin and cache-aware keep state that only their ``on_routed`` hook changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from modelfleet.policy import params as P
from modelfleet.policy.framework import CycleState, Data, Plugin
from modelfleet.policy.load import load_consumes, load_signal
from modelfleet.policy.radix import RadixTree, tokens_as_text
from modelfleet.policy.types import Decision, EndpointView, RequestView


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
        self._load = load_signal(p.metric)
        self.consumes = load_consumes(p.metric)

    def pick(
        self, state: CycleState, endpoints: Sequence[EndpointView], totals: Sequence[float]
    ) -> int:
        n = len(endpoints)
        if n == 1:
            return 0
        a, b = state.rng.sample(range(n), 2)
        la, lb = self._load(endpoints[a]), self._load(endpoints[b])
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

    consumes = frozenset({Data.INFLIGHT, Data.PROMPT})

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
