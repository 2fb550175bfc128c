"""The inputs and outputs of one simulated run: its knobs, its event log and its result.

``ClusterSimulator`` (``modelfleet.sim.cluster``, which re-exports these) takes a
:class:`SimConfig` and returns a :class:`SimResult`; with ``record_decisions`` the result
carries the :class:`DecisionLogEntry` log the parity test replays into a second router.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelfleet.policy.host import EndpointMetrics
from modelfleet.policy.learn import LearnerParams
from modelfleet.policy.migration import InflightView, Migration
from modelfleet.policy.types import EndpointView, RequestId, RequestView
from modelfleet.sim.metrics import LoadSample, RequestRecord, RunMetrics

__all__ = ["DecisionLogEntry", "SimConfig", "SimResult"]


PERF_MODELS = ("learned", "prior", "oracle")


@dataclass(frozen=True)
class SimConfig:
    """Knobs of one simulated run (units: seconds, tokens).

    What the policy knows of latencies (``perf_model``): ``learned`` (the default, as a live
    scheduler runs: the prior from each engine's declared hardware, refined online by the
    routing host's :class:`~modelfleet.policy.learn.LatencyLearner`), ``prior`` (the prior
    alone, never refined) or ``oracle`` (fitted to the simulator's own timing model: a
    labelled upper bound for benchmarks, never a default). ``prior_error`` makes the
    declarations wrong per accelerator (``{"l40s": -0.3}``: 30 % slower than declared).
    ``front_end``: each engine's API server adds its per-request latency, growing with the
    streams it serves, before a request reaches the engine core (timing model v2, as the
    live engine does). ``size_prefix_index``: hand each endpoint's declared KV capacity to the
    approximate prefix index.
    """

    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 0.1
    slo_class: str = "standard"
    metrics_refresh_s: float = 0.05
    sample_period_s: float = 1.0
    enable_migration: bool = True
    feed_kv_events: bool | None = None  # None: only if the policy's profile consumes them
    # Chain given to the policy: "trace" = trace block ids, "engine" = the engines' vLLM chain
    # (what KV events carry), "auto" = "engine" when the profile reads KV events.
    prefix_chain: str = "auto"
    max_fused_steps: int = 256
    record_decisions: bool = False
    # Run the engines with prefix_caching_hash_algo="builtin" (Python's tuple hash chained like
    # vLLM's recipe: same equality structure, much cheaper); False keeps vLLM's sha256.
    fast_block_hash: bool = True
    seed: int = 0
    compute_bounds: bool = True
    perf_model: str = "learned"
    prior_error: Mapping[str, float] = field(default_factory=dict)
    learner: LearnerParams | None = None
    front_end: bool = True
    size_prefix_index: bool = True
    # Record, per request, the TTFT its endpoint's model predicted at routing (central and
    # prior) next to the observed one: ``SimResult.extra["ttft_predictions"]`` (benchmarks).
    track_predictions: bool = False

    def validate(self) -> None:
        bad = []
        if self.perf_model not in PERF_MODELS:
            bad.append(f"perf_model ({' | '.join(PERF_MODELS)})")
        if any(not e > -1.0 for e in self.prior_error.values()):
            bad.append("prior_error (each > -1)")
        if not self.ttft_slo_s > 0:
            bad.append("ttft_slo_s")
        if not self.tpot_slo_s > 0:
            bad.append("tpot_slo_s")
        if not self.metrics_refresh_s >= 0:
            bad.append("metrics_refresh_s")
        if not self.sample_period_s > 0:
            bad.append("sample_period_s")
        if self.prefix_chain not in ("auto", "trace", "engine"):
            bad.append("prefix_chain (auto | trace | engine)")
        if self.max_fused_steps < 1:
            bad.append("max_fused_steps")
        if bad:
            raise ValueError(f"SimConfig: invalid {', '.join(bad)}")


@dataclass(frozen=True)
class DecisionLogEntry:
    """One event as a live proxy would see it and report it to its router (parity harness).

    ``kind``: ``pick`` (request, the scrapes and the views it was placed with, the endpoint),
    ``first_token``, ``tokens`` (n), ``completed``, ``migration_started`` (src, endpoint =
    destination), ``migrated`` (src, endpoint = destination, n = tokens streamed so far), ``kv``
    (endpoint, event), ``plan`` (scrapes, views, in-flight views, migrations in progress and the
    planner's answer), ``migration_aborted`` (the destination refused the copy). ``scrapes``
    are the gauges of the pool's engines in fleet order, as last scraped; ``pool`` names the
    router the event went to.
    """

    time_s: float
    kind: str
    request_id: str = ""
    endpoint: str = ""
    request: RequestView | None = None
    scrapes: tuple[EndpointMetrics, ...] = ()
    views: tuple[EndpointView, ...] = ()
    chosen: str = ""
    n: int = 0
    src: str = ""
    event: object = None
    inflight: tuple[InflightView, ...] = ()
    in_progress: frozenset[RequestId] = frozenset()
    migrations: tuple[Migration, ...] = ()
    pool: str = ""


@dataclass
class SimResult:
    """Raw outcome of one run plus its metrics."""

    records: list[RequestRecord]
    samples: list[LoadSample]
    endpoint_ids: tuple[str, ...]
    migrations_started: int
    migrations_done: int
    migrations_cancelled: int
    token_mismatches: int
    token_gaps: int
    engine_leftovers: int
    decisions: list[DecisionLogEntry]
    metrics: RunMetrics
    steps: int
    extra: dict[str, Any] = field(default_factory=dict)
    arrived: int = -1  # requests of the trace (-1: unknown, not checked)
    pool_metrics: dict[str, RunMetrics] = field(default_factory=dict)

    def outcome_counts(self) -> dict[str, int]:
        """Requests in, served (finished), failed (refused by an engine), shed (no endpoint)."""
        return {
            "in": self.arrived if self.arrived >= 0 else len(self.records),
            "served": sum(1 for r in self.records if r.finish_s is not None),
            "failed": sum(1 for r in self.records if r.failed),
            "shed": sum(1 for r in self.records if r.shed),
        }

    def check_conservation(self) -> None:
        """Raise AssertionError if a request or a token was lost or doubled (also under -O).

        Requests in = served + failed + shed, each request in exactly one of them; a served
        request delivered exactly its tokens; no migrated token differs or is missing; no
        engine holds a request at the end.
        """
        problems: list[str] = []
        c = self.outcome_counts()
        if self.arrived >= 0 and len(self.records) != self.arrived:
            problems.append(f"{self.arrived} requests arrived but {len(self.records)} recorded")
        if c["served"] + c["failed"] + c["shed"] != c["in"]:
            problems.append(
                f"requests in {c['in']} != served {c['served']} + failed {c['failed']} + shed "
                f"{c['shed']}"
            )
        for r in self.records:
            outcomes = (r.finish_s is not None) + r.failed + r.shed
            if outcomes > 1:
                problems.append(f"{r.request_id} has {outcomes} outcomes")
            if r.shed or r.failed:
                continue
            if r.finish_s is None:
                problems.append(f"{r.request_id} never finished")
            elif r.output_tokens != r.max_tokens:
                problems.append(
                    f"{r.request_id} delivered {r.output_tokens} of {r.max_tokens} tokens"
                )
        if self.token_gaps:
            problems.append(f"{self.token_gaps} tokens arrived after a gap (lost token)")
        if self.token_mismatches:
            problems.append(f"{self.token_mismatches} migrated tokens differ")
        if self.engine_leftovers:
            problems.append(f"{self.engine_leftovers} engines still hold requests")
        if problems:
            raise AssertionError("; ".join(problems[:5]))
