"""Built-in filters: each keeps a subset of the candidates, in input order.

A filter only reads :class:`~.framework.CycleState` and the views. None of these filters ever
returns an empty list on a non-empty input except ``healthy`` (when every endpoint is unhealthy
or draining, which the profile reports as :class:`~.types.NoEndpointError` naming it); the
others fail open, keeping every candidate when their rule would remove all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from modelfleet.policy import params as P
from modelfleet.policy.framework import CycleState, Data, Plugin
from modelfleet.policy.types import EndpointView


class HealthyFilter(Plugin):
    """Keeps endpoints that are healthy and not draining."""

    consumes = frozenset[Data]()

    def filter(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[EndpointView]:
        return [e for e in endpoints if e.healthy and not e.draining]


class BoundedLoadFilter(Plugin):
    """Drops endpoints whose load is above ``c`` times their speed-weighted fair share.

    Bound for endpoint e: ``ceil(c · (L + r) · s_e / S) + slack`` where L is the total load,
    r the request's own load (1 request or its prompt tokens), s_e the relative speed and S the
    sum of speeds; e is kept if ``load_e + r <= bound`` (slack is in requests, or in units of
    the request's tokens for the token metric). Counting in requests, the least loaded endpoint
    per unit of speed always passes (c ≥ 1 and the ceiling); if nothing passes (possible with
    the token metric, slack 0 and a request large against the pool's load) every candidate is
    kept. So the filter never empties the set; it only stops affinity scorers from hot-spotting.
    """

    consumes = frozenset({Data.INFLIGHT})

    def __init__(self, p: P.BoundedLoadParams) -> None:
        self.p = p

    def filter(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[EndpointView]:
        if len(endpoints) <= 1:
            return list(endpoints)
        by_requests = self.p.metric == "inflight-requests"
        own = 1 if by_requests else max(1, state.request.prompt_tokens)
        slack = self.p.min_slack * own
        speed_sum = sum(e.relative_speed for e in endpoints)
        if speed_sum <= 0:
            return list(endpoints)
        if by_requests:
            total = sum(e.inflight_requests for e in endpoints)
        else:
            total = sum(e.inflight_tokens for e in endpoints)
        unit = self.p.max_load_factor * (total + own) / speed_sum
        # integer load L is within the bound iff L <= ceil(x) + slack, i.e. L - slack - 1 < x
        shift = own - slack - 1
        if by_requests:
            kept = [e for e in endpoints if e.inflight_requests + shift < unit * e.relative_speed]
        else:
            kept = [e for e in endpoints if e.inflight_tokens + shift < unit * e.relative_speed]
        return kept or list(endpoints)


class ShortlistFilter(Plugin):
    """Keeps at most ``k`` candidates: the longest prefix hits plus the least loaded.

    Up to ``ceil(prefix_share·k)`` endpoints with the longest predicted prefix hit, then the
    least loaded (in-flight tokens per unit of relative speed) fill the list to ``k``. This is
    the "power of k choices" idea applied to placement: the scorers that follow only look at
    candidates that can win on cache or on load, which divides their per-endpoint cost by
    ``n/k`` on large pools (64 endpoints → 16) at little loss, since an endpoint with neither a
    hit nor spare capacity rarely wins. Order of the input is kept; never returns empty.
    """

    consumes = frozenset({Data.PREFIX_HITS, Data.INFLIGHT})

    def __init__(self, p: P.ShortlistParams) -> None:
        self.p = p

    def filter(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[EndpointView]:
        k = self.p.k
        n = len(endpoints)
        if n <= k:
            return list(endpoints)
        hits = state.prefix_hits()
        keep: set[int] = set()
        if hits:
            with_hit = [(hits[e.id], i) for i, e in enumerate(endpoints) if e.id in hits]
            with_hit.sort(reverse=True)
            quota = math.ceil(self.p.prefix_share * k)
            keep.update(i for _, i in with_hit[:quota])
        if len(keep) < k:
            loads = [e.inflight_tokens / (e.relative_speed or 1e-9) for e in endpoints]
            for i in sorted(range(n), key=loads.__getitem__):
                if len(keep) >= k:
                    break
                keep.add(i)
        return [endpoints[i] for i in sorted(keep)]


class SloFeasibleFilter(Plugin):
    """Keeps endpoints predicted to meet the request's TTFT target; all if none can.

    Failing open (keep all) leaves the choice between queueing, shedding and downgrading to
    admission (``modelfleet.policy.admission``), which sees the same predictions.
    """

    consumes = frozenset({Data.PERF_MODEL, Data.PREFIX_HITS, Data.ENGINE_METRICS, Data.INFLIGHT})

    def __init__(self, p: P.SloFeasibleParams) -> None:
        self.p = p

    def filter(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[EndpointView]:
        target = state.request.ttft_slo_s
        if target is None:
            return list(endpoints)
        limit = target * self.p.slack
        kept = []
        for e in endpoints:
            pred = state.predicted_ttft(e)
            if pred is None or pred <= limit:
                kept.append(e)
        return kept or list(endpoints)
