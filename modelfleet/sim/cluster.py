"""The cluster simulator: a discrete-event loop over engine models and live policy objects.

Algorithm. One heap of timed events in virtual seconds; ties break by insertion order, so a run
is a pure function of (trace, fleet, policy, config, seed). Events:

- ``ARRIVAL``: build the :class:`RequestView` and one :class:`EndpointView` per engine exactly
  as the live scheduler would (engine gauges from the last *scrape*, at most
  ``metrics_refresh_s`` old; the scheduler-side in-flight counters from
  :class:`~modelfleet.policy.load.InflightTracker`, always fresh), call ``profile.pick``, then
  ``profile.on_routed``, then hand the request to the chosen engine.
- ``STEP_END(engine)``: the engine step started at ``t`` ends at ``t + duration``; its tokens are
  delivered then (first token -> ``on_first_token``; finish -> ``on_completed``), its buffered
  KV events are fed to the profile (precise prefix index), and the next step starts at once if
  the engine has work. A step decides its batch at its start, so requests that arrive during a
  step join the next one (as in vLLM). When the batch is pure decode with nothing waiting,
  ``EngineCore.decode_burst`` fuses steps up to the next arrival or plan tick (never
  while a request on the engine is being migrated away, since the switch-over aborts it at
  another engine's step end); before any decision every engine's steps that ended by then are
  delivered (``_flush``), so fused and single steps give identical runs (tested).
- ``PLAN``: every ``planner.params.period_s`` the migration planner sees the same snapshots
  plus one :class:`InflightView` per in-flight request and returns migrations, which are
  executed make-before-break: the destination gets prompt + tokens generated so far as a new
  prompt (so it re-prefills all of it minus its own prefix hits — the real cost), the source
  keeps decoding and streaming, and when the destination emits its first token the client
  switches over: the source is aborted, tokens the client already has are dropped, every later
  token comes from the destination. Generation is a pure function of the context, so the
  destination's tokens equal the source's (checked; mismatches are counted).
  If the source finishes first, the destination copy is aborted (a cancelled migration).
- ``SAMPLE``: every ``sample_period_s`` the running + waiting load per engine is recorded for
  the imbalance metric and the load-over-time plot. Samples do not split fused bursts: a
  request the burst finishes after the step in progress is counted back as running, which is
  what single stepping shows (tested).

Scrape staleness: an engine's gauges are re-read when the cached scrape is older than
``metrics_refresh_s`` at decision time (0 = read live every time). This is a poller of period
``metrics_refresh_s`` whose phase is set by the traffic; the age seen by a decision is in
``[0, metrics_refresh_s)`` like with a free-running poller.

Block hashes: by default the engines run ``prefix_caching_hash_algo="builtin"`` (Python's tuple
hash chained like vLLM's recipe; same equality structure, ~10x cheaper than sha256; tested to
give the same run). Policies that read KV events get the engines' own chain per request.

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
from dataclasses import dataclass, field
from typing import Any

from modelfleet.engine.core import EngineCore, EngineRequest
from modelfleet.engine.kvcache import event_hash
from modelfleet.policy.load import InflightTracker
from modelfleet.policy.migration import InflightView, Migration
from modelfleet.policy.prefix import PrecisePrefixIndex
from modelfleet.policy.types import (
    EndpointId,
    EndpointView,
    NoEndpointError,
    RequestId,
    RequestView,
)
from modelfleet.sim.fleet import EngineSpec, fit_perf_model, relative_speeds
from modelfleet.sim.metrics import (
    LoadSample,
    RequestRecord,
    RunMetrics,
    compute_metrics,
    prefix_bounds,
)
from modelfleet.sim.traces import Trace, TraceRequest, prompt_token_ids

__all__ = [
    "ClusterSimulator",
    "DecisionLogEntry",
    "SimConfig",
    "SimResult",
    "build_request_view",
    "inflight_view",
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


def inflight_view(
    request: RequestView,
    endpoint: EndpointId,
    generated: int,
    first_token_s: float | None,
    now: float,
) -> InflightView:
    """The planner's view of one in-flight request, from what a scheduler can observe.

    The scheduler cannot tell a queued request from one in prefill, so a request without a
    first token is ``queued``; the observed TPOT is the mean since the first token.
    """
    tpot = None
    if generated >= 2 and first_token_s is not None:
        tpot = (now - first_token_s) / (generated - 1)
    return InflightView(
        request=request,
        src=endpoint,
        generated_tokens=generated,
        phase="queued" if first_token_s is None else "decode",
        age_s=now - request.arrival_s,
        observed_tpot_s=tpot,
    )


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


@dataclass(frozen=True)
class SimConfig:
    """Knobs of one simulated run (units: seconds, tokens)."""

    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 0.1
    slo_class: str = "standard"
    metrics_refresh_s: float = 0.05
    sample_period_s: float = 1.0
    enable_migration: bool = True
    feed_kv_events: bool | None = None  # None: only if the policy's profile consumes them
    # Chain given to the policy: "trace" = trace block ids, "engine" = the engines' vLLM chain
    # (what KV events carry), "auto" = "engine" when the profile reads KV events.
    prefix_chain: str = "auto"
    max_fused_steps: int = 256
    record_decisions: bool = False
    # Run the engines with prefix_caching_hash_algo="builtin" (Python's tuple hash chained like
    # vLLM's recipe: same equality structure, ~10x cheaper); False keeps vLLM's sha256.
    fast_block_hash: bool = True
    seed: int = 0
    compute_bounds: bool = True

    def validate(self) -> None:
        bad = []
        if not self.ttft_slo_s > 0:
            bad.append("ttft_slo_s")
        if not self.tpot_slo_s > 0:
            bad.append("tpot_slo_s")
        if not self.metrics_refresh_s >= 0:
            bad.append("metrics_refresh_s")
        if not self.sample_period_s > 0:
            bad.append("sample_period_s")
        if self.prefix_chain not in ("auto", "trace", "engine"):
            bad.append("prefix_chain (auto | trace | engine)")
        if self.max_fused_steps < 1:
            bad.append("max_fused_steps")
        if bad:
            raise ValueError(f"SimConfig: invalid {', '.join(bad)}")


@dataclass(frozen=True)
class DecisionLogEntry:
    """One hook call as the scheduler would make it (for the parity harness).

    ``kind``: ``pick`` (request, scrapes, decision), ``first_token``, ``tokens`` (n),
    ``completed``, ``migrated`` (src, dst, generated), ``kv`` (endpoint, event), ``plan``
    (views, in-flight views, migrations in progress, the planner's answer).
    ``scrapes`` are the engine gauges (running, waiting, kv usage) the views were built from.
    """

    time_s: float
    kind: str
    request_id: str = ""
    endpoint: str = ""
    request: RequestView | None = None
    scrapes: tuple[tuple[int, int, float], ...] = ()
    views: tuple[EndpointView, ...] = ()
    chosen: str = ""
    n: int = 0
    src: str = ""
    event: object = None
    inflight: tuple[InflightView, ...] = ()
    in_progress: frozenset[RequestId] = frozenset()
    migrations: tuple[Migration, ...] = ()


@dataclass
class SimResult:
    """Raw outcome of one run plus its metrics."""

    records: list[RequestRecord]
    samples: list[LoadSample]
    endpoint_ids: tuple[str, ...]
    migrations_started: int
    migrations_done: int
    migrations_cancelled: int
    token_mismatches: int
    token_gaps: int
    engine_leftovers: int
    decisions: list[DecisionLogEntry]
    metrics: RunMetrics
    steps: int
    extra: dict[str, Any] = field(default_factory=dict)

    def check_conservation(self) -> None:
        """Raise AssertionError if a request or a token was lost or doubled (also under -O)."""
        problems: list[str] = []
        for r in self.records:
            if r.shed:
                continue
            if r.finish_s is None:
                problems.append(f"{r.request_id} never finished")
            elif r.output_tokens != r.max_tokens:
                problems.append(
                    f"{r.request_id} delivered {r.output_tokens} of {r.max_tokens} tokens"
                )
        if self.token_gaps:
            problems.append(f"{self.token_gaps} tokens arrived after a gap (lost token)")
        if self.token_mismatches:
            problems.append(f"{self.token_mismatches} migrated tokens differ")
        if self.engine_leftovers:
            problems.append(f"{self.engine_leftovers} engines still hold requests")
        if problems:
            raise AssertionError("; ".join(problems[:5]))


class _Mig:
    __slots__ = ("base", "dst", "dst_erid", "migration", "prefix_tokens", "seen", "started_s")

    def __init__(
        self,
        dst: int,
        dst_erid: str,
        prefix_tokens: list[int],
        started_s: float,
        m: Migration,
    ) -> None:
        self.prefix_tokens = prefix_tokens  # generated tokens sent as part of the new prompt
        self.dst = dst
        self.dst_erid = dst_erid
        self.base = len(prefix_tokens)  # stream index of the destination's first token
        self.seen = 0  # tokens the destination has produced so far
        self.started_s = started_s
        self.migration = m


class _Live:
    """Scheduler-side state of one in-flight request."""

    __slots__ = (
        "attempts",
        "delivered",
        "engine",
        "erid",
        "mig",
        "prefix_tokens",
        "produced",
        "rec",
        "req",
        "stream_base",
        "view",
    )

    def __init__(self, req: TraceRequest, view: RequestView, rec: RequestRecord) -> None:
        self.req = req
        self.view = view
        self.rec = rec
        self.delivered = 0  # tokens streamed to the client so far
        self.produced = 0  # tokens produced by the serving engine request
        self.stream_base = 0  # stream index of the serving engine request's first token
        self.prefix_tokens: list[int] = []  # generated tokens in the serving copy's prompt
        self.engine = -1
        self.erid = ""
        self.mig: _Mig | None = None
        self.attempts = 0


class _Work:
    """What an engine is doing: one step or a fused decode burst, and what it delivered yet.

    ``ends[j]`` is the virtual time step j ends. A single step carries its ``outputs``; a burst
    carries per-participant token counts (``steps_run``) and finish reasons. ``done`` counts the
    steps already delivered by :meth:`ClusterSimulator._flush`.
    """

    __slots__ = ("done", "ends", "events", "finished", "outputs", "participants", "steps_run")

    def __init__(self, ends: list[float]) -> None:
        self.ends = ends
        self.done = 0
        self.outputs: list[Any] = []
        self.participants: list[str] = []
        self.steps_run: list[int] = []
        self.finished: dict[str, str] = {}
        self.events: list[object] = []


class _Engine:
    __slots__ = (
        "core",
        "events",
        "id",
        "index",
        "migrating_out",
        "perf",
        "scrape",
        "scrape_s",
        "spec",
        "speed",
        "work",
    )

    def __init__(
        self, index: int, spec: EngineSpec, core: EngineCore, events: list[object]
    ) -> None:
        self.index = index
        self.id = EndpointId(spec.id)
        self.spec = spec
        self.core = core
        self.events = events  # KV events emitted by the core and not yet attached to a step
        self.work: _Work | None = None
        # Requests on this engine with a destination copy starting elsewhere: the switch-over
        # aborts them at another engine's step end, so this engine must not fuse steps past it.
        self.migrating_out = 0
        self.scrape: tuple[int, int, float] = (0, 0, 0.0)
        self.scrape_s = -math.inf
        self.perf: Any = None
        self.speed = 1.0


class ClusterSimulator:
    """Runs one trace through one policy on one fleet. Use once: ``ClusterSimulator(...).run()``.

    ``policy_factory(clock, rng)`` returns what :func:`modelfleet.policy.baselines.build_policy`
    returns (``.profile``, ``.planner``), so the simulator can inject its virtual clock and the
    seeded RNG.
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
        self.now = 0.0
        self.policy = policy_factory(lambda: self.now, random.Random(self.config.seed))
        self.profile = self.policy.profile
        self.planner = (
            getattr(self.policy, "planner", None) if self.config.enable_migration else None
        )
        feed = self.config.feed_kv_events
        if feed is None:
            feed = isinstance(getattr(self.profile, "prefix_index", None), PrecisePrefixIndex)
        self.feed_kv = feed
        chain = self.config.prefix_chain
        self.chain_kind = ("engine" if feed else "trace") if chain == "auto" else chain
        speeds = relative_speeds(self.fleet)
        mean_out = trace.total_output_tokens() / max(1, len(trace))
        self.engines: list[_Engine] = []
        perf_cache: dict[tuple[object, ...], Any] = {}
        for i, spec in enumerate(self.fleet):
            cfg = spec.engine_config()
            if self.config.fast_block_hash:
                cfg = dataclasses.replace(cfg, prefix_caching_hash_algo="builtin")
            events: list[object] = []
            core = EngineCore(
                cfg, next_token=sim_next_token, kv_event_sink=events.append if feed else None
            )
            eng = _Engine(i, spec, core, events)
            key = (
                cfg.accelerator,
                cfg.model,
                cfg.tensor_parallel_size,
                cfg.max_num_batched_tokens,
                cfg.max_num_seqs,
            )
            if key not in perf_cache:
                perf_cache[key] = fit_perf_model(cfg, mean_output_tokens=mean_out)
            eng.perf = perf_cache[key]
            eng.speed = speeds[spec.id]
            self.engines.append(eng)
        self.block_size = self.engines[0].core.stats().block_size
        self.by_id = {e.id: e for e in self.engines}
        self.tracker = InflightTracker()
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.live: dict[str, _Live] = {}
        self.erid_owner: dict[str, str] = {}  # engine request id -> request id
        self.records: list[RequestRecord] = []
        self.samples: list[LoadSample] = []
        self.decisions: list[DecisionLogEntry] = []
        self.mig_started = 0
        self.mig_done = 0
        self.mig_cancelled = 0
        self.mismatches = 0
        self.gaps = 0
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

    # ------------------------------------------------------------------ snapshots
    def _scrape(self, eng: _Engine) -> tuple[int, int, float]:
        refresh = self.config.metrics_refresh_s
        if refresh == 0 or self.now - eng.scrape_s >= refresh:
            st = eng.core.stats()
            eng.scrape = (st.num_running, st.num_waiting, st.kv_cache_usage)
            eng.scrape_s = self.now
        return eng.scrape

    def _views(self) -> tuple[tuple[EndpointView, ...], tuple[tuple[int, int, float], ...]]:
        """Deliver everything that happened up to now, then snapshot every endpoint."""
        for eng in self.engines:
            if eng.work is not None:
                self._flush(eng, self.now)
        views: list[EndpointView] = []
        scrapes: list[tuple[int, int, float]] = []
        for eng in self.engines:
            running, waiting, kv = self._scrape(eng)
            scrapes.append((running, waiting, kv))
            reqs, toks, prefill = self.tracker.counters(eng.id)
            views.append(
                EndpointView(
                    id=eng.id,
                    pool=eng.spec.pool,
                    model=eng.spec.model,
                    accelerator=eng.spec.accelerator,
                    running=running,
                    waiting=waiting,
                    kv_cache_usage=kv,
                    inflight_requests=reqs,
                    inflight_tokens=toks,
                    inflight_prefill_tokens=prefill,
                    relative_speed=eng.speed,
                    perf=eng.perf,
                )
            )
        return tuple(views), tuple(scrapes)

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
        if reqs:
            self.now = reqs[0].arrival_s
            self._push(self.now, _ARRIVAL, 0)
            self._push(self.now, _SAMPLE, None)
            if self.planner is not None:
                period = float(self.planner.params.period_s)
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
        return SimResult(
            records=self.records,
            samples=self.samples,
            endpoint_ids=tuple(e.id for e in self.engines),
            migrations_started=self.mig_started,
            migrations_done=self.mig_done,
            migrations_cancelled=self.mig_cancelled,
            token_mismatches=self.mismatches,
            token_gaps=self.gaps,
            engine_leftovers=leftovers,
            decisions=self.decisions,
            metrics=self._metrics(),
            steps=self.steps,
        )

    def _update_tick(self) -> None:
        # Only planner ticks bound fused steps: a load sample just reads the gauges, so it may
        # see an engine up to one fused burst ahead (tens of ms), which the imbalance metric
        # does not notice, while splitting every burst at every sample costs ~10 % of a run.
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
        views, scrapes = self._views()
        try:
            decision = self.profile.pick(view, views)
        except NoEndpointError:
            rec.shed = True
            self.outstanding -= 1
            if self.log:
                self.decisions.append(
                    DecisionLogEntry(self.now, "pick", req.request_id, "", view, scrapes, views)
                )
            return
        chosen = EndpointId(str(decision.endpoint))
        if self.log:
            self.decisions.append(
                DecisionLogEntry(
                    self.now, "pick", req.request_id, "", view, scrapes, views, str(chosen)
                )
            )
        self.profile.on_routed(view, decision)
        self.tracker.on_routed(view, chosen)
        eng = self.by_id[chosen]
        live = _Live(req, view, rec)
        self.live[req.request_id] = live
        live.engine = eng.index
        live.erid = req.request_id
        rec.first_endpoint = rec.endpoint = str(eng.id)
        prompt = prompt_token_ids(req, block_tokens=self.trace.block_tokens)
        try:
            self._submit(eng, live.erid, req.request_id, prompt, req.output_tokens)
        except ValueError as exc:  # can never run there (too long): the engine rejects it
            rec.shed = True
            del exc
            del self.live[req.request_id]
            self.erid_owner.pop(live.erid, None)
            self.profile.on_completed(view.id, chosen)
            self.tracker.on_completed(view.id)
            self.rejected += 1
            self.outstanding -= 1

    def _submit(
        self, eng: _Engine, erid: str, rid: str, prompt: list[int], max_tokens: int
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
    def _start_step(self, eng: _Engine) -> None:
        """Start the engine's next step (or fused burst) at ``now``; idle if nothing to do."""
        eng.work = None
        core = eng.core
        if not core.has_unfinished():
            return
        horizon = self._horizon()
        work: _Work | None = None
        fuse = self.config.max_fused_steps > 1 and eng.migrating_out == 0
        if fuse and horizon > self.now and core.can_burst():
            burst = core.decode_burst(self.now, horizon, self.config.max_fused_steps)
            if burst.step_ends:
                work = _Work(burst.step_ends)
                work.participants = burst.participants
                work.steps_run = burst.steps_run
                work.finished = burst.finished
        if work is None:
            res = core.step()
            if not res.scheduled and res.duration <= 0.0:
                raise RuntimeError(f"engine {eng.id} has unfinished requests but scheduled none")
            work = _Work([self.now + res.duration])
            work.outputs = res.outputs
        if eng.events:
            work.events = list(eng.events)
            eng.events.clear()
        self.steps += len(work.ends)
        eng.work = work
        self._push(work.ends[-1], _STEP_END, eng.index)

    def _flush(self, eng: _Engine, t: float) -> None:
        """Deliver the tokens of every step of the engine's current work that ended by ``t``."""
        work = eng.work
        if work is None:
            return
        ends = work.ends
        j = bisect.bisect_right(ends, t)
        if j <= work.done:
            return
        lo = work.done
        work.done = j
        if j == len(ends) and work.events:
            for ev in work.events:
                self.profile.on_kv_event(eng.id, ev)
                if self.log:
                    self.decisions.append(
                        DecisionLogEntry(ends[-1], "kv", endpoint=str(eng.id), event=ev)
                    )
            work.events = []
        if work.outputs:  # a single step: j == 1
            for out in work.outputs:
                self._deliver(
                    out.request_id, 1, out.finished, ends[0], out.num_cached_prompt_tokens
                )
            work.outputs = []
            return
        finished = work.finished
        for erid, k in zip(work.participants, work.steps_run, strict=True):
            n = min(k, j) - min(k, lo)
            if n <= 0:
                continue
            fin = erid in finished and k <= j
            self._deliver(erid, n, fin, ends[min(k, j) - 1], 0)

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

    def _stream(self, lv: _Live, t: float) -> None:
        """Stream the serving copy's tokens whose stream index the client does not have yet.

        The serving engine request's token j has stream index ``stream_base + j``; after a
        switch-over the first ``delivered - stream_base`` of them are duplicates and dropped.
        """
        new = lv.stream_base + lv.produced - lv.delivered
        if new <= 0:
            return
        rec = lv.rec
        if lv.delivered == 0 and rec.first_token_s is None:
            rec.first_token_s = t
            self.profile.on_first_token(lv.view.id, EndpointId(rec.endpoint))
            self.tracker.on_first_token(lv.view.id)
            if self.log:
                self.decisions.append(
                    DecisionLogEntry(t, "first_token", rec.request_id, rec.endpoint)
                )
        lv.delivered += new
        rec.output_tokens = lv.delivered
        self.tracker.on_token(lv.view.id, new)
        if self.log:
            self.decisions.append(
                DecisionLogEntry(t, "tokens", rec.request_id, rec.endpoint, n=new)
            )

    def _deliver_current(self, lv: _Live, n: int, finished: bool, t: float, cached: int) -> None:
        if lv.produced == 0 and lv.stream_base == 0:
            lv.rec.cached_tokens = cached
        lv.produced += n
        self._stream(lv, t)
        if finished:
            if lv.mig is not None:  # the serving copy won the race: cancel the destination
                self.engines[lv.engine].migrating_out -= 1
                self.engines[lv.mig.dst].core.abort_request(lv.mig.dst_erid)
                self.erid_owner.pop(lv.mig.dst_erid, None)
                lv.mig = None
                self.mig_cancelled += 1
            self._complete(lv, t)

    def _deliver_dst(self, lv: _Live, mig: _Mig, n: int, finished: bool, t: float) -> None:
        """The destination's first token switches the stream over (make-before-break)."""
        mig.seen += n
        src = self.engines[lv.engine]
        self._flush(src, t)  # the source may have finished first
        if lv.mig is not mig or lv.rec.finish_s is not None:
            return
        self._check_continuation(lv, mig, src)
        src.migrating_out -= 1
        src.core.abort_request(lv.erid)
        self.erid_owner.pop(lv.erid, None)
        rec = lv.rec
        src_id = rec.endpoint
        lv.erid = mig.dst_erid
        lv.engine = mig.dst
        lv.stream_base = mig.base
        lv.produced = mig.seen
        lv.prefix_tokens = mig.prefix_tokens
        lv.mig = None
        rec.endpoint = str(self.engines[mig.dst].id)
        rec.migrations += 1
        self.mig_done += 1
        dst_id = EndpointId(rec.endpoint)
        self.tracker.on_migrated(lv.view.id, EndpointId(src_id), dst_id)
        self.tracker.on_first_token(lv.view.id)
        self.profile.on_migrated(lv.view, EndpointId(src_id), dst_id, lv.delivered)
        if self.log:
            self.decisions.append(
                DecisionLogEntry(
                    t, "migrated", rec.request_id, rec.endpoint, src=src_id, n=lv.delivered
                )
            )
        self._stream(lv, t)
        if finished:
            self._complete(lv, t)

    def _generated(self, lv: _Live) -> list[int]:
        """Every token generated for the request so far by its serving copy (stream order)."""
        core = self.engines[lv.engine].core
        try:
            own = core.output_token_ids(lv.erid)
        except KeyError:
            own = []
        return lv.prefix_tokens + list(own)

    def _check_continuation(self, lv: _Live, mig: _Mig, src: _Engine) -> None:
        """The destination's tokens must equal the source's at the same stream indices."""
        src_all = self._generated(lv)
        try:
            dst_out = self.engines[mig.dst].core.output_token_ids(mig.dst_erid)
        except KeyError:
            return
        overlap = src_all[mig.base : mig.base + len(dst_out)]
        self.mismatches += sum(1 for a, b in zip(overlap, dst_out, strict=False) if a != b)
        if mig.base > lv.delivered:
            self.gaps += mig.base - lv.delivered

    def _complete(self, lv: _Live, t: float) -> None:
        rec = lv.rec
        rec.finish_s = t
        rec.output_tokens = lv.delivered
        self.profile.on_completed(lv.view.id, EndpointId(rec.endpoint))
        self.tracker.on_completed(lv.view.id)
        if self.log:
            self.decisions.append(DecisionLogEntry(t, "completed", rec.request_id, rec.endpoint))
        del self.live[rec.request_id]
        self.outstanding -= 1

    # ------------------------------------------------------------------ migration
    def _plan(self) -> None:
        if self.planner is None or not self.live:
            return
        views, scrapes = self._views()
        inflight: list[InflightView] = []
        in_progress: set[RequestId] = set()
        for lv in self.live.values():
            if lv.mig is not None:
                in_progress.add(lv.view.id)
            inflight.append(
                inflight_view(
                    lv.view,
                    EndpointId(lv.rec.endpoint),
                    lv.delivered,
                    lv.rec.first_token_s,
                    self.now,
                )
            )
        plan = list(self.planner.plan(views, tuple(inflight), in_progress=in_progress))
        if self.log:
            self.decisions.append(
                DecisionLogEntry(
                    self.now,
                    "plan",
                    views=views,
                    scrapes=scrapes,
                    inflight=tuple(inflight),
                    in_progress=frozenset(in_progress),
                    migrations=tuple(plan),
                )
            )
        for m in plan:
            self._start_migration(m)

    def _start_migration(self, m: Migration) -> None:
        lv = self.live.get(str(m.request_id))
        if lv is None or lv.mig is not None or str(m.src) != lv.rec.endpoint:
            return
        dst = self.by_id.get(EndpointId(str(m.dst)))
        if dst is None or dst.index == lv.engine:
            return
        g = lv.delivered
        remaining = lv.req.output_tokens - g
        if remaining <= 1:
            return
        generated = self._generated(lv)[:g]
        if len(generated) < g:
            # The engine already finished it (its last tokens are still in flight to the
            # client): there is nothing left to move.
            return
        lv.attempts += 1
        erid = f"{lv.req.request_id}~m{lv.attempts}"
        prompt = prompt_token_ids(lv.req, block_tokens=self.trace.block_tokens) + generated
        try:
            self._submit(dst, erid, lv.req.request_id, prompt, remaining)
        except ValueError:
            self.erid_owner.pop(erid, None)
            return
        lv.mig = _Mig(dst.index, erid, generated, self.now, m)
        src = self.engines[lv.engine]
        src.migrating_out += 1
        self.mig_started += 1

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
            migrations=self.mig_done,
            bounds=bounds,
            extra={
                "migrations_started": float(self.mig_started),
                "migrations_cancelled": float(self.mig_cancelled),
                "engine_steps": float(self.steps),
                "rejected_by_engine": float(self.rejected),
            },
        )
