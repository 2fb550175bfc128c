"""What the simulator hands the policy: request views, per-pool seeds and shares, the endpoints
a cluster would declare, and the simulator's greedy token model."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from modelfleet.engine.core import EngineConfig
from modelfleet.policy.host import EndpointInfo
from modelfleet.policy.perf import PerfModel
from modelfleet.policy.prior import kv_capacity_tokens, prior_perf_model
from modelfleet.policy.types import EndpointId, RequestId, RequestView
from modelfleet.sim.fleet import EngineSpec, declared_hardware, fit_perf_model, relative_speeds
from modelfleet.sim.run import SimConfig
from modelfleet.sim.traces import Trace, TraceRequest

__all__ = [
    "build_request_view",
    "endpoint_infos",
    "engine_configs",
    "pool_models",
    "pool_rng_seed",
    "pool_shares",
    "sim_next_token",
]

_VOCAB_SPAN = 127_000


def sim_next_token(context: Sequence[int]) -> int:
    """Greedy 'model' of the simulator: a pure O(1) function of the context (last id, length).

    It is a function of the full context in the sense the migration needs (a continuation from
    any cut point reproduces the same tokens) and never produces the ids below 1000.
    """
    return 1_000 + (context[-1] * 2_654_435_761 + len(context) * 40_503) % _VOCAB_SPAN


def build_request_view(
    req: TraceRequest,
    chain: Sequence[int],
    chain_block_size: int,
    config: SimConfig,
    *,
    pool: str,
    model: str,
) -> RequestView:
    """The RequestView a scheduler would build for a trace request.

    ``block_hashes`` is the given chain (trace block ids, or the engine's vLLM chain when the
    policy reads KV events); ``token_ids`` carries the trace block ids as coarse "tokens" for
    policies that match raw prompts (the cache-aware radix tree), one symbol per
    ``chain_block_size``-token trace block — materialising 145 M real token ids as text would
    dominate the run time.
    """
    return RequestView(
        id=RequestId(req.request_id),
        pool=pool,
        model=model,
        prompt_tokens=req.input_tokens,
        token_ids=req.block_ids,
        block_hashes=tuple(chain),
        block_size=chain_block_size,
        session_id=req.session_id,
        headers={"x-session-id": req.session_id} if req.session_id else {},
        slo_class=config.slo_class,
        ttft_slo_s=config.ttft_slo_s,
        tpot_slo_s=config.tpot_slo_s,
        max_tokens=req.output_tokens,
        arrival_s=req.arrival_s,
    )


def pool_rng_seed(seed: int, index: int) -> int:
    """The RNG seed of the policy of the ``index``-th pool (the run's seed for the first)."""
    return seed if index == 0 else seed * 1_000_003 + index


def pool_shares(
    fleet: Sequence[EngineSpec], prior_error: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Model-size-aware shares of traffic per pool, for :func:`~.traces.assign_pools`.

    A pool's share is its declared prefill capacity (sum over its engines of prefill speed x
    GPUs) over its model's parameter count: a Llama-3-70B replica on 4 GPUs serves about as
    many prompt tokens per second as a Llama-3-8B one on 2, so a pool of each gets shares in
    that proportion and every pool is about equally loaded. Declared numbers only.
    """
    cap: dict[str, float] = {}
    for spec in fleet:
        hw = declared_hardware(spec, prior_error=prior_error)
        cap[spec.pool] = cap.get(spec.pool, 0.0) + hw.prefill_speed * hw.gpus / hw.model_params
    total = sum(cap.values())
    return {p: c / total for p, c in cap.items()}


def pool_models(trace: Trace, fleet: Sequence[EngineSpec]) -> dict[str, str]:
    """Each pool's model, in fleet order; refuses fleets and traces the simulator cannot run.

    Engine ids are unique, a pool serves one model, a request names a pool of the fleet, and
    with several pools every request names one (``traces.assign_pools``).
    """
    if not fleet:
        raise ValueError("fleet must contain at least one engine")
    ids = [s.id for s in fleet]
    if len(set(ids)) != len(ids):
        raise ValueError(f"engine ids must be unique, got {ids}")
    models: dict[str, str] = {}
    for spec in fleet:
        if models.setdefault(spec.pool, spec.model) != spec.model:
            raise ValueError(f"pool {spec.pool!r} has engines of two models")
    unknown = sorted(set(trace.pools()) - set(models))
    if unknown:
        raise ValueError(f"trace requests name pools {unknown}, the fleet has {list(models)}")
    if len(models) > 1 and any(r.pool is None for r in trace.requests):
        raise ValueError(
            f"the fleet has pools {list(models)}: every request must name its pool "
            "(traces.assign_pools(trace, pool_shares(fleet)))"
        )
    return models


def engine_configs(fleet: Sequence[EngineSpec], config: SimConfig) -> list[EngineConfig]:
    """Each engine's configuration.

    By default (``config.fast_block_hash``) the engines run ``prefix_caching_hash_algo=
    "builtin"``: Python's tuple hash chained like vLLM's recipe, the same equality structure
    at a fraction of sha256's cost (``bench/results/sim-speed.md``; tested to give the same
    run). Policies that consume KV events still get the engines' own chain per request.
    """
    out = []
    for spec in fleet:
        ecfg = spec.engine_config()
        if config.fast_block_hash:
            ecfg = dataclasses.replace(ecfg, prefix_caching_hash_algo="builtin")
        out.append(ecfg)
    return out


def endpoint_infos(
    fleet: Sequence[EngineSpec],
    configs: Sequence[EngineConfig],
    config: SimConfig,
    *,
    mean_output_tokens: float,
) -> list[EndpointInfo]:
    """What the routing host is told of each engine: only what a cluster declares.

    The prior latency model, relative speed and prefix-index capacity come from the declared
    hardware (possibly wrong on purpose, ``config.prior_error``); ``perf_model="oracle"`` fits
    the engines' own timing model instead (a labelled upper bound). Engines with the same
    declared hardware and configuration share one model object.
    """
    speeds = relative_speeds(fleet, config.prior_error)
    cache: dict[tuple[object, ...], PerfModel] = {}
    out = []
    for spec, ecfg in zip(fleet, configs, strict=True):
        hw = declared_hardware(
            spec, prior_error=config.prior_error, mean_output_tokens=mean_output_tokens
        )
        key = (
            ecfg.accelerator,
            ecfg.model,
            ecfg.tensor_parallel_size,
            ecfg.max_num_batched_tokens,
            ecfg.max_num_seqs,
            hw,
        )
        if key not in cache:
            if config.perf_model == "oracle":
                cache[key] = fit_perf_model(ecfg, mean_output_tokens=mean_output_tokens)
            else:
                cache[key] = prior_perf_model(hw)
        out.append(
            EndpointInfo(
                id=EndpointId(spec.id),
                pool=spec.pool,
                model=spec.model,
                accelerator=spec.accelerator,
                relative_speed=speeds[spec.id],
                perf=cache[key],
                tensor_parallel_size=spec.tensor_parallel_size,
                kv_capacity_tokens=kv_capacity_tokens(hw) if config.size_prefix_index else 0,
            )
        )
    return out
