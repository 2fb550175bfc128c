"""Block hashers: turn a request into its prefix chain (see :class:`~.types.BlockChain`).

Two families:

* Approximate (router-learned index): :class:`ApproxTokenHasher` over token ids and
  :class:`ApproxTextHasher` over UTF-8 text. They need not agree with the engine, only with
  themselves, so they use a vectorised 64-bit scheme instead of a per-block cryptographic hash:
  a block's value is the wrapping dot product of its tokens with odd per-position coefficients
  (a multilinear hash), every block value is mixed with its block index (splitmix64), and the
  chain is the mixed running sum. Element ``i`` therefore depends on blocks ``0..i`` and on
  their order, as a chained hash does, but the whole chain is a dozen numpy passes with no
  Python loop per block, where vLLM's recipe runs sha256 once per block in Python (its cost
  in a decision is measured in ``bench/results/decision-cost.md``).
  Collision probability for two distinct blocks is at most ~2^-32 (a multilinear hash over
  64-bit words with random odd coefficients; token ids differ by < 2^32), and chains then mix
  with position; a collision only costs one mis-predicted hit, which is fine for a routing hint.
* Precise (KV-event index): must reproduce vLLM's recipe byte for byte; that code lives with
  the engine and is injected by the host, wrapped in :class:`FunctionBlockHasher`.

A hasher is called through :meth:`RequestView.chain`, which memoises the result per hasher
``name`` so a request is hashed once however many endpoints and plugins look at it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from modelfleet.policy.types import RequestView

_U64 = np.uint64
_C1 = _U64(0xBF58476D1CE4E5B9)
_C2 = _U64(0x94D049BB133111EB)
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_S30, _S27, _S31 = _U64(30), _U64(27), _U64(31)


class BlockHasher(Protocol):
    """Computes a request's prefix chain; ``name`` keys the per-request memo."""

    @property
    def name(self) -> str: ...

    @property
    def block_size(self) -> int: ...

    def chain(self, request: RequestView) -> Sequence[int | bytes]: ...


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser, vectorised (wrapping uint64 arithmetic)."""
    x = x ^ (x >> _S30)
    x = x * _C1
    x = x ^ (x >> _S27)
    x = x * _C2
    return x ^ (x >> _S31)


def _position_salts(block_size: int, seed: int) -> npt.NDArray[np.uint64]:
    """Odd pseudo-random coefficients, one per position in a block (odd = invertible mod 2^64)."""
    with np.errstate(over="ignore"):
        idx = np.arange(1, block_size + 1, dtype=np.uint64)
        return _mix(idx * _GOLDEN + _U64(seed & 0xFFFFFFFFFFFFFFFF)) | _U64(1)


def chain_of_values(
    values: npt.NDArray[np.uint64], salts: npt.NDArray[np.uint64], seed: int
) -> list[int]:
    """The chain over ``values`` (a 1-d uint64 array) cut in blocks of ``len(salts)``.

    Only full blocks count (as in vLLM's prefix cache). Returns Python ints (dict keys).
    """
    block_size = len(salts)
    n = len(values) // block_size
    if n == 0:
        return []
    with np.errstate(over="ignore"):
        blocks = values[: n * block_size].reshape(n, block_size)
        per_block = blocks.dot(salts)
        index = np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN
        mixed = _mix(per_block ^ (index + _U64(seed & 0xFFFFFFFFFFFFFFFF)))
        chain = _mix(np.cumsum(mixed, dtype=np.uint64))
    out: list[int] = chain.tolist()
    return out


def as_u64(ids: Sequence[int]) -> npt.NDArray[np.uint64]:
    """Token ids as a uint64 array; numpy input is converted without a Python loop.

    A Python list costs ~14 ns per id to convert (``np.fromiter``): hosts that have ids as a
    numpy array (or can keep them so) should pass the array.
    """
    if isinstance(ids, np.ndarray):
        return ids.astype(np.uint64, copy=False)
    return np.fromiter(ids, dtype=np.uint64, count=len(ids))


@dataclass(frozen=True)
class ApproxTokenHasher:
    """Approximate chain over token ids, ``block_size`` tokens per element.

    Default block 64: llm-d's approximate producer uses an effective minimum of 64 tokens, and a
    larger block means fewer index entries and lookups per request (8k tokens = 128 lookups).
    Falls back to an empty chain when the request carries no token ids.
    """

    block_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ValueError(f"ApproxTokenHasher.block_size must be > 0, got {self.block_size}")
        object.__setattr__(self, "_salts", _position_salts(self.block_size, self.seed))

    @property
    def name(self) -> str:
        return f"approx-tokens-{self.block_size}-{self.seed}"

    def chain(self, request: RequestView) -> list[int]:
        ids = request.token_ids
        if ids is None or len(ids) < self.block_size:
            return []
        values = as_u64(ids)
        salts: npt.NDArray[np.uint64] = self._salts  # type: ignore[attr-defined]
        return chain_of_values(values, salts, self.seed)


@dataclass(frozen=True)
class ApproxTextHasher:
    """Approximate chain over the UTF-8 bytes of the prompt text, ``block_size`` bytes each.

    Used when the router has text but no token ids (no tokenizer in the path), as the
    production-stack and AIBrix character-chunk indexes do. Default 256 bytes ~ 64 tokens.
    If the request has token ids, they are used instead (same scheme, separate name).
    """

    block_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ValueError(f"ApproxTextHasher.block_size must be > 0, got {self.block_size}")
        object.__setattr__(self, "_salts", _position_salts(self.block_size, self.seed))

    @property
    def name(self) -> str:
        return f"approx-text-{self.block_size}-{self.seed}"

    def chain(self, request: RequestView) -> list[int]:
        text = request.text
        if not text:
            return []
        raw = text.encode("utf-8")
        if len(raw) < self.block_size:
            return []
        values = np.frombuffer(raw, dtype=np.uint8).astype(np.uint64)
        salts: npt.NDArray[np.uint64] = self._salts  # type: ignore[attr-defined]
        return chain_of_values(values, salts, self.seed)


@dataclass(frozen=True)
class FunctionBlockHasher:
    """Wraps a host-supplied ``fn(token_ids) -> chain`` (e.g. the engine's vLLM recipe).

    ``name`` must change whenever the recipe's inputs change (algorithm, seed, block size),
    because it keys the per-request memo.
    """

    name: str
    block_size: int
    fn: Callable[[Sequence[int]], Sequence[int | bytes]]

    def chain(self, request: RequestView) -> Sequence[int | bytes]:
        ids = request.token_ids
        if ids is None:
            return []
        return self.fn(ids)


@dataclass(frozen=True)
class ApproxAutoHasher:
    """Token chain when the request has ids, else a text chain (the approximate default).

    Text blocks are ``chars_per_token × block_size`` bytes and are counted as ``block_size``
    tokens each (an estimate: ~4 bytes per token for English), so hit lengths stay in tokens.
    """

    block_size: int = 64
    chars_per_token: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.chars_per_token <= 0:
            raise ValueError("ApproxAutoHasher.block_size and chars_per_token must be > 0")
        object.__setattr__(self, "_tokens", ApproxTokenHasher(self.block_size, self.seed))
        object.__setattr__(
            self, "_text", ApproxTextHasher(self.block_size * self.chars_per_token, self.seed)
        )

    @property
    def name(self) -> str:
        return f"approx-auto-{self.block_size}-{self.chars_per_token}-{self.seed}"

    def chain(self, request: RequestView) -> list[int]:
        if request.token_ids is not None:
            out: list[int] = self._tokens.chain(request)  # type: ignore[attr-defined]
            return out
        text_out: list[int] = self._text.chain(request)  # type: ignore[attr-defined]
        return text_out
