"""The text tokenizer: LLaMA's SentencePiece behaviour and LWM's prompt rule.

Two models are used. One is trained in the test (LLaMA's trainer settings, a generated corpus) for
round trips, which hold whatever ids a sentencepiece version picks. The other is committed,
tests/data/tokenizer/tokenizer.model (7.6 KB), so that the prompt rules can be checked against literal
ids; it was made by `python tests/data/tokenizer/make_fixture.py`, whose trainer call is

    SentencePieceTrainer.train(input=<seeded corpus>, model_prefix=..., vocab_size=512, model_type="bpe",
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        character_coverage=1.0, minloglevel=2)

with sentencepiece 0.2.3. Its pieces used below: 0 '<unk>', 1 '<s>', 2 '</s>', 13 '<0x0A>', 259 '▁a',
269 'vision', 273 '▁an', 285 '▁<', 296 '▁You', 297 '▁are', 299 '▁USER', 302 '▁helpful', 303 '▁ASSISTANT',
304 '▁assistant', 312 '▁image', 314 '▁of', 321 '▁Generate', 346 '▁video', 389 '▁hi', 392 '▁cat', 460 '▁',
463 's', 476 ':', 483 '>', 485 '.', 494 'b', 495 '/', 500 'x'.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm

import lwm_core
from lwm_core.errors import LWMError
from lwm_core.text import (
    Tokenizer,
    load_tokenizer,
    lwm_chat_segments,
    lwm_generation_prompt_ids,
    lwm_unconditional_prompt_ids,
)

FIXTURE = Path(__file__).parent / "data" / "tokenizer" / "tokenizer.model"
TEXTS = [
    "hello world",
    "What is in this picture?",
    " leading space",
    "two  spaces and a trailing one ",
    "   ",
    "",
    "digits 1234567890 and 3.14",
    "line one\nline two\n\nend\n",
    "\ttab",
    "café ☃ 東京",
    "emoji 🦊 and é at the end é",
    "<s> literal </s> and <unk> stay text in encode",
]


def _train(tmp: Path) -> Path:
    rng = random.Random(1)
    words = "the quick brown fox jumps over lazy dog a video of cats in the garden café".split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) + f" {rng.randint(0, 999)}"
             for _ in range(300)]
    (tmp / "corpus.txt").write_text("\n".join(lines))
    spm.SentencePieceTrainer.train(
        input=str(tmp / "corpus.txt"), model_prefix=str(tmp / "tok"), vocab_size=400, model_type="bpe",
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", user_defined_symbols=[], unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, character_coverage=1.0, minloglevel=2,
    )
    return tmp / "tok.model"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load_tokenizer(FIXTURE)


def _streamed(t: Tokenizer, ids: list[int]) -> tuple[list[str], str]:
    s = t.stream()
    return [s.push(i) for i in ids], s.flush()


# --- round trips on a model trained here -------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_and_stream(trained, text):
    t = load_tokenizer(trained)
    sp = spm.SentencePieceProcessor(model_file=str(trained))
    ids = t.encode(text)
    assert ids == sp.encode(text)
    assert t.decode(ids) == text == sp.decode(ids)
    pushes, rest = _streamed(t, ids)
    assert "".join(pushes) == text and rest == ""
    assert t.decode([t.bos_id, *ids, t.eos_id]) == text  # bos/eos are invisible


def test_stream_holds_back_split_utf8(trained):
    t = load_tokenizer(trained)
    ids = t.encode("a ☃")  # ☃ is not in this vocabulary: three byte pieces
    pieces = [t.id_to_piece(i) for i in ids]
    assert pieces[-3:] == ["<0xE2>", "<0x98>", "<0x83>"]
    pushes, rest = _streamed(t, ids)
    assert pushes[-3:] == ["", "", "☃"] and "".join(pushes) == "a ☃" and rest == ""
    pushes, rest = _streamed(t, ids[:-1])  # cut mid-character: the end reads U+FFFD, as decode says
    assert "".join(pushes) == "a " and rest == "\ufffd\ufffd" == t.decode(ids[:-1])[2:]


def test_decode_matches_sentencepiece_on_random_ids(trained):
    """Random ids, heavy on byte pieces, control ids, <unk> and '▁': decode is SentencePiece's decode
    (invalid UTF-8 included) and the stream gives the same text."""
    t = load_tokenizer(trained)
    sp = spm.SentencePieceProcessor(model_file=str(trained))
    space = sp.piece_to_id("\u2581")
    rng = random.Random(0)
    pool = [0, 1, 2, space, space] + list(range(3, 259)) + list(range(259, t.vocab_size))
    for _ in range(400):
        ids = [rng.choice(pool) for _ in range(rng.randint(0, 10))]
        expected = sp.decode(ids)
        assert t.decode(ids) == expected, ids
        pushes, rest = _streamed(t, ids)
        assert "".join(pushes) + rest == expected, ids


# --- literal ids on the committed model --------------------------------------------------------------


def test_special_literals_become_ids_and_chunks_encode_separately(tok):
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.vocab_size) == (1, 2, 0, 512)
    assert tok.encode_prompt("<s>You are a helpful assistant. USER: hi\n") == [
        1, 296, 297, 259, 302, 304, 485, 299, 476, 389, 13]
    # "a " | </s> | " b": the chunk after </s> gets its own '▁' plus its own space
    assert tok.encode_prompt("a </s> b") == [259, 460, 2, 460, 460, 494]
    assert tok.encode("a </s> b") == [259, 285, 495, 463, 483, 460, 494]  # one call: '</s>' is text
    assert tok.encode_prompt("<unk>x<s>") == [0, 460, 500, 1]
    assert tok.encode_prompt("no literals here") == tok.encode("no literals here")


def test_encode_does_not_interpret_literals(tok):
    ids = tok.encode("<s></s><unk>")
    assert not {0, 1, 2} & set(ids)
    assert tok.decode(ids) == "<s></s><unk>"


def test_newline_is_a_byte_piece(tok):
    assert tok.encode("\n") == [460, 13]
    assert [tok.id_to_piece(i) for i in tok.encode("\n")] == ["\u2581", "<0x0A>"]


def test_space_assistant_gets_two_spaces(tok):
    ids = tok.encode(" ASSISTANT:")
    assert ids == [460, 303, 476]
    assert "".join(tok.id_to_piece(i) for i in ids) == "\u2581\u2581ASSISTANT:"


def test_unconditional_prompt(tok):
    assert tok.encode_prompt("<s><vision>") == [1] + tok.encode("<vision>") == [1, 285, 269, 483]
    assert lwm_unconditional_prompt_ids(tok) == [1, 285, 269, 483]


def test_chat_segments(tok):
    prefix, suffix = lwm_chat_segments(tok, "hi")
    # "<vision>" is its own call, so it starts with '▁<' right after the '\n' byte piece
    assert prefix == [1, 296, 297, 259, 302, 304, 485, 299, 476, 389, 13, 285, 269, 483]
    # "</vision>" and " ASSISTANT:" are two calls: '▁<' '/' 'vision' '>' then '▁' '▁ASSISTANT' ':'
    assert suffix == [285, 495, 269, 483, 460, 303, 476]
    assert suffix != tok.encode("</vision> ASSISTANT:")  # what one call would give
    assert prefix.count(1) == 1 and 2 not in prefix + suffix


def test_generation_prompts(tok):
    head = [1, 296, 297, 259, 302, 304, 485, 299, 476, 321]  # <s> You are a helpful assistant. USER: Generate
    tail = [259, 392, 303, 476, 285, 269, 483]  # a cat ASSISTANT: <vision>
    assert lwm_generation_prompt_ids(tok, "a cat") == head + [273, 312, 314] + tail  # an image of
    assert lwm_generation_prompt_ids(tok, "a cat", video=True) == head + [259, 346, 314] + tail  # a video of


def test_exported_from_lwm_core():
    assert lwm_core.load_tokenizer is load_tokenizer and lwm_core.Tokenizer is Tokenizer


def test_decode_rejects_ids_outside_the_vocabulary(tok):
    with pytest.raises(LWMError, match="outside the text vocabulary"):
        tok.decode([5, 8192 + 512])


# --- Hugging Face folders ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def json_folder(tmp_path_factory) -> Path:
    """A folder with only tokenizer.json, converted from the committed model by transformers, with a
    post-processor that adds BOS and EOS (load_tokenizer must ignore it)."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf")
    shutil.copy(FIXTURE, folder / "tokenizer.model")
    hf = transformers.LlamaTokenizerFast.from_pretrained(str(folder), add_bos_token=True, add_eos_token=True)
    assert hf("hi").input_ids[0] == 1 and len(hf) == 512
    hf.save_pretrained(str(folder))
    (folder / "tokenizer.model").unlink()
    return folder


