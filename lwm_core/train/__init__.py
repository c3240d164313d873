"""Training: the loss, the optimizer, the sharded train step, checkpoints and the loop.

    from lwm_core.train import TrainConfig, train
    state = train(TrainConfig(steps=1000), "random:debug", batches, out_dir="runs/debug")

Files: config (TrainConfig), loss (chunked cross-entropy), optim (AdamW, schedules, freezing),
state (TrainState, shardings), step (the compiled step), checkpoints (orbax, export), trainer (the loop).
"""

from lwm_core.train.checkpoints import Checkpoints, restore_latest
from lwm_core.train.config import FREEZE_GROUPS, SCHEDULES, TrainConfig
from lwm_core.train.loss import BATCH_KEYS, chunked_loss
from lwm_core.train.optim import learning_rate, make_optimizer
from lwm_core.train.state import TrainState
from lwm_core.train.step import TrainStep, check_batch
from lwm_core.train.trainer import train

__all__ = ["BATCH_KEYS", "Checkpoints", "FREEZE_GROUPS", "SCHEDULES", "TrainConfig", "TrainState", "TrainStep",
           "check_batch", "chunked_loss", "learning_rate", "make_optimizer", "restore_latest", "train"]
