"""The training data loader: files -> records -> examples -> packed batches, resumable exactly.

    loader = DataLoader("data/*.jsonl", RecordProcessor(tokenizer, "[question],answer"),
                        batch_size=8, seq_length=32768, shard_index=host, shard_count=hosts)
    for batch in loader:              # dicts of [B, T] numpy arrays (lwm_core.data.packing)
        ...
        save(loader.state())          # small and JSON-able
    loader.restore(saved)             # the next batches are exactly those of an uninterrupted run

The state holds the reader's position (epoch, file, byte offset, line; or with `shuffle`, epoch and
place in that epoch's order), the counters (examples,
split, skipped, malformed, ...) and REFERENCES (file positions + piece index) to the examples waiting
in the packer's open rows, which `restore` re-reads and rebuilds; so it stays small at any sequence
length and resuming drops nothing (LWM dropped its buffered tokens). Every per-record random choice
is seeded from (seed, epoch, line), so there is no RNG stream to save: the seed is stored and checked.
`prefetch=n` builds up to n batches ahead in a background thread; the state returned is always the
one after the last batch handed out, so prefetching changes nothing in what comes out.

A record that does not fit the fields is counted, reported with its file:line (`summary()`) and
skipped (`strict=True` raises instead); if the first 100 records all fail, the loader stops with an
LWMError, since the field spec then most likely does not match the data.
"""

from __future__ import annotations

import json
import os
import queue
import threading

import numpy as np

from lwm_core.data.fields import RecordProcessor
from lwm_core.data.packing import BATCH_KEYS, Packer, empty_rows, fit
from lwm_core.data.readers import ReadReport, RecordReader
from lwm_core.data.vision import BadRecord
from lwm_core.errors import LWMError

FORMAT = "lwm-data-state-v1"
GIVE_UP_AFTER = 100  # bad records with no good one before them
SAVED_BEFORE = {"shuffle": False}  # what a state saved before a setting existed had


