"""The train state and where its arrays live.

    TrainState
      params      nested dict of arrays keyed by LWM's checkpoint names (the model's NNX paths),
                  sharded by each weight's logical axes (`lwm_core.mesh.param_shardings`)
      opt_state   optax state of the trained parameters; moments sharded like their parameters
      step        int32 []: optimizer steps done
      rng         uint32 [2]: a raw PRNG key, split every step (LWM trains without dropout; the key
                  is kept so a stochastic extension resumes exactly)
      data_state  JSON-able dict: where the batch iterator is (see `lwm_core.train.trainer`)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from lwm_core.checkpoint.common import flatten_tree
from lwm_core.mesh import param_shardings

ARRAY_FIELDS = ("params", "opt_state", "step", "rng")


@dataclasses.dataclass(frozen=True)
class TrainState:
    params: dict
    opt_state: Any
    step: jax.Array
    rng: jax.Array
    data_state: dict = dataclasses.field(default_factory=dict)

    def arrays(self) -> dict:
        """The array part (what the step function and the checkpoint's array items hold)."""
        return {name: getattr(self, name) for name in ARRAY_FIELDS}

    def with_arrays(self, arrays: dict, **changes) -> TrainState:
        return dataclasses.replace(self, **arrays, **changes)

    @property
    def alive(self) -> bool:
        """False once the arrays were donated to a step that did not hand them back (an interrupt)."""
        return not any(getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(self.arrays()))


def replicated(mesh) -> jax.sharding.Sharding:
    """Where scalars live: everywhere on the mesh, or on the default device without one."""
    return SingleDeviceSharding(jax.devices()[0]) if mesh is None else NamedSharding(mesh, P())


def params_shardings(model: nnx.Module, mesh) -> dict:
    """Nested dict (like the params) of each weight's sharding, by its logical axes."""
    state = nnx.state(model, nnx.Param)
    if mesh is None:
        return jax.tree.map(lambda _: replicated(None), nnx.to_pure_dict(state))
    return nnx.to_pure_dict(param_shardings(state, mesh))


def opt_state_shardings(abstract_opt_state, params: dict, shardings: dict, mesh) -> Any:
    """Shardings for an optax state: a leaf whose path ends with a parameter's key and has its shape
    (Adam's moments) lives like that parameter; everything else (step counts) is replicated."""
    shapes = {k: tuple(v.shape) for k, v in flatten_tree(params).items()}
    by_key = flatten_tree(shardings)

    def place(path, leaf):
        names = []
        for entry in reversed(path):  # the trailing dict keys are the parameter's key
            if not isinstance(entry, jax.tree_util.DictKey):
                break
            names.insert(0, str(entry.key))
        key = "/".join(names)
        if key in by_key and shapes[key] == tuple(leaf.shape):
            return by_key[key]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(place, abstract_opt_state)


def abstract_arrays(arrays: dict, shardings: dict) -> dict:
    """`jax.ShapeDtypeStruct`s (with shardings) for a tree of arrays or abstract arrays."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), arrays, shardings)
