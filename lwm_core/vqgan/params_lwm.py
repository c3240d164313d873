"""LWM's parameter naming for the VQGAN, and its pickle format.

LWM stores the VQGAN as a pickle of the nested dict of numpy arrays of its Flax module tree, e.g.
`encoder/DownsamplingBlock_0/ResnetBlock_1/Conv_0/kernel` [3, 3, 128, 128] (HWIO). That flat
'/'-joined naming is the interchange format of this package: every reader returns it and every
writer takes it (see `io.py`). Our module attribute names map onto it one to one:

    conv_in / conv_out / norm_out      -> Conv_0 / Conv_1 / GroupNorm_0   (encoder and decoder)
    down.i / up.i / mid.j              -> DownsamplingBlock_i / UpsamplingBlock_i / MidBlock_0/ResnetBlock_j
    resnets.j: norm1 conv1 norm2 conv2 shortcut -> ResnetBlock_j: GroupNorm_0 Conv_0 GroupNorm_1 Conv_1 Conv_2
    downsample / upsample              -> Downsample_0/Conv_0 / Upsample_0/Conv_0
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm_core.checkpoint.common import flatten_tree, unflatten_tree
from lwm_core.errors import LWMError
from lwm_core.fileio import atomic_path
from lwm_core.vqgan.config import VQGANConfig
from lwm_core.vqgan.model import VQGAN

_NAMES = {
    "conv_in": "Conv_0", "conv_out": "Conv_1", "norm_out": "GroupNorm_0",
    "norm1": "GroupNorm_0", "conv1": "Conv_0", "norm2": "GroupNorm_1", "conv2": "Conv_1",
    "shortcut": "Conv_2", "downsample": "Downsample_0/Conv_0", "upsample": "Upsample_0/Conv_0",
}
_LISTS = {"down": "DownsamplingBlock_{}", "up": "UpsamplingBlock_{}", "mid": "MidBlock_0/ResnetBlock_{}",
          "resnets": "ResnetBlock_{}"}


def lwm_key(path: tuple[Any, ...]) -> str:
    """Our NNX state path -> LWM's flat key, e.g. ('encoder', 'down', 0, 'resnets', 1, 'conv1',
    'kernel') -> 'encoder/DownsamplingBlock_0/ResnetBlock_1/Conv_0/kernel'."""
    parts: list[str] = []
    i = 0
    while i < len(path):
        name = str(path[i])
        if name in _LISTS and i + 1 < len(path) and isinstance(path[i + 1], int):
            parts.append(_LISTS[name].format(path[i + 1]))
            i += 2
            continue
        parts.append(_NAMES.get(name, name))
        i += 1
    return "/".join(parts)


def abstract_model(config: VQGANConfig) -> VQGAN:
    """The model with shapes only (no memory, no random init)."""
    return nnx.eval_shape(lambda: VQGAN(config, rngs=nnx.Rngs(0)))


def expected_shapes(config: VQGANConfig) -> dict[str, tuple[int, ...]]:
    """LWM key -> shape for a config, read off the model itself."""
    _, state = nnx.split(abstract_model(config))
    return {lwm_key(path): tuple(var.get_value().shape) for path, var in nnx.to_flat_state(state)}


def model_to_lwm(model: VQGAN) -> dict[str, np.ndarray]:
    """Flat LWM-named float32 numpy arrays of a model."""
    _, state = nnx.split(model)
    return {lwm_key(path): np.asarray(var.get_value(), dtype=np.float32)
            for path, var in nnx.to_flat_state(state)}


def lwm_to_model(params: dict[str, np.ndarray], config: VQGANConfig) -> VQGAN:
    """Build the model from flat LWM-named arrays; every key and shape must match the config."""
    check_params(params, config)
    graphdef, state = nnx.split(abstract_model(config))
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        var.set_value(jnp.asarray(params[lwm_key(path)], dtype=jnp.float32))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def check_params(params: dict[str, np.ndarray], config: VQGANConfig) -> None:
    """Raise LWMError naming the first missing/unexpected key or wrong shape."""
    want = expected_shapes(config)
    missing = sorted(set(want) - set(params))
    extra = sorted(set(params) - set(want))
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise LWMError(f"VQGAN weights do not match the config ({len(missing)} missing, {len(extra)} "
                       f"unexpected keys; e.g. {what}); pass the matching config")
    for key, shape in want.items():
        if tuple(np.shape(params[key])) != shape:
            raise LWMError(f"VQGAN weight {key} has shape {tuple(np.shape(params[key]))}, the config "
                           f"expects {shape}; pass the matching config")


def flatten(tree: dict[str, Any]) -> dict[str, np.ndarray]:
    """Nested dict -> {'a/b/c': array}."""
    return {key: np.asarray(value) for key, value in flatten_tree(tree).items()}


unflatten = unflatten_tree


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """A pickle of numpy arrays needs numpy's reconstructors and container types, nothing else;
    refusing other globals keeps a hostile file from running code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
        ("flax.core.frozen_dict", "FrozenDict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise LWMError(f"VQGAN pickle refers to {module}.{name}; only numpy arrays in dicts are accepted")


def load_lwm_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Flat LWM-named arrays from LWM's VQGAN pickle (a top-level 'params' level is unwrapped)."""
    try:
        with open(path, "rb") as f:
            tree = _NumpyOnlyUnpickler(f).load()
    except LWMError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise LWMError(f"{path}: not a readable VQGAN pickle ({type(exc).__name__}: {exc})") from None
    if not hasattr(tree, "items"):
        raise LWMError(f"{path}: a VQGAN pickle holds a dict of arrays, found {type(tree).__name__}")
    tree = dict(tree.items())
    if set(tree) == {"params"}:
        tree = dict(tree["params"].items())
    return flatten(tree)


def save_lwm_pickle(params: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write LWM's format: a pickle of the nested dict of numpy arrays (atomically)."""
    tree = unflatten({k: np.asarray(v) for k, v in params.items()})
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as f:
        pickle.dump(tree, f, protocol=pickle.HIGHEST_PROTOCOL)


def params_digest(params: dict[str, np.ndarray]) -> str:
    """A short content hash of the weights: the VQGAN identity recorded in token files."""
    import hashlib

    h = hashlib.sha256()
    for key in sorted(params):
        arr = np.ascontiguousarray(params[key], dtype=np.float32)
        h.update(key.encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


__all__ = ["lwm_key", "expected_shapes", "model_to_lwm", "lwm_to_model", "check_params",
           "load_lwm_pickle", "save_lwm_pickle", "params_digest", "flatten", "unflatten"]
