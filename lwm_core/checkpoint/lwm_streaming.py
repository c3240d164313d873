"""LWM's streaming msgpack parameters (`params::PATH`, `trainstate_params::PATH`).

The file is a sequence of msgpack records, each the array `[key parts, bin]`; `bin` is Flax's
`to_bytes` of one array: msgpack ExtType code 1 holding `[shape, dtype name, raw C-order LE bytes]`.
Files reach 13 GB for 7B models, so both directions stream: one array in memory at a time, headers
parsed with msgpack and the raw bytes read/written straight from/to the file.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np

from lwm_core.checkpoint.common import ProgressFn, atomic_path, cast, little_endian, np_dtype
from lwm_core.checkpoint.keys import ArrayInfo, iter_layout
from lwm_core.errors import LWMError

_EXT_CODE = 1  # Flax's msgpack ExtType code for a numpy array
_FIXEXT = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}  # msgpack spec: fixed-size ext payloads
_READ_SIZE = 16 << 20  # bytes msgpack reads ahead for headers; raw array data bypasses its buffer
_SKIP_CHUNK = 64 << 20  # bytes per read when skipping array data (shapes only)


class _Truncated(Exception):
    pass


class _Corrupt(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _bin_header(n: int) -> bytes:
    if n < 1 << 8:
        return struct.pack(">BB", 0xC4, n)
    if n < 1 << 16:
        return struct.pack(">BH", 0xC5, n)
    if n < 1 << 32:
        return struct.pack(">BI", 0xC6, n)
    raise LWMError(f"an array of {n} bytes exceeds msgpack's 4 GiB limit; save it in bfloat16 or as hf::")


def _ext_header(n: int, code: int) -> bytes:
    if n in _FIXEXT:
        return struct.pack(">Bb", _FIXEXT[n], code)
    if n < 1 << 8:
        return struct.pack(">BBb", 0xC7, n, code)
    if n < 1 << 16:
        return struct.pack(">BHb", 0xC8, n, code)
    return struct.pack(">BIb", 0xC9, n, code)


def array_bin_parts(array: np.ndarray) -> tuple[bytes, np.ndarray]:
    """(header, data) whose concatenation equals `flax.serialization.to_bytes(array)`.

    Kept apart so the data can go to the file without another in-memory copy.
    """
    array = little_endian(np.asarray(array))
    inner = b"\x93" + msgpack.packb([int(s) for s in array.shape]) + msgpack.packb(array.dtype.name)
    inner += _bin_header(array.nbytes)
    return _ext_header(len(inner) + array.nbytes, _EXT_CODE) + inner, array


def write_record(f, key: tuple[str, ...], array: np.ndarray) -> int:
    """Append one `[key, to_bytes(array)]` record to the open binary file `f`; returns bytes written."""
    head, array = array_bin_parts(array)
    record_head = b"\x92" + msgpack.packb(list(key)) + _bin_header(len(head) + array.nbytes) + head
    f.write(record_head)
    f.write(array.reshape(-1).view(np.uint8).data)  # the raw bytes, C order, no copy
    return len(record_head) + array.nbytes


def write_streaming(params: dict[str, np.ndarray], path: str | os.PathLike, *,
                    prefix: tuple[str, ...] = (), layout: str = "scanned", dtype: str | None = None,
                    overwrite: bool = True, progress: ProgressFn | None = None) -> None:
    """Write canonical `params` to `path` as an LWM streaming file, atomically.

    `layout='unscanned'` writes `transformer/h/<i>/...` per layer, as LWM does without scan.
    `prefix` is prepended to every key (('params', 'params') for `trainstate_params::`).
    """
    total = sum(v.size * (np_dtype(dtype).itemsize if dtype else v.dtype.itemsize) for v in params.values())
    done = 0
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "wb") as f:
        for key, value in iter_layout(params, layout):
            value = cast(value, dtype)
            write_record(f, (*prefix, *key.split("/")), value)
            done += value.nbytes  # data bytes, like `total`; record headers are not counted
            if progress:
                progress(done, total, key)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def _read_exact(u: msgpack.Unpacker, n: int) -> bytes:
    data = u.read_bytes(n)
    if len(data) < n:
        raise _Truncated
    return data


def _read_bin_len(u: msgpack.Unpacker) -> int:
    kind = _read_exact(u, 1)[0]
    width = {0xC4: 1, 0xC5: 2, 0xC6: 4}.get(kind)
    if width is None:
        raise _Corrupt(f"expected msgpack binary data, found type byte 0x{kind:02x}")
    return int.from_bytes(_read_exact(u, width), "big")


def _read_ext_header(u: msgpack.Unpacker) -> tuple[int, int]:
    kind = _read_exact(u, 1)[0]
    fixed = {v: k for k, v in _FIXEXT.items()}
    if kind in fixed:
        length = fixed[kind]
    elif kind in (0xC7, 0xC8, 0xC9):
        length = int.from_bytes(_read_exact(u, {0xC7: 1, 0xC8: 2, 0xC9: 4}[kind]), "big")
    else:
        raise _Corrupt(f"expected a Flax array (msgpack ext), found type byte 0x{kind:02x}")
    return length, int.from_bytes(_read_exact(u, 1), "big", signed=True)


def _skip(u: msgpack.Unpacker, n: int) -> None:
    while n > 0:
        step = min(n, _SKIP_CHUNK)
        _read_exact(u, step)
        n -= step


def _read_record(u: msgpack.Unpacker, shapes_only: bool):
    """One record: (key parts, array or ArrayInfo). Raises msgpack.OutOfData at a clean end."""
    if u.read_array_header() != 2:
        raise _Corrupt("a record is not a [key, array] pair")
    try:
        key = u.unpack()
        if not (isinstance(key, list) and key and all(isinstance(k, str) for k in key)):
            raise _Corrupt(f"a record's key is {key!r}, not a list of strings")
        blob_len = _read_bin_len(u)
        start = u.tell()
        _, code = _read_ext_header(u)
        if code != _EXT_CODE or u.read_array_header() != 3:
            raise _Corrupt(f"{'/'.join(key)} is not a Flax-serialised numpy array")
        shape, dtype_name = u.unpack(), u.unpack()
        dtype = np_dtype(dtype_name)
        nbytes = _read_bin_len(u)
        if not isinstance(shape, list) or nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise _Corrupt(f"{'/'.join(key)} holds {nbytes} bytes, not an array of shape {shape} {dtype_name}")
        if u.tell() - start + nbytes != blob_len:
            raise _Corrupt(f"{'/'.join(key)}: array and record lengths disagree")
        if shapes_only:
            _skip(u, nbytes)
            return tuple(key), ArrayInfo(tuple(shape), dtype.name)
        data = _read_exact(u, nbytes)
        return tuple(key), np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape)
    except msgpack.OutOfData as exc:
        raise _Truncated from exc


def iter_streaming(path: str | os.PathLike, *, shapes_only: bool = False,
                   progress: ProgressFn | None = None) -> Iterator[tuple[tuple[str, ...], object]]:
    """Yield (key parts, array) per record of an LWM streaming file, one array in memory at a time.

    Arrays are read-only views of the bytes read; with `shapes_only` they are `ArrayInfo` and the
    data is skipped. A truncated or malformed file raises LWMError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise LWMError(f"checkpoint {path} does not exist" if not path.exists()
                       else f"checkpoint {path} is not a file")
    size = path.stat().st_size
    count = 0
    with open(path, "rb") as f:
        u = msgpack.Unpacker(f, raw=False, max_buffer_size=0, read_size=_READ_SIZE)
        while True:
            try:
                key, value = _read_record(u, shapes_only)
            except msgpack.OutOfData:
                if u.tell() == size:
                    break
                raise LWMError(f"checkpoint {path} ends mid-record after {count} arrays: the file is "
                               "truncated; re-download or re-save it") from None
            except _Truncated:
                raise LWMError(f"checkpoint {path} ends mid-record after {count} arrays: the file is "
                               "truncated; re-download or re-save it") from None
            except (_Corrupt, LWMError) as exc:
                raise LWMError(f"checkpoint {path} is corrupt at array {count + 1}: {exc}; "
                               "is it an LWM params file?") from None
            except (ValueError, TypeError, msgpack.UnpackException) as exc:
                raise LWMError(f"checkpoint {path} is not valid msgpack at array {count + 1} "
                               f"({type(exc).__name__}); is it an LWM params file?") from None
            count += 1
            if progress:
                progress(u.tell(), size, "/".join(key))
            yield key, value
    if count == 0:
        raise LWMError(f"checkpoint {path} is empty")


def read_streaming(path: str | os.PathLike, *, prefix: tuple[str, ...] = (), dtype: str | None = None,
                   shapes_only: bool = False, progress: ProgressFn | None = None) -> dict[str, object]:
    """Flat '/'-joined key -> array of an LWM streaming file, `prefix` stripped, cast to `dtype`.

    Records outside `prefix` (e.g. optimizer state of a train state) are skipped, as LWM does.
    The layout is as stored; `keys.to_scanned` makes it canonical.
    """
    params: dict[str, object] = {}
    for key, value in iter_streaming(path, shapes_only=shapes_only, progress=progress):
        if key[:len(prefix)] != prefix:
            continue
        name = "/".join(key[len(prefix):])
        if shapes_only:
            params[name] = value if dtype is None else ArrayInfo(value.shape, dtype)
        else:
            params[name] = cast(value, dtype)
    if not params:
        raise LWMError(f"checkpoint {path} has no arrays under {'/'.join(prefix)}; "
                       "use params:: for a params file and trainstate_params:: for a train state")
    return params
