"""Packing: the batch contract written out literally, overflow handling, LWM's concat / pad modes, and
the promise of masked packing: each packed example's weighted loss equals its loss run alone."""

from __future__ import annotations


import numpy as np
import pytest

from lwm_core.data import BATCH_KEYS, Example, Packer, RecordProcessor, VisionSpec, pack_examples
from lwm_core.errors import LWMError
from lwm_core.text import load_tokenizer
from data_helpers import TOKENIZER, FakeTokenizer

F, T_ = False, True




SPEC = VisionSpec(tokens_per_frame=2, num_codes=16)  # 2 codes a frame, eof 8192, eov 8193


def proc(fields):
    return RecordProcessor(FakeTokenizer(), fields, vision=SPEC)


A = proc("[question],answer")({"question": "q q", "answer": "a b"})  # [1 5 5 6 7 2], loss on 6 7 2
B = proc("text")({"text": "a"})  # [1 6 2], loss on 6 2
V = proc("[caption],vision")({"caption": "a", "vision": [3, 4, 5, 6]})  # 11 tokens, 2 frames


def check(batch, **expected):
    assert set(batch) == set(BATCH_KEYS)
    for key in BATCH_KEYS:
        assert batch[key].dtype == {"loss_weights": np.float32}.get(
            key, bool if key in ("vision_masks", "target_vision", "attention_mask") else np.int32), key
    for key, want in expected.items():
        if key == "loss_weights":
            np.testing.assert_allclose(batch[key], want, rtol=1e-6, err_msg=key)
        else:
            assert batch[key].tolist() == want, key


def test_examples_literal():
    assert A.tokens.tolist() == [1, 5, 5, 6, 7, 2] and A.loss.tolist() == [0, 0, 0, 1, 1, 1]
    assert V.tokens.tolist() == [1, 6, 10, 3, 4, 8192, 5, 6, 8193, 11, 2]
    assert V.loss.tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert V.vision.tolist() == [F, F, F, T_, T_, T_, T_, T_, T_, F, F]


def test_masked_two_text_examples_in_one_row():
    (batch,), stats = pack_examples([A, B], batch_size=1, seq_length=10)
    check(batch,
          input_ids=[[1, 5, 5, 6, 7, 2, 1, 6, 2, 0]],
          targets=[[5, 5, 6, 7, 2, 0, 6, 2, 0, 0]],
          loss_weights=[[0, 0, 1 / 3, 1 / 3, 1 / 3, 0, 1 / 2, 1 / 2, 0, 0]],
          segment_ids=[[1, 1, 1, 1, 1, 1, 2, 2, 2, 0]],
          position_ids=[[0, 1, 2, 3, 4, 5, 0, 1, 2, 0]],
          vision_masks=[[F] * 10],
          target_vision=[[F] * 10],
          attention_mask=[[T_] * 9 + [F]])
    assert stats["segments"] == 2 and stats["padding_tokens"] == 1 and stats["tokens"] == 9


def test_masked_vision_example_half_text_half_vision():
    (batch,), _ = pack_examples([V, B], batch_size=1, seq_length=14)
    t, v = 0.5 / 3, 0.5 / 6  # 3 text targets (<vision> tag, </vision> tag, eos), 6 vision targets
    check(batch,
          input_ids=[[1, 6, 10, 3, 4, 8192, 5, 6, 8193, 11, 2, 1, 6, 2]],
          targets=[[6, 10, 3, 4, 8192, 5, 6, 8193, 11, 2, 0, 6, 2, 0]],
          loss_weights=[[0, t, v, v, v, v, v, v, t, t, 0, 0.5, 0.5, 0]],
          segment_ids=[[1] * 11 + [2] * 3],
          position_ids=[list(range(11)) + [0, 1, 2]],
          vision_masks=[[F, F, F, T_, T_, T_, T_, T_, T_, F, F, F, F, F]],
          target_vision=[[F, F, T_, T_, T_, T_, T_, T_, F, F, F, F, F, F]],
          attention_mask=[[T_] * 14])
    w = batch["loss_weights"][0]
    assert w[:11].sum() == pytest.approx(1.0) and w[11:].sum() == pytest.approx(1.0)


