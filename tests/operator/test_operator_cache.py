"""The watch cache's merge of a LIST snapshot with what the watches delivered (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from modelfleet.operator.cache import Key, is_newer, merge_listing, resource_version

pytestmark = pytest.mark.unit


def obj(name: str, rv: int | str, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": str(rv)}, **extra}


K = ("ns", "a")


def test_versions_compare_as_numbers_and_unknown_versions_let_the_later_arrival_win() -> None:
    assert resource_version(obj("a", 12)) == 12
    assert resource_version({"metadata": {"resourceVersion": "x1"}}) is None
    assert is_newer(obj("a", 10), obj("a", 9))  # "10" < "9" as text: numbers, not strings
    assert not is_newer(obj("a", 9), obj("a", 10))
    assert not is_newer(obj("a", 9), obj("a", 9))
    assert is_newer(obj("a", "x"), obj("a", 9))


def test_a_listed_object_older_than_the_cached_version_does_not_replace_it() -> None:
    cached = {K: obj("a", 20, spec="new")}
    objs, _ = merge_listing(cached, {}, [obj("a", 15, spec="old")], "15", [K])
    assert objs[K]["spec"] == "new"
    objs, _ = merge_listing(cached, {}, [obj("a", 25, spec="newer")], "25", [K])
    assert objs[K]["spec"] == "newer"


def test_a_deletion_seen_after_the_list_is_not_undone_by_it() -> None:
    objs, gone = merge_listing({}, {K: 30}, [obj("a", 20)], "25", [])
    assert K not in objs
    assert gone == {K: 30}  # newer than the snapshot: kept for the next list


def test_an_object_the_list_no_longer_shows_is_dropped_unless_created_after_it() -> None:
    b: Key = ("ns", "b")
    cached = {K: obj("a", 10), b: obj("b", 40)}
    objs, _ = merge_listing(cached, {}, [], "30", [K, b])
    assert K not in objs  # deleted before the snapshot, the DELETED event was missed
    assert b in objs  # created after the snapshot: the watch is ahead of the list


def test_objects_outside_the_lists_scope_are_left_alone_and_old_deletions_forgotten() -> None:
    other: Key = ("other", "a")
    cached = {other: obj("a", 5)}
    objs, gone = merge_listing(cached, {K: 3, other: 50}, [], "30", [])
    assert objs == cached
    assert gone == {other: 50}  # the list (rv 30) has caught up with the deletion at 3
