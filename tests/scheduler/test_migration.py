"""Live migration and the gRPC control API, against a real scheduler and engine simulators.

One ``modelfleet scheduler --no-ray --control-port`` process (the same runtime a Serve replica
runs, served by uvicorn: Ray's start-up costs a minute on this machine and is covered by the
session's live scheduler) over a pool of three real-time engine simulators (``mig``), plus one
engine outside the fleet that answers the reference (unmigrated) runs. The operator's side
is a real gRPC channel on loopback.

The migrations are driven through the public API only: ``Drain`` of an endpoint moves every
stream on it to the others, ``Undrain`` lets it take requests again; draining the endpoints in
turn while streams run moves each stream several times at cut points the timing picks.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest

from modelfleet.control import bearer
from modelfleet.control import control_pb2 as pb
from modelfleet.control import control_pb2_grpc as pb_grpc

from .conftest import free_port, start_scheduler, stop_scheduler, wait_listening
from .fleet_helpers import EngineProc, endpoints_yaml, fleet_yaml, pool_yaml, start_engine, stop_all

pytestmark = pytest.mark.integration

TOKEN = "mig-test-token"
POLICY = """
apiVersion: modelfleet.io/v1alpha1
kind: RoutingPolicy
metadata: {name: mig, namespace: default}
spec:
  modelNames: [mig]
  defaultTargets: [{pool: mig}]
  placement: {profile: least-request}
