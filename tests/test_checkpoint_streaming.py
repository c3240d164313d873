"""LWM streaming msgpack: byte-level parity with LWM's writer (msgpack + Flax), layouts, dtypes, errors."""

from __future__ import annotations

import ml_dtypes
import msgpack
import numpy as np
import pytest
from flax import serialization

from lwm_core.checkpoint import describe_params, expected_shapes, load_params, save_params
from lwm_core.checkpoint.lwm_streaming import array_bin_parts, write_record
from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError

# Distinct sizes so that a swapped axis changes a shape: V=97, D=24, F=40, L=3, 3 heads of 8.
CONFIG = ModelConfig(vocab_size=97, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                     num_attention_heads=3, max_sequence_length=64)


def random_params(config: ModelConfig, dtype=np.float32, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in expected_shapes(config).items()}


def lwm_style_file(path, records) -> None:
    """What LWM's StreamingCheckpointer writes: packer.pack((key, flax to_bytes(value))) per array."""
    packer = msgpack.Packer()
    with open(path, "wb") as f:
        for key, value in records:
            f.write(packer.pack((key, serialization.to_bytes(value))))


def file_keys(path) -> list[tuple[str, ...]]:
    with open(path, "rb") as f:
        return [tuple(key) for key, _ in msgpack.Unpacker(f, raw=False, max_buffer_size=0)]


@pytest.mark.parametrize("shape", [(), (1,), (3,), (2, 3), (5, 7, 11), (300,), (70000,), (24, 97)])
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16, np.int32])
def test_array_bin_equals_flax_to_bytes(shape, dtype):
    # Shapes cross msgpack's size classes: fixext payloads (a 0-d float32 is exactly 16 bytes), bin8/16/32.
    array = (np.arange(int(np.prod(shape))) % 251 - 125).reshape(shape).astype(dtype)
    head, data = array_bin_parts(array)
    assert head + data.tobytes() == serialization.to_bytes(array)


def test_record_bytes_equal_lwm_writer(tmp_path):
    params = random_params(CONFIG, ml_dtypes.bfloat16)
    ours, theirs = tmp_path / "ours.msgpack", tmp_path / "theirs.msgpack"
    with open(ours, "wb") as f:
        for key in sorted(params):
            write_record(f, tuple(key.split("/")), params[key])
    lwm_style_file(theirs, [(tuple(k.split("/")), params[k]) for k in sorted(params)])
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.parametrize("layout", ["scanned", "unscanned"])
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_round_trip(tmp_path, layout, dtype):
    params = random_params(CONFIG, dtype)
    path = tmp_path / "p.msgpack"
    save_params(params, f"params::{path}", layout=layout)
    keys = file_keys(path)
    if layout == "unscanned":
        assert ("transformer", "h", "2", "attention", "wq", "kernel") in keys
        assert not any("scan_decoder" in k for k in keys)
    else:
        assert ("transformer", "h", "scan_decoder", "attention", "wq", "kernel") in keys
    ckpt = load_params(f"params::{path}")
    assert (ckpt.format, ckpt.layout, ckpt.dtype, ckpt.config) == ("lwm", layout, np.dtype(dtype).name, None)
    assert sorted(ckpt.params) == sorted(params)
    for key, value in params.items():
        assert ckpt.params[key].dtype == value.dtype
        np.testing.assert_array_equal(ckpt.params[key], value, err_msg=key)


def test_reads_lwm_written_unscanned_file_in_any_order(tmp_path):
    params = random_params(CONFIG)
    records = []
    for key, value in params.items():
        if key.startswith("transformer/h/scan_decoder/"):
            name = key.split("/", 3)[3].split("/")
            records += [(("transformer", "h", str(i), *name), value[i]) for i in range(CONFIG.num_hidden_layers)]
        else:
            records.append((tuple(key.split("/")), value))
    path = tmp_path / "lwm.msgpack"
    lwm_style_file(path, reversed(records))  # layers arrive last-first: stacking must sort them
    ckpt = load_params(str(path), config=CONFIG)
    assert ckpt.layout == "unscanned" and ckpt.config == CONFIG
    for key, value in params.items():
        np.testing.assert_array_equal(ckpt.params[key], value, err_msg=key)


