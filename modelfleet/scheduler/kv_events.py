"""Decode vLLM's KV-cache event messages (ZMQ ``[topic, seq, payload]``) into plain events.

Wire format (vLLM 0.32, ``shared/reference/vllm-migration.md`` section 6): ``payload`` is
msgpack of ``[ts, [event, ...], data_parallel_rank]`` (or a map with those keys); an event is a
map tagged ``"type"`` (``BlockStored``, ``BlockRemoved``, ``AllBlocksCleared``) or, with
msgspec's ``array_like``, an array ``[tag, field, ...]`` in declaration order. The decoded
events are dicts with a ``"type"`` key and the fields the precise prefix index reads
(``block_hashes``, ``parent_block_hash``); a kind this decoder does not know keeps only its
``type`` (the index ignores it; newer engines add kinds). That is what
:meth:`modelfleet.policy.prefix.PrecisePrefixIndex.apply` accepts.

Pure (msgpack only); the subscription is :class:`modelfleet.scheduler.pollers.KvEventSubscriber`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]

__all__ = ["KvEventBatch", "decode_kv_message"]

_FIELDS = {
    "BlockStored": (
        "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium",
        "lora_name", "extra_keys", "group_idx", "kv_cache_spec_kind",
    ),
    "BlockRemoved": ("block_hashes", "medium", "group_idx"),
    "AllBlocksCleared": (),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class KvEventBatch:
    """One published message: its sequence number and its events."""

    seq: int
    events: tuple[dict[str, Any], ...]


def _hashes(v: Any) -> list[int | bytes]:
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(h, int | bytes) for h in v):
        raise ValueError("block_hashes must be a list of ints or bytes")
    return v


def _event(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        kind = obj.get("type")
        fields = obj
    elif isinstance(obj, list) and obj and isinstance(obj[0], str):
        kind = obj[0]
        fields = dict(zip(_FIELDS.get(kind, ()), obj[1:], strict=False))
    else:
        raise ValueError(f"cannot decode KV event {obj!r:.80}")
    if kind == "BlockStored":
        parent = fields.get("parent_block_hash")
        if parent is not None and not isinstance(parent, int | bytes):
            raise ValueError("parent_block_hash must be an int, bytes or null")
        return {
            "type": kind,
            "block_hashes": _hashes(fields.get("block_hashes")),
            "parent_block_hash": parent,
        }
    if kind == "BlockRemoved":
        return {"type": kind, "block_hashes": _hashes(fields.get("block_hashes"))}
    if isinstance(kind, str):  # AllBlocksCleared, or a kind newer than this decoder
        return {"type": kind}
    raise ValueError(f"KV event without a type: {obj!r:.80}")


def decode_kv_message(frames: Sequence[bytes]) -> KvEventBatch:
    """Decode one ``[topic, seq, payload]`` message (``ValueError`` if malformed)."""
    if len(frames) != 3:
        raise ValueError(f"expected 3 frames [topic, seq, payload], got {len(frames)}")
    _topic, seq, payload = frames
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException) as e:
        raise ValueError(f"KV event payload is not msgpack: {e}") from None
    if isinstance(obj, dict):
        events = obj.get("events")
    elif isinstance(obj, list) and len(obj) in (2, 3):
        events = obj[1]
    else:
        raise ValueError("KV event payload is not a [ts, events, dp_rank] batch")
    if not isinstance(events, list):
        raise ValueError("KV event batch has no event list")
    return KvEventBatch(
        seq=int.from_bytes(seq, "big", signed=True), events=tuple(_event(e) for e in events)
    )
