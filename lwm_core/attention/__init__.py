"""Attention: the single function boundary the model calls.

`dot_product_attention` picks the implementation by name: 'plain' (the reference, holds [T, T]),
'blockwise' (chunked online softmax, memory linear in T) or 'ring' (blockwise over the mesh axis `sp`,
key/value blocks passed around the ring). `cache_attention` serves KV-cache decoding and chunked
prefill, with the cache optionally sharded over the sequence axis. See docs/attention.md.
"""

from __future__ import annotations

from lwm_core.attention.blockwise import blockwise_attention
from lwm_core.attention.decode import RowGroup, cache_attention, extend_attention, extend_groups_attention
from lwm_core.attention.layout import LAYOUTS
from lwm_core.attention.plain import allowed_pairs, plain_attention
from lwm_core.attention.ring import arrange_for_ring, ring_attention
from lwm_core.errors import LWMError

__all__ = ["dot_product_attention", "cache_attention", "extend_attention", "extend_groups_attention", "RowGroup",
           "plain_attention", "allowed_pairs",
           "blockwise_attention", "ring_attention", "arrange_for_ring", "IMPLS", "LAYOUTS"]

IMPLS = ("plain", "blockwise", "ring")


def dot_product_attention(q, k, v, *, causal: bool = True, segment_ids=None, mask=None,
                          impl: str = "plain", mesh=None, layout: str = "contiguous",
                          query_chunk_size: int = 512, key_chunk_size: int = 512, positions=None):
    """Multi-head attention over q, k, v of shape [batch, seq, heads, head_dim] -> [batch, seq, heads, head_dim].

    `mask` is a key mask [batch, seq] (False = padding, e.g. left padding); `segment_ids` [batch, seq]
    restricts attention to tokens of the same packed example. A query with no key to attend gets zeros.
    `layout`, `mesh` and `positions` only matter for impl='ring' (mesh defaults to the one set by
    `jax.set_mesh`; `positions` says the tokens are already in a layout's order, see `ring_attention`).
    """
    if positions is not None and impl != "ring":
        raise LWMError("positions (tokens already arranged for the ring) need impl='ring'")
    if impl == "plain":
        return plain_attention(q, k, v, causal=causal, segment_ids=segment_ids, mask=mask)
    if impl == "blockwise":
        return blockwise_attention(q, k, v, causal=causal, segment_ids=segment_ids, mask=mask,
                                   query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size)
    if impl == "ring":
        return ring_attention(q, k, v, causal=causal, segment_ids=segment_ids, mask=mask, layout=layout,
                              query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size, mesh=mesh,
                              positions=positions)
    raise LWMError(f"attention impl {impl!r} is not one of {IMPLS}")
