"""The model-selection pipeline the scheduler calls: classify → rules → strategy → fallbacks.

``Selector.select(request, pools, rng)``:

1. *classify* — if semantic classes are configured, featurise the prompt once and take the
   nearest class (:mod:`.semantic`);
2. *rules* — the first matching rule's targets, else the default targets (:mod:`.rules`);
3. *filter* — keep targets with weight > 0 (weight 0 = no traffic, whatever the strategy)
   whose pool is in ``pools`` and available; if some are not overloaded, the overloaded ones
   are set aside (tried only after all the others);
4. *strategy* — order the remaining candidates (:mod:`.strategies`); the first is the choice,
   the rest plus the set-aside overloaded pools are the fallbacks, in order.

When a rule matches but none of its pools is available, selection falls through to the next
matching rule and finally to the default targets, so that an outage of a canary pool never
fails requests a healthier pool can answer. ``pool`` is ``None`` only when no target at all is
available.

``Selector.on_feedback`` forwards outcomes to strategies that learn (the bandit);
:func:`next_pool` tells the proxy where to go after a failed attempt. The selector keeps no
state besides the bandit's statistics, and reads no clock; the RNG is a parameter.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from modelfleet.api.routingpolicy import PoolTarget, RoutingPolicySpec
from modelfleet.policy.selection.features import HashedTfidf
from modelfleet.policy.selection.predictor import QualityPredictor
from modelfleet.policy.selection.rules import CompiledRule, compile_rule
from modelfleet.policy.selection.semantic import SemanticClassifier
from modelfleet.policy.selection.strategies import (
    BanditStrategy,
    Candidate,
    Context,
    Strategy,
    StrategyContext,
    StrategyRegistry,
    default_strategy_registry,
)
from modelfleet.policy.selection.types import (
    Feedback,
    Outcome,
    PoolView,
    Rng,
    SelectionDecision,
    SelectionRequest,
)

#: Failures after which the scheduler may try the next pool when the strategy is not cascade:
#: only overload (429 / admission refusal), where the request provably did no work.
DEFAULT_FALLBACK_ON: frozenset[Outcome] = frozenset({Outcome.OVERLOAD})

_FALLBACK_NAMES = {"overload": Outcome.OVERLOAD, "error": Outcome.ERROR, "timeout": Outcome.TIMEOUT}


def next_pool(
    decision: SelectionDecision,
    failed_pool: str,
    outcome: Outcome,
    fallback_on: Collection[Outcome] = DEFAULT_FALLBACK_ON,
    tried: Collection[str] = (),
) -> str | None:
    """The pool to try after ``failed_pool`` ended with ``outcome``, or ``None`` to give up.

    Moves on only for outcomes in ``fallback_on`` (never for success or a client error: a bad
    request is bad everywhere). The next pool is the first of ``decision.fallbacks`` after
    ``failed_pool`` that is not in ``tried``.
    """
    if outcome not in fallback_on or outcome in (Outcome.SUCCESS, Outcome.CLIENT_ERROR):
        return None
    order = (decision.pool, *decision.fallbacks) if decision.pool else decision.fallbacks
    seen = set(tried) | {failed_pool}
    start = order.index(failed_pool) + 1 if failed_pool in order else 0
    for pool in order[start:]:
        if pool is not None and pool not in seen:
            return pool
    return None


@dataclass(eq=False)
class Selector:
    """Model selection for one RoutingPolicy (build with :func:`build_selector`)."""

    rules: tuple[CompiledRule, ...]
    default_targets: tuple[PoolTarget, ...]
    strategy: Strategy
    classifier: SemanticClassifier | None = None
    fallback_on: frozenset[Outcome] = DEFAULT_FALLBACK_ON

    def select(
        self, request: SelectionRequest, pools: Sequence[PoolView], rng: Rng
    ) -> SelectionDecision:
        """Choose the pool for ``request`` among ``pools`` (see the module docstring)."""
        features: dict[int, np.ndarray] = {}
        semantic_class = ""
        if self.classifier is not None and self.classifier.names:
            fz = self.classifier.featuriser
            features[id(fz)] = fz.transform(request.prompt)
            semantic_class = self.classifier.classify(features[id(fz)])
        by_name = {p.name: p for p in pools}
        rule_name: str | None = None
        candidates: list[Candidate] = []
        for rule in self.rules:
            if rule.matches(request, semantic_class):
                candidates = _candidates(rule.targets, by_name)
                if candidates:
                    rule_name = rule.name
                    break
        if not candidates:
            candidates = _candidates(self.default_targets, by_name)
        if not candidates:
            return SelectionDecision(
                pool=None,
                rule=rule_name,
                strategy=self.strategy.name,
                semantic_class=semantic_class,
                reason="no available target pool",
            )
        fresh = [c for c in candidates if not c.pool.overloaded]
        busy = [c for c in candidates if c.pool.overloaded]
        ctx = Context(request=request, semantic_class=semantic_class, features=features)
        ranking = self.strategy.rank(fresh or busy, ctx, rng)
        if not ranking.order:  # e.g. weighted with every live weight 0
            return SelectionDecision(
                pool=None,
                rule=rule_name,
                strategy=self.strategy.name,
                semantic_class=semantic_class,
                reason="every available target has weight 0",
            )
        order = list(ranking.order)
        if fresh:
            order += [c.pool.name for c in busy]
        return SelectionDecision(
            pool=order[0],
            fallbacks=tuple(order[1:]),
            rule=rule_name,
            strategy=self.strategy.name,
            semantic_class=semantic_class,
            reason="rule " + rule_name if rule_name else "default targets",
            scores=dict(ranking.scores),
        )

    def on_feedback(self, feedback: Feedback) -> None:
        """Credit an outcome to the strategy if it learns online (bandit); else ignore it."""
        if isinstance(self.strategy, BanditStrategy):
            self.strategy.on_feedback(feedback)

    def next_pool(
        self,
        decision: SelectionDecision,
        failed_pool: str,
        outcome: Outcome,
        tried: Collection[str] = (),
    ) -> str | None:
        """:func:`next_pool` with this policy's ``fallback_on``."""
        return next_pool(decision, failed_pool, outcome, self.fallback_on, tried)


