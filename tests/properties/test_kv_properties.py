"""KV-cache conservation and the scheduler's contract, driven by a hypothesis state machine.

The machine adds, steps, bursts and aborts requests on a small `EngineCore` (a few blocks of
4 tokens, a small step budget: chunked prefill, prefix hits, eviction and preemption all
happen within a handful of rules) and checks after every rule, against a reference kept by
the test from the public API only (the requests it sent, the `StepResult`s and `DecodeBurst`s
it got back):

* blocks: every block is exactly one of used (referenced by a live request), cached
  (reference count 0, holding a prefix hash) or free, and ``used + cached + free == total``;
  the pool's free counter, free queue and ``kv_cache_usage`` agree with that partition;
* references: the sum of reference counts is the sum of the running requests' blocks, which
  is ``ceil(computed / block_size)`` per request: exact for a request that sampled a token in
  the last step, bounded for one in (re)prefill; nothing is referenced once no request is
  live (no leak through finish, abort or preemption);
* cached blocks only hold hashes of full blocks of token sequences that were sent or
  generated;
* tokens: each output is the model function of the context, stop/length rules as vLLM's
  ``check_stop``; counters (generated, prompt, finished, preemptions) match what was seen;
* cached prompt tokens reported for a request: a whole number of blocks, never more than the
  prefix it shares with requests sent before it (so never its own blocks cached before a
  preemption), and at least what was cached for it when it was sent if nothing was evicted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import hypothesis.strategies as st
import pytest
from hypothesis import event, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from modelfleet.engine.core import EngineConfig, EngineCore, EngineRequest, StepResult

pytestmark = pytest.mark.unit

BLOCK = 4
EOS = 7
VOCAB = 12  # small: random prompts share prefixes, and EOS comes up


def model(context: Sequence[int]) -> int:
    """A pure 'model': the next token depends on the whole context."""
    return (sum(context) * 5 + len(context) * 3) % VOCAB


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _shared_full_blocks(
    a: Sequence[int], b: Sequence[int], salt_a: str | None, salt_b: str | None
) -> int:
    """Tokens of the longest common prefix of whole blocks (0 when the cache salts differ)."""
    if salt_a != salt_b:
        return 0
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return (n // BLOCK) * BLOCK


@dataclass
class Ref:
    """The test's view of one request."""

    rid: str
    prompt: list[int]
    max_tokens: int
    min_tokens: int
    stop_ids: frozenset[int]
    ignore_eos: bool
    salt: str | None
    earlier: list[str]  # requests sent before this one
    cached_floor: int  # prefix tokens certainly cached when it was sent
    evictions_at_send: float
    out: list[int] = field(default_factory=list)
    state: str = "waiting"  # waiting | running | finished | aborted
    sampled_last_step: bool = False
    reported_cached: int | None = None
    reason: str | None = None

    def expected_stop(self, max_model_len: int) -> str | None:
        """vLLM's check_stop after the last output token."""
        n = len(self.out)
        if n >= self.max_tokens or len(self.prompt) + n >= max_model_len:
            return "length"
        if n < self.min_tokens:
            return None
        tok = self.out[-1]
        if (tok == EOS and not self.ignore_eos) or tok in self.stop_ids:
            return "stop"
        return None


prompts = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=22)


