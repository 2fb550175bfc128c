"""MetricsPoller against a real HTTP server on loopback: when an endpoint is up and down.

The server serves the real vLLM 0.32 golden scrape, and can be told to be slow (answer after
the poller's timeout), to fail (HTTP 500) or to go away (its port refuses connections).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from modelfleet.scheduler.pollers import MetricsPoller

pytestmark = pytest.mark.integration

SCRAPE = (Path(__file__).parent / "data" / "vllm-0.32-metrics.txt").read_text()


class Engine:
    """A /metrics server whose behaviour a test switches: ok, slow, error."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.port = 0
        self.runner: web.AppRunner | None = None

    async def metrics(self, _request: web.Request) -> web.Response:
        if self.mode == "slow":
            await asyncio.sleep(1.0)
        if self.mode == "error":
            return web.Response(status=500, text="boom")
        return web.Response(text=SCRAPE, content_type="text/plain")

    async def start(self) -> None:
        if not self.port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = int(s.getsockname()[1])
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    e = Engine()
    await e.start()
    try:
        yield e
    finally:
        await e.stop()


def poller(
    engine: Engine, client: httpx.AsyncClient
) -> tuple[MetricsPoller, list[bool], list[str]]:
    """A poller of ``engine`` and the health changes (up?, why) it reports."""
    health: list[bool] = []
    reasons: list[str] = []

    def on_health(_ep: str, up: bool, reason: str) -> None:
        health.append(up)
        reasons.append(reason)

    p = MetricsPoller(
        "e",
        f"http://127.0.0.1:{engine.port}",
        client,
        on_metrics=lambda _ep, _m: None,
        on_health=on_health,
        timeout_s=0.2,
        down_after=2,
        down_after_s=0.6,
    )
    return p, health, reasons


async def test_slow_scrapes_never_take_a_loaded_endpoint_down(engine: Engine) -> None:
    async with httpx.AsyncClient() as client:
        p, health, _ = poller(engine, client)
        assert await p.scrape_once() is not None
        engine.mode = "slow"
        for _ in range(6):  # 1.2 s of timeouts, twice down_after_s
            assert await p.scrape_once() is None
        assert health == [True] and p.healthy
        engine.mode = "ok"
        assert await p.scrape_once() is not None and health == [True]


async def test_refused_connections_take_it_down_and_a_good_scrape_brings_it_back(
    engine: Engine,
) -> None:
    async with httpx.AsyncClient() as client:
        p, health, reasons = poller(engine, client)
        await p.scrape_once()
        await engine.stop()
        assert await p.scrape_once() is None
        assert health == [True]  # one refusal is not enough
        assert await p.scrape_once() is None
        assert health == [True, False]
        assert "ConnectError" in reasons[-1]
        await engine.start()
        assert await p.scrape_once() is not None
        assert health == [True, False, True]


async def test_errors_for_down_after_s_take_it_down(engine: Engine) -> None:
    async with httpx.AsyncClient() as client:
        p, health, reasons = poller(engine, client)
        await p.scrape_once()
        engine.mode = "error"
        assert await p.scrape_once() is None
        assert await p.scrape_once() is None
        assert health == [True]  # errors, but not for long yet
        await asyncio.sleep(0.7)
        assert await p.scrape_once() is None
        assert health == [True, False] and "500" in reasons[-1]


async def test_an_endpoint_never_seen_up_is_down_at_its_first_failure(engine: Engine) -> None:
    engine.mode = "error"
    async with httpx.AsyncClient() as client:
        p, health, reasons = poller(engine, client)
        assert await p.scrape_once() is None
        assert health == [False] and "500" in reasons[0]
