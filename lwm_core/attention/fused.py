"""cuDNN flash attention for the one case it computes exactly as we do, on NVIDIA GPUs.

Measured on an H100 (bench/gpu.py, bf16, 32 heads x 128, causal): our blockwise kernel, which XLA
compiles from plain jnp ops, ran at 38-58 TFLOP/s; cuDNN's fused kernel through
`jax.nn.dot_product_attention(implementation="cudnn")` at 514-657 TFLOP/s. So `blockwise_attention`
hands a call to cuDNN when it is:
- on a GPU backend, with bf16 or fp16 inputs and a head dim that cuDNN takes (<= 128, multiple of 8);
- plain causal self-attention: no key mask, no packed `segment_ids` (cuDNN's public entry point has
  no segment ids, and a [B, T] key mask that is not a prefix length has no exact equivalent).
Everything else (CPUs, fp32, masks, packing, the KV cache and ring attention) stays on our kernel.
`LWM_FUSED_ATTENTION=0` in the environment turns the hand-off off (to compare, or if a cuDNN build
misbehaves).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

ENV = "LWM_FUSED_ATTENTION"
DTYPES = (jnp.bfloat16, jnp.float16)


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def eligible(q, *, causal: bool, segment_ids=None, mask=None, backend: str | None = None) -> bool:
    """Whether cuDNN computes this call exactly: q [B, T, H, D]."""
    if not causal or segment_ids is not None or mask is not None or not enabled():
        return False
    if q.dtype not in DTYPES or q.shape[-1] > 128 or q.shape[-1] % 8:
        return False
    return (backend or jax.default_backend()) == "gpu"


def fused_attention(q, k, v):
    """Causal attention by cuDNN: q, k, v [B, T, H, D] -> [B, T, H, D] (differentiable)."""
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
