"""Request bodies: every client mistake is a 400 naming the field; valid bodies parse once."""

from __future__ import annotations

import json

import pytest

from modelfleet.scheduler.errors import ApiError
from modelfleet.scheduler.protocol import MAX_JSON_DEPTH, parse_body, parse_json

pytestmark = pytest.mark.unit

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "code", "prompt": "def f():"}


def _with(base: dict[str, object], **changes: object) -> bytes:
    body = {**base, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


BAD = [
    ("empty", "chat", b"", None, "empty"),
    ("not-json", "chat", b"{bad", None, "not valid JSON"),
    ("not-utf8", "chat", b'{"model": "\xff"}', None, "not valid UTF-8"),
    ("array", "chat", b"[1, 2]", None, "must be a JSON object, got array"),
    ("nan", "chat", b'{"model": "chat", "temperature": NaN, "messages": []}', None, "NaN"),
    ("deep", "chat", b"[" * 2000 + b"]" * 2000, None, "nested deeper"),
    ("no-model", "chat", _with(CHAT, model=...), "model", "model: required"),
    ("model-int", "chat", _with(CHAT, model=3), "model", "non-empty string, got number"),
    ("model-empty", "chat", _with(CHAT, model=""), "model", "non-empty string"),
    ("stream-str", "chat", _with(CHAT, stream="yes"), "stream", "boolean, got string"),
    ("max-tokens-0", "chat", _with(CHAT, max_tokens=0), "max_tokens", "must be in 1.."),
    ("max-tokens-huge", "chat", _with(CHAT, max_tokens=10**9), "max_tokens", "must be in"),
    ("max-tokens-bool", "chat", _with(CHAT, max_tokens=True), "max_tokens", "integer"),
    ("max-tokens-float", "chat", _with(CHAT, max_tokens=1.5), "max_tokens", "integer"),
    ("mct-neg", "chat", _with(CHAT, max_completion_tokens=-1), "max_completion_tokens", "in"),
    ("n-0", "chat", _with(CHAT, n=0), "n", "must be in 1.."),
    ("temp-str", "chat", _with(CHAT, temperature="hot"), "temperature", "number"),
    ("stop-int", "chat", _with(CHAT, stop=3), "stop", "string or a list"),
    ("opts-list", "chat", _with(CHAT, stream_options=[1]), "stream_options", "object"),
    ("opts-no-stream", "chat", _with(CHAT, stream_options={}), "stream_options", "stream is true"),
    (
        "opts-stream-false",
        "completion",
        _with(COMPLETION, stream=False, stream_options={"include_usage": True}),
        "stream_options",
        "defined when stream is true",
    ),
    ("no-messages", "chat", _with(CHAT, messages=...), "messages", "messages: required"),
    ("messages-empty", "chat", _with(CHAT, messages=[]), "messages", "non-empty list"),
    ("message-str", "chat", _with(CHAT, messages=["hi"]), "messages[0]", "object"),
    (
        "bad-role",
        "chat",
        _with(CHAT, messages=[{"role": "x", "content": "a"}]),
        "messages[0].role",
        "one of",
    ),
    (
        "content-int",
        "chat",
        _with(CHAT, messages=[{"role": "user", "content": 5}]),
        "messages[0].content",
        "string, a list of content parts or null",
    ),
    (
        "part-text-int",
        "chat",
        _with(CHAT, messages=[{"role": "user", "content": [{"type": "text", "text": 1}]}]),
        "messages[0].content[0].text",
        "must be a string",
    ),
    ("no-prompt", "completion", _with(COMPLETION, prompt=...), "prompt", "prompt: required"),
    ("prompt-int", "completion", _with(COMPLETION, prompt=5), "prompt", "must be a string"),
    ("prompt-empty-list", "completion", _with(COMPLETION, prompt=[]), "prompt", "non-empty"),
    ("prompt-neg-id", "completion", _with(COMPLETION, prompt=[1, -2]), "prompt", ">= 0"),
    ("prompt-mixed", "completion", _with(COMPLETION, prompt=[1, "a"]), "prompt", "integers"),
    ("prompt-empty-ids", "completion", _with(COMPLETION, prompt=[[]]), "prompt", "not be empty"),
]


@pytest.mark.parametrize(
    ("kind", "raw", "param", "text"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_bodies_are_400_naming_the_field(
    kind: str, raw: bytes, param: str | None, text: str
) -> None:
    with pytest.raises(ApiError) as err:
        parse_body(kind, raw)  # type: ignore[arg-type]
    e = err.value
    assert e.status == 400
    assert text in e.message
    if param is not None:
        assert e.param is not None and e.param.startswith(param), (e.param, e.message)
    body = e.body()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error"


def test_chat_derives_prompt_text_and_selection_text() -> None:
    raw = _with(
        CHAT,
        stream=True,
        max_tokens=7,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "first"}]},
            {"role": "assistant", "content": None},
            {"role": "user", "content": "second question"},
        ],
    )
    p = parse_body("chat", raw)
    assert (p.kind, p.model, p.stream, p.max_tokens) == ("chat", "chat", True, 7)
    assert p.selection_text == "second question"
    assert p.prompt_text.index("be brief") < p.prompt_text.index("first")
    assert p.prompt_text.endswith("<|user|>second question")
    assert p.prompt_tokens == -(-len(p.prompt_text.encode()) // 4)
    assert p.prompt_token_ids is None


def test_turns_of_one_conversation_share_a_prompt_prefix() -> None:
    turn1 = [{"role": "user", "content": "q1"}]
    turn2 = [*turn1, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    p1 = parse_body("chat", _with(CHAT, messages=turn1))
    p2 = parse_body("chat", _with(CHAT, messages=turn2))
    assert p2.prompt_text.startswith(p1.prompt_text)


@pytest.mark.parametrize(
    ("prompt", "ids", "text"),
    [
        ("hello", None, "hello"),
        (["hello", "world"], None, "hello"),
        ([5, 6, 7], [5, 6, 7], ""),
        ([[5, 6], [7]], [5, 6], ""),
    ],
    ids=["text", "texts", "ids", "id-lists"],
)
def test_completion_prompts(prompt: object, ids: list[int] | None, text: str) -> None:
    p = parse_body("completion", _with(COMPLETION, prompt=prompt, max_completion_tokens=3))
    assert p.prompt_token_ids == ids
    assert p.prompt_text == text
    assert p.max_tokens == 3
    assert p.prompt_tokens == (len(ids) if ids else 2 if text else 0)


def test_unknown_fields_are_kept_for_the_engine() -> None:
    p = parse_body("chat", _with(CHAT, top_k=5, vendor_flag={"x": 1}))
    assert p.body["top_k"] == 5 and p.body["vendor_flag"] == {"x": 1}


def test_depth_limit_allows_ordinary_nesting() -> None:
    nested: object = "x"
    for _ in range(MAX_JSON_DEPTH - 2):
        nested = [nested]
    assert parse_json(json.dumps({"a": nested}).encode())["a"] == nested


def test_integral_numbers_are_integers_and_reach_the_engine_as_integers() -> None:
    """JSON Schema's ``integer`` and vLLM's models take ``16.0``; the forwarded body says 16."""
    chat = parse_body("chat", _with(CHAT, max_tokens=16.0, stream=True, stream_options={}))
    assert chat.max_tokens == 16 and type(chat.body["max_tokens"]) is int
    done = parse_body("completion", _with(COMPLETION, prompt=[1.0, 2.0], n=1.0))
    assert done.prompt_token_ids == [1, 2]
    assert json.dumps(done.body["prompt"]) == "[1, 2]" and type(done.body["n"]) is int
    lists = parse_body("completion", _with(COMPLETION, prompt=[[3.0, 4]]))
    assert json.dumps(lists.body["prompt"]) == "[[3, 4]]"
