"""The cache-aware picker's radix tree: matches, splits, per-tenant sizes and LRU eviction,
exactly (sizes count the characters of the edges a tenant is on)."""

from __future__ import annotations

import pytest

from modelfleet.policy.radix import RadixTree, tokens_as_text
from modelfleet.policy.types import EndpointId

pytestmark = pytest.mark.unit

A, B = EndpointId("a"), EndpointId("b")


def two_branches() -> RadixTree:
    t = RadixTree()
    t.insert("hello world", A, 1.0)
    t.insert("hello there", B, 2.0)  # splits "hello world" at "hello " (6 characters)
    return t


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello world", (11, A)),
        ("hello there", (11, B)),
        ("hello world and more", (11, A)),  # the tree ends: the deepest node is "world"
        ("hello", (5, B)),  # inside the shared edge: its most recent tenant
        ("hello w", (7, A)),
        ("help", (3, B)),
        ("xyz", (0, None)),
        ("", (0, None)),
    ],
)
def test_match_length_and_tenant(text: str, expected: tuple[int, EndpointId | None]) -> None:
    assert two_branches().match(text) == expected


def test_match_only_through_allowed_tenants() -> None:
    t = two_branches()
    assert t.match("hello there", {A}) == (6, A)  # "there" is only b's
    assert t.match("hello there", {B}) == (11, B)
    assert t.match("hello world", set()) == (0, None)


def test_a_tie_in_time_goes_to_the_larger_name() -> None:
    t = RadixTree()
    t.insert("abc", A, 5.0)
    t.insert("abc", B, 5.0)
    assert t.match("abc") == (3, B)
    t.insert("abc", A, 6.0)  # a touched again: most recent
    assert t.match("abc") == (3, A)


def test_sizes_count_each_edge_once_per_tenant() -> None:
    t = two_branches()
    assert t.size == {A: 11, B: 11}
    t.insert("hello world", A, 3.0)  # nothing new for a
    t.insert("hello", A, 3.0)  # a prefix of what a holds: splits, adds nothing
    assert t.size == {A: 11, B: 11}
    t.insert("hello worlds", A, 4.0)
    assert t.size[A] == 12
    t.insert("hello world", B, 4.0)  # b joins "world" (5) and splits nothing
    assert t.size[B] == 16


def test_evict_drops_the_least_recent_leaves_first() -> None:
    t = RadixTree()
    t.insert("abc", A, 1.0)
    t.insert("abd", A, 2.0)
    t.insert("abe", A, 3.0)
    assert t.size[A] == 5  # "ab" + "c" + "d" + "e"
    t.evict(4)
    assert t.size[A] == 4 and t.match("abc") == (2, A) and t.match("abd") == (3, A)
    t.evict(3)
    assert t.size[A] == 3 and t.match("abd") == (2, A) and t.match("abe") == (3, A)
    t.evict(5)  # within the bound: nothing changes
    assert t.size[A] == 3


def test_evict_to_zero_climbs_to_the_parents_and_spares_other_tenants() -> None:
    t = two_branches()
    t.insert("abc", A, 0.5)
    t.evict(0)
    assert t.size == {A: 0, B: 0}
    assert t.match("hello there") == (0, None) and t.match("abc") == (0, None)
    assert t.root.children == {}


def test_evict_keeps_a_shared_node_for_the_other_tenant() -> None:
    t = two_branches()
    t.size[B] = 0  # only a is over the bound
    t.evict(6)
    assert t.size[A] == 6
    assert t.match("hello world") == (6, B)  # "world" is gone, "hello " stays, b is newer
    assert t.match("hello there") == (11, B)


def test_long_common_prefixes_are_matched_exactly() -> None:
    """More than one 64-character chunk in common, then a difference inside a chunk."""
    base = "x" * 150
    t = RadixTree()
    t.insert(base + "A" + "y" * 100, A, 1.0)
    assert t.match(base + "B") == (150, A)
    assert t.match(base + "A" + "y" * 63) == (214, A)
    assert t.match("x" * 128) == (128, A)  # exactly two chunks


def test_tokens_as_text_is_one_code_point_per_id() -> None:
    assert tokens_as_text([72, 105]) == "Hi"
    assert tokens_as_text([]) == ""
    text = tokens_as_text([0, 0xD800, 0x10FFFF, 128_000])
    assert [ord(c) for c in text] == [0, 0xD800, 0x10FFFF, 128_000]
