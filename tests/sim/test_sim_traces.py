"""Trace loaders, token materialisation and the shared-prefix generator."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import re
from pathlib import Path

import pytest

from modelfleet.sim.traces import (
    SharedPrefixConfig,
    Trace,
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


# ----------------------------------------------------------------------------- exact contracts

M64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """The reference splitmix64 finaliser (Steele, Lea, Flood 2014), in plain Python ints."""
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


@pytest.mark.parametrize("block_id", [0, 1, 7, 2**40 + 3, 2**58 - 1])
def test_block_tokens_are_splitmix64_of_the_position(block_id: int) -> None:
    """Token j of block h is splitmix64(h * block_tokens + j) folded into [1, vocab)."""
    ids = block_token_ids(block_id, 64, block_tokens=64, vocab_size=1000)
    assert ids.dtype.name == "int64"
    expected = [splitmix64((block_id * 64 + j) & M64) % 999 + 1 for j in range(64)]
    assert ids.tolist() == expected
    req = TraceRequest(0, 0.0, 100, 1, (block_id, block_id + 1))
    prompt = prompt_token_ids(req, block_tokens=64, vocab_size=1000)
    assert (
        prompt
        == [
            splitmix64((b * 64 + j) & M64) % 999 + 1
            for b in (block_id, block_id + 1)
            for j in range(64)
        ][:100]
    )


def test_block_token_ids_bounds() -> None:
    assert block_token_ids(3, 0, block_tokens=16).tolist() == []
    assert len(block_token_ids(3, 16, block_tokens=16)) == 16
    for bad in (-1, 17):
        with pytest.raises(TraceError, match=rf"^block 3: n_tokens {bad} outside \[0, 16\]$"):
            block_token_ids(3, bad, block_tokens=16)


def test_prompt_token_ids_edges() -> None:
    one = TraceRequest(0, 0.0, 1, 1, (5,))
    assert prompt_token_ids(one, block_tokens=16) == block_token_ids(5, 1, block_tokens=16).tolist()
    assert prompt_token_ids(TraceRequest(1, 0.0, 0, 1, ()), block_tokens=16) == []
    short = TraceRequest(7, 0.0, 40, 1, (1,))
    with pytest.raises(
        TraceError, match=r"^request 7: 1 blocks of 32 tokens cannot cover input_tokens=40$"
    ):
        prompt_token_ids(short, block_tokens=32)


@pytest.mark.parametrize("bt", [0, -16, 8, 24])
def test_trace_block_size_must_be_a_positive_multiple_of_16(bt: int) -> None:
    with pytest.raises(
        TraceError, match=r"^trace t: block_tokens must be a positive multiple of 16$"
    ):
        Trace("t", (), bt)


def test_trace_views_head_window_totals() -> None:
    reqs = [TraceRequest(i, float(i), 10 * (i + 1), i + 1, (i,)) for i in range(5)]
    tr = Trace("t", tuple(reqs), 16, notes=("n0",))
    assert tr.total_input_tokens() == 150 and tr.total_output_tokens() == 15
    h = tr.head(2)
    assert [r.index for r in h] == [0, 1] and h.notes == ("n0", "first 2") and h.name == "t"
    w = tr.window(1.0, 3.0)  # [1, 3): requests 1 and 2, re-based to start at 0
    assert [(r.index, r.arrival_s) for r in w] == [(1, 0.0), (2, 1.0)]
    assert w.notes == ("n0", "window [1, 3) s") and w.block_tokens == 16
    assert len(tr.window(10.0, 20.0)) == 0
    assert [r.index for r in tr.window(0.0, 4.0)] == [0, 1, 2, 3]
    slow = tr.compressed(0.5)  # a factor below 1 spreads arrivals out
    assert [r.arrival_s for r in slow] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert slow.notes == ("n0", "time compressed x0.5")
    for bad in (float("inf"), float("nan"), -1.0):
        with pytest.raises(TraceError, match="compression"):
            tr.compressed(bad)


VALID = SharedPrefixConfig()


@pytest.mark.parametrize(
    ("field", "ok", "bad"),
    [
        ("num_conversations", 1, 0),
        ("num_groups", 1, 0),
        ("system_prompt_tokens", 0, -1),
        ("max_turns", 1, 0),
        ("user_tokens_mean", 1.0, 0.99),
        ("output_tokens_mean", 1.0, 0.99),
        ("conversation_rate", 1e-9, 0.0),
        ("think_time_s", 0.0, -0.1),
        ("block_tokens", 16, 0),
        ("block_tokens", 16, 24),
        ("max_prompt_tokens", 16, 15),
    ],
)
def test_shared_prefix_config_bounds(field: str, ok: object, bad: object) -> None:
    dataclasses.replace(VALID, **{field: ok}).validate()
    with pytest.raises(TraceError, match=rf"^SharedPrefixConfig: invalid {field}$"):
        dataclasses.replace(VALID, **{field: bad}).validate()
    both = dataclasses.replace(VALID, num_groups=0, max_turns=0)
    with pytest.raises(TraceError, match=r"^SharedPrefixConfig: invalid num_groups, max_turns$"):
        both.validate()


def _conversations(tr: Trace) -> dict[str, list[TraceRequest]]:
    out: dict[str, list[TraceRequest]] = {}
    for r in tr:
        out.setdefault(r.session_id or "", []).append(r)
    return out


def test_shared_prefix_generator_structure() -> None:
    """Against the generator's spec (its docstring), on configs that make each rule visible."""
    cfg = SharedPrefixConfig(
        num_conversations=400, num_groups=2, system_prompt_tokens=100, max_turns=3,
        user_tokens_mean=1.0, output_tokens_mean=1.0, conversation_rate=50.0,
        think_time_s=0.0, block_tokens=64, max_prompt_tokens=10_000,
    )  # fmt: skip
    tr = generate_shared_prefix(cfg, seed=11)
    assert tr.name == "shared-prefix-s11" and tr.source == "generate_shared_prefix"
    assert tr.block_tokens == 64
    assert [r.index for r in tr] == list(range(len(tr)))
    arrivals = [r.arrival_s for r in tr]
    assert arrivals == sorted(arrivals) and 0 < arrivals[0] < 0.5  # first gap ~ 1/50 s
    convs = _conversations(tr)
    assert sorted(convs, key=lambda c: int(c.split("-")[1])) == [f"conv-{i}" for i in range(400)]
    starts = [convs[f"conv-{i}"][0].arrival_s for i in range(400)]
    assert starts == sorted(starts)  # conversations start as a Poisson process, in order
    gaps = [b - a for a, b in itertools.pairwise([0.0, *starts])]
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 50.0, rel=0.15)
    turns = [len(c) for c in convs.values()]
    assert set(turns) == {1, 2, 3}  # 1..max_turns, uniform
    for c in convs.values():
        assert {r.arrival_s for r in c} == {c[0].arrival_s}  # no think time: same arrival
        # turn 1: the 100-token system prompt (its 36-token tail is the conversation's own)
        # plus a user message of at least one token
        assert c[0].input_tokens >= 101
        for prev, nxt in itertools.pairwise(c):
            assert nxt.input_tokens - prev.input_tokens - prev.output_tokens >= 1
            assert nxt.block_ids[: len(prev.block_ids) - 1] == prev.block_ids[:-1]
    firsts = [c[0].input_tokens for c in convs.values()]
    assert min(firsts) == 101  # exponential(mean 1) user messages: often the minimum, 1 token
    assert min(r.output_tokens for r in tr) == 1
    # the full system block is shared within a group; the partial tail is not
    heads = {r.block_ids[0] for r in tr}
    assert len(heads) == 2
    assert len({r.block_ids[1] for r in tr}) == 400


