"""Ring attention: one `jax.shard_map` over the mesh axis `sp`.

Each device keeps its query block; key/value blocks travel around the ring with `lax.ppermute` and
every device folds each arriving block into its fp32 online-softmax state (a log-sum-exp merge), so no
device ever holds more than two blocks. The backward pass sends dk/dv around with their block
(see `blockwise.ring_loop`). Tokens are permuted to a load-balancing layout before sharding
(`layout.py`) and put back after; masks use original positions, so every layout gives the same result.

The mesh comes from the argument or from the context (`jax.set_mesh`); without a mesh, or with
sp == 1, this is blockwise attention on one device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from lwm_core.attention import layout as layouts
from lwm_core.attention.blockwise import blockwise_attention, check_inputs, local_attention, pad_to
from lwm_core.attention.kernel import TokenInfo, chunk_allowed
from lwm_core.errors import LWMError
from lwm_core.mesh import axis_size, current_mesh, logical_to_spec, seq_axis


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
    if ring == 1:
        return blockwise_attention(q, k, v, causal=causal, segment_ids=segment_ids, mask=mask,
                                   query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size)
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
