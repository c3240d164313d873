"""Hugging Face LLaMA checkpoints (`hf::DIR`): config.json + safetensors or pytorch_model*.bin.

Names map one to one onto LWM's (q/k/v/o_proj = wq/wk/wv/wo, gate/up/down_proj = w1/w3/w2,
input_layernorm = attention_norm, post_attention_layernorm = ffn_norm). HF stores linear weights
[out, in] (LWM: kernels [in, out]) and applies RoPE as "rotate half", so the rows of q/k are permuted
per head relative to LWM's interleaved RoPE; `lwm_to_hf_qk` / `hf_to_lwm_qk` convert.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lwm_core.checkpoint.common import ProgressFn, atomic_path, cast, little_endian, np_dtype
from lwm_core.checkpoint.hf_config import config_to_hf, read_hf_config
from lwm_core.checkpoint.hf_files import ShardWriter, iter_hf_tensors, weight_files
from lwm_core.checkpoint.keys import SCAN_PREFIX, ArrayInfo, dtype_summary, is_vision
from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError

SHARD_BYTES = 5 * 10**9  # largest safetensors shard written, as transformers does by default
_TOP = {"transformer/wte/embedding": "model.embed_tokens.weight", "transformer/ln_f/kernel": "model.norm.weight",
        "lm_head/kernel": "lm_head.weight"}
_LAYER = {"attention/wq/kernel": "self_attn.q_proj.weight", "attention/wk/kernel": "self_attn.k_proj.weight",
          "attention/wv/kernel": "self_attn.v_proj.weight", "attention/wo/kernel": "self_attn.o_proj.weight",
          "feed_forward/w1/kernel": "mlp.gate_proj.weight", "feed_forward/w3/kernel": "mlp.up_proj.weight",
          "feed_forward/w2/kernel": "mlp.down_proj.weight", "attention_norm/kernel": "input_layernorm.weight",
          "ffn_norm/kernel": "post_attention_layernorm.weight"}
_QK = ("attention/wq/kernel", "attention/wk/kernel", SCAN_PREFIX + "attention/wq/kernel",
       SCAN_PREFIX + "attention/wk/kernel")
_HF_TOP = {v: k for k, v in _TOP.items()}
_HF_LAYER = {v: k for k, v in _LAYER.items()}
_LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def lwm_to_hf_qk(kernel: np.ndarray, n_heads: int) -> np.ndarray:
    """LWM wq/wk kernel [in, out] (interleaved RoPE) -> HF q/k_proj weight [out, in] (rotate half)."""
    w = kernel.T  # [out, in], rows in LWM order: per head, pair j's two rows are 2j, 2j + 1
    out, d_in = w.shape
    head_dim = out // n_heads
    # [H, hd/2, 2, in] -> [H, 2, hd/2, in]: HF row c * hd/2 + j holds LWM row 2j + c.
    return w.reshape(n_heads, head_dim // 2, 2, d_in).transpose(0, 2, 1, 3).reshape(out, d_in)


def hf_to_lwm_qk(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of `lwm_to_hf_qk`: HF weight [out, in] -> LWM kernel [in, out]."""
    out, d_in = weight.shape
    head_dim = out // n_heads
    w = weight.reshape(n_heads, 2, head_dim // 2, d_in).transpose(0, 2, 1, 3).reshape(out, d_in)
    return w.T


def _to_hf(key: str, value: np.ndarray, n_heads: int) -> np.ndarray:
    if key in _QK:
        return lwm_to_hf_qk(value, n_heads)
    return value.T if value.ndim == 2 and key != "transformer/wte/embedding" else value


def _to_lwm(key: str, value: np.ndarray, n_heads: int) -> np.ndarray:
    if key in _QK:
        return hf_to_lwm_qk(value, n_heads)
    return value.T if value.ndim == 2 and key != "transformer/wte/embedding" else value


def hf_tensors(params: dict[str, np.ndarray], config: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, HF tensor) for canonical `params`, lazily: lm_head [D, V] -> [V, D], kernels transposed."""
    for key, name in _TOP.items():
        yield name, _to_hf(key, params[key], config.num_attention_heads)
    for i in range(config.num_hidden_layers):
        for key, name in _LAYER.items():
            yield f"model.layers.{i}.{name}", _to_hf(key, params[SCAN_PREFIX + key][i], config.num_attention_heads)


def write_hf(params: dict[str, np.ndarray], path: str | os.PathLike, config: ModelConfig, *,
             dtype: str | None = None, shard_bytes: int = SHARD_BYTES, overwrite: bool = True,
             progress: ProgressFn | None = None) -> None:
    """Write canonical `params` as an HF LLaMA folder (config.json + safetensors), atomically.

    Shards hold at most `shard_bytes` (one shard in memory at a time); several get an index json.
    """
    if is_vision(params):
        raise LWMError("the Hugging Face LLaMA format has no vision embeddings/head; save a vision model "
                       "as params:: or orbax::")
    itemsize = {k: np_dtype(dtype).itemsize if dtype else v.dtype.itemsize for k, v in params.items()}
    total = sum(v.size * itemsize[k] for k, v in params.items())
    stored = dtype or dtype_summary([v.dtype.name for v in params.values()])
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.mkdir()
        writer = ShardWriter(tmp, shard_bytes)
        for name, value in hf_tensors(params, config):
            writer.add(name, little_endian(cast(value, dtype)))  # contiguous copy of one tensor
            if progress:
                progress(writer.total_bytes, total, name)
        writer.finish()
        (tmp / "config.json").write_text(json.dumps(config_to_hf(config, stored), indent=2) + "\n")


def _canonical_name(name: str) -> tuple[str, int | None] | None:
    """HF name -> (canonical key, layer index or None); None for buffers LWM does not keep."""
    if name in _HF_TOP:
        return _HF_TOP[name], None
    match = _LAYER_NAME.match(name)
    if match and match.group(2) in _HF_LAYER:
        return SCAN_PREFIX + _HF_LAYER[match.group(2)], int(match.group(1))
    if name.endswith("rotary_emb.inv_freq"):  # a derived buffer older transformers saved
        return None
    raise LWMError(f"unexpected tensor {name} in the Hugging Face checkpoint; is it a LLaMA model?")


def read_hf(path: str | os.PathLike, *, dtype: str | None = None, shapes_only: bool = False,
            progress: ProgressFn | None = None) -> tuple[dict[str, object], ModelConfig, str]:
    """(canonical params, config from config.json, stored dtype) of an HF LLaMA folder.

    Layers are written into preallocated stacked [L, ...] arrays as they are read, so the checkpoint
    is never held twice. With `shapes_only` the values are `ArrayInfo` and no data is read.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise LWMError(f"checkpoint {folder} does not exist" if not folder.exists()
                       else f"checkpoint {folder} is not a folder (hf:: needs a model folder)")
    config = read_hf_config(folder)
    n_layers, n_heads = config.num_hidden_layers, config.num_attention_heads
    params: dict[str, object] = {}
    filled: dict[str, set[int]] = {}
    stored: list[str] = []
    total = 0 if shapes_only else sum(f.stat().st_size for f in weight_files(folder))
    done = 0
    for name, value in iter_hf_tensors(folder, shapes_only=shapes_only):
        target = _canonical_name(name)
        if target is None:
            continue
        key, layer = target
        stored.append(value.dtype if shapes_only else value.dtype.name)
        if layer is not None and layer >= n_layers:
            raise LWMError(f"{folder} has {name} but config.json says {n_layers} layers")
        if shapes_only:
            shape = value.shape[::-1] if len(value.shape) == 2 and key != "transformer/wte/embedding" \
                else value.shape
            info = ArrayInfo(tuple(shape), dtype or value.dtype)
            params[key] = info if layer is None else ArrayInfo((n_layers, *info.shape), info.dtype)
        else:
            array = cast(_to_lwm(key, value, n_heads), dtype)
            if layer is None:
                params[key] = np.array(array)  # own the memory (safetensors arrays are memory-mapped)
            else:
                if key not in params:
                    params[key] = np.empty((n_layers, *array.shape), array.dtype)  # [L, ...]
                if params[key].shape[1:] != array.shape:
                    raise LWMError(f"{folder}: {name} has shape {value.shape}, unlike layer 0's "
                                   f"{params[key].shape[1:]}")
                params[key][layer] = array
        if layer is not None:
            filled.setdefault(key, set()).add(layer)
        if progress and not shapes_only:
            done += value.nbytes
            progress(done, total, name)
    for key, layers in sorted(filled.items()):
        if len(layers) != n_layers:
            gap = min(set(range(n_layers)) - layers)
            raise LWMError(f"{folder} lacks model.layers.{gap}.{_LAYER[key[len(SCAN_PREFIX):]]}")
    return params, config, dtype_summary(stored)
