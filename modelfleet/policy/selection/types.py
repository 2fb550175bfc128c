"""Values that cross the model-selection boundary: request, pool view, decision, feedback.

The scheduler builds one :class:`SelectionRequest` per request and one :class:`PoolView` per
pool the RoutingPolicy can reach, calls ``Selector.select(request, pools, rng)`` and gets a
:class:`SelectionDecision` back: the pool to try first and, in order, the pools to fall back to.
All values are frozen so that a strategy cannot change what the next one sees. The RNG is a
parameter (``random.Random`` satisfies :class:`Rng`), never a module global, so that a trace
replayed with the same seed makes the same decisions in the simulator and the live scheduler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Rng(Protocol):
    """The random source a strategy may use (``random.Random`` implements it)."""

    def random(self) -> float:
        """A float uniform in [0, 1)."""
        ...

    def betavariate(self, alpha: float, beta: float) -> float:
        """A draw from Beta(alpha, beta); alpha, beta > 0."""
        ...


@dataclass(frozen=True, slots=True)
class SelectionRequest:
    """What model selection knows about one request.

    ``prompt`` is the text the featuriser reads; the scheduler passes the last user message
    (chat) or the prompt (completions), which is what decides the kind of task. ``headers``
    keys are lower-case (HTTP headers are case-insensitive; rules compare lower-cased names).
    """

    prompt: str = ""
    prompt_tokens: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    model: str = ""
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class PoolView:
    """A pool as selection sees it at decision time.

    ``available`` is false when the pool has no ready replica or is draining; ``overloaded``
    when the scheduler's admission says it would queue past its SLO or shed. Unavailable pools
    are never chosen; overloaded pools are chosen only when every candidate is overloaded
    (a queued request beats a refused one). ``model`` is the key under which a quality
    predictor knows the served model (RoutingPolicy ``costQuality.poolModels``, default the
    pool name).
    """

    name: str
    model: str = ""
    available: bool = True
    overloaded: bool = False


@dataclass(frozen=True, slots=True)
class SelectionDecision:
    """The outcome of one selection.

    ``pool`` is ``None`` only when no candidate pool is available (the scheduler answers 503).
    ``fallbacks`` are the pools to try next, in order, if ``pool`` fails in a way the cascade
    retries on (see :func:`modelfleet.policy.selection.cascade.next_pool`). ``rule`` names the
    rule that matched (``None``: default targets); ``context`` is the bandit/semantic context
    (the semantic class, or ``""``); ``scores`` holds the strategy's per-pool scores, for
    logging and tests.
    """

    pool: str | None
    fallbacks: tuple[str, ...] = ()
    rule: str | None = None
    strategy: str = ""
    semantic_class: str = ""
    reason: str = ""
    scores: Mapping[str, float] = field(default_factory=dict)


class Outcome(StrEnum):
    """How an attempt on a pool ended, as the proxy saw it."""

    SUCCESS = "success"
    OVERLOAD = "overload"  # HTTP 429 or admission said the pool is full
    ERROR = "error"  # HTTP 5xx or a connection failure
    TIMEOUT = "timeout"  # no first token within the cascade's timeout
    CLIENT_ERROR = "client-error"  # HTTP 4xx other than 429: the request is at fault


@dataclass(frozen=True, slots=True)
class Feedback:
    """What happened to a request after selection, for strategies that learn online.

    ``reward`` is in [0, 1] (1 = best): request success, SLO met, or a client's rating,
    whichever the bandit's ``reward`` parameter names; the scheduler computes it. ``context``
    is the decision's ``semantic_class`` so that a contextual bandit credits the right arm.
    """

    pool: str
    reward: float
    context: str = ""
    outcome: Outcome = Outcome.SUCCESS
