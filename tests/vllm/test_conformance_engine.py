"""Conformance of the engine behind the API: KV-cache events on the wire, block hashes, prefix
hits as the counters see them, and abort on disconnect, on the simulator and on real vLLM 0.32.

The block-hash recipe below is written out from vLLM's source (``kv_cache_utils.py``,
``hashing.py``; ``shared/reference/vllm-migration.md`` §6) with the standard library only, so
both engines are checked against a third, independent account of the hashes as well as against
each other. Intentional differences: ``docs/engine-vs-vllm.md``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import pickle
import socket
import time
import uuid
from typing import Any
from urllib.parse import urlparse

import msgpack  # type: ignore[import-untyped]
import pytest
from vllm_tier import BLOCK, KVSubscriber, Target, post, samples

pytestmark = pytest.mark.vllm

STORED_KEYS = {
    "type", "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id",
    "medium", "lora_name", "extra_keys", "group_idx", "kv_cache_spec_kind",
}  # fmt: skip


def recipe_hashes(ids: list[int], salt: str | None) -> list[int]:
    """vLLM's chained block hashes (sha256 over pickle, no PYTHONHASHSEED, 64-bit ints)."""

    def h(x: Any) -> bytes:
        return hashlib.sha256(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL)).digest()

    parent = h("vllm-none-hash")
    out = []
    for i in range(len(ids) // BLOCK):
        extra = (("cache_salt", salt),) if i == 0 and salt else None
        parent = h((parent, tuple(ids[i * BLOCK : (i + 1) * BLOCK]), extra))
        out.append(int.from_bytes(parent, "big") & (2**64 - 1))
    return out


def stored(messages: list[list[bytes]]) -> list[dict[str, Any]]:
    events = [e for m in messages for e in msgpack.unpackb(m[2], raw=False)[1]]
    return [e for e in events if e["type"] == "BlockStored"]


def num_stored_hashes(messages: list[list[bytes]]) -> int:
    return sum(len(e["block_hashes"]) for e in stored(messages))


def test_kv_events_wire_format_and_block_hashes(kv_target: Target) -> None:
    """70 prompt + 30 generated tokens: the prompt's two full blocks are published after
    prefill, the third (6 prompt + 26 generated tokens) once decoding fills it."""
    salt = f"kv-{uuid.uuid4().hex[:8]}"
    prompt = [7 + (i * 37) % 1900 for i in range(70)]
    kv_target.kv.drain()
    body = {
        "model": "tiny",
        "prompt": prompt,
        "max_tokens": 30,
        "min_tokens": 30,
        "ignore_eos": True,
        "temperature": 0,
        "return_token_ids": True,
        "cache_salt": salt,
    }
    status, resp = post(kv_target.url, "/v1/completions", body)  # fmt: skip
    assert status == 200
    ids = prompt + resp["choices"][0]["token_ids"]
    messages = kv_target.kv.receive(lambda got: num_stored_hashes(got) >= 3)

    assert [len(m) for m in messages] == [3, 3]
    assert {m[0] for m in messages} == {KVSubscriber.TOPIC.encode()}
    seqs = [int.from_bytes(m[1], "big") for m in messages]
    assert all(len(m[1]) == 8 for m in messages) and seqs[1] == seqs[0] + 1
    for m in messages:
        assert m[2][:2] == b"\x93\xcb"  # [ts as float64, events, data-parallel rank]
        ts, _, rank = msgpack.unpackb(m[2], raw=False)
        assert abs(ts - time.time()) < 120 and rank == 0

    first, second = stored(messages)
    assert set(first) == set(second) == STORED_KEYS
    expected = recipe_hashes(ids, salt)
    assert first["block_hashes"] == expected[:2] and second["block_hashes"] == expected[2:3]
    assert first["parent_block_hash"] is None and second["parent_block_hash"] == expected[1]
    assert first["token_ids"] == ids[:64] and second["token_ids"] == ids[64:96]
    assert first["extra_keys"] == [[salt], None] and second["extra_keys"] == [None]
    for e in (first, second):
        assert (e["block_size"], e["medium"], e["group_idx"]) == (BLOCK, "GPU", 0)
        assert (e["lora_id"], e["lora_name"], e["kv_cache_spec_kind"]) == (
            None, None, "full_attention",
        )  # fmt: skip


def test_kv_event_payloads_are_byte_identical(
    sim_engine: str, real_vllm: str, sim_kv: KVSubscriber, real_kv: KVSubscriber
) -> None:
    """The same two-block prompt on both engines: the published payloads differ only in the
    timestamp's 8 bytes."""
    salt = f"bytes-{uuid.uuid4().hex[:8]}"
    body = {"model": "tiny", "prompt": [11 + (i * 53) % 2000 for i in range(64)],
            "max_tokens": 1, "cache_salt": salt}  # fmt: skip
    payloads = []
    for url, kv in ((sim_engine, sim_kv), (real_vllm, real_kv)):
        kv.drain()
        assert post(url, "/v1/completions", body)[0] == 200
        (message,) = kv.receive(lambda got: num_stored_hashes(got) >= 2)
        payloads.append(message[2])
    sim, real = payloads
    assert sim[:2] == real[:2] == b"\x93\xcb"
    assert sim[10:] == real[10:]


def test_reset_prefix_cache_publishes_all_blocks_cleared(kv_target: Target) -> None:
    """vLLM publishes events with the next engine step, so a request follows the reset."""
    kv_target.kv.drain()
    status, resp = post(kv_target.url, "/reset_prefix_cache", {})
    assert (status, resp) == (200, {"success": True})
    post(kv_target.url, "/v1/completions", {"model": "tiny", "prompt": [5] * 40, "max_tokens": 1})

    def cleared(got: list[list[bytes]]) -> bool:
        return any(
            e == {"type": "AllBlocksCleared"}
            for m in got for e in msgpack.unpackb(m[2], raw=False)[1]
        )  # fmt: skip

    assert cleared(kv_target.kv.receive(cleared))


def test_prefix_cache_hits_count_whole_blocks(target: str) -> None:
    ids = [7 + (i * 37) % 1900 for i in range(200)]
    body = {"model": "tiny", "prompt": ids, "max_tokens": 1, "cache_salt": uuid.uuid4().hex}
    post(target, "/v1/completions", body)
    status, resp = post(target, "/v1/completions", body)
    assert status == 200
    assert resp["usage"]["prompt_tokens_details"]["cached_tokens"] == (200 - 1) // 32 * 32


PREFIX_SERIES = (
    "vllm:prefix_cache_", "vllm:prompt_tokens_", "vllm:request_prefill_kv_computed_tokens_",
)  # fmt: skip


def test_prefix_cache_counters_move_alike(sim_engine: str, real_vllm: str) -> None:
    """A prompt, then one sharing its first 150 tokens: every prefix and prompt-token counter
    (queries, hits, by source, computed KV) moves by the same amount on both engines."""
    salt = uuid.uuid4().hex
    ids = [7 + (i * 41) % 1900 for i in range(200)]
    deltas = []
    for url in (sim_engine, real_vllm):
        before = samples(url)
        post(url, "/v1/completions", {"model": "tiny", "prompt": ids, "max_tokens": 1,
                                      "cache_salt": salt})  # fmt: skip
        _, resp = post(url, "/v1/completions", {"model": "tiny", "prompt": ids[:150] + [9] * 10,
                                                "max_tokens": 1, "cache_salt": salt})  # fmt: skip
        assert resp["usage"]["prompt_tokens_details"]["cached_tokens"] == 128
        after = samples(url)
        deltas.append({
            k: after[k] - before.get(k, 0.0) for k in after
            if k[0].startswith(PREFIX_SERIES) and after[k] != before.get(k, 0.0)
        })  # fmt: skip
    sim, real = deltas
    hits = ("vllm:prefix_cache_hits_total", (("engine", "0"), ("model_name", "tiny")))
    queries = ("vllm:prefix_cache_queries_total", (("engine", "0"), ("model_name", "tiny")))
    assert (real[hits], real[queries]) == (128, 360)
    assert sim == real


def _metric(url: str, name: str) -> float:
    return sum(v for (n, _), v in samples(url).items() if n == name)


def test_client_disconnect_aborts_the_request(target: str) -> None:
    """Close a stream after 5 chunks: the engine frees the request (running back to 0) long
    before its 1000 tokens, and produces no token for it afterwards."""
    running = "vllm:num_requests_running"
    generated = "vllm:generation_tokens_total"
    assert _metric(target, running) == 0
    g0 = _metric(target, generated)
    u = urlparse(target)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=30)
    body = {"model": "tiny", "prompt": [5, 6, 7, 8], "max_tokens": 1000, "min_tokens": 1000,
            "ignore_eos": True, "stream": True}  # fmt: skip
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    chunks = 0
    while chunks < 5:
        if resp.fp.readline().startswith(b"data: "):
            chunks += 1
    assert _metric(target, running) == 1
    assert conn.sock is not None
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    deadline = time.monotonic() + 10
    while _metric(target, running) != 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _metric(target, running) == 0
    produced = _metric(target, generated) - g0
    assert 5 <= produced < 1000
    time.sleep(0.3)
    assert _metric(target, generated) - g0 == produced
