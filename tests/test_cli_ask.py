"""`lwm ask` end to end with a tiny random vision model, the fixture tokenizer and a tiny VQGAN file:
the --json answer is the library's, several questions encode the video once, --chat, a .jsonl of
questions written whole, and every bad input is one line with exit code 2 and no output file."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lwm_cli.main import app
from lwm_core import ModelConfig, load_model
from lwm_core.infer import ask as ask_module
from lwm_core.infer.ask import Asker
from lwm_core.text import load_tokenizer
from lwm_core.vqgan import VQGANConfig, load_vqgan, write_vqgan
from lwm_core.vqgan.model import init_vqgan
from lwm_core.vqgan.params_lwm import model_to_lwm

from test_video import make_video  # noqa: E402  (tests/ is on sys.path under pytest)

runner = CliRunner()
TOKENIZER = "tests/data/tokenizer/tokenizer.model"
CONFIG = ModelConfig(vocab_size=512, hidden_size=40, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
                     max_sequence_length=256, initializer_range=0.2, vision=True, vision_vocab_size=8448)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_ask")
    (root / "tiny.json").write_text(CONFIG.to_json())
    (root / "text.json").write_text(CONFIG.replace(vision=False).to_json())
    for name, config in [("vq.safetensors", VQGANConfig.from_name("tiny")),
                         ("vq9000.safetensors", VQGANConfig.from_name("tiny", num_embeddings=9000))]:
        write_vqgan(model_to_lwm(init_vqgan(config, 0)), config, root / name)
    make_video(root / "clip.mp4", w=90, h=70, n=3)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(root / "still.png")
    (root / "empty").mkdir()
    (root / "broken.mp4").write_text("not a video at all")
    return root


_LOADED = {}


def _cached(kind, load, path, config=None, **kw):
    key = (kind, str(path), str(config), repr(sorted((k, v) for k, v in kw.items() if v is not None)))
    if key not in _LOADED:
        _LOADED[key] = load(path, config, **kw)
    return _LOADED[key]


@pytest.fixture
def fast(monkeypatch):
    """The CLI's loaders, remembered per argument across tests: each model or VQGAN is built (and its
    encoder compiled) once per module instead of once per command. The loading itself is tested by
    `test_json_answers_are_the_librarys_and_the_video_is_encoded_once`, which does not use this."""
    import lwm_core
    import lwm_core.vqgan

    real_model, real_vqgan = lwm_core.load_model, lwm_core.vqgan.load_vqgan
    monkeypatch.setattr(lwm_core, "load_model", lambda *a, **k: _cached("model", real_model, *a, **k))
    monkeypatch.setattr(lwm_core.vqgan, "load_vqgan", lambda *a, **k: _cached("vqgan", real_vqgan, *a, **k))


def _args(files, config="tiny.json", vqgan="vq.safetensors"):
    return ["--checkpoint", "random:debug", "--config", str(files / config), "--tokenizer", TOKENIZER,
            "--vqgan", str(files / vqgan), "--max-new-tokens", "4"]


def _run(*args):
    return runner.invoke(app, ["ask", *map(str, args)])


def _one_error_line(result):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def library(files):
    """The same model, tokenizer and VQGAN as the commands below, through the library."""
    model = _cached("model", load_model, "random:debug", str(files / "tiny.json"))
    return Asker(model, load_tokenizer(TOKENIZER), _cached("vqgan", load_vqgan, str(files / "vq.safetensors")))


def _library_answer(library, files, question, video="clip.mp4"):
    return library.ask([(question, library.media(files / video))], max_new_tokens=4)[0]


def test_without_a_checkpoint_a_missing_lwm_tiny_is_one_line(files, tmp_path, monkeypatch):
    monkeypatch.setattr("lwm_core.tiny.TINY_DIR", tmp_path)  # a broken install: the default model's files gone
    line = _one_error_line(_run(files / "clip.mp4", "What is it?"))
    assert "lwm-tiny is incomplete" in line and "--checkpoint" in line


def test_json_answers_are_the_librarys_and_the_video_is_encoded_once(files, library, monkeypatch):
    reads = []
    real = ask_module.read_media_codes
    monkeypatch.setattr(ask_module, "read_media_codes", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    (files / "qs.txt").write_text("Why?\n\nWhat next?\n")
    result = _run(files / "clip.mp4", "What is it?", "-q", "Who?", "--questions", files / "qs.txt", "--json",
                  *_args(files))
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [a["question"] for a in answers] == ["What is it?", "Who?", "Why?", "What next?"]
    assert len(reads) == 1 and [a["media"] for a in answers] == ["encoded"] + ["memory"] * 3
    got, want = answers[0], _library_answer(library, files, "What is it?")
    assert got["prompt_ids"] == want.prompt_ids and got["answer_ids"] == want.answer_ids
    assert got["answer"] == want.answer and got["frames"] == [0, 1, 2]
    assert got["vision_spans"] == [[21, 21 + 3 * 17]]
    assert got["context_tokens"] == len(want.prompt_ids) + 4
    assert set(got["timings"]) == {"read", "vqgan", "prefill", "decode"}
    assert "context: " in result.stderr and f"{len(want.prompt_ids) + 4} tokens" in result.stderr
    assert answers[2]["answer_ids"] == _library_answer(library, files, "Why?").answer_ids


def test_text_mode_streams_the_answer(files, library, fast):
    result = _run(files / "clip.mp4", "What is it?", *_args(files))
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip("\n") == _library_answer(library, files, "What is it?").answer.rstrip("\n")


def test_chat_appends_turns(files, fast):
    result = _run(files / "clip.mp4", "What is it?", "-q", "And then?", "--chat", "--json", *_args(files))
    assert result.exit_code == 0, result.output
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert second["prompt_ids"][:len(first["prompt_ids"]) + 4] == first["prompt_ids"] + first["answer_ids"]
    assert second["prompt_ids"][len(first["prompt_ids"]) + 4] == 2  # the first answer closed with eos


def test_questions_jsonl_are_answered_in_batches_and_written_whole(files, library, fast):
    qa = files / "qa.jsonl"
    qa.write_text("\n".join(json.dumps(r) for r in [{"video": "clip.mp4", "question": "What is it?", "id": 7},
                                                    {"video": "still.png", "question": "What colour?"},
                                                    {"video": "clip.mp4", "question": "Why?"}]) + "\n")
    out = files / "answers.jsonl"
    result = _run("--questions", qa, "--out", out, "--batch-size", 2, *_args(files))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question"] for r in rows] == ["What is it?", "What colour?", "Why?"]
    assert rows[0]["id"] == 7 and rows[1]["video"] == "still.png" and rows[1]["frames"] == [0]
    for row, (question, video) in zip(rows, [("What is it?", "clip.mp4"), ("What colour?", "still.png"),
                                             ("Why?", "clip.mp4")], strict=True):
        assert row["answer_ids"] == _library_answer(library, files, question, video).answer_ids  # batched = alone

    qa.write_text(json.dumps({"video": "clip.mp4", "question": "a"}) + "\n" +
                  json.dumps({"video": "gone.mp4", "question": "b"}) + "\n")
    out.unlink()
    line = _one_error_line(_run("--questions", qa, "--out", out, *_args(files)))
    assert "qa.jsonl:2" in line and "gone.mp4" in line and not out.exists()


@pytest.mark.parametrize("case,message", [
    ("missing", "no such video"),
    ("broken", "not a readable video"),
    ("empty", "no images in this folder"),
    ("too-long", "over the model's max_sequence_length 256"),
    ("text-only", "text-only model"),
    ("vqgan", "9000 codes"),
    ("memory", "over --max-memory"),
])
def test_bad_input_is_one_line_and_exit_2(files, fast, case, message):
    video = {"missing": "gone.mp4", "broken": "broken.mp4", "empty": "empty"}.get(case, "clip.mp4")
    question = "why " * 300 if case == "too-long" else "What is it?"
    extra = ["--max-memory", "1KiB"] if case == "memory" else []
    args = _args(files, config="text.json" if case == "text-only" else "tiny.json",
                 vqgan="vq9000.safetensors" if case == "vqgan" else "vq.safetensors")
    line = _one_error_line(_run(files / video, question, *args, *extra))
    assert message in line
