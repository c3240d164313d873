"""Orbax checkpoints, spec parsing, key/shape validation and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from lwm_core.checkpoint import (
    check_shapes, describe_params, expected_shapes, load_params, parse_spec, save_params,
)
from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError

CONFIG = ModelConfig(vocab_size=97, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                     num_attention_heads=3, max_sequence_length=64, attention_impl="blockwise")


def random_params(config: ModelConfig, dtype=np.float32, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in expected_shapes(config).items()}


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
@pytest.mark.parametrize("vision", [False, True])
def test_orbax_round_trip_keeps_config(tmp_path, dtype, vision):
    config = CONFIG.replace(vision=vision)
    params = random_params(config, dtype)
    # Run options are not stored: the config read back has the architecture and default run options.
    save_params(params, f"orbax::{tmp_path / 'ck'}", config=config.replace(attention_impl="plain", dtype="bfloat16"))
    ckpt = load_params(tmp_path / "ck")  # a bare folder with lwm_config.json is orbax
    assert (ckpt.format, ckpt.layout, ckpt.dtype, ckpt.vision) == ("orbax", "scanned", np.dtype(dtype).name, vision)
    assert ckpt.config == config
    assert sorted(ckpt.params) == sorted(params)
    for key, value in params.items():
        assert isinstance(ckpt.params[key], np.ndarray) and ckpt.params[key].dtype == value.dtype
        np.testing.assert_array_equal(ckpt.params[key], value, err_msg=key)
    info = describe_params(f"orbax::{tmp_path / 'ck'}")
    assert {k: v.shape for k, v in info.params.items()} == {k: v.shape for k, v in params.items()}


def test_a_params_item_without_its_own_metadata_loads_without_orbax_warning(tmp_path, caplog):
    """A training run's params/ is one item of an orbax CheckpointManager step: its metadata file is a
    level up. Loading it must not print orbax's "Metadata file does not exist" (it did, every load)."""
    params = random_params(CONFIG)
    save_params(params, f"orbax::{tmp_path / 'ck'}", config=CONFIG)
    (tmp_path / "ck" / "params" / "_CHECKPOINT_METADATA").unlink()  # as in a run folder's step item
    with caplog.at_level("WARNING"):
        ckpt = load_params(tmp_path / "ck")
    np.testing.assert_array_equal(ckpt.params["transformer/wte/embedding"], params["transformer/wte/embedding"])
    assert not [r for r in caplog.records if "Metadata file does not exist" in r.getMessage()]


def test_orbax_errors(tmp_path):
    with pytest.raises(LWMError, match="does not exist"):
        load_params(f"orbax::{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LWMError, match="no lwm_config.json"):
        load_params(f"orbax::{tmp_path / 'empty'}")
    save_params(random_params(CONFIG), f"orbax::{tmp_path / 'ck'}", config=CONFIG)
    with pytest.raises(LWMError, match="vision=True"):
        load_params(tmp_path / "ck", config=CONFIG.replace(vision=True))
    with pytest.raises(LWMError, match="already exists"):
        save_params(random_params(CONFIG), f"orbax::{tmp_path / 'ck'}", config=CONFIG, overwrite=False)
    with pytest.raises(LWMError, match="applies to LWM streaming"):
        save_params(random_params(CONFIG), f"orbax::{tmp_path / 'x'}", config=CONFIG, layout="unscanned")


def test_overwrite_replaces_folder_atomically(tmp_path):
    first, second = random_params(CONFIG, seed=1), random_params(CONFIG, seed=2)
    save_params(first, f"orbax::{tmp_path / 'ck'}", config=CONFIG)
    save_params(second, f"orbax::{tmp_path / 'ck'}", config=CONFIG)
    np.testing.assert_array_equal(load_params(tmp_path / "ck").params["lm_head/kernel"], second["lm_head/kernel"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_failed_write_leaves_old_file_and_no_temporaries(tmp_path):
    path = tmp_path / "p.msgpack"
    old = random_params(CONFIG, seed=1)
    save_params(old, path)

    def boom(done, total, what):
        raise KeyboardInterrupt  # e.g. the user presses Ctrl-C halfway

    with pytest.raises(KeyboardInterrupt):
        save_params(random_params(CONFIG, seed=2), path, progress=boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.msgpack"]
    np.testing.assert_array_equal(load_params(path).params["lm_head/kernel"], old["lm_head/kernel"])


def test_parse_spec(tmp_path):
    assert parse_spec("params::/a/b").format == "lwm" and parse_spec("params::/a/b").prefix == ()
    assert parse_spec("trainstate_params::/a").prefix == ("params", "params")
    assert parse_spec("hf::/x").format == "hf" and parse_spec("orbax::/x").format == "orbax"
    assert parse_spec("out.msgpack", for_writing=True).format == "lwm"
    with pytest.raises(LWMError, match="unknown checkpoint prefix trainstate::"):
        parse_spec("trainstate::/a")
    with pytest.raises(LWMError, match="prefix it"):
        parse_spec(tmp_path / "dir", for_writing=True)
    (tmp_path / "plain").mkdir()
    with pytest.raises(LWMError, match="neither lwm_config.json"):
        parse_spec(tmp_path / "plain")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(LWMError, match="cannot tell the format"):
        parse_spec(tmp_path / "weights.bin")


def test_check_shapes_names_first_mismatch():
    params = random_params(CONFIG)
    check_shapes(params, expected_shapes(CONFIG))
    params["transformer/h/scan_decoder/feed_forward/w2/kernel"] = np.zeros((3, 24, 40))  # [L, D, F]: swapped
    with pytest.raises(LWMError, match=r"feed_forward/w2/kernel has shape \(3, 24, 40\).*\(3, 40, 24\)"):
        check_shapes(params, expected_shapes(CONFIG))
    del params["lm_head/kernel"]
    with pytest.raises(LWMError, match="lm_head/kernel is missing"):
        check_shapes(params, expected_shapes(CONFIG))


def test_save_refuses_incomplete_params(tmp_path):
    params = random_params(CONFIG)
    params.pop("transformer/ln_f/kernel")
    with pytest.raises(LWMError, match="lacks parameters transformer/ln_f/kernel"):
        save_params(params, tmp_path / "p.msgpack")


# Keys and shapes read off LWM's own code (no weights); tests/data/lwm_param_keys.json is a copy of the
# project's shared facts file, kept in the repository so that a bare clone passes.
KEYS_FILE = Path(__file__).resolve().parent / "data" / "lwm_param_keys.json"


def test_expected_shapes_match_lwm_key_list():
    tiny = json.loads(KEYS_FILE.read_text())["video_llama_tiny"]
    config = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, vision=True)
    assert expected_shapes(config) == {p["key"]: tuple(p["shape"]) for p in tiny["params"]}


def test_expected_shapes_match_the_model():
    from lwm_core.sharding import param_shapes

    for config in (CONFIG, CONFIG.replace(vision=True)):
        assert expected_shapes(config) == param_shapes(config)
