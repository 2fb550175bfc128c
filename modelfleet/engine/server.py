"""Real-time, vLLM-compatible HTTP server around one :class:`~modelfleet.engine.core.EngineCore`.

One asyncio task drives the engine model the way vLLM's EngineCore busy loop drives the GPU::

    loop:
        if nothing is unfinished: wait for a request (no polling, ~0 CPU when idle)
        start  = max(engine clock, now)          # the modelled GPU cannot run ahead of itself
        result = core.step()                     # schedule + "run" one batch
        sleep until start + result.duration      # the modelled step time, scaled by time_scale
        publish the step's KV events; hand each token to its request's queue

HTTP handlers only parse, validate, add the request to the core and then await their
request's queue; every core call happens on the event-loop thread, so the core needs no
locks. Engine time is kept in *modelled* seconds: ``model_now = wall / time_scale``; with
``time_scale=0.1`` everything runs ten times faster than the modelled GPU and every timing
the server reports (metrics, ``usage``) is still in modelled seconds. Deadlines are absolute
(``start + duration``), so Python overhead inside a step is absorbed rather than added.

The API follows vLLM 0.32's OpenAI server (see ``protocol.py`` and
``shared/reference/vllm-migration.md``): streaming SSE framed ``data: {json}\\n\\n`` and
ended by ``data: [DONE]\\n\\n``; ``return_token_ids`` puts the delta ids in every chunk and
the prompt ids in the first (completions: in the choice; chat: at the top level of the role
chunk); token-id prompts; chat prompts as ``kv_transfer_params.prompt_token_ids``;
``request_id`` from the body or the ``X-Request-Id`` header (the header wins), completions
answered as ``cmpl-{id}``, chats as ``chatcmpl-{id}``; a client disconnect aborts the request
in the core, which frees its KV blocks at once.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from modelfleet.engine.core import EngineConfig, EngineCore, EngineRequest, StepResult, TokenOutput
from modelfleet.engine.generation import GreedyGenerator
from modelfleet.engine.kv_events import KVEventsConfig, ZmqEventPublisher
from modelfleet.engine.kvcache import KVEvent
from modelfleet.engine.metrics import EngineMetrics, RequestTimings
from modelfleet.engine.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ProtocolError,
    TokenizeRequest,
    error_body,
    resolve_max_tokens,
    validation_error_message,
)
from modelfleet.engine.tokenizer import ChatTemplateError, Tokenizer

__all__ = ["VLLM_VERSION", "EngineServer", "ServerConfig", "serve"]

log = logging.getLogger("modelfleet.engine.server")

VLLM_VERSION = "0.32.0"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # vLLM's default on /v1/completions
MAX_BODY_BYTES = 256 * 1024 * 1024

IDLE_RECHECK_SECONDS = 0.05
CATCH_UP_WALL_SECONDS = 0.025
"""The engine clock may trail the wall clock by this much before it jumps forward."""

BaseModelT = TypeVar("BaseModelT", bound=BaseModel)


@dataclass(frozen=True)
class ServerConfig:
    """Everything one engine server needs besides the engine model's own config."""

    engine: EngineConfig
    served_model_names: tuple[str, ...] = ()
    time_scale: float = 1.0
    kv_events: KVEventsConfig = field(default_factory=KVEventsConfig)
    enable_prompt_tokens_details: bool = False

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale}")

    @property
    def model_names(self) -> tuple[str, ...]:
        return self.served_model_names or (self.engine.model,)


