"""Featuriser, predictors, the shipped artefact and the semantic classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelfleet.policy.selection import HashedTfidf, KnnPredictor, load_builtin_predictor
from modelfleet.policy.selection.features import fit_idf, tokens
from modelfleet.policy.selection.predictor import (
    LinearPredictor,
    load_predictor,
    predictor_from_arrays,
    save_predictor,
)
from modelfleet.policy.selection.semantic import SemanticClassifier
from selection_train import ROUTERBENCH_MODELS, fit_linear

pytestmark = pytest.mark.unit


def test_tokens_are_words_and_bigrams_of_the_tail() -> None:
    assert tokens("Hello, World! 42") == ["hello", "world", "42", "hello world", "world 42"]
    assert tokens("aaa bbb ccc", max_chars=6) == ["bb", "ccc", "bb ccc"]


@pytest.mark.parametrize("text", ["", "   ", "!!!", "a question about physics" * 50])
def test_features_are_unit_length_or_zero_and_deterministic(text: str) -> None:
    f = HashedTfidf(dim=1024)
    v = f.transform(text)
    assert v.shape == (1024,) and v.dtype == np.float32
    assert np.linalg.norm(v) == pytest.approx(1.0 if any(c.isalnum() for c in text) else 0.0)
    assert np.array_equal(v, HashedTfidf(dim=1024).transform(text))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 1000}, "power of two"),
        ({"dim": 128}, "power of two"),
        ({"max_chars": 0}, "max_chars"),
    ],
    ids=["not-power-of-two", "too-small", "max-chars"],
)
def test_featuriser_rejects_bad_parameters(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HashedTfidf(**kwargs)


def test_idf_downweights_common_words() -> None:
    docs = ["the cat", "the dog", "the bird"]
    f = HashedTfidf(dim=1024, idf=fit_idf(docs, 1024))
    v = f.transform("the cat")
    the, cat = (f.transform(w) for w in ("the", "cat"))
    assert float(v @ cat) > float(v @ the)


def tiny_training() -> tuple[list[str], np.ndarray, np.ndarray]:
    prompts = ["write python code"] * 10 + ["tell me a joke"] * 10
    # model 0 is good at code, model 1 at jokes; model 1 is ten times dearer
    quality = np.array([[1.0, 0.0]] * 10 + [[0.0, 1.0]] * 10)
    cost = np.array([[1e-4, 1e-3]] * 20)
    return prompts, quality, cost


def test_linear_predictor_learns_who_is_good_at_what(tmp_path: Path) -> None:
    prompts, quality, cost = tiny_training()
    p = fit_linear(prompts, quality, cost, ["coder", "jester"], dim=1024, alpha=0.1)
    qc, cc = p.predict(p.featuriser.transform("python code please"))
    qj, _ = p.predict(p.featuriser.transform("a joke please"))
    assert qc[0] > qc[1] and qj[1] > qj[0]
    assert cc[0] == pytest.approx(1e-4, rel=0.05) and cc[1] == pytest.approx(1e-3, rel=0.05)
    path = tmp_path / "p.npz"
    save_predictor(p, path)
    back = load_predictor(path)
    assert back.models == ("coder", "jester")
    q2, c2 = back.predict(back.featuriser.transform("python code please"))
    assert np.allclose(q2, qc, atol=2e-3) and np.allclose(c2, cc, rtol=2e-3)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"meta": np.array('{"version": 99, "kind": "linear"}')}, "version 99"),
        ({"meta": np.array("not json")}, "meta"),
        ({"w_quality": np.zeros((3, 3), np.float16)}, "w_quality must have shape"),
    ],
    ids=["version", "meta", "shape"],
)
def test_bad_artefact_is_refused(tmp_path: Path, change: dict[str, np.ndarray], match: str) -> None:
    prompts, quality, cost = tiny_training()
    path = tmp_path / "p.npz"
    save_predictor(fit_linear(prompts, quality, cost, ["a", "b"], dim=256), path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(change)
    with pytest.raises(ValueError, match=match):
        predictor_from_arrays(arrays)


def test_fit_linear_rejects_bad_input() -> None:
    prompts, quality, cost = tiny_training()
    with pytest.raises(ValueError, match="costs must be > 0"):
        fit_linear(prompts, quality, cost * 0, ["a", "b"], dim=256)
    with pytest.raises(ValueError, match="alpha"):
        fit_linear(prompts, quality, cost, ["a", "b"], dim=256, alpha=0)


def test_builtin_artefact_loads_and_prefers_gpt4_on_hard_questions() -> None:
    p = load_builtin_predictor()
    assert isinstance(p, LinearPredictor) and p.models == ROUTERBENCH_MODELS
    q, c = p.predict(p.featuriser.transform("Which of these is a renewable resource?\nA) coal"))
    assert q.shape == c.shape == (11,)
    assert ((q >= 0) & (q <= 1)).all() and (c > 0).all()
    g, m = (
        ROUTERBENCH_MODELS.index("gpt-4-1106-preview"),
        ROUTERBENCH_MODELS.index("mistralai/mistral-7b-chat"),
    )
    assert c[g] > 10 * c[m]  # GPT-4 is predicted far dearer than Mistral-7B


def test_knn_predictor_weights_neighbours_and_falls_back_to_prior() -> None:
    f = HashedTfidf(dim=256)
    x = f.transform_many(["alpha beta", "gamma delta"])
    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    c = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    knn = KnnPredictor(("m0", "m1"), f, x, q, c, k=1, prior_weight=0.0)
    qa, ca = knn.predict(f.transform("alpha beta"))
    assert qa.tolist() == [1.0, 0.0] and ca.tolist() == [1.0, 2.0]
    q0, _ = knn.predict(f.transform("zzz"))  # no similar prompt: the prior
    assert q0.tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="k must be"):
        KnnPredictor(("m0", "m1"), f, x, q, c, k=3)


@pytest.mark.parametrize(
    ("text", "min_sim", "want"),
    [
        ("python code bug", 0.0, "code"),
        ("funny joke", 0.0, "chat"),
        ("quantum chromodynamics", 0.0, ""),
        ("python weather", 0.9, ""),
    ],
    ids=["code", "chat", "no-overlap", "below-min-similarity"],
)
def test_semantic_classifier(text: str, min_sim: float, want: str) -> None:
    clf = SemanticClassifier.from_examples(
        [("code", ["python code", "fix bug"]), ("chat", ["a joke", "funny story"])],
        HashedTfidf(dim=1024),
        min_similarity=min_sim,
    )
    assert clf.classify(clf.featuriser.transform(text)) == want


@pytest.mark.parametrize(
    ("classes", "match"),
    [
        ([("a", [])], r"classes\[a\].examples must not be empty"),
        ([("a", ["!!!"])], "no words"),
        ([("a", ["x"]), ("a", ["y"])], "unique"),
    ],
    ids=["no-examples", "no-words", "duplicate"],
)
def test_semantic_classifier_rejects_bad_classes(
    classes: list[tuple[str, list[str]]], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        SemanticClassifier.from_examples(classes, HashedTfidf(dim=256))


@pytest.mark.parametrize(
    ("cost_weight", "want"),
    [(0.0, "gpt-4-1106-preview"), (100.0, "mistralai/mistral-7b-chat")],
    ids=["quality-only", "cost-only"],
)
def test_cost_quality_end_to_end_with_the_shipped_predictor(cost_weight: float, want: str) -> None:
    import random

    from modelfleet.api.routingpolicy import RoutingPolicySpec
    from modelfleet.policy.selection import PoolView, SelectionRequest, build_selector

    pools = [PoolView(name=f"pool-{i}", model=m) for i, m in enumerate(ROUTERBENCH_MODELS)]
    spec = RoutingPolicySpec.model_validate(
        {
            "modelNames": ["auto"],
            "defaultTargets": [{"pool": p.name} for p in pools],
            "selection": {"strategy": "cost-quality", "costQuality": {"costWeight": cost_weight}},
        }
    )
    sel = build_selector(spec, predictor=load_builtin_predictor())
    prompt = (
        "Please answer with the letter of the correct answer.\n\nThe trophy doesn't fit into "
        "the suitcase because _ is too large.\nA) trophy\nB) suitcase\nAnswer:"
    )
    d = sel.select(SelectionRequest(prompt=prompt), pools, random.Random(0))
    assert d.pool is not None
    assert ROUTERBENCH_MODELS[int(d.pool.split("-")[1])] == want
    assert len(d.fallbacks) == len(pools) - 1
