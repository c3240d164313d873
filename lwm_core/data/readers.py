"""Record readers: jsonl files (one JSON object per line) and plain text files, for one host's shard.

- `.txt` files hold ONE document each (the whole file is the record `{"text": ...}`): that is how
  long-context corpora (books) come, and it keeps a document whole for packing. Split a file into
  paragraphs beforehand (or write jsonl) to get one example per paragraph.
- Any other file is read as jsonl. A line that is not a JSON object (bad JSON, bad UTF-8, a list,
  ...) is counted, logged and reported with its file and line number in `ReadReport.summary()`, and
  skipped; the rest of the file is read. Blank lines are counted too (`blank_lines`).
- Multi-host, as LWM: the physical lines of all files, taken in order, are numbered 0, 1, 2, ...
  (a text file counts as one line) and line i belongs to host `i % shard_count`. A host does not parse
  the other hosts' lines, so a malformed line is reported by the host that owns it.
- Positions are exact and small: (epoch, file index, byte offset, line in file, global line). The
  reader resumes from one, and `read_ref` re-reads a single record from its position (the loader
  keeps references, not tokens, for what it holds in its buffers).
- `shuffle=True`: each epoch visits this host's lines in an order drawn from (seed, epoch), across
  all files. The reader first indexes the lines (byte offsets: one scan of the files, 32 bytes a
  line in memory); its position is then (epoch, place in that epoch's order, -1, -1, -1), as small
  and exact. A host owns the same lines as without shuffling.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lwm_core.errors import LWMError

log = logging.getLogger("lwm.data")

TEXT_SUFFIXES = (".txt",)
MAX_PROBLEMS = 100  # problems kept (with line numbers) for the summary; all are counted
MAX_LOGGED = 20  # problems also logged as warnings as they happen


def expand_paths(paths) -> list[str]:
    """A path, a glob pattern, a folder (its *.jsonl, *.json and *.txt files, sorted) or a list of
    those -> the files, in order. LWMError when something names no file."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[str] = []
    for entry in paths:
        entry = str(entry)
        if os.path.isdir(entry):
            found = sorted(str(p) for p in Path(entry).iterdir()
                           if p.is_file() and p.suffix in (".jsonl", ".json", *TEXT_SUFFIXES))
        elif any(c in entry for c in "*?["):
            found = sorted(p for p in glob.glob(entry) if os.path.isfile(p))
        else:
            found = [entry] if os.path.isfile(entry) else []
        if not found:
            raise LWMError(f"no data files at {entry}")
        files.extend(found)
    if not files:
        raise LWMError("no data files given")
    return files


@dataclasses.dataclass
class Record:
    """One record for this host: `ref` = [epoch, file index, byte offset, line in file (0-based),
    global line] locates it; `data` is the parsed dict; `path` its file."""

    ref: list
    data: dict
    path: str

    @property
    def line(self) -> int:  # global line number: the RNG seed of per-record choices
        return self.ref[4]

    @property
    def where(self) -> str:
        return f"{self.path}:{self.ref[3] + 1}"


class ReadReport:
    """Counts of what was skipped and why, with the first problems' file:line."""

    COUNTS = ("records", "malformed_lines", "blank_lines", "bad_records")

    def __init__(self):
        self.counts = dict.fromkeys(self.COUNTS, 0)
        self.problems: list[list] = []  # [kind, "file:line", reason]

    def add(self, kind: str, where: str, reason: str) -> None:
        self.counts[kind] += 1
        n = self.counts["malformed_lines"] + self.counts["bad_records"]
        if n <= MAX_LOGGED:
            log.warning("%s: %s skipped (%s)", where, kind.replace("_", " ")[:-1], reason)
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append([kind, where, reason])

    def state(self) -> dict:
        return {"counts": dict(self.counts), "problems": [list(p) for p in self.problems]}

    def restore(self, state: dict) -> None:
        self.counts = {**dict.fromkeys(self.COUNTS, 0), **state["counts"]}
        self.problems = [list(p) for p in state["problems"]]

    def summary(self) -> str:
        """One line of counts, then one line per kept problem (`file:line: reason`)."""
        c = self.counts
        head = (f"{c['records']} records read; {c['malformed_lines']} malformed lines and "
                f"{c['bad_records']} bad records skipped; {c['blank_lines']} blank lines")
        lines = [head] + [f"  {where}: {kind.replace('_', ' ')[:-1]}: {reason}"
                          for kind, where, reason in self.problems]
        hidden = c["malformed_lines"] + c["bad_records"] - len(self.problems)
        if hidden > 0:
            lines.append(f"  ... and {hidden} more")
        return "\n".join(lines)


