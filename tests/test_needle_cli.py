"""`lwm needle` end to end with a tiny random model on 4 simulated devices (ring over sp), the plan and
its refusals before any model work, and the one-line errors."""

import json
import re

import pytest
from typer.testing import CliRunner

from lwm_cli.main import app
from lwm_core.config import ModelConfig

runner = CliRunner()
TOKENIZER = "tests/data/tokenizer/tokenizer.model"
TINY = ModelConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   max_sequence_length=4096, initializer_range=0.2)


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(TINY.to_json())
    return path


def _one_line_error(result, *phrases):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.mark.slow
def test_the_command_runs_end_to_end_on_4_devices_and_writes_json_and_png(tiny, tmp_path):
    out = tmp_path / "results.json"
    args = ["needle", "--ctx", "3K", "--depths", "0,50,100", "--checkpoint", "random:debug", "--config", str(tiny),
            "--tokenizer", TOKENIZER, "--mesh", "1,1,1,4", "--max-new-tokens", "8", "--chunk-size", "1024",
            "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert [(r["context_length"], r["depth_percent"], r["round"]) for r in records] == [
        (3072, 0.0, 0), (3072, 50.0, 0), (3072, 100.0, 0)]
    assert all(r["context_tokens"] == 3072 - 200 and isinstance(r["correct"], bool) for r in records)
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "3 trials, mean score" in result.output and "needle plan" in result.output
    assert "built-in" in result.output  # no --haystack: the tool says which haystack it used
    # a rerun finds every trial done and computes nothing new
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "(0 to run)" in re.sub(r"[│\s]+", " ", again.output)  # the plan table may wrap the line
    assert json.loads(out.read_text()) == records
    # --plot redraws from the file alone
    out.with_suffix(".png").unlink()
    plotted = runner.invoke(app, ["needle", "--plot", str(out)])
    assert plotted.exit_code == 0 and out.with_suffix(".png").is_file()


def test_refusals_come_before_any_model_work(tiny, tmp_path, monkeypatch):
    import lwm_core.loading

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(lwm_core.loading, "load_model", no_model)
    out = tmp_path / "r.json"
    base = ["--checkpoint", "random:debug", "--config", str(tiny), "--tokenizer", TOKENIZER, "--out", str(out)]
    _one_line_error(runner.invoke(app, ["needle", "--ctx", "8K", *base]),
                    "context length 8,192 exceeds the model's max_sequence_length 4,096")
    _one_line_error(runner.invoke(app, ["needle", "--ctx", "4K", "--max-memory", "64KiB", "--mesh", "1,1,1,4", *base]),
                    "over the --max-memory 0.00 GiB", "--mesh")
    assert not out.exists()
    # --plan prints the plan and stops
    planned = runner.invoke(app, ["needle", "--ctx", "1K,4K", "--n-depth", "3", "--plan", "--mesh", "1,1,1,4", *base])
    assert planned.exit_code == 0, planned.output
    text = re.sub(r"[│\s]+", " ", planned.output)
    assert "2 lengths x 3 depths = 6 cells" in text and "memory/device" in text
    assert not out.exists()


def test_bad_input_is_one_line_and_exit_2(tiny, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr("lwm_core.tiny.TINY_DIR", tmp_path / "gone")  # no --checkpoint and no default model
        _one_line_error(runner.invoke(app, ["needle", "--ctx", "4K"]), "lwm-tiny is incomplete", "--checkpoint")
    _one_line_error(runner.invoke(app, ["needle", "--ctx", "4K", "--checkpoint", "random:debug"]), "--tokenizer")
    _one_line_error(runner.invoke(app, ["needle", "--checkpoint", "random:debug"]), "pass --ctx")
    base = ["--checkpoint", "random:debug", "--config", str(tiny), "--tokenizer", TOKENIZER]
    _one_line_error(runner.invoke(app, ["needle", "--ctx", "4K", "--task", "single_9", *base]), "unknown RULER task")
    _one_line_error(runner.invoke(app, ["needle", "--ctx", "4X", *base]), "positive number of tokens")
    _one_line_error(runner.invoke(app, ["needle", "--ctx", "4K", "--needles", "2", "--retrieve", "3", *base]),
                    "--retrieve 3 is more than --needles 2")
    _one_line_error(runner.invoke(app, ["needle", "--ctx", "4K", "--max-memory", "lots", *base]), "--max-memory")
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    _one_line_error(runner.invoke(app, ["needle", "--ctx", "4K", "--out", str(bad), *base]),
                    "is not a needle results file")
    _one_line_error(runner.invoke(app, ["needle", "--plot", str(tmp_path / "none.json")]), "does not exist")
    _one_line_error(runner.invoke(app, ["needle", "--video", "v.mp4", "--vqgan", "random:tiny", *base]),
                    "--video needs --needle-image")
    _one_line_error(runner.invoke(app, ["needle", "--video", "v.mp4", "--checkpoint", "random:debug"]),
                    "--video needs --checkpoint (a vision-language model), --tokenizer and --vqgan")
