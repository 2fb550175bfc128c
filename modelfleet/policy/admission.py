"""Admission by SLO class: admit, queue, shed or downgrade when no endpoint can meet the target.

Pure: the same predictions the ``slo-headroom`` scorer uses (each endpoint's perf model, its
prefix hit and the prefill queued on it) decide whether *any* healthy endpoint is predicted to
meet the request's TTFT target. If one is, admit. If none is, the class says what to do:

* ``queue`` — hold the request at the scheduler (fair for batch-like classes; it will be
  re-admitted when the prediction improves); ``retry_after_s`` is the predicted excess.
* ``shed`` — reject now with 429/503 (sheddable classes; cheap for the fleet).
* ``downgrade`` — send it to ``downgrade_pool`` (e.g. a smaller model) instead.

Fail open: with no target, or no endpoint with a perf model, the request is admitted — the
admission layer must never turn a missing model into an outage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from modelfleet.policy.perf import predict_ttft
from modelfleet.policy.types import EndpointId, EndpointView, RequestView

AdmissionAction = Literal["admit", "queue", "shed", "downgrade"]


@dataclass(frozen=True, slots=True)
class SloClassPolicy:
    """What to do with requests of one SLO class when the target cannot be met."""

    name: str
    priority: int = 0
    on_unmeetable: Literal["queue", "shed", "downgrade"] = "queue"
    downgrade_pool: str | None = None
    slack: float = 1.0

    def __post_init__(self) -> None:
        if self.on_unmeetable == "downgrade" and not self.downgrade_pool:
            raise ValueError(
                f"SLO class {self.name!r}: onUnmeetable 'downgrade' needs a downgradePool"
            )
        if self.slack <= 0:
            raise ValueError(f"SLO class {self.name!r}: slack must be > 0")


@dataclass(frozen=True, slots=True)
class AdmissionDecision:
    action: AdmissionAction
    reason: str
    best_endpoint: EndpointId | None = None
    best_predicted_ttft_s: float | None = None
    downgrade_pool: str | None = None
    retry_after_s: float | None = None


def admit(
    request: RequestView,
    endpoints: Sequence[EndpointView],
    prefix_hits: Mapping[EndpointId, int],
    cls: SloClassPolicy,
) -> AdmissionDecision:
    """Decide admission of ``request`` (see module docstring). Never raises on valid input."""
    target = request.ttft_slo_s
    live = [e for e in endpoints if e.healthy and not e.draining]
    if not live:
        if cls.on_unmeetable == "downgrade":
            return AdmissionDecision(
                "downgrade", "no healthy endpoint", downgrade_pool=cls.downgrade_pool
            )
        return AdmissionDecision(
            "shed" if cls.on_unmeetable == "shed" else "queue", "no healthy endpoint"
        )
    if target is None:
        return AdmissionDecision("admit", "no TTFT target")
    preds = [
        (predict_ttft(e.perf, e, request.prompt_tokens, prefix_hits.get(e.id, 0)), e.id)
        for e in live
        if e.perf is not None
    ]
    if not preds:
        return AdmissionDecision("admit", "no perf model to judge the target")
    best_pred, best_ep = min(preds)
    if best_pred <= target * cls.slack:
        return AdmissionDecision("admit", "target met", best_ep, best_pred)
    reason = (
        f"best predicted TTFT {best_pred:.3f}s on {best_ep} exceeds class {cls.name!r} "
        f"target {target:.3f}s"
    )
    if cls.on_unmeetable == "downgrade":
        return AdmissionDecision(
            "downgrade", reason, best_ep, best_pred, downgrade_pool=cls.downgrade_pool
        )
    if cls.on_unmeetable == "shed":
        return AdmissionDecision("shed", reason, best_ep, best_pred)
    return AdmissionDecision(
        "queue", reason, best_ep, best_pred, retry_after_s=best_pred - target * cls.slack
    )
