"""The learned latency model: a prior corrected online, its uncertainty, and the routing host
feeding it from its hooks (what a live proxy observes, nothing more)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from policy_fakes import FakeClock, req

from modelfleet.policy.config import ProfileSpec, build_profile
from modelfleet.policy.host import EndpointInfo, EndpointMetrics, Router
from modelfleet.policy.learn import LatencyLearner, LearnedPerfModel, LearnerParams
from modelfleet.policy.perf import ParametricPerfModel, tpot_estimate, ttft_estimate
from modelfleet.policy.plugins import default_registry
from modelfleet.policy.types import EndpointId, EndpointView, RequestId

pytestmark = pytest.mark.unit

PRIOR = ParametricPerfModel(
    prefill_base_s=0.002,
    prefill_s_per_token=5e-5,
    decode_base_s=0.01,
    decode_s_per_seq=2e-4,
    front_end_s=0.01,
)
A, B = EndpointId("a"), EndpointId("b")


def _observe(learner: LatencyLearner, ep: EndpointId, factor: float, n: int, seed: int) -> None:
    """``n`` requests whose true latencies are ``factor`` x the prior, with 20 % noise."""
    rng = random.Random(seed)
    for _ in range(n):
        prompt = rng.randrange(200, 20_000)
        running, waiting = rng.randrange(0, 40), rng.randrange(0, 4)
        prior_ttft = PRIOR.predict_ttft(
            prompt, 0, running=running, waiting=waiting, pending_prefill_tokens=0
        )
        noise = 1 + rng.gauss(0, 0.2)
        learner.observe_ttft(ep, prior_ttft, running + waiting, factor * prior_ttft * noise)
        prior_tpot = PRIOR.predict_tpot(running=running)
        learner.observe_tpot(ep, prior_tpot, factor * prior_tpot * (1 + rng.gauss(0, 0.1)))


def test_before_any_evidence_the_prior_is_not_trusted() -> None:
    learner = LatencyLearner()
    learner.register(A, "l40s", "m", PRIOR)
    m = learner.model_for(A)
    assert isinstance(m, LearnedPerfModel) and m.central is not None
    mid = m.central.predict_ttft(4000, 0, running=8, waiting=1, pending_prefill_tokens=0)
    prior = PRIOR.predict_ttft(4000, 0, running=8, waiting=1, pending_prefill_tokens=0)
    up = m.predict_ttft(4000, 0, running=8, waiting=1, pending_prefill_tokens=0, streams=9)
    assert mid == pytest.approx(prior)  # the central model is the prior
    assert up > 1.4 * prior  # decisions use the upper one: scale + one sd (0.5) at least
    assert m.ttft_observations == 0


@pytest.mark.parametrize("factor", [0.87, 1.0, 1.3], ids=["faster", "right", "slower"])
def test_a_wrong_prior_is_corrected_and_uncertainty_shrinks(factor: float) -> None:
    learner = LatencyLearner()
    learner.register(A, "l40s", "m", PRIOR)
    _observe(learner, A, factor, 300, seed=1)
    state = next(iter(learner.variants().values())).summary()
    assert state["ttft_scale"] == pytest.approx(factor, rel=0.08)
    assert state["tpot_scale"] == pytest.approx(factor, rel=0.05)
    # the sds stop shrinking at what the drift (adaptivity) keeps open
    assert state["ttft_scale_sd"] < 0.1 and state["tpot_scale_sd"] < 0.08
    m = learner.model_for(A)
    assert m is not None and m.ttft_observations == 300
    mid, up = ttft_estimate(m, EndpointView(A, running=10), 5000)
    assert mid < up < 1.25 * mid  # the gap (the margin the planner demands) has shrunk


def test_endpoints_of_one_variant_learn_together_and_others_do_not() -> None:
    learner = LatencyLearner()
    learner.register(A, "l40s", "m", PRIOR)
    learner.register(B, "l40s", "m", PRIOR)
    learner.register(EndpointId("h"), "h100", "m", PRIOR)
    _observe(learner, A, 1.3, 200, seed=2)
    assert learner.model_for(B) == learner.model_for(A)
    untouched = learner.model_for(EndpointId("h"))
    assert untouched is not None and untouched.ttft_observations == 0
    learner.forget(A)
    assert learner.model_for(A) is None and learner.model_for(B) is not None


def test_one_outlier_cannot_drag_the_scale() -> None:
    learner = LatencyLearner()
    learner.register(A, "l40s", "m", PRIOR)
    _observe(learner, A, 1.0, 100, seed=3)
    before = next(iter(learner.variants().values())).summary()["ttft_scale"]
    learner.observe_ttft(A, 0.5, 3, 500.0)  # a preempted request: 1000x its prediction
    after = next(iter(learner.variants().values())).summary()["ttft_scale"]
    assert abs(after - before) < 0.15


def test_bad_observations_and_unknown_endpoints_are_ignored() -> None:
    learner = LatencyLearner()
    learner.register(A, "l40s", "m", PRIOR)
    learner.register(B, "l40s", "m", None)  # no prior: nothing to learn
    before = learner.model_for(A)
    for bad in (float("nan"), -1.0, float("inf")):
        learner.observe_ttft(A, 0.1, 0, bad)
        learner.observe_tpot(A, 0.01, bad)
    learner.observe_ttft(EndpointId("zz"), 0.1, 0, 0.2)
    assert learner.model_for(A) == before and learner.model_for(B) is None


def test_kappa_zero_predicts_with_the_central_model() -> None:
    learner = LatencyLearner(LearnerParams(kappa=0.0))
    learner.register(A, "l40s", "m", PRIOR)
    m = learner.model_for(A)
    assert m is not None and m.central is None
    assert tpot_estimate(m, 4) == (m.predict_tpot(running=4), m.predict_tpot(running=4))


@pytest.mark.parametrize(
    "kw", [{"kappa": -1.0}, {"noise_floor": 0.0}, {"ttft_prior_sd": (0.1, float("nan"), 0.1)}]
)
def test_bad_params_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="LearnerParams"):
        LearnerParams(**kw)


# -- the routing host feeds it -------------------------------------------------------------


def _router(clock: FakeClock) -> Router:
    profile = build_profile(
        ProfileSpec.model_validate({"scorers": [{"type": "slo-headroom"}]}),
        default_registry(),
        clock,
        random.Random(0),
    )
    infos = [
        EndpointInfo(EndpointId(n), pool="p", accelerator=n, perf=PRIOR) for n in ("fast", "slow")
    ]
    return Router(profile, pool="p", endpoints=infos, learner=LatencyLearner())


def test_router_learns_from_first_tokens_and_completions_and_views_carry_it() -> None:
    """The 'slow' variant's requests take 1.5x what the prior says; the router learns it from
    route/first-token/completion times alone, and its views start predicting it."""
    clock = FakeClock()
    r = _router(clock)
    slow = EndpointId("slow")
    for i in range(60):
        r.update_metrics(slow, EndpointMetrics(running=4 + (i * 7) % 50))
        rid = RequestId(f"r{i}")
        view = req(rid, pool="p", prompt_tokens=3000, max_tokens=20)
        # force the slow endpoint: the other one is drained for this test
        r.set_draining(EndpointId("fast"), True)
        r.route(view)
        v = next(x for x in r.views() if x.id == slow)
        prior_ttft = PRIOR.predict_ttft(
            3000, 0, running=v.running, waiting=v.waiting,
            pending_prefill_tokens=v.inflight_prefill_tokens - 3000,
        )  # fmt: skip
        clock.advance(1.5 * prior_ttft)
        r.on_first_token(rid)
        tpot = 1.5 * PRIOR.predict_tpot(running=v.running)
        clock.advance(tpot * 19)
        r.on_tokens(rid, 20)
        r.on_completed(rid)
    learned = next(x for x in r.views() if x.id == slow).perf
    fast = next(x for x in r.views() if x.id == EndpointId("fast")).perf
    assert isinstance(learned, LearnedPerfModel) and isinstance(fast, LearnedPerfModel)
    assert learned.ttft_observations == 60 and learned.tpot_observations == 60
    assert fast.ttft_observations == 0
    assert learned.central is not None
    # the learned predictions are close to what happens; the prior's are 1.5x off
    for batch in (4, 30):
        pred = learned.central.predict_tpot(running=batch)
        assert pred == pytest.approx(1.5 * PRIOR.predict_tpot(running=batch), rel=0.05)
    for prompt in (1000, 8000):
        prior = PRIOR.predict_ttft(prompt, 0, running=20, waiting=0, pending_prefill_tokens=0)
        pred = learned.central.predict_ttft(
            prompt, 0, running=20, waiting=0, pending_prefill_tokens=0, streams=1
        )
        assert pred == pytest.approx(1.5 * prior, rel=0.15)


def test_a_router_without_a_learner_shows_the_configured_model() -> None:
    clock = FakeClock()
    profile = build_profile(ProfileSpec(), default_registry(), clock, random.Random(0))
    r = Router(profile, pool="p", endpoints=[EndpointInfo(A, pool="p", perf=PRIOR)])
    rid = RequestId("x")
    r.route(req(rid, pool="p", prompt_tokens=10, max_tokens=5))
    clock.advance(1.0)
    r.on_tokens(rid, 5)
    r.on_completed(rid)
    assert r.views()[0].perf is PRIOR
