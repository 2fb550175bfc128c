"""A stop string that spans the migration cut, live against engine simulators.

The engine holds back the text that may begin a stop string and matches stop strings only in
its own output; the destination of a hand-off starts its output at the cut. So a stop string
whose first characters the source generated before the cut and whose last ones come after it
is seen by neither engine unless the scheduler places the cut so that the destination
regenerates that text (``modelfleet.scheduler.migrate.stop_safe_cut``).

Fleet: one pool with a slow source (L40S at time scale 40: about 1.2 s per token, so the test
can kill it between two tokens: the token that would complete the stop string is never
sent) and a fast destination (H100 in real time) the stream resumes on, plus a reference
engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
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

TOKEN = "stop-test-token"
POLICY = """
apiVersion: modelfleet.io/v1alpha1
kind: RoutingPolicy
metadata: {name: stp, namespace: default}
spec:
  modelNames: [stp]
  defaultTargets: [{pool: stp}]
  placement: {profile: least-request}
"""


@dataclass
class StopFleet:
    url: str
    control: str
    slow: str
    fast: str
    reference: EngineProc
    proc: subprocess.Popen[str]
    stub: pb_grpc.ControlStub
    slow_engine: EngineProc

    def call(self, method: str, endpoint: str) -> list[Any]:
        stub = self.stub
        if method == "drain":
            return list(
                stub.Drain(
                    pb.DrainRequest(endpoint=endpoint, deadline_s=60, reason="manual"),
                    metadata=bearer(TOKEN),
                    timeout=90,
                )
            )
        stub.Undrain(pb.UndrainRequest(endpoint=endpoint), metadata=bearer(TOKEN), timeout=10)
        return []

    def migrations(self) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("modelfleet_migrations_total{") and 'outcome="switched"' in line
        )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StopFleet]:
    engines: list[EngineProc] = []
    try:
        slow = start_engine("stp-8b", accelerator="l40s", time_scale=40.0)
        engines.append(slow)
        fast = start_engine("stp-8b", time_scale=1.0)
        engines.append(fast)
        ref = start_engine("stp-8b", time_scale=0.02)
        engines.append(ref)
        config = tmp_path_factory.mktemp("stopfleet")
        pool = pool_yaml("stp", "stp-8b", {"h100": "h100-80gb", "l40s": "l40s"})
        rows = [("stp", "l40s", slow), ("stp", "h100", fast)]
        (config / "fleet.yaml").write_text(fleet_yaml(pool, POLICY, endpoints_yaml(rows)))
        port, cport = free_port(), free_port()
        os.environ["MODELFLEET_CONTROL_TOKEN"] = TOKEN
        try:
            proc = start_scheduler(
                config, port, "--no-ray", "--control-port", str(cport), "--log-level", "debug"
            )
        finally:
            del os.environ["MODELFLEET_CONTROL_TOKEN"]
        try:
            url = wait_listening(proc)
            with grpc.insecure_channel(f"127.0.0.1:{cport}") as channel:
                yield StopFleet(
                    url,
                    f"127.0.0.1:{cport}",
                    slow.url.removeprefix("http://"),
                    fast.url.removeprefix("http://"),
                    ref,
                    proc,
                    pb_grpc.ControlStub(channel),
                    slow,
                )
        finally:
            rc, left = stop_scheduler(proc)
            assert rc == 0, f"scheduler exited with {rc}"
            assert not left, "processes outlived the scheduler:\n" + "\n".join(left)
    finally:
        stop_all(engines)


@dataclass
class Run:
    ids: list[int]
    texts: list[str]
    finish: str | None
    errors: list[Any]

    @property
    def text(self) -> str:
        return "".join(self.texts)


async def run_stream(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    on_ids: Any = None,
) -> Run:
    out = Run([], [], None, [])
    async with client.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            obj = json.loads(line[6:])
            if "error" in obj:
                out.errors.append(obj["error"])
                continue
            for c in obj.get("choices") or ():
                out.ids.extend(c.get("token_ids") or [])
                out.texts.append(c.get("text") or "")
                out.finish = c.get("finish_reason") or out.finish
            if on_ids is not None:
                on_ids(len(out.ids))
    return out


def _body(model: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": "Tell me a long story about the sea and the ships that sail on it",
        "max_tokens": 40,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "return_token_ids": True,
        **extra,
    }


def _spanning_stop(texts: list[str]) -> tuple[str, int]:
    """A 4-character stop string made of the end of token t and the start of token t + 1 (the
    first place in the text it occurs), and t; from an uninterrupted run without stops (one
    token per chunk)."""
    full = "".join(texts)
    offset = 0
    for t in range(1, len(texts) - 1):
        offset += len(texts[t - 1])
        a, b = texts[t - 1], texts[t]
        if t < 8 or len(a) < 2 or len(b) < 2:
            continue
        stop = a[-2:] + b[:2]
        if full.find(stop) == offset - 2:
            return stop, t
    raise AssertionError(f"no token boundary to put a stop string on in {texts!r}")


def test_stop_string_spanning_the_cut_is_honoured(fleet: StopFleet) -> None:
    """Kill the source right after it sent token t, where a stop string spans tokens t and
    t + 1: the stream resumes on the other engine from what was streamed, and still ends where
    the unmigrated run ends (finish ``stop``, same ids and text). Without the scheduler's cut
    rule the destination starts at token t + 1, never sees the string and runs to
    ``max_tokens``."""

    async def run() -> tuple[Run, Run, str]:
        async with httpx.AsyncClient() as client:
            plain = await run_stream(client, fleet.reference.url, _body("stp-8b"))
            stop, t = _spanning_stop(plain.texts)
            ref = await run_stream(client, fleet.reference.url, _body("stp-8b", stop=[stop]))
            assert ref.finish == "stop" and len(ref.ids) == t + 1, (stop, t, ref)
            await asyncio.to_thread(fleet.call, "drain", fleet.fast)  # start on the slow one
            killed: list[int] = []

            def on_ids(n: int) -> None:
                if n == t and not killed:  # the source sent token t; t + 1 is ~1.2 s away
                    fleet.slow_engine.kill()
                    killed.append(n)

            task = asyncio.create_task(
                run_stream(client, fleet.url, _body("stp", stop=[stop]), on_ids)
            )
            await asyncio.sleep(0.5)  # placed on the slow engine (1.2 s per token there)
            await asyncio.to_thread(fleet.call, "undrain", fleet.fast)
            got = await task
            assert killed, f"the stream never reached token {t}: {got}"
            return got, ref, stop

    before = fleet.migrations()
    got, ref, stop = asyncio.run(run())
    moved = fleet.migrations() - before
    assert moved == 1, f"the stream was not migrated ({moved}; {got})"
    assert not got.errors
    assert got.ids == ref.ids, f"stop {stop!r}: ids differ from the unmigrated run"
    assert got.text == ref.text and got.finish == "stop"
