"""Semantic classes: nearest class centroid in feature space.

Each class (``selection.semantic.classes[]``) is described by example prompts. At build time
the examples are featurised and averaged into one unit-length centroid per class; at request
time the request's feature vector is compared with every centroid by cosine similarity and the
most similar class wins, unless its similarity is below ``minSimilarity`` (then: no class,
``""``). Ties go to the class listed first. The class feeds the rules' ``semanticClass``
condition and is the context of the bandit strategy.

Why centroids and not k-NN over the examples: one dot product per class keeps the hot path at
``classes × dim`` flops, and a handful of examples per class is what a RoutingPolicy author
writes; centroids are robust to that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from modelfleet.policy.selection.predictor import Featuriser

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class SemanticClassifier:
    """Nearest-centroid classifier; ``centroids`` is (classes, dim), rows unit length."""

    names: tuple[str, ...]
    centroids: FloatArray
    featuriser: Featuriser
    min_similarity: float = 0.0

    def __post_init__(self) -> None:
        if len(self.names) != self.centroids.shape[0]:
            raise ValueError("one centroid per class name is required")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"semantic.classes names must be unique, got {list(self.names)}")
        if not 0.0 <= self.min_similarity <= 1.0:
            raise ValueError(f"semantic.minSimilarity must be in [0, 1], got {self.min_similarity}")

    @classmethod
    def from_examples(
        cls,
        classes: Sequence[tuple[str, Sequence[str]]],
        featuriser: Featuriser,
        min_similarity: float = 0.0,
    ) -> SemanticClassifier:
        """Centroids from ``(name, examples)`` pairs; a class without examples is an error."""
        names: list[str] = []
        rows: list[FloatArray] = []
        for name, examples in classes:
            if not examples:
                raise ValueError(f"semantic.classes[{name}].examples must not be empty")
            mean = np.mean([featuriser.transform(e) for e in examples], axis=0)
            n = float(np.linalg.norm(mean))
            if n == 0.0:
                raise ValueError(
                    f"semantic.classes[{name}].examples contain no words to learn from"
                )
            names.append(name)
            rows.append((mean / n).astype(np.float32))
        dim = rows[0].shape[0] if rows else 1
        centroids = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
        return cls(tuple(names), centroids, featuriser, min_similarity)

    def similarities(self, x: FloatArray) -> FloatArray:
        """Cosine similarity of ``x`` (unit length) with each centroid."""
        return (self.centroids @ x).astype(np.float32)

    def classify(self, x: FloatArray) -> str:
        """The nearest class, or ``""`` if none reaches ``min_similarity`` (or no classes)."""
        if not self.names:
            return ""
        sims = self.similarities(x)
        best = int(np.argmax(sims))  # first maximum: ties go to the class listed first
        if float(sims[best]) < self.min_similarity or float(sims[best]) <= 0.0:
            return ""
        return self.names[best]
