"""Synthetic batches in the training batch contract: a noisy repeating pattern a small model can learn.

For tests, smoke runs and benchmarks without data. Each row packs `examples_per_row` examples (then
padding); each example reads a repeating pattern of `pattern_len` tokens from a random phase, each
token replaced by a uniformly random one with probability `noise`. With `vision=True` the second half
of every example is vision codes (their own pattern), weighted 0.5 / 0.5 against the text half as LWM
does. Deterministic: batch i depends only on (seed, i); `state` / `restore` resume exactly
(the methods of `lwm_core.data.DataLoader`).

    batches = PatternBatches(batch_size=4, seq_len=64, vocab_size=97)
    batch = next(batches)  # dict of numpy [4, 64] arrays: input_ids, targets, loss_weights, ...
"""

from __future__ import annotations

import numpy as np

FIRST_ID = 3  # ids 0..2 are LLaMA's <unk>, <s>, </s>; the pattern avoids them


class PatternBatches:
    def __init__(self, *, batch_size: int, seq_len: int, vocab_size: int, pattern_len: int = 7, noise: float = 0.1,
                 examples_per_row: int = 2, padding: int = 3, vision: bool = False, vision_codes: int = 64,
                 seed: int = 0):
        if seq_len - padding < 4 * examples_per_row or vocab_size <= FIRST_ID + pattern_len:
            raise ValueError("seq_len or vocab_size too small for the pattern")
        self.batch_size, self.seq_len, self.vocab_size = batch_size, seq_len, vocab_size
        self.noise, self.examples_per_row, self.padding = noise, examples_per_row, padding
        self.vision, self.vision_codes, self.seed = vision, vision_codes, seed
        pattern_rng = np.random.default_rng([seed, 1 << 30])
        self.pattern = pattern_rng.choice(np.arange(FIRST_ID, vocab_size), pattern_len, replace=False)
        self.vision_pattern = pattern_rng.choice(vision_codes, pattern_len, replace=False)
        self.index = 0

    def __iter__(self) -> PatternBatches:
        return self

    def state(self) -> dict:
        return {"index": self.index}

    def restore(self, state: dict) -> None:
        self.index = int(state["index"])

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.index])
        self.index += 1
        rows = [self._row(rng) for _ in range(self.batch_size)]
        return {key: np.stack([row[key] for row in rows]) for key in rows[0]}

    def _stream(self, rng, pattern, length: int, low: int, high: int) -> np.ndarray:
        phase = rng.integers(len(pattern))
        tokens = pattern[(phase + np.arange(length)) % len(pattern)]
        noisy = rng.random(length) < self.noise
        return np.where(noisy, rng.integers(low, high, length), tokens)

    def _row(self, rng) -> dict[str, np.ndarray]:
        t = self.seq_len
        row = {"input_ids": np.zeros(t, np.int32), "targets": np.zeros(t, np.int32),
               "loss_weights": np.zeros(t, np.float32), "segment_ids": np.zeros(t, np.int32),
               "position_ids": np.zeros(t, np.int32), "vision_masks": np.zeros(t, bool),
               "target_vision": np.zeros(t, bool), "attention_mask": np.zeros(t, bool)}
        used = t - self.padding
        cuts = np.sort(rng.choice(np.arange(4, used - 3), self.examples_per_row - 1, replace=False))
        bounds = [0, *cuts.tolist(), used]
        for segment, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True), start=1):
            length = stop - start  # input positions of this example; it has length + 1 tokens
            tokens = self._stream(rng, self.pattern, length + 1, FIRST_ID, self.vocab_size)
            is_vision = np.zeros(length + 1, bool)
            if self.vision:  # second half: vision codes
                is_vision[(length + 1) // 2:] = True
                codes = self._stream(rng, self.vision_pattern, length + 1, 0, self.vision_codes)
                tokens = np.where(is_vision, codes, tokens)
            span = slice(start, stop)
            row["input_ids"][span], row["targets"][span] = tokens[:-1], tokens[1:]
            row["vision_masks"][span], row["target_vision"][span] = is_vision[:-1], is_vision[1:]
            target_vision = is_vision[1:]
            weights = np.zeros(length, np.float32)
            for kind in (False, True):  # each kind present shares an equal part of the example's weight 1
                here = target_vision == kind
                if here.any():
                    weights[here] = 1.0 / here.sum()
            row["loss_weights"][span] = weights / (2 if target_vision.any() and (~target_vision).any() else 1)
            row["segment_ids"][span] = segment
            row["position_ids"][span] = np.arange(length)
            row["attention_mask"][span] = True
        return row
