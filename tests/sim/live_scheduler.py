"""The live scheduler's decision path, replaying the simulator's event log (parity test).

Unlike :mod:`fake_scheduler` (a bare router built like the simulator's), this harness runs the
wiring of ``modelfleet scheduler``: a :class:`~modelfleet.scheduler.core.SchedulerCore` built
from a fleet snapshot — AcceleratorProfiles, one ModelPool with a variant per accelerator, a
RoutingPolicy whose placement names the policy — so the pool's router and its profile come
from the RoutingPolicy exactly as in production (``profile_spec_from_placement``,
``migration_params_from_api``), and every request goes through the policy's
:class:`~modelfleet.policy.selection.Selector` before placement (``SchedulerCore.route_view``).

What the live scheduler would learn from the cluster and cannot learn from a log is injected
to equal the simulator's: the endpoints' perf models (the simulator fits them to its engines;
the live scheduler calibrates a prior), the accelerators' relative speeds (given as each
profile's ``decodeSpeed``), and the pool router's RNG (seeded like the simulator's).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from modelfleet.api.accelerator import AcceleratorProfile
from modelfleet.api.modelpool import ModelPool
from modelfleet.api.routingpolicy import RoutingPolicy
from modelfleet.policy.host import EndpointInfo, EndpointMetrics, PlanRound, Router
from modelfleet.policy.types import EndpointId, EndpointView, RequestId, RequestView
from modelfleet.scheduler.core import SchedulerCore
from modelfleet.scheduler.fleet import EndpointSpec, FleetSnapshot
from modelfleet.sim.cluster import DecisionLogEntry

MODEL = "live-model"


def live_policy(profile: str, *, prefix_source: str = "approximate") -> RoutingPolicy:
    """The RoutingPolicy the live scheduler runs: ``profile`` placement, migration on for the
    policies that plan migrations."""
    migrate = profile in ("llumnix", "modelfleet")
    return RoutingPolicy.model_validate(
        {
            "apiVersion": "modelfleet.io/v1alpha1",
            "kind": "RoutingPolicy",
            "metadata": {"name": "live", "namespace": "default"},
            "spec": {
                "modelNames": [MODEL],
                "defaultTargets": [{"pool": "default"}],
                "placement": {"profile": profile, "prefixSource": prefix_source},
                "migration": {
                    "enabled": migrate,
                    "triggers": ["drain", "slo-rescue", "load-imbalance"],
                    "minGainMs": 50,
                },
            },
        }
    )


def snapshot(endpoints: Sequence[EndpointInfo], policy: RoutingPolicy) -> FleetSnapshot:
    """One pool named like the simulator's, a variant per accelerator, one endpoint each."""
    accels = list(dict.fromkeys(e.accelerator for e in endpoints))
    speed = {e.accelerator: e.relative_speed for e in endpoints}
    profiles = {
        a: AcceleratorProfile.model_validate(
            {
                "apiVersion": "modelfleet.io/v1alpha1",
                "kind": "AcceleratorProfile",
                "metadata": {"name": a},
                "spec": {
                    "gpuProduct": a,
                    "memoryGiB": 80,
                    "decodeSpeed": speed[a],
                    "costPerHour": 1.0,
                },
            }
        )
        for a in accels
    }
    pool_name = endpoints[0].pool
    pool = ModelPool.model_validate(
        {
            "apiVersion": "modelfleet.io/v1alpha1",
            "kind": "ModelPool",
            "metadata": {"name": pool_name, "namespace": "default"},
            "spec": {
                "model": endpoints[0].model,
                "servedModelName": endpoints[0].model,
                "variants": [
                    {"name": f"v{i}", "acceleratorProfile": a} for i, a in enumerate(accels)
                ],
            },
        }
    )
    variant = {a: f"v{i}" for i, a in enumerate(accels)}
    eps = tuple(
        EndpointSpec(
            id=str(e.id),
            url=f"http://127.0.0.1:{9000 + i}",
            namespace="default",
            pool=pool_name,
            variant=variant[e.accelerator],
        )
        for i, e in enumerate(endpoints)
    )
    return FleetSnapshot(
        profiles=profiles,
        pools={("default", pool_name): pool},
        policies={("default", "live"): policy},
        endpoints=eps,
        source="parity",
    )


class LiveScheduler:
    """Same interface as ``FakeScheduler``: scraped, route, plan, replay_event."""

    def __init__(self, policy: RoutingPolicy, seed: int, endpoints: Sequence[EndpointInfo]) -> None:
        self.now = 0.0
        perf = {str(e.id): e.perf for e in endpoints}
        self.core = SchedulerCore(
            clock=lambda: self.now,
            rng_factory=lambda name: random.Random(seed if name.startswith("pool:") else 0),
            perf_provider=lambda e, _pool, _profile: perf[e.id],
        )
        self.core.apply(snapshot(endpoints, policy))
        (state,) = self.core.pools.values()
        self.router: Router = state.router
        self.ids = [str(e.id) for e in endpoints]

    def scraped(self, scrapes: Sequence[EndpointMetrics]) -> None:
        for endpoint, metrics in zip(self.ids, scrapes, strict=True):
            self.core.update_metrics(endpoint, metrics)

    def route(self, request: RequestView) -> tuple[str, tuple[EndpointView, ...]]:
        views = self.router.views()
        _, decision = self.core.route_view(MODEL, request, request.headers)
        return str(decision.endpoint), views

    def plan(self) -> PlanRound:
        return self.router.plan()

    def replay_event(self, entry: DecisionLogEntry) -> None:
        self.now = entry.time_s
        rid = RequestId(entry.request_id)
        if entry.kind == "first_token":
            self.router.on_first_token(rid)
        elif entry.kind == "tokens":
            self.router.on_tokens(rid, entry.n)
        elif entry.kind == "completed":
            self.router.on_completed(rid)
        elif entry.kind == "migration_started":
            self.router.on_migration_started(rid, EndpointId(entry.endpoint))
        elif entry.kind == "migrated":
            self.router.on_migrated(rid, EndpointId(entry.endpoint))
        elif entry.kind == "kv":
            self.core.on_kv_event(entry.endpoint, entry.event)
        else:
            raise AssertionError(f"unknown log entry {entry.kind}")
