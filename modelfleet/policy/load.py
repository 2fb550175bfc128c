"""Load signals of an endpoint, and the scheduler-side counters behind the fresh ones.

:func:`load_of` names every load signal a plugin may compare (``params.LoadMetric``) and
:func:`load_consumes` says which data each one reads: scraped engine gauges (``waiting``,
``running-waiting``; tens of milliseconds stale) or this scheduler's own counters (the
``inflight-*`` ones and ``speed-weighted``; always fresh).

:class:`InflightTracker` keeps those counters. The routing host
(:class:`~modelfleet.policy.host.Router`) feeds it from the same hooks in every host, so the
``inflight_*`` fields of the views mean the same thing in the simulator and the scheduler:

* ``inflight_requests`` — routed and not yet completed, aborted or migrated away;
* ``inflight_tokens`` — their prompt tokens plus tokens generated so far;
* ``inflight_prefill_tokens`` — prompt tokens of those still waiting for their first token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from modelfleet.policy.framework import Data
from modelfleet.policy.params import LoadMetric
from modelfleet.policy.types import EndpointId, EndpointView, RequestId, RequestView

_LOADS: Mapping[str, Callable[[EndpointView], float]] = MappingProxyType(
    {
        "waiting": lambda e: e.waiting,
        "running-waiting": lambda e: e.running + e.waiting,
        "inflight-requests": lambda e: e.inflight_requests,
        "inflight-tokens": lambda e: e.inflight_tokens,
        "speed-weighted": lambda e: e.inflight_tokens / max(e.relative_speed, 1e-9),
    }
)


def load_signal(metric: LoadMetric) -> Callable[[EndpointView], float]:
    """The function computing load signal ``metric`` of a view (higher = busier)."""
    return _LOADS[metric]


def load_of(metric: LoadMetric, e: EndpointView) -> float:
    """The load signal ``metric`` of endpoint ``e`` (higher = busier)."""
    return _LOADS[metric](e)


def load_consumes(metric: LoadMetric) -> frozenset[Data]:
    """What load signal ``metric`` reads: engine gauges or this scheduler's counters."""
    if metric in ("waiting", "running-waiting"):
        return frozenset({Data.ENGINE_METRICS})
    return frozenset({Data.INFLIGHT})


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
