"""Unit tests: tokenizer, greedy generator, request validation, metric names, KV-event codec."""

from __future__ import annotations

from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from pydantic import ValidationError

from modelfleet.engine.fallback_tokenizer import (
    BOS_TOKEN_ID,
    EOT_TOKEN_ID,
    VOCAB_SIZE,
    ChatTemplateError,
)
from modelfleet.engine.fallback_tokenizer import (
    BuiltinTokenizer as Tokenizer,
)
from modelfleet.engine.generation import GreedyGenerator
from modelfleet.engine.kv_events import (
    KVEventsConfig,
    decode_batch,
    decode_message,
    encode_batch,
)
from modelfleet.engine.kvcache import AllBlocksCleared, BlockRemoved, BlockStored
from modelfleet.engine.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ProtocolError,
    resolve_max_tokens,
    validation_error_message,
)

pytestmark = pytest.mark.unit

TOK = Tokenizer()
GEN = GreedyGenerator(TOK)


# ------------------------------------------------------------------------------ tokenizer


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Hello world",
        "The quick brown fox jumps over the lazy dog.",
        "  leading and trailing spaces  ",
        "tabs\tand\nnewlines\n\n\r\n",
        "iPhone HTTP/1.1 camelCaseWord ALLCAPS MiXeD",
        "numbers 0 7 42 123 4567 00012 3.14159",
        "unicode: héllo wörld 中文 🙂 — «quotes»",
        "<|eot_id|> <|begin_of_text|> look like specials but are text",
        "punctuation!!! ?? ... ;:,{}[]()<>@#$%^&*",
    ],
    ids=["empty", "simple", "sentence", "spaces", "whitespace", "case", "digits", "unicode",
         "special-text", "punct"],
)  # fmt: skip
def test_round_trip_is_exact(text: str) -> None:
    ids = TOK.encode(text)
    assert TOK.decode(ids) == text
    assert all(0 <= i < VOCAB_SIZE for i in ids)
    assert all(i < 128000 for i in ids), "text must never encode to special ids"


def test_token_ids_are_stable_across_instances() -> None:
    # Golden values: a change here changes every prefix-cache hash and token count.
    assert TOK.encode("Hello world") == [43231, 1452, 455]
    assert Tokenizer().encode("Hello world, the model.") == Tokenizer().encode(
        "Hello world, the model."
    )


def test_common_words_are_single_tokens_and_prose_is_compact() -> None:
    assert len(TOK.encode(" the")) == 1
    assert len(TOK.encode(" request")) == 1
    prose = "The scheduler sends every request to the right model and the right engine. " * 50
    ids = TOK.encode(prose)
    assert 3.0 <= len(prose) / len(ids) <= 6.0


def test_bos_only_with_special_tokens() -> None:
    assert TOK.encode("hi", add_special_tokens=True)[0] == BOS_TOKEN_ID
    assert BOS_TOKEN_ID not in TOK.encode("hi")


def test_decode_rejects_out_of_vocab_and_skips_specials_on_request() -> None:
    with pytest.raises(ValueError, match="out of vocabulary"):
        TOK.decode([VOCAB_SIZE])
    ids = [BOS_TOKEN_ID, *TOK.encode("hi"), EOT_TOKEN_ID]
    assert TOK.decode(ids) == "<|begin_of_text|>hi<|eot_id|>"
    assert TOK.decode(ids, skip_special_tokens=True) == "hi"


def test_split_utf8_decodes_to_replacement_char() -> None:
    ids = TOK.encode("é")
    assert len(ids) == 2
    assert TOK.decode(ids[:1]) == "\ufffd"


def test_chat_template_llama3_shape() -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    ids = TOK.apply_chat_template(msgs, add_generation_prompt=True)
    text = TOK.decode(ids)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    no_gen = TOK.apply_chat_template(msgs, add_generation_prompt=False)
    assert no_gen[-1] == EOT_TOKEN_ID


def test_continue_final_message_leaves_last_message_open() -> None:
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " Hel"}]
    ids = TOK.apply_chat_template(msgs, add_generation_prompt=False, continue_final_message=True)
    assert TOK.decode(ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n Hel")
    with pytest.raises(ChatTemplateError, match="Cannot set both"):
        TOK.apply_chat_template(msgs, add_generation_prompt=True, continue_final_message=True)


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "at least one"),
        ([{"role": "", "content": "x"}], "role"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "only text"),
        ([{"role": "user", "content": 5}], "content"),
    ],
    ids=["empty", "no-role", "image-part", "int-content"],
)
def test_chat_template_rejects_bad_messages(messages: list[dict[str, Any]], match: str) -> None:
    with pytest.raises(ChatTemplateError, match=match):
        TOK.apply_chat_template(messages)


def test_chat_template_accepts_text_parts() -> None:
    a = TOK.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    b = TOK.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert a == b


# ----------------------------------------------------------------------------- generation


