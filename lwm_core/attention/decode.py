"""Attention of new tokens over the KV cache, with the cache optionally sharded over the sequence axis.

`cache_attention` serves both decoding (one or a few new tokens) and chunked prefill (a chunk of
hundreds or thousands of prompt tokens): each device attends all the new queries over its own cache
shard and returns a partial (output, log-sum-exp); the partials are merged with `pmax`/`psum` over
the sequence axis, so only query-sized values cross devices, never the cache. Short queries use one
matmul over the shard; long chunks use a chunked online-softmax kernel that reads key chunks straight
from the stacked cache and stops at the chunk holding the last query's slot. `extend_attention`
(what the model calls) writes a chunk's keys and values into the cache and attends it; on an NVIDIA
GPU it hands a long chunk over an unsharded cache to cuDNN (`fused.fused_cache_attention`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from lwm_core.attention import fused
from lwm_core.attention.kernel import finalize
from lwm_core.cache import layer_view, write_layer
from lwm_core.mesh import axis_size, current_mesh, logical_to_spec, seq_axis

# Above this many score bytes per shard ([B, H, T, S] fp32) the chunked kernel is used.
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


def _partial_chunked(q, k, v, layer, q_slots, k_slots, valid, query_chunk_size, key_chunk_size):
    """As `_partial_plain` for a long chunk of queries, reading key chunks straight from the stacked
    cache k, v [L, B, H, S, D] at `layer` (no copy of the layer's view): memory [B, H, q_chunk,
    k_chunk] per step.

    The cache slots `k_slots` [S] ascend, so the key chunks a query chunk can see are a prefix: the
    loop stops after the chunk holding the largest query slot (a data-dependent trip count: this is an
    inference kernel, it is not differentiated). The leading key chunks that every query of the chunk
    sees whole (slots at or below its first query's, valid in every row) run first in a loop of their
    own without the mask; the rest follow in a second loop with the mask (causal and `valid`) fused
    into the softmax. Two loops, not a branch per step (a branch per step measured slower). A cache
    length that the key chunk does not divide is read with the last chunk moved back to end at S, its
    slots already seen masked out (no padded copy of the cache).
    """
    _, b, h, s, d = k.shape
    t = q.shape[2]
    n_q = -(-t // query_chunk_size)
    qc = -(-t // n_q)  # even query chunks: 1,664 queries go as 4 x 416, not padded to 4 x 512
    kc = min(key_chunk_size, s)
    n_k = -(-s // kc)
    padded = n_q * qc
    q = q * d ** -0.5 if q.dtype == jnp.float32 else q
    scale = 1.0 if q.dtype == jnp.float32 else d ** -0.5
    if padded != t:  # padding queries see nothing (slot -1) and do not lengthen the loop
        q = jnp.pad(q, ((0, 0), (0, 0), (0, padded - t), (0, 0)))
        q_slots = jnp.pad(q_slots, (0, padded - t), constant_values=-1)
    chunk_first = k_slots[jnp.minimum(jnp.arange(n_k) * kc, s - 1)]  # first slot of each key chunk
    whole = s // kc  # chunks not moved back; of these, the ones valid in every row
    chunk_last = k_slots[jnp.arange(whole) * kc + kc - 1]
    chunk_valid = valid[:, :whole * kc].reshape(b, whole, kc).all(axis=(0, 2))

    def per_query_chunk(args):
        qb, qs = args  # [B, H, qc, D], [qc]
        n_needed = jnp.sum(chunk_first <= jnp.max(qs)).astype(jnp.int32)
        seen_whole = (chunk_last <= jnp.min(jnp.where(qs >= 0, qs, jnp.iinfo(qs.dtype).max))) & chunk_valid
        n_whole = jnp.minimum(jnp.sum(jnp.cumprod(seen_whole)), n_needed).astype(jnp.int32)

        def step(j, state, masked: bool):
            acc, m, denom = state
            begin = jnp.minimum(j * kc, s - kc)
            kb = lax.dynamic_slice(k, (layer, 0, 0, begin, 0), (1, b, h, kc, d))[0]  # [B, H, kc, D]
            vb = lax.dynamic_slice(v, (layer, 0, 0, begin, 0), (1, b, h, kc, d))[0]
            sc = jnp.einsum("bhqd,bhkd->bhqk", qb, kb, preferred_element_type=jnp.float32)
            if scale != 1.0:
                sc = sc * scale
            if masked:
                ks = lax.dynamic_slice_in_dim(k_slots, begin, kc)
                kv = lax.dynamic_slice_in_dim(valid, begin, kc, axis=1)  # [B, kc]
                fresh = begin + jnp.arange(kc) >= j * kc  # the moved-back last chunk: skip slots seen
                allowed = (ks[None, :] <= qs[:, None])[None] & (kv & fresh[None])[:, None, :]  # [B, qc, kc]
                sc = jnp.where(allowed[:, None], sc, -jnp.inf)
            m_new = jnp.maximum(m, sc.max(-1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0) if masked else m_new
            p = jnp.exp(sc - m_safe[..., None])  # masked -> 0
            correction = jnp.exp(m - m_safe)
            pv = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), vb, preferred_element_type=jnp.float32)
            return acc * correction[..., None] + pv, m_new, denom * correction + p.sum(-1)

        state = (jnp.zeros((b, h, qc, d), jnp.float32), jnp.full((b, h, qc), -jnp.inf, jnp.float32),
                 jnp.zeros((b, h, qc), jnp.float32))
        state = lax.fori_loop(0, n_whole, lambda j, st: step(j, st, False), state)
        return lax.fori_loop(n_whole, n_needed, lambda j, st: step(j, st, True), state)

    qs = jnp.moveaxis(q.reshape(b, h, padded // qc, qc, d), 2, 0)
    carry = lax.map(per_query_chunk, (qs, q_slots.reshape(-1, qc)))
    out, lse = finalize(tuple(jnp.moveaxis(x, 0, 2).reshape(x.shape[1:3] + (padded,) + x.shape[4:])
                              for x in carry))
    return out[:, :, :t], lse[:, :, :t]


def _partial(q, k, v, layer, q_slots, k_slots, valid, query_chunk_size, key_chunk_size):
    """q [B, H, T, D] over one layer of the stacked cache k, v [L, B, H, S, D]."""
    b, h, t, _ = q.shape
    if not _long(b, h, t, k.shape[3]):
        return _partial_plain(q, layer_view(k, layer), layer_view(v, layer), q_slots, k_slots, valid)
    return _partial_chunked(q, k, v, layer, q_slots, k_slots, valid, query_chunk_size, key_chunk_size)


def _long(batch: int, heads: int, queries: int, slots: int) -> bool:
    """Whether a chunk of queries is too long for one matmul over `slots` cache slots."""
    return batch * heads * queries * slots * 4 > _PLAIN_SCORE_BYTES


def extend_attention(q, k, v, k_all, v_all, layer, index, q_slots, key_valid, *, mesh=None,
                     query_chunk_size: int = 512, key_chunk_size: int = 512):
    """New tokens through one layer's attention against the KV cache: their keys and values k, v
    [B, T, H, D] are written into slots [index, index + T) of `layer` of the stacked cache k_all, v_all
    [L, B, H, S, D] (in place), and their queries q [B, T, H, D] attend that layer as `cache_attention`.
    Returns (out [B, T, H, D], k_all, v_all).

    On an NVIDIA GPU a long chunk over an unsharded cache goes to cuDNN (`fused.fused_cache_attention`,
    bounded to the slots filled so far): the layer is read and the chunk put into that copy, then the
    stacked cache is written (the order measured on an H100: XLA's memory analysis of a 7B prefill
    chunk with 48K slots gives 2.16 GiB of temporaries, the cache updated in place)."""
    mesh = current_mesh(mesh)
    b, t, h, _ = q.shape
    if _long(b, h, t, k_all.shape[3]) and fused.cache_eligible(q, devices=1 if mesh is None else mesh.size):
        def with_new(cache, new):  # the layer [B, H, S, D] with the chunk in it
            new = jnp.swapaxes(new, 1, 2).astype(cache.dtype)
            return lax.dynamic_update_slice_in_dim(layer_view(cache, layer), new, index, axis=2)

        out = fused.fused_cache_attention(jnp.swapaxes(q, 1, 2), with_new(k_all, k), with_new(v_all, v), q_slots,
                                          key_valid, filled=index + t)
        return out, write_layer(k_all, k, layer, index), write_layer(v_all, v, layer, index)
    k_all = write_layer(k_all, k, layer, index, mesh=mesh)
    v_all = write_layer(v_all, v, layer, index, mesh=mesh)
    out = cache_attention(q, k_all, v_all, q_slots, key_valid, layer=layer, mesh=mesh,
                          query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size)
    return out, k_all, v_all


class RowGroup(NamedTuple):
    """Rows [first, first + rows) of the cache fed `length` new tokens each, packed one row after
    another from token `start` of a [1, N] sequence; every group's tokens end at the same slot."""

    first: int
    rows: int
    length: int
    start: int


def extend_groups_attention(q, k, v, k_all, v_all, layer, index, groups, key_valid, *,
                            query_chunk_size: int = 512, key_chunk_size: int = 512):
    """`extend_attention` for packed row groups (one device): q, k, v [1, N, H, Dh] hold each group's
    rows one after another (`RowGroup`); a group of `length` tokens per row is written into its rows
    at slots [end - length, end), end = index + the longest group's length, so rows of different
    prompt lengths need no padding to a common one (the weights then run over N tokens, not rows x
    the longest). Each group attends a copy of its rows of the layer: meant for short caches (a
    guided prefill's unconditional rows). Returns (out [1, N, H, Dh], k_all, v_all)."""
    end = index + max(g.length for g in groups)
    cut = lambda t, g: t[0, g.start:g.start + g.rows * g.length].reshape(g.rows, g.length, *t.shape[2:])
    for g in groups:  # every write before any read: a read between two in-place writes costs a cache copy
        at = (layer, g.first, 0, end - g.length, 0)
        k_all = lax.dynamic_update_slice(k_all, jnp.swapaxes(cut(k, g), 1, 2).astype(k_all.dtype)[None], at)
        v_all = lax.dynamic_update_slice(v_all, jnp.swapaxes(cut(v, g), 1, 2).astype(v_all.dtype)[None], at)
    k_layer, v_layer = layer_view(k_all, layer), layer_view(v_all, layer)
    outs = []
    for g in groups:
        rows = slice(g.first, g.first + g.rows)
        slots = end - g.length + jnp.arange(g.length, dtype=jnp.int32)
        out = cache_attention(cut(q, g), k_layer[rows], v_layer[rows], slots, key_valid[rows],
                              query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size)
        outs.append(out.reshape(1, g.rows * g.length, *out.shape[2:]))
    return jnp.concatenate(outs, axis=1), k_all, v_all


def cache_attention(q, k_cache, v_cache, q_slots, key_valid, *, layer=None, mesh=None,
                    query_chunk_size: int = 512, key_chunk_size: int = 512):
    """Causal attention of new queries q [B, T, H, D] over one layer's cache -> [B, T, H, D].

    The cache is one layer's k, v [B, H, S, D], or with `layer` (an int or traced index) the stacked
    cache of every layer [L, B, H, S, D]: long query chunks then read their key chunks straight from
    it, without first copying out the layer (at 32K slots a copy of 128 MiB per layer and chunk).
    `q_slots` [T] int32 are the cache slots of the queries (they attend slots <= their own);
    `key_valid` [B, S] marks the slots that hold real tokens. A query with no visible slot gets zeros.
    With a sequence-axis mesh (argument or `jax.set_mesh`) the cache is sharded over its slots and
    the partial results are merged by log-sum-exp.
    """
    if layer is None:
        k_cache, v_cache, layer = k_cache[None], v_cache[None], 0
    layer = jnp.asarray(layer, jnp.int32)
    q = jnp.swapaxes(q, 1, 2)  # [B, H, T, D]
    q_slots = jnp.asarray(q_slots, jnp.int32)
    key_valid = key_valid.astype(bool)
    mesh = current_mesh(mesh)
    axis = seq_axis()
    ring = axis_size(mesh, axis)
    chunks = dict(query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size)
    if ring == 1:
        k_slots = jnp.arange(k_cache.shape[3], dtype=jnp.int32)
        out, _ = _partial(q, k_cache, v_cache, layer, q_slots, k_slots, key_valid, **chunks)
        return jnp.swapaxes(out, 1, 2).astype(q.dtype)
    batch, heads, _, _ = q.shape
    local = k_cache.shape[3] // ring
    b_axes = logical_to_spec(["batch"], mesh, [batch])[0]
    h_axes = logical_to_spec(["heads"], mesh, [heads])[0]

    def per_device(q, k, v, layer, q_slots, valid):
        k_slots = lax.axis_index(axis) * local + jnp.arange(local, dtype=jnp.int32)
        out, lse = _partial(q, k, v, layer, q_slots, k_slots, valid, **chunks)
        top = lax.pmax(lse, axis)  # [B, H, T]
        top = jnp.where(jnp.isfinite(top), top, 0.0)
        weight = jnp.exp(lse - top)  # 0 for a shard with no visible slot
        total = lax.psum(weight, axis)
        out = lax.psum(out * weight[..., None], axis)
        return (out / jnp.where(total > 0, total, 1.0)[..., None]).astype(q.dtype)

    q_spec = P(b_axes, h_axes, None, None)
    cache_spec = P(None, b_axes, h_axes, axis, None)
    out = jax.shard_map(per_device, mesh=mesh, out_specs=q_spec, check_vma=False,
                        in_specs=(q_spec, cache_spec, cache_spec, P(), P(), P(b_axes, axis)))(
        q, k_cache, v_cache, layer, q_slots, key_valid)
    return jnp.swapaxes(out, 1, 2)
