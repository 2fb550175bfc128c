"""The request path's I/O: admission waits, tokenisation, the engine call, the token stream.

:class:`Proxy` takes a checked request through :class:`~modelfleet.scheduler.core.SchedulerCore`
and relays the chosen engine's answer:

1. **Place.** ``core.open`` (model, key, limits, class, selection), then ``core.place``;
   while admission says *queue* the request waits here (re-asking every ``retry_after`` up to
   4× its class's TTFT target, 0.5..30 s, then it is placed anyway). A pool whose profile
   matches the engines' own block hashes (``prefixSource: kv-events``) needs the prompt's token
   ids first: the proxy asks one of the pool's engines (``POST /tokenize``, the same template
   and special-token flags the request carries).
2. **Call.** The client's body goes to the engine with the pool's model name, the scheduler's
   ``request_id`` (also ``X-Request-Id``) and ``return_token_ids: true``.
3. **Until the first token** nothing reaches the client: events before it (chat's role chunk)
   are held (one chunk). A refused connection, a 5xx or 429, a stream that ends or breaks
   before its first token, and (cascade selection) no first token within
   ``cascade.timeoutMs`` each end the attempt (``core.abandon``) and the request is placed
   again, avoiding the endpoints it failed on, up to ``max_attempts``. Whether an endpoint
   is down is the metrics poller's call (refused scrapes), not one request's: under load a
   connection can fail while the engine is fine. An engine's other 4xx is the
   client's fault and is passed through as it is.
4. **Stream.** The first token is forwarded at once; after it, the events that arrived are
   forwarded together every ``write_interval_s`` (50 ms: one message per interval instead of
   one per token through Serve's proxy, see :meth:`Relay.stream`); their token ids are
   counted (``core.on_tokens``) and recorded.
5. **End.** ``[DONE]`` → ``core.finish(ok)``. A client that goes away → the engine stream is
   closed (the engine aborts the request within a step) and ``core.finish(aborted)``.

**Live migration.** A streamed request is a :class:`Relay`: it holds the prompt's token ids
(from the engine's first chunk), every generated id the client was sent, the last clean cut
position, the current :class:`Upstream` and :class:`~modelfleet.scheduler.core.Attempt`.
:meth:`Relay.begin_handoff` (called by :class:`~modelfleet.scheduler.migrate.Migrator` for a
drain, or by the relay itself when its engine dies mid-stream) opens the request on another
engine by token ids; the relay loop then waits on both streams, checks the destination's
tokens against what the client has, and switches over make-before-break (the whole recipe:
:mod:`~modelfleet.scheduler.migrate` and ``docs/migration.md``). A stream that breaks after
its first token is resumed elsewhere; only when that fails does the client get an
``upstream_lost`` error event and ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from modelfleet.policy.selection import Outcome
from modelfleet.policy.types import Decision, RequestId
from modelfleet.scheduler.core import Attempt, SchedulerCore, Ticket, Wait
from modelfleet.scheduler.errors import ApiError, error_body
from modelfleet.scheduler.fleet import EndpointSpec
from modelfleet.scheduler.migrate import (
    Handoff,
    Migrator,
    Trigger,
    handoff_body,
    is_greedy,
    not_migratable,
)
from modelfleet.scheduler.protocol import RequestKind, parse_body

__all__ = ["JsonResult", "Proxy", "Relay", "StreamResult", "Upstream"]

log = logging.getLogger("modelfleet.scheduler.proxy")

PATHS: dict[RequestKind, str] = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"[DONE]"
#: Most events one write carries (see :meth:`Relay.stream`).
MAX_BATCH = 256
#: How long a batch waits for an event that is already in the connection but not yet read
#: (see :meth:`Upstream.arrived_event`): long enough for reads that need no network wait.
ARRIVED_WAIT_S = 0.002


@dataclass(frozen=True)
class JsonResult:
    """A complete answer: status, body bytes, headers."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    media_type: str = "application/json"


@dataclass(frozen=True)
class StreamResult:
    """A streamed answer (``text/event-stream``)."""

    chunks: AsyncIterator[bytes]
    headers: Mapping[str, str] = field(default_factory=dict)


def error_result(e: ApiError, request_id: str | None = None) -> JsonResult:
    headers = dict(e.headers())
    if request_id:
        headers["X-Request-Id"] = request_id
    return JsonResult(e.status, json.dumps(e.body()).encode(), headers)


#: A connection that could not be made. An engine killed while httpcore sets up a connection
#: to it surfaces as AttributeError from anyio (the closed socket is None when it reads the
#: peer name) instead of httpx.ConnectError; it is the same failure (seen under Ray Serve in
#: tests/scheduler/test_live.py: a 500 instead of a retry on another engine).
_CONNECT_ERRORS = (httpx.ConnectError, AttributeError)


