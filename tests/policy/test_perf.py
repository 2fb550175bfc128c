"""The one TTFT helper: a queue (view or planner load) mapped onto PerfModel.predict_ttft."""

from __future__ import annotations

import pytest
from policy_fakes import PERF, ep

from modelfleet.policy.perf import predict_ttft

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("running", "waiting", "pending", "prompt", "cached"),
    [(0, 0, 0, 0, 0), (0, 0, 0, 1000, 0), (5, 2, 3000, 1000, 200), (80, 10, 9000, 500, 500)],
    ids=["empty", "idle", "busy", "full-batch-all-cached"],
)
def test_maps_the_queue_onto_the_perf_model(
    running: int, waiting: int, pending: int, prompt: int, cached: int
) -> None:
    view = ep("a", running=running, waiting=waiting, inflight_prefill_tokens=pending)
    expected = PERF.predict_ttft(
        prompt, cached, running=running, waiting=waiting, pending_prefill_tokens=pending
    )
    assert predict_ttft(PERF, view, prompt, cached) == expected


def test_a_request_already_queued_is_not_ahead_of_itself() -> None:
    view = ep("a", running=4, waiting=3, inflight_prefill_tokens=2500)
    own = predict_ttft(PERF, view, 1000, queued_itself=True)
    assert own == PERF.predict_ttft(1000, 0, running=4, waiting=2, pending_prefill_tokens=1500)
    assert own < predict_ttft(PERF, view, 1000)
    # never below an empty queue, even when the counters lag behind the request
    lagging = ep("a", running=4, waiting=0, inflight_prefill_tokens=10)
    assert predict_ttft(PERF, lagging, 1000, queued_itself=True) == PERF.predict_ttft(
        1000, 0, running=4, waiting=0, pending_prefill_tokens=0
    )
