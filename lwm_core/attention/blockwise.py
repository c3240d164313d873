"""Blockwise (memory-efficient) attention and the ring loop it shares with ring attention.

`ring_loop` is the exact softmax attention of local queries over key/value blocks that arrive one per
step around a ring of `axis_size` devices (`lax.ppermute` over `axis_name`); with `axis_size == 1` it
is plain blockwise attention on one device. It is a `jax.custom_vjp`: the forward pass keeps only
q, k, v, the output and the log-sum-exp, and the backward pass recomputes probabilities chunk by chunk
while dk/dv travel around the ring with their key/value block, so neither pass holds a [T, T] matrix.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from lwm_core.attention.kernel import TokenInfo, backward_block, finalize, forward_block, init_carry
from lwm_core.errors import LWMError


def _shift(tree, axis_name: str, axis_size: int):
    """Send every array of `tree` to the next device of the ring (i -> i + 1)."""
    perm = [(i, (i + 1) % axis_size) for i in range(axis_size)]
    return jax.tree.map(lambda x: lax.ppermute(x, axis_name, perm), tree)


def _ring_forward(q, k, v, qi, ki, causal, q_chunk, k_chunk, axis_name, axis_size):
    """-> (out [B, H, Tq, D] fp32, lse [B, H, Tq] fp32) over all key blocks of the ring."""
    blk = functools.partial(forward_block, causal=causal, q_chunk=q_chunk, k_chunk=k_chunk)
    carry = blk(q, k, v, qi, ki, init_carry(q))

    def step(state, _):
        carry, k, v, ki = state
        k, v, ki = _shift((k, v, ki), axis_name, axis_size)
        return (blk(q, k, v, qi, ki, carry), k, v, ki), None

    if axis_size > 1:
        (carry, _, _, _), _ = lax.scan(step, (carry, k, v, ki), None, length=axis_size - 1)
    return finalize(carry)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def ring_loop(q, k, v, qi: TokenInfo, ki: TokenInfo, causal: bool, q_chunk: int, k_chunk: int,
              axis_name: str | None, axis_size: int):
    """Attention of q [B, H, Tq, D] over the ring's k, v [B, H, Tk, D] blocks -> [B, H, Tq, D].

    Tq, Tk must be multiples of q_chunk, k_chunk. Output dtype is q's; accumulation is fp32.
    """
    out, _ = _ring_forward(q, k, v, qi, ki, causal, q_chunk, k_chunk, axis_name, axis_size)
    return out.astype(q.dtype)


def _ring_loop_fwd(q, k, v, qi, ki, causal, q_chunk, k_chunk, axis_name, axis_size):
    out, lse = _ring_forward(q, k, v, qi, ki, causal, q_chunk, k_chunk, axis_name, axis_size)
    return out.astype(q.dtype), (q, k, v, qi, ki, out, lse)


def _ring_loop_bwd(causal, q_chunk, k_chunk, axis_name, axis_size, residuals, d_out):
    q, k, v, qi, ki, out, lse = residuals
    do = d_out.astype(q.dtype)  # [B, H, Tq, D]
    delta = jnp.sum(d_out.astype(jnp.float32) * out, axis=-1)  # [B, H, Tq]
    blk = functools.partial(backward_block, causal=causal, q_chunk=q_chunk, k_chunk=k_chunk)

    def accumulate(dq, k, v, ki, dk, dv):
        dq, dk_b, dv_b = blk(q, k, v, do, lse, delta, qi, ki, dq)
        return dq, dk + dk_b, dv + dv_b

    def step(state, _):
        dq, k, v, ki, dk, dv = state
        dq, dk, dv = accumulate(dq, k, v, ki, dk, dv)
        # dk, dv travel with the key/value block they belong to
        k, v, ki, dk, dv = _shift((k, v, ki, dk, dv), axis_name, axis_size)
        return (dq, k, v, ki, dk, dv), None

    dq = jnp.zeros(q.shape, jnp.float32)
    dk = jnp.zeros(k.shape, jnp.float32)
    dv = jnp.zeros(v.shape, jnp.float32)
    if axis_size > 1:
        (dq, k, v, ki, dk, dv), _ = lax.scan(step, (dq, k, v, ki, dk, dv), None, length=axis_size - 1)
    dq, dk, dv = accumulate(dq, k, v, ki, dk, dv)
    if axis_size > 1:
        dk, dv = _shift((dk, dv), axis_name, axis_size)  # the last block goes home
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


ring_loop.defvjp(_ring_loop_fwd, _ring_loop_bwd)


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


def local_attention(q, k, v, pos, seg, valid, *, causal: bool, query_chunk_size: int,
                    key_chunk_size: int, axis_name: str | None = None, axis_size: int = 1):
    """Blockwise/ring attention of one device's block: q, k, v [B, L, H, D] -> [B, L, H, D].

    `pos` [L] are the tokens' original positions, `seg` [B, L] or None, `valid` [B, L] or None. L is
    padded here to a multiple of the chunk sizes (padded keys are masked, padded queries dropped).
    """
    length = q.shape[1]
    qc, kc = min(query_chunk_size, length), min(key_chunk_size, length)
    lq, lk = -(-length // qc) * qc, -(-length // kc) * kc
    if lk != length:  # padded keys must be masked out
        valid = jnp.ones((1, length), bool) if valid is None else valid
    far = jnp.iinfo(jnp.int32).max  # a padded query sees no key under a causal mask either way

    def info(n):
        return TokenInfo(pad_to(pos.astype(jnp.int32), n, 0, far),
                         None if seg is None else pad_to(seg.astype(jnp.int32), n, 1, -1),
                         None if valid is None else pad_to(valid.astype(bool), n, 1, False))

    def heads_first(x, n):  # [B, L, H, D] -> [B, H, n, D]
        return jnp.swapaxes(pad_to(x, n, 1), 1, 2)

    out = ring_loop(heads_first(q, lq), heads_first(k, lk), heads_first(v, lk), info(lq), info(lk),
                    causal, qc, kc, axis_name, axis_size)
    return jnp.swapaxes(out, 1, 2)[:, :length]


def blockwise_attention(q, k, v, *, causal: bool = True, segment_ids=None, mask=None,
                        query_chunk_size: int = 512, key_chunk_size: int = 512):
    """Memory-efficient exact attention on one device: q, k, v [B, T, H, D] -> [B, T, H, D].

    Same semantics as `plain_attention` (key mask `mask` [B, T], packed `segment_ids` [B, T]).
    """
    check_inputs(q, k, v, segment_ids, mask, query_chunk_size, key_chunk_size)
    pos = jnp.arange(q.shape[1], dtype=jnp.int32)
    return local_attention(q, k, v, pos, segment_ids, mask, causal=causal,
                           query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size)
