"""Direction tests: for every scorer of every named profile, which endpoint should win, and why.

Each scenario gives two endpoints that differ in exactly one signal, the one a scorer reads;
the endpoint that is better on it (less loaded, more cached, faster, sticky, cold-unused)
must win, in either input order. Two levels:

* every scorer spec of every profile (``policy_spec(name)`` for each of ``POLICY_NAMES``,
  its session affinity included), alone with its own parameters behind a max-score picker:
  the better endpoint wins and its score is strictly higher, so an inverted scorer (or one
  that went neutral) fails;
* the full default ``modelfleet`` profile (filters, every scorer, weights): the same
  scenarios still decide the pick, and every other scorer ties, which is the "why".

A new scorer type or load metric without a scenario here fails ``test_every_scorer_has_a_
direction_scenario``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from policy_fakes import PERF, FakeClock

from modelfleet.policy.baselines import POLICY_NAMES, policy_spec
from modelfleet.policy.config import PickerSpec, PluginSpec, ProfileSpec, build_profile
from modelfleet.policy.framework import Profile
from modelfleet.policy.plugins import default_registry
from modelfleet.policy.types import Decision, EndpointId, EndpointView, RequestId, RequestView

pytestmark = pytest.mark.unit

GOOD, BAD = EndpointId("good"), EndpointId("bad")
CHAIN = tuple(range(101, 165))  # 64 blocks of 64 tokens
SLOW_PREFILL = dataclasses.replace(PERF, prefill_s_per_token=4e-4)
SLOW_DECODE = dataclasses.replace(PERF, decode_s_per_seq=2e-2)


def request(rid: str = "r", **kw: Any) -> RequestView:
    base: dict[str, Any] = {
        "prompt_tokens": 4096,
        "block_hashes": CHAIN,
        "block_size": 64,
        "ttft_slo_s": 1.0,
        "tpot_slo_s": 0.05,
        "max_tokens": 64,
    }
    return RequestView(RequestId(rid), **(base | kw))


def decision(endpoint: EndpointId, rid: str = "earlier", cached: int = 0) -> Decision:
    # the hit is on the chosen endpoint: it is both the placed and the best hit (cold-spread's
    # prompt-tokens mode counts only the uncached rest as the endpoint's prefill work)
    return Decision(
        endpoint, RequestId(rid), (endpoint,), {}, {}, (1.0,), {}, {}, {}, cached, cached
    )


def view(name: EndpointId, **kw: Any) -> EndpointView:
    return EndpointView(id=name, perf=kw.pop("perf", PERF), **kw)


@dataclass(frozen=True)
class Scenario:
    """Views of the good and the bad endpoint, the request, and what the profile learned."""

    why: str
    good: dict[str, Any]
    bad: dict[str, Any]
    req: dict[str, Any] = dataclasses.field(default_factory=dict)
    teach: Callable[[Profile], None] = lambda profile: None


def _cached_on_good(profile: Profile) -> None:
    # an earlier request with the same prompt went to "good" (the prefix index learns it)
    profile.on_routed(request("earlier"), decision(GOOD, cached=4096))


def _longer_hit_on_good(profile: Profile) -> None:
    # good holds half the prompt, bad an eighth of it
    profile.on_routed(request("e1", block_hashes=CHAIN[:32]), decision(GOOD, "e1", cached=2048))
    profile.on_routed(request("e2", block_hashes=CHAIN[:8]), decision(BAD, "e2", cached=2048))


def _last_cold_went_to_bad(profile: Profile) -> None:
    profile.on_routed(request("earlier", block_hashes=(9, 8, 7)), decision(BAD))


def _session_went_to(endpoint: EndpointId) -> Callable[[Profile], None]:
    def teach(profile: Profile) -> None:
        # another prompt, with a hit (not cold): only the session table learns something
        # that bears on the next request
        earlier = request("earlier", session_id="s1", block_hashes=(9, 8, 7))
        profile.on_routed(earlier, decision(endpoint, cached=4096))

    return teach


# key: scorer type, or "queue:<metric>"
SCENARIOS: dict[str, list[Scenario]] = {
    "queue:waiting": [Scenario("fewer requests waiting", {"waiting": 0}, {"waiting": 6})],
    "queue:running-waiting": [
        Scenario("fewer running + waiting", {"running": 2, "waiting": 1}, {"running": 6})
    ],
    "queue:inflight-requests": [
        Scenario("fewer requests in flight", {"inflight_requests": 1}, {"inflight_requests": 4})
    ],
    "queue:inflight-tokens": [
        Scenario("fewer tokens in flight", {"inflight_tokens": 100}, {"inflight_tokens": 5000})
    ],
    "queue:speed-weighted": [
        # 3000 tokens at 4x speed is 750 per unit, less than 1000 at 1x: per-speed wins,
        # even though raw in-flight tokens would pick the other one
        Scenario(
            "fewer in-flight tokens per unit of speed",
            {"inflight_tokens": 3000, "relative_speed": 4.0},
            {"inflight_tokens": 1000},
        )
    ],
    "kv-usage": [Scenario("more free KV cache", {"kv_cache_usage": 0.1}, {"kv_cache_usage": 0.8})],
    "prefix-cache": [
        Scenario("holds the prompt's prefix", {}, {}, teach=_cached_on_good),
        Scenario("holds a longer prefix of the prompt", {}, {}, teach=_longer_hit_on_good),
    ],
    "slo-headroom": [
        # TTFT 0.01 + 4096·1e-4 = 0.42 s against 1.65 s with 4e-4 s/token (target 1 s)
        Scenario("faster prefill: TTFT inside its target", {}, {"perf": SLOW_PREFILL}),
        # TPOT 0.012 s against 0.05 s at a batch of 2 (target 0.05 s)
        Scenario(
            "faster decode: TPOT inside its target",
            {"running": 1},
            {"running": 1, "perf": SLOW_DECODE},
        ),
        Scenario(
            "less prefill queued ahead",
            {"inflight_prefill_tokens": 0},
            {"inflight_prefill_tokens": 20_000},
        ),
    ],
    "cold-spread": [
        Scenario(
            "a new prefix starts where no new prefix went last",
            {},
            {},
            teach=_last_cold_went_to_bad,
        )
    ],
    "session-affinity": [
        Scenario(
            "the session's last endpoint (good)",
            {},
            {},
            req={"session_id": "s1"},
            teach=_session_went_to(GOOD),
        ),
    ],
}


def _key(spec: PluginSpec) -> str:
    if spec.type == "queue":
        return f"queue:{spec.parameters.get('metric', 'waiting')}"
    return spec.type


def scorer_specs() -> list[tuple[str, PluginSpec]]:
    """(profile, scorer spec) of every scorer of every named profile."""
    out = []
    for name in POLICY_NAMES:
        spec = policy_spec(name)
        scorers = list(spec.scorers)
        if spec.session_affinity is not None:
            sa = spec.session_affinity
            scorers.append(
                PluginSpec(
                    type="session-affinity",
                    parameters={"header": sa.header, "maxLoadFactor": sa.max_load_factor},
                )
            )
        out += [(name, s) for s in scorers]
    return out


SCORER_SPECS = scorer_specs()
CASES = [
    pytest.param(spec, sc, id=f"{name}-{_key(spec)}-{sc.why}")
    for name, spec in SCORER_SPECS
    for sc in SCENARIOS.get(_key(spec), [])
]


def test_every_scorer_has_a_direction_scenario() -> None:
    assert {_key(s) for _, s in SCORER_SPECS} <= set(SCENARIOS)
    # and every scorer type the registry knows is covered
    assert {"prefix-cache", "kv-usage", "slo-headroom", "cold-spread", "session-affinity"} <= {
        k for k in SCENARIOS
    }


def decide(profile: Profile, sc: Scenario, good_first: bool) -> Decision:
    sc.teach(profile)
    views = [view(GOOD, **sc.good), view(BAD, **sc.bad)]
    if not good_first:
        views.reverse()
    return profile.pick(request(**sc.req), views)


@pytest.mark.parametrize(("spec", "sc"), CASES)
@pytest.mark.parametrize("good_first", [True, False], ids=["good-first", "good-second"])
def test_each_scorer_alone_prefers_the_better_endpoint(
    spec: PluginSpec, sc: Scenario, good_first: bool
) -> None:
    profile = build_profile(
        ProfileSpec(scorers=[spec], picker=PickerSpec(type="max-score")),
        default_registry(),
        FakeClock(),
        random.Random(0),
    )
    d = decide(profile, sc, good_first)
    assert d.endpoint == GOOD, sc.why
    scores = dict(zip(d.candidates, d.scores[spec.type], strict=True))
    assert scores[GOOD] > scores[BAD], sc.why


DEFAULT_CASES = [
    pytest.param(k, sc, id=f"{k}-{sc.why}")
    for k in (
        "queue:speed-weighted",
        "kv-usage",
        "prefix-cache",
        "slo-headroom",
        "cold-spread",
        "session-affinity",
    )
    for sc in SCENARIOS[k]
]


@pytest.mark.parametrize(("key", "sc"), DEFAULT_CASES)
@pytest.mark.parametrize("good_first", [True, False], ids=["good-first", "good-second"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_profile_follows_each_signal_and_only_it(
    key: str, sc: Scenario, good_first: bool, seed: int
) -> None:
    profile = build_profile(
        policy_spec("modelfleet"), default_registry(), FakeClock(), random.Random(seed)
    )
    d = decide(profile, sc, good_first)
    assert d.endpoint == GOOD, sc.why
    scorer = key.split(":")[0]
    moved = {
        name
        for name, s in d.scores.items()
        if s[d.candidates.index(GOOD)] != s[d.candidates.index(BAD)]
    }
    assert scorer in moved
    # the prefix hit also shortens the predicted TTFT (slo-headroom); nothing else moves
    allowed = {scorer, "slo-headroom"} if scorer == "prefix-cache" else {scorer}
    assert moved <= allowed, f"{sc.why}: {moved - allowed} moved too"


@pytest.mark.parametrize("sticky", [GOOD, BAD])
def test_session_affinity_follows_the_session_wherever_it_went(sticky: EndpointId) -> None:
    """Whichever endpoint the session went to wins (not the ring's owner by chance)."""
    profile = build_profile(
        policy_spec("modelfleet"), default_registry(), FakeClock(), random.Random(0)
    )
    _session_went_to(sticky)(profile)
    d = profile.pick(request(session_id="s1"), [view(GOOD), view(BAD)])
    assert d.endpoint == sticky