"""


@dataclass
class MigFleet:
    url: str
    control: str
    engines: list[EngineProc]
    reference: EngineProc
    proc: subprocess.Popen[str]
    ids: list[str] = field(default_factory=list)

    def stub(self) -> pb_grpc.ControlStub:
        return pb_grpc.ControlStub(grpc.insecure_channel(self.control))

    def metrics(self) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url + "/metrics", timeout=10).text
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
        return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigFleet]:
    engines: list[EngineProc] = []
    ref: EngineProc | None = None
    try:
        engines = [start_engine("mig-8b", time_scale=1.0) for _ in range(3)]
        ref = start_engine("mig-8b", time_scale=0.02)
        config = tmp_path_factory.mktemp("migfleet")
        pool = pool_yaml("mig", "mig-8b", {"h100": "h100-80gb"})
        rows = [("mig", "h100", e) for e in engines]
        (config / "fleet.yaml").write_text(fleet_yaml(pool, POLICY, endpoints_yaml(rows)))
        port, cport = free_port(), free_port()
        os.environ["MODELFLEET_CONTROL_TOKEN"] = TOKEN
        try:
            proc = start_scheduler(config, port, "--no-ray", "--control-port", str(cport))
        finally:
            del os.environ["MODELFLEET_CONTROL_TOKEN"]
        try:
            url = wait_listening(proc)
            ids = [e.url.removeprefix("http://") for e in engines]
            yield MigFleet(url, f"127.0.0.1:{cport}", engines, ref, proc, ids)
        finally:
            rc, left = stop_scheduler(proc)
            assert rc == 0, f"scheduler exited with {rc}"
            assert not left, "processes outlived the scheduler:\n" + "\n".join(left)
    finally:
        stop_all([*engines, *([ref] if ref else [])])


# ---------------------------------------------------------------------- helpers
@dataclass
class Streamed:
    ids: list[int]
    text: str
    finish: str | None
    usage: dict[str, Any] | None
    errors: list[Any]
    prompt_ids: list[int] | None


def _body(kind: str, i: int, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "mig",
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "return_token_ids": True,
        "stream_options": {"include_usage": True},
    }
    words = " ".join(f"w{(i * 7 + k) % 97}" for k in range(20 + i % 30))
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": f"Request {i}: {words}"}]
    else:
        body["prompt"] = f"Request {i}: {words}"
    return body


async def stream(client: httpx.AsyncClient, url: str, kind: str, body: dict[str, Any]) -> Streamed:
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    ids: list[int] = []
    text: list[str] = []
    out = Streamed(ids, "", None, None, [], None)
    async with client.stream("POST", url + path, json=body, timeout=120) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            obj = json.loads(line[6:])
            if "error" in obj:
                out.errors.append(obj["error"])
                continue
            if obj.get("usage"):
                out.usage = obj["usage"]
            if isinstance(obj.get("prompt_token_ids"), list):
                out.prompt_ids = obj["prompt_token_ids"]
            for c in obj.get("choices") or ():
                if isinstance(c.get("prompt_token_ids"), list):
                    out.prompt_ids = c["prompt_token_ids"]
                ids.extend(c.get("token_ids") or [])
                t = c["delta"].get("content") if "delta" in c else c.get("text")
                text.append(t or "")
                if c.get("finish_reason"):
                    out.finish = c["finish_reason"]
    out.text = "".join(text)
    return out


def drain(fleet: MigFleet, endpoint: str, deadline_s: float = 30.0) -> list[pb.DrainProgress]:
    stub = fleet.stub()
    return list(
        stub.Drain(
            pb.DrainRequest(endpoint=endpoint, deadline_s=deadline_s, reason="manual"),
            metadata=bearer(TOKEN),
            timeout=deadline_s + 30,
        )
    )


def undrain(fleet: MigFleet, endpoint: str) -> bool:
    resp = fleet.stub().Undrain(
        pb.UndrainRequest(endpoint=endpoint), metadata=bearer(TOKEN), timeout=10
    )
    return bool(resp.was_draining)


# ------------------------------------------------------------------------ tests
def test_calls_without_the_token_are_refused(fleet: MigFleet) -> None:
    stub = fleet.stub()
    for metadata in (None, bearer("wrong-token")):
        with pytest.raises(grpc.RpcError) as err:
            stub.ListEndpoints(pb.ListEndpointsRequest(), metadata=metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Drain(pb.DrainRequest(endpoint=fleet.ids[0]), metadata=metadata, timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # nothing was drained by the refused call
    eps = stub.ListEndpoints(pb.ListEndpointsRequest(), metadata=bearer(TOKEN), timeout=10)
    assert not any(e.draining for e in eps.endpoints)


def test_list_endpoints_and_unknown_drain(fleet: MigFleet) -> None:
    stub = fleet.stub()
    resp = stub.ListEndpoints(
        pb.ListEndpointsRequest(pool="mig"), metadata=bearer(TOKEN), timeout=10
    )
    got = {e.id: e for e in resp.endpoints}
    assert set(got) == set(fleet.ids)
    for e in got.values():
        assert (e.pool, e.variant, e.model, e.namespace) == ("mig", "h100", "mig-8b", "default")
        assert e.address.startswith("http://127.0.0.1:") and e.healthy and not e.draining
    assert not stub.ListEndpoints(
        pb.ListEndpointsRequest(pool="nope"), metadata=bearer(TOKEN), timeout=10
    ).endpoints
    progress = drain(fleet, "default/no-such-pod")
    assert [p.state for p in progress] == [pb.UNKNOWN_ENDPOINT]


def test_drain_moves_streams_and_stops_placing(fleet: MigFleet) -> None:
    """Drain an endpoint under streaming load: every stream completes with the reference's
    tokens and text, the endpoint empties with migrations, and new requests avoid it until
    Undrain."""
    target = fleet.ids[0]

    async def run() -> tuple[list[Streamed], list[Streamed], list[pb.DrainProgress]]:
        async with httpx.AsyncClient() as client:
            bodies = [_body("completion" if i % 2 else "chat", i, 120) for i in range(12)]
            tasks = [
                asyncio.create_task(stream(client, fleet.url, "completion" if i % 2 else "chat", b))
                for i, b in enumerate(bodies)
            ]
            await asyncio.sleep(0.6)
            progress = await asyncio.to_thread(drain, fleet, target)
            got = await asyncio.gather(*tasks)
            refs = [
                await stream(client, fleet.reference.url, "completion" if i % 2 else "chat",
                             {**b, "model": "mig-8b"})
                for i, b in enumerate(bodies)
            ]  # fmt: skip
            return got, refs, progress

    before = fleet.metrics()
    got, refs, progress = asyncio.run(run())
    assert progress[-1].state == pb.EMPTY, progress[-1]
    assert progress[-1].migrated >= 1
    assert progress[-1].failed == 0
    assert all(p.state == pb.DRAINING for p in progress[:-1])
    for g, r in zip(got, refs, strict=True):
        assert not g.errors
        assert g.ids == r.ids and g.text == r.text and g.finish == r.finish == "length"
        assert g.usage is not None and r.usage is not None
        assert g.usage["completion_tokens"] == r.usage["completion_tokens"] == 120
        assert g.usage["prompt_tokens"] == r.usage["prompt_tokens"]
    eps = fleet.stub().ListEndpoints(pb.ListEndpointsRequest(), metadata=bearer(TOKEN), timeout=10)
    assert {e.id: e.draining for e in eps.endpoints}[target]
    # new requests avoid the drained endpoint
    engine_reqs = _engine_requests(fleet.engines[0].url)
    asyncio.run(_few(fleet, 4))
    assert _engine_requests(fleet.engines[0].url) == engine_reqs
    assert undrain(fleet, target) is True
    assert undrain(fleet, target) is False
    after = fleet.metrics()
    moved = _delta(before, after, "modelfleet_migrations_total", "outcome=switched")
    assert moved == progress[-1].migrated
    assert _delta(before, after, "modelfleet_drain_seconds_count", "state=empty") == 1
    assert (
        _delta(before, after, "modelfleet_migration_stall_seconds_count", "trigger=drain") == moved
    )


def _engine_requests(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for s in fam.samples:
            if s.name == "vllm:request_success_total":
                total += s.value
    return total


async def _few(fleet: MigFleet, n: int) -> None:
    async with httpx.AsyncClient() as client:
        await asyncio.gather(
            *(stream(client, fleet.url, "completion", _body("completion", i, 4)) for i in range(n))
        )


async def _until_streaming(fleet: MigFleet, endpoint: str, timeout_s: float = 30.0) -> None:
    """Wait until ``endpoint`` holds requests of the scheduler that are past their first
    token (its engine reports them running), then a little more."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        eps = fleet.stub().ListEndpoints(
            pb.ListEndpointsRequest(), metadata=bearer(TOKEN), timeout=10
        )
        e = {e.id: e for e in eps.endpoints}[endpoint]
        if e.inflight_requests > 0 and e.running > 0:
            await asyncio.sleep(0.3)
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no request streamed on {endpoint} within {timeout_s} s")


