"""The operator's client of the scheduler's control API (``modelfleet/control/control.proto``).

Three calls: ``Drain`` before a pod goes (streams progress until EMPTY, DEADLINE_EXCEEDED or
UNKNOWN_ENDPOINT), ``ListEndpoints`` to pick the pod with the least in-flight work, and
``Stats`` for the autoscaler. Every call carries ``authorization: Bearer <token>``
(:func:`modelfleet.control.bearer`) and a deadline. The answers are turned into the frozen
values the decisions take (:class:`~modelfleet.operator.decisions.EndpointLoad`,
:class:`~modelfleet.policy.autoscale.Demand`), so nothing downstream touches protobuf.

A scheduler that cannot be reached is not an error the operator stops on: :meth:`drain`
reports ``unavailable`` (the reconciler then scales down anyway, because requests can only
reach the pod through a scheduler — see ``docs/operator.md``), and :meth:`stats` returns None
(the autoscaler then holds the replicas it has).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import grpc

from modelfleet.control import bearer
from modelfleet.control import control_pb2 as pb
from modelfleet.control import control_pb2_grpc as pb_grpc
from modelfleet.control.stats import pool_demand
from modelfleet.operator.decisions import EndpointLoad
from modelfleet.policy.autoscale import Demand

log = logging.getLogger(__name__)

DrainOutcome = Literal["empty", "deadline", "unknown", "unavailable", "refused", "error"]


@dataclass(frozen=True)
class DrainResult:
    """How a drain ended (``outcome``), with the scheduler's last counters."""

    endpoint: str
    outcome: DrainOutcome
    remaining: int = 0
    migrated: int = 0
    completed: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    detail: str = ""

    @property
    def finished(self) -> bool:
        """The scheduler answered with a final state (the pod may go)."""
        return self.outcome in ("empty", "deadline", "unknown")


_FINAL = {pb.EMPTY: "empty", pb.DEADLINE_EXCEEDED: "deadline", pb.UNKNOWN_ENDPOINT: "unknown"}


class SchedulerClient:
    """A channel to the scheduler's control API (module docstring).

    ``call_timeout_s`` bounds the unary calls; a drain is bounded by its own deadline plus
    ``drain_slack_s``.
    """

    def __init__(
        self,
        address: str,
        token: str,
        *,
        call_timeout_s: float = 5.0,
        drain_slack_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self._metadata = bearer(token)
        self.call_timeout_s = call_timeout_s
        self.drain_slack_s = drain_slack_s
        self._clock = clock
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.ControlStub(self._channel)

    def close(self) -> None:
        """Close the channel; calls in flight end with CANCELLED."""
        self._channel.close()

    def drain(self, endpoint: str, deadline_s: float, reason: str) -> DrainResult:
        """Drain ``endpoint`` and wait until the scheduler reports a final state."""
        start = self._clock()
        last = pb.DrainProgress(endpoint=endpoint)
        request = pb.DrainRequest(endpoint=endpoint, deadline_s=deadline_s, reason=reason)
        try:
            for progress in self._stub.Drain(
                request, metadata=self._metadata, timeout=deadline_s + self.drain_slack_s
            ):
                last = progress
                if progress.state in _FINAL:
                    return self._result(endpoint, _FINAL[progress.state], progress)
        except grpc.RpcError as err:
            return self._failure(endpoint, err, last, start)
        return DrainResult(
            endpoint,
            "error",
            remaining=last.remaining,
            elapsed_s=self._clock() - start,
            detail="the stream ended without a final state",
        )

    def undrain(self, endpoint: str) -> bool | None:
        """Let the scheduler place requests on ``endpoint`` again; None if it failed."""
        try:
            resp = self._stub.Undrain(
                pb.UndrainRequest(endpoint=endpoint),
                metadata=self._metadata,
                timeout=self.call_timeout_s,
            )
        except grpc.RpcError as err:
            log.warning("Undrain %s: %s", endpoint, _describe(err))
            return None
        return bool(resp.was_draining)

    def endpoint_loads(self, namespace: str, pool: str) -> dict[str, EndpointLoad] | None:
        """Pod name → its load, for the pool's endpoints in ``namespace``; None if the
        scheduler cannot be asked."""
        try:
            resp = self._stub.ListEndpoints(
                pb.ListEndpointsRequest(pool=pool),
                metadata=self._metadata,
                timeout=self.call_timeout_s,
            )
        except grpc.RpcError as err:
            log.warning("ListEndpoints %s/%s: %s", namespace, pool, _describe(err))
            return None
        out = {}
        for e in resp.endpoints:
            if e.namespace and e.namespace != namespace:
                continue
            pod = e.id.rsplit("/", 1)[-1]
            out[pod] = EndpointLoad(
                inflight_requests=e.inflight_requests,
                running=e.running,
                waiting=e.waiting,
                draining=e.draining,
            )
        return out

    def demand(self, namespace: str, pool: str, window_s: float, percentile: int) -> Demand | None:
        """The pool's load over the window as the autoscaler reads it
        (:func:`modelfleet.control.stats.pool_demand`); None if the scheduler cannot be asked."""
        try:
            resp = self._stub.Stats(
                pb.StatsRequest(namespace=namespace, pool=pool, window_s=window_s),
                metadata=self._metadata,
                timeout=self.call_timeout_s,
            )
        except grpc.RpcError as err:
            log.warning("Stats %s/%s: %s", namespace, pool, _describe(err))
            return None
        return pool_demand(resp, namespace, pool, window_s, percentile)

    # -- helpers --------------------------------------------------------------------------

    def _result(self, endpoint: str, outcome: str, p: pb.DrainProgress) -> DrainResult:
        return DrainResult(
            endpoint,
            outcome,  # type: ignore[arg-type]
            remaining=p.remaining,
            migrated=p.migrated,
            completed=p.completed,
            failed=p.failed,
            elapsed_s=p.elapsed_s,
        )

    def _failure(
        self, endpoint: str, err: grpc.RpcError, last: pb.DrainProgress, start: float
    ) -> DrainResult:
        code = err.code() if hasattr(err, "code") else None
        outcome: DrainOutcome = "error"
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            outcome = "unavailable"
        elif code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            outcome = "refused"
        return DrainResult(
            endpoint,
            outcome,
            remaining=last.remaining,
            migrated=last.migrated,
            completed=last.completed,
            failed=last.failed,
            elapsed_s=self._clock() - start,
            detail=_describe(err),
        )


def _describe(err: grpc.RpcError) -> str:
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    return f"{getattr(code, 'name', code)}: {details}"
