"""`lwm generate` end to end with a tiny random vision model and the tiny random VQGAN (64x64 frames, 4x4
codes): files open with the requested frames and size, --json, --save-tokens through `lwm tokenize-video
--decode`, and bad input as one line, exit 2 and no output file."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lwm_cli.main import app
from lwm_core import load_model
from lwm_core.config import ModelConfig
from lwm_core.text import load_tokenizer
from lwm_core.token_files import load_tokens
from lwm_core.video import read_video, to_uint8
from lwm_core.vqgan import VQGANConfig, load_vqgan

runner = CliRunner()
TOKENIZER = Path(__file__).parent / "data" / "tokenizer" / "tokenizer.model"
CONFIG = ModelConfig(vocab_size=512, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                     max_sequence_length=256, initializer_range=0.2, vision=True, vision_vocab_size=8448)


@pytest.fixture(scope="module")
def model_args(tmp_path_factory):
    root = tmp_path_factory.mktemp("configs")
    (root / "vision.json").write_text(CONFIG.to_json())
    (root / "text.json").write_text(CONFIG.replace(vision=False).to_json())
    return {kind: ["--checkpoint", "random:debug", "--config", str(root / f"{kind}.json"), "--tokenizer",
                   str(TOKENIZER), "--vqgan", "random:tiny"] for kind in ("vision", "text")}


def _generate(*args):
    return runner.invoke(app, ["generate", *map(str, args)])


def test_an_image_its_json_and_its_tokens_through_tokenize_video_decode(model_args, tmp_path):
    r = _generate("a red fox", "--out", tmp_path / "fox.png", "--save-tokens", tmp_path / "fox.npz", "--json",
                  "--seed", 3, "--max-memory", "1GiB", *model_args["vision"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    tok = load_tokenizer(TOKENIZER)
    prompt = [1] + tok.encode("You are a helpful assistant. USER: Generate an image of a red fox ASSISTANT: <vision>")
    assert report["prompt_ids"] == prompt and report["uncond_prompt_ids"] == [1] + tok.encode("<vision>")
    assert report["context_tokens"] == len(prompt) + 17 and report["files"] == [str(tmp_path / "fox.png")]
    assert f"context {len(prompt) + 17} tokens of 256" in r.stderr
    # weights + k and v [2 layers, 2 rows (cfg 5), 2 heads, 256 slots, 16] + the 24-token prompt chunk's
    # activations (2 rows x 24 x (6 x 32 + 3 x 40)), all float32
    weights = sum(v.nbytes for v in load_model("random:debug", CONFIG).params_dict().values())
    assert report["memory_per_device"] == weights + 2 * (2 * 2 * 2 * 256 * 16) * 4 + 2 * 24 * (6 * 32 + 3 * 40) * 4
    assert "MiB per device of --max-memory 1.00 GiB" in r.stderr
    ids = np.array(report["vision_ids"][0])
    assert ids.shape == (17,) and ids[16] == 8192 and (ids[:16] < 512).all()

    tokens = load_tokens(tmp_path / "fox.npz")
    np.testing.assert_array_equal(tokens.codes, ids[:16].reshape(1, 4, 4))
    assert tokens.fps == 0.0 and tokens.vqgan_id.startswith("random:tiny:seed0:")
    pixels = load_vqgan("random:tiny").decode(tokens.codes)  # [1, 64, 64, 3] in [-1, 1]
    image = np.asarray(Image.open(tmp_path / "fox.png"))
    np.testing.assert_array_equal(image, ((pixels[0] + 1) * 127.5).astype(np.uint8))  # LWM truncates

    r = runner.invoke(app, ["tokenize-video", "--decode", str(tmp_path / "fox.npz"), "--out", str(tmp_path / "b.png"),
                            "--vqgan", "random:tiny"])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")), to_uint8(pixels[0]))  # it rounds


def test_video_samples_open_with_their_frame_count_and_size(model_args, tmp_path):
    r = _generate("a red fox", "--frames", 3, "--n", 2, "--out", tmp_path / "fox.mp4", "--save-tokens",
                  tmp_path / "fox.npz", "--top-k-video", 50, *model_args["vision"])
    assert r.exit_code == 0, r.output
    assert "2 samples" in r.stderr and "frames" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fox_0.mp4", "fox_0.npz", "fox_1.mp4", "fox_1.npz"]
    codes = []
    for i in range(2):
        frames, _ = read_video(tmp_path / f"fox_{i}.mp4")
        assert frames.shape == (3, 64, 64, 3)
        tokens = load_tokens(tmp_path / f"fox_{i}.npz")
        assert tokens.codes.shape == (3, 4, 4) and tokens.fps == 4.0
        codes.append(tokens.codes)
    assert not np.array_equal(codes[0], codes[1])  # two samples, not one written twice

    r = runner.invoke(app, ["tokenize-video", "--decode", str(tmp_path / "fox_1.npz"), "--out",
                            str(tmp_path / "back.gif"), "--vqgan", "random:tiny"])
    assert r.exit_code == 0, r.output
    gif = Image.open(tmp_path / "back.gif")
    assert gif.n_frames == 3 and gif.size == (64, 64)


def _read_only(tmp):
    real = Path.write_bytes

    def write_bytes(self, data):  # chmod does not stop root (CI): fail writes as a read-only folder would
        if self.parent == tmp:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, data)

    return write_bytes


BIG_VQGAN = VQGANConfig.from_name("tiny", num_embeddings=16384).to_json()


@pytest.mark.parametrize("args, message", [
    (["a fox", "--out", "{tmp}/x.png", "--model", "text"], "text-only model"),
    (["a fox", "--out", "{tmp}/x.png", "--vqgan-config", BIG_VQGAN, "--model", "vision"], "the VQGAN has 16384 codes"),
    (["a fox", "--out", "{tmp}/x.gif", "--frames", "20", "--model", "vision"], "over the model's max_sequence_length"),
    (["a fox", "--out", "{tmp}/x.jpg", "--model", "vision"], "cannot write .jpg"),
    (["a fox", "--out", "{tmp}/x.png", "--frames", "2", "--model", "vision"], "a PNG holds one image"),
    (["a fox", "--out", "{tmp}/x.gif", "--save-tokens", "{tmp}/t.txt", "--model", "vision"], "end in .npz"),
    (["a fox", "--out", "{tmp}/x.png", "--model", "vision", "--read-only"], "cannot write the output in"),
    (["a fox", "--out", "{tmp}/x.png", "--cfg", "-1", "--model", "vision"], "cfg must be >= 0"),
    (["a fox", "--out", "{tmp}/x.png", "--max-memory", "lots", "--model", "vision"], "cannot read memory size"),
    (["--out", "{tmp}/x.png"], "give a prompt"),
])
def test_bad_input_is_one_line_exit_2_and_no_output(model_args, tmp_path, monkeypatch, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--model" in args:
        at = args.index("--model")
        args[at:at + 2] = model_args[args[at + 1]]
    if "--read-only" in args:
        args.remove("--read-only")
        monkeypatch.setattr(Path, "write_bytes", _read_only(tmp_path))
    r = runner.invoke(app, ["generate", *args])
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], r.output
    assert "Traceback" not in r.output and list(tmp_path.iterdir()) == []


def test_a_memory_budget_too_small_is_refused_before_sampling(model_args, tmp_path, monkeypatch):
    from lwm_core.infer import Sampler

    def no_prefill(*args, **kwargs):
        raise AssertionError("sampled despite --max-memory")

    monkeypatch.setattr(Sampler, "prefill", no_prefill)
    r = _generate("a red fox", "--out", tmp_path / "fox.png", "--save-tokens", tmp_path / "fox.npz",
                  "--max-memory", "2MiB", *model_args["vision"])
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "over --max-memory 2.0 MiB; use fewer --frames" in errors[0], r.output
    assert "context " in r.stderr.split("error:")[0]  # the context is stated first
    assert "Traceback" not in r.output and list(tmp_path.iterdir()) == []


def test_a_write_that_fails_midway_leaves_no_file(model_args, tmp_path, monkeypatch):
    import lwm_core.video

    def disk_full(frames, path, fps):
        Path(path).write_text("half a video")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lwm_core.video, "_write_mp4", disk_full)
    r = _generate("a red fox", "--out", tmp_path / "fox.mp4", *model_args["vision"])
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], r.output
    assert list(tmp_path.iterdir()) == []
