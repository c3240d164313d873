"""Attention: the single function boundary the model calls.

`dot_product_attention` picks the implementation by name; `decode_attention` serves one-token
steps against a KV cache.
"""

from __future__ import annotations

from lwm_core.attention.plain import allowed_pairs, plain_attention
from lwm_core.errors import LWMError

__all__ = ["dot_product_attention", "decode_attention", "update_cache", "plain_attention", "allowed_pairs"]


def dot_product_attention(q, k, v, *, causal: bool = True, segment_ids=None, mask=None,
                          impl: str = "plain", mesh=None, layout: str = "contiguous",
                          query_chunk_size: int = 512, key_chunk_size: int = 512):
    """Multi-head attention over q, k, v of shape [batch, seq, heads, head_dim] -> [batch, seq, heads, head_dim].

    `mask` is a key mask [batch, seq] (False = padding, e.g. left padding); `segment_ids` [batch, seq]
    restricts attention to tokens of the same packed example.
    """
    if impl == "plain":
        return plain_attention(q, k, v, causal=causal, segment_ids=segment_ids, mask=mask)
    raise LWMError(f"attention impl {impl!r} is not available; choose 'plain'")


def decode_attention(q, k_cache, v_cache, mask, *, mesh=None):
    """Attention of new queries [B, T, H, D] over a KV cache [B, S, H, D] with an explicit
    [B, T, S] mask (cache slots that hold real tokens at or before each query's position)."""
    return plain_attention(q, k_cache, v_cache, causal=False, mask=mask)


def update_cache(cache, new, index, *, mesh=None):
    """Write `new` [B, T, H, D] into `cache` [B, S, H, D] at slots [index, index + T)."""
    import jax

    return jax.lax.dynamic_update_slice_in_dim(cache, new.astype(cache.dtype), index, axis=1)
