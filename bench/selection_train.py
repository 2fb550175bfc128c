"""Offline training of the default quality predictor, and the RouterBench data it learns from.

Offline work, so it lives in ``bench/`` and not in the runtime package: it reads CSV files and
fits models. It produces the ``.npz`` artefact that
:func:`modelfleet.policy.selection.predictor.load_predictor` reads; the runtime reads only that.
Run by ``bench/train_selector.py`` and ``bench/model_selection.py``; the tests import it with
``bench/`` on ``sys.path`` (``tests/conftest.py``).

Data cleaning (RouterBench 0-shot subset, RouterDC's split; see
``/work/shared/reference/model-selection.md``): one row per prompt with, per model, a quality
cell (0/1) and a cost cell (USD). 14 ARC questions are split over two rows each (one with only
gpt-3.5's answer, one with the ten others): every row with an empty quality or cost cell is
dropped, 20 train and 8 test rows, leaving 2,205 train and 945 test prompts. Prompt cells are
Python list literals (``"['...']"``); :func:`decode_prompt` turns them back into text.

Fit (:func:`fit_linear`): ridge regression of every model's correctness and log-cost on the
hashed TF-IDF features, solved in closed form through the n × n kernel
``W = Xᵀ (X Xᵀ + αI)⁻¹ (Y − ȳ)`` (n = 2,205 prompts ≪ dim), so training is one linear solve for
all models at once and is reproducible (the solve runs in float64). Ridge rather than logistic
regression: the selector only ranks ``q̂ − λ·ĉ``, which needs no calibrated probabilities, and
the closed form needs no iterations, learning rate or stopping rule. ``alpha`` (default 10)
was chosen on the training split only (see ``bench/results/model-selection.md``).
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from modelfleet.policy.selection.features import HashedTfidf, fit_idf
from modelfleet.policy.selection.predictor import LinearPredictor

#: The 11 models of the RouterBench subset, in the CSV's column order.
ROUTERBENCH_MODELS: tuple[str, ...] = (
    "WizardLM/WizardLM-13B-V1.2",
    "claude-instant-v1",
    "claude-v1",
    "claude-v2",
    "gpt-3.5-turbo-1106",
    "gpt-4-1106-preview",
    "meta/code-llama-instruct-34b-chat",
    "meta/llama-2-70b-chat",
    "mistralai/mistral-7b-chat",
    "mistralai/mixtral-8x7b-chat",
    "zero-one-ai/Yi-34B-Chat",
)
#: Task files of the subset (``<task>_<split>.csv``).
ROUTERBENCH_TASKS: tuple[str, ...] = ("arc_challenge", "mbpp", "winograde")


@dataclass(frozen=True)
class RouterBenchSplit:
    """Cleaned prompts of one split: ``quality`` and ``cost`` are (n, models)."""

    sample_ids: tuple[str, ...]
    prompts: tuple[str, ...]
    tasks: tuple[str, ...]
    models: tuple[str, ...]
    quality: npt.NDArray[np.float64]
    cost: npt.NDArray[np.float64]
    dropped: int

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx: npt.NDArray[np.int64]) -> RouterBenchSplit:
        """Rows ``idx`` (e.g. a bootstrap resample), same models."""
        return RouterBenchSplit(
            sample_ids=tuple(self.sample_ids[i] for i in idx),
            prompts=tuple(self.prompts[i] for i in idx),
            tasks=tuple(self.tasks[i] for i in idx),
            models=self.models,
            quality=self.quality[idx],
            cost=self.cost[idx],
            dropped=0,
        )


def decode_prompt(cell: str) -> str:
    """The prompt text of a CSV cell holding a Python list literal of one string."""
    s = cell.strip()
    if s.startswith("[") and s.endswith("]"):
        try:
            value = ast.literal_eval(s)
        except (ValueError, SyntaxError):
            return cell
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return "\n".join(value)
    return cell


def parse_routerbench_csv(
    text: str, models: Sequence[str] = ROUTERBENCH_MODELS
) -> tuple[list[tuple[str, str, str, list[float], list[float]]], int]:
    """Rows ``(sample_id, prompt, task, quality, cost)`` of one CSV and the number dropped.

    A row is dropped when any model's quality or cost cell is empty (see the module docstring).
    A missing column raises ``ValueError`` naming it.
    """
    reader = csv.DictReader(io.StringIO(text))
    header = set(reader.fieldnames or ())
    for col in ("sample_id", "prompt", "eval_name"):
        if col not in header:
            raise ValueError(f"RouterBench CSV has no column {col!r}")
    for m in models:
        for col in (m, f"{m}|total_cost"):
            if col not in header:
                raise ValueError(f"RouterBench CSV has no column {col!r}")
    rows: list[tuple[str, str, str, list[float], list[float]]] = []
    dropped = 0
    for r in reader:
        q = [(r[m] or "").strip() for m in models]
        c = [(r[f"{m}|total_cost"] or "").strip() for m in models]
        if any(v == "" for v in q + c):
            dropped += 1
            continue
        rows.append(
            (
                r["sample_id"],
                decode_prompt(r["prompt"]),
                r["eval_name"],
                [float(v) for v in q],
                [float(v) for v in c],
            )
        )
    return rows, dropped


def load_routerbench(directory: str | Path, split: str) -> RouterBenchSplit:
    """The three tasks' ``<task>_<split>.csv`` (or ``.csv.gz``) under ``directory``, cleaned."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    csv.field_size_limit(1 << 30)
    rows: list[tuple[str, str, str, list[float], list[float]]] = []
    dropped = 0
    for task in ROUTERBENCH_TASKS:
        path = Path(directory) / f"{task}_{split}.csv"
        if path.exists():
            text = path.read_text(encoding="utf-8")
        else:
            text = gzip.decompress(path.with_suffix(".csv.gz").read_bytes()).decode("utf-8")
        part, d = parse_routerbench_csv(text)
        rows += part
        dropped += d
    return RouterBenchSplit(
        sample_ids=tuple(r[0] for r in rows),
        prompts=tuple(r[1] for r in rows),
        tasks=tuple(r[2] for r in rows),
        models=ROUTERBENCH_MODELS,
        quality=np.array([r[3] for r in rows], dtype=np.float64),
        cost=np.array([r[4] for r in rows], dtype=np.float64),
        dropped=dropped,
    )


