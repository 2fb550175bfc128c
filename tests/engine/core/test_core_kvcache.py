"""Block hashing (vLLM's recipe, recomputed independently here) and the LRU block pool."""

from __future__ import annotations

import hashlib
import pickle

import pytest

from modelfleet.engine.kvcache import (
    AllBlocksCleared,
    BlockHasher,
    BlockPool,
    BlockRemoved,
    BlockStored,
    KVEvent,
    canonical_cbor,
    event_hash,
)

pytestmark = pytest.mark.unit


def _h(obj: object) -> bytes:
    # The documented recipe, written out from shared/reference/vllm-migration.md section 6.
    return hashlib.sha256(pickle.dumps(obj, protocol=5)).digest()


def _expected_chain(ids: list[int], bs: int, seed: str = "vllm-none-hash", salt: str | None = None):
    parent = _h(seed)
    out = []
    for i in range(len(ids) // bs):
        extra = (("cache_salt", salt),) if (i == 0 and salt) else None
        parent = _h((parent, tuple(ids[i * bs : (i + 1) * bs]), extra))
        out.append(parent)
    return out


@pytest.mark.parametrize(
    ("n_tokens", "bs", "seed", "salt"),
    [
        (70, 32, None, None),
        (100, 16, None, None),
        (64, 16, "12345", None),
        (40, 16, None, "salt-1"),
        (15, 16, None, None),
    ],
    ids=["70tok-bs32", "100tok-bs16", "pythonhashseed", "cache-salt", "no-full-block"],
)
def test_sha256_chain_matches_documented_recipe(n_tokens, bs, seed, salt):
    ids = [(i * 7919) % 128000 for i in range(n_tokens)]
    got = BlockHasher(bs, "sha256", seed).hashes(ids, salt)
    want = _expected_chain(ids, bs, seed or "vllm-none-hash", salt)
    assert got == want
    assert len(got) == n_tokens // bs


def test_salt_changes_only_first_block_input_but_whole_chain():
    ids = list(range(48))
    plain = BlockHasher(16).hashes(ids)
    salted = BlockHasher(16).hashes(ids, "s")
    assert all(a != b for a, b in zip(plain, salted, strict=True))


def test_extend_is_incremental():
    ids = list(range(100))
    h = BlockHasher(16)
    acc: list[bytes] = []
    h.extend(acc, ids[:40])
    h.extend(acc, ids[:100])
    assert acc == h.hashes(ids)


def test_event_hash_is_low_64_bits_big_endian():
    d = bytes(range(32))
    assert event_hash(d) == int.from_bytes(d[24:], "big")
    assert event_hash(d, as_int=False) == d


def test_canonical_cbor_known_bytes():
    # array(3) [bytes(1) 0x01, array(2) [1, 500], null]
    assert canonical_cbor((b"\x01", (1, 500), None)) == bytes.fromhex(
        "8341018201" + "1901f4" + "f6"
    )
    assert canonical_cbor("vllm-none-hash") == b"\x6e" + b"vllm-none-hash"
    assert (
        canonical_cbor((("cache_salt", "a"),))
        == bytes.fromhex("8182") + b"\x6acache_salt" + b"\x61a"
    )
    assert canonical_cbor(2**32) == bytes.fromhex("1b0000000100000000")


def test_sha256_cbor_chain():
    ids = list(range(32))
    none = hashlib.sha256(b"\x6evllm-none-hash").digest()
    first = hashlib.sha256(canonical_cbor((none, tuple(ids[:16]), None))).digest()
    assert BlockHasher(16, "sha256_cbor").hashes(ids)[0] == first


def test_unknown_algo_is_rejected_by_name():
    with pytest.raises(ValueError, match="xxhash"):
        BlockHasher(16, "xxhash")


def test_pool_lru_evicts_oldest_freed_and_emits_removed():
    events: list[KVEvent] = []
    pool = BlockPool(4, 2, event_sink=events.append)
    h = BlockHasher(2)
    a_ids, b_ids = [1, 2, 3, 4], [5, 6, 7, 8]
    a = pool.allocate(2)
    pool.cache_full_blocks(a, h.hashes(a_ids), 0, 2, a_ids)
    b = pool.allocate(2)
    pool.cache_full_blocks(b, h.hashes(b_ids), 0, 2, b_ids)
    assert pool.num_free == 0
    pool.free_blocks(a)  # a freed first -> evicted first; its LAST block goes first
    pool.free_blocks(b)
    assert pool.free_queue() == [a[1], a[0], b[1], b[0]]
    got = pool.allocate(1)
    assert got == [a[1]]
    assert isinstance(events[-1], BlockRemoved)
    assert events[-1].block_hashes == [event_hash(h.hashes(a_ids)[1])]
    # A's first block is still cached and can be hit (touch takes it out of the free queue).
    first = pool.lookup(h.hashes(a_ids)[0])
    assert first == a[0]
    pool.touch([first])
    assert not pool.is_free(first) and pool.ref_cnt[first] == 1


def test_pool_stored_event_shape_and_parent():
    events: list[KVEvent] = []
    pool = BlockPool(8, 2, event_sink=events.append)
    h = BlockHasher(2)
    ids = [9, 8, 7, 6, 5]
    blocks = pool.allocate(3)
    digests = h.hashes(ids)
    pool.cache_full_blocks(blocks, digests, 0, 1, ids)
    pool.cache_full_blocks(blocks, digests, 1, 2, ids)
    first, second = events
    assert isinstance(first, BlockStored) and isinstance(second, BlockStored)
    assert first.parent_block_hash is None and first.token_ids == [9, 8] and first.block_size == 2
    assert second.parent_block_hash == first.block_hashes[0]
    assert second.token_ids == [7, 6] and second.medium == "GPU"


def test_reset_prefix_cache_only_when_idle():
    events: list[KVEvent] = []
    pool = BlockPool(2, 2, event_sink=events.append)
    blocks = pool.allocate(1)
    assert pool.reset_prefix_cache() is False
    pool.free_blocks(blocks)
    assert pool.reset_prefix_cache() is True
    assert isinstance(events[-1], AllBlocksCleared)


def test_duplicate_digest_blocks_take_over_when_the_first_is_evicted():
    events: list[KVEvent] = []
    pool = BlockPool(3, 2, event_sink=events.append)
    h = BlockHasher(2)
    ids = [4, 5]
    d = h.hashes(ids)
    first = pool.allocate(1)
    pool.cache_full_blocks(first, d, 0, 1, ids)
    second = pool.allocate(1)
    pool.cache_full_blocks(second, d, 0, 1, ids)  # same content computed again
    assert sum(isinstance(e, BlockStored) for e in events) == 2  # vLLM re-emits the store
    pool.free_blocks(first)
    pool.free_blocks(second)
    assert pool.lookup(d[0]) == first[0]
    pool.allocate(2)  # the spare block, then `first` (LRU head) is evicted
    assert pool.lookup(d[0]) == second[0]
    pool.allocate(1)
    assert pool.lookup(d[0]) is None
    assert [type(e).__name__ for e in events].count("BlockRemoved") == 2


class _ReferencePool:
    """The LRU free-queue semantics written the obvious way (an ordered dict, one block at a
    time), to check BlockPool's sliced queue against: same blocks, same evictions."""

    def __init__(self, n: int) -> None:
        self.ref = [0] * n
        self.free: dict[int, None] = dict.fromkeys(range(n))  # insertion order = LRU order
        self.hash: list[object] = [None] * n
        self.owner: dict[object, int] = {}
        self.dups: dict[object, list[int]] = {}
        self.removed: list[object] = []

    def touch(self, blocks: list[int]) -> None:
        for b in blocks:
            if self.ref[b] == 0:
                del self.free[b]
            self.ref[b] += 1

    def allocate(self, n: int) -> list[int]:
        out = []
        for _ in range(n):
            b = next(iter(self.free))
            del self.free[b]
            d = self.hash[b]
            if d is not None:
                self.hash[b] = None
                self.removed.append(d)
                copies = self.dups.get(d, [])
                if self.owner[d] == b:
                    del self.owner[d]
                    if copies:
                        self.owner[d] = copies.pop(0)
                else:
                    copies.remove(b)
                if d in self.dups and not copies:
                    del self.dups[d]
            self.ref[b] = 1
            out.append(b)
        return out

    def free_blocks(self, blocks: list[int]) -> None:
        for b in reversed(blocks):
            self.ref[b] -= 1
            if self.ref[b] == 0:
                self.free[b] = None

    def cache(self, blocks: list[int], digests: list[int]) -> None:
        for b, d in zip(blocks, digests, strict=True):
            if self.hash[b] is None:
                self.hash[b] = d
                if d in self.owner:
                    self.dups.setdefault(d, []).append(b)
                else:
                    self.owner[d] = b


@pytest.mark.parametrize("num_blocks", [3, 17, 64], ids=lambda n: f"blocks{n}")
def test_pool_matches_one_block_at_a_time_lru_reference(num_blocks: int) -> None:
    """Random allocate / cache / hit / free sequences (with duplicate digests, hits on free
    blocks leaving stale queue entries, queue trimming and compaction): the pool hands out the
    same blocks, evicts the same digests in the same order and keeps its invariants."""
    import random

    rng = random.Random(num_blocks)
    events: list[KVEvent] = []
    pool = BlockPool(num_blocks, 1, event_sink=events.append)
    ref = _ReferencePool(num_blocks)
    held: list[list[int]] = []
    for step in range(12000):
        op = rng.random()
        if held and (op < 0.35 or pool.num_free == 0):
            blocks = held.pop(rng.randrange(len(held)))
            pool.free_blocks(blocks)
            ref.free_blocks(blocks)
        elif op < 0.75:
            n = rng.randint(1, min(pool.num_free, 6))
            got = pool.allocate(n)
            assert got == ref.allocate(n), step
            digests = [rng.randrange(3 * num_blocks) for _ in got]  # duplicates happen
            k = rng.randint(0, n)
            pool.cache_full_blocks(got, digests, 0, k, [0] * n)
            ref.cache(got[:k], digests[:k])
            held.append(got)
        elif pool.cached:
            cached = list(pool.cached.values())
            hit = rng.sample(cached, min(len(cached), rng.randint(1, 4)))
            pool.touch(hit)
            ref.touch(hit)
            if op < 0.9:
                held.append(hit)
            else:  # a hit released at once: stale queue entries pile up (compaction)
                pool.free_blocks(hit)
                ref.free_blocks(hit)
        assert pool.num_free == len(ref.free)
        if step % 97 == 0:
            pool.check_invariants()
            assert pool.free_queue() == list(ref.free)
            assert pool.cached == ref.owner and pool.dups == ref.dups
    removed = [e.block_hashes[0] for e in events if isinstance(e, BlockRemoved)]
    assert removed == [event_hash(d) for d in ref.removed]
    assert pool.num_evictions == len(ref.removed)


def test_compaction_keeps_referenced_blocks_out_of_the_free_queue():
    pool = BlockPool(4, 1)
    held = pool.allocate(3)  # consumed entries 0..2
    spare = pool.allocate(1)
    pool.cache_full_blocks(spare, [7], 0, 1, [0])
    pool.free_blocks(spare)
    for _ in range(12):  # each hit-and-release leaves a stale entry: forces compaction
        pool.touch(spare)
        pool.free_blocks(spare)
    assert len(pool.free_queue()) == 1 and not any(pool.is_free(b) for b in held)
    pool.check_invariants()


# RFC 8949 appendix A (the examples of the CBOR standard), for the value set vLLM hashes.
RFC8949 = [
    (0, "00"), (1, "01"), (10, "0a"), (23, "17"), (24, "1818"), (25, "1819"), (100, "1864"),
    (255, "18ff"), (256, "190100"), (1000, "1903e8"), (65535, "19ffff"), (65536, "1a00010000"),
    (1000000, "1a000f4240"), (4294967295, "1affffffff"), (4294967296, "1b0000000100000000"),
    (1000000000000, "1b000000e8d4a51000"), (18446744073709551615, "1bffffffffffffffff"),
    (-1, "20"), (-10, "29"), (-24, "37"), (-25, "3818"), (-100, "3863"), (-1000, "3903e7"),
    (-65537, "3a00010000"), (-4294967297, "3b0000000100000000"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (False, "f4"), (True, "f5"), (None, "f6"),
    ("", "60"), ("a", "6161"), ("IETF", "6449455446"), ("\u00fc", "62c3bc"),
    (b"", "40"), (b"\x01\x02\x03\x04", "4401020304"),
    ((), "80"), ((1, 2, 3), "83010203"), ([1, [2, 3], [4, 5]], "8301820203820405"),
    (tuple(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "hexed"), RFC8949, ids=[h for _, h in RFC8949])
def test_canonical_cbor_matches_the_rfc_examples(value: object, hexed: str) -> None:
    assert canonical_cbor(value) == bytes.fromhex(hexed)


def test_canonical_cbor_refuses_what_it_cannot_encode() -> None:
    for too_big in (2**64, -(2**64) - 1):
        with pytest.raises(
            ValueError, match=f"^integer too large for CBOR: {abs(too_big) - (too_big < 0)}$"
        ):
            canonical_cbor(too_big)
    with pytest.raises(TypeError, match=r"^cannot CBOR-encode float$"):
        canonical_cbor((1, 2.5))


def test_event_hash_of_int_digests_keeps_the_low_64_bits() -> None:
    assert event_hash(5) == 5
    assert event_hash((1 << 64) + 5) == 5
    assert event_hash(-1) == (1 << 64) - 1
    assert event_hash(b"\x00" * 24 + b"\x00" * 7 + b"\x01") == 1


def test_hasher_arguments() -> None:
    assert BlockHasher(1).hashes([7, 8]) == _expected_chain([7, 8], 1)
    assert BlockHasher(16, "sha256_cbor").algo == "sha256_cbor"
    with pytest.raises(ValueError, match=r"^block_size must be positive, got 0$"):
        BlockHasher(0)
    with pytest.raises(
        ValueError,
        match=r"^unknown prefix_caching_hash_algo 'x'; valid: sha256, sha256_cbor, builtin$",
    ):
        BlockHasher(16, "x")


def test_builtin_hasher_chains_pythons_tuple_hash() -> None:
    """'builtin': the recipe with hash() for sha256 and 0 for the seed's hash (ints)."""
    ids = list(range(40))
    got = BlockHasher(16, "builtin").hashes(ids, "salt")
    first = hash((0, tuple(ids[:16]), (("cache_salt", "salt"),)))
    assert got == [first, hash((first, tuple(ids[16:32]), None))]
    assert all(isinstance(h, int) for h in got)


@pytest.mark.parametrize("algo", ["sha256", "builtin"])
def test_extend_in_any_steps_equals_hashing_at_once(algo: str) -> None:
    ids = list(range(200))
    h = BlockHasher(8, algo)
    for salt in (None, "s"):
        whole = h.hashes(ids, salt)
        for steps in ([1, 9, 16, 17, 24, 100, 200], [8, 16, 24, 32, 200], [7, 200], [0, 5, 8]):
            acc: list[object] = []
            for n in steps:
                h.extend(acc, ids[:n], salt)  # type: ignore[arg-type]
                assert acc == whole[: n // 8]
        assert h.hashes(ids[:7], salt) == []  # no full block: no hash, salted or not


def test_hash_block_is_one_step_of_the_chain() -> None:
    h = BlockHasher(4)
    ids = [5, 6, 7, 8, 9, 10, 11, 12]
    chain = h.hashes(ids, "s")
    assert h.hash_block(None, ids[:4], (("cache_salt", "s"),)) == chain[0]
    assert h.hash_block(chain[0], ids[4:], None) == chain[1]
    assert h.hash_block(None, ids[:4], None) == h.hashes(ids)[0]


def test_pool_arguments_and_exhaustion() -> None:
    one = BlockPool(1, 16)
    assert one.allocate(1) == [0] and one.usage() == 1.0
    with pytest.raises(RuntimeError, match=r"^allocate\(1\) with only 0 free blocks$"):
        one.allocate(1)
    for bad in (0, -3):
        with pytest.raises(ValueError, match=f"^num_gpu_blocks must be positive, got {bad}$"):
            BlockPool(bad, 16)
    pool = BlockPool(8, 16)
    pool.allocate(2)
    assert pool.usage() == 0.25


def _cached_pool(events: list[KVEvent], **kw: object) -> tuple[BlockPool, list[bytes]]:
    """A pool with one request's 3 full blocks cached and freed."""
    pool = BlockPool(6, 4, event_sink=events.append, **kw)  # type: ignore[arg-type]
    ids = list(range(12))
    digests = BlockHasher(4).hashes(ids)
    blocks = pool.allocate(3)
    pool.cache_full_blocks(blocks, digests, 0, 3, ids)
    pool.free_blocks(blocks)
    return pool, digests


def test_a_prefix_hit_takes_the_block_out_of_the_free_queue() -> None:
    events: list[KVEvent] = []
    pool, digests = _cached_pool(events)
    b = pool.lookup(digests[0])
    assert b is not None and pool.is_free(b) and pool.num_free == 6
    pool.touch([b])
    assert not pool.is_free(b) and pool.num_free == 5 and b not in pool.free_queue()
    pool.check_invariants()


def test_cache_full_blocks_edges() -> None:
    events: list[KVEvent] = []
    pool, digests = _cached_pool(events)
    assert len(events) == 1
    # nothing new to cache: no event
    pool.cache_full_blocks([0, 1, 2], digests, 3, 3, list(range(12)))
    assert len(events) == 1
    # a hit on the first block, then new blocks: every new block is cached
    ids = [*range(4), 50, 51, 52, 53, 60, 61, 62, 63]
    d2 = BlockHasher(4).hashes(ids)
    hit = pool.lookup(d2[0])
    assert hit is not None
    pool.touch([hit])
    new = pool.allocate(2)
    pool.cache_full_blocks([hit, *new], d2, 0, 3, ids)
    assert all(pool.lookup(d) is not None for d in d2)
    stored = events[-1]
    assert isinstance(stored, BlockStored)
    # the event lists every block of the range, the hit one included (as vLLM's)
    assert stored.block_hashes == [event_hash(d) for d in d2]
    pool.check_invariants()


def test_events_carry_ints_or_raw_digests_as_configured() -> None:
    for int_hashes in (True, False):
        events: list[KVEvent] = []
        pool, digests = _cached_pool(events, int_hashes=int_hashes)
        ids = list(range(12, 24))
        more = BlockHasher(4).hashes(list(range(12)) + ids)
        blocks = pool.allocate(6)  # evicts the 3 cached blocks
        pool.cache_full_blocks(blocks, more, 3, 6, list(range(12)) + ids, "s")
        first, *removed, last = events
        assert isinstance(first, BlockStored) and isinstance(last, BlockStored)
        want = [event_hash(d, as_int=int_hashes) for d in digests]
        # freed tail first, so evicted last block first
        assert [h for e in removed for h in e.block_hashes] == want[::-1]
        assert all(isinstance(h, int if int_hashes else bytes) for h in first.block_hashes)
        assert last.block_hashes == [event_hash(d, as_int=int_hashes) for d in more[3:]]
        assert last.parent_block_hash == event_hash(more[2], as_int=int_hashes)
        assert last.extra_keys == [None, None, None]  # the salt rides on block 0 only
        assert last.token_ids == ids
    events = []
    salted = BlockPool(4, 4, event_sink=events.append)
    d = BlockHasher(4).hashes(list(range(8)), "s")
    salted.cache_full_blocks(salted.allocate(2), d, 0, 2, list(range(8)), "s")
    assert isinstance(events[0], BlockStored) and events[0].extra_keys == [["s"], None]
    assert events[0].parent_block_hash is None


def test_no_caching_means_no_cache_and_no_events() -> None:
    events: list[KVEvent] = []
    pool = BlockPool(4, 4, enable_caching=False, event_sink=events.append)
    ids = list(range(8))
    pool.cache_full_blocks(pool.allocate(2), BlockHasher(4).hashes(ids), 0, 2, ids)
    assert events == [] and pool.cached == {}


def test_reset_then_reuse() -> None:
    events: list[KVEvent] = []
    pool, digests = _cached_pool(events)
    assert pool.reset_prefix_cache()
    assert pool.lookup(digests[0]) is None and isinstance(events[-1], AllBlocksCleared)
    ids = list(range(12))
    pool.cache_full_blocks(pool.allocate(3), digests, 0, 3, ids)
    assert pool.lookup(digests[2]) is not None
    pool.check_invariants()


def test_check_invariants_notices_a_stray_duplicate() -> None:
    pool, _ = _cached_pool([])
    pool.dups[b"stray"] = [0]
    with pytest.raises(AssertionError):
        pool.check_invariants()


def test_a_hit_right_after_the_queue_head_is_not_free() -> None:
    """Taking a free block out of the queue marks it taken wherever the queue head is."""
    pool = BlockPool(2, 4)
    ids = [1, 2, 3, 4]
    [b] = pool.allocate(1)  # the queue head moves past block 0
    pool.cache_full_blocks([b], BlockHasher(4).hashes(ids), 0, 1, ids)
    pool.free_blocks([b])
    pool.touch([b])
    assert not pool.is_free(b) and pool.num_free == 1 and pool.free_queue() == [1]
    pool.check_invariants()