def _delta(before: dict[str, float], after: dict[str, float], name: str, label: str) -> float:
    def total(m: dict[str, float]) -> float:
        return sum(v for k, v in m.items() if k.startswith(name + "{") and label in k)

    return total(after) - total(before)


def test_rolling_drains_keep_every_stream_identical(fleet: MigFleet) -> None:
    """The scaled-down identity check: streams (completions and chat, greedy) run while the
    endpoints are drained in turn, so each moves several times at cut points the timing picks;
    the ids and text the client gets equal an unmigrated run's, with none lost or repeated."""
    rng = random.Random(16)
    n_streams = 40

    async def roll(stop: asyncio.Event) -> int:
        k = 0
        while not stop.is_set():
            ep = fleet.ids[k % len(fleet.ids)]
            await asyncio.sleep(rng.uniform(0.0, 0.2))
            await asyncio.to_thread(drain, fleet, ep, 20.0)
            await asyncio.to_thread(undrain, fleet, ep)
            k += 1
        return k

    async def run() -> tuple[list[Streamed], list[Streamed], int]:
        async with httpx.AsyncClient() as client:
            kinds = ["chat" if i % 2 else "completion" for i in range(n_streams)]
            bodies = [_body(k, 100 + i, rng.randint(200, 500)) for i, k in enumerate(kinds)]
            stop = asyncio.Event()
            roller = asyncio.create_task(roll(stop))
            sem = asyncio.Semaphore(16)

            async def one(k: str, b: dict[str, Any]) -> Streamed:
                async with sem:
                    return await stream(client, fleet.url, k, b)

            got = await asyncio.gather(*(one(k, b) for k, b in zip(kinds, bodies, strict=True)))
            stop.set()
            drains = await roller
            refs = [
                await stream(client, fleet.reference.url, k, {**b, "model": "mig-8b"})
                for k, b in zip(kinds, bodies, strict=True)
            ]
            return got, refs, drains

    before = fleet.metrics()
    got, refs, drains = asyncio.run(run())
    after = fleet.metrics()
    for g, r in zip(got, refs, strict=True):
        assert not g.errors
        assert g.ids == r.ids, "token ids differ from the unmigrated run"
        assert g.text == r.text
        assert g.finish == r.finish
        assert g.usage is not None and r.usage is not None
        assert g.usage["completion_tokens"] == r.usage["completion_tokens"]
        assert g.usage["prompt_tokens"] == r.usage["prompt_tokens"]
        assert g.prompt_ids == r.prompt_ids
    moved = _delta(before, after, "modelfleet_migrations_total", "outcome=switched")
    failed = _delta(before, after, "modelfleet_migrations_total", "outcome=failed")
    print(f"{drains} drains, {moved:.0f} migrations, {failed:.0f} failed hand-offs")
    assert failed == 0
    assert drains >= 3 and moved >= 5


