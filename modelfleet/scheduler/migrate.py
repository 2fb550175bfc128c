"""Live migration of streamed requests between engines, and the drain that uses it.

The hand-off itself runs inside the request's :class:`~modelfleet.scheduler.proxy.Relay` (the
one task that writes to the client); this module holds what it is made of and the executor
that starts hand-offs:

* :func:`not_migratable` — why a request cannot move (``None`` when it can). Following the
  measurements on stock vLLM 0.32 (``shared/reference/vllm-migration.md``): n > 1, beam
  search, structured output (``response_format``, ``guided_*``, ``structured_outputs``, a
  forced tool call), frequency or presence penalties (they count output tokens, which become
  prompt tokens on the destination) and stop strings (the engine holds back text that may
  start a stop string, and matches only its own output, so a string spanning the cut would
  be missed) are excluded. Non-streamed requests are not relayed token by token and stay
  where they are.
* :func:`handoff_body` — the destination's request: by token ids, never text (re-tokenising
  text changes the ids). Completions get ``prompt = prompt_ids + generated[:cut]``; chat keeps
  the original messages and carries the ids in ``kv_transfer_params.prompt_token_ids``
  (vLLM's token-id path for chat). ``max_tokens``/``max_completion_tokens`` and
  ``min_tokens`` are reduced by ``cut``; ``echo`` is dropped; a new ``request_id``.
* :class:`Handoff` — one hand-off in progress (destination, cut, the destination's stream).
* :class:`Migrator` — picks a destination with the pool's own placement profile (the
  candidates exclude the source, draining and unhealthy endpoints; the request's view carries
  prompt + generated ids, so the prefix scorer prefers an endpoint that holds them), starts
  hand-offs and runs drains.

Greedy requests hand off make-before-break: the source keeps feeding the client while the
destination prefills ``prompt + generated[:cut]``; every destination token the client already
has is checked against what was sent (a mismatch gives the hand-off up and the source carries
on); the stream switches when the destination reaches the client's position, and then the
source is aborted. Under sampling the source's tokens after the cut are held back and dropped
(the destination's seed restarts, so they could not be continued) and the client sees the
destination's first token next. The cut is the last position whose text delta was clean
(non-empty, not ending in U+FFFD): a cut inside a UTF-8 character would make the destination's
first delta wrong.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from modelfleet.policy.types import Decision, NoEndpointError, RequestId
from modelfleet.scheduler.fleet import EndpointSpec
from modelfleet.scheduler.protocol import ParsedRequest

if TYPE_CHECKING:
    from modelfleet.scheduler.core import SchedulerCore
    from modelfleet.scheduler.proxy import Proxy, Relay, Upstream, _Event

__all__ = [
    "DrainProgressEvent",
    "Handoff",
    "Migrator",
    "Trigger",
    "handoff_body",
    "is_greedy",
    "not_migratable",
]

Trigger = Literal["drain", "resume", "slo-rescue", "load-balance", "manual"]

_STRUCTURED = (
    "response_format",
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "guided_decoding_backend",
)


def not_migratable(parsed: ParsedRequest) -> str | None:
    """Why ``parsed`` cannot move between engines mid-stream (``None``: it can)."""
    body = parsed.body
    if not parsed.stream:
        return "not streamed"
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        return "n > 1"
    best_of = body.get("best_of")
    if isinstance(best_of, int) and best_of > 1:
        return "best_of > 1"
    if body.get("use_beam_search"):
        return "beam search"
    for key in _STRUCTURED:
        value = body.get(key)
        if value is not None and not (key == "response_format" and _plain_text(value)):
            return f"structured output ({key})"
    choice = body.get("tool_choice")
    if choice == "required" or isinstance(choice, dict):
        return "forced tool call"
    for key in ("frequency_penalty", "presence_penalty"):
        value = body.get(key)
        if isinstance(value, int | float) and value != 0:
            return key.replace("_", " ")
    stop = body.get("stop")
    if stop:
        return "stop strings"
    return None


def _plain_text(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") == "text"


def is_greedy(parsed: ParsedRequest) -> bool:
    """Greedy decoding: ``temperature`` 0 or ``top_k`` 1 (vLLM's default temperature is 1)."""
    body = parsed.body
    t = body.get("temperature")
    if isinstance(t, int | float) and not isinstance(t, bool) and t <= 1e-5:
        return True
    return body.get("top_k") == 1


def handoff_body(
    parsed: ParsedRequest,
    served_model: str,
    prompt_ids: list[int],
    generated: list[int],
    cut: int,
    request_id: str,
) -> dict[str, Any] | None:
    """The destination's request body (module docstring); ``None`` when nothing is left to
    generate after ``cut``."""
    body = dict(parsed.body)
    body["model"] = served_model
    body["request_id"] = request_id
    body["return_token_ids"] = True
    body["stream"] = True
    ids = [*prompt_ids, *generated[:cut]]
    if parsed.kind == "chat":
        params = body.get("kv_transfer_params")
        body["kv_transfer_params"] = {
            **(params if isinstance(params, dict) else {}),
            "prompt_token_ids": ids,
        }
        body.pop("echo", None)
    else:
        body["prompt"] = ids
        body.pop("echo", None)
        body.pop("suffix", None)
        if body.get("max_tokens") is None:
            body["max_tokens"] = 16  # vLLM's /v1/completions default
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int):
            if value - cut < 1:
                return None
            body[key] = value - cut
    low = body.get("min_tokens")
    if isinstance(low, int):
        body["min_tokens"] = max(0, low - cut)
    return body


