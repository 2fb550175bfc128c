"""Model selection: which ModelPool answers a request (RoutingPolicy rules and strategy).

Pure decision code: :class:`Selector` takes a :class:`SelectionRequest`, the candidate pools as
:class:`PoolView` snapshots and an injected RNG, and returns a :class:`SelectionDecision` (the
pool and its ordered fallbacks). Strategies: weighted/canary, cascade, cost-quality
(CARROT-style, with an offline-trained quality predictor), semantic (nearest class centroid
feeding the rules) and bandit (online from :class:`Feedback`). The interface for the scheduler
is described in ``docs/selection.md``. Offline training lives in
``bench/selection_train.py``; the RouterBench metrics in
``bench/selection_metrics.py``.
"""

from modelfleet.policy.selection.features import HashedTfidf
from modelfleet.policy.selection.predictor import (
    KnnPredictor,
    LinearPredictor,
    QualityPredictor,
    load_builtin_predictor,
    load_predictor,
)
from modelfleet.policy.selection.selector import Selector, build_selector, next_pool
from modelfleet.policy.selection.types import (
    Feedback,
    Outcome,
    PoolView,
    Rng,
    SelectionDecision,
    SelectionRequest,
)

__all__ = [
    "Feedback",
    "HashedTfidf",
    "KnnPredictor",
    "LinearPredictor",
    "Outcome",
    "PoolView",
    "QualityPredictor",
    "Rng",
    "SelectionDecision",
    "SelectionRequest",
    "Selector",
    "build_selector",
    "load_builtin_predictor",
    "load_predictor",
    "next_pool",
]
