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
import contextlib
import logging
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from modelfleet.engine.core import EngineConfig, EngineCore, EngineRequest, StepResult
from modelfleet.engine.formats import ChatFormat, CompletionFormat, model_list
from modelfleet.engine.generation import GreedyGenerator
from modelfleet.engine.kv_events import KVEventsConfig, ZmqEventPublisher
from modelfleet.engine.kvcache import KVEvent
from modelfleet.engine.metrics import EngineMetrics
from modelfleet.engine.protocol import (
    REUSED_IDS_PARAM,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ProtocolError,
    TokenizeRequest,
    error_body,
    parse_json_body,
    resolve_max_tokens,
    validation_error_message,
)
from modelfleet.engine.streaming import RequestStream, error_middleware, respond, stream_error
from modelfleet.engine.tokenizer import ChatTemplateError, Tokenizer, load_tokenizer

__all__ = ["VLLM_VERSION", "EngineServer", "ServerConfig", "serve"]

log = logging.getLogger("modelfleet.engine.server")

VLLM_VERSION = "0.32.0"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # vLLM's default on /v1/completions
MAX_BODY_BYTES = 32 * 1024 * 1024
"""Default body-size limit; a larger body is answered 413 before it is read."""

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
    tokenizer: str = "llama-3"  # "llama-3" | "builtin" | a folder | a tokenizer.json
    max_body_bytes: int = MAX_BODY_BYTES

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")

    @property
    def model_names(self) -> tuple[str, ...]:
        return self.served_model_names or (self.engine.model_name,)


