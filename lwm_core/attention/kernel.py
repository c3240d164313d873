"""Chunked attention kernels: online-softmax forward and recomputing backward over one key/value block.

Both blockwise attention (one block: the whole sequence) and ring attention (one block per ring step)
are loops over these two functions. Layout inside is [B, H, T, D] so every chunk product is a batched
matmul with the batch dims leading. Masking is described per token, never as a [T, T] matrix:

- `TokenInfo.pos` [T] int32: the token's index in the original sequence (drives the causal mask; it
  differs from the slot index under the striped / zigzag layouts and for padding);
- `TokenInfo.seg` [B, T] int32 or None: packed-example id, attention stays inside one example;
- `TokenInfo.valid` [B|1, T] bool or None: False for keys that must not be attended (left padding,
  padding added to reach a chunk multiple).

A chunk pair none of whose (query, key) pairs is allowed is skipped with `lax.cond`: under a causal
mask that is about half of all pairs.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lwm_core.errors import LWMError


class TokenInfo(NamedTuple):
    """Per-token masking information of a query or key block (see module docstring)."""

    pos: jax.Array  # [T] int32
    seg: jax.Array | None = None  # [B, T] int32
    valid: jax.Array | None = None  # [B|1, T] bool


def slice_info(info: TokenInfo, start, size: int) -> TokenInfo:
    """The tokens [start, start + size) of a block's TokenInfo."""

    def cut(x):
        return None if x is None else lax.dynamic_slice_in_dim(x, start, size, axis=x.ndim - 1)

    return TokenInfo(cut(info.pos), cut(info.seg), cut(info.valid))


def chunk_allowed(qi: TokenInfo, ki: TokenInfo, causal: bool):
    """Boolean [B|1, Tq, Tk] of allowed (query, key) pairs, or None when every pair is allowed."""
    allowed = None

    def conj(a, b):
        return b if a is None else a & b

    if causal:
        allowed = conj(allowed, (ki.pos[None, :] <= qi.pos[:, None])[None])
    if qi.seg is not None and ki.seg is not None:
        allowed = conj(allowed, qi.seg[:, :, None] == ki.seg[:, None, :])
    if ki.valid is not None:
        allowed = conj(allowed, ki.valid[:, None, :])
    return allowed


def _skip_unless(allowed, compute, carry):
    """Run `compute(carry, mask)` only when some pair of the chunk is allowed; otherwise keep `carry`.

    A chunk whose pairs are all allowed runs without the elementwise mask (mask=None).
    """
    if allowed is None:
        return compute(carry, None)
    branch = jnp.where(jnp.any(allowed), jnp.where(jnp.all(allowed), 1, 2), 0)
    return lax.switch(branch, (lambda c: c, lambda c: compute(c, None), lambda c: compute(c, allowed)), carry)


def _prescale(q):
    """(q * scale, remaining scale): fp32 queries are scaled once up front, others per logit (keeps
    low-precision inputs unrounded)."""
    scale = q.shape[-1] ** -0.5
    if q.dtype == jnp.float32:
        return q * scale, 1.0
    return q, scale


def _chunks(x, size: int, axis: int):
    """Split `axis` into [n, size] and move the chunk index to the front: [n, ..., size, ...]."""
    n = x.shape[axis] // size
    x = x.reshape(x.shape[:axis] + (n, size) + x.shape[axis + 1:])
    return jnp.moveaxis(x, axis, 0)


