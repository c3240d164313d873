"""cuDNN flash attention for the one case it computes exactly as we do, on NVIDIA GPUs.

Measured on an H100 (bench/gpu.py, bf16, 32 heads x 128, causal): our blockwise kernel, which XLA
compiles from plain jnp ops, ran at 38-58 TFLOP/s; cuDNN's fused kernel through
`jax.nn.dot_product_attention(implementation="cudnn")` at 514-657 TFLOP/s. So `blockwise_attention`
hands a call to cuDNN when it is:
- on a GPU backend, with bf16 or fp16 inputs and a head dim that cuDNN takes (<= 128, multiple of 8);
- plain causal self-attention: no key mask, no packed `segment_ids` (cuDNN's public entry point has
  no segment ids, and a [B, T] key mask that is not a prefix length has no exact equivalent).
Prefill chunks against the KV cache (queries at an offset, left-padding masks) go to cuDNN too,
through `fused_cache_attention`: the causal-by-slot and padding mask is passed as a mask, and every
slot of the cache is read (cuDNN cannot skip the empty tail, so at most 2x the FLOPs of a causal
pass; still ~10x our kernel's speed there). Only on one device: a sharded cache stays on our kernel.
Everything else (CPUs, fp32, packing, ring attention, decode steps) stays on our kernel.
`LWM_FUSED_ATTENTION=0` in the environment turns the hand-off off (to compare, or if a cuDNN build
misbehaves).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

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
    """Whether a chunk of queries q [B, H, T, D] over an unsharded cache goes to cuDNN: the
    conditions of `eligible` (the mask is passed explicitly) on a mesh of one device."""
    return devices == 1 and _takes(q, backend)


def fused_attention(q, k, v):
    """Causal attention by cuDNN: q, k, v [B, T, H, D] -> [B, T, H, D] (differentiable)."""
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=IMPLEMENTATION)


def fused_cache_attention(q, k, v, q_slots, key_valid):
    """Queries q [B, H, T, D] over one layer's cache k, v [B, H, S, D] -> [B, T, H, D], as
    `cache_attention`: a query attends the valid slots (`key_valid` [B, S]) up to its own slot
    (`q_slots` [T]); a query with no visible slot gets zeros."""
    slots = jnp.arange(k.shape[2], dtype=jnp.int32)
    allowed = (slots[None, :] <= q_slots[:, None])[None] & key_valid[:, None, :]  # [B, T, S]
    out = jax.nn.dot_product_attention(jnp.swapaxes(q, 1, 2), jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2),
                                       mask=allowed[:, None], implementation=IMPLEMENTATION)
    return jnp.where(allowed.any(-1)[:, :, None, None], out, 0).astype(q.dtype)
