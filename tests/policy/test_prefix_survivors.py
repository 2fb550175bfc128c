"""The prefix indexes and the radix tree where mutation testing found the suite blind: default
sizes, several pins on one endpoint, forget and migration with given chains, shrinking
capacity, caps of one token, a removed block speculated again, the cost of the prefix-closed
walk, and the radix tree's eviction with ties and several tenants (bench/results/mutation.md)."""

from __future__ import annotations

from typing import Any

import pytest
from policy_fakes import FakeClock, req, tokens

from modelfleet.policy.hashing import ApproxTokenHasher, FunctionBlockHasher
from modelfleet.policy.prefix import ApproxPrefixIndex, HolderMap, PrecisePrefixIndex
from modelfleet.policy.radix import RadixTree
from modelfleet.policy.types import BlockChain, Decision, EndpointId, RequestId

pytestmark = pytest.mark.unit

A, B, C = EndpointId("a"), EndpointId("b"), EndpointId("c")


def routed(endpoint: EndpointId, rid: str = "r") -> Decision:
    return Decision(endpoint, RequestId(rid), (), {}, {}, (), {}, {}, {})


# -- the approximate index ------------------------------------------------------------------


def test_default_capacity_is_llm_ds_two_million_tokens() -> None:
    """31,250 blocks of 64 tokens when no capacity is set for the endpoint."""
    assert ApproxPrefixIndex(ApproxTokenHasher(64)).capacity_tokens(A) == 2_000_000


def test_two_requests_in_flight_pin_the_sum_of_their_room() -> None:
    idx = ApproxPrefixIndex(ApproxTokenHasher(16))
    idx.set_capacity(A, 64)
    one = req("one", prompt_tokens=16, token_ids=tokens(16), max_tokens=16)
    two = req("two", prompt_tokens=16, token_ids=tokens(16, 500), max_tokens=16)
    idx.on_routed(one, routed(A))
    idx.on_routed(two, routed(A))  # 32 learned + 32 pinned = 64: everything fits
    assert idx.blocks(A) == 2
    third = req("three", prompt_tokens=16, token_ids=tokens(16, 900))
    idx.on_routed(third, routed(A))  # 48 + 32 > 64: the least recent block (one's) goes
    assert idx.match(one) == {} and idx.match(two) == {A: 16} and idx.match(third) == {A: 16}


def test_completing_one_of_two_requests_gives_back_only_its_room() -> None:
    idx = ApproxPrefixIndex(ApproxTokenHasher(16))
    idx.set_capacity(A, 64)
    one = req("one", prompt_tokens=16, token_ids=tokens(16), max_tokens=16)
    two = req("two", prompt_tokens=16, token_ids=tokens(16, 500), max_tokens=16)
    idx.on_routed(one, routed(A))
    idx.on_routed(two, routed(A))
    idx.on_completed(one.id, A)  # 16 pinned (two's) remain: 48 tokens of room for blocks
    fill = req("fill", prompt_tokens=16, token_ids=tokens(16, 900))
    idx.on_routed(fill, routed(A))
    assert idx.blocks(A) == 3
    more = req("more", prompt_tokens=16, token_ids=tokens(16, 1300))
    idx.on_routed(more, routed(A))  # 64 learned + 16 pinned > 64: one block goes
    assert idx.blocks(A) == 3 and idx.match(one) == {}


def test_forget_keeps_the_pins_of_the_other_endpoints() -> None:
    idx = ApproxPrefixIndex(ApproxTokenHasher(16))
    idx.set_capacity(B, 64)
    busy = req("busy", prompt_tokens=16, token_ids=tokens(16), max_tokens=48)
    idx.on_routed(busy, routed(B))
    idx.forget(A)
    idx.on_completed(busy.id, B)  # B's room is back in full
    long = req("long", prompt_tokens=64, token_ids=tokens(64, 900))
    idx.on_routed(long, routed(B))
    assert idx.match(long) == {B: 64} and idx.match(busy) == {}


def test_a_migration_pins_its_room_on_the_destination() -> None:
    idx = ApproxPrefixIndex(ApproxTokenHasher(16))
    for ep in (A, B):
        idx.set_capacity(ep, 64)
    r = req("r", prompt_tokens=16, token_ids=tokens(16), max_tokens=32)
    idx.on_routed(r, routed(A))
    idx.on_migrated(r, A, B, 5)
    fill = req("fill", prompt_tokens=32, token_ids=tokens(32, 700))
    idx.on_routed(fill, routed(B))  # 16 + 32 learned + 32 pinned > 64: r's block goes
    assert idx.tokens(B) == 32 and idx.match(r) == {A: 16} and idx.match(fill) == {B: 32}


def test_a_migrated_given_chain_counts_at_its_own_block_size() -> None:
    idx = ApproxPrefixIndex(ApproxTokenHasher(64))
    r = req("r", prompt_tokens=1024, block_hashes=(1, 2), block_size=512)
    idx.on_migrated(r, A, B, 3)
    assert idx.tokens(B) == 1024 and idx.match(r) == {B: 1024}


def test_lowering_the_capacity_evicts_at_once() -> None:
    idx = ApproxPrefixIndex(ApproxTokenHasher(16))
    r = req("r", prompt_tokens=64, token_ids=tokens(64))
    idx.on_routed(r, routed(A))
    assert idx.tokens(A) == 64
    idx.set_capacity(A, 32)
    assert (idx.blocks(A), idx.tokens(A)) == (2, 32) and idx.match(r) == {A: 32}


# -- the holder map's walks -----------------------------------------------------------------


