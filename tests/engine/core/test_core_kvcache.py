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
    assert list(pool.free) == [a[1], a[0], b[1], b[0]]
    got = pool.allocate(1)
    assert got == [a[1]]
    assert isinstance(events[-1], BlockRemoved)
    assert events[-1].block_hashes == [event_hash(h.hashes(a_ids)[1])]
    # A's first block is still cached and can be hit (touch takes it out of the free queue).
    first = pool.lookup(h.hashes(a_ids)[0])
    assert first == a[0]
    pool.touch([first])
    assert first not in pool.free and pool.ref_cnt[first] == 1


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
