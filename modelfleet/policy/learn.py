"""A latency model learned online from what a routing host observes. Pure.

The routing host (:class:`~modelfleet.policy.host.Router`) sees, per request it placed: when it
sent it, the queue of the endpoint at that moment (scraped ``running``/``waiting``, its own
in-flight counts), the predicted prefix hit, when the first token came back, and when the last
one did. That is enough to correct a prior latency model per accelerator variant, and it is
all a live scheduler has: nothing here reads an engine.

Model. For each variant (accelerator, model, prior) the host keeps two small Bayesian linear
regressions on the prior's own predictions:

    TTFT = a0 + a1 * prior_ttft(prompt, cached, running, waiting, pending) + a2 * streams
    TPOT = b0 + b1 * prior_tpot(batch)

``streams`` is the number of requests the endpoint already serves (the API server's work per
request waits behind them). The prior is ``a = (0, 1, 0)``, ``b = (0, 1)`` with standard
deviations :attr:`LearnerParams.ttft_prior_sd` / :attr:`~LearnerParams.tpot_prior_sd`: the scale
terms ``a1``, ``b1`` start at "the declared speed is right, give or take 50 %". Each observation
updates the posterior with one Kalman (recursive least squares) step:

* noise proportional to the prior's prediction (relative errors: a 100 ms miss on a 50 ms
  prediction weighs like a 10 s miss on a 5 s one), with the relative noise level itself
  estimated from the residuals;
* residuals clipped at ``clip_sigmas`` predictive standard deviations (one preempted or
  pathological request cannot drag the scale);
* a random-walk drift per observation (:attr:`~LearnerParams.drift_sd`), so the model keeps
  adapting when an endpoint changes, and uncertainty grows back where evidence stops.

Uncertainty in decisions. Every snapshot (:class:`LearnedPerfModel`) predicts with *upper*
coefficients ``mean + kappa * sd`` per term (all features are >= 0, so this bounds the linear
prediction from above), and carries its central version as ``central``. Scorers and filters
call ``predict_*`` and so do not trust what has not been observed: a variant that has seen no
request is predicted ``1 + kappa * 0.5`` times its prior. The migration planner compares the
central predictions and demands the gap as margin (:func:`modelfleet.policy.perf.ttft_estimate`).

Why a correction of the prior and not a free regression: three or two coefficients with a
prior converge in a few dozen observations and cannot produce a non-monotone model, where a
free fit of the step-time physics needs thousands of varied observations. A declared speed
that is wrong by a factor is exactly a wrong ``a1``/``b1``.

Snapshots are frozen values: a view built from the same observations compares equal in every
host (the parity test replays one host's events into another and compares views).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from modelfleet.policy.perf import ParametricPerfModel, PerfModel

__all__ = ["LatencyLearner", "LearnedPerfModel", "LearnerParams", "VariantState"]


@dataclass(frozen=True, slots=True)
class LearnerParams:
    """Knobs of :class:`LatencyLearner` (units: seconds, or unitless scale factors)."""

    kappa: float = 1.0
    """Standard deviations added per coefficient in the predictions decisions use (>= 0)."""
    ttft_prior_sd: tuple[float, float, float] = (0.02, 0.5, 0.004)
    """Prior sd of (offset s, scale of the prior's TTFT, seconds per stream served)."""
    tpot_prior_sd: tuple[float, float] = (0.004, 0.5)
    """Prior sd of (offset s, scale of the prior's TPOT)."""
    initial_relative_noise: float = 0.35
    """Relative noise of one observation before any residual was seen."""
    noise_floor: float = 0.05
    """Smallest relative noise (keeps one exact observation from freezing the model)."""
    drift_sd: tuple[float, float] = (0.003, 0.0005)
    """Random walk per observation of the scale terms and of the offsets (a1/b1, a0/b0)."""
    clip_sigmas: float = 3.0
    """Residuals beyond this many predictive sds are clipped before the update."""
    noise_memory: int = 200
    """Observations over which the relative noise level is averaged (exponentially)."""

    def __post_init__(self) -> None:
        values = [
            self.kappa,
            *self.ttft_prior_sd,
            *self.tpot_prior_sd,
            self.initial_relative_noise,
            self.noise_floor,
            *self.drift_sd,
            self.clip_sigmas,
        ]
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise ValueError("LearnerParams: every value must be finite and >= 0")
        if self.noise_floor <= 0 or self.initial_relative_noise <= 0 or self.noise_memory < 1:
            raise ValueError("LearnerParams: noise_floor, initial_relative_noise > 0, memory >= 1")


@dataclass(frozen=True, slots=True)
class LearnedPerfModel:
    """A prior corrected by learned coefficients (a :class:`~modelfleet.policy.perf.PerfModel`).

    ``ttft`` = (a0, a1, a2) and ``tpot`` = (b0, b1) are the coefficients this snapshot predicts
    with (upper ones for decisions, see the module doc); ``central`` is the same model with the
    posterior means (``None`` on the central model itself). ``ttft_observations`` and
    ``tpot_observations`` count the evidence behind it.
    """

    prior: ParametricPerfModel
    ttft: tuple[float, float, float] = (0.0, 1.0, 0.0)
    tpot: tuple[float, float] = (0.0, 1.0)
    central: LearnedPerfModel | None = None
    ttft_observations: int = 0
    tpot_observations: int = 0

    def predict_ttft(
        self,
        prompt_tokens: int,
        cached_tokens: int,
        *,
        running: int,
        waiting: int,
        pending_prefill_tokens: int,
        streams: int = 0,
    ) -> float:
        a0, a1, a2 = self.ttft
        base = self.prior.predict_ttft(
            prompt_tokens,
            cached_tokens,
            running=running,
            waiting=waiting,
            pending_prefill_tokens=pending_prefill_tokens,
        )
        return a0 + a1 * base + a2 * streams

    def predict_tpot(self, *, running: int) -> float:
        b0, b1 = self.tpot
        return b0 + b1 * self.prior.predict_tpot(running=running)


class _Regression:
    """Recursive Bayesian least squares with relative noise, clipping and drift (pure Python)."""

    __slots__ = ("cov", "drift", "mean", "n", "noise2", "params")

    def __init__(
        self, mean: Sequence[float], sd: Sequence[float], drift: Sequence[float], p: LearnerParams
    ) -> None:
        k = len(mean)
        self.mean = list(mean)
        self.cov = [[(sd[i] ** 2 if i == j else 0.0) for j in range(k)] for i in range(k)]
        self.drift = [d * d for d in drift]
        self.noise2 = p.initial_relative_noise**2
        self.n = 0
        self.params = p

    def update(self, x: Sequence[float], y: float, scale: float) -> None:
        """One observation ``y`` of ``x . theta`` whose noise sd is ``relative noise * scale``."""
        k = len(x)
        cov, mean = self.cov, self.mean
        px = [sum(cov[i][j] * x[j] for j in range(k)) for i in range(k)]
        r = self.noise2 * scale * scale
        s = sum(x[i] * px[i] for i in range(k)) + r
        if not (s > 0 and math.isfinite(s)):
            return
        resid = y - sum(mean[i] * x[i] for i in range(k))
        bound = self.params.clip_sigmas * math.sqrt(s)
        clipped = resid if -bound <= resid <= bound else math.copysign(bound, resid)
        gain = [v / s for v in px]
        for i in range(k):
            mean[i] += gain[i] * clipped
            row = cov[i]
            for j in range(k):
                row[j] -= gain[i] * px[j]
        for i in range(k):  # symmetrise, keep the diagonal positive, then drift
            for j in range(i + 1, k):
                v = 0.5 * (cov[i][j] + cov[j][i])
                cov[i][j] = cov[j][i] = v
            cov[i][i] = max(cov[i][i], 1e-12) + self.drift[i]
        # relative noise from the residuals (the part beyond the parameter uncertainty)
        z2 = clipped * clipped / (scale * scale) if scale > 0 else 0.0
        w = 1.0 / min(self.n + 1, self.params.noise_memory)
        self.noise2 = max(self.params.noise_floor**2, (1 - w) * self.noise2 + w * z2)
        self.n += 1

    def sd(self, i: int) -> float:
        return math.sqrt(max(self.cov[i][i], 0.0))


@dataclass
class VariantState:
    """The learned state of one variant (accelerator, model, prior), and its last snapshot."""

    prior: ParametricPerfModel
    ttft: _Regression
    tpot: _Regression
    snapshot: LearnedPerfModel
    endpoints: set[Hashable] = field(default_factory=set)

    def summary(self) -> dict[str, float]:
        """Posterior means, sds and evidence (for reports; not used by decisions)."""
        t, d = self.ttft, self.tpot
        return {
            "ttft_offset_s": t.mean[0],
            "ttft_scale": t.mean[1],
            "ttft_scale_sd": t.sd(1),
            "ttft_per_stream_s": t.mean[2],
            "ttft_observations": float(t.n),
            "ttft_relative_noise": math.sqrt(t.noise2),
            "tpot_offset_s": d.mean[0],
            "tpot_scale": d.mean[1],
            "tpot_scale_sd": d.sd(1),
            "tpot_observations": float(d.n),
        }


def _positive(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(v if v > 0.0 else 0.0 for v in values)


class LatencyLearner:
    """Per-variant learned latency models; see the module docstring. Pure and synchronous.

    The routing host calls :meth:`register` for each endpoint with its prior, :meth:`model_for`
    when it builds a view, and :meth:`observe_ttft` / :meth:`observe_tpot` from its lifecycle
    hooks. Endpoints with the same ``(accelerator, model, prior)`` share one variant: what one
    replica teaches applies to every replica of that variant at once.
    """

    def __init__(self, params: LearnerParams | None = None) -> None:
        self.params = params or LearnerParams()
        self._variants: dict[tuple[Hashable, ...], VariantState] = {}
        self._by_endpoint: dict[Hashable, VariantState] = {}

    def register(
        self, endpoint: Hashable, accelerator: str, model: str, prior: PerfModel | None
    ) -> None:
        """Attach ``endpoint`` to its variant (a model is only learned for a parametric prior)."""
        old = self._by_endpoint.pop(endpoint, None)
        if old is not None:
            old.endpoints.discard(endpoint)
        if not isinstance(prior, ParametricPerfModel):
            return
        key = (accelerator, model, prior)
        state = self._variants.get(key)
        if state is None:
            p = self.params
            state = VariantState(
                prior=prior,
                ttft=_Regression((0.0, 1.0, 0.0), p.ttft_prior_sd, _ttft_drift(p), p),
                tpot=_Regression((0.0, 1.0), p.tpot_prior_sd, _tpot_drift(p), p),
                snapshot=LearnedPerfModel(prior),
            )
            state.snapshot = self._snapshot(state)
            self._variants[key] = state
        state.endpoints.add(endpoint)
        self._by_endpoint[endpoint] = state

    def forget(self, endpoint: Hashable) -> None:
        state = self._by_endpoint.pop(endpoint, None)
        if state is not None:
            state.endpoints.discard(endpoint)

    def model_for(self, endpoint: Hashable) -> LearnedPerfModel | None:
        """The current snapshot of ``endpoint``'s variant (``None``: not learned)."""
        state = self._by_endpoint.get(endpoint)
        return None if state is None else state.snapshot

    def prior_for(self, endpoint: Hashable) -> ParametricPerfModel | None:
        state = self._by_endpoint.get(endpoint)
        return None if state is None else state.prior

    def observe_ttft(
        self, endpoint: Hashable, prior_ttft: float, streams: int, ttft: float
    ) -> None:
        """One request's TTFT, observed with the prior's prediction for it at routing time."""
        state = self._by_endpoint.get(endpoint)
        if state is None or not (math.isfinite(ttft) and ttft >= 0 and prior_ttft > 0):
            return
        state.ttft.update((1.0, prior_ttft, float(streams)), ttft, prior_ttft + 0.02)
        state.snapshot = self._snapshot(state)

    def observe_tpot(self, endpoint: Hashable, prior_tpot: float, tpot: float) -> None:
        """One request's mean time per output token, with the prior's TPOT at its batch."""
        state = self._by_endpoint.get(endpoint)
        if state is None or not (math.isfinite(tpot) and tpot >= 0 and prior_tpot > 0):
            return
        state.tpot.update((1.0, prior_tpot), tpot, prior_tpot)
        state.snapshot = self._snapshot(state)

    def variants(self) -> Mapping[tuple[Hashable, ...], VariantState]:
        return self._variants

    def _snapshot(self, state: VariantState) -> LearnedPerfModel:
        kappa = self.params.kappa
        t, d = state.ttft, state.tpot
        t_mean = _positive(t.mean)
        d_mean = _positive(d.mean)
        central = LearnedPerfModel(
            state.prior,
            (t_mean[0], max(t_mean[1], 0.05), t_mean[2]),
            (d_mean[0], max(d_mean[1], 0.05)),
            None,
            t.n,
            d.n,
        )
        if kappa == 0:
            return central
        t_up = tuple(v + kappa * t.sd(i) for i, v in enumerate(central.ttft))
        d_up = tuple(v + kappa * d.sd(i) for i, v in enumerate(central.tpot))
        return LearnedPerfModel(
            state.prior,
            (t_up[0], t_up[1], t_up[2]),
            (d_up[0], d_up[1]),
            central,
            t.n,
            d.n,
        )


def _ttft_drift(p: LearnerParams) -> tuple[float, float, float]:
    scale, offset = p.drift_sd
    return (offset, scale, offset * 0.1)


def _tpot_drift(p: LearnerParams) -> tuple[float, float]:
    scale, offset = p.drift_sd
    return (offset * 0.2, scale)