@dataclass
class Handoff:
    """One hand-off in progress (the relay drives it; see the module docstring)."""

    trigger: Trigger
    dst: EndpointSpec
    decision: Decision
    cut: int
    greedy: bool
    request_id: str
    started_s: float
    frozen: bool
    #: The 1-based position of the destination's next token id.
    next_pos: int = 0
    upstream: Upstream | None = None
    opening: asyncio.Task[None] | None = None
    first_s: float | None = None
    events: list[tuple[bytes, _Event | None]] = field(default_factory=list)
    done: bool = False  # the destination sent [DONE]
    error: str | None = None
    on_end: Callable[[bool, str], None] | None = None

    def __post_init__(self) -> None:
        self.next_pos = self.cut + 1


@dataclass(frozen=True)
class DrainProgressEvent:
    """One progress report of a drain (the control API's ``DrainProgress``)."""

    endpoint: str
    state: Literal["draining", "empty", "deadline", "unknown"]
    remaining: int
    migrated: int
    completed: int
    failed: int
    elapsed_s: float


@dataclass
class _DrainRun:
    endpoint: str
    seen: set[RequestId] = field(default_factory=set)
    migrated: set[RequestId] = field(default_factory=set)
    failed: set[RequestId] = field(default_factory=set)
    tries: dict[RequestId, int] = field(default_factory=dict)
    completed: int = 0


