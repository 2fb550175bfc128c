"""Mutable state of one simulated run: one record per engine and per in-flight request.

Kept apart from the event loop (``cluster``) and the migration executor (``handover``), which
both change it. The policy never sees these objects: it sees the views the routing host builds
from scrapes and from the hooks the simulator calls.
"""

from __future__ import annotations

import math

from modelfleet.engine.core import EngineCore
from modelfleet.engine.virtual import StepWork
from modelfleet.policy.host import EndpointMetrics
from modelfleet.policy.migration import Migration
from modelfleet.policy.types import EndpointId, RequestView
from modelfleet.sim.fleet import EngineSpec
from modelfleet.sim.metrics import RequestRecord
from modelfleet.sim.traces import TraceRequest


class SimEngine:
    """One simulated engine: its core, what it is doing now and its last scrape."""

    __slots__ = (
        "core",
        "events",
        "id",
        "index",
        "migrating_out",
        "pending",
        "pool",
        "scrape",
        "scrape_s",
        "spec",
        "streams",
        "work",
    )

    def __init__(
        self, index: int, spec: EngineSpec, core: EngineCore, events: list[object]
    ) -> None:
        self.index = index
        self.id = EndpointId(spec.id)
        self.spec = spec
        self.core = core
        self.events = events  # KV events emitted by the core and not yet attached to a step
        self.work: StepWork | None = None
        # Requests on this engine with a destination copy starting elsewhere: the switch-over
        # aborts them at another engine's step end, so this engine must not fuse steps past it.
        self.migrating_out = 0
        self.scrape = EndpointMetrics()
        self.scrape_s = -math.inf
        self.pool = spec.pool
        # The front end (the API server): requests it serves (added to the core, not finished
        # or aborted), and the times requests still in its per-request work reach the core.
        self.streams = 0
        self.pending: list[float] = []

    def next_pending(self) -> float:
        """When the next request now in the front end reaches the core (inf: none)."""
        return min(self.pending) if self.pending else math.inf


class Handover:
    """A migration in progress: the destination copy that will take over the stream."""

    __slots__ = ("base", "dst", "dst_erid", "migration", "prefix_tokens", "seen", "started_s")

    def __init__(
        self,
        dst: int,
        dst_erid: str,
        prefix_tokens: list[int],
        started_s: float,
        migration: Migration,
    ) -> None:
        self.prefix_tokens = prefix_tokens  # generated tokens sent as part of the new prompt
        self.dst = dst
        self.dst_erid = dst_erid
        self.base = len(prefix_tokens)  # stream index of the destination's first token
        self.seen = 0  # tokens the destination has produced so far
        self.started_s = started_s
        self.migration = migration


class LiveRequest:
    """The proxy's side of one in-flight request: its stream and the engine copy serving it."""

    __slots__ = (
        "attempts",
        "delivered",
        "engine",
        "erid",
        "mig",
        "pool",
        "prefix_tokens",
        "produced",
        "rec",
        "req",
        "stream_base",
        "view",
    )

    def __init__(
        self, req: TraceRequest, view: RequestView, rec: RequestRecord, pool: str = ""
    ) -> None:
        self.req = req
        self.view = view
        self.rec = rec
        self.pool = pool
        self.delivered = 0  # tokens streamed to the client so far
        self.produced = 0  # tokens produced by the serving engine request
        self.stream_base = 0  # stream index of the serving engine request's first token
        self.prefix_tokens: list[int] = []  # generated tokens in the serving copy's prompt
        self.engine = -1
        self.erid = ""
        self.mig: Handover | None = None
        self.attempts = 0
