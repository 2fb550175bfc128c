"""Request models and error shapes of vLLM's OpenAI-compatible API (the subset simulated).

Parsing follows vLLM 0.32 (``vllm/entrypoints/openai/*/protocol.py``):

- Unknown fields are accepted and ignored (vLLM's ``OpenAIBaseModel`` has
  ``extra="allow"`` and only logs them), so clients that send ``top_p``, ``seed``, ``user``,
  ``presence_penalty`` ... keep working. Greedy decoding makes sampling fields moot.
- Wrong types, ``max_tokens < 1``, ``n != 1``, negative token ids and the like are answered
  with HTTP 400 and vLLM's error body
  ``{"error": {"message": ..., "type": "BadRequestError", "param": ..., "code": 400}}``;
  an unknown model is HTTP 404 with ``type: "NotFoundError"`` and ``param: "model"``.
- Features the simulator does not model (``logprobs``, ``echo``, ``best_of``,
  ``response_format``, beam search, per-request chat templates, several prompts per request)
  are refused with a 400 that says so, instead of being silently ignored.

The server turns a validated request into an engine request with
:func:`resolve_max_tokens` (vLLM's context-length rules).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "REUSED_IDS_PARAM",
    "ChatCompletionRequest",
    "CompletionRequest",
    "DetokenizeRequest",
    "ProtocolError",
    "StreamOptions",
    "TokenizeRequest",
    "error_body",
    "parse_json_body",
    "resolve_max_tokens",
    "validation_error_message",
]

NonNegInt = Annotated[int, Field(ge=0)]

MAX_STOP_STRINGS = 4  # vLLM's VLLM_MAX_STOP_STRINGS default
MAX_CACHE_SALT_CHARS = 128
REUSED_IDS_PARAM = "kv_transfer_params.prompt_token_ids"
MAX_JSON_DEPTH = 1000
"""About where Python's JSON parser hits its recursion limit; deeper bodies get a 400, as on
vLLM (whose parser is the same), instead of the 500 an uncaught RecursionError would give."""


class ProtocolError(ValueError):
    """A request the API refuses; carries the HTTP status, vLLM error type and offending param."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int = 400,
        err_type: str = "BadRequestError",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.err_type = err_type

    def body(self) -> dict[str, Any]:
        return error_body(
            self.message, param=self.param, status=self.status, err_type=self.err_type
        )


def error_body(
    message: str,
    *,
    param: str | None = None,
    status: int = 400,
    err_type: str = "BadRequestError",
) -> dict[str, Any]:
    """vLLM's ``ErrorResponse``: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


def validation_error_message(exc: ValidationError) -> tuple[str, str | None]:
    """A readable one-line message naming every bad field, and the first field's dotted path."""
    parts: list[str] = []
    first: str | None = None
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        if first is None and loc:
            first = loc
        got = err.get("input")
        shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
        if len(shown) > 60:
            shown = shown[:57] + "..."
        msg = err["msg"]
        if err["type"] == "missing":
            parts.append(f"{loc}: field required")
        else:
            parts.append(f"{loc or 'body'}: {msg} (got {shown})")
    n = len(parts)
    head = f"{n} validation error{'s' if n != 1 else ''} for request"
    return f"{head}: " + "; ".join(parts), first


class _Base(BaseModel):
    """Like vLLM's ``OpenAIBaseModel``: unknown fields are allowed (and ignored)."""

    model_config = ConfigDict(extra="allow", strict=False)