def test_shared_prefix_generator_think_time_and_prompt_cap() -> None:
    cfg = SharedPrefixConfig(
        num_conversations=50, num_groups=1, system_prompt_tokens=64, max_turns=4,
        user_tokens_mean=200.0, output_tokens_mean=50.0, think_time_s=5.0,
        block_tokens=64, max_prompt_tokens=400,
    )  # fmt: skip
    tr = generate_shared_prefix(cfg, seed=2)
    assert max(r.input_tokens for r in tr) <= 400
    convs = _conversations(tr)
    pairs = [(a, b) for c in convs.values() for a, b in itertools.pairwise(c)]
    assert pairs and all(b.arrival_s > a.arrival_s for a, b in pairs)  # a think time each
    # a conversation ends at the first turn over the cap; later conversations still come
    nums = {int(c.split("-")[1]) for c in convs}
    dropped = set(range(50)) - nums  # their first turn was already over the cap
    assert dropped and max(nums) > min(dropped)
    capped = dataclasses.replace(cfg, system_prompt_tokens=399, user_tokens_mean=1.0)
    exact = generate_shared_prefix(capped, seed=2)
    assert max(r.input_tokens for r in exact) == 400  # a prompt of exactly the cap is kept


def test_trace_from_requests_sorts_and_checks_prefixes() -> None:
    reqs = [TraceRequest(0, 2.0, 16, 1, (1,)), TraceRequest(1, 1.0, 32, 1, (1, 2))]
    tr = trace_from_requests("mine", reqs, block_tokens=16)
    assert (tr.name, tr.block_tokens) == ("mine", 16)
    assert [r.index for r in tr] == [1, 0]
    bad = [TraceRequest(0, 0.0, 48, 1, (4, 9, 2)), TraceRequest(1, 1.0, 16, 1, (2,))]
    with pytest.raises(
        TraceError,
        match=r"^trace mine: request 1 has block id 2 at position 0 after None, but it appeared "
        r"earlier at position 2 after 9; block ids must identify their whole prefix$",
    ):
        trace_from_requests("mine", bad, block_tokens=16)


