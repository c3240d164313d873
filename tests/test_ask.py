"""`ask` in the library: LWM's chat input as literal ids and vision mask, greedy answers against an argmax
loop over full forward passes, one read + encode per video (and none with a warm --cache-dir), --chat's
follow-up turn against prefilling the whole conversation, the one-line refusals, and the crop offset."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from lwm_core import LWMError, ModelConfig, load_model
from lwm_core.infer import Sampler
from lwm_core.infer.ask import Asker, parse_memory
from lwm_core.infer.vision_prompt import vision_spec
from lwm_core.text import load_tokenizer
from lwm_core.video import preprocess_frames, read_video
from lwm_core.vqgan import VQGANConfig, load_vqgan

from test_video import make_video  # noqa: E402  (tests/ is on sys.path under pytest)

TOKENIZER = "tests/data/tokenizer/tokenizer.model"
CONFIG = ModelConfig(vocab_size=512, hidden_size=40, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
                     max_sequence_length=256, initializer_range=0.2, vision=True, vision_vocab_size=8448)
TPF = 16  # the tiny VQGAN: 64x64 frames -> 4x4 codes

# The fixture tokenizer's pieces for LWM's chat text, worked out from the rules in LWM_FACTS ("How LWM
# tokenizes a prompt"): each call gets its own dummy-prefix '▁', unknown characters fall back to bytes.
PREFIX_PIECES = ["<s>", "▁You", "▁are", "▁a", "▁helpful", "▁assistant", ".", "▁USER", ":", "▁", "<0x57>", "h", "at",
                 "▁is", "▁i", "t", "<0x3F>", "<0x0A>",  # "... USER: What is it?\n"
                 "▁<", "vision", ">"]  # enc("<vision>")
SUFFIX_PIECES = ["▁<", "/", "vision", ">",  # enc("</vision>")
                 "▁", "▁ASSISTANT", ":"]  # enc(" ASSISTANT:"): its own space, then the prefix
PREFIX_IDS = [1, 296, 297, 259, 302, 304, 485, 299, 476, 460, 90, 472, 267, 323, 276, 467, 66, 13, 285, 269, 483]
SUFFIX_IDS = [285, 495, 269, 483, 460, 303, 476]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TOKENIZER)


@pytest.fixture(scope="module")
def vq():
    return load_vqgan("random:tiny")


@pytest.fixture(scope="module")
def model():
    return load_model("random:debug", CONFIG)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("ask") / "three.mp4"
    make_video(path, w=90, h=70, n=3)
    return path


@pytest.fixture(scope="module")
def asker(model, tok, vq):
    return Asker(model, tok, vq)


def test_fixture_pieces_are_the_literal_ids(tok):
    assert [tok.id_to_piece(i) for i in PREFIX_IDS] == PREFIX_PIECES
    assert [tok.id_to_piece(i) for i in SUFFIX_IDS] == SUFFIX_PIECES


@pytest.mark.parametrize("layout,ends", [("chat", [8193, 8193, 8193]), ("training", [8192, 8192, 8193])])
def test_three_frame_video_input_is_lwm_chat_input(model, tok, vq, clip, layout, ends):
    asker = Asker(model, tok, vq, frame_layout=layout)
    media = asker.media(clip)
    frames, indices = read_video(clip)
    assert len(frames) == 3 and media.frames.tolist() == [0, 1, 2] == indices.tolist()
    codes = vq.encode(preprocess_frames(frames, 64)).reshape(3, TPF)  # independent of the Asker's path
    prompt = asker.prompt("What is it?", media)
    expected = PREFIX_IDS + [int(c) for f in range(3) for c in [*codes[f], ends[f]]] + SUFFIX_IDS
    assert prompt.ids.tolist() == expected
    assert prompt.vision_mask.tolist() == [False] * 21 + [True] * 3 * (TPF + 1) + [False] * 7
    assert prompt.ids.dtype == np.int32


@pytest.mark.parametrize("layout", ["chat", "training"])
def test_an_image_is_one_frame_ending_in_eov(model, tok, vq, tmp_path, layout):
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "still.png")
    asker = Asker(model, tok, vq, frame_layout=layout)
    prompt = asker.prompt("What is it?", asker.media(tmp_path / "still.png"))
    codes = vq.encode(preprocess_frames(image[None], 64)).reshape(-1)
    assert prompt.ids.tolist() == PREFIX_IDS + codes.tolist() + [8193] + SUFFIX_IDS
    assert prompt.vision_mask.sum() == TPF + 1


@jax.jit
def _forward(state, ids, vis):
    return nnx.merge(_GRAPH[0], state)(ids, vision_masks=vis)[0]  # text logits [1, W, V]


_GRAPH = []


def _argmax_loop(model, ids, vmask, steps, eos=2, width=160):
    """Greedy answer by full forward passes (no cache), the text head at every new position. Inputs are
    right-padded to `width` (causal: no effect on earlier positions) so one compile serves all."""
    graphdef, state = nnx.split(model)
    _GRAPH[:] = [graphdef]
    ids, vis, out = list(ids), list(vmask), []
    for _ in range(steps):
        n = len(ids)
        logits = _forward(state, jnp.asarray([ids + [0] * (width - n)]), jnp.asarray([vis + [False] * (width - n)]))
        token = int(jnp.argmax(logits[0, n - 1]))
        if token == eos:
            break
        out.append(token)
        ids.append(token)
        vis.append(False)
    return out


def test_greedy_ask_equals_argmax_over_full_forward_passes(model, asker, clip):
    media = asker.media(clip)
    questions = ["What is it?", "Which shapes move across the frame, and where do they go?"]  # different lengths
    answers = asker.ask([(q, media) for q in questions], max_new_tokens=7)
    for answer in answers:
        expected = _argmax_loop(model, answer.prompt_ids, answer.vision_mask.tolist(), 7)
        assert answer.answer_ids == expected
        assert answer.stopped == ("length" if len(expected) == 7 else "eos")
        assert answer.answer == asker.tokenizer.decode(expected)
    assert answers[0].prompt_ids != answers[1].prompt_ids


def test_several_questions_read_and_encode_the_video_once(model, tok, vq, clip, tmp_path):
    calls = []
    counting = lambda frames: calls.append(len(frames)) or vq.encode(frames)  # noqa: E731
    spy = type("Spy", (), {"encode": staticmethod(counting), "config": vq.config, "identity": vq.identity,
                           "batch_size": vq.batch_size})()
    asker = Asker(model, tok, spy, cache_dir=tmp_path / "codes")
    items = [(q, asker.media(clip)) for q in ("What is it?", "Why?", "What next?")]
    answers = asker.ask(items, max_new_tokens=2)
    assert calls == [3] and asker.encoded == 1
    assert [a.media_origin for a in answers] == ["encoded", "memory", "memory"]
    # a later run with the same --cache-dir reads the token file instead of encoding
    again = Asker(model, tok, spy, cache_dir=tmp_path / "codes")
    media = again.media(clip)
    assert calls == [3] and again.encoded == 0 and media.origin == "cache-dir"
    np.testing.assert_array_equal(media.codes, items[0][1].codes)
    assert len(list((tmp_path / "codes").glob("three-*.npz"))) == 1


@pytest.mark.parametrize("stop", ["length", "eos"])
def test_chat_second_turn_equals_prefilling_the_whole_conversation(model, tok, vq, asker, clip, stop):
    media = asker.media(clip)
    if stop == "eos":  # make the first answer stop at eos: call the token it gives third the eos id
        tok = copy.copy(tok)
        tok.eos_id = asker.ask([("What is it?", media)], max_new_tokens=3)[0].answer_ids[2]
        asker = Asker(model, tok, vq)
        media = asker.media(clip)
    eos = tok.eos_id
    first, second = asker.chat(media, ["What is it?", "And then?"], max_new_tokens=5)
    assert first.stopped == stop and len(first.answer_ids) == (5 if stop == "length" else 2)
    followup = [eos] + tok.encode_prompt("USER: And then?") + tok.encode(" ASSISTANT:")
    assert second.prompt_ids == first.prompt_ids + first.answer_ids + followup
    assert second.vision_mask.tolist() == first.vision_mask.tolist() + [False] * (len(first.answer_ids) + len(followup))
    [alone] = asker.ask([("What is it?", media)], max_new_tokens=5)
    assert first.answer_ids == alone.answer_ids
    whole = Sampler(model).generate([second.prompt_ids], vision_masks=[second.vision_mask], max_new_tokens=5,
                                    eos_token_id=eos)
    expected = whole.tokens[0, :whole.lengths[0]].tolist()
    assert second.answer_ids == [t for t in expected if t != eos]
    assert second.answer_ids == _argmax_loop(model, second.prompt_ids, second.vision_mask.tolist(), 5, eos=eos)


def test_refusals_are_one_line(model, tok, vq, asker, clip, tmp_path):
    text_only = load_model("random:debug", CONFIG.replace(vision=False))
    with pytest.raises(LWMError, match="text-only model"):
        Asker(text_only, tok, vq)
    with pytest.raises(LWMError, match="9000 codes"):
        vision_spec(CONFIG, VQGANConfig.from_name("tiny", num_embeddings=9000))
    media = asker.media(clip)
    with pytest.raises(LWMError, match="over the model's max_sequence_length 256"):
        asker.ask([("why " * 200, media)], max_new_tokens=4)
    with pytest.raises(LWMError, match="over --max-memory"):
        Asker(model, tok, vq, max_memory=1000).ask([("Why?", media)], max_new_tokens=4)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.mp4").write_text("not a video")
    for path, message in [(tmp_path / "empty", "no images in this folder"), (tmp_path / "bad.mp4", "not a readable"),
                          (tmp_path / "gone.mp4", "no such video")]:
        with pytest.raises(LWMError, match=message) as err:
            asker.media(path)
        assert "\n" not in str(err.value)


def test_parse_memory():
    assert parse_memory("24GiB") == 24 * 2**30 and parse_memory("512M") == 512 * 2**20
    assert parse_memory("1.5t") == int(1.5 * 2**40) and parse_memory("1000") == 1000
    with pytest.raises(LWMError, match="cannot read memory size"):
        parse_memory("lots")


def test_preprocess_crop_offset_rounds_half_to_even_like_pil():
    # 423 - 256 = 167: LWM's box starts at 83.5, which PIL rounds to 84 (Python's round), not 83
    frame = np.random.default_rng(2).integers(0, 256, (256, 423, 3), dtype=np.uint8)
    reference = Image.fromarray(frame).crop(((423 - 256) / 2, 0, (423 + 256) / 2, 256))  # LWM's float box
    np.testing.assert_array_equal(preprocess_frames(frame[None])[0], np.asarray(reference, np.float32) / 127.5 - 1.0)
    np.testing.assert_array_equal(preprocess_frames(frame[None])[0], frame[:, 84:340] / np.float32(127.5) - 1.0)
    tall = np.random.default_rng(3).integers(0, 256, (425, 256, 3), dtype=np.uint8)  # 84.5 -> 84
    np.testing.assert_array_equal(preprocess_frames(tall[None])[0], tall[84:340] / np.float32(127.5) - 1.0)


@pytest.mark.slow
def test_chat_on_a_mesh_gives_the_single_device_answers(model, tok, vq, asker, clip):
    from lwm_core import make_mesh

    questions = ["What is it?", "And then?"]
    single = asker.chat(asker.media(clip), questions, max_new_tokens=5)
    sharded = Asker(load_model("random:debug", CONFIG, mesh=make_mesh("1,2,2,2")), tok, vq)
    on_mesh = sharded.chat(sharded.media(clip), questions, max_new_tokens=5)
    assert [a.answer_ids for a in on_mesh] == [a.answer_ids for a in single]
    assert [a.prompt_ids for a in on_mesh] == [a.prompt_ids for a in single]


def test_ids_past_the_tokenizers_vocabulary_have_no_text(model, tok, vq, clip):
    small = copy.copy(tok)
    small.vocab_size = 300  # the model's 512 text ids are a vocabulary padded past this tokenizer's
    asker = Asker(model, small, vq)
    [answer] = asker.ask([("What is it?", asker.media(clip))], max_new_tokens=7)
    beyond = [i for i in answer.answer_ids if i >= 300]
    assert beyond, answer.answer_ids  # the case is exercised
    assert answer.answer == tok.decode([i for i in answer.answer_ids if i < 300])
