"""A minimal stand-in for the live scheduler's decision path (for the parity test).

It owns what the live scheduler owns — a policy built by name with an injected clock and RNG,
an :class:`InflightTracker`, and per-request bookkeeping from the proxy's stream — and builds
its snapshots itself: endpoint gauges come from *scrapes* (recorded), the in-flight counters
from its own tracker, the request view from the trace request, the planner's in-flight views
from the tokens it streamed. It never reads the simulator's snapshots; the parity test feeds
it the simulator's recorded sequence and compares snapshots and decisions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from modelfleet.policy.baselines import Policy
from modelfleet.policy.load import InflightTracker
from modelfleet.policy.migration import Migration
from modelfleet.policy.perf import PerfModel
from modelfleet.policy.types import EndpointId, EndpointView, RequestId, RequestView
from modelfleet.sim.cluster import inflight_view
from modelfleet.sim.policies import PolicyFactory


@dataclass(frozen=True)
class StaticEndpoint:
    """What the scheduler knows about an endpoint from configuration (not from scrapes)."""

    id: str
    pool: str
    model: str
    accelerator: str
    relative_speed: float
    perf: PerfModel | None


class FakeScheduler:
    def __init__(self, factory: PolicyFactory, seed: int, endpoints: Sequence[StaticEndpoint]):
        self.now = 0.0
        self.policy: Policy = factory(lambda: self.now, random.Random(seed))
        self.endpoints = tuple(endpoints)
        self.tracker = InflightTracker()
        self.requests: dict[str, RequestView] = {}
        self.endpoint_of: dict[str, str] = {}
        self.first_token_s: dict[str, float] = {}
        self.generated: dict[str, int] = {}

    def views(self, scrapes: Sequence[tuple[int, int, float]]) -> tuple[EndpointView, ...]:
        out = []
        for ep, (running, waiting, kv) in zip(self.endpoints, scrapes, strict=True):
            reqs, toks, prefill = self.tracker.counters(EndpointId(ep.id))
            out.append(
                EndpointView(
                    id=EndpointId(ep.id),
                    pool=ep.pool,
                    model=ep.model,
                    accelerator=ep.accelerator,
                    running=running,
                    waiting=waiting,
                    kv_cache_usage=kv,
                    inflight_requests=reqs,
                    inflight_tokens=toks,
                    inflight_prefill_tokens=prefill,
                    relative_speed=ep.relative_speed,
                    perf=ep.perf,
                )
            )
        return tuple(out)

    def route(
        self, request: RequestView, scrapes: Sequence[tuple[int, int, float]]
    ) -> tuple[str, tuple[EndpointView, ...]]:
        views = self.views(scrapes)
        decision = self.policy.profile.pick(request, views)
        self.policy.profile.on_routed(request, decision)
        ep = EndpointId(str(decision.endpoint))
        self.tracker.on_routed(request, ep)
        self.requests[request.id] = request
        self.endpoint_of[request.id] = ep
        self.generated[request.id] = 0
        return str(ep), views

    def on_first_token(self, rid: str) -> None:
        self.first_token_s[rid] = self.now
        ep = EndpointId(self.endpoint_of[rid])
        self.policy.profile.on_first_token(RequestId(rid), ep)
        self.tracker.on_first_token(RequestId(rid))

    def on_tokens(self, rid: str, n: int) -> None:
        self.generated[rid] += n
        self.tracker.on_token(RequestId(rid), n)

    def on_completed(self, rid: str) -> None:
        ep = EndpointId(self.endpoint_of.pop(rid))
        self.policy.profile.on_completed(RequestId(rid), ep)
        self.tracker.on_completed(RequestId(rid))
        del self.requests[rid], self.generated[rid]
        self.first_token_s.pop(rid, None)

    def on_migrated(self, rid: str, src: str, dst: str, generated: int) -> None:
        self.endpoint_of[rid] = dst
        self.tracker.on_migrated(RequestId(rid), EndpointId(src), EndpointId(dst))
        self.tracker.on_first_token(RequestId(rid))
        self.policy.profile.on_migrated(
            self.requests[rid], EndpointId(src), EndpointId(dst), generated
        )

    def on_kv_event(self, ep: str, event: object) -> None:
        self.policy.profile.on_kv_event(EndpointId(ep), event)

    def plan(
        self, scrapes: Sequence[tuple[int, int, float]], in_progress: frozenset[RequestId]
    ) -> tuple[list[Migration], tuple[EndpointView, ...]]:
        assert self.policy.planner is not None
        views = self.views(scrapes)
        inflight = tuple(
            inflight_view(
                req,
                EndpointId(self.endpoint_of[rid]),
                self.generated[rid],
                self.first_token_s.get(rid),
                self.now,
            )
            for rid, req in self.requests.items()
        )
        return list(self.policy.planner.plan(views, inflight, in_progress=in_progress)), views
