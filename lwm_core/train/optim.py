"""The optimizer: gradient clipping by global norm, then AdamW with warmup and a cosine or constant
schedule (LWM's recipe), and which parameters train or decay.

Parameters are a nested dict keyed by LWM's checkpoint names (`transformer/wte/embedding`, ...). The
optimizer only ever sees the parameters that train: frozen ones (`TrainConfig.freeze`) are split off
before the gradient is taken, so they get no gradient, no optimizer state, and stay bit-identical.
"""

from __future__ import annotations

import optax

from lwm_core.checkpoint.common import flatten_tree, unflatten_tree
from lwm_core.errors import LWMError
from lwm_core.train.config import FREEZE_GROUPS, TrainConfig

# Modules whose weights are not decayed unless `decay_all`: norms and embedding tables.
_NO_DECAY_MODULES = ("ln_f", "attention_norm", "ffn_norm", "wte", "vte")


def learning_rate(config: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over `warmup` steps, then constant `lr` or cosine decay to
    `lr * end_lr_ratio` at step `steps`."""
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, config.lr, config.warmup, config.steps,
                                                  end_value=config.lr * config.end_lr_ratio)
    if config.warmup == 0:
        return optax.constant_schedule(config.lr)
    return optax.join_schedules([optax.linear_schedule(0.0, config.lr, config.warmup),
                                 optax.constant_schedule(config.lr)], [config.warmup])


def decays(key: str, decay_all: bool) -> bool:
    """Whether weight decay applies to the parameter `key` (a '/'-joined checkpoint key)."""
    return decay_all or key.split("/")[-2] not in _NO_DECAY_MODULES


def trains(key: str, freeze: str) -> bool:
    """Whether the parameter `key` is trained under `freeze` (see `FREEZE_GROUPS`)."""
    keep = FREEZE_GROUPS[freeze]
    return keep is None or key in keep


def split_frozen(params: dict, freeze: str) -> tuple[dict, dict]:
    """Nested params -> (trained, frozen), two nested dicts that together hold every parameter."""
    flat = flatten_tree(params)
    trained = {k: v for k, v in flat.items() if trains(k, freeze)}
    frozen = {k: v for k, v in flat.items() if not trains(k, freeze)}
    return unflatten_tree(trained), unflatten_tree(frozen)


def join(trained: dict, frozen: dict) -> dict:
    """The inverse of `split_frozen`."""
    return unflatten_tree({**flatten_tree(trained), **flatten_tree(frozen)})


def make_optimizer(config: TrainConfig, trained: dict) -> optax.GradientTransformation:
    """clip_by_global_norm(clip_norm) then AdamW(b1, b2, weight_decay masked by `decays`), for the
    trained parameters `trained` (their nested structure sets the decay mask)."""
    if not flatten_tree(trained):
        raise LWMError(f"freeze={config.freeze!r} leaves nothing to train in this model (a text-only model has "
                       "no vision weights); pick another freeze or a vision-language model")
    mask = unflatten_tree({k: decays(k, config.decay_all) for k in flatten_tree(trained)})
    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(learning_rate(config), b1=config.b1, b2=config.b2, weight_decay=config.weight_decay,
                    mask=mask),
    )
