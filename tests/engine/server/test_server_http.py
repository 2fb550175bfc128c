"""Integration tests: the engine server over real HTTP on loopback (in-process server)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import pickle
from typing import Any

import aiohttp
import openai
import pytest
import zmq
import zmq.asyncio
from support.engine_server import RunningEngine, engine_config, running_engine

from modelfleet.engine.kv_events import KVEventsConfig, decode_message
from modelfleet.engine.kvcache import BlockHasher, BlockStored, event_hash

pytestmark = pytest.mark.integration

MODEL = "llama-3-8b"


def _ids(n: int, seed: int = 0) -> list[int]:
    """A deterministic token-id prompt of n ids (no two seeds share a prefix)."""
    return [1000 + ((i + 1) * 7919 + seed * 104729) % 60000 for i in range(n)]


async def _wait_for(cond: Any, timeout: float = 10.0) -> None:
    """Poll an async predicate (liveness bound only; not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- SDK + SSE


async def test_openai_sdk_streams_a_chat_completion() -> None:
    async with running_engine() as eng:
        client = openai.AsyncOpenAI(base_url=eng.url + "/v1", api_key="EMPTY", max_retries=0)
        messages: Any = [{"role": "user", "content": "Say something about caches."}]
        stream = await client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=20, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        parts: list[str] = []
        finish: list[str] = []
        usage = None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                parts.append(c.delta.content or "")
                if c.finish_reason:
                    finish.append(c.finish_reason)
        full = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20)
        await client.close()
    assert "".join(parts) == full.choices[0].message.content
    assert len("".join(parts).split()) >= 10
    assert finish == ["length"] and full.choices[0].finish_reason == "length"
    assert usage is not None and usage.completion_tokens == 20
    assert usage.prompt_tokens == full.usage.prompt_tokens if full.usage else False


async def test_sse_framing_and_token_ids_like_vllm() -> None:
    async with running_engine() as eng:
        body = {"model": MODEL, "prompt": "def hello_world():", "max_tokens": 4,
                "stream": True, "return_token_ids": True,
                "stream_options": {"include_usage": True}, "request_id": "mig-1"}  # fmt: skip
        events = await eng.sse("/v1/completions", body)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(c["id"] == "cmpl-mig-1" and c["object"] == "text_completion" for c in chunks)
        token_chunks, usage_chunk = chunks[:-1], chunks[-1]
        assert len(token_chunks) == 4
        first = token_chunks[0]["choices"][0]
        assert first["prompt_token_ids"][0] == 128000 and len(first["token_ids"]) == 1
        assert all(c["choices"][0]["prompt_token_ids"] is None for c in token_chunks[1:])
        assert [c["choices"][0]["finish_reason"] for c in token_chunks] == [None] * 3 + ["length"]
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"]["completion_tokens"] == 4
        assert usage_chunk["usage"]["prompt_tokens"] == len(first["prompt_token_ids"])

        chat = await eng.sse(
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "Say hello"}],
             "max_tokens": 3, "stream": True, "return_token_ids": True},
        )  # fmt: skip
        assert chat[-1] == "[DONE]"
        cc = [json.loads(e) for e in chat[:-1]]
        assert cc[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert cc[0]["prompt_token_ids"][:2] == [128000, 128006]  # top level, role chunk
        assert [len(c["choices"][0]["token_ids"]) for c in cc[1:]] == [1, 1, 1]
        assert all(c["object"] == "chat.completion.chunk" for c in cc)
        assert cc[-1]["choices"][0]["finish_reason"] == "length"


async def test_chunk_fields_without_token_ids_match_vllm_exclude_unset() -> None:
    async with running_engine(prompt_tokens_details=False) as eng:
        events = await eng.sse(
            "/v1/completions",
            {"prompt": "hi", "max_tokens": 2, "stream": True,
             "stream_options": {"include_usage": True}},
        )  # fmt: skip
        chunks = [json.loads(e) for e in events[:-1]]
        for c in chunks[:-1]:
            assert set(c) == {"id", "object", "created", "model", "choices"}
            (choice,) = c["choices"]
            assert set(choice) == {"index", "text", "logprobs", "finish_reason", "stop_reason",
                                   "prompt_token_ids", "token_ids"}  # fmt: skip
            assert choice["prompt_token_ids"] is None and choice["token_ids"] is None
        assert chunks[-1]["usage"] == {"prompt_tokens": 2, "total_tokens": 4,
                                       "completion_tokens": 2}  # fmt: skip
        chat = await eng.sse(
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "stream": True},
        )
        role, *rest = [json.loads(e) for e in chat[:-1]]
        assert role["prompt_token_ids"] is None and role["prompt_text"] is None
        assert [c["choices"][0]["token_ids"] for c in rest] == [None, None]
        assert "stop_reason" in rest[-1]["choices"][0]
        assert "usage" not in rest[-1]