class StreamOptions(_Base):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class _GenerationFields(_Base):
    """Fields shared by ``/v1/completions`` and ``/v1/chat/completions``."""

    model: str | None = None
    max_tokens: int | None = None
    min_tokens: NonNegInt = 0
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None = None
    stop_token_ids: list[NonNegInt] | None = None
    include_stop_str_in_output: bool = False
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    return_token_ids: bool | None = False
    request_id: str | None = None
    cache_salt: str | None = None
    priority: int = 0
    kv_transfer_params: dict[str, Any] | None = None
    echo: bool | None = False
    best_of: int | None = None
    use_beam_search: bool = False

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in stops if s]

    def check_common(self) -> None:
        """Semantic checks vLLM makes after parsing (``SamplingParams._verify_args``), with
        vLLM 0.32's messages; greedy decoding ignores the sampling values once they are valid."""
        if self.n is not None and self.n < 1:
            raise ProtocolError(f"n must be at least 1, got {self.n}.")
        if self.n is not None and self.n != 1:
            raise ProtocolError(
                f"n must be 1 on this engine (no parallel sampling), got {self.n}", param="n"
            )
        if self.best_of is not None and self.best_of != 1:
            raise ProtocolError("best_of is not supported by this engine", param="best_of")
        if self.use_beam_search:
            raise ProtocolError("beam search is not supported", param="use_beam_search")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value is not None and not -2.0 <= value <= 2.0:
                raise ProtocolError(f"{name} must be in [-2, 2], got {float(value)}.")
        rep = self.repetition_penalty
        if rep is not None and not math.isfinite(rep):
            raise ProtocolError(f"repetition_penalty must be a finite number, got {rep}.")
        if rep is not None and rep <= 0.0:
            raise ProtocolError(f"repetition_penalty must be greater than zero, got {float(rep)}.")
        t = self.temperature
        if t is not None:
            where = f" (parameter=temperature, value={float(t)})"
            if not math.isfinite(t):
                raise ProtocolError(
                    f"temperature must be a finite number, got {t}.{where}", param="temperature"
                )
            if t < 0.0:
                raise ProtocolError(
                    f"temperature must be non-negative, got {float(t)}.{where}",
                    param="temperature",
                )
            if t > 2.0:
                raise ProtocolError(
                    f"temperature must be in [0, 2], got {float(t)}.{where}", param="temperature"
                )
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            p = float(self.top_p)
            raise ProtocolError(
                f"top_p must be in (0, 1], got {p}. (parameter=top_p, value={p})", param="top_p"
            )
        if self.top_k is not None and self.top_k < -1:
            raise ProtocolError(f"top_k must be 0 (disable), or at least 1, got {self.top_k}.")
        if self.min_p is not None and not 0.0 <= self.min_p <= 1.0:
            raise ProtocolError(f"min_p must be in [0, 1], got {float(self.min_p)}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ProtocolError(
                f"max_tokens must be at least 1, got {self.max_tokens}. "
                f"(parameter=max_tokens, value={self.max_tokens})",
                param="max_tokens",
            )
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ProtocolError(
                f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, "
                f"got {self.min_tokens}."
            )
        if isinstance(self.stop, list) and any(not s for s in self.stop):
            raise ProtocolError("stop cannot contain an empty string.")
        salt = self.cache_salt
        if salt is not None and (
            not salt or len(salt) > MAX_CACHE_SALT_CHARS or any(c in salt for c in "@/\\\x00")
        ):
            raise ProtocolError(
                "Parameter 'cache_salt' must be at most 128 characters and must not contain "
                "'@', '/', '\\\\', or NUL. (parameter=cache_salt)",
                param="cache_salt",
            )
        if self.stream_options is not None and not self.stream:
            raise ProtocolError(
                "Stream options can only be defined when `stream=True`.", param="stream_options"
            )
        if self.echo:
            raise ProtocolError("echo is not supported by the engine simulator", param="echo")
        extra = self.model_extra or {}
        for name in ("logprobs", "top_logprobs", "prompt_logprobs"):
            value = extra.get(name)
            if value not in (None, False):
                raise ProtocolError(f"{name} is not supported by the engine simulator", param=name)
        if extra.get("response_format") not in (None, {"type": "text"}):
            raise ProtocolError(
                "response_format (structured output) is not supported by the engine simulator",
                param="response_format",
            )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options is not None and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(
            self.include_usage
            and self.stream_options is not None
            and self.stream_options.continuous_usage_stats
        )


class CompletionRequest(_GenerationFields):
    """``POST /v1/completions``; ``prompt`` is text or token ids (a one-element batch is ok)."""

    prompt: str | list[NonNegInt] | list[str] | list[list[NonNegInt]]
    add_special_tokens: bool = True

    def single_prompt(self) -> str | list[int]:
        """The one prompt; batches of more than one prompt are refused (n=1 engine)."""
        p = self.prompt
        if isinstance(p, str):
            return p
        if not p:
            raise ProtocolError("You must pass at least one prompt", param="prompt")
        if isinstance(p[0], int):
            return [int(x) for x in p]
        if len(p) != 1:
            raise ProtocolError(
                f"only one prompt per request is supported, got {len(p)}", param="prompt"
            )
        one = p[0]
        if isinstance(one, list) and not one:
            raise ProtocolError("You must pass at least one prompt", param="prompt")
        return one

    def check(self) -> None:
        self.check_common()
        extra = self.model_extra or {}
        if extra.get("suffix") is not None:
            raise ProtocolError("suffix is not supported", param="suffix")


