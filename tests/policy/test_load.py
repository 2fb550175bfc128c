"""InflightTracker: the scheduler-side counters of EndpointView."""

from __future__ import annotations

import pytest
from policy_fakes import req

from modelfleet.policy.load import InflightTracker
from modelfleet.policy.types import EndpointId, RequestId

pytestmark = pytest.mark.unit

A, B = EndpointId("a"), EndpointId("b")


def test_lifecycle_counts() -> None:
    t = InflightTracker()
    assert t.counters(A) == (0, 0, 0)
    t.on_routed(req("1", prompt_tokens=100), A)
    t.on_routed(req("2", prompt_tokens=50), A)
    assert t.counters(A) == (2, 150, 150)
    t.on_first_token(RequestId("1"))
    t.on_first_token(RequestId("1"))  # idempotent
    t.on_token(RequestId("1"), 5)
    assert t.counters(A) == (2, 155, 50)
    t.on_migrated(RequestId("1"), A, B)
    assert t.counters(A) == (1, 50, 50)
    assert t.counters(B) == (1, 105, 105)
    assert t.endpoint_of(RequestId("1")) == B
    t.on_completed(RequestId("1"))
    t.on_completed(RequestId("2"))
    t.on_completed(RequestId("unknown"))
    assert t.counters(A) == (0, 0, 0) and t.counters(B) == (0, 0, 0)


def test_migrated_from_wrong_source_is_ignored() -> None:
    t = InflightTracker()
    t.on_routed(req("1", prompt_tokens=10), A)
    t.on_migrated(RequestId("1"), B, A)
    assert t.counters(A) == (1, 10, 10)
