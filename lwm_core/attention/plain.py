"""Plain softmax attention: the exact reference every faster implementation is tested against."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def allowed_pairs(q_len: int, k_len: int, *, causal: bool, segment_ids=None, mask=None,
                  q_offset: int = 0):
    """Boolean [B or 1, Tq, Tk] of the (query, key) pairs that may attend.

    `mask` is either a key mask [B, Tk] (False = padding) or a full [B, Tq, Tk] mask; `segment_ids`
    [B, T] keeps attention inside one packed example; `q_offset` is the key index of query 0.
    """
    allowed = jnp.ones((1, q_len, k_len), dtype=bool)
    if causal:
        q_pos = jnp.arange(q_len)[:, None] + q_offset
        k_pos = jnp.arange(k_len)[None, :]
        allowed = allowed & (k_pos <= q_pos)[None]
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, :, None] == segment_ids[:, None, :])
    if mask is not None:
        mask = mask.astype(bool)
        allowed = allowed & (mask[:, None, :] if mask.ndim == 2 else mask)
    return allowed


def plain_attention(q, k, v, *, causal: bool = True, segment_ids=None, mask=None):
    """Softmax attention over [B, T, H, D] inputs, accumulated in fp32.

    A query with no key to attend to (a left-padding position) gets a zero output, not NaN.
    """
    allowed = allowed_pairs(q.shape[1], k.shape[1], causal=causal, segment_ids=segment_ids, mask=mask)
    scale = q.shape[-1] ** -0.5
    # [B, H, Tq, Tk]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    allowed = allowed[:, None]  # [B, 1, Tq, Tk]
    logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    weights = jnp.where(allowed, weights, 0.0)
    # [B, Tq, H, D]
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.astype(q.dtype)
