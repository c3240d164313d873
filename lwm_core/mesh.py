"""Device mesh, the logical-axis -> mesh-axis table, and sharding of parameters and batches.

The mesh has LWM's four axes (dp, fsdp, tp, sp): data parallel, fully sharded data parallel, tensor
parallel, sequence parallel (ring attention runs over `sp`). Layers only name *logical* axes
('batch', 'seq', 'embed', 'heads', ...); `LOGICAL_AXIS_RULES` is the one place that maps them to mesh
axes, so sequence parallelism is one entry in that table.

    mesh = make_mesh("1,-1,1,4")           # -1: the rest of the devices (here fsdp = n / 4)
    model = lwm_core.load_model("random:debug", mesh=mesh)  # weights placed on their shards
    batch = shard_batch({"input_ids": ids}, mesh)
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from lwm_core.errors import LWMError

MESH_AXES = ("dp", "fsdp", "tp", "sp")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
LOGICAL_AXIS_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("dp", "fsdp"),
    "seq": "sp",
    "cache_seq": "sp",  # KV-cache slots: decoding attends shard by shard
    "embed": "fsdp",
    "heads": "tp",
    "head_dim": None,
    "mlp": "tp",
    "vocab": "tp",
    "layers": None,
}

# Logical axes of activations and of the KV cache (parameters carry theirs as `logical_axes` metadata,
# set where each weight is created in lwm_core/layers.py and decoder.py).
ACTIVATION_AXES: tuple[str | None, ...] = ("batch", "seq", None)  # hidden states [B, T, D]
CACHE_AXES: tuple[str | None, ...] = ("layers", "batch", "cache_seq", "heads", "head_dim")  # k, v [L, B, S, H, Dh]


def seq_axis(rules: dict = LOGICAL_AXIS_RULES) -> str:
    """The mesh axis the sequence is sharded over (ring attention, sharded caches): rules['seq']."""
    target = rules.get("seq")
    if not isinstance(target, str):
        raise LWMError(f"LOGICAL_AXIS_RULES['seq'] must name one mesh axis for ring attention, got {target!r}")
    return target


def parse_mesh_shape(spec: str | Sequence[int], num_devices: int) -> tuple[int, int, int, int]:
    """'dp,fsdp,tp,sp' (one entry may be -1 = the rest) -> four sizes whose product is num_devices."""
    try:
        sizes = [int(s) for s in (spec.split(",") if isinstance(spec, str) else spec)]
    except ValueError:
        raise LWMError(f"mesh {spec!r} must be four integers 'dp,fsdp,tp,sp', e.g. '1,-1,1,1'") from None
    if len(sizes) != 4 or any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
        raise LWMError(f"mesh {spec!r} must be four positive sizes 'dp,fsdp,tp,sp' with at most one -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise LWMError(f"mesh {spec!r}: {num_devices} devices do not divide by {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise LWMError(f"mesh {spec!r} needs {int(np.prod(sizes))} devices but {num_devices} are available")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(spec: str | Sequence[int] = "1,-1,1,1", devices: Sequence | None = None) -> jax.sharding.Mesh:
    """A Mesh with axes (dp, fsdp, tp, sp) from 'dp,fsdp,tp,sp' (-1 = the rest of the devices)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = parse_mesh_shape(spec, len(devices))
    return jax.sharding.Mesh(np.array(devices).reshape(shape), MESH_AXES,
                             axis_types=(AxisType.Auto,) * len(MESH_AXES))


def current_mesh(mesh=None):
    """`mesh`, else the mesh set by `jax.set_mesh`, else None."""
    if mesh is not None:
        return mesh
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh is None or mesh.empty else mesh


def axis_size(mesh, name: str) -> int:
    """Size of mesh axis `name` (1 when there is no mesh or no such axis)."""
    if mesh is None or name not in mesh.axis_names:
        return 1
    return int(dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))[name])


