"""`lwm train` end to end on tiny data: stage 1 from scratch, stage 2 from the text run (fresh vision
weights), `--freeze text`, the run folder as a checkpoint, and one-line errors."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lwm_cli.main import app
from lwm_core import ModelConfig, load_model

TOKENIZER = str(Path(__file__).parent / "data" / "tokenizer" / "tokenizer.model")
runner = CliRunner()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat and the dog ran to the red ball while birds sang".split()
    lines = [json.dumps({"text": " ".join(rng.choice(words, rng.integers(20, 80)))}) for _ in range(120)]
    lines.insert(3, "{not json")
    (root / "books.jsonl").write_text("\n".join(lines) + "\n")
    colours = ["red", "green", "blue"]
    with (root / "vision.jsonl").open("w") as f:
        for _ in range(60):
            c = int(rng.integers(3))
            codes = (c * 100 + rng.integers(0, 5, 256)).tolist()
            f.write(json.dumps({"fields": ["[caption],vision", "[vision],caption"],
                                "caption": f"a {colours[c]} square", "vision": codes}) + "\n")
    config = ModelConfig(vocab_size=512, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, max_sequence_length=512)
    (root / "tiny.json").write_text(config.to_json())
    return root


def _train(workdir, *args):
    return runner.invoke(app, ["train", "--tokenizer", TOKENIZER, "--log-every", "5", "--lr", "3e-3", *args])


def test_stage_1_then_stage_2_from_the_text_run(workdir):
    text_out = workdir / "text"
    result = _train(workdir, "--stage", "1", "--data", str(workdir / "books.jsonl"), "--config",
                    str(workdir / "tiny.json"), "--seq-len", "128", "--batch-size", "4", "--steps", "40",
                    "--save-every", "20", "--out", str(text_out))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (text_out / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "text_loss", "vision_loss", "lr", "grad_norm", "tokens", "tokens_per_s"} <= set(rows[0])
    assert rows[-1]["step"] == 40 and rows[-1]["loss"] < rows[0]["loss"] - 1.0  # it learns
    assert (text_out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text_model = load_model(str(text_out))
    assert not text_model.config.vision

    vision_out = workdir / "vision"
    result = _train(workdir, "--stage", "2", "--data", str(workdir / "vision.jsonl"), "--init", str(text_out),
                    "--seq-len", "300", "--batch-size", "2", "--steps", "30", "--freeze", "text",
                    "--out", str(vision_out))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (vision_out / "metrics.jsonl").read_text().splitlines()]
    vision_losses = [r["vision_loss"] for r in rows if r["vision_loss"] > 0]
    assert vision_losses[-1] < vision_losses[0]
    vision_model = load_model(str(vision_out))
    assert vision_model.config.vision
    before, after = text_model.params_dict(), vision_model.params_dict()
    for key, value in before.items():  # --freeze text: every text weight bit-identical
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    assert "transformer/vte/embedding" in after and "vision_head/kernel" in after


@pytest.mark.parametrize("args,message", [
    (["--stage", "3"], "--stage must be 1"),
    (["--packing", "zip"], "--packing must be one of"),
    ([], "pass --config"),
    (["--config", "debug", "--seq-len", "5000"], "exceed max_sequence_length"),
    (["--config", "debug", "--seq-len", "30", "--mesh", "1,2,1,4"], "--seq-len 30 does not divide by sp=4"),
    (["--overflow", "drop"], "--overflow must be one of split, truncate, skip"),
])
def test_bad_options_are_one_line_and_exit_2(workdir, args, message):
    result = _train(workdir, "--data", str(workdir / "books.jsonl"), "--out", str(workdir / "bad"), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (workdir / "bad" / "lwm_config.json").exists()  # refused before anything is written


def test_malformed_lines_are_counted_reported_and_skipped(workdir, tmp_path):
    lines = ["{not json", json.dumps({"text": "the cat sat on a mat"}), json.dumps({"txt": "no text field"}),
             *[json.dumps({"text": "the dog ran to the red ball " * 6})] * 8]  # longer than a row: no second pass
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    result = _train(workdir, "--data", str(tmp_path / "bad.jsonl"), "--config", str(workdir / "tiny.json"),
                    "--seq-len", "64", "--batch-size", "2", "--steps", "2", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert "malformed lines 1, bad records 1" in result.output.splitlines()[-1]  # the data line


def test_a_token_file_from_another_vqgan(workdir, tmp_path):
    from lwm_core.token_files import TokenFile, save_tokens

    # 8 x 8 codes per frame from a 1024-entry codebook; the model's data expects LWM's 16 x 16 from 8192
    save_tokens(tmp_path / "clip.npz", TokenFile(codes=np.zeros((2, 8, 8), np.uint16), frame_indices=np.arange(2),
                                                 fps=4.0, source="clip.mp4", vqgan_id="other",
                                                 vqgan_config=json.dumps({"num_embeddings": 1024})))
    (tmp_path / "vision.jsonl").write_text(
        json.dumps({"fields": "[caption],vision", "caption": "a red square", "vision": "clip.npz"}) + "\n")
    result = _train(workdir, "--stage", "2", "--data", str(tmp_path / "vision.jsonl"), "--config",
                    str(workdir / "tiny.json"), "--seq-len", "300", "--batch-size", "2", "--steps", "2",
                    "--out", str(tmp_path / "run"))
    assert result.exit_code == 2, result.output
    assert "was written by a different VQGAN (8x8 codes per frame from a 1024-entry codebook" in result.output
    assert "Traceback" not in result.output
    assert not list((tmp_path / "run").glob("checkpoints/[0-9]*"))


@pytest.mark.slow
@pytest.mark.parametrize("failing", ["checkpoint", "metrics"])
def test_a_full_output_folder_mid_run_keeps_the_previous_checkpoint(workdir, tmp_path, monkeypatch, failing):
    import orbax.checkpoint as ocp

    import lwm_core.train.tensorboard as tensorboard

    out = tmp_path / "run"
    real_save, real_write = ocp.CheckpointManager.save, tensorboard.EventWriter._write

    def disk_full(*args, **kwargs):  # what a full disk does after the first checkpoint (step 4)
        raise OSError(28, "No space left on device")

    def save(self, step, *args, **kwargs):
        return disk_full() if step > 4 else real_save(self, step, *args, **kwargs)

    steps = {"n": 0}

    def write(self, data):
        steps["n"] += 1
        return disk_full() if steps["n"] > 6 else real_write(self, data)  # file header + 5 steps, then full

    if failing == "checkpoint":
        monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    else:
        monkeypatch.setattr(tensorboard.EventWriter, "_write", write)
    result = _train(workdir, "--data", str(workdir / "books.jsonl"), "--config", str(workdir / "tiny.json"),
                    "--seq-len", "64", "--batch-size", "2", "--steps", "8", "--save-every", "4", "--log-every", "1",
                    "--out", str(out))
    monkeypatch.undo()
    assert result.exit_code == 2, result.output
    assert "No space left on device" in result.output and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    if failing == "checkpoint":
        assert "cannot save the checkpoint of step 8" in errors[0] and "step 4 is intact" in errors[0]
    else:
        assert "cannot write the metrics of step 6" in errors[0]
    # the step-4 checkpoint is whole: the link names it, the weights load, and the run resumes from it
    assert os.readlink(out / "params") == os.path.join("checkpoints", "4", "params")
    assert load_model(str(out)).config.hidden_size == 48
    if failing == "metrics":
        return
    result = _train(workdir, "--data", str(workdir / "books.jsonl"), "--seq-len", "64", "--batch-size", "2",
                    "--steps", "8", "--save-every", "4", "--log-every", "1", "--out", str(out), "--resume")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 9))


def test_overflow_truncate(workdir, tmp_path):  # the default, split, shows in the other runs' data line
    short = [json.dumps({"text": "the cat sat on a mat"})] * 7
    (tmp_path / "long.jsonl").write_text("\n".join([json.dumps({"text": "the red ball " * 60}), *short]) + "\n")
    result = _train(workdir, "--data", str(tmp_path / "long.jsonl"), "--config", str(workdir / "tiny.json"),
                    "--seq-len", "64", "--batch-size", "2", "--steps", "1", "--overflow", "truncate",
                    "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "data: truncated 1", result.output


def test_shuffle_is_kept_in_the_checkpoint_and_resume_must_match_it(workdir, tmp_path):
    out = tmp_path / "run"
    common = ("--data", str(workdir / "books.jsonl"), "--seq-len", "64", "--batch-size", "2", "--save-every", "2",
              "--log-every", "1", "--out", str(out))
    result = _train(workdir, *common, "--config", str(workdir / "tiny.json"), "--steps", "2", "--shuffle")
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "checkpoints" / "2" / "data" / "metadata").read_text())  # orbax JsonSave
    assert saved["iterator"]["shuffle"] is True and saved["iterator"]["reader"][2:] == [-1, -1, -1]
    result = _train(workdir, *common, "--steps", "4", "--resume")  # without --shuffle
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "shuffle=True" in errors[0] and "Traceback" not in result.output
    result = _train(workdir, *common, "--steps", "4", "--resume", "--shuffle")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
