"""Virtual time: step engine models by a discrete-event clock instead of the wall clock.

The one driver of engine steps in virtual time, used by :class:`VirtualEngine` here and by the
cluster simulator (``modelfleet.sim.cluster``):

* :func:`start_work` starts an engine's next unit of work at ``now``: one step, or, when the
  batch is pure decode with nothing waiting, a fused burst of up to ``max_fused_steps`` steps
  that all start before ``horizon`` (``EngineCore.decode_burst``, no per-token objects). A step
  decides its batch at its start, so a request that arrives mid-step joins the next one, as in
  vLLM.
* :meth:`StepWork.take` hands out the tokens of the steps that ended by ``t``, each step once,
  as runs ``(request id, first step, end step, finish reason, cached prompt tokens)``: token
  ``i`` of a run was produced by step ``i`` and reached the client at ``ends[i]``. A caller that
  needs to act between the steps of a burst (the simulator making a decision) takes the steps
  up to then and the rest later; fused and single steps give the same tokens at the same times
  (tests compare the two bit for bit).

Each `VirtualEngine` wraps one `EngineCore` and owns its clock `now`. Engines never interact,
so each is advanced only when something needs it: `advance_to(t)` runs work while it would
*start* before `t` (a step in flight when `t` comes finishes first, like a real GPU). An idle
engine jumps to `t`. `fast=False` turns bursts off.

`VirtualCluster` holds many engines and replays a trace of (engine index, request) in
arrival order; a router that needs the state of every engine at time t calls
`advance_to(t)` first, then decides, then `submit`s.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from modelfleet.engine.core import EngineCore, EngineRequest, TokenOutput

__all__ = ["RequestRecord", "StepWork", "TokenRun", "VirtualCluster", "VirtualEngine", "start_work"]

#: ``(request id, first step, end step, finish reason or None, cached prompt tokens)``: the
#: request got one token from each step in ``[first, end)`` of a :class:`StepWork`.
TokenRun = tuple[str, int, int, str | None, int]

_NO_BURST_LIMIT = 1 << 30


class StepWork:
    """One step or one fused decode burst of an engine, and how much of it was handed out.

    ``ends[j]`` is the virtual time step ``j`` ends; ``done`` counts the steps already handed
    out by :meth:`take`. A single step carries its token ``outputs``; a burst its
    ``participants`` with the number of steps each ran (``steps_run``) and the finish reasons
    (``finished``). ``events`` is free for the caller (the simulator attaches the KV events the
    engine emitted when the work started, to deliver them when it ends).
    """

    __slots__ = ("done", "ends", "events", "finished", "outputs", "participants", "steps_run")

    def __init__(self, ends: list[float]) -> None:
        self.ends = ends
        self.done = 0
        self.outputs: list[TokenOutput] = []
        self.participants: list[str] = []
        self.steps_run: list[int] = []
        self.finished: dict[str, str] = {}
        self.events: list[object] = []

    @property
    def complete(self) -> bool:
        """Every step has been handed out."""
        return self.done == len(self.ends)

    def take(self, t: float) -> list[TokenRun] | None:
        """The token runs of the steps that ended by ``t`` and were not handed out yet.

        ``None`` when no new step ended by ``t``; a list (possibly empty) otherwise. A run's
        finish reason is set only in the take that hands out the request's last step.
        """
        ends = self.ends
        j = bisect.bisect_right(ends, t)
        lo = self.done
        if j <= lo:
            return None
        self.done = j
        if self.outputs:  # a single step: j == 1
            runs: list[TokenRun] = [
                (o.request_id, 0, 1, o.finish_reason, o.num_cached_prompt_tokens)
                for o in self.outputs
            ]
            self.outputs = []
            return runs
        finished = self.finished
        runs = []
        for rid, k in zip(self.participants, self.steps_run, strict=True):
            a = k if k < lo else lo
            b = k if k < j else j
            if b > a:
                runs.append((rid, a, b, finished.get(rid) if k <= j else None, 0))
        return runs


def start_work(
    core: EngineCore, now: float, horizon: float, max_fused_steps: int = _NO_BURST_LIMIT
) -> StepWork | None:
    """Start the engine's next step at ``now``, or a fused decode burst bounded by ``horizon``.

    A burst runs only when ``max_fused_steps > 1``, ``horizon > now`` and the batch is pure
    decode with nothing waiting (``EngineCore.can_burst``); its steps all start before
    ``horizon``. Otherwise one step runs. ``None`` when the engine has nothing to do.
    """
    if not core.has_unfinished():
        return None
    if max_fused_steps > 1 and horizon > now and core.can_burst():
        burst = core.decode_burst(now, horizon, max_fused_steps)
        if burst.step_ends:
            work = StepWork(burst.step_ends)
            work.participants = burst.participants
            work.steps_run = burst.steps_run
            work.finished = burst.finished
            return work
    res = core.step()
    if not res.scheduled and res.duration <= 0.0:
        raise RuntimeError("engine has unfinished requests but scheduled none")
    work = StepWork([now + res.duration])
    work.outputs = res.outputs
    return work


@dataclass
class RequestRecord:
    """Timestamps (virtual seconds) of one request's life on one engine."""

    request_id: str
    arrival_time: float
    num_prompt_tokens: int
    first_token_time: float | None = None
    token_times: list[float] = field(default_factory=list)
    num_output_tokens: int = 0
    finish_time: float | None = None
    finish_reason: str | None = None
    num_cached_tokens: int = 0

    @property
    def ttft(self) -> float | None:
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def e2e(self) -> float | None:
        if self.finish_time is None:
            return None
        return self.finish_time - self.arrival_time

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first (None with fewer than two tokens)."""
        if self.finish_time is None or self.first_token_time is None:
            return None
        if self.num_output_tokens < 2:
            return None
        return (self.finish_time - self.first_token_time) / (self.num_output_tokens - 1)


class VirtualEngine:
    """One engine model on a virtual clock.

    `record_token_times=False` keeps only first-token and finish times (less memory for
    long traces); counts are kept either way.
    """

    def __init__(
        self,
        core: EngineCore,
        *,
        start_time: float = 0.0,
        fast: bool = True,
        record_token_times: bool = True,
    ) -> None:
        self.core = core
        self.now = start_time
        self.fast = fast
        self.record_token_times = record_token_times
        self.records: dict[str, RequestRecord] = {}
        self.num_steps = 0

    def submit(self, req: EngineRequest) -> RequestRecord:
        """Advance to the request's arrival time and queue it (ValueError if invalid)."""
        self.advance_to(req.arrival_time)
        if req.request_id in self.records:
            raise ValueError(f"request id {req.request_id!r} was already submitted")
        self.core.add_request(req)
        rec = RequestRecord(req.request_id, req.arrival_time, len(req.prompt_token_ids))
        self.records[req.request_id] = rec
        return rec

    def abort(self, request_id: str) -> None:
        """Abort at the current virtual time."""
        rec = self.records.get(request_id)
        self.core.abort_request(request_id)
        if rec is not None and rec.finish_time is None:
            rec.finish_time = self.now
            rec.finish_reason = "abort"

    def advance_to(self, t: float) -> None:
        """Run every step that starts before `t`; an idle engine's clock jumps to `t`."""
        self._advance(t, jump_when_idle=True)

    def run_until_idle(self) -> None:
        """Step until every submitted request has finished; the clock stays at the last step end."""
        self._advance(math.inf, jump_when_idle=False)

    def _advance(self, t: float, *, jump_when_idle: bool) -> None:
        records = self.records
        keep = self.record_token_times
        limit = _NO_BURST_LIMIT if self.fast else 1
        while self.now < t:
            work = start_work(self.core, self.now, t, limit)
            if work is None:
                if jump_when_idle:
                    self.now = t
                return
            ends = work.ends
            for rid, a, b, reason, cached in work.take(math.inf) or ():
                rec = records[rid]
                if rec.first_token_time is None:
                    rec.first_token_time = ends[a]
                    rec.num_cached_tokens = cached
                if keep:
                    rec.token_times.extend(ends[a:b])
                rec.num_output_tokens += b - a
                if reason is not None:
                    rec.finish_time = ends[b - 1]
                    rec.finish_reason = reason
            self.num_steps += len(ends)
            self.now = ends[-1]


