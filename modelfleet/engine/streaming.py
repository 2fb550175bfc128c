"""One request's output path: incremental detokenisation, stop strings, and the HTTP response.

:class:`RequestStream` is fed one :class:`~modelfleet.engine.core.TokenOutput` at a time by the
engine loop (``on_token``) and turns token ids into text deltas the way vLLM's output processor
does: bytes are decoded incrementally (a multi-byte UTF-8 character split across tokens comes
out whole, with the token that completes it), stop strings are matched against the text and
the last ``len(longest stop) - 1`` characters are held back until they can no longer start a
stop string, and a stop token's own text is never output. Each delta goes to the request's
queue; the HTTP handler drains it with :func:`respond`.

:func:`respond` writes either one JSON body or an SSE stream framed ``data: {json}\\n\\n`` and
ended by ``data: [DONE]\\n\\n``; like vLLM, a stream's first chunk (the chat role chunk) goes
out together with the first token, and an engine error mid-stream becomes an error event
followed by ``[DONE]`` (a non-streamed request gets HTTP 500). When the response ends for any
reason other than the request finishing (the client went away, the handler was cancelled),
the request is aborted in the core, which frees its KV blocks at once.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from modelfleet.engine.core import TokenOutput
from modelfleet.engine.metrics import RequestTimings
from modelfleet.engine.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ProtocolError,
    error_body,
)

if TYPE_CHECKING:
    from modelfleet.engine.formats import ResponseFormat

__all__ = [
    "INTERNAL_ERROR",
    "Delta",
    "RequestStream",
    "TokenBytes",
    "dumps",
    "error_middleware",
    "respond",
    "sse",
    "stream_error",
]

log = logging.getLogger("modelfleet.engine.server")

INTERNAL_ERROR = error_body("Internal server error", status=500, err_type="InternalServerError")
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


class TokenBytes(Protocol):
    """The part of a tokenizer the output path needs."""

    def token_bytes(self, token_id: int, skip_special_tokens: bool = False) -> bytes: ...


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def sse(obj: Any) -> bytes:
    return b"data: " + dumps(obj).encode("utf-8") + b"\n\n"


@dataclass
class Delta:
    """What one engine token adds to a response."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class RequestStream:
    """Per-request state: incremental detokenisation, stop strings, timings, the out-queue.

    ``on_finished(stream, reason, now)`` is called once when the request ends by ``stop`` or
    ``length``; ``abort_in_core(internal_id)`` when a stop string ends a request the core
    still runs (the core then frees its blocks).
    """

    def __init__(
        self,
        *,
        tokenizer: TokenBytes,
        internal_id: str,
        prompt_ids: list[int],
        max_tokens: int,
        min_tokens: int,
        stops: list[str],
        include_stop_str: bool,
        stop_token_ids: frozenset[int],
        skip_special: bool,
        arrival: float,
        on_finished: Callable[[RequestStream, str, float], None],
        abort_in_core: Callable[[str], None],
    ) -> None:
        self.tokenizer = tokenizer
        self.internal_id = internal_id
        self.prompt_ids = prompt_ids
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.stops = stops
        self.include_stop_str = include_stop_str
        self.stop_token_ids = stop_token_ids
        self.skip_special = skip_special
        self.holdback = max((len(s) for s in stops), default=1) - 1
        self.queue: asyncio.Queue[Delta] = asyncio.Queue()
        self.output_ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._on_finished = on_finished
        self._abort_in_core = abort_in_core
        self.arrival = arrival
        self.first_scheduled: float | None = None
        self.token_times: list[float] = []
        self.num_cached_tokens = 0
        self.num_preemptions = 0
        self.finished = False
        self.finish_reason: str | None = None

    def on_token(self, out: TokenOutput, now: float) -> None:
        """Called by the engine loop for each produced token (never after ``finished``)."""
        self.output_ids.append(out.token_id)
        self.token_times.append(now)
        self.num_cached_tokens = out.num_cached_prompt_tokens
        finish = out.finish_reason if out.finished else None
        stop_reason: str | int | None = None
        is_stop_token = out.token_id in self.stop_token_ids
        if finish == "stop" and is_stop_token:
            stop_reason = out.token_id
            piece = self._utf8.decode(b"", final=True)  # the stop token's text is not output
        else:
            raw = self.tokenizer.token_bytes(out.token_id, self.skip_special)
            piece = self._utf8.decode(raw)
            if finish is not None:
                piece += self._utf8.decode(b"", final=True)
        prev_len = len(self.text)
        self.text += piece
        if self.stops and len(self.output_ids) >= self.min_tokens:
            hit = self._find_stop(prev_len)
            if hit is not None:
                idx, s = hit
                self.text = self.text[: idx + len(s)] if self.include_stop_str else self.text[:idx]
                finish, stop_reason = "stop", s
                if not out.finished:
                    self._abort_in_core(self.internal_id)
        if finish is None:
            upto = max(self.emitted, len(self.text) - self.holdback)
        else:
            upto = len(self.text)
        delta = Delta(self.text[self.emitted : upto], [out.token_id], finish, stop_reason)
        self.emitted = upto
        if finish is not None:
            self.finished = True
            self.finish_reason = finish
            self._on_finished(self, finish, now)
        self.queue.put_nowait(delta)

    def _find_stop(self, prev_len: int) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for s in self.stops:
            idx = self.text.find(s, max(0, prev_len - len(s) + 1))
            if idx >= 0 and (best is None or idx < best[0]):
                best = (idx, s)
        return best

    def fail(self, reason: str) -> None:
        """End the stream without a token (abort or engine error)."""
        if not self.finished:
            self.finished = True
            self.finish_reason = reason
            self.queue.put_nowait(Delta("", [], reason, None))

    def timings(self, finished: float) -> RequestTimings:
        first_token = self.token_times[0] if self.token_times else finished
        return RequestTimings(
            arrival=self.arrival,
            first_scheduled=self.first_scheduled
            if self.first_scheduled is not None
            else first_token,
            first_token=first_token,
            finished=finished,
            token_times=tuple(self.token_times),
            prompt_tokens=len(self.prompt_ids),
            generation_tokens=len(self.output_ids),
            max_tokens=self.max_tokens,
            num_cached_tokens=self.num_cached_tokens,
            num_preemptions=self.num_preemptions,
        )

    async def deltas(self) -> AsyncIterator[Delta]:
        """The deltas in order, ending with the one that carries a finish reason."""
        while True:
            d = await self.queue.get()
            yield d
            if d.finish_reason is not None:
                return


