"""Blockwise (memory-efficient) attention on one device: the ring loop of `ring.py` with a ring of one.

Exact softmax attention, chunk by chunk: the forward pass keeps only q, k, v, the output and the
log-sum-exp; the backward pass recomputes probabilities chunk by chunk (see `kernel.py`), so neither
pass holds a [T, T] matrix. On NVIDIA GPUs plain causal bf16/fp16 calls go to cuDNN's fused kernel
instead (`fused.py`: 10x faster there).
"""

from __future__ import annotations

import jax.numpy as jnp

from lwm_core.attention import fused
from lwm_core.attention.kernel import check_inputs
from lwm_core.attention.ring import local_attention


def blockwise_attention(q, k, v, *, causal: bool = True, segment_ids=None, mask=None,
                        query_chunk_size: int = 512, key_chunk_size: int = 512):
    """Memory-efficient exact attention on one device: q, k, v [B, T, H, D] -> [B, T, H, D].

    Same semantics as `plain_attention` (key mask `mask` [B, T], packed `segment_ids` [B, T]).
    """
    check_inputs(q, k, v, segment_ids, mask, query_chunk_size, key_chunk_size)
    if fused.eligible(q, causal=causal, segment_ids=segment_ids, mask=mask):
        return fused.fused_attention(q, k, v)
    pos = jnp.arange(q.shape[1], dtype=jnp.int32)
    return local_attention(q, k, v, pos, segment_ids, mask, causal=causal,
                           query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size)
