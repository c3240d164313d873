"""`lwm convert` and `lwm info` through typer's CliRunner: conversions, reports, one-line errors (exit 2)."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from typer.testing import CliRunner

from lwm_cli.main import app
from lwm_core.checkpoint import expected_shapes, load_params, save_params
from lwm_core.config import ModelConfig

CONFIG = ModelConfig(vocab_size=97, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                     num_attention_heads=3, max_sequence_length=64, rope_theta=5e4)
runner = CliRunner()


@pytest.fixture
def params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in expected_shapes(CONFIG).items()}


@pytest.fixture
def config_json(tmp_path) -> str:
    path = tmp_path / "tiny.json"
    path.write_text(CONFIG.to_json())
    return str(path)


def lwm(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_convert_through_all_formats(tmp_path, params, config_json):
    save_params(params, tmp_path / "start.msgpack")
    steps = [
        (f"params::{tmp_path / 'start.msgpack'}", f"hf::{tmp_path / 'hf'}", ["--config", config_json]),
        (str(tmp_path / "hf"), f"orbax::{tmp_path / 'ob'}", []),  # HF carries its config
        (f"orbax::{tmp_path / 'ob'}", f"trainstate_params::{tmp_path / 'ts.msgpack'}",
         ["--layout", "unscanned"]),
        (f"trainstate_params::{tmp_path / 'ts.msgpack'}", f"hf::{tmp_path / 'hf16'}",
         ["--config", config_json, "--dtype", "bfloat16"]),
        (f"hf::{tmp_path / 'hf16'}", str(tmp_path / "end.msgpack"), ["--dtype", "float32"]),
    ]
    for src, dst, extra in steps:
        result = lwm("convert", src, dst, *extra)
        assert result.exit_code == 0, result.output
        assert "converted" in result.output
    assert load_params(f"trainstate_params::{tmp_path / 'ts.msgpack'}").layout == "unscanned"
    orbax = load_params(tmp_path / "ob")
    assert orbax.config.rope_theta == CONFIG.rope_theta and orbax.format == "orbax"
    for key, value in params.items():  # exact until the bfloat16 step
        np.testing.assert_array_equal(orbax.params[key], value, err_msg=key)
    end = load_params(tmp_path / "end.msgpack")
    assert end.dtype == "float32"
    for key, value in params.items():
        np.testing.assert_array_equal(end.params[key], value.astype(ml_dtypes.bfloat16).astype(np.float32))


@pytest.mark.parametrize("fmt", ["lwm", "hf", "orbax"])
def test_info_on_each_format(tmp_path, params, fmt):
    import jax

    spec = {"lwm": f"params::{tmp_path / 'p.msgpack'}", "hf": f"hf::{tmp_path / 'hf'}",
            "orbax": f"orbax::{tmp_path / 'ob'}"}[fmt]
    save_params({k: v.astype(ml_dtypes.bfloat16) for k, v in params.items()}, spec,
                config=None if fmt == "lwm" else CONFIG)
    result = lwm("info", "--checkpoint", spec, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["runtime"]["device_count"] == len(jax.devices())
    assert report["runtime"]["jax_version"] == jax.__version__
    ckpt = report["checkpoint"]
    assert ckpt["format"] == fmt and ckpt["dtype"] == "bfloat16" and ckpt["vision"] is False
    assert ckpt["layout"] == ("unscanned" if fmt == "hf" else "scanned")
    assert ckpt["num_params"] == sum(v.size for v in params.values())
    assert (ckpt["config"] is None) == (fmt == "lwm")
    if fmt != "lwm":
        assert ckpt["config"]["hidden_size"] == CONFIG.hidden_size
    table = lwm("info", "--checkpoint", spec)
    assert table.exit_code == 0 and f"{sum(v.size for v in params.values()):,}" in table.output


def test_info_runtime_and_preset(tmp_path):
    result = lwm("info", "--config", "7b-1m", "--json")
    assert result.exit_code == 0, result.output
    config = json.loads(result.output)["config"]
    assert config["rope_theta"] == 5e7 and config["num_params"] == ModelConfig.from_name("7b-1m").num_params()
    assert "backend" in lwm("info").output


def test_info_vision_checkpoint_with_preset_config(tmp_path):
    vision = CONFIG.replace(vision=True)
    rng = np.random.default_rng(1)
    save_params({k: rng.standard_normal(s).astype(np.float32) for k, s in expected_shapes(vision).items()},
                tmp_path / "v.msgpack")
    report = json.loads(lwm("info", "--checkpoint", tmp_path / "v.msgpack", "--json").output)
    assert report["checkpoint"]["vision"] is True
    # A preset that does not match the shapes is refused with the first mismatching key.
    assert_one_line_error(lwm("info", "--checkpoint", tmp_path / "v.msgpack", "--config", "debug"),
                          "has shape", "--config")


def test_convert_bad_inputs(tmp_path, params, config_json):
    src = tmp_path / "p.msgpack"
    save_params(params, src)
    assert_one_line_error(lwm("convert", f"params::{tmp_path / 'missing'}", f"hf::{tmp_path / 'o'}",
                              "--config", config_json), "missing", "does not exist")
    assert_one_line_error(lwm("convert", src, f"hf::{tmp_path / 'o'}"), "pass --config")
    assert_one_line_error(lwm("convert", src, f"orbax::{tmp_path / 'o'}"), "pass --config")
    assert_one_line_error(lwm("convert", src, tmp_path / "plain_dir"), "prefix it", "hf::")
    assert_one_line_error(lwm("convert", src, f"params::{src}"), "already exists", "--overwrite")
    assert_one_line_error(lwm("convert", src, tmp_path / "x.msgpack", "--dtype", "int8"), "--dtype")
    assert_one_line_error(lwm("convert", src, f"hf::{tmp_path / 'o'}", "--config", config_json,
                              "--layout", "unscanned"), "--layout")
    assert_one_line_error(lwm("convert", src, f"hf::{tmp_path / 'o'}", "--config", "debug"),
                          "has shape")
    assert not (tmp_path / "o").exists()
    truncated = tmp_path / "t.msgpack"
    truncated.write_bytes(src.read_bytes()[:-7])
    assert_one_line_error(lwm("convert", truncated, tmp_path / "y.msgpack"), str(truncated), "truncated")
    assert_one_line_error(lwm("info", "--checkpoint", truncated), "truncated")
    assert_one_line_error(lwm("info", "--checkpoint", tmp_path / "nothing.msgpack"), "does not exist")


def test_convert_overwrite_replaces(tmp_path, params):
    src, dst = tmp_path / "p.msgpack", tmp_path / "q.msgpack"
    save_params(params, src)
    save_params({k: np.zeros_like(v) for k, v in params.items()}, dst)
    result = lwm("convert", src, dst, "--overwrite", "--layout", "unscanned")
    assert result.exit_code == 0, result.output
    out = load_params(dst)
    assert out.layout == "unscanned"
    np.testing.assert_array_equal(out.params["lm_head/kernel"], params["lm_head/kernel"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.msgpack", "q.msgpack"]


def test_help_has_examples():
    for command in ("convert", "info"):
        result = lwm(command, "--help")
        assert result.exit_code == 0 and "Example: lwm " + command in result.output


def test_convert_vqgan_between_formats(tmp_path):
    from lwm_core.vqgan import VQGANConfig, read_vqgan, write_vqgan
    from lwm_core.vqgan.model import init_vqgan
    from lwm_core.vqgan.params_lwm import model_to_lwm

    tiny = VQGANConfig.from_name("tiny")
    params = model_to_lwm(init_vqgan(tiny, seed=3))
    write_vqgan(params, tiny, tmp_path / "v.safetensors")  # ours: carries its config
    result = lwm("convert", "--vqgan", tmp_path / "v.safetensors", tmp_path / "diffusers")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "diffusers" / "config.json").is_file()
    back, config = read_vqgan(tmp_path / "diffusers")
    assert config.channel_mult == tiny.channel_mult and sorted(back) == sorted(params)
    for key, value in params.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    assert_one_line_error(lwm("convert", "--vqgan", tmp_path / "v.safetensors", tmp_path / "diffusers"),
                          "already exists")
    assert_one_line_error(lwm("convert", "--vqgan", tmp_path / "none.pkl", tmp_path / "x.pkl"), "not found")