def _generate(ctx: list[int], n: int) -> list[int]:
    ctx = list(ctx)
    out = []
    for _ in range(n):
        t = GEN.next_token(ctx)
        ctx.append(t)
        out.append(t)
    return out


def test_generation_is_a_pure_function_of_the_context() -> None:
    prompt = TOK.encode("Tell me about caches.", add_special_tokens=True)
    ref = _generate(prompt, 200)
    assert _generate(prompt, 200) == ref
    assert GreedyGenerator(Tokenizer()).next_token(prompt) == ref[0]
    for k in (1, 17, 100, 199):  # continuation from any cut point gives the remaining tokens
        assert _generate(prompt + ref[:k], 200 - k) == ref[k:]


def test_generation_depends_on_the_context() -> None:
    a = _generate(TOK.encode("first prompt"), 20)
    b = _generate(TOK.encode("second prompt"), 20)
    assert a != b


def test_generation_never_emits_eos_or_specials_and_is_canonical() -> None:
    gen = _generate(TOK.encode("Once upon a time", add_special_tokens=True), 5000)
    assert all(t < 128000 for t in gen)
    text = TOK.decode(gen)
    assert TOK.encode(text) == gen  # canonical ids: text and ids agree
    words = text.split()
    assert len(words) > 3000 and all(w.strip(".,").isalpha() for w in words)
    assert ". " in text and ", " in text


# ------------------------------------------------------------------------------ protocol


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x", "max_tokens": "many"}, "max_tokens"),
        ({"prompt": "x", "stream": "maybe"}, "stream"),
        ({"prompt": "x", "stop": 3}, "stop"),
        ({"prompt": [1, -2]}, "prompt"),
        ({"prompt": "x", "min_tokens": -1}, "min_tokens"),
        ({"prompt": "x", "stream_options": {"include_usage": "perhaps"}}, "stream_options"),
    ],
    ids=["missing-prompt", "int-prompt", "str-max-tokens", "bad-stream", "int-stop",
         "negative-id", "negative-min", "bad-stream-options"],
)  # fmt: skip
def test_completion_type_errors_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as ei:
        CompletionRequest.model_validate(body)
    message, first = validation_error_message(ei.value)
    assert first is not None and first.startswith(param)
    assert param in message


@pytest.mark.parametrize(
    ("body", "param", "match"),
    [
        ({"prompt": "x", "max_tokens": -5}, "max_tokens", "at least 1, got -5"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens", "at least 1"),
        ({"prompt": "x", "n": 2}, "n", "n must be 1"),
        ({"prompt": "x", "max_tokens": 3, "min_tokens": 4}, None, "min_tokens"),  # vLLM: param null
        ({"prompt": "x", "echo": True}, "echo", "not supported"),
        ({"prompt": "x", "logprobs": 1}, "logprobs", "not supported"),
        ({"prompt": []}, "prompt", "at least one prompt"),
        ({"prompt": ["a", "b"]}, "prompt", "one prompt"),
        (
            {"prompt": "x", "stream_options": {"include_usage": True}},
            "stream_options",
            "only be defined when `stream=True`",
        ),
    ],
    ids=[
        "negative",
        "zero",
        "n2",
        "min-gt-max",
        "echo",
        "logprobs",
        "empty",
        "batch",
        "stream-options-without-stream",
    ],
)
def test_completion_semantic_errors(body: dict[str, Any], param: str, match: str) -> None:
    req = CompletionRequest.model_validate(body)
    with pytest.raises(ProtocolError, match=match) as ei:
        req.check()
        req.single_prompt()
    assert ei.value.param == param
    assert ei.value.body() == {
        "error": {"message": ei.value.message, "type": "BadRequestError", "param": param,
                  "code": 400}
    }  # fmt: skip


def test_unknown_fields_are_accepted_like_vllm() -> None:
    req = CompletionRequest.model_validate(
        {"prompt": "x", "top_k": 5, "frequency_penalty": 0.0, "user": "u", "whatever": [1]}
    )
    req.check()
    assert req.single_prompt() == "x"


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("text", "text"), ([1, 2, 3], [1, 2, 3]), ([[4, 5]], [4, 5]), (["only"], "only")],
    ids=["text", "ids", "nested-ids", "one-text"],
)
def test_single_prompt_forms(prompt: Any, expected: Any) -> None:
    assert CompletionRequest.model_validate({"prompt": prompt}).single_prompt() == expected


def test_chat_request_checks() -> None:
    base = {"messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(ProtocolError, match="Cannot set both"):
        ChatCompletionRequest.model_validate({**base, "continue_final_message": True}).check()
    req = ChatCompletionRequest.model_validate({**base, "max_completion_tokens": 7})
    req.check()
    assert req.max_tokens == 7
    req = ChatCompletionRequest.model_validate(
        {**base, "kv_transfer_params": {"prompt_token_ids": [1, 2, 3], "other": 1}}
    )
    assert req.reused_prompt_token_ids() == [1, 2, 3]
    bad = ChatCompletionRequest.model_validate(
        {**base, "kv_transfer_params": {"prompt_token_ids": [1, "x"]}}
    )
    with pytest.raises(ProtocolError, match="prompt_token_ids"):
        bad.reused_prompt_token_ids()
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"messages": "hi"})


