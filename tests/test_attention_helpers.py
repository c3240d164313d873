"""Shared random inputs and the plain-reference comparison for the attention tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lwm_core.attention import plain_attention

TOL = 1e-5  # fp32: outputs and gradients against the plain reference


def make_inputs(batch=2, seq=40, heads=3, head_dim=8, *, packed=False, left_pad=False, seed=0,
                dtype=jnp.float32):
    """q, k, v [B, T, H, D], segment_ids [B, T] or None, key mask [B, T] or None.

    Packed rows hold several examples of random lengths; left padding gives row 1 a run of padding
    (its first queries then have no key at all under a causal mask)."""
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((batch, seq, heads, head_dim)), dtype) for _ in range(3))
    segment_ids = None
    if packed:
        segment_ids = jnp.asarray(np.sort(rng.integers(0, 4, (batch, seq)), axis=1), jnp.int32)
    mask = None
    if left_pad:
        pads = np.array([0, 7] + [3] * (batch - 2))[:batch]
        mask = jnp.asarray(np.arange(seq)[None, :] >= pads[:, None])
    return q, k, v, segment_ids, mask


def outputs_and_grads(fn, q, k, v):
    """fn(q, k, v) and the gradients of a random projection of it w.r.t. q, k, v (jitted)."""
    w = jnp.asarray(np.random.default_rng(123).standard_normal(q.shape), jnp.float32)

    def loss(q, k, v):
        return jnp.sum(fn(q, k, v).astype(jnp.float32) * w)

    out = jax.jit(fn)(q, k, v)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    return out, grads


def assert_matches_plain(fn, q, k, v, *, causal, segment_ids, mask, tol=TOL):
    """Outputs and q/k/v gradients of `fn` equal plain attention's within `tol`, and are finite."""
    def ref(q, k, v):
        return plain_attention(q, k, v, causal=causal, segment_ids=segment_ids, mask=mask)

    out, grads = outputs_and_grads(fn, q, k, v)
    ref_out, ref_grads = outputs_and_grads(ref, q, k, v)
    for name, a, b in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref_out, *ref_grads), strict=True):
        assert np.all(np.isfinite(np.asarray(a))), f"{name} has non-finite values"
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=tol, err_msg=name)
