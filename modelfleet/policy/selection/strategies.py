"""Selection strategies: how one pool is chosen among a request's candidate targets.

Every strategy answers the same question — given the candidate pools (the matched rule's
targets, or the default targets, already filtered to available pools), in which order should
the scheduler try them? — and returns that order with a score per pool. The first pool is the
choice; the rest are the fallbacks. Returning an order rather than one pool is what lets every
strategy hand the cascade logic a next pool on overload.

- :class:`WeightedStrategy` — weighted random (canary, A/B): pool ``i`` first with probability
  ``w_i / Σw``; the remaining pools follow by descending weight. Weight 0 = no traffic.
- :class:`CascadeStrategy` — the targets in their spec order; the scheduler moves to the next
  one on the failures listed in ``cascade.fallbackOn`` (:func:`next_pool`).
- :class:`CostQualityStrategy` — CARROT-style: a quality predictor trained offline estimates
  each model's quality ``q̂`` (probability of a correct answer, 0..1) and cost ``ĉ`` (USD) for
  this prompt; pools are ordered by ``q̂ − λ · 1000 · ĉ``, λ = ``costQuality.costWeight`` in
  quality per USD per 1k requests. λ = 0 picks the best predicted quality whatever it costs;
  raising λ only ever moves the choice to models with lower predicted cost (the tests check
  the sweep is monotone).
- :class:`BanditStrategy` — learns online which pool earns the best reward, per semantic class
  (contextual when classes exist): Thompson sampling on Beta(1 + Σr, 1 + Σ(1 − r)), UCB1, or
  ε-greedy. The per-arm statistics live in a :class:`BanditState` tracker updated only by
  feedback; choosing only reads it.

The semantic strategy is the weighted strategy with a classifier in front (the class feeds the
rules' ``semanticClass``); see :mod:`modelfleet.policy.selection.semantic`.

Config → objects goes through a :class:`StrategyRegistry`, the same idiom as placement's
:class:`~modelfleet.policy.framework.PluginRegistry`: :func:`default_strategy_registry`
registers every built-in strategy by its ``selection.strategy`` name explicitly, a duplicate
name is an error, and an unknown name raises the same ``ValueError`` as an unknown plugin type.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from modelfleet.api.routingpolicy import SelectionSpec
from modelfleet.policy.framework import unknown_type_error
from modelfleet.policy.selection.predictor import QualityPredictor
from modelfleet.policy.selection.types import Feedback, PoolView, Rng, SelectionRequest

FloatVector = np.ndarray


@dataclass(frozen=True, slots=True)
class Candidate:
    """A candidate pool: its view and its weight from the rule/default targets."""

    pool: PoolView
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Ranking:
    """A strategy's answer: pool names in the order to try them, and a score per pool."""

    order: tuple[str, ...]
    scores: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Context:
    """What a strategy may read besides the candidates (computed once per request).

    ``features`` memoises feature vectors by featuriser identity (``id(featuriser)``), so
    that when the semantic classifier and the quality predictor share one featuriser (what
    :func:`build_selector` arranges) the prompt is featurised once per request.
    """

    request: SelectionRequest
    semantic_class: str = ""
    features: Mapping[int, FloatVector] = field(default_factory=dict)


class Strategy(Protocol):
    """A selection strategy (see the module docstring)."""

    @property
    def name(self) -> str:
        """The strategy's name as in ``selection.strategy``."""
        ...

    def rank(self, candidates: Sequence[Candidate], ctx: Context, rng: Rng) -> Ranking:
        """Order ``candidates`` (non-empty) for this request."""
        ...


def weighted_pick(weights: Sequence[float], rng: Rng) -> int:
    """Index drawn with probability ``weights[i] / sum(weights)`` (one ``rng.random()`` call).

    Raises ``ValueError`` if no weight is positive. Zero weights are never drawn.
    """
    total = float(sum(w for w in weights if w > 0))
    if total <= 0:
        raise ValueError("weighted_pick needs at least one positive weight")
    u = rng.random() * total
    acc = 0.0
    last = -1
    for i, w in enumerate(weights):
        if w <= 0:
            continue
        acc += w
        last = i
        if u < acc:
            return i
    return last  # u == total through rounding