@dataclass
class _Delta:
    """What one engine token adds to a response."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class _Stream:
    """Per-request state: incremental detokenisation, stop strings, timings, the out-queue."""

    def __init__(
        self,
        *,
        server: EngineServer,
        internal_id: str,
        prompt_ids: list[int],
        max_tokens: int,
        min_tokens: int,
        stops: list[str],
        include_stop_str: bool,
        stop_token_ids: frozenset[int],
        skip_special: bool,
        arrival: float,
    ) -> None:
        self.server = server
        self.internal_id = internal_id
        self.prompt_ids = prompt_ids
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.stops = stops
        self.include_stop_str = include_stop_str
        self.stop_token_ids = stop_token_ids
        self.skip_special = skip_special
        self.holdback = max((len(s) for s in stops), default=1) - 1
        self.queue: asyncio.Queue[_Delta] = asyncio.Queue()
        self.output_ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.arrival = arrival
        self.first_scheduled: float | None = None
        self.token_times: list[float] = []
        self.num_cached_tokens = 0
        self.finished = False
        self.finish_reason: str | None = None

    def on_token(self, out: TokenOutput, now: float) -> None:
        """Called by the engine loop for each produced token (never after ``finished``)."""
        tok = self.server.tokenizer
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
            piece = self._utf8.decode(tok.token_bytes(out.token_id, self.skip_special))
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
                    self.server.core.abort_request(self.internal_id)
        if finish is None:
            upto = max(self.emitted, len(self.text) - self.holdback)
        else:
            upto = len(self.text)
        delta = _Delta(self.text[self.emitted : upto], [out.token_id], finish, stop_reason)
        self.emitted = upto
        if finish is not None:
            self.finished = True
            self.finish_reason = finish
            self.server._finish(self, finish, now)
        self.queue.put_nowait(delta)

    def _find_stop(self, prev_len: int) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for s in self.stops:
            idx = self.text.find(s, max(0, prev_len - len(s) + 1))
            if idx >= 0 and (best is None or idx < best[0]):
                best = (idx, s)
        return best

    def fail(self, reason: str) -> None:
        if not self.finished:
            self.finished = True
            self.finish_reason = reason
            self.queue.put_nowait(_Delta("", [], reason, None))

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
        )


class EngineServer:
    """The aiohttp application and the engine loop of one simulated vLLM instance."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.tokenizer = Tokenizer()
        self.generator = GreedyGenerator(self.tokenizer)
        self._pending_events: list[KVEvent] = []
        self.core = EngineCore(
            config.engine,
            next_token=self.generator.next_token,
            kv_event_sink=self._pending_events.append if config.kv_events.active else None,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        stats0 = self.core.stats()
        eng = config.engine
        self.metrics = EngineMetrics(
            model_name=config.model_names[0],
            stats=self.core.stats,
            max_model_len=eng.max_model_len,
            cache_config={
                "block_size": str(eng.block_size),
                "cache_dtype": "auto",
                "enable_prefix_caching": str(eng.enable_prefix_caching),
                "gpu_memory_utilization": str(eng.gpu_memory_utilization),
                "num_gpu_blocks": str(stats0.num_gpu_blocks),
                "num_cpu_blocks": "None",
                "prefix_caching_hash_algo": eng.prefix_caching_hash_algo,
                "kv_cache_size_tokens": str(stats0.num_gpu_blocks * eng.block_size),
            },
        )
        self.publisher: ZmqEventPublisher | None = None
        self._streams: dict[str, _Stream] = {}
        self._by_external: dict[str, set[str]] = {}
        self._wake = asyncio.Event()
        self._wake_arrival: float | None = None
        self._t0 = 0.0
        self._engine_clock = 0.0
        self._task: asyncio.Task[None] | None = None
        self.app = self._build_app()

    # ------------------------------------------------------------------ clock
    def model_now(self) -> float:
        """Modelled seconds since the server started."""
        return (asyncio.get_running_loop().time() - self._t0) / self.config.time_scale

    # ------------------------------------------------------------- lifecycle
    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._errors])
        r = app.router
        r.add_post("/v1/completions", self.handle_completions)
        r.add_post("/v1/chat/completions", self.handle_chat)
        r.add_get("/v1/models", self.handle_models)
        r.add_get("/health", self.handle_health)
        r.add_get("/ping", self.handle_health)
        r.add_get("/version", self.handle_version)
        r.add_get("/metrics", self.handle_metrics)
        r.add_get("/kv_event_sources", self.handle_kv_event_sources)
        r.add_post("/tokenize", self.handle_tokenize)
        r.add_post("/detokenize", self.handle_detokenize)
        r.add_post("/inference/v1/abort_requests", self.handle_abort)
        r.add_post("/abort_requests", self.handle_abort)
        r.add_post("/reset_prefix_cache", self.handle_reset_prefix_cache)
        r.add_get("/load", self.handle_load)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self._t0 = asyncio.get_running_loop().time()
        if self.config.kv_events.active:
            self.publisher = ZmqEventPublisher(self.config.kv_events)
            self.publisher.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="engine-loop")
        self._task.add_done_callback(self._on_loop_exit)

    def _on_loop_exit(self, task: asyncio.Task[None]) -> None:
        """The engine loop ended by an error: fail every request it held (none may hang)."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("engine loop died: %r", task.exception())
        self._fail_all("error")

    async def _on_cleanup(self, _app: web.Application) -> None:
        if self._task is not None and not self._task.done():  # a dead loop was handled already
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for st in list(self._streams.values()):
            st.fail("abort")
        if self.publisher is not None:
            await self.publisher.aclose()

    # ----------------------------------------------------------- engine loop
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        scale = self.config.time_scale
        while True:
            if not self.core.has_unfinished():
                self._wake.clear()
                self._wake_arrival = None
                await self._wake.wait()
                continue
            now = self.model_now()
            if self._wake_arrival is not None:
                # Woken from idle: the modelled engine starts at the arrival, not after our
                # own wake-up latency (which a small time_scale would magnify).
                now = self._wake_arrival
                self._wake_arrival = None
            elif (now - self._engine_clock) * scale < CATCH_UP_WALL_SECONDS:
                # Busy and on schedule: back-to-back steps. Sleep overshoot of a millisecond
                # must not become idle GPU time; only a real lag (Python overload) counts.
                now = self._engine_clock
            start = max(self._engine_clock, now)
            try:
                result = self.core.step()
            except Exception:
                log.error("engine step failed:\n%s", traceback.format_exc())
                self._fail_all("error")
                continue
            if not result.outputs and not result.scheduled and result.duration <= 0:
                # Work exists but none can be scheduled now (should not persist): wait for
                # a new request or abort instead of spinning, re-checking now and then.
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_RECHECK_SECONDS)
                continue
            end = start + result.duration
            # Always yield (sleep(0) at least), so handlers run even when we are behind.
            await asyncio.sleep(max(0.0, self._t0 + end * scale - loop.time()))
            self._engine_clock = end
            self._deliver(result, start, end)

    def _deliver(self, result: StepResult, start: float, end: float) -> None:
        self.metrics.observe_step(result.num_prefill_tokens + result.num_decode_seqs)
        if self._pending_events:
            events = list(self._pending_events)
            self._pending_events.clear()
            if self.publisher is not None:
                self.publisher.publish(events)
        streams = self._streams
        for rid in result.scheduled:
            st = streams.get(rid)
            if st is not None and st.first_scheduled is None:
                st.first_scheduled = start
        for out in result.outputs:
            st = streams.get(out.request_id)
            if st is None or st.finished:
                continue
            if out.finished and out.finish_reason == "abort":
                st.fail("abort")
                self._forget(st)
                continue
            st.on_token(out, end)

    def _finish(self, st: _Stream, reason: str, now: float) -> None:
        if reason in ("stop", "length"):
            self.metrics.observe_finished(reason, st.timings(now))
        self._forget(st)

    def _forget(self, st: _Stream) -> None:
        self._streams.pop(st.internal_id, None)
        for ids in self._by_external.values():
            ids.discard(st.internal_id)

    def _fail_all(self, reason: str) -> None:
        for st in list(self._streams.values()):
            try:
                self.core.abort_request(st.internal_id)
            except Exception:  # a broken core must not take the HTTP side down with it
                log.error("abort of %s failed:\n%s", st.internal_id, traceback.format_exc())
            st.fail(reason)
            self._forget(st)

    def _submit(self, st: _Stream, external_id: str, req: EngineRequest) -> None:
        self.core.add_request(req)  # ValueError -> caller answers 400
        self._streams[st.internal_id] = st
        self._by_external.setdefault(external_id, set()).add(st.internal_id)
        if not self._wake.is_set():
            self._wake_arrival = st.arrival if self._wake_arrival is None else self._wake_arrival
            self._wake.set()

    def abort(self, internal_id: str) -> None:
        """Abort one request (client gone or explicit abort); frees its blocks in the core."""
        st = self._streams.get(internal_id)
        self.core.abort_request(internal_id)
        if st is not None:
            st.fail("abort")
            self._forget(st)

    # ------------------------------------------------------------- middleware
    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
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

    # -------------------------------------------------------------- helpers
    async def _parse(self, request: web.Request, model: type[BaseModelT]) -> BaseModelT:
        raw = await request.read()
        try:
            data = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProtocolError(f"JSON decode error: {e}", param="body") from None
        if not isinstance(data, dict):
            raise ProtocolError("request body must be a JSON object", param="body")
        try:
            return model.model_validate(data)
        except ValidationError as e:
            msg, param = validation_error_message(e)
            raise ProtocolError(msg, param=param) from None

    def _served_name(self, requested: str | None) -> str:
        names = self.config.model_names
        if requested is None or requested == "":
            return names[0]
        if requested not in names:
            raise ProtocolError(
                f"The model `{requested}` does not exist.",
                param="model",
                status=404,
                err_type="NotFoundError",
            )
        return requested

    def _check_ids(self, ids: list[int]) -> None:
        try:
            self.tokenizer.validate_ids(ids)
        except ValueError as e:
            raise ProtocolError(str(e), param="prompt") from None

    @staticmethod
    def _request_id(request: web.Request, body_id: str | None) -> str:
        return request.headers.get("X-Request-Id") or body_id or uuid.uuid4().hex[:16]

    def _usage(self, st: _Stream) -> dict[str, Any]:
        n_prompt, n_out = len(st.prompt_ids), len(st.output_ids)
        details = (
            {"cached_tokens": st.num_cached_tokens}
            if self.config.enable_prompt_tokens_details
            else None
        )
        return {
            "prompt_tokens": n_prompt,
            "total_tokens": n_prompt + n_out,
            "completion_tokens": n_out,
            "prompt_tokens_details": details,
        }

    def _make_stream(
        self,
        req: CompletionRequest | ChatCompletionRequest,
        prompt_ids: list[int],
        internal_id: str,
    ) -> tuple[_Stream, EngineRequest]:
        if self._task is None or self._task.done():
            raise ProtocolError(
                "engine loop is not running", status=503, err_type="ServiceUnavailable"
            )
        max_tokens = resolve_max_tokens(
            req.max_tokens,
            len(prompt_ids),
            self.config.engine.max_model_len,
            default=COMPLETIONS_DEFAULT_MAX_TOKENS if isinstance(req, CompletionRequest) else None,
        )
        min_tokens = min(req.min_tokens, max_tokens)
        stop_ids = frozenset(req.stop_token_ids or ())
        arrival = self.model_now()
        st = _Stream(
            server=self,
            internal_id=internal_id,
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            stops=req.stop_strings(),
            include_stop_str=req.include_stop_str_in_output,
            stop_token_ids=stop_ids,
            skip_special=req.skip_special_tokens,
            arrival=arrival,
        )
        ereq = EngineRequest(
            request_id=internal_id,
            prompt_token_ids=prompt_ids,
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            stop_token_ids=stop_ids,
            ignore_eos=req.ignore_eos,
            arrival_time=arrival,
            cache_salt=req.cache_salt,
        )
        return st, ereq

    # ------------------------------------------------------------ endpoints
    async def handle_completions(self, request: web.Request) -> web.StreamResponse:
        req = await self._parse(request, CompletionRequest)
        model = self._served_name(req.model)
        req.check()
        prompt = req.single_prompt()
        token_prompt = not isinstance(prompt, str)
        if isinstance(prompt, str):
            prompt_ids = self.tokenizer.encode(prompt, add_special_tokens=req.add_special_tokens)
        else:
            prompt_ids = prompt
        rid = self._request_id(request, req.request_id)
        external = f"cmpl-{rid}-0"
        if token_prompt and req.stream:
            try:
                self.tokenizer.validate_ids(prompt_ids)
            except ValueError as e:  # vLLM: HTTP 200, then an error event, then [DONE]
                return await self._stream_error(request, str(e))
        else:
            self._check_ids(prompt_ids)
        st, ereq = self._make_stream(req, prompt_ids, f"{external}-{uuid.uuid4().hex[:8]}")
        try:
            self._submit(st, external, ereq)
        except ValueError as e:
            raise ProtocolError(str(e), param="prompt") from None
        fmt = _CompletionFormat(f"cmpl-{rid}", model, req, st, self)
        return await self._respond(request, req, st, fmt)

    async def handle_chat(self, request: web.Request) -> web.StreamResponse:
        req = await self._parse(request, ChatCompletionRequest)
        model = self._served_name(req.model)
        req.check()
        messages = req.message_dicts()
        try:
            templated = self.tokenizer.apply_chat_template(
                messages,
                add_generation_prompt=req.add_generation_prompt,
                continue_final_message=req.continue_final_message,
            )
        except ChatTemplateError as e:
            raise ProtocolError(str(e), param="messages") from None
        reused = req.reused_prompt_token_ids()
        prompt_ids = reused if reused is not None else templated
        if req.add_special_tokens and reused is None:
            prompt_ids = [self.tokenizer.bos_token_id, *prompt_ids]
        self._check_ids(prompt_ids)
        rid = self._request_id(request, req.request_id)
        external = f"chatcmpl-{rid}"
        st, ereq = self._make_stream(req, prompt_ids, f"{external}-{uuid.uuid4().hex[:8]}")
        try:
            self._submit(st, external, ereq)
        except ValueError as e:
            raise ProtocolError(str(e), param="messages") from None
        fmt = _ChatFormat(external, model, req, st, self)
        return await self._respond(request, req, st, fmt)

    async def _deltas(self, st: _Stream) -> AsyncIterator[_Delta]:
        while True:
            d = await st.queue.get()
            yield d
            if d.finish_reason is not None:
                return

    async def _respond(
        self,
        request: web.Request,
        req: CompletionRequest | ChatCompletionRequest,
        st: _Stream,
        fmt: _Format,
    ) -> web.StreamResponse:
        try:
            if not req.stream:
                deltas = [d async for d in self._deltas(st)]
                if deltas[-1].finish_reason == "error":  # vLLM's GenerationError -> 500
                    return web.json_response(_INTERNAL_ERROR, status=500)
                return web.json_response(fmt.full(deltas), dumps=_dumps)
            resp = web.StreamResponse(
                headers={"Content-Type": "text/event-stream; charset=utf-8",
                         "Cache-Control": "no-cache"}
            )  # fmt: skip
            await resp.prepare(request)
            started = False
            async for d in self._deltas(st):
                if d.finish_reason == "error":
                    await resp.write(_sse(_INTERNAL_ERROR))
                    await resp.write(b"data: [DONE]\n\n")
                    await resp.write_eof()
                    return resp
                if not started:  # like vLLM, the role chunk goes out with the first token
                    started = True
                    for chunk in fmt.start():
                        await resp.write(_sse(chunk))
                await resp.write(_sse(fmt.chunk(d)))
            if req.include_usage:
                await resp.write(_sse(fmt.usage_chunk()))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        finally:
            if not st.finished:
                self.abort(st.internal_id)

    async def _stream_error(self, request: web.Request, message: str) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await resp.prepare(request)
        await resp.write(_sse(error_body(message)))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def handle_models(self, _request: web.Request) -> web.Response:
        created = int(time.time())
        data = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": self.config.engine.model,
                "parent": None,
                "max_model_len": self.config.engine.max_model_len,
                "permission": [
                    {
                        "id": f"modelperm-{uuid.uuid4().hex}",
                        "object": "model_permission",
                        "created": created,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
            for name in self.config.model_names
        ]
        return web.json_response({"object": "list", "data": data})

    async def handle_health(self, _request: web.Request) -> web.Response:
        if self._task is None or self._task.done():
            body = error_body(
                "engine loop is not running", status=503, err_type="ServiceUnavailable"
            )
            return web.json_response(body, status=503)
        return web.Response(status=200)

    async def handle_version(self, _request: web.Request) -> web.Response:
        return web.json_response({"version": VLLM_VERSION})

    async def handle_load(self, _request: web.Request) -> web.Response:
        return web.json_response({"server_load": len(self._streams)})

    async def handle_metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def handle_kv_event_sources(self, _request: web.Request) -> web.Response:
        cfg = self.config.kv_events
        return web.json_response({"0": cfg.as_dict()} if cfg.enable_kv_cache_events else {})

    async def handle_tokenize(self, request: web.Request) -> web.Response:
        req = await self._parse(request, TokenizeRequest)
        self._served_name(req.model)
        tok = self.tokenizer
        if req.messages is not None and req.prompt is not None:
            raise ProtocolError("give either `prompt` or `messages`, not both", param="prompt")
        if req.messages is not None:
            if req.continue_final_message and req.add_generation_prompt:
                raise ProtocolError(
                    "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
                    param="continue_final_message",
                )
            try:
                ids = tok.apply_chat_template(
                    [{"role": m.role, "content": m.content} for m in req.messages],
                    add_generation_prompt=req.add_generation_prompt,
                    continue_final_message=req.continue_final_message,
                )
            except ChatTemplateError as e:
                raise ProtocolError(str(e), param="messages") from None
            if req.add_special_tokens:
                ids = [tok.bos_token_id, *ids]
        elif req.prompt is not None:
            add = True if req.add_special_tokens is None else req.add_special_tokens
            ids = tok.encode(req.prompt, add_special_tokens=add)
        else:
            raise ProtocolError("either `prompt` or `messages` is required", param="prompt")
        strs = (
            [tok.token_bytes(i).decode("utf-8", "replace") for i in ids]
            if req.return_token_strs
            else None
        )
        return web.json_response(
            {
                "count": len(ids),
                "max_model_len": self.config.engine.max_model_len,
                "tokens": ids,
                "token_strs": strs,
            }
        )

    async def handle_detokenize(self, request: web.Request) -> web.Response:
        req = await self._parse(request, DetokenizeRequest)
        self._served_name(req.model)
        try:
            text = self.tokenizer.decode(req.tokens)
        except ValueError as e:
            raise ProtocolError(str(e), param="tokens") from None
        return web.json_response({"prompt": text})

    async def handle_abort(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            data = json.loads(raw) if raw else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProtocolError(f"JSON decode error: {e}", param="body") from None
        ids = data.get("request_ids") if isinstance(data, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ProtocolError("request_ids must be a list of strings", param="request_ids")
        targets: set[str] = set()
        if not ids:  # an empty list aborts everything (vLLM's dev endpoint)
            targets = set(self._streams)
        for ext in ids:
            targets |= self._by_external.get(ext, set())
            if ext in self._streams:
                targets.add(ext)
        for internal in targets:
            self.abort(internal)
        return web.json_response({"status": "aborted", "aborted": len(targets)})

    async def handle_reset_prefix_cache(self, _request: web.Request) -> web.Response:
        return web.json_response({"success": bool(self.core.reset_prefix_cache())})


# ---------------------------------------------------------------------- response formats


_INTERNAL_ERROR = error_body("Internal server error", status=500, err_type="InternalServerError")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _sse(obj: Any) -> bytes:
    return b"data: " + _dumps(obj).encode("utf-8") + b"\n\n"


class _Format:
    """Builds the JSON bodies of one request's response (streamed or whole)."""

    object_chunk = ""
    object_full = ""

    def __init__(
        self,
        response_id: str,
        model: str,
        req: CompletionRequest | ChatCompletionRequest,
        st: _Stream,
        server: EngineServer,
    ) -> None:
        self.id = response_id
        self.model = model
        self.req = req
        self.st = st
        self.server = server
        self.created = int(time.time())
        self.return_ids = bool(req.return_token_ids)
        self.first = True

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def usage_chunk(self) -> dict[str, Any]:
        """The trailing usage chunk; vLLM serialises it with ``exclude_none``."""
        usage = {k: v for k, v in self.server._usage(self.st).items() if v is not None}
        return {**self._head(self.object_chunk), "choices": [], "usage": usage}

    def _maybe_usage(self, chunk: dict[str, Any]) -> dict[str, Any]:
        if self.req.continuous_usage:
            chunk["usage"] = self.server._usage(self.st)
        return chunk

    def start(self) -> list[dict[str, Any]]:
        return []

    def chunk(self, d: _Delta) -> dict[str, Any]:
        raise NotImplementedError

    def full(self, deltas: list[_Delta]) -> dict[str, Any]:
        raise NotImplementedError