class _Failed(Exception):
    """An attempt ended before its first token (retryable unless ``passthrough``)."""

    def __init__(
        self,
        reason: str,
        outcome: Outcome,
        *,
        unhealthy: bool = False,
        passthrough: JsonResult | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome
        self.unhealthy = unhealthy
        self.passthrough = passthrough


class Upstream:
    """One open streaming response from an engine, read as SSE event payloads.

    :meth:`pending` starts reading the next event in a task (a relay that waits on two
    engines during a hand-off, or on an engine and a wake-up, needs a future to wait on);
    :meth:`next_event` returns that task's result first, so no event is read twice or lost.
    """

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._chunks = response.aiter_raw()
        self._buf = b""
        self._pos = 0  # where the unread events start: a backlog is scanned once, not re-copied
        self._task: asyncio.Task[bytes | None] | None = None
        self.closed = False

    def buffered_event(self) -> bytes | None:
        """The next event's data payload if it has fully arrived already, else ``None``."""
        if self._task is not None:
            return None
        return self._take()

    def _take(self) -> bytes | None:
        """The next complete event in the buffer (skipping events without data), else ``None``."""
        while True:
            cut = self._buf.find(b"\n\n", self._pos)
            if cut < 0:
                return None
            raw, self._pos = self._buf[self._pos : cut], cut + 2
            data = [line[5:].lstrip(b" ") for line in raw.split(b"\n") if line.startswith(b"data:")]
            if data:
                return b"\n".join(data)

    async def _read(self) -> bytes | None:
        while True:
            payload = self._take()
            if payload is not None:
                return payload
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                return None
            self._buf = self._buf[self._pos :] + chunk.replace(b"\r\n", b"\n")
            self._pos = 0

    def pending(self) -> asyncio.Task[bytes | None]:
        """The task reading the next event (started if none is)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._read())
        return self._task

    @property
    def ready(self) -> bool:
        """A pending read has finished (its result is the next event)."""
        return self._task is not None and self._task.done()

    async def arrived_event(self, wait_s: float) -> tuple[bool, bytes | None]:
        """``(True, the next event)`` if it has arrived already or arrives within ``wait_s``
        (``(True, None)`` at the end of the body), else ``(False, None)`` with the read left
        pending. An engine sends each event as one HTTP chunk and the client hands them out
        one chunk at a time, so the events that are waiting in the connection's buffer are
        only reached by reading on: :meth:`buffered_event` sees just this object's buffer.
        Raises what the read raised."""
        payload = self.buffered_event()
        if payload is not None:
            return True, payload
        task = self.pending()
        if not task.done():
            await asyncio.wait({task}, timeout=wait_s)
            if not task.done():
                return False, None
        self._task = None
        return True, task.result()

    async def next_event(self) -> bytes | None:
        """The next event's data payload (``None`` at the end of the body)."""
        task = self._task
        if task is not None:
            self._task = None
            return await task
        return await self._read()

    def close_soon(self, tasks: set[asyncio.Task[None]]) -> None:
        """Close the connection without awaiting here (safe inside a cancelled task)."""
        if self.closed:
            return
        self.closed = True
        if self._task is not None:
            self._task.add_done_callback(_swallow)
            self._task = None
        task = asyncio.get_running_loop().create_task(self.response.aclose())
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def _swallow(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


@dataclass
class _Event:
    raw: bytes
    tokens: int = 0
    ids: list[int] | None = None
    prompt_ids: list[int] | None = None
    finished: bool = False
    error: bool = False
    text: str | None = None


def _scan(payload: bytes) -> _Event:
    """Token ids, prompt ids, text, finish and error of one SSE payload (vLLM's shapes)."""
    ev = _Event(payload)
    try:
        obj = json.loads(payload)
    except ValueError:
        return ev
    if not isinstance(obj, dict):
        return ev
    if "error" in obj and not obj.get("choices"):
        ev.error = True
        return ev
    prompt = obj.get("prompt_token_ids")
    if isinstance(prompt, list):
        ev.prompt_ids = prompt
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(text, str):
            ev.text = text if ev.text is None else ev.text + text
        ids = choice.get("token_ids")
        if isinstance(ids, list):
            ev.ids = (ev.ids or []) + ids
            ev.tokens += len(ids)
        elif text:  # an engine that ignores return_token_ids: one token per non-empty delta
            ev.tokens += 1
        p = choice.get("prompt_token_ids")
        if isinstance(p, list):
            ev.prompt_ids = p
        if choice.get("finish_reason"):
            ev.finished = True
    return ev


class Relay:
    """The state of one streamed request (the migration seam, see the module docstring).

    ``generated_ids`` are the ids the client has been sent, in order (the client's position
    is their count); ``clean_pos`` is the last position whose text delta was clean (a cut
    there gives the destination a clean text start). During a hand-off (``handoff``) the
    source's events are held in ``held`` once it is frozen.
    """

    def __init__(self, proxy: Proxy, attempt: Attempt, upstream: Upstream) -> None:
        self.proxy = proxy
        self.attempt = attempt
        self.upstream = upstream
        self.request_id = attempt.ticket.request_id
        self.prompt_token_ids: list[int] | None = None
        self.generated_ids: list[int] = []
        self.held: list[bytes] = []
        self.finished = False
        self.clean_pos = 0
        self.last_sent_s: float | None = None
        self.handoff: Handoff | None = None
        self.held_src: list[bytes] = []
        self.src_dead: str | None = None
        self.wake = asyncio.Event()
        self.migrations = 0
        self.resumes = 0
        self.stalls: list[float] = []
        self._rewrite: tuple[bytes, int] | None = None  # (destination request id, cut)
        parsed = attempt.ticket.parsed
        self.not_migratable = not_migratable(parsed)
        self.greedy = is_greedy(parsed)

    def account(self, ev: _Event) -> None:
        """Record the event's ids and report its tokens to the core."""
        if ev.prompt_ids is not None and self.prompt_token_ids is None:
            self.prompt_token_ids = ev.prompt_ids
        if ev.ids:
            self.generated_ids.extend(ev.ids)
            if ev.text and not ev.text.endswith("\ufffd"):
                self.clean_pos = len(self.generated_ids)
        if ev.tokens:
            self.proxy.core.on_tokens(self.attempt, ev.tokens)

    def switch_to(self, attempt: Attempt, upstream: Upstream) -> None:
        """Continue the stream from another upstream (the old one is closed, which aborts
        the request on its engine)."""
        old = self.upstream
        self.attempt = attempt
        self.upstream = upstream
        old.close_soon(self.proxy.background)

    def upstream_lost(self, reason: str) -> bytes:
        """The stream broke after the first token and could not be resumed elsewhere: the
        client gets an error event, then ``[DONE]``."""
        self.proxy.core.finish(self.attempt, "error", 502)
        body = error_body(
            f"the engine serving this request failed mid-stream ({reason})",
            err_type="server_error",
            code="upstream_lost",
        )
        return b"data: " + json.dumps(body).encode() + b"\n\ndata: [DONE]\n\n"

    # ------------------------------------------------------------ forwarding
    def _rewritten(self, payload: bytes) -> bytes:
        """A destination's event in the source's terms: the original request id, no prompt
        ids (the destination's prompt holds generated ids), usage summed over the cut."""
        rw = self._rewrite
        if rw is None:
            return payload
        b_id, cut = rw
        payload = payload.replace(b_id, str(self.request_id).encode())
        if (
            b"prompt_tokens" not in payload
            and b'prompt_token_ids":[' not in payload
            and (b'prompt_token_ids": [' not in payload)
        ):
            return payload
        try:
            obj = json.loads(payload)
        except ValueError:
            return payload
        if not isinstance(obj, dict):
            return payload
        if isinstance(obj.get("prompt_token_ids"), list):
            obj["prompt_token_ids"] = None
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict) and isinstance(choice.get("prompt_token_ids"), list):
                choice["prompt_token_ids"] = None
        usage = obj.get("usage")
        if isinstance(usage, dict):
            prompt = len(self.prompt_token_ids or ())
            done = int(usage.get("completion_tokens") or 0) + cut
            usage["prompt_tokens"] = prompt
            usage["completion_tokens"] = done
            usage["total_tokens"] = prompt + done
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
                details["cached_tokens"] = min(details["cached_tokens"], prompt)
        return json.dumps(obj, separators=(",", ":")).encode()

    def _forward(self, payload: bytes, out: list[bytes]) -> None:
        """Send one event on to the client (``[DONE]`` ends the request)."""
        if payload == DONE:
            self.proxy.core.finish(self.attempt, "ok")
            self.finished = True
            out.append(b"data: [DONE]\n\n")
            return
        if self._rewrite is not None:
            payload = self._rewritten(payload)
        ev = _scan(payload)
        self.account(ev)
        if ev.tokens:
            self.last_sent_s = self.proxy.core.clock()
        out.append(b"data: " + payload + b"\n\n")

    def _from_source(self, payload: bytes, out: list[bytes]) -> None:
        h = self.handoff
        if h is not None and h.frozen:
            self.held_src.append(payload)
        else:
            self._forward(payload, out)

    # --------------------------------------------------------------- hand-off
    def begin_handoff(
        self,
        dst: EndpointSpec,
        decision: Decision,
        trigger: Trigger,
        *,
        on_end: Callable[[bool, str], None] | None = None,
    ) -> str | None:
        """Start moving the request to ``dst`` (``None`` when started, else why not)."""
        if self.finished:
            return "finished"
        if self.handoff is not None:
            return "a hand-off is in progress"
        if self.not_migratable is not None:
            return self.not_migratable
        if self.prompt_token_ids is None:
            return "prompt token ids unknown"
        position = len(self.generated_ids)
        if self.greedy or self.src_dead is not None:
            cut = self.clean_pos
        elif self.clean_pos == position:
            cut = position
        else:
            return "no clean cut yet"
        core = self.proxy.core
        ticket = self.attempt.ticket
        n = self.migrations + self.resumes + 1
        b_id = f"{self.request_id}-m{n}"
        body = handoff_body(
            ticket.parsed,
            self.attempt.pool.served_model,
            self.prompt_token_ids,
            self.generated_ids,
            cut,
            b_id,
        )
        if body is None:
            return "nothing left to generate"
        h = Handoff(
            trigger=trigger,
            dst=dst,
            decision=decision,
            cut=cut,
            greedy=self.greedy,
            request_id=b_id,
            started_s=core.clock(),
            frozen=not self.greedy or self.src_dead is not None,
            on_end=on_end,
        )
        self.handoff = h
        core.migration_started(self.attempt, dst)
        h.opening = asyncio.get_running_loop().create_task(self._open_handoff(h, body))
        tel = core.telemetry
        if tel is not None:
            pool = self.attempt.pool.name
            context = len(self.prompt_token_ids) + cut
            tel.migration_reprefill_tokens.labels(pool).inc(context)
            tel.migration_prefix_hit_tokens.labels(pool).inc(min(context, decision.cached_tokens))
        log.debug(
            "hand-off %s -> %s (%s) at %d of %d", self.request_id, dst.id, trigger, cut, position
        )
        self.wake.set()
        return None

    async def _open_handoff(self, h: Handoff, body: dict[str, Any]) -> None:
        proxy = self.proxy
        request = proxy.client.build_request(
            "POST",
            h.dst.url + PATHS[self.attempt.ticket.parsed.kind],
            content=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "X-Request-Id": h.request_id},
        )
        try:
            response = await proxy.client.send(request, stream=True)
        except (httpx.HTTPError, OSError) as e:
            h.error = "connect" if isinstance(e, httpx.ConnectError) else type(e).__name__
        else:
            if response.status_code == 200:
                h.upstream = Upstream(response)
                if self.handoff is not h:  # given up meanwhile
                    h.upstream.close_soon(proxy.background)
            else:
                h.error = f"engine-{response.status_code}"
                await response.aclose()
        self.wake.set()

    def _end_handoff(self, ok: bool, outcome: str, reason: str = "") -> None:
        h = self.handoff
        assert h is not None
        self.handoff = None
        core = self.proxy.core
        if not ok:
            if h.upstream is not None:
                h.upstream.close_soon(self.proxy.background)
            elif h.opening is not None and not h.opening.done():
                pass  # _open_handoff closes it when it sees the hand-off is gone
            core.migration_aborted(self.attempt)
        tel = core.telemetry
        if tel is not None:
            pool = self.attempt.pool.name
            tel.migrations.labels(pool, h.trigger, outcome).inc()
            if outcome == "failed":
                tel.migration_failures.labels(pool, reason).inc()
        if h.on_end is not None:
            h.on_end(ok, reason)

    def _give_up(self, reason: str, out: list[bytes]) -> None:
        """The hand-off failed: carry on on the source (or resume elsewhere if it is dead)."""
        log.warning("hand-off of %s failed: %s", self.request_id, reason)
        h = self.handoff
        assert h is not None
        failed_dst = h.dst.id
        self._end_handoff(False, "failed", reason)
        if self.src_dead is None:
            held, self.held_src = self.held_src, []
            for payload in held:
                if self.finished:
                    break
                self._forward(payload, out)
            return
        self.held_src = []
        if not self._resume(frozenset({failed_dst})):
            self.finished = True
            out.append(self.upstream_lost(f"{self.src_dead}; resume failed: {reason}"))

    def _resume(self, avoid: frozenset[str] = frozenset()) -> bool:
        """The source died mid-stream: continue on another engine (``False`` if none)."""
        if self.resumes >= self.proxy.max_attempts:
            return False
        migrator = self.proxy.migrator
        if migrator is None:
            return False
        avoid = avoid | {self.attempt.endpoint.id}
        if migrator.migrate(self, "resume", avoid=avoid) is not None:
            return False
        self.resumes += 1
        return True

    def _switch(self, h: Handoff, out: list[bytes]) -> None:
        """The destination reached the client's position: it feeds the client from now."""
        assert h.upstream is not None
        core = self.proxy.core
        now = core.clock()
        stall = now - self.last_sent_s if self.last_sent_s is not None else 0.0
        log.debug(
            "switch %s at %d (cut %d): stall %.3f s, %.3f s after the start, first %.3f",
            self.request_id, len(self.generated_ids), h.cut, stall, now - h.started_s,
            (h.first_s or now) - h.started_s,
        )  # fmt: skip
        core.migrated(self.attempt, h.dst)
        old = self.upstream
        self.upstream = h.upstream
        old.close_soon(self.proxy.background)
        self.held_src = []
        self.src_dead = None
        self._rewrite = (h.request_id.encode(), h.cut)
        if h.trigger != "resume":
            self.migrations += 1
        self.stalls.append(stall)
        # The destination's decode step while it caught up (cut+1 .. the client's position):
        caught_up = len(self.generated_ids) - h.cut
        step = (now - h.first_s) / caught_up if h.first_s is not None and caught_up > 0 else 0.0
        tel = core.telemetry
        if tel is not None:
            tel.migration_stall.labels(self.attempt.pool.name, h.trigger).observe(stall)
            if step > 0:
                tel.migration_stall_steps.labels(self.attempt.pool.name, h.trigger).observe(
                    stall / step
                )
        self._end_handoff(True, "switched")
        events, h.events = h.events, []
        for payload, _ev in events:
            if self.finished:
                break
            self._forward(payload, out)

    def _pull_destination(self, h: Handoff) -> None:
        """Move every event the destination has sent into ``h.events`` (role chunks before
        its first token are dropped: the client has had one)."""
        up = h.upstream
        if up is None or h.done or h.error is not None or not up.ready:
            return
        while True:
            task = up._task
            if task is not None:
                if not task.done():
                    return
                up._task = None
                try:
                    payload = task.result()
                except (httpx.HTTPError, OSError) as e:
                    h.error = type(e).__name__
                    return
            else:
                payload = up.buffered_event()
                if payload is None:
                    up.pending()
                    return
            if payload is None:
                h.error = "eof"
                return
            if payload == DONE:
                h.done = True
                h.events.append((payload, None))
                return
            ev = _scan(payload)
            if ev.error:
                h.error = "error-event"
                return
            if h.first_s is None and not ev.ids and not ev.finished:
                continue
            if h.first_s is None:
                h.first_s = self.proxy.core.clock()
            h.events.append((payload, ev))

    def _advance(self, out: list[bytes]) -> None:
        """Check the destination's tokens against the client's and switch when it is there."""
        h = self.handoff
        assert h is not None
        if h.error is not None:
            self._give_up(h.error, out)
            return
        if h.upstream is None:
            return
        self._pull_destination(h)
        position = len(self.generated_ids)
        while h.events:
            _payload, ev = h.events[0]
            ids = ev.ids if ev is not None else None
            if not ids:
                if h.next_pos - 1 == position:
                    self._switch(h, out)
                else:
                    self._give_up("destination ended behind the client", out)
                return
            start = h.next_pos
            end = start + len(ids) - 1
            if h.greedy and start <= position:
                h.frozen = True  # the destination lags: stop the source so it can catch up
            if start == position + 1:
                self._switch(h, out)
                return
            overlap = ids[: max(0, min(end, position) - start + 1)]
            if h.greedy and overlap != self.generated_ids[start - 1 : start - 1 + len(overlap)]:
                self._give_up("mismatch", out)
                return
            if end > position:
                self._give_up("chunk straddles the client's position", out)
                return
            h.events.pop(0)
            h.next_pos = end + 1
        if h.error is not None:
            self._give_up(h.error, out)

    async def _migrating(self, out: list[bytes]) -> None:
        """One step while a hand-off runs: wait for the source, the destination or a wake-up."""
        h = self.handoff
        assert h is not None
        waits: list[asyncio.Future[Any]] = []
        if self.src_dead is None and not self.upstream.closed:
            waits.append(self.upstream.pending())
        if h.upstream is not None and not h.done and h.error is None:
            waits.append(h.upstream.pending())
        if not self.wake.is_set():
            wake = asyncio.get_running_loop().create_task(self.wake.wait())
            waits.append(wake)
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                wake.cancel()
        self.wake.clear()
        if self.upstream.ready:
            try:
                payload = await self.upstream.next_event()
            except (httpx.HTTPError, OSError) as e:
                self.src_dead = type(e).__name__
            else:
                if payload is None:
                    self.src_dead = "stream ended without [DONE]"
                else:
                    self._from_source(payload, out)
                    while not self.finished:
                        nxt = self.upstream.buffered_event()
                        if nxt is None:
                            break
                        self._from_source(nxt, out)
        if self.finished:  # the source finished the request before the switch
            self._end_handoff(False, "superseded", "finished first")
            return
        if self.src_dead is not None and self.handoff is not None:
            self.handoff.frozen = True
        if self.handoff is not None:
            self._advance(out)

    async def _direct(self, out: list[bytes], batch: bool) -> int:
        """One step without a hand-off: the next event, then (with ``batch``) every event that
        has arrived from the source by now, up to ``MAX_BATCH``; returns how many were taken."""
        try:
            payload: bytes | None = await self.upstream.next_event()
        except (httpx.HTTPError, OSError) as e:
            self._lost(type(e).__name__, out)
            return 0
        taken = 0
        while payload is not None and payload != DONE:
            self._from_source(payload, out)
            taken += 1
            if self.handoff is not None or taken == MAX_BATCH:
                return taken
            if not batch:
                payload = self.upstream.buffered_event()
                if payload is None:
                    return taken
                continue
            try:
                arrived, payload = await self.upstream.arrived_event(ARRIVED_WAIT_S)
            except (httpx.HTTPError, OSError) as e:
                self._lost(type(e).__name__, out)
                return taken
            if not arrived:
                return taken
        if payload is None:  # the body ended
            self._lost("stream ended without [DONE]", out)
        else:
            self._from_source(payload, out)
        return taken

    def _lost(self, reason: str, out: list[bytes]) -> None:
        self.src_dead = reason
        log.warning("request %s lost its engine mid-stream (%s)", self.request_id, reason)
        if self.not_migratable is None and self._resume():
            return
        self.finished = True
        out.append(self.upstream_lost(reason))

    async def stream(self) -> AsyncIterator[bytes]:
        """The client's byte stream: held events, then the events as they arrive.

        The first token is written at once; after it, writes are at least the proxy's
        ``write_interval_s`` apart (default 50 ms), and each carries every event that had
        fully arrived from the engine by then (up to ``MAX_BATCH``; a fuller backlog is
        worked off in turns with the other streams). A token waits at most one interval.
        While a hand-off runs, events are written as they come (the switch is when the
        client must see no gap).

        Why an interval: every write crosses Serve's proxy hop as one message, and its cost
        is per message. Writing each token as it arrived (one message per token per stream)
        saturated the path between replica and proxy with a few dozen real-time streams on
        two cores; the proxy's cancel of a stream whose client had gone, which travels the
        same path, then reached the replica 20-50 s late, while the engine kept generating
        for nobody (``bench/results/scheduler-dataplane.md``). Ray Serve's own LLM server
        batches its token stream the same way (``stream_batching_interval_ms``).
        """
        core = self.proxy.core
        interval = self.proxy.write_interval_s
        loop = asyncio.get_running_loop()
        self.proxy.relays[self.request_id] = self
        try:
            if self.held:
                yield b"".join(b"data: " + raw + b"\n\n" for raw in self.held)
                if self.generated_ids:
                    self.last_sent_s = core.clock()
            self.held = []
            if self.finished:
                return
            last, full = loop.time(), False
            while True:
                out: list[bytes] = []
                if self.handoff is not None:
                    await self._migrating(out)
                    full = False
                else:
                    delay = last + interval - loop.time()
                    if full:
                        await asyncio.sleep(0)  # a backlog: worked off in turns with the others
                    elif delay > 0:
                        await asyncio.sleep(delay)
                    full = await self._direct(out, batch=interval > 0) == MAX_BATCH
                if out:
                    yield b"".join(out)
                    last = loop.time()
                if self.finished:
                    return
        finally:
            if self.proxy.relays.get(self.request_id) is self:
                del self.proxy.relays[self.request_id]
            if self.handoff is not None:
                self._end_handoff(False, "aborted", "client gone")
            if not self.finished:
                core.finish(self.attempt, "aborted", 499)
            self.upstream.close_soon(self.proxy.background)


