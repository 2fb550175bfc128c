"""Paged KV cache with automatic prefix caching, vLLM V1 style.

Block hashes follow vLLM's recipe byte for byte; the recipe lives in
:mod:`modelfleet.policy.vllm_hash` (the live scheduler's precise prefix index computes the same
chains) and is re-exported here.

Block pool (vLLM V1 ``BlockPool``): every block has a reference count and, once full and
cached, a hash. Blocks with reference count 0 sit in one free queue in LRU order; a freed
request's blocks are appended tail-first (so a request's last blocks are evicted before its
first ones, which are the most likely to be shared). Allocation pops the queue head; if that
block still carries a hash it is evicted from the cache map (``BlockRemoved``). A prefix hit
takes the cached block out of the free queue and increments its count. Invariant:
``ref_cnt[b] == 0  <=>  b in free queue``.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from heapq import heappop, heappush

from modelfleet.policy.vllm_hash import (
    HASH_ALGOS,
    NONE_HASH_SEED,
    BlockHasher,
    Digest,
    canonical_cbor,
    event_hash,
)

__all__ = [
    "HASH_ALGOS",
    "NONE_HASH_SEED",
    "AllBlocksCleared",
    "BlockHasher",
    "BlockPool",
    "BlockRemoved",
    "BlockStored",
    "Digest",
    "KVEvent",
    "canonical_cbor",
    "event_hash",
]


# ----------------------------------------------------------------------------- KV events


@dataclass(frozen=True)
class BlockStored:
    """Full blocks newly cached (vLLM ``BlockStored``); parent is None for a first block."""

    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = "GPU"
    lora_name: str | None = None
    extra_keys: list[object] | None = None
    group_idx: int = 0
    kv_cache_spec_kind: str = "full_attention"


@dataclass(frozen=True)
class BlockRemoved:
    """Cached blocks evicted (vLLM emits one event per evicted hash)."""

    block_hashes: list[int | bytes]
    medium: str | None = "GPU"
    group_idx: int = 0


@dataclass(frozen=True)
class AllBlocksCleared:
    """The prefix cache was reset."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


# ----------------------------------------------------------------------------- block pool