#: Ridge strength of the default predictor (in units of the kernel's diagonal, which is 1).
DEFAULT_ALPHA = 10.0
#: Hash buckets of the default predictor's featuriser.
DEFAULT_DIM = 1 << 14


def fit_linear(
    prompts: Sequence[str],
    quality: npt.NDArray[np.float64],
    cost: npt.NDArray[np.float64],
    models: Sequence[str],
    *,
    dim: int = DEFAULT_DIM,
    alpha: float = DEFAULT_ALPHA,
) -> LinearPredictor:
    """Fit the default :class:`LinearPredictor` (kernel ridge, see the module docstring).

    ``quality`` and ``cost`` are (n, len(models)); costs must be positive (USD).
    """
    n = len(prompts)
    if quality.shape != (n, len(models)) or cost.shape != (n, len(models)):
        raise ValueError("quality and cost must be (number of prompts, number of models)")
    if n == 0:
        raise ValueError("fit_linear needs at least one prompt")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if not np.all(cost > 0):
        raise ValueError("costs must be > 0 (USD) to fit log-cost")
    idf = fit_idf(prompts, dim)
    tfidf = HashedTfidf(dim=dim, idf=idf)
    x = tfidf.transform_many(prompts).astype(np.float64)
    logc = np.log(cost)
    bq, bc = quality.mean(axis=0), logc.mean(axis=0)
    targets = np.hstack([quality - bq, logc - bc])
    kernel = x @ x.T
    dual = np.linalg.solve(kernel + alpha * np.eye(n), targets)
    w = x.T @ dual
    m = len(models)
    return LinearPredictor(
        model_names=tuple(models),
        tfidf=tfidf,
        w_quality=w[:, :m].astype(np.float32),
        b_quality=bq.astype(np.float32),
        w_logcost=w[:, m:].astype(np.float32),
        b_logcost=bc.astype(np.float32),
    )


def train_default(data_dir: str | Path) -> LinearPredictor:
    """The shipped predictor: :func:`fit_linear` on the RouterBench train split."""
    split = load_routerbench(data_dir, "train")
    return fit_linear(split.prompts, split.quality, split.cost, split.models)