class Proxy:
    """Relays requests for one :class:`SchedulerCore` (see the module docstring)."""

    def __init__(
        self,
        core: SchedulerCore,
        client: httpx.AsyncClient,
        *,
        max_attempts: int = 3,
        max_body_bytes: int = 32 * 1024 * 1024,
        write_interval_s: float = 0.05,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        migrate: bool = True,
    ) -> None:
        self.core = core
        self.client = client
        self.max_attempts = max_attempts
        self.max_body_bytes = max_body_bytes
        self.write_interval_s = write_interval_s
        self.sleep = sleep
        self.background: set[asyncio.Task[None]] = set()
        #: Streams being relayed now, by request id (what a migration can move).
        self.relays: dict[RequestId, Relay] = {}
        #: Requests waiting for admission now, by (namespace, pool, SLO class).
        self.waiting: dict[tuple[str, str, str], int] = {}
        self.migrator: Migrator | None = Migrator(self) if migrate else None

    @staticmethod
    def new_request_id() -> RequestId:
        return RequestId(f"mf-{uuid.uuid4().hex}")

    # ------------------------------------------------------------------ entry
    async def handle(
        self, kind: RequestKind, raw: bytes, headers: Mapping[str, str]
    ) -> JsonResult | StreamResult:
        """Answer one request (never raises for anything a client can send)."""
        rid = self.new_request_id()
        ticket: Ticket | None = None
        try:
            parsed = parse_body(kind, raw)
            ticket = self.core.open(parsed, headers, rid)
            attempt = await self._place(ticket, frozenset())
            if parsed.stream:
                return await self._stream(ticket, attempt)
            return await self._unary(ticket, attempt)
        except ApiError as e:
            self._count_error(ticket, e.status)
            return error_result(e, rid)

    def _count_error(self, ticket: Ticket | None, status: int) -> None:
        tel = self.core.telemetry
        if tel is None:
            return
        model = ticket.parsed.model if ticket is not None else ""
        pool = ticket.pool_key[1] if ticket is not None else ""
        tel.errors.labels(model, pool, str(status)).inc()

    # ------------------------------------------------------------------ place
    async def _place(self, ticket: Ticket, avoid: frozenset[str]) -> Attempt:
        slo = ticket.slo
        patience = 4.0 * (slo.ttft_ms / 1000.0 if slo is not None else 1.0)
        deadline = self.core.clock() + min(30.0, max(0.5, patience))
        tel = self.core.telemetry
        waiting = False
        where: tuple[str, str, str] = ("", "", "")
        try:
            while True:
                state = self.core.pool_of(ticket)
                if (
                    state.needs_token_ids
                    and ticket.parsed.prompt_token_ids is None
                    and ticket.tokenized_for != state.key
                ):
                    ticket.token_ids = await self._tokenize(state.served_model, ticket, avoid)
                    ticket.tokenized_for = state.key
                result = self.core.place(ticket, avoid=avoid, force=self.core.clock() >= deadline)
                if not isinstance(result, Wait):
                    return result
                if not waiting:
                    where = (*state.key, ticket.slo_class)
                    self.waiting[where] = self.waiting.get(where, 0) + 1
                    if tel is not None:
                        tel.queue_depth.labels(ticket.parsed.model).inc()
                    waiting = True
                await self.sleep(result.retry_after_s)
        finally:
            if waiting:
                self.waiting[where] -= 1
                if not self.waiting[where]:
                    del self.waiting[where]
                if tel is not None:
                    tel.queue_depth.labels(ticket.parsed.model).dec()

    async def _tokenize(
        self, model: str, ticket: Ticket, avoid: frozenset[str]
    ) -> list[int] | None:
        """The prompt's token ids from one of the pool's engines (``None`` if none answers)."""
        state = self.core.pool_of(ticket)
        body = ticket.parsed.body
        req: dict[str, Any] = {"model": model}
        if ticket.parsed.kind == "chat":
            req["messages"] = body["messages"]
            for k in ("add_generation_prompt", "continue_final_message", "add_special_tokens"):
                if k in body:
                    req[k] = body[k]
            req.setdefault("add_special_tokens", False)
        else:
            req["prompt"] = ticket.parsed.prompt_text
            if "add_special_tokens" in body:
                req["add_special_tokens"] = body["add_special_tokens"]
        for info in state.router.endpoints():
            if not info.healthy or str(info.id) in avoid:
                continue
            url = state.endpoints[info.id].url + "/tokenize"
            try:
                r = await self.client.post(url, json=req, timeout=5.0)
                data = r.json() if r.status_code == 200 else None
            except (httpx.HTTPError, ValueError, OSError):
                continue
            if isinstance(data, dict) and isinstance(data.get("tokens"), list):
                return [int(t) for t in data["tokens"]]
            return None  # the engine refused the prompt: the call itself will say why
        return None

    def _upstream_body(self, ticket: Ticket, attempt: Attempt) -> bytes:
        body = dict(ticket.parsed.body)
        body["model"] = attempt.pool.served_model
        body["request_id"] = str(ticket.request_id)
        body["return_token_ids"] = True
        return json.dumps(body).encode()

    def _request(self, ticket: Ticket, attempt: Attempt) -> httpx.Request:
        return self.client.build_request(
            "POST",
            attempt.endpoint.url + PATHS[ticket.parsed.kind],
            content=self._upstream_body(ticket, attempt),
            headers={"Content-Type": "application/json", "X-Request-Id": str(ticket.request_id)},
        )

    async def _retry(self, ticket: Ticket, attempt: Attempt, failed: _Failed) -> Attempt:
        """End ``attempt`` and place the ticket again (``ApiError`` when nothing is left)."""
        core = self.core
        log.warning(
            "request %s failed on %s before its first token (%s); placing it again",
            ticket.request_id,
            attempt.endpoint.id,
            f"{failed.reason}: {failed.__cause__!r}" if failed.__cause__ else failed.reason,
        )
        core.abandon(attempt, failed.reason, unhealthy=failed.unhealthy)
        ticket.failed_on.add(attempt.endpoint.id)
        avoid = frozenset(ticket.failed_on)
        if failed.outcome == Outcome.TIMEOUT:
            nxt = ticket.policy.selector.next_pool(
                ticket.selection,
                attempt.pool.name,
                Outcome.TIMEOUT,
                tried=[p for _, p in ticket.tried_pools],
            )
            ticket.tried_pools.append(attempt.pool.key)
            if nxt is None:
                raise ApiError(
                    504,
                    f"no first token within the cascade's timeout on pool {attempt.pool.name}",
                    err_type="server_error",
                    code="timeout",
                )
            ticket.pool_key = (attempt.pool.key[0], nxt)
        return await self._place(ticket, avoid)

    def _first_token_timeout(self, ticket: Ticket) -> float | None:
        sel = ticket.policy.spec.spec.selection
        if sel.strategy == "cascade" and "timeout" in sel.cascade.fallback_on:
            return sel.cascade.timeout_ms / 1000.0
        return None

    # ----------------------------------------------------------------- stream
    async def _open(self, ticket: Ticket, attempt: Attempt) -> Upstream:
        try:
            response = await self.client.send(self._request(ticket, attempt), stream=True)
        except _CONNECT_ERRORS as e:
            raise _Failed("connect", Outcome.ERROR) from e
        except (httpx.HTTPError, OSError) as e:
            raise _Failed(type(e).__name__, Outcome.ERROR) from e
        status = response.status_code
        if status == 200:
            return Upstream(response)
        try:
            body = await response.aread()
        except (httpx.HTTPError, OSError):
            body = b""
        finally:
            await response.aclose()
        if status == 429:
            raise _Failed("engine-429", Outcome.OVERLOAD)
        if status >= 500:
            raise _Failed(f"engine-{status}", Outcome.ERROR)
        media = response.headers.get("content-type", "application/json")
        raise _Failed(
            f"engine-{status}",
            Outcome.CLIENT_ERROR,
            passthrough=JsonResult(status, body, {}, media.split(";")[0]),
        )

    async def _first_token(self, relay: Relay) -> None:
        """Read (and hold) events until one carries a token or ends the request."""
        while True:
            try:
                payload = await relay.upstream.next_event()
            except (httpx.HTTPError, OSError) as e:
                raise _Failed(type(e).__name__, Outcome.ERROR) from e
            if payload is None:
                raise _Failed("eof-before-first-token", Outcome.ERROR)
            if payload == DONE:
                relay.held.append(payload)
                relay.finished = True
                self.core.finish(relay.attempt, "ok")
                return
            ev = _scan(payload)
            relay.account(ev)
            relay.held.append(payload)
            if ev.tokens or ev.finished or ev.error:
                return

    async def _stream(self, ticket: Ticket, attempt: Attempt) -> JsonResult | StreamResult:
        timeout = self._first_token_timeout(ticket)
        for n in range(self.max_attempts):
            upstream: Upstream | None = None
            try:
                upstream = await self._open(ticket, attempt)
                relay = Relay(self, attempt, upstream)
                if timeout is None:
                    await self._first_token(relay)
                else:
                    try:
                        await asyncio.wait_for(self._first_token(relay), timeout)
                    except TimeoutError:
                        raise _Failed("first-token-timeout", Outcome.TIMEOUT) from None
            except _Failed as failed:
                if upstream is not None:
                    upstream.close_soon(self.background)
                if failed.passthrough is not None:
                    self.core.finish(attempt, "client_error", failed.passthrough.status)
                    return failed.passthrough
                if n + 1 >= self.max_attempts:
                    self.core.finish(attempt, "error", 502)
                    raise ApiError(
                        502,
                        f"the request failed on {n + 1} engine(s) before its first token "
                        f"(last: {failed.reason})",
                        err_type="server_error",
                        code="upstream_failed",
                    ) from None
                attempt = await self._retry(ticket, attempt, failed)
                continue
            except BaseException:
                if upstream is not None:
                    upstream.close_soon(self.background)
                self.core.finish(attempt, "aborted", 499)
                raise
            headers = {**SSE_HEADERS, "X-Request-Id": str(ticket.request_id)}
            return StreamResult(relay.stream(), headers)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ unary
    async def _unary(self, ticket: Ticket, attempt: Attempt) -> JsonResult:
        for n in range(self.max_attempts):
            try:
                try:
                    response = await self.client.send(self._request(ticket, attempt))
                except _CONNECT_ERRORS as e:
                    raise _Failed("connect", Outcome.ERROR) from e
                except (httpx.HTTPError, OSError) as e:
                    raise _Failed(type(e).__name__, Outcome.ERROR) from e
                status = response.status_code
                if status == 429:
                    raise _Failed("engine-429", Outcome.OVERLOAD)
                if status >= 500:
                    raise _Failed(f"engine-{status}", Outcome.ERROR)
            except _Failed as failed:
                if n + 1 >= self.max_attempts:
                    self.core.finish(attempt, "error", 502)
                    raise ApiError(
                        502,
                        f"the request failed on {n + 1} engine(s) (last: {failed.reason})",
                        err_type="server_error",
                        code="upstream_failed",
                    ) from None
                attempt = await self._retry(ticket, attempt, failed)
                continue
            except BaseException:
                self.core.finish(attempt, "aborted", 499)
                raise
            body = response.content
            if status == 200:
                self.core.on_tokens(attempt, _completion_tokens(body), streamed=False)
                self.core.finish(attempt, "ok")
            else:
                self.core.finish(attempt, "client_error", status)
            media = response.headers.get("content-type", "application/json").split(";")[0]
            return JsonResult(status, body, {"X-Request-Id": str(ticket.request_id)}, media)
        raise AssertionError("unreachable")


def _completion_tokens(body: bytes) -> int:
    try:
        usage = json.loads(body).get("usage") or {}
        return int(usage.get("completion_tokens") or 0)
    except (ValueError, AttributeError, TypeError):
        return 0