class BlockPool:
    """Fixed set of KV blocks with reference counts, a hash->block map and an LRU free queue.

    `event_sink`, when given, receives BlockStored / BlockRemoved / AllBlocksCleared events;
    `int_hashes` selects how hashes appear in events.

    Free queue representation (why: a simulated hour moves ~9 M blocks through the pool, so
    the per-block work must be a few list stores, not method calls or per-entry checks):

    - `_queue`, a list read from index `_head`; entry i has the sequence number `_base + i`;
      freeing appends to the tail, allocation takes a slice from the head.
    - `_qpos[b]`, the sequence number of block b's live entry while b is free; once b is
      taken it keeps the number of the consumed entry (below the head) or -1 after a prefix
      hit (`touch`). Sequence numbers are never reused, so an entry at or after the head is
      live iff its number equals `_qpos` of its block, and `b` is free iff
      `_qpos[b] >= _base + _head`.
    - The entry a hit leaves behind is stale; its sequence number goes into the min-heap
      `_stale`. Allocation slices around the stale entries in its range (usually none),
      so it never checks entries one by one.
    - Once the consumed prefix is at least half the list it is deleted in one C-level
      memmove (`_base` moves, sequence numbers stay valid); if stale entries make the
      unconsumed part exceed 2 x num_blocks, `_compact` renumbers the live entries.

    So the list stays O(num_blocks) at O(1) amortised cost per block, and the order of
    blocks, evictions and events is exactly the one-at-a-time LRU order of vLLM's free queue
    (``ref_cnt[b] == 0  <=>  b is free``).
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        enable_caching: bool = True,
        event_sink: Callable[[KVEvent], None] | None = None,
        int_hashes: bool = True,
    ) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_gpu_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.ref_cnt = [0] * num_blocks
        self.block_hash: list[Digest | None] = [None] * num_blocks
        # LRU free queue (see the class docstring): live entries of _queue[_head:], in order.
        self._queue: list[int] = list(range(num_blocks))
        # A C array, not a list: storing a sequence number then frees no int object (the
        # list version spent ~5 % of a simulation deallocating the previous numbers).
        self._qpos = array("q", range(num_blocks))
        self._head = 0
        self._base = 0  # sequence number of _queue[0]
        self._stale: list[int] = []  # min-heap: sequence numbers of stale entries
        # Blocks with reference count 0 (free or cached-but-evictable); read-only outside.
        self.num_free = num_blocks
        # digest -> the block that serves hits for it; further blocks holding the same digest
        # (computed twice, as vLLM allows) wait in `dups` and take over when it is evicted.
        self.cached: dict[Digest, int] = {}
        self.dups: dict[Digest, list[int]] = {}
        self.event_sink = event_sink
        self.int_hashes = int_hashes
        self.num_evictions = 0

    # -- queries
    def usage(self) -> float:
        """Fraction of blocks referenced by live requests (vLLM's kv_cache_usage_perc)."""
        return 1.0 - self.num_free / self.num_blocks

    def lookup(self, digest: Digest) -> int | None:
        """A physical block holding `digest`, if cached."""
        return self.cached.get(digest)

    def free_queue(self) -> list[int]:
        """The free blocks in LRU order (head = next to allocate/evict). O(queue length)."""
        qpos = self._qpos
        head = self._head
        return [b for i, b in enumerate(self._queue[head:], self._base + head) if qpos[b] == i]

    def is_free(self, block: int) -> bool:
        """True iff `block` has reference count 0 (it is in the free queue)."""
        return self._qpos[block] >= self._base + self._head

    # -- mutations
    def touch(self, blocks: Sequence[int]) -> None:
        """Take cached blocks for a request (prefix hit): ref += 1, leave the free queue."""
        ref = self.ref_cnt
        qpos = self._qpos
        stale = self._stale
        leaving = 0
        for b in blocks:
            c = ref[b]
            if c == 0:  # free: its queue entry becomes stale
                heappush(stale, qpos[b])
                qpos[b] = -1
                leaving += 1
            ref[b] = c + 1
        self.num_free -= leaving

    def allocate(self, n: int) -> list[int]:
        """Pop `n` blocks from the LRU head, evicting their cached hashes. Caller checks space."""
        if n > self.num_free:
            raise RuntimeError(f"allocate({n}) with only {self.num_free} free blocks")
        queue = self._queue
        head = self._head
        stale = self._stale
        end = self._base + head + n  # sequence number just past the slice
        if not stale or stale[0] >= end:
            out = queue[head : head + n]
            head += n
        else:  # take the live runs between the stale entries
            base = self._base
            out = []
            need = n
            while need:
                cut = head + need
                if stale and stale[0] - base < cut:
                    cut = heappop(stale) - base
                    out += queue[head:cut]
                    need -= cut - head
                    head = cut + 1
                else:
                    out += queue[head:cut]
                    head = cut
                    need = 0
        self._head = head
        self.num_free -= n
        ref = self.ref_cnt
        bh = self.block_hash
        cached = self.cached
        dups = self.dups
        removed: list[Digest] = []
        for b in out:
            ref[b] = 1
            digest = bh[b]
            if digest is not None:  # evict: the block leaves the prefix cache
                bh[b] = None
                if dups and digest in dups:
                    self._evict_duplicated(b, digest)
                else:  # the only holder of its digest, hence the owner
                    del cached[digest]
                removed.append(digest)
        if removed:
            self.num_evictions += len(removed)
            sink = self.event_sink
            if sink is not None:
                ih = self.int_hashes
                for digest in removed:
                    sink(BlockRemoved([event_hash(digest, as_int=ih)]))
        if head >= 4096 and head * 2 >= len(queue):
            del queue[:head]
            self._base += head
            self._head = 0
        return out

    def _evict_duplicated(self, b: int, digest: Digest) -> None:
        """Evict block b whose digest other blocks also hold: one of them becomes the owner."""
        copies = self.dups[digest]
        if self.cached[digest] == b:
            self.cached[digest] = copies.pop(0)
        else:
            copies.remove(b)
        if not copies:
            del self.dups[digest]

    def _compact(self) -> None:
        """Drop the consumed head of the queue and stale entries; renumber live entries.

        New sequence numbers start past every number issued so far, so a referenced block's
        old `_qpos` (an issued number) stays below `_base + _head` and never matches an entry.
        """
        live = self.free_queue()
        base = self._base + len(self._queue)
        qpos = self._qpos
        for i, b in enumerate(live, base):
            qpos[b] = i
        self._queue = live
        self._head = 0
        self._base = base
        self._stale = []

    def free_blocks(self, blocks: Sequence[int]) -> None:
        """Release a request's blocks; those reaching 0 join the queue tail, last block first."""
        ref = self.ref_cnt
        qpos = self._qpos
        queue = self._queue
        append = queue.append
        start = i = self._base + len(queue)
        for b in reversed(blocks):
            c = ref[b] - 1
            ref[b] = c
            if c == 0:
                append(b)
                qpos[b] = i
                i += 1
        self.num_free += i - start
        if self._stale and len(queue) - self._head > 2 * self.num_blocks:  # mostly stale
            self._compact()

    def cache_full_blocks(
        self,
        blocks: Sequence[int],
        digests: Sequence[Digest],
        start: int,
        end: int,
        token_ids: Sequence[int],
        cache_salt: str | None = None,
    ) -> None:
        """Mark blocks[start:end] (now full) as cached under digests[start:end]; emit BlockStored.

        A block that already has a hash (a prefix hit) keeps it; a digest already cached under
        another block makes this block a duplicate. `extra_keys` in the event is None per block
        except `[salt]` on block 0 when salted. No event is built without a sink.
        """
        if not self.enable_caching or end <= start:
            return
        bh = self.block_hash
        cached = self.cached
        for i in range(start, end):
            b = blocks[i]
            if bh[b] is not None:  # already cached (e.g. a prefix hit)
                continue
            d = digests[i]
            bh[b] = d
            if d in cached:
                self.dups.setdefault(d, []).append(b)
            else:
                cached[d] = b
        if self.event_sink is not None:
            bs = self.block_size
            ih = self.int_hashes
            parent = event_hash(digests[start - 1], as_int=ih) if start > 0 else None
            self.event_sink(
                BlockStored(
                    block_hashes=[event_hash(digests[i], as_int=ih) for i in range(start, end)],
                    parent_block_hash=parent,
                    token_ids=list(token_ids[start * bs : end * bs]),
                    block_size=bs,
                    extra_keys=[
                        [cache_salt] if (i == 0 and cache_salt) else None for i in range(start, end)
                    ],
                )
            )

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash; only allowed when no block is referenced (like vLLM)."""
        if self.num_free != self.num_blocks:
            return False
        self.cached.clear()
        self.dups.clear()
        self.block_hash = [None] * self.num_blocks
        if self.event_sink is not None:
            self.event_sink(AllBlocksCleared())
        return True

    def check_invariants(self) -> None:
        """Assert the pool's invariants (for tests; O(num_blocks)).

        ref_cnt[b] == 0 <=> b has exactly one live queue entry; num_free counts them; every
        hashed block is its digest's owner in `cached` or listed in `dups`, and vice versa.
        """
        free = self.free_queue()
        assert len(free) == len(set(free)) == self.num_free
        assert set(free) == {b for b in range(self.num_blocks) if self.ref_cnt[b] == 0}
        assert all(c >= 0 for c in self.ref_cnt)
        assert all(self.is_free(b) == (c == 0) for b, c in enumerate(self.ref_cnt))
        holders: dict[Digest, list[int]] = {}
        for b, d in enumerate(self.block_hash):
            if d is not None:
                holders.setdefault(d, []).append(b)
        assert set(holders) == set(self.cached)
        for d, bs in holders.items():
            assert sorted([self.cached[d], *self.dups.get(d, [])]) == bs
        assert all(d in self.cached and copies for d, copies in self.dups.items())
