"""Mesh construction, the logical-axis table, parameter and batch sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lwm_core import make_mesh
from lwm_core.errors import LWMError
from lwm_core.config import ModelConfig
from lwm_core.mesh import (LOGICAL_AXIS_RULES, current_mesh, logical_to_spec, pad_sequence, parse_mesh_shape,
                           seq_axis, shard_batch)
from lwm_core.sharding import param_logical_axes


@pytest.mark.parametrize("spec,expected", [("1,-1,1,1", (1, 8, 1, 1)), ("1,1,2,4", (1, 1, 2, 4)),
                                           ("-1,2,1,2", (2, 2, 1, 2)), ([1, 2, 1, 4], (1, 2, 1, 4))])
def test_parse_mesh_shape(spec, expected):
    assert parse_mesh_shape(spec, 8) == expected


@pytest.mark.parametrize("spec", ["1,2,3", "1,3,1,-1", "1,2,2,4", "a,b,c,d", "-1,-1,1,1", "0,8,1,1"])
def test_bad_mesh_is_refused(spec):
    with pytest.raises(LWMError):
        parse_mesh_shape(spec, 8)


def test_make_mesh_axes_and_context():
    mesh = make_mesh("1,2,1,4")
    assert mesh.axis_names == ("dp", "fsdp", "tp", "sp")
    assert dict(mesh.shape) == {"dp": 1, "fsdp": 2, "tp": 1, "sp": 4}
    assert current_mesh() is None
    with jax.set_mesh(mesh):
        assert current_mesh().axis_names == mesh.axis_names


def test_logical_to_spec_drops_size_one_and_non_dividing_axes():
    mesh = make_mesh("2,2,2,1")
    assert logical_to_spec(["batch", "seq", "heads", None], mesh) == P(("dp", "fsdp"), None, "tp", None)
    assert logical_to_spec(["batch", "heads"], mesh, shape=(2, 3)) == P("dp", None)
    assert logical_to_spec(["embed", "mlp"], mesh, shape=(8, 8)) == P("fsdp", "tp")


def test_parameters_carry_their_logical_axes():
    axes = param_logical_axes(ModelConfig.from_name("debug", vision=True))
    assert axes["transformer/wte/embedding"] == ("vocab", "embed")
    assert axes["transformer/vte/embedding"] == ("vocab", "embed")
    assert axes["transformer/h/scan_decoder/attention/wq/kernel"] == ("layers", "embed", "heads")
    assert axes["transformer/h/scan_decoder/attention/wo/kernel"] == ("layers", "heads", "embed")
    assert axes["transformer/h/scan_decoder/feed_forward/w2/kernel"] == ("layers", "mlp", "embed")
    assert axes["transformer/h/scan_decoder/attention_norm/kernel"] == ("layers", None)
    assert axes["lm_head/kernel"] == axes["vision_head/kernel"] == ("embed", "vocab")
    assert axes["transformer/ln_f/kernel"] == (None,)


def test_sequence_axis_comes_from_the_rules_table(monkeypatch):
    assert seq_axis() == LOGICAL_AXIS_RULES["seq"] == "sp"
    monkeypatch.setitem(LOGICAL_AXIS_RULES, "seq", ("sp", "tp"))
    with pytest.raises(LWMError, match="one mesh axis"):
        seq_axis()


def test_shard_batch_and_padding():
    mesh = make_mesh("1,2,1,4")
    ids = jnp.arange(2 * 12).reshape(2, 12)
    sharded = shard_batch({"input_ids": ids}, mesh)["input_ids"]
    assert sharded.sharding.spec == P("fsdp", "sp")
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(ids))
    with pytest.raises(LWMError, match="pad"):
        shard_batch(ids[:, :10], mesh)
    padded, real = pad_sequence(ids[:, :10], 4, left=True)
    assert padded.shape == (2, 12) and np.array_equal(np.asarray(padded[:, 2:]), np.asarray(ids[:, :10]))
    assert np.asarray(real).sum() == 20 and not np.asarray(real)[:, :2].any()
