"""cuDNN flash attention for the one case it computes exactly as we do, on NVIDIA GPUs.

Measured on an H100 (bench/gpu.py, bf16, 32 heads x 128, causal): our blockwise kernel, which XLA
compiles from plain jnp ops, ran at 38-58 TFLOP/s; cuDNN's fused kernel through
`jax.nn.dot_product_attention(implementation="cudnn")` at 514-657 TFLOP/s. So `blockwise_attention`
hands a call to cuDNN when it is:
- on a GPU backend, with bf16 or fp16 inputs and a head dim that cuDNN takes (<= 128, multiple of 8);
- plain causal self-attention: no key mask, no packed `segment_ids` (cuDNN's public entry point has
  no segment ids, and a [B, T] key mask that is not a prefix length has no exact equivalent).
Prefill chunks against the KV cache (queries at an offset, left padding) go to cuDNN too, through
`fused_cache_attention`, on one device only (a sharded cache stays on our kernel): the causal-by-slot
and padding mask is passed as a mask, and the key length is bounded to the slots filled so far. On an
H100 (bench/gpu.py prefill, 7B, bf16, chunks of 8192) that took a 32K prefill from 6.2K to 15.6K
tokens/s (transformers: 23.2K), and 16K from 10.5K to 20.4K (transformers: 26.9K; measured before
the heads-first call below, which removed a 12 GiB copy of the cache).
Everything else (CPUs, fp32, packing, ring attention, decode steps) stays on our kernel.
`LWM_FUSED_ATTENTION=0` in the environment turns the hand-off off (to compare, or if a cuDNN build
misbehaves).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

try:  # the cuDNN function jax.nn.dot_product_attention calls; it also takes the heads-first layout
    from jax._src.cudnn.fused_attention_stablehlo import MaskType
    from jax._src.cudnn.fused_attention_stablehlo import dot_product_attention as _cudnn_attention
except ImportError:  # moved in a later JAX: the public entry point (with transposes) still works
    _cudnn_attention = None

ENV = "LWM_FUSED_ATTENTION"
DTYPES = (jnp.bfloat16, jnp.float16)
# jax.nn.dot_product_attention's implementation for the hand-offs; tests on a CPU use "xla" to run
# the same code as a GPU does
IMPLEMENTATION = "cudnn"


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def _takes(q, backend) -> bool:
    if not enabled() or q.dtype not in DTYPES or q.shape[-1] > 128 or q.shape[-1] % 8:
        return False
    return (backend or jax.default_backend()) == "gpu"


def eligible(q, *, causal: bool, segment_ids=None, mask=None, backend: str | None = None) -> bool:
    """Whether cuDNN computes this call exactly: q [B, T, H, D]."""
    if not causal or segment_ids is not None or mask is not None:
        return False
    return _takes(q, backend)


def cache_eligible(q, *, devices: int, backend: str | None = None) -> bool:
    """Whether a chunk of queries q (head dim last) over an unsharded cache goes to cuDNN: the
    conditions of `eligible` (the mask is passed explicitly) on a mesh of one device."""
    return devices == 1 and _takes(q, backend)


def fused_attention(q, k, v):
    """Causal attention by cuDNN: q, k, v [B, T, H, D] -> [B, T, H, D] (differentiable)."""
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=IMPLEMENTATION)


def fused_cache_attention(q, k, v, q_slots, key_valid, *, filled=None):
    """Queries q [B, H, T, D] over one layer's cache k, v [B, H, S, D] -> [B, T, H, D], as
    `cache_attention`: a query attends the valid slots (`key_valid` [B, S]) up to its own slot
    (`q_slots` [T]); a query with no visible slot gets zeros. `filled` (int32 scalar, optional): the
    slots from there on hold nothing yet; passed to cuDNN as the key length, so it can skip them."""
    b, s = key_valid.shape
    slots = jnp.arange(s, dtype=jnp.int32)
    allowed = (slots[None, :] <= q_slots[:, None])[None] & key_valid[:, None, :]  # [B, T, S]
    lengths = {} if filled is None else dict(
        query_seq_lengths=jnp.full((b,), q.shape[2], jnp.int32),
        key_value_seq_lengths=jnp.full((b,), jnp.minimum(filled, s), jnp.int32))
    if IMPLEMENTATION == "cudnn" and _cudnn_attention is not None:
        out = jnp.swapaxes(_cudnn_heads_first(q, k, v, allowed[:, None], **lengths), 1, 2)
    else:
        out = jax.nn.dot_product_attention(jnp.swapaxes(q, 1, 2), jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2),
                                           mask=allowed[:, None], implementation=IMPLEMENTATION, **lengths)
    return jnp.where(allowed.any(-1)[:, :, None, None], out, 0).astype(q.dtype)


def _cudnn_heads_first(q, k, v, mask, query_seq_lengths=None, key_value_seq_lengths=None):
    """cuDNN on the cache's own layout, heads first (q [B, H, T, D], k, v [B, H, S, D]) -> [B, H, T, D].
    `jax.nn.dot_product_attention` takes [B, T, H, D] only, and transposing a layer of the cache for it
    made XLA keep a second copy of the whole stacked cache (12 GiB at 7B with 48K slots, its memory
    analysis on an H100). JAX's cuDNN function (the one `jax.nn` calls) takes the layout by name."""
    padded = query_seq_lengths is not None
    return _cudnn_attention(q, k, v, mask=mask, q_seqlen=query_seq_lengths, kv_seqlen=key_value_seq_lengths,
                           scale=q.shape[-1] ** -0.5, mask_type=MaskType.PADDING if padded else MaskType.NO_MASK,
                           qkv_layout="BNTH")
