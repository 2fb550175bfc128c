"""Scheduler-side load counters for :class:`~.types.EndpointView` (fresh, unlike scrapes).

Both hosts (simulator and live scheduler) feed one :class:`InflightTracker` from the same hooks
so the ``inflight_*`` fields they put in the views mean the same thing:

* ``inflight_requests`` — routed and not yet completed, aborted or migrated away;
* ``inflight_tokens`` — their prompt tokens plus tokens generated so far;
* ``inflight_prefill_tokens`` — prompt tokens of those still waiting for their first token.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelfleet.policy.types import EndpointId, RequestId, RequestView


@dataclass
class _Entry:
    endpoint: EndpointId
    prompt: int
    generated: int = 0
    first_token: bool = False


@dataclass
class _Counts:
    requests: int = 0
    tokens: int = 0
    prefill: int = 0


class InflightTracker:
    def __init__(self) -> None:
        self._req: dict[RequestId, _Entry] = {}
        self._ep: dict[EndpointId, _Counts] = {}

    def _counts(self, ep: EndpointId) -> _Counts:
        c = self._ep.get(ep)
        if c is None:
            c = self._ep[ep] = _Counts()
        return c

    def on_routed(self, request: RequestView, endpoint: EndpointId) -> None:
        if request.id in self._req:
            self.on_completed(request.id)
        self._req[request.id] = _Entry(endpoint, request.prompt_tokens)
        c = self._counts(endpoint)
        c.requests += 1
        c.tokens += request.prompt_tokens
        c.prefill += request.prompt_tokens

    def on_first_token(self, request_id: RequestId) -> None:
        e = self._req.get(request_id)
        if e is None or e.first_token:
            return
        e.first_token = True
        self._counts(e.endpoint).prefill -= e.prompt

    def on_token(self, request_id: RequestId, n: int = 1) -> None:
        e = self._req.get(request_id)
        if e is None:
            return
        e.generated += n
        self._counts(e.endpoint).tokens += n

    def on_completed(self, request_id: RequestId) -> None:
        e = self._req.pop(request_id, None)
        if e is None:
            return
        c = self._counts(e.endpoint)
        c.requests -= 1
        c.tokens -= e.prompt + e.generated
        if not e.first_token:
            c.prefill -= e.prompt

    def on_migrated(self, request_id: RequestId, src: EndpointId, dst: EndpointId) -> None:
        """The request now runs on ``dst``; it re-prefills prompt + generated there."""
        e = self._req.get(request_id)
        if e is None or e.endpoint != src:
            return
        self.on_completed(request_id)
        ctx = e.prompt + e.generated
        self._req[request_id] = _Entry(dst, ctx)
        c = self._counts(dst)
        c.requests += 1
        c.tokens += ctx
        c.prefill += ctx

    def counters(self, endpoint: EndpointId) -> tuple[int, int, int]:
        """(inflight_requests, inflight_tokens, inflight_prefill_tokens) of ``endpoint``."""
        c = self._ep.get(endpoint)
        return (0, 0, 0) if c is None else (c.requests, c.tokens, c.prefill)

    def endpoint_of(self, request_id: RequestId) -> EndpointId | None:
        e = self._req.get(request_id)
        return None if e is None else e.endpoint
