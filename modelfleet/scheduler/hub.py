"""Scale-out: what N scheduler replicas share, through one Ray actor.

Each replica places requests with its own routers. Two things a replica cannot see of the
others decide placement quality: the prefixes they routed (the approximate prefix index learns
only from its own decisions) and the requests they have in flight (the load counters). The
:class:`FleetHub` actor joins them:

* every ``period_s`` each replica calls :meth:`FleetHub.exchange` once, with the chains it
  routed since the last call (``(namespace, pool, endpoint, hashes)``) and its current
  in-flight counts per endpoint; it gets back the chains the *other* replicas routed since its
  cursor and the sum of the other replicas' in-flight counts per endpoint;
* the replica inserts the chains into its approximate index
  (:meth:`~modelfleet.scheduler.core.SchedulerCore.apply_peer_prefixes`) and adds the counts to
  its views (:meth:`~modelfleet.policy.host.Router.set_peer_inflight`).

The log of chains is a bounded deque (``max_log`` entries): a replica that falls further behind
than that misses chains (its index is then approximate in one more way, never wrong about
load). A replica not heard from for ``stale_s`` no longer counts in the in-flight sums (it
died; its requests went with it).

The alternative, measured side by side in ``bench/scheduler_scaleout.py``, is that every
replica subscribes to the engines' KV events (``prefixSource: kv-events``): then each replica's
precise index sees every cached block regardless of who routed it, and no actor is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from modelfleet.scheduler.core import SchedulerCore

__all__ = ["FleetHub", "HubClient", "PrefixDelta"]

log = logging.getLogger("modelfleet.scheduler.hub")

PrefixDelta = tuple[str, str, str, tuple[int | bytes, ...]]
Counts = dict[str, tuple[int, int, int]]


class FleetHub:
    """The shared state of the replicas (a Ray actor: ``ray.remote(FleetHub)``)."""

    def __init__(self, max_log: int = 200_000, stale_s: float = 5.0) -> None:
        self.max_log = max_log
        self.stale_s = stale_s
        self._log: deque[tuple[int, str, PrefixDelta]] = deque(maxlen=max_log)
        self._seq = 0
        self._inflight: dict[str, tuple[float, Counts]] = {}
        self.exchanges = 0

    def exchange(
        self, replica: str, deltas: list[PrefixDelta], inflight: Counts, cursor: int
    ) -> tuple[list[PrefixDelta], Counts, int]:
        """Publish ``replica``'s news; return the others' chains after ``cursor``, their
        summed in-flight counts, and the new cursor."""
        now = time.monotonic()
        self.exchanges += 1
        for d in deltas:
            self._seq += 1
            self._log.append((self._seq, replica, d))
        self._inflight[replica] = (now, inflight)
        news = [d for seq, r, d in self._log if seq > cursor and r != replica]
        peers: Counts = {}
        for r, (seen, counts) in list(self._inflight.items()):
            if r == replica:
                continue
            if now - seen > self.stale_s:
                del self._inflight[r]
                continue
            for ep, (a, b, c) in counts.items():
                x, y, z = peers.get(ep, (0, 0, 0))
                peers[ep] = (x + a, y + b, z + c)
        return news, peers, self._seq

    def stats(self) -> dict[str, Any]:
        return {
            "exchanges": self.exchanges,
            "log": len(self._log),
            "seq": self._seq,
            "replicas": len(self._inflight),
        }


class HubClient:
    """A replica's side: one exchange every ``period_s`` (see the module docstring)."""

    def __init__(self, hub: Any, replica: str, core: SchedulerCore, period_s: float = 0.02):
        self.hub = hub
        self.replica = replica
        self.core = core
        self.period_s = period_s
        self.cursor = 0
        self.received = 0
        self.failures = 0

    async def exchange_once(self) -> None:
        deltas = self.core.take_prefix_deltas()
        counts = self.core.inflight_counts()
        ref = self.hub.exchange.remote(self.replica, deltas, counts, self.cursor)
        news, peers, self.cursor = await ref
        self.received += self.core.apply_peer_prefixes(news)
        self.core.apply_peer_inflight(peers)

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.exchange_once()
                self.failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the hub restarting must not stop the replica
                self.failures += 1
                if self.failures in (1, 100):
                    log.warning("replica %s: hub exchange failed: %s", self.replica, e)
            with contextlib.suppress(ValueError):
                await asyncio.sleep(max(0.0, self.period_s - (time.monotonic() - started)))