class EngineMachine(RuleBasedStateMachine):
    """Random traffic against one engine; the invariants below hold after every rule."""

    @initialize(
        blocks=st.integers(6, 10),
        budget=st.sampled_from([3, 6, 16]),
        seqs=st.integers(1, 4),
        caching=st.sampled_from([True, True, True, False]),
    )
    def start(self, blocks: int, budget: int, seqs: int, caching: bool) -> None:
        self.max_model_len = 40
        cfg = EngineConfig(
            accelerator="h100-80gb",
            model="tiny",
            block_size=BLOCK,
            num_gpu_blocks=blocks,
            max_num_seqs=seqs,
            max_num_batched_tokens=budget,
            max_model_len=self.max_model_len,
            enable_prefix_caching=caching,
            prefix_caching_hash_algo="builtin",
        )
        self.engine = EngineCore(cfg, next_token=model, eos_token_id=EOS)
        self.caching = caching
        self.blocks = blocks
        self.refs: dict[str, Ref] = {}
        self.order: list[str] = []
        self.n = 0
        self.preemptions = 0
        self.generated = 0
        self.finished = 0
        self.resets = 0

    # ------------------------------------------------------------------ helpers
    def _evictions(self) -> float:
        n = self.engine.stats().extra["num_evictions"]
        if n:
            event("eviction")
        return n

    def _cached_floor(self, prompt: list[int], salt: str | None) -> int:
        """Prefix tokens cached right now for `prompt`: blocks of requests past their prefill."""
        if not self.caching:
            return 0
        best = 0
        for rid in self.order:
            r = self.refs[rid]
            if r.out and r.state != "aborted":
                best = max(best, _shared_full_blocks(prompt, r.prompt, salt, r.salt))
        return min(best, ((len(prompt) - 1) // BLOCK) * BLOCK)

    def _live(self) -> list[Ref]:
        return [r for r in self.refs.values() if r.state in ("waiting", "running")]

    def _record_output(
        self, r: Ref, tok: int, finished: bool, reason: str | None, cached: int
    ) -> None:
        assert tok == model(r.prompt + r.out), f"{r.rid}: token is not the model's"
        r.out.append(tok)
        self.generated += 1
        expected = r.expected_stop(self.max_model_len)
        assert reason == expected and finished == (expected is not None), (
            f"{r.rid} after {len(r.out)} tokens: finish {reason!r}, check_stop says {expected!r}"
        )
        if r.reported_cached is None:
            r.reported_cached = cached
            if cached:
                event("prefix hit")
        assert cached == r.reported_cached, f"{r.rid}: cached prompt tokens changed"
        if finished:
            r.state = "finished"
            r.reason = reason
            self.finished += 1

    # ------------------------------------------------------------------ rules
    def _send(
        self,
        prompt: list[int],
        max_tokens: int,
        min_tokens: int,
        stop: frozenset[int],
        ignore_eos: bool,
        salt: str | None,
    ) -> None:
        rid = f"r{self.n}"
        self.n += 1
        min_tokens = min(min_tokens, max_tokens)
        req = EngineRequest(
            rid,
            prompt,
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            stop_token_ids=stop,
            ignore_eos=ignore_eos,
            cache_salt=salt,
        )
        total = len(prompt) + max_tokens
        fits = total <= self.max_model_len and _ceil(total, BLOCK) <= self.blocks
        if not fits:
            with pytest.raises(ValueError, match=rid):
                self.engine.add_request(req)
            return
        self.engine.add_request(req)
        self.refs[rid] = Ref(
            rid,
            list(prompt),
            max_tokens,
            min_tokens,
            stop,
            ignore_eos,
            salt,
            earlier=list(self.order),
            cached_floor=self._cached_floor(prompt, salt),
            evictions_at_send=self._evictions(),
        )
        self.order.append(rid)

    @rule(
        prompt=prompts,
        max_tokens=st.integers(1, 16),
        min_tokens=st.integers(0, 3),
        stop=st.frozensets(st.integers(0, VOCAB - 1), max_size=2) | st.just(frozenset()),
        ignore_eos=st.sampled_from([True, True, False]),
        salt=st.sampled_from([None, None, "s"]),
    )
    def add(
        self,
        prompt: list[int],
        max_tokens: int,
        min_tokens: int,
        stop: frozenset[int],
        ignore_eos: bool,
        salt: str | None,
    ) -> None:
        self._send(prompt, max_tokens, min_tokens, stop, ignore_eos, salt)

    @precondition(lambda self: bool(self.order))
    @rule(
        data=st.data(),
        suffix=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=6),
        with_output=st.booleans(),
        max_tokens=st.integers(1, 8),
    )
    def add_follow_up(
        self, data: st.DataObject, suffix: list[int], with_output: bool, max_tokens: int
    ) -> None:
        """A next turn: an earlier prompt (and its answer so far) plus a few new tokens."""
        base = self.refs[data.draw(st.sampled_from(self.order))]
        prompt = base.prompt + (base.out if with_output else []) + suffix
        self._send(prompt, max_tokens, 0, frozenset(), True, base.salt)

    @rule(n=st.integers(1, 5))
    def step(self, n: int) -> None:
        for i in range(n):
            if i:
                self.check_all()
            self._step()

    def _step(self) -> None:
        res: StepResult = self.engine.step()
        for r in self.refs.values():
            r.sampled_last_step = False
        self.preemptions += len(res.preempted)
        if res.preempted:
            event("preemption")
        for rid in res.preempted:
            self.refs[rid].state = "waiting"
        for rid in res.scheduled:
            assert self.refs[rid].state in ("waiting", "running"), rid
            self.refs[rid].state = "running"
        assert len(res.scheduled) == len(set(res.scheduled))
        assert not set(res.scheduled) & set(res.preempted)
        for o in res.outputs:
            r = self.refs[o.request_id]
            assert o.request_id in res.scheduled
            self._record_output(
                r, o.token_id, o.finished, o.finish_reason, o.num_cached_prompt_tokens
            )
            r.sampled_last_step = not o.finished
        if not self.engine.has_unfinished():
            assert not self._live()
        if self._live() and not res.scheduled:
            # Nothing fits: only possible while every live request waits for a preemption
            # that the running ones cannot give (none here: a lone request always fits).
            assert res.preempted, "work exists but the step scheduled nothing"

    @precondition(lambda self: self.engine.can_burst())
    @rule(steps=st.integers(1, 6))
    def burst(self, steps: int) -> None:
        running = [r for r in self._live() if r.state == "running"]
        res = self.engine.decode_burst(0.0, 1e9, max_steps=steps)
        event("burst")
        assert sorted(res.participants) == sorted(r.rid for r in running)
        assert len(res.step_ends) <= steps
        for r in self.refs.values():
            r.sampled_last_step = False
        for rid, n in zip(res.participants, res.steps_run, strict=True):
            r = self.refs[rid]
            for _ in range(n):  # replay the tokens with the reference model
                tok = model(r.prompt + r.out)
                last = _ == n - 1
                reason = res.finished.get(rid) if last else None
                self._record_output(r, tok, reason is not None, reason, r.reported_cached or 0)
            if r.state == "running":
                assert self.engine.output_token_ids(rid) == r.out
                r.sampled_last_step = n == len(res.step_ends) and n > 0

    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        live = self._live()
        if not live or data.draw(st.booleans()):
            self.engine.abort_request("never-sent")  # unknown ids are ignored
            return
        r = data.draw(st.sampled_from(live))
        self.engine.abort_request(r.rid)
        r.state = "aborted"
        r.sampled_last_step = False
        with pytest.raises(KeyError):
            self.engine.output_token_ids(r.rid)

    @rule()
    def reset(self) -> None:
        busy = any(r.state == "running" for r in self.refs.values())
        ok = self.engine.reset_prefix_cache()
        assert ok == (not busy)
        if ok:
            self.resets += 1
            assert not self.engine.pool.cached

    # ------------------------------------------------------------------ invariants
    def check_all(self) -> None:
        self.blocks_are_conserved()
        self.references_match_running_requests()
        self.cache_holds_only_seen_blocks()
        self.counters_match()
        self.cached_prompt_tokens_are_bounded()

    @invariant()
    def blocks_are_conserved(self) -> None:
        pool = self.engine.pool
        ref = pool.ref_cnt
        used = sum(1 for c in ref if c > 0)
        cached = sum(1 for b, c in enumerate(ref) if c == 0 and pool.block_hash[b] is not None)
        free = sum(1 for b, c in enumerate(ref) if c == 0 and pool.block_hash[b] is None)
        assert min(ref) >= 0
        assert used + cached + free == self.blocks
        assert pool.num_free == cached + free
        assert sorted(pool.free_queue()) == [b for b, c in enumerate(ref) if c == 0]
        assert self.engine.stats().kv_cache_usage == pytest.approx(used / self.blocks)
        pool.check_invariants()

    @invariant()
    def references_match_running_requests(self) -> None:
        total = sum(self.engine.pool.ref_cnt)
        lo = hi = 0
        for r in self.refs.values():
            if r.state != "running":
                continue
            full = _ceil(len(r.prompt) + len(r.out) - 1 if r.out else len(r.prompt), BLOCK)
            if r.sampled_last_step:  # computed = every token but the one just sampled
                lo += full
                hi += full
            else:  # in (re)prefill, or not scheduled in the last step: 0 < computed < all
                lo += 0
                hi += _ceil(len(r.prompt) + len(r.out), BLOCK)
        assert lo <= total <= hi, f"{total} block references, running requests need {lo}..{hi}"
        if not self._live():
            assert total == 0, "blocks still referenced with no live request"
        stats = self.engine.stats()
        assert stats.num_running == sum(r.state == "running" for r in self.refs.values())
        assert stats.num_waiting == sum(r.state == "waiting" for r in self.refs.values())

    @invariant()
    def cache_holds_only_seen_blocks(self) -> None:
        if not self.caching:
            assert not self.engine.pool.cached
            return
        hasher = self.engine.hasher
        seen = {d for r in self.refs.values() for d in hasher.hashes(r.prompt + r.out, r.salt)}
        assert set(self.engine.pool.cached) <= seen

    @invariant()
    def counters_match(self) -> None:
        s = self.engine.stats()
        assert s.generation_tokens_total == self.generated
        assert s.num_finished == self.finished
        assert s.num_preemptions == self.preemptions
        assert s.prompt_tokens_total == sum(len(r.prompt) for r in self.refs.values() if r.out)
        assert s.prefix_cache_hits <= s.prefix_cache_queries
        assert s.prefix_cache_hits % BLOCK == 0

    @invariant()
    def cached_prompt_tokens_are_bounded(self) -> None:
        for r in self.refs.values():
            if r.reported_cached is None:
                continue
            n = r.reported_cached
            assert n % BLOCK == 0 and n <= ((len(r.prompt) - 1) // BLOCK) * BLOCK
            ceiling = max(
                (
                    _shared_full_blocks(
                        r.prompt, self.refs[e].prompt + self.refs[e].out, r.salt, self.refs[e].salt
                    )
                    for e in r.earlier
                ),
                default=0,
            )
            assert n <= ceiling, (
                f"{r.rid}: {n} cached prompt tokens, earlier requests share {ceiling}"
            )
            if self.resets == 0 and self._evictions() == r.evictions_at_send:
                assert n >= r.cached_floor, f"{r.rid}: {n} cached, {r.cached_floor} were cached"


# The profile sets the number of examples (see tests/conftest.py); 50 rules per example.
EngineMachine.TestCase.settings = settings(
    max_examples=settings.default.max_examples, stateful_step_count=50
)
test_engine_kv_conservation = EngineMachine.TestCase
