"""A pool's :class:`~modelfleet.policy.autoscale.Demand` from a ``Stats`` answer.

Every client that scales a pool (the operator's autoscaler, ``modelfleet up``) reads the
scheduler's figures the same way: the arrival rate is the sum over the pool's variants; mean
prompt and output tokens and the prefix hit rate are weighted by each variant's arrival rate;
latencies are the pool's at the SLO percentile (p50, p90 or p99 from the scheduler; p95 is
read as p99, the conservative side), weighted by each variant's finished requests. A pool
the answer does not list has no load (an empty window).
"""

from __future__ import annotations

from collections.abc import Callable

from modelfleet.control import control_pb2 as pb
from modelfleet.policy.autoscale import Demand
from modelfleet.policy.autoscale_inputs import demand_from_stats

__all__ = ["pool_demand"]


def pool_demand(
    resp: pb.StatsResponse, namespace: str, pool: str, window_s: float, percentile: int
) -> Demand:
    """The load of ``namespace/pool`` in ``resp`` as the autoscaler reads it (module
    docstring); ``window_s`` is the window asked for, used if the answer does not say."""
    stats = next((p for p in resp.pools if p.pool == pool and p.namespace in ("", namespace)), None)
    if stats is None:
        return demand_from_stats(
            arrival_rate=0, mean_prompt_tokens=0, mean_output_tokens=0, prefix_hit_rate=0,
            queued=0, unplaced=0, inflight=0, window_s=resp.window_s or window_s,
            ttft_s=None, tpot_s=None, samples=0,
        )  # fmt: skip
    rate = sum(v.arrival_rate_rps for v in stats.variants)
    reqs = sum(v.requests for v in stats.variants)

    def weighted(get: Callable[[pb.VariantStats], float], by_rate: bool = True) -> float:
        weights = [(v.arrival_rate_rps if by_rate else v.requests) for v in stats.variants]
        total = float(sum(weights))
        if total <= 0:
            return 0.0
        pairs = zip(weights, stats.variants, strict=True)
        return float(sum(w * get(v) for w, v in pairs)) / total

    def at(lat: pb.LatencyStats) -> float:
        value: float = {50: lat.p50_s, 90: lat.p90_s}.get(percentile, lat.p99_s)
        return value

    measured = reqs > 0
    return demand_from_stats(
        arrival_rate=rate,
        mean_prompt_tokens=weighted(lambda v: v.mean_prompt_tokens),
        mean_output_tokens=weighted(lambda v: v.mean_output_tokens),
        prefix_hit_rate=weighted(lambda v: v.prefix_hit_rate),
        queued=int(stats.queued_requests),
        unplaced=int(stats.unplaced_requests),
        inflight=sum(int(v.inflight_requests) for v in stats.variants),
        window_s=resp.window_s or window_s,
        ttft_s=weighted(lambda v: at(v.ttft), by_rate=False) if measured else None,
        tpot_s=weighted(lambda v: at(v.tpot), by_rate=False) if measured else None,
        samples=int(reqs),
    )
