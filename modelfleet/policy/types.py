"""Frozen snapshots and result values shared by every policy plugin.

A policy never sees live engine or scheduler objects: the host builds an :class:`EndpointView`
per candidate and a :class:`RequestView` per request, and gets a :class:`Decision` back. The
views are frozen so that a plugin cannot change what the next plugin sees; the only mutable
part is the request's memo of block chains, which is a pure cache (same input, same output)
so that a request is hashed at most once per hasher however many endpoints and plugins ask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NewType

if TYPE_CHECKING:
    from modelfleet.policy.hashing import BlockHasher
    from modelfleet.policy.perf import PerfModel

EndpointId = NewType("EndpointId", str)
RequestId = NewType("RequestId", str)


@dataclass(frozen=True, slots=True)
class EndpointView:
    """What a policy knows about one engine instance at decision time.

    Engine metrics (``running``, ``waiting``, ``kv_cache_usage``) come from scrapes and may be
    tens of milliseconds stale; the ``inflight_*`` counters are this scheduler's own record of
    what it sent and has not seen finish, so they are fresh (see ``modelfleet.policy.load``).
    """

    id: EndpointId
    pool: str = ""
    model: str = ""
    accelerator: str = ""
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    inflight_requests: int = 0
    inflight_tokens: int = 0
    inflight_prefill_tokens: int = 0
    healthy: bool = True
    draining: bool = False
    relative_speed: float = 1.0
    perf: PerfModel | None = None


@dataclass(frozen=True, slots=True)
class BlockChain:
    """A request's prefix chain: ``hashes[i]`` identifies the whole prefix of blocks ``0..i``.

    ``block_size`` is the number of tokens (or characters, for text chains) per element, so a
    match of ``k`` elements is worth ``k * block_size`` cached tokens.
    """

    hashes: tuple[int | bytes, ...]
    block_size: int


@dataclass(frozen=True, slots=True)
class RequestView:
    """What a policy knows about one request.

    ``block_hashes``, when given, is a chain computed by the host (for instance Mooncake trace
    hash ids, or the engine's vLLM chain); it is then returned for every hasher, which is the
    fast path of the simulator. Otherwise :meth:`chain` computes it once per hasher and keeps it
    in ``_chains`` (a memo, excluded from equality and repr).
    """

    id: RequestId
    pool: str = ""
    model: str = ""
    prompt_tokens: int = 0
    token_ids: Sequence[int] | None = None
    text: str | None = None
    block_hashes: Sequence[int | bytes] | None = None
    block_size: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    session_id: str | None = None
    slo_class: str = "standard"
    priority: int = 0
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    max_tokens: int = 0
    arrival_s: float = 0.0
    _chains: dict[str, BlockChain] = field(
        default_factory=dict, compare=False, repr=False, hash=False
    )

    def __post_init__(self) -> None:
        if self.block_hashes is not None and self.block_size <= 0:
            raise ValueError(
                f"RequestView {self.id!r}: block_size must be > 0 when block_hashes is given"
            )
        if self.prompt_tokens < 0:
            raise ValueError(f"RequestView {self.id!r}: prompt_tokens must be >= 0")

    def chain(self, hasher: BlockHasher) -> BlockChain:
        """The request's prefix chain under ``hasher``, computed at most once per hasher name."""
        if self.block_hashes is not None:
            key = "__given__"
            found = self._chains.get(key)
            if found is None:
                found = BlockChain(tuple(self.block_hashes), self.block_size)
                self._chains[key] = found
            return found
        found = self._chains.get(hasher.name)
        if found is None:
            found = BlockChain(tuple(hasher.chain(self)), hasher.block_size)
            self._chains[hasher.name] = found
        return found


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one placement, with everything needed to explain it.

    ``scores[plugin][i]`` is the clamped [0, 1] score of ``candidates[i]``; ``totals[i]`` the
    weighted sum the picker saw. ``cached_tokens`` is the predicted prefix hit on the chosen
    endpoint and ``max_cached_tokens`` the best over all candidates (0 means a cold request).
    """

    endpoint: EndpointId
    request_id: RequestId
    candidates: tuple[EndpointId, ...]
    scores: Mapping[str, tuple[float, ...]]
    weights: Mapping[str, float]
    totals: tuple[float, ...]
    filtered_out: Mapping[str, tuple[EndpointId, ...]]
    timings_s: Mapping[str, float]
    errors: Mapping[str, str]
    cached_tokens: int = 0
    max_cached_tokens: int = 0


class NoEndpointError(RuntimeError):
    """Raised when no endpoint is left to place a request on.

    The message names the request and the filter that removed the last candidates (or says the
    input was empty), so an operator can tell "all draining" from "all unhealthy".
    """
