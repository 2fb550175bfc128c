"""Config parsing, profile building, and the golden test of the default modelfleet profile."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import numpy as np
import pytest
from policy_fakes import PERF, FakeClock, ep, req, tokens

from modelfleet.policy.baselines import build_policy
from modelfleet.policy.config import ProfileSpec, build_profile, default_profile_spec
from modelfleet.policy.framework import BuildContext, CycleState, Data, Plugin
from modelfleet.policy.hashing import FunctionBlockHasher
from modelfleet.policy.load import InflightTracker
from modelfleet.policy.params import NoParams
from modelfleet.policy.plugins import default_registry
from modelfleet.policy.prefix import ApproxPrefixIndex, PrecisePrefixIndex
from modelfleet.policy.types import EndpointView

pytestmark = pytest.mark.unit


def build(spec: ProfileSpec, **kw: object):  # type: ignore[no-untyped-def]
    return build_profile(spec, default_registry(), FakeClock(), random.Random(0), **kw)  # type: ignore[arg-type]


def test_spec_parses_camel_case_json_shape() -> None:
    spec = ProfileSpec.model_validate(
        {
            "scorers": [
                {"type": "prefix-cache", "weight": 3, "parameters": {"lengthWeight": 0.2}},
                {"type": "queue", "weight": 2},
            ],
            "picker": {"type": "random-top-k", "parameters": {"k": 3}},
            "prefixSource": "approximate",
            "sessionAffinity": {"header": "x-conv", "maxLoadFactor": 1.5},
        }
    )
    p = build(spec)
    assert [s.name for s, _ in p.scorers] == ["prefix-cache", "queue", "session-affinity"]
    assert p.scorers[0][0].p.length_weight == 0.2
    assert p.scorers[2][0].p.header == "x-conv" and p.scorers[2][0].p.max_load_factor == 1.5
    assert p.picker.p.k == 3
    assert isinstance(p.prefix_index, ApproxPrefixIndex)


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        pytest.param({"scorers": [{"type": "queue", "weight": -1}]}, "weight", id="neg-weight"),
        pytest.param({"prefixSource": "magic"}, "prefixSource", id="bad-source"),
        pytest.param({"scorerz": []}, "scorerz", id="unknown-field"),
        pytest.param(
            {"sessionAffinity": {"header": "x", "maxLoadFactor": 0.5}},
            "maxLoadFactor",
            id="load-factor-below-1",
        ),
    ],
)
def test_spec_errors_name_the_field(doc: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        ProfileSpec.model_validate(doc)


def test_explicit_session_scorer_params_override_section() -> None:
    spec = ProfileSpec.model_validate(
        {
            "scorers": [
                {"type": "session-affinity", "weight": 2, "parameters": {"maxLoadFactor": 3}}
            ],
            "sessionAffinity": {"header": "x-s", "maxLoadFactor": 1.1},
        }
    )
    ((scorer, weight),) = build(spec).scorers
    assert weight == 2 and scorer.p.header == "x-s" and scorer.p.max_load_factor == 3


def test_kv_events_source_needs_a_hasher() -> None:
    spec = ProfileSpec.model_validate(
        {"scorers": [{"type": "prefix-cache"}], "prefixSource": "kv-events"}
    )
    with pytest.raises(ValueError, match="precise_hasher"):
        build(spec)
    p = build(spec, precise_hasher=FunctionBlockHasher("vllm", 16, lambda ids: []))
    assert isinstance(p.prefix_index, PrecisePrefixIndex)


def test_index_only_built_when_a_plugin_reads_it() -> None:
    assert build(ProfileSpec.model_validate({"scorers": [{"type": "queue"}]})).prefix_index is None


class _NeedsHits(Plugin):
    """A third-party scorer: it declares prefix hits, nothing else tells the builder."""

    consumes = frozenset({Data.PREFIX_HITS})

    def score(self, state: CycleState, endpoints: Sequence[EndpointView]) -> list[float]:
        return [float(state.prefix_hits().get(e.id, 0)) for e in endpoints]


def test_index_built_for_any_plugin_that_declares_prefix_hits() -> None:
    registry = default_registry()
    registry.register("needs-hits", lambda n, p, c: _NeedsHits(), NoParams, kind="scorer")
    spec = ProfileSpec.model_validate({"scorers": [{"type": "needs-hits"}]})
    p = build_profile(spec, registry, FakeClock(), random.Random(0))
    assert isinstance(p.prefix_index, ApproxPrefixIndex)
    assert p.consumes == {Data.PREFIX_HITS}
    # the same spec without the declaration gets no index (and so no hits to score)
    registry2 = default_registry()
    registry2.register("needs-hits", lambda n, p, c: Plugin(), NoParams, kind="scorer")
    assert build_profile(spec, registry2, FakeClock(), random.Random(0)).prefix_index is None


@pytest.mark.parametrize(
    ("kind", "type_name", "parameters", "consumes"),
    [
        ("filter", "healthy", {}, set()),
        ("filter", "bounded-load", {}, {Data.INFLIGHT}),
        ("filter", "shortlist", {}, {Data.PREFIX_HITS, Data.INFLIGHT}),
        (
            "filter",
            "slo-feasible",
            {},
            {Data.PERF_MODEL, Data.PREFIX_HITS, Data.ENGINE_METRICS, Data.INFLIGHT},
        ),
        ("scorer", "prefix-cache", {}, {Data.PREFIX_HITS}),
        ("scorer", "queue", {"metric": "waiting"}, {Data.ENGINE_METRICS}),
        ("scorer", "queue", {"metric": "running-waiting"}, {Data.ENGINE_METRICS}),
        ("scorer", "queue", {"metric": "inflight-tokens"}, {Data.INFLIGHT}),
        ("scorer", "kv-usage", {}, {Data.ENGINE_METRICS}),
        (
            "scorer",
            "slo-headroom",
            {},
            {Data.PERF_MODEL, Data.PREFIX_HITS, Data.ENGINE_METRICS, Data.INFLIGHT},
        ),
        ("scorer", "session-affinity", {}, {Data.INFLIGHT}),
        ("scorer", "cold-spread", {}, {Data.PREFIX_HITS}),
        ("picker", "max-score", {}, set()),
        ("picker", "power-of-two", {}, {Data.INFLIGHT}),
        ("picker", "power-of-two", {"metric": "waiting"}, {Data.ENGINE_METRICS}),
        ("picker", "cache-aware", {}, {Data.INFLIGHT, Data.PROMPT}),
    ],
)
def test_every_builtin_plugin_declares_what_it_reads(
    kind: str, type_name: str, parameters: dict[str, str], consumes: set[Data]
) -> None:
    ctx = BuildContext(clock=FakeClock(), rng=random.Random(0))
    plugin = default_registry().create(type_name, kind, parameters, ctx)  # type: ignore[arg-type]
    assert plugin.consumes == consumes


def test_unknown_plugin_in_spec_lists_valid_types() -> None:
    spec = ProfileSpec.model_validate({"scorers": [{"type": "lora-affinity"}]})
    with pytest.raises(ValueError, match="unknown scorer type 'lora-affinity'; valid scorer"):
        build(spec)


def test_default_spec_round_trips_through_json() -> None:
    spec = default_profile_spec()
    again = ProfileSpec.model_validate_json(spec.model_dump_json(by_alias=True))
    assert again == spec
    assert "prefixSource" in spec.model_dump(by_alias=True)


# -- golden test of the default profile ------------------------------------------------

SLOW = dataclasses.replace(PERF, prefill_s_per_token=2.5e-4, decode_s_per_seq=2e-3)
FLEET = {
    "h1": {"perf": PERF, "relative_speed": 2.0},
    "h2": {"perf": PERF, "relative_speed": 2.0},
    "l1": {"perf": SLOW, "relative_speed": 1.0},
    "l2": {"perf": SLOW, "relative_speed": 1.0},
}

# (endpoint, predicted cached tokens, best total) per request, recorded from this scenario:
# three conversations sharing a 2048-token system prompt, conversation 2 with a session id.
# The placements are those of the profile before the SLO floors and the cold-spread threshold;
# the best totals of r5..r9 rose (0.02-0.1) because with ``tpotFloor`` 2 the chosen fast but busy
# endpoint's TPOT, well within the 0.05 s target, is no longer scored like a miss next to an
# idle slow one. Every request here is warm (>= 2048 of <= 3584 tokens hit), so the 20 %
# cold threshold does not fire.
GOLDEN = [
    ("h1", 0, 5.8091),
    ("h2", 0, 5.3091),
    ("h2", 2048, 5.2569),
    ("h1", 2560, 5.6814),
    ("h1", 2048, 5.4897),
    ("h2", 2560, 6.3148),
    ("h1", 3072, 5.4259),
    ("h2", 2560, 5.1199),
    ("h1", 2048, 5.7897),
    ("h1", 3584, 4.705),
]


def test_default_profile_golden() -> None:
    policy = build_policy("modelfleet", clock=FakeClock(), rng=random.Random(42))
    tracker = InflightTracker()
    system = tokens(2048, start=50_000)
    reqs = []
    for i in range(10):
        conv = i % 3
        body = np.concatenate([system, tokens(512 * (1 + i // 3), start=conv * 10_000)])
        reqs.append(
            req(
                f"r{i}",
                prompt_tokens=len(body),
                token_ids=body,
                ttft_slo_s=1.0,
                tpot_slo_s=0.05,
                session_id="s2" if conv == 2 else None,
                max_tokens=100,
            )
        )
    got = []
    for i, r in enumerate(reqs):
        views = []
        for name, static in FLEET.items():
            n, t, pf = tracker.counters(name)  # type: ignore[arg-type]
            views.append(
                ep(
                    name,
                    inflight_requests=n,
                    inflight_tokens=t,
                    inflight_prefill_tokens=pf,
                    running=n,
                    kv_cache_usage=min(1.0, t / 100_000),
                    **static,
                )
            )
        d = policy.profile.pick(r, views)
        policy.profile.on_routed(r, d)
        tracker.on_routed(r, d.endpoint)
        if i % 2 == 1:
            tracker.on_first_token(r.id)
        if i % 4 == 3:
            tracker.on_completed(reqs[i - 3].id)
        assert not d.errors
        got.append((d.endpoint, d.cached_tokens, round(max(d.totals), 4)))
    assert got == GOLDEN
    # the properties the golden run illustrates
    conv0 = [got[i] for i in (0, 3, 6, 9)]
    assert {e for e, _, _ in conv0} == {"h1"}, "a conversation stays with its cache"
    assert [c for _, c, _ in conv0] == [0, 2560, 3072, 3584]


def test_default_profile_at_scale_follows_cache_within_the_load_bound() -> None:
    """64 endpoints: the shortlist path. Deep hit wins when loads are equal; not when hot."""
    policy = build_policy("modelfleet", clock=FakeClock(), rng=random.Random(1))
    prompt = tokens(8192)
    first = req("a", prompt_tokens=8192, token_ids=prompt)
    views = [ep(f"e{i:02d}", perf=PERF, inflight_requests=1) for i in range(64)]
    d = policy.profile.pick(first, views)
    policy.profile.on_routed(first, d)
    home = d.endpoint
    again = req("b", prompt_tokens=8192, token_ids=prompt)
    d2 = policy.profile.pick(again, views)
    assert d2.endpoint == home and d2.cached_tokens == 8192
    assert len(d2.candidates) == 16 and home in d2.candidates
    hot = [ep(v.id, perf=PERF, inflight_requests=40 if v.id == home else 1) for v in views]
    d3 = policy.profile.pick(req("c", prompt_tokens=8192, token_ids=prompt), hot)
    assert d3.endpoint != home
    assert home in d3.filtered_out["bounded-load"]
