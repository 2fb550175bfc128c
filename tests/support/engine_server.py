"""Shared helpers for the engine-server tests: an in-process server on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from modelfleet.engine.core import EngineConfig
from modelfleet.engine.kv_events import KVEventsConfig
from modelfleet.engine.server import EngineServer, ServerConfig, serve


@dataclass
class RunningEngine:
    server: EngineServer
    url: str
    session: aiohttp.ClientSession

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        async with self.session.post(
            self.url + path, data=data, headers={"Content-Type": "application/json"}
        ) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except json.JSONDecodeError:
                return r.status, text

    async def sse(self, path: str, body: dict[str, Any]) -> list[str]:
        """Raw SSE event payloads (the text after ``data: ``), in order."""
        async with self.session.post(self.url + path, json=body) as r:
            assert r.status == 200, await r.text()
            assert r.headers["Content-Type"].startswith("text/event-stream")
            raw = (await r.read()).decode()
        assert raw.endswith("\n\n")
        events = raw.split("\n\n")[:-1]
        assert all(e.startswith("data: ") for e in events), events
        return [e[len("data: ") :] for e in events]

    async def metrics(self) -> dict[str, float]:
        """Every sample as ``name{sorted labels}`` -> value, plus bare ``name`` sums."""
        async with self.session.get(self.url + "/metrics") as r:
            text = await r.text()
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
                out[s.name] = out.get(s.name, 0.0) + s.value
        return out


def engine_config(
    *,
    model: str = "llama-3-8b",
    accelerator: str = "h100-80gb",
    num_gpu_blocks: int | None = None,
    max_model_len: int = 8192,
    block_size: int = 16,
    max_num_seqs: int = 256,
) -> EngineConfig:
    return EngineConfig.for_model(
        accelerator,
        model,
        1,
        num_gpu_blocks=num_gpu_blocks,
        max_model_len=max_model_len,
        block_size=block_size,
        max_num_seqs=max_num_seqs,
    )


@contextlib.asynccontextmanager
async def running_engine(
    engine: EngineConfig | None = None,
    *,
    time_scale: float = 0.05,
    kv_events: KVEventsConfig | None = None,
    served_model_names: tuple[str, ...] = (),
    prompt_tokens_details: bool = True,
    tokenizer: str = "llama-3",
) -> AsyncIterator[RunningEngine]:
    config = ServerConfig(
        engine=engine or engine_config(),
        served_model_names=served_model_names,
        time_scale=time_scale,
        kv_events=kv_events or KVEventsConfig(),
        enable_prompt_tokens_details=prompt_tokens_details,
        tokenizer=tokenizer,
    )
    stop = asyncio.Event()
    ready: asyncio.Future[tuple[EngineServer, int]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(config, "127.0.0.1", 0, started=lambda s, p: ready.set_result((s, p)), stop=stop)
    )
    server, port = await asyncio.wait_for(ready, 10)
    try:
        async with aiohttp.ClientSession() as session:
            yield RunningEngine(server, f"http://127.0.0.1:{port}", session)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
