"""Placement configuration (the ``placement`` part of a RoutingPolicy) and the profile builder.

JSON shape (camelCase, unknown fields refused)::

    scorers:        [{type, weight >= 0, parameters: {...}}]
    picker:         {type, parameters}
    prefixSource:   approximate | kv-events
    sessionAffinity: {header, maxLoadFactor}        # optional
    filters:        [{type, parameters}]            # optional, default [healthy]
    prefixIndex:    {blockSize, capacityBlocks, speculativeTtlS}   # optional

``build_profile`` is the only place a spec turns into objects: it builds every plugin through
the registry, which validates each plugin's ``parameters`` against its model
(``modelfleet.policy.params``), then the shared prefix index if and only if a plugin declares
that it consumes prefix hits (``Data.PREFIX_HITS`` in its ``consumes``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from modelfleet.policy.framework import BuildContext, Data, Plugin, PluginRegistry, Profile
from modelfleet.policy.hashing import ApproxAutoHasher, BlockHasher
from modelfleet.policy.prefix import ApproxPrefixIndex, PrecisePrefixIndex, PrefixIndex


class _Spec(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class PluginSpec(_Spec):
    """A scorer (or filter) reference: its registered type, weight and parameters."""

    type: str = Field(min_length=1, description="Registered plugin type, e.g. 'prefix-cache'.")
    weight: float = Field(1.0, ge=0.0, description="Scorer weight (>= 0; ignored for filters).")
    parameters: dict[str, Any] = Field(default_factory=dict)


class PickerSpec(_Spec):
    type: str = Field("max-score", min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)


class SessionAffinitySpec(_Spec):
    header: str = Field("x-session-id", min_length=1, description="Session key header.")
    max_load_factor: float = Field(1.25, ge=1.0, le=10.0, description="Bounded-load factor c.")


class PrefixIndexSpec(_Spec):
    block_size: int = Field(
        64, gt=0, le=4096, description="Approximate index block (tokens, default 64)."
    )
    capacity_blocks: int = Field(
        31_250, gt=0, description="Approximate LRU capacity per endpoint (blocks)."
    )
    speculative_ttl_s: float = Field(
        2.0, ge=0.0, le=600.0, description="Precise index: speculative entry lifetime (s)."
    )


class ProfileSpec(_Spec):
    scorers: list[PluginSpec] = Field(default_factory=list)
    picker: PickerSpec = Field(default_factory=PickerSpec)
    prefix_source: Literal["approximate", "kv-events"] = "approximate"
    session_affinity: SessionAffinitySpec | None = None
    filters: list[PluginSpec] = Field(default_factory=lambda: [PluginSpec(type="healthy")])
    prefix_index: PrefixIndexSpec = Field(default_factory=PrefixIndexSpec)


def default_profile_spec() -> ProfileSpec:
    """The modelfleet default placement profile.

    Why each piece:

    * ``slo-headroom`` (weight 3) is the main term: it predicts this request's TTFT on each
      candidate from the candidate's own perf model (so an H100 and an L40S are compared in
      seconds, not in queue lengths), its prefix hit there and the prefill queued ahead of it.
      It therefore trades a cache hit against a queue directly, which fixed weights between a
      prefix scorer and a queue scorer can only approximate. Its relative terms have floors
      (``ttftFloor`` 0.1, ``tpotFloor`` 2, fractions of the request's targets): latency
      differences far below the target count as near-ties, so a slower accelerator that meets
      the SLO with margin is not ranked like one that misses it. TPOT gets the larger floor
      because decode-speed gaps between accelerators (HBM bandwidth, ~4× H100/L40S) are large
      next to what a typical TPOT target needs, while the TTFT tail still rewards fast prefill
      (TTFT floors of 0.25–1 spread more but cost p99 on ``modelfleet simulate``).
    * ``prefix-cache`` (2) keeps conversations where their KV cache is even when the
      prediction is a tie, which protects future turns' hit rate.
    * ``queue`` on in-flight tokens per unit of relative speed (``speed-weighted``, 1) and
      ``kv-usage`` (1) are fresh and engine-side load signals that break ties toward spare
      capacity and away from preemption. Per unit of speed because raw in-flight tokens rank
      an A100 holding as many tokens as an H100 as equally loaded although it drains them at
      about half the speed: on mixed-GPU fleets that term sent the slower GPUs more than their
      share, and the p99 TTFT was made of their requests (1.1-1.5x least-load-speed on the
      matrix's mixed cells, ``bench/results/placement-matrix-notes.md``). On a homogeneous
      fleet (every speed 1) the two metrics are the same.
    * ``cold-spread`` (1) starts new prefixes on the endpoint with the least uncached prompt
      work routed to it recently per unit of speed (``spreadBy: prompt-tokens``, half-life
      30 s), so caches diversify instead of every miss landing on one replica (SGLang #32983)
      and the prefill work of prefix-free traffic is spread by tokens, not by request count
      (on Azure conversation the requests that miss their TTFT are those queued behind long
      prompts; ``bench/results/placement-matrix-notes.md``). A request whose best hit is at
      most 20 % of its prompt (``minHitFraction`` 0.2) counts as new, so a preamble shared by
      all requests does not switch the scorer off.
    * ``bounded-load`` filter (c = 1.5, slack 2) is the hard guard: no affinity term can send
      an endpoint more than 1.5× its speed-weighted share of in-flight requests, the
      consistent-hashing-with-bounded-loads guarantee the incumbents lack (SGLang #33625).
    * ``sessionAffinity`` (header ``x-session-id``) adds CH-BL stickiness for clients that send
      a session id; it is neutral for requests without one.
    * ``shortlist`` filter (k = 16) keeps the 8 longest prefix hits and fills up with the least
      loaded per unit of speed, so on large pools the scorers run on 16 candidates instead of
      all of them (decision cost, ``bench/decision_cost.py``); a no-op up to 16 endpoints.

    What the floors and the cold threshold changed, measured against the previous default on
    the placement benchmark, is in ``bench/results/placement-notes.md``.
    """
    return ProfileSpec(
        filters=[
            PluginSpec(type="healthy"),
            PluginSpec(type="bounded-load", parameters={"maxLoadFactor": 1.5, "minSlack": 2}),
            PluginSpec(type="shortlist", parameters={"k": 16, "prefixShare": 0.5}),
        ],
        scorers=[
            PluginSpec(
                type="slo-headroom", weight=3.0, parameters={"ttftFloor": 0.1, "tpotFloor": 2.0}
            ),
            PluginSpec(type="prefix-cache", weight=2.0),
            PluginSpec(type="queue", weight=1.0, parameters={"metric": "speed-weighted"}),
            PluginSpec(type="kv-usage", weight=1.0),
            PluginSpec(
                type="cold-spread",
                weight=1.0,
                parameters={"minHitFraction": 0.2, "spreadBy": "prompt-tokens"},
            ),
        ],
        picker=PickerSpec(type="max-score"),
        prefix_source="approximate",
        session_affinity=SessionAffinitySpec(header="x-session-id", max_load_factor=1.25),
    )


def _unique_names(specs: list[PluginSpec]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for s in specs:
        seen[s.type] = seen.get(s.type, 0) + 1
        names.append(s.type if seen[s.type] == 1 else f"{s.type}#{seen[s.type]}")
    return names


def build_profile(
    spec: ProfileSpec,
    registry: PluginRegistry,
    clock: Callable[[], float],
    rng: random.Random,
    *,
    name: str = "default",
    precise_hasher: BlockHasher | None = None,
    approx_hasher: BlockHasher | None = None,
    extra_trackers: tuple[Plugin, ...] = (),
) -> Profile:
    """Turn ``spec`` into a :class:`Profile`; raises ``ValueError`` naming any bad part.

    ``precise_hasher`` (the engine's vLLM recipe, injected) is required for
    ``prefixSource: kv-events``; ``approx_hasher`` defaults to :class:`ApproxAutoHasher` with
    ``prefixIndex.blockSize``.
    """
    scorer_specs = list(spec.scorers)
    if spec.session_affinity is not None:
        sa = {
            "header": spec.session_affinity.header,
            "maxLoadFactor": spec.session_affinity.max_load_factor,
        }
        listed = [s for s in scorer_specs if s.type == "session-affinity"]
        if not listed:
            scorer_specs.append(PluginSpec(type="session-affinity", weight=1.0, parameters=sa))
        else:
            scorer_specs = [
                s.model_copy(update={"parameters": {**sa, **s.parameters}})
                if s.type == "session-affinity"
                else s
                for s in scorer_specs
            ]

    ctx = BuildContext(clock=clock, rng=rng)
    filters = [
        registry.create(s.type, "filter", s.parameters, ctx, name=n)
        for s, n in zip(spec.filters, _unique_names(spec.filters), strict=True)
    ]
    scorers = [
        (registry.create(s.type, "scorer", s.parameters, ctx, name=n), s.weight)
        for s, n in zip(scorer_specs, _unique_names(scorer_specs), strict=True)
    ]
    picker = registry.create(spec.picker.type, "picker", spec.picker.parameters, ctx)

    plugins = [*filters, *(s for s, _ in scorers), picker]
    index: PrefixIndex | None = None
    if any(Data.PREFIX_HITS in getattr(p, "consumes", ()) for p in plugins):
        if spec.prefix_source == "kv-events":
            if precise_hasher is None:
                raise ValueError(
                    "prefixSource 'kv-events' needs the engine's block hasher: pass "
                    "precise_hasher (e.g. FunctionBlockHasher wrapping the vLLM recipe)"
                )
            index = PrecisePrefixIndex(
                precise_hasher, clock=clock, speculative_ttl_s=spec.prefix_index.speculative_ttl_s
            )
        else:
            hasher = approx_hasher or ApproxAutoHasher(block_size=spec.prefix_index.block_size)
            index = ApproxPrefixIndex(hasher, capacity_blocks=spec.prefix_index.capacity_blocks)
    return Profile(
        name,
        filters=filters,
        scorers=scorers,
        picker=picker,
        clock=clock,
        rng=rng,
        prefix_index=index,
        trackers=extra_trackers,
    )
