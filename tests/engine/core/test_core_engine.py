"""The engine model: batching, chunked prefill, prefix caching, eviction, preemption, abort."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from support.engine_core import make_engine, toy_next_token

from modelfleet.engine.core import (
    BlockRemoved,
    BlockStored,
    EngineConfig,
    EngineCore,
    EngineRequest,
    KVEvent,
    StepResult,
)
from modelfleet.engine.kvcache import BlockHasher, event_hash
from modelfleet.engine.timing import StepTimer

pytestmark = pytest.mark.unit


def run_all(engine: EngineCore, limit: int = 10_000) -> list[StepResult]:
    steps = []
    while engine.has_unfinished():
        steps.append(engine.step())
        assert len(steps) < limit
    return steps


def reference_tokens(prompt: list[int], n: int) -> list[int]:
    ctx = list(prompt)
    for _ in range(n):
        ctx.append(toy_next_token(ctx))
    return ctx[len(prompt) :]


def tokens_by_request(steps: list[StepResult]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for s in steps:
        for o in s.outputs:
            out.setdefault(o.request_id, []).append(o.token_id)
    return out


def test_token_budget_and_max_num_seqs_respected():
    e = make_engine(max_num_seqs=3, max_num_batched_tokens=20, num_gpu_blocks=200)
    for i in range(6):
        e.add_request(EngineRequest(f"r{i}", [i + 1] * 12, max_tokens=4))
    for _ in range(200):
        if not e.has_unfinished():
            break
        s = e.step()
        assert s.num_prefill_tokens + s.num_decode_seqs <= 20
        assert e.stats().num_running <= 3
    assert not e.has_unfinished()
    assert e.stats().num_finished == 6


def test_chunked_prefill_splits_a_long_prompt_over_steps():
    e = make_engine(max_num_batched_tokens=64, num_gpu_blocks=100, block_size=4)
    e.add_request(EngineRequest("a", list(range(1, 201)), max_tokens=2))
    steps = run_all(e)
    assert [s.num_prefill_tokens for s in steps] == [64, 64, 64, 8, 0]
    assert [len(s.outputs) for s in steps] == [0, 0, 0, 1, 1]
    # a chunk attending to more context takes longer than the first chunk of equal size
    assert steps[1].duration > steps[0].duration


def test_generation_is_the_pure_function_of_context():
    e = make_engine()
    prompt = [5, 6, 7, 8, 9]
    e.add_request(EngineRequest("a", prompt, max_tokens=10))
    assert tokens_by_request(run_all(e))["a"] == reference_tokens(prompt, 10)


def test_repeated_prompt_hits_prefix_cache_and_has_shorter_ttft():
    e = make_engine(block_size=4, num_gpu_blocks=200, max_num_batched_tokens=512)
    prompt = list(range(1, 103))  # 102 tokens -> 25 full blocks
    e.add_request(EngineRequest("a", prompt, max_tokens=3))
    first = run_all(e)
    e.add_request(EngineRequest("b", prompt, max_tokens=3))
    second = run_all(e)
    assert first[0].outputs[0].num_cached_prompt_tokens == 0
    assert second[0].outputs[0].num_cached_prompt_tokens == 100
    assert second[0].duration < first[0].duration
    st = e.stats()
    assert st.prefix_cache_queries == 204
    assert st.prefix_cache_hits == 100
    assert st.prompt_tokens_total == 204


def test_fully_cached_prompt_still_recomputes_last_token():
    e = make_engine(block_size=4, num_gpu_blocks=50)
    prompt = list(range(1, 17))  # exactly 4 blocks
    e.add_request(EngineRequest("a", prompt, max_tokens=1))
    run_all(e)
    e.add_request(EngineRequest("b", prompt, max_tokens=1))
    steps = run_all(e)
    assert steps[0].outputs[0].num_cached_prompt_tokens == 12
    assert steps[0].num_prefill_tokens == 4


def test_prefix_caching_disabled_gives_no_hits():
    e = make_engine(enable_prefix_caching=False)
    for rid in ("a", "b"):
        e.add_request(EngineRequest(rid, list(range(1, 40)), max_tokens=1))
        run_all(e)
    assert e.stats().prefix_cache_hits == 0


def test_lru_evicts_least_recently_freed_blocks_first():
    events: list[KVEvent] = []
    e = make_engine(block_size=4, num_gpu_blocks=10, events=events)
    a, b, c = ([k] * 20 for k in (11, 22, 33))  # 5 full blocks each; the cache holds two
    for rid, prompt in (("a", a), ("b", b)):
        e.add_request(EngineRequest(rid, prompt, max_tokens=1))
        run_all(e)
    assert not any(isinstance(ev, BlockRemoved) for ev in events)
    e.add_request(EngineRequest("c", c, max_tokens=1))  # needs 5 blocks: evicts all of a's
    run_all(e)
    assert any(isinstance(ev, BlockRemoved) for ev in events)
    assert e.stats().extra["num_evictions"] == 5  # all of a's blocks, none of b's
    e.add_request(EngineRequest("b2", b, max_tokens=1))
    steps = run_all(e)
    assert steps[0].outputs[0].num_cached_prompt_tokens == 16  # b survived
    e.add_request(EngineRequest("a2", a, max_tokens=1))
    steps = run_all(e)
    assert steps[0].outputs[0].num_cached_prompt_tokens == 0  # a was evicted


def test_preemption_past_capacity_recomputes_and_keeps_tokens():
    e = make_engine(block_size=4, num_gpu_blocks=10, max_num_batched_tokens=256)
    pa, pb = [1] * 8, [2] * 8
    e.add_request(EngineRequest("a", pa, max_tokens=20))
    e.add_request(EngineRequest("b", pb, max_tokens=20))
    steps = run_all(e)
    preempted = [rid for s in steps for rid in s.preempted]
    assert preempted, "two 28-token requests cannot fit 40 slots at once"
    assert preempted[0] == "b"  # the most recently added running request goes first
    assert e.stats().num_preemptions == len(preempted)
    toks = tokens_by_request(steps)
    assert toks["a"] == reference_tokens(pa, 20)
    assert toks["b"] == reference_tokens(pb, 20)
    assert e.stats().kv_cache_usage == 0.0


def test_admission_needs_room_for_the_whole_prompt_not_just_the_first_chunk():
    """vLLM 0.32's scheduler_reserve_full_isl: with 10 blocks of 4 and "a" holding 5, a
    24-token prompt (6 blocks) waits even though its first 8-token chunk (2 blocks) fits;
    admitting it would make the two preempt each other."""
    e = make_engine(block_size=4, num_gpu_blocks=10, max_num_batched_tokens=8)
    e.add_request(EngineRequest("a", [1] * 16, max_tokens=4))
    e.step()
    e.step()  # "a" has computed its 16-token prompt: 4 blocks, 5 with its next token
    e.add_request(EngineRequest("b", [2] * 24, max_tokens=2))
    s = e.step()
    assert s.scheduled == ("a",) and e.stats().num_waiting == 1
    steps = run_all(e)
    assert not [rid for st in steps for rid in st.preempted]
    assert tokens_by_request(steps)["b"] == reference_tokens([2] * 24, 2)


def test_abort_frees_blocks_and_is_idempotent():
    e = make_engine(block_size=4, num_gpu_blocks=20)
    e.add_request(EngineRequest("a", list(range(1, 30)), max_tokens=50))
    e.add_request(EngineRequest("w", list(range(1, 5)), max_tokens=5))
    e.step()
    assert e.stats().kv_cache_usage == pytest.approx((8 + 1) / 20)  # ceil(29/4) + ceil(4/4)
    e.abort_request("a")
    e.abort_request("a")
    e.abort_request("never-existed")
    e.abort_request("w")
    assert e.stats().kv_cache_usage == 0.0
    assert not e.has_unfinished()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompt_token_ids": []}, "empty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2000}, "max_model_len"),
        ({"min_tokens": 9, "max_tokens": 5}, "min_tokens"),
    ],
    ids=["empty-prompt", "zero-max-tokens", "too-long", "min-above-max"],
)
def test_add_request_rejects_bad_requests(kwargs, match):
    e = make_engine()
    base = {"request_id": "x", "prompt_token_ids": [1, 2, 3], "max_tokens": 5}
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        e.add_request(EngineRequest(**base))


def test_request_bigger_than_cache_is_rejected():
    e = make_engine(block_size=4, num_gpu_blocks=4, max_model_len=1024)
    with pytest.raises(ValueError, match="KV blocks"):
        e.add_request(EngineRequest("x", [1] * 30, max_tokens=5))


def test_duplicate_request_id_rejected():
    e = make_engine()
    e.add_request(EngineRequest("x", [1, 2], max_tokens=2))
    with pytest.raises(ValueError, match="already"):
        e.add_request(EngineRequest("x", [1, 2], max_tokens=2))


def test_stop_tokens_eos_and_min_tokens():
    prompt = [5, 6, 7]
    ref = reference_tokens(prompt, 10)
    e = make_engine(eos_token_id=ref[2])
    e.add_request(EngineRequest("eos", prompt, max_tokens=10))
    assert tokens_by_request(run_all(e))["eos"] == ref[:3]
    e.add_request(EngineRequest("ign", prompt, max_tokens=10, ignore_eos=True))
    assert tokens_by_request(run_all(e))["ign"] == ref
    e.add_request(EngineRequest("stop", prompt, max_tokens=10, stop_token_ids=frozenset({ref[1]})))
    steps = run_all(e)
    assert tokens_by_request(steps)["stop"] == ref[:2]
    assert steps[-1].outputs[-1].finish_reason == "stop"
    e.add_request(
        EngineRequest(
            "min", prompt, max_tokens=10, min_tokens=4, stop_token_ids=frozenset({ref[1]})
        )
    )
    steps = run_all(e)
    assert tokens_by_request(steps)["min"] == ref  # ref[1] never recurs after min_tokens
    assert steps[-1].outputs[-1].finish_reason == "length"


def test_kv_events_carry_vllm_hashes_including_generated_blocks():
    events: list[KVEvent] = []
    e = make_engine(block_size=4, num_gpu_blocks=50, events=events)
    prompt = list(range(100, 110))  # 10 tokens: 2 full blocks after prefill
    e.add_request(EngineRequest("a", prompt, max_tokens=8))
    steps = run_all(e)
    stored = [ev for ev in events if isinstance(ev, BlockStored)]
    hashes = [h for ev in stored for h in ev.block_hashes]
    gen = tokens_by_request(steps)["a"]
    all_ids = prompt + gen
    # computed tokens = prompt + all generated but the last (which has no KV yet)
    want = [event_hash(d) for d in BlockHasher(4).hashes(all_ids[: len(all_ids) - 1])]
    assert hashes == want
    assert stored[0].parent_block_hash is None
    assert stored[1].parent_block_hash == stored[0].block_hashes[-1]


def test_injected_block_hasher_is_used_and_must_match_block_size():
    class Tagged(BlockHasher):
        """Builtin chaining, offset so its digests differ from the default hasher's."""

        def hash_block(self, parent, tokens, extra):  # type: ignore[no-untyped-def]
            return super().hash_block(parent, tokens, extra) + 1

        def extend(self, hashes, token_ids, cache_salt=None):  # type: ignore[no-untyped-def]
            while len(hashes) < len(token_ids) // self.block_size:
                i = len(hashes)
                block = token_ids[i * self.block_size : (i + 1) * self.block_size]
                hashes.append(self.hash_block(hashes[-1] if hashes else None, block, None))

    cfg = EngineConfig("h100-80gb", "tiny", block_size=4, num_gpu_blocks=50)
    events: list[KVEvent] = []
    hasher = Tagged(4, "builtin")
    e = EngineCore(cfg, next_token=toy_next_token, kv_event_sink=events.append, block_hasher=hasher)
    assert e.hasher is hasher
    prompt = list(range(100, 110))
    e.add_request(EngineRequest("a", prompt, max_tokens=2))
    run_all(e)
    stored = [h for ev in events if isinstance(ev, BlockStored) for h in ev.block_hashes]
    assert stored[:2] == [event_hash(d) for d in hasher.hashes(prompt)]
    with pytest.raises(ValueError, match=r"block_hasher\.block_size=16"):
        EngineCore(cfg, next_token=toy_next_token, block_hasher=BlockHasher(16, "builtin"))


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="b200"):
        EngineConfig.for_model("b200", "llama-3-8b")
    with pytest.raises(ValueError, match="llama-9"):
        EngineConfig.for_model("h100-80gb", "llama-9")
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        EngineConfig.for_model("h100-80gb", "llama-3-8b", 3)
    with pytest.raises(ValueError, match="does not fit"):
        EngineCore(EngineConfig.for_model("l40s", "llama-3-70b", 2), next_token=toy_next_token)