class EngineServer:
    """The aiohttp application and the engine loop of one simulated vLLM instance."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.tokenizer: Tokenizer = load_tokenizer(config.tokenizer)
        self.generator = GreedyGenerator(self.tokenizer)
        # Tokenising and chat templating run here, off the event loop (the tokenizer releases
        # the GIL), one at a time so a huge prompt cannot take both cores from the engine.
        self._tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
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
        self._streams: dict[str, RequestStream] = {}
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
        app = web.Application(
            client_max_size=self.config.max_body_bytes, middlewares=[error_middleware]
        )
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
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)

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

    def _finish(self, st: RequestStream, reason: str, now: float) -> None:
        if reason in ("stop", "length"):
            self.metrics.observe_finished(reason, st.timings(now))
        self._forget(st)

    def _forget(self, st: RequestStream) -> None:
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

    def _submit(self, st: RequestStream, external_id: str, req: EngineRequest) -> None:
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

    # -------------------------------------------------------------- helpers
    async def _parse(self, request: web.Request, model: type[BaseModelT]) -> BaseModelT:
        data = parse_json_body(await request.read(), request.headers.get("Content-Type", ""))
        try:
            return model.model_validate(data)
        except ValidationError as e:
            msg, param = validation_error_message(e)
            raise ProtocolError(msg, param=param, err_type="Bad Request") from None

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a tokenizer call in the tokenizer thread (it releases the GIL)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenize_pool, fn, *args)

    async def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        """Tokenise off the event loop; a text that cannot fit the context is refused at once.

        Every token covers at most ``max_token_chars`` characters, so a text longer than
        ``max_model_len * max_token_chars`` has more tokens than the context holds whatever
        they are: it is answered 400 without tokenising it (vLLM tokenises first and then
        refuses; same status, a lower bound instead of the exact count in the message).
        """
        limit = self.config.engine.max_model_len * max(1, self.tokenizer.max_token_chars)
        if len(text) > limit:
            at_least = -(-len(text) // max(1, self.tokenizer.max_token_chars))
            raise ProtocolError(
                f"This model's maximum context length is {self.config.engine.max_model_len} "
                f"tokens. However, your prompt contains at least {at_least} input tokens, "
                "which exceeds this limit even without any output tokens. Please reduce the "
                f"length of the input prompt. (parameter=input_tokens, value={at_least})",
                param="input_tokens",
            )
        ids: list[int] = await self._off_loop(self.tokenizer.encode, text, add_special_tokens)
        return ids

    async def _chat_ids(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool, continue_final: bool
    ) -> list[int]:
        try:
            ids: list[int] = await self._off_loop(
                self.tokenizer.apply_chat_template, messages, add_generation_prompt, continue_final
            )
        except ChatTemplateError as e:
            raise ProtocolError(str(e), param="messages") from None
        return ids

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

    def _check_ids(self, ids: list[int], param: str | None = None) -> None:
        """Every id in the vocabulary, else a 400 worded like vLLM's (which names the
        parameter only for ``kv_transfer_params.prompt_token_ids``)."""
        try:
            self.tokenizer.validate_ids(ids)
        except ValueError as e:
            where = "" if param is None else f" (parameter={param})"
            raise ProtocolError(f"{e}{where}", param=param) from None

    @staticmethod
    def _request_id(request: web.Request, body_id: str | None) -> str:
        return request.headers.get("X-Request-Id") or body_id or uuid.uuid4().hex[:16]

    def _make_stream(
        self,
        req: CompletionRequest | ChatCompletionRequest,
        prompt_ids: list[int],
        internal_id: str,
    ) -> tuple[RequestStream, EngineRequest]:
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
        st = RequestStream(
            tokenizer=self.tokenizer,
            internal_id=internal_id,
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            stops=req.stop_strings(),
            include_stop_str=req.include_stop_str_in_output,
            stop_token_ids=stop_ids,
            skip_special=req.skip_special_tokens,
            arrival=arrival,
            on_finished=self._finish,
            abort_in_core=self.core.abort_request,
        )
        ereq = EngineRequest(
            request_id=internal_id,
            prompt_token_ids=prompt_ids,
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            stop_token_ids=stop_ids,
            ignore_eos=req.ignore_eos,
            # reaches the engine core after the front end's per-request work (timing model)
            arrival_time=arrival + self.core.timer.front_end_latency(len(self._streams)),
            cache_salt=req.cache_salt,
        )
        return st, ereq

    async def _start(
        self, st: RequestStream, external: str, ereq: EngineRequest, param: str
    ) -> None:
        """Model the front end's per-request latency, then queue the request in the core."""
        delay = (ereq.arrival_time - st.arrival) * self.config.time_scale
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            self._submit(st, external, ereq)
        except ValueError as e:
            raise ProtocolError(str(e), param=param) from None

    # ------------------------------------------------------------ endpoints
    async def handle_completions(self, request: web.Request) -> web.StreamResponse:
        req = await self._parse(request, CompletionRequest)
        model = self._served_name(req.model)
        req.check()
        prompt = req.single_prompt()
        if isinstance(prompt, str):
            prompt_ids = await self._encode(prompt, req.add_special_tokens)
        else:
            prompt_ids = prompt
        rid = self._request_id(request, req.request_id)
        external = f"cmpl-{rid}-0"
        if not isinstance(prompt, str) and req.stream:
            try:
                self.tokenizer.validate_ids(prompt_ids)
            except ValueError as e:  # vLLM: HTTP 200, then an error event, then [DONE]
                return await stream_error(request, str(e))
        else:
            self._check_ids(prompt_ids)
        st, ereq = self._make_stream(req, prompt_ids, f"{external}-{uuid.uuid4().hex[:8]}")
        await self._start(st, external, ereq, "prompt")
        fmt = CompletionFormat(
            f"cmpl-{rid}", model, req, st,
            prompt_tokens_details=self.config.enable_prompt_tokens_details,
        )  # fmt: skip
        return await respond(request, req, st, fmt, self.abort)

    async def handle_chat(self, request: web.Request) -> web.StreamResponse:
        req = await self._parse(request, ChatCompletionRequest)
        model = self._served_name(req.model)
        req.check()
        reused = req.reused_prompt_token_ids()
        if reused is not None:  # vLLM skips templating; the messages are only validated
            prompt_ids = reused
            self._check_ids(prompt_ids, REUSED_IDS_PARAM)
        else:
            prompt_ids = await self._chat_ids(
                req.message_dicts(), req.add_generation_prompt, req.continue_final_message
            )
            if req.add_special_tokens and self.tokenizer.bos_token_id is not None:
                prompt_ids = [self.tokenizer.bos_token_id, *prompt_ids]
        self._check_ids(prompt_ids)
        rid = self._request_id(request, req.request_id)
        external = f"chatcmpl-{rid}"
        st, ereq = self._make_stream(req, prompt_ids, f"{external}-{uuid.uuid4().hex[:8]}")
        await self._start(st, external, ereq, "messages")
        fmt = ChatFormat(
            external, model, req, st,
            prompt_tokens_details=self.config.enable_prompt_tokens_details,
        )  # fmt: skip
        return await respond(request, req, st, fmt, self.abort)

    async def handle_models(self, _request: web.Request) -> web.Response:
        eng = self.config.engine
        body = model_list(self.config.model_names, eng.model_name, eng.max_model_len)
        return web.json_response(body)

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
            messages = [{"role": m.role, "content": m.content} for m in req.messages]
            ids = await self._chat_ids(
                messages, req.add_generation_prompt, req.continue_final_message
            )
            if req.add_special_tokens and tok.bos_token_id is not None:
                ids = [tok.bos_token_id, *ids]
        elif req.prompt is not None:
            add = True if req.add_special_tokens is None else req.add_special_tokens
            ids = await self._encode(req.prompt, add)
        else:
            raise ProtocolError("either `prompt` or `messages` is required", param="prompt")
        strs = [tok.token_str(i) for i in ids] if req.return_token_strs else None
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
        data = parse_json_body(await request.read(), request.headers.get("Content-Type", ""))
        ids = data.get("request_ids")
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
