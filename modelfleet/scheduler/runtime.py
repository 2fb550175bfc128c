"""The composition root of one scheduler process (or Ray Serve replica).

:class:`SchedulerRuntime` builds everything from :class:`RuntimeSettings` and passes it down:
the HTTP client to the engines, the telemetry, the
:class:`~modelfleet.scheduler.core.SchedulerCore`, the
:class:`~modelfleet.scheduler.proxy.Proxy` and the ASGI app; then it follows the fleet
source. Per endpoint it runs one metrics poller and, for pools whose placement reads KV events,
one KV-event subscription; endpoints that appear or vanish with a new snapshot get their tasks
started or cancelled. Every second the perf calibration is applied to the endpoints' models.

``start()`` returns once the first snapshot is applied and every endpoint was scraped once (so
the first request already sees the engines' state); ``stop()`` cancels every task and closes
every connection. Nothing here is global: two runtimes can share a process (tests do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
import zmq.asyncio
from starlette.applications import Starlette

from modelfleet.policy.types import EndpointId
from modelfleet.scheduler.app import build_app
from modelfleet.scheduler.config import StaticFileSource, load_static_fleet
from modelfleet.scheduler.core import SchedulerCore
from modelfleet.scheduler.fleet import EndpointSpec, FleetSnapshot, FleetSource, PredictorCache
from modelfleet.scheduler.pollers import KvEventSubscriber, MetricsPoller, resolve_kv_endpoint
from modelfleet.scheduler.proxy import Proxy
from modelfleet.scheduler.scrape import EngineMetrics
from modelfleet.scheduler.telemetry import Telemetry

__all__ = ["RuntimeSettings", "SchedulerRuntime"]

log = logging.getLogger("modelfleet.scheduler.runtime")


@dataclass(frozen=True)
class RuntimeSettings:
    """What one scheduler process needs (plain values: it is shipped to Ray replicas).

    Exactly one of ``config`` (a static fleet file or folder) and ``kubernetes`` (watch the
    cluster) is used. ``replicas`` is how many scheduler replicas share the traffic (each then
    enforces ``1/replicas`` of every rate limit).
    """

    config: str | None = None
    kubernetes: bool = False
    kubeconfig: str | None = None
    namespace: str | None = None
    scrape_period_s: float = 0.05
    config_poll_s: float = 0.05
    max_body_bytes: int = 32 * 1024 * 1024
    #: After a stream's first token, how often its tokens are written (see proxy.Relay.stream).
    write_interval_s: float = 0.05
    max_attempts: int = 3
    #: How long a connection to an engine may take to open. Generous: on a loopback or pod
    #: network a slow connect means a starved host (SYN retransmits at 1, 3, 7 s), not a gone
    #: engine — a gone one refuses at once, and its poller takes it out of rotation.
    connect_timeout_s: float = 10.0
    replicas: int = 1
    seed: int | None = None
    #: The gRPC control API (:mod:`~modelfleet.scheduler.control_server`): served on
    #: ``control_host:control_port`` when the port is set (0: a free port), refusing calls
    #: without ``control_token``.
    control_port: int | None = None
    control_host: str = "127.0.0.1"
    control_token: str | None = None
    #: Default deadline of a drain whose caller gives none, seconds.
    drain_timeout_s: float = 120.0
    extra: dict[str, Any] = field(default_factory=dict)


class SchedulerRuntime:
    """One scheduler's live state and background tasks (see the module docstring)."""

    def __init__(
        self,
        settings: RuntimeSettings,
        *,
        source: FleetSource | None = None,
        clock: Callable[[], float] = time.monotonic,
        collect_prefix_deltas: bool = False,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.predictors = PredictorCache()
        self._source = source
        self.telemetry = Telemetry(clock)
        seed = settings.seed
        self.core = SchedulerCore(
            clock=clock,
            rng_factory=(lambda name: random.Random(f"{seed}:{name}"))
            if seed is not None
            else None,
            telemetry=self.telemetry,
            predictors=self.predictors,
            share=1.0 / max(1, settings.replicas),
            collect_prefix_deltas=collect_prefix_deltas,
        )
        self.telemetry.add_live(self.core.endpoint_rows)
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.connect_timeout_s, read=None, write=30.0, pool=None
            ),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=512),
        )
        self.proxy = Proxy(
            self.core,
            self.client,
            max_attempts=settings.max_attempts,
            max_body_bytes=settings.max_body_bytes,
            write_interval_s=settings.write_interval_s,
        )
        if self.proxy.migrator is not None:
            self.proxy.migrator.default_deadline_s = settings.drain_timeout_s
        self.control: Any = None
        self.control_port: int | None = None
        self.app: Starlette = build_app(
            self.proxy, ready=lambda: self.ready, render_metrics=self.telemetry.render
        )
        self.ready = False
        self.applied = 0
        self.on_applied: list[Callable[[FleetSnapshot], None]] = []
        self._zmq = zmq.asyncio.Context()
        self._pollers: dict[str, MetricsPoller] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._kv_tasks: dict[str, asyncio.Task[None]] = {}
        self._main: list[asyncio.Task[None]] = []

    # -------------------------------------------------------------- lifecycle
    def _make_source(self) -> FleetSource:
        s = self.settings
        if s.kubernetes:
            from modelfleet.scheduler.kube import KubernetesSource

            return KubernetesSource(kubeconfig=s.kubeconfig, namespace=s.namespace)
        if not s.config:
            raise ValueError("RuntimeSettings: give config (a fleet file) or kubernetes=True")
        first = load_static_fleet(s.config, self.predictors)
        return StaticFileSource(
            s.config, poll_s=s.config_poll_s, predictors=self.predictors, first=first
        )

    async def start(self) -> None:
        source = self._source or self._make_source()
        stream = source.snapshots()
        first = await anext(stream)
        await self.apply(first)
        await self._start_control()
        self.ready = True
        self._spawn_main(self._follow(stream), "fleet")
        self._spawn_main(self._watch_loop(), "loop-lag")

    async def _start_control(self) -> None:
        s = self.settings
        if s.control_port is None:
            return
        from modelfleet.scheduler.control_server import ControlService, start_control_server

        if not s.control_token:
            raise ValueError("the control API needs a token (control_token)")
        migrator = self.proxy.migrator
        assert migrator is not None
        service = ControlService(
            self.core,
            migrator,
            s.control_token,
            scrape_age=self.scrape_age_s,
            queued=lambda: dict(self.proxy.waiting),
        )
        self.control, self.control_port = await start_control_server(
            service, s.control_host, s.control_port
        )
        log.info("control API on %s:%d", s.control_host, self.control_port)

    def _spawn_main(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._main.append(asyncio.get_running_loop().create_task(coro, name=name))

    async def stop(self) -> None:
        if self.control is not None:
            await self.control.stop(grace=1.0)
            self.control = None
        tasks = [*self._main, *self._tasks.values(), *self._kv_tasks.values()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._main.clear()
        self._tasks.clear()
        self._kv_tasks.clear()
        for t in list(self.proxy.background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.client.aclose()
        self._zmq.term()

    async def _watch_loop(self, period_s: float = 0.1) -> None:
        """Sample the event loop's lag: how much later than asked a timer fires."""
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(period_s)
            self.telemetry.loop_lag.observe(max(0.0, loop.time() - t0 - period_s))

    async def _follow(self, stream: AsyncIterator[FleetSnapshot]) -> None:
        try:
            async for snapshot in stream:
                try:
                    await self.apply(snapshot)
                except (ValueError, KeyError) as e:
                    self.telemetry.reloads.labels("rejected").inc()
                    log.error("fleet snapshot from %s not applied: %s", snapshot.source, e)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the fleet source failed; the last fleet keeps serving")

    # ------------------------------------------------------------------ fleet
    async def apply(self, snapshot: FleetSnapshot) -> None:
        """Apply a snapshot and start/stop per-endpoint tasks; the first scrape of new
        endpoints is awaited, so they are placed with real state from the start."""
        change = self.core.apply(snapshot)
        for e in (*change.removed, *change.changed):
            self._stop_endpoint(e.id)
        fresh = [*change.added, *change.changed]
        for e in fresh:
            self._start_poller(e)
        if fresh:
            await asyncio.gather(*(self._pollers[e.id].scrape_once() for e in fresh))
        self._sync_kv(snapshot)
        self.applied += 1
        self.telemetry.reloads.labels("applied").inc()
        for hook in self.on_applied:
            hook(snapshot)

    def _start_poller(self, e: EndpointSpec) -> None:
        poller = MetricsPoller(
            e.id,
            e.url,
            self.client,
            on_metrics=self._on_metrics,
            on_health=self.core.set_healthy,
            on_error=lambda ep: self.telemetry.scrape_errors.labels(ep).inc(),
            period_s=self.settings.scrape_period_s,
        )
        self._pollers[e.id] = poller
        self._tasks[e.id] = asyncio.get_running_loop().create_task(
            poller.run(), name=f"poll:{e.id}"
        )

    def _on_metrics(self, endpoint: str, metrics: EngineMetrics) -> None:
        self.core.update_metrics(endpoint, metrics.endpoint_metrics())

    def _stop_endpoint(self, endpoint: str) -> None:
        self._pollers.pop(endpoint, None)
        for tasks in (self._tasks, self._kv_tasks):
            task = tasks.pop(endpoint, None)
            if task is not None:
                task.cancel()

    def _sync_kv(self, snapshot: FleetSnapshot) -> None:
        """One KV-event subscription per endpoint of a pool whose profile reads KV events."""
        wanted: dict[str, EndpointSpec] = {}
        for state in self.core.pools.values():
            if not state.needs_token_ids:
                continue
            for spec in state.endpoints.values():
                if spec.kv_events:
                    wanted[spec.id] = spec
        for gone in [k for k in self._kv_tasks if k not in wanted]:
            self._kv_tasks.pop(gone).cancel()
        for key, spec in wanted.items():
            if key not in self._kv_tasks:
                self._kv_tasks[key] = asyncio.get_running_loop().create_task(
                    self._subscribe(spec), name=f"kv:{key}"
                )

    async def _subscribe(self, spec: EndpointSpec) -> None:
        delay = 0.2
        while True:
            target = await resolve_kv_endpoint(spec.url, spec.kv_events, self.client)
            if target is not None:
                break
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)
        sub = KvEventSubscriber(
            spec.id,
            target,
            self._zmq,
            on_event=self._on_kv_event,
            on_gap=self._on_kv_gap,
        )
        await sub.run()

    def _on_kv_event(self, endpoint: str, event: object) -> None:
        self.telemetry.kv_events.labels(endpoint).inc()
        self.core.on_kv_event(endpoint, event)

    def _on_kv_gap(self, endpoint: str) -> None:
        found = self.core.find_endpoint(endpoint)
        if found is not None:
            index = found[0].router.profile.prefix_index
            if index is not None:
                index.forget(EndpointId(endpoint))

    def scrape_age_s(self, endpoint: str) -> float | None:
        poller = self._pollers.get(endpoint)
        if poller is None or poller.last_at is None:
            return None
        return asyncio.get_running_loop().time() - poller.last_at