async def test_stop_strings_and_stop_token_ids() -> None:
    async with running_engine() as eng:
        status, ref = await eng.post(
            "/v1/completions",
            {"prompt": "Once upon a time", "max_tokens": 60, "return_token_ids": True},
        )
        assert status == 200
        text = ref["choices"][0]["text"]
        word = text.split()[5].strip(".,")
        status, stopped = await eng.post(
            "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 60, "stop": [word]}
        )
        choice = stopped["choices"][0]
        assert choice["finish_reason"] == "stop" and choice["stop_reason"] == word
        assert choice["text"] == text[: text.index(word)]
        # Streaming holds text back so the stop string never leaks.
        events = await eng.sse(
            "/v1/completions",
            {"prompt": "Once upon a time", "max_tokens": 60, "stop": word, "stream": True},
        )
        streamed = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
        assert streamed == choice["text"]
        # stop_token_ids: stops after the token, whose text is not output.
        stop_id = ref["choices"][0]["token_ids"][7]
        status, by_id = await eng.post(
            "/v1/completions",
            {"prompt": "Once upon a time", "max_tokens": 60, "stop_token_ids": [stop_id],
             "return_token_ids": True},
        )  # fmt: skip
        first = ref["choices"][0]["token_ids"].index(stop_id)
        assert by_id["choices"][0]["token_ids"] == ref["choices"][0]["token_ids"][: first + 1]
        assert by_id["choices"][0]["stop_reason"] == stop_id
        assert by_id["usage"]["completion_tokens"] == first + 1


async def test_models_tokenize_detokenize_health() -> None:
    async with running_engine(served_model_names=("llama", "alias")) as eng:
        async with eng.session.get(eng.url + "/v1/models") as r:
            models = await r.json()
        assert [m["id"] for m in models["data"]] == ["llama", "alias"]
        assert models["data"][0]["max_model_len"] == 8192
        async with eng.session.get(eng.url + "/health") as r:
            assert r.status == 200
        status, tok = await eng.post("/tokenize", {"model": "alias", "prompt": "Hello world"})
        # Llama-3's own ids (the default tokenizer is the real one): BOS, "Hello", " world"
        assert status == 200 and tok["tokens"] == [128000, 9906, 1917] and tok["count"] == 3
        status, det = await eng.post("/detokenize", {"tokens": tok["tokens"][1:]})
        assert det == {"prompt": "Hello world"}
        status, chat_tok = await eng.post(
            "/tokenize", {"messages": [{"role": "user", "content": "Hi"}]}
        )
        assert chat_tok["tokens"][:2] == [128000, 128006]
        status, err = await eng.post("/detokenize", {"tokens": [10**7]})
        assert status == 400 and "out of vocabulary" in err["error"]["message"]


# ------------------------------------------------------------------------- bad bodies

BAD: list[tuple[str, str, Any, int, str]] = [
    ("malformed-json", "/v1/completions", '{"prompt": "x",', 400, "JSON decode error"),
    ("not-an-object", "/v1/completions", "[1, 2]", 400, "JSON object"),
    ("empty-body", "/v1/chat/completions", "", 400, "JSON object"),
    ("missing-prompt", "/v1/completions", {"max_tokens": 3}, 400, "prompt"),
    ("prompt-wrong-type", "/v1/completions", {"prompt": {"a": 1}}, 400, "prompt"),
    ("max-tokens-string", "/v1/completions", {"prompt": "x", "max_tokens": "ten"}, 400,
     "max_tokens"),
    ("negative-max-tokens", "/v1/completions", {"prompt": "x", "max_tokens": -1}, 400,
     "max_tokens must be at least 1"),
    ("n-2", "/v1/completions", {"prompt": "x", "n": 2}, 400, "n must be 1"),
    ("huge-prompt", "/v1/completions", {"prompt": [5] * 9000}, 400, "maximum context length"),
    ("oov-token", "/v1/completions", {"prompt": [1, 10**7]}, 400, "out of vocabulary"),
    ("negative-token", "/v1/completions", {"prompt": [1, -3]}, 400, "prompt"),
    ("missing-messages", "/v1/chat/completions", {"max_tokens": 3}, 400, "messages"),
    ("messages-string", "/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("both-flags", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "x"}], "continue_final_message": True}, 400,
     "Cannot set both"),
    ("stop-int", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "x"}], "stop": 5}, 400, "stop"),
    ("logprobs", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "x"}], "logprobs": True}, 400, "logprobs"),
    ("bad-kv-transfer", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "x"}],
      "kv_transfer_params": {"prompt_token_ids": "1,2"}}, 400, "prompt_token_ids"),
    ("unknown-model", "/v1/completions", {"model": "gpt-9", "prompt": "x"}, 404,
     "The model `gpt-9` does not exist."),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
