"""Hostile and out-of-range bodies: every one is a 4xx in vLLM 0.32's shape, and the server
keeps serving (the expected messages were read off a real vLLM 0.32 server)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from support.engine_server import running_engine

pytestmark = pytest.mark.integration

CMPL = {"prompt": "hi", "max_tokens": 2}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

SAMPLING = [
    ("top-p-0", {**CMPL, "top_p": 0}, "top_p must be in (0, 1], got 0.0.", "top_p"),
    ("top-p-1.5", {**CMPL, "top_p": 1.5}, "top_p must be in (0, 1], got 1.5.", "top_p"),
    ("temperature-3", {**CMPL, "temperature": 3}, "temperature must be in [0, 2]", "temperature"),
    ("temperature-neg", {**CMPL, "temperature": -1}, "must be non-negative", "temperature"),
    ("top-k", {**CMPL, "top_k": -2}, "top_k must be 0 (disable), or at least 1, got -2.", None),
    ("min-p", {**CMPL, "min_p": 2}, "min_p must be in [0, 1], got 2.0.", None),
    ("presence", {**CMPL, "presence_penalty": 3}, "presence_penalty must be in [-2, 2]", None),
    ("frequency", {**CMPL, "frequency_penalty": -3}, "frequency_penalty must be in [-2, 2]", None),
    ("repetition", {**CMPL, "repetition_penalty": 0}, "repetition_penalty must be greater", None),
    ("n-0", {**CMPL, "n": 0}, "n must be at least 1, got 0.", None),
    ("stop-5", {**CMPL, "stop": ["a", "b", "c", "d", "e"]}, "at most 4 items", None),
    ("stop-empty", {**CMPL, "stop": [""]}, "stop cannot contain an empty string.", None),
    ("max-tokens-beyond-context", {"prompt": "hi", "max_tokens": 100000},
     "max_tokens=100000 cannot be greater than max_model_len=8192", "max_tokens"),
    ("prompt-beyond-context", {"prompt": [5] * 9000, "max_tokens": 2},
     "However, your prompt contains 9000 input tokens", "input_tokens"),
    ("cache-salt", {**CMPL, "cache_salt": "a/b"}, "cache_salt", "cache_salt"),
    ("role-missing", {"messages": [{"content": "hi"}]}, "role", None),
]  # fmt: skip


@pytest.mark.parametrize(("body", "fragment", "param"), [c[1:] for c in SAMPLING],
                         ids=[c[0] for c in SAMPLING])  # fmt: skip
async def test_out_of_range_fields_are_400_in_vllm_shape(
    body: dict[str, Any], fragment: str, param: str | None
) -> None:
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    async with running_engine() as eng:
        status, err = await eng.post(path, body)
        assert status == 400, err
        assert set(err["error"]) == {"message", "type", "param", "code"}
        assert fragment in err["error"]["message"]
        if param is not None:
            assert err["error"]["param"] == param
        ok, _ = await eng.post("/v1/completions", CMPL)
        assert ok == 200


async def test_a_long_stop_string_and_an_unknown_role_are_accepted_like_vllm() -> None:
    async with running_engine() as eng:
        status, _ = await eng.post("/v1/completions", {**CMPL, "stop": ["x" * 20000]})
        assert status == 200
        body = {"messages": [{"role": "narrator", "content": "hi"}], "max_tokens": 2}
        status, resp = await eng.post("/v1/chat/completions", body)
        assert status == 200 and resp["usage"]["completion_tokens"] == 2


async def test_wrong_content_type_is_400() -> None:
    async with running_engine() as eng:
        for ctype in ("text/plain", ""):
            async with eng.session.post(
                eng.url + "/v1/completions", data=json.dumps(CMPL), headers={"Content-Type": ctype}
            ) as r:
                err = await r.json()
            assert r.status == 400
            assert "Only 'application/json' is allowed" in err["error"]["message"]


@pytest.mark.parametrize("depth", [1_000, 100_000])
async def test_deeply_nested_json_is_400_not_500(depth: int) -> None:
    raw = b'{"prompt":"hi","max_tokens":2,"x":' + b"[" * depth + b"]" * depth + b"}"
    async with running_engine() as eng:
        status, err = await eng.post("/v1/completions", raw)
        assert status == 400 and "nested" in err["error"]["message"]
        ok, _ = await eng.post("/v1/completions", CMPL)
        assert ok == 200


async def test_body_over_the_limit_is_413_and_a_prompt_past_the_context_is_400_at_once() -> None:
    async with running_engine() as eng:
        limit = eng.server.config.max_body_bytes
        status, err = await eng.post("/v1/completions", b"{" + b" " * limit + b"}")
        assert status == 413 and err["error"]["code"] == 413
        # 2 MB of text cannot fit 8192 tokens whatever its tokens are: refused without tokenising
        big = {"prompt": "word " * 400_000, "max_tokens": 2}
        status, err = await eng.post("/v1/completions", big)
        assert status == 400 and "at least" in err["error"]["message"]


async def test_a_large_prompt_is_tokenised_off_the_event_loop() -> None:
    """Other streams keep receiving tokens while a large prompt is tokenised: the tokenizer
    runs in a worker thread. (Only ordering is asserted; the delay is measured in bench/.)"""
    async with running_engine() as eng:
        text = "The quick brown fox jumps over the lazy dog. " * 20_000  # ~900 kB, < context chars
        stream_body = {"prompt": "tell me", "max_tokens": 400, "stream": True}
        events: list[str] = []

        async def stream() -> None:
            async with eng.session.post(eng.url + "/v1/completions", json=stream_body) as r:
                async for line in r.content:
                    if line.startswith(b"data: "):
                        events.append("token")

        async def big() -> None:
            await asyncio.sleep(0.05)
            events.append("big-sent")
            status, _ = await eng.post("/v1/completions", {"prompt": text, "max_tokens": 1})
            events.append(f"big-done-{status}")

        await asyncio.gather(stream(), big())
        start, end = (
            events.index("big-sent"),
            next(i for i, e in enumerate(events) if e.startswith("big-done")),
        )
        assert events[end] == "big-done-400"  # ~200k tokens > 8192: refused after tokenising
        assert "token" in events[start:end]  # the stream advanced while it was tokenised
