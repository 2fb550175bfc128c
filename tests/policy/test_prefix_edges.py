"""The prefix indexes' edges, exactly: refusals, capacity and pins, the holder map's bits, the
walks' empty and capped cases, and the precise index's event kinds and speculation TTL."""

from __future__ import annotations

from typing import Any

import pytest
from policy_fakes import FakeClock, req, tokens

from modelfleet.policy.framework import Data
from modelfleet.policy.hashing import ApproxTokenHasher, FunctionBlockHasher
from modelfleet.policy.prefix import ApproxPrefixIndex, HolderMap, PrecisePrefixIndex
from modelfleet.policy.types import BlockChain, Decision, EndpointId, RequestId

pytestmark = pytest.mark.unit

A, B, C = EndpointId("a"), EndpointId("b"), EndpointId("c")


def routed(endpoint: EndpointId, rid: str = "r") -> Decision:
    return Decision(endpoint, RequestId(rid), (), {}, {}, (), {}, {}, {})


# -- the holder map -------------------------------------------------------------------------


def test_holder_bits_are_given_in_order_and_removed_exactly() -> None:
    hm = HolderMap()
    assert (hm.bit(B), hm.bit(A), hm.bit(B), hm.bit(C)) == (1, 2, 1, 4)
    hm.add(10, A)
    hm.add(10, C)
    hm.add(11, B)
    assert hm.masks == {10: 2 | 4, 11: 1}
    assert hm.holders(10) == {A, C} and hm.holders(99) == set()
    hm.discard(10, A)
    assert hm.masks == {10: 4, 11: 1}
    hm.discard(10, C)  # the last holder: the block is gone
    assert hm.masks == {11: 1}
    hm.discard(12, A)  # unknown block: nothing happens
    hm.discard(11, A)  # a holder it does not have: unchanged
    assert hm.masks == {11: 1}


@pytest.mark.parametrize("walk", ["walk", "walk_prefix_closed"])
def test_walks_of_empty_unheld_and_uncapped_chains(walk: str) -> None:
    hm = HolderMap()
    for h in (1, 2, 3):
        hm.add(h, A)
    hm.add(1, B)
    go = getattr(hm, walk)
    assert go(BlockChain((), 16), 0) == {}
    assert go(BlockChain((7, 1, 2), 16), 0) == {}  # the first block is nobody's
    assert go(BlockChain((1, 2, 3), 16), 0) == {A: 48, B: 16}  # 0 = no cap
    assert go(BlockChain((1, 2, 3), 16), 40) == {A: 40, B: 16}
    assert go(BlockChain((1, 2, 3, 4), 16), 0) == {A: 48, B: 16}


def test_prefix_closed_walk_of_three_groups() -> None:
    hm = HolderMap()
    for depth, ep in ((5, A), (2, B), (8, C)):
        for h in range(depth):
            hm.add(h, ep)
    chain = BlockChain(tuple(range(10)), 4)
    assert hm.walk_prefix_closed(chain, 0) == {A: 20, B: 8, C: 32} == hm.walk(chain, 0)


# -- the approximate index ------------------------------------------------------------------


def test_approx_refusals_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"^capacity_blocks must be > 0, got 0$"):
        ApproxPrefixIndex(ApproxTokenHasher(16), capacity_blocks=0)
    idx = ApproxPrefixIndex(ApproxTokenHasher(16), capacity_blocks=1)
    assert idx.capacity_tokens(A) == 16
    with pytest.raises(ValueError, match=r"^capacity of 'a' must be > 0 tokens, got 0$"):
        idx.set_capacity(A, 0)
    idx.set_capacity(A, 1)
    assert idx.capacity_tokens(A) == 1 and idx.capacity_tokens(B) == 16
    assert idx.name == "approx-prefix-index"


def test_a_chain_larger_than_the_cache_keeps_its_head() -> None:
    idx = ApproxPrefixIndex(ApproxTokenHasher(16))
    idx.set_capacity(A, 1)
    r = req("r", prompt_tokens=64, token_ids=tokens(64))
    idx.on_routed(r, routed(A))
    assert (idx.blocks(A), idx.tokens(A)) == (1, 16)
    assert idx.match(r) == {A: 16}