def test_folder_prefers_tokenizer_model(tmp_path, json_folder):
    shutil.copytree(json_folder, tmp_path / "both")
    shutil.copy(FIXTURE, tmp_path / "both" / "tokenizer.model")
    assert load_tokenizer(tmp_path / "both").source.endswith("tokenizer.model")


def _same_as_sentencepiece(t: Tokenizer, ref: Tokenizer):
    assert (t.vocab_size, t.bos_id, t.eos_id, t.unk_id) == (ref.vocab_size, ref.bos_id, ref.eos_id, ref.unk_id)
    for text in TEXTS + ["You are a helpful assistant. USER: hi\n", " ASSISTANT:", "</vision>"]:
        ids = ref.encode(text)
        assert t.encode(text) == ids, text
        assert t.decode(ids) == ref.decode(ids) == text
    assert t.encode_prompt("<s>a </s> b<unk>") == ref.encode_prompt("<s>a </s> b<unk>")
    assert [t.id_to_piece(i) for i in range(t.vocab_size)] == [ref.id_to_piece(i) for i in range(ref.vocab_size)]
    ids = list(range(t.vocab_size))
    assert t.decode(ids) == ref.decode(ids)


def test_tokenizer_json_matches_sentencepiece(json_folder, tok):
    t = load_tokenizer(json_folder)
    assert t.source.endswith("tokenizer.json")
    _same_as_sentencepiece(t, tok)


