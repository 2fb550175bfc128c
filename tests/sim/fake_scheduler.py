"""A minimal stand-in for the live scheduler's decision path (for the parity test).

It does what the live proxy will do with its :class:`~modelfleet.policy.host.Router`: build a
policy by name with its own clock and RNG, register the endpoints from configuration, store
each scrape as it arrives, and report every event of its streams to the router (live-proxy
style: no explicit timestamps, the router reads the clock). Its inputs are the simulator's
recorded *event log* — scrapes, requests, streamed tokens, completions, migrations started and
switched over, KV events — never the simulator's router or its snapshots; the parity test
compares the snapshots and decisions the two routers produce.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from modelfleet.policy.host import EndpointInfo, EndpointMetrics, PlanRound, Router
from modelfleet.policy.learn import LatencyLearner
from modelfleet.policy.types import EndpointId, EndpointView, RequestId, RequestView
from modelfleet.sim.cluster import DecisionLogEntry
from modelfleet.sim.policies import PolicyFactory


class FakeScheduler:
    def __init__(
        self,
        factory: PolicyFactory,
        seed: int,
        endpoints: Sequence[EndpointInfo],
        pool: str,
        learner: LatencyLearner | None = None,
    ) -> None:
        self.now = 0.0
        policy = factory(lambda: self.now, random.Random(seed))
        self.router = Router(policy.profile, planner=policy.planner, pool=pool, learner=learner)
        for info in endpoints:
            self.router.add_endpoint(info)

    def scraped(self, scrapes: Sequence[EndpointMetrics]) -> None:
        """A poller round: one scrape per endpoint, in configuration order."""
        for info, metrics in zip(self.router.endpoints(), scrapes, strict=True):
            self.router.update_metrics(info.id, metrics)

    def route(self, request: RequestView) -> tuple[str, tuple[EndpointView, ...]]:
        views = self.router.views()
        return str(self.router.route(request).endpoint), views

    def plan(self) -> PlanRound:
        return self.router.plan()

    def replay_event(self, entry: DecisionLogEntry) -> None:
        """Report one non-decision event of the log to the router, as the proxy would."""
        self.now = entry.time_s
        rid = RequestId(entry.request_id)
        if entry.kind == "first_token":
            self.router.on_first_token(rid)
        elif entry.kind == "tokens":
            self.router.on_tokens(rid, entry.n)
        elif entry.kind == "completed":
            self.router.on_completed(rid)
        elif entry.kind == "migration_aborted":
            self.router.on_migration_aborted(rid)
        elif entry.kind == "migration_started":
            self.router.on_migration_started(rid, EndpointId(entry.endpoint))
        elif entry.kind == "migrated":
            self.router.on_migrated(rid, EndpointId(entry.endpoint))
        elif entry.kind == "kv":
            self.router.on_kv_event(EndpointId(entry.endpoint), entry.event)
        else:  # a new log kind must be replayed here
            raise AssertionError(f"unknown log entry {entry.kind}")
