"""vLLM's block-hash recipe (vLLM 0.32, ``vllm/v1/core/kv_cache_utils.py``), byte-exact.

Shared by the engine simulator (which publishes these hashes in its KV events) and the live
scheduler (whose precise prefix index must compute the same chain for a request before it is
sent, see ``shared/reference/vllm-migration.md`` section 6)::

    H(x)   = sha256(pickle.dumps(x, protocol=5))            # "sha256" (default)
           | sha256(canonical_cbor(x))                       # "sha256_cbor"
    parent = H(seed)     # seed = the vLLM process's PYTHONHASHSEED, else "vllm-none-hash"
    for each FULL block i of ids (prompt + generated):
        extra  = (("cache_salt", salt),) if i == 0 and salt else None
        parent = H((parent, tuple(ids[i*bs:(i+1)*bs]), extra))
    event hash = low 64 bits of the digest as an int (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1)
                 or the raw 32-byte digest

Pure: hashlib and pickle only (no I/O), so it lives in the policy layer.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from collections.abc import Callable, Sequence

__all__ = [
    "HASH_ALGOS",
    "NONE_HASH_SEED",
    "BlockHasher",
    "Digest",
    "canonical_cbor",
    "event_hash",
]

NONE_HASH_SEED = "vllm-none-hash"
HASH_ALGOS = ("sha256", "sha256_cbor", "builtin")

# A block digest: 32 bytes for vLLM's algorithms; an int for "builtin" (simulation only).
Digest = bytes | int


def canonical_cbor(obj: object) -> bytes:
    """Canonical (RFC 7049 section 3.9) CBOR of the small value set vLLM hashes.

    Supports None, bool, int, str, bytes and tuples/lists thereof; integers use the shortest
    head, which is all canonical ordering requires for these types (no maps, no floats).
    """
    out = bytearray()
    _cbor(obj, out)
    return bytes(out)


def _cbor_head(major: int, n: int, out: bytearray) -> None:
    if n < 24:
        out.append((major << 5) | n)
    elif n < 1 << 8:
        out.append((major << 5) | 24)
        out.append(n)
    elif n < 1 << 16:
        out.append((major << 5) | 25)
        out += struct.pack(">H", n)
    elif n < 1 << 32:
        out.append((major << 5) | 26)
        out += struct.pack(">I", n)
    elif n < 1 << 64:
        out.append((major << 5) | 27)
        out += struct.pack(">Q", n)
    else:
        raise ValueError(f"integer too large for CBOR: {n}")


def _cbor(obj: object, out: bytearray) -> None:
    if obj is None:
        out.append(0xF6)
    elif obj is True:
        out.append(0xF5)
    elif obj is False:
        out.append(0xF4)
    elif isinstance(obj, int):
        if obj >= 0:
            _cbor_head(0, obj, out)
        else:
            _cbor_head(1, -1 - obj, out)
    elif isinstance(obj, bytes):
        _cbor_head(2, len(obj), out)
        out += obj
    elif isinstance(obj, str):
        raw = obj.encode("utf-8")
        _cbor_head(3, len(raw), out)
        out += raw
    elif isinstance(obj, tuple | list):
        _cbor_head(4, len(obj), out)
        for item in obj:
            _cbor(item, out)
    else:
        raise TypeError(f"cannot CBOR-encode {type(obj).__name__}")


def _sha256_pickle(obj: object) -> bytes:
    return hashlib.sha256(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).digest()


def _sha256_cbor(obj: object) -> bytes:
    return hashlib.sha256(canonical_cbor(obj)).digest()


def event_hash(digest: Digest, *, as_int: bool = True) -> int | bytes:
    """The hash as published in KV events: low 64 bits big-endian as int, or the raw digest."""
    if isinstance(digest, int):
        return digest & 0xFFFFFFFFFFFFFFFF
    if as_int:
        return int.from_bytes(digest, "big") & 0xFFFFFFFFFFFFFFFF
    return digest


class BlockHasher:
    """Computes vLLM's chained block hashes for one engine configuration.

    "builtin" chains Python's tuple hash instead of sha256: ~10x cheaper, with the same
    equality structure (equal prefixes <=> equal chains, up to 64-bit collisions), so cache
    behaviour is identical. It is for virtual-time simulation only: its values are not
    vLLM's, so a scheduler cannot match them against a real engine's KV events.
    """

    def __init__(self, block_size: int, algo: str = "sha256", seed: str | None = None) -> None:
        if algo not in HASH_ALGOS:
            raise ValueError(
                f"unknown prefix_caching_hash_algo {algo!r}; valid: {', '.join(HASH_ALGOS)}"
            )
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size
        self.algo = algo
        self._h: Callable[[object], Digest]
        if algo == "builtin":
            self._h = hash
            self.none_hash: Digest = 0
        else:
            self._h = _sha256_pickle if algo == "sha256" else _sha256_cbor
            self.none_hash = self._h(NONE_HASH_SEED if seed is None else seed)

    def hash_block(
        self, parent: Digest | None, tokens: Sequence[int], extra: tuple[object, ...] | None
    ) -> Digest:
        """Hash of one full block given its parent's digest (None = first block)."""
        return self._h((self.none_hash if parent is None else parent, tuple(tokens), extra))

    def extend(
        self, hashes: list[Digest], token_ids: Sequence[int], cache_salt: str | None = None
    ) -> None:
        """Append the hashes of every full block of `token_ids` not yet in `hashes` (in place)."""
        bs = self.block_size
        n_full = len(token_ids) // bs
        h = self._h
        i = len(hashes)
        if i >= n_full:
            return
        parent = hashes[-1] if hashes else self.none_hash
        if i == 0 and cache_salt:
            parent = h((parent, tuple(token_ids[:bs]), (("cache_salt", cache_salt),)))
            hashes.append(parent)
            i = 1
        if i + 1 == n_full:  # one block (a decode step filled it): skip the zip set-up
            hashes.append(h((parent, tuple(token_ids[i * bs : n_full * bs]), None)))
            return
        # zip over one iterator repeated bs times yields the block tuples in C
        it = iter(token_ids[i * bs : n_full * bs])
        append = hashes.append
        for block in zip(*([it] * bs), strict=False):
            parent = h((parent, block, None))
            append(parent)

    def hashes(self, token_ids: Sequence[int], cache_salt: str | None = None) -> list[Digest]:
        """Digests of every full block of `token_ids`."""
        out: list[Digest] = []
        self.extend(out, token_ids, cache_salt)
        return out
