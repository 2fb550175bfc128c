"""Virtual time: step engine models by a discrete-event clock instead of the wall clock.

Each `VirtualEngine` wraps one `EngineCore` and owns its clock `now`. Engines never interact,
so each is advanced only when something needs it: `advance_to(t)` runs steps while a step
would *start* before `t` (a step in flight when `t` comes finishes first, like a real GPU; a
request that arrives mid-step is scheduled at the next step start). An idle engine jumps to `t`.

Fast path: when the engine is in pure decode with nothing waiting, `EngineCore.decode_burst`
runs many steps back to back without per-token objects; token timestamps are appended as
slices of the burst's step end times. It produces exactly the timestamps, tokens, blocks
and counters of stepping one at a time (tests compare the two bit for bit); `fast=False`
turns it off.

`VirtualCluster` holds many engines and replays a trace of (engine index, request) in
arrival order; a router that needs the state of every engine at time t calls
`advance_to(t)` first, then decides, then `submit`s.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from modelfleet.engine.core import EngineCore, EngineRequest

__all__ = ["RequestRecord", "VirtualCluster", "VirtualEngine"]


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
        core = self.core
        records = self.records
        keep = self.record_token_times
        while self.now < t:
            if not core.has_unfinished():
                if jump_when_idle:
                    self.now = t
                return
            if self.fast and core.can_burst():
                burst = core.decode_burst(self.now, t)
                ends = burst.step_ends
                if ends:
                    finished = burst.finished
                    for rid, k in zip(burst.participants, burst.steps_run, strict=True):
                        if k == 0:
                            continue
                        rec = records[rid]
                        if keep:
                            rec.token_times.extend(ends[:k])
                        rec.num_output_tokens += k
                        reason = finished.get(rid)
                        if reason is not None:
                            rec.finish_time = ends[k - 1]
                            rec.finish_reason = reason
                    self.num_steps += len(ends)
                    self.now = ends[-1]
                    continue
            result = core.step()
            if result.duration <= 0.0 and not result.scheduled:
                raise RuntimeError("engine has unfinished requests but scheduled nothing")
            self.now += result.duration
            self.num_steps += 1
            now = self.now
            for out in result.outputs:
                rec = records[out.request_id]
                if rec.first_token_time is None:
                    rec.first_token_time = now
                    rec.num_cached_tokens = out.num_cached_prompt_tokens
                if keep:
                    rec.token_times.append(now)
                rec.num_output_tokens += 1
                if out.finished:
                    rec.finish_time = now
                    rec.finish_reason = out.finish_reason


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
