"""Building a model on a mesh: shapes first (`nnx.eval_shape`), then every weight made or read
directly on its shards.

Each weight's layout comes from the logical axes it carries (`logical_axes` metadata, set where
it is created) through `lwm_core.mesh.LOGICAL_AXIS_RULES`. Random weights are initialised by one
jitted function whose outputs are already sharded (JAX's partitionable threefry gives the same
values as on one device); checkpoint weights are cast and sent to their devices one array at a
time, each host array dropped once placed, so host memory stays near one copy of the model.
"""

from __future__ import annotations

import gc

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from lwm_core.checkpoint.common import np_dtype
from lwm_core.checkpoint.keys import check_config, state_key
from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError
from lwm_core.mesh import axis_size, current_mesh, logical_to_spec
from lwm_core.model import LWMModel


def abstract_model(config: ModelConfig, mesh=None, seed: int = 0) -> LWMModel:
    """The model with `jax.ShapeDtypeStruct`s for weights: shapes and logical axes, no memory."""
    return nnx.eval_shape(lambda: LWMModel(config, rngs=nnx.Rngs(seed), mesh=mesh))


def _logical_axes(var) -> tuple:
    return tuple(var.get_metadata().get("logical_axes") or (None,) * len(var.shape))


def param_logical_axes(config: ModelConfig) -> dict[str, tuple[str | None, ...]]:
    """Canonical checkpoint key -> logical axes of the weight (scanned layout: 'layers' first)."""
    abstract = abstract_model(config.replace(scan_layers=True))
    return {state_key(path)[0]: _logical_axes(var) for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical checkpoint key -> shape for a config (scanned layout), from the model itself."""
    abstract = abstract_model(config.replace(scan_layers=True))
    return {state_key(path)[0]: tuple(var.shape) for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}


def count_params(config: ModelConfig) -> int:
    return int(sum(np.prod(s) for s in param_shapes(config).values()))


def _sharding(var, mesh):
    return NamedSharding(mesh, logical_to_spec(_logical_axes(var), mesh, var.shape))


def build_model(config: ModelConfig, params: dict | None = None, *, mesh=None, seed: int = 0) -> LWMModel:
    """A ready model: random weights (`params` None) or the canonical checkpoint dict `params`,
    which is consumed (each entry removed once its weight is placed). With `mesh` (argument or
    `jax.set_mesh`) every weight lives on its shards from the start."""
    mesh = current_mesh(mesh)
    if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
        raise ValueError("build_model needs a concrete jax.sharding.Mesh (lwm_core.make_mesh)")
    if mesh is not None and mesh.size == 1:
        mesh = None
    if mesh is not None and config.num_attention_heads % axis_size(mesh, "tp"):
        raise LWMError(f"{config.num_attention_heads} attention heads do not divide over tp="
                       f"{axis_size(mesh, 'tp')} devices; pick a mesh whose tp divides the head count")
    if params is None and not config.scan_layers:
        # initialised stacked, then split per layer: the same weights as scanned layers for a seed
        # (one layer at a time draws other random numbers: `lwm ask` loads unscanned on a CPU)
        scanned = build_model(config.replace(scan_layers=True), None, mesh=mesh, seed=seed)
        return build_model(config, scanned.params_dict(), mesh=mesh)
    if params is None:
        # One jitted initialiser for every mesh (and none), so the values are the same bits whatever
        # the layout; with a mesh its outputs are born on their shards.
        graphdef, abstract = nnx.split(abstract_model(config, mesh, seed))
        is_var = lambda x: isinstance(x, nnx.Variable)
        shardings = None if mesh is None else jax.tree.map(lambda v: _sharding(v, mesh), abstract, is_leaf=is_var)

        def init():
            return nnx.split(LWMModel(config, rngs=nnx.Rngs(seed), mesh=mesh))[1]

        return nnx.merge(graphdef, jax.jit(init, out_shardings=shardings)())

    check_config(params, config, "the checkpoint")
    graphdef, abstract = nnx.split(abstract_model(config, mesh, seed))
    dtype = np_dtype(config.param_dtype)
    by_key: dict[str, list] = {}
    flat = nnx.to_flat_state(abstract)
    for path, var in flat:
        key, layer = state_key(path)
        by_key.setdefault(key, []).append((path, var, layer))
    placed = {}
    for key, uses in by_key.items():
        array = params.pop(key)
        for path, var, layer in uses:
            value = np.asarray(array if layer is None else array[layer])
            if value.dtype != dtype:
                value = value.astype(dtype)
            target = _sharding(var, mesh) if mesh is not None else jax.devices()[0]
            # Wait for each copy: an asynchronous transfer keeps its host array alive (until a garbage
            # collection, seen here), and a whole model of those is twice the model in host memory.
            placed[path] = var.replace(jax.block_until_ready(jax.device_put(value, target, may_alias=False)))
            del value
        del array
        gc.collect(0)
    state = nnx.from_flat_state([(path, placed[path]) for path, _ in flat])
    return nnx.merge(graphdef, state)
