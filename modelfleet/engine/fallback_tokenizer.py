"""The labelled fallback tokenizer (``--tokenizer builtin``): deterministic, dependency-free,
with only Llama-3-*like* token counts.

It is not the default: on English prose it gives 1.4-1.7x as many tokens as Llama-3, about
2.5x on code and about 4x on CJK text (measured in ``bench/results/engine-fidelity.md``), so
usage, prefill time and KV use come out too high. The default is the real Llama-3 tokenizer
(``tokenizer.py``). What follows is the fallback's own design.


The engine simulator needs *stable* token counts (the timing model, the KV cache and the
prefix-cache hit accounting all run on token ids) and an exact, cheap round trip between
text and ids. It does not need a learned vocabulary, so the vocabulary is defined
arithmetically instead of being loaded from a file:

``[0, 256)``
    raw bytes (fallback for anything else, e.g. non-ASCII text or mixed-case fragments).
``[256, 256 + 2W)``
    ``W`` common English words, each with and without a leading space (``" the"``, ``"the"``).
``[LETTER_BASE, LETTER_BASE + 6L)``
    letter chunks of 1-3 ASCII letters in 6 variants (leading space or not) x
    (lower, Capitalised, UPPER); ``L = 26 + 26**2 + 26**3``.
``[DIGIT_BASE, DIGIT_BASE + 2D)``
    digit chunks of 1-3 digits with or without a leading space; ``D = 10 + 10**2 + 10**3``.
``[128000, 128256)``
    special tokens at Llama-3's ids (``<|begin_of_text|>`` = 128000, ``<|eot_id|>`` = 128009 ...).
    ``vocab_size`` is Llama-3's 128256.

Encoding pre-splits text GPT-style into pieces (``" ?letters"``, ``" ?digits"``,
``" ?other-non-space"``, single whitespace characters). A letter piece that is a listed
word becomes one id; otherwise it is cut left to right into chunks of three letters, the
first chunk carrying the leading space; chunks that fit no variant (``"iPh"``) fall back to
bytes. English prose comes out at roughly 3.5-4 characters per token, close to Llama-3.

Invariants (tested): ``decode(encode(s)) == s`` for every string ``s`` (special-token text
inside ``s`` is encoded as plain text, never as a special id); every id emitted by
``encode`` is ``< vocab_size``; encoding is a pure function of the text, so token counts
and therefore prefix-cache block hashes are identical in every process.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from modelfleet.engine.tokenizer import ChatTemplateError, content_text

__all__ = [
    "BOS_TOKEN_ID",
    "EOS_TOKEN_ID",
    "EOT_TOKEN_ID",
    "VOCAB_SIZE",
    "BuiltinTokenizer",
    "ChatTemplateError",
]

VOCAB_SIZE = 128256
SPECIAL_BASE = 128000
BOS_TOKEN_ID = 128000  # <|begin_of_text|>
EOS_TOKEN_ID = 128001  # <|end_of_text|>
START_HEADER_ID = 128006  # <|start_header_id|>
END_HEADER_ID = 128007  # <|end_header_id|>
EOT_TOKEN_ID = 128009  # <|eot_id|>

_SPECIAL_NAMES: dict[int, str] = {
    BOS_TOKEN_ID: "<|begin_of_text|>",
    EOS_TOKEN_ID: "<|end_of_text|>",
    START_HEADER_ID: "<|start_header_id|>",
    END_HEADER_ID: "<|end_header_id|>",
    EOT_TOKEN_ID: "<|eot_id|>",
}

# Common English words (plus a few domain words) that get a token of their own. The list
# is part of the vocabulary definition: changing it changes every token id, so append only.
_WORDS: tuple[str, ...] = tuple(
    """
    the of and to in is that for it as was with be by on not he this are or his from at which
    but have an they you were her she there been one all we their has would when if so no will
    more can who its also into than other some what only time new about two may first then
    these any after most over such where made many through before must between those each
    under while very both could should well back because just even being three same another
    still used while around however without again world life people year years work part
    number system data model models request requests token tokens cache server engine
    memory batch prefix decode prefill latency throughput queue cluster node nodes policy
    scheduler instance instances value values result results example different large small
    long short high low early late right left good great little old young important public
    state states city group general during government company program problem question
    point place case week month day days night home water room mother area money story fact
    lot study book eye job word words business issue side kind head house service friend
    father power hour game line end member members law car name president team minute idea
    body information back parent face others level office door health person art war history
    party within change reason research girl guy moment air teacher force education foot
    boy age policy process music market sense nation plan college interest death experience
    effect class control care field development role effort rate heart drug show leader light
    voice wife police mind price report decision son view relationship town road arm
    difference value building action season society tax director position player record paper
    space ground form event official matter center couple site project activity star table need
    court oil situation cost industry figure street image phone data picture practice piece land
    product doctor wall patient worker news test movie north love support technology step baby
    computer type attention film tree source organization hair window evidence population site
    make know think take see come want look use find give tell ask seem feel try leave call
    keep let begin help talk turn start might show hear play run move live believe hold bring
    happen write provide sit stand lose pay meet include continue set learn lead understand
    watch follow stop create speak read allow add spend grow open walk win offer remember
    consider appear buy wait serve die send expect build stay fall cut reach kill remain
    suggest raise pass sell require decide return explain develop carry break receive agree
    user assistant tool
    """.split()
)


def _dedupe(words: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return tuple(seen)


WORDS: tuple[str, ...] = _dedupe(_WORDS)
WORD_BASE = 256
LETTER_BASE = WORD_BASE + 2 * len(WORDS)
_L1, _L2, _L3 = 26, 26 * 26, 26 * 26 * 26
LETTER_CHUNKS = _L1 + _L2 + _L3
DIGIT_BASE = LETTER_BASE + 6 * LETTER_CHUNKS
_D1, _D2, _D3 = 10, 100, 1000
DIGIT_CHUNKS = _D1 + _D2 + _D3
_REGULAR_END = DIGIT_BASE + 2 * DIGIT_CHUNKS
assert _REGULAR_END <= SPECIAL_BASE, "vocabulary layout overflows into the special ids"

_PIECE_RE = re.compile(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s")
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_CASE_LOWER, _CASE_CAP, _CASE_UPPER = 0, 1, 2


def _chunk_index(lower: str) -> int:
    """Index of a 1-3 letter lowercase chunk within one letter variant block."""
    n = len(lower)
    a = ord(lower[0]) - 97
    if n == 1:
        return a
    b = ord(lower[1]) - 97
    if n == 2:
        return _L1 + a * 26 + b
    return _L1 + _L2 + a * _L2 + b * 26 + (ord(lower[2]) - 97)


def _chunk_from_index(idx: int) -> str:
    if idx < _L1:
        return _LOWER[idx]
    idx -= _L1
    if idx < _L2:
        return _LOWER[idx // 26] + _LOWER[idx % 26]
    idx -= _L2
    return _LOWER[idx // _L2] + _LOWER[(idx // 26) % 26] + _LOWER[idx % 26]


def _digit_index(digits: str) -> int:
    n = len(digits)
    v = int(digits)
    return v if n == 1 else (_D1 + v if n == 2 else _D1 + _D2 + v)


def _digit_from_index(idx: int) -> str:
    if idx < _D1:
        return str(idx)
    if idx < _D1 + _D2:
        return f"{idx - _D1:02d}"
    return f"{idx - _D1 - _D2:03d}"


class BuiltinTokenizer:
    """The fallback tokenizer; its only state is an immutable word table.

    Build one per process (``Tokenizer()`` takes well under a millisecond; the table has a
    few hundred entries) and share it. ``eos_token_id`` is ``<|eot_id|>``, the end-of-turn
    token Llama-3-Instruct stops on.
    """

    name = "builtin"
    vocab_size = VOCAB_SIZE
    bos_token_id: int | None = BOS_TOKEN_ID
    eos_token_id: int | None = EOT_TOKEN_ID
    max_token_chars = max(len("<|reserved_special_token_250|>"), max(map(len, WORDS)) + 1)

    __slots__ = ("_word_ids",)

    def __init__(self) -> None:
        word_ids: dict[str, int] = {}
        for i, w in enumerate(WORDS):
            word_ids[w] = WORD_BASE + 2 * i
            word_ids[" " + w] = WORD_BASE + 2 * i + 1
        self._word_ids: Mapping[str, int] = MappingProxyType(word_ids)

    # ---------------------------------------------------------------- encode
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Text to ids; ``add_special_tokens`` prepends ``<|begin_of_text|>`` like Llama-3."""
        out: list[int] = [BOS_TOKEN_ID] if add_special_tokens else []
        word_ids = self._word_ids
        append = out.append
        for m in _PIECE_RE.finditer(text):
            piece = m.group()
            wid = word_ids.get(piece)
            if wid is not None:
                append(wid)
                continue
            first = piece[0]
            space = first == " " and len(piece) > 1
            body = piece[1:] if space else piece
            c = body[0]
            if c.isascii() and c.isalpha():
                self._encode_letters(body, space, out)
            elif c.isascii() and c.isdigit():
                for k in range(0, len(body), 3):
                    chunk = body[k : k + 3]
                    sp = space and k == 0
                    append(DIGIT_BASE + (DIGIT_CHUNKS if sp else 0) + _digit_index(chunk))
            else:
                out.extend(piece.encode("utf-8"))
        return out

    @staticmethod
    def _encode_letters(body: str, space: bool, out: list[int]) -> None:
        for k in range(0, len(body), 3):
            chunk = body[k : k + 3]
            sp = space and k == 0
            lower = chunk.lower()
            if chunk == lower:
                case = _CASE_LOWER
            elif chunk[0].isupper() and chunk[1:] == lower[1:]:
                case = _CASE_CAP
            elif chunk == chunk.upper():
                case = _CASE_UPPER
            else:
                if sp:
                    out.append(32)
                out.extend(chunk.encode("ascii"))
                continue
            variant = case * 2 + (1 if sp else 0)
            out.append(LETTER_BASE + variant * LETTER_CHUNKS + _chunk_index(lower))

    # ---------------------------------------------------------------- decode
    def token_bytes(self, token_id: int, skip_special_tokens: bool = False) -> bytes:
        """The bytes one id stands for; raises ``ValueError`` for an id outside the vocab."""
        if token_id < 0 or token_id >= self.vocab_size:
            raise ValueError(f"Token id {token_id} is out of vocabulary")
        if token_id < WORD_BASE:
            return bytes((token_id,))
        if token_id < LETTER_BASE:
            i, sp = divmod(token_id - WORD_BASE, 2)
            return ((" " if sp else "") + WORDS[i]).encode("ascii")
        if token_id < DIGIT_BASE:
            variant, idx = divmod(token_id - LETTER_BASE, LETTER_CHUNKS)
            case, sp = divmod(variant, 2)
            s = _chunk_from_index(idx)
            if case == _CASE_CAP:
                s = s.capitalize()
            elif case == _CASE_UPPER:
                s = s.upper()
            return ((" " if sp else "") + s).encode("ascii")
        if token_id < _REGULAR_END:
            sp, idx = divmod(token_id - DIGIT_BASE, DIGIT_CHUNKS)
            return ((" " if sp else "") + _digit_from_index(idx)).encode("ascii")
        if token_id >= SPECIAL_BASE:
            if skip_special_tokens:
                return b""
            name = _SPECIAL_NAMES.get(token_id, f"<|reserved_special_token_{token_id}|>")
            return name.encode("ascii")
        return b""  # unused ids between the regular block and the specials decode to nothing

    def token_str(self, token_id: int) -> str:
        """The id's text (the fallback has no separate vocabulary strings)."""
        return self.token_bytes(token_id).decode("utf-8", "replace")

    def is_special(self, token_id: int) -> bool:
        return token_id >= SPECIAL_BASE

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Ids to text; incomplete UTF-8 sequences decode to U+FFFD, like HF tokenizers."""
        tb = self.token_bytes
        return b"".join(tb(i, skip_special_tokens) for i in ids).decode("utf-8", "replace")

    def validate_ids(self, ids: Iterable[int]) -> None:
        """Raise ``ValueError`` naming the first id outside ``[0, vocab_size)``."""
        for i in ids:
            if i < 0 or i >= self.vocab_size:
                raise ValueError(f"Token id {i} is out of vocabulary")

    # ----------------------------------------------------------- chat template
    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> list[int]:
        """Render messages with Llama-3's template straight to ids.

        ``<|begin_of_text|>`` then, per message,
        ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>``; with
        ``add_generation_prompt`` an open assistant header follows. With
        ``continue_final_message`` the last message is left open (no ``<|eot_id|>``) so
        generation continues its text, as vLLM does; both flags at once is an error, with
        vLLM's wording. Content is not trimmed (Llama-3's template trims), so that a
        partial assistant message continues exactly where it stops.
        """
        if continue_final_message and add_generation_prompt:
            raise ChatTemplateError(
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
            )
        if not messages:
            raise ChatTemplateError("`messages` must contain at least one message.")
        if continue_final_message and not messages:
            raise ChatTemplateError("`continue_final_message` needs a final message.")
        out = [BOS_TOKEN_ID]
        last = len(messages) - 1
        for i, msg in enumerate(messages):
            role = msg.get("role")
            if not isinstance(role, str) or not role:
                raise ChatTemplateError(f"messages[{i}].role must be a non-empty string")
            content = content_text(msg.get("content"), i)
            out.append(START_HEADER_ID)
            out.extend(self.encode(role))
            out.append(END_HEADER_ID)
            out.extend(self.encode("\n\n" + content))
            if not (continue_final_message and i == last):
                out.append(EOT_TOKEN_ID)
        if add_generation_prompt:
            out.append(START_HEADER_ID)
            out.extend(self.encode("assistant"))
            out.append(END_HEADER_ID)
            out.extend(self.encode("\n\n"))
        return out