@dataclass(frozen=True)
class WeightedStrategy:
    """Weighted random choice; fallbacks by descending weight (ties: spec order)."""

    name: str = "weighted"

    def rank(self, candidates: Sequence[Candidate], ctx: Context, rng: Rng) -> Ranking:
        live = [c for c in candidates if c.weight > 0]
        if not live:
            return Ranking(order=(), scores={})
        first = live[weighted_pick([c.weight for c in live], rng)]
        rest = sorted((c for c in live if c is not first), key=lambda c: -c.weight)
        return Ranking(
            order=(first.pool.name, *(c.pool.name for c in rest)),
            scores={c.pool.name: c.weight for c in live},
        )


@dataclass(frozen=True)
class CascadeStrategy:
    """Spec order; see :func:`next_pool` for when the scheduler moves on."""

    name: str = "cascade"

    def rank(self, candidates: Sequence[Candidate], ctx: Context, rng: Rng) -> Ranking:
        n = len(candidates)
        return Ranking(
            order=tuple(c.pool.name for c in candidates),
            scores={c.pool.name: float(n - i) for i, c in enumerate(candidates)},
        )


@dataclass(frozen=True)
class CostQualityStrategy:
    """argmax over candidates of predicted quality − λ · 1000 · predicted cost (USD).

    ``pool_models`` maps a pool to the predictor's model key; unmapped pools use
    ``PoolView.model`` and then the pool name. A pool whose model the predictor does not know
    scores ``-inf`` (tried last): the strategy never guesses a quality it cannot predict.
    """

    predictor: QualityPredictor
    cost_weight: float = 1.0
    pool_models: Mapping[str, str] = field(default_factory=dict)
    name: str = "cost-quality"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cost_weight) and self.cost_weight >= 0):
            raise ValueError(f"costQuality.costWeight must be >= 0, got {self.cost_weight}")
        known = set(self.predictor.models)
        for pool, model in self.pool_models.items():
            if model not in known:
                raise ValueError(
                    f"costQuality.poolModels[{pool}]: model {model!r} is unknown to the "
                    f"quality predictor (it knows {sorted(known)})"
                )

    def model_of(self, pool: PoolView) -> str:
        return self.pool_models.get(pool.name) or pool.model or pool.name

    def rank(self, candidates: Sequence[Candidate], ctx: Context, rng: Rng) -> Ranking:
        x = ctx.features.get(id(self.predictor.featuriser))
        if x is None:
            x = self.predictor.featuriser.transform(ctx.request.prompt)
        quality, cost = self.predictor.predict(x)
        index = {m: i for i, m in enumerate(self.predictor.models)}
        scores: dict[str, float] = {}
        for c in candidates:
            i = index.get(self.model_of(c.pool))
            scores[c.pool.name] = (
                -math.inf
                if i is None
                else float(quality[i]) - self.cost_weight * 1000.0 * float(cost[i])
            )
        order = sorted(range(len(candidates)), key=lambda j: -scores[candidates[j].pool.name])
        return Ranking(order=tuple(candidates[j].pool.name for j in order), scores=scores)


BanditAlgorithm = Literal["epsilon-greedy", "thompson", "ucb"]


@dataclass
class ArmStats:
    """Running totals of one arm: pulls and summed reward (rewards in [0, 1])."""

    pulls: int = 0
    reward_sum: float = 0.0

    @property
    def mean(self) -> float:
        return self.reward_sum / self.pulls if self.pulls else 0.0


@dataclass
class BanditState:
    """Per-(context, pool) statistics; updated only through :meth:`update` (feedback)."""

    arms: dict[tuple[str, str], ArmStats] = field(default_factory=dict)

    def get(self, context: str, pool: str) -> ArmStats:
        return self.arms.get((context, pool)) or ArmStats()

    def update(self, feedback: Feedback) -> None:
        r = feedback.reward
        if not (math.isfinite(r) and 0.0 <= r <= 1.0):
            raise ValueError(f"feedback.reward must be in [0, 1], got {r}")
        s = self.arms.setdefault((feedback.context, feedback.pool), ArmStats())
        s.pulls += 1
        s.reward_sum += r


