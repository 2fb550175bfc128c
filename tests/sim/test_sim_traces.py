"""Trace loaders, token materialisation and the shared-prefix generator."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import pytest

from modelfleet.sim.traces import (
    SharedPrefixConfig,
    TraceError,
    TraceRequest,
    block_token_ids,
    generate_shared_prefix,
    load_azure,
    load_mooncake,
    prompt_token_ids,
    trace_from_requests,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _write_jsonl(path: Path, rows: list[dict[str, object]], *, gz: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


MOONCAKE_ROWS: list[dict[str, object]] = [
    {"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [0, 1, 2]},
    {"timestamp": 250, "input_length": 2000, "output_length": 3, "hash_ids": [0, 1, 2, 3]},
    {"timestamp": 100, "input_length": 600, "output_length": 7, "hash_ids": [4, 5]},
]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_mooncake_loader_sorts_and_converts_ms(tmp_path: Path, gz: bool) -> None:
    p = _write_jsonl(tmp_path / ("t.jsonl.gz" if gz else "t.jsonl"), MOONCAKE_ROWS, gz=gz)
    tr = load_mooncake(p)
    assert [r.arrival_s for r in tr] == [0.0, 0.1, 0.25]
    assert [r.block_ids for r in tr] == [(0, 1, 2), (4, 5), (0, 1, 2, 3)]
    assert [r.index for r in tr] == [0, 1, 2]
    assert tr.block_tokens == 512


def test_equal_hash_ids_give_equal_token_blocks(tmp_path: Path) -> None:
    tr = load_mooncake(_write_jsonl(tmp_path / "t.jsonl", MOONCAKE_ROWS))
    a, other, b = tr.requests
    pa = prompt_token_ids(a, block_tokens=512)
    pb = prompt_token_ids(b, block_tokens=512)
    assert len(pa) == 1100 and len(pb) == 2000
    # Same ids 0, 1, 2: the first 1100 tokens agree (a's third block is partial).
    assert pa == pb[:1100]
    # Different ids: the 16-token engine blocks differ from the first one on.
    po = prompt_token_ids(other, block_tokens=512)
    assert po[:16] != pa[:16]
    assert all(1 <= t <= 256 for t in pa)
    big = prompt_token_ids(a, block_tokens=512, vocab_size=128_256)
    assert max(big) > 256 and len(big) == 1100


def test_partial_block_is_prefix_of_full_block() -> None:
    full = block_token_ids(7, 512, block_tokens=512)
    part = block_token_ids(7, 100, block_tokens=512)
    assert part.tolist() == full[:100].tolist()
    assert block_token_ids(8, 512, block_tokens=512).tolist() != full.tolist()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [0, 1]}, "needs 3"),
        ({"timestamp": -1, "input_length": 10, "output_length": 5, "hash_ids": [0]}, "timestamp"),
        ({"timestamp": 0, "input_length": 0, "output_length": 5, "hash_ids": []}, "input_length"),
        ({"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": ["x"]}, "hash_ids"),
    ],
    ids=["too-few-ids", "negative-ts", "empty-prompt", "bad-id"],
)
def test_mooncake_loader_rejects_bad_rows(
    tmp_path: Path, row: dict[str, object], message: str
) -> None:
    p = _write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(TraceError, match=message) as info:
        load_mooncake(p)
    assert "bad.jsonl:1" in str(info.value)


def test_mooncake_loader_rejects_inconsistent_prefix_ids(tmp_path: Path) -> None:
    rows = [
        {"timestamp": 0, "input_length": 1024, "output_length": 1, "hash_ids": [0, 1]},
        {"timestamp": 1, "input_length": 1024, "output_length": 1, "hash_ids": [2, 1]},
    ]
    with pytest.raises(TraceError, match="identify their whole prefix"):
        load_mooncake(_write_jsonl(tmp_path / "t.jsonl", rows))


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="not found"):
        load_mooncake(tmp_path / "nope.jsonl")


def test_azure_loader(tmp_path: Path) -> None:
    p = tmp_path / "az.csv"
    p.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,1030,109\n"
        "2023-11-16 18:15:51.0000000,0,5\n"
    )
    tr = load_azure(p)
    assert len(tr) == 2
    assert tr.requests[0].arrival_s == 0.0
    assert tr.requests[1].arrival_s == pytest.approx(4.314579, abs=1e-5)
    # No prefix information: the blocks of different requests never coincide.
    assert set(tr.requests[0].block_ids).isdisjoint(tr.requests[1].block_ids)
    assert len(tr.requests[1].block_ids) == 3
    assert tr.notes == ("1 rows with 0 tokens skipped",)


def test_azure_loader_rejects_bad_header(tmp_path: Path) -> None:
    p = tmp_path / "az.csv"
    p.write_text("time,in,out\n1,2,3\n")
    with pytest.raises(TraceError, match="expected header"):
        load_azure(p)


@pytest.mark.parametrize(
    ("path", "requests", "span_s"),
    [
        ("bench/data/mooncake/conversation_trace.jsonl.gz", 12_031, 3_537),
        ("bench/data/mooncake/synthetic_trace.jsonl.gz", 3_993, 1_022),
        ("bench/data/azure/AzureLLMInferenceTrace_code.csv.gz", 8_819, 3_436),
        ("bench/data/azure/AzureLLMInferenceTrace_conv.csv.gz", 19_366, 3_502),
    ],
    ids=["mooncake-conversation", "mooncake-synthetic", "azure-code", "azure-conv"],
)
def test_committed_traces_load(path: str, requests: int, span_s: float) -> None:
    p = REPO / path
    tr = load_mooncake(p) if "mooncake" in path else load_azure(p)
    assert len(tr) == requests  # the counts the data READMEs state
    assert tr.duration_s == pytest.approx(span_s, abs=1.0)


def test_compression_divides_arrivals(tmp_path: Path) -> None:
    tr = load_mooncake(_write_jsonl(tmp_path / "t.jsonl", MOONCAKE_ROWS))
    c = tr.compressed(2.0)
    assert [r.arrival_s for r in c] == [0.0, 0.05, 0.125]
    assert [r.input_tokens for r in c] == [r.input_tokens for r in tr]
    with pytest.raises(TraceError, match="compression"):
        tr.compressed(0)


def test_shared_prefix_generator_is_deterministic_and_shares_prefixes() -> None:
    cfg = SharedPrefixConfig(
        num_conversations=30, num_groups=3, system_prompt_tokens=256, max_turns=4, block_tokens=64
    )
    a = generate_shared_prefix(cfg, seed=3)
    b = generate_shared_prefix(cfg, seed=3)
    c = generate_shared_prefix(cfg, seed=4)
    assert a.requests == b.requests
    assert a.requests != c.requests
    # Every request starts with one of the 3 system prompts (4 blocks of 64).
    heads = {r.block_ids[:4] for r in a}
    assert len(heads) == 3
    # Turn k+1 of a conversation extends turn k's prompt.
    by_conv: dict[str, list[TraceRequest]] = {}
    for r in a:
        by_conv.setdefault(r.session_id or "", []).append(r)
    multi = [turns for turns in by_conv.values() if len(turns) > 1]
    assert multi
    for turns in multi:
        for prev, nxt in itertools.pairwise(turns):
            assert nxt.input_tokens > prev.input_tokens
            assert nxt.block_ids[: len(prev.block_ids)] == prev.block_ids
            pp = prompt_token_ids(prev, block_tokens=64)
            pn = prompt_token_ids(nxt, block_tokens=64)
            assert pn[: len(pp)] == pp


def test_trace_from_requests_validates() -> None:
    with pytest.raises(TraceError, match="needs 2 block ids"):
        trace_from_requests("x", [TraceRequest(0, 0.0, 40, 1, (1,))], block_tokens=32)


def test_a_burst_compresses_one_stretch_and_keeps_every_request() -> None:
    from modelfleet.sim.traces import generate_shared_prefix as gen

    base = gen(SharedPrefixConfig(num_conversations=60, think_time_s=0.0), seed=4)
    span = base.duration_s
    b = base.burst(span / 3, span / 3, 4.0)
    assert len(b) == len(base)
    assert [r.request_id for r in b] == [r.request_id for r in base]
    assert b.duration_s == pytest.approx(span - span / 3 * 0.75)
    inside = [r for r, o in zip(b, base, strict=True) if span / 3 <= o.arrival_s < 2 * span / 3]
    assert inside and all(span / 3 <= r.arrival_s < span / 3 + span / 12 + 1e-9 for r in inside)
    with pytest.raises(TraceError, match="factor"):
        base.burst(0, 10, 0.5)
