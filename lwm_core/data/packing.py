"""Packing examples into rows of `seq_length` tokens: the batch contract the trainer consumes.

Every batch is a dict of numpy arrays, all [B, T]:

    input_ids       int32    the tokens fed to the model
    targets         int32    the next token OF THE SAME EXAMPLE at each position (0 where none)
    loss_weights    float32  per-position weight; the trainer's loss is sum(w * ce) / sum(w)
    segment_ids     int32    1, 2, 3, ... per example in the row; 0 on padding
    position_ids    int32    0, 1, ... restarting in every example; 0 on padding
    vision_masks    bool     the INPUT token is a vision id (embedded with the vision table)
    target_vision   bool     the TARGET is a vision id (predicted by the vision head)
    attention_mask  bool     False on padding

The shift is the packer's, per example: position p of an example holds token p as input and token
p+1 as target with the weight of predicting it (the example's `loss[p+1]`, taken as 0/1); the last
token of an example has no target (weight 0). A target "carries loss" when that loss is > 0.

Modes (`packing`):
- "masked" (default; the paper's masked packing): whole examples per row, greedily in order (with
  `open_rows` > 1, first fit over that many open rows), segment ids keep them apart, positions
  restart. Weighting "example": every example counts equally: with both text and vision targets,
  text targets get 0.5 / n_text and vision targets 0.5 / n_vision (LWM's 0.5/0.5), with one kind
  1.0 / n, so each example's weights sum to 1 and sum(w * ce) / sum(w) is the mean over examples.
- "pad": one example per row, padded (LWM's `pad`). LWM's pad mode truncated the tokens and the loss
  mask inconsistently, shifting the mask by two on long examples; here tokens, loss and vision masks
  are cut together.
- "concat": LWM's `no_pad`: all examples concatenated into one stream and cut into rows; every
  row's segment id is 1 and positions run 0..T-1 (attention crosses examples, as LWM); the target of a
  row's last position is the next row's first token. Weighting "row": each row counts equally with
  the 0.5/0.5 text/vision split inside the row, which is LWM's loss (per-sequence mean, then batch
  mean, `0.5 * (text + vision)`) except for rows that lack one kind: LWM adds 0 for it (halving such a
  row), we give the row's other kind the whole weight.
`weighting="token"` gives every loss-carrying target weight 1 (a plain token mean), in any mode.

Examples longer than T (`overflow`, masked and pad): "split" into pieces of T tokens that overlap by
one token (piece k starts at k * (T - 1)), so every target is learnt exactly once; each piece is its
own example (positions restart, its own weights). "truncate" keeps the first T tokens; "skip" drops the
example. In masked and pad packing, examples or pieces without any loss-carrying target are skipped
(concat keeps them: they are context for the next examples). Everything is counted in
`stats` (see STAT_KEYS); nothing is dropped silently.
"""

from __future__ import annotations

import numpy as np

from lwm_core.data.fields import Example
from lwm_core.errors import LWMError

BATCH_KEYS = ("input_ids", "targets", "loss_weights", "segment_ids", "position_ids", "vision_masks",
              "target_vision", "attention_mask")
DTYPES = {"input_ids": np.int32, "targets": np.int32, "loss_weights": np.float32, "segment_ids": np.int32,
          "position_ids": np.int32, "vision_masks": bool, "target_vision": bool, "attention_mask": bool}
PACKINGS = ("masked", "pad", "concat")
OVERFLOWS = ("split", "truncate", "skip")
WEIGHTINGS = ("example", "row", "token")
STAT_KEYS = ("examples", "segments", "split", "pieces", "truncated", "tokens_cut", "skipped_too_long",
             "skipped_no_loss", "rows", "tokens", "padding_tokens", "tail_tokens_dropped")


def empty_rows(n: int, seq_length: int) -> dict[str, np.ndarray]:
    return {k: np.zeros((n, seq_length), DTYPES[k]) for k in BATCH_KEYS}


def balanced_weights(carries: np.ndarray, vision: np.ndarray) -> np.ndarray:
    """Weights summing to 1 over one group of targets: 0.5 / n_text + 0.5 / n_vision when both kinds
    carry loss, 1 / n for one kind, 0 when none."""
    text, vis = carries & ~vision, carries & vision
    nt, nv = int(text.sum()), int(vis.sum())
    share_t, share_v = (0.5, 0.5) if nt and nv else (1.0, 1.0)
    w = np.zeros(len(carries), np.float32)
    if nt:
        w[text] = share_t / nt
    if nv:
        w[vis] = share_v / nv
    return w


