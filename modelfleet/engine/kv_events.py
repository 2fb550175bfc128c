"""KV-cache events on the wire exactly as vLLM's ``--kv-events-config`` ZMQ publisher sends them.

Wire format (vLLM 0.32 ``vllm/distributed/kv_events.py``, verified against a running vLLM,
see ``shared/reference/vllm-migration.md`` section 6):

- a ZMQ ``PUB`` socket sends one 3-frame multipart message per engine step that produced
  events: ``[topic, seq, payload]``; ``topic`` is the configured UTF-8 topic (default ``""``),
  ``seq`` an 8-byte big-endian counter starting at 0 for every engine start;
- ``payload`` is msgpack of the batch array ``[ts, [event, ...], data_parallel_rank]``
  (``ts`` float seconds since the epoch);
- each event is a msgpack *map* tagged ``"type"`` (msgspec ``tag=True`` with
  ``omit_defaults=True``: fields still at their ``None`` default are left out):
  ``{"type": "BlockStored", "block_hashes", "parent_block_hash", "token_ids", "block_size",
  "lora_id", "medium", "lora_name", "extra_keys", "group_idx", "kv_cache_spec_kind"}``,
  ``{"type": "BlockRemoved", "block_hashes", "medium", "group_idx"}``,
  ``{"type": "AllBlocksCleared"}``.
- The endpoint is *bound* if it contains ``*`` or ``::`` or is ``ipc://``/``inproc://``, and
  *connected* otherwise (then the subscriber binds), vLLM's heuristic.
- An optional ``replay_endpoint`` is a ``ROUTER`` socket: a client sends an 8-byte start
  sequence number and receives ``[seq, payload]`` for every buffered batch from there,
  then ``[-1 (8 bytes, signed), b""]``.

:func:`decode_batch` is the matching decoder used by the scheduler's precise prefix index;
it accepts vLLM's payloads and ours alike and returns the engine's event dataclasses.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack  # type: ignore[import-untyped]
import zmq
import zmq.asyncio

from modelfleet.engine.kvcache import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent

__all__ = [
    "END_SEQ",
    "DecodedBatch",
    "KVEventsConfig",
    "ZmqEventPublisher",
    "decode_batch",
    "decode_message",
    "encode_batch",
    "encode_event",
]

END_SEQ = (-1).to_bytes(8, "big", signed=True)


@dataclass(frozen=True)
class KVEventsConfig:
    """vLLM's ``KVEventsConfig`` (the JSON of ``--kv-events-config``), same names and defaults."""

    enable_kv_cache_events: bool = False
    publisher: str = "null"
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    max_queue_size: int = 100_000
    topic: str = ""

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> KVEventsConfig:
        """Build from parsed JSON, naming any unknown key or wrongly typed value."""
        known = {f: cls.__dataclass_fields__[f] for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(
                f"unknown kv-events-config key(s): {', '.join(unknown)}; valid: {', '.join(known)}"
            )
        cfg = cls(**data)
        checks: list[tuple[str, type | tuple[type, ...]]] = [
            ("enable_kv_cache_events", bool),
            ("publisher", str),
            ("endpoint", str),
            ("replay_endpoint", (str, type(None))),
            ("buffer_steps", int),
            ("hwm", int),
            ("max_queue_size", int),
            ("topic", str),
        ]
        for name, typ in checks:
            if not isinstance(getattr(cfg, name), typ):
                raise ValueError(f"kv-events-config {name} has the wrong type")
        if cfg.publisher not in ("null", "zmq"):
            raise ValueError(
                f"kv-events-config publisher must be 'null' or 'zmq', got {cfg.publisher!r}"
            )
        return cfg

    @property
    def active(self) -> bool:
        return self.enable_kv_cache_events and self.publisher == "zmq"

    def as_dict(self) -> dict[str, Any]:
        return {
            "enable_kv_cache_events": self.enable_kv_cache_events,
            "publisher": self.publisher,
            "endpoint": self.endpoint,
            "replay_endpoint": self.replay_endpoint,
            "buffer_steps": self.buffer_steps,
            "hwm": self.hwm,
            "max_queue_size": self.max_queue_size,
            "topic": self.topic,
        }


def encode_event(ev: KVEvent) -> dict[str, Any]:
    """One event as vLLM's msgspec encodes it: a ``type``-tagged map without ``None`` defaults."""
    if isinstance(ev, BlockStored):
        out: dict[str, Any] = {
            "type": "BlockStored",
            "block_hashes": list(ev.block_hashes),
            "parent_block_hash": ev.parent_block_hash,
            "token_ids": list(ev.token_ids),
            "block_size": ev.block_size,
            "lora_id": ev.lora_id,
            "medium": ev.medium,
            "lora_name": ev.lora_name,
        }
        if ev.extra_keys is not None:
            out["extra_keys"] = list(ev.extra_keys)
        out["group_idx"] = ev.group_idx
        out["kv_cache_spec_kind"] = ev.kv_cache_spec_kind
        return out
    if isinstance(ev, BlockRemoved):
        return {
            "type": "BlockRemoved",
            "block_hashes": list(ev.block_hashes),
            "medium": ev.medium,
            "group_idx": ev.group_idx,
        }
    if isinstance(ev, AllBlocksCleared):
        return {"type": "AllBlocksCleared"}
    raise TypeError(f"not a KV event: {type(ev).__name__}")


def encode_batch(events: Sequence[KVEvent], ts: float, dp_rank: int = 0) -> bytes:
    """The msgpack payload ``[ts, [events...], data_parallel_rank]``."""
    payload: bytes = msgpack.packb(
        [ts, [encode_event(e) for e in events], dp_rank], use_bin_type=True
    )
    return payload


@dataclass(frozen=True)
class DecodedBatch:
    ts: float
    events: list[KVEvent]
    data_parallel_rank: int | None
    seq: int | None = None
    topic: str | None = None
    raw: list[Any] = field(default_factory=list, repr=False)


def _hash(v: Any) -> int | bytes:
    if isinstance(v, int | bytes):
        return v
    raise ValueError(f"block hash must be int or bytes, got {type(v).__name__}")


def _decode_event(obj: Any) -> KVEvent:
    if isinstance(obj, dict):
        kind = obj.get("type")
        get = obj.get
    elif isinstance(obj, list) and obj and isinstance(obj[0], str):
        # array_like encoding: [tag, field1, field2, ...] in declaration order
        kind = obj[0]
        names = {
            "BlockStored": (
                "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id",
                "medium", "lora_name", "extra_keys", "group_idx", "kv_cache_spec_kind",
            ),
            "BlockRemoved": ("block_hashes", "medium", "group_idx"),
            "AllBlocksCleared": (),
        }.get(kind, ())  # fmt: skip
        mapping = dict(zip(names, obj[1:], strict=False))
        get = mapping.get
    else:
        raise ValueError(f"cannot decode KV event {obj!r:.80}")
    if kind == "BlockStored":
        parent = get("parent_block_hash")
        return BlockStored(
            block_hashes=[_hash(h) for h in get("block_hashes") or []],
            parent_block_hash=None if parent is None else _hash(parent),
            token_ids=[int(t) for t in get("token_ids") or []],
            block_size=int(get("block_size") or 0),
            lora_id=get("lora_id"),
            medium=get("medium"),
            lora_name=get("lora_name"),
            extra_keys=get("extra_keys"),
            group_idx=int(get("group_idx") or 0),
            kv_cache_spec_kind=get("kv_cache_spec_kind") or "full_attention",
        )
    if kind == "BlockRemoved":
        return BlockRemoved(
            block_hashes=[_hash(h) for h in get("block_hashes") or []],
            medium=get("medium"),
            group_idx=int(get("group_idx") or 0),
        )
    if kind == "AllBlocksCleared":
        return AllBlocksCleared()
    raise ValueError(f"unknown KV event type {kind!r}")


def decode_batch(payload: bytes) -> list[KVEvent]:
    """Events of one msgpack batch payload (the third frame of a published message)."""
    return _decode_payload(payload).events


def _decode_payload(payload: bytes) -> DecodedBatch:
    obj = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    if isinstance(obj, dict):  # map-encoded EventBatch
        ts, events, rank = obj.get("ts"), obj.get("events"), obj.get("data_parallel_rank")
    elif isinstance(obj, list) and len(obj) in (2, 3):
        ts, events = obj[0], obj[1]
        rank = obj[2] if len(obj) == 3 else None
    else:
        raise ValueError("KV event payload is not a [ts, events, dp_rank] batch")
    if not isinstance(events, list):
        raise ValueError("KV event batch has no event list")
    return DecodedBatch(
        ts=float(ts or 0.0), events=[_decode_event(e) for e in events], data_parallel_rank=rank
    )


def decode_message(frames: Sequence[bytes]) -> DecodedBatch:
    """A whole ``[topic, seq, payload]`` multipart message."""
    if len(frames) != 3:
        raise ValueError(f"expected 3 frames [topic, seq, payload], got {len(frames)}")
    topic, seq, payload = frames
    b = _decode_payload(payload)
    return DecodedBatch(
        ts=b.ts,
        events=b.events,
        data_parallel_rank=b.data_parallel_rank,
        seq=int.from_bytes(seq, "big", signed=True),
        topic=topic.decode("utf-8"),
    )


def _binds(endpoint: str) -> bool:
    return (
        "*" in endpoint
        or "::" in endpoint
        or endpoint.startswith("ipc://")
        or endpoint.startswith("inproc://")
    )


class ZmqEventPublisher:
    """PUB socket (+ optional ROUTER replay) publishing one batch per engine step.

    Sends happen on the caller's thread with ``NOBLOCK``; a PUB socket never blocks (at the
    high-water mark ZMQ drops, like vLLM's). The replay socket is served by an asyncio task
    (started with :meth:`start`), which sleeps in ``recv`` and so costs nothing when idle.
    """

    def __init__(self, config: KVEventsConfig, *, data_parallel_rank: int = 0) -> None:
        self.config = config
        self._ctx = zmq.Context()
        self._pub: zmq.Socket[bytes] = self._ctx.socket(zmq.PUB)
        self._pub.set_hwm(config.hwm)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._replay: zmq.asyncio.Socket | None = None
        endpoint = config.endpoint
        try:  # a busy port is an OSError naming the endpoint, and nothing stays open
            if _binds(endpoint):
                self._pub.bind(endpoint)
            else:
                self._pub.connect(endpoint)
            if config.replay_endpoint is not None:
                endpoint = config.replay_endpoint
                self._replay = zmq.asyncio.Context.shadow(self._ctx).socket(zmq.ROUTER)
                self._replay.setsockopt(zmq.LINGER, 0)
                self._replay.bind(endpoint)
        except zmq.ZMQError as e:
            self._ctx.destroy(linger=0)
            raise OSError(e.errno, f"KV-event socket {endpoint}: {e.strerror}") from e
        self._topic = config.topic.encode("utf-8")
        self._seq = 0
        self._rank = data_parallel_rank
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=max(1, config.buffer_steps))
        self._task: asyncio.Task[None] | None = None

    @property
    def last_endpoint(self) -> str:
        """The bound/connected address (resolves ``tcp://*:0`` to the real port)."""
        ep = self._pub.getsockopt(zmq.LAST_ENDPOINT)
        return ep.decode() if isinstance(ep, bytes) else str(ep)

    @property
    def replay_last_endpoint(self) -> str | None:
        """The replay ROUTER's bound address, if one is configured."""
        if self._replay is None:
            return None
        ep = self._replay.getsockopt(zmq.LAST_ENDPOINT)
        return ep.decode() if isinstance(ep, bytes) else str(ep)

    def start(self) -> None:
        if self._replay is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve_replay())

    def publish(self, events: Sequence[KVEvent], ts: float | None = None) -> None:
        """Send one batch (no-op for an empty list: vLLM publishes only non-empty batches)."""
        if not events:
            return
        payload = encode_batch(events, time.time() if ts is None else ts, self._rank)
        seq = self._seq
        self._seq += 1
        self._buffer.append((seq, payload))
        with contextlib.suppress(zmq.Again):
            self._pub.send_multipart(
                (self._topic, seq.to_bytes(8, "big"), payload), flags=zmq.NOBLOCK
            )

    async def _serve_replay(self) -> None:
        assert self._replay is not None
        sock = self._replay
        while True:
            frames = await sock.recv_multipart()
            if len(frames) != 3:
                continue
            client, _, start = frames
            first = int.from_bytes(start, "big")
            for seq, payload in list(self._buffer):
                if seq >= first:
                    await sock.send_multipart((client, b"", seq.to_bytes(8, "big"), payload))
            await sock.send_multipart((client, b"", END_SEQ, b""))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.close()

    def close(self) -> None:
        self._pub.close(linger=0)
        if self._replay is not None:
            self._replay.close(linger=0)
        self._ctx.term()