def test_insert_counts_new_blocks_only_and_touches_old_ones() -> None:
    idx = ApproxPrefixIndex(ApproxTokenHasher(16))
    idx.set_capacity(A, 64)
    idx.insert(A, [1, 2])  # the hasher's 16 tokens per block
    idx.insert(A, [1, 2, 3])
    assert (idx.blocks(A), idx.tokens(A)) == (3, 48)
    idx.insert(A, [9], block_size=32)
    assert idx.tokens(A) == 80 - 16  # 80 > 64: the least recent block (3, the tail) went
    assert idx._holders.masks.keys() == {1, 2, 9}
    assert (idx.blocks(B), idx.tokens(B)) == (0, 0)


def test_forget_drops_the_endpoints_pins_too() -> None:
    idx = ApproxPrefixIndex(ApproxTokenHasher(16))
    idx.set_capacity(A, 64)
    busy = req("busy", prompt_tokens=16, token_ids=tokens(16), max_tokens=48)
    idx.on_routed(busy, routed(A))
    idx.on_routed(req("other", prompt_tokens=16, token_ids=tokens(16, 500)), routed(B))
    idx.forget(A)
    assert idx.match(busy) == {} and idx.tokens(A) == 0
    # the pin went with it: 64 tokens of room again
    long = req("long", prompt_tokens=64, token_ids=tokens(64, 900))
    idx.on_routed(long, routed(A))
    assert idx.match(long) == {A: 64}
    idx.forget(C)  # never seen: nothing to drop


def test_routing_a_request_again_moves_its_pin() -> None:
    idx = ApproxPrefixIndex(ApproxTokenHasher(16))
    idx.set_capacity(A, 64)
    idx.set_capacity(B, 64)
    r = req("r", prompt_tokens=16, token_ids=tokens(16), max_tokens=32)
    idx.on_routed(r, routed(A))
    idx.on_routed(r, routed(B))  # re-routed: A's room is back, B holds the 32 tokens now
    fill = req("fill", prompt_tokens=48, token_ids=tokens(48, 700))
    idx.on_routed(fill, routed(A))
    assert idx.match(fill) == {A: 48} and idx.match(r) == {A: 16, B: 16}
    idx.on_routed(fill, routed(B))  # 16 + 48 learned + 32 pinned > 64 on B: r's block goes
    assert idx.match(r) == {A: 16}


def test_a_request_without_output_pins_nothing() -> None:
    idx = ApproxPrefixIndex(ApproxTokenHasher(16))
    idx.set_capacity(A, 64)
    idx.on_routed(req("z", prompt_tokens=16, token_ids=tokens(16), max_tokens=0), routed(A))
    fill = req("fill", prompt_tokens=48, token_ids=tokens(48, 700))
    idx.on_routed(fill, routed(A))
    assert idx.tokens(A) == 64 and idx.match(fill) == {A: 48}


def test_a_migration_pins_on_the_destination_only() -> None:
    idx = ApproxPrefixIndex(ApproxTokenHasher(16))
    for ep in (A, B):
        idx.set_capacity(ep, 64)
    r = req("r", prompt_tokens=16, token_ids=tokens(16), max_tokens=32)
    idx.on_routed(r, routed(A))
    idx.on_migrated(r, A, B, 5)
    assert idx.match(r) == {A: 16, B: 16}
    fill = req("fill", prompt_tokens=48, token_ids=tokens(48, 700))
    idx.on_routed(fill, routed(A))  # A's pin moved to B: 64 tokens of room on A
    assert idx.match(r) == {A: 16, B: 16} and idx.match(fill)[A] == 48
    idx.on_completed(r.id, B)
    idx.on_completed(r.id, B)  # twice: the room is given back once
    idx.on_routed(fill, routed(B))
    assert idx.tokens(B) == 64


# -- the precise index ----------------------------------------------------------------------


