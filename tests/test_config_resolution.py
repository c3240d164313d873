"""A checkpoint's stored config is never silently overridden; run options are never stored.

The bug this guards against: `--config 7b` with a 1M-context checkpoint replaced its rope_theta
(5e7 -> 1e4) and max_sequence_length without a word.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lwm_cli.main import app
from lwm_core.checkpoint import checkpoint_config, describe_params, expected_shapes, load_params, save_params
from lwm_core.config import (
    ARCHITECTURE_FIELDS, CHANGEABLE_FIELDS, RUN_FIELDS, ModelConfig, apply_changes, random_config,
)
from lwm_core.errors import LWMError

# The 'debug' preset at 1M context (rope_theta 5e7), made tiny: small vocab and hidden size.
STORED = ModelConfig.from_name("debug", context="1m", vocab_size=97, hidden_size=64, intermediate_size=96)
# Run options that differ from every default, to see whether they leak into a checkpoint.
RUN = dict(dtype="bfloat16", param_dtype="bfloat16", attention_impl="plain", scan_query_chunk_size=16,
           scan_key_chunk_size=32, scan_mlp_chunk_size=8, sequence_layout="striped",
           remat_block="nothing_saveable", scan_layers=False)
DEFAULT_RUN = ModelConfig().run_options()
runner = CliRunner()


def random_params(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in expected_shapes(config).items()}


@pytest.fixture(params=["hf", "orbax"])
def ckpt_dir(request, tmp_path):
    """A tiny 1M-context checkpoint, saved with non-default run options (which must not be stored)."""
    path = tmp_path / f"{request.param}_ckpt"
    save_params(random_params(STORED), f"{request.param}::{path}", config=STORED.replace(**RUN))
    return path


def resolve(given, path, changes=None):
    ckpt = load_params(path)
    return checkpoint_config(given, ckpt.params, ckpt.config, str(path), changes=changes)


def test_fields_split_into_architecture_and_run_options():
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    assert set(ARCHITECTURE_FIELDS) | set(RUN_FIELDS) == names
    assert not set(ARCHITECTURE_FIELDS) & set(RUN_FIELDS)
    assert set(CHANGEABLE_FIELDS) <= set(ARCHITECTURE_FIELDS)
    config = STORED.replace(**RUN)
    assert config.architecture() == STORED.architecture() and list(config.architecture()) == list(ARCHITECTURE_FIELDS)
    assert config.run_options() == RUN
    assert ModelConfig(**config.architecture(), **config.run_options()) == config
    assert set(json.loads(config.to_json(run_options=False))) == set(ARCHITECTURE_FIELDS)
    assert ModelConfig.from_json(config.to_json()) == config  # the full JSON (a --config file) keeps all


@pytest.mark.parametrize(("field", "value"), [
    ("rope_theta", 1e4), ("max_sequence_length", 2048), ("rms_norm_eps", 1e-5), ("bos_token_id", 0),
    ("eos_token_id", 3), ("num_hidden_layers", 3), ("vocab_size", 101),
])
def test_disagreeing_config_is_refused_naming_both_values(ckpt_dir, field, value):
    given = STORED.replace(**{field: value})
    with pytest.raises(LWMError) as err:
        resolve(given, ckpt_dir)
    message = str(err.value)
    assert "\n" not in message
    assert f"{field}={value}" in message and f"stores {getattr(STORED, field)}" in message
    assert str(ckpt_dir) in message
    if field in CHANGEABLE_FIELDS:
        assert f"changes={{'{field}'" in message  # library callers are told the library way to change it


def test_preset_name_without_context_is_refused_with_cli_advice(tmp_path):
    # The reported bug: a preset without the context, given with a 1M-context checkpoint.
    preset = ModelConfig.from_name("debug", context="1m")  # the real preset shapes (vocab 32000)
    path = tmp_path / "hf1m"
    save_params(random_params(preset), f"hf::{path}", config=preset)
    with pytest.raises(LWMError) as err:
        resolve("debug", path)
    assert str(err.value) == (f"--config debug says max_sequence_length=2048 but {path} stores 1048576; "
                              "drop --config (the checkpoint carries its config) or change it on purpose "
                              "with --max-sequence-length")
    with pytest.raises(LWMError) as err:
        resolve("debug", path, changes={"max_sequence_length": 2048})
    assert str(err.value) == (f"--config debug says rope_theta=10000.0 but {path} stores 50000000.0; "
                              "drop --config (the checkpoint carries its config) or change it on purpose "
                              "with --rope-theta")
    json_path = tmp_path / "deeper.json"
    json_path.write_text(preset.replace(num_hidden_layers=3).to_json())
    with pytest.raises(LWMError) as err:
        resolve(str(json_path), path)
    assert str(err.value) == (f"--config {json_path} says num_hidden_layers=3 but {path} stores 2; "
                              "drop --config (the checkpoint carries its config) or pass one that matches")
    assert resolve("debug-1m", path) == preset  # the matching preset is fine
    assert resolve("debug", path, changes={"max_sequence_length": 4096, "rope_theta": 1e4}) == preset.replace(
        max_sequence_length=4096, rope_theta=1e4)


def test_changes_apply_on_purpose(ckpt_dir):
    # With no given config: the stored architecture, changed.
    assert resolve(None, ckpt_dir, changes={"rope_theta": 1e6}) == STORED.replace(rope_theta=1e6)
    # The given config's own value of a changed field need not agree; the change wins.
    got = resolve(STORED.replace(rope_theta=1e4), ckpt_dir, changes={"rope_theta": 1e6})
    assert got.rope_theta == 1e6 and got.max_sequence_length == STORED.max_sequence_length
    got = resolve(None, ckpt_dir, changes={"max_sequence_length": 2 * STORED.max_sequence_length,
                                           "rope_theta": None})
    assert got == STORED.replace(max_sequence_length=2 * STORED.max_sequence_length)
    # Only rope_theta and max_sequence_length may be changed; a change must still be valid.
    with pytest.raises(LWMError, match="cannot change rms_norm_eps"):
        resolve(None, ckpt_dir, changes={"rms_norm_eps": 1e-5})
    with pytest.raises(LWMError, match="rope_theta"):
        resolve(None, ckpt_dir, changes={"rope_theta": -1.0})


def test_stored_architecture_with_given_run_options(ckpt_dir):
    given = STORED.replace(attention_impl="plain", dtype="bfloat16", initializer_range=0.5)
    got = resolve(given, ckpt_dir)
    assert got.architecture() == STORED.architecture()  # initializer_range too: the stored one is kept
    assert got.attention_impl == "plain" and got.dtype == "bfloat16"
    assert got.run_options() == {**DEFAULT_RUN, "attention_impl": "plain", "dtype": "bfloat16"}
    # Without a given config: the stored architecture and default run options (none were stored).
    assert resolve(None, ckpt_dir) == STORED
    assert load_params(ckpt_dir).config == STORED
    assert describe_params(ckpt_dir).config == STORED
    # load_params(config=...) merges the same way (one implementation).
    assert load_params(ckpt_dir, config=given).config == got
    with pytest.raises(LWMError, match="rope_theta=10000.0 but"):
        load_params(ckpt_dir, config=STORED.replace(rope_theta=1e4))


def test_run_options_from_a_json_config_file(ckpt_dir, tmp_path):
    path = tmp_path / "my_run.json"
    path.write_text(STORED.replace(**RUN).to_json())
    assert resolve(str(path), ckpt_dir) == STORED.replace(**RUN)
    path.write_text(STORED.replace(rope_theta=1e4, attention_impl="ring").to_json())
    with pytest.raises(LWMError, match=f"--config {path} says rope_theta=10000.0"):
        resolve(str(path), ckpt_dir)


def test_orbax_stores_the_architecture_only(tmp_path):
    save_params(random_params(STORED), f"orbax::{tmp_path / 'ck'}", config=STORED.replace(**RUN))
    stored = json.loads((tmp_path / "ck" / "lwm_config.json").read_text())
    assert set(stored) == set(ARCHITECTURE_FIELDS)
    assert not set(stored) & set(RUN_FIELDS)
    assert stored == json.loads(json.dumps(STORED.architecture()))


def test_old_orbax_config_with_run_fields_still_loads(tmp_path):
    save_params(random_params(STORED), f"orbax::{tmp_path / 'ck'}", config=STORED)
    path = tmp_path / "ck" / "lwm_config.json"
    path.write_text(STORED.replace(**RUN).to_json())  # as written before run options were dropped
    assert set(RUN_FIELDS) <= set(json.loads(path.read_text()))
    ckpt = load_params(tmp_path / "ck")
    assert ckpt.config == STORED  # the old file's run options are not the checkpoint's
    assert resolve(None, tmp_path / "ck") == STORED
    # A given config still disagreeing on the architecture is refused; its run options are taken.
    assert resolve(STORED.replace(attention_impl="ring"), tmp_path / "ck").attention_impl == "ring"
    with pytest.raises(LWMError, match="rms_norm_eps"):
        resolve(STORED.replace(rms_norm_eps=1e-5), tmp_path / "ck")


def test_streaming_without_stored_config_uses_the_given_one(tmp_path):
    path = tmp_path / "p.msgpack"
    save_params(random_params(STORED), f"params::{path}")
    ckpt = load_params(path)
    assert ckpt.config is None
    given = STORED.replace(rope_theta=1e4, **RUN)
    assert checkpoint_config(given, ckpt.params, None, str(path)) == given
    assert checkpoint_config(given, ckpt.params, None, str(path), changes={"rope_theta": 1e6}) == given.replace(
        rope_theta=1e6)
    assert checkpoint_config(None, ckpt.params, None, str(path)) is None
    with pytest.raises(LWMError, match="has shape"):  # shapes are still checked against the params
        checkpoint_config(STORED.replace(vocab_size=101), ckpt.params, None, str(path))


def test_vision_vocab_size_only_matters_for_vision_models(tmp_path):
    save_params(random_params(STORED), f"orbax::{tmp_path / 'ck'}", config=STORED)
    assert resolve(STORED.replace(vision_vocab_size=9000), tmp_path / "ck") == STORED
    vision = STORED.replace(vision=True)
    save_params(random_params(vision), f"orbax::{tmp_path / 'v'}", config=vision)
    with pytest.raises(LWMError, match="vision_vocab_size=9000 but"):
        resolve(vision.replace(vision_vocab_size=9000), tmp_path / "v")


def test_random_config_given_config_wins():
    assert random_config("random:debug-1m", "debug") == ModelConfig.from_name("debug")
    assert random_config("random:debug-1m") == ModelConfig.from_name("debug-1m")
    assert apply_changes(random_config("random:debug"), {"rope_theta": 1e6}).rope_theta == 1e6


# --- CLI -----------------------------------------------------------------------------------------


def lwm(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def hf_1m(tmp_path):
    """The real 'debug' preset shapes at 1M context, as a Hugging Face folder."""
    preset = ModelConfig.from_name("debug", context="1m")
    path = tmp_path / "hf1m"
    save_params(random_params(preset), f"hf::{path}", config=preset)
    return path


def test_cli_info_refuses_a_disagreeing_config(hf_1m):
    result = lwm("info", "--checkpoint", f"hf::{hf_1m}", "--config", "debug")
    assert_one_line_error(result, "--config debug says max_sequence_length=2048", f"{hf_1m} stores 1048576",
                          "--max-sequence-length")
    # Both changed on purpose: accepted, and the report shows the changed values.
    result = lwm("info", "--checkpoint", f"hf::{hf_1m}", "--config", "debug", "--rope-theta", "1e6",
                 "--max-sequence-length", "4096", "--json")
    assert result.exit_code == 0, result.output
    config = json.loads(result.output)["checkpoint"]["config"]
    assert config["rope_theta"] == 1e6 and config["max_sequence_length"] == 4096


def test_cli_info_rope_theta_is_shown(hf_1m, tmp_path):
    result = lwm("info", "--checkpoint", f"hf::{hf_1m}", "--rope-theta", "1e8", "--json")
    assert result.exit_code == 0, result.output
    config = json.loads(result.output)["checkpoint"]["config"]
    assert config["rope_theta"] == 1e8 and config["max_sequence_length"] == 1048576
    table = lwm("info", "--checkpoint", f"hf::{hf_1m}", "--rope-theta", "1e8")
    assert table.exit_code == 0 and "100000000.0" in table.output
    # random:PRESET and a bare --config show the change too.
    result = lwm("info", "--checkpoint", "random:debug-1m", "--rope-theta", "1e6", "--json")
    assert json.loads(result.output)["checkpoint"]["config"]["rope_theta"] == 1e6
    result = lwm("info", "--config", "debug", "--max-sequence-length", "8192", "--json")
    assert json.loads(result.output)["config"]["max_sequence_length"] == 8192
    assert_one_line_error(lwm("info", "--rope-theta", "1e6"), "--rope-theta", "pass --checkpoint or --config")
    assert_one_line_error(lwm("info", "--checkpoint", f"hf::{hf_1m}", "--rope-theta", "-1"), "rope_theta")
    stream = tmp_path / "p.msgpack"
    save_params(random_params(ModelConfig.from_name("debug")), stream)
    assert_one_line_error(lwm("info", "--checkpoint", stream, "--max-sequence-length", "4096"),
                          "stores no config", "pass --config")


def test_cli_convert_keeps_or_changes_the_stored_config(hf_1m, tmp_path):
    assert_one_line_error(lwm("convert", f"hf::{hf_1m}", f"orbax::{tmp_path / 'o'}", "--config", "debug"),
                          "max_sequence_length=2048", "1048576")
    assert not (tmp_path / "o").exists()
    result = lwm("convert", f"hf::{hf_1m}", f"orbax::{tmp_path / 'o'}", "--rope-theta", "1e8")
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / "o" / "lwm_config.json").read_text())
    assert stored["rope_theta"] == 1e8 and stored["max_sequence_length"] == 1048576
    assert set(stored) == set(ARCHITECTURE_FIELDS)
    assert_one_line_error(lwm("convert", f"hf::{hf_1m}", tmp_path / "x.msgpack", "--rope-theta", "1e8"),
                          "params:: files store none")
    for command in ("info", "convert"):
        text = lwm(command, "--help").output
        assert "--rope-theta" in text and "--max-sequence-length" in text and "on purpose" in text
