"""The OpenAI request bodies the scheduler reads, parsed once and checked field by field.

The scheduler is a proxy: it forwards the client's body to the chosen engine (with the model
name of the pool, its own ``request_id`` and ``return_token_ids``), so it checks what it must
understand itself and what a client commonly gets wrong, and leaves engine-specific fields to
the engine (whose 4xx answers are passed through). Checked here:

- the body: valid UTF-8 JSON (finite numbers only, nesting at most :data:`MAX_JSON_DEPTH`),
  an object, at most the configured size (413 before it is read when ``Content-Length`` says
  so);
- ``model``: a non-empty string; ``stream``: a boolean; ``stream_options``: an object, and
  only with ``stream: true`` (vLLM's rule);
- ``max_tokens`` / ``max_completion_tokens``: integers in 1..:data:`MAX_TOKENS_LIMIT`;
  ``n`` a positive integer; sampling numbers are numbers. An integer may be written as an
  integral number (``16.0``): JSON Schema's ``integer`` and vLLM's request models both take
  it; the body forwarded to the engine carries it as an integer;
- chat: ``messages`` a non-empty list of objects with a known ``role`` and a ``content`` that
  is a string, a list of content parts or null;
- completions: ``prompt`` a string, a list of strings, a list of token ids or a list of such
  lists (non-empty).

From a valid body it derives what selection and placement read: the text of the whole prompt
(chat messages serialised in order, so a conversation's turns share a prefix), the last user
message (what selection classifies), prompt token ids when the client sent ids, and an estimate
of the prompt's tokens (4 bytes of UTF-8 per token, the approximate hasher's assumption).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from modelfleet.scheduler.errors import ApiError

__all__ = [
    "BYTES_PER_TOKEN",
    "MAX_JSON_DEPTH",
    "MAX_TOKENS_LIMIT",
    "ParsedRequest",
    "RequestKind",
    "parse_body",
    "parse_json",
]

RequestKind = Literal["chat", "completion"]

MAX_TOKENS_LIMIT = 1_048_576
"""Largest ``max_tokens`` accepted (the longest context any ModelPool may declare)."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of a body; OpenAI bodies nest about 6 deep."""
BYTES_PER_TOKEN = 4
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """One checked request body and what routing reads from it."""

    kind: RequestKind
    body: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int | None
    prompt_text: str
    selection_text: str
    prompt_token_ids: list[int] | None = None
    estimated_prompt_tokens: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        if self.prompt_token_ids is not None:
            return len(self.prompt_token_ids)
        return self.estimated_prompt_tokens


def _bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _reject_constant(name: str) -> Any:
    raise _bad(f"body: {name} is not a valid JSON number", code="invalid_json")


def _depth(obj: Any, limit: int) -> int:
    """Nesting depth of a decoded JSON value (stops counting past ``limit``)."""
    depth = 0
    level = [obj]
    while level and depth <= limit:
        nxt: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                nxt.extend(item.values())
            elif isinstance(item, list):
                nxt.extend(item)
        if not nxt:
            break
        depth += 1
        level = nxt
    return depth


