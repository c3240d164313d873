"""What every checkpoint format shares: dtype names, casting, progress callbacks, atomic writes."""

from __future__ import annotations

from collections.abc import Callable

import ml_dtypes
import numpy as np

from lwm_core.errors import LWMError
from lwm_core.fileio import atomic_path as atomic_path  # re-exported: the checkpoint writers import it from here

# progress(done, total, what): `done`/`total` are bytes (total 0 when unknown), `what` the current item.
ProgressFn = Callable[[int, int, str], None]

_EXTRA_DTYPES = {"bfloat16": np.dtype(ml_dtypes.bfloat16)}
FLOAT_DTYPES = ("float32", "bfloat16", "float16")


def np_dtype(name: str) -> np.dtype:
    """numpy dtype from a name as Flax/safetensors write it ('float32', 'bfloat16', ...)."""
    if name in _EXTRA_DTYPES:
        return _EXTRA_DTYPES[name]
    try:
        return np.dtype(name)
    except TypeError as exc:
        raise LWMError(f"unknown array dtype {name!r} in checkpoint") from exc


def check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise LWMError(f"dtype must be one of {', '.join(FLOAT_DTYPES)}, got {dtype!r}")


def cast(array: np.ndarray, dtype: str | None) -> np.ndarray:
    """`array` in floating dtype `dtype` (None keeps it); integer arrays are never cast."""
    is_float = array.dtype.kind == "f" or array.dtype == _EXTRA_DTYPES["bfloat16"]
    if dtype is None or array.dtype.name == dtype or not is_float:
        return array
    return array.astype(np_dtype(dtype))


def little_endian(array: np.ndarray) -> np.ndarray:
    """C-contiguous little-endian `array` (a copy only when needed): how every format stores data."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    # Not np.ascontiguousarray: it turns a 0-d array into shape (1,).
    return array if array.flags.c_contiguous else array.copy(order="C")


def flatten_tree(tree, prefix: str = "") -> dict:
    """Nested mapping (dicts, FrozenDicts) -> {'a/b/c': leaf}."""
    flat: dict = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if hasattr(value, "items"):
            flat.update(flatten_tree(value, key + "/"))
        else:
            flat[key] = value
    return flat


def unflatten_tree(flat: dict) -> dict:
    """{'a/b/c': leaf} -> nested dicts."""
    tree: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree
