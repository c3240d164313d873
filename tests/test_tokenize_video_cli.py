"""`lwm tokenize-video` end to end with the tiny random VQGAN (64x64 frames -> 4x4 codes)."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lwm_cli.main import app
from lwm_core.token_files import load_tokens
from lwm_core.video import read_video

from test_video import make_video  # noqa: E402  (tests/ is on sys.path under pytest)

runner = CliRunner()
VQ = ["--vqgan", "random:tiny"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    make_video(root / "shapes.mp4")
    (root / "sub").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(
        root / "sub" / "still.png")
    (root / "broken.mp4").write_text("not a video at all")
    return root


def _run(*args):
    return runner.invoke(app, ["tokenize-video", *map(str, args)])


@pytest.mark.slow
def test_folder_run_resume_and_decode(clips, tmp_path):
    out = tmp_path / "tokens"
    r = _run(clips, "--out", out, "--max-frames", 9, *VQ)
    assert r.exit_code == 2, r.output  # one bad file: reported, the rest done
    assert "2 tokenized" in r.output and "1 failed" in r.output
    assert "broken.mp4" in r.output and "not a readable video" in r.output
    assert "UNTRAINED" in r.output
    video = load_tokens(out / "shapes.npz")
    assert video.codes.shape == (9, 4, 4) and video.codes.dtype == np.uint16
    np.testing.assert_array_equal(video.frame_indices, np.linspace(0, 36, 9, dtype=int))
    assert video.fps == pytest.approx(10.0) and video.source.endswith("shapes.mp4")
    assert video.vqgan_id.startswith("random:tiny:seed0:")
    still = load_tokens(out / "sub" / "still.npz")
    assert still.codes.shape == (1, 4, 4)

    r = _run(clips, "--out", out, "--max-frames", 9, *VQ)  # resumable: nothing redone
    assert "0 tokenized" in r.output and "2 already done" in r.output

    r = _run("--decode", out / "shapes.npz", "--out", tmp_path / "x.mp4", *VQ)
    assert r.exit_code == 0, r.output
    frames, _ = read_video(tmp_path / "x.mp4")
    assert frames.shape == (9, 64, 64, 3)
    r = _run("--decode", out / "shapes.npz", "--out", tmp_path / "x.gif", *VQ)
    assert r.exit_code == 0 and Image.open(tmp_path / "x.gif").n_frames == 9
    r = _run("--decode", out / "sub" / "still.npz", "--out", tmp_path / "still.png", *VQ)
    assert r.exit_code == 0 and Image.open(tmp_path / "still.png").size == (64, 64)


def test_decode_with_another_vqgan_warns(clips, tmp_path):
    _run(clips / "sub" / "still.png", "--out", tmp_path, *VQ)
    r = _run("--decode", tmp_path / "still.npz", "--out", tmp_path / "f", "--vqgan", "random:tiny:3")
    assert r.exit_code == 0 and "warning" in r.output
    assert len(list((tmp_path / "f").glob("frame_*.png"))) == 1


def test_conv_choice_reaches_the_tokenizer(clips, tmp_path):
    codes = {}
    for conv in ("direct", "winograd"):
        r = _run(clips / "sub" / "still.png", "--out", tmp_path / conv, "--conv", conv, *VQ)
        assert r.exit_code == 0 and f"{conv} convs" in r.output, r.output
        codes[conv] = load_tokens(tmp_path / conv / "still.npz").codes
    np.testing.assert_array_equal(codes["direct"], codes["winograd"])


@pytest.mark.parametrize("args, message", [
    (["{empty}", "--out", "{tmp}/t", *VQ], "no videos or images in this folder"),
    (["{clips}/shapes.mp4", "--out", "{tmp}/t", "--vqgan", "/no/such.pkl"], "VQGAN weights not found"),
    (["{clips}/broken.mp4", "--out", "{tmp}/t", *VQ], "not a readable video"),
    (["{tmp}/nothing.mp4", "--out", "{tmp}/t", *VQ], "no such file"),
    (["--decode", "{tmp}/none.npz", "--out", "{tmp}/x.mp4", *VQ], "no such token file"),
    (["{clips}", "--out", "{tmp}/t"], "--vqgan is required"),
    (["{clips}/sub/still.png", "--out", "{tmp}/t", "--conv", "fast", *VQ], "unknown VQGAN conv implementation"),
])
def test_bad_input_is_one_line_and_exit_2(clips, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty", tmp=tmp_path, clips=clips) for a in args]
    r = runner.invoke(app, ["tokenize-video", *args])
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.startswith(("error:", "failed:"))]
    assert len(errors) == 1 and message in errors[0], r.output
    assert "Traceback" not in r.output
