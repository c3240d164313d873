"""LWM's field syntax, vision spans (codes and token files), per-line field lists, swaps and chat records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lwm_core.data import BadRecord, DataLoader, RecordProcessor, VisionSpec, parse_fields
from lwm_core.data.fields import Field
from lwm_core.errors import LWMError
from lwm_core.text import load_tokenizer
from lwm_core.token_files import TokenFile, save_tokens
from lwm_core.vqgan.config import VQGANConfig
from data_helpers import TOKENIZER, FakeTokenizer

F, T_ = False, True




SPEC = VisionSpec(tokens_per_frame=2, num_codes=16)


def proc(fields="text", **kwargs):
    return RecordProcessor(FakeTokenizer(), fields, vision=kwargs.pop("vision", SPEC), **kwargs)


def test_parse_fields():
    assert parse_fields("[question+context],answer") == [Field(("question", "context"), 0.0), Field(("answer",), 1.0)]
    assert parse_fields("text") == [Field(("text",), 1.0)]
    for bad in ("[a,b", "a,,b", "vision+caption", "a]"):
        with pytest.raises(ValueError):
            parse_fields(bad)
    with pytest.raises(LWMError):
        proc("[a")


def test_brackets_plus_bos_eos():
    ex = proc("[q1+q2],ans")({"q1": "q", "q2": "b", "ans": "a c"})
    assert ex.tokens.tolist() == [1, 5, 7, 6, 8, 2]  # "q b" is one piece (LWM joins with a space)
    assert ex.loss.tolist() == [0, 0, 0, 1, 1, 1]  # bos 0, bracketed 0, eos 1
    ex = proc("[q1],<|eos|>,ans", add_bos=False, add_eos=False)({"q1": "q", "ans": "a"})
    assert ex.tokens.tolist() == [5, 2, 6] and ex.loss.tolist() == [0, 1, 1]
    with pytest.raises(BadRecord, match="no key 'ans'"):
        proc("ans")({"text": "a"})


def test_vision_span_layout_and_masks():
    ex = proc("vision,[caption]")({"caption": "a", "vision": [1, 2, 3, 4, 5, 6]})
    assert ex.tokens.tolist() == [1, 10, 1, 2, 8192, 3, 4, 8192, 5, 6, 8193, 11, 6, 2]
    assert ex.vision.tolist() == [F, F, T_, T_, T_, T_, T_, T_, T_, T_, T_, F, F, F]  # not the tag text
    assert ex.loss.tolist() == [0] + [1] * 11 + [0, 1]  # the whole span (tags included) takes the field's loss
    ex = proc("[vision],caption", max_n_frames=2)({"caption": "a", "vision": [1, 2, 3, 4, 5, 6]})
    assert ex.tokens.tolist() == [1, 10, 1, 2, 8192, 5, 6, 8193, 11, 6, 2]  # frames 0 and 2 (linspace)
    assert ex.loss.tolist() == [0] * 9 + [1, 1]
    for bad in ([1, 2, 3], [1, 16], [], "nofile.npz", 7):
        with pytest.raises(BadRecord):
            proc("vision")({"vision": bad})


def test_tokens_per_frame_and_end_ids_come_from_the_vqgan_config():
    tiny = VisionSpec.from_vqgan("tiny")
    assert (tiny.tokens_per_frame, tiny.num_codes, tiny.grid) == (16, 512, (4, 4))
    assert (tiny.eof_id, tiny.eov_id) == (512, 513)  # the ids right after the codes
    full = VisionSpec.from_vqgan()
    assert (full.tokens_per_frame, full.num_codes, full.eof_id, full.eov_id) == (256, 8192, 8192, 8193)  # LWM's
    ex = RecordProcessor(FakeTokenizer(), "vision", vision=tiny)({"vision": list(range(32))})
    assert ex.tokens.tolist() == [1, 10, *range(16), 512, *range(16, 32), 513, 11, 2]


def write_token_file(path, config: VQGANConfig, n_frames: int):
    side = config.latent_size
    codes = np.arange(n_frames * side * side).reshape(n_frames, side, side) % config.num_embeddings
    save_tokens(path, TokenFile(codes=codes, frame_indices=np.arange(n_frames), fps=4.0, source="clip.mp4",
                                vqgan_id="test", vqgan_config=config.to_json()))


def test_token_file_relative_to_the_jsonl(tmp_path):
    tiny = VQGANConfig.from_name("tiny")
    write_token_file(tmp_path / "sub" / "tokens" / "clip.npz", tiny, 3)
    data = tmp_path / "sub" / "data.jsonl"
    data.write_text(json.dumps({"caption": "a", "vision": "tokens/clip.npz"}) + "\n")
    # a model with LWM's 8192 code slots reading a 512-code VQGAN: its end ids stay 8192 / 8193
    spec = VisionSpec.from_vqgan(tiny, vision_codes=8192)
    processor = RecordProcessor(FakeTokenizer(), "[caption],vision", vision=spec, max_n_frames=2)
    batch = next(DataLoader(data, processor, batch_size=1, seq_length=64))
    ids = batch["input_ids"][0][:batch["attention_mask"][0].sum()].tolist()
    assert ids == [1, 6, 10, *range(16), 8192, *range(32, 48), 8193, 11, 2]  # frames 0 and 2 of 3
    assert batch["vision_masks"][0].tolist() == [F] * 3 + [T_] * 34 + [F] * 27


def test_token_file_from_another_vqgan_is_one_line_error(tmp_path):
    write_token_file(tmp_path / "clip.npz", VQGANConfig(), 1)  # 16 x 16 codes of 8192
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"vision": "clip.npz"}) + "\n")
    processor = RecordProcessor(FakeTokenizer(), "vision", vision=VisionSpec.from_vqgan("tiny"))
    with pytest.raises(LWMError) as err:
        next(DataLoader(data, processor, batch_size=1, seq_length=512))
    message = str(err.value)
    assert "\n" not in message and "different VQGAN" in message and "data.jsonl:1" in message
    assert "16x16" in message and "4x4" in message


def test_field_list_picked_per_line_deterministically(tmp_path):
    record = {"fields": ["[caption],vision", "[vision],caption"], "caption": "a", "vision": [1, 2]}
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for _ in range(40)))
    processor = proc(None, fields_from_example="fields")

    def picks(**kwargs):
        loader = DataLoader(data, processor, batch_size=1, seq_length=16, packing="pad", **kwargs)
        return [int(b["input_ids"][0, 1] == 6) for b in loader]  # 1: caption first

    first = picks()
    assert first == picks() and 5 < sum(first) < 35  # the same every run; both orders occur
    assert picks(shard_index=1, shard_count=2) == first[1::2]  # the line number decides, not the host
    expected = [int(np.random.default_rng([0, 0, line, 0]).integers(2) == 0) for line in range(40)]
    assert first == expected


def test_swap_prob_reverses_names_and_keeps_slots():
    record = {"caption": "a", "vision": [1, 2]}
    never, always = proc("[caption],vision", swap_prob=0.0), proc("[caption],vision", swap_prob=1.0)
    assert never(record).tokens.tolist() == [1, 6, 10, 1, 2, 8193, 11, 2]
    ex = always(record)
    assert ex.tokens.tolist() == [1, 10, 1, 2, 8193, 11, 6, 2]  # [vision],caption: captioning
    assert ex.loss.tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
    half = proc("[caption],vision", swap_prob=0.5, seed=3)
    swapped = [half(record, line=i).tokens[1] == 10 for i in range(60)]
    assert swapped == [half(record, line=i).tokens[1] == 10 for i in range(60)] and 10 < sum(swapped) < 50
    # records without a vision field are never swapped
    assert proc("[caption],text", swap_prob=1.0)({"caption": "a", "text": "b"}).tokens.tolist() == [1, 6, 7, 2]


# The committed SentencePiece model's ids used below:
SYSTEM_USER = [296, 297, 259, 302, 304, 485, 299, 476]  # "You are a helpful assistant. USER:"
Q, A, C, NEWLINE = 354, 259, 391, 13  # "▁q", "▁a", "▁c", "<0x0A>"
VISION = [285, 269, 483, 3, 4, 8193, 285, 495, 269, 483]  # <vision> codes 3 4, eov, </vision>
ASSISTANT = [460, 303, 476]  # " ASSISTANT:" is "▁▁ASSISTANT:" to SentencePiece
USER_B = [299, 476, 460, 494]  # "USER: b"


def chat(**kwargs):
    return RecordProcessor(load_tokenizer(TOKENIZER), "conversations",
                           vision=VisionSpec(tokens_per_frame=2, num_codes=8), **kwargs)


def test_conversation_in_lwm_chat_template():
    record = {"vision": [3, 4], "conversations": [
        {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"},
        {"from": "human", "value": "b"}, {"from": "gpt", "value": "c"}]}
    ex = chat()(record)
    first = [1] + SYSTEM_USER + [Q, NEWLINE] + VISION + ASSISTANT  # LWM's chat prompt
    assert ex.tokens.tolist() == first + [A, 2] + USER_B + ASSISTANT + [C, 2]
    assert ex.loss.tolist() == [0] * len(first) + [1, 1] + [0] * 7 + [1, 1]  # answers and their eos only
    assert ex.vision.tolist() == [F] * 14 + [T_, T_, T_] + [F] * 18


def test_conversation_checks_and_swap():
    with pytest.raises(BadRecord, match="alternate"):
        proc("conversations")({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]})
    with pytest.raises(BadRecord, match="ends with a human"):
        proc("conversations")({"conversations": [{"from": "human", "value": "q"}]})
    turns = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    swapped = chat(swap_prob=1.0)({"vision": [3, 4], "conversations": turns})
    assert swapped.tokens.tolist() == [1] + SYSTEM_USER + VISION + [Q] + ASSISTANT + [A, 2]
    text_only = chat()({"conversations": turns})
    assert text_only.tokens.tolist() == [1] + SYSTEM_USER + [Q] + ASSISTANT + [A, 2]
