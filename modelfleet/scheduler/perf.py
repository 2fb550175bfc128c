"""Per-variant latency models for the SLO terms: a prior from the API, refined by observation.

The policy layer's :class:`~modelfleet.policy.perf.ParametricPerfModel` needs coefficients per
(accelerator, model, TP). The simulator fits them to its engines' timing model; the live
scheduler cannot see a timing model, so it starts from a prior and corrects it with what it
measures:

* **Prior** (:func:`prior_perf`): the coefficients of an 8B model on one H100 (the model's
  defaults) divided by the AcceleratorProfile's ``prefillSpeed`` / ``decodeSpeed`` times the
  variant's tensor-parallel size, with the pool's ``maxNumBatchedTokens`` and ``maxNumSeqs``.
* **Calibration** (:class:`PerfCalibrator`): per variant, an exponentially weighted mean of
  ``log(observed / predicted)`` for TTFT (predicted at routing time, against the same views the
  policy saw) and for TPOT. The variant's model is the prior with its prefill coefficients
  scaled by ``exp(mean TTFT error)`` and its decode coefficients by ``exp(mean TPOT error)``,
  each scale clamped to [1/100, 100]. Two scales cannot fit a model the prior's shape gets
  wrong, but they absorb what matters most: a model larger than 8B, a slower GPU than declared,
  an engine simulator running ``--time-scale 0.1``.

Pure: no clock (observations carry their own numbers), no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from modelfleet.api.accelerator import AcceleratorProfile
from modelfleet.api.modelpool import ModelPool, Variant
from modelfleet.policy.perf import ParametricPerfModel

__all__ = ["PerfCalibrator", "prior_perf", "relative_speed"]

_BASE = ParametricPerfModel()
_MAX_SCALE = 100.0


def _speeds(profile: AcceleratorProfile | None, variant: Variant) -> tuple[float, float]:
    tp = variant.tensor_parallel_size
    if profile is None:
        return float(tp), float(tp)
    return profile.spec.prefill_speed * tp, profile.spec.decode_speed * tp


def relative_speed(profile: AcceleratorProfile | None, variant: Variant) -> float:
    """The variant's decode capacity relative to one H100 (the bounded-load weight)."""
    return _speeds(profile, variant)[1]


def prior_perf(
    pool: ModelPool, variant: Variant, profile: AcceleratorProfile | None
) -> ParametricPerfModel:
    """The prior model of ``variant`` (see the module docstring)."""
    prefill, decode = _speeds(profile, variant)
    engine = pool.spec.engine
    return ParametricPerfModel(
        prefill_base_s=_BASE.prefill_base_s / prefill,
        prefill_s_per_token=_BASE.prefill_s_per_token / prefill,
        decode_base_s=_BASE.decode_base_s / decode,
        decode_s_per_seq=_BASE.decode_s_per_seq / decode,
        chunk_tokens=engine.max_num_batched_tokens,
        max_num_seqs=engine.max_num_seqs,
        mean_decode_s_per_request=_BASE.mean_decode_s_per_request / decode,
    )


@dataclass
class _Scale:
    ttft_log: float = 0.0
    tpot_log: float = 0.0
    ttft_n: int = 0
    tpot_n: int = 0


def _clamped_log(ratio: float) -> float | None:
    if not (math.isfinite(ratio) and ratio > 0):
        return None
    return max(-math.log(_MAX_SCALE), min(math.log(_MAX_SCALE), math.log(ratio)))


class PerfCalibrator:
    """Observed/predicted latency ratios per variant key, and the models they give.

    ``alpha`` is the weight of a new observation in the running mean of the log ratio (the
    first observation of a variant is taken whole, so a 10× error is corrected at once).
    """

    def __init__(self, alpha: float = 0.1) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._scales: dict[str, _Scale] = {}

    def observe_ttft(self, key: str, predicted_s: float, observed_s: float) -> None:
        if predicted_s <= 0:
            return
        lr = _clamped_log(observed_s / predicted_s)
        if lr is None:
            return
        s = self._scales.setdefault(key, _Scale())
        s.ttft_log = lr if s.ttft_n == 0 else (1 - self.alpha) * s.ttft_log + self.alpha * lr
        s.ttft_n += 1

    def observe_tpot(self, key: str, predicted_s: float, observed_s: float) -> None:
        if predicted_s <= 0:
            return
        lr = _clamped_log(observed_s / predicted_s)
        if lr is None:
            return
        s = self._scales.setdefault(key, _Scale())
        s.tpot_log = lr if s.tpot_n == 0 else (1 - self.alpha) * s.tpot_log + self.alpha * lr
        s.tpot_n += 1

    def scales(self, key: str) -> tuple[float, float]:
        """(TTFT scale, TPOT scale) of ``key``: 1.0 before any observation."""
        s = self._scales.get(key)
        if s is None:
            return 1.0, 1.0
        return math.exp(s.ttft_log), math.exp(s.tpot_log)

    def model(self, key: str, prior: ParametricPerfModel) -> ParametricPerfModel:
        """``prior`` with the observed scales applied."""
        ttft, tpot = self.scales(key)
        if ttft == 1.0 and tpot == 1.0:
            return prior
        return replace(
            prior,
            prefill_base_s=prior.prefill_base_s * ttft,
            prefill_s_per_token=prior.prefill_s_per_token * ttft,
            decode_base_s=prior.decode_base_s * tpot,
            decode_s_per_seq=prior.decode_s_per_seq * tpot,
            mean_decode_s_per_request=prior.mean_decode_s_per_request * tpot,
        )
