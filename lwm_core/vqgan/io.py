"""Reading and writing VQGAN weights in the three formats, and converting between them.

- LWM pickle (`*.pkl`, or any other file that is not ours): LWM's nested dict of numpy arrays; it
  carries no config, so the given one (else the full-size default) is used and checked.
- diffusers folder (a directory with config.json + *.safetensors): aMUSEd's `vqvae` layout.
- ours (`*.safetensors` with `lwm_format: vqgan` metadata): LWM's flat names and HWIO kernels plus the
  config as JSON, so the file alone rebuilds the model.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from lwm_core.errors import LWMError
from lwm_core.fileio import atomic_path
from lwm_core.vqgan.config import VQGANConfig
from lwm_core.vqgan.params_diffusers import load_diffusers, read_safetensors, save_diffusers
from lwm_core.vqgan.params_lwm import check_params, load_lwm_pickle, save_lwm_pickle

FORMATS = ("lwm", "diffusers", "ours")
_PICKLE_SUFFIXES = (".pkl", ".pickle")


def detect_format(path: str | os.PathLike) -> str:
    """'diffusers' for a folder, 'ours' for .safetensors, 'lwm' for anything else (a pickle)."""
    p = pathlib.Path(path)
    if p.is_dir():
        return "diffusers"
    return "ours" if p.suffix == ".safetensors" else "lwm"


def read_vqgan(path: str | os.PathLike, config: VQGANConfig | None = None
               ) -> tuple[dict[str, np.ndarray], VQGANConfig]:
    """(flat LWM-named float32 arrays, config) from any supported format.

    The config stored with the weights wins; else `config`; else the full-size default.
    """
    p = pathlib.Path(path)
    if not p.exists():
        raise LWMError(f"VQGAN weights not found: {path} (a LWM .pkl, a diffusers folder, our "
                       ".safetensors, or 'random:tiny' / 'random:full' for untrained weights)")
    fmt = detect_format(p)
    if fmt == "diffusers":
        return load_diffusers(p)
    if fmt == "ours":
        params, meta = read_safetensors(p)
        if meta.get("lwm_format") != "vqgan":
            raise LWMError(f"{path}: a .safetensors VQGAN must be written by `lwm convert` "
                           "(a diffusers one lives in a folder with its config.json)")
        stored = VQGANConfig.from_json(meta["config"])
        check_params(params, stored)
        return params, stored
    params = load_lwm_pickle(p)
    config = config or VQGANConfig()
    check_params(params, config)
    return params, config


def write_vqgan(params: dict[str, np.ndarray], config: VQGANConfig, dst: str | os.PathLike,
                fmt: str | None = None) -> str:
    """Write `params` to `dst` as `fmt` (default from the name: .pkl/.pickle -> LWM pickle,
    .safetensors -> ours, anything else -> a diffusers folder). Returns the format written."""
    p = pathlib.Path(dst)
    if fmt is None:
        fmt = ("lwm" if p.suffix in _PICKLE_SUFFIXES else "ours" if p.suffix == ".safetensors"
               else "diffusers")
    if fmt not in FORMATS:
        raise LWMError(f"unknown VQGAN format {fmt!r}; choose from {', '.join(FORMATS)}")
    check_params(params, config)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "lwm":
        save_lwm_pickle(params, p)
    elif fmt == "diffusers":
        save_diffusers(params, config, p)
    else:
        from safetensors.numpy import save_file

        with atomic_path(p, overwrite=True) as tmp:
            save_file({k: np.ascontiguousarray(v, np.float32) for k, v in params.items()}, str(tmp),
                      metadata={"lwm_format": "vqgan", "config": config.to_json()})
    return fmt


def convert_vqgan(src: str | os.PathLike, dst: str | os.PathLike, config: VQGANConfig | None = None,
                  fmt: str | None = None) -> str:
    """Convert VQGAN weights between LWM's pickle, a diffusers folder and our .safetensors.

    `config` is needed only for a LWM pickle of a non-default architecture. Returns the format written.
    Example: `convert_vqgan("vqgan.pkl", "vqgan_diffusers/")`.
    """
    if pathlib.Path(src).resolve() == pathlib.Path(dst).resolve():
        raise LWMError("convert: source and destination are the same path")
    params, config = read_vqgan(src, config)
    return write_vqgan(params, config, dst, fmt)