class Migrator:
    """Starts hand-offs and runs drains for one :class:`~modelfleet.scheduler.proxy.Proxy`."""

    def __init__(
        self,
        proxy: Proxy,
        *,
        poll_s: float = 0.05,
        default_deadline_s: float = 120.0,
        max_tries: int = 3,
    ) -> None:
        self.proxy = proxy
        self.core: SchedulerCore = proxy.core
        self.poll_s = poll_s
        self.default_deadline_s = default_deadline_s
        self.max_tries = max_tries

    # -------------------------------------------------------------- choose
    def destination(
        self, relay: Relay, avoid: frozenset[str] = frozenset()
    ) -> tuple[EndpointSpec, Decision] | None:
        """Where ``relay``'s request should go: the pool's profile over the other healthy,
        non-draining endpoints, with the request's context (prompt + generated ids)."""
        attempt = relay.attempt
        state = attempt.pool
        src = attempt.endpoint.id
        views = [
            v
            for v in state.router.views()
            if str(v.id) != src and v.healthy and not v.draining and str(v.id) not in avoid
        ]
        views = [v for v in views if v.id in state.endpoints]
        if not views:
            return None
        ids = [*(relay.prompt_token_ids or []), *relay.generated_ids]
        view = replace(
            attempt.view,
            token_ids=ids,
            prompt_tokens=len(ids),
            text=None,
            max_tokens=max(1, attempt.view.max_tokens - len(relay.generated_ids)),
        )
        try:
            decision = state.router.profile.pick(view, views)
        except NoEndpointError:
            return None
        return state.endpoints[decision.endpoint], decision

    def migrate(
        self,
        relay: Relay,
        trigger: Trigger,
        *,
        avoid: frozenset[str] = frozenset(),
        on_end: Callable[[bool, str], None] | None = None,
    ) -> str | None:
        """Start moving ``relay``'s request; ``None`` when started, else why not."""
        found = self.destination(relay, avoid)
        if found is None:
            return "no destination"
        dst, decision = found
        return relay.begin_handoff(dst, decision, trigger, on_end=on_end)

    # --------------------------------------------------------------- drain
    def remaining_on(self, endpoint: str) -> list[RequestId]:
        """Requests of this scheduler whose current attempt is on ``endpoint``."""
        return [rid for rid, a in self.core.attempts.items() if a.endpoint.id == endpoint]

    async def drain(
        self,
        endpoint: str,
        deadline_s: float,
        reason: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> AsyncIterator[DrainProgressEvent]:
        """Drain ``endpoint``: no new placements, every migratable running request moved;
        yields progress until it is empty, the deadline passes, or it is unknown.

        Requests that cannot move (not streamed, excluded parameters, a hand-off that
        failed ``max_tries`` times or whose overlap check failed) finish where they are and
        are counted ``completed`` (or ``failed`` for the hand-off).
        """
        start = clock()
        deadline = start + (deadline_s if deadline_s > 0 else self.default_deadline_s)
        if self.core.find_endpoint(endpoint) is None:
            yield DrainProgressEvent(endpoint, "unknown", 0, 0, 0, 0, 0.0)
            return
        self.core.set_draining(endpoint, True)
        run = _DrainRun(endpoint)
        tel = self.core.telemetry
        last: tuple[int, int, int, int] | None = None
        last_sent = start
        state: Literal["draining", "empty", "deadline"] = "draining"
        while True:
            now_ids = set(self.remaining_on(endpoint))
            for rid in run.seen - now_ids:
                if rid not in run.migrated:
                    run.completed += 1
            run.seen = now_ids
            self._move_out(run, now_ids)
            remaining = len(now_ids)
            now = clock()
            if remaining == 0:
                state = "empty"
            elif now >= deadline:
                state = "deadline"
            counts = (remaining, len(run.migrated), run.completed, len(run.failed))
            if state != "draining" or counts != last or now - last_sent >= 0.5:
                yield DrainProgressEvent(endpoint, state, *counts, elapsed_s=now - start)
                last, last_sent = counts, now
            if state != "draining":
                if tel is not None:
                    tel.drain_seconds.labels(reason or "manual", state).observe(now - start)
                return
            await self.proxy.sleep(self.poll_s)

    def _move_out(self, run: _DrainRun, rids: set[RequestId]) -> None:
        for rid in rids:
            relay = self.proxy.relays.get(rid)
            if relay is None or relay.handoff is not None or relay.finished:
                continue
            if rid in run.failed or rid in run.migrated:
                continue
            if relay.not_migratable is not None:
                continue
            tries = run.tries.get(rid, 0)
            if tries >= self.max_tries:
                run.failed.add(rid)
                continue

            def ended(ok: bool, why: str, rid: RequestId = rid) -> None:
                if ok:
                    run.migrated.add(rid)
                elif why == "mismatch":
                    run.failed.add(rid)

            if self.migrate(relay, "drain", on_end=ended) is None:
                run.tries[rid] = tries + 1
