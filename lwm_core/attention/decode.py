"""Attention of new tokens over the KV cache, with the cache optionally sharded over the sequence axis.

`cache_attention` serves both decoding (one or a few new tokens) and chunked prefill (a chunk of
hundreds or thousands of prompt tokens): each device attends all the new queries over its own cache
shard and returns a partial (output, log-sum-exp); the partials are merged with `pmax`/`psum` over
the sequence axis, so only query-sized values cross devices, never the cache. Short queries use one
matmul over the shard; long chunks use the blockwise kernel, which skips key chunks past the end of
the filled cache.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from lwm_core.attention.kernel import TokenInfo, finalize, forward_block, init_carry
from lwm_core.mesh import axis_size, current_mesh, logical_to_spec, seq_axis

# Above this many score bytes per shard ([B, H, T, S] fp32) the blockwise kernel is used.
_PLAIN_SCORE_BYTES = 1 << 25


def _partial_plain(q, k, v, q_slots, k_slots, valid):
    """q [B, H, T, D] over k, v [B, H, S, D] -> (out [B, H, T, D] fp32, lse [B, H, T] fp32)."""
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    allowed = (k_slots[None, :] <= q_slots[:, None])[None, None] & valid[:, None, None, :]  # [B, 1, T, S]
    s = jnp.where(allowed, s, -jnp.inf)
    m = s.max(-1)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m_safe[..., None])  # masked -> 0
    acc = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return finalize((acc, m, p.sum(-1)))


def _partial_blockwise(q, k, v, q_slots, k_slots, valid, query_chunk_size, key_chunk_size):
    """As `_partial_plain`, chunk by chunk: memory [B, H, q_chunk, k_chunk] per step."""
    t, s = q.shape[2], k.shape[2]
    qc = min(query_chunk_size, t)
    kc = math.gcd(s, key_chunk_size)
    if kc < min(64, s):  # an odd cache length (e.g. 2049) would make tiny key chunks: pad (masked) instead
        kc = min(key_chunk_size, s)
        extra = -s % kc
        k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, extra), (0, 0))) for x in (k, v))
        k_slots = jnp.pad(k_slots, (0, extra), constant_values=jnp.iinfo(jnp.int32).max)
        valid = jnp.pad(valid, ((0, 0), (0, extra)))
    padded = -(-t // qc) * qc
    if padded != t:
        q = jnp.pad(q, ((0, 0), (0, 0), (0, padded - t), (0, 0)))
        q_slots = jnp.pad(q_slots, (0, padded - t), constant_values=jnp.iinfo(jnp.int32).max)
    carry = forward_block(q, k, v, TokenInfo(q_slots), TokenInfo(k_slots, None, valid), init_carry(q),
                          causal=True, q_chunk=qc, k_chunk=kc)
    out, lse = finalize(carry)
    return out[:, :, :t], lse[:, :, :t]


def _partial(q, k, v, q_slots, k_slots, valid, query_chunk_size, key_chunk_size):
    b, h, t, _ = q.shape
    if b * h * t * k.shape[2] * 4 <= _PLAIN_SCORE_BYTES:
        return _partial_plain(q, k, v, q_slots, k_slots, valid)
    return _partial_blockwise(q, k, v, q_slots, k_slots, valid, query_chunk_size, key_chunk_size)


def cache_attention(q, k_cache, v_cache, q_slots, key_valid, *, mesh=None, query_chunk_size: int = 512,
                    key_chunk_size: int = 512):
    """Causal attention of new queries q [B, T, H, D] over one layer's cache k, v [B, H, S, D]
    -> [B, T, H, D].

    `q_slots` [T] int32 are the cache slots of the queries (they attend slots <= their own);
    `key_valid` [B, S] marks the slots that hold real tokens. A query with no visible slot gets zeros.
    With a sequence-axis mesh (argument or `jax.set_mesh`) the cache is sharded over its slots and
    the partial results are merged by log-sum-exp.
    """
    q = jnp.swapaxes(q, 1, 2)  # [B, H, T, D]
    q_slots = jnp.asarray(q_slots, jnp.int32)
    key_valid = key_valid.astype(bool)
    mesh = current_mesh(mesh)
    axis = seq_axis()
    ring = axis_size(mesh, axis)
    chunks = dict(query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size)
    if ring == 1:
        k_slots = jnp.arange(k_cache.shape[2], dtype=jnp.int32)
        out, _ = _partial(q, k_cache, v_cache, q_slots, k_slots, key_valid, **chunks)
        return jnp.swapaxes(out, 1, 2).astype(q.dtype)
    batch, heads, _, _ = q.shape
    local = k_cache.shape[2] // ring
    b_axes = logical_to_spec(["batch"], mesh, [batch])[0]
    h_axes = logical_to_spec(["heads"], mesh, [heads])[0]

    def per_device(q, k, v, q_slots, valid):
        k_slots = lax.axis_index(axis) * local + jnp.arange(local, dtype=jnp.int32)
        out, lse = _partial(q, k, v, q_slots, k_slots, valid, **chunks)
        top = lax.pmax(lse, axis)  # [B, H, T]
        top = jnp.where(jnp.isfinite(top), top, 0.0)
        weight = jnp.exp(lse - top)  # 0 for a shard with no visible slot
        total = lax.psum(weight, axis)
        out = lax.psum(out * weight[..., None], axis)
        return (out / jnp.where(total > 0, total, 1.0)[..., None]).astype(q.dtype)

    q_spec = P(b_axes, h_axes, None, None)
    cache_spec = P(b_axes, h_axes, axis, None)
    out = jax.shard_map(per_device, mesh=mesh, out_specs=q_spec, check_vma=False,
                        in_specs=(q_spec, cache_spec, cache_spec, P(), P(b_axes, axis)))(
        q, k_cache, v_cache, q_slots, key_valid)
    return jnp.swapaxes(out, 1, 2)
