"""Engine model: vLLM V1-style continuous batching over a paged, prefix-cached KV cache.

One `step()` is one iteration of vLLM V1's scheduler plus the model forward pass:

1. Running requests, in order, get the tokens they still need (1 for a decoding request, the
   rest of the prompt for a request in chunked prefill), capped by the token budget
   `max_num_batched_tokens`. When the KV cache cannot hold a request's next tokens, the most
   recently added running request is preempted (its blocks are freed and it goes back to the
   head of the waiting queue to be recomputed later); if that is the request itself, the loop
   stops.
2. If nothing was preempted, waiting requests are admitted in FCFS order while budget and
   `max_num_seqs` allow: first the longest prefix of their full blocks found in the prefix
   cache (at most all tokens but the last, which must be recomputed to produce logits), then
   as many new tokens as the budget allows (chunked prefill). Like vLLM 0.32
   (`scheduler_reserve_full_isl`), a request is admitted only if the free blocks hold its
   whole prompt (plus what it generated before a preemption), not just its first chunk. A
   request that does not fit stops admission (no skipping: FCFS).
3. The step's duration comes from `timing.StepTimer` (prefill tokens and attended context,
   decoding sequences and their total context). Every request whose tokens are now all
   computed samples one token from the injected `next_token(context)`; stop conditions
   follow vLLM's `check_stop` (length, then min_tokens, EOS, stop token ids). Finished
   requests free their blocks (cached blocks stay in the LRU for later hits).

Invariants: a request's blocks cover exactly ceil(num_computed_tokens / block_size) blocks
after a step; full blocks of computed tokens are cached under vLLM's chained hashes as soon
as they are scheduled (so KV events and later hits match vLLM).

The engine has no clock: `step()` returns how long the step takes and the caller decides
what time means (`asyncio.sleep` in the server, a virtual clock in `virtual.py`).

`decode_burst()` is the virtual-time fast path: while only decoding requests run and nothing
waits, it runs many steps back to back with the same operations in the same order as
`step()` (tokens, blocks, KV events, counters and float durations are identical; tests
compare the two) but without per-token output objects.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import takewhile
from operator import is_not
from typing import cast

from modelfleet.engine.kvcache import (
    HASH_ALGOS,
    AllBlocksCleared,
    BlockHasher,
    BlockPool,
    BlockRemoved,
    BlockStored,
    Digest,
    KVEvent,
)
from modelfleet.engine.profiles import (
    AcceleratorSpec,
    ModelSpec,
    derive_num_gpu_blocks,
    resolve_accelerator,
    resolve_model,
)
from modelfleet.engine.timing import StepTimer

__all__ = [
    "AllBlocksCleared",
    "BlockRemoved",
    "BlockStored",
    "DecodeBurst",
    "EngineConfig",
    "EngineCore",
    "EngineRequest",
    "EngineStats",
    "KVEvent",
    "StepResult",
    "TokenOutput",
]


@dataclass(frozen=True)
class EngineConfig:
    """Static configuration of one engine instance (the vLLM flags that matter for behaviour).

    `num_gpu_blocks=None` derives the KV capacity like vLLM does: GPU memory x
    `gpu_memory_utilization` minus the weights (and a fixed activation reserve), divided by
    the KV bytes of one block, per tensor-parallel shard.
    """

    accelerator: str | AcceleratorSpec  # a preset name or a spec (profiles.py)
    model: str | ModelSpec  # a preset name, a model folder with config.json, or a spec
    tensor_parallel_size: int = 1
    block_size: int = 16
    num_gpu_blocks: int | None = None
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 8192
    enable_prefix_caching: bool = True
    # "sha256" (vLLM default) | "sha256_cbor" | "builtin" (virtual time only, not vLLM's hashes)
    prefix_caching_hash_algo: str = "sha256"
    hash_seed: str | None = None  # the vLLM process's PYTHONHASHSEED; None = unset
    kv_events_int_hashes: bool = True  # VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES (default 1)

    @property
    def model_name(self) -> str:
        """The model's name (a preset name, a folder path, or the spec's name)."""
        return self.model if isinstance(self.model, str) else self.model.name

    @property
    def accelerator_name(self) -> str:
        a = self.accelerator
        return a if isinstance(a, str) else a.name

    @classmethod
    def for_model(
        cls,
        accelerator: str | AcceleratorSpec,
        model: str | ModelSpec,
        tensor_parallel_size: int = 1,
        **overrides: object,
    ) -> EngineConfig:
        """Build a config with defaults and validate it (ValueError naming the bad value)."""
        cfg = cls(accelerator, model, tensor_parallel_size, **overrides)  # type: ignore[arg-type]
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check names and ranges; ValueError naming the offending field."""
        resolve_accelerator(self.accelerator)
        resolve_model(self.model)
        if self.tensor_parallel_size not in (1, 2, 4, 8):
            raise ValueError(
                f"tensor_parallel_size must be 1, 2, 4 or 8, got {self.tensor_parallel_size}"
            )
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_gpu_blocks is not None and self.num_gpu_blocks <= 0:
            raise ValueError(f"num_gpu_blocks must be positive, got {self.num_gpu_blocks}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.prefix_caching_hash_algo not in HASH_ALGOS:
            raise ValueError(
                f"prefix_caching_hash_algo must be one of {', '.join(HASH_ALGOS)}, "
                f"got {self.prefix_caching_hash_algo!r}"
            )

    def resolved_num_gpu_blocks(self) -> int:
        """`num_gpu_blocks`, or the number vLLM would derive from memory and model size."""
        if self.num_gpu_blocks is not None:
            return self.num_gpu_blocks
        return derive_num_gpu_blocks(
            resolve_accelerator(self.accelerator),
            resolve_model(self.model),
            self.tensor_parallel_size,
            self.block_size,
            self.gpu_memory_utilization,
        )


@dataclass
class EngineRequest:
    """One generation request as the engine sees it (token ids in, token ids out)."""

    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    min_tokens: int = 0
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False
    arrival_time: float = 0.0
    cache_salt: str | None = None


@dataclass(frozen=True)
class TokenOutput:
    """One token produced for one request in one step."""

    request_id: str
    token_id: int
    finished: bool
    finish_reason: str | None  # "length" | "stop" | "abort" | None
    num_cached_prompt_tokens: int


@dataclass(frozen=True)
class StepResult:
    """What one engine step did and how long it takes on the modelled GPU."""

    duration: float
    outputs: list[TokenOutput]
    num_prefill_tokens: int = 0
    num_decode_seqs: int = 0
    preempted: tuple[str, ...] = ()
    scheduled: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineStats:
    """Gauges (now) and cumulative counters, named after vLLM's metrics."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float  # 0..1, fraction of blocks referenced by requests
    prefix_cache_queries: int  # tokens, cumulative
    prefix_cache_hits: int  # tokens, cumulative
    num_preemptions: int
    prompt_tokens_total: int
    generation_tokens_total: int
    num_gpu_blocks: int
    block_size: int
    num_finished: int = 0
    extra: dict[str, float] = field(default_factory=dict)


# `_is_block(x)`: x is a block id, not the None of a cache miss (a C-level predicate).
_is_block = partial(is_not, None)

# Request states
_WAITING = 0
_RUNNING = 1
_FINISHED = 2


class _Req:
    """Mutable per-request state inside the engine."""

    __slots__ = (
        "all_ids",
        "blocks",
        "hashes",
        "ignore_eos",
        "max_tokens",
        "min_tokens",
        "num_cached_blocks",
        "num_cached_tokens",
        "num_computed",
        "num_prompt",
        "req",
        "request_id",
        "salt",
        "state",
        "stop_ids",
    )

    def __init__(self, req: EngineRequest) -> None:
        self.req = req
        self.request_id = req.request_id
        self.all_ids: list[int] = list(req.prompt_token_ids)
        self.num_prompt = len(self.all_ids)
        self.num_computed = 0
        self.blocks: list[int] = []
        self.hashes: list[Digest] = []
        self.num_cached_blocks = 0
        self.num_cached_tokens = -1
        self.max_tokens = req.max_tokens
        self.min_tokens = req.min_tokens
        self.stop_ids = req.stop_token_ids
        self.ignore_eos = req.ignore_eos
        self.salt = req.cache_salt
        self.state = _WAITING

    @property
    def num_output(self) -> int:
        return len(self.all_ids) - self.num_prompt


@dataclass
class DecodeBurst:
    """Result of `EngineCore.decode_burst`: k pure-decode steps run back to back.

    `step_ends[j]` is the clock after step j. `participants` are the requests running at the
    start, in order; `steps_run[i]` is how many of the steps participant i produced a token in
    (all of them unless it finished earlier). `finished` maps request id -> finish reason.
    """

    step_ends: list[float]
    participants: list[str]
    steps_run: list[int]
    finished: dict[str, str]


class EngineCore:
    """The engine model. Not thread-safe; one owner drives `step()`.

    `next_token(context)` must be a pure function of the whole token context (prompt plus
    generated tokens); `kv_event_sink` receives BlockStored / BlockRemoved / AllBlocksCleared
    as they happen; `eos_token_id` is the model's end-of-sequence token (None = no EOS).

    `block_hasher` replaces the hasher built from `prefix_caching_hash_algo` / `hash_seed`
    (e.g. a simulator's memoised subclass of `BlockHasher`). It must chain like the recipe
    (equal token prefixes <=> equal digests) and use the config's `block_size`; KV events
    then carry its digests. Available afterwards as the public attribute `hasher`.
    """

    def __init__(
        self,
        config: EngineConfig,
        *,
        next_token: Callable[[Sequence[int]], int],
        kv_event_sink: Callable[[KVEvent], None] | None = None,
        eos_token_id: int | None = None,
        block_hasher: BlockHasher | None = None,
    ) -> None:
        config.validate()
        if block_hasher is not None and block_hasher.block_size != config.block_size:
            raise ValueError(
                f"block_hasher.block_size={block_hasher.block_size} does not match "
                f"block_size={config.block_size}"
            )
        self.config = config
        self.model_spec = resolve_model(config.model)
        self.accelerator_spec = resolve_accelerator(config.accelerator)
        self.timer = StepTimer(self.accelerator_spec, self.model_spec, config.tensor_parallel_size)
        self.num_gpu_blocks = config.resolved_num_gpu_blocks()
        self.block_size = config.block_size
        self.pool = BlockPool(
            self.num_gpu_blocks,
            config.block_size,
            enable_caching=config.enable_prefix_caching,
            event_sink=kv_event_sink,
            int_hashes=config.kv_events_int_hashes,
        )
        self.hasher = (
            block_hasher
            if block_hasher is not None
            else BlockHasher(config.block_size, config.prefix_caching_hash_algo, config.hash_seed)
        )
        self._next_token = next_token
        self._eos = eos_token_id
        self._caching = config.enable_prefix_caching
        self._waiting: deque[_Req] = deque()
        self._running: list[_Req] = []
        self._requests: dict[str, _Req] = {}
        # cumulative counters (vLLM metric semantics)
        self._prefix_queries = 0
        self._prefix_hits = 0
        self._preemptions = 0
        self._prompt_tokens = 0
        self._generation_tokens = 0
        self._finished = 0

    # ------------------------------------------------------------------ requests
    def add_request(self, req: EngineRequest) -> None:
        """Queue a request (FCFS). ValueError naming the problem when it can never run."""
        n = len(req.prompt_token_ids)
        if n == 0:
            raise ValueError(f"request {req.request_id!r}: prompt must not be empty")
        if req.request_id in self._requests:
            raise ValueError(f"request {req.request_id!r} is already in the engine")
        if req.max_tokens < 1:
            raise ValueError(f"request {req.request_id!r}: max_tokens must be >= 1")
        if req.min_tokens < 0 or req.min_tokens > req.max_tokens:
            raise ValueError(
                f"request {req.request_id!r}: min_tokens must be in "
                f"[0, max_tokens={req.max_tokens}]"
            )
        total = n + req.max_tokens
        if total > self.config.max_model_len:
            raise ValueError(
                f"request {req.request_id!r}: prompt ({n} tokens) + max_tokens "
                f"({req.max_tokens}) = {total} exceeds max_model_len={self.config.max_model_len}"
            )
        if -(-total // self.block_size) > self.num_gpu_blocks:
            raise ValueError(
                f"request {req.request_id!r}: {total} tokens need more KV blocks than the "
                f"engine has ({self.num_gpu_blocks} x {self.block_size} tokens)"
            )
        r = _Req(req)
        self._requests[req.request_id] = r
        self._waiting.append(r)

    def abort_request(self, request_id: str) -> None:
        """Remove a request wherever it is and free its blocks; unknown ids are ignored."""
        r = self._requests.pop(request_id, None)
        if r is None:
            return
        if r.state == _WAITING:
            self._waiting.remove(r)
        elif r.state == _RUNNING:
            self._running.remove(r)
            self.pool.free_blocks(r.blocks)
            r.blocks = []
        r.state = _FINISHED

    def has_unfinished(self) -> bool:
        return bool(self._running or self._waiting)

    def output_token_ids(self, request_id: str) -> list[int]:
        """Tokens generated so far for a live request (KeyError if unknown or finished)."""
        r = self._requests[request_id]
        return r.all_ids[r.num_prompt :]

    # ------------------------------------------------------------------ KV cache
    def _computed_blocks(self, r: _Req) -> tuple[list[int], int]:
        """Longest cached prefix of r's full blocks (never all tokens); updates hit stats."""
        if not self._caching:
            return [], 0
        bs = self.block_size
        ntok = len(r.all_ids)
        self.hasher.extend(r.hashes, r.all_ids, r.salt)
        max_blocks = (ntok - 1) // bs
        # The walk stops at the first digest not cached; map/takewhile keep it in C (a
        # head-of-line request that does not fit is re-matched at every step).
        hit = cast(
            "list[int]",
            list(takewhile(_is_block, map(self.pool.cached.get, r.hashes[:max_blocks]))),
        )
        self._prefix_queries += ntok
        self._prefix_hits += len(hit) * bs
        return hit, len(hit) * bs

    def _allocate(
        self, r: _Req, num_new: int, hit_blocks: Sequence[int] = (), num_hit: int = 0
    ) -> bool:
        """Give r blocks for `num_new` more tokens (after a prefix hit); False if out of blocks."""
        pool = self.pool
        bs = self.block_size
        total = r.num_computed + num_hit + num_new
        need = -(-total // bs) - len(r.blocks) - len(hit_blocks)
        # Hit blocks that are free count as free space but are about to be taken by the hit.
        ref = pool.ref_cnt
        evictable = [ref[b] for b in hit_blocks].count(0) if hit_blocks else 0
        if need > pool.num_free - evictable:
            return False
        if hit_blocks:
            pool.touch(hit_blocks)
            r.blocks.extend(hit_blocks)
            r.num_cached_blocks = len(hit_blocks)
            r.num_computed += num_hit
        if need > 0:
            r.blocks.extend(pool.allocate(need))
        if self._caching:
            full = total // bs
            if full > r.num_cached_blocks:
                if len(r.hashes) < full:
                    self.hasher.extend(r.hashes, r.all_ids, r.salt)
                pool.cache_full_blocks(
                    r.blocks, r.hashes, r.num_cached_blocks, full, r.all_ids, r.salt
                )
                r.num_cached_blocks = full
        return True

    def _fits_whole(self, r: _Req, hit_blocks: Sequence[int]) -> bool:
        """vLLM 0.32's admission check (``scheduler_reserve_full_isl``, on by default): a
        waiting or preempted request is admitted only if the free blocks hold its whole
        sequence so far, not just the first chunk, so chunked prefill cannot over-admit and
        thrash the cache with preemptions."""
        pool = self.pool
        total = min(len(r.all_ids), self.config.max_model_len)
        need = -(-total // self.block_size) - len(r.blocks) - len(hit_blocks)
        ref = pool.ref_cnt
        evictable = [ref[b] for b in hit_blocks].count(0) if hit_blocks else 0
        return need <= pool.num_free - evictable

    def _preempt(self, r: _Req) -> None:
        self.pool.free_blocks(r.blocks)
        r.blocks = []
        r.num_computed = 0
        r.num_cached_blocks = 0
        r.state = _WAITING
        self._waiting.appendleft(r)
        self._preemptions += 1

    # ------------------------------------------------------------------ stepping
    def _check_stop(self, r: _Req, tok: int) -> str | None:
        """vLLM's check_stop order: length cap, then min_tokens, then EOS and stop ids."""
        n_out = len(r.all_ids) - r.num_prompt
        if n_out >= r.max_tokens or len(r.all_ids) >= self.config.max_model_len:
            return "length"
        if n_out < r.min_tokens:
            return None
        if tok == self._eos and not r.ignore_eos:
            return "stop"
        if tok in r.stop_ids:
            return "stop"
        return None

    def step(self) -> StepResult:
        """Schedule one batch, run it on the modelled GPU, return its duration and tokens."""
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        running = self._running
        scheduled: list[tuple[_Req, int]] = []
        preempted: list[str] = []

        i = 0
        while i < len(running) and budget > 0:
            r = running[i]
            n = min(len(r.all_ids) - r.num_computed, budget)
            if n <= 0:
                i += 1
                continue
            ok = True
            while not self._allocate(r, n):
                victim = running.pop()
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is r:
                    ok = False
                    break
            if not ok:
                break
            scheduled.append((r, n))
            budget -= n
            i += 1

        if not preempted:
            waiting = self._waiting
            while waiting and budget > 0 and len(running) < cfg.max_num_seqs:
                r = waiting[0]
                hit: list[int] = []
                num_hit = 0
                if r.num_computed == 0:
                    hit, num_hit = self._computed_blocks(r)
                n = min(len(r.all_ids) - num_hit, budget)
                if not self._fits_whole(r, hit) or not self._allocate(r, n, hit, num_hit):
                    break
                waiting.popleft()
                r.state = _RUNNING
                running.append(r)
                if r.num_cached_tokens < 0:
                    r.num_cached_tokens = num_hit
                scheduled.append((r, n))
                budget -= n

        if not scheduled:
            return StepResult(0.0, [], preempted=tuple(preempted))

        prefill_tokens = 0
        pairs = 0.0
        decode_seqs = 0
        decode_ctx = 0
        samplers: list[_Req] = []
        for r, n in scheduled:
            ctx = r.num_computed
            if n == 1 and len(r.all_ids) > r.num_prompt:
                decode_seqs += 1
                decode_ctx += ctx + 1
            else:
                prefill_tokens += n
                pairs += n * ctx + n * (n + 1) / 2
            r.num_computed = ctx + n
            if r.num_computed == len(r.all_ids):
                samplers.append(r)
        duration = self.timer.step_time(
            prefill_tokens, pairs, decode_seqs, decode_ctx, sampling_seqs=len(samplers)
        )

        outputs: list[TokenOutput] = []
        done: list[_Req] = []
        for r in samplers:
            if r.num_output == 0:
                self._prompt_tokens += r.num_prompt
            tok = self._next_token(r.all_ids)
            r.all_ids.append(tok)
            self._generation_tokens += 1
            reason = self._check_stop(r, tok)
            outputs.append(
                TokenOutput(r.request_id, tok, reason is not None, reason, r.num_cached_tokens)
            )
            if reason is not None:
                done.append(r)
        for r in done:
            self._finish(r)
        return StepResult(
            duration,
            outputs,
            num_prefill_tokens=prefill_tokens,
            num_decode_seqs=decode_seqs,
            preempted=tuple(preempted),
            scheduled=tuple(r.request_id for r, _ in scheduled),
        )

    def _finish(self, r: _Req) -> None:
        self._running.remove(r)
        self.pool.free_blocks(r.blocks)
        r.blocks = []
        r.state = _FINISHED
        del self._requests[r.request_id]
        self._finished += 1

    def can_burst(self) -> bool:
        """True when the next step is pure decode with nothing waiting (see decode_burst)."""
        if self._waiting or not self._running:
            return False
        if len(self._running) > self.config.max_num_batched_tokens:
            return False
        for r in self._running:
            if r.num_computed != len(r.all_ids) - 1 or r.num_output == 0:
                return False
        return True

    def decode_burst(self, now: float, until: float, max_steps: int = 1 << 30) -> DecodeBurst:
        """Run pure-decode steps back to back while each starts before `until`.

        Produces exactly what calling `step()` repeatedly would (same tokens, blocks, events,
        counters and float durations, accumulated in the same order from `now`), but without
        building per-token output objects. Stops early, before a step, when anything would
        make it differ from a plain decode step: a waiting request (there is none at the
        start and none can appear), a request not in decode, or too few free blocks for the
        step's new blocks (that step needs the preemption path of `step()`).
        """
        running = self._running
        participants = [r.request_id for r in running]
        index = {r.request_id: i for i, r in enumerate(running)}
        steps_run = [0] * len(running)
        finished: dict[str, str] = {}
        ends: list[float] = []
        if not self.can_burst():
            return DecodeBurst(ends, participants, steps_run, finished)
        bs = self.block_size
        pool = self.pool
        step_time = self.timer.decode_step_time
        next_token = self._next_token
        check_stop = self._check_stop
        allocate = self._allocate
        eos = self._eos
        max_model_len = self.config.max_model_len
        ends_append = ends.append
        ctx_sum = 0
        need = 0  # new blocks the next step allocates
        for r in running:
            ctx_sum += len(r.all_ids)
            if r.num_computed % bs == 0:
                need += 1
        t = now
        nsteps = 0
        if len(running) == 1:
            return self._single_decode_burst(now, until, max_steps, ends, participants, finished)
        while running and t < until and nsteps < max_steps and need <= pool.num_free:
            b = len(running)
            t += step_time(b, ctx_sum)
            ends_append(t)
            nsteps += 1
            need = 0
            done: list[_Req] | None = None
            for r in running:
                c = r.num_computed
                m = c % bs
                if m == 0 or m == bs - 1:  # a new block starts, or this token fills one
                    allocate(r, 1)
                c += 1
                r.num_computed = c
                ids = r.all_ids
                tok = next_token(ids)
                ids.append(tok)
                n_out = c + 1 - r.num_prompt
                if (
                    n_out >= r.max_tokens
                    or c + 1 >= max_model_len
                    or (
                        n_out >= r.min_tokens
                        and ((tok == eos and not r.ignore_eos) or tok in r.stop_ids)
                    )
                ):
                    reason = check_stop(r, tok)
                    if reason is not None:
                        if done is None:
                            done = []
                        done.append(r)
                        finished[r.request_id] = reason
                        steps_run[index[r.request_id]] = nsteps
                        continue
                if c % bs == 0:
                    need += 1
            self._generation_tokens += b
            ctx_sum += b
            if done is not None:
                for r in done:
                    ctx_sum -= len(r.all_ids)
                    self._finish(r)
        for i, rid in enumerate(participants):
            if rid not in finished:
                steps_run[i] = nsteps
        return DecodeBurst(ends, participants, steps_run, finished)

    def _single_decode_burst(
        self,
        now: float,
        until: float,
        max_steps: int,
        ends: list[float],
        participants: list[str],
        finished: dict[str, str],
    ) -> DecodeBurst:
        """`decode_burst` for one running request: the same operations in the same order,
        with the per-step work reduced to the few statements a lone decode needs."""
        r = self._running[0]
        bs = self.block_size
        pool = self.pool
        allocate = self._allocate
        next_token = self._next_token
        step_time = self.timer.decode_step_time
        ids = r.all_ids
        append = ids.append
        ends_append = ends.append
        c = r.num_computed
        ctx = len(ids)
        first_stop = r.num_prompt + r.min_tokens  # tokens in ids from which stops may fire
        last = min(r.num_prompt + r.max_tokens, self.config.max_model_len)
        eos = None if r.ignore_eos else self._eos
        stops = r.stop_ids
        t = now
        nsteps = 0
        reason: str | None = None
        while t < until and nsteps < max_steps:
            m = c % bs
            if m == 0:
                if not pool.num_free:
                    break
                allocate(r, 1)
            elif m == bs - 1:
                allocate(r, 1)
            t += step_time(1, ctx)
            ends_append(t)
            nsteps += 1
            c += 1
            r.num_computed = c
            tok = next_token(ids)
            append(tok)
            ctx += 1
            if ctx >= last or (ctx >= first_stop and (tok == eos or tok in stops)):
                reason = self._check_stop(r, tok)
                if reason is not None:
                    break
        self._generation_tokens += nsteps
        if reason is not None:
            finished[r.request_id] = reason
            self._finish(r)
        return DecodeBurst(ends, participants, [nsteps], finished)

    # ------------------------------------------------------------------ stats
    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self._running),
            num_waiting=len(self._waiting),
            kv_cache_usage=self.pool.usage(),
            prefix_cache_queries=self._prefix_queries,
            prefix_cache_hits=self._prefix_hits,
            num_preemptions=self._preemptions,
            prompt_tokens_total=self._prompt_tokens,
            generation_tokens_total=self._generation_tokens,
            num_gpu_blocks=self.num_gpu_blocks,
            block_size=self.block_size,
            num_finished=self._finished,
            extra={"num_evictions": float(self.pool.num_evictions)},
        )

    def reset_prefix_cache(self) -> bool:
        """Drop all cached hashes (vLLM's /reset_prefix_cache); False while blocks are in use."""
        return self.pool.reset_prefix_cache()
