"""`lwm extend-context`: stages of growing length and theta, each starting from the previous stage's
weights, each stage's checkpoint carrying its own theta and length, and OUT loading as the last stage."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lwm_cli.main import app
from lwm_core import LWMError, ModelConfig, load_model
from lwm_core.train import TrainConfig
from lwm_core.train.extend import Stage, extend_context, parse_schedule
from lwm_core.train.synthetic import PatternBatches

TINY = dict(vocab_size=97, hidden_size=48, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
            max_sequence_length=64, rope_theta=1e4)


def test_schedules_parse_and_lwm_is_the_papers():
    assert parse_schedule("32K:1e6,128K:1e7") == [Stage(32768, 1e6), Stage(131072, 1e7)]
    assert parse_schedule("lwm") == [Stage(32768, 1e6), Stage(131072, 1e7), Stage(262144, 1e7),
                                     Stage(524288, 2.5e7), Stage(1048576, 5e7)]
    for bad, message in (("32K", "LENGTH:THETA"), ("32K:x", "not a number"), ("64K:1e6,32K:1e7", "longer"),
                         ("0:1e4", "positive")):
        with pytest.raises(LWMError, match=message):
            parse_schedule(bad)


def test_each_stage_starts_from_the_previous_one_with_its_theta_and_length(tmp_path):
    stages = [Stage(64, 2e4), Stage(128, 8e4)]
    starts = {}

    def on_stage(k, stage, model):
        starts[k] = (model.config, model.params_dict())

    folders = extend_context(
        "random:debug", stages,
        lambda stage: PatternBatches(batch_size=2, seq_len=stage.seq_len, vocab_size=97, seed=stage.seq_len),
        out_dir=tmp_path / "long", steps_per_stage=3, config=ModelConfig(**TINY), on_stage=on_stage,
        train_config=TrainConfig(lr=1e-3, warmup=0, save_every=3, log_every=1))
    assert [f.name for f in folders] == ["stage-1-64", "stage-2-128"]
    for folder, stage in zip(folders, stages, strict=True):
        saved = json.loads((folder / "lwm_config.json").read_text())
        assert (saved["rope_theta"], saved["max_sequence_length"]) == (stage.rope_theta, stage.seq_len)
    stage_1 = load_model(str(folders[0])).params_dict()
    config_2, start_2 = starts[2]
    assert (config_2.rope_theta, config_2.max_sequence_length) == (8e4, 128)
    for key, value in stage_1.items():  # stage 2 begins exactly where stage 1 ended
        np.testing.assert_array_equal(start_2[key], value, err_msg=key)
    assert any(not np.array_equal(start_2[k], starts[1][1][k]) for k in stage_1)  # and stage 1 did train
    final = load_model(str(tmp_path / "long"))
    assert (final.config.rope_theta, final.config.max_sequence_length) == (8e4, 128)
    last = load_model(str(folders[1])).params_dict()
    for key, value in final.params_dict().items():
        np.testing.assert_array_equal(value, last[key], err_msg=key)


def test_cli_plan_prints_stages_and_bad_schedules_exit_2():
    runner = CliRunner()
    result = runner.invoke(app, ["extend-context", "random:debug", "--schedule", "4K:1e6,8K:1e7", "--plan",
                                 "--json", "--steps-per-stage", "10", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["seq_len"], r["rope_theta"], r["tokens"]) for r in rows] == [(4096, 1e6, 81920), (8192, 1e7, 163840)]
    assert all(r["memory_per_device_bytes"] > 0 and r["estimated_s"] > 0 for r in rows)
    bad = runner.invoke(app, ["extend-context", "random:debug", "--schedule", "8K:1e6,4K:1e7", "--plan"])
    assert bad.exit_code == 2 and "longer than the one before" in bad.output
    no_data = runner.invoke(app, ["extend-context", "random:debug", "--schedule", "8K:1e6"])
    assert no_data.exit_code == 2 and "needs --data" in no_data.output


def test_cli_trains_the_stages_with_a_progress_line(tmp_path):
    config = ModelConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, max_sequence_length=64)
    (tmp_path / "tiny.json").write_text(config.to_json())
    (tmp_path / "books.jsonl").write_text("".join(json.dumps({"text": "the cat sat on the mat " * 8}) + "\n"
                                                  for _ in range(8)))
    tokenizer = Path(__file__).parent / "data" / "tokenizer" / "tokenizer.model"
    result = CliRunner().invoke(app, ["extend-context", "random:tiny", "--config", str(tmp_path / "tiny.json"),
                                      "--schedule", "64:1e5,128:1e6", "--data", str(tmp_path / "books.jsonl"),
                                      "--tokenizer", str(tokenizer), "--steps-per-stage", "2", "--log-every", "1",
                                      "--out", str(tmp_path / "long")])
    assert result.exit_code == 0, result.output
    assert "stage 2/2: 128 tokens" in result.output
    assert "step 2/2" in result.output and "tok/s  MFU " in result.output  # the live line of each stage
    final = load_model(str(tmp_path / "long"))
    assert (final.config.max_sequence_length, final.config.rope_theta) == (128, 1e6)
