"""The cluster simulator: a discrete-event loop over engine models and the live routing host.

Algorithm. One heap of timed events in virtual seconds; ties break by insertion order, so a run
is a pure function of (trace, fleet, policy, config, seed). The policy is driven through one
:class:`~modelfleet.policy.host.Router`, the same object the live scheduler calls, fed only
what a live proxy observes: scrapes, its own stream of tokens, completions, switch-overs and
KV events. Events:

- ``ARRIVAL``: build the :class:`RequestView` a scheduler would build, refresh stale scrapes
  (engine gauges at most ``metrics_refresh_s`` old; the router's in-flight counters are always
  fresh), ``router.route`` it (the router of the request's pool), then hand the request to the
  chosen engine's front end.
- ``CORE_ARRIVAL(engine)``: the engine's API server has done its per-request work (timing
  model v2: ``timer.front_end_latency(streams)``, growing with the streams it already serves,
  as the live engine computes it) and the request reaches the engine core, which queues it or
  refuses it (too long). A refused request is *failed*, never dropped: it counts in attainment
  and as an unserved request in the latency percentiles. Migration copies go through the same
  front end.
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

Block hashes and what the policy is told of each engine (declared hardware only, unless the
run asks for the oracle): :func:`~modelfleet.sim.inputs.engine_configs` and
:func:`~modelfleet.sim.inputs.endpoint_infos`.

Pools: one :class:`Router` (and one policy instance, planner, learner) per pool of the fleet,
as a live scheduler keeps one per pool. A request names its pool (``TraceRequest.pool``, see
:func:`~modelfleet.sim.traces.assign_pools` and :func:`pool_shares`); with one pool it may name
none. It is only routed, and only migrated, among the engines of its pool.

Invariants checked at the end (:meth:`SimResult.check_conservation`): requests in = served +
failed + shed, every served request delivered exactly ``output_tokens`` tokens with no index
delivered twice, and each engine is empty.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from modelfleet.engine.core import EngineCore, EngineRequest
from modelfleet.engine.kvcache import event_hash
from modelfleet.engine.virtual import start_work
from modelfleet.policy.framework import Data
from modelfleet.policy.host import EndpointMetrics, Router
from modelfleet.policy.learn import LatencyLearner
from modelfleet.policy.types import (
    NoEndpointError,
    RequestView,
)
from modelfleet.sim.fleet import (
    EngineSpec,
)
from modelfleet.sim.handover import MigrationExecutor
from modelfleet.sim.inputs import (
    build_request_view,
    endpoint_infos,
    engine_configs,
    pool_models,
    pool_rng_seed,
    pool_shares,
    sim_next_token,
)
from modelfleet.sim.metrics import (
    LoadSample,
    PrefixBounds,
    RequestRecord,
    prefix_bounds,
)
from modelfleet.sim.outcome import (
    engine_load,
    run_counters,
    run_metrics,
    served_predictions,
    ttft_prediction,
)
from modelfleet.sim.run import DecisionLogEntry, SimConfig, SimResult
from modelfleet.sim.state import LiveRequest, SimEngine
from modelfleet.sim.streams import ClientStreams
from modelfleet.sim.traces import Trace, TraceRequest, prompt_token_ids

__all__ = [
    "ClusterSimulator",
    "DecisionLogEntry",
    "SimConfig",
    "SimResult",
    "build_request_view",
    "pool_rng_seed",
    "pool_shares",
    "sim_next_token",
]

_ARRIVAL, _STEP_END, _PLAN, _SAMPLE, _CORE_ARRIVAL = 0, 1, 2, 3, 4


class ClusterSimulator(ClientStreams):
    """Runs one trace through one policy on one fleet. Use once: ``ClusterSimulator(...).run()``.

    ``policy_factory(clock, rng)`` returns what :func:`modelfleet.policy.baselines.build_policy`
    returns (``.profile``, ``.planner``), so the simulator can inject its virtual clock and the
    seeded RNG; the simulator wraps them in one :class:`Router` per pool (``self.routers``;
    ``self.router`` is the first pool's).
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
        self.trace = trace
        self.fleet = tuple(fleet)
        self.pool_model = pool_models(trace, self.fleet)
        self.pools: tuple[str, ...] = tuple(self.pool_model)
        self.now = 0.0
        cfg = self.config
        self.policies: dict[str, Any] = {}
        self.routers: dict[str, Router] = {}
        for i, pool in enumerate(self.pools):
            policy = policy_factory(lambda: self.now, random.Random(pool_rng_seed(cfg.seed, i)))
            planner = policy.planner if cfg.enable_migration else None
            learner = LatencyLearner(cfg.learner) if cfg.perf_model == "learned" else None
            self.policies[pool] = policy
            self.routers[pool] = Router(policy.profile, planner=planner, pool=pool, learner=learner)
        self.policy = self.policies[self.pools[0]]
        self.router = self.routers[self.pools[0]]

        mean_out = trace.total_output_tokens() / max(1, len(trace))
        configs = engine_configs(self.fleet, cfg)
        for info in endpoint_infos(self.fleet, configs, cfg, mean_output_tokens=mean_out):
            self.routers[info.pool].add_endpoint(info)

        feed = cfg.feed_kv_events
        if feed is None:
            feed = any(Data.KV_EVENTS in r.consumes for r in self.routers.values())
        self.feed_kv = feed
        chain = cfg.prefix_chain
        self.chain_kind = ("engine" if feed else "trace") if chain == "auto" else chain
        self.engines: list[SimEngine] = []
        for i, (spec, ecfg) in enumerate(zip(self.fleet, configs, strict=True)):
            events: list[object] = []  # a step's KV events go out with the step's tokens
            sink = events.append if feed else None
            core = EngineCore(ecfg, next_token=sim_next_token, kv_event_sink=sink)
            self.engines.append(SimEngine(i, spec, core, events))
        self.block_size = self.engines[0].core.stats().block_size
        self.by_id = {e.id: e for e in self.engines}
        self.pool_engines = {p: [e for e in self.engines if e.pool == p] for p in self.pools}
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.live: dict[str, LiveRequest] = {}
        self.erid_owner: dict[str, str] = {}  # engine request id -> request id
        self.stream_engine: dict[str, SimEngine] = {}  # engine request id -> serving front end
        self.migrations = MigrationExecutor(
            self.engines, self._submit, self.erid_owner, self.trace.block_tokens, self._release
        )
        self.records: list[RequestRecord] = []
        self.samples: list[LoadSample] = []
        self.decisions: list[DecisionLogEntry] = []
        self.predicted_hits: dict[str, int] = {}
        self.predictions: dict[str, tuple[str, float, float]] = {}
        self.learning: list[dict[str, object]] = []
        self.rejected = 0
        self.steps = 0
        self.next_arrival_i = 0
        self.next_tick = math.inf
        self.outstanding = 0
        self.log = cfg.record_decisions

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

    def _log(self, entry: DecisionLogEntry) -> None:
        self.decisions.append(entry)

    # ------------------------------------------------------------------ snapshots
    def _flush_all(self) -> None:
        """Deliver everything that happened on every engine up to now."""
        now = self.now
        for eng in self.engines:
            if eng.work is not None:
                self._flush(eng, now)

    def _refresh(self, pool: str) -> None:
        """Deliver everything up to now, then re-scrape the pool's stale engines.

        Only the pool about to decide is scraped, and its scrapes go in the decision log, so a
        replay of one pool's log feeds its router exactly the scrapes the simulator's got.
        """
        self._flush_all()
        now = self.now
        refresh = self.config.metrics_refresh_s
        for eng in self.pool_engines[pool]:
            if refresh == 0 or now - eng.scrape_s >= refresh:
                st = eng.core.stats()
                eng.scrape = EndpointMetrics(st.num_running, st.num_waiting, st.kv_cache_usage)
                eng.scrape_s = now
                self.routers[eng.pool].update_metrics(eng.id, eng.scrape)

    def _scrapes(self, pool: str) -> tuple[EndpointMetrics, ...]:
        return tuple(e.scrape for e in self.pool_engines[pool])

    def _pool_of(self, req: TraceRequest) -> str:
        return req.pool if req.pool is not None else self.pools[0]

    def _request_view(self, req: TraceRequest) -> RequestView:
        if self.chain_kind == "trace":
            # Whole trace blocks only: a partial block is not a shareable prefix element.
            chain: tuple[int, ...] = req.block_ids[: req.input_tokens // self.trace.block_tokens]
            size = self.trace.block_tokens
        else:
            chain = self._engine_chain(req)
            size = self.block_size
        pool = self._pool_of(req)
        return build_request_view(
            req, chain, size, self.config, pool=pool, model=self.pool_model[pool]
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
        periods = [p for r in self.routers.values() if (p := r.plan_period_s) is not None]
        period = min(periods) if periods else None
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
            elif kind == _CORE_ARRIVAL:
                self._on_core_arrival(*data)
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
        metrics, per_pool = run_metrics(
            self.trace,
            self.records,
            self.samples,
            self.engines,
            migrations=mig.done,
            bounds_of=self._bounds,
            extra_of=self._extra,
        )
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
            metrics=metrics,
            steps=self.steps,
            extra={
                "learning": self.learning,
                "ttft_predictions": served_predictions(self.records, self.predictions),
            },
            arrived=len(reqs),
            pool_metrics=per_pool,
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
        pool = self._pool_of(req)
        router = self.routers[pool]
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
        self._refresh(pool)
        views = router.views() if self.log or self.config.track_predictions else ()
        try:
            decision = router.route(view)
        except NoEndpointError:
            decision = None
        chosen = "" if decision is None else decision.endpoint
        if self.log:
            scrapes = self._scrapes(pool)
            self._log(
                DecisionLogEntry(
                    self.now, "pick", req.request_id, "", view, scrapes, views, chosen, pool=pool
                )
            )
        if decision is None:
            rec.shed = True
            self.outstanding -= 1
            return
        self.predicted_hits[req.request_id] = decision.cached_tokens
        if self.config.track_predictions:
            found = ttft_prediction(
                views, decision.endpoint, req.input_tokens, decision.cached_tokens
            )
            if found is not None:
                self.predictions[req.request_id] = found
        eng = self.by_id[decision.endpoint]
        live = LiveRequest(req, view, rec, pool)
        self.live[req.request_id] = live
        live.engine = eng.index
        live.erid = req.request_id
        rec.first_endpoint = rec.endpoint = str(eng.id)
        prompt = prompt_token_ids(req, block_tokens=self.trace.block_tokens)
        try:
            self._submit(eng, live.erid, req.request_id, prompt, req.output_tokens)
        except ValueError:  # can never run there (too long): the engine refuses it at once
            self._fail(live)

    def _submit(
        self, eng: SimEngine, erid: str, rid: str, prompt: list[int], max_tokens: int
    ) -> None:
        """Send an engine request to ``eng``'s front end; it reaches the core after the front
        end's latency (at once without it: then a refusal raises ValueError here)."""
        delay = eng.core.timer.front_end_latency(eng.streams) if self.config.front_end else 0.0
        ereq = EngineRequest(
            request_id=erid,
            prompt_token_ids=prompt,
            max_tokens=max_tokens,
            ignore_eos=True,
            arrival_time=self.now + delay,
        )
        self.erid_owner[erid] = rid
        if delay <= 0:
            self._core_add(eng, ereq)
            return
        t = self.now + delay
        eng.pending.append(t)
        self._push(t, _CORE_ARRIVAL, (eng.index, t, ereq))

    def _core_add(self, eng: SimEngine, ereq: EngineRequest) -> None:
        eng.core.add_request(ereq)  # ValueError: refused
        eng.streams += 1
        self.stream_engine[ereq.request_id] = eng
        if eng.work is None:
            self._start_step(eng)

    def _release(self, erid: str) -> None:
        """The engine request ended (finished or aborted): its front end stops serving it."""
        eng = self.stream_engine.pop(erid, None)
        if eng is not None:
            eng.streams -= 1

    def _on_core_arrival(self, index: int, t: float, ereq: EngineRequest) -> None:
        """A request leaves an engine's front end and reaches its core (or is refused)."""
        eng = self.engines[index]
        eng.pending.remove(t)
        erid = ereq.request_id
        rid = self.erid_owner.get(erid)
        if rid is None:  # given up while in the front end (a cancelled migration copy)
            return
        self._flush(eng, self.now)
        try:
            self._core_add(eng, ereq)
        except ValueError:
            self.erid_owner.pop(erid, None)
            lv = self.live.get(rid)
            if lv is None:
                return
            if erid == lv.erid:
                self._fail(lv)
            elif lv.mig is not None and erid == lv.mig.dst_erid:
                self.migrations.refused(lv)
                self.routers[lv.pool].on_migration_aborted(lv.view.id)
                if self.log:
                    self._log(
                        DecisionLogEntry(
                            self.now, "migration_aborted", rid, str(eng.id), pool=lv.pool
                        )
                    )

    # ------------------------------------------------------------------ engine steps
    def _start_step(self, eng: SimEngine) -> None:
        """Start the engine's next step (or fused burst) at ``now``; idle if nothing to do."""
        eng.work = None
        limit = self.config.max_fused_steps if eng.migrating_out == 0 else 1
        horizon = self._horizon()
        if eng.pending:  # a request reaching the core joins the step after it arrives
            horizon = min(horizon, eng.next_pending())
        work = start_work(eng.core, self.now, horizon, limit)
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
                self.routers[eng.pool].on_kv_event(eng.id, ev)
                if self.log:
                    self._log(
                        DecisionLogEntry(ends[-1], "kv", endpoint=eng.id, event=ev, pool=eng.pool)
                    )
            work.events = []
        for erid, a, b, reason, cached in runs:
            self._deliver(erid, b - a, reason is not None, ends[b - 1], cached)

    # ------------------------------------------------------------------ migration
    def _plan(self) -> None:
        if not self.live:
            return
        self._flush_all()
        for pool, router in self.routers.items():
            if router.planner is None or router.in_flight == 0:
                continue
            self._refresh(pool)
            rnd = router.plan()
            if self.log:
                self._log(
                    DecisionLogEntry(
                        self.now,
                        "plan",
                        views=rnd.views,
                        scrapes=self._scrapes(pool),
                        inflight=rnd.inflight,
                        in_progress=rnd.in_progress,
                        migrations=rnd.migrations,
                        pool=pool,
                    )
                )
            for m in rnd.migrations:
                lv = self.live.get(str(m.request_id))
                if lv is not None and self.migrations.start(lv, m, self.now):
                    router.on_migration_started(m.request_id, m.dst)
                    if self.log:
                        self._log(
                            DecisionLogEntry(
                                self.now,
                                "migration_started",
                                m.request_id,
                                m.dst,
                                src=m.src,
                                pool=pool,
                            )
                        )

    # ------------------------------------------------------------------ sampling and metrics
    def _sample(self) -> None:
        loads = tuple(engine_load(eng, self.now) for eng in self.engines)
        self.samples.append(LoadSample(self.now, loads))
        for pool, router in self.routers.items():
            learner = router.learner
            if learner is None:
                continue
            for key, state in learner.variants().items():
                self.learning.append(
                    {"t": self.now, "pool": pool, "accelerator": key[0], **state.summary()}
                )

    def _bounds(self, trace: Trace, engines: Sequence[SimEngine]) -> PrefixBounds | None:
        if not self.config.compute_bounds or not trace.requests:
            return None
        cap = sum(e.core.stats().num_gpu_blocks for e in engines)
        return prefix_bounds(trace, cap, engine_block=self.block_size)

    def _extra(self, records: Sequence[RequestRecord]) -> dict[str, float]:
        mig = self.migrations
        return run_counters(
            records,
            self.predicted_hits,
            started=mig.started,
            cancelled=mig.cancelled,
            refused=mig.refused_count,
            steps=self.steps,
            rejected=self.rejected,
        )
