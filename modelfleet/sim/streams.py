"""The client side of the simulator's loop: what a live proxy streams to each client.

An engine request's tokens reach the client once: the serving copy's token ``j`` has stream
index ``stream_base + j``, and after a make-before-break switch-over the destination's tokens
the client already has are dropped. Every event goes to the request's pool's router exactly as
a live proxy reports it (first token, tokens, migrated, completed).
"""

from __future__ import annotations

from modelfleet.policy.host import Router
from modelfleet.sim.handover import MigrationExecutor
from modelfleet.sim.run import DecisionLogEntry
from modelfleet.sim.state import Handover, LiveRequest, SimEngine

__all__ = ["ClientStreams"]


class ClientStreams:
    """Mixin of :class:`~modelfleet.sim.cluster.ClusterSimulator`: delivery of engine tokens
    to the clients, completion and failure. The loop provides the state below and
    ``_flush``/``_release``/``_log``."""

    now: float
    log: bool
    live: dict[str, LiveRequest]
    erid_owner: dict[str, str]
    routers: dict[str, Router]
    engines: list[SimEngine]
    migrations: MigrationExecutor
    outstanding: int
    rejected: int

    def _flush(self, eng: SimEngine, t: float) -> None:
        raise NotImplementedError

    def _release(self, erid: str) -> None:
        raise NotImplementedError

    def _log(self, entry: DecisionLogEntry) -> None:
        raise NotImplementedError

    def _fail(self, lv: LiveRequest) -> None:
        """The engine refused the request: it is failed (counted, never silently dropped)."""
        rec = lv.rec
        rec.failed = True
        del self.live[rec.request_id]
        self.erid_owner.pop(lv.erid, None)
        self.routers[lv.pool].on_completed(lv.view.id, at=self.now)
        if self.log:
            self._log(
                DecisionLogEntry(self.now, "completed", rec.request_id, rec.endpoint, pool=lv.pool)
            )
        self.rejected += 1
        self.outstanding -= 1

    def _deliver(self, erid: str, n: int, finished: bool, t: float, cached: int) -> None:
        """``n`` new tokens of engine request ``erid`` (its last at time ``t``)."""
        rid = self.erid_owner.get(erid)
        if rid is None:
            return
        if finished:
            del self.erid_owner[erid]
            self._release(erid)
        lv = self.live.get(rid)
        if lv is None:
            return
        mig = lv.mig
        if erid == lv.erid:
            self._deliver_current(lv, n, finished, t, cached)
        elif mig is not None and erid == mig.dst_erid:
            self._deliver_dst(lv, mig, n, finished, t)

    def _stream(self, lv: LiveRequest, t: float) -> None:
        """Stream the serving copy's tokens whose stream index the client does not have yet.

        The serving engine request's token j has stream index ``stream_base + j``; after a
        switch-over the first ``delivered - stream_base`` of them are duplicates and dropped.
        """
        new = lv.stream_base + lv.produced - lv.delivered
        if new <= 0:
            return
        rec = lv.rec
        rid = lv.view.id
        router = self.routers[lv.pool]
        if lv.delivered == 0 and rec.first_token_s is None:
            rec.first_token_s = t
            router.on_first_token(rid, at=t)
            if self.log:
                self._log(DecisionLogEntry(t, "first_token", rid, rec.endpoint, pool=lv.pool))
        lv.delivered += new
        rec.output_tokens = lv.delivered
        router.on_tokens(rid, new, at=t)
        if self.log:
            self._log(DecisionLogEntry(t, "tokens", rid, rec.endpoint, n=new, pool=lv.pool))

    def _deliver_current(
        self, lv: LiveRequest, n: int, finished: bool, t: float, cached: int
    ) -> None:
        if lv.produced == 0 and lv.stream_base == 0:
            lv.rec.cached_tokens = cached
        lv.produced += n
        self._stream(lv, t)
        if finished:
            # the serving copy won the race against a migration: cancel the destination
            self.migrations.cancel(lv)
            self._complete(lv, t)

    def _deliver_dst(
        self, lv: LiveRequest, mig: Handover, n: int, finished: bool, t: float
    ) -> None:
        """The destination's first token switches the stream over (make-before-break)."""
        mig.seen += n
        self._flush(self.engines[lv.engine], t)  # the source may have finished first
        if lv.mig is not mig or lv.rec.finish_s is not None:
            return
        src, dst = self.migrations.switch_over(lv, mig)
        self.routers[lv.pool].on_migrated(lv.view.id, dst)
        if self.log:
            self._log(
                DecisionLogEntry(
                    t, "migrated", lv.view.id, dst, src=src, n=lv.delivered, pool=lv.pool
                )
            )
        self._stream(lv, t)
        if finished:
            self._complete(lv, t)

    def _complete(self, lv: LiveRequest, t: float) -> None:
        rec = lv.rec
        rec.finish_s = t
        rec.output_tokens = lv.delivered
        self.routers[lv.pool].on_completed(lv.view.id, at=t)
        if self.log:
            self._log(DecisionLogEntry(t, "completed", rec.request_id, rec.endpoint, pool=lv.pool))
        del self.live[rec.request_id]
        self.outstanding -= 1
