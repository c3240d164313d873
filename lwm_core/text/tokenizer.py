"""LWM's text tokenizer: LLaMA's SentencePiece model, used the way LWM used it.

`load_tokenizer(path)` takes a `tokenizer.model` file or a Hugging Face folder (its `tokenizer.model`
if present, else its `tokenizer.json`) and returns a `Tokenizer`:

- `encode(text)` is a plain SentencePiece encode of one chunk: a dummy-prefix `▁`, no BOS/EOS, and
  `<s>` in the text is just the characters `<`, `s`, `>`.
- `encode_prompt(text)` is LWM's rule for prompts: a literal `<s>`, `</s>` or `<unk>` becomes the
  bos/eos/unk id and every chunk around them is encoded on its own (so each gets its own `▁`;
  whitespace beside a literal stays in its chunk).
- `decode(ids)` matches SentencePiece's decoder: bos/eos vanish, `<unk>` reads ` ⁇ `, byte pieces
  are joined into UTF-8 (a byte that cannot be decoded reads U+FFFD), and the `▁` of the first
  visible piece is dropped. `stream()` gives the same text one id at a time.

Both back ends (SentencePiece and Hugging Face `tokenizers`) share the decoder below, so the two give
the same text for the same ids.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

from lwm_core.errors import LWMError

SPACE = "\u2581"  # SentencePiece's '▁'
UNK_SURFACE = " \u2047 "  # what SentencePiece prints for <unk> (its default unk_surface)
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_HINT = "pass LLaMA's tokenizer.model or a Hugging Face folder that holds tokenizer.model or tokenizer.json"


def _replace_per_byte(err: UnicodeDecodeError) -> tuple[str, int]:
    # SentencePiece turns each byte it cannot decode into one U+FFFD; Python's "replace" would use
    # one U+FFFD per maximal invalid run. Resuming one byte later gives SentencePiece's count.
    return "\ufffd", err.start + 1


_ERRORS = "lwm_sentencepiece_replace"
codecs.register_error(_ERRORS, _replace_per_byte)


class _SentencePieceBackend:
    def __init__(self, path: Path):
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            detail = " ".join(str(e).split())[:200]
            raise LWMError(f"{path} is not a SentencePiece model ({detail}); {_HINT}") from None
        self.sp = sp
        self.vocab_size = sp.vocab_size()
        self.bos_id, self.eos_id, self.unk_id = sp.bos_id(), sp.eos_id(), sp.unk_id()
        self.control_ids = {i for i in range(self.vocab_size) if sp.is_control(i)}

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(i)

    def byte_value(self, i: int) -> int | None:
        return int(self.sp.id_to_piece(i)[3:5], 16) if self.sp.is_byte(i) else None


def _drop_dummy_prefix(spec: dict) -> None:
    """Turn off a tokenizer.json's own dummy prefix, in place: a Metaspace pre-tokenizer's prepend (it
    skips text that already starts with a space, unlike SentencePiece) or a Prepend("▁") normalizer."""
    pre = spec.get("pre_tokenizer") or {}
    for p in pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]:
        if p and p.get("type") == "Metaspace":
            p["prepend_scheme"] = "never"
            p["add_prefix_space"] = False  # the key in tokenizers < 0.14
    norm = spec.get("normalizer") or {}
    if norm.get("type") == "Prepend":
        spec["normalizer"] = None
    elif norm.get("type") == "Sequence":
        norm["normalizers"] = [n for n in norm["normalizers"] if n.get("type") != "Prepend"]


class _HFJsonBackend:
    def __init__(self, path: Path):
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:
            raise LWMError(f"reading {path} needs the `tokenizers` package: pip install tokenizers") from None
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
            _drop_dummy_prefix(spec)
            tok = HFTokenizer.from_str(json.dumps(spec))
        except Exception as e:  # bad JSON, or tokenizers' bare Exception for a bad spec
            detail = " ".join(str(e).split())[:200]
            raise LWMError(f"{path} is not a tokenizers JSON file ({detail}); {_HINT}") from None
        tok.no_padding()
        tok.no_truncation()
        tok.encode_special_tokens = True  # "<s>" in the text is text, as in SentencePiece's encode
        self.tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        ids = [tok.token_to_id(p) for p in ("<s>", "</s>", "<unk>")]
        if None in ids:
            raise LWMError(f"{path} has no <s>, </s> or <unk> token, so it is not a LLaMA tokenizer; {_HINT}")
        self.bos_id, self.eos_id, self.unk_id = ids
        added = tok.get_added_tokens_decoder()
        self.control_ids = {i for i, t in added.items() if t.special and i != self.unk_id}
        if "".join(tok.encode("a", add_special_tokens=False).tokens).startswith(SPACE):
            raise LWMError(f"{path} adds a leading '{SPACE}' in a way lwm cannot turn off; "
                           "use the model's tokenizer.model instead")

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        # SentencePiece's dummy prefix, added here (see _drop_dummy_prefix): " x" -> "▁▁x"
        return self.tok.encode(" " + text, add_special_tokens=False).ids  # no BOS/EOS, whatever the post-processor says

    def id_to_piece(self, i: int) -> str:
        piece = self.tok.id_to_token(i)
        return "" if piece is None else piece

    def byte_value(self, i: int) -> int | None:
        m = _BYTE_PIECE.fullmatch(self.id_to_piece(i))
        return int(m.group(1), 16) if m else None


class Tokenizer:
    """LLaMA's SentencePiece tokenizer with LWM's prompt rule. Build it with `load_tokenizer`.

    With LLaMA's model (bos 1, eos 2, '▁' 29871, '<0x0A>' 13):

    >>> tok.encode("\\n")                             # doctest: +SKIP
    [29871, 13]
    >>> tok.encode_prompt("<s>\\n</s>")               # doctest: +SKIP
    [1, 29871, 13, 2]
    >>> tok.decode([1, 29871, 13, 2])                 # doctest: +SKIP
    '\\n'
    """

    def __init__(self, backend: _SentencePieceBackend | _HFJsonBackend, source: str):
        self._backend = backend
        self.source = source
        self.vocab_size: int = backend.vocab_size
        self.bos_id: int = backend.bos_id
        self.eos_id: int = backend.eos_id
        self.unk_id: int = backend.unk_id
        if min(self.bos_id, self.eos_id, self.unk_id) < 0:
            raise LWMError(f"{source} defines no <s>/</s>/<unk> ids, so it is not a LLaMA tokenizer; {_HINT}")
        # literal text -> id, for encode_prompt; longest first so "</s>" is not read as "<" + "/s>"
        self._literals = {backend.id_to_piece(i): i for i in (self.bos_id, self.eos_id, self.unk_id)}
        pattern = "|".join(re.escape(p) for p in sorted(self._literals, key=len, reverse=True))
        self._split = re.compile(f"({pattern})")

    def __repr__(self) -> str:
        return f"Tokenizer({self.source!r}, vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        """One SentencePiece call: `text` -> ids, with the dummy-prefix `▁` and no BOS/EOS.

        `<s>`, `</s>` and `<unk>` in `text` are ordinary characters here; use `encode_prompt` for LWM's
        prompts. E.g. with LLaMA's model `encode("\\n") == [29871, 13]` ('▁', '<0x0A>')."""
        return list(self._backend.encode(text))

    def encode_prompt(self, text: str) -> list[int]:
        """LWM's prompt rule: a literal `<s>`, `</s>` or `<unk>` -> the bos/eos/unk id, and each chunk
        between them encoded separately with `encode` (its own `▁`, its whitespace kept).

        `encode_prompt("<s>a</s> b") == [bos] + encode("a") + [eos] + encode(" b")`. Nothing is added
        that is not in the text: no BOS unless the text starts with `<s>`."""
        ids: list[int] = []
        for k, chunk in enumerate(self._split.split(text)):
            if k % 2:  # odd parts are the literals the split matched
                ids.append(self._literals[chunk])
            elif chunk:
                ids.extend(self._backend.encode(chunk))
        return ids

    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary entry for `token_id`, e.g. '▁hi', '<0x0A>', '<s>'."""
        return self._backend.id_to_piece(self._check(token_id))

    def decode(self, ids: Iterable[int]) -> str:
        """ids (any int sequence or 1-D array) -> text, as SentencePiece decodes it: bos/eos skipped,
        `<unk>` shown as ' ⁇ ', byte pieces joined into UTF-8, the first visible piece's `▁` dropped.
        `decode(encode(t)) == t` for any text `t`."""
        surface, strippable = self._tables
        out: list[bytes] = []
        first = True
        for i in ids:
            i = self._check(i)
            s = surface[i]
            if s is None:  # control piece: invisible, and the next piece is still the first
                continue
            if first:
                first = False
                if strippable[i]:
                    s = s[1:]
            out.append(s)
        return b"".join(out).decode("utf-8", _ERRORS)

    def decode_generated(self, ids: Sequence[int]) -> str:
        """The text of ids a model generated: a model's vocabulary may be padded past the tokenizer's,
        and such ids have no text (eos and other control pieces are invisible anyway)."""
        return self.decode([int(i) for i in ids if i < self.vocab_size])

    def stream(self) -> StreamDecoder:
        """A fresh incremental decoder; see `StreamDecoder`."""
        return StreamDecoder(self)

    def _check(self, token_id: int) -> int:
        i = int(token_id)
        if not 0 <= i < self.vocab_size:
            raise LWMError(f"token id {i} is outside the text vocabulary [0, {self.vocab_size}); "
                           "vision ids must not be decoded as text")
        return i

    @cached_property
    def _tables(self) -> tuple[list[bytes | None], list[bool]]:
        """Per id: its bytes in the text (None for control pieces), and whether it is an ordinary piece
        starting with `▁`, whose space SentencePiece drops when it comes first."""
        b = self._backend
        surface: list[bytes | None] = []
        strippable: list[bool] = []
        for i in range(self.vocab_size):
            piece = b.id_to_piece(i)
            byte = b.byte_value(i)
            if i in b.control_ids or not piece:
                surface.append(None)
            elif i == self.unk_id:
                surface.append(UNK_SURFACE.encode())
            elif byte is not None:
                surface.append(bytes([byte]))
            else:
                surface.append(piece.replace(SPACE, " ").encode())
            strippable.append(i != self.unk_id and byte is None and piece.startswith(SPACE))
        return surface, strippable


class StreamDecoder:
    """Decode ids one at a time while they are generated.

    `push(id)` returns the text that id completes (often '' while a multi-byte UTF-8 character is
    still arriving as byte pieces); `flush()` returns what is left at the end (U+FFFD for a character
    cut short). `''.join(push(i) for i in ids) + flush() == tokenizer.decode(ids)`.

    >>> s = tok.stream()                                    # doctest: +SKIP
    >>> [s.push(i) for i in tok.encode("a ☃")], s.flush()  # doctest: +SKIP
    (['a', ' ', '', '', '☃'], '')                          # when ☃ is three byte pieces
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        self._surface, self._strippable = tokenizer._tables
        self._utf8 = codecs.getincrementaldecoder("utf-8")(_ERRORS)
        self._first = True

    def push(self, token_id: int) -> str:
        """Add one id; return the new text it makes readable."""
        i = self._tok._check(token_id)
        s = self._surface[i]
        if s is None:
            return ""
        if self._first:
            self._first = False
            if self._strippable[i]:
                s = s[1:]
        return self._utf8.decode(s)

    def flush(self) -> str:
        """End of stream: the text still held back (an unfinished UTF-8 character reads U+FFFD)."""
        return self._utf8.decode(b"", final=True)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """LLaMA's tokenizer from `path`: a SentencePiece `tokenizer.model` file, a `tokenizer.json` file,
    or a Hugging Face folder holding either (`tokenizer.model` is used when both are there).

    Raises LWMError (one line) for a missing path, a folder with neither file, or a file that does
    not parse."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LWMError(f"tokenizer path {p} does not exist; {_HINT}")
    if p.is_dir():
        found = [p / n for n in ("tokenizer.model", "tokenizer.json") if (p / n).is_file()]
        if not found:
            raise LWMError(f"{p} holds neither tokenizer.model nor tokenizer.json; {_HINT}")
        p = found[0]
    backend = _HFJsonBackend(p) if p.suffix == ".json" else _SentencePieceBackend(p)
    return Tokenizer(backend, str(p))
