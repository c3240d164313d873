"""The training loss, computed over sequence chunks so [T, vocab] logits never exist whole.

Each position's target is predicted by the text head (`lm_head`) or, where `target_vision` is True,
by the vision head, as in LWM. The loss is the weighted mean of the per-position cross-entropy,

    loss = sum(w * ce) / sum(w)

with the data's `loss_weights` w (each packed example's weights sum to 1, LWM's 0.5 / 0.5 text /
vision split inside it), so every example counts the same however long it is.

The heads and the cross-entropy run one chunk of `chunk_size` tokens per row at a time under
`lax.scan`, each chunk rematerialised, so the backward pass is chunked too: memory holds the hidden
states [B, T, D] and one chunk's logits [B, chunk, V]. A chunk takes every n-th token of the row
(strided, not contiguous): the sequence axis stays sharded over `sp` inside every chunk and the loss,
a sum over positions, does not care about their order. For the same reason a ring model's loss is
computed in the ring layout's token order, without putting the hidden states back in order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lwm_core.model import LWMModel

# The batch contract (lwm_core.data): every array is [B, T].
BATCH_KEYS = ("input_ids", "targets", "loss_weights", "segment_ids", "position_ids", "vision_masks",
              "target_vision", "attention_mask")
SUM_KEYS = ("weighted_ce", "weight", "text_ce", "text_weight", "vision_ce", "vision_weight", "text_correct",
            "vision_correct", "tokens")


def hidden_states(model: LWMModel, input_ids, vision_masks=None, attention_mask=None, segment_ids=None,
                  position_ids=None):
    """Final hidden states (after ln_f) [B, T', D] and the token order they are in (`order` [T'] the
    original index of each slot under a ring layout, else None): `LWMModel.hidden_states`, with ids not
    checked here (the trainer checks the batch on the host)."""
    return model.hidden_states(input_ids, vision_masks, attention_mask, segment_ids, position_ids, check_ids=False)


def arrange(x, order, fill):
    """[B, T] -> [B, T'] in `order` (padded with `fill` to its length); None stays None."""
    if x is None or order is None:
        return x
    x = jnp.pad(x, ((0, 0), (0, len(order) - x.shape[1])), constant_values=fill)
    return jnp.take(x, jnp.asarray(order), axis=1)


def _cross_entropy(logits, targets):
    """logits [B, C, V] (any dtype), targets [B, C] -> ce [B, C] and correct [B, C] (argmax == target)."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked, jnp.argmax(logits, axis=-1) == targets


def _chunk_sums(hidden, targets, weights, is_vision, text_kernel, vision_kernel, dtype):
    """One chunk: hidden [B, C, D] and per-token [B, C] arrays -> the sums of `SUM_KEYS` (scalars)."""
    # The heads as LWMModel._heads computes them (Dense: x and kernel in the compute dtype).
    head = lambda kernel: jnp.einsum("bcd,dv->bcv", hidden.astype(dtype), kernel.astype(dtype))
    ce, correct = _cross_entropy(head(text_kernel), jnp.where(is_vision, 0, targets))  # [B, C]
    if vision_kernel is not None:
        vision_ce, vision_correct = _cross_entropy(head(vision_kernel), jnp.where(is_vision, targets, 0))
        ce = jnp.where(is_vision, vision_ce, ce)
        correct = jnp.where(is_vision, vision_correct, correct)
    used = weights > 0
    ce = jnp.where(used, ce, 0.0)  # a padded target may be anything: never let it reach the sum
    text_w = jnp.where(is_vision, 0.0, weights)
    vision_w = jnp.where(is_vision, weights, 0.0)
    return {
        "weighted_ce": jnp.sum(weights * ce), "weight": jnp.sum(weights),
        "text_ce": jnp.sum(text_w * ce), "text_weight": jnp.sum(text_w),
        "vision_ce": jnp.sum(vision_w * ce), "vision_weight": jnp.sum(vision_w),
        "text_correct": jnp.sum(text_w * correct), "vision_correct": jnp.sum(vision_w * correct),
        "tokens": jnp.sum(used.astype(jnp.float32)),
    }


def chunk_layout(length: int, chunk_size: int) -> tuple[int, int]:
    """(number of chunks n, tokens per chunk k) for a row of `length` tokens; n * k >= length, and
    n * k == length whenever chunk_size divides it. chunk_size 0: one chunk."""
    if chunk_size <= 0 or chunk_size >= length:
        return 1, length
    n = -(-length // chunk_size)
    return n, -(-length // n)


def token_loss_sums(hidden, targets, weights, is_vision, text_kernel, vision_kernel, *, dtype,
                    chunk_size: int) -> dict[str, jax.Array]:
    """hidden [B, T, D]; targets, weights, is_vision [B, T] -> sums of `SUM_KEYS`, chunk by chunk."""
    batch, length, width = hidden.shape
    n, k = chunk_layout(length, chunk_size)
    pad = n * k - length
    if pad:  # padded positions carry weight 0
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets, weights, is_vision = (jnp.pad(x, ((0, 0), (0, pad))) for x in (targets, weights, is_vision))
    # Token t = i * n + j goes to chunk j, slot i: [B, k, n, ...] -> [n, B, k, ...].
    chunks = lambda x: jnp.moveaxis(x.reshape(batch, k, n, *x.shape[2:]), 2, 0)
    xs = (chunks(hidden), chunks(targets), chunks(weights), chunks(is_vision))  # [n, B, k, D], [n, B, k] ...

    def body(total, chunk):
        sums = _chunk_sums(*chunk, text_kernel, vision_kernel, dtype)
        return {key: total[key] + sums[key] for key in SUM_KEYS}, None

    zero = {key: jnp.zeros((), jnp.float32) for key in SUM_KEYS}
    body = jax.checkpoint(body, prevent_cse=False)  # the backward pass recomputes each chunk's logits
    return jax.lax.scan(body, zero, xs)[0]


def loss_sums(model: LWMModel, batch: dict, *, chunk_size: int) -> dict[str, jax.Array]:
    """The sums of `SUM_KEYS` over a batch (dict of [B, T] arrays, see `BATCH_KEYS`); `finish` turns
    them into the loss and metrics. Sums (not means) add up over micro-batches exactly."""
    vision = model.config.vision
    hidden, order = hidden_states(model, batch["input_ids"], batch["vision_masks"] if vision else None,
                                  batch["attention_mask"], batch["segment_ids"], batch["position_ids"])
    targets = arrange(batch["targets"], order, 0)
    weights = arrange(batch["loss_weights"].astype(jnp.float32), order, 0.0)
    is_vision = arrange(batch["target_vision"], order, False) if vision else jnp.zeros(targets.shape, bool)
    return token_loss_sums(hidden, targets, weights, is_vision, model.lm_head.kernel[...],
                           model.vision_head.kernel[...] if vision else None, dtype=model.config.dtype,
                           chunk_size=chunk_size)


def finish(sums: dict) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) from `loss_sums`: loss, text_loss, vision_loss, text_accuracy, vision_accuracy
    (weighted means over their positions; 0 where there are none) and tokens (positions with w > 0)."""
    mean = lambda num, den: sums[num] / jnp.maximum(sums[den], np.finfo(np.float32).tiny)
    loss = mean("weighted_ce", "weight")
    return loss, {"loss": loss, "text_loss": mean("text_ce", "text_weight"),
                  "vision_loss": mean("vision_ce", "vision_weight"),
                  "text_accuracy": mean("text_correct", "text_weight"),
                  "vision_accuracy": mean("vision_correct", "vision_weight"), "tokens": sums["tokens"]}


def chunked_loss(model: LWMModel, batch: dict, *, chunk_size: int = 1024) -> tuple[jax.Array, dict]:
    """loss = sum(w * ce) / sum(w) over a batch, and its metrics (see `finish`)."""
    return finish(loss_sums(model, batch, chunk_size=chunk_size))