@pytest.mark.parametrize(
    ("requested", "prompt_len", "default", "expected"),
    [
        (10, 100, 16, 10),
        (None, 100, 16, 16),
        (None, 100, None, 924),
        (10, 1020, 16, 4),  # clamped to the context, as vLLM 0.32 does
    ],
    ids=["explicit", "default-16", "chat-rest", "clamped"],
)
def test_resolve_max_tokens(
    requested: int | None, prompt_len: int, default: int | None, expected: int
) -> None:
    assert resolve_max_tokens(requested, prompt_len, 1024, default=default) == expected


def test_resolve_max_tokens_prompt_too_long() -> None:
    # measured on vLLM 0.32: longer than the context names input_tokens; exactly the context
    # leaves max_tokens 0; more than the context as max_tokens names max_tokens
    with pytest.raises(ProtocolError, match="maximum context length is 1024") as ei:
        resolve_max_tokens(1, 1025, 1024, default=16)
    assert ei.value.status == 400 and ei.value.param == "input_tokens"
    with pytest.raises(ProtocolError, match="max_tokens must be at least 1, got 0") as ei:
        resolve_max_tokens(1, 1024, 1024, default=16)
    assert ei.value.param == "max_tokens"
    with pytest.raises(ProtocolError, match="cannot be greater than max_model_len=1024") as ei:
        resolve_max_tokens(100000, 10, 1024, default=16)
    assert ei.value.param == "max_tokens"


# ----------------------------------------------------------------------------- KV events

STORED = BlockStored(
    block_hashes=[2056626574357165397, 17192358511470645710],
    parent_block_hash=None,
    token_ids=list(range(64)),
    block_size=32,
    extra_keys=[None, None],
)


def test_batch_wire_shape_matches_vllm() -> None:
    payload = encode_batch([STORED, BlockRemoved([8534507619223264712]), AllBlocksCleared()],
                           ts=1795352122.949)  # fmt: skip
    raw = msgpack.unpackb(payload, raw=False)
    assert isinstance(raw, list) and len(raw) == 3
    ts, events, rank = raw
    assert ts == 1795352122.949 and rank == 0
    assert list(events[0]) == [
        "type", "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id",
        "medium", "lora_name", "extra_keys", "group_idx", "kv_cache_spec_kind",
    ]  # fmt: skip
    assert events[0]["type"] == "BlockStored" and events[0]["medium"] == "GPU"
    assert events[0]["block_hashes"][1] == 17192358511470645710  # uint64 survives
    assert events[1] == {"type": "BlockRemoved", "block_hashes": [8534507619223264712],
                         "medium": "GPU", "group_idx": 0}  # fmt: skip
    assert events[2] == {"type": "AllBlocksCleared"}


def test_decode_round_trip_and_vllm_payload() -> None:
    evs = decode_batch(encode_batch([STORED, AllBlocksCleared()], ts=1.0))
    assert evs == [STORED, AllBlocksCleared()]
    # A payload as vLLM sends it (hand-built from the recorded event; bytes hashes variant).
    vllm_payload = msgpack.packb(
        [1795352123.059, [{"type": "BlockStored", "block_hashes": [b"\x01" * 32],
                           "parent_block_hash": b"\x02" * 32, "token_ids": [1, 2],
                           "block_size": 2, "lora_id": None, "medium": "GPU",
                           "lora_name": None, "group_idx": 0,
                           "kv_cache_spec_kind": "full_attention"}], 0],
        use_bin_type=True,
    )  # fmt: skip
    (ev,) = decode_batch(vllm_payload)
    assert isinstance(ev, BlockStored)
    assert ev.block_hashes == [b"\x01" * 32] and ev.parent_block_hash == b"\x02" * 32
    msg = decode_message([b"kv", (7).to_bytes(8, "big"), vllm_payload])
    assert msg.seq == 7 and msg.topic == "kv" and msg.events == [ev]


@pytest.mark.parametrize(
    "payload",
    [msgpack.packb({"x": 1}), msgpack.packb([1.0, [{"type": "Nope"}], 0]), msgpack.packb(3)],
    ids=["map-without-events", "unknown-type", "scalar"],
)
def test_decode_rejects_garbage(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode_batch(payload)


def test_kv_events_config_validation() -> None:
    cfg = KVEventsConfig.from_json_dict(
        {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": "tcp://*:5557",
         "topic": "kv"}
    )  # fmt: skip
    assert cfg.active and cfg.as_dict()["buffer_steps"] == 10000
    with pytest.raises(ValueError, match="unknown kv-events-config key"):
        KVEventsConfig.from_json_dict({"enable": True})
    with pytest.raises(ValueError, match="publisher"):
        KVEventsConfig.from_json_dict({"publisher": "kafka"})
