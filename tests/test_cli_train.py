"""`lwm train` end to end on tiny data: stage 1 from scratch, stage 2 from the text run (fresh vision
weights), `--freeze text`, the run folder as a checkpoint, and one-line errors."""

import json
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
])
def test_bad_options_are_one_line_and_exit_2(workdir, args, message):
    result = _train(workdir, "--data", str(workdir / "books.jsonl"), "--out", str(workdir / "bad"), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
