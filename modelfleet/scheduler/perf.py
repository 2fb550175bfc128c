"""Per-variant latency models for the SLO terms: a prior from the API, refined by observation.

The policy layer's :class:`~modelfleet.policy.perf.ParametricPerfModel` needs coefficients per
(accelerator, model, TP). The simulator fits them to its engines' timing model; the live
scheduler cannot see a timing model, so it starts from a prior and corrects it with what it
measures:

* **Prior** (:func:`prior_perf`): the coefficients of an 8B model on one H100 (the model's
  defaults) divided by the AcceleratorProfile's ``prefillSpeed`` / ``decodeSpeed`` times the
  variant's tensor-parallel size, with the pool's ``maxNumBatchedTokens`` and ``maxNumSeqs``.
* **Learning**: each pool's :class:`~modelfleet.policy.host.Router` carries a
  :class:`~modelfleet.policy.learn.LatencyLearner` (as the simulator's routing host does) that
  corrects the prior per variant from the TTFT and TPOT it observes, so a model larger than
  8B, a slower GPU than declared or an engine simulator at ``--time-scale 0.1`` is learned.

Pure: no clock, no I/O.
"""

from __future__ import annotations

from modelfleet.api.accelerator import AcceleratorProfile
from modelfleet.api.modelpool import ModelPool, Variant
from modelfleet.policy.perf import ParametricPerfModel

__all__ = ["prior_perf", "relative_speed"]

_BASE = ParametricPerfModel()


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