class VirtualCluster:
    """Many independent engines on one virtual timeline."""

    def __init__(self, engines: Sequence[VirtualEngine]) -> None:
        if not engines:
            raise ValueError("VirtualCluster needs at least one engine")
        self.engines = list(engines)

    def advance_to(self, t: float) -> None:
        for e in self.engines:
            e.advance_to(t)

    def submit(self, engine_index: int, req: EngineRequest) -> RequestRecord:
        if not 0 <= engine_index < len(self.engines):
            raise ValueError(
                f"engine index {engine_index} out of range (0..{len(self.engines) - 1})"
            )
        return self.engines[engine_index].submit(req)

    def run_trace(self, trace: Iterable[tuple[int, EngineRequest]]) -> dict[str, RequestRecord]:
        """Submit (engine index, request) pairs in arrival order, then drain every engine."""
        last = -math.inf
        for idx, req in trace:
            if req.arrival_time < last:
                raise ValueError(
                    f"trace not sorted by arrival_time at request {req.request_id!r} "
                    f"({req.arrival_time} < {last})"
                )
            last = req.arrival_time
            self.submit(idx, req)
        for e in self.engines:
            e.run_until_idle()
        out: dict[str, RequestRecord] = {}
        for e in self.engines:
            out.update(e.records)
        return out