def test_mooncake_names_and_row_checks(tmp_path: Path) -> None:
    p = _write_jsonl(tmp_path / "conv.trace.jsonl", MOONCAKE_ROWS)
    tr = load_mooncake(p)
    assert (tr.name, tr.source) == ("conv", str(p))
    assert [r.output_tokens for r in tr] == [5, 7, 3]
    assert load_mooncake(p, name="other").name == "other"
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n" + json.dumps(MOONCAKE_ROWS[0]) + "\n\n" + json.dumps(MOONCAKE_ROWS[2]))
    assert len(load_mooncake(blank)) == 2  # blank lines are skipped, not the end of the file
    one = {"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": [0]}
    assert load_mooncake(_write_jsonl(tmp_path / "one.jsonl", [one])).requests[0].input_tokens == 1
    for row, message in [
        ("[1, 2]", r":1: expected a JSON object$"),
        ("{bad", r":1: not valid JSON \("),
        (json.dumps({**one, "timestamp": True}), r":1: field 'timestamp' must be a number >= 0"),
        (
            json.dumps({**one, "output_length": 0}),
            r":1: field 'output_length' must be an integer >= 1, got 0$",
        ),
        (
            json.dumps({**one, "input_length": True}),
            r":1: field 'input_length' must be an integer >= 1, got True$",
        ),
    ]:
        f = tmp_path / "bad.jsonl"
        f.write_text(row + "\n")
        with pytest.raises(TraceError, match=re.escape(str(f)) + message):
            load_mooncake(f)


def _azure(tmp_path: Path, body: str, name: str = "az.csv") -> Path:
    p = tmp_path / name
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + body)
    return p


def test_loaders_keep_file_order_for_equal_timestamps(tmp_path: Path) -> None:
    az = load_azure(_azure(tmp_path, "2023-11-16 18:15:50,900,1\n2023-11-16 18:15:50,100,1\n"))
    assert [r.input_tokens for r in az] == [900, 100]
    rows = [{**MOONCAKE_ROWS[2], "timestamp": 5}, {**MOONCAKE_ROWS[0], "timestamp": 5}]
    mc = load_mooncake(_write_jsonl(tmp_path / "tie.jsonl", rows))
    assert [r.input_tokens for r in mc] == [600, 1100]


def test_mooncake_names_the_trace_in_a_prefix_error(tmp_path: Path) -> None:
    rows = [
        {"timestamp": 0, "input_length": 1024, "output_length": 1, "hash_ids": [1, 2]},
        {"timestamp": 1, "input_length": 1024, "output_length": 1, "hash_ids": [2, 1]},
    ]
    with pytest.raises(TraceError, match=r"^trace mytrace: request 1 has block id 2"):
        load_mooncake(_write_jsonl(tmp_path / "mytrace.jsonl", rows))


def test_azure_loader_details(tmp_path: Path) -> None:
    p = _azure(
        tmp_path,
        "2023-11-16 18:15:50,1030,109\n"
        "2023-11-16 18:15:46.5,1,1\n"
        "2023-11-16 18:15:47,5,0\n"
        "2023-11-16 18:15:48,0,0\n",
        name="code.trace.csv",
    )
    tr = load_azure(p)
    assert (tr.name, tr.source, tr.notes) == ("code", str(p), ("2 rows with 0 tokens skipped",))
    assert [(r.index, r.arrival_s, r.input_tokens, r.output_tokens) for r in tr] == [
        (0, 0.0, 1, 1),
        (1, 3.5, 1030, 109),  # a timestamp without a fraction is a whole second
    ]
    assert tr.requests[0].block_ids == (0,) and len(tr.requests[1].block_ids) == 3
    assert set(tr.requests[0].block_ids).isdisjoint(tr.requests[1].block_ids)
    three = load_azure(_azure(tmp_path, "2023-11-16 18:15:50,600,1\n" * 3))
    ids = [b for r in three for b in r.block_ids]
    assert len(ids) == len(set(ids)) == 6  # fresh ids for every request
    assert load_azure(p, name="x").name == "x" and load_azure(p).notes
    clean = load_azure(_azure(tmp_path, "2023-11-16 18:15:50,600,1\n"))
    assert clean.notes == ()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("2023-11-16 18:15:50,1\n", r":2: expected 3 columns, got 2$"),
        (
            "2023-11-16 18:15:50,1,1\n2023-11-16 18:15:51,x,1\n",
            r":3: token counts must be integers \(",
        ),
        ("yesterday,1,1\n", r":2: bad TIMESTAMP 'yesterday' \("),
        ("2023-11-16 18:15:50,0,1\n", r": no usable rows$"),
        ("", r": no usable rows$"),
    ],
    ids=["columns", "integers", "timestamp", "all-skipped", "empty"],
)
def test_azure_loader_names_the_bad_row(tmp_path: Path, body: str, message: str) -> None:
    p = _azure(tmp_path, body)
    with pytest.raises(TraceError, match="^" + re.escape(str(p)) + message):
        load_azure(p)


def test_azure_loader_requires_a_header(tmp_path: Path) -> None:
    p = tmp_path / "empty.csv"
    p.write_text("")
    with pytest.raises(
        TraceError,
        match=re.escape(f"{p}: expected header TIMESTAMP,ContextTokens,GeneratedTokens, got None"),
    ):
        load_azure(p)


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
