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

Block hashes: by default the engines run ``prefix_caching_hash_algo="builtin"`` (Python's tuple
hash chained like vLLM's recipe: the same equality structure at a fraction of sha256's cost,
``bench/results/sim-speed.md``; tested to give the same run). Policies that consume KV events
(``Data.KV_EVENTS`` in ``router.consumes``) get the engines' own chain per request.

Pools: one :class:`Router` (and one policy instance, planner, learner) per pool of the fleet,
as a live scheduler keeps one per pool. A request names its pool (``TraceRequest.pool``, see
:func:`~modelfleet.sim.traces.assign_pools` and :func:`pool_shares`); with one pool it may name
none. It is only routed, and only migrated, among the engines of its pool.

What the policy knows of each engine is what a cluster declares
(:func:`~modelfleet.sim.fleet.declared_hardware`): its prior latency model and relative speed
come from the declared speeds (possibly wrong on purpose, ``SimConfig.prior_error``), its
prefix-index capacity from the declared memory; ``SimConfig.perf_model`` says whether the
routing host learns from observations (default), keeps the prior, or gets the oracle fitted to
the engines (a labelled upper bound).

Invariants checked at the end (:meth:`SimResult.check_conservation`): requests in = served +
failed + shed, every served request delivered exactly ``output_tokens`` tokens with no index
delivered twice, and each engine is empty.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from modelfleet.engine.core import EngineCore, EngineRequest
from modelfleet.engine.kvcache import event_hash
from modelfleet.engine.virtual import start_work
from modelfleet.policy.framework import Data
from modelfleet.policy.host import EndpointInfo, EndpointMetrics, Router
from modelfleet.policy.learn import LatencyLearner
from modelfleet.policy.perf import PerfModel, central_model, predict_ttft
from modelfleet.policy.prior import kv_capacity_tokens, prior_perf_model
from modelfleet.policy.types import (
    EndpointId,
    EndpointView,
    NoEndpointError,
    RequestId,
    RequestView,
)
from modelfleet.sim.fleet import (
    EngineSpec,
    declared_hardware,
    fit_perf_model,
    relative_speeds,
)
from modelfleet.sim.handover import MigrationExecutor
from modelfleet.sim.metrics import (
    LoadSample,
    PrefixBounds,
    RequestRecord,
    RunMetrics,
    compute_metrics,
    load_imbalance,
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
    "pool_rng_seed",
    "pool_shares",
    "sim_next_token",
]

_ARRIVAL, _STEP_END, _PLAN, _SAMPLE, _CORE_ARRIVAL = 0, 1, 2, 3, 4
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


def pool_rng_seed(seed: int, index: int) -> int:
    """The RNG seed of the policy of the ``index``-th pool (the run's seed for the first)."""
    return seed if index == 0 else seed * 1_000_003 + index


