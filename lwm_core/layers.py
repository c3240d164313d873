"""Building blocks of the LLaMA-style decoder: dense kernels, embeddings, RMSNorm, interleaved RoPE.

Every parameter is named as in LWM's Flax checkpoints (`kernel`, `embedding`) so that the NNX
state path of a weight is its LWM checkpoint key, and carries its logical axes as metadata
(`logical_axes`, e.g. ('embed', 'heads')); `lwm_core.mesh.LOGICAL_AXIS_RULES` maps those to the
mesh. `stack` puts leading axes in front of a weight (the layer axis of scanned layers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], std: float, dtype) -> jax.Array:
    return (jax.random.normal(rngs.params(), shape, jnp.float32) * std).astype(dtype)


def _stacked(axes: tuple, stack: tuple[int, ...]) -> tuple:
    """Logical axes of a weight with `stack` leading axes (the layer axis of scanned layers)."""
    return ("layers",) * len(stack) + tuple(axes)


class Dense(nnx.Module):
    """x @ kernel without bias; kernel [*stack, in, out] as LWM stores it."""

    def __init__(self, in_features: int, out_features: int, *, std: float, param_dtype, rngs: nnx.Rngs,
                 axes: tuple[str, str], stack: tuple[int, ...] = ()):
        self.kernel = nnx.Param(_normal(rngs, (*stack, in_features, out_features), std, param_dtype),
                                logical_axes=_stacked(axes, stack))

    def __call__(self, x: jax.Array, dtype) -> jax.Array:
        return jnp.einsum("...i,io->...o", x.astype(dtype), self.kernel[...].astype(dtype))


class Embed(nnx.Module):
    """Token embedding table [num_embeddings, features]."""

    def __init__(self, num_embeddings: int, features: int, *, std: float, param_dtype, rngs: nnx.Rngs):
        self.embedding = nnx.Param(_normal(rngs, (num_embeddings, features), std, param_dtype),
                                   logical_axes=("vocab", "embed"))

    def __call__(self, ids: jax.Array, dtype) -> jax.Array:
        # [B, T] -> [B, T, D]. The model refuses out-of-vocabulary ids before they get here (eagerly,
        # or from inside jit); "clip" keeps a refused id from reading past the table meanwhile.
        return jnp.take(self.embedding[...], ids, axis=0, mode="clip").astype(dtype)


class RMSNorm(nnx.Module):
    """RMSNorm with weight only, normalised in fp32 (as LWM and Hugging Face do)."""

    def __init__(self, features: int, *, eps: float, param_dtype, stack: tuple[int, ...] = ()):
        self.kernel = nnx.Param(jnp.ones((*stack, features), param_dtype), logical_axes=_stacked((None,), stack))
        self.eps = eps

    def __call__(self, x: jax.Array, dtype) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return normed.astype(dtype) * self.kernel[...].astype(dtype)


def rope_angles(position_ids: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the rotary angles, each [B, T, head_dim // 2], computed in fp32.

    Positions are clamped at 0: left padding carries position -1 in LWM, whose table lookup wraps
    it to the last row; padded positions are masked anyway, so clamping changes no real token.
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))  # [D/2]
    pos = jnp.maximum(position_ids, 0).astype(jnp.float32)  # [B, T]
    angles = pos[..., None] * inv_freq  # [B, T, D/2]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """LWM's interleaved rotary embedding: dimension pairs (0,1), (2,3), ... rotate as complex numbers.

    x: [B, T, H, D]; cos, sin: [B, T, D/2].
    """
    dtype = x.dtype
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)  # [B, T, H, D/2, 2]
    real, imag = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # [B, T, 1, D/2]
    rotated = jnp.stack([real * cos - imag * sin, real * sin + imag * cos], axis=-1)
    return rotated.reshape(x.shape).astype(dtype)
