"""Prefix-cache indexes: which endpoint holds which prefix blocks.

Both indexes keep ONE map ``block hash → endpoints holding it`` (a :class:`HolderMap`, endpoint
sets as int bitmasks) and answer a request by walking its chain once (``match``): the set of
endpoints still matching shrinks as the walk goes deeper, and an endpoint's hit is the depth at
which it drops out. The cost is one dict lookup and one int ``&`` per block, independent of the
number of endpoints, instead of one longest-prefix search per endpoint (the decision cost is
measured in ``bench/results/decision-cost.md``). The
approximate index goes further: its blocks of a chain are prefix-closed per endpoint, so the
depths where endpoints drop out are found by binary search (``walk_prefix_closed``). The
precise index keeps the exact linear walk, because engine events can leave gaps.

* :class:`ApproxPrefixIndex` learns from the requests this scheduler routed (``on_routed``), with
  an LRU bound per endpoint. Blocks of a chain are touched from the last to the first, so the
  head of a prefix — the part most requests share — is the most recently used and is evicted
  last, as the engine's own LRU does (vLLM frees a sequence's blocks tail first).
* :class:`PrecisePrefixIndex` is fed by the engines' KV events (``BlockStored``/
  ``BlockRemoved``/``AllBlocksCleared``) and hashes the request with the engine's recipe (an
  injected hasher). Because events arrive after the prefill, it also records the chain of a
  routed request *speculatively* on its endpoint for ``speculative_ttl_s`` (llm-d's
  ``speculativeIndexing``), so back-to-back requests with the same prefix follow each other.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from itertools import islice
from typing import Any, Protocol

from modelfleet.policy.framework import Clock, Data, Plugin
from modelfleet.policy.hashing import BlockHasher
from modelfleet.policy.types import BlockChain, Decision, EndpointId, RequestId, RequestView

BlockKey = int | bytes


class PrefixIndex(Protocol):
    """What scorers, the migration planner and the routing host need from a prefix index."""

    hasher: BlockHasher

    def match(self, request: RequestView) -> dict[EndpointId, int]:
        """Cached prompt tokens per endpoint holding at least one leading block."""
        ...

    def forget(self, endpoint: EndpointId) -> None:
        """Drop everything known about ``endpoint`` (it left the pool or restarted)."""
        ...


class HolderMap:
    """``block hash → endpoints holding it``, with endpoint sets as int bitmasks.

    Each endpoint gets a bit the first time it is seen; a block's holders are one Python int,
    so the walk's "still matching" intersection is a single ``&`` on a small int instead of a
    set intersection whose cost grows with the number of endpoints.
    """

    def __init__(self) -> None:
        self.masks: dict[BlockKey, int] = {}
        self._bit: dict[EndpointId, int] = {}
        self._ids: list[EndpointId] = []

    def bit(self, endpoint: EndpointId) -> int:
        b = self._bit.get(endpoint)
        if b is None:
            b = self._bit[endpoint] = 1 << len(self._ids)
            self._ids.append(endpoint)
        return b

    def add(self, h: BlockKey, endpoint: EndpointId) -> None:
        self.masks[h] = self.masks.get(h, 0) | self.bit(endpoint)

    def discard(self, h: BlockKey, endpoint: EndpointId) -> None:
        m = self.masks.get(h)
        if m is None:
            return
        m &= ~self.bit(endpoint)
        if m:
            self.masks[h] = m
        else:
            del self.masks[h]

    def holders(self, h: BlockKey) -> set[EndpointId]:
        return set(self._unpack(self.masks.get(h, 0)))

    def _unpack(self, mask: int) -> list[EndpointId]:
        ids = self._ids
        out = []
        while mask:
            low = mask & -mask
            out.append(ids[low.bit_length() - 1])
            mask ^= low
        return out

    def walk(self, chain: BlockChain, cap_tokens: int) -> dict[EndpointId, int]:
        """Longest cached prefix, in tokens, per endpoint, in one pass along ``chain``.

        Invariant: ``alive`` holds the endpoints that hold every block so far; an endpoint's
        result is (blocks matched) × ``chain.block_size``, capped at ``cap_tokens`` when > 0.
        Cost: one dict lookup and one int ``&`` per block, plus work only where the set of
        matching endpoints shrinks.
        """
        hashes = chain.hashes
        if not hashes:
            return {}
        masks = self.masks
        alive = masks.get(hashes[0], 0)
        if not alive:
            return {}
        bs = chain.block_size
        cap = cap_tokens if cap_tokens > 0 else len(hashes) * bs
        result: dict[EndpointId, int] = {}
        get = masks.get
        depth = 1
        for h in islice(hashes, 1, None):
            nxt = alive & get(h, 0)
            if nxt != alive:
                tokens = min(depth * bs, cap)
                for ep in self._unpack(alive & ~nxt):
                    result[ep] = tokens
                alive = nxt
                if not alive:
                    return result
            depth += 1
        tokens = min(depth * bs, cap)
        for ep in self._unpack(alive):
            result[ep] = tokens
        return result

    def walk_prefix_closed(self, chain: BlockChain, cap_tokens: int) -> dict[EndpointId, int]:
        """Same result as :meth:`walk` when every endpoint's blocks of a chain are a prefix.

        Precondition (an invariant of :class:`ApproxPrefixIndex`): if an endpoint holds block
        ``i`` of a chain it holds blocks ``0..i-1``. Then "every matching endpoint holds block
        j" is monotone in j, and each group of endpoints that drop out at the same depth is
        found by binary search: O(groups × log blocks) lookups instead of one per block
        (8k tokens: ~7-15 lookups instead of 128).
        """
        hashes = chain.hashes
        n = len(hashes)
        if n == 0:
            return {}
        get = self.masks.get
        alive = get(hashes[0], 0)
        if not alive:
            return {}
        bs = chain.block_size
        cap = cap_tokens if cap_tokens > 0 else n * bs
        result: dict[EndpointId, int] = {}
        lo = 0  # every endpoint in `alive` holds blocks 0..lo
        while alive:
            if get(hashes[n - 1], 0) & alive == alive:
                last = n - 1
            else:
                a, b = lo, n - 1  # holds at a, fails at b
                while b - a > 1:
                    mid = (a + b) // 2
                    if get(hashes[mid], 0) & alive == alive:
                        a = mid
                    else:
                        b = mid
                last = a
            nxt = alive & get(hashes[last + 1], 0) if last + 1 < n else 0
            tokens = min((last + 1) * bs, cap)
            for ep in self._unpack(alive & ~nxt):
                result[ep] = tokens
            alive = nxt
            lo = last + 1
        return result


def walk_chain(
    holders_of: Mapping[BlockKey, set[EndpointId]], chain: BlockChain, cap_tokens: int
) -> dict[EndpointId, int]:
    """Reference form of :meth:`HolderMap.walk` over plain sets (same result)."""
    hm = HolderMap()
    for h, eps in holders_of.items():
        for ep in sorted(eps):
            hm.add(h, ep)
    return hm.walk(chain, cap_tokens)


class ApproxPrefixIndex(Plugin):
    """Router-learned index, bounded per endpoint by that endpoint's KV-cache capacity.

    Learns the prompt chain of every routed request on its endpoint (and on the destination of a
    migration) and forgets like the engine's cache: each endpoint holds at most its capacity in
    tokens, counting the blocks it learned (``block_size`` tokens each) plus the decode room of
    the requests in flight there (their ``max_tokens``, pinned while they run, as the engine
    keeps a running sequence's blocks), and evicts least recently used blocks first. Blocks of
    a chain are touched tail first, so the head of a prefix, the part most requests share, is
    evicted last, as vLLM frees a sequence's blocks tail first.

    Capacity: :meth:`set_capacity` per endpoint (the routing host passes
    ``EndpointInfo.kv_capacity_tokens``, derived from the endpoint's declared memory, model and
    ``gpuMemoryUtilization``); endpoints without one get ``capacity_blocks`` blocks of the
    hasher's block size (llm-d's default: 31,250 blocks of 64 tokens = 2 M tokens). Sizing the
    index from the real capacity is what keeps its predicted hits close to the hits the
    engines deliver (``bench/results/placement-matrix.md`` reports both per run).
    """

    def __init__(self, hasher: BlockHasher, *, capacity_blocks: int = 31_250) -> None:
        if capacity_blocks <= 0:
            raise ValueError(f"capacity_blocks must be > 0, got {capacity_blocks}")
        self.name = "approx-prefix-index"
        self.hasher = hasher
        self.capacity_blocks = capacity_blocks
        self._holders = HolderMap()
        self._lru: dict[EndpointId, OrderedDict[BlockKey, int]] = {}
        self._used: dict[EndpointId, int] = {}  # tokens in the endpoint's LRU
        self._capacity: dict[EndpointId, int] = {}  # tokens, from set_capacity
        self._pinned: dict[EndpointId, int] = {}  # decode room of the requests in flight
        self._pins: dict[RequestId, tuple[EndpointId, int]] = {}

    def match(self, request: RequestView) -> dict[EndpointId, int]:
        # blocks are touched tail-first, so an endpoint's blocks of a chain are always a
        # prefix of it (the LRU evicts deeper blocks first): the binary-search walk is exact
        return self._holders.walk_prefix_closed(request.chain(self.hasher), request.prompt_tokens)

    def set_capacity(self, endpoint: EndpointId, tokens: int) -> None:
        """Bound ``endpoint``'s share of the index at ``tokens`` KV tokens (> 0)."""
        if tokens <= 0:
            raise ValueError(f"capacity of {endpoint!r} must be > 0 tokens, got {tokens}")
        self._capacity[endpoint] = tokens
        self._evict(endpoint)

    def capacity_tokens(self, endpoint: EndpointId) -> int:
        found = self._capacity.get(endpoint)
        return found if found is not None else self.capacity_blocks * self.hasher.block_size

    def insert(
        self, endpoint: EndpointId, hashes: Iterable[BlockKey], block_size: int | None = None
    ) -> None:
        """Record ``hashes`` (a chain, head first, ``block_size`` tokens each) on ``endpoint``."""
        size = block_size or self.hasher.block_size
        lru = self._lru.get(endpoint)
        if lru is None:
            lru = self._lru[endpoint] = OrderedDict()
        masks = self._holders.masks
        bit = self._holders.bit(endpoint)
        added = 0
        for h in reversed(list(hashes)):
            if h in lru:
                lru.move_to_end(h)
                continue
            lru[h] = size
            added += size
            masks[h] = masks.get(h, 0) | bit
        self._used[endpoint] = self._used.get(endpoint, 0) + added
        self._evict(endpoint)

    def _evict(self, endpoint: EndpointId) -> None:
        lru = self._lru.get(endpoint)
        if not lru:
            return
        limit = self.capacity_tokens(endpoint) - self._pinned.get(endpoint, 0)
        used = self._used.get(endpoint, 0)
        discard = self._holders.discard
        # keep at least the most recent chain's head: a request larger than the cache still
        # leaves its first blocks behind, as the engine keeps what fits
        while used > limit and len(lru) > 1:
            old, size = lru.popitem(last=False)
            used -= size
            discard(old, endpoint)
        self._used[endpoint] = used

    def forget(self, endpoint: EndpointId) -> None:
        """Drop everything known about ``endpoint`` (it left the pool or was restarted)."""
        for h in self._lru.pop(endpoint, OrderedDict()):
            self._holders.discard(h, endpoint)
        self._used.pop(endpoint, None)
        self._pinned.pop(endpoint, None)
        for rid in [r for r, (ep, _n) in self._pins.items() if ep == endpoint]:
            del self._pins[rid]

    def blocks(self, endpoint: EndpointId) -> int:
        return len(self._lru.get(endpoint, ()))

    def tokens(self, endpoint: EndpointId) -> int:
        """Tokens of learned blocks held for ``endpoint`` (not counting pinned decode room)."""
        return self._used.get(endpoint, 0)

    def _pin(self, request: RequestView, endpoint: EndpointId) -> None:
        self._unpin(request.id)
        n = max(0, request.max_tokens)
        if n:
            self._pins[request.id] = (endpoint, n)
            self._pinned[endpoint] = self._pinned.get(endpoint, 0) + n

    def _unpin(self, request_id: RequestId) -> None:
        found = self._pins.pop(request_id, None)
        if found is not None:
            ep, n = found
            self._pinned[ep] = self._pinned.get(ep, 0) - n

    def on_routed(self, request: RequestView, decision: Decision) -> None:
        chain = request.chain(self.hasher)
        self._pin(request, decision.endpoint)
        self.insert(decision.endpoint, chain.hashes, chain.block_size)

    def on_completed(self, request_id: RequestId, endpoint: EndpointId) -> None:
        self._unpin(request_id)

    def on_migrated(
        self, request: RequestView, src: EndpointId, dst: EndpointId, generated_tokens: int
    ) -> None:
        chain = request.chain(self.hasher)
        self._pin(request, dst)
        self.insert(dst, chain.hashes, chain.block_size)