class _Pipeline:
    """Single-threaded core: next_batch() / state() / restore()."""

    def __init__(self, paths, processor: RecordProcessor, *, batch_size, seq_length, packing, overflow, weighting,
                 open_rows, shard_index, shard_count, epochs, strict, shuffle=False):
        if batch_size < 1:
            raise LWMError(f"batch_size must be positive, got {batch_size}")
        self.report = ReadReport()
        self.reader = RecordReader(paths, shard_index=shard_index, shard_count=shard_count, epochs=epochs,
                                   report=self.report, shuffle=shuffle, seed=processor.seed)
        self.processor, self.batch_size, self.strict = processor, batch_size, strict
        self.packer_args = dict(packing=packing, overflow=overflow, weighting=weighting, open_rows=open_rows)
        self.packer = Packer(seq_length, **self.packer_args, stats={"batches": 0, "empty_rows": 0})
        self.seq_length = seq_length
        self.config = {"files": [os.path.basename(f) for f in self.reader.files], "shard": [shard_index, shard_count],
                       "batch_size": batch_size, "seq_length": seq_length, "packing": packing,
                       "overflow": overflow, "weighting": self.packer.weighting, "seed": processor.seed,
                       "shuffle": bool(shuffle)}
        self._records = None

    def _build(self, rec):
        try:
            return self.processor(rec.data, line=rec.line, epoch=rec.ref[0], base_dir=os.path.dirname(rec.path),
                                  ref=rec.ref)
        except BadRecord as exc:
            if self.strict:
                raise LWMError(f"{rec.where}: {exc}") from None
            self.report.add("bad_records", rec.where, str(exc))
            if self.packer.stats["examples"] == 0 and self.report.counts["bad_records"] >= GIVE_UP_AFTER:
                raise LWMError(f"the first {GIVE_UP_AFTER} records could not be built ({self.report.problems[0][1]}: "
                               f"{self.report.problems[0][2]}); check the fields against the data") from None
            return None
        except LWMError as exc:
            raise LWMError(f"{rec.where}: {exc}") from None

    def next_batch(self) -> dict | None:
        packer = self.packer
        while packer.rows_ready() < self.batch_size and not packer.finished:
            if self._records is None:
                self._records = iter(self.reader)
            rec = next(self._records, None)
            if rec is None:
                packer.finish()
                break
            example = self._build(rec)
            if example is not None:
                packer.add(example)
        n = min(self.batch_size, packer.rows_ready())
        if n == 0:
            return None
        rows = [packer.pop_row() for _ in range(n)]
        pad = empty_rows(self.batch_size - n, self.seq_length)
        packer.stats["batches"] += 1
        packer.stats["empty_rows"] += self.batch_size - n
        return {k: np.concatenate([np.stack([r[k] for r in rows]), pad[k]]) for k in BATCH_KEYS}

    def state(self) -> dict:
        return {"format": FORMAT, **self.config, "reader": self.reader.position(), "packer": self.packer.state(),
                "stats": dict(self.packer.stats), "report": self.report.state()}

    def _fetch(self, ref):
        key = tuple(ref[:5])
        if key not in self._fetched:  # the pieces of one long record share it
            self._fetched = {key: self._fetch_record(ref)}
        example = self._fetched[key]
        if len(ref) == 5:
            return example
        for piece in fit(example, self.seq_length, self.packer.overflow):
            if piece.ref[5] == ref[5]:
                return piece
        raise LWMError(f"{self.reader.files[ref[1]]} changed since the state was saved (piece {ref[5]} is gone)")

    def _fetch_record(self, ref):
        rec = self.reader.read_ref(ref[:5])
        try:
            example = self.processor(rec.data, line=rec.line, epoch=rec.ref[0], base_dir=os.path.dirname(rec.path),
                                     ref=rec.ref)
        except BadRecord as exc:
            raise LWMError(f"{rec.where} changed since the state was saved ({exc})") from None
        return example

    def restore(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise LWMError(f"not a data loader state ({FORMAT} expected)")
        for key, value in self.config.items():
            if state.get(key, SAVED_BEFORE.get(key)) != value:
                raise LWMError(f"the saved data state has {key}={state.get(key)!r} but this loader has {value!r}; "
                               "resume with the same files, shards, batch shape, packing and seed")
        self.report.restore(state["report"])
        self.reader.seek(state["reader"])
        self._records = None
        self.packer = Packer(self.seq_length, **self.packer_args, stats=dict(state["stats"]))
        self._fetched = {}
        self.packer.restore(state["packer"], self._fetch)
        self._fetched = {}


def _produce(pipe: _Pipeline, stop: threading.Event, out: queue.Queue) -> None:
    """The prefetch thread: (batch, state after it) into `out` until the end ((None, final state)),
    an exception (handed to the consumer) or `stop`."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    try:
        while not stop.is_set():
            batch = pipe.next_batch()
            if not put((batch, pipe.state())) or batch is None:
                return
    except BaseException as exc:  # raised in the consumer
        put(exc)


class DataLoader:
    """Iterates packed batches; see the module docstring.

    paths: files, folders (their *.jsonl / *.json / *.txt) or glob patterns, read in order.
    processor: a RecordProcessor (field syntax, vision spec, swap_prob, seed).
    batch_size, seq_length: every batch is [batch_size, seq_length]; the last one is filled with
        empty rows (attention_mask False, counted as `empty_rows`).
    packing, overflow, weighting, open_rows: see `lwm_core.data.packing`.
    shard_index, shard_count: this host takes lines i with i % shard_count == shard_index.
    epochs: passes over the files (None: forever). prefetch: batches built ahead in a thread (0: none).
    shuffle: visit the records of each epoch in an order drawn from (processor.seed, epoch), across
        the files (`RecordReader`); still exactly resumable.
    strict: raise on a record that does not fit the fields instead of counting and skipping it.

    `stats` (a flat dict of counters, for logging) and `summary()` (with the file:line of what was
    skipped) describe the data up to the last batch handed out.
    """

    def __init__(self, paths, processor: RecordProcessor, *, batch_size: int, seq_length: int,
                 packing: str = "masked", overflow: str = "split", weighting: str | None = None, open_rows: int = 1,
                 shard_index: int = 0, shard_count: int = 1, epochs: int | None = 1, prefetch: int = 0,
                 strict: bool = False, shuffle: bool = False):
        self._pipe = _Pipeline(paths, processor, batch_size=batch_size, seq_length=seq_length, packing=packing,
                               overflow=overflow, weighting=weighting, open_rows=open_rows, shard_index=shard_index,
                               shard_count=shard_count, epochs=epochs, strict=strict, shuffle=shuffle)
        self.prefetch = int(prefetch)
        self._state = self._pipe.state()
        self._thread = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if not self.prefetch:
            batch = self._pipe.next_batch()
            self._state = self._pipe.state()  # at the end too: the last lines read are counted
        else:
            if self._thread is None:
                self._start()
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._queue.put(item)
                raise item
            batch, self._state = item
            if batch is None:
                self._queue.put(item)  # stay exhausted
        if batch is None:
            raise StopIteration
        return batch

    def _start(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.prefetch)
        # the thread holds the pipeline, not the loader, so a dropped loader is collected (and stops it)
        self._thread = threading.Thread(target=_produce, args=(self._pipe, self._stop, self._queue), daemon=True,
                                        name="lwm-data-prefetch")
        self._thread.start()

    def __del__(self):
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    def close(self) -> None:
        """Stop the prefetch thread; the loader can go on from the last batch handed out (the
        batches built ahead are dropped and will be built again)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread, self._queue = None, None
            self._pipe.restore(self._state)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def state(self) -> dict:
        """The state after the last batch handed out: a small JSON-able dict."""
        return json.loads(json.dumps(self._state))

    def restore(self, state: dict) -> None:
        """Continue exactly after the batch at which `state` was taken (same files and settings)."""
        self.close()
        state = json.loads(json.dumps(state))
        self._pipe.restore(state)
        self._state = state

    @property
    def stats(self) -> dict:
        return {**self._state["stats"], **self._state["report"]["counts"]}

    def summary(self) -> str:
        report = ReadReport()
        report.restore(self._state["report"])
        s = self._state["stats"]
        packing = (f"{s['examples']} examples -> {s['rows']} rows in {s['batches']} batches; "
                   f"{s['split']} split into {s['pieces']} pieces, {s['truncated']} truncated "
                   f"({s['tokens_cut']} tokens cut), {s['skipped_too_long']} too long skipped, "
                   f"{s['skipped_no_loss']} without loss skipped; "
                   f"{s['padding_tokens']} padding of {s['rows'] * self._pipe.seq_length} tokens")
        return report.summary() + "\n" + packing