def test_derived_capacity_matches_memory_arithmetic():
    cfg = EngineConfig.for_model("h100-80gb", "llama-3-8b")
    gib = 1024**3
    # Llama-3-8B in bf16: 8.03e9 parameters; K and V of 32 layers x 8 KV heads x 128 dims.
    # usable = 79.1 GiB x 0.9 - weights / TP - 2 GiB reserve; a block holds 16 tokens.
    for tp in (1, 2):
        usable = 79.1 * gib * 0.9 - 8.03e9 * 2 / tp - 2 * gib
        block_bytes = 2 * 32 * (8 // tp) * 128 * 2 * 16
        blocks = EngineConfig.for_model("h100-80gb", "llama-3-8b", tp).resolved_num_gpu_blocks()
        assert blocks == int(usable // block_bytes)
    assert cfg.resolved_num_gpu_blocks() * cfg.block_size == 444_272  # ~0.44 M tokens


# ------------------------------------------------------------------ scheduler edges


def test_config_bounds_and_messages() -> None:
    ok = EngineConfig.for_model("h100-80gb", "tiny", 8, block_size=32, num_gpu_blocks=1)
    assert (ok.block_size, ok.num_gpu_blocks, ok.tensor_parallel_size) == (32, 1, 8)
    EngineConfig.for_model("h100-80gb", "tiny", 4, gpu_memory_utilization=1.0)
    for overrides, message in [
        ({"block_size": 0}, "block_size must be a positive integer, got 0"),
        ({"max_num_seqs": 1.5}, "max_num_seqs must be a positive integer, got 1.5"),
        ({"num_gpu_blocks": 0}, "num_gpu_blocks must be positive, got 0"),
        ({"gpu_memory_utilization": 0.0}, "gpu_memory_utilization must be in (0, 1], got 0.0"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization must be in (0, 1], got 1.5"),
        (
            {"prefix_caching_hash_algo": "md5"},
            "prefix_caching_hash_algo must be one of sha256, sha256_cbor, builtin, got 'md5'",
        ),
    ]:
        with pytest.raises(ValueError) as err:
            EngineConfig.for_model("h100-80gb", "tiny", **overrides)
        assert str(err.value) == message


def test_engine_takes_every_setting_from_its_config() -> None:
    cfg = EngineConfig.for_model(
        "h100-80gb", "tiny", 2, num_gpu_blocks=9, block_size=8, hash_seed="42",
        prefix_caching_hash_algo="sha256_cbor", kv_events_int_hashes=False,
    )  # fmt: skip
    events: list[KVEvent] = []
    e = EngineCore(cfg, next_token=toy_next_token, kv_event_sink=events.append)
    assert (e.hasher.algo, e.hasher.block_size) == ("sha256_cbor", 8)
    assert e.hasher.none_hash == BlockHasher(8, "sha256_cbor", "42").none_hash
    assert e.timer.step_time(100, 5050.0, 0, 0) == StepTimer(
        e.accelerator_spec, e.model_spec, 2
    ).step_time(100, 5050.0, 0, 0)
    s = e.stats()
    assert (s.num_gpu_blocks, s.block_size) == (9, 8)
    e.add_request(EngineRequest("a", list(range(1, 17)), max_tokens=1, cache_salt="salt"))
    run_all(e)
    stored = [ev for ev in events if isinstance(ev, BlockStored)]
    assert [type(h) for ev in stored for h in ev.block_hashes] == [bytes, bytes]
    assert stored[0].extra_keys == [["salt"], None]
    off = EngineCore(
        EngineConfig.for_model("h100-80gb", "tiny", num_gpu_blocks=9, enable_prefix_caching=False),
        next_token=toy_next_token,
    )
    assert not off.pool.enable_caching


def test_a_used_up_budget_admits_nothing_and_one_token_admits_a_chunk() -> None:
    e = make_engine(max_num_batched_tokens=8)
    e.add_request(EngineRequest("a", list(range(1, 9)), max_tokens=2))
    e.add_request(EngineRequest("b", list(range(1, 5)), max_tokens=2))
    r = e.step()
    assert r.scheduled == ("a",) and (e.stats().num_running, e.stats().num_waiting) == (1, 1)
    e2 = make_engine(max_num_batched_tokens=9)
    e2.add_request(EngineRequest("a", list(range(1, 9)), max_tokens=2))
    e2.add_request(EngineRequest("b", list(range(1, 5)), max_tokens=2))
    r2 = e2.step()
    assert r2.scheduled == ("a", "b") and r2.num_prefill_tokens == 9  # b's first token only


def test_step_duration_is_the_timer_of_its_batch() -> None:
    """A 1-token prompt is prefill, not decode; pairs = n * ctx + n (n + 1) / 2 per chunk."""
    e = make_engine(max_num_batched_tokens=6, block_size=4)
    e.add_request(EngineRequest("one", [5], max_tokens=3))
    e.add_request(EngineRequest("long", list(range(1, 11)), max_tokens=2))
    r = e.step()  # one: 1 token (prefill, ctx 0); long: 5 tokens (ctx 0)
    assert (r.num_prefill_tokens, r.num_decode_seqs) == (6, 0)
    assert r.duration == e.timer.step_time(6, 1 + 15.0, 0, 0, sampling_seqs=1)
    r = e.step()  # one decodes (ctx 2); long: 5 more tokens (ctx 5)
    assert (r.num_prefill_tokens, r.num_decode_seqs) == (5, 1)
    assert r.duration == e.timer.step_time(5, 5 * 5 + 15.0, 1, 2, sampling_seqs=2)
    empty = make_engine().step()
    assert (empty.duration, empty.outputs, empty.preempted, empty.scheduled) == (0.0, [], (), ())


def test_stop_rules_at_their_boundaries() -> None:
    def eos_always(context: Sequence[int]) -> int:
        return 0

    e = EngineCore(
        EngineConfig.for_model("h100-80gb", "tiny", num_gpu_blocks=64, block_size=4),
        next_token=eos_always,
        eos_token_id=0,
    )
    e.add_request(EngineRequest("min2", [1, 2, 3], max_tokens=9, min_tokens=2))
    e.add_request(EngineRequest("ids", [1, 2, 3], max_tokens=9, stop_token_ids=frozenset({0}),
                                ignore_eos=True))  # fmt: skip
    e.add_request(EngineRequest("ignore", [1, 2, 3], max_tokens=4, ignore_eos=True))
    done = {o.request_id: (len(tokens_by_request(steps)[o.request_id]), o.finish_reason)
            for steps in [run_all(e)] for s in steps for o in s.outputs if o.finished}  # fmt: skip
    assert done == {"min2": (2, "stop"), "ids": (1, "stop"), "ignore": (4, "length")}


def test_a_prompt_one_past_a_block_boundary_hits_all_its_full_blocks() -> None:
    e = make_engine(block_size=4)
    for rid in ("a", "b", "c"):
        e.add_request(EngineRequest(rid, list(range(1, 10)), max_tokens=1))  # 9 tokens
        out = run_all(e)[0].outputs[0]
        assert out.num_cached_prompt_tokens == (0 if rid == "a" else 8)
    assert e.stats().prefix_cache_hits == 16 and e.stats().prefix_cache_queries == 27


def test_abort_of_a_preempted_request_removes_it_from_the_queue() -> None:
    e = make_engine(block_size=4, num_gpu_blocks=6, max_num_batched_tokens=64)
    e.add_request(EngineRequest("a", list(range(1, 9)), max_tokens=12, ignore_eos=True))
    e.add_request(EngineRequest("b", list(range(11, 19)), max_tokens=12, ignore_eos=True))
    preempted: list[str] = []
    while not preempted:
        preempted += e.step().preempted
    victim = preempted[0]
    assert e.stats().num_waiting == 1
    e.abort_request(victim)
    assert e.stats().num_waiting == 0 and e.stats().num_running == 1
    steps = run_all(e)
    assert {o.request_id for s in steps for o in s.outputs} == {"a", "b"} - {victim}
    assert e.stats().kv_cache_usage == 0.0


def test_can_burst_only_for_pure_decode() -> None:
    e = make_engine(max_num_batched_tokens=4, block_size=4)
    assert not e.can_burst()
    burst = e.decode_burst(0.0, 10.0)
    assert (burst.step_ends, burst.participants, burst.steps_run, burst.finished) == (
        [],
        [],
        [],
        {},
    )
    e.add_request(EngineRequest("a", list(range(1, 7)), max_tokens=200))
    assert not e.can_burst()  # waiting
    e.step()
    assert not e.can_burst()  # mid-prefill (4 of 6 prompt tokens)
    e.step()
    assert e.can_burst()  # decoding, nothing waits
    for rid in ("b", "c", "d"):
        e.add_request(EngineRequest(rid, [7], max_tokens=200))
    while e.stats().num_waiting:
        e.step()
    while not all(len(e.output_token_ids(r)) for r in "abcd"):
        e.step()
    assert e.can_burst()  # 4 decoding requests = the 4-token budget
    e.add_request(EngineRequest("e", [8], max_tokens=200))
    assert not e.can_burst()
    none_run = e.decode_burst(0.0, 10.0)
    assert none_run.step_ends == [] and none_run.steps_run == [0, 0, 0, 0]
    assert none_run.participants == ["a", "b", "c", "d"] and none_run.finished == {}


def test_the_last_budget_token_goes_to_a_decode() -> None:
    e = make_engine(max_num_batched_tokens=2)
    for rid, token in (("a", 5), ("b", 6)):
        e.add_request(EngineRequest(rid, [token], max_tokens=5))
    e.step()  # both one-token prompts: 2 prefill tokens
    r = e.step()
    assert r.scheduled == ("a", "b") and r.num_decode_seqs == 2
