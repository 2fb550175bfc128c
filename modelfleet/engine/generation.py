"""Greedy "model": the next token as a pure function of the token context.

A real model at temperature 0 maps a context to its argmax token; what the scheduler's
live migration relies on is only that this map is a *function* of the token ids (a request
continued on another engine from prompt + generated-so-far produces exactly the tokens the
uninterrupted run would have). This module provides such a function, cheap enough to run
once per generated token:

    h = mix64(len(context), context[-1], ..., context[-4])
    token = table[h]

where ``mix64`` is a splitmix64-style integer mixer (no Python ``hash()``, whose value for
strings varies per process) and ``table`` is a fixed list of single-token English words
(with a leading space) that the served tokenizer encodes as one token each (or, for a
small vocabulary, its own ``" word"`` tokens), a few capitalised sentence starters,
``","`` and ``"."``. After a ``"."`` the next token is a capitalised starter, so the text
reads as sentences of words.

Design choices:
- **No EOS, ever.** Generation ends only by ``max_tokens``, ``stop`` strings or
  ``stop_token_ids``; so output lengths are exactly what the client asked for, which is what
  benchmarks want (real runs use ``ignore_eos`` for the same reason). ``ignore_eos`` is
  accepted and has nothing to change.
- Only the last four ids and the length enter the hash: O(1) per token whatever the context
  length, still a pure function of the context, and the length makes repetition cycles
  impossible.
- Every emitted id is *canonical*: ``encode(decode(ids)) == ids`` for generated ids
  appended to any text that ends a pre-token piece, because each word carries its leading
  space and punctuation ids are single bytes. That keeps text-based continuation
  (``continue_final_message``) consistent too.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelfleet.engine.fallback_tokenizer import WORDS
from modelfleet.engine.tokenizer import Tokenizer

__all__ = ["GreedyGenerator"]

_MASK = (1 << 64) - 1
_STARTERS = ("The", "We", "It", "In", "A", "Our", "As", "So", "But", "And", "Its", "Now")


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a bijective, well-avalanching 64-bit integer mixer."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
    return x ^ (x >> 31)


class GreedyGenerator:
    """``next_token(context) -> id``: deterministic, context-only, O(1) per call."""

    __slots__ = ("_comma", "_period", "_starters", "_table", "_words")

    def __init__(self, tokenizer: Tokenizer) -> None:
        words = _single_tokens(tokenizer, [" " + w for w in WORDS])
        if len(words) < 32:  # a small or non-English vocabulary: take its own word tokens
            words = _vocabulary_words(tokenizer, limit=512)
        if not words:
            raise ValueError(f"tokenizer {tokenizer.name!r} has no single-token words to generate")
        starters = _single_tokens(tokenizer, [" " + w for w in _STARTERS]) or words[:8]
        comma = _single_tokens(tokenizer, [","])
        period = _single_tokens(tokenizer, ["."])
        # Words dominate; roughly one comma per 16 tokens and one period per 12.
        table = list(words)
        table += comma * (len(words) // 16) + period * (len(words) // 12)
        self._table: tuple[int, ...] = tuple(table)
        self._words: tuple[int, ...] = tuple(words)
        self._comma = comma[0] if comma else -1
        self._starters: tuple[int, ...] = tuple(starters)
        self._period = period[0] if period else -1

    def next_token(self, context: Sequence[int]) -> int:
        """The greedy next token after ``context`` (prompt ids + generated ids so far)."""
        n = len(context)
        h = _mix64(n + 0x9E3779B97F4A7C15)
        for k in range(1, 5):
            tok = context[n - k] if k <= n else 0x5BD1E995
            h = _mix64(h ^ (tok + k * 0x632BE59BD9B4E019))
        last = context[-1] if n else -1
        if last == self._period:
            return self._starters[h % len(self._starters)]
        if last == self._comma:
            return self._words[h % len(self._words)]
        return self._table[h % len(self._table)]

    __call__ = next_token


def _single_tokens(tokenizer: Tokenizer, texts: list[str]) -> list[int]:
    """Ids of the texts that are exactly one token and decode back to themselves."""
    out: list[int] = []
    for text in texts:
        ids = tokenizer.encode(text)
        if len(ids) == 1 and tokenizer.token_bytes(ids[0]) == text.encode("utf-8"):
            out.append(ids[0])
    return out


def _vocabulary_words(tokenizer: Tokenizer, limit: int) -> list[int]:
    """Up to ``limit`` ids of the form " letters" (2-12 lowercase ASCII letters) that
    re-encode to themselves, in id order (deterministic)."""
    out: list[int] = []
    for i in range(tokenizer.vocab_size):
        if tokenizer.is_special(i):
            continue
        b = tokenizer.token_bytes(i)
        if 3 <= len(b) <= 13 and b[:1] == b" " and b[1:].isalpha() and b[1:].islower():
            if tokenizer.encode(b.decode("ascii")) == [i]:
                out.append(i)
                if len(out) >= limit:
                    break
    return out
