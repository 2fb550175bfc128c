"""Model selection where mutation testing found the suite blind (bench/results/mutation.md):
the kNN predictor's arithmetic against hand-computed values and its refusals by name, the
IDF formula, the linear predictor's clips, the artefact's dtypes, a bad regex that skipped
validation, and the cascade's scores."""

from __future__ import annotations

import json
import math
import random
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from modelfleet.api.routingpolicy import Match, PoolTarget, RoutingPolicySpec, RoutingRule
from modelfleet.policy.selection import (
    Feedback,
    HashedTfidf,
    KnnPredictor,
    PoolView,
    SelectionDecision,
    SelectionRequest,
    Selector,
    build_selector,
)
from modelfleet.policy.selection.features import bucket_counts, fit_idf
from modelfleet.policy.selection.predictor import (
    LinearPredictor,
    load_predictor,
    predictor_from_arrays,
    save_predictor,
)
from modelfleet.policy.selection.rules import CompiledRule, compile_rule, first_match
from modelfleet.policy.selection.semantic import SemanticClassifier
from modelfleet.policy.selection.strategies import (
    BanditStrategy,
    Candidate,
    CascadeStrategy,
    Context,
    CostQualityStrategy,
    Ranking,
    StrategyRegistry,
    WeightedStrategy,
    weighted_pick,
)

pytestmark = pytest.mark.unit

DIM = 256


def unit(*coords: tuple[int, float]) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    for i, x in coords:
        v[i] = x
    return v


# three training prompts: e0, 0.6·e0 + 0.8·e1, e1 (unit length)
TRAIN_X = np.stack([unit((0, 1.0)), unit((0, 0.6), (1, 0.8)), unit((1, 1.0))])
TRAIN_Q = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], np.float32)
TRAIN_C = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)
FZ = HashedTfidf(dim=DIM)


def knn(k: int = 2, prior_weight: float = 0.4) -> KnnPredictor:
    return KnnPredictor(("m0", "m1"), FZ, TRAIN_X, TRAIN_Q, TRAIN_C, k, prior_weight)


def test_knn_mixes_the_k_nearest_by_similarity_with_the_prior() -> None:
    """Query e0: similarities 1, 0.6, 0; k = 2 keeps the first two, with 0.4 pseudo-neighbours
    of the prior (the column means, q 0.5/0.5, cost 3/4): total weight 2.0.
    q = (1·[1, 0] + 0.6·[0, 1] + 0.4·[0.5, 0.5]) / 2 = [0.6, 0.4];
    c = (1·[1, 2] + 0.6·[3, 4] + 0.4·[3, 4]) / 2 = [2, 3]."""
    q, c = knn().predict(unit((0, 1.0)))
    assert q.dtype == np.float32 and c.dtype == np.float32
    assert q.tolist() == pytest.approx([0.6, 0.4]) and c.tolist() == pytest.approx([2.0, 3.0])


def test_knn_with_every_neighbour_k() -> None:
    """k = 3 adds the third prompt at similarity 0: it weighs nothing, the answer is the same."""
    q, c = knn(k=3).predict(unit((0, 1.0)))
    assert q.tolist() == pytest.approx([0.6, 0.4]) and c.tolist() == pytest.approx([2.0, 3.0])


def test_knn_ignores_dissimilar_neighbours_and_answers_the_prior() -> None:
    """Query −e0: the nearest two have similarities 0 and −0.6, clipped to 0: only the prior
    counts, whatever its weight, and with no prior weight it is returned as is."""
    for weight in (0.4, 0.0):
        q, c = knn(prior_weight=weight).predict(unit((0, -1.0)))
        assert q.tolist() == pytest.approx([0.5, 0.5]) and c.tolist() == pytest.approx([3.0, 4.0])
        assert q.dtype == np.float32 and c.dtype == np.float32


