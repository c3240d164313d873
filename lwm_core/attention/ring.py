"""Ring attention: the ring loop, and one `jax.shard_map` over the sequence axis (`sp`) that runs it.

`ring_loop` is the exact softmax attention of local queries over key/value blocks that arrive one per
step around a ring of `axis_size` devices (`lax.ppermute`): every device folds each arriving block
into its fp32 online-softmax state (a log-sum-exp merge), so no device ever holds more than two
blocks. It is a `jax.custom_vjp`: the backward pass recomputes probabilities chunk by chunk while
dk/dv travel around the ring with their key/value block. With a ring of one device it is blockwise
attention (`blockwise.py`).

Load-balancing layouts (`layout.py`) reorder the tokens; masks use original positions, so every
layout gives the same result. The model reorders its tokens once (`arrange_for_ring`); called alone,
`ring_attention` reorders and restores them itself. The mesh comes from the argument or from the
context (`jax.set_mesh`); the axis from `LOGICAL_AXIS_RULES['seq']`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from lwm_core.attention import layout as layouts
from lwm_core.attention.kernel import (TokenInfo, backward_block, check_inputs, chunk_allowed, finalize,
                                       forward_block, init_carry, pad_to)
from lwm_core.errors import LWMError
from lwm_core.mesh import axis_size, current_mesh, logical_to_spec, seq_axis


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


def ring_attention(q, k, v, *, causal: bool = True, segment_ids=None, mask=None, layout: str = "contiguous",
                   query_chunk_size: int = 512, key_chunk_size: int = 512, mesh=None, positions=None):
    """Exact attention with the sequence sharded over `sp`: q, k, v [B, T, H, D] -> [B, T, H, D].

    `positions` [T] (int): the inputs are ALREADY in a layout's order (the model permutes its tokens
    once, before the first layer: `arrange_for_ring`) and `positions[i]` is the original index of
    slot i; T must divide by sp, and the output comes back in the same order, still sharded over sp.
    Without `positions`, T is padded (and the padding masked) up to a multiple of sp (2 sp for
    zigzag) and permuted to `layout` here and back after (a gather per call: fine for one attention,
    wasteful in every layer of a model). Batch is split over dp/fsdp and heads over tp where they
    divide, otherwise replicated.
    """
    check_inputs(q, k, v, segment_ids, mask, query_chunk_size, key_chunk_size)
    layouts.check(layout)
    mesh = current_mesh(mesh)
    axis = seq_axis()  # the mesh axis LOGICAL_AXIS_RULES gives the sequence
    ring = axis_size(mesh, axis)
    if ring == 1:  # blockwise attention on one device
        pos = jnp.arange(q.shape[1], dtype=jnp.int32) if positions is None else jnp.asarray(positions, jnp.int32)
        return local_attention(q, k, v, pos, segment_ids, mask, causal=causal, query_chunk_size=query_chunk_size,
                               key_chunk_size=key_chunk_size)
    batch, length, heads, _ = q.shape
    if positions is not None:
        if length % ring:
            raise LWMError(f"arranged sequence of {length} tokens does not divide over sp={ring}")
        perm, padded = jnp.asarray(positions, jnp.int32), length
    else:
        padded = -(-length // layouts.multiple(layout, ring)) * layouts.multiple(layout, ring)
        if padded != length and mask is None:
            mask = jnp.ones((batch, length), bool)
        perm = layouts.permutation(padded, ring, layout)  # [T'] slot -> original position
        if layout != "contiguous" or padded != length:

            def arrange(x, fill):  # pad the sequence axis (1) and permute it to the layout
                return None if x is None else jnp.take(pad_to(x, padded, 1, fill), perm, axis=1)

            q, k, v = (arrange(x, 0) for x in (q, k, v))  # [B, T', H, D]
            segment_ids, mask = arrange(segment_ids, -1), arrange(mask, False)

    b_axes = logical_to_spec(["batch"], mesh, [batch])[0]
    h_axes = logical_to_spec(["heads"], mesh, [heads])[0]
    qkv_spec, tok_spec = P(b_axes, axis, h_axes, None), P(b_axes, axis)
    args = [q, k, v, jnp.asarray(perm)]
    specs = [qkv_spec, qkv_spec, qkv_spec, P(axis)]
    has_seg, has_mask = segment_ids is not None, mask is not None
    args += [x for x in (segment_ids, mask) if x is not None]
    specs += [tok_spec] * (has_seg + has_mask)

    def per_device(q, k, v, pos, *rest):  # local blocks: [B/b, T'/sp, H/h, D]
        rest = list(rest)
        seg = rest.pop(0) if has_seg else None
        valid = rest.pop(0) if has_mask else None
        return local_attention(q, k, v, pos, seg, valid, causal=causal, query_chunk_size=query_chunk_size,
                               key_chunk_size=key_chunk_size, axis_name=axis, axis_size=ring)

    out = jax.shard_map(per_device, mesh=mesh, in_specs=tuple(specs), out_specs=qkv_spec,
                        check_vma=False)(*args)
    if positions is not None or (layout == "contiguous" and padded == length):
        return out  # still in the caller's order and sharded over sp
    return jnp.take(out, layouts.inverse(perm), axis=1)[:, :length]


def arrange_for_ring(length: int, mesh, layout: str) -> np.ndarray | None:
    """The token order a model should run ring attention in: [T'] original index of each slot,
    T' = length padded to the layout's multiple; None when no ring runs (sp = 1) or no
    permutation or padding is needed."""
    ring = axis_size(current_mesh(mesh), seq_axis())
    if ring == 1:
        return None
    padded = -(-length // layouts.multiple(layout, ring)) * layouts.multiple(layout, ring)
    if layout == "contiguous" and padded == length:
        return None
    return layouts.permutation(padded, ring, layout)


def chunk_pair_counts(seq_len: int, ring_size: int, layout: str, *, query_chunk_size: int,
                      key_chunk_size: int, causal: bool = True) -> np.ndarray:
    """[ring_size] number of (query chunk, key chunk) pairs each device computes over all ring steps,
    using the kernel's own skip rule (`chunk_allowed` non-empty). Measures the layout's balance."""
    perm = layouts.permutation(seq_len, ring_size, layout).reshape(ring_size, -1)  # [n, L]
    block = perm.shape[1]
    qc, kc = min(query_chunk_size, block), min(key_chunk_size, block)
    q_pos = pad_to(jnp.asarray(perm), -(-block // qc) * qc, 1, np.iinfo(np.int32).max)
    k_pos = pad_to(jnp.asarray(perm), -(-block // kc) * kc, 1, np.iinfo(np.int32).max)
    q_pos = q_pos.reshape(ring_size, -1, 1, qc, 1)  # [n, nq, 1, qc, 1] per device, chunk
    k_pos = k_pos.reshape(1, 1, -1, 1, kc)  # every key chunk of every device: [1, 1, n*nk, 1, kc]

    @jax.jit
    def count(q_pos, k_pos):
        allowed = jax.vmap(jax.vmap(jax.vmap(
            lambda qp, kp: jnp.any(chunk_allowed(TokenInfo(qp), TokenInfo(kp), causal)),
            (None, 0)), (0, None)), (0, None))(q_pos[..., 0, :, 0], k_pos[0, 0, :, 0, :])
        return allowed.sum(axis=(1, 2))

    return np.asarray(count(q_pos, k_pos))
