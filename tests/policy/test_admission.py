"""Admission by SLO class."""

from __future__ import annotations

import pytest
from policy_fakes import PERF, ep, req

from modelfleet.policy.admission import SloClassPolicy, admit
from modelfleet.policy.types import EndpointId

pytestmark = pytest.mark.unit

QUEUE = SloClassPolicy("batch", on_unmeetable="queue")
SHED = SloClassPolicy("sheddable", on_unmeetable="shed")
DOWN = SloClassPolicy("interactive", on_unmeetable="downgrade", downgrade_pool="small")

FAST = ep("fast", perf=PERF)
JAMMED = ep("jammed", perf=PERF, inflight_prefill_tokens=100_000)


@pytest.mark.parametrize(
    ("endpoints", "cls", "action"),
    [
        pytest.param([], QUEUE, "queue", id="empty-queue"),
        pytest.param([], SHED, "shed", id="empty-shed"),
        pytest.param([], DOWN, "downgrade", id="empty-downgrade"),
        pytest.param([FAST], SHED, "admit", id="one-meets"),
        pytest.param([JAMMED], QUEUE, "queue", id="one-misses-queue"),
        pytest.param([JAMMED], SHED, "shed", id="one-misses-shed"),
        pytest.param([JAMMED], DOWN, "downgrade", id="one-misses-downgrade"),
        pytest.param([JAMMED, JAMMED], SHED, "shed", id="all-equal-miss"),
        pytest.param([JAMMED, FAST], SHED, "admit", id="any-meets"),
        pytest.param([ep("blind")], SHED, "admit", id="no-perf-fails-open"),
        pytest.param([ep("gone", perf=PERF, draining=True)], SHED, "shed", id="draining-only"),
    ],
)
def test_admission_table(endpoints: list, cls: SloClassPolicy, action: str) -> None:
    d = admit(req(prompt_tokens=2000, ttft_slo_s=1.0), endpoints, {}, cls)
    assert d.action == action
    if action == "downgrade":
        assert d.downgrade_pool == "small"


def test_no_target_is_admitted() -> None:
    assert admit(req(prompt_tokens=10**6), [JAMMED], {}, SHED).action == "admit"


def test_prefix_hit_can_make_the_target_reachable() -> None:
    r = req(prompt_tokens=20_000, ttft_slo_s=1.0)
    assert admit(r, [FAST], {}, SHED).action == "shed"
    d = admit(r, [FAST], {EndpointId("fast"): 19_000}, SHED)
    assert d.action == "admit" and d.best_endpoint == "fast"


def test_queue_reports_the_excess() -> None:
    d = admit(req(prompt_tokens=2000, ttft_slo_s=1.0), [JAMMED], {}, QUEUE)
    # by hand: 0.01 s base + (2000 own + 100000 queued) tokens x 1e-4 s = 10.21 s, 9.21 s late
    assert d.best_predicted_ttft_s == pytest.approx(10.21)
    assert d.retry_after_s == pytest.approx(9.21)
    assert "exceeds class 'batch'" in d.reason


def test_downgrade_needs_a_pool() -> None:
    with pytest.raises(ValueError, match="downgradePool"):
        SloClassPolicy("x", on_unmeetable="downgrade")