def has_loss(example: Example) -> bool:
    return bool((example.loss[1:] > 0).any())


def fit(example: Example, seq_length: int, overflow: str, stats: dict | None = None) -> list[Example]:
    """An example -> the pieces that go into rows (itself when it fits). Each piece's `ref` is the
    example's ref + [piece index]. `stats` (optional) counts what happened."""
    count = (lambda k, n=1: stats.__setitem__(k, stats[k] + n)) if stats is not None else (lambda k, n=1: None)
    ref = list(example.ref or [])
    count("examples")
    n = len(example)
    if n <= seq_length:
        pieces = [example]
    elif overflow == "skip":
        count("skipped_too_long")
        return []
    elif overflow == "truncate":
        count("truncated")
        count("tokens_cut", n - seq_length)
        pieces = [Example(example.tokens[:seq_length], example.loss[:seq_length], example.vision[:seq_length])]
    else:
        count("split")
        step = seq_length - 1
        pieces = [Example(example.tokens[s:s + seq_length], example.loss[s:s + seq_length],
                          example.vision[s:s + seq_length]) for s in range(0, n - 1, step)]
        count("pieces", len(pieces))
    out = []
    for k, piece in enumerate(pieces):
        if not has_loss(piece):
            count("skipped_no_loss")
            continue
        out.append(Example(piece.tokens, piece.loss, piece.vision, ref + [k]))
    return out


def segments_row(pieces: list[Example], seq_length: int, weighting: str) -> dict[str, np.ndarray]:
    """One row of whole examples (masked or pad packing)."""
    row = {k: v[0] for k, v in empty_rows(1, seq_length).items()}
    at = 0
    for seg, ex in enumerate(pieces, start=1):
        n = len(ex)
        s = slice(at, at + n)
        row["input_ids"][s] = ex.tokens
        row["targets"][at:at + n - 1] = ex.tokens[1:]
        row["target_vision"][at:at + n - 1] = ex.vision[1:]
        row["vision_masks"][s] = ex.vision
        row["segment_ids"][s] = seg
        row["position_ids"][s] = np.arange(n)
        row["attention_mask"][s] = True
        carries = np.zeros(n, bool)
        carries[:-1] = ex.loss[1:] > 0
        if weighting == "example":
            row["loss_weights"][s] = balanced_weights(carries, row["target_vision"][s])
        else:
            row["loss_weights"][s] = carries
        at += n
    if weighting == "row":
        row["loss_weights"] = balanced_weights(row["loss_weights"] > 0, row["target_vision"])
    return row


def stream_row(tokens, loss, vision, seq_length: int, weighting: str) -> dict[str, np.ndarray]:
    """One concat row from n + 1 stream tokens (n <= T inputs; the last is only a target), or from
    n tokens at the end of the data (the last input then has no target)."""
    row = {k: v[0] for k, v in empty_rows(1, seq_length).items()}
    n = min(len(tokens), seq_length)
    m = len(tokens) - 1  # positions with a target
    row["input_ids"][:n] = tokens[:n]
    row["vision_masks"][:n] = vision[:n]
    row["segment_ids"][:n] = 1
    row["position_ids"][:n] = np.arange(n)
    row["attention_mask"][:n] = True
    row["targets"][:m] = tokens[1:]
    row["target_vision"][:m] = vision[1:]
    carries = np.zeros(seq_length, bool)
    carries[:m] = loss[1:] > 0
    row["loss_weights"] = (balanced_weights(carries, row["target_vision"]) if weighting == "row"
                           else carries.astype(np.float32))
    return row