class ChatMessage(_Base):
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_GenerationFields):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template: str | None = None

    def check(self) -> None:
        if self.max_completion_tokens is not None:
            if self.max_completion_tokens < 1:
                raise ProtocolError(
                    f"max_completion_tokens must be at least 1, got {self.max_completion_tokens}.",
                    param="max_completion_tokens",
                )
            self.max_tokens = self.max_completion_tokens
        self.check_common()
        if not self.messages:
            raise ProtocolError("messages must contain at least one message", param="messages")
        if self.continue_final_message and self.add_generation_prompt:
            raise ProtocolError(
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
                param="continue_final_message",
            )
        if self.chat_template is not None:
            raise ProtocolError(
                "Chat template is passed with request, but --trust-request-chat-template is "
                "not set. Refused request with untrusted chat template.",
                param="chat_template",
            )

    def reused_prompt_token_ids(self) -> list[int] | None:
        """``kv_transfer_params.prompt_token_ids`` (vLLM's token-id path for chat), validated."""
        params = self.kv_transfer_params
        if not params or "prompt_token_ids" not in params:
            return None
        ids = params["prompt_token_ids"]
        if (
            not isinstance(ids, list)
            or not ids
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
        ):
            raise ProtocolError(
                f"`kv_transfer_params['prompt_token_ids']` must be a non-empty list of "
                f"non-negative integers. (parameter={REUSED_IDS_PARAM})",
                param=REUSED_IDS_PARAM,
            )
        return list(ids)

    def message_dicts(self) -> list[dict[str, Any]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


class TokenizeRequest(_Base):
    """``POST /tokenize``: either ``prompt`` (completion style) or ``messages`` (chat style)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool | None = False


class DetokenizeRequest(_Base):
    """``POST /detokenize``."""

    model: str | None = None
    tokens: list[NonNegInt]


def resolve_max_tokens(
    requested: int | None, prompt_len: int, max_model_len: int, *, default: int | None
) -> int:
    """vLLM 0.32's effective ``max_tokens`` for a prompt of ``prompt_len`` tokens.

    Measured on vLLM 0.32 (the conformance suite checks each case against it):
    a prompt longer than the context is a 400 naming ``input_tokens``; ``max_tokens`` above
    ``max_model_len`` is a 400 naming ``max_tokens``; otherwise a request that does not fit
    is *clamped* to the room left (prompt 1020 + ``max_tokens`` 10 with ``max_model_len``
    1024 runs 4 tokens), and a prompt that fills the context exactly leaves ``max_tokens``
    0, a 400. ``None`` means ``default`` (16 on ``/v1/completions``) or, where there is no
    default (chat), everything left in the context.
    """
    if prompt_len > max_model_len:
        raise ProtocolError(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt contains {prompt_len} input tokens, which exceeds this limit even without "
            "any output tokens. Please reduce the length of the input prompt. "
            f"(parameter=input_tokens, value={prompt_len})",
            param="input_tokens",
        )
    if requested is not None and requested > max_model_len:
        raise ProtocolError(
            f"max_tokens={requested} cannot be greater than max_model_len={max_model_len}. "
            f"Please request fewer output tokens. (parameter=max_tokens, value={requested})",
            param="max_tokens",
        )
    room = max_model_len - prompt_len
    want = requested if requested is not None else default
    got = room if want is None else min(want, room)
    if got < 1:
        raise ProtocolError(
            f"max_tokens must be at least 1, got {got}. (parameter=max_tokens, value={got})",
            param="max_tokens",
        )
    return got


def parse_json_body(raw: bytes, content_type: str) -> dict[str, Any]:
    """The request body as a JSON object, refused like vLLM 0.32 refuses it.

    Not ``application/json`` -> 400 "Unsupported Media Type"; undecodable JSON -> 400 naming
    the position; nested deeper than the parser's recursion limit (``MAX_JSON_DEPTH``) -> 400
    (caught instead of becoming a 500); anything but an object -> 400.
    """
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise ProtocolError(
            "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed",
            err_type="Bad Request",
        )
    try:
        data = json.loads(raw) if raw else None
    except RecursionError:
        raise ProtocolError(
            f"There was an error parsing the body: JSON nested more than {MAX_JSON_DEPTH} "
            "levels deep",
            param="body",
            err_type="Bad Request",
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProtocolError(
            f"JSON decode error: {e}", param="body", err_type="Bad Request"
        ) from None
    if not isinstance(data, dict):
        raise ProtocolError(
            "request body must be a JSON object", param="body", err_type="Bad Request"
        )
    return data
