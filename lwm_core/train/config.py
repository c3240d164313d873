"""`TrainConfig`: one frozen dataclass with every training choice, checked when it is made.

Defaults follow LWM's released scripts (AdamW b1 0.9, b2 0.95, gradient clipping at global norm 1.0,
lr 8e-5 constant after 5 warmup steps, weight decay 0.1), except that weight decay skips norms and
embeddings unless `decay_all=True` (LWM decays every parameter).

    config = TrainConfig(lr=6e-4, schedule="cosine", end_lr_ratio=0.1, warmup=100, steps=10_000)
"""

from __future__ import annotations

import dataclasses

from lwm_core.config import DTYPES
from lwm_core.errors import LWMError

SCHEDULES = ("cosine", "constant")
# freeze name -> the canonical parameter keys that still train (None: all of them).
# "text" keeps the language model as it is and trains only the vision embedding and head.
FREEZE_GROUPS: dict[str, tuple[str, ...] | None] = {
    "": None,
    "text": ("transformer/vte/embedding", "vision_head/kernel"),
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train: optimizer, schedule, batching, logging and checkpoint cadence.

    lr: peak learning rate, reached after `warmup` steps (linear from 0).
    schedule: 'constant' (lr after warmup) or 'cosine' (cosine decay to lr * end_lr_ratio at `steps`).
    weight_decay: AdamW's decoupled decay; applied to dense kernels only unless `decay_all`.
    grad_accum: micro-batches per optimizer step (each batch of B rows is split into grad_accum
      micro-batches of B / grad_accum rows; the loss and gradients equal the whole batch's).
    steps: optimizer steps to reach (a resumed run continues up to it).
    save_every / keep: checkpoint every N steps (and at the end and on Ctrl-C), keep the last `keep`.
    log_every: write a line to OUT/metrics.jsonl every N steps.
    loss_chunk_size: tokens per row in each chunk of the loss (0: the whole sequence at once).
    freeze: '' (train everything) or a name in FREEZE_GROUPS ('text': only the vision weights train).
    dtype: compute dtype of the model while training (None: the model's own `dtype`).
    """

    lr: float = 8e-5
    schedule: str = "constant"
    warmup: int = 5
    end_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    decay_all: bool = False
    b1: float = 0.9
    b2: float = 0.95
    clip_norm: float = 1.0
    grad_accum: int = 1
    seed: int = 0
    steps: int = 1000
    save_every: int = 500
    keep: int = 3
    log_every: int = 10
    loss_chunk_size: int = 1024
    freeze: str = ""
    dtype: str | None = None

    def __post_init__(self):
        for name in ("steps", "save_every", "keep", "log_every", "grad_accum"):
            if getattr(self, name) < 1:
                raise LWMError(f"TrainConfig.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup", "loss_chunk_size", "weight_decay", "seed"):
            if getattr(self, name) < 0:
                raise LWMError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or not self.clip_norm > 0:
            raise LWMError(f"TrainConfig.lr and clip_norm must be positive, got lr={self.lr}, "
                           f"clip_norm={self.clip_norm}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise LWMError(f"TrainConfig.b1 and b2 must lie in [0, 1), got b1={self.b1}, b2={self.b2}")
        if not 0 <= self.end_lr_ratio <= 1:
            raise LWMError(f"TrainConfig.end_lr_ratio must lie in [0, 1], got {self.end_lr_ratio}")
        if self.schedule not in SCHEDULES:
            raise LWMError(f"TrainConfig.schedule={self.schedule!r} is not one of {SCHEDULES}")
        if self.schedule == "cosine" and self.warmup >= self.steps:
            raise LWMError(f"TrainConfig.warmup ({self.warmup}) must be below steps ({self.steps}) for the "
                           "cosine schedule, which decays over the steps after warmup")
        if self.freeze not in FREEZE_GROUPS:
            raise LWMError(f"TrainConfig.freeze={self.freeze!r} is not one of {tuple(FREEZE_GROUPS)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise LWMError(f"TrainConfig.dtype={self.dtype!r} is not one of {DTYPES} (or None: the model's)")

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)
