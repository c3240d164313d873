"""TensorBoard event files of scalars, written by hand (no TensorFlow or tensorboard at run time).

    with EventWriter("runs/text") as tb:      # runs/text/events.out.tfevents.<time>.<host>.<pid>
        tb.scalars(step, {"loss": 2.3, "lr": 1e-4})

The format: a file of TFRecords, each `uint64 length | uint32 masked_crc32c(length) | data |
uint32 masked_crc32c(data)` (little endian), every record one serialized `tensorflow.Event` proto.
The first event carries `file_version: "brain.Event:2"`; each later one `wall_time`, `step` and a
`Summary` of `Value {tag, simple_value}` entries. The few proto fields are encoded here directly.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path


# -------------------------------------------------------------------- CRC32C (Castagnoli), masked
def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's mask: rotate right by 15 bits and add a constant (so CRCs of CRCs stay useful)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord around `data`."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# -------------------------------------------------------------------- protobuf wire format
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def event(*, wall_time: float, step: int = 0, file_version: str | None = None,
          scalars: dict[str, float] | None = None) -> bytes:
    """A serialized tensorflow.Event: wall_time (1, double), step (2, int64), file_version (3, string)
    or summary (5: Summary { repeated Value value = 1 { tag = 1; simple_value = 2 (float) } })."""
    out = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(step & 0xFFFFFFFFFFFFFFFF)
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", value))
                          for tag, value in scalars.items())
        out += _bytes_field(5, values)
    return out


class EventWriter:
    """Appends scalar summaries to a new event file in `log_dir` (flushed after every step)."""

    def __init__(self, log_dir: str | os.PathLike):
        folder = Path(log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = folder / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}"
        self._file = self.path.open("ab")
        self._write(event(wall_time=now, file_version="brain.Event:2"))

    def _write(self, data: bytes) -> None:
        self._file.write(record(data))
        self._file.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._write(event(wall_time=time.time(), step=step, scalars={k: float(v) for k, v in values.items()}))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