def _candidates(targets: Sequence[PoolTarget], by_name: dict[str, PoolView]) -> list[Candidate]:
    out: list[Candidate] = []
    for t in targets:
        p = by_name.get(t.pool)
        if p is not None and p.available and t.weight > 0:
            out.append(Candidate(pool=p, weight=t.weight))
    return out


def build_selector(
    spec: RoutingPolicySpec,
    *,
    predictor: QualityPredictor | None = None,
    featuriser: HashedTfidf | None = None,
    registry: StrategyRegistry | None = None,
) -> Selector:
    """Build the selector for a RoutingPolicy spec (the composition root calls this once).

    ``predictor`` is required for ``strategy: cost-quality`` (load it with
    :func:`modelfleet.policy.selection.predictor.load_predictor`). The semantic classifier
    featurises with ``featuriser``, else the predictor's featuriser, else plain hashed TF.
    ``registry`` maps ``selection.strategy`` to a factory (default: every built-in strategy).
    Every inconsistency raises ``ValueError`` naming the field.
    """
    sel = spec.selection
    strategy = (registry or default_strategy_registry()).create(
        sel, StrategyContext(predictor=predictor)
    )
    rules = tuple(compile_rule(r) for r in spec.rules)
    classifier: SemanticClassifier | None = None
    classes = sel.semantic.classes
    if classes:
        fz = (
            featuriser or (predictor.featuriser if predictor is not None else None) or HashedTfidf()
        )
        classifier = SemanticClassifier.from_examples(
            [(c.name, c.examples) for c in classes], fz, sel.semantic.min_similarity
        )
    known = {c.name for c in classes}
    for r in rules:
        if r.semantic_class and r.semantic_class not in known:
            raise ValueError(
                f"rules[{r.name}].match.semanticClass: unknown class {r.semantic_class!r} "
                f"(selection.semantic.classes has {sorted(known)})"
            )
    if sel.strategy == "semantic" and not classes:
        raise ValueError("selection.semantic.classes: strategy semantic needs at least one class")
    fallback_on = (
        frozenset(_FALLBACK_NAMES[f] for f in sel.cascade.fallback_on)
        if sel.strategy == "cascade"
        else DEFAULT_FALLBACK_ON
    )
    return Selector(
        rules=rules,
        default_targets=tuple(spec.default_targets),
        strategy=strategy,
        classifier=classifier,
        fallback_on=fallback_on,
    )
