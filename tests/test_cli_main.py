"""The `lwm` command as a whole: every subcommand listed, the model commands refuse in one line without
a checkpoint (none ships yet), and
`lwm info --forward` runs a loaded model or refuses a too-long sequence in one line."""

import json

import numpy as np
from typer.testing import CliRunner

from lwm_cli.main import app
from lwm_core.checkpoint import expected_shapes, save_params
from lwm_core.config import ModelConfig

runner = CliRunner()
MISSION = ("train", "extend-context", "tokenize-video", "ask", "generate", "needle", "info", "convert")


def test_help_lists_every_subcommand():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in MISSION:
        assert name in result.output, name


def test_model_commands_without_lwm_tiny_say_so_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr("lwm_core.tiny.TINY_DIR", tmp_path / "gone")  # no --checkpoint and no default model
    video = tmp_path / "frame.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(video)
    for args in (["ask", str(video), "What is this?"], ["generate", "a red square", "--out", str(tmp_path / "x.png")],
                 ["needle", "--ctx", "4K"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "lwm-tiny is incomplete" in result.output and "--checkpoint" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_info_forward_runs_a_checkpoint(tmp_path):
    config = ModelConfig(vocab_size=97, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=3, max_sequence_length=64)
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s).astype(np.float32) * 0.1 for k, s in expected_shapes(config).items()}
    save_params(params, f"params::{tmp_path / 'p'}")
    (tmp_path / "tiny.json").write_text(config.to_json())
    result = runner.invoke(app, ["info", "--checkpoint", f"params::{tmp_path / 'p'}", "--config",
                                 str(tmp_path / "tiny.json"), "--forward", "48", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["forward"]["tokens"] == 48 and report["forward"]["logits_finite"] is True
    assert report["checkpoint"]["num_params"] == config.num_params()

    too_long = runner.invoke(app, ["info", "--checkpoint", f"params::{tmp_path / 'p'}", "--config",
                                   str(tmp_path / "tiny.json"), "--forward", "65"])
    assert too_long.exit_code == 2
    lines = too_long.output.strip().splitlines()
    assert len(lines) == 1 and "exceed the model's max_sequence_length 64" in lines[0]


def test_info_random_preset_json():
    result = runner.invoke(app, ["info", "--checkpoint", "random:debug", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["checkpoint"]["num_params"] == ModelConfig.from_name("debug").num_params()