def test_greedy_rows_and_open_rows():
    batches, stats = pack_examples([A, V, B], batch_size=2, seq_length=12)  # A | V | B: nothing fits beside
    assert [b["segment_ids"].max(axis=1).tolist() for b in batches] == [[1, 1], [1, 0]]
    assert batches[1]["attention_mask"][1].sum() == 0 and stats["rows"] == 3
    (batch,), _ = pack_examples([A, V, B], batch_size=2, seq_length=12, open_rows=2)  # B joins A's row
    assert batch["input_ids"].tolist() == [[1, 5, 5, 6, 7, 2, 1, 6, 2, 0, 0, 0],
                                           [1, 6, 10, 3, 4, 8192, 5, 6, 8193, 11, 2, 0]]
    assert batch["segment_ids"][0].tolist() == [1] * 6 + [2] * 3 + [0] * 3


def test_split_overlaps_by_one_so_every_target_is_learnt_once():
    batches, stats = pack_examples([A], batch_size=2, seq_length=4, packing="pad")
    check(batches[0],
          input_ids=[[1, 5, 5, 6], [6, 7, 2, 0]],
          targets=[[5, 5, 6, 0], [7, 2, 0, 0]],
          loss_weights=[[0, 0, 1, 0], [0.5, 0.5, 0, 0]],
          segment_ids=[[1, 1, 1, 1], [1, 1, 1, 0]],
          position_ids=[[0, 1, 2, 3], [0, 1, 2, 0]],
          attention_mask=[[T_] * 4, [T_, T_, T_, F]])
    assert (stats["split"], stats["pieces"], stats["truncated"]) == (1, 2, 0)


def test_truncate_skip_and_no_loss_are_counted():
    (batch,), stats = pack_examples([A], batch_size=1, seq_length=4, overflow="truncate")
    check(batch, input_ids=[[1, 5, 5, 6]], targets=[[5, 5, 6, 0]], loss_weights=[[0, 0, 1, 0]])
    assert (stats["truncated"], stats["tokens_cut"]) == (1, 2)
    batches, stats = pack_examples([A, B], batch_size=1, seq_length=4, overflow="skip")
    assert len(batches) == 1 and stats["skipped_too_long"] == 1
    # a split whose first piece holds only the (loss-free) question: that piece is skipped, counted
    long_q = proc("[question],answer")({"question": "q q q q q", "answer": "a"})  # 1 q q q q q 6 2
    batches, stats = pack_examples([long_q], batch_size=4, seq_length=4, packing="pad")
    assert stats["pieces"] == 3 and stats["skipped_no_loss"] == 1 and stats["rows"] == 2
    assert batches[0]["input_ids"].tolist()[:2] == [[5, 5, 5, 6], [6, 2, 0, 0]]


def test_concat_is_lwm_no_pad():
    (batch,), stats = pack_examples([A, B], batch_size=2, seq_length=4, packing="concat")
    check(batch,
          input_ids=[[1, 5, 5, 6], [7, 2, 1, 6]],
          targets=[[5, 5, 6, 7], [2, 1, 6, 2]],  # the last target is the next row's first token
          loss_weights=[[0, 0, 0.5, 0.5], [1 / 3, 0, 1 / 3, 1 / 3]],  # row weighting
          segment_ids=[[1] * 4, [1] * 4],
          position_ids=[[0, 1, 2, 3]] * 2,
          attention_mask=[[T_] * 4] * 2)
    assert stats["tail_tokens_dropped"] == 1  # the final 2 is the last target and never an input
    (batch,), _ = pack_examples([A, B], batch_size=2, seq_length=4, packing="concat", weighting="token")
    assert batch["loss_weights"].tolist() == [[0, 0, 1, 1], [1, 0, 1, 1]]


def test_packer_rejects_bad_options():
    for kwargs in ({"packing": "dense"}, {"overflow": "wrap"}, {"packing": "concat", "weighting": "example"}):
        with pytest.raises(LWMError):
            Packer(8, **kwargs)