def test_knn_without_a_prior_is_the_weighted_mean_of_its_neighbours() -> None:
    """Query e1, k = 2: similarities 0.8 (second prompt) and 1 (third); weights sum to 1.8."""
    q, c = knn(prior_weight=0.0).predict(unit((1, 1.0)))
    assert q.tolist() == pytest.approx([0.5 / 1.8, 1.3 / 1.8])
    assert c.tolist() == pytest.approx([(0.8 * 3 + 5) / 1.8, (0.8 * 4 + 6) / 1.8])


def test_knn_knows_its_models_and_featuriser() -> None:
    p = knn()
    assert p.models == ("m0", "m1") and p.featuriser is FZ


def test_knn_accepts_k_from_one_to_the_number_of_prompts_and_no_prior() -> None:
    assert knn(k=1, prior_weight=0.0).k == 1 and knn(k=3).k == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, r"^k must be in \[1, 3\], got 0$"),
        ({"k": 4}, r"^k must be in \[1, 3\], got 4$"),
        ({"prior_weight": -0.5}, r"^prior_weight must be >= 0, got -0.5$"),
        ({"train_x": TRAIN_X[:2]}, r"^train_x must have one row per training prompt$"),
        (
            {"train_cost": TRAIN_C[:, :1]},
            r"^train_quality/train_cost must be \(n, number of models\)$",
        ),
        (
            {"train_quality": TRAIN_Q[:, :1], "train_cost": TRAIN_C[:, :1]},
            r"^train_quality/train_cost must be \(n, number of models\)$",
        ),
    ],
)
def test_knn_refusals_name_the_field(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "model_names": ("m0", "m1"),
        "tfidf": FZ,
        "train_x": TRAIN_X,
        "train_quality": TRAIN_Q,
        "train_cost": TRAIN_C,
        "k": 2,
        "prior_weight": 1.0,
    } | kwargs
    with pytest.raises(ValueError, match=message):
        KnnPredictor(**args)  # type: ignore[arg-type]


# -- the featuriser's offline helpers ---------------------------------------------------------


def test_transform_many_is_rows_of_transform_in_float32() -> None:
    texts = ["alpha beta", "", "gamma"]
    rows = FZ.transform_many(texts)
    assert rows.dtype == np.float32 and rows.shape == (3, DIM)
    for row, text in zip(rows, texts, strict=True):
        assert np.array_equal(row, FZ.transform(text))


def test_fit_idf_is_the_smoothed_formula_per_bucket() -> None:
    """Three documents; a bucket in df of them gets log((1 + 3) / (1 + df)) + 1."""
    docs = ["apple pie", "apple tart", "cherry"]
    idf = fit_idf(docs, DIM)
    assert idf.dtype == np.float32 and idf.shape == (DIM,)
    df = np.zeros(DIM)
    for d in docs:
        for b in bucket_counts(d, DIM):
            df[b] += 1
    assert set(np.unique(df).tolist()) >= {0.0, 1.0, 2.0}  # "apple" is in two documents
    assert idf.tolist() == pytest.approx((np.log(4.0 / (1.0 + df)) + 1.0).tolist(), rel=1e-6)
    apple = next(iter(bucket_counts("apple", DIM)))
    assert idf[apple] == pytest.approx(np.log(4.0 / 3.0) + 1.0)


def test_fit_idf_reads_only_the_last_max_chars() -> None:
    idf = fit_idf(["aaa bbb"], DIM, max_chars=3)  # only "bbb" is read
    (a,), (b,) = bucket_counts("aaa", DIM), bucket_counts("bbb", DIM)
    assert idf[b] == pytest.approx(np.log(2.0 / 2.0) + 1.0)
    assert idf[a] == pytest.approx(np.log(2.0) + 1.0)


# -- the linear predictor and its artefact ----------------------------------------------------