class _CompletionFormat(_Format):
    object_chunk = "text_completion"
    object_full = "text_completion"

    def chunk(self, d: _Delta) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "text": d.text,
            "logprobs": None,
            "finish_reason": d.finish_reason,
            "stop_reason": d.stop_reason,
        }
        # vLLM sets both fields explicitly, so they are present (null) even when not asked for.
        choice["prompt_token_ids"] = self.st.prompt_ids if self.first and self.return_ids else None
        choice["token_ids"] = d.token_ids if self.return_ids else None
        self.first = False
        return self._maybe_usage({**self._head(self.object_chunk), "choices": [choice]})

    def full(self, deltas: list[_Delta]) -> dict[str, Any]:
        last = deltas[-1]
        return {
            **self._head(self.object_full),
            "choices": [
                {
                    "index": 0,
                    "text": "".join(d.text for d in deltas),
                    "logprobs": None,
                    "finish_reason": last.finish_reason,
                    "stop_reason": last.stop_reason,
                    "token_ids": list(self.st.output_ids) if self.return_ids else None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": self.st.prompt_ids if self.return_ids else None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": self.server._usage(self.st),
            "kv_transfer_params": None,
        }


class _ChatFormat(_Format):
    object_chunk = "chat.completion.chunk"
    object_full = "chat.completion"

    @property
    def role(self) -> str:
        """vLLM's response role: the assistant, or the last message's role when continuing."""
        req = self.req
        if isinstance(req, ChatCompletionRequest) and not req.add_generation_prompt:
            return req.messages[-1].role
        return "assistant"

    def start(self) -> list[dict[str, Any]]:
        chunk: dict[str, Any] = {
            **self._head(self.object_chunk),
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": self.role, "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
        chunk["prompt_token_ids"] = self.st.prompt_ids if self.return_ids else None
        chunk["prompt_text"] = None
        return [self._maybe_usage(chunk)]

    def chunk(self, d: _Delta) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "delta": {"content": d.text},
            "logprobs": None,
            "finish_reason": d.finish_reason,
        }
        if d.finish_reason is not None:
            choice["stop_reason"] = d.stop_reason
        choice["token_ids"] = d.token_ids if self.return_ids else None
        return self._maybe_usage({**self._head(self.object_chunk), "choices": [choice]})

    def full(self, deltas: list[_Delta]) -> dict[str, Any]:
        last = deltas[-1]
        return {
            **self._head(self.object_full),
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": self.role,
                        "content": "".join(d.text for d in deltas),
                        "refusal": None,
                        "annotations": None,
                        "audio": None,
                        "function_call": None,
                        "tool_calls": [],
                        "reasoning_content": None,
                    },
                    "logprobs": None,
                    "finish_reason": last.finish_reason,
                    "stop_reason": last.stop_reason,
                    "token_ids": list(self.st.output_ids) if self.return_ids else None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": self.server._usage(self.st),
            "prompt_logprobs": None,
            "prompt_token_ids": self.st.prompt_ids if self.return_ids else None,
            "kv_transfer_params": None,
        }


async def serve(
    config: ServerConfig,
    host: str,
    port: int,
    *,
    started: Callable[[EngineServer, int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run one engine server until ``stop`` is set (or the task is cancelled).

    ``handler_cancellation=True`` makes aiohttp cancel a handler whose client went away,
    which is how a disconnect reaches :meth:`EngineServer.abort` within one event-loop turn.
    """
    server = EngineServer(config)
    runner = web.AppRunner(server.app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = port
    sockets = getattr(site._server, "sockets", None) or []  # port 0 lookup
    if sockets:
        bound = sockets[0].getsockname()[1]
    if started is not None:
        started(server, bound)
    try:
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        await runner.cleanup()
