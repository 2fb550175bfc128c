"""A hand-written fake of the scheduler's control service: a real gRPC server on loopback.

:class:`FakeControl` implements ``modelfleet.control.v1.Control`` (``control.proto``) the way
the scheduler promises to: it refuses a call without ``authorization: Bearer <token>``
(UNAUTHENTICATED), streams ``Drain`` progress until a final state, and answers
``ListEndpoints`` and ``Stats`` from state the test sets. Tests script it:

- ``endpoints[id] = Endpoint(...)``: what ListEndpoints returns (``id`` = ``<ns>/<pod>``);
- ``drain_plans[id] = [(state, remaining, delay_s), ...]``: the progress messages a Drain
  of that endpoint streams (default: one EMPTY at once; an unknown endpoint gets
  UNKNOWN_ENDPOINT unless it is in ``endpoints``);
- ``stats[(namespace, pool)] = PoolStats(...)``: what Stats returns for a pool.

Every call is recorded in ``calls`` (method, request) for assertions. Use it as a context
manager; :meth:`stop` waits for the server's threads, so a test that leaks a call in flight
fails its fixture.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from types import TracebackType
from typing import Any, Self

import grpc

from modelfleet.control import AUTH_METADATA_KEY
from modelfleet.control import control_pb2 as pb
from modelfleet.control import control_pb2_grpc as pb_grpc

Step = tuple[int, int, float]  # (DrainState, remaining, seconds to wait before sending)


class FakeControl(pb_grpc.ControlServicer):  # type: ignore[misc]
    """The fake (module docstring). ``token`` is the only one accepted."""

    def __init__(self, token: str = "test-token") -> None:
        self.token = token
        self.endpoints: dict[str, pb.Endpoint] = {}
        self.drain_plans: dict[str, list[Step]] = {}
        self.stats: dict[tuple[str, str], pb.PoolStats] = {}
        self.window_s = 60.0
        self.calls: list[tuple[str, Any]] = []
        self.draining: set[str] = set()
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self.address = ""

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> str:
        self._executor = futures.ThreadPoolExecutor(
            max_workers=8, thread_name_prefix="fake-control"
        )
        server = grpc.server(self._executor)
        pb_grpc.add_ControlServicer_to_server(self, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        self.address = f"127.0.0.1:{port}"
        return self.address

    def stop(self) -> None:
        """Stop serving and join the server's threads (calls in flight get 2 s to end)."""
        if self._server is not None:
            self._server.stop(grace=2).wait(10)
            self._server = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def calls_of(self, method: str) -> list[Any]:
        with self._lock:
            return [req for m, req in self.calls if m == method]

    # -- helpers --------------------------------------------------------------------------

    def _authorised(self, context: grpc.ServicerContext) -> bool:
        meta = dict(context.invocation_metadata())
        if meta.get(AUTH_METADATA_KEY) != f"Bearer {self.token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
            return False
        return True

    def _record(self, method: str, request: Any) -> None:
        with self._lock:
            self.calls.append((method, request))

    # -- the service ----------------------------------------------------------------------

    def Drain(
        self, request: pb.DrainRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DrainProgress]:
        self._authorised(context)
        self._record("Drain", request)
        ep = request.endpoint
        if ep in self.drain_plans:
            plan = self.drain_plans[ep]
        elif ep in self.endpoints:
            plan = [(pb.EMPTY, 0, 0.0)]
        else:
            plan = [(pb.UNKNOWN_ENDPOINT, 0, 0.0)]
        with self._lock:
            self.draining.add(ep)
        start = time.monotonic()
        for state, remaining, delay in plan:
            if delay:
                time.sleep(delay)
            if not context.is_active():
                return
            yield pb.DrainProgress(
                endpoint=ep,
                state=state,
                remaining=remaining,
                migrated=0 if state != pb.EMPTY else 1,
                elapsed_s=time.monotonic() - start,
            )

    def Undrain(
        self, request: pb.UndrainRequest, context: grpc.ServicerContext
    ) -> pb.UndrainResponse:
        self._authorised(context)
        self._record("Undrain", request)
        with self._lock:
            was = request.endpoint in self.draining
            self.draining.discard(request.endpoint)
        return pb.UndrainResponse(was_draining=was)

    def ListEndpoints(
        self, request: pb.ListEndpointsRequest, context: grpc.ServicerContext
    ) -> pb.ListEndpointsResponse:
        self._authorised(context)
        self._record("ListEndpoints", request)
        eps = [e for e in self.endpoints.values() if not request.pool or e.pool == request.pool]
        return pb.ListEndpointsResponse(endpoints=eps)

    def Stats(self, request: pb.StatsRequest, context: grpc.ServicerContext) -> pb.StatsResponse:
        self._authorised(context)
        self._record("Stats", request)
        pools = [
            s
            for (ns, pool), s in self.stats.items()
            if (not request.namespace or ns == request.namespace)
            and (not request.pool or pool == request.pool)
        ]
        return pb.StatsResponse(window_s=request.window_s or self.window_s, pools=pools)


def endpoint(
    namespace: str, pod: str, pool: str, variant: str, *, inflight: int = 0, running: int = 0
) -> pb.Endpoint:
    """An Endpoint as the scheduler reports one engine pod."""
    return pb.Endpoint(
        id=f"{namespace}/{pod}",
        namespace=namespace,
        pool=pool,
        variant=variant,
        healthy=True,
        inflight_requests=inflight,
        running=running,
    )


def pool_stats(
    namespace: str,
    pool: str,
    *,
    rate: float = 0.0,
    prompt: float = 1000.0,
    output: float = 200.0,
    queued: int = 0,
    unplaced: int = 0,
    ttft_p90: float = 0.0,
    tpot_p90: float = 0.0,
    requests: int = 0,
    variant: str = "v",
) -> pb.PoolStats:
    """Stats of a pool with its traffic on one variant."""
    return pb.PoolStats(
        namespace=namespace,
        pool=pool,
        variants=[
            pb.VariantStats(
                variant=variant,
                arrival_rate_rps=rate,
                mean_prompt_tokens=prompt,
                mean_output_tokens=output,
                ttft=pb.LatencyStats(count=requests, p90_s=ttft_p90, p99_s=ttft_p90),
                tpot=pb.LatencyStats(count=requests, p90_s=tpot_p90, p99_s=tpot_p90),
                requests=requests,
            )
        ],
        queued_requests=queued,
        unplaced_requests=unplaced,
    )