def linear(b_quality: list[float], b_logcost: list[float], idf: bool = True) -> LinearPredictor:
    m = len(b_quality)
    tfidf = HashedTfidf(dim=DIM, idf=np.full(DIM, 1.5, np.float32) if idf else None)
    return LinearPredictor(
        tuple(f"m{i}" for i in range(m)),
        tfidf,
        np.zeros((DIM, m), np.float32),
        np.asarray(b_quality, np.float32),
        np.zeros((DIM, m), np.float32),
        np.asarray(b_logcost, np.float32),
    )


def test_linear_quality_is_clipped_to_0_1_and_log_cost_to_minus_30_10() -> None:
    p = linear([-0.5, 0.25, 1.5], [-100.0, 0.0, 20.0])
    q, c = p.predict(np.zeros(DIM, np.float32))
    assert q.dtype == np.float32 and c.dtype == np.float32
    assert q.tolist() == [0.0, 0.25, 1.0]
    assert c.tolist() == pytest.approx([np.exp(-30.0), 1.0, np.exp(10.0)], rel=1e-6, abs=0)


@pytest.mark.parametrize("idf", [True, False])
def test_saved_artefact_holds_float16_weights_and_float32_biases(tmp_path: Path, idf: bool) -> None:
    p = linear([0.25, 0.5], [-1.0, 0.0], idf=idf)
    path = tmp_path / "p.npz"
    save_predictor(p, path)
    with np.load(path) as z:
        dtypes = {
            k: z[k].dtype for k in ("idf", "w_quality", "b_quality", "w_logcost", "b_logcost")
        }
        saved_idf = z["idf"].tolist()
    assert dtypes == {
        "idf": np.float16,
        "w_quality": np.float16,
        "b_quality": np.float32,
        "w_logcost": np.float16,
        "b_logcost": np.float32,
    }
    assert saved_idf == [1.5 if idf else 1.0] * DIM  # no idf: every bucket weighs 1


# -- rules, cascade ---------------------------------------------------------------------------


def test_compile_rule_names_the_rule_of_a_bad_regex_that_skipped_validation() -> None:
    """The API refuses such a pattern; a rule built around validation is refused again."""
    bad = RoutingRule.model_construct(
        name="bad",
        match=Match.model_construct(
            headers={},
            min_prompt_tokens=0,
            max_prompt_tokens=10,
            keywords=[],
            regex="(x",
            semantic_class="",
        ),
        targets=[],
    )
    with pytest.raises(ValueError, match=r"^rules\[bad\]\.match\.regex: invalid pattern: "):
        compile_rule(bad)


def test_cascade_scores_count_down_in_spec_order() -> None:
    cands = [Candidate(PoolView(n)) for n in ("a", "b", "c")]
    ranking = CascadeStrategy().rank(cands, Context(SelectionRequest()), random.Random(0))
    assert ranking.order == ("a", "b", "c")
    assert ranking.scores == {"a": 3.0, "b": 2.0, "c": 1.0}


# -- the artefact's loader ----------------------------------------------------------------------


def test_a_loaded_artefact_keeps_its_max_chars_and_float32_arrays(tmp_path: Path) -> None:
    p = linear([0.25, 0.5], [-1.0, 0.0])
    p = LinearPredictor(
        p.model_names,
        HashedTfidf(dim=DIM, idf=p.tfidf.idf, max_chars=100),
        p.w_quality,
        p.b_quality,
        p.w_logcost,
        p.b_logcost,
    )
    save_predictor(p, tmp_path / "p.npz")
    back = load_predictor(tmp_path / "p.npz")
    assert back.tfidf.max_chars == 100 and back.models == ("m0", "m1")
    arrays = (back.tfidf.idf, back.w_quality, back.b_quality, back.w_logcost, back.b_logcost)
    assert [a.dtype for a in arrays] == [np.float32] * 5  # type: ignore[union-attr]


