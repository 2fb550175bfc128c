"""Strategies: weighted draws, cascade order and fallback, cost-quality λ sweep, bandits."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any, get_args

import numpy as np
import pytest
from pydantic import ValidationError

from modelfleet.api.routingpolicy import RoutingPolicySpec, SelectionSpec
from modelfleet.policy.framework import BuildContext, PluginRegistry
from modelfleet.policy.selection import (
    Feedback,
    HashedTfidf,
    Outcome,
    PoolView,
    Rng,
    SelectionDecision,
    SelectionRequest,
    build_selector,
    next_pool,
)
from modelfleet.policy.selection.strategies import (
    BanditStrategy,
    Candidate,
    CascadeStrategy,
    Context,
    CostQualityStrategy,
    Ranking,
    StrategyContext,
    StrategyRegistry,
    default_strategy_registry,
    weighted_pick,
)

pytestmark = pytest.mark.unit


def spec(**kw: Any) -> RoutingPolicySpec:
    """A RoutingPolicySpec from camelCase wire fields, with defaults for the required ones."""
    body: dict[str, Any] = {"modelNames": ["auto"], "defaultTargets": [{"pool": "default"}]}
    body.update(kw)
    return RoutingPolicySpec.model_validate(body)


REQ = SelectionRequest(prompt="hello")


def targets(*pw: tuple[str, float]) -> list[dict[str, Any]]:
    return [{"pool": p, "weight": w} for p, w in pw]


# --- weighted / canary ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights",
    [
        (("a", 1.0),),
        (("a", 1.0), ("b", 1.0)),
        (("a", 95.0), ("b", 5.0)),
        (("a", 1), ("b", 2), ("c", 7)),
    ],
    ids=["one-pool", "equal", "canary-5pct", "three-way"],
)
def test_weighted_draws_follow_weights(weights: tuple[tuple[str, float], ...]) -> None:
    sel = build_selector(spec(defaultTargets=targets(*weights)))
    pools = [PoolView(p) for p, _ in weights]
    rng = random.Random(42)
    n = 20_000
    counts = Counter(sel.select(REQ, pools, rng).pool for _ in range(n))
    total = sum(w for _, w in weights)
    for p, w in weights:
        share = counts[p] / n
        # 5 standard deviations of a binomial share: fails only if the weights are ignored
        sd = (w / total * (1 - w / total) / n) ** 0.5
        assert abs(share - w / total) <= 5 * sd + 1e-9, (p, share, w / total)


def test_weight_zero_gets_no_traffic_and_same_seed_same_draws() -> None:
    sel = build_selector(spec(defaultTargets=targets(("a", 1), ("off", 0), ("b", 3))))
    pools = [PoolView("a"), PoolView("off"), PoolView("b")]
    first = [sel.select(REQ, pools, random.Random(7)).pool for _ in range(3)]
    draws = [sel.select(REQ, pools, r).pool for r in [random.Random(7)] for _ in range(500)]
    assert "off" not in draws and len(set(first)) == 1
    again = [sel.select(REQ, pools, r).pool for r in [random.Random(7)] for _ in range(500)]
    assert draws == again


def test_weighted_fallbacks_by_descending_weight() -> None:
    sel = build_selector(spec(defaultTargets=targets(("a", 1), ("b", 5), ("c", 3))))
    pools = [PoolView("a"), PoolView("b"), PoolView("c")]
    for seed in range(20):
        d = sel.select(REQ, pools, random.Random(seed))
        rest = [p for p in ("b", "c", "a") if p != d.pool]
        assert list(d.fallbacks) == rest


def test_weighted_pick_rejects_all_zero() -> None:
    with pytest.raises(ValueError, match="positive weight"):
        weighted_pick([0.0, 0.0], random.Random(0))


def test_overloaded_pools_only_when_all_are_overloaded() -> None:
    sel = build_selector(spec(defaultTargets=targets(("a", 1), ("b", 1))))
    pools = [PoolView("a", overloaded=True), PoolView("b")]
    for seed in range(50):
        d = sel.select(REQ, pools, random.Random(seed))
        assert (d.pool, d.fallbacks) == ("b", ("a",))
    both = [PoolView("a", overloaded=True), PoolView("b", overloaded=True)]
    assert {sel.select(REQ, both, random.Random(s)).pool for s in range(50)} == {"a", "b"}


# --- cascade ------------------------------------------------------------------------------------


def cascade_selector(fallback_on: list[str] | None = None) -> Any:
    sel: dict[str, Any] = {"strategy": "cascade"}
    if fallback_on is not None:
        sel["cascade"] = {"fallbackOn": fallback_on}
    return build_selector(
        spec(defaultTargets=targets(("p1", 1), ("p2", 1), ("p3", 1)), selection=sel)
    )


@pytest.mark.parametrize(
    ("views", "pool", "fallbacks"),
    [
        ([PoolView("p1"), PoolView("p2"), PoolView("p3")], "p1", ("p2", "p3")),
        ([PoolView("p3"), PoolView("p2"), PoolView("p1")], "p1", ("p2", "p3")),
        ([PoolView("p1", available=False), PoolView("p2"), PoolView("p3")], "p2", ("p3",)),
        ([PoolView("p1", overloaded=True), PoolView("p2"), PoolView("p3")], "p2", ("p3", "p1")),
        ([PoolView("p2")], "p2", ()),
    ],
    ids=["spec-order", "order-not-from-pools", "skip-unavailable", "overloaded-last", "one-pool"],
)
def test_cascade_order(views: list[PoolView], pool: str, fallbacks: tuple[str, ...]) -> None:
    d = cascade_selector().select(REQ, views, random.Random(0))
    assert (d.pool, d.fallbacks) == (pool, fallbacks)


@pytest.mark.parametrize(
    ("outcome", "failed", "tried", "want"),
    [
        (Outcome.OVERLOAD, "p1", (), "p2"),
        (Outcome.ERROR, "p1", (), "p2"),
        (Outcome.TIMEOUT, "p2", (), "p3"),
        (Outcome.ERROR, "p3", (), None),
        (Outcome.ERROR, "p1", ("p2",), "p3"),
        (Outcome.CLIENT_ERROR, "p1", (), None),
        (Outcome.SUCCESS, "p1", (), None),
    ],
    ids=["429", "5xx", "timeout", "last-pool", "skip-tried", "4xx-no-retry", "success"],
)
def test_cascade_next_pool(
    outcome: Outcome, failed: str, tried: tuple[str, ...], want: str | None
) -> None:
    sel = cascade_selector()
    d = sel.select(REQ, [PoolView("p1"), PoolView("p2"), PoolView("p3")], random.Random(0))
    assert sel.next_pool(d, failed, outcome, tried) == want


def test_cascade_fallback_on_is_respected_and_other_strategies_retry_overload_only() -> None:
    only_overload = cascade_selector(["overload"])
    d = SelectionDecision(pool="p1", fallbacks=("p2",))
    assert only_overload.next_pool(d, "p1", Outcome.ERROR) is None
    assert only_overload.next_pool(d, "p1", Outcome.OVERLOAD) == "p2"
    weighted = build_selector(spec())
    assert weighted.next_pool(d, "p1", Outcome.TIMEOUT) is None
    assert weighted.next_pool(d, "p1", Outcome.OVERLOAD) == "p2"
    assert next_pool(d, "p9", Outcome.OVERLOAD) == "p1"  # unknown failed pool: start over


# --- cost-quality -------------------------------------------------------------------------------


class FakePredictor:
    """Fixed quality/cost per model, whatever the prompt."""

    def __init__(self, quality: dict[str, float], cost: dict[str, float]) -> None:
        self._models = tuple(quality)
        self._q = np.array([quality[m] for m in self._models], np.float32)
        self._c = np.array([cost[m] for m in self._models], np.float32)
        self._f = HashedTfidf(dim=256)

    @property
    def models(self) -> tuple[str, ...]:
        return self._models

    @property
    def featuriser(self) -> HashedTfidf:
        return self._f

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._q, self._c


QUALITY = {"tiny": 0.5, "small": 0.7, "mid": 0.8, "large": 0.9, "silly": 0.6}
COST = {"tiny": 1e-5, "small": 1e-4, "mid": 5e-4, "large": 5e-3, "silly": 2e-2}


def cq_choice(lam: float) -> str | None:
    sel = build_selector(
        spec(
            defaultTargets=targets(*((m, 1.0) for m in QUALITY)),
            selection={"strategy": "cost-quality", "costQuality": {"costWeight": lam}},
        ),
        predictor=FakePredictor(QUALITY, COST),
    )
    return sel.select(REQ, [PoolView(m) for m in QUALITY], random.Random(0)).pool


def test_cost_quality_lambda_sweep_is_monotone_in_cost() -> None:
    lams = [0.0, *np.geomspace(1e-4, 1e3, 60)]
    chosen = [cq_choice(float(lam)) for lam in lams]
    costs = [COST[c] for c in chosen if c is not None]
    assert len(costs) == len(lams)
    assert all(a >= b for a, b in itertools.pairwise(costs)), chosen
    assert chosen[0] == "large" and chosen[-1] == "tiny"
    assert "silly" not in chosen  # dominated: never worth it at any λ
    assert {"small", "mid"} <= set(chosen)


def test_cost_quality_scores_and_pool_models_mapping() -> None:
    pred = FakePredictor(QUALITY, COST)
    strat = CostQualityStrategy(predictor=pred, cost_weight=1.0, pool_models={"gpu-a": "large"})
    cands = [
        Candidate(PoolView("gpu-a")),
        Candidate(PoolView("p2", model="tiny")),
        Candidate(PoolView("x")),
    ]
    r = strat.rank(cands, Context(request=REQ), random.Random(0))
    assert r.scores["gpu-a"] == pytest.approx(0.9 - 5.0)
    assert r.scores["p2"] == pytest.approx(0.5 - 0.01)
    assert r.scores["x"] == float("-inf") and r.order == ("p2", "gpu-a", "x")


def test_cost_quality_rejects_unknown_pool_model() -> None:
    with pytest.raises(ValueError, match=r"costQuality.poolModels\[p\]"):
        CostQualityStrategy(predictor=FakePredictor(QUALITY, COST), pool_models={"p": "gpt-9"})


# --- bandit -------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["thompson", "ucb", "epsilon-greedy"])
def test_bandit_converges_to_the_better_arm(algorithm: str) -> None:
    sel = build_selector(
        spec(
            defaultTargets=targets(("bad", 1), ("good", 1), ("meh", 1)),
            selection={"strategy": "bandit", "bandit": {"algorithm": algorithm, "epsilon": 0.05}},
        )
    )
    p_success = {"bad": 0.3, "good": 0.8, "meh": 0.6}
    pools = [PoolView(p) for p in p_success]
    rng, env = random.Random(1), random.Random(2)
    picks = []
    for _ in range(3000):
        d = sel.select(REQ, pools, rng)
        assert d.pool is not None
        picks.append(d.pool)
        reward = 1.0 if env.random() < p_success[d.pool] else 0.0
        sel.on_feedback(Feedback(pool=d.pool, reward=reward, context=d.semantic_class))
    last = Counter(picks[-1000:])
    assert last["good"] >= 800, last


def test_contextual_bandit_learns_per_semantic_class() -> None:
    classes = [
        {"name": "code", "examples": ["write python code", "fix the java bug"]},
        {"name": "chat", "examples": ["tell me a joke", "how are you"]},
    ]
    sel = build_selector(
        spec(
            defaultTargets=targets(("coder", 1), ("chatter", 1)),
            selection={"strategy": "bandit", "semantic": {"classes": classes}},
        )
    )
    best = {"code": "coder", "chat": "chatter"}
    prompts = {"code": "write python code please", "chat": "tell me a joke please"}
    pools = [PoolView("coder"), PoolView("chatter")]
    rng, env = random.Random(3), random.Random(4)
    for i in range(2000):
        cls = "code" if i % 2 else "chat"
        d = sel.select(SelectionRequest(prompt=prompts[cls]), pools, rng)
        assert d.semantic_class == cls and d.pool is not None
        p = 0.9 if d.pool == best[cls] else 0.2
        sel.on_feedback(Feedback(d.pool, 1.0 if env.random() < p else 0.0, d.semantic_class))
    for cls, pool in best.items():
        picks = Counter(
            sel.select(SelectionRequest(prompt=prompts[cls]), pools, rng).pool for _ in range(200)
        )
        assert picks[pool] >= 180, (cls, picks)


def test_bandit_rank_only_reads_state() -> None:
    b = BanditStrategy(algorithm="ucb")
    cands = [Candidate(PoolView("a")), Candidate(PoolView("b"))]
    b.rank(cands, Context(request=REQ), random.Random(0))
    assert b.state.arms == {}
    b.on_feedback(Feedback("a", 1.0))
    assert b.state.get("", "a").pulls == 1


# --- bad parameters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selection", "field"),
    [
        ({"strategy": "fastest"}, "selection.strategy"),
        ({"costQuality": {"costWeight": -1}}, "selection.costQuality.costWeight"),
        ({"bandit": {"epsilon": 1.5}}, "selection.bandit.epsilon"),
        ({"bandit": {"algorithm": "exp3"}}, "selection.bandit.algorithm"),
        ({"cascade": {"fallbackOn": ["always"]}}, "selection.cascade.fallbackOn.0"),
        ({"semantic": {"minSimilarity": 2}}, "selection.semantic.minSimilarity"),
        ({"cascade": {"timeoutMs": 0}}, "selection.cascade.timeoutMs"),
    ],
    ids=["strategy", "cost-weight", "epsilon", "algorithm", "fallback-on", "min-sim", "timeout"],
)
def test_bad_parameters_rejected_naming_the_field(selection: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        spec(selection=selection)
    locs = [".".join(str(p) for p in e["loc"]) for e in exc.value.errors()]
    assert field in locs, locs


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"epsilon": -0.1}, "bandit.epsilon"), ({"algorithm": "exp3"}, "bandit.algorithm")],
    ids=["epsilon", "algorithm"],
)
def test_bandit_constructor_checks(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        BanditStrategy(**kwargs)


@pytest.mark.parametrize("reward", [-0.1, 1.5, float("nan")])
def test_feedback_reward_out_of_range_rejected(reward: float) -> None:
    with pytest.raises(ValueError, match=r"feedback.reward"):
        BanditStrategy().on_feedback(Feedback("a", reward))


class CountingFeaturiser(HashedTfidf):
    """A featuriser that counts its calls (the hot path must featurise at most once)."""

    def __init__(self) -> None:
        super().__init__(dim=256)
        object.__setattr__(self, "calls", 0)

    def transform(self, text: str) -> np.ndarray:
        object.__setattr__(self, "calls", self.calls + 1)  # type: ignore[attr-defined]
        return super().transform(text)


class SharedFeaturiserPredictor(FakePredictor):
    def __init__(self, f: HashedTfidf) -> None:
        super().__init__(QUALITY, COST)
        self._f = f


@pytest.mark.parametrize(
    ("strategy", "classes", "calls"),
    [
        ("weighted", False, 0),
        ("weighted", True, 1),
        ("cost-quality", False, 1),
        ("cost-quality", True, 1),
    ],
    ids=["weighted-no-classes", "weighted-classes", "cq-no-classes", "cq-classes-shared"],
)
def test_prompt_is_featurised_at_most_once(strategy: str, classes: bool, calls: int) -> None:
    f = CountingFeaturiser()
    selection: dict[str, Any] = {"strategy": strategy}
    if classes:
        selection["semantic"] = {"classes": [{"name": "c", "examples": ["hello world"]}]}
    sel = build_selector(
        spec(defaultTargets=targets(*((m, 1.0) for m in QUALITY)), selection=selection),
        predictor=SharedFeaturiserPredictor(f) if strategy == "cost-quality" else None,
        featuriser=f,
    )
    object.__setattr__(f, "calls", 0)  # building the classifier featurised the examples
    sel.select(REQ, [PoolView(m) for m in QUALITY], random.Random(0))
    assert f.calls == calls  # type: ignore[attr-defined]


@pytest.mark.parametrize("strategy", ["weighted", "cascade", "bandit"])
def test_weight_zero_target_is_never_chosen_by_any_strategy(strategy: str) -> None:
    sel = build_selector(
        spec(
            defaultTargets=targets(("off", 0), ("busy", 1)),
            selection={"strategy": strategy},
        )
    )
    pools = [PoolView("off"), PoolView("busy", overloaded=True)]
    for seed in range(20):
        d = sel.select(REQ, pools, random.Random(seed))
        assert (d.pool, d.fallbacks) == ("busy", ())


# --- registry (config -> objects, the idiom of placement's plugin registry) --------------------


def test_default_registry_has_every_api_strategy() -> None:
    api_names = get_args(SelectionSpec.model_fields["strategy"].annotation)
    assert default_strategy_registry().types() == sorted(api_names)


def test_unknown_strategy_type_gives_the_plugin_registrys_error() -> None:
    sel = spec().selection.model_copy(update={"strategy": "round-robin"})
    with pytest.raises(ValueError) as strategy_err:
        default_strategy_registry().create(sel, StrategyContext())
    with pytest.raises(ValueError) as plugin_err:
        PluginRegistry().create("round-robin", "picker", {}, BuildContext(float, random.Random()))
    assert str(strategy_err.value) == (
        "unknown strategy type 'round-robin'; valid strategy types: "
        "bandit, cascade, cost-quality, semantic, weighted"
    )
    assert str(plugin_err.value) == (
        "unknown picker type 'round-robin'; valid picker types: (none registered)"
    )


def test_registry_refuses_duplicates_and_empty_names() -> None:
    r = StrategyRegistry()
    r.register("cascade", lambda s, c: CascadeStrategy())
    with pytest.raises(ValueError, match="'cascade' is already registered"):
        r.register("cascade", lambda s, c: CascadeStrategy())
    with pytest.raises(ValueError, match="must not be empty"):
        r.register("", lambda s, c: CascadeStrategy())


def test_build_selector_uses_the_given_registry() -> None:
    class Reverse:
        name = "weighted"

        def rank(self, candidates: Sequence[Candidate], ctx: Context, rng: Rng) -> Ranking:
            return Ranking(order=tuple(c.pool.name for c in reversed(candidates)))

    r = StrategyRegistry()
    r.register("weighted", lambda s, c: Reverse())
    sp = spec(defaultTargets=targets(("a", 1.0), ("b", 1.0)))
    pools = [PoolView(name="a"), PoolView(name="b")]
    d = build_selector(sp, registry=r).select(REQ, pools, random.Random(0))
    assert (d.pool, d.fallbacks) == ("b", ("a",))
    with pytest.raises(ValueError, match="unknown strategy type 'cascade'"):
        build_selector(spec(selection={"strategy": "cascade"}), registry=r)