def test_through_the_committed_tokenizer():
    tok = load_tokenizer(TOKENIZER)
    spec = VisionSpec(tokens_per_frame=2, num_codes=8)
    qa = RecordProcessor(tok, "[question],answer", vision=spec)({"question": "hi", "answer": "a cat"})
    assert qa.tokens.tolist() == [1, 389, 259, 392, 2] and qa.loss.tolist() == [0, 0, 1, 1, 1]
    joined = RecordProcessor(tok, "question+answer", vision=spec)({"question": "hi", "answer": "a cat"})
    assert joined.tokens.tolist() == [1, 389, 259, 392, 2]  # one piece: "hi a cat"
    cap = RecordProcessor(tok, "[caption],vision", vision=spec)({"caption": "a cat", "vision": [7, 0]})
    (batch,), _ = pack_examples([qa, cap], batch_size=1, seq_length=20)
    t, v = 0.5 / 8, 0.5 / 3  # text targets: <vision> (285 269 483), </vision> (285 495 269 483), eos
    check(batch,
          input_ids=[[1, 389, 259, 392, 2, 1, 259, 392, 285, 269, 483, 7, 0, 8193, 285, 495, 269, 483, 2, 0]],
          targets=[[389, 259, 392, 2, 0, 259, 392, 285, 269, 483, 7, 0, 8193, 285, 495, 269, 483, 2, 0, 0]],
          loss_weights=[[0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 0, t, t, t, v, v, v, t, t, t, t, t, 0, 0]],
          segment_ids=[[1] * 5 + [2] * 14 + [0]],
          position_ids=[list(range(5)) + list(range(14)) + [0]],
          vision_masks=[[F] * 11 + [T_, T_, T_] + [F] * 6],
          target_vision=[[F] * 10 + [T_, T_, T_] + [F] * 7])


def test_packed_loss_equals_each_example_alone():
    """Masked packing keeps examples apart: the weighted CE summed over each segment of a packed row
    equals that example's weighted CE in a row of its own (and differs without segment ids)."""
    from lwm_core import load_model

    model = load_model("random:debug", vocab_size=97, hidden_size=48, intermediate_size=88, num_hidden_layers=2,
                       num_attention_heads=4, vision=True, max_sequence_length=128)
    rng = np.random.default_rng(0)

    def example(n_text, n_frames, vision_loss):
        text = rng.integers(3, 97, n_text)
        parts = [([1], 0.0, False), (text[: n_text // 2], 0.0, False), (text[n_text // 2:], 1.0, False)]
        if n_frames:
            codes = np.concatenate([np.append(rng.integers(0, 16, 2), 8192) for _ in range(n_frames)])
            codes[-1] = 8193
            parts += [([10, 11], vision_loss, False), (codes, vision_loss, True), ([12], vision_loss, False)]
        parts.append(([2], 1.0, False))
        return Example(np.concatenate([np.asarray(p[0]) for p in parts]),
                       np.concatenate([np.full(len(p[0]), p[1]) for p in parts]),
                       np.concatenate([np.full(len(p[0]), p[2]) for p in parts]))

    examples = [example(9, 3, 1.0), example(14, 0, 0.0), example(6, 2, 0.0), example(5, 4, 1.0)]
    T = 80  # the four examples take 23 + 16 + 17 + 22 = 78 tokens
    (packed,), _ = pack_examples(examples, batch_size=1, seq_length=T)
    assert packed["segment_ids"].max() == 4
    (alone,), _ = pack_examples(examples, batch_size=4, seq_length=T, packing="pad")

    def weighted_ce(batch, segments=True):
        keys = ("vision_masks", "attention_mask") + (("segment_ids", "position_ids") if segments else ())
        text_logits, vision_logits = model(batch["input_ids"], **{k: batch[k] for k in keys})
        text = np.asarray(text_logits, np.float64)
        vision = np.asarray(vision_logits, np.float64)
        tgt = batch["targets"][..., None]
        ce_t = -np.take_along_axis(text - np.logaddexp.reduce(text, -1, keepdims=True), np.minimum(tgt, 96), -1)[..., 0]
        ce_v = -np.take_along_axis(vision - np.logaddexp.reduce(vision, -1, keepdims=True), tgt, -1)[..., 0]
        return batch["loss_weights"] * np.where(batch["target_vision"], ce_v, ce_t)

    per_pos = weighted_ce(packed)[0]
    per_example_packed = [per_pos[packed["segment_ids"][0] == s].sum() for s in (1, 2, 3, 4)]
    per_example_alone = weighted_ce(alone).sum(axis=1)
    np.testing.assert_allclose(per_example_packed, per_example_alone, atol=1e-5, rtol=0)
    for k in range(4):  # every example's weights sum to 1: the trainer's loss is the mean over examples
        assert alone["loss_weights"][k].sum() == pytest.approx(1.0)
    # without segment ids and restarting positions the later examples see the earlier ones
    unmasked = {**packed, "segment_ids": None, "position_ids": None}
    per_pos = weighted_ce({k: v for k, v in unmasked.items() if v is not None}, segments=False)[0]
    leaked = [per_pos[packed["segment_ids"][0] == s].sum() for s in (2, 3, 4)]
    assert np.abs(np.array(leaked) - per_example_alone[1:]).max() > 1e-3
