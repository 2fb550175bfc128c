"""Failure paths of the engine server, each caused for real: the engine loop dying, and a
dependency (the KV-event subscriber side, the port) being unavailable."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from support.engine_server import running_engine

from modelfleet.engine.cli import main as engine_main

pytestmark = pytest.mark.integration

BODY = {"model": "llama-3-8b", "prompt": "Hello there", "max_tokens": 50, "ignore_eos": True}


def _die(num_tokens: int) -> None:
    raise RuntimeError("metrics backend exploded")


async def test_engine_loop_death_fails_requests_and_health() -> None:
    """The loop task raises outside a step (here: while recording a step's metrics). The
    request in flight must end with a 500 (not hang), /health must stop answering 200, and a
    new request must be refused with 503 instead of waiting forever."""
    async with running_engine() as eng:
        async with eng.session.get(eng.url + "/health") as r:
            assert r.status == 200
        eng.server.metrics.observe_step = _die  # type: ignore[method-assign]
        status, body = await asyncio.wait_for(eng.post("/v1/completions", BODY), 10)
        assert status == 500, body
        assert body["error"]["type"] == "InternalServerError"
        async with eng.session.get(eng.url + "/health") as r:
            assert r.status == 503
            err = await r.json()
        assert err["error"]["code"] == 503 and "engine loop" in err["error"]["message"]
        status, body = await asyncio.wait_for(eng.post("/v1/completions", BODY), 10)
        assert status == 503, body
        assert body["error"]["type"] == "ServiceUnavailable"
        assert "engine loop" in body["error"]["message"]
        chat = {"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}]}
        status, body = await asyncio.wait_for(
            eng.post("/v1/chat/completions", {**chat, "stream": True}), 10
        )
        assert status == 503, body


async def test_a_failing_step_fails_its_requests_but_the_engine_recovers() -> None:
    """An exception inside one engine step fails the requests it held with a 500; the loop
    goes on, /health stays 200 and the next request is served."""
    async with running_engine() as eng:
        real_step = eng.server.core.step
        calls = {"n": 0}

        def flaky_step():  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("one bad step")
            return real_step()

        eng.server.core.step = flaky_step  # type: ignore[method-assign]
        status, body = await asyncio.wait_for(eng.post("/v1/completions", BODY), 10)
        assert status == 500 and body["error"]["code"] == 500
        async with eng.session.get(eng.url + "/health") as r:
            assert r.status == 200
        status, body = await asyncio.wait_for(eng.post("/v1/completions", BODY), 10)
        assert status == 200 and body["usage"]["completion_tokens"] == 50
        assert not eng.server.core.has_unfinished()


# ------------------------------------------------------------------ a port already taken

ENGINE = ["--accelerator", "h100-80gb", "--model", "llama-3-8b"]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A TCP port some other process listens on (all interfaces)."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        yield s.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_http_port_taken_is_a_clear_error(
    busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert engine_main([*ENGINE, "--port", str(busy_port)]) == 1
    err = capsys.readouterr().err
    assert f"cannot serve on 127.0.0.1:{busy_port}" in err and "in use" in err


def test_kv_events_port_taken_is_a_clear_error(
    busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ZMQ publisher cannot bind: exit 1 naming the endpoint, not a ZMQError traceback."""
    code = engine_main([*ENGINE, "--port", str(_free_port()), "--kv-events-port", str(busy_port)])
    assert code == 1
    err = capsys.readouterr().err
    assert f"KV-event socket tcp://*:{busy_port}" in err and "in use" in err
    assert "Traceback" not in err