class Packer:
    """Turns examples into rows. `add(example)`, then `pop_row()` while `rows_ready()`; `finish()` at
    the end of the data closes the open rows. `state()` lists the refs of what is buffered;
    `restore(state, fetch)` rebuilds the buffers with `fetch(ref) -> Example` (piece refs included)."""

    def __init__(self, seq_length: int, *, packing: str = "masked", overflow: str = "split",
                 weighting: str | None = None, open_rows: int = 1, stats: dict | None = None):
        if packing not in PACKINGS:
            raise LWMError(f"packing must be one of {', '.join(PACKINGS)}, got {packing!r}")
        if overflow not in OVERFLOWS:
            raise LWMError(f"overflow must be one of {', '.join(OVERFLOWS)}, got {overflow!r}")
        weighting = weighting or ("row" if packing == "concat" else "example")
        if weighting not in WEIGHTINGS or (packing == "concat" and weighting == "example"):
            raise LWMError(f"weighting {weighting!r} does not apply to packing {packing!r} "
                           f"(concat: row or token; masked/pad: example, row or token)")
        if seq_length < 2 or open_rows < 1:
            raise LWMError(f"seq_length must be >= 2 and open_rows >= 1, got {seq_length}, {open_rows}")
        self.seq_length, self.packing, self.overflow = seq_length, packing, overflow
        self.weighting, self.open_rows = weighting, open_rows if packing == "masked" else 1
        self.stats = stats if stats is not None else {}
        for k in STAT_KEYS:
            self.stats.setdefault(k, 0)
        self.ready: list[list[Example]] = []  # closed rows (masked / pad)
        self.open: list[list[Example]] = []
        self.stream: list[Example] = []  # concat: examples from `head` on
        self.head = 0
        self.finished = False

    def add(self, example: Example) -> None:
        if self.packing == "concat":
            self.stats["examples"] += 1  # kept whole, loss or not: it is context for what follows
            self.stream.append(example)
            return
        for piece in fit(example, self.seq_length, self.overflow, self.stats):
            self._place(piece)

    def _place(self, piece: Example) -> None:
        if self.packing == "pad":
            self.ready.append([piece])
            return
        T = self.seq_length
        fits = [k for k, row in enumerate(self.open) if sum(map(len, row)) + len(piece) <= T]
        if fits:
            k = fits[0]
            self.open[k].append(piece)
        else:
            if len(self.open) == self.open_rows:
                self.ready.append(self.open.pop(0))
            self.open.append([piece])
            k = len(self.open) - 1
        if sum(map(len, self.open[k])) == T:
            self.ready.append(self.open.pop(k))

    def finish(self) -> None:
        self.ready.extend(self.open)
        self.open = []
        self.finished = True
        self._drop_lone_tail()

    def _drop_lone_tail(self) -> None:
        if self.finished and self._stream_len() == 1:  # a lone final token: no target to learn
            self.stats["tail_tokens_dropped"] += 1
            self.stream, self.head = [], 0

    def _stream_len(self) -> int:
        return sum(map(len, self.stream)) - self.head

    def rows_ready(self) -> int:
        if self.packing != "concat":
            return len(self.ready)
        n = self._stream_len()
        full = max(0, (n - 1) // self.seq_length)
        return full + (1 if self.finished and n - full * self.seq_length >= 2 else 0)

    def pop_row(self) -> dict[str, np.ndarray]:
        T = self.seq_length
        if self.packing != "concat":
            pieces = self.ready.pop(0)
            row = segments_row(pieces, T, self.weighting)
            self.stats["segments"] += len(pieces)
        else:
            need, parts, have = T + 1, [], -self.head
            for ex in self.stream:  # only the examples this row touches
                parts.append((ex.tokens, ex.loss, ex.vision))
                have += len(ex)
                if have >= need:
                    break
            tok, loss, vis = (np.concatenate([p[i] for p in parts])[self.head:self.head + need] for i in range(3))
            if len(tok) < need and not self.finished:
                raise LWMError("no concat row is ready")
            row = stream_row(tok, loss, vis, T, self.weighting)
            self.head += T
            while self.stream and self.head >= len(self.stream[0]):
                self.head -= len(self.stream.pop(0))
            if not self.stream:
                self.head = 0
            self._drop_lone_tail()
        real = int(row["attention_mask"].sum())
        self.stats["rows"] += 1
        self.stats["tokens"] += real
        self.stats["padding_tokens"] += T - real
        return row

    def state(self) -> dict:
        refs = lambda rows: [[list(ex.ref) for ex in row] for row in rows]
        return {"ready": refs(self.ready), "open": refs(self.open), "stream": [list(ex.ref) for ex in self.stream],
                "head": self.head, "finished": self.finished}

    def restore(self, state: dict, fetch) -> None:
        rows = lambda refs: [[fetch(ref) for ref in row] for row in refs]
        self.ready, self.open = rows(state["ready"]), rows(state["open"])
        self.stream = [fetch(ref) for ref in state["stream"]]
        self.head, self.finished = int(state["head"]), bool(state["finished"])