def chain_fn(ids: object) -> list[int]:
    return [100 + i for i in range(len(ids) // 4)]  # type: ignore[arg-type]


def precise(clock: FakeClock, ttl: float = 2.0) -> PrecisePrefixIndex:
    return PrecisePrefixIndex(
        FunctionBlockHasher("fake", 4, chain_fn), clock=clock, speculative_ttl_s=ttl
    )


def test_precise_refuses_a_negative_ttl_and_declares_kv_events() -> None:
    with pytest.raises(ValueError, match=r"^speculative_ttl_s must be >= 0, got -1.0$"):
        precise(FakeClock(), ttl=-1.0)
    idx = precise(FakeClock(), ttl=0.0)
    assert idx.name == "precise-prefix-index" and idx.consumes == {Data.KV_EVENTS}


def test_no_speculation_with_a_zero_ttl() -> None:
    idx = precise(FakeClock(), ttl=0.0)
    r = req("r", prompt_tokens=8, token_ids=tokens(8))
    idx.on_routed(r, routed(A))
    assert idx.match(r) == {}


def test_a_speculation_lasts_its_ttl_exactly() -> None:
    clock = FakeClock()
    idx = precise(clock)
    r = req("r", prompt_tokens=8, token_ids=tokens(8))
    idx.on_routed(r, routed(A))
    clock.advance(1.999)
    assert idx.match(r) == {A: 8}
    clock.advance(0.001)  # at the TTL it is gone (expiry <= now)
    assert idx.match(r) == {}


def test_completion_expires_speculations_too() -> None:
    clock = FakeClock()
    idx = precise(clock)
    r = req("r", prompt_tokens=8, token_ids=tokens(8))
    idx.on_routed(r, routed(A))
    clock.advance(5.0)
    idx.on_completed(r.id, A)
    assert idx._spec == {} and idx._holders.masks == {}


def test_a_stored_block_outlives_its_speculation_and_is_not_speculated_again() -> None:
    clock = FakeClock()
    idx = precise(clock)
    r = req("r", prompt_tokens=8, token_ids=tokens(8))
    idx.apply(A, {"type": "BlockStored", "block_hashes": [100]})
    idx.on_routed(r, routed(A))
    assert idx._spec == {(A, 101): 2.0}  # only the block A does not hold yet
    idx.apply(A, {"type": "BlockStored", "block_hashes": [101]})  # confirmed: not speculative
    assert idx._spec == {}
    clock.advance(3.0)
    assert idx.match(r) == {A: 8}


def test_a_re_routed_chain_renews_its_speculation() -> None:
    clock = FakeClock()
    idx = precise(clock)
    r = req("r", prompt_tokens=8, token_ids=tokens(8))
    idx.on_routed(r, routed(A))
    clock.advance(1.5)
    idx.on_routed(r, routed(A))  # expires at 3.5 now; the first entry's expiry passes at 2.0
    clock.advance(1.0)
    assert idx.match(r) == {A: 8}
    clock.advance(1.0)
    assert idx.match(r) == {}


def test_removal_and_clear_drop_speculation_and_count_as_events() -> None:
    clock = FakeClock()
    idx = precise(clock)
    r = req("r", prompt_tokens=8, token_ids=tokens(8))
    idx.on_routed(r, routed(A))
    idx.on_routed(r, routed(B))
    idx.apply(A, {"type": "BlockRemoved", "block_hashes": [101]})
    assert idx.match(r) == {A: 4, B: 8}
    idx.apply(B, {"type": "AllBlocksCleared"})
    assert idx.match(r) == {A: 4}
    idx.apply(C, {"type": "BlockRemoved", "block_hashes": [100]})  # unknown endpoint: no-op
    idx.apply(C, {"type": "BlockRemoved"})  # no hashes at all
    idx.apply(A, {"type": "BlockStored"})
    assert idx.events_applied == 5
    idx.apply(A, {"type": "Unknown", "block_hashes": [100]})
    idx.apply(A, object())  # not an event of a kind it knows
    assert idx.events_applied == 5 and idx.match(r) == {A: 4}


class BlockStored:
    """An engine-side event object with attributes, not a mapping."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def test_event_objects_are_read_by_attribute() -> None:
    idx = precise(FakeClock(), ttl=0.0)
    idx.on_kv_event(A, BlockStored(block_hashes=[100, 101]))
    idx.on_kv_event(B, BlockStored())  # no block_hashes attribute: stores nothing
    assert idx.match(req("r", prompt_tokens=8, token_ids=tokens(8))) == {A: 8}
    idx.forget(A)
    assert idx.match(req("r", prompt_tokens=8, token_ids=tokens(8))) == {}
    assert idx.events_applied == 3