def test_stats_reports_the_pool(fleet: MigFleet) -> None:
    asyncio.run(_few(fleet, 3))
    resp = fleet.stub().Stats(
        pb.StatsRequest(pool="mig", window_s=600), metadata=bearer(TOKEN), timeout=10
    )
    assert resp.window_s == 600
    (pool,) = resp.pools
    assert (pool.namespace, pool.pool, pool.model) == ("default", "mig", "mig-8b")
    (v,) = pool.variants
    assert v.variant == "h100" and v.accelerator == "h100-80gb"
    assert v.endpoints == 3 and v.ready_endpoints == 3
    assert v.requests >= 3 and v.arrival_rate_rps > 0
    assert v.mean_output_tokens > 0 and v.mean_prompt_tokens > 0
    assert v.ttft.count > 0 and 0 < v.ttft.p50_s <= v.ttft.p99_s
    assert v.errors == 0


def test_non_migratable_requests_finish_in_place(fleet: MigFleet) -> None:
    """A stream with a frequency penalty cannot move: the drain waits for it to finish where it
    is (completed, not migrated), and its output is the reference's."""
    target = fleet.ids[1]

    async def run() -> tuple[Streamed, Streamed, list[pb.DrainProgress]]:
        async with httpx.AsyncClient() as client:
            body = {
                **_body("completion", 7, 400),
                "frequency_penalty": 0.5,
            }  # still running when the drain starts
            # place it on the target: drain the others first
            for ep in fleet.ids:
                if ep != target:
                    await asyncio.to_thread(drain, fleet, ep, 5.0)
            task = asyncio.create_task(stream(client, fleet.url, "completion", body))
            await asyncio.sleep(0.5)
            for ep in fleet.ids:
                if ep != target:
                    await asyncio.to_thread(undrain, fleet, ep)
            progress = await asyncio.to_thread(drain, fleet, target, 60.0)
            got = await task
            ref = await stream(
                client, fleet.reference.url, "completion", {**body, "model": "mig-8b"}
            )
            await asyncio.to_thread(undrain, fleet, target)
            return got, ref, progress

    got, ref, progress = asyncio.run(run())
    assert progress[-1].state == pb.EMPTY
    assert progress[-1].migrated == 0 and progress[-1].completed == 1
    assert got.ids == ref.ids and not got.errors


def test_drain_deadline_is_reported(fleet: MigFleet) -> None:
    target = fleet.ids[2]

    async def run() -> list[pb.DrainProgress]:
        async with httpx.AsyncClient() as client:
            for ep in fleet.ids:
                if ep != target:
                    await asyncio.to_thread(drain, fleet, ep, 5.0)
            body = {**_body("completion", 9, 400), "presence_penalty": 0.3}
            task = asyncio.create_task(stream(client, fleet.url, "completion", body))
            await asyncio.sleep(0.5)
            progress = await asyncio.to_thread(drain, fleet, target, 0.5)
            for ep in fleet.ids:
                await asyncio.to_thread(undrain, fleet, ep)
            got = await task
            assert not got.errors and len(got.ids) == 400
            return progress

    progress = asyncio.run(run())
    assert progress[-1].state == pb.DEADLINE_EXCEEDED
    assert progress[-1].remaining == 1 and 0.5 <= progress[-1].elapsed_s < 5


def test_engine_killed_mid_stream_resumes_elsewhere(fleet: MigFleet) -> None:
    """Kill an engine while streams run on it: they continue on the others from what was
    streamed, with the reference's tokens and text."""
    victim = fleet.engines[0]

    async def run() -> tuple[list[Streamed], list[Streamed]]:
        async with httpx.AsyncClient() as client:
            kinds = ["chat" if i % 2 else "completion" for i in range(9)]
            bodies = [_body(k, 300 + i, 600) for i, k in enumerate(kinds)]
            tasks = [
                asyncio.create_task(stream(client, fleet.url, k, b))
                for k, b in zip(kinds, bodies, strict=True)
            ]
            await _until_streaming(fleet, fleet.ids[0])
            victim.kill()
            got = await asyncio.gather(*tasks)
            refs = [
                await stream(client, fleet.reference.url, k, {**b, "model": "mig-8b"})
                for k, b in zip(kinds, bodies, strict=True)
            ]
            return got, refs

    before = fleet.metrics()
    got, refs = asyncio.run(run())
    after = fleet.metrics()
    assert _delta(before, after, "modelfleet_migrations_total", "trigger=resume") >= 1
    for g, r in zip(got, refs, strict=True):
        assert not g.errors
        assert g.ids == r.ids and g.text == r.text
        assert g.usage is not None and g.usage["completion_tokens"] == 600
