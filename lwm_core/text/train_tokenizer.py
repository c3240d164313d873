"""Training a SentencePiece tokenizer the way LLaMA's was made (BPE, digits split, byte fallback,
bos 1 / eos 2 / unk 0), so `load_tokenizer` and LWM's prompt builders treat it as LLaMA's.

    train_tokenizer(["data/shapes/videos", "data/text.jsonl"], "tokenizer.model", vocab_size=1024)

The text: every string in each record of the jsonl files (nested lists and dicts too, so LLaVA-style
conversations count) except vision fields (names containing `vision`, LWM's rule), and every line of
.txt files. LWM's prompt template ("You are a helpful assistant. USER: ... ASSISTANT:", "<vision>",
"</vision>") is added once per 100 records so a corpus without prompts still encodes them compactly.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lwm_core.data.readers import TEXT_SUFFIXES, expand_paths
from lwm_core.data.vision import is_vision_field
from lwm_core.errors import LWMError
from lwm_core.fileio import atomic_path

TEMPLATE = "You are a helpful assistant. USER: Generate a video of <vision></vision> ASSISTANT: </vision>"


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not is_vision_field(k):
                yield from _strings(v)


def corpus_lines(paths) -> Iterator[str]:
    """The training text of `paths` (files, folders, globs as `lwm train` takes them), line by line."""
    records = 0
    for path in expand_paths(paths):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if path.endswith(TEXT_SUFFIXES):
                    text = [line]
                else:
                    try:
                        text = list(_strings(json.loads(line)))
                    except ValueError:
                        continue  # a malformed line: the loader reports these when training
                for t in text:
                    for piece in t.splitlines():
                        if piece.strip():
                            yield piece
                records += 1
                if records % 100 == 1:
                    yield TEMPLATE


def train_tokenizer(paths, out: str | os.PathLike, *, vocab_size: int = 1024, max_lines: int = 2_000_000) -> dict:
    """Train a SentencePiece BPE model on the text of `paths` and write it to `out` (a tokenizer.model,
    atomically). Returns {lines, vocab_size}. LWMError when the text is too small for `vocab_size`."""
    import sentencepiece as spm

    if vocab_size < 260:
        raise LWMError(f"--vocab-size {vocab_size} is too small: byte fallback alone needs 256 + 3 pieces")
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        text_file = Path(tmp) / "corpus.txt"
        lines = 0
        with open(text_file, "w", encoding="utf-8") as f:
            for line in corpus_lines(paths):
                f.write(line.replace("\n", " ") + "\n")
                lines += 1
                if lines >= max_lines:
                    break
        if lines == 0:
            raise LWMError("no text found in the data files to train a tokenizer on")
        try:
            spm.SentencePieceTrainer.train(
                input=str(text_file), model_prefix=str(Path(tmp) / "sp"), vocab_size=vocab_size, model_type="bpe",
                byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
                normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                character_coverage=1.0, minloglevel=2, input_sentence_size=max_lines, shuffle_input_sentence=True)
        except RuntimeError as exc:  # e.g. "Vocabulary size too high"
            raise LWMError(f"SentencePiece could not train a {vocab_size}-piece tokenizer on {lines} lines: "
                           f"{str(exc).splitlines()[-1][:200]}") from None
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out, overwrite=True) as tmp_out:
            Path(tmp_out).write_bytes((Path(tmp) / "sp.model").read_bytes())
    return {"lines": lines, "vocab_size": vocab_size}
