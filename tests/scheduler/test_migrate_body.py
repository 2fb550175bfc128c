"""The hand-off's pure parts: which requests may move, and the destination's request body."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelfleet.scheduler.migrate import handoff_body, is_greedy, not_migratable
from modelfleet.scheduler.protocol import parse_body

pytestmark = pytest.mark.unit


def parsed(kind: str = "completion", **fields: Any) -> Any:
    body: dict[str, Any] = {"model": "m", "stream": True, "max_tokens": 50, **fields}
    if kind == "chat":
        body.setdefault("messages", [{"role": "user", "content": "hi"}])
    else:
        body.setdefault("prompt", "hello")
    return parse_body(kind, json.dumps(body).encode())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({}, None),
        ({"temperature": 0.7, "seed": 3}, None),
        ({"repetition_penalty": 1.3}, None),
        ({"frequency_penalty": 0}, None),
        ({"response_format": {"type": "text"}}, None),
        ({"stream": False}, "not streamed"),
        ({"n": 2}, "n > 1"),
        ({"best_of": 3}, "best_of > 1"),
        ({"response_format": {"type": "json_object"}}, "structured output (response_format)"),
        ({"guided_regex": "a+"}, "structured output (guided_regex)"),
        ({"frequency_penalty": 0.5}, "frequency penalty"),
        ({"presence_penalty": -1.0}, "presence penalty"),
        ({"stop": ["\n"]}, "stop strings"),
        ({"tool_choice": "required"}, "forced tool call"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else str(v),
)
def test_not_migratable(fields: dict[str, Any], why: str | None) -> None:
    assert not_migratable(parsed(**fields)) == why


@pytest.mark.parametrize(
    ("fields", "greedy"),
    [({"temperature": 0}, True), ({"top_k": 1}, True), ({}, False), ({"temperature": 0.2}, False)],
)
def test_is_greedy(fields: dict[str, Any], greedy: bool) -> None:
    assert is_greedy(parsed(**fields)) is greedy


def test_completion_body_by_token_ids() -> None:
    p = parsed(echo=True, min_tokens=10, temperature=0)
    body = handoff_body(p, "served", [1, 2, 3], [7, 8, 9, 10], 3, "rid-m1")
    assert body is not None
    assert body["prompt"] == [1, 2, 3, 7, 8, 9]
    assert body["max_tokens"] == 47 and body["min_tokens"] == 7
    assert body["model"] == "served" and body["request_id"] == "rid-m1"
    assert body["return_token_ids"] is True and body["stream"] is True
    assert "echo" not in body and body["temperature"] == 0
    assert p.body["prompt"] == "hello"  # the client's body is untouched


def test_chat_body_keeps_messages_and_carries_ids() -> None:
    p = parsed("chat", max_completion_tokens=20, min_tokens=2, kv_transfer_params={"x": 1})
    body = handoff_body(p, "served", [4, 5], [6, 7, 8], 3, "rid-m2")
    assert body is not None
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["kv_transfer_params"] == {"x": 1, "prompt_token_ids": [4, 5, 6, 7, 8]}
    assert body["max_completion_tokens"] == 17 and body["max_tokens"] == 47
    assert body["min_tokens"] == 0


def test_completion_without_max_tokens_uses_the_engine_default() -> None:
    p = parse_body("completion", json.dumps({"model": "m", "prompt": "x", "stream": True}).encode())
    body = handoff_body(p, "s", [1], [2, 3], 2, "r")
    assert body is not None and body["max_tokens"] == 14


def test_nothing_left_to_generate() -> None:
    assert handoff_body(parsed(max_tokens=3), "s", [1], [2, 3, 4], 3, "r") is None
