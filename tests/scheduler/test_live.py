"""``modelfleet scheduler`` under Ray Serve, over engine simulators, with real clients.

Every test talks HTTP to the session's scheduler (``conftest.live``): the OpenAI SDK, raw
httpx for what an SDK never sends, and the engines' own ``/metrics`` to see what reached them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import httpx
import openai
import pytest

from .conftest import LiveScheduler

pytestmark = pytest.mark.integration


def sdk(live: LiveScheduler) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_public_names(live: LiveScheduler) -> None:
    names = {m.id for m in sdk(live).models.list()}
    assert names == {"chat", "code", "fragile", "steady", "switch"}


@pytest.mark.parametrize(
    ("model", "served"), [("chat", {"big-8b", "small-3b"}), ("code", {"coder-7b"})]
)
def test_sdk_streams_chat_completions(live: LiveScheduler, model: str, served: set[str]) -> None:
    client = sdk(live)
    seen = set()
    for i in range(6):
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"Tell me about fleets, part {i}."}],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage, finish = "", None, None
        for chunk in stream:
            seen.add(chunk.model)
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage
        assert text and finish == "length"
        assert usage is not None and usage.completion_tokens == 12
    assert seen <= served and seen


def test_a_fast_stream_is_written_in_batches_not_a_token_per_interval(
    live: LiveScheduler,
) -> None:
    """After its first token a stream is written every ``--write-interval`` (50 ms), each
    write carrying every event the engine has sent by then. The engine sends each event as
    its own HTTP chunk; reading only what one chunk brought wrote one token per interval, and
    a 2,048-token answer took 106 s through the scheduler (tests/cluster/test_e2e.py)."""
    tokens = 300  # the "chat" pools' engines run at time scale 0.02: well under 1 ms a token
    body = {"model": "chat", "prompt": "Count on.", "max_tokens": tokens, "stream": True,
            "ignore_eos": True}  # fmt: skip
    with httpx.stream("POST", live.url + "/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        chunks = list(r.iter_raw())  # one item per HTTP chunk: one per write of the relay
    events = [
        json.loads(line[6:])
        for line in b"".join(chunks).decode().splitlines()
        if line.startswith("data: {")
    ]
    assert sum(len(e["choices"][0].get("token_ids") or []) for e in events) == tokens
    assert len(chunks) <= tokens // 5, f"{len(chunks)} writes for {tokens} tokens"


def test_sdk_non_streamed_and_completions(live: LiveScheduler) -> None:
    client = sdk(live)
    chat = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert chat.choices[0].message.content and chat.usage and chat.usage.completion_tokens == 5
    comp = client.completions.create(model="code", prompt="def fleet():", max_tokens=4)
    assert comp.choices[0].text and comp.model == "coder-7b"


def test_errors_have_openai_shape(live: LiveScheduler) -> None:
    client = sdk(live)
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as br:
        client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}], max_tokens=0
        )
    assert br.value.param == "max_tokens"
    big = (
        b'{"model": "chat", "messages": [{"role": "user", "content": "' + b"a" * 2_000_000 + b'"}]}'
    )
    for method, path, body, status in [
        ("POST", "/v1/chat/completions", big, 413),
        ("POST", "/v1/chat/completions", b"{nope", 400),
        ("POST", "/v1/completions", b'{"model": "code", "prompt": 5}', 400),
        ("GET", "/v1/chat/completions", None, 405),
        ("GET", "/no/such/path", None, 404),
    ]:
        r = httpx.request(method, live.url + path, content=body, timeout=30)
        assert r.status_code == status, (path, r.text[:200])
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]


def _engine_metric(url: str, prefix: str) -> float:
    """Sum of the engine's samples whose line starts with ``prefix`` (a name and labels)."""
    if "{" not in prefix:
        prefix += "{"
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def _inflight(live: LiveScheduler, pool: str | None = None) -> float:
    return sum(
        v
        for k, v in live.metrics().items()
        if k.startswith("modelfleet_inflight_requests{") and (pool is None or f"pool={pool}" in k)
    )


