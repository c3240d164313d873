"""The files of a Hugging Face checkpoint: finding them, reading tensors one at a time, writing shards.

Safetensors are read through their header with `np.memmap` rather than `safetensors.numpy`, whose
`safe_open(...).get_tensor` does not know bfloat16 (ml_dtypes) in the installed version; the format
is a little-endian u64 header length, a JSON header {name: {dtype, shape, data_offsets}}, then data.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lwm_core.checkpoint.common import np_dtype
from lwm_core.checkpoint.keys import ArrayInfo
from lwm_core.errors import LWMError

_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def weight_files(folder: Path) -> list[Path]:
    """The weight files of an HF folder: an index's shards, else *.safetensors, else pytorch_model*.bin."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError):
                raise LWMError(f"{index} is not a valid weight index (no 'weight_map')") from None
            files = [folder / n for n in names]
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise LWMError(f"{index} lists {absent[0]} but it is not in {folder}; the download is incomplete")
            return files
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise LWMError(f"{folder} has config.json but no *.safetensors or pytorch_model*.bin weights")
    return files


def _safetensors_header(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise LWMError(f"{path} is truncated: no safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise LWMError(f"{path} is truncated or not a safetensors file (header of {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LWMError(f"{path} is not a safetensors file (unreadable header)") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def iter_safetensors(path: Path, *, shapes_only: bool = False) -> Iterator[tuple[str, object]]:
    """(name, read-only memory-mapped array, or ArrayInfo) per tensor of one safetensors file."""
    header, start = _safetensors_header(path)
    size = path.stat().st_size
    for name, entry in header.items():
        if entry["dtype"] not in _ST_DTYPES:
            raise LWMError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
        dtype = np_dtype(_ST_DTYPES[entry["dtype"]])
        shape = tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or start + end > size:
            raise LWMError(f"{path} is truncated or corrupt at tensor {name}; re-download it")
        if shapes_only:
            yield name, ArrayInfo(shape, dtype.name)
        elif end == begin:
            yield name, np.zeros(shape, dtype)
        else:
            yield name, np.memmap(path, dtype=dtype.newbyteorder("<"), mode="r", offset=start + begin,
                                  shape=shape)


def _torch_to_numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits as ml_dtypes'
        return tensor.view(torch.int16).numpy().view(np_dtype("bfloat16"))
    return tensor.numpy()


def iter_torch_bin(path: Path, *, shapes_only: bool = False) -> Iterator[tuple[str, object]]:
    """(name, array or ArrayInfo) per tensor of a `pytorch_model*.bin` (torch.save'd state dict)."""
    try:
        import torch
    except ImportError:
        raise LWMError("reading .bin checkpoints needs torch: pip install torch, or convert to "
                       "safetensors") from None
    try:
        try:  # mmap keeps a 13 GB file out of memory until each tensor is used
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged pickle/zip
        raise LWMError(f"{path} cannot be read by torch.load ({type(exc).__name__}); it is truncated "
                       "or not a PyTorch checkpoint") from None
    if not isinstance(state, dict):
        raise LWMError(f"{path} does not hold a state dict")
    for name in list(state):
        tensor = state.pop(name)
        if shapes_only:
            yield name, ArrayInfo(tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
        else:
            yield name, _torch_to_numpy(tensor)


def iter_hf_tensors(folder: Path, *, shapes_only: bool = False) -> Iterator[tuple[str, object]]:
    """(name, tensor) over all weight files of an HF folder."""
    for path in weight_files(folder):
        reader = iter_safetensors if path.suffix == ".safetensors" else iter_torch_bin
        yield from reader(path, shapes_only=shapes_only)


class ShardWriter:
    """Collects HF tensors into safetensors shards of at most `limit` bytes, one shard in memory."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit = folder, limit
        self.pending: dict[str, np.ndarray] = {}
        self.size = 0
        self.shards: list[list[str]] = []  # names per written shard
        self.total_bytes = 0  # tensor bytes, as transformers' index reports them

    def add(self, name: str, value: np.ndarray) -> None:
        if self.pending and self.size + value.nbytes > self.limit:
            self._flush()
        self.pending[name] = value
        self.size += value.nbytes
        self.total_bytes += value.nbytes

    def _flush(self) -> None:
        from safetensors.numpy import save_file

        path = self.folder / f"shard-{len(self.shards) + 1:05d}.safetensors"
        save_file(self.pending, str(path), metadata={"format": "pt"})  # 'pt': what transformers expects
        self.shards.append(list(self.pending))
        self.pending, self.size = {}, 0

    def finish(self) -> None:
        """Write the last shard; name them model.safetensors or model-i-of-n + an index."""
        if self.pending:
            self._flush()
        n = len(self.shards)
        if n == 1:
            os.replace(self.folder / "shard-00001.safetensors", self.folder / "model.safetensors")
            return
        weight_map = {}
        for i, names in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.folder / f"shard-{i + 1:05d}.safetensors", self.folder / final)
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
