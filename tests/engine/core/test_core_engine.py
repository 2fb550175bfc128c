"""The engine model: batching, chunked prefill, prefix caching, eviction, preemption, abort."""

from __future__ import annotations

import pytest
from engine_core_helpers import make_engine, toy_next_token

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
    assert e.stats().extra["num_evictions"] > 0
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
    assert e.stats().kv_cache_usage > 0
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
    tokens = cfg.resolved_num_gpu_blocks() * cfg.block_size
    # (79.1 GiB * 0.9 - 15 GiB weights - reserve) / 128 KiB per token: ~0.4-0.5 M tokens
    assert 350_000 < tokens < 500_000
    tp2 = EngineConfig.for_model("h100-80gb", "llama-3-8b", 2).resolved_num_gpu_blocks()
    assert tp2 > 2 * cfg.resolved_num_gpu_blocks()
