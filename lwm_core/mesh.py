"""Device mesh, the logical-axis -> mesh-axis table, and sharding of parameters and batches.

The mesh has LWM's four axes (dp, fsdp, tp, sp): data parallel, fully sharded data parallel, tensor
parallel, sequence parallel (ring attention runs over `sp`). Layers only name *logical* axes
('batch', 'seq', 'embed', 'heads', ...); `LOGICAL_AXIS_RULES` is the one place that maps them to mesh
axes, so sequence parallelism is one entry in that table.

    mesh = make_mesh("1,-1,1,4")           # -1: the rest of the devices (here fsdp = n / 4)
    with jax.set_mesh(mesh):
        params = shard_params(nnx.state(model, nnx.Param), mesh)
        batch = shard_batch({"input_ids": ids}, mesh)
"""

from __future__ import annotations

import re
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

# parameter name (regex on the '/'-joined LWM key) -> logical axes of its unscanned shape
PARAM_LOGICAL_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"(wte|vte)/embedding$", ("vocab", "embed")),
    (r"attention/(wq|wk|wv)/kernel$", ("embed", "heads")),
    (r"attention/wo/kernel$", ("heads", "embed")),
    (r"feed_forward/(w1|w3)/kernel$", ("embed", "mlp")),
    (r"feed_forward/w2/kernel$", ("mlp", "embed")),
    (r"(lm_head|vision_head)/kernel$", ("embed", "vocab")),
    (r"(norm|ln_f)[^/]*/kernel$", (None,)),
)


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


def _path_key(path) -> str:
    """'/'-joined key of a tree path; the trailing 'value' of an nnx Variable is dropped."""
    parts = [str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path]
    while parts and parts[-1] in ("value", "raw_value"):
        parts.pop()
    return "/".join(parts)


def param_logical_axes(key: str, ndim: int) -> tuple[str | None, ...]:
    """Logical axes of a parameter from its LWM key; a scanned stack gets a leading 'layers' axis."""
    for pattern, axes in PARAM_LOGICAL_AXES:
        if re.search(pattern, key):
            if ndim == len(axes) + 1:
                return ("layers",) + axes
            if ndim == len(axes):
                return axes
    return (None,) * ndim


def param_specs(params, mesh) -> object:
    """Tree of PartitionSpecs for a parameter tree (nnx.State or nested dict) keyed like LWM."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: logical_to_spec(param_logical_axes(_path_key(path), x.ndim), mesh, x.shape), params)


def shard_params(params, mesh):
    """Place every parameter on the mesh according to `LOGICAL_AXIS_RULES`."""
    specs = param_specs(params, mesh)
    return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), params, specs)


def shard_batch(batch, mesh, *, seq_axis: int = 1):
    """Shard [batch, seq, ...] arrays over ('dp', 'fsdp') x 'sp'. Refuses, with a one-line LWMError, a
    sequence length that does not divide by sp (pad it first: `pad_sequence`)."""
    sp = axis_size(mesh, "sp")

    def put(x):
        if x.ndim > seq_axis and x.shape[seq_axis] % sp:
            raise LWMError(f"sequence length {x.shape[seq_axis]} does not divide by sp={sp}; pad it to a "
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