def pool_shares(
    fleet: Sequence[EngineSpec], prior_error: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Model-size-aware shares of traffic per pool, for :func:`~.traces.assign_pools`.

    A pool's share is its declared prefill capacity (sum over its engines of prefill speed x
    GPUs) over its model's parameter count: a Llama-3-70B replica on 4 GPUs serves about as
    many prompt tokens per second as a Llama-3-8B one on 2, so a pool of each gets shares in
    that proportion and every pool is about equally loaded. Declared numbers only.
    """
    cap: dict[str, float] = {}
    for spec in fleet:
        hw = declared_hardware(spec, prior_error=prior_error)
        cap[spec.pool] = cap.get(spec.pool, 0.0) + hw.prefill_speed * hw.gpus / hw.model_params
    total = sum(cap.values())
    return {p: c / total for p, c in cap.items()}


class ClusterSimulator:
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
        if not fleet:
            raise ValueError("fleet must contain at least one engine")
        ids = [s.id for s in fleet]
        if len(set(ids)) != len(ids):
            raise ValueError(f"engine ids must be unique, got {ids}")
        self.trace = trace
        self.fleet = tuple(fleet)
        self.pools: tuple[str, ...] = tuple(dict.fromkeys(s.pool for s in self.fleet))
        models: dict[str, str] = {}
        for spec in self.fleet:
            if models.setdefault(spec.pool, spec.model) != spec.model:
                raise ValueError(f"pool {spec.pool!r} has engines of two models")
        self.pool_model = models
        named = set(trace.pools())
        unknown = sorted(named - set(self.pools))
        if unknown:
            raise ValueError(
                f"trace requests name pools {unknown}, the fleet has {list(self.pools)}"
            )
        if len(self.pools) > 1 and any(r.pool is None for r in trace.requests):
            raise ValueError(
                f"the fleet has pools {list(self.pools)}: every request must name its pool "
                "(traces.assign_pools(trace, pool_shares(fleet)))"
            )
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

        speeds = relative_speeds(self.fleet, cfg.prior_error)
        mean_out = trace.total_output_tokens() / max(1, len(trace))
        perf_cache: dict[tuple[object, ...], PerfModel] = {}
        configs = []
        self.kv_capacity: dict[str, int] = {}
        for spec in self.fleet:
            ecfg = spec.engine_config()
            if cfg.fast_block_hash:
                ecfg = dataclasses.replace(ecfg, prefix_caching_hash_algo="builtin")
            configs.append(ecfg)
            hw = declared_hardware(spec, prior_error=cfg.prior_error, mean_output_tokens=mean_out)
            key = (
                ecfg.accelerator,
                ecfg.model,
                ecfg.tensor_parallel_size,
                ecfg.max_num_batched_tokens,
                ecfg.max_num_seqs,
                hw,
            )
            if key not in perf_cache:
                if cfg.perf_model == "oracle":
                    perf_cache[key] = fit_perf_model(ecfg, mean_output_tokens=mean_out)
                else:
                    perf_cache[key] = prior_perf_model(hw)
            capacity = kv_capacity_tokens(hw)
            self.kv_capacity[spec.id] = capacity
            self.routers[spec.pool].add_endpoint(
                EndpointInfo(
                    id=EndpointId(spec.id),
                    pool=spec.pool,
                    model=spec.model,
                    accelerator=spec.accelerator,
                    relative_speed=speeds[spec.id],
                    perf=perf_cache[key],
                    tensor_parallel_size=spec.tensor_parallel_size,
                    kv_capacity_tokens=capacity if cfg.size_prefix_index else 0,
                )
            )

        feed = cfg.feed_kv_events
        if feed is None:
            feed = any(Data.KV_EVENTS in r.consumes for r in self.routers.values())
        self.feed_kv = feed
        chain = cfg.prefix_chain
        self.chain_kind = ("engine" if feed else "trace") if chain == "auto" else chain
        self.engines: list[SimEngine] = []
        for i, (spec, ecfg) in enumerate(zip(self.fleet, configs, strict=True)):
            events: list[object] = []
            core = EngineCore(
                ecfg, next_token=sim_next_token, kv_event_sink=events.append if feed else None
            )
            self.engines.append(SimEngine(i, spec, core, events))
        self.block_size = self.engines[0].core.stats().block_size
        self.by_id = {e.id: e for e in self.engines}
        self.pool_engines: dict[str, list[SimEngine]] = {p: [] for p in self.pools}
        for eng in self.engines:
            self.pool_engines[eng.pool].append(eng)
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

    def _record(self, entry: DecisionLogEntry) -> None:
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
        metrics, per_pool = self._metrics()
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
            extra={"learning": self.learning, "ttft_predictions": self._predictions()},
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
            rec.shed = True
            self.outstanding -= 1
            if self.log:
                self._record(
                    DecisionLogEntry(
                        self.now,
                        "pick",
                        req.request_id,
                        "",
                        view,
                        self._scrapes(pool),
                        views,
                        pool=pool,
                    )
                )
            return
        chosen = decision.endpoint
        if self.log:
            self._record(
                DecisionLogEntry(
                    self.now,
                    "pick",
                    req.request_id,
                    "",
                    view,
                    self._scrapes(pool),
                    views,
                    chosen,
                    pool=pool,
                )
            )
        self.predicted_hits[req.request_id] = decision.cached_tokens
        if self.config.track_predictions:
            self._track(req, views, decision.endpoint, decision.cached_tokens)
        eng = self.by_id[chosen]
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

    def _track(
        self, req: TraceRequest, views: Sequence[EndpointView], chosen: EndpointId, cached: int
    ) -> None:
        """What the chosen endpoint's model (central, and its prior) predicted for the TTFT."""
        view = next(v for v in views if v.id == chosen)
        perf = view.perf
        if perf is None:
            return
        prior = getattr(perf, "prior", perf)
        self.predictions[req.request_id] = (
            view.accelerator,
            predict_ttft(central_model(perf), view, req.input_tokens, cached),
            predict_ttft(prior, view, req.input_tokens, cached),
        )

    def _fail(self, lv: LiveRequest) -> None:
        """The engine refused the request: it is failed (counted, never silently dropped)."""
        rec = lv.rec
        rec.failed = True
        del self.live[rec.request_id]
        self.erid_owner.pop(lv.erid, None)
        self.routers[lv.pool].on_completed(lv.view.id, at=self.now)
        if self.log:
            self._record(
                DecisionLogEntry(self.now, "completed", rec.request_id, rec.endpoint, pool=lv.pool)
            )
        self.rejected += 1
        self.outstanding -= 1

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
                    self._record(
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
                    self._record(
                        DecisionLogEntry(ends[-1], "kv", endpoint=eng.id, event=ev, pool=eng.pool)
                    )
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
                self._record(DecisionLogEntry(t, "first_token", rid, rec.endpoint, pool=lv.pool))
        lv.delivered += new
        rec.output_tokens = lv.delivered
        router.on_tokens(rid, new, at=t)
        if self.log:
            self._record(DecisionLogEntry(t, "tokens", rid, rec.endpoint, n=new, pool=lv.pool))

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
            self._record(
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
            self._record(
                DecisionLogEntry(t, "completed", rec.request_id, rec.endpoint, pool=lv.pool)
            )
        del self.live[rec.request_id]
        self.outstanding -= 1

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
                self._record(
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
                        self._record(
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
        for pool, router in self.routers.items():
            learner = router.learner
            if learner is None:
                continue
            for key, state in learner.variants().items():
                self.learning.append(
                    {"t": self.now, "pool": pool, "accelerator": key[0], **state.summary()}
                )

    def _predictions(self) -> list[tuple[float, str, float, float, float]]:
        """(arrival, accelerator, predicted, prior-predicted, observed TTFT) per served request."""
        out = []
        for r in self.records:
            found = self.predictions.get(r.request_id)
            if found is not None and r.ttft_s is not None:
                out.append((r.arrival_s, found[0], found[1], found[2], r.ttft_s))
        return out

    def _bounds(self, trace: Trace, engines: Sequence[SimEngine]) -> PrefixBounds | None:
        if not self.config.compute_bounds or not trace.requests:
            return None
        cap = sum(e.core.stats().num_gpu_blocks for e in engines)
        return prefix_bounds(trace, cap, engine_block=self.block_size)

    def _extra(self, records: Sequence[RequestRecord]) -> dict[str, float]:
        """Counters of the run and the prefix index's predicted vs delivered hits."""
        served = [r for r in records if r.first_token_s is not None]
        predicted = sum(self.predicted_hits.get(r.request_id, 0) for r in served)
        delivered = sum(r.cached_tokens for r in served)
        return {
            "migrations_started": float(self.migrations.started),
            "migrations_cancelled": float(self.migrations.cancelled),
            "migrations_refused": float(self.migrations.refused_count),
            "engine_steps": float(self.steps),
            "rejected_by_engine": float(self.rejected),
            "predicted_hit_tokens": float(predicted),
            "delivered_hit_tokens": float(delivered),
            "hit_prediction_ratio": predicted / delivered if delivered else math.nan,
        }

    def _metrics(self) -> tuple[RunMetrics, dict[str, RunMetrics]]:
        """The run's metrics and, with several pools, each pool's (load imbalance is then the
        engine-weighted mean of the pools' own: max/mean across models means nothing)."""
        ids = [str(e.id) for e in self.engines]
        if len(self.pools) == 1:
            m = compute_metrics(
                self.records,
                self.samples,
                ids,
                migrations=self.migrations.done,
                bounds=self._bounds(self.trace, self.engines),
                extra=self._extra(self.records),
            )
            return m, {}
        per_pool: dict[str, RunMetrics] = {}
        for pool in self.pools:
            idx = [e.index for e in self.pool_engines[pool]]
            recs = [
                r for r, q in zip(self.records, self.trace.requests, strict=False) if q.pool == pool
            ]
            sub = dataclasses.replace(
                self.trace, requests=tuple(q for q in self.trace.requests if q.pool == pool)
            )
            samples = [LoadSample(s.time_s, tuple(s.loads[i] for i in idx)) for s in self.samples]
            per_pool[pool] = compute_metrics(
                recs,
                samples,
                [ids[i] for i in idx],
                migrations=sum(r.migrations for r in recs),
                bounds=self._bounds(sub, self.pool_engines[pool]),
                extra=self._extra(recs),
            )
        weights = {p: len(self.pool_engines[p]) for p in self.pools}
        imbalance = sum(
            weights[p]
            * load_imbalance(
                [
                    LoadSample(s.time_s, tuple(s.loads[e.index] for e in self.pool_engines[p]))
                    for s in self.samples
                ]
            )
            for p in self.pools
        ) / sum(weights.values())
        bounds = None
        parts = [
            (m.bounds, sub_tokens)
            for m, sub_tokens in (
                (per_pool[p], sum(q.input_tokens for q in self.trace.requests if q.pool == p))
                for p in self.pools
            )
            if m.bounds is not None
        ]
        if parts:
            total = sum(t for _b, t in parts) or 1
            bounds = PrefixBounds(
                sum(b.infinite_cache * t for b, t in parts) / total,
                sum(b.pooled_capacity * t for b, t in parts) / total,
                sum(b.capacity_blocks for b, _t in parts),
            )
        m = compute_metrics(
            self.records,
            self.samples,
            ids,
            migrations=self.migrations.done,
            bounds=bounds,
            extra=self._extra(self.records),
        )
        return dataclasses.replace(m, load_imbalance=imbalance), per_pool