async def test_bad_bodies_get_vllm_shaped_errors(
    path: str, body: Any, status: int, fragment: str
) -> None:
    async with running_engine(engine_config(max_model_len=8192)) as eng:
        got_status, err = await eng.post(path, body)
        assert got_status == status, err
        assert set(err) == {"error"} and set(err["error"]) == {"message", "type", "param", "code"}
        assert err["error"]["code"] == status
        # vLLM answers "Bad Request" for bodies its parser refuses, "BadRequestError" for
        # values it refuses after parsing
        expected = {"NotFoundError"} if status == 404 else {"BadRequestError", "Bad Request"}
        assert err["error"]["type"] in expected
        assert fragment in err["error"]["message"]
        # ... and the server keeps serving.
        ok, resp = await eng.post("/v1/completions", {"prompt": "still alive", "max_tokens": 2})
        assert ok == 200 and resp["usage"]["completion_tokens"] == 2


async def test_oov_token_prompt_when_streaming_is_an_error_event() -> None:
    async with running_engine() as eng:
        events = await eng.sse("/v1/completions", {"prompt": [1, 10**7], "stream": True})
        assert events[-1] == "[DONE]"
        assert json.loads(events[0])["error"]["message"] == "Token id 10000000 is out of vocabulary"


async def test_engine_failure_is_a_500_and_the_server_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_engine() as eng:
        core = eng.server.core

        def broken() -> Any:
            raise RuntimeError("simulated engine fault")

        monkeypatch.setattr(core, "step", broken)
        status, err = await eng.post("/v1/completions", {"prompt": "x", "max_tokens": 3})
        assert status == 500
        assert err["error"]["type"] == "InternalServerError" and err["error"]["code"] == 500
        events = await eng.sse("/v1/completions", {"prompt": "x", "max_tokens": 3, "stream": True})
        assert json.loads(events[0])["error"]["code"] == 500 and events[-1] == "[DONE]"
        monkeypatch.undo()
        status, ok = await eng.post("/v1/completions", {"prompt": "x", "max_tokens": 3})
        assert status == 200 and ok["usage"]["completion_tokens"] == 3
        assert (await eng.metrics())["vllm:kv_cache_usage_perc"] == 0


async def test_unknown_route_is_json_404() -> None:
    async with running_engine() as eng:
        async with eng.session.get(eng.url + "/v1/nothing") as r:
            assert r.status == 404 and await r.json() == {"detail": "Not Found"}


# ----------------------------------------------------------------- prefix cache / TTFT


