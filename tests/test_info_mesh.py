"""`lwm_core.layout.plan_layout` and `lwm info --mesh`: a layout planned from shapes alone, for meshes
of any size (64 devices on this 8-device test machine), with one-line errors (exit 2)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from lwm_cli.info import parse_length
from lwm_cli.main import app
from lwm_core.checkpoint import expected_shapes, save_params
from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError
from lwm_core.layout import plan_layout
from lwm_core.sharding import param_shapes

SEVEN_B = ModelConfig.from_name("7b")
WQ = "transformer/h/scan_decoder/attention/wq/kernel"
TINY = ModelConfig(vocab_size=97, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                   num_attention_heads=3, max_sequence_length=64)
runner = CliRunner()


def lwm(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_wq_is_split_over_fsdp_and_tp():
    plan = plan_layout(SEVEN_B, "1,4,2,1")
    wq = plan["weights"][WQ]
    assert plan["devices"] == 8 and plan["mesh"] == {"dp": 1, "fsdp": 4, "tp": 2, "sp": 1}
    assert wq["logical_axes"] == ["layers", "embed", "heads"]
    assert wq["spec"] == [None, "fsdp", "tp"]
    assert wq["shape"] == [32, 4096, 4096] and wq["shard_shape"] == [32, 1024, 2048]
    assert wq["bytes"] == 32 * 4096 * 4096 * 4 and wq["bytes_per_device"] == wq["bytes"] // 8


def test_cache_heads_over_tp_and_slots_over_sp():
    plan = plan_layout(SEVEN_B, (1, 1, 2, 4), cache_length=32768)
    cache = plan["cache"]
    assert cache["shape"] == [32, 1, 32, 32768, 128]
    assert cache["spec"] == [None, None, "tp", "sp", None]
    assert cache["shard_shape"] == [32, 1, 16, 8192, 128]
    assert cache["bytes_per_device"] == 2 * 32 * 16 * 8192 * 128 * 4  # k and v, float32
    assert plan["total_bytes_per_device"] == plan["param_bytes_per_device"] + cache["bytes_per_device"]


def test_params_per_device_match_a_hand_count():
    # independent of plan_layout: every 7B dimension named below divides by its mesh axis at 1,4,2,1;
    # the norms and the stacked-layers axis are whole on every device.
    split = {"wq": (1, 4, 2), "wk": (1, 4, 2), "wv": (1, 4, 2), "wo": (1, 2, 4), "w1": (1, 4, 2),
             "w3": (1, 4, 2), "w2": (1, 2, 4), "attention_norm": (1, 1), "ffn_norm": (1, 1),
             "ln_f": (1,), "wte": (2, 4), "lm_head": (4, 2)}
    expected = 0
    for key, shape in param_shapes(SEVEN_B).items():
        parts = [p for p in key.split("/") if p in split]
        assert len(parts) == 1, key
        divisors = split[parts[0]]
        expected += math.prod(s // d for s, d in zip(shape, divisors, strict=True)) * 4
    plan = plan_layout(SEVEN_B, "1,4,2,1")
    assert plan["param_bytes_per_device"] == expected
    assert plan["param_bytes"] == SEVEN_B.num_params() * 4
    # replicated norms: the per-device sum is more than an even share of the total
    assert plan["param_bytes_per_device"] > plan["param_bytes"] // 8


def test_dtypes_and_default_length():
    plan = plan_layout(SEVEN_B, "1,1,1,3", param_dtype="bfloat16")
    assert plan["param_bytes"] == SEVEN_B.num_params() * 2
    assert plan["cache"]["length"] == 2049 and plan["cache"]["dtype"] == "float32"  # 2048 rounded up to sp=3
    assert any("max_sequence_length 2048 rounded up" in note for note in plan["notes"])
    half = plan_layout(SEVEN_B, "1,1,1,1", cache_length=1024, cache_dtype="bfloat16")
    assert half["cache"]["bytes_per_device"] == 2 * 32 * 32 * 1024 * 128 * 2


def test_a_64_device_mesh_plans_on_an_8_device_machine():
    plan = plan_layout(SEVEN_B, "1,16,4,1", cache_length=32768, batch_size=16)
    assert plan["devices"] == 64
    assert plan["weights"][WQ]["shard_shape"] == [32, 256, 1024]
    assert plan["cache"]["spec"] == [None, "fsdp", "tp", None, None]
    assert plan["cache"]["shard_shape"] == [32, 1, 8, 32768, 128]


def test_replicated_weights_are_noted():
    plan = plan_layout(TINY, "1,1,3,1")
    assert plan["weights"]["lm_head/kernel"]["spec"] == [None, None]
    assert "lm_head/kernel: vocab 97 does not divide by tp=3; replicated over tp" in plan["notes"]
    assert plan["weights"]["transformer/h/scan_decoder/attention/wq/kernel"]["spec"] == [None, None, "tp"]
    assert not any("attention/wq" in note for note in plan["notes"])
    batch = plan_layout(TINY, "2,4,1,1", batch_size=2)  # dp divides the batch, fsdp then does not
    assert batch["cache"]["spec"][1] == "dp"
    assert "kv cache: batch 2 does not divide by dp*fsdp=8; replicated over fsdp" in batch["notes"]


@pytest.mark.parametrize("mesh, kwargs, fragment", [
    ("1,1,3,1", {}, "32 attention heads do not divide by tp=3"),
    ("1,1,1,3", {"cache_length": 1000}, "use 1002"),
    ("1,2", {}, "four positive sizes"),
    ("1,-1,2,1", {}, "no -1"),
    ("1,x,2,1", {}, "four integers"),
    ("1,0,2,1", {}, "four positive sizes"),
])
def test_errors_are_one_line(mesh, kwargs, fragment):
    with pytest.raises(LWMError) as error:
        plan_layout(SEVEN_B, mesh, **kwargs)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_parse_length():
    assert parse_length("32K") == 32768 and parse_length("1m") == 1048576 and parse_length("4096") == 4096
    for bad in ("", "K", "1.5K", "-3", "0", "3G"):
        with pytest.raises(LWMError):
            parse_length(bad)


def test_cli_json_has_the_layout():
    result = lwm("info", "--config", "7b", "--mesh", "1,4,2,1", "--cache-length", "32K", "--json")
    assert result.exit_code == 0, result.output
    layout = json.loads(result.output)["layout"]
    assert layout == plan_layout(SEVEN_B, "1,4,2,1", cache_length=32768)
    assert layout["weights"][WQ]["shard_shape"] == [32, 1024, 2048]


def test_cli_table_and_checkpoint_specs(tmp_path):
    result = lwm("info", "--config", "7b", "--mesh", "1,16,4,1")
    assert result.exit_code == 0, result.output
    assert "64 devices" in result.output and "h/attention/wq/kernel" in result.output
    assert "max_sequence_length 2048" in result.output  # says where the default cache length came from
    random = json.loads(lwm("info", "--checkpoint", "random:debug", "--mesh", "1,2,2,1", "--json").output)
    assert random["layout"]["devices"] == 4
    save_params({k: np.zeros(s, "float32") for k, s in expected_shapes(TINY).items()},
                tmp_path / "tiny.msgpack")
    config = tmp_path / "tiny.json"
    config.write_text(TINY.to_json())
    stored = lwm("info", "--checkpoint", tmp_path / "tiny.msgpack", "--config", config, "--mesh", "1,1,3,1",
                 "--max-sequence-length", "96", "--json")
    assert stored.exit_code == 0, stored.output
    assert json.loads(stored.output)["layout"]["cache"]["length"] == 96
    assert_one_line_error(lwm("info", "--checkpoint", tmp_path / "tiny.msgpack", "--mesh", "1,1,3,1"),
                          "stores no config")


def test_cli_errors_exit_2_in_one_line():
    assert_one_line_error(lwm("info", "--config", "7b", "--mesh", "1,2"), "1,2")
    assert_one_line_error(lwm("info", "--config", "7b", "--mesh", "1,1,3,1"), "tp=3")
    assert_one_line_error(lwm("info", "--mesh", "1,1,1,1"), "--config")
    assert_one_line_error(lwm("info", "--config", "7b", "--cache-length", "1K"), "--mesh")
    assert_one_line_error(lwm("info", "--config", "7b", "--mesh", "1,1,1,1", "--batch-size", "0"), "batch size")
    assert_one_line_error(lwm("info", "--config", "7b", "--mesh", "1,1,1,1", "--cache-length", "lots"), "lots")


def test_plan_matches_what_the_runtime_places():
    # on the real 8 devices, the weights and the cache built by the runtime have the planned shards
    from flax import nnx

    from lwm_core.cache import init_cache
    from lwm_core.checkpoint.keys import state_key
    from lwm_core.mesh import make_mesh
    from lwm_core.sharding import build_model

    config = ModelConfig.from_name("debug", max_sequence_length=256)
    mesh = make_mesh("1,2,2,2")
    plan = plan_layout(config, "1,2,2,2", cache_length=256, batch_size=2)
    model = build_model(config, mesh=mesh)
    placed = {state_key(path)[0]: var[...] for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert set(placed) == set(plan["weights"])
    for key, array in placed.items():
        assert {tuple(s.data.shape) for s in array.addressable_shards} == {tuple(plan["weights"][key]["shard_shape"])}
    cache = init_cache(config, 2, 256, mesh=mesh)
    assert {tuple(s.data.shape) for s in cache.k.addressable_shards} == {tuple(plan["cache"]["shard_shape"])}