@dataclass
class BanditStrategy:
    """Online choice from feedback (see the module docstring for the three algorithms).

    Invariant: :meth:`rank` reads ``state`` and draws from ``rng``; only :meth:`on_feedback`
    changes ``state``. Untried arms come first under UCB1 and ε-greedy (each arm is tried once
    before any is exploited); Thompson needs no such rule (its Beta(1, 1) prior is uniform).
    """

    algorithm: BanditAlgorithm = "thompson"
    epsilon: float = 0.1
    state: BanditState = field(default_factory=BanditState)
    name: str = "bandit"

    def __post_init__(self) -> None:
        if self.algorithm not in ("epsilon-greedy", "thompson", "ucb"):
            raise ValueError(
                f"bandit.algorithm must be epsilon-greedy, thompson or ucb, got {self.algorithm!r}"
            )
        if not (math.isfinite(self.epsilon) and 0.0 <= self.epsilon <= 1.0):
            raise ValueError(f"bandit.epsilon must be in [0, 1], got {self.epsilon}")

    def rank(self, candidates: Sequence[Candidate], ctx: Context, rng: Rng) -> Ranking:
        stats = [self.state.get(ctx.semantic_class, c.pool.name) for c in candidates]
        if self.algorithm == "thompson":
            scores = [
                rng.betavariate(1.0 + s.reward_sum, 1.0 + s.pulls - s.reward_sum) for s in stats
            ]
        elif self.algorithm == "ucb":
            total = sum(s.pulls for s in stats)
            scores = [
                math.inf if s.pulls == 0 else s.mean + math.sqrt(2.0 * math.log(total) / s.pulls)
                for s in stats
            ]
        else:
            explore = rng.random() < self.epsilon
            if explore:
                scores = [rng.random() for _ in stats]
            else:
                scores = [math.inf if s.pulls == 0 else s.mean for s in stats]
        order = sorted(range(len(candidates)), key=lambda j: -scores[j])
        return Ranking(
            order=tuple(candidates[j].pool.name for j in order),
            scores={c.pool.name: scores[j] for j, c in enumerate(candidates)},
        )

    def on_feedback(self, feedback: Feedback) -> None:
        self.state.update(feedback)


# -- registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy factory may use besides the spec: objects the composition root loaded."""

    predictor: QualityPredictor | None = None


StrategyFactory = Callable[[SelectionSpec, StrategyContext], Strategy]


class StrategyRegistry:
    """Explicit map from ``selection.strategy`` name to factory; no import-time registration.

    ``register`` refuses a duplicate name; ``create`` refuses an unknown name with the error
    placement's plugin registry gives (naming it and listing the valid ones), and passes on
    the factory's ``ValueError`` naming the field when the spec is inconsistent.
    """

    def __init__(self) -> None:
        self._factories: dict[str, StrategyFactory] = {}

    def register(self, name: str, factory: StrategyFactory) -> None:
        if not name:
            raise ValueError("strategy type name must not be empty")
        if name in self._factories:
            raise ValueError(f"strategy type {name!r} is already registered")
        self._factories[name] = factory

    def types(self) -> list[str]:
        return sorted(self._factories)

    def create(self, spec: SelectionSpec, ctx: StrategyContext) -> Strategy:
        factory = self._factories.get(spec.strategy)
        if factory is None:
            raise unknown_type_error("strategy", spec.strategy, self.types())
        return factory(spec, ctx)


def _cost_quality(spec: SelectionSpec, ctx: StrategyContext) -> Strategy:
    if ctx.predictor is None:
        raise ValueError(
            "selection.costQuality: strategy cost-quality needs a quality predictor "
            f"(qualityModel {spec.cost_quality.quality_model!r} was not loaded)"
        )
    return CostQualityStrategy(
        predictor=ctx.predictor,
        cost_weight=spec.cost_quality.cost_weight,
        pool_models=dict(spec.cost_quality.pool_models),
    )


def default_strategy_registry() -> StrategyRegistry:
    """A registry with every built-in strategy, registered explicitly (no import side effect).

    ``semantic`` is the weighted strategy; its classifier sits in front of the rules.
    """
    r = StrategyRegistry()
    r.register("weighted", lambda spec, ctx: WeightedStrategy(name="weighted"))
    r.register("semantic", lambda spec, ctx: WeightedStrategy(name="semantic"))
    r.register("cascade", lambda spec, ctx: CascadeStrategy())
    r.register("cost-quality", _cost_quality)
    r.register(
        "bandit",
        lambda spec, ctx: BanditStrategy(
            algorithm=spec.bandit.algorithm, epsilon=spec.bandit.epsilon
        ),
    )
    return r
