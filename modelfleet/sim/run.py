"""The inputs and outputs of one simulated run: its knobs, its event log and its result.

``ClusterSimulator`` (``modelfleet.sim.cluster``, which re-exports these) takes a
:class:`SimConfig` and returns a :class:`SimResult`; with ``record_decisions`` the result
carries the :class:`DecisionLogEntry` log the parity test replays into a second router.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelfleet.policy.host import EndpointMetrics
from modelfleet.policy.migration import InflightView, Migration
from modelfleet.policy.types import EndpointView, RequestId, RequestView
from modelfleet.sim.metrics import LoadSample, RequestRecord, RunMetrics

__all__ = ["DecisionLogEntry", "SimConfig", "SimResult"]


@dataclass(frozen=True)
class SimConfig:
    """Knobs of one simulated run (units: seconds, tokens)."""

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

    def validate(self) -> None:
        bad = []
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
    planner's answer). ``scrapes`` are the engine gauges in fleet order, as last scraped.
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

    def check_conservation(self) -> None:
        """Raise AssertionError if a request or a token was lost or doubled (also under -O)."""
        problems: list[str] = []
        for r in self.records:
            if r.shed:
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
