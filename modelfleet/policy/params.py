"""Parameter models of every built-in plugin (camelCase on the wire, unknown fields refused).

Each field documents its unit, default and range; the registry validates a plugin's
``parameters`` against its model once, when the profile is built, so a typo in a RoutingPolicy
is an error naming the plugin and the field, never a silently ignored knob.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Params(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class NoParams(Params):
    """This plugin takes no parameters."""


LoadMetric = Literal[
    "waiting", "running-waiting", "inflight-requests", "inflight-tokens", "speed-weighted"
]


class PrefixCacheParams(Params):
    """``prefix-cache`` scorer: ``w·min(1, hit/scale)² + (1−w)·hit/prompt`` (llm-d's form)."""

    length_weight: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="w: share of the absolute-length term (unitless, default 0.5, range 0..1).",
    )
    match_length_scale_tokens: int = Field(
        8192,
        gt=0,
        description="scale: hit length that earns the full absolute term (tokens, default 8192).",
    )


class QueueParams(Params):
    """``queue`` scorer: min-max normalised load, 1 for the least loaded (1 for all if equal)."""

    metric: LoadMetric = Field(
        "waiting",
        description=(
            "Load signal (default 'waiting' = vllm:num_requests_waiting, as llm-d's queue-scorer)."
            " 'running-waiting' = running+waiting; 'inflight-requests'/'inflight-tokens' = this"
            " scheduler's counters; 'speed-weighted' = inflight tokens / relative speed."
        ),
    )


class SloHeadroomParams(Params):
    """``slo-headroom`` scorer: predicted TTFT/TPOT against the request's SLO targets."""

    tpot_weight: float = Field(
        0.25, ge=0.0, le=1.0, description="Share of the TPOT term (unitless, default 0.25, 0..1)."
    )
    relative_weight: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description=(
            "Share of the relative term best/predicted, which keeps a gradient when every"
            " candidate misses the target (unitless, default 0.5, 0..1)."
        ),
    )
    ttft_floor: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description=(
            "f: the TTFT relative term compares (best + f·target)/(pred + f·target) instead of"
            " best/pred, so TTFTs far below the target count as nearly equal (fraction of the"
            " TTFT target, default 0 = plain best/pred, range 0..10; no effect without a"
            " target)."
        ),
    )
    tpot_floor: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description=(
            "The same floor for the TPOT relative term, so an endpoint that decodes slower but"
            " well within the TPOT target is not ranked like one that misses it (fraction of"
            " the TPOT target, default 0, range 0..10)."
        ),
    )


class SessionAffinityParams(Params):
    """``session-affinity`` scorer: consistent hashing with bounded loads (Mirrokni et al.)."""

    header: str = Field(
        "x-session-id",
        min_length=1,
        description="Header carrying the session key (lower-case; default x-session-id).",
    )
    max_load_factor: float = Field(
        1.25,
        ge=1.0,
        le=10.0,
        description=(
            "c: an endpoint may hold at most ceil(c·(total+1)·speed/Σspeed) in-flight requests"
            " before its sessions spill to the next endpoint on the ring (default 1.25, 1..10)."
        ),
    )
    virtual_nodes: int = Field(
        100, ge=1, le=1000, description="Ring points per endpoint (count, default 100)."
    )
    max_sessions: int = Field(
        100_000, ge=1, description="Sessions remembered, LRU (count, default 100000)."
    )


class ColdSpreadParams(Params):
    """``cold-spread`` scorer: spread requests with no prefix hit anywhere (no-hit LRU)."""

    neutral_score: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Score of every candidate for a request with a hit somewhere (default 0.5).",
    )
    min_hit_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "A request counts as cold unless its best hit on a candidate exceeds this share of"
            " its prompt, so a shared system prompt alone does not make every request warm"
            " (unitless, default 0 = any hit is warm, range 0..<1)."
        ),
    )
    spread_by: Literal["recency", "prompt-tokens"] = Field(
        "recency",
        description=(
            "How cold requests are spread: 'recency' (the endpoint that has gone longest without"
            " a cold request first, llm-d's no-hit LRU) or 'prompt-tokens' (the endpoint with the"
            " fewest uncached prompt tokens routed to it recently per unit of relative speed"
            " first: balances prefill work). Default 'recency'."
        ),
    )
    half_life_s: float = Field(
        30.0,
        gt=0.0,
        le=3600.0,
        description=(
            "Half-life of the routed prompt tokens counted by spreadBy 'prompt-tokens' (seconds,"
            " default 30, range >0..3600)."
        ),
    )


class BoundedLoadParams(Params):
    """``bounded-load`` filter: drop endpoints above c × their fair share of in-flight load."""

    max_load_factor: float = Field(
        1.5, ge=1.0, le=10.0, description="c (unitless, default 1.5, range 1..10)."
    )
    min_slack: int = Field(
        2,
        ge=0,
        le=1000,
        description=(
            "Extra requests allowed above the bound, so that at low load affinity is not"
            " traded for spreading (requests, default 2, range 0..1000)."
        ),
    )
    metric: Literal["inflight-requests", "inflight-tokens"] = Field(
        "inflight-requests", description="Load counted (default inflight-requests)."
    )


class ShortlistParams(Params):
    """``shortlist`` filter: keep at most ``k`` candidates for the (costlier) scorers."""

    k: int = Field(
        16, ge=1, le=4096, description="Candidates kept (count, default 16, range 1..4096)."
    )
    prefix_share: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description=(
            "At most this share of k goes to the endpoints with the longest prefix hits; the"
            " rest to the least loaded (unitless, default 0.5, range 0..1)."
        ),
    )


class SloFeasibleParams(Params):
    """``slo-feasible`` filter: keep endpoints predicted to meet the TTFT target."""

    slack: float = Field(
        1.0,
        gt=0.0,
        le=10.0,
        description="Keep if predicted TTFT ≤ slack × target (unitless, default 1.0).",
    )


class RandomTopKParams(Params):
    """``random-top-k`` picker: uniform among the k best totals."""

    k: int = Field(2, ge=1, le=1024, description="k (count, default 2, range 1..1024).")


class PowerOfTwoParams(Params):
    """``power-of-two`` picker: sample two candidates, take the less loaded (ignores scores)."""

    metric: LoadMetric = Field("inflight-requests", description="Load compared.")


class CacheAwareParams(Params):
    """``cache-aware`` picker: SGLang/vLLM router cache-aware policy (radix tree + balance).

    Defaults are vllm-router's published ones (``docs/load_balancing/README.md``); SGLang's
    gateway uses the same algorithm with its own defaults.
    """

    cache_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Min match rate to follow the cache (default 0.5)."
    )
    balance_abs_threshold: int = Field(
        32, ge=0, description="Imbalance if max−min load > this (requests, default 32)."
    )
    balance_rel_threshold: float = Field(
        1.1, ge=1.0, description="... and max > this × min (unitless, default 1.1)."
    )
    eviction_interval_s: float = Field(
        30.0, gt=0.0, description="Seconds between LRU evictions of the tree (default 30)."
    )
    max_tree_size: int = Field(
        10_000, gt=0, description="Characters kept per endpoint after eviction (default 10000)."
    )