def test_artefact_errors_are_exact() -> None:
    with pytest.raises(ValueError, match=r"^predictor artefact has no valid 'meta' entry$"):
        predictor_from_arrays({})
    meta = np.array(json.dumps({"version": 1, "kind": "knn"}))
    with pytest.raises(ValueError) as info:
        predictor_from_arrays({"meta": meta})
    assert str(info.value) == (
        "predictor artefact is version 1 kind 'knn'; this build reads version 1 kind 'linear'"
    )


def test_an_artefact_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    """The loader never unpickles: an object array in the file is an error, not code run."""
    p = linear([0.25, 0.5], [-1.0, 0.0])
    path = tmp_path / "p.npz"
    save_predictor(p, path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = np.array([str(arrays["meta"])], dtype=object)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="allow_pickle"):
        load_predictor(path)


# -- the semantic classifier ----------------------------------------------------------------


def test_semantic_refusals_are_exact() -> None:
    with pytest.raises(ValueError, match=r"^one centroid per class name is required$"):
        SemanticClassifier(("a", "b"), np.zeros((1, DIM), np.float32), FZ)
    with pytest.raises(
        ValueError, match=r"^semantic\.minSimilarity must be in \[0, 1\], got 1\.5$"
    ):
        SemanticClassifier(("a",), np.zeros((1, DIM), np.float32), FZ, 1.5)
    assert SemanticClassifier(("a",), np.zeros((1, DIM), np.float32), FZ, 1.0).min_similarity == 1.0


def test_centroids_are_unit_float32_means_and_the_default_threshold_is_0() -> None:
    clf = SemanticClassifier.from_examples([("code", ["def foo", "class bar"])], FZ)
    assert clf.min_similarity == 0.0 and clf.centroids.dtype == np.float32
    mean = (FZ.transform("def foo") + FZ.transform("class bar")) / 2
    assert clf.centroids[0].tolist() == pytest.approx((mean / np.linalg.norm(mean)).tolist())
    assert clf.similarities(FZ.transform("def foo")).dtype == np.float32


def test_a_classifier_without_classes_answers_no_class() -> None:
    clf = SemanticClassifier.from_examples([], FZ)
    assert clf.names == () and clf.centroids.shape[0] == 0
    assert clf.centroids.dtype == np.float32
    assert clf.classify(FZ.transform("anything")) == ""


def test_a_similarity_equal_to_the_threshold_is_enough() -> None:
    clf = SemanticClassifier(("a",), np.stack([unit((0, 1.0))]), FZ, 1.0)
    assert clf.classify(unit((0, 1.0))) == "a"


# -- cost-quality and bandit arithmetic -------------------------------------------------------


@pytest.mark.parametrize("weight", [-1.0, math.inf, math.nan])
def test_cost_weight_must_be_finite_and_non_negative(weight: float) -> None:
    class One:
        models = ("m",)
        featuriser = FZ

        def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return np.ones(1, np.float32), np.ones(1, np.float32)

    with pytest.raises(ValueError, match=r"^costQuality\.costWeight must be >= 0, got "):
        CostQualityStrategy(One(), cost_weight=weight)  # type: ignore[arg-type]


class ScriptedRng:
    """Answers random() from a script; betavariate(a, b) records (a, b) and answers a / (a + b)."""

    def __init__(self, randoms: Sequence[float] = ()) -> None:
        self.randoms = list(randoms)
        self.betas: list[tuple[float, float]] = []

    def random(self) -> float:
        return self.randoms.pop(0)

    def betavariate(self, alpha: float, beta: float) -> float:
        self.betas.append((alpha, beta))
        return alpha / (alpha + beta)


def bandit(algorithm: str, epsilon: float = 0.1) -> BanditStrategy:
    b = BanditStrategy(algorithm=algorithm, epsilon=epsilon)  # type: ignore[arg-type]
    for pool, reward in (("a", 1.0), ("a", 0.0), ("a", 1.0), ("b", 0.25)):
        b.on_feedback(Feedback(pool=pool, reward=reward))
    return b