def _event_kind(event: object) -> str:
    if isinstance(event, Mapping):
        return str(event.get("type", ""))
    return type(event).__name__


def _event_field(event: object, name: str) -> Any:
    if isinstance(event, Mapping):
        return event.get(name)
    return getattr(event, name, None)


class PrecisePrefixIndex(Plugin):
    """Index fed by engine KV events; exact as long as events are not lost.

    ``apply``/``on_kv_event`` accept the engine's event dataclasses or msgpack-decoded dicts,
    recognised by class name or ``"type"``: ``BlockStored(block_hashes, parent_block_hash)``,
    ``BlockRemoved(block_hashes)``, ``AllBlocksCleared()``. Unknown kinds are ignored (newer
    engines add event types). Stores are idempotent (vLLM may re-emit a stored hash).
    It declares ``Data.KV_EVENTS``, so a host that runs it subscribes to the engines' events.
    """

    consumes = frozenset({Data.KV_EVENTS})

    def __init__(
        self, hasher: BlockHasher, *, clock: Clock, speculative_ttl_s: float = 2.0
    ) -> None:
        if speculative_ttl_s < 0:
            raise ValueError(f"speculative_ttl_s must be >= 0, got {speculative_ttl_s}")
        self.name = "precise-prefix-index"
        self.hasher = hasher
        self.clock = clock
        self.speculative_ttl_s = speculative_ttl_s
        self._holders = HolderMap()
        self._stored: dict[EndpointId, set[BlockKey]] = {}
        self._spec: dict[tuple[EndpointId, BlockKey], float] = {}
        self._spec_queue: deque[tuple[float, EndpointId, tuple[BlockKey, ...]]] = deque()
        self.events_applied = 0

    def match(self, request: RequestView) -> dict[EndpointId, int]:
        return self._holders.walk(request.chain(self.hasher), request.prompt_tokens)

    def apply(self, endpoint: EndpointId, event: object) -> None:
        kind = _event_kind(event)
        if kind == "BlockStored":
            stored = self._stored.setdefault(endpoint, set())
            for h in _event_field(event, "block_hashes") or ():
                stored.add(h)
                self._holders.add(h, endpoint)
                self._spec.pop((endpoint, h), None)
        elif kind == "BlockRemoved":
            stored = self._stored.get(endpoint, set())
            for h in _event_field(event, "block_hashes") or ():
                stored.discard(h)
                self._spec.pop((endpoint, h), None)
                self._holders.discard(h, endpoint)
        elif kind == "AllBlocksCleared":
            for h in self._stored.pop(endpoint, set()):
                self._holders.discard(h, endpoint)
            for key in [k for k in self._spec if k[0] == endpoint]:
                del self._spec[key]
                self._holders.discard(key[1], endpoint)
        else:
            return
        self.events_applied += 1

    def _expire(self, now: float) -> None:
        q = self._spec_queue
        while q and q[0][0] <= now:
            _, ep, hashes = q.popleft()
            for h in hashes:
                expiry = self._spec.get((ep, h))
                if expiry is not None and expiry <= now:
                    del self._spec[(ep, h)]
                    if h not in self._stored.get(ep, ()):
                        self._holders.discard(h, ep)

    def forget(self, endpoint: EndpointId) -> None:
        self.apply(endpoint, {"type": "AllBlocksCleared"})

    def on_kv_event(self, endpoint: EndpointId, event: object) -> None:
        self.apply(endpoint, event)

    def on_routed(self, request: RequestView, decision: Decision) -> None:
        now = self.clock()
        self._expire(now)
        if self.speculative_ttl_s <= 0:
            return
        ep = decision.endpoint
        stored = self._stored.get(ep, set())
        expiry = now + self.speculative_ttl_s
        fresh: list[BlockKey] = []
        for h in request.chain(self.hasher).hashes:
            if h in stored:
                continue
            self._spec[(ep, h)] = expiry
            self._holders.add(h, ep)
            fresh.append(h)
        if fresh:
            self._spec_queue.append((expiry, ep, tuple(fresh)))

    def on_completed(self, request_id: RequestId, endpoint: EndpointId) -> None:
        self._expire(self.clock())
