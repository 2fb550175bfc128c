"""1,000 streams dropped mid-flight through ``modelfleet scheduler`` (see ``test_live``)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from .conftest import LiveScheduler
from .test_live import _engine_metric, _inflight, sdk

pytestmark = pytest.mark.integration


def test_serves_on_after_1000_streams_dropped_mid_flight(live: LiveScheduler) -> None:
    """Each client hangs up after its first token; each engine request must be aborted.

    The engines run in real time (a 4000-token answer takes about a minute), so a request the
    abort did not reach would run on, and would end counted as finished with reason length.
    Under Ray Serve the client's disconnect reaches the replica as the proxy's cancel, over
    the same path as the token stream; with one Serve message per token
    (``--write-interval 0``) that path saturated and cancels arrived 20-50 s late, the
    engines filled with requests nobody read, and this test timed out in its drop phase
    (``bench/results/scheduler-dataplane.md``). The deadlines below are generous; the
    assertions are about what happened, not how fast.
    """
    engines = live.engines["steady"]
    length = 'vllm:request_success_total{engine="0",finished_reason="length"'
    finished0 = sum(_engine_metric(e.url, length) for e in engines)
    generated0 = sum(_engine_metric(e.url, "vllm:generation_tokens_total") for e in engines)
    max_tokens, n = 4000, 1000

    async def drop_one(client: httpx.AsyncClient, i: int) -> bool:
        body = {
            "model": "steady",
            "messages": [{"role": "user", "content": f"drop me {i}"}],
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": True,
        }
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                pytest.fail(f"HTTP {r.status_code}: {(await r.aread()).decode()}")
            async for line in r.aiter_lines():
                if '"token_ids"' in line and '"content":""' not in line:
                    return True  # a token arrived: hang up mid-stream
        return False

    async def run() -> list[bool]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=live.url, limits=limits, timeout=60) as client:
            sem = asyncio.Semaphore(50)

            async def one(i: int) -> bool:
                async with sem:
                    return await drop_one(client, i)

            return await asyncio.gather(*(one(i) for i in range(n)))

    assert all(asyncio.run(run()))
    deadline = time.monotonic() + 90
    while _inflight(live) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _inflight(live) == 0
    while (
        sum(_engine_metric(e.url, "vllm:num_requests_running") for e in engines) > 0
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert sum(_engine_metric(e.url, "vllm:num_requests_running") for e in engines) == 0
    generated = sum(_engine_metric(e.url, "vllm:generation_tokens_total") for e in engines)
    assert sum(_engine_metric(e.url, length) for e in engines) == finished0
    assert generated - generated0 < n * max_tokens / 2
    m = live.metrics()
    aborted = sum(v for k, v in m.items() if "outcome=aborted" in k and "requests_total" in k)
    assert aborted >= n
    chat = sdk(live).chat.completions.create(
        model="steady", messages=[{"role": "user", "content": "still there?"}], max_tokens=3
    )
    assert chat.usage is not None and chat.usage.completion_tokens == 3
