"""The cluster simulator: a discrete-event loop over engine models and the live routing host.

Algorithm. One heap of timed events in virtual seconds; ties break by insertion order, so a run
is a pure function of (trace, fleet, policy, config, seed). The policy is driven through one
:class:`~modelfleet.policy.host.Router`, the same object the live scheduler calls, fed only
what a live proxy observes: scrapes, its own stream of tokens, completions, switch-overs and
KV events. Events:

- ``ARRIVAL``: build the :class:`RequestView` a scheduler would build, refresh stale scrapes
  (engine gauges at most ``metrics_refresh_s`` old; the router's in-flight counters are always
  fresh), ``router.route`` it, then hand the request to the chosen engine.
- ``STEP_END(engine)``: the engine's step (or fused decode burst) started at ``t`` ends; its
  tokens are streamed then (first token and tokens -> ``router.on_first_token/on_tokens``;
  finish -> ``on_completed``), its buffered KV events go to ``router.on_kv_event``, and the
  next step starts at once if the engine has work. Steps come from the virtual-time driver
  (``modelfleet.engine.virtual``): a step decides its batch at its start, so requests that
  arrive during a step join the next one (as in vLLM), and a pure-decode batch with nothing
  waiting runs as one fused burst up to the next arrival or plan tick (never while a request
  on the engine is being migrated away, since the switch-over aborts it at another engine's
  step end). Before any decision every engine's steps that ended by then are delivered
  (``_flush``), so fused and single steps give identical runs (tested).
- ``PLAN``: every ``router.plan_period_s`` the router builds the planner's inputs from what it
  observed and the planner returns migrations; :class:`~modelfleet.sim.handover.MigrationExecutor`
  carries them out make-before-break (the destination re-prefills prompt + tokens so far, the
  source keeps streaming, the stream switches over on the destination's first token).
- ``SAMPLE``: every ``sample_period_s`` the running + waiting load per engine is recorded for
  the imbalance metric and the load-over-time plot. Samples do not split fused bursts: a
  request the burst finishes after the step in progress is counted back as running, which is
  what single stepping shows (tested).

Scrape staleness: an engine's gauges are re-read when the cached scrape is older than
``metrics_refresh_s`` at decision time (0 = read live every time). This is a poller of period
``metrics_refresh_s`` whose phase is set by the traffic; the age seen by a decision is in
``[0, metrics_refresh_s)`` like with a free-running poller.

Block hashes: by default the engines run ``prefix_caching_hash_algo="builtin"`` (Python's tuple
hash chained like vLLM's recipe: the same equality structure at a fraction of sha256's cost,
``bench/results/sim-speed.md``; tested to give the same run). Policies that consume KV events
(``Data.KV_EVENTS`` in ``router.consumes``) get the engines' own chain per request.

One pool: the fleet's engines must all be in one pool (the router serves one pool).

Invariants checked at the end (:meth:`SimResult.check_conservation`): every request finished
exactly once (or was shed), every finished request delivered exactly ``output_tokens`` tokens
with no index delivered twice, and each engine is empty.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from modelfleet.engine.core import EngineCore, EngineRequest
from modelfleet.engine.kvcache import event_hash
from modelfleet.engine.virtual import start_work
from modelfleet.policy.framework import Data
from modelfleet.policy.host import EndpointInfo, EndpointMetrics, Router
from modelfleet.policy.perf import PerfModel
from modelfleet.policy.types import EndpointId, NoEndpointError, RequestId, RequestView
from modelfleet.sim.fleet import EngineSpec, fit_perf_model, relative_speeds
from modelfleet.sim.handover import MigrationExecutor
from modelfleet.sim.metrics import (
    LoadSample,
    RequestRecord,
    RunMetrics,
    compute_metrics,
    prefix_bounds,
)
from modelfleet.sim.run import DecisionLogEntry, SimConfig, SimResult
from modelfleet.sim.state import Handover, LiveRequest, SimEngine
from modelfleet.sim.traces import Trace, TraceRequest, prompt_token_ids

__all__ = [
    "ClusterSimulator",
    "DecisionLogEntry",
    "SimConfig",
    "SimResult",
    "build_request_view",
    "sim_next_token",
]

_ARRIVAL, _STEP_END, _PLAN, _SAMPLE = 0, 1, 2, 3
_VOCAB_SPAN = 127_000


def sim_next_token(context: Sequence[int]) -> int:
    """Greedy 'model' of the simulator: a pure O(1) function of the context (last id, length).

    It is a function of the full context in the sense the migration needs (a continuation from
    any cut point reproduces the same tokens) and never produces the ids below 1000.
    """
    return 1_000 + (context[-1] * 2_654_435_761 + len(context) * 40_503) % _VOCAB_SPAN


def build_request_view(
    req: TraceRequest,
    chain: Sequence[int],
    chain_block_size: int,
    config: SimConfig,
    *,
    pool: str,
    model: str,
) -> RequestView:
    """The RequestView a scheduler would build for a trace request.

    ``block_hashes`` is the given chain (trace block ids, or the engine's vLLM chain when the
    policy reads KV events); ``token_ids`` carries the trace block ids as coarse "tokens" for
    policies that match raw prompts (the cache-aware radix tree), one symbol per
    ``chain_block_size``-token trace block — materialising 145 M real token ids as text would
    dominate the run time.
    """
    return RequestView(
        id=RequestId(req.request_id),
        pool=pool,
        model=model,
        prompt_tokens=req.input_tokens,
        token_ids=req.block_ids,
        block_hashes=tuple(chain),
        block_size=chain_block_size,
        session_id=req.session_id,
        headers={"x-session-id": req.session_id} if req.session_id else {},
        slo_class=config.slo_class,
        ttft_slo_s=config.ttft_slo_s,
        tpot_slo_s=config.tpot_slo_s,
        max_tokens=req.output_tokens,
        arrival_s=req.arrival_s,
    )


class ClusterSimulator:
    """Runs one trace through one policy on one fleet. Use once: ``ClusterSimulator(...).run()``.

    ``policy_factory(clock, rng)`` returns what :func:`modelfleet.policy.baselines.build_policy`
    returns (``.profile``, ``.planner``), so the simulator can inject its virtual clock and the
    seeded RNG; the simulator wraps them in its :class:`Router` (``self.router``).
    """

    def __init__(
        self,
        trace: Trace,
        fleet: Sequence[EngineSpec],
        policy_factory: Callable[[Callable[[], float], random.Random], Any],
        config: SimConfig | None = None,
    ) -> None:
        self.config = config or SimConfig()
        self.config.validate()
        if not fleet:
            raise ValueError("fleet must contain at least one engine")
        ids = [s.id for s in fleet]
        if len(set(ids)) != len(ids):
            raise ValueError(f"engine ids must be unique, got {ids}")
        pools = sorted({s.pool for s in fleet})
        if len(pools) > 1:
            raise ValueError(f"the simulator runs one pool; the fleet has pools {pools}")
        self.trace = trace
        self.fleet = tuple(fleet)
        self.now = 0.0
        self.policy = policy_factory(lambda: self.now, random.Random(self.config.seed))
        planner = self.policy.planner if self.config.enable_migration else None
        self.router = Router(self.policy.profile, planner=planner, pool=self.fleet[0].pool)

        speeds = relative_speeds(self.fleet)
        mean_out = trace.total_output_tokens() / max(1, len(trace))
        perf_cache: dict[tuple[object, ...], PerfModel] = {}
        configs = []
        for spec in self.fleet:
            cfg = spec.engine_config()
            if self.config.fast_block_hash:
                cfg = dataclasses.replace(cfg, prefix_caching_hash_algo="builtin")
            key = (
                cfg.accelerator,
                cfg.model,
                cfg.tensor_parallel_size,
                cfg.max_num_batched_tokens,
                cfg.max_num_seqs,
            )
            if key not in perf_cache:
                perf_cache[key] = fit_perf_model(cfg, mean_output_tokens=mean_out)
            configs.append(cfg)
            self.router.add_endpoint(
                EndpointInfo(
                    id=EndpointId(spec.id),
                    pool=spec.pool,
                    model=spec.model,
                    accelerator=spec.accelerator,
                    relative_speed=speeds[spec.id],
                    perf=perf_cache[key],
                )
            )

        feed = self.config.feed_kv_events
        if feed is None:
            feed = Data.KV_EVENTS in self.router.consumes
        self.feed_kv = feed
        chain = self.config.prefix_chain
        self.chain_kind = ("engine" if feed else "trace") if chain == "auto" else chain
        self.engines: list[SimEngine] = []
        for i, (spec, cfg) in enumerate(zip(self.fleet, configs, strict=True)):
            events: list[object] = []
            core = EngineCore(
                cfg, next_token=sim_next_token, kv_event_sink=events.append if feed else None
            )
            self.engines.append(SimEngine(i, spec, core, events))
        self.block_size = self.engines[0].core.stats().block_size
        self.by_id = {e.id: e for e in self.engines}
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.live: dict[str, LiveRequest] = {}
        self.erid_owner: dict[str, str] = {}  # engine request id -> request id
        self.migrations = MigrationExecutor(
            self.engines, self._submit, self.erid_owner, self.trace.block_tokens
        )
        self.records: list[RequestRecord] = []
        self.samples: list[LoadSample] = []
        self.decisions: list[DecisionLogEntry] = []
        self.rejected = 0
        self.steps = 0
        self.next_arrival_i = 0
        self.next_tick = math.inf
        self.outstanding = 0
        self.log = self.config.record_decisions

    # ------------------------------------------------------------------ event plumbing
    def _push(self, t: float, kind: int, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, data))

    def _horizon(self) -> float:
        """Time of the next event that can change an engine's batch (arrival, planner tick)."""
        t = self.next_tick
        if self.next_arrival_i < len(self.trace.requests):
            t = min(t, self.trace.requests[self.next_arrival_i].arrival_s)
        return t

    def _record(self, entry: DecisionLogEntry) -> None:
        self.decisions.append(entry)

    # ------------------------------------------------------------------ snapshots
    def _refresh(self) -> None:
        """Deliver everything that happened up to now, then re-scrape every stale engine."""
        now = self.now
        for eng in self.engines:
            if eng.work is not None:
                self._flush(eng, now)
        refresh = self.config.metrics_refresh_s
        for eng in self.engines:
            if refresh == 0 or now - eng.scrape_s >= refresh:
                st = eng.core.stats()
                eng.scrape = EndpointMetrics(st.num_running, st.num_waiting, st.kv_cache_usage)
                eng.scrape_s = now
                self.router.update_metrics(eng.id, eng.scrape)

    def _scrapes(self) -> tuple[EndpointMetrics, ...]:
        return tuple(e.scrape for e in self.engines)

    def _request_view(self, req: TraceRequest) -> RequestView:
        if self.chain_kind == "trace":
            # Whole trace blocks only: a partial block is not a shareable prefix element.
            chain: tuple[int, ...] = req.block_ids[: req.input_tokens // self.trace.block_tokens]
            size = self.trace.block_tokens
        else:
            chain = self._engine_chain(req)
            size = self.block_size
        return build_request_view(
            req, chain, size, self.config, pool=self.fleet[0].pool, model=self.fleet[0].model
        )

    def _engine_chain(self, req: TraceRequest) -> tuple[int, ...]:
        """The engine's own block-hash chain of the prompt, as its KV events publish it."""
        core = self.engines[0].core
        ids = prompt_token_ids(req, block_tokens=self.trace.block_tokens)
        digests = core.hasher.hashes(ids)
        as_int = core.config.kv_events_int_hashes
        return tuple(event_hash(d, as_int=as_int) for d in digests)  # type: ignore[misc]

    # ------------------------------------------------------------------ run
    def run(self) -> SimResult:
        reqs = self.trace.requests
        self.outstanding = len(reqs)
        period = self.router.plan_period_s
        if reqs:
            self.now = reqs[0].arrival_s
            self._push(self.now, _ARRIVAL, 0)
            self._push(self.now, _SAMPLE, None)
            if period is not None:
                self._push(self.now + period, _PLAN, period)
        self._update_tick()
        heap = self.heap
        while heap:
            t, _seq, kind, data = heapq.heappop(heap)
            self.now = t
            if kind == _STEP_END:
                eng = self.engines[data]
                self._flush(eng, t)
                self._start_step(eng)
            elif kind == _ARRIVAL:
                self.next_arrival_i = data + 1
                if data + 1 < len(reqs):
                    self._push(reqs[data + 1].arrival_s, _ARRIVAL, data + 1)
                self._on_arrival(reqs[data])
            elif kind == _SAMPLE:
                self._sample()
                if self.outstanding > 0:
                    self._push(t + self.config.sample_period_s, _SAMPLE, None)
                self._update_tick()
            elif kind == _PLAN:
                self._plan()
                if self.outstanding > 0:
                    self._push(t + data, _PLAN, data)
                self._update_tick()
        leftovers = sum(1 for e in self.engines if e.core.has_unfinished())
        mig = self.migrations
        return SimResult(
            records=self.records,
            samples=self.samples,
            endpoint_ids=tuple(e.id for e in self.engines),
            migrations_started=mig.started,
            migrations_done=mig.done,
            migrations_cancelled=mig.cancelled,
            token_mismatches=mig.mismatches,
            token_gaps=mig.gaps,
            engine_leftovers=leftovers,
            decisions=self.decisions,
            metrics=self._metrics(),
            steps=self.steps,
        )

    def _update_tick(self) -> None:
        # Only planner ticks bound fused steps: a load sample just reads the gauges, so it may
        # see an engine up to one fused burst ahead (tens of ms), which the imbalance metric
        # does not notice, while splitting every burst at every sample costs a visible share of
        # a run.
        ticks = [t for (t, _s, k, _d) in self.heap if k == _PLAN]
        self.next_tick = min(ticks) if ticks else math.inf

    # ------------------------------------------------------------------ arrivals
    def _on_arrival(self, req: TraceRequest) -> None:
        view = self._request_view(req)
        rec = RequestRecord(
            request_id=req.request_id,
            arrival_s=req.arrival_s,
            prompt_tokens=req.input_tokens,
            max_tokens=req.output_tokens,
            ttft_slo_s=self.config.ttft_slo_s,
            tpot_slo_s=self.config.tpot_slo_s,
            slo_class=self.config.slo_class,
        )
        self.records.append(rec)
        self._refresh()
        views = self.router.views() if self.log else ()
        try:
            decision = self.router.route(view)
        except NoEndpointError:
            rec.shed = True
            self.outstanding -= 1
            if self.log:
                self._record(
                    DecisionLogEntry(
                        self.now, "pick", req.request_id, "", view, self._scrapes(), views
                    )
                )
            return
        chosen = decision.endpoint
        if self.log:
            self._record(
                DecisionLogEntry(
                    self.now, "pick", req.request_id, "", view, self._scrapes(), views, chosen
                )
            )
        eng = self.by_id[chosen]
        live = LiveRequest(req, view, rec)
        self.live[req.request_id] = live
        live.engine = eng.index
        live.erid = req.request_id
        rec.first_endpoint = rec.endpoint = str(eng.id)
        prompt = prompt_token_ids(req, block_tokens=self.trace.block_tokens)
        try:
            self._submit(eng, live.erid, req.request_id, prompt, req.output_tokens)
        except ValueError:  # can never run there (too long): the engine rejects it
            rec.shed = True
            del self.live[req.request_id]
            self.erid_owner.pop(live.erid, None)
            self.router.on_completed(view.id)
            if self.log:
                self._record(DecisionLogEntry(self.now, "completed", req.request_id, chosen))
            self.rejected += 1
            self.outstanding -= 1

    def _submit(
        self, eng: SimEngine, erid: str, rid: str, prompt: list[int], max_tokens: int
    ) -> None:
        eng.core.add_request(
            EngineRequest(
                request_id=erid,
                prompt_token_ids=prompt,
                max_tokens=max_tokens,
                ignore_eos=True,
                arrival_time=self.now,
            )
        )
        self.erid_owner[erid] = rid
        if eng.work is None:
            self._start_step(eng)

    # ------------------------------------------------------------------ engine steps
    def _start_step(self, eng: SimEngine) -> None:
        """Start the engine's next step (or fused burst) at ``now``; idle if nothing to do."""
        eng.work = None
        limit = self.config.max_fused_steps if eng.migrating_out == 0 else 1
        work = start_work(eng.core, self.now, self._horizon(), limit)
        if work is None:
            return
        if eng.events:
            work.events = list(eng.events)
            eng.events.clear()
        self.steps += len(work.ends)
        eng.work = work
        self._push(work.ends[-1], _STEP_END, eng.index)

    def _flush(self, eng: SimEngine, t: float) -> None:
        """Deliver the tokens of every step of the engine's current work that ended by ``t``."""
        work = eng.work
        if work is None:
            return
        runs = work.take(t)
        if runs is None:
            return
        ends = work.ends
        if work.complete and work.events:
            for ev in work.events:
                self.router.on_kv_event(eng.id, ev)
                if self.log:
                    self._record(DecisionLogEntry(ends[-1], "kv", endpoint=eng.id, event=ev))
            work.events = []
        for erid, a, b, reason, cached in runs:
            self._deliver(erid, b - a, reason is not None, ends[b - 1], cached)

    def _deliver(self, erid: str, n: int, finished: bool, t: float, cached: int) -> None:
        """``n`` new tokens of engine request ``erid`` (its last at time ``t``)."""
        rid = self.erid_owner.get(erid)
        if rid is None:
            return
        if finished:
            del self.erid_owner[erid]
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
        if lv.delivered == 0 and rec.first_token_s is None:
            rec.first_token_s = t
            self.router.on_first_token(rid, at=t)
            if self.log:
                self._record(DecisionLogEntry(t, "first_token", rid, rec.endpoint))
        lv.delivered += new
        rec.output_tokens = lv.delivered
        self.router.on_tokens(rid, new, at=t)
        if self.log:
            self._record(DecisionLogEntry(t, "tokens", rid, rec.endpoint, n=new))

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
        self.router.on_migrated(lv.view.id, dst)
        if self.log:
            self._record(DecisionLogEntry(t, "migrated", lv.view.id, dst, src=src, n=lv.delivered))
        self._stream(lv, t)
        if finished:
            self._complete(lv, t)

    def _complete(self, lv: LiveRequest, t: float) -> None:
        rec = lv.rec
        rec.finish_s = t
        rec.output_tokens = lv.delivered
        self.router.on_completed(lv.view.id)
        if self.log:
            self._record(DecisionLogEntry(t, "completed", rec.request_id, rec.endpoint))
        del self.live[rec.request_id]
        self.outstanding -= 1

    # ------------------------------------------------------------------ migration
    def _plan(self) -> None:
        if self.router.planner is None or not self.live:
            return
        self._refresh()
        rnd = self.router.plan()
        if self.log:
            self._record(
                DecisionLogEntry(
                    self.now,
                    "plan",
                    views=rnd.views,
                    scrapes=self._scrapes(),
                    inflight=rnd.inflight,
                    in_progress=rnd.in_progress,
                    migrations=rnd.migrations,
                )
            )
        for m in rnd.migrations:
            lv = self.live.get(str(m.request_id))
            if lv is not None and self.migrations.start(lv, m, self.now):
                self.router.on_migration_started(m.request_id, m.dst)
                if self.log:
                    self._record(
                        DecisionLogEntry(
                            self.now, "migration_started", m.request_id, m.dst, src=m.src
                        )
                    )

    # ------------------------------------------------------------------ sampling and metrics
    def _sample(self) -> None:
        loads = []
        for eng in self.engines:
            st = eng.core.stats()
            running = st.num_running
            work = eng.work
            if work is not None and work.participants and work.finished:
                # Mid-burst the core is already past the sample time: put back the requests
                # that finish in a later step than the one in progress now (single-step view).
                j = bisect.bisect_right(work.ends, self.now) + 1
                running += sum(
                    1
                    for erid, k in zip(work.participants, work.steps_run, strict=True)
                    if k > j and erid in work.finished
                )
            loads.append(running + st.num_waiting)
        self.samples.append(LoadSample(self.now, tuple(loads)))

    def _metrics(self) -> RunMetrics:
        bounds = None
        if self.config.compute_bounds and self.trace.requests:
            cap = sum(e.core.stats().num_gpu_blocks for e in self.engines)
            bounds = prefix_bounds(self.trace, cap, engine_block=self.block_size)
        return compute_metrics(
            self.records,
            self.samples,
            [str(e.id) for e in self.engines],
            migrations=self.migrations.done,
            bounds=bounds,
            extra={
                "migrations_started": float(self.migrations.started),
                "migrations_cancelled": float(self.migrations.cancelled),
                "engine_steps": float(self.steps),
                "rejected_by_engine": float(self.rejected),
            },
        )