async def test_same_long_prompt_twice_hits_the_prefix_cache_and_cuts_ttft() -> None:
    prompt = _ids(2000)
    async with running_engine() as eng:
        body = {"prompt": prompt, "max_tokens": 1}
        s1, first = await eng.post("/v1/completions", body)
        m1 = await eng.metrics()
        s2, second = await eng.post("/v1/completions", body)
        assert s1 == s2 == 200
        m2 = await eng.metrics()
    hits1 = m1["vllm:prefix_cache_hits_total"]
    hits2 = m2["vllm:prefix_cache_hits_total"]
    assert hits1 == 0
    # Whole blocks only, and the last prompt token is always recomputed (like vLLM).
    assert hits2 - hits1 == (1999 // 16) * 16
    assert m2["vllm:prefix_cache_queries_total"] == 4000
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == 1984
    ttft1 = m1["vllm:time_to_first_token_seconds_sum"]
    ttft2 = m2["vllm:time_to_first_token_seconds_sum"] - ttft1
    assert m2["vllm:time_to_first_token_seconds_count"] == 2
    assert ttft2 < ttft1 / 2, (ttft1, ttft2)


async def test_full_cache_evicts_and_preempts_without_changing_outputs() -> None:
    small = engine_config(num_gpu_blocks=40, max_model_len=2048)  # 640 tokens of KV
    # Real-ish time, so the four concurrent requests overlap even on a loaded machine.
    async with running_engine(small, time_scale=0.5) as eng:
        # Evictions: prompt A is cached, then four other prompts push it out.
        a = {"prompt": _ids(200, seed=1), "max_tokens": 1}
        await eng.post("/v1/completions", a)
        await eng.post("/v1/completions", a)
        hits_warm = (await eng.metrics())["vllm:prefix_cache_hits_total"]
        assert hits_warm == 192
        for seed in range(2, 6):
            await eng.post("/v1/completions", {"prompt": _ids(200, seed=seed), "max_tokens": 1})
        await eng.post("/v1/completions", a)
        assert (await eng.metrics())["vllm:prefix_cache_hits_total"] == hits_warm

        # Preemptions: four requests that together need ~76 blocks of 40.
        bodies = [
            {"prompt": _ids(100, seed=10 + i), "max_tokens": 200, "return_token_ids": True}
            for i in range(4)
        ]
        results = await asyncio.gather(*(eng.post("/v1/completions", b) for b in bodies))
        m = await eng.metrics()
        assert m["vllm:num_preemptions_total"] > 0
        assert m["vllm:kv_cache_usage_perc"] == 0
    async with running_engine() as roomy:  # same requests, one at a time, no pressure
        for body, (status, res) in zip(bodies, results, strict=True):
            assert status == 200 and res["usage"]["completion_tokens"] == 200
            _, ref = await roomy.post("/v1/completions", body)
            assert res["choices"][0]["token_ids"] == ref["choices"][0]["token_ids"]


# --------------------------------------------------------------------- disconnect/abort


async def _usage_is_zero(eng: RunningEngine) -> bool:
    m = await eng.metrics()
    return m["vllm:num_requests_running"] == 0 and m["vllm:kv_cache_usage_perc"] == 0


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_client_disconnect_aborts_and_frees_blocks(path: str) -> None:
    async with running_engine(time_scale=1.0) as eng:
        body: dict[str, Any] = {"max_tokens": 4000, "stream": True}
        if path == "/v1/completions":
            body["prompt"] = _ids(500)
        else:
            body["messages"] = [{"role": "user", "content": "tell me everything " * 100}]
        async with aiohttp.ClientSession() as own:
            resp = await own.post(eng.url + path, json=body)
            n = 0
            async for line in resp.content:
                if line.startswith(b"data: "):
                    n += 1
                if n >= 4:
                    break
            m = await eng.metrics()
            assert m["vllm:num_requests_running"] == 1 and m["vllm:kv_cache_usage_perc"] > 0
            resp.close()  # drop the connection mid-stream
        await _wait_for(lambda: _usage_is_zero(eng))
        gen_after_abort = (await eng.metrics())["vllm:generation_tokens_total"]
        await asyncio.sleep(0.05)
        assert (await eng.metrics())["vllm:generation_tokens_total"] == gen_after_abort
        assert gen_after_abort < 4000
        assert not eng.server.core.has_unfinished()


async def test_client_timeout_on_non_streaming_request_aborts_it() -> None:
    async with running_engine(time_scale=1.0) as eng:
        body = {"prompt": _ids(300), "max_tokens": 4000}
        timeout = aiohttp.ClientTimeout(total=0.3)
        async with aiohttp.ClientSession(timeout=timeout) as own:
            with pytest.raises(TimeoutError):
                await own.post(eng.url + "/v1/completions", json=body)
        await _wait_for(lambda: _usage_is_zero(eng))
        assert not eng.server.core.has_unfinished()
        assert (await eng.metrics())["vllm:generation_tokens_total"] < 4000


async def test_abort_endpoint_ends_the_stream_with_abort() -> None:
    async with running_engine(time_scale=1.0) as eng:
        body = {"prompt": _ids(50), "max_tokens": 4000, "stream": True, "request_id": "r7"}
        async with eng.session.post(eng.url + "/v1/completions", json=body) as resp:
            await resp.content.readline()
            status, out = await eng.post(
                "/inference/v1/abort_requests", {"request_ids": ["cmpl-r7-0"]}
            )
            assert status == 200 and out["aborted"] == 1
            raw = (await resp.read()).decode()
        events = [ln[6:] for ln in raw.splitlines() if ln.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "abort"
        await _wait_for(lambda: _usage_is_zero(eng))


# ----------------------------------------------------------------------- continuation


async def _stream_tokens(
    eng: RunningEngine, path: str, body: dict[str, Any], cut: int | None = None
) -> tuple[list[int], list[int], str]:
    """Stream with return_token_ids; stop reading (close) after `cut` generated ids."""
    prompt_ids: list[int] = []
    gen: list[int] = []
    text = ""
    async with aiohttp.ClientSession() as own:
        resp = await own.post(eng.url + path, json={**body, "stream": True,
                                                    "return_token_ids": True})  # fmt: skip
        async for line in resp.content:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("prompt_token_ids"):
                prompt_ids = chunk["prompt_token_ids"]
            for ch in chunk["choices"]:
                if ch.get("prompt_token_ids"):
                    prompt_ids = ch["prompt_token_ids"]
                gen.extend(ch.get("token_ids") or [])
                text += ch.get("text") or (ch.get("delta") or {}).get("content") or ""
            if cut is not None and len(gen) >= cut:
                resp.close()
                break
    return prompt_ids, gen, text


@pytest.mark.parametrize("cut", [1, 13, 39])
async def test_completion_continues_on_another_engine_from_any_cut(cut: int) -> None:
    body = {"prompt": "Write a long story about a cache.", "max_tokens": 40}
    async with running_engine() as a, running_engine() as b:
        prompt_ids, ref, ref_text = await _stream_tokens(a, "/v1/completions", body)
        assert len(ref) == 40
        p2, head, head_text = await _stream_tokens(a, "/v1/completions", body, cut=cut)
        assert p2 == prompt_ids and head[:cut] == ref[:cut]
        head = head[:cut]
        _, tail, tail_text = await _stream_tokens(
            b, "/v1/completions", {"prompt": prompt_ids + head, "max_tokens": 40 - cut}
        )
        await _wait_for(lambda: _usage_is_zero(a))
    assert head + tail == ref
    assert tail == ref[cut:]
    assert head_text + tail_text == ref_text  # text splices too: ids are canonical


@pytest.mark.parametrize("cut", [1, 20])
async def test_chat_continues_via_kv_transfer_prompt_token_ids(cut: int) -> None:
    messages = [{"role": "system", "content": "Be verbose."},
                {"role": "user", "content": "Explain prefix caching."}]  # fmt: skip
    async with running_engine() as a, running_engine() as b:
        prompt_ids, ref, _ = await _stream_tokens(
            a, "/v1/chat/completions", {"messages": messages, "max_tokens": 32}
        )
        _, head, _ = await _stream_tokens(
            a, "/v1/chat/completions", {"messages": messages, "max_tokens": 32}, cut=cut
        )
        handoff = prompt_ids + head[:cut]
        p_b, tail, _ = await _stream_tokens(
            b, "/v1/chat/completions",
            {"messages": messages, "max_tokens": 32 - cut,
             "kv_transfer_params": {"prompt_token_ids": handoff}},
        )  # fmt: skip
    assert p_b == handoff
    assert tail == ref[cut:]


async def test_chat_continue_final_message_by_text() -> None:
    # The builtin tokenizer's template keeps content as is; Llama-3's trims it, so a partial
    # message that starts with a space does not round-trip there (as on vLLM).
    messages: list[dict[str, str]] = [{"role": "user", "content": "Tell me a story."}]
    async with running_engine(tokenizer="builtin") as eng:
        prompt_ids, ref, _ = await _stream_tokens(
            eng, "/v1/chat/completions", {"messages": messages, "max_tokens": 24}
        )
        partial = eng.server.tokenizer.decode(ref[:10])
        cont = [*messages, {"role": "assistant", "content": partial}]
        p2, tail, _ = await _stream_tokens(
            eng, "/v1/chat/completions",
            {"messages": cont, "max_tokens": 14, "continue_final_message": True,
             "add_generation_prompt": False},
        )  # fmt: skip
    assert p2 == prompt_ids + ref[:10]  # generated ids are canonical, so text round-trips
    assert tail == ref[10:]


# --------------------------------------------------------------------------- KV events


def _vllm_recipe(ids: list[int], block_size: int) -> list[int]:
    """vLLM's default block hashes, written out independently of the engine's code
    (sha256 of pickle protocol 5, seed "vllm-none-hash", low 64 bits; reference section 6)."""

    def h(x: object) -> bytes:
        return hashlib.sha256(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL)).digest()

    parent = h("vllm-none-hash")
    out = []
    for i in range(len(ids) // block_size):
        parent = h((parent, tuple(ids[i * block_size : (i + 1) * block_size]), None))
        out.append(int.from_bytes(parent, "big") & (2**64 - 1))
    return out


async def test_kv_events_decode_and_hashes_match_the_recipe() -> None:
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.bind("tcp://127.0.0.1:0")
    endpoint = sub.getsockopt_string(zmq.LAST_ENDPOINT)
    cfg = KVEventsConfig(enable_kv_cache_events=True, publisher="zmq", endpoint=endpoint,
                         topic="kv")  # fmt: skip
    try:
        async with running_engine(kv_events=cfg) as eng:
            async with eng.session.get(eng.url + "/kv_event_sources") as r:
                sources = await r.json()
            assert sources["0"]["endpoint"] == endpoint and sources["0"]["topic"] == "kv"
            # The PUB side connects asynchronously: warm up until a batch arrives.
            for attempt in range(50):
                await eng.post("/v1/completions", {"prompt": _ids(16, seed=900 + attempt),
                                                   "max_tokens": 1})  # fmt: skip
                if await sub.poll(100):
                    break
            else:
                pytest.fail("no KV events received")
            while await sub.poll(50):
                await sub.recv_multipart()

            prompt = _ids(70, seed=3)
            _status, res = await eng.post(
                "/v1/completions", {"prompt": prompt, "max_tokens": 30, "return_token_ids": True}
            )
            all_ids = prompt + res["choices"][0]["token_ids"]
            stored: list[BlockStored] = []
            seqs: list[int] = []
            while sum(len(e.block_hashes) for e in stored) < 6 and await sub.poll(2000):
                msg = decode_message(await sub.recv_multipart())
                assert msg.topic == "kv" and msg.data_parallel_rank == 0
                seqs.append(msg.seq or 0)
                stored += [e for e in msg.events if isinstance(e, BlockStored)]
    finally:
        sub.close(0)
        ctx.term()
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[0] > 0
    digests = BlockHasher(16).hashes(all_ids)
    expected = [event_hash(d) for d in digests]
    got = [h for e in stored for h in e.block_hashes]
    assert got == expected[:6]
    assert got == _vllm_recipe(all_ids, 16)[:6]
    assert stored[0].parent_block_hash is None
    for prev, ev in itertools.pairwise(stored):
        assert ev.parent_block_hash == prev.block_hashes[-1]
    assert [t for e in stored for t in e.token_ids] == all_ids[:96]
    assert all(e.block_size == 16 and e.medium == "GPU" for e in stored)


async def test_kv_event_replay_returns_buffered_batches() -> None:
    cfg = KVEventsConfig(enable_kv_cache_events=True, publisher="zmq", endpoint="tcp://*:0",
                         replay_endpoint="tcp://127.0.0.1:0")  # fmt: skip
    async with running_engine(kv_events=cfg) as eng:
        for seed in range(3):  # three requests -> at least three batches (nobody subscribed)
            await eng.post("/v1/completions", {"prompt": _ids(40, seed=seed), "max_tokens": 1})
        publisher = eng.server.publisher
        assert publisher is not None and publisher.replay_last_endpoint
        ctx = zmq.asyncio.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(publisher.replay_last_endpoint)
        try:
            await dealer.send_multipart([b"", (1).to_bytes(8, "big")])
            seqs: list[int] = []
            while True:
                assert await dealer.poll(5000), "replay did not answer"
                _, seq, payload = await dealer.recv_multipart()
                n = int.from_bytes(seq, "big", signed=True)
                if n == -1:
                    assert payload == b""
                    break
                seqs.append(n)
                assert decode_message([b"", seq, payload]).events
        finally:
            dealer.close(0)
            ctx.term()
    assert seqs[0] == 1 and seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 2
