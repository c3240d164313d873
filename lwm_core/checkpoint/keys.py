"""LWM's parameter names, the scanned <-> unscanned layouts, and key/shape validation.

The canonical parameters are a flat `dict[str, np.ndarray]` in LWM's SCANNED layout: the decoder
layers are stacked on a leading axis under `transformer/h/scan_decoder/...`. LWM can also save
unscanned checkpoints (`transformer/h/0/...`, `transformer/h/1/...`); readers turn those into the
canonical layout here, writers go the other way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError

SCAN_PREFIX = "transformer/h/scan_decoder/"
# Per-layer parameters, relative to the layer (scanned: SCAN_PREFIX + name; unscanned: h/<i>/name).
LAYER_KEYS = (
    "attention/wq/kernel", "attention/wk/kernel", "attention/wv/kernel", "attention/wo/kernel",
    "feed_forward/w1/kernel", "feed_forward/w2/kernel", "feed_forward/w3/kernel",
    "attention_norm/kernel", "ffn_norm/kernel",
)
TEXT_KEYS = ("transformer/wte/embedding", "transformer/ln_f/kernel", "lm_head/kernel")
VISION_KEYS = ("transformer/vte/embedding", "vision_head/kernel")
_UNSCANNED = re.compile(r"^transformer/h/(\d+)/(.+)$")


class ArrayInfo(NamedTuple):
    """Shape and dtype name of one stored array, for describing a checkpoint without its data."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def canonical_keys(*, vision: bool) -> list[str]:
    """Every key of a canonical (scanned) parameter dict, sorted."""
    keys = list(TEXT_KEYS) + [SCAN_PREFIX + k for k in LAYER_KEYS]
    if vision:
        keys += VISION_KEYS
    return sorted(keys)


def is_vision(params: Mapping[str, Any]) -> bool:
    return any(k in params for k in VISION_KEYS)


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical key -> shape implied by `config` (scanned: layer axis first, kernels [in, out])."""
    v, d, f, n = config.vocab_size, config.hidden_size, config.intermediate_size, config.num_hidden_layers
    shapes = {
        "transformer/wte/embedding": (v, d),  # [V, D]
        "transformer/ln_f/kernel": (d,),
        "lm_head/kernel": (d, v),  # [D, V]
    }
    per_layer = {
        "attention/wq/kernel": (d, d), "attention/wk/kernel": (d, d),
        "attention/wv/kernel": (d, d), "attention/wo/kernel": (d, d),
        "feed_forward/w1/kernel": (d, f), "feed_forward/w3/kernel": (d, f),
        "feed_forward/w2/kernel": (f, d),
        "attention_norm/kernel": (d,), "ffn_norm/kernel": (d,),
    }
    shapes.update({SCAN_PREFIX + k: (n, *s) for k, s in per_layer.items()})  # [L, ...]
    if config.vision:
        shapes["transformer/vte/embedding"] = (config.vision_vocab_size, d)  # [8448, D]
        shapes["vision_head/kernel"] = (d, config.vision_vocab_size)  # [D, 8448]
    return shapes


def _first(keys: list[str], n: int = 4) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def validate_keys(params: Mapping[str, Any], source: str) -> None:
    """Raise LWMError naming the first missing or unexpected canonical keys of `params`."""
    want = set(canonical_keys(vision=is_vision(params)))
    missing = sorted(want - set(params))
    unexpected = sorted(set(params) - want)
    if missing:
        extra = f" and has unexpected {_first(unexpected, 2)}" if unexpected else ""
        raise LWMError(f"checkpoint {source} lacks parameters {_first(missing)}{extra}; it is not a complete "
                       "LWM language model (a train state needs trainstate_params::)")
    if unexpected:
        raise LWMError(f"checkpoint {source} has unexpected parameters {_first(unexpected)}; "
                       "is it a train state (use trainstate_params::) or another model?")


def check_shapes(params: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Raise LWMError naming the first key whose shape differs from `expected` (or is missing).

    `params` values may be arrays or `ArrayInfo`; keys in `params` but not in `expected` are ignored.
    """
    for key in sorted(expected):
        if key not in params:
            raise LWMError(f"parameter {key} is missing (expected shape {tuple(expected[key])})")
        found = tuple(params[key].shape)
        if found != tuple(expected[key]):
            raise LWMError(f"parameter {key} has shape {found} but the config expects "
                           f"{tuple(expected[key])}; the checkpoint and --config disagree")