def test_trainstate_prefix(tmp_path):
    params = random_params(CONFIG)
    path = tmp_path / "ts.msgpack"
    save_params(params, f"trainstate_params::{path}")
    assert all(k[:2] == ("params", "params") for k in file_keys(path))
    # A train state also holds optimizer state, which trainstate_params:: must skip.
    with open(path, "ab") as f:
        write_record(f, ("opt_state", "mu", "transformer", "wte", "embedding"), np.zeros(3, np.float32))
    ckpt = load_params(f"trainstate_params::{path}")
    for key, value in params.items():
        np.testing.assert_array_equal(ckpt.params[key], value)
    with pytest.raises(LWMError, match="lacks parameters lm_head/kernel.* unexpected opt_state/mu"):
        load_params(f"params::{path}")


def test_dtype_cast_on_load_and_save(tmp_path):
    params = random_params(CONFIG)
    path = tmp_path / "p.msgpack"
    save_params(params, path, dtype="bfloat16")
    assert load_params(path).dtype == "bfloat16"
    ckpt = load_params(path, dtype="float32")
    assert ckpt.params["lm_head/kernel"].dtype == np.float32
    np.testing.assert_array_equal(ckpt.params["lm_head/kernel"],
                                  params["lm_head/kernel"].astype(ml_dtypes.bfloat16).astype(np.float32))


def test_describe_reads_shapes_without_data(tmp_path):
    params = random_params(CONFIG, ml_dtypes.bfloat16)
    path = tmp_path / "p.msgpack"
    save_params(params, path, layout="unscanned")
    info = describe_params(path)
    assert info.layout == "unscanned" and info.dtype == "bfloat16"
    assert {k: v.shape for k, v in info.params.items()} == {k: v.shape for k, v in params.items()}
    assert info.num_params == sum(v.size for v in params.values())


def test_progress_reaches_file_size(tmp_path):
    path = tmp_path / "p.msgpack"
    calls = []
    save_params(random_params(CONFIG), path, progress=lambda d, t, w: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] and [d for d, _ in calls] == sorted(d for d, _ in calls)
    calls.clear()
    load_params(path, progress=lambda d, t, w: calls.append((d, t)))
    assert calls[-1] == (path.stat().st_size, path.stat().st_size)


@pytest.mark.parametrize("cut", [1, 5, 100, -1, -5000])
def test_truncated_file_is_one_line_error(tmp_path, cut):
    path = tmp_path / "p.msgpack"
    save_params(random_params(CONFIG), path)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut > 0 else data[:cut])
    with pytest.raises(LWMError, match="truncated") as err:
        load_params(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_corrupt_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.msgpack"
    garbage.write_bytes(b"\x92\xa3abc\xc1" * 10)
    with pytest.raises(LWMError, match="garbage.msgpack"):
        load_params(garbage)
    empty = tmp_path / "empty.msgpack"
    empty.write_bytes(b"")
    with pytest.raises(LWMError, match="empty"):
        load_params(empty)
    with pytest.raises(LWMError, match="does not exist"):
        load_params(f"params::{tmp_path / 'nope'}")


def test_missing_key_and_missing_layer(tmp_path):
    params = random_params(CONFIG)
    path = tmp_path / "p.msgpack"
    lwm_style_file(path, [(tuple(k.split("/")), v) for k, v in params.items() if k != "lm_head/kernel"])
    with pytest.raises(LWMError, match="lacks parameters lm_head/kernel"):
        load_params(path)
    records = [(("transformer", "h", str(i), "ffn_norm", "kernel"), np.ones(24, np.float32)) for i in (0, 2)]
    lwm_style_file(path, records)
    with pytest.raises(LWMError, match="lacks transformer/h/1/ffn_norm/kernel"):
        load_params(path)


def test_config_shape_mismatch_names_key(tmp_path):
    path = tmp_path / "p.msgpack"
    save_params(random_params(CONFIG), path)
    with pytest.raises(LWMError, match=r"lm_head/kernel has shape \(24, 97\).*\(24, 101\)"):
        load_params(path, config=CONFIG.replace(vocab_size=101))
