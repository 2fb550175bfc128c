"""The built-in plugin types: :func:`default_registry` registers every one of them explicitly.

The plugins themselves live in :mod:`.filters`, :mod:`.scorers` and :mod:`.pickers`; this
module is only the table from type name (as written in a RoutingPolicy) to factory and
parameter model. Nothing registers itself on import: a host that wants its own plugins builds a
registry, calls ``register`` for each, and passes it to ``config.build_profile``.
"""

from __future__ import annotations

from typing import Any

from modelfleet.policy import params as P
from modelfleet.policy.filters import (
    BoundedLoadFilter,
    HealthyFilter,
    ShortlistFilter,
    SloFeasibleFilter,
)
from modelfleet.policy.framework import PluginRegistry
from modelfleet.policy.pickers import (
    CacheAwarePicker,
    MaxScorePicker,
    PowerOfTwoPicker,
    RandomTopKPicker,
    RoundRobinPicker,
    WeightedRandomPicker,
)
from modelfleet.policy.scorers import (
    ColdSpreadScorer,
    KvUsageScorer,
    PrefixCacheScorer,
    QueueScorer,
    SessionAffinityScorer,
    SloHeadroomScorer,
)


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
        ("prefix-cache", lambda n, p, c: PrefixCacheScorer(p), P.PrefixCacheParams),
        ("queue", lambda n, p, c: QueueScorer(p), P.QueueParams),
        ("kv-usage", lambda n, p, c: KvUsageScorer(), P.NoParams),
        ("slo-headroom", lambda n, p, c: SloHeadroomScorer(p), P.SloHeadroomParams),
        ("session-affinity", lambda n, p, c: SessionAffinityScorer(p), P.SessionAffinityParams),
        ("cold-spread", lambda n, p, c: ColdSpreadScorer(p, c.clock), P.ColdSpreadParams),
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
