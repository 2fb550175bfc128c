"""Latency models used by SLO-aware scoring, admission and migration.

The policy layer never imports the engine. A host puts one :class:`PerfModel` per (accelerator,
model, TP) on each :class:`~modelfleet.policy.types.EndpointView`:

* a *prior* built from what configuration declares
  (:func:`~modelfleet.policy.prior.prior_perf_model`: the AcceleratorProfile's
  ``prefillSpeed``/``decodeSpeed`` relative to an H100 and the model's size), which the
  routing host refines online from observed latencies (:mod:`modelfleet.policy.learn`), or
* any fixed model (benchmarks use one fitted to the simulator's timing model as a labelled
  upper bound; no default component does).

A model may carry its own uncertainty: :func:`ttft_estimate` and :func:`tpot_estimate` return a
(central, upper) pair, where ``predict_*`` is the upper one (what decisions use, so a model that
has seen no evidence is not trusted) and ``central`` the best guess (what the migration
planner compares, with the gap as the margin it demands). A model without one has no gap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class PerfModel(Protocol):
    """Predicts the latencies a new request would see on one endpoint."""

    def predict_ttft(
        self,
        prompt_tokens: int,
        cached_tokens: int,
        *,
        running: int,
        waiting: int,
        pending_prefill_tokens: int,
        streams: int = 0,
    ) -> float:
        """Seconds from arrival to first token, including the prefill queued ahead of it.

        ``streams`` is the number of requests the endpoint's front end already serves (the
        API server's per-request work waits behind them); 0 when unknown.
        """
        ...

    def predict_tpot(self, *, running: int) -> float:
        """Seconds per output token while ``running`` sequences decode together."""
        ...


@dataclass(frozen=True, slots=True)
class ParametricPerfModel:
    """A linear model of a continuous-batching engine with chunked prefill.

    Algorithm: a new request's TTFT is the prefill of all tokens queued ahead of it plus its own
    uncached tokens at ``prefill_s_per_token``, plus ``prefill_base_s`` per queued prefill
    (``waiting`` + its own), plus — when the batch is full (``running + waiting >=
    max_num_seqs``) — the wait for a slot, estimated as ``mean_decode_s_per_request`` per
    batch-full ahead. Decode steps interleave with prefill chunks, so each chunk of
    ``chunk_tokens`` also costs ``decode_s_per_seq * running``. TPOT is
    ``decode_base_s + decode_s_per_seq * running`` (batch capped at ``max_num_seqs``).
    The front end (HTTP, tokenisation) adds ``front_end_s + front_end_per_stream_s * streams``
    to the TTFT, ``streams`` being the requests it already serves (vLLM's API server does its
    per-request work on the same event loop as every stream it relays).

    Why linear: vLLM's step time is close to affine in prefill tokens and in batch size in the
    regimes a router cares about, and an affine model costs a handful of float operations per
    candidate and is fitted by least squares from the engine's timing model.

    Units: seconds, tokens. Defaults are of the order of an 8B model on one H100.
    """

    prefill_base_s: float = 0.010
    prefill_s_per_token: float = 5e-5
    decode_base_s: float = 0.008
    decode_s_per_seq: float = 1e-4
    chunk_tokens: int = 8192
    max_num_seqs: int = 256
    mean_decode_s_per_request: float = 2.0
    front_end_s: float = 0.0
    front_end_per_stream_s: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "prefill_base_s",
            "prefill_s_per_token",
            "decode_base_s",
            "decode_s_per_seq",
            "mean_decode_s_per_request",
            "front_end_s",
            "front_end_per_stream_s",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"ParametricPerfModel.{name} must be finite and >= 0, got {value}")
        if self.chunk_tokens <= 0 or self.max_num_seqs <= 0:
            raise ValueError("ParametricPerfModel.chunk_tokens and max_num_seqs must be > 0")

    def predict_ttft(
        self,
        prompt_tokens: int,
        cached_tokens: int,
        *,
        running: int,
        waiting: int,
        pending_prefill_tokens: int,
        streams: int = 0,
    ) -> float:
        # plain conditionals instead of min/max: this runs once per candidate per decision
        own = prompt_tokens - cached_tokens if cached_tokens < prompt_tokens else 0
        tokens = own + pending_prefill_tokens if pending_prefill_tokens > 0 else own
        ttft = self.prefill_base_s * (1 + waiting if waiting > 0 else 1)
        ttft += tokens * self.prefill_s_per_token
        if tokens and running > 0:
            chunks = -(-tokens // self.chunk_tokens)
            ttft += chunks * self.decode_s_per_seq * running
        overflow = running + waiting + 1 - self.max_num_seqs
        if overflow > 0:
            ttft += -(-overflow // self.max_num_seqs) * self.mean_decode_s_per_request
        if self.front_end_s or self.front_end_per_stream_s:
            ttft += self.front_end_s + self.front_end_per_stream_s * streams
        return ttft

    def predict_tpot(self, *, running: int) -> float:
        batch = running if running > 1 else 1
        if batch > self.max_num_seqs:
            batch = self.max_num_seqs
        return self.decode_base_s + self.decode_s_per_seq * batch


class QueueState(Protocol):
    """The queue a new request joins on one endpoint, as a policy sees it.

    :class:`~modelfleet.policy.types.EndpointView` is one (scraped ``running``/``waiting``,
    this scheduler's ``inflight_prefill_tokens`` and ``inflight_requests``, the streams its
    front end serves); the migration planner passes its running estimate of the same numbers
    while it plans moves.
    """

    @property
    def running(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    @property
    def inflight_prefill_tokens(self) -> int: ...

    @property
    def inflight_requests(self) -> int: ...


def predict_ttft(
    perf: PerfModel,
    queue: QueueState,
    prompt_tokens: int,
    cached_tokens: int = 0,
    *,
    queued_itself: bool = False,
) -> float:
    """Predicted TTFT of a request of ``prompt_tokens`` (``cached_tokens`` hit) behind ``queue``.

    The one place the policy layer maps a queue onto :meth:`PerfModel.predict_ttft`: the batch
    is ``queue.running``, the prefills ahead are ``queue.waiting`` requests holding
    ``queue.inflight_prefill_tokens`` tokens. ``queued_itself`` is for a request that is already
    counted in that queue (the planner asking how long a queued request still has to wait where
    it is): it is then not ahead of itself, so one waiting request and its own prompt tokens are
    taken out (never below zero).
    """
    waiting = queue.waiting
    pending = queue.inflight_prefill_tokens
    streams = queue.inflight_requests
    if queued_itself:
        waiting = max(0, waiting - 1)
        pending = max(0, pending - prompt_tokens)
        streams = max(0, streams - 1)
    return perf.predict_ttft(
        prompt_tokens,
        cached_tokens,
        running=queue.running,
        waiting=waiting,
        pending_prefill_tokens=pending,
        streams=streams,
    )


def central_model(perf: PerfModel) -> PerfModel:
    """The model's best guess: ``perf.central`` when it carries one, else ``perf`` itself."""
    central: PerfModel | None = getattr(perf, "central", None)
    return perf if central is None else central


def ttft_estimate(
    perf: PerfModel,
    queue: QueueState,
    prompt_tokens: int,
    cached_tokens: int = 0,
    *,
    queued_itself: bool = False,
) -> tuple[float, float]:
    """(central, upper) predicted TTFT, as :func:`predict_ttft`; equal without uncertainty."""
    upper = predict_ttft(perf, queue, prompt_tokens, cached_tokens, queued_itself=queued_itself)
    central = central_model(perf)
    if central is perf:
        return upper, upper
    mid = predict_ttft(central, queue, prompt_tokens, cached_tokens, queued_itself=queued_itself)
    return mid, upper


def tpot_estimate(perf: PerfModel, running: int) -> tuple[float, float]:
    """(central, upper) predicted TPOT at batch ``running``; equal without uncertainty."""
    upper = perf.predict_tpot(running=running)
    central = central_model(perf)
    if central is perf:
        return upper, upper
    return central.predict_tpot(running=running), upper