CANDS = [Candidate(PoolView(n)) for n in ("a", "b", "c")]
CTX = Context(SelectionRequest())


def test_thompson_draws_beta_of_successes_and_failures_per_arm() -> None:
    rng = ScriptedRng()
    ranking = bandit("thompson").rank(CANDS, CTX, rng)
    assert rng.betas == [(3.0, 2.0), (1.25, 1.75), (1.0, 1.0)]
    assert ranking.scores == {"a": 0.6, "b": 1.25 / 3.0, "c": 0.5}
    assert ranking.order == ("a", "c", "b")


def test_ucb_scores_mean_plus_the_exploration_bonus_and_untried_first() -> None:
    ranking = bandit("ucb").rank(CANDS, CTX, ScriptedRng())
    total = 4
    assert ranking.scores["a"] == pytest.approx(2 / 3 + math.sqrt(2 * math.log(total) / 3))
    assert ranking.scores["b"] == pytest.approx(0.25 + math.sqrt(2 * math.log(total) / 1))
    assert ranking.scores["c"] == math.inf
    assert ranking.order == ("c", "b", "a")


def test_epsilon_greedy_exploits_the_mean_with_untried_first() -> None:
    rng = ScriptedRng([0.1])  # not below epsilon 0.1: exploit
    ranking = bandit("epsilon-greedy").rank(CANDS, CTX, rng)
    assert ranking.scores == {"a": pytest.approx(2 / 3), "b": 0.25, "c": math.inf}
    assert ranking.order == ("c", "a", "b") and rng.randoms == []


def test_epsilon_greedy_explores_with_one_uniform_draw_per_arm() -> None:
    rng = ScriptedRng([0.05, 0.3, 0.9, 0.1])
    ranking = bandit("epsilon-greedy").rank(CANDS, CTX, rng)
    assert ranking.scores == {"a": 0.3, "b": 0.9, "c": 0.1}
    assert ranking.order == ("b", "a", "c") and rng.randoms == []


@pytest.mark.parametrize("epsilon", [0.0, 1.0])
def test_epsilon_at_its_bounds_is_allowed(epsilon: float) -> None:
    assert BanditStrategy(algorithm="epsilon-greedy", epsilon=epsilon).epsilon == epsilon


def test_epsilon_above_one_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"^bandit\.epsilon must be in \[0, 1\], got 1\.5$"):
        BanditStrategy(algorithm="epsilon-greedy", epsilon=1.5)


# -- the weighted draw ------------------------------------------------------------------------


def test_weighted_pick_draws_on_half_open_intervals() -> None:
    """u = r · Σw lands in [acc_i − w_i, acc_i): a u exactly at a boundary goes right."""
    assert weighted_pick([1.0, 1.0], ScriptedRng([0.5])) == 1
    assert weighted_pick([1.0, 1.0], ScriptedRng([0.4999])) == 0


def test_weighted_pick_skips_zero_weights_anywhere() -> None:
    assert weighted_pick([0.0, 1.0], ScriptedRng([0.5])) == 1
    assert weighted_pick([0.0, 2.0, 0.0, 2.0], ScriptedRng([0.75])) == 3


def test_weighted_pick_at_the_total_returns_the_last_positive_weight() -> None:
    """u == Σw (rounding) falls off the end: the last index with a positive weight answers."""
    assert weighted_pick([1.0, 2.0, 0.0], ScriptedRng([1.0])) == 1


def test_weighted_pick_refuses_no_positive_weight_by_name() -> None:
    with pytest.raises(ValueError, match=r"^weighted_pick needs at least one positive weight$"):
        weighted_pick([0.0, -1.0], ScriptedRng([0.5]))


