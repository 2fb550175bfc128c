"""Hashers, the chain walk, the approximate (LRU) and precise (KV-event) indexes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from policy_fakes import FakeClock, req, tokens

from modelfleet.policy.hashing import (
    ApproxAutoHasher,
    ApproxTextHasher,
    ApproxTokenHasher,
    FunctionBlockHasher,
)
from modelfleet.policy.prefix import (
    ApproxPrefixIndex,
    HolderMap,
    PrecisePrefixIndex,
    walk_chain,
)
from modelfleet.policy.types import BlockChain, Decision, EndpointId, RequestId

pytestmark = pytest.mark.unit

A, B, C = EndpointId("a"), EndpointId("b"), EndpointId("c")


def routed(endpoint: EndpointId) -> Decision:
    return Decision(endpoint, RequestId("r"), (), {}, {}, (), {}, {}, {})


# -- hashers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_tokens", "blocks"),
    [
        pytest.param(0, 0, id="empty"),
        pytest.param(15, 0, id="partial-block-only"),
        pytest.param(16, 1, id="one-block"),
        pytest.param(40, 2, id="full-blocks-only"),
    ],
)
def test_token_hasher_counts_full_blocks(n_tokens: int, blocks: int) -> None:
    h = ApproxTokenHasher(block_size=16)
    assert len(h.chain(req(token_ids=tokens(n_tokens)))) == blocks


def test_token_hasher_chain_is_prefix_identifying() -> None:
    h = ApproxTokenHasher(block_size=16)
    base = h.chain(req(token_ids=tokens(64)))
    same_head = h.chain(req(token_ids=np.concatenate([tokens(32), tokens(32, start=999)])))
    assert base[:2] == same_head[:2] and base[2:] != same_head[2:]
    # a change in block 0 changes every later element (chained)
    changed = h.chain(req(token_ids=np.concatenate([[7], tokens(63, start=1)])))
    assert all(x != y for x, y in zip(base, changed, strict=True))
    # order within a block and order of blocks matter
    swapped = h.chain(req(token_ids=np.concatenate([tokens(16, 16), tokens(16), tokens(32, 32)])))
    assert swapped[1] != base[1]
    assert len(set(base)) == len(base)


def test_token_hasher_list_and_array_agree() -> None:
    h = ApproxTokenHasher(block_size=8)
    ids = tokens(50, start=100_000)
    assert h.chain(req(token_ids=ids)) == h.chain(req(token_ids=ids.tolist()))


def test_seed_and_block_size_change_the_name_and_values() -> None:
    r = req(token_ids=tokens(64))
    a, b = ApproxTokenHasher(16, seed=0), ApproxTokenHasher(16, seed=1)
    assert a.name != b.name and a.chain(r) != b.chain(r)


def test_text_hasher_and_auto_hasher() -> None:
    t = ApproxTextHasher(block_size=4)
    assert len(t.chain(req(text="abcdefghij"))) == 2
    assert t.chain(req(text="")) == [] and t.chain(req()) == []
    auto = ApproxAutoHasher(block_size=2, chars_per_token=2)
    assert auto.chain(req(text="abcdefgh")) == t.chain(req(text="abcdefgh"))
    assert len(auto.chain(req(token_ids=tokens(5)))) == 2


def test_request_chain_is_computed_once_per_hasher() -> None:
    calls: list[int] = []

    def fn(ids: object) -> list[int]:
        calls.append(1)
        return [1, 2]

    h = FunctionBlockHasher("f", 16, fn)
    r = req(token_ids=tokens(32))
    assert r.chain(h) is r.chain(h)
    assert calls == [1]
    assert r.chain(h) == BlockChain((1, 2), 16)


def test_given_block_hashes_win_over_any_hasher() -> None:
    r = req(block_hashes=[11, 12], block_size=512, prompt_tokens=1100)
    assert r.chain(ApproxTokenHasher()) == BlockChain((11, 12), 512)
    with pytest.raises(ValueError, match="block_size must be > 0"):
        req(block_hashes=[1])


# -- chain walk --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("holders", "chain", "expected"),
    [
        pytest.param({}, (1, 2, 3), {}, id="empty-index"),
        pytest.param({1: {A}}, (), {}, id="empty-chain"),
        pytest.param({1: {A}, 2: {A}, 3: {A}}, (1, 2, 3), {A: 30}, id="one-endpoint-full"),
        pytest.param(
            {1: {A, B, C}, 2: {A, B}, 3: {A}}, (1, 2, 3), {A: 30, B: 20, C: 10}, id="staggered"
        ),
        pytest.param({1: {A, B}, 2: {A, B}}, (1, 2, 9), {A: 20, B: 20}, id="all-equal"),
        pytest.param({2: {A}}, (1, 2), {}, id="needs-head"),
        pytest.param({1: {A}, 2: {B}}, (1, 2), {A: 10}, id="gap-stops"),
    ],
)
def test_walk_chain(holders: dict, chain: tuple, expected: dict) -> None:
    assert walk_chain(holders, BlockChain(chain, 10), 0) == expected


def test_walk_chain_caps_at_prompt_tokens() -> None:
    assert walk_chain({1: {A}, 2: {A}}, BlockChain((1, 2), 10), 15) == {A: 15}


# -- approximate index -------------------------------------------------------------------


def test_approx_index_learns_routed_requests() -> None:
    idx = ApproxPrefixIndex(ApproxTokenHasher(16))
    r1 = req("1", prompt_tokens=64, token_ids=tokens(64))
    assert idx.match(r1) == {}
    idx.on_routed(r1, routed(A))
    r2 = req("2", prompt_tokens=80, token_ids=np.concatenate([tokens(48), tokens(32, 5000)]))
    assert idx.match(r2) == {A: 48}
    idx.on_migrated(r1, A, B, 10)
    assert idx.match(r1) == {A: 64, B: 64}


def test_approx_index_lru_evicts_tail_blocks_first() -> None:
    idx = ApproxPrefixIndex(ApproxTokenHasher(16), capacity_blocks=4)
    old = req("old", prompt_tokens=64, token_ids=tokens(64))
    idx.on_routed(old, routed(A))
    new = req("new", prompt_tokens=32, token_ids=tokens(32, 9000))
    idx.on_routed(new, routed(A))
    assert idx.blocks(A) == 4
    # the old request's two tail blocks went first; its head is still matched
    assert idx.match(old) == {A: 32}
    assert idx.match(new) == {A: 32}


def test_approx_index_forget() -> None:
    idx = ApproxPrefixIndex(ApproxTokenHasher(16))
    r = req(prompt_tokens=32, token_ids=tokens(32))
    idx.on_routed(r, routed(A))
    idx.on_routed(r, routed(B))
    idx.forget(A)
    assert idx.match(r) == {B: 32}
    with pytest.raises(ValueError):
        ApproxPrefixIndex(ApproxTokenHasher(16), capacity_blocks=0)


# -- precise index -----------------------------------------------------------------------


@dataclass
class BlockStored:
    block_hashes: list[int]
    parent_block_hash: int | None = None
    token_ids: list[int] = field(default_factory=list)


@dataclass
class BlockRemoved:
    block_hashes: list[int]


@dataclass
class AllBlocksCleared:
    pass


def chain_fn(ids: object) -> list[int]:
    n = len(ids) // 4  # type: ignore[arg-type]
    return [100 + i for i in range(n)]


def precise(ttl: float = 0.0, clock: FakeClock | None = None) -> PrecisePrefixIndex:
    return PrecisePrefixIndex(
        FunctionBlockHasher("fake", 4, chain_fn), clock=clock or FakeClock(), speculative_ttl_s=ttl
    )


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([BlockStored([100, 101]), BlockStored([102], 101)], id="dataclasses"),
        pytest.param(
            [
                {"type": "BlockStored", "block_hashes": [100, 101], "parent_block_hash": None},
                {"type": "BlockStored", "block_hashes": [102], "parent_block_hash": 101},
            ],
            id="msgpack-dicts",
        ),
    ],
)
def test_precise_index_applies_stores(events: list[object]) -> None:
    idx = precise()
    for e in events:
        idx.on_kv_event(A, e)
    r = req(prompt_tokens=16, token_ids=tokens(16))
    assert idx.match(r) == {A: 12}
    assert idx.events_applied == 2


def test_precise_index_remove_clear_and_idempotent_store() -> None:
    idx = precise()
    idx.apply(A, BlockStored([100, 101, 102]))
    idx.apply(A, BlockStored([100]))  # re-emitted store: idempotent
    idx.apply(B, BlockStored([100, 101]))
    r = req(prompt_tokens=12, token_ids=tokens(12))
    assert idx.match(r) == {A: 12, B: 8}
    idx.apply(A, BlockRemoved([101]))
    assert idx.match(r) == {A: 4, B: 8}
    idx.apply(B, AllBlocksCleared())
    assert idx.match(r) == {A: 4}
    idx.apply(A, {"type": "SomethingNew"})
    assert idx.match(r) == {A: 4}


def test_precise_index_speculative_entries_expire() -> None:
    clock = FakeClock()
    idx = precise(ttl=2.0, clock=clock)
    r = req("1", prompt_tokens=8, token_ids=tokens(8))
    idx.on_routed(r, routed(A))
    assert idx.match(r) == {A: 8}
    idx.apply(A, BlockStored([100]))  # the engine confirmed block 0 only
    clock.advance(3.0)
    idx.on_routed(req("2", prompt_tokens=4, token_ids=tokens(4)), routed(B))
    assert idx.match(r) == {A: 4, B: 4}


# -- the binary-search walk of the approximate index --------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_prefix_closed_walk_equals_linear_walk(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hm = HolderMap()
    chain = BlockChain(tuple(range(1000, 1000 + 40)), 16)
    for e in range(12):
        depth = int(rng.integers(0, 41))
        for h in chain.hashes[:depth]:
            hm.add(h, EndpointId(f"e{e}"))
    for cap in (0, 100, 10_000):
        assert hm.walk_prefix_closed(chain, cap) == hm.walk(chain, cap)


@pytest.mark.parametrize("seed", range(3))
def test_approx_index_keeps_chains_prefix_closed_under_eviction(seed: int) -> None:
    """The invariant the binary-search walk relies on, under heavy LRU eviction."""
    rng = np.random.default_rng(seed)
    idx = ApproxPrefixIndex(ApproxTokenHasher(8), capacity_blocks=20)
    bases = [rng.integers(0, 1000, 200) for _ in range(4)]
    reqs = []
    for i in range(60):
        base = bases[int(rng.integers(0, 4))]
        n = int(rng.integers(8, 200))
        r = req(f"r{i}", prompt_tokens=n, token_ids=base[:n])
        reqs.append(r)
        idx.on_routed(r, routed(EndpointId(f"e{int(rng.integers(0, 3))}")))
    for r in reqs:
        chain = r.chain(idx.hasher)
        assert idx.match(r) == idx._holders.walk(chain, r.prompt_tokens)


def test_approx_index_holds_each_endpoint_to_its_own_capacity_in_tokens() -> None:
    idx = ApproxPrefixIndex(ApproxTokenHasher(16))
    idx.set_capacity(A, 64)
    idx.set_capacity(B, 10_000)
    r = req("r", prompt_tokens=128, token_ids=tokens(128))
    idx.on_routed(r, routed(A))
    idx.on_routed(r, routed(B))
    assert idx.tokens(A) == 64 and idx.match(r) == {A: 64, B: 128}
    with pytest.raises(ValueError, match="capacity"):
        idx.set_capacity(A, 0)


def test_approx_index_counts_given_chains_at_their_block_size() -> None:
    """A trace chain of 512-token blocks uses 512 tokens of capacity per block, not one."""
    idx = ApproxPrefixIndex(ApproxTokenHasher(64))
    idx.set_capacity(A, 1024)
    r = req("r", prompt_tokens=2048, block_hashes=(1, 2, 3, 4), block_size=512)
    idx.on_routed(r, routed(A))
    assert idx.tokens(A) == 1024 and idx.match(r) == {A: 1024}


def test_running_requests_pin_their_decode_room_like_the_engine() -> None:
    """Requests in flight hold KV for their output: the index evicts cached prefixes to make
    room, and gives it back when they complete (as the engine's free queue does)."""
    idx = ApproxPrefixIndex(ApproxTokenHasher(16))
    idx.set_capacity(A, 128)
    cached = req("c", prompt_tokens=96, token_ids=tokens(96, 7000))
    idx.on_routed(cached, routed(A))
    idx.on_completed(cached.id, A)
    assert idx.match(cached) == {A: 96}
    busy = req("b", prompt_tokens=16, token_ids=tokens(16, 9000), max_tokens=64)
    idx.on_routed(busy, routed(A))  # 16 learned + 64 pinned: only 48 left for the old prefix
    assert idx.match(cached) == {A: 48}
    idx.on_completed(busy.id, A)
    filler = req("f", prompt_tokens=16, token_ids=tokens(16, 11_000))
    idx.on_routed(filler, routed(A))  # room is back: nothing more is evicted
    assert idx.match(cached) == {A: 48} and idx.match(filler) == {A: 16}