async def respond(
    request: web.Request,
    req: CompletionRequest | ChatCompletionRequest,
    st: RequestStream,
    fmt: ResponseFormat,
    abort: Callable[[str], None],
) -> web.StreamResponse:
    """Answer one generation request from its stream: a JSON body or an SSE stream."""
    try:
        if not req.stream:
            deltas = [d async for d in st.deltas()]
            if deltas[-1].finish_reason == "error":  # vLLM's GenerationError -> 500
                return web.json_response(INTERNAL_ERROR, status=500)
            return web.json_response(fmt.full(deltas), dumps=dumps)
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        started = False
        async for d in st.deltas():
            if d.finish_reason == "error":
                await resp.write(sse(INTERNAL_ERROR))
                await resp.write(b"data: [DONE]\n\n")
                await resp.write_eof()
                return resp
            if not started:  # like vLLM, the role chunk goes out with the first token
                started = True
                for chunk in fmt.start():
                    await resp.write(sse(chunk))
            await resp.write(sse(fmt.chunk(d)))
        if req.include_usage:
            await resp.write(sse(fmt.usage_chunk()))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
    finally:
        if not st.finished:
            abort(st.internal_id)


async def stream_error(request: web.Request, message: str) -> web.StreamResponse:
    """vLLM's answer to a bad streamed token prompt: HTTP 200, an error event, ``[DONE]``."""
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    await resp.write(sse(error_body(message)))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every refusal in vLLM's error shape; an unexpected exception is a 500, never a crash."""
    try:
        return await handler(request)
    except ProtocolError as e:
        return web.json_response(e.body(), status=e.status)
    except web.HTTPNotFound:
        return web.json_response({"detail": "Not Found"}, status=404)
    except web.HTTPMethodNotAllowed:
        return web.json_response({"detail": "Method Not Allowed"}, status=405)
    except web.HTTPRequestEntityTooLarge as e:
        body = error_body(
            e.text or "request body too large", status=413, err_type="RequestEntityTooLarge"
        )
        return web.json_response(body, status=413)
    except web.HTTPException:
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:  # never let a request crash the server; vLLM answers 500
        log.error("unhandled error on %s:\n%s", request.path, traceback.format_exc())
        return web.json_response(
            error_body(f"{type(e).__name__}: {e}", status=500, err_type="InternalServerError"),
            status=500,
        )
