"""Cheap text features for model selection: hashed word n-gram TF-IDF, numpy only.

Algorithm: lower-case the text, split it into alphanumeric words, take word unigrams and
bigrams, hash each with CRC-32 (stable across processes, unlike ``hash``) into ``dim`` buckets,
weight each bucket by ``log(1 + count) * idf`` and L2-normalise. The IDF vector is learned
offline from the training prompts and shipped in the predictor artefact; without one every
bucket weighs 1 (plain log-TF), which is what semantic classes built from a handful of example
phrases use.

Why this and not sentence embeddings: the scheduler featurises every request on its hot path.
Featurising is a few numpy passes over at most the last 4 KiB of the prompt and needs no model
weights or torch, while sentence embeddings need torch and a model forward pass per request;
on RouterBench they do not select better. ``bench/results/model-selection.md`` compares both
and measures the selector's decision cost.

Invariant: :meth:`HashedTfidf.transform` is a pure function of (text, dim, idf); equal inputs
give bit-identical vectors in every process.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

_WORD = re.compile(r"[a-z0-9]+")

#: Text beyond this many characters from the end is ignored: the last part of a prompt (the
#: question after any few-shot examples) is what tells the task, and the bound keeps the cost
#: of featurising a 100k-token prompt flat.
DEFAULT_MAX_CHARS = 4096


def tokens(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """Word unigrams and bigrams of the last ``max_chars`` characters of ``text``."""
    words = _WORD.findall(text[-max_chars:].lower())
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def bucket_counts(text: str, dim: int, max_chars: int = DEFAULT_MAX_CHARS) -> dict[int, int]:
    """Hashed n-gram counts: bucket index → count (sparse)."""
    mask = dim - 1
    counts: dict[int, int] = {}
    for tok in tokens(text, max_chars):
        b = zlib.crc32(tok.encode()) & mask
        counts[b] = counts.get(b, 0) + 1
    return counts


@dataclass(frozen=True, eq=False)
class HashedTfidf:
    """Hashed TF-IDF featuriser.

    ``dim`` is the number of hash buckets (a power of two, 2**8..2**20; default 2**14);
    ``idf`` has shape (dim,) or is ``None`` (all ones); ``max_chars`` bounds the text read.
    """

    dim: int = 1 << 14
    idf: FloatArray | None = None
    max_chars: int = DEFAULT_MAX_CHARS

    def __post_init__(self) -> None:
        if self.dim < 256 or self.dim > (1 << 20) or self.dim & (self.dim - 1):
            raise ValueError(f"dim must be a power of two in [256, 1048576], got {self.dim}")
        if self.idf is not None and self.idf.shape != (self.dim,):
            raise ValueError(f"idf must have shape ({self.dim},), got {self.idf.shape}")
        if self.max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {self.max_chars}")

    def transform(self, text: str) -> FloatArray:
        """The L2-normalised feature vector of one text (all zeros for text without words)."""
        v = np.zeros(self.dim, dtype=np.float32)
        counts = bucket_counts(text, self.dim, self.max_chars)
        if not counts:
            return v
        idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        tf = np.log1p(np.fromiter(counts.values(), dtype=np.float32, count=len(counts)))
        v[idx] = tf if self.idf is None else tf * self.idf[idx]
        n = float(np.linalg.norm(v))
        if n > 0:
            v /= n
        return v

    def transform_many(self, texts: Sequence[str]) -> FloatArray:
        """Rows of :meth:`transform` for several texts (offline use: training, benchmarks)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i] = self.transform(t)
        return out


def fit_idf(texts: Sequence[str], dim: int, max_chars: int = DEFAULT_MAX_CHARS) -> FloatArray:
    """Smoothed IDF per bucket, ``log((1 + n) / (1 + df)) + 1`` (offline training)."""
    df = np.zeros(dim, dtype=np.float64)
    for t in texts:
        for b in bucket_counts(t, dim, max_chars):
            df[b] += 1
    return (np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0).astype(np.float32)
