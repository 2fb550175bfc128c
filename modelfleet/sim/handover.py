"""Make-before-break execution of planned migrations on the simulated engines.

The planner (``modelfleet.policy.migration``) says *what* to move; :class:`MigrationExecutor`
does it the way a live proxy would:

1. **Start** (:meth:`~MigrationExecutor.start`): the destination gets the prompt plus the tokens
   the client already has as a new prompt (so it re-prefills all of it minus its own prefix
   hits, the real cost) and the remaining token budget. The source keeps decoding and
   streaming meanwhile.
2. **Switch over** (:meth:`~MigrationExecutor.switch_over`), when the destination's first token
   arrives: the source copy is aborted, tokens the client already has are dropped, every later
   token comes from the destination. Generation is a pure function of the context, so the
   destination's tokens must equal the source's at the same stream indices; mismatches and
   gaps are counted (:meth:`SimResult.check_conservation` fails on any).
3. **Cancel** (:meth:`~MigrationExecutor.cancel`): if the source finishes first, the
   destination copy is aborted. **Refused** (:meth:`~MigrationExecutor.refused`): the
   destination's engine refused the copy when it reached its core (after the front end); the
   request keeps running where it is.

A request moves at most once at a time; a plan entry that no longer applies (the request
finished, moved or is already moving, or has at most one token left) is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from modelfleet.policy.migration import Migration
from modelfleet.policy.types import EndpointId
from modelfleet.sim.state import Handover, LiveRequest, SimEngine
from modelfleet.sim.traces import prompt_token_ids

#: ``submit(engine, engine request id, request id, prompt ids, max tokens)``; ValueError if the
#: engine refuses the request at once (too long for it). With a front-end delay the refusal
#: comes later, through :meth:`MigrationExecutor.refused`.
Submit = Callable[[SimEngine, str, str, list[int], int], None]
#: ``release(engine request id)``: a copy was aborted; the engine's front end stops serving it.
Release = Callable[[str], None]


class MigrationExecutor:
    """Carries out migrations on the engines of one run and counts what happened."""

    def __init__(
        self,
        engines: Sequence[SimEngine],
        submit: Submit,
        erid_owner: dict[str, str],
        block_tokens: int,
        release: Release | None = None,
    ) -> None:
        self.engines = engines
        self.by_id: Mapping[EndpointId, SimEngine] = {e.id: e for e in engines}
        self.submit = submit
        self.release: Release = release or (lambda erid: None)
        self.erid_owner = erid_owner  # engine request id -> request id, shared with the loop
        self.block_tokens = block_tokens
        self.started = 0
        self.done = 0
        self.cancelled = 0
        self.refused_count = 0
        self.mismatches = 0
        self.gaps = 0

    def generated(self, lv: LiveRequest) -> list[int]:
        """Every token generated for the request so far by its serving copy (stream order)."""
        core = self.engines[lv.engine].core
        try:
            own = core.output_token_ids(lv.erid)
        except KeyError:
            own = []
        return lv.prefix_tokens + list(own)

    def start(self, lv: LiveRequest, m: Migration, now: float) -> bool:
        """Start the destination copy for ``m``; False if the plan entry no longer applies."""
        if lv.mig is not None or str(m.src) != lv.rec.endpoint:
            return False
        dst = self.by_id.get(EndpointId(str(m.dst)))
        if dst is None or dst.index == lv.engine:
            return False
        if dst.pool != self.engines[lv.engine].pool:
            raise AssertionError(
                f"migration of {lv.req.request_id} from pool {self.engines[lv.engine].pool!r} "
                f"to {dst.pool!r}: migrations never cross pools"
            )
        g = lv.delivered
        remaining = lv.req.output_tokens - g
        if remaining <= 1:
            return False
        generated = self.generated(lv)[:g]
        if len(generated) < g:
            # The engine already finished it (its last tokens are still in flight to the
            # client): there is nothing left to move.
            return False
        lv.attempts += 1
        erid = f"{lv.req.request_id}~m{lv.attempts}"
        prompt = prompt_token_ids(lv.req, block_tokens=self.block_tokens) + generated
        try:
            self.submit(dst, erid, lv.req.request_id, prompt, remaining)
        except ValueError:
            self.erid_owner.pop(erid, None)
            return False
        lv.mig = Handover(dst.index, erid, generated, now, m)
        self.engines[lv.engine].migrating_out += 1
        self.started += 1
        return True

    def cancel(self, lv: LiveRequest) -> None:
        """The serving copy won the race: abort the destination copy."""
        mig = lv.mig
        if mig is None:
            return
        self.engines[lv.engine].migrating_out -= 1
        self.engines[mig.dst].core.abort_request(mig.dst_erid)
        self.erid_owner.pop(mig.dst_erid, None)
        self.release(mig.dst_erid)
        lv.mig = None
        self.cancelled += 1

    def refused(self, lv: LiveRequest) -> None:
        """The destination refused the copy when it reached its core: give the move up."""
        mig = lv.mig
        if mig is None:
            return
        self.engines[lv.engine].migrating_out -= 1
        lv.mig = None
        self.refused_count += 1

    def switch_over(self, lv: LiveRequest, mig: Handover) -> tuple[EndpointId, EndpointId]:
        """Make the destination copy the serving one; returns (source, destination).

        Precondition: the source's tokens up to now were delivered, the request is still
        streaming and ``mig`` is its handover in progress.
        """
        src = self.engines[lv.engine]
        self._check_continuation(lv, mig)
        src.migrating_out -= 1
        src.core.abort_request(lv.erid)
        self.erid_owner.pop(lv.erid, None)
        self.release(lv.erid)
        rec = lv.rec
        src_id = EndpointId(rec.endpoint)
        lv.erid = mig.dst_erid
        lv.engine = mig.dst
        lv.stream_base = mig.base
        lv.produced = mig.seen
        lv.prefix_tokens = mig.prefix_tokens
        lv.mig = None
        dst_id = self.engines[mig.dst].id
        rec.endpoint = str(dst_id)
        rec.migrations += 1
        self.done += 1
        return src_id, dst_id

    def _check_continuation(self, lv: LiveRequest, mig: Handover) -> None:
        """The destination's tokens must equal the source's at the same stream indices."""
        src_all = self.generated(lv)
        try:
            dst_out = self.engines[mig.dst].core.output_token_ids(mig.dst_erid)
        except KeyError:
            return
        overlap = src_all[mig.base : mig.base + len(dst_out)]
        self.mismatches += sum(1 for a, b in zip(overlap, dst_out, strict=False) if a != b)
        if mig.base > lv.delivered:
            self.gaps += mig.base - lv.delivered
