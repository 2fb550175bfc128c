"""Per-model quality and cost predictors for the cost-quality strategy, and their artefact.

A predictor maps a request's feature vector to, for each model it knows, the predicted quality
(probability that the model answers correctly, 0..1) and the predicted cost of the call (USD).
It is trained offline (``bench/selection_train.py``) and shipped as one ``.npz``
file; :func:`load_predictor` is the only function here that touches the file system, so the
predictor itself stays pure (arrays in, arrays out).

:class:`LinearPredictor` (the default) holds, per model, ridge-regression weights on the
features for quality (a linear probability model, clipped to [0, 1]) and for log-cost;
prediction is two small matrix-vector products. The bias is the per-model mean on the training
data, so on a prompt with no known words it predicts each model's average.
:class:`KnnPredictor` is the similarity-weighted k-nearest-neighbour alternative (RouteLLM's
"similarity-weighted" idea without the Elo step): the mean correctness and cost of the k most
similar training prompts, shrunk toward the per-model prior by ``prior_weight`` pseudo-neighbours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from modelfleet.policy.selection.features import HashedTfidf

FloatArray = npt.NDArray[np.float32]

#: Format version of the ``.npz`` artefact; bumped on any incompatible change.
ARTEFACT_VERSION = 1


class Featuriser(Protocol):
    """Text → L2-normalised feature vector (e.g. :class:`HashedTfidf`)."""

    def transform(self, text: str) -> FloatArray: ...


class QualityPredictor(Protocol):
    """Predicts, per known model, quality in [0, 1] and cost in USD for one feature vector."""

    @property
    def models(self) -> tuple[str, ...]: ...

    @property
    def featuriser(self) -> Featuriser: ...

    def predict(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        """``(quality, cost)``, each of shape ``(len(models),)``."""
        ...


@dataclass(frozen=True, eq=False)
class LinearPredictor:
    """Linear quality and log-linear cost per model.

    Shapes: ``w_quality`` and ``w_logcost`` are (dim, m); ``b_quality`` and ``b_logcost`` (m,).
    quality = clip(x·W_q + b_q, 0, 1); cost = exp(x·W_c + b_c).
    """

    model_names: tuple[str, ...]
    tfidf: HashedTfidf
    w_quality: FloatArray
    b_quality: FloatArray
    w_logcost: FloatArray
    b_logcost: FloatArray

    def __post_init__(self) -> None:
        m, d = len(self.model_names), self.tfidf.dim
        for name, arr, shape in (
            ("w_quality", self.w_quality, (d, m)),
            ("b_quality", self.b_quality, (m,)),
            ("w_logcost", self.w_logcost, (d, m)),
            ("b_logcost", self.b_logcost, (m,)),
        ):
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")

    @property
    def models(self) -> tuple[str, ...]:
        return self.model_names

    @property
    def featuriser(self) -> HashedTfidf:
        return self.tfidf

    def predict(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        q = np.clip(x @ self.w_quality + self.b_quality, 0.0, 1.0).astype(np.float32)
        c = np.exp(np.clip(x @ self.w_logcost + self.b_logcost, -30.0, 10.0)).astype(np.float32)
        return q, c


@dataclass(frozen=True, eq=False)
class KnnPredictor:
    """Similarity-weighted k nearest neighbours over the training prompts.

    ``train_x`` (n, dim) holds L2-normalised training features, ``train_quality`` and
    ``train_cost`` (n, m) the observed correctness and cost. Weights are the cosine
    similarities clipped at 0; ``prior_weight`` pseudo-neighbours carry the per-model prior.
    """

    model_names: tuple[str, ...]
    tfidf: HashedTfidf
    train_x: FloatArray
    train_quality: FloatArray
    train_cost: FloatArray
    k: int = 40
    prior_weight: float = 1.0

    def __post_init__(self) -> None:
        n, m = self.train_quality.shape
        if m != len(self.model_names) or self.train_cost.shape != (n, m):
            raise ValueError("train_quality/train_cost must be (n, number of models)")
        if self.train_x.shape[0] != n:
            raise ValueError("train_x must have one row per training prompt")
        if not 1 <= self.k <= n:
            raise ValueError(f"k must be in [1, {n}], got {self.k}")
        if self.prior_weight < 0:
            raise ValueError(f"prior_weight must be >= 0, got {self.prior_weight}")

    @property
    def models(self) -> tuple[str, ...]:
        return self.model_names

    @property
    def featuriser(self) -> HashedTfidf:
        return self.tfidf

    def predict(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        sims = self.train_x @ x
        idx = np.argpartition(-sims, self.k - 1)[: self.k]
        w = np.maximum(sims[idx], 0.0)
        total = float(w.sum()) + self.prior_weight
        prior_q = self.train_quality.mean(axis=0)
        prior_c = self.train_cost.mean(axis=0)
        if total <= 0:
            return prior_q.astype(np.float32), prior_c.astype(np.float32)
        q = (w @ self.train_quality[idx] + self.prior_weight * prior_q) / total
        c = (w @ self.train_cost[idx] + self.prior_weight * prior_c) / total
        return q.astype(np.float32), c.astype(np.float32)


def save_predictor(predictor: LinearPredictor, path: str | Path) -> None:
    """Write a :class:`LinearPredictor` as a compressed ``.npz`` (float16 weights)."""
    meta = {
        "version": ARTEFACT_VERSION,
        "kind": "linear",
        "models": list(predictor.model_names),
        "dim": predictor.tfidf.dim,
        "max_chars": predictor.tfidf.max_chars,
    }
    idf = predictor.tfidf.idf
    np.savez_compressed(
        Path(path),
        meta=np.array(json.dumps(meta)),
        idf=(np.ones(predictor.tfidf.dim, np.float32) if idf is None else idf).astype(np.float16),
        w_quality=predictor.w_quality.astype(np.float16),
        b_quality=predictor.b_quality.astype(np.float32),
        w_logcost=predictor.w_logcost.astype(np.float16),
        b_logcost=predictor.b_logcost.astype(np.float32),
    )


def predictor_from_arrays(arrays: dict[str, npt.NDArray[np.generic]]) -> LinearPredictor:
    """Build a predictor from the artefact's arrays (pure; validates version and shapes)."""
    try:
        meta = json.loads(str(arrays["meta"]))
    except (KeyError, ValueError) as exc:
        raise ValueError("predictor artefact has no valid 'meta' entry") from exc
    if meta.get("version") != ARTEFACT_VERSION or meta.get("kind") != "linear":
        raise ValueError(
            f"predictor artefact is version {meta.get('version')!r} kind {meta.get('kind')!r}; "
            f"this build reads version {ARTEFACT_VERSION} kind 'linear'"
        )
    tfidf = HashedTfidf(
        dim=int(meta["dim"]),
        idf=arrays["idf"].astype(np.float32),
        max_chars=int(meta["max_chars"]),
    )
    return LinearPredictor(
        model_names=tuple(str(m) for m in meta["models"]),
        tfidf=tfidf,
        w_quality=arrays["w_quality"].astype(np.float32),
        b_quality=arrays["b_quality"].astype(np.float32),
        w_logcost=arrays["w_logcost"].astype(np.float32),
        b_logcost=arrays["b_logcost"].astype(np.float32),
    )


def load_predictor(path: str | Path) -> LinearPredictor:
    """Read a predictor artefact written by :func:`save_predictor` (the only file I/O here)."""
    with np.load(Path(path), allow_pickle=False) as z:
        return predictor_from_arrays({k: z[k] for k in z.files})


#: File name of the predictor shipped with the package (``bench/train_selector.py`` writes it).
BUILTIN_ARTEFACT = "routerbench-linear.npz"


def builtin_artefact_path() -> Path:
    """Where the shipped predictor lives inside the installed package."""
    return Path(__file__).with_name("artefacts") / BUILTIN_ARTEFACT


def load_builtin_predictor() -> LinearPredictor:
    """The shipped predictor (``costQuality.qualityModel: builtin``), trained on RouterBench."""
    return load_predictor(builtin_artefact_path())