def test_weighted_rank_drops_zero_weights_and_scores_by_weight() -> None:
    cands = [
        Candidate(PoolView("a"), 1.0),
        Candidate(PoolView("z"), 0.0),
        Candidate(PoolView("b"), 3.0),
    ]
    ranking = WeightedStrategy().rank(cands, CTX, ScriptedRng([0.0]))
    assert ranking == Ranking(order=("a", "b"), scores={"a": 1.0, "b": 3.0})
    nothing = WeightedStrategy().rank([Candidate(PoolView("z"), 0.0)], CTX, ScriptedRng())
    assert nothing == Ranking(order=(), scores={})


# -- the selector's decisions without a pool --------------------------------------------------


def selector(strategy: object, **kw: object) -> Selector:
    return Selector(
        rules=(),
        default_targets=(PoolTarget(pool="a"),),
        strategy=strategy,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


class Nothing:
    """A strategy that orders nobody (a third-party strategy may)."""

    name = "nothing"

    def rank(self, candidates: Sequence[Candidate], ctx: Context, rng: object) -> Ranking:
        return Ranking(order=())


def test_a_decision_without_an_available_pool_says_so_exactly() -> None:
    d = selector(CascadeStrategy()).select(
        SelectionRequest(), [PoolView("a", available=False)], random.Random(0)
    )
    assert d == SelectionDecision(
        pool=None, strategy="cascade", semantic_class="", reason="no available target pool"
    )


def test_a_strategy_that_orders_nobody_gives_no_pool_with_its_reason() -> None:
    rule = compile_rule(
        RoutingRule.model_validate({"name": "r", "match": {}, "targets": [{"pool": "a"}]})
    )
    s = Selector(rules=(rule,), default_targets=(), strategy=Nothing())  # type: ignore[arg-type]
    d = s.select(SelectionRequest(), [PoolView("a")], random.Random(0))
    assert d == SelectionDecision(
        pool=None,
        rule="r",
        strategy="nothing",
        semantic_class="",
        reason="every available target has weight 0",
    )


def test_without_classes_the_semantic_class_is_empty() -> None:
    d = selector(CascadeStrategy()).select(SelectionRequest(), [PoolView("a")], random.Random(0))
    assert (d.pool, d.semantic_class, d.reason) == ("a", "", "default targets")


def test_a_decision_without_a_pool_keeps_the_semantic_class() -> None:
    clf = SemanticClassifier.from_examples([("code", ["def foo", "class bar"])], FZ)
    s = selector(CascadeStrategy(), classifier=clf)
    d = s.select(
        SelectionRequest(prompt="def foo"), [PoolView("a", available=False)], random.Random(0)
    )
    assert (d.pool, d.semantic_class, d.reason) == (None, "code", "no available target pool")


# -- features, exactly --------------------------------------------------------------------------


def test_bucket_counts_are_crc32_buckets_of_words_and_bigrams() -> None:
    want: dict[int, int] = {}
    for tok in ("a", "a", "b", "a a", "a b"):
        b = zlib.crc32(tok.encode()) & (DIM - 1)
        want[b] = want.get(b, 0) + 1
    assert bucket_counts("A a, b!", DIM) == want
    assert sum(want.values()) == 5
    assert bucket_counts("aaa bbb", DIM, max_chars=3) == bucket_counts("bbb", DIM)


def test_featuriser_bounds_are_inclusive() -> None:
    assert HashedTfidf(dim=1 << 20).dim == 1 << 20 and HashedTfidf(max_chars=1).max_chars == 1
    with pytest.raises(
        ValueError, match=r"^dim must be a power of two in \[256, 1048576\], got 2097152$"
    ):
        HashedTfidf(dim=1 << 21)
    with pytest.raises(ValueError, match=r"^idf must have shape \(256,\), got \(3,\)$"):
        HashedTfidf(dim=DIM, idf=np.ones(3, np.float32))


def test_transform_reads_only_the_last_max_chars_and_normalises_short_texts() -> None:
    short = HashedTfidf(dim=DIM, max_chars=3)
    assert np.array_equal(short.transform("aaa bbb"), short.transform("bbb"))
    v = FZ.transform("hello")  # one word: log1p(1) < 1 before normalising
    assert float(np.linalg.norm(v)) == pytest.approx(1.0)


def test_a_text_whose_buckets_all_weigh_zero_is_the_zero_vector() -> None:
    v = HashedTfidf(dim=DIM, idf=np.zeros(DIM, np.float32)).transform("some words")
    assert not np.isnan(v).any() and not v.any()


@pytest.mark.parametrize("field", ["w_quality", "b_quality", "w_logcost", "b_logcost"])
def test_linear_predictor_names_the_array_of_the_wrong_shape(field: str) -> None:
    p = linear([0.25, 0.5], [-1.0, 0.0])
    arrays = {
        "w_quality": p.w_quality,
        "b_quality": p.b_quality,
        "w_logcost": p.w_logcost,
        "b_logcost": p.b_logcost,
    }
    arrays[field] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=rf"^{field} must have shape \(.*\), got \(3,\)$"):
        LinearPredictor(p.model_names, p.tfidf, **arrays)