class RecordReader:
    """Iterates this host's records over `files`, `epochs` times (None: forever).

    `position()` is the place after the last record yielded; `seek(position)` continues from there.
    """

    def __init__(self, paths, *, shard_index: int = 0, shard_count: int = 1, epochs: int | None = 1,
                 report: ReadReport | None = None, shuffle: bool = False, seed: int = 0):
        if shard_count < 1 or not 0 <= shard_index < shard_count:
            raise LWMError(f"shard_index must lie in [0, shard_count), got {shard_index} of {shard_count}")
        if epochs is not None and epochs < 1:
            raise LWMError(f"epochs must be at least 1 (or None for forever), got {epochs}")
        self.files = expand_paths(paths)
        self.shard_index, self.shard_count, self.epochs = shard_index, shard_count, epochs
        self.report = report if report is not None else ReadReport()
        self.shuffle, self.seed = bool(shuffle), int(seed)
        self._index = self._index_lines() if self.shuffle else None
        # epoch, file index, byte offset, line in file, global line; shuffled: epoch, place, -1, -1, -1
        self._pos = [0, 0, -1, -1, -1] if self.shuffle else [0, 0, 0, 0, 0]

    def position(self) -> list:
        return list(self._pos)

    def seek(self, position) -> None:
        position = [int(x) for x in position]
        if self.shuffle:
            ok = len(position) == 5 and 0 <= position[1] <= len(self._index) and position[2:] == [-1, -1, -1]
        else:
            ok = len(position) == 5 and 0 <= position[1] <= len(self.files) and position[2] >= 0
        if not ok:
            kind = "shuffled " if self.shuffle else ""
            raise LWMError(f"not a {kind}reader position for these {len(self.files)} files: {position}")
        self._pos = position

    def __iter__(self) -> Iterator[Record]:
        while self.epochs is None or self._pos[0] < self.epochs:
            whole = self._pos[1] == 0 and (self.shuffle or self._pos[2] == 0)  # the epoch read from its start
            found = 0
            for record in self._shuffled_epoch() if self.shuffle else self._ordered_epoch():
                found += 1
                yield record
            if whole and not found and (self.epochs is None or self._pos[0] < self.epochs):
                # another pass would find nothing either: stop instead of reading the files forever
                files = self.files[0] if len(self.files) == 1 else f"{len(self.files)} files"
                raise LWMError(f"no usable record in a whole pass over {files} (this host's lines): "
                               f"{self.report.summary().splitlines()[0]}; check the data")

    def _ordered_epoch(self) -> Iterator[Record]:
        while self._pos[1] < len(self.files):
            yield from self._read_file()
            self._pos[1:4] = [self._pos[1] + 1, 0, 0]
        self._pos = [self._pos[0] + 1, 0, 0, 0, 0]

    # ---------------------------------------------------------------- shuffled order
    def _index_lines(self) -> np.ndarray:
        """[N, 4] int64 (file index, byte offset, line in file, global line) of this host's lines."""
        rows, line = [], 0
        for index, path in enumerate(self.files):
            if path.endswith(TEXT_SUFFIXES):
                if self._mine(line):
                    rows.append((index, 0, 0, line))
                line += 1
                continue
            offset = 0
            with open(path, "rb") as f:
                for line_in_file, raw in enumerate(f):
                    if self._mine(line):
                        rows.append((index, offset, line_in_file, line))
                    offset += len(raw)
                    line += 1
        return np.asarray(rows, np.int64).reshape(-1, 4)

    def order(self, epoch: int) -> np.ndarray:
        """This host's lines (rows of the index) in the order epoch `epoch` visits them."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self._index))

    def _shuffled_epoch(self) -> Iterator[Record]:
        epoch = self._pos[0]
        order = self.order(epoch)
        while self._pos[1] < len(order):
            index, offset, line_in_file, line = (int(x) for x in self._index[order[self._pos[1]]])
            self._pos[1] += 1
            record = self._read_one([epoch, index, offset, line_in_file, line])
            if record is not None:
                yield record
        self._pos = [epoch + 1, 0, -1, -1, -1]

    def _read_one(self, ref) -> Record | None:
        """The record at `ref`, parsed and counted as the in-order reader does (None when skipped)."""
        _, index, offset, _, line = ref
        path = self.files[index]
        if path.endswith(TEXT_SUFFIXES):
            data = self._parse_text(path, line)
            return None if data is None else Record(ref, data, path)
        with open(path, "rb") as f:
            f.seek(offset)
            return self._record(f.readline(), ref, path)

    def _mine(self, global_line: int) -> bool:
        return global_line % self.shard_count == self.shard_index

    def _read_file(self) -> Iterator[Record]:
        epoch, index, offset = self._pos[:3]
        path = self.files[index]
        if path.endswith(TEXT_SUFFIXES):
            if offset == 0:
                line = self._pos[4]
                self._pos[2:] = [1, 1, line + 1]  # consumed (offset 1 marks "done")
                if self._mine(line):
                    data = self._parse_text(path, line)
                    if data is not None:
                        yield Record([epoch, index, 0, 0, line], data, path)
            return
        with open(path, "rb") as f:
            f.seek(offset)
            for raw in iter(f.readline, b""):
                _, _, offset, line_in_file, line = self._pos
                self._pos[2:] = [offset + len(raw), line_in_file + 1, line + 1]
                if self._mine(line):
                    record = self._record(raw, [epoch, index, offset, line_in_file, line], path)
                    if record is not None:
                        yield record

    def _record(self, raw: bytes, ref: list, path: str) -> Record | None:
        """A jsonl line -> its Record, counted; None (and counted) when blank or malformed."""
        if not raw.strip():
            self.report.counts["blank_lines"] += 1
            return None
        data = self._parse_line(raw, f"{path}:{ref[3] + 1}")
        if data is None:
            return None
        self.report.counts["records"] += 1
        return Record(ref, data, path)

    def _parse_line(self, raw: bytes, where: str) -> dict | None:
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            self.report.add("malformed_lines", where, f"not UTF-8: {exc}")
            return None
        except json.JSONDecodeError as exc:
            self.report.add("malformed_lines", where, f"not JSON: {exc}")
            return None
        if not isinstance(data, dict):
            self.report.add("malformed_lines", where, f"a JSON {type(data).__name__}, not an object")
            return None
        return data

    def _parse_text(self, path: str, line: int) -> dict | None:
        try:
            text = Path(path).read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            self.report.add("malformed_lines", f"{path}:1", f"not UTF-8 text: {exc}")
            return None
        self.report.counts["records"] += 1
        return {"text": text}

    def read_ref(self, ref) -> Record:
        """Re-read the record at `ref` (from a Record or a saved state); counts nothing."""
        epoch, index, offset, line_in_file, line = (int(x) for x in ref)
        path = self.files[index]
        where = f"{path}:{line_in_file + 1}"
        if path.endswith(TEXT_SUFFIXES):
            data = {"text": Path(path).read_text("utf-8")}
        else:
            with open(path, "rb") as f:
                f.seek(offset)
                raw = f.readline()
            try:
                data = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                data = None
            if not isinstance(data, dict):
                raise LWMError(f"{where} changed since the state was saved (no JSON object at byte {offset})")
        return Record([epoch, index, offset, line_in_file, line], data, path)
