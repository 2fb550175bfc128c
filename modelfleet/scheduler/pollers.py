"""Per-endpoint background tasks: the metrics poller and the KV-event subscription.

:class:`MetricsPoller` scrapes one engine's ``/metrics`` every ``period_s`` (default 50 ms:
llm-d's endpoint picker refreshes every 50 ms too) and hands the parsed
:class:`~modelfleet.scheduler.scrape.EngineMetrics` to a callback. It reports the endpoint
down after ``down_after`` consecutive refused connections (the engine is gone), or when it
has answered with errors (non-200, not a scrape) for ``down_after_s`` seconds, and up again
on the next good scrape. A timeout never takes an endpoint down: a busy engine (or a busy
scheduler reading it late) is slow, not gone, and taking every busy endpoint out of rotation
would turn load into an outage. A
scrape is one small GET on a kept-alive connection plus one parse of a few kB of text.

:class:`KvEventSubscriber` connects a ZMQ ``SUB`` socket to one engine's KV-event publisher
(found from the configuration, or from the engine's ``/kv_event_sources`` with its ``*`` host
replaced by the engine's host) and hands every decoded event to a callback. ZMQ reconnects by
itself when the engine restarts; a sequence number that goes backwards (a restarted engine
starts again at 0) or jumps (messages lost at the high-water mark) is reported, because the
precise index of that endpoint is then wrong: the callback ``on_gap`` lets the host clear it.

Both stop when cancelled and never raise out of their task: a broken engine is logged and
counted, not fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import zmq
import zmq.asyncio

from modelfleet.scheduler.kv_events import decode_kv_message
from modelfleet.scheduler.scrape import EngineMetrics, ScrapeError, parse_vllm_metrics

__all__ = ["KvEventSubscriber", "MetricsPoller", "resolve_kv_endpoint"]

log = logging.getLogger("modelfleet.scheduler.pollers")


class MetricsPoller:
    """Scrapes one endpoint periodically (see the module docstring)."""

    def __init__(
        self,
        endpoint: str,
        url: str,
        client: httpx.AsyncClient,
        *,
        on_metrics: Callable[[str, EngineMetrics], None],
        on_health: Callable[[str, bool, str], None],
        on_error: Callable[[str], None] | None = None,
        period_s: float = 0.05,
        timeout_s: float = 2.0,
        down_after: int = 2,
        down_after_s: float = 5.0,
    ) -> None:
        self.endpoint = endpoint
        self.url = url.rstrip("/") + "/metrics"
        self.client = client
        self.on_metrics = on_metrics
        self.on_health = on_health
        self.on_error = on_error
        self.period_s = period_s
        self.timeout_s = timeout_s
        self.down_after = down_after
        self.down_after_s = down_after_s
        self.failures = 0
        self.refused = 0
        self._failing_since: float | None = None
        self.healthy: bool | None = None
        self.last: EngineMetrics | None = None
        self.last_at: float | None = None

    async def scrape_once(self) -> EngineMetrics | None:
        """One scrape; updates health; returns the metrics (``None`` on failure)."""
        now = asyncio.get_running_loop().time()
        try:
            r = await self.client.get(self.url, timeout=self.timeout_s)
            if r.status_code != 200:
                raise ScrapeError(f"HTTP {r.status_code}")
            metrics = parse_vllm_metrics(r.text)
        except (httpx.HTTPError, ScrapeError, OSError) as e:
            self.failures += 1
            self.refused = self.refused + 1 if isinstance(e, httpx.ConnectError) else 0
            if isinstance(e, httpx.TimeoutException):
                if self.on_error is not None:
                    self.on_error(self.endpoint)
                return None
            if self._failing_since is None:
                self._failing_since = now
            if self.on_error is not None:
                self.on_error(self.endpoint)
            if self.failures == 1 or self.healthy is None:
                log.warning("endpoint %s: scrape failed (%s)", self.endpoint, e)
            down = (
                self.refused >= self.down_after
                or now - self._failing_since >= self.down_after_s
                or self.healthy is None
            )
            if down and self.healthy is not False:
                self.healthy = False
                self.on_health(self.endpoint, False, f"scrape failed: {type(e).__name__}: {e}")
            return None
        self.failures = self.refused = 0
        self._failing_since = None
        self.last = metrics
        self.last_at = asyncio.get_running_loop().time()
        self.on_metrics(self.endpoint, metrics)
        if self.healthy is not True:
            self.healthy = True
            self.on_health(self.endpoint, True, "")
        return metrics

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.scrape_once()
            await asyncio.sleep(max(0.0, self.period_s - (loop.time() - started)))


async def resolve_kv_endpoint(url: str, setting: str, client: httpx.AsyncClient) -> str | None:
    """The ZMQ endpoint to subscribe to for an engine (``None``: it publishes none).

    ``setting`` is the configured value: ``""`` (none), an endpoint, or ``"auto"`` (ask
    ``/kv_event_sources``, vLLM's and the simulator's). A ``*`` or empty host in a bound
    endpoint (``tcp://*:5557``) is replaced by the engine's host.
    """
    if not setting:
        return None
    endpoint = setting
    if setting == "auto":
        try:
            r = await client.get(url.rstrip("/") + "/kv_event_sources", timeout=2.0)
            sources = r.json() if r.status_code == 200 else {}
        except (httpx.HTTPError, ValueError, OSError):
            return None
        if not isinstance(sources, dict) or not sources:
            return None
        first = next(iter(sources.values()))
        if not isinstance(first, dict) or not first.get("enable_kv_cache_events"):
            return None
        endpoint = str(first.get("endpoint") or "")
        if not endpoint:
            return None
    host = urlsplit(url).hostname or "127.0.0.1"
    if endpoint.startswith("tcp://*:"):
        endpoint = f"tcp://{host}:" + endpoint.rsplit(":", 1)[1]
    return endpoint


class KvEventSubscriber:
    """Subscribes to one engine's KV events (see the module docstring)."""

    def __init__(
        self,
        endpoint: str,
        zmq_endpoint: str,
        context: zmq.asyncio.Context,
        *,
        on_event: Callable[[str, object], None],
        on_gap: Callable[[str], None] | None = None,
        topic: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.zmq_endpoint = zmq_endpoint
        self.context = context
        self.on_event = on_event
        self.on_gap = on_gap
        self.topic = topic
        self.received = 0
        self.gaps = 0
        self._next_seq: int | None = None

    async def run(self) -> None:
        sock = self.context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt_string(zmq.SUBSCRIBE, self.topic)
        sock.connect(self.zmq_endpoint)
        try:
            while True:
                frames = await sock.recv_multipart()
                try:
                    batch = decode_kv_message(frames)
                except ValueError as e:
                    log.warning("endpoint %s: bad KV event message: %s", self.endpoint, e)
                    continue
                if self._next_seq is not None and batch.seq != self._next_seq:
                    self.gaps += 1
                    log.warning(
                        "endpoint %s: KV event sequence %d after %d (engine restarted or "
                        "events lost): its prefix index starts over",
                        self.endpoint,
                        batch.seq,
                        self._next_seq - 1,
                    )
                    if self.on_gap is not None:
                        self.on_gap(self.endpoint)
                self._next_seq = batch.seq + 1
                for event in batch.events:
                    self.received += 1
                    self.on_event(self.endpoint, event)
        finally:
            with contextlib.suppress(zmq.ZMQError):
                sock.close(linger=0)