# -- rules, the selector's decisions and the registry ---------------------------------------


def test_first_match_takes_the_first_rule_that_matches_in_order() -> None:
    def rule(name: str, **match: object) -> CompiledRule:
        return compile_rule(
            RoutingRule.model_validate({"name": name, "match": match, "targets": [{"pool": "a"}]})
        )

    rules = [rule("long", minPromptTokens=100), rule("code", semanticClass="code"), rule("any")]
    assert first_match(rules, SelectionRequest(prompt_tokens=5), "code").name == "code"  # type: ignore[union-attr]
    assert first_match(rules, SelectionRequest(prompt_tokens=500)).name == "long"  # type: ignore[union-attr]
    assert first_match(rules, SelectionRequest(prompt_tokens=5)).name == "any"  # type: ignore[union-attr]
    assert first_match(rules[:2], SelectionRequest(prompt_tokens=5)) is None


def policy(**kw: object) -> RoutingPolicySpec:
    body: dict[str, object] = {"modelNames": ["auto"], "defaultTargets": [{"pool": "a"}]}
    body.update(kw)
    return RoutingPolicySpec.model_validate(body)


def test_a_chosen_pool_carries_the_rule_strategy_and_scores() -> None:
    sp = policy(
        rules=[{"name": "r", "match": {"minPromptTokens": 10}, "targets": [{"pool": "b"}]}],
        selection={"strategy": "cascade"},
    )
    s = build_selector(sp)
    pools = [PoolView("a"), PoolView("b")]
    d = s.select(SelectionRequest(prompt_tokens=20), pools, random.Random(0))
    assert d == SelectionDecision(
        pool="b", rule="r", strategy="cascade", reason="rule r", scores={"b": 1.0}
    )
    d = s.select(SelectionRequest(prompt_tokens=5), pools, random.Random(0))
    assert (d.pool, d.rule, d.reason) == ("a", None, "default targets")


CLASSES = {"classes": [{"name": "code", "examples": ["def foo"]}], "minSimilarity": 0.3}


def test_the_classifier_takes_the_predictors_featuriser_and_the_threshold() -> None:
    class P:
        models = ("m",)
        featuriser = FZ

        def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return np.ones(1, np.float32), np.ones(1, np.float32)

    s = build_selector(
        policy(selection={"strategy": "semantic", "semantic": CLASSES}),
        predictor=P(),  # type: ignore[arg-type]
    )
    assert s.classifier is not None and s.classifier.featuriser is FZ
    assert s.classifier.min_similarity == 0.3


