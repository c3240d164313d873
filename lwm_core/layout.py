"""Planning a mesh from shapes alone: where every weight and the KV cache would live, and the memory
each device needs, without loading data and without having the devices.

    plan = plan_layout(ModelConfig.from_name("7b"), "1,16,4,1", cache_length=32768)  # a 64-chip pod
    plan["weights"]["lm_head/kernel"]["spec"]   # [ 'fsdp', 'tp' ]
    plan["total_bytes_per_device"]

The layout is the one the runtime uses: each weight's logical axes (`sharding.param_logical_axes`)
through `mesh.LOGICAL_AXIS_RULES` by `mesh.logical_to_spec` on a `jax.sharding.AbstractMesh`, and
the cache by `cache.cache_spec`. Every shard of an array has the same size (an axis that does not
divide a dimension is dropped and the dimension replicated), so bytes per device are exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from jax.sharding import AbstractMesh

from lwm_core.cache import _heads_first, cache_spec
from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError
from lwm_core.mesh import CACHE_AXES, MESH_AXES, axis_size, logical_to_spec, parse_mesh_shape, seq_axis
from lwm_core.sharding import param_logical_axes, param_shapes


def planning_mesh(spec: str | Sequence[int]) -> AbstractMesh:
    """An AbstractMesh (axis names and sizes, no devices) from 'dp,fsdp,tp,sp'. Every size must be
    given: there is no device count here for a -1 to take the rest of."""
    try:
        sizes = [int(s) for s in (spec.split(",") if isinstance(spec, str) else spec)]
    except (TypeError, ValueError):
        sizes = None
    if sizes is None:
        return AbstractMesh(parse_mesh_shape(spec, 1), MESH_AXES)  # raises its one-line error
    if -1 in sizes:
        raise LWMError(f"mesh {spec!r}: planning needs every size given (no -1, which means 'the rest of the "
                       "devices' of this machine), e.g. '1,16,4,1' for 64 devices")
    if len(sizes) != len(MESH_AXES) or any(s < 1 for s in sizes):
        raise LWMError(f"mesh {spec!r} must be four positive sizes 'dp,fsdp,tp,sp', e.g. '1,16,4,1'")
    return AbstractMesh(parse_mesh_shape(sizes, math.prod(sizes)), MESH_AXES)


def _spec_list(spec) -> list:
    return [list(p) if isinstance(p, tuple) else p for p in spec]


def _shard_shape(shape: Sequence[int], spec, mesh) -> list[int]:
    shard = []
    for size, part in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = (part,) if isinstance(part, str) else tuple(part or ())
        shard.append(size // math.prod(axis_size(mesh, a) for a in names))
    return shard


def _replication_notes(name: str, logical_axes, shape, spec, mesh) -> list[str]:
    """One note per mesh axis that the rules name for a dimension but that was dropped because it
    does not divide the dimension (not for axes of size 1 or already used by another dimension)."""
    wanted = logical_to_spec(logical_axes, mesh)  # what the rules give when everything divides
    notes = []
    for i, (logical, want, got) in enumerate(zip(logical_axes, wanted, spec, strict=True)):
        want = (want,) if isinstance(want, str) else tuple(want or ())
        got = (got,) if isinstance(got, str) else tuple(got or ())
        for axis in want:
            if axis in got:
                continue
            kept_before = [a for a in got if a in want and want.index(a) < want.index(axis)]
            over = "*".join([*kept_before, axis])
            by = math.prod(axis_size(mesh, a) for a in [*kept_before, axis])
            notes.append(f"{name}: {logical} {shape[i]} does not divide by {over}={by}; replicated over {axis}")
    return notes


def _dtype(name, what: str) -> jnp.dtype:
    try:
        return jnp.dtype(name)
    except TypeError:
        raise LWMError(f"{what} {name!r} is not a dtype (e.g. bfloat16, float32)") from None


def plan_layout(config: ModelConfig, mesh_shape: tuple[int, int, int, int] | str, *,
                cache_length: int | None = None, batch_size: int = 1, param_dtype=None,
                cache_dtype=None) -> dict[str, Any]:
    """How `config`'s weights and a KV cache of `cache_length` tokens (k and v [L, B, H, S, Dh]) would
    be laid out on a 'dp,fsdp,tp,sp' mesh, and the bytes each device holds. From shapes alone.

    `cache_length` None: the model's max_sequence_length rounded up to a multiple of sp. Dtypes
    default to config.param_dtype (weights) and config.dtype (cache). Returns a JSON-ready dict:
    mesh, devices, dtypes, `weights` {checkpoint key: logical_axes, spec, shape, shard_shape,
    bytes, bytes_per_device}, param_bytes(_per_device), `cache` {..., bytes_per_device for k and v
    together}, total_bytes_per_device, and `notes` (replicated weights, how the length was chosen).
    Raises a one-line LWMError for a malformed mesh, heads that do not divide by tp, or a cache
    length that does not divide by sp.
    """
    mesh = planning_mesh(mesh_shape)
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))
    sp_name = seq_axis()
    sp, tp = axis_size(mesh, sp_name), axis_size(mesh, "tp")
    if config.num_attention_heads % tp:
        divisors = [d for d in range(1, config.num_attention_heads + 1) if config.num_attention_heads % d == 0]
        raise LWMError(f"{config.num_attention_heads} attention heads do not divide by tp={tp}; "
                       f"pick a tp from {', '.join(map(str, divisors))}")
    if batch_size < 1:
        raise LWMError(f"batch size must be at least 1, got {batch_size}")
    notes: list[str] = []
    if cache_length is None:
        cache_length = -(-config.max_sequence_length // sp) * sp
        rounded = "" if cache_length == config.max_sequence_length else f" rounded up to a multiple of sp={sp}"
        notes.append(f"cache length {cache_length}: the model's max_sequence_length "
                     f"{config.max_sequence_length}{rounded}")
    elif cache_length < 1:
        raise LWMError(f"cache length must be at least 1, got {cache_length}")
    elif cache_length % sp:
        raise LWMError(f"cache length {cache_length} does not divide by sp={sp}; use "
                       f"{-(-cache_length // sp) * sp} (the next multiple of {sp})")
    if cache_length > config.max_sequence_length:
        notes.append(f"cache length {cache_length} exceeds the model's max_sequence_length "
                     f"{config.max_sequence_length}; a model loaded as it is refuses such a cache "
                     f"(change it with --max-sequence-length {cache_length})")
    param_dtype = _dtype(param_dtype or config.param_dtype, "param dtype")
    cache_dtype = _dtype(cache_dtype or config.dtype, "cache dtype")

    weights: dict[str, dict[str, Any]] = {}
    shapes = param_shapes(config)
    for key, logical in param_logical_axes(config).items():
        shape = shapes[key]
        spec = logical_to_spec(logical, mesh, shape)
        shard = _shard_shape(shape, spec, mesh)
        notes += _replication_notes(key, logical, shape, spec, mesh)
        weights[key] = {"logical_axes": list(logical), "spec": _spec_list(spec), "shape": list(shape),
                        "shard_shape": shard, "bytes": math.prod(shape) * param_dtype.itemsize,
                        "bytes_per_device": math.prod(shard) * param_dtype.itemsize}

    cache_shape = (config.num_hidden_layers, batch_size, config.num_attention_heads, cache_length, config.head_dim)
    cache_logical = _heads_first(CACHE_AXES)
    spec = cache_spec(config, batch_size, cache_length, mesh)
    shard = _shard_shape(cache_shape, spec, mesh)
    notes += _replication_notes("kv cache", cache_logical, cache_shape, spec, mesh)
    cache = {"length": cache_length, "batch_size": batch_size, "dtype": str(cache_dtype),
             "logical_axes": list(cache_logical), "spec": _spec_list(spec), "shape": list(cache_shape),
             "shard_shape": shard, "bytes": 2 * math.prod(cache_shape) * cache_dtype.itemsize,
             "bytes_per_device": 2 * math.prod(shard) * cache_dtype.itemsize}  # k and v

    param_bytes_per_device = sum(w["bytes_per_device"] for w in weights.values())
    return {"mesh": sizes, "devices": int(mesh.size), "param_dtype": str(param_dtype), "weights": weights,
            "param_bytes": sum(w["bytes"] for w in weights.values()),
            "param_bytes_per_device": param_bytes_per_device, "cache": cache,
            "total_bytes_per_device": param_bytes_per_device + cache["bytes_per_device"], "notes": notes}
