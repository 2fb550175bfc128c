"""The scheduler's gRPC control API (``modelfleet/control/control.proto``), served in-process.

:class:`ControlService` answers the operator from the live state of one scheduler runtime, on
the runtime's own event loop (``grpc.aio``), so every call reads and changes the same
:class:`~modelfleet.scheduler.core.SchedulerCore` the request path uses, without locks:

* ``Drain(endpoint, deadline_s, reason)`` marks the endpoint draining (no new placements),
  moves every running request it can elsewhere by live migration
  (:meth:`~modelfleet.scheduler.migrate.Migrator.drain`) and streams ``DrainProgress`` until
  the endpoint is empty (``EMPTY``), the deadline passes (``DEADLINE_EXCEEDED``; what is left
  finishes where it is) or the endpoint is unknown (``UNKNOWN_ENDPOINT``). The endpoint stays
  drained until ``Undrain`` (or until it leaves the fleet).
* ``Undrain`` places on the endpoint again (``was_draining``).
* ``ListEndpoints`` — every endpoint with its health, drain flag, last scrape and this
  scheduler's in-flight counts.
* ``Stats`` — per pool, variant and SLO class over a window (default 60 s): placement rate,
  mean prompt/output tokens, prefix hit rate, TTFT/TPOT percentiles, SLO attainment, errors,
  shedding and queueing: what ``modelfleet.operator``'s autoscaler reads.

Every call must carry ``authorization: Bearer <token>`` with the configured token; anything
else is refused with ``UNAUTHENTICATED`` before the call does anything. The token is compared
in constant time.
"""

from __future__ import annotations

import hmac
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable

import grpc
from grpc import aio

from modelfleet.control import AUTH_METADATA_KEY
from modelfleet.control import control_pb2 as pb
from modelfleet.control import control_pb2_grpc as pb_grpc
from modelfleet.scheduler.core import SchedulerCore
from modelfleet.scheduler.migrate import Migrator
from modelfleet.scheduler.telemetry import FinishedRecord, percentile

__all__ = ["DEFAULT_WINDOW_S", "ControlService", "start_control_server"]

log = logging.getLogger("modelfleet.scheduler.control")

DEFAULT_WINDOW_S = 60.0

_STATES = {
    "draining": pb.DRAINING,
    "empty": pb.EMPTY,
    "deadline": pb.DEADLINE_EXCEEDED,
    "unknown": pb.UNKNOWN_ENDPOINT,
}


def _latency(values: list[float]) -> pb.LatencyStats:
    values = sorted(values)
    if not values:
        return pb.LatencyStats()
    return pb.LatencyStats(
        count=len(values),
        p50_s=percentile(values, 50),
        p90_s=percentile(values, 90),
        p99_s=percentile(values, 99),
        mean_s=sum(values) / len(values),
    )