def check_config(params: Mapping[str, Any], config: ModelConfig, source: str) -> None:
    """Shapes of `params` against `config`, and the vision head present iff `config.vision`."""
    if is_vision(params) != config.vision:
        has = "has" if is_vision(params) else "has no"
        raise LWMError(f"checkpoint {source} {has} vision embeddings but the config says vision="
                       f"{config.vision}; pick a config that matches")
    check_shapes(params, expected_shapes(config))


def to_scanned(flat: dict[str, Any], source: str, stack=np.stack) -> tuple[dict[str, Any], str]:
    """Canonical scanned dict from a scanned or unscanned flat dict; returns (params, layout found).

    `flat` is consumed: per-layer entries are removed as they are stacked so a big checkpoint is
    never held twice. `stack` turns the per-layer list into one value (np.stack for arrays).
    """
    layers: dict[str, dict[int, Any]] = {}
    for key in [k for k in flat if _UNSCANNED.match(k)]:
        index, name = _UNSCANNED.match(key).groups()
        layers.setdefault(name, {})[int(index)] = flat.pop(key)
    if not layers:
        return flat, "scanned"
    if any(k.startswith(SCAN_PREFIX) for k in flat):
        raise LWMError(f"checkpoint {source} mixes scanned (h/scan_decoder) and unscanned (h/<i>) layers")
    n_layers = max(max(by_index) for by_index in layers.values()) + 1
    for name, by_index in sorted(layers.items()):
        gaps = [i for i in range(n_layers) if i not in by_index]
        if gaps:
            raise LWMError(f"checkpoint {source} lacks transformer/h/{gaps[0]}/{name} "
                           f"(it has {len(by_index)} of {n_layers} layers)")
        flat[SCAN_PREFIX + name] = stack([by_index.pop(i) for i in range(n_layers)])
    return flat, "unscanned"


def stack_infos(infos: list[ArrayInfo]) -> ArrayInfo:
    """`to_scanned`'s `stack` for shape-only descriptions."""
    return ArrayInfo((len(infos), *infos[0].shape), infos[0].dtype)


_STATE_UNSCANNED = ("transformer", "h", "layers")  # an unscanned model's layers: transformer/h/layers/<i>/...


def state_key(path: tuple) -> tuple[str, int | None]:
    """NNX state path of a model weight -> (canonical checkpoint key, layer index or None).

    A scanned model's state paths are the keys themselves; an unscanned model keeps layer i at
    transformer/h/layers/<i>/..., whose key is the scanned one, indexed by layer.
    """
    if tuple(map(str, path[:3])) == _STATE_UNSCANNED:
        return SCAN_PREFIX + "/".join(map(str, path[4:])), int(path[3])
    return "/".join(map(str, path)), None


def state_to_params(state) -> dict[str, np.ndarray]:
    """A model's parameter nnx.State (or its gradients) -> canonical flat dict, scanned layout."""
    from flax import nnx

    params, per_layer = {}, {}
    for path, var in nnx.to_flat_state(state):
        key, layer = state_key(path)
        if layer is None:
            params[key] = np.asarray(var[...])
        else:
            per_layer.setdefault(key, {})[layer] = np.asarray(var[...])
    for key, layers in per_layer.items():
        params[key] = np.stack([layers[i] for i in range(len(layers))])
    return params


def iter_layout(params: Mapping[str, np.ndarray], layout: str) -> Iterator[tuple[str, np.ndarray]]:
    """(key, array) pairs of `params` in `layout`, sorted by key; unscanned yields per-layer views."""
    if layout not in ("scanned", "unscanned"):
        raise LWMError(f"layout must be 'scanned' or 'unscanned', got {layout!r}")
    for key in sorted(params):
        value = params[key]
        if layout == "unscanned" and key.startswith(SCAN_PREFIX):
            name = key[len(SCAN_PREFIX):]
            for i in range(value.shape[0]):
                yield f"transformer/h/{i}/{name}", value[i]  # a view: nothing is copied
        else:
            yield key, value


def dtype_summary(dtypes: list[str]) -> str:
    """One dtype name for a checkpoint: the single dtype, or the distinct ones joined by '+'."""
    return "+".join(sorted(set(dtypes))) if dtypes else "none"
