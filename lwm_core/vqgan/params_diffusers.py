"""diffusers `VQModel` folders (aMUSEd's `vqvae`): config.json + safetensors, torch layout.

Names map one to one onto LWM's (see `params_lwm.py`); conv kernels are OIHW in torch and HWIO here,
GroupNorm `weight` is Flax's `scale`, the codebook is `quantize.embedding.weight` [K, D] in both.
LWM's `decoder/UpsamplingBlock_0` and diffusers' `decoder.up_blocks.0` are both the deepest level.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
from typing import Any

import ml_dtypes
import numpy as np

from lwm_core.errors import LWMError
from lwm_core.fileio import atomic_path
from lwm_core.vqgan.config import VQGANConfig
from lwm_core.vqgan.params_lwm import check_params, expected_shapes

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

_IN_RESNET = {"GroupNorm_0": "norm1", "GroupNorm_1": "norm2", "Conv_0": "conv1", "Conv_1": "conv2",
              "Conv_2": "conv_shortcut"}
_AT_TOP = {"Conv_0": "conv_in", "Conv_1": "conv_out", "GroupNorm_0": "conv_norm_out"}


def diffusers_key(key: str) -> str:
    """LWM key -> diffusers key, e.g. 'decoder/UpsamplingBlock_1/Upsample_0/Conv_0/kernel' ->
    'decoder.up_blocks.1.upsamplers.0.conv.weight'."""
    parts = key.split("/")
    *path, leaf = parts
    out: list[str] = []
    in_resnet = False
    i = 0
    while i < len(path):
        name = path[i]
        kind, _, index = name.rpartition("_")
        if name == "quantize":
            out.append("quantize.embedding")
        elif kind == "DownsamplingBlock":
            out.append(f"down_blocks.{index}")
        elif kind == "UpsamplingBlock":
            out.append(f"up_blocks.{index}")
        elif name == "MidBlock_0":
            out.append("mid_block")
        elif kind == "ResnetBlock":
            out.append(f"resnets.{index}")
            in_resnet = True
        elif name in ("Downsample_0", "Upsample_0"):
            out.append(("downsamplers" if name.startswith("Down") else "upsamplers") + ".0.conv")
            i += 1  # the Conv_0 inside is the conv itself
        elif in_resnet:
            out.append(_IN_RESNET[name])
        elif len(out) == 1 and name in _AT_TOP:
            out.append(_AT_TOP[name])
        else:
            out.append(name)
        i += 1
    out.append("bias" if leaf == "bias" else "weight")  # kernel, scale, embeddings -> weight
    return ".".join(out)


def to_torch_layout(key: str, array: np.ndarray) -> np.ndarray:
    """HWIO conv kernels -> OIHW; everything else unchanged."""
    return np.ascontiguousarray(array.transpose(3, 2, 0, 1)) if key.endswith("/kernel") else array


def from_torch_layout(key: str, array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0)) if key.endswith("/kernel") else array


def config_from_diffusers(data: dict[str, Any]) -> VQGANConfig:
    """VQGANConfig from a diffusers VQModel config.json dict; refuses structures LWM does not have."""
    checks = {
        "mid_block_add_attention": (data.get("mid_block_add_attention", True), False),
        "act_fn": (data.get("act_fn", "silu"), "silu"),
        "norm_type": (data.get("norm_type", "group"), "group"),
        "out_channels": (data.get("out_channels", 3), data.get("in_channels", 3)),
    }
    for name, (got, want) in checks.items():
        if got != want:
            raise LWMError(f"diffusers VQModel with {name}={got!r} is not LWM's VQGAN (needs {want!r})")
    blocks = list(data.get("block_out_channels", (64,)))
    down = set(data.get("down_block_types", ("DownEncoderBlock2D",)))
    up = set(data.get("up_block_types", ("UpDecoderBlock2D",)))
    if down != {"DownEncoderBlock2D"} or up != {"UpDecoderBlock2D"}:
        raise LWMError(f"diffusers VQModel blocks {sorted(down | up)} are not LWM's (Down/UpDecoderBlock2D)")
    if any(b % blocks[0] for b in blocks):
        raise LWMError(f"block_out_channels {blocks} are not multiples of the first width")
    latent = data.get("latent_channels", 3)
    return VQGANConfig(
        resolution=data.get("lwm_resolution", 256), num_channels=data.get("in_channels", 3),
        hidden_channels=blocks[0], channel_mult=tuple(b // blocks[0] for b in blocks),
        num_res_blocks=data.get("layers_per_block", 1), z_channels=latent,
        num_embeddings=data.get("num_vq_embeddings", 256),
        quantized_embed_dim=data.get("vq_embed_dim") or latent,
        norm_num_groups=data.get("norm_num_groups", 32))


def config_to_diffusers(config: VQGANConfig) -> dict[str, Any]:
    n = config.num_resolutions
    return {
        "_class_name": "VQModel", "in_channels": config.num_channels, "out_channels": config.num_channels,
        "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(config.level_channels), "layers_per_block": config.num_res_blocks,
        "act_fn": "silu", "latent_channels": config.z_channels, "sample_size": config.resolution,
        "num_vq_embeddings": config.num_embeddings, "norm_num_groups": config.norm_num_groups,
        "vq_embed_dim": config.quantized_embed_dim, "scaling_factor": 0.18215, "norm_type": "group",
        "mid_block_add_attention": False, "lookup_from_codebook": True, "force_upcast": False,
        "lwm_resolution": config.resolution,  # ours: diffusers ignores it, we read it back
    }


_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64}


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(arrays as float32, metadata). Reads bf16 too, which safetensors' numpy API cannot."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
            data = f.read()
    except (OSError, struct.error, ValueError) as exc:
        raise LWMError(f"{path}: not a readable safetensors file ({exc})") from None
    meta = header.pop("__metadata__", None) or {}
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise LWMError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=_DTYPES[info["dtype"]]).reshape(info["shape"])
        out[name] = array.astype(np.float32)
    return out, meta


def load_diffusers(folder: str | os.PathLike) -> tuple[dict[str, np.ndarray], VQGANConfig]:
    """Flat LWM-named HWIO arrays and the config of a diffusers VQModel folder."""
    folder = pathlib.Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise LWMError(f"{folder}: a diffusers VQModel folder needs config.json")
    config = config_from_diffusers(json.loads(config_file.read_text()))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise LWMError(f"{folder}: no .safetensors weights next to config.json")
    torch_params: dict[str, np.ndarray] = {}
    for file in files:
        torch_params.update(read_safetensors(file)[0])
    params: dict[str, np.ndarray] = {}
    for key in expected_shapes(config):
        name = diffusers_key(key)
        if name not in torch_params:
            raise LWMError(f"{folder}: weight {name} is missing for this config")
        params[key] = from_torch_layout(key, torch_params[name])
    check_params(params, config)
    return params, config


def save_diffusers(params: dict[str, np.ndarray], config: VQGANConfig, folder: str | os.PathLike) -> None:
    """Write a folder that `diffusers.VQModel.from_pretrained` loads."""
    from safetensors.numpy import save_file

    check_params(params, config)
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {diffusers_key(k): to_torch_layout(k, np.asarray(v, np.float32)) for k, v in params.items()}
    # Each file is replaced atomically; the folder itself is kept (it may hold other files).
    with atomic_path(folder / WEIGHTS_NAME, overwrite=True) as tmp:
        save_file(tensors, str(tmp))
    with atomic_path(folder / "config.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(config_to_diffusers(config), indent=2))