class ControlService(pb_grpc.ControlServicer):
    """The ``Control`` service over one runtime (module docstring)."""

    def __init__(
        self,
        core: SchedulerCore,
        migrator: Migrator,
        token: str,
        *,
        scrape_age: Callable[[str], float | None] = lambda _ep: None,
        queued: Callable[[], dict[tuple[str, str, str], int]] = dict,
    ) -> None:
        if not token:
            raise ValueError("the control API needs a non-empty token")
        self.core = core
        self.migrator = migrator
        self._expected = f"Bearer {token}".encode()
        self.scrape_age = scrape_age
        self.queued = queued

    async def _authorise(self, context: aio.ServicerContext) -> None:
        got = ""
        for key, value in context.invocation_metadata() or ():
            if key == AUTH_METADATA_KEY:
                got = value if isinstance(value, str) else value.decode()
        if not hmac.compare_digest(got.encode(), self._expected):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong bearer token (metadata 'authorization: Bearer <token>')",
            )

    # ------------------------------------------------------------------ Drain
    async def Drain(
        self, request: pb.DrainRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.DrainProgress]:
        await self._authorise(context)
        if request.deadline_s < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"deadline_s must be >= 0 (0: the default), got {request.deadline_s}",
            )
        log.info(
            "drain %s (%s, deadline %.1f s)", request.endpoint, request.reason, request.deadline_s
        )
        async for p in self.migrator.drain(
            request.endpoint, request.deadline_s, request.reason or "manual"
        ):
            yield pb.DrainProgress(
                endpoint=p.endpoint,
                state=_STATES[p.state],
                remaining=p.remaining,
                migrated=p.migrated,
                completed=p.completed,
                failed=p.failed,
                elapsed_s=p.elapsed_s,
            )

    # ---------------------------------------------------------------- Undrain
    async def Undrain(
        self, request: pb.UndrainRequest, context: aio.ServicerContext
    ) -> pb.UndrainResponse:
        await self._authorise(context)
        was = self.core.set_draining(request.endpoint, False)
        if was is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown endpoint {request.endpoint!r}")
        return pb.UndrainResponse(was_draining=bool(was))

    # ---------------------------------------------------------- ListEndpoints
    async def ListEndpoints(
        self, request: pb.ListEndpointsRequest, context: aio.ServicerContext
    ) -> pb.ListEndpointsResponse:
        await self._authorise(context)
        out = []
        for key, state in sorted(self.core.pools.items()):
            if request.pool and key[1] != request.pool:
                continue
            for view in state.router.views():
                spec = state.endpoints.get(view.id)
                if spec is None:
                    continue
                own = state.router.tracker.counters(view.id)
                age = self.scrape_age(spec.id)
                out.append(
                    pb.Endpoint(
                        id=spec.id,
                        address=spec.url,
                        namespace=key[0],
                        pool=key[1],
                        variant=spec.variant,
                        model=state.served_model,
                        accelerator=view.accelerator,
                        healthy=view.healthy,
                        draining=view.draining,
                        running=view.running,
                        waiting=view.waiting,
                        kv_cache_usage=view.kv_cache_usage,
                        inflight_requests=own[0],
                        inflight_tokens=own[1],
                        scrape_age_s=age if age is not None else 0.0,
                    )
                )
        return pb.ListEndpointsResponse(endpoints=out)

    # ------------------------------------------------------------------ Stats
    async def Stats(
        self, request: pb.StatsRequest, context: aio.ServicerContext
    ) -> pb.StatsResponse:
        await self._authorise(context)
        if request.window_s < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"window_s must be >= 0 (0: {DEFAULT_WINDOW_S:.0f} s), got {request.window_s}",
            )
        return self.stats(request.namespace, request.pool, request.window_s or DEFAULT_WINDOW_S)

    def stats(self, namespace: str, pool: str, window_s: float) -> pb.StatsResponse:
        """The ``Stats`` answer (no I/O; also what a test or a CLI can call directly)."""
        tel = self.core.telemetry
        records: list[FinishedRecord] = []
        start = self.core.clock() - window_s
        if tel is not None:
            records, start = tel.window.since(window_s)
        span = max(1e-9, self.core.clock() - start)
        window = tel.window if tel is not None else None
        placed: dict[tuple[str, str, str], int] = defaultdict(int)
        unplaced: dict[tuple[str, str], int] = defaultdict(int)
        actions: dict[tuple[str, str, str, str], int] = defaultdict(int)
        if window is not None:
            for at, ns, p, variant in window.placed:
                if at >= start:
                    placed[(ns, p, variant)] += 1
            for at, ns, p in window.unplaced:
                if at >= start:
                    unplaced[(ns, p)] += 1
            for at, ns, p, cls, action in window.admission:
                if at >= start:
                    actions[(ns, p, cls, action)] += 1
        queued = self.queued()
        by_variant: dict[tuple[str, str, str], list[FinishedRecord]] = defaultdict(list)
        by_class: dict[tuple[str, str, str], list[FinishedRecord]] = defaultdict(list)
        for r in records:
            by_variant[(r.namespace, r.pool, r.variant)].append(r)
            by_class[(r.namespace, r.pool, r.slo_class)].append(r)
        pools = []
        for (ns, name), state in sorted(self.core.pools.items()):
            if (namespace and ns != namespace) or (pool and name != pool):
                continue
            views = state.router.views()
            variants = []
            for v in state.spec.spec.variants:
                eps = [x for x in views if state.variant_of(x.id) == v.name]
                recs = by_variant.get((ns, name, v.name), [])
                prompt = sum(r.prompt_tokens for r in recs)
                inflight = sum(state.router.tracker.counters(x.id)[0] for x in eps)
                variants.append(
                    pb.VariantStats(
                        variant=v.name,
                        accelerator=v.accelerator_profile,
                        endpoints=len(eps),
                        ready_endpoints=sum(1 for x in eps if x.healthy and not x.draining),
                        arrival_rate_rps=placed.get((ns, name, v.name), 0) / span,
                        mean_prompt_tokens=prompt / len(recs) if recs else 0.0,
                        mean_output_tokens=(
                            sum(r.output_tokens for r in recs) / len(recs) if recs else 0.0
                        ),
                        running=float(sum(x.running for x in eps)),
                        waiting=float(sum(x.waiting for x in eps)),
                        kv_cache_usage=(
                            sum(x.kv_cache_usage for x in eps) / len(eps) if eps else 0.0
                        ),
                        prefix_hit_rate=(
                            sum(r.cached_tokens for r in recs) / prompt if prompt else 0.0
                        ),
                        ttft=_latency([r.ttft_s for r in recs if r.ttft_s is not None]),
                        tpot=_latency([r.tpot_s for r in recs if r.tpot_s is not None]),
                        slo_attainment=(
                            sum(1 for r in recs if r.slo_met) / len(recs) if recs else 0.0
                        ),
                        requests=len(recs),
                        errors=sum(1 for r in recs if r.error),
                        inflight_requests=inflight,
                    )
                )
            class_names = {c for (n2, p2, c) in by_class if (n2, p2) == (ns, name)}
            class_names |= {c for (n2, p2, c, _a) in actions if (n2, p2) == (ns, name)}
            class_names |= {c for (n2, p2, c) in queued if (n2, p2) == (ns, name)}
            classes = []
            for cls in sorted(class_names):
                recs = by_class.get((ns, name, cls), [])
                classes.append(
                    pb.ClassStats(
                        slo_class=cls,
                        requests=len(recs),
                        slo_attainment=(
                            sum(1 for r in recs if r.slo_met) / len(recs) if recs else 0.0
                        ),
                        shed=actions.get((ns, name, cls, "shed"), 0),
                        downgraded=actions.get((ns, name, cls, "downgrade"), 0),
                        queued=queued.get((ns, name, cls), 0),
                    )
                )
            pools.append(
                pb.PoolStats(
                    namespace=ns,
                    pool=name,
                    model=state.served_model,
                    variants=variants,
                    classes=classes,
                    unplaced_requests=unplaced.get((ns, name), 0),
                    queued_requests=sum(
                        n for (n2, p2, _c), n in queued.items() if (n2, p2) == (ns, name)
                    ),
                )
            )
        return pb.StatsResponse(window_s=window_s, pools=pools)


async def start_control_server(
    service: ControlService, host: str, port: int
) -> tuple[aio.Server, int]:
    """Serve ``service`` on ``host:port`` (0: a free port); returns the server and its port."""
    server = aio.server()
    pb_grpc.add_ControlServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"the control API cannot listen on {host}:{port}")
    await server.start()
    return server, bound
