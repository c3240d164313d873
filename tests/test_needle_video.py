"""LongVA's visual needle: the needle frame lands where the depth says, teacher-forced scoring agrees
with the sampler's greedy tokens, and `lwm needle --video` runs end to end with a tiny VQGAN on 4
simulated devices (JSON + PNG; accuracy not asserted) or refuses in one line before the model loads."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lwm_cli.main import app
from lwm_core import ModelConfig, Sampler, load_model
from lwm_core.evals.visual import VisualSettings, needle_frame, run_visual, teacher_forced, visual_prompt
from lwm_core.infer.vision_prompt import read_media_codes, vision_spec
from lwm_core.text import load_tokenizer
from lwm_core.vqgan import load_vqgan

from test_video import make_video  # noqa: E402  (tests/ is on sys.path under pytest)

TOKENIZER = "tests/data/tokenizer/tokenizer.model"
CONFIG = ModelConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     max_sequence_length=1024, initializer_range=0.2, vision=True, vision_vocab_size=8448)
runner = CliRunner()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vniah")
    make_video(folder / "hay.mp4", w=90, h=70, n=12)
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(folder / "needle.png")
    (folder / "vis.json").write_text(CONFIG.to_json())
    (folder / "text.json").write_text(CONFIG.replace(vision=False).to_json())
    (folder / "short.json").write_text(CONFIG.replace(max_sequence_length=128).to_json())
    return folder


@pytest.fixture(scope="module")
def coded(media):
    """(tokenizer, frame spec, haystack codes [8, 16], needle codes [1, 16]), encoded once."""
    tok, vq = load_tokenizer(TOKENIZER), load_vqgan("random:tiny")
    hay = read_media_codes(media / "hay.mp4", vq, max_frames=8, fps=10).codes
    needle = read_media_codes(media / "needle.png", vq, max_frames=1).codes
    return tok, vision_spec(CONFIG, vq.config), hay, needle


def test_needle_frame_sits_at_the_depth_between_haystack_frames(coded):
    tok, spec, hay, needle = coded
    for depth, frame in ((0, 0), (50, 4), (100, 8), (30, 2)):
        assert needle_frame(8, depth) == frame
        prompt, pos = visual_prompt(tok, spec, hay, needle, 8, depth, "What is it?")
        step = spec.tokens_per_frame + 1
        assert prompt.vision_mask.sum() == 9 * step and prompt.vision_mask[pos:pos + step].all()
        assert prompt.ids[pos:pos + 16].tolist() == needle[0].tolist()
        first = int(np.argmax(prompt.vision_mask))
        frames = prompt.ids[first:first + 9 * step].reshape(9, step)[:, :16]  # [9, 16]
        expected = np.concatenate([hay[:frame], needle, hay[frame:]])
        np.testing.assert_array_equal(frames, expected)


def test_teacher_forced_agrees_with_the_samplers_greedy_tokens(coded, tmp_path):
    tok, spec, hay, needle = coded
    model = load_model("random:debug", CONFIG)
    prompt, _ = visual_prompt(tok, spec, hay, needle, 4, 50, "What is it?")
    out = Sampler(model, chunk_size=64).generate([prompt.ids], vision_masks=[prompt.vision_mask], max_new_tokens=4)
    greedy = out.tokens[0]
    assert teacher_forced(model, prompt.ids, prompt.vision_mask, greedy)
    wrong = greedy.copy()
    wrong[2] = (wrong[2] + 1) % 512
    assert not teacher_forced(model, prompt.ids, prompt.vision_mask, wrong)
    # and through the grid runner: greedy tokens as the answer text are scored correct at every depth
    settings = VisualSettings(frame_counts=(4,), depths=(0.0, 100.0), question="What is it?", answer="x",
                              scoring="teacher-forced", batch_size=2)
    records = run_visual(Sampler(model, chunk_size=64), tok, spec, hay, needle, settings, tmp_path / "tf.json")
    assert [r["needle_frame"] for r in records] == [0, 4] and all(r["scoring"] == "teacher-forced" for r in records)


def _video_args(media, out, *extra):
    return ["needle", "--video", str(media / "hay.mp4"), "--needle-image", str(media / "needle.png"),
            "--question", "What colour is the frame?", "--answer", "grey", "--fps", "10", "--depths", "0,50,100",
            "--checkpoint", "random:debug", "--tokenizer", TOKENIZER, "--vqgan", "random:tiny",
            "--max-new-tokens", "4", "--out", str(out), *extra]


@pytest.mark.slow
def test_video_needle_runs_end_to_end_on_4_devices(media, tmp_path):
    out = tmp_path / "v.json"
    scoring = "generate"  # teacher-forced scoring is checked against the sampler above
    result = runner.invoke(app, _video_args(media, out, "--frames", "4,8", "--config", str(media / "vis.json"),
                                            "--mesh", "1,1,1,4"))
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert [(r["frames"], r["depth_percent"]) for r in records] == [
        (4, 0.0), (4, 50.0), (4, 100.0), (8, 0.0), (8, 50.0), (8, 100.0)]
    assert all(r["scoring"] == scoring and isinstance(r["correct"], bool) for r in records)
    assert [r["needle_frame"] for r in records] == [0, 2, 4, 0, 4, 8]
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "6 trials, mean score" in result.output


def test_video_needle_refuses_in_one_line_before_the_model_loads(media, tmp_path, monkeypatch):
    import lwm_core.loading

    monkeypatch.setattr(lwm_core.loading, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    out = tmp_path / "v.json"
    cases = [
        (["--frames", "4", "--config", str(media / "text.json")], "text-only model"),
        (["--frames", "40", "--config", str(media / "vis.json")], "fewer than the 40 asked"),
        (["--frames", "8", "--config", str(media / "short.json")], "exceeds the model's max_sequence_length 128"),
        (["--frames", "4", "--config", str(media / "vis.json"), "--score", "both"], "--score must be one of"),
    ]
    for extra, phrase in cases:
        result = runner.invoke(app, _video_args(media, out, *extra))
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and phrase in lines[0], result.output
    missing = runner.invoke(app, ["needle", "--video", str(media / "hay.mp4"), "--checkpoint", "random:debug",
                                  "--tokenizer", TOKENIZER, "--vqgan", "random:tiny"])
    assert missing.exit_code == 2 and "--needle-image, --question, --answer and --frames" in missing.output
    assert not out.exists()