def _unchunk(x, axis: int):
    """Inverse of `_chunks`."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])


def _info_chunks(info: TokenInfo, size: int) -> TokenInfo:
    return TokenInfo(*(None if x is None else _chunks(x, size, x.ndim - 1) for x in info))


def init_carry(q):
    """Empty online-softmax state for queries q [B, H, Tq, D]: (acc, running max, running sum)."""
    b, h, t, d = q.shape
    return (jnp.zeros((b, h, t, d), jnp.float32), jnp.full((b, h, t), -jnp.inf, jnp.float32),
            jnp.zeros((b, h, t), jnp.float32))


def forward_block(q, k, v, qi: TokenInfo, ki: TokenInfo, carry, *, causal: bool, q_chunk: int,
                  k_chunk: int):
    """Fold the keys/values k, v [B, H, Tk, D] into the online-softmax `carry` of q [B, H, Tq, D].

    Tq and Tk must be multiples of q_chunk and k_chunk. Accumulation is fp32 whatever the input dtype.
    """
    q, scale = _prescale(q)
    n_k = k.shape[2] // k_chunk

    def per_query_chunk(args):
        qb, state, qib = args  # qb [B, H, qc, D]

        def per_key_chunk(j, state):
            kb = lax.dynamic_slice_in_dim(k, j * k_chunk, k_chunk, axis=2)  # [B, H, kc, D]
            vb = lax.dynamic_slice_in_dim(v, j * k_chunk, k_chunk, axis=2)
            allowed = chunk_allowed(qib, slice_info(ki, j * k_chunk, k_chunk), causal)  # [B|1, qc, kc]

            def compute(state, allowed):
                acc, m, denom = state
                s = jnp.einsum("bhqd,bhkd->bhqk", qb, kb, preferred_element_type=jnp.float32)
                if scale != 1.0:
                    s = s * scale
                if allowed is not None:
                    s = jnp.where(allowed[:, None], s, -jnp.inf)
                m_new = jnp.maximum(m, s.max(-1))  # [B, H, qc]
                m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # rows with no key yet
                p = jnp.exp(s - m_safe[..., None])  # [B, H, qc, kc]; masked -> 0
                correction = jnp.exp(m - m_safe)
                denom = denom * correction + p.sum(-1)
                pv = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), vb, preferred_element_type=jnp.float32)
                return acc * correction[..., None] + pv, m_new, denom

            return _skip_unless(allowed, compute, state)

        return lax.fori_loop(0, n_k, per_key_chunk, state)

    acc, m, denom = carry
    xs = (_chunks(q, q_chunk, 2), (_chunks(acc, q_chunk, 2), _chunks(m, q_chunk, 2), _chunks(denom, q_chunk, 2)),
          _info_chunks(qi, q_chunk))
    acc, m, denom = lax.map(per_query_chunk, xs)
    return _unchunk(acc, 2), _unchunk(m, 2), _unchunk(denom, 2)


def finalize(carry):
    """Online-softmax state -> (output [B, H, Tq, D] fp32, log-sum-exp [B, H, Tq] fp32).

    A query that saw no allowed key gets output 0 and lse -inf (no NaN).
    """
    acc, m, denom = carry
    seen = denom > 0
    out = acc / jnp.where(seen, denom, 1.0)[..., None]
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, denom, 1.0)), -jnp.inf)
    return out, lse


def backward_block(q, k, v, do, lse, delta, qi: TokenInfo, ki: TokenInfo, dq, *, causal: bool,
                   q_chunk: int, k_chunk: int):
    """Gradients of one key/value block, recomputing the probabilities chunk by chunk.

    do [B, H, Tq, D] is the output cotangent, lse/delta [B, H, Tq] the final log-sum-exp and
    sum(do * out); dq [B, H, Tq, D] fp32 is accumulated and returned with dk, dv [B, H, Tk, D] fp32.
    """
    dq_in = dq
    # fp32: q is prescaled, so dk = ds^T q_scaled and dq = scale * (ds k), scaled once at the end
    q, scale = _prescale(q)
    dq_scale = (k.shape[-1] ** -0.5) / scale
    n_q = q.shape[2] // q_chunk
    lse_safe = jnp.where(jnp.isfinite(lse), lse, 0.0)

    def per_key_chunk(dq, args):
        kb, vb, kib = args  # kb [B, H, kc, D]
        b, h, kc, d = kb.shape

        def per_query_chunk(i, state):
            dq, dk, dv = state
            start = i * q_chunk
            qib = slice_info(qi, start, q_chunk)
            allowed = chunk_allowed(qib, kib, causal)  # [B|1, qc, kc]

            def compute(state, allowed):
                # only chunk-sized values pass through the branch (a full-size dq would be copied)
                _, dk, dv = state
                qb = lax.dynamic_slice_in_dim(q, start, q_chunk, axis=2)  # [B, H, qc, D]
                dob = lax.dynamic_slice_in_dim(do, start, q_chunk, axis=2)
                lse_b = lax.dynamic_slice_in_dim(lse_safe, start, q_chunk, axis=2)  # [B, H, qc]
                delta_b = lax.dynamic_slice_in_dim(delta, start, q_chunk, axis=2)
                s = jnp.einsum("bhqd,bhkd->bhqk", qb, kb, preferred_element_type=jnp.float32)
                if scale != 1.0:
                    s = s * scale
                p = jnp.exp(s - lse_b[..., None])  # [B, H, qc, kc]
                if allowed is not None:
                    p = jnp.where(allowed[:, None], p, 0.0)
                dv = dv + jnp.einsum("bhqk,bhqd->bhkd", p.astype(do.dtype), dob,
                                     preferred_element_type=jnp.float32)
                dp = jnp.einsum("bhqd,bhkd->bhqk", dob, vb, preferred_element_type=jnp.float32)
                ds = p * (dp - delta_b[..., None])  # [B, H, qc, kc]
                if scale != 1.0:
                    ds = ds * scale
                dk = dk + jnp.einsum("bhqk,bhqd->bhkd", ds.astype(q.dtype), qb,
                                     preferred_element_type=jnp.float32)
                dq_b = jnp.einsum("bhqk,bhkd->bhqd", ds.astype(k.dtype), kb, preferred_element_type=jnp.float32)
                return dq_b, dk, dv

            no_dq = jnp.zeros((b, h, q_chunk, d), jnp.float32)
            dq_b, dk, dv = _skip_unless(allowed, compute, (no_dq, dk, dv))
            dq = lax.dynamic_update_slice_in_dim(
                dq, lax.dynamic_slice_in_dim(dq, start, q_chunk, axis=2) + dq_b, start, axis=2)
            return dq, dk, dv

        zeros = jnp.zeros((b, h, kc, d), jnp.float32)
        dq, dk, dv = lax.fori_loop(0, n_q, per_query_chunk, (dq, zeros, zeros))
        return dq, (dk, dv)

    xs = (_chunks(k, k_chunk, 2), _chunks(v, k_chunk, 2), _info_chunks(ki, k_chunk))
    dq, (dk, dv) = lax.scan(per_key_chunk, jnp.zeros_like(dq_in), xs)
    return dq_in + dq * dq_scale, _unchunk(dk, 2), _unchunk(dv, 2)


def pad_to(x, length: int, axis: int, value=0):
    """Pad `axis` of x at the end up to `length`."""
    extra = length - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def check_inputs(q, k, v, segment_ids, mask, query_chunk_size: int, key_chunk_size: int):
    """One-line LWMError for shapes a caller got wrong."""
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise LWMError(f"attention expects q, k, v of one shape [batch, seq, heads, head_dim]; got "
                       f"{q.shape}, {k.shape}, {v.shape}")
    if query_chunk_size <= 0 or key_chunk_size <= 0:
        raise LWMError(f"chunk sizes must be positive, got {query_chunk_size}, {key_chunk_size}")
    for name, x in (("segment_ids", segment_ids), ("mask", mask)):
        if x is not None and tuple(x.shape) != q.shape[:2]:
            raise LWMError(f"{name} must be [batch, seq] = {q.shape[:2]} for blockwise/ring attention, "
                           f"got {tuple(x.shape)} (a full [B, Tq, Tk] mask needs impl='plain')")