METASPACE_NEVER = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "never", "split": False}
LEGACY_PREPEND = {"type": "Sequence", "normalizers": [  # LLaMA's tokenizer.json from transformers < 4.41
    {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}


@pytest.mark.parametrize("normalizer, pre_tokenizer", [
    (None, METASPACE_NEVER),  # no dummy prefix of its own
    (LEGACY_PREPEND, None),  # prefix from a Prepend normalizer
    (None, {"type": "Sequence", "pretokenizers": [dict(METASPACE_NEVER, prepend_scheme="always", split=True)]}),
])
def test_tokenizer_json_variants(tmp_path, json_folder, tok, normalizer, pre_tokenizer):
    """However the json adds (or does not add) SentencePiece's dummy prefix, encode matches the .model."""
    spec = json.loads((json_folder / "tokenizer.json").read_text())
    assert spec["pre_tokenizer"]["type"] == "Metaspace"  # what transformers writes today
    spec["normalizer"], spec["pre_tokenizer"] = normalizer, pre_tokenizer
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    _same_as_sentencepiece(load_tokenizer(tmp_path / "tokenizer.json"), tok)


# --- bad input ---------------------------------------------------------------------------------------


def _one_line_error(path, match: str):
    with pytest.raises(LWMError, match=match) as e:
        load_tokenizer(path)
    assert "\n" not in str(e.value) and "tokenizer.model" in str(e.value)


def test_bad_input(tmp_path):
    _one_line_error(tmp_path / "missing", "does not exist")
    (tmp_path / "empty").mkdir()
    _one_line_error(tmp_path / "empty", "neither tokenizer.model nor tokenizer.json")
    (tmp_path / "garbage.model").write_bytes(b"\x00\xffnot a model\n" * 10)
    _one_line_error(tmp_path / "garbage.model", "not a SentencePiece model")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "tokenizer.json").write_text('{"version": "1.0", "model": \n[1, 2')
    _one_line_error(tmp_path / "hf", "not a tokenizers JSON file")