def test_engine_killed_before_first_token_requests_finish_elsewhere(live: LiveScheduler) -> None:
    victim = live.engines["fragile"][0]
    prompt = "fleet " * 6000  # ~0.8 s of prefill each on a modelled L40S: killed before any token

    async def one(client: httpx.AsyncClient, i: int) -> tuple[int, list[dict[str, Any]]]:
        body = {
            "model": "fragile",
            "prompt": f"{i} {prompt}",
            "max_tokens": 3,
            "stream": True,
        }
        chunks = []
        async with client.stream("POST", "/v1/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunks.append(json.loads(line[6:]))
            return r.status_code, chunks

    async def run() -> tuple[float, list[tuple[int, list[dict[str, Any]]]]]:
        async with httpx.AsyncClient(base_url=live.url, timeout=120) as client:
            tasks = [asyncio.create_task(one(client, i)) for i in range(8)]
            on_victim = 0.0
            for _ in range(50):
                await asyncio.sleep(0.05)
                on_victim = await asyncio.to_thread(
                    lambda: sum(
                        v
                        for k, v in live.metrics().items()
                        if k.startswith("modelfleet_inflight_requests{")
                        and f"endpoint=127.0.0.1:{victim.port}" in k
                    )
                )
                if on_victim >= 3:
                    break
            victim.proc.send_signal(signal.SIGKILL)
            return on_victim, await asyncio.gather(*tasks)

    on_victim, results = asyncio.run(run())
    victim.proc.wait(10)
    assert on_victim >= 1, "no request was on the killed engine"
    for status, chunks in results:
        assert status == 200
        tokens = sum(
            len(c["choices"][0].get("token_ids") or []) for c in chunks if c.get("choices")
        )
        assert tokens == 3 and all("error" not in c for c in chunks)
    # Each request the kill caught was placed again: retried before its first token, or (when
    # its first token beat the kill on a loaded machine) resumed elsewhere mid-stream.
    metrics = live.metrics()
    retries = sum(v for k, v in metrics.items() if k.startswith("modelfleet_retries_total{"))
    resumed = sum(
        v
        for k, v in metrics.items()
        if k.startswith("modelfleet_migrations_total{")
        and "trigger=resume" in k
        and "outcome=switched" in k
    )
    assert retries + resumed >= on_victim


def test_routing_policy_edit_takes_effect_without_dropping_requests(live: LiveScheduler) -> None:
    """Flip the ``switch`` model between two pools while streams run on it."""
    client = sdk(live)

    def served() -> str:
        r = client.chat.completions.create(
            model="switch", messages=[{"role": "user", "content": "who?"}], max_tokens=1
        )
        return r.model

    async def background() -> list[str]:
        async with httpx.AsyncClient(base_url=live.url, timeout=60) as c:

            async def stream(i: int) -> str:
                body = {
                    "model": "switch",
                    "messages": [{"role": "user", "content": f"long {i}"}],
                    "max_tokens": 400,
                    "stream": True,
                }
                last = ""
                async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        last = line or last
                return last

            return await asyncio.gather(*(stream(i) for i in range(10)))

    assert served() == "small-3b"
    loop = asyncio.new_event_loop()
    bg = loop.create_task(background())
    loop.run_until_complete(asyncio.sleep(0.05))
    try:
        for target, name in [("coder", "coder-7b"), ("small", "small-3b"), ("coder", "coder-7b")]:
            live.switch_to(target)
            deadline = time.monotonic() + 10
            while served() != name:
                assert time.monotonic() < deadline, f"edit to {target} never took effect"
                loop.run_until_complete(asyncio.sleep(0.02))
        lasts = loop.run_until_complete(bg)
    finally:
        live.switch_to("small")
        loop.close()
    assert lasts == ["data: [DONE]"] * 10


def test_control_api_in_the_serve_replica(live: LiveScheduler) -> None:
    """Under Ray Serve the control API runs in the replica: it answers with the token (every
    endpoint of the fleet) and refuses without it; a drain of an idle endpoint is EMPTY at
    once and Undrain reports it was draining."""
    import grpc

    from modelfleet.control import bearer
    from modelfleet.control import control_pb2 as pb
    from modelfleet.control import control_pb2_grpc as pb_grpc

    from .conftest import LIVE_CONTROL_TOKEN

    with grpc.insecure_channel(live.control) as channel:
        stub = pb_grpc.ControlStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ListEndpoints(pb.ListEndpointsRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        meta = bearer(LIVE_CONTROL_TOKEN)
        resp = stub.ListEndpoints(pb.ListEndpointsRequest(pool="steady"), metadata=meta, timeout=10)
        urls = {e.address for e in resp.endpoints}
        assert urls == {e.url for e in live.engines["steady"]}
        ep = resp.endpoints[0].id
        progress = list(stub.Drain(pb.DrainRequest(endpoint=ep), metadata=meta, timeout=30))
        assert progress[-1].state == pb.EMPTY
        assert stub.Undrain(pb.UndrainRequest(endpoint=ep), metadata=meta, timeout=10).was_draining
