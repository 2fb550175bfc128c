"""The approximate hashers against an independent pure-Python reference of their documented
scheme (splitmix64's finaliser, odd per-position salts, block index mixing, chained sums), their
refusals, and RequestView's rules and chain memo, exactly."""

from __future__ import annotations

import random

import numpy as np
import pytest
from policy_fakes import req, tokens

from modelfleet.policy.hashing import (
    ApproxAutoHasher,
    ApproxTextHasher,
    ApproxTokenHasher,
)
from modelfleet.policy.types import BlockChain, RequestId, RequestView

pytestmark = pytest.mark.unit

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix_ref(x: int) -> int:
    """splitmix64's finaliser (Steele, Lea and Flood 2014), on Python ints mod 2^64."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & M64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & M64
    return x ^ (x >> 31)


def chain_ref(values: list[int], block_size: int, seed: int) -> list[int]:
    """The hashing module's docstring, one block at a time: a block's value is the wrapping dot
    product of its values with odd salts ``mix(j·golden + seed) | 1`` (j = 1..block_size);
    block i (from 1) is mixed as ``mix(value ^ (i·golden + seed))``; the chain is ``mix`` of
    the running sum."""
    salts = [mix_ref((j * GOLDEN + seed) & M64) | 1 for j in range(1, block_size + 1)]
    out, running = [], 0
    for i in range(len(values) // block_size):
        block = values[i * block_size : (i + 1) * block_size]
        value = sum(v * s for v, s in zip(block, salts, strict=True)) & M64
        running = (running + mix_ref(value ^ (((i + 1) * GOLDEN + seed) & M64))) & M64
        out.append(mix_ref(running))
    return out


def test_the_reference_finaliser_is_splitmix64() -> None:
    """splitmix64 seeded with 0 first returns mix(golden) = 0xE220A8397B1DCDAF."""
    assert mix_ref(GOLDEN) == 0xE220A8397B1DCDAF


@pytest.mark.parametrize("seed", [0, 7, (1 << 64) + 3])
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_token_chain_is_the_documented_scheme(seed: int, block_size: int) -> None:
    rng = random.Random(block_size * 31 + seed % 97)
    ids = [rng.randrange(0, 200_000) for _ in range(block_size * 5 + 3)]
    expected = chain_ref(ids, block_size, seed & M64)
    h = ApproxTokenHasher(block_size, seed)
    assert h.chain(req(token_ids=ids)) == expected
    assert h.chain(req(token_ids=np.asarray(ids, dtype=np.int64))) == expected


@pytest.mark.parametrize("seed", [0, 5])
def test_text_chain_is_the_documented_scheme_over_utf8_bytes(seed: int) -> None:
    text = "naïve café: " * 4  # multi-byte characters: blocks are bytes, not characters
    raw = list(text.encode("utf-8"))
    assert ApproxTextHasher(8, seed).chain(req(text=text)) == chain_ref(raw, 8, seed)


def test_a_text_of_exactly_one_block_has_one_element() -> None:
    assert ApproxTextHasher(4).chain(req(text="abcd")) == chain_ref(list(b"abcd"), 4, 0)
    assert ApproxTextHasher(4).chain(req(text="abc")) == []


def test_the_token_hasher_without_token_ids_gives_an_empty_chain() -> None:
    assert ApproxTokenHasher(4).chain(req(text="abcdefgh")) == []


def test_the_auto_hasher_passes_its_seed_to_both_hashers() -> None:
    auto = ApproxAutoHasher(block_size=2, chars_per_token=2, seed=9)
    ids = tokens(6)
    assert auto.chain(req(token_ids=ids)) == chain_ref(ids.tolist(), 2, 9)
    assert auto.chain(req(text="abcdefgh")) == chain_ref(list(b"abcdefgh"), 4, 9)
    assert auto.name == "approx-auto-2-2-9"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ApproxTokenHasher(0), r"^ApproxTokenHasher\.block_size must be > 0, got 0$"),
        (lambda: ApproxTextHasher(0), r"^ApproxTextHasher\.block_size must be > 0, got 0$"),
        (
            lambda: ApproxAutoHasher(block_size=0),
            r"^ApproxAutoHasher\.block_size and chars_per_token must be > 0$",
        ),
        (
            lambda: ApproxAutoHasher(chars_per_token=0),
            r"^ApproxAutoHasher\.block_size and chars_per_token must be > 0$",
        ),
    ],
)
def test_hashers_refuse_empty_blocks_by_name(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


def test_hashers_of_one_unit_blocks_are_allowed() -> None:
    assert ApproxTokenHasher(1).chain(req(token_ids=[5, 6])) == chain_ref([5, 6], 1, 0)
    assert ApproxTextHasher(1).chain(req(text="ab")) == chain_ref(list(b"ab"), 1, 0)
    one = ApproxAutoHasher(block_size=1, chars_per_token=1)
    assert one.chain(req(text="ab")) == chain_ref(list(b"ab"), 1, 0)


# -- RequestView ------------------------------------------------------------------------------


def test_request_rules_name_the_request() -> None:
    with pytest.raises(ValueError, match=r"^RequestView 'r': prompt_tokens must be >= 0$"):
        RequestView(RequestId("r"), prompt_tokens=-1)
    with pytest.raises(
        ValueError, match=r"^RequestView 'r': block_size must be > 0 when block_hashes is given$"
    ):
        RequestView(RequestId("r"), block_hashes=(1,), block_size=0)
    one = RequestView(RequestId("r"), block_hashes=(1,), block_size=1)
    assert one.chain(ApproxTokenHasher()) == BlockChain((1,), 1)


def test_a_given_chain_is_built_once() -> None:
    r = req(block_hashes=[11, 12], block_size=512)
    first = r.chain(ApproxTokenHasher())
    assert r.chain(ApproxTextHasher()) is first and first == BlockChain((11, 12), 512)
