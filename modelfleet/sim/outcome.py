"""What a simulator run measured: per-engine load at a sample, the served requests' TTFT
predictions, and the run's metrics, overall and per pool."""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

from modelfleet.policy.perf import central_model, predict_ttft
from modelfleet.policy.types import EndpointId, EndpointView
from modelfleet.sim.metrics import (
    LoadSample,
    PrefixBounds,
    RequestRecord,
    RunMetrics,
    compute_metrics,
    load_imbalance,
)
from modelfleet.sim.state import SimEngine
from modelfleet.sim.traces import Trace

__all__ = [
    "engine_load",
    "run_counters",
    "run_metrics",
    "served_predictions",
    "ttft_prediction",
]

BoundsOf = Callable[[Trace, Sequence[SimEngine]], PrefixBounds | None]
ExtraOf = Callable[[Sequence[RequestRecord]], dict[str, float]]


def engine_load(eng: SimEngine, now: float) -> int:
    """Running + waiting requests on ``eng`` at ``now``, as single stepping would show them.

    Mid-burst the core is already past the sample time: the requests that finish in a later
    step than the one in progress now are counted back as running.
    """
    st = eng.core.stats()
    running = st.num_running
    work = eng.work
    if work is not None and work.participants and work.finished:
        j = bisect.bisect_right(work.ends, now) + 1
        running += sum(
            1
            for erid, k in zip(work.participants, work.steps_run, strict=True)
            if k > j and erid in work.finished
        )
    return running + st.num_waiting


def ttft_prediction(
    views: Sequence[EndpointView], chosen: EndpointId, prompt_tokens: int, cached: int
) -> tuple[str, float, float] | None:
    """What the chosen endpoint's model (central, and its prior) predicted for the TTFT:
    (accelerator, predicted, prior-predicted), or None when the endpoint has no model."""
    view = next(v for v in views if v.id == chosen)
    perf = view.perf
    if perf is None:
        return None
    prior = getattr(perf, "prior", perf)
    return (
        view.accelerator,
        predict_ttft(central_model(perf), view, prompt_tokens, cached),
        predict_ttft(prior, view, prompt_tokens, cached),
    )


def served_predictions(
    records: Sequence[RequestRecord], predictions: Mapping[str, tuple[str, float, float]]
) -> list[tuple[float, str, float, float, float]]:
    """(arrival, accelerator, predicted, prior-predicted, observed TTFT) per served request."""
    out = []
    for r in records:
        found = predictions.get(r.request_id)
        if found is not None and r.ttft_s is not None:
            out.append((r.arrival_s, found[0], found[1], found[2], r.ttft_s))
    return out


def run_counters(
    records: Sequence[RequestRecord],
    predicted_hits: Mapping[str, int],
    *,
    started: int,
    cancelled: int,
    refused: int,
    steps: int,
    rejected: int,
) -> dict[str, float]:
    """Counters of the run and the prefix index's predicted vs delivered hits (served only)."""
    served = [r for r in records if r.first_token_s is not None]
    predicted = sum(predicted_hits.get(r.request_id, 0) for r in served)
    delivered = sum(r.cached_tokens for r in served)
    return {
        "migrations_started": float(started),
        "migrations_cancelled": float(cancelled),
        "migrations_refused": float(refused),
        "engine_steps": float(steps),
        "rejected_by_engine": float(rejected),
        "predicted_hit_tokens": float(predicted),
        "delivered_hit_tokens": float(delivered),
        "hit_prediction_ratio": predicted / delivered if delivered else math.nan,
    }


def run_metrics(
    trace: Trace,
    records: Sequence[RequestRecord],
    samples: Sequence[LoadSample],
    engines: Sequence[SimEngine],
    *,
    migrations: int,
    bounds_of: BoundsOf,
    extra_of: ExtraOf,
) -> tuple[RunMetrics, dict[str, RunMetrics]]:
    """The run's metrics and, with several pools, each pool's.

    With several pools the load imbalance is the engine-weighted mean of the pools' own (max
    over mean across models means nothing), and the prefix bounds are the pools' weighted by
    their prompt tokens. ``records`` are in trace order.
    """
    ids = [str(e.id) for e in engines]
    pools: dict[str, list[SimEngine]] = {}
    for eng in engines:
        pools.setdefault(eng.pool, []).append(eng)
    if len(pools) == 1:
        m = compute_metrics(
            records,
            samples,
            ids,
            migrations=migrations,
            bounds=bounds_of(trace, engines),
            extra=extra_of(records),
        )
        return m, {}

    def pool_samples(members: Sequence[SimEngine]) -> list[LoadSample]:
        return [LoadSample(s.time_s, tuple(s.loads[e.index] for e in members)) for s in samples]

    per_pool: dict[str, RunMetrics] = {}
    for pool, members in pools.items():
        recs = [r for r, q in zip(records, trace.requests, strict=False) if q.pool == pool]
        own = tuple(q for q in trace.requests if q.pool == pool)
        sub = dataclasses.replace(trace, requests=own)
        per_pool[pool] = compute_metrics(
            recs,
            pool_samples(members),
            [str(e.id) for e in members],
            migrations=sum(r.migrations for r in recs),
            bounds=bounds_of(sub, members),
            extra=extra_of(recs),
        )
    weights = {p: len(members) for p, members in pools.items()}
    imbalance = sum(
        weights[p] * load_imbalance(pool_samples(members)) for p, members in pools.items()
    ) / sum(weights.values())
    parts = [
        (per_pool[p].bounds, sum(q.input_tokens for q in trace.requests if q.pool == p))
        for p in pools
    ]
    weighted = [(b, t) for b, t in parts if b is not None]
    bounds = None
    if weighted:
        total = sum(t for _b, t in weighted) or 1
        bounds = PrefixBounds(
            sum(b.infinite_cache * t for b, t in weighted) / total,
            sum(b.pooled_capacity * t for b, t in weighted) / total,
            sum(b.capacity_blocks for b, _t in weighted),
        )
    m = compute_metrics(
        records, samples, ids, migrations=migrations, bounds=bounds, extra=extra_of(records)
    )
    return dataclasses.replace(m, load_imbalance=imbalance), per_pool