@pytest.mark.parametrize("walk", ["walk", "walk_prefix_closed"])
def test_a_cap_of_one_token_is_a_cap(walk: str) -> None:
    hm = HolderMap()
    for h in (1, 2):
        hm.add(h, A)
    assert getattr(hm, walk)(BlockChain((1, 2), 16), 1) == {A: 1}


class CountingMasks(dict[Any, int]):
    """The holder map's dict, counting the lookups a walk makes."""

    lookups = 0

    def get(self, key: Any, default: Any = None) -> Any:
        self.lookups += 1
        return super().get(key, default)


def test_prefix_closed_walk_costs_log_lookups_per_group() -> None:
    """128 blocks, three groups (A all, B 100, C 50): for each group one lookup at the chain's
    tail; for the two groups that drop out before it, a binary search between the depth reached
    and the tail (7 lookups over 0..127, 6 over 50..127) and one at the drop point; plus one
    for the head: 1 + (1 + 7 + 1) + (1 + 6 + 1) + 1 = 19. The linear walk makes 128."""
    hm = HolderMap()
    for depth, ep in ((128, A), (100, B), (50, C)):
        for h in range(depth):
            hm.add(h, ep)
    counting = CountingMasks(hm.masks)
    hm.masks = counting
    chain = BlockChain(tuple(range(128)), 16)
    assert hm.walk_prefix_closed(chain, 0) == {A: 2048, B: 1600, C: 800}
    assert counting.lookups == 19
    counting.lookups = 0
    assert hm.walk(chain, 0) == {A: 2048, B: 1600, C: 800}
    assert counting.lookups == 128


# -- the precise index ----------------------------------------------------------------------


def chain_fn(ids: object) -> list[int]:
    return [100 + i for i in range(len(ids) // 4)]  # type: ignore[arg-type]


HASHER = FunctionBlockHasher("fake", 4, chain_fn)


def test_default_speculation_lasts_two_seconds() -> None:
    clock = FakeClock()
    idx = PrecisePrefixIndex(HASHER, clock=clock)
    r = req("r", prompt_tokens=8, token_ids=tokens(8))
    idx.on_routed(r, routed(A))
    clock.advance(1.999)
    assert idx.match(r) == {A: 8}
    clock.advance(0.001)
    assert idx.match(r) == {}


def test_a_removed_block_is_speculated_again_when_routed_again() -> None:
    clock = FakeClock()
    idx = PrecisePrefixIndex(HASHER, clock=clock, speculative_ttl_s=2.0)
    r = req("r", prompt_tokens=8, token_ids=tokens(8))
    idx.apply(A, {"type": "BlockStored", "block_hashes": [100, 101]})
    idx.apply(A, {"type": "BlockRemoved", "block_hashes": [101]})
    assert idx._stored == {A: {100}}
    idx.on_routed(r, routed(A))  # 101 is no longer stored: it is speculated
    assert idx._spec == {(A, 101): 2.0} and idx.match(r) == {A: 8}


def test_a_removed_speculative_block_leaves_no_speculation_behind() -> None:
    clock = FakeClock()
    idx = PrecisePrefixIndex(HASHER, clock=clock, speculative_ttl_s=2.0)
    idx.on_routed(req("r", prompt_tokens=8, token_ids=tokens(8)), routed(A))
    idx.apply(A, {"type": "BlockRemoved", "block_hashes": [101]})
    assert idx._spec == {(A, 100): 2.0}


# -- the radix tree -------------------------------------------------------------------------


def test_radix_match_stops_at_a_difference_inside_the_first_chunk() -> None:
    t = RadixTree()
    t.insert("a" * 100, A, 1.0)
    assert t.match("a" * 10 + "b" + "a" * 89) == (10, A)


def test_radix_leaves_of_a_tenant_are_only_its_leaves() -> None:
    t = RadixTree()
    t.insert("abc", A, 1.0)
    t.insert("abd", A, 2.0)
    assert sorted(n.text for n in t._tenant_leaves(A)) == ["c", "d"]


def test_radix_eviction_with_leaves_of_the_same_time() -> None:
    t = RadixTree()
    for text in ("abx", "aby", "cdx", "cdy"):
        t.insert(text, A, 1.0)
    t.evict(0)  # the heap breaks the ties by node, never by comparing nodes
    assert t.size[A] == 0 and t.root.children == {}


def test_radix_eviction_of_two_parents_of_the_same_time() -> None:
    """Parents touched later than their leaves (a prompt that ends at them) climb into the
    eviction heap with the same time."""
    t = RadixTree()
    for i, text in enumerate(("abx", "aby", "cdx", "cdy")):
        t.insert(text, A, 0.1 * (i + 1))
    t.insert("ab", A, 1.0)
    t.insert("cd", A, 1.0)
    assert t.size[A] == 8
    t.evict(0)
    assert t.size[A] == 0 and t.root.children == {}


def test_radix_eviction_checks_every_tenant() -> None:
    t = RadixTree()
    t.insert("ab", A, 1.0)  # a is within the bound and comes first
    t.insert("xyz", B, 1.0)
    t.insert("xyw", B, 2.0)
    t.evict(3)
    assert t.size == {A: 2, B: 3} and t.match("xyz") == (2, B) and t.match("xyw") == (3, B)


def test_radix_eviction_keeps_a_parent_while_a_leaf_of_its_tenant_remains() -> None:
    """All of a tenant's nodes at one time: whatever order the heap breaks the tie in, the
    shared parent stays while one of its leaves does (tried on many trees, since the order
    follows object ids)."""
    for _ in range(50):
        t = RadixTree()
        t.insert("abx", A, 1.0)
        t.insert("aby", A, 1.0)
        t.evict(2)  # both leaves go, one after the other; then "ab" is within the bound
        assert t.size[A] == 2 and t.match("abx") == (2, A)
        assert t.root.children["a"].children == {}
