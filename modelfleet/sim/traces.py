"""Request traces for the cluster simulator: loaders, a synthetic generator, token materialisation.

A trace is a list of requests with an arrival time, prompt and output lengths and a *prefix-block
chain*: ``block_ids[j]`` names the content of prompt tokens ``[j*B, (j+1)*B)`` where ``B`` is the
trace's ``block_tokens`` (512 for Mooncake). The invariant the whole simulator relies on (and that
holds on the Mooncake traces, checked at load time by :func:`check_prefix_consistency`) is that a
block id determines its whole prefix: equal ids at position ``j`` imply equal ids at ``0..j``.

Token ids are *materialised* from block ids by a pure function (:func:`block_token_ids`): block id
``h`` always yields the same ``B`` token ids, and a partial last block of ``n`` tokens is the first
``n`` of them. Hence equal id prefixes give equal token prefixes, so the engine's vLLM block hashes
(16-token blocks; one 512-token trace block = 32 engine blocks) agree exactly where the trace says
the KV cache is shareable, and nowhere else (up to a 64-bit mixing collision).

Traces without prefix information (Azure 2023) get fresh, request-unique block ids, so they share
nothing. Loaders accept plain or gzip-compressed files.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "SharedPrefixConfig",
    "Trace",
    "TraceError",
    "TraceRequest",
    "assign_pools",
    "block_token_ids",
    "check_prefix_consistency",
    "generate_shared_prefix",
    "load_azure",
    "load_mooncake",
    "prompt_token_ids",
    "trace_from_requests",
]

# Prompt token ids are drawn from [1, DEFAULT_VOCAB_SIZE): CPython caches the ints up to 256, so
# a prompt materialises much faster than with a 128k vocabulary (bench/results/sim-speed.md).
# Only equality matters inside the simulator: two different 16-token blocks still
# differ with probability 1 - 256^-16. Pass vocab_size=128_256 for Llama-3-like ids.
DEFAULT_VOCAB_SIZE = 257
_FIRST_TOKEN_ID = 1
_MASK64 = (1 << 64) - 1


class TraceError(ValueError):
    """A trace file or trace parameter is malformed; the message names the file, line and field."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace.

    ``arrival_s`` is seconds from trace start; ``block_ids`` covers the prompt with
    ``ceil(input_tokens / block_tokens)`` ids (the last block may be partial). ``pool`` names
    the pool (model) that serves it in a fleet of several pools (:func:`assign_pools`).
    """

    index: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    block_ids: tuple[int, ...]
    session_id: str | None = None
    pool: str | None = None

    @property
    def request_id(self) -> str:
        return f"req-{self.index}"


@dataclass(frozen=True)
class Trace:
    """An immutable, arrival-ordered list of requests plus the block granularity of its ids."""

    name: str
    requests: tuple[TraceRequest, ...]
    block_tokens: int
    source: str = ""
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.block_tokens <= 0 or self.block_tokens % 16:
            raise TraceError(f"trace {self.name}: block_tokens must be a positive multiple of 16")

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[TraceRequest]:
        return iter(self.requests)

    @property
    def duration_s(self) -> float:
        """Span from first to last arrival (0 for fewer than two requests)."""
        if len(self.requests) < 2:
            return 0.0
        return self.requests[-1].arrival_s - self.requests[0].arrival_s

    def compressed(self, factor: float) -> Trace:
        """Divide every arrival time by ``factor`` (> 1 = more load); lengths unchanged."""
        if not factor > 0 or not math.isfinite(factor):
            raise TraceError(f"time-compression factor must be a positive number, got {factor!r}")
        reqs = tuple(replace(r, arrival_s=r.arrival_s / factor) for r in self.requests)
        return replace(self, requests=reqs, notes=(*self.notes, f"time compressed x{factor:g}"))

    def head(self, n: int) -> Trace:
        """The first ``n`` requests (for tests and quick runs)."""
        return replace(self, requests=self.requests[:n], notes=(*self.notes, f"first {n}"))

    def window(self, start_s: float, end_s: float) -> Trace:
        """Requests arriving in ``[start_s, end_s)``, re-based so the first arrival is 0."""
        sel = [r for r in self.requests if start_s <= r.arrival_s < end_s]
        t0 = sel[0].arrival_s if sel else 0.0
        reqs = tuple(replace(r, arrival_s=r.arrival_s - t0) for r in sel)
        return replace(
            self, requests=reqs, notes=(*self.notes, f"window [{start_s:g}, {end_s:g}) s")
        )

    def burst(self, start_s: float, length_s: float, factor: float) -> Trace:
        """Arrivals in ``[start_s, start_s + length_s)`` come ``factor`` times faster.

        The stretch is compressed into ``length_s / factor`` seconds and every later arrival
        moves earlier by the time saved, so the same requests arrive, with a burst of
        ``factor`` times the rate in the middle (the bursty load of the placement matrix).
        """
        if not factor >= 1 or not math.isfinite(factor) or length_s <= 0:
            raise TraceError(f"burst: factor must be >= 1 and length > 0, got {factor}, {length_s}")
        end = start_s + length_s
        saved = length_s - length_s / factor

        def moved(t: float) -> float:
            if t < start_s:
                return t
            if t < end:
                return start_s + (t - start_s) / factor
            return t - saved

        reqs = tuple(replace(r, arrival_s=moved(r.arrival_s)) for r in self.requests)
        note = f"burst x{factor:g} over [{start_s:g}, {end:g}) s"
        return replace(self, requests=reqs, notes=(*self.notes, note))

    def max_request_tokens(self) -> int:
        """The longest prompt + output of the trace (what ``max_model_len`` must admit)."""
        return max((r.input_tokens + r.output_tokens for r in self.requests), default=0)

    def pools(self) -> tuple[str, ...]:
        """The pools the requests name, in order of first appearance (empty: none named)."""
        seen: dict[str, None] = {}
        for r in self.requests:
            if r.pool is not None:
                seen.setdefault(r.pool, None)
        return tuple(seen)

    def total_input_tokens(self) -> int:
        return sum(r.input_tokens for r in self.requests)

    def total_output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.requests)


# --------------------------------------------------------------------------- token materialisation


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised splitmix64 finaliser (uint64 in, well-mixed uint64 out)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def block_token_ids(
    block_id: int, n_tokens: int, *, block_tokens: int, vocab_size: int = DEFAULT_VOCAB_SIZE
) -> np.ndarray:
    """The first ``n_tokens`` token ids of trace block ``block_id`` (a pure function).

    Token ``j`` of block ``h`` is ``splitmix64(h * block_tokens + j)`` folded into
    ``[1, vocab_size)``; different blocks therefore differ almost surely, and a partial block
    is a prefix of the full one.
    """
    if not 0 <= n_tokens <= block_tokens:
        raise TraceError(f"block {block_id}: n_tokens {n_tokens} outside [0, {block_tokens}]")
    base = (block_id * block_tokens) & _MASK64
    idx = np.arange(n_tokens, dtype=np.uint64) + np.uint64(base)
    span = np.uint64(vocab_size - _FIRST_TOKEN_ID)
    return (_splitmix64(idx) % span + np.uint64(_FIRST_TOKEN_ID)).astype(np.int64)


def prompt_token_ids(
    req: TraceRequest, *, block_tokens: int, vocab_size: int = DEFAULT_VOCAB_SIZE
) -> list[int]:
    """Materialise a request's prompt: its blocks' token ids concatenated, cut to input_tokens."""
    n_in = req.input_tokens
    nb = -(-n_in // block_tokens)
    if len(req.block_ids) < nb:
        raise TraceError(
            f"request {req.index}: {len(req.block_ids)} blocks of {block_tokens} tokens "
            f"cannot cover input_tokens={n_in}"
        )
    if n_in <= 0:
        return []
    bids = np.asarray(req.block_ids[:nb], dtype=np.uint64) * np.uint64(block_tokens)
    idx = (bids[:, None] + np.arange(block_tokens, dtype=np.uint64)[None, :]).ravel()[:n_in]
    span = np.uint64(vocab_size - _FIRST_TOKEN_ID)
    ids: list[int] = (_splitmix64(idx) % span + np.uint64(_FIRST_TOKEN_ID)).tolist()
    return ids


def check_prefix_consistency(requests: Iterable[TraceRequest], *, name: str) -> None:
    """Raise TraceError unless every block id always has the same position and predecessor."""
    seen: dict[int, tuple[int, int | None]] = {}
    for r in requests:
        prev: int | None = None
        for pos, bid in enumerate(r.block_ids):
            key = (pos, prev)
            old = seen.setdefault(bid, key)
            if old != key:
                raise TraceError(
                    f"trace {name}: request {r.index} has block id {bid} at position {pos} after "
                    f"{prev}, but it appeared earlier at position {old[0]} after {old[1]}; block "
                    "ids must identify their whole prefix"
                )
            prev = bid


# --------------------------------------------------------------------------- loaders


def _open_text(path: Path) -> io.TextIOBase:
    if not path.exists():
        raise TraceError(f"trace file not found: {path}")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return io.TextIOWrapper(open(path, "rb"), encoding="utf-8")


def _int_field(obj: dict[str, object], key: str, where: str, *, minimum: int) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise TraceError(f"{where}: field {key!r} must be an integer >= {minimum}, got {v!r}")
    return v


def load_mooncake(path: str | Path, *, name: str | None = None, block_tokens: int = 512) -> Trace:
    """Load a Mooncake FAST'25 JSONL trace (``conversation_trace``, ``synthetic_trace``, ...).

    Fields: ``timestamp`` (ms), ``input_length``, ``output_length``, ``hash_ids`` (512-token
    prefix blocks). Requests are sorted by arrival (stable, so equal timestamps keep file order).
    """
    p = Path(path)
    reqs: list[TraceRequest] = []
    with _open_text(p) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{p}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise TraceError(f"{where}: expected a JSON object")
            ts = obj.get("timestamp")
            if not isinstance(ts, int | float) or isinstance(ts, bool) or ts < 0:
                raise TraceError(f"{where}: field 'timestamp' must be a number >= 0 (ms)")
            n_in = _int_field(obj, "input_length", where, minimum=1)
            n_out = _int_field(obj, "output_length", where, minimum=1)
            hids = obj.get("hash_ids")
            if not isinstance(hids, list) or not all(
                isinstance(h, int) and not isinstance(h, bool) and h >= 0 for h in hids
            ):
                raise TraceError(f"{where}: field 'hash_ids' must be a list of integers >= 0")
            need = -(-n_in // block_tokens)
            if len(hids) != need:
                raise TraceError(
                    f"{where}: input_length {n_in} needs {need} hash_ids of {block_tokens} "
                    f"tokens, found {len(hids)}"
                )
            reqs.append(TraceRequest(len(reqs), float(ts) / 1000.0, n_in, n_out, tuple(hids)))
    reqs.sort(key=lambda r: r.arrival_s)
    reqs = [replace(r, index=i) for i, r in enumerate(reqs)]
    nm = name or p.name.split(".")[0]
    check_prefix_consistency(reqs, name=nm)
    return Trace(nm, tuple(reqs), block_tokens, source=str(p))


def _parse_azure_ts(text: str, where: str) -> float:
    """Seconds since the epoch of ``YYYY-MM-DD HH:MM:SS.fffffff`` (7 fractional digits)."""
    s = text.strip()
    try:
        head, _, frac = s.partition(".")
        base = datetime.strptime(head, "%Y-%m-%d %H:%M:%S")
        return base.timestamp() + (float("0." + frac) if frac else 0.0)
    except ValueError as exc:
        raise TraceError(f"{where}: bad TIMESTAMP {text!r} ({exc})") from exc


def load_azure(path: str | Path, *, name: str | None = None, block_tokens: int = 512) -> Trace:
    """Load an Azure LLM inference 2023 CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``).

    The trace carries no prefix information, so every request gets fresh block ids (no sharing).
    Rows with 0 context or 0 generated tokens are kept out and counted in ``notes``.
    """
    p = Path(path)
    rows: list[tuple[float, int, int]] = []
    skipped = 0
    with _open_text(p) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        want = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
        if header is None or [h.strip() for h in header] != want:
            raise TraceError(f"{p}: expected header {','.join(want)}, got {header!r}")
        for lineno, row in enumerate(reader, start=2):
            where = f"{p}:{lineno}"
            if len(row) != 3:
                raise TraceError(f"{where}: expected 3 columns, got {len(row)}")
            t = _parse_azure_ts(row[0], where)
            try:
                n_in, n_out = int(row[1]), int(row[2])
            except ValueError as exc:
                raise TraceError(f"{where}: token counts must be integers ({exc})") from exc
            if n_in <= 0 or n_out <= 0:
                skipped += 1
                continue
            rows.append((t, n_in, n_out))
    if not rows:
        raise TraceError(f"{p}: no usable rows")
    rows.sort(key=lambda x: x[0])
    t0 = rows[0][0]
    reqs: list[TraceRequest] = []
    next_id = 0
    for i, (t, n_in, n_out) in enumerate(rows):
        nb = -(-n_in // block_tokens)
        reqs.append(TraceRequest(i, t - t0, n_in, n_out, tuple(range(next_id, next_id + nb))))
        next_id += nb
    notes = (f"{skipped} rows with 0 tokens skipped",) if skipped else ()
    return Trace(name or p.name.split(".")[0], tuple(reqs), block_tokens, str(p), notes)


# --------------------------------------------------------------------------- synthetic generator


@dataclass(frozen=True)
class SharedPrefixConfig:
    """Parameters of the shared-prefix multi-turn generator (all token counts in tokens).

    ``num_groups`` system prompts of ``system_prompt_tokens`` each; conversations start as a
    Poisson process of ``conversation_rate`` per second and pick a group uniformly; each has
    1..``max_turns`` turns (uniform); turn k's prompt is turn k-1's prompt + its output + a new
    user message of ``user_tokens_mean`` (exponential, >= 1); turns are ``think_time_s`` apart on
    average (exponential; open loop, i.e. not waiting for the previous answer).
    """

    num_conversations: int = 200
    num_groups: int = 8
    system_prompt_tokens: int = 1024
    max_turns: int = 6
    user_tokens_mean: float = 200.0
    output_tokens_mean: float = 150.0
    conversation_rate: float = 2.0
    think_time_s: float = 20.0
    block_tokens: int = 64
    max_prompt_tokens: int = 30_000

    def validate(self) -> None:
        checks = {
            "num_conversations": self.num_conversations >= 1,
            "num_groups": self.num_groups >= 1,
            "system_prompt_tokens": self.system_prompt_tokens >= 0,
            "max_turns": self.max_turns >= 1,
            "user_tokens_mean": self.user_tokens_mean >= 1,
            "output_tokens_mean": self.output_tokens_mean >= 1,
            "conversation_rate": self.conversation_rate > 0,
            "think_time_s": self.think_time_s >= 0,
            "block_tokens": self.block_tokens > 0 and self.block_tokens % 16 == 0,
            "max_prompt_tokens": self.max_prompt_tokens >= 16,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise TraceError(f"SharedPrefixConfig: invalid {', '.join(bad)}")


class _IdAllocator:
    def __init__(self) -> None:
        self.next = 0

    def take(self) -> int:
        self.next += 1
        return self.next - 1


def _extend(ids: list[int], n_tokens: int, add: int, block_tokens: int, alloc: _IdAllocator) -> int:
    """Extend a context (ids, n_tokens) by ``add`` tokens in place; return the new length.

    A partial last block keeps its id (its tokens are a prefix of the full block), new blocks get
    fresh ids, so the extended context shares the whole old context as a prefix.
    """
    total = n_tokens + add
    while len(ids) * block_tokens < total:
        ids.append(alloc.take())
    return total


def generate_shared_prefix(config: SharedPrefixConfig, *, seed: int) -> Trace:
    """Generate a shared-prefix multi-turn trace (deterministic in ``config`` and ``seed``)."""
    config.validate()
    rng = np.random.default_rng(seed)
    alloc = _IdAllocator()
    bt = config.block_tokens
    systems: list[tuple[list[int], int]] = []
    for _ in range(config.num_groups):
        sys_ids: list[int] = []
        n = _extend(sys_ids, 0, config.system_prompt_tokens, bt, alloc)
        systems.append((sys_ids, n))
    raw: list[tuple[float, int, int, tuple[int, ...], str]] = []
    t = 0.0
    for conv in range(config.num_conversations):
        t += float(rng.exponential(1.0 / config.conversation_rate))
        g = int(rng.integers(config.num_groups))
        sys_ids, n_sys = systems[g]
        # A partial system block must not be shared with a different continuation: start the
        # conversation on a block boundary by giving the partial tail a conversation-own id.
        ids = list(sys_ids[: n_sys // bt])
        n_tok = (n_sys // bt) * bt
        n_tok = _extend(ids, n_tok, n_sys - n_tok, bt, alloc)
        turns = int(rng.integers(1, config.max_turns + 1))
        at = t
        prev_out = 0
        for turn in range(turns):
            user = max(1, int(rng.exponential(config.user_tokens_mean)))
            n_tok = _extend(ids, n_tok, prev_out + user, bt, alloc)
            if n_tok > config.max_prompt_tokens:
                break
            out = max(1, int(rng.exponential(config.output_tokens_mean)))
            nb = -(-n_tok // bt)
            raw.append((at, n_tok, out, tuple(ids[:nb]), f"conv-{conv}"))
            prev_out = out
            if turn + 1 < turns:
                at += float(rng.exponential(config.think_time_s)) if config.think_time_s else 0.0
    raw.sort(key=lambda x: x[0])
    reqs = tuple(
        TraceRequest(i, a, n_in, n_out, bids, sess)
        for i, (a, n_in, n_out, bids, sess) in enumerate(raw)
    )
    return Trace(f"shared-prefix-s{seed}", reqs, bt, source="generate_shared_prefix")


def _conversation_key(r: TraceRequest) -> str:
    """What keeps a conversation's turns together: its session, else its second prefix block
    (the first past a preamble most requests share, as on Mooncake), else the request."""
    if r.session_id is not None:
        return f"s:{r.session_id}"
    if len(r.block_ids) >= 2:
        return f"b:{r.block_ids[1]}"
    return f"r:{r.index}"


def assign_pools(trace: Trace, shares: Mapping[str, float], *, seed: int = 0) -> Trace:
    """Map every request to one pool, pool ``p`` getting a ``shares[p]`` share of them.

    The map is a deterministic hash of each request's conversation (its session, else its
    second prefix block): all turns of a conversation, and every request sharing a prefix past
    the preamble, go to the same pool, so prefix reuse is kept within a pool. The shares need
    not sum to 1. The simulator's ``pool_shares`` computes model-size-aware shares from a fleet
    (each pool's declared prefill capacity over its model size), so a multi-pool run loads
    every pool alike.
    """
    names = [p for p, w in shares.items() if w > 0]
    if not names:
        raise TraceError(f"assign_pools: no pool has a positive share in {dict(shares)}")
    total = sum(shares[p] for p in names)
    edges: list[float] = []
    acc = 0.0
    for p in names:
        acc += shares[p] / total
        edges.append(acc)
    reqs = []
    for r in trace.requests:
        digest = hashlib.blake2b(f"{seed}/{_conversation_key(r)}".encode(), digest_size=8)
        u = int.from_bytes(digest.digest(), "big") / 2**64
        i = next((k for k, e in enumerate(edges) if u < e), len(names) - 1)
        reqs.append(replace(r, pool=names[i]))
    share_note = ", ".join(f"{p} {shares[p] / total:.0%}" for p in names)
    return replace(trace, requests=tuple(reqs), notes=(*trace.notes, f"pools: {share_note}"))


def trace_from_requests(name: str, requests: Sequence[TraceRequest], *, block_tokens: int) -> Trace:
    """Build a validated trace from hand-made requests (tests, examples)."""
    reqs = sorted(requests, key=lambda r: r.arrival_s)
    for r in reqs:
        need = -(-r.input_tokens // block_tokens)
        if len(r.block_ids) != need:
            raise TraceError(f"request {r.index}: needs {need} block ids, has {len(r.block_ids)}")
    check_prefix_consistency(reqs, name=name)
    return Trace(name, tuple(reqs), block_tokens)
