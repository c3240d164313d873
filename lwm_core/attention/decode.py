"""KV-cache decoding with the cache optionally sharded over `sp` along its slot axis.

`decode_attention`: every device attends its new queries over its own cache shard and returns a
partial (output, max, sum); the partials are merged by log-sum-exp with `pmax`/`psum` over `sp`, so
only [B, T, H, D]-sized partials cross devices, never the cache.

`update_cache`: the device whose shard holds slots [index, index + T) writes them in place
(`dynamic_update_slice`); other devices leave their shard untouched (a `lax.cond` skips the write).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from lwm_core.attention.plain import plain_attention
from lwm_core.errors import LWMError
from lwm_core.mesh import axis_size, current_mesh, logical_to_spec

SEQ_AXIS = "sp"


def _sharded_mesh(mesh, slots: int):
    """The mesh to shard the cache over, or None when the cache stays whole."""
    mesh = current_mesh(mesh)
    ring = axis_size(mesh, SEQ_AXIS)
    if ring == 1:
        return None
    if slots % ring:
        raise LWMError(f"KV cache length {slots} must divide by sp={ring} to shard it; pick a max length "
                       f"that is a multiple of {ring}")
    return mesh


def _partial_attention(q, k, v, mask):
    """Unnormalised attention of q [B, T, H, D] over one shard k, v [B, S, H, D] with mask [B, T, S]
    -> (acc [B, T, H, D] fp32, max [B, T, H] fp32, sum [B, T, H] fp32)."""
    s = jnp.einsum("bqhd,bkhd->bqhk", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    s = jnp.where(mask[:, :, None, :], s, -jnp.inf)
    m = s.max(-1)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m_safe[..., None])  # masked -> 0
    acc = jnp.einsum("bqhk,bkhd->bqhd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return acc, m, p.sum(-1)


def decode_attention(q, k_cache, v_cache, mask, *, mesh=None):
    """Attention of new queries q [B, T, H, D] over a KV cache [B, S, H, D] with an explicit [B, T, S]
    mask (cache slots that hold real tokens at or before each query's position) -> [B, T, H, D].

    With an `sp` mesh (argument or context) the cache is sharded along S and merged by log-sum-exp.
    A query with no visible slot gets zeros.
    """
    mesh = _sharded_mesh(mesh, k_cache.shape[1])
    if mesh is None:
        return plain_attention(q, k_cache, v_cache, causal=False, mask=mask)
    batch, _, heads, _ = q.shape
    b_axes = logical_to_spec(["batch"], mesh, [batch])[0]
    h_axes = logical_to_spec(["heads"], mesh, [heads])[0]

    def per_device(q, k, v, mask):
        acc, m, denom = _partial_attention(q, k, v, mask)
        m_all = lax.pmax(m, SEQ_AXIS)  # [B, T, H]
        m_safe = jnp.where(jnp.isfinite(m_all), m_all, 0.0)
        weight = jnp.exp(m - m_safe)  # 0 for a shard with no visible slot
        denom = lax.psum(denom * weight, SEQ_AXIS)
        acc = lax.psum(acc * weight[..., None], SEQ_AXIS)
        return (acc / jnp.where(denom > 0, denom, 1.0)[..., None]).astype(q.dtype)

    q_spec = P(b_axes, None, h_axes, None)
    cache_spec = P(b_axes, SEQ_AXIS, h_axes, None)
    return jax.shard_map(per_device, mesh=mesh, out_specs=q_spec, check_vma=False,
                         in_specs=(q_spec, cache_spec, cache_spec, P(b_axes, None, SEQ_AXIS)))(
        q, k_cache, v_cache, mask.astype(bool))


def _write_local(cache, new, start):
    """Write new [B, T, H, D] at local slot `start` of a shard [B, S_l, H, D]; slots outside the shard
    are dropped. `start` may be negative or past the end (the write then covers part or none)."""
    slots, count = cache.shape[1], new.shape[1]
    inside = (start >= 0) & (start + count <= slots)
    overlaps = (start < slots) & (start + count > 0)

    def whole(cache):  # the common case: one shard owns every new slot
        return lax.dynamic_update_slice_in_dim(cache, new, start, axis=1)

    def straddling(cache):  # the new slots span a shard boundary: write the owned part only
        offset = jnp.arange(slots) - start  # [S_l] index into `new`
        owned = (offset >= 0) & (offset < count)
        taken = jnp.take(new, jnp.clip(offset, 0, count - 1), axis=1)
        return jnp.where(owned[None, :, None, None], taken, cache)

    if count > slots:  # a prompt longer than a shard never fits in one
        return lax.cond(overlaps, straddling, lambda c: c, cache)
    branch = jnp.where(inside, 0, jnp.where(overlaps, 1, 2))
    return lax.switch(branch, (whole, straddling, lambda c: c), cache)


def update_cache(cache, new, index, *, mesh=None):
    """Write `new` [B, T, H, D] into `cache` [B, S, H, D] at slots [index, index + T) -> cache.

    With an `sp` mesh the cache is sharded along S and only the shard(s) owning those slots write.
    """
    if new.shape[1] > cache.shape[1]:
        raise LWMError(f"cannot write {new.shape[1]} tokens into a KV cache of {cache.shape[1]} slots")
    new = new.astype(cache.dtype)
    index = jnp.asarray(index, jnp.int32)
    mesh = _sharded_mesh(mesh, cache.shape[1])
    if mesh is None:
        return lax.dynamic_update_slice_in_dim(cache, new, index, axis=1)
    batch, slots, heads, _ = cache.shape
    shard = slots // axis_size(mesh, SEQ_AXIS)
    b_axes = logical_to_spec(["batch"], mesh, [batch])[0]
    h_axes = logical_to_spec(["heads"], mesh, [heads])[0]

    def per_device(cache, new, index):
        return _write_local(cache, new, index - lax.axis_index(SEQ_AXIS) * shard)

    cache_spec = P(b_axes, SEQ_AXIS, h_axes, None)
    return jax.shard_map(per_device, mesh=mesh, out_specs=cache_spec, check_vma=False,
                         in_specs=(cache_spec, P(b_axes, None, h_axes, None), P()))(cache, new, index)
