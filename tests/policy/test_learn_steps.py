"""The learner's update, step by step, against the textbook Kalman step in matrix form.

Reference (numpy, independent of the module's pure-Python loops): with prior mean ``m``,
covariance ``P``, features ``x``, observation ``y`` and noise variance ``R = noise² x scale²``:
``S = x'Px + R``, ``K = Px / S``, ``m' = m + K * clip(y - x'm, ±clip_sigmas √S)``,
``P' = P - K x'P``, then the random-walk drift added to the diagonal. The relative noise is a
running mean of ``(clipped residual / scale)²`` over at most ``noise_memory`` observations,
never below ``noise_floor²``. Snapshots predict with ``mean + kappa x sd`` per coefficient
(means below zero read as zero, scale terms at least 0.05).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from modelfleet.policy.learn import LatencyLearner, LearnerParams
from modelfleet.policy.perf import ParametricPerfModel
from modelfleet.policy.types import EndpointId

pytestmark = pytest.mark.unit

PRIOR = ParametricPerfModel(prefill_base_s=0.002, prefill_s_per_token=5e-5)
A = EndpointId("a")


class Reference:
    """One regression as the module docstring states it, in matrix form."""

    def __init__(self, mean: list[float], sd: list[float], drift: list[float], p: LearnerParams):
        self.m = np.array(mean, dtype=float)
        self.P = np.diag(np.array(sd, dtype=float) ** 2)
        self.Q = np.array(drift, dtype=float) ** 2
        self.noise2 = p.initial_relative_noise**2
        self.n = 0
        self.p = p

    def update(self, x: list[float], y: float, scale: float) -> None:
        xv = np.array(x, dtype=float)
        s = float(xv @ self.P @ xv) + self.noise2 * scale * scale
        k = self.P @ xv / s
        resid = y - float(xv @ self.m)
        bound = self.p.clip_sigmas * math.sqrt(s)
        clipped = max(-bound, min(bound, resid))
        self.m = self.m + k * clipped
        self.P = self.P - np.outer(k, xv @ self.P)
        self.P = (self.P + self.P.T) / 2 + np.diag(self.Q)
        w = 1 / min(self.n + 1, self.p.noise_memory)
        z2 = (clipped / scale) ** 2
        self.noise2 = max(self.p.noise_floor**2, (1 - w) * self.noise2 + w * z2)
        self.n += 1

    def sd(self) -> np.ndarray:
        return np.sqrt(np.diag(self.P))


def _ttft_ref(p: LearnerParams) -> Reference:
    scale, offset = p.drift_sd
    return Reference([0.0, 1.0, 0.0], list(p.ttft_prior_sd), [offset, scale, offset * 0.1], p)


def _tpot_ref(p: LearnerParams) -> Reference:
    scale, offset = p.drift_sd
    return Reference([0.0, 1.0], list(p.tpot_prior_sd), [offset * 0.2, scale], p)


# (prior prediction, streams, observed): slower, faster, an outlier that gets clipped, then
# a few more so the noise memory (3 here) is exceeded
TTFT_OBS = [(0.2, 3, 0.3), (0.05, 0, 0.04), (0.1, 1, 30.0), (0.4, 8, 0.5), (0.3, 2, 0.33)]
TPOT_OBS = [(0.01, 0.015), (0.02, 0.018), (0.01, 5.0), (0.012, 0.02)]


@pytest.mark.parametrize(
    "params",
    [LearnerParams(), LearnerParams(kappa=2.0, noise_memory=3, clip_sigmas=2.0, noise_floor=0.2)],
    ids=["default", "tight"],
)
def test_each_observation_is_one_kalman_step(params: LearnerParams) -> None:
    learner = LatencyLearner(params)
    learner.register(A, "gpu", "m", PRIOR)
    ttft_ref, tpot_ref = _ttft_ref(params), _tpot_ref(params)
    for prior, streams, y in TTFT_OBS:
        learner.observe_ttft(A, prior, streams, y)
        ttft_ref.update([1.0, prior, float(streams)], y, prior + 0.02)
    for prior, y in TPOT_OBS:
        learner.observe_tpot(A, prior, y)
        tpot_ref.update([1.0, prior], y, prior)
    (state,) = learner.variants().values()
    assert state.ttft.mean == pytest.approx(list(ttft_ref.m), rel=1e-9, abs=1e-15)
    assert state.tpot.mean == pytest.approx(list(tpot_ref.m), rel=1e-9, abs=1e-15)
    for reg, ref in ((state.ttft, ttft_ref), (state.tpot, tpot_ref)):
        assert np.asarray(reg.cov) == pytest.approx(ref.P, rel=1e-9, abs=1e-18)
        assert reg.noise2 == pytest.approx(ref.noise2, rel=1e-9)
        assert reg.n == ref.n
    summary = state.summary()
    assert summary == pytest.approx(
        {
            "ttft_offset_s": ttft_ref.m[0],
            "ttft_scale": ttft_ref.m[1],
            "ttft_scale_sd": ttft_ref.sd()[1],
            "ttft_per_stream_s": ttft_ref.m[2],
            "ttft_observations": 5.0,
            "ttft_relative_noise": math.sqrt(ttft_ref.noise2),
            "tpot_offset_s": tpot_ref.m[0],
            "tpot_scale": tpot_ref.m[1],
            "tpot_scale_sd": tpot_ref.sd()[1],
            "tpot_observations": 4.0,
        },
        rel=1e-9,
        abs=1e-15,
    )
    # the snapshot: central = means floored (offsets and per-stream at 0, scales at 0.05),
    # upper = central + kappa x sd per coefficient
    snap = learner.model_for(A)
    assert snap is not None and snap.central is not None
    t_mid = (max(ttft_ref.m[0], 0), max(ttft_ref.m[1], 0.05), max(ttft_ref.m[2], 0))
    d_mid = (max(tpot_ref.m[0], 0), max(tpot_ref.m[1], 0.05))
    assert snap.central.ttft == pytest.approx(t_mid, rel=1e-9, abs=1e-15)
    assert snap.central.tpot == pytest.approx(d_mid, rel=1e-9, abs=1e-15)
    k = params.kappa
    assert snap.ttft == pytest.approx(
        [v + k * s for v, s in zip(t_mid, ttft_ref.sd(), strict=True)], rel=1e-9
    )
    assert snap.tpot == pytest.approx(
        [v + k * s for v, s in zip(d_mid, tpot_ref.sd(), strict=True)], rel=1e-9
    )
    assert (snap.ttft_observations, snap.tpot_observations) == (5, 4)
    assert (snap.central.ttft_observations, snap.central.tpot_observations) == (5, 4)


def test_an_exact_observation_brings_the_noise_to_its_floor() -> None:
    learner = LatencyLearner(LearnerParams(noise_floor=0.2, noise_memory=1))
    learner.register(A, "gpu", "m", PRIOR)
    learner.observe_tpot(A, 0.01, 0.01)  # exactly the prior's prediction: no residual
    (state,) = learner.variants().values()
    assert state.tpot.noise2 == pytest.approx(0.2**2)
    assert state.tpot.mean == [0.0, 1.0]


def test_an_absurd_prior_prediction_teaches_nothing() -> None:
    """A prior of 1e200 s makes the innovation variance overflow: the update is skipped."""
    learner = LatencyLearner()
    learner.register(A, "gpu", "m", PRIOR)
    before = learner.model_for(A)
    learner.observe_ttft(A, 1e200, 0, 1.0)
    learner.observe_tpot(A, 1e200, 1.0)
    (state,) = learner.variants().values()
    assert learner.model_for(A) == before and (state.ttft.n, state.tpot.n) == (0, 0)


def test_negative_means_read_as_zero_and_scales_have_a_floor() -> None:
    learner = LatencyLearner(LearnerParams(kappa=0.0, clip_sigmas=100.0))
    learner.register(A, "gpu", "m", PRIOR)
    for _ in range(30):  # observed far faster than predicted: the scale collapses
        learner.observe_ttft(A, 1.0, 0, 0.0)
        learner.observe_tpot(A, 1.0, 0.0)
    (state,) = learner.variants().values()
    snap = learner.model_for(A)
    assert snap is not None
    assert state.ttft.mean[1] < 0.05 and state.tpot.mean[1] < 0.05
    assert snap.ttft[1] == 0.05 and snap.tpot[1] == 0.05
    # the offsets were pulled below zero too: they read as zero
    assert state.ttft.mean[0] < 0 and state.tpot.mean[0] < 0
    assert snap.ttft[0] == 0.0 and snap.tpot[0] == 0.0


def test_the_snapshot_predicts_with_its_coefficients() -> None:
    learner = LatencyLearner()
    learner.register(A, "gpu", "m", PRIOR)
    learner.observe_ttft(A, 0.2, 3, 0.3)
    snap = learner.model_for(A)
    assert snap is not None
    a0, a1, a2 = snap.ttft
    base = PRIOR.predict_ttft(900, 100, running=4, waiting=2, pending_prefill_tokens=300)
    got = snap.predict_ttft(900, 100, running=4, waiting=2, pending_prefill_tokens=300, streams=7)
    assert got == pytest.approx(a0 + a1 * base + a2 * 7, rel=1e-12)
    b0, b1 = snap.tpot
    assert snap.predict_tpot(running=9) == pytest.approx(
        b0 + b1 * PRIOR.predict_tpot(running=9), rel=1e-12
    )


def test_register_moves_an_endpoint_between_variants() -> None:
    learner = LatencyLearner()
    learner.register(A, "gpu", "m", PRIOR)
    learner.observe_ttft(A, 0.2, 0, 0.3)
    other = ParametricPerfModel(prefill_base_s=0.003)
    learner.register(A, "gpu", "m", other)
    assert learner.prior_for(A) is other
    assert learner.variants()[("gpu", "m", other)].endpoints == {A}
    snap = learner.model_for(A)
    assert snap is not None and snap.prior is other and snap.ttft_observations == 0
    old = learner.variants()[("gpu", "m", PRIOR)]
    assert old.endpoints == set()  # A left its old variant
    learner.register(A, "gpu", "m", None)  # no parametric prior: not learned any more
    assert learner.model_for(A) is None and learner.prior_for(A) is None
    assert learner.variants()[("gpu", "m", other)].endpoints == set()
    learner.forget(A)  # forgetting an endpoint that is not learned is a no-op
    assert learner.model_for(A) is None
    learner.register(A, "gpu", "m", other)
    learner.forget(A)
    assert learner.variants()[("gpu", "m", other)].endpoints == set()
    assert learner.model_for(A) is None


@pytest.mark.parametrize(
    ("kind", "prior"), [("ttft", 0.0), ("ttft", -0.1), ("tpot", 0.0), ("tpot", -0.1)]
)
def test_an_observation_without_a_positive_prior_teaches_nothing(kind: str, prior: float) -> None:
    learner = LatencyLearner()
    learner.register(A, "gpu", "m", PRIOR)
    before = learner.model_for(A)
    if kind == "ttft":
        learner.observe_ttft(A, prior, 0, 0.1)
    else:
        learner.observe_tpot(A, prior, 0.1)
    assert learner.model_for(A) is before
    # a zero latency is a valid observation
    learner.observe_ttft(A, 0.1, 0, 0.0)
    learner.observe_tpot(A, 0.01, 0.0)
    (state,) = learner.variants().values()
    assert (state.ttft.n, state.tpot.n) == (1, 1)


@pytest.mark.parametrize(
    "kw",
    [
        {"initial_relative_noise": 0.0},
        {"noise_memory": 0},
        {"drift_sd": (0.1, -0.1)},
        {"tpot_prior_sd": (-1.0, 0.5)},
        {"clip_sigmas": float("inf")},
    ],
    ids=str,
)
def test_more_bad_params_are_refused(kw: dict[str, Any]) -> None:
    finite = "^LearnerParams: every value must be finite and >= 0$"
    positive = "^LearnerParams: noise_floor, initial_relative_noise > 0, memory >= 1$"
    expected = positive if "noise_memory" in kw or "initial_relative_noise" in kw else finite
    with pytest.raises(ValueError, match=expected):
        LearnerParams(**kw)


def test_boundary_params_are_accepted() -> None:
    p = LearnerParams(kappa=0.0, drift_sd=(0.0, 0.0), clip_sigmas=0.0, noise_memory=1)
    assert (p.kappa, p.noise_memory) == (0.0, 1)
