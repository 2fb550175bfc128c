"""Conformance: the same requests against the engine simulator and a real vLLM 0.32 (CPU).

Intentional differences (one place, with reasons):
- The simulator's tokens are not a model's (a greedy function of the context), so texts and
  generated ids differ; lengths, framing, ids of prompts, usage and errors must not.
- ``logprobs``/``echo``/structured output are refused by the simulator (400) instead of
  being served: it has no logits.
- Metric families: vLLM also exports ``vllm:estimated_*_per_gpu_total`` (FLOP/byte counters
  of its own model), HTTP/process/GC families of its web stack; the simulator does not.
- Bodies nested past the parser's limit: vLLM answers FastAPI's ``{"detail": ...}``, the
  simulator vLLM's error shape (both 400).
- Counters the simulator reads from the engine at scrape time have no ``*_created`` sample.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.vllm

ESTIMATES = {
    "vllm:estimated_flops_per_gpu",
    "vllm:estimated_read_bytes_per_gpu",
    "vllm:estimated_write_bytes_per_gpu",
}


def post(url: str, path: str, body: Any, ctype: str = "application/json") -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read().decode(), e.code
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw


def sse(url: str, path: str, body: dict[str, Any]) -> list[str]:
    req = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: ") :] for e in events]


def test_completion_usage_and_token_id_prompt(target: str) -> None:
    status, tok = post(target, "/tokenize", {"model": "tiny", "prompt": "def hello_world():"})
    assert status == 200 and tok["count"] == len(tok["tokens"])
    body = {"model": "tiny", "prompt": tok["tokens"], "max_tokens": 5, "min_tokens": 5,
            "ignore_eos": True, "return_token_ids": True}  # fmt: skip
    status, resp = post(target, "/v1/completions", body)
    assert status == 200 and resp["object"] == "text_completion"
    choice = resp["choices"][0]
    assert choice["prompt_token_ids"] == tok["tokens"] and len(choice["token_ids"]) == 5
    assert resp["usage"]["prompt_tokens"] == tok["count"]
    assert resp["usage"]["completion_tokens"] == 5 and choice["finish_reason"] == "length"


def test_tokenize_is_the_same_on_both(sim_engine: str, real_vllm: str) -> None:
    for body in (
        {"model": "tiny", "prompt": "import os\nprint(os.getcwd())  # héllo"},
        {"model": "tiny", "messages": [{"role": "user", "content": "Say hi"}]},
    ):
        _, a = post(sim_engine, "/tokenize", body)
        _, b = post(real_vllm, "/tokenize", body)
        assert a["tokens"] == b["tokens"], body


def test_streamed_chat_framing(target: str) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Say hello"}],
            "max_tokens": 4, "min_tokens": 4, "ignore_eos": True, "stream": True,
            "return_token_ids": True, "stream_options": {"include_usage": True}}  # fmt: skip
    events = sse(target, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert isinstance(chunks[0]["prompt_token_ids"], list)
    ids = [i for c in chunks[1:-1] for ch in c["choices"] for i in (ch.get("token_ids") or [])]
    assert len(ids) == 4
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"prompt": "hi", "top_p": 0}, "top_p must be in (0, 1], got 0.0."),
        ({"prompt": "hi", "temperature": 3}, "temperature must be in [0, 2], got 3.0."),
        ({"prompt": "hi", "max_tokens": 100000}, "max_tokens=100000 cannot be greater"),
        ({"prompt": [1] * 2000}, "However, your prompt contains 2000 input tokens"),
        ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "at most 4 items"),
        ({"prompt": "hi", "stop": [""]}, "stop cannot contain an empty string."),
        ({"prompt": "hi", "cache_salt": "a/b"}, "'cache_salt' must be at most 128 characters"),
    ],
    ids=["top-p", "temperature", "max-tokens", "prompt-too-long", "stop-5", "stop-empty", "salt"],
)
def test_bad_bodies_same_status_and_message(target: str, body: dict[str, Any], fragment: str):
    status, err = post(target, "/v1/completions", {"model": "tiny", "max_tokens": 2, **body})
    assert status == 400 and fragment in err["error"]["message"]


def test_content_type_and_nesting_are_400(target: str) -> None:
    body = json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 2}).encode()
    status, err = post(target, "/v1/completions", body, ctype="text/plain")
    assert status == 400 and "Only 'application/json' is allowed" in err["error"]["message"]
    deep = b'{"model":"tiny","prompt":"hi","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    status, _ = post(target, "/v1/completions", deep)
    assert status == 400


def test_prefix_cache_hits_count_whole_blocks(target: str) -> None:
    ids = [7 + (i * 37) % 1900 for i in range(200)]
    body = {"model": "tiny", "prompt": ids, "max_tokens": 1, "cache_salt": f"c{target[-5:]}"}
    post(target, "/v1/completions", body)
    status, resp = post(target, "/v1/completions", body)
    assert status == 200
    assert resp["usage"]["prompt_tokens_details"]["cached_tokens"] == (200 - 1) // 32 * 32


def test_metric_names_and_types(sim_engine: str, real_vllm: str) -> None:
    def families(url: str) -> dict[str, str]:
        with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
            text = r.read().decode()
        return {
            f.name: f.type for f in text_string_to_metric_families(text)
            if f.name.startswith("vllm:")
        }  # fmt: skip

    sim, real = families(sim_engine), families(real_vllm)
    # counters read from the engine at scrape time carry no `_created` sample
    missing = {n for n in set(real) - set(sim) - ESTIMATES if not n.endswith("_created")}
    assert not missing, f"vLLM families the simulator does not export: {sorted(missing)}"
    assert {n: sim[n] for n in real if n in sim} == {n: real[n] for n in real if n in sim}
