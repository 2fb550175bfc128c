"""The operator's client of the scheduler's control API, against a real gRPC server on
loopback (the hand-written fake of ``tests/support/fake_control.py``)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from support.fake_control import FakeControl, endpoint, pool_stats

from modelfleet.control import control_pb2 as pb
from modelfleet.operator.control_client import SchedulerClient

pytestmark = pytest.mark.integration


@pytest.fixture
def fake() -> Iterator[FakeControl]:
    before = threading.active_count()
    with FakeControl(token="s3cret") as server:
        yield server
    # the server's threads and every call are gone with it
    assert threading.active_count() <= before + 1


@pytest.fixture
def client(fake: FakeControl) -> Iterator[SchedulerClient]:
    c = SchedulerClient(fake.address, "s3cret", call_timeout_s=5)
    yield c
    c.close()


def test_drain_streams_until_empty(fake: FakeControl, client: SchedulerClient) -> None:
    fake.endpoints["ns/a"] = endpoint("ns", "a", "p", "v", inflight=2)
    fake.drain_plans["ns/a"] = [(pb.DRAINING, 2, 0.0), (pb.DRAINING, 1, 0.05), (pb.EMPTY, 0, 0.05)]
    result = client.drain("ns/a", 30, "scale-down")
    assert result.outcome == "empty" and result.finished
    (req,) = fake.calls_of("Drain")
    assert (req.endpoint, req.deadline_s, req.reason) == ("ns/a", 30, "scale-down")


def test_drain_deadline_and_unknown_are_final(fake: FakeControl, client: SchedulerClient) -> None:
    fake.drain_plans["ns/slow"] = [(pb.DRAINING, 3, 0.0), (pb.DEADLINE_EXCEEDED, 2, 0.05)]
    slow = client.drain("ns/slow", 1, "rollout")
    assert (slow.outcome, slow.remaining, slow.finished) == ("deadline", 2, True)
    unknown = client.drain("ns/nobody", 1, "rollout")
    assert (unknown.outcome, unknown.finished) == ("unknown", True)


def test_a_stream_that_ends_without_a_final_state_is_an_error(
    fake: FakeControl, client: SchedulerClient
) -> None:
    fake.drain_plans["ns/cut"] = [(pb.DRAINING, 1, 0.0)]
    result = client.drain("ns/cut", 5, "scale-down")
    assert result.outcome == "error" and not result.finished


def test_calls_without_the_token_are_refused(fake: FakeControl) -> None:
    fake.endpoints["ns/a"] = endpoint("ns", "a", "p", "v")
    wrong = SchedulerClient(fake.address, "not-the-token")
    try:
        assert wrong.drain("ns/a", 5, "scale-down").outcome == "refused"
        assert wrong.endpoint_loads("ns", "p") is None
        assert wrong.demand("ns", "p", 60, 90) is None
        assert wrong.undrain("ns/a") is None
    finally:
        wrong.close()
    assert fake.calls_of("Drain") == []  # refused before the service ran


def test_a_scheduler_that_is_not_there_is_reported_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gone = SchedulerClient(f"127.0.0.1:{port}", "t", call_timeout_s=1, drain_slack_s=1)
    try:
        assert gone.drain("ns/a", 0.5, "scale-down").outcome == "unavailable"
        assert gone.endpoint_loads("ns", "p") is None
        assert gone.demand("ns", "p", 60, 90) is None
    finally:
        gone.close()


def test_endpoint_loads_by_pod_in_the_namespace(fake: FakeControl, client: SchedulerClient) -> None:
    fake.endpoints["ns/a"] = endpoint("ns", "a", "p", "v", inflight=4, running=3)
    fake.endpoints["ns/b"] = endpoint("ns", "b", "p", "v", inflight=1)
    fake.endpoints["other/a"] = endpoint("other", "a", "p", "v", inflight=9)
    fake.endpoints["ns/c"] = endpoint("ns", "c", "q", "v", inflight=9)
    loads = client.endpoint_loads("ns", "p")
    assert loads is not None
    assert {k: v.work for k, v in loads.items()} == {"a": 4, "b": 1}


def test_stats_become_the_autoscalers_demand(fake: FakeControl, client: SchedulerClient) -> None:
    fake.stats[("ns", "p")] = pool_stats(
        "ns", "p", rate=7.5, prompt=900, output=150, queued=2, unplaced=30,
        ttft_p90=0.7, tpot_p90=0.05, requests=400,
    )  # fmt: skip
    d = client.demand("ns", "p", 60, 90)
    assert d is not None
    assert (d.arrival_rate, d.mean_prompt_tokens, d.mean_output_tokens) == (7.5, 900, 150)
    assert (d.queued, d.unplaced, d.samples, d.window_s) == (2, 30, 400, 60)
    assert (d.ttft_s, d.tpot_s) == (0.7, 0.05)
    (req,) = fake.calls_of("Stats")
    assert (req.namespace, req.pool, req.window_s) == ("ns", "p", 60)
    # a pool the scheduler has not seen yet has no demand, not an unknown one
    idle = client.demand("ns", "new", 60, 90)
    assert idle is not None and not idle.active and idle.ttft_s is None


def test_undrain_reports_whether_it_was_draining(
    fake: FakeControl, client: SchedulerClient
) -> None:
    fake.endpoints["ns/a"] = endpoint("ns", "a", "p", "v")
    client.drain("ns/a", 5, "scale-down")
    assert client.undrain("ns/a") is True
    assert client.undrain("ns/a") is False