def test_build_selector_checks_again_what_the_api_refuses() -> None:
    """Specs changed after validation (model_copy does not validate) are refused by name."""
    ok = policy(selection={"strategy": "weighted"})
    bad = ok.model_copy(
        update={"selection": ok.selection.model_copy(update={"strategy": "semantic"})}
    )
    with pytest.raises(
        ValueError,
        match=r"^selection\.semantic\.classes: strategy semantic needs at least one class$",
    ):
        build_selector(bad)
    with_rule = policy(
        rules=[{"name": "r", "match": {}, "targets": [{"pool": "a"}]}],
        selection={"strategy": "semantic", "semantic": CLASSES},
    )
    rule = with_rule.rules[0]
    odd = with_rule.model_copy(
        update={
            "rules": [
                rule.model_copy(
                    update={"match": rule.match.model_copy(update={"semantic_class": "x"})}
                )
            ]
        }
    )
    with pytest.raises(ValueError) as info:
        build_selector(odd)
    assert str(info.value) == (
        "rules[r].match.semanticClass: unknown class 'x' (selection.semantic.classes has ['code'])"
    )


@pytest.mark.parametrize("name", ["weighted", "semantic", "cascade"])
def test_built_strategies_carry_their_names(name: str) -> None:
    sel: dict[str, object] = {"strategy": name}
    if name == "semantic":
        sel["semantic"] = CLASSES
    assert build_selector(policy(selection=sel)).strategy.name == name


def test_the_bandit_is_built_with_the_specs_algorithm_and_epsilon() -> None:
    sel = {"strategy": "bandit", "bandit": {"algorithm": "ucb", "epsilon": 0.3}}
    strategy = build_selector(policy(selection=sel)).strategy
    assert isinstance(strategy, BanditStrategy)
    assert (strategy.algorithm, strategy.epsilon) == ("ucb", 0.3)


def test_cost_quality_is_built_with_the_pool_models_or_refused_without_a_predictor() -> None:
    class P:
        models = ("m1", "m2")
        featuriser = FZ

        def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return np.ones(2, np.float32), np.ones(2, np.float32)

    sel = {"strategy": "cost-quality", "costQuality": {"poolModels": {"a": "m2"}}}
    strategy = build_selector(policy(selection=sel), predictor=P()).strategy  # type: ignore[arg-type]
    assert isinstance(strategy, CostQualityStrategy) and strategy.pool_models == {"a": "m2"}
    with pytest.raises(
        ValueError,
        match=r"^selection\.costQuality: strategy cost-quality needs a quality predictor "
        r"\(qualityModel 'builtin' was not loaded\)$",
    ):
        build_selector(policy(selection=sel))


def test_an_empty_strategy_name_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"^strategy type name must not be empty$"):
        StrategyRegistry().register("", lambda s, c: CascadeStrategy())


def test_knn_keeps_exactly_the_k_most_similar_prompts() -> None:
    """The two nearest of six are the last two rows (similarities 1 and 0.6); the four others
    are at similarity 0 and must not take the second place."""
    x = np.stack([unit((1, 1.0))] * 4 + [unit((0, 0.6), (1, 0.8)), unit((0, 1.0))])
    q = np.array([[0.0, 0.0]] * 4 + [[0.0, 1.0], [1.0, 0.0]], np.float32)
    c = np.array([[9.0, 9.0]] * 4 + [[3.0, 4.0], [1.0, 2.0]], np.float32)
    p = KnnPredictor(("m0", "m1"), FZ, x, q, c, k=2, prior_weight=0.0)
    got_q, got_c = p.predict(unit((0, 1.0)))
    assert got_q.tolist() == pytest.approx([1 / 1.6, 0.6 / 1.6])
    assert got_c.tolist() == pytest.approx([(1 + 0.6 * 3) / 1.6, (2 + 0.6 * 4) / 1.6])


def test_a_strategy_that_orders_nobody_keeps_the_semantic_class() -> None:
    clf = SemanticClassifier.from_examples([("code", ["def foo", "class bar"])], FZ)
    s = selector(Nothing(), classifier=clf)
    d = s.select(SelectionRequest(prompt="def foo"), [PoolView("a")], random.Random(0))
    assert (d.pool, d.semantic_class) == (None, "code")