def logical_to_spec(logical_axes: Sequence[str | None], mesh=None, shape: Sequence[int] | None = None,
                    rules: dict = LOGICAL_AXIS_RULES) -> P:
    """PartitionSpec for logical axes. Mesh axes of size 1, absent from the mesh, already used by an
    earlier dimension, or (given `shape`) not dividing the dimension are left out (replicated)."""
    used: set[str] = set()
    spec = []
    for i, name in enumerate(logical_axes):
        target = rules.get(name) if name is not None else None
        names = (target,) if isinstance(target, str) else tuple(target or ())
        kept = []
        for axis in names:
            size = axis_size(mesh, axis) if mesh is not None else 2
            if axis in used or size == 1:
                continue
            if shape is not None and shape[i] % (size * int(np.prod([axis_size(mesh, a) for a in kept]))):
                continue
            kept.append(axis)
        used.update(kept)
        spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return P(*spec)


def _logical_axes(var) -> tuple[str | None, ...]:
    axes = var.get_metadata().get("logical_axes") if hasattr(var, "get_metadata") else None
    return tuple(axes) if axes is not None else (None,) * len(var.shape)


def _is_variable(x) -> bool:
    return hasattr(x, "get_metadata")


def param_specs(state, mesh) -> object:
    """Tree of PartitionSpecs for an nnx State of parameters, from each Variable's `logical_axes`
    metadata through `LOGICAL_AXIS_RULES` (axes that do not divide a dimension are replicated)."""
    return jax.tree.map(lambda v: logical_to_spec(_logical_axes(v), mesh, v.shape), state, is_leaf=_is_variable)


def param_shardings(state, mesh) -> object:
    """Tree of NamedShardings (see `param_specs`)."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(state, mesh),
                        is_leaf=lambda x: isinstance(x, P))


def shard_params(state, mesh):
    """Place every parameter of an nnx State on the mesh according to its logical axes."""
    shardings = param_shardings(state, mesh)
    return jax.tree.map(lambda v, s: v.replace(jax.device_put(v[...], s)), state, shardings, is_leaf=_is_variable)


def constrain(x, logical_axes: Sequence[str | None], mesh=None):
    """`with_sharding_constraint` by logical axes; a no-op without a mesh (argument or context)."""
    mesh = current_mesh(mesh)
    if mesh is None or mesh.size == 1:
        return x
    spec = logical_to_spec(logical_axes, mesh, x.shape)
    sharding = NamedSharding(mesh, spec) if isinstance(mesh, jax.sharding.Mesh) else spec
    return jax.lax.with_sharding_constraint(x, sharding)


def shard_batch(batch, mesh, *, seq_dim: int = 1):
    """Shard [batch, seq, ...] arrays over ('dp', 'fsdp') x 'sp'. Refuses, with a one-line LWMError, a
    sequence length that does not divide by sp (pad it first: `pad_sequence`)."""
    sp = axis_size(mesh, seq_axis())

    def put(x):
        if x.ndim > seq_dim and x.shape[seq_dim] % sp:
            raise LWMError(f"sequence length {x.shape[seq_dim]} does not divide by sp={sp}; pad it to a "
                           f"multiple of {sp} (lwm_core.mesh.pad_sequence) and mask the padding")
        logical = ["batch", "seq"][: x.ndim] + [None] * max(0, x.ndim - 2)
        return jax.device_put(x, NamedSharding(mesh, logical_to_spec(logical, mesh, x.shape)))

    return jax.tree.map(put, batch)


def pad_sequence(x, multiple: int, *, axis: int = 1, value=0, left: bool = False):
    """Pad `axis` of x to a multiple of `multiple` -> (padded x, bool mask of the real tokens [B, T'])."""
    length = x.shape[axis]
    extra = -length % multiple
    widths = [(0, 0)] * x.ndim
    widths[axis] = (extra, 0) if left else (0, extra)
    real = np.arange(length + extra)
    real = (real >= extra) if left else (real < length)
    padded = jax.numpy.pad(x, widths, constant_values=value)
    return padded, jax.numpy.broadcast_to(jax.numpy.asarray(real), (x.shape[0], length + extra))