def parse_json(raw: bytes) -> dict[str, Any]:
    """Decode a request body into a JSON object (``ApiError`` 400 naming what is wrong)."""
    if not raw.strip():
        raise _bad("body: empty; send a JSON object", code="invalid_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _bad(
            f"body: not valid UTF-8 ({e.reason} at byte {e.start})", code="invalid_json"
        ) from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ApiError:
        raise
    except RecursionError:
        raise _bad(
            f"body: nested deeper than {MAX_JSON_DEPTH} levels", code="invalid_json"
        ) from None
    except json.JSONDecodeError as e:
        raise _bad(
            f"body: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise _bad(f"body: must be a JSON object, got {_type_name(data)}", code="invalid_json")
    if _depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise _bad(f"body: nested deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
    return data


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _is_int(v: Any) -> bool:
    """An integer, or a number with an integral value (``16.0``; see the module docstring)."""
    if isinstance(v, float):
        return math.isfinite(v) and v.is_integer()
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _optional_int(body: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v):
        raise _bad(f"{name}: must be an integer, got {_type_name(v)}", param=name)
    if not lo <= v <= hi:
        raise _bad(f"{name}: must be in {lo}..{hi}, got {v}", param=name)
    body[name] = int(v)
    return int(v)


_NUMBERS = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "repetition_penalty")


def _common(body: dict[str, Any]) -> tuple[str, bool, int | None]:
    model = body.get("model")
    if model is None:
        raise _bad("model: required", param="model")
    if not isinstance(model, str) or not model:
        raise _bad(f"model: must be a non-empty string, got {_type_name(model)}", param="model")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad(f"stream: must be a boolean, got {_type_name(stream)}", param="stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise _bad(
            f"stream_options: must be an object, got {_type_name(opts)}", param="stream_options"
        )
    if opts is not None and not stream:
        # vLLM's rule (its engines answer the same 400): usage options need a stream
        raise _bad(
            "stream_options: can only be defined when stream is true", param="stream_options"
        )
    max_tokens = _optional_int(body, "max_tokens", 1, MAX_TOKENS_LIMIT)
    mct = _optional_int(body, "max_completion_tokens", 1, MAX_TOKENS_LIMIT)
    _optional_int(body, "n", 1, 128)
    for name in _NUMBERS:
        v = body.get(name)
        if v is not None and not _is_number(v):
            raise _bad(f"{name}: must be a number, got {_type_name(v)}", param=name)
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise _bad("stop: must be a string or a list of strings", param="stop")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad(f"user: must be a string, got {_type_name(user)}", param="user")
    return model, bool(stream), max_tokens if max_tokens is not None else mct


def _content_text(content: Any, where: str) -> str:
    """The text of a message's ``content`` (string, list of parts, or null)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                raise _bad(f"{where}[{j}]: a content part must be an object", param=where)
            ptype = part.get("type")
            if not isinstance(ptype, str):
                raise _bad(f"{where}[{j}].type: must be a string", param=f"{where}[{j}].type")
            text = part.get("text")
            if ptype == "text":
                if not isinstance(text, str):
                    raise _bad(f"{where}[{j}].text: must be a string", param=f"{where}[{j}].text")
                out.append(text)
        return "".join(out)
    raise _bad(
        f"{where}: must be a string, a list of content parts or null, got {_type_name(content)}",
        param=where,
    )


def _chat(body: dict[str, Any], model: str, stream: bool, max_tokens: int | None) -> ParsedRequest:
    messages = body.get("messages")
    if messages is None:
        raise _bad("messages: required", param="messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: must be a non-empty list of messages", param="messages")
    parts: list[str] = []
    last_user = ""
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"{where}: must be an object, got {_type_name(m)}", param=where)
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise _bad(
                f"{where}.role: must be one of {', '.join(sorted(ROLES))}, got {role!r:.40}",
                param=f"{where}.role",
            )
        text = _content_text(m.get("content"), f"{where}.content")
        parts.append(f"<|{role}|>{text}")
        if role == "user":
            last_user = text
    prompt = "\n".join(parts)
    return ParsedRequest(
        kind="chat",
        body=body,
        model=model,
        stream=stream,
        max_tokens=max_tokens,
        prompt_text=prompt,
        selection_text=last_user or prompt,
        estimated_prompt_tokens=_estimate(prompt),
        messages=messages,
    )


def _estimate(text: str) -> int:
    return max(1, -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN)) if text else 0


def _token_list(v: list[Any], where: str) -> list[int]:
    if not v:
        raise _bad(f"{where}: must not be empty", param="prompt")
    for t in v:
        if not _is_int(t) or t < 0:
            raise _bad(f"{where}: token ids must be integers >= 0", param="prompt")
    return [int(t) for t in v]


def _completion(
    body: dict[str, Any], model: str, stream: bool, max_tokens: int | None
) -> ParsedRequest:
    prompt = body.get("prompt")
    if prompt is None:
        raise _bad("prompt: required", param="prompt")
    ids: list[int] | None = None
    text = ""
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list) and prompt:
        first = prompt[0]
        if all(isinstance(p, str) for p in prompt):
            text = first
        elif all(isinstance(p, list) for p in prompt):
            lists = [_token_list(p, f"prompt[{i}]") for i, p in enumerate(prompt)]
            ids = lists[0]
            body["prompt"] = lists
        else:
            ids = _token_list(prompt, "prompt")
            body["prompt"] = ids
    else:
        raise _bad(
            "prompt: must be a string, a list of strings, a list of token ids or a list of "
            f"token-id lists (non-empty), got {_type_name(prompt)}",
            param="prompt",
        )
    return ParsedRequest(
        kind="completion",
        body=body,
        model=model,
        stream=stream,
        max_tokens=max_tokens,
        prompt_text=text,
        selection_text=text,
        prompt_token_ids=ids,
        estimated_prompt_tokens=_estimate(text),
    )


def parse_body(kind: RequestKind, raw: bytes) -> ParsedRequest:
    """Decode and check one request body (``ApiError`` 400 naming the field otherwise)."""
    body = parse_json(raw)
    model, stream, max_tokens = _common(body)
    if kind == "chat":
        return _chat(body, model, stream, max_tokens)
    return _completion(body, model, stream, max_tokens)
