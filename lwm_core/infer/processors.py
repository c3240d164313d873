"""Logits processors: small functions [B, V] -> [B, V] that compose, and the token picker.

    process = compose(guidance(5.0), temperature(1.0), top_k(8192), top_p(0.9))
    tokens = pick(process(logits), rng, greedy=False)

Classifier-free guidance takes a batch of [conditional rows; unconditional rows] (2B rows) and
returns B rows: `uncond + scale * (cond - uncond)`, as LWM computes it (even at scale 1).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from lwm_core.errors import LWMError

Processor = Callable[[jax.Array], jax.Array]


def compose(*processors: Processor | None) -> Processor:
    """Apply processors left to right; None entries are skipped."""
    chain = [p for p in processors if p is not None]

    def apply(logits):
        for p in chain:
            logits = p(logits)
        return logits

    return apply


def guidance(scale: float) -> Processor:
    """Classifier-free guidance over [cond; uncond] rows [2B, V] -> [B, V]."""

    def apply(logits):
        half = logits.shape[0] // 2
        cond, uncond = logits[:half].astype(jnp.float32), logits[half:].astype(jnp.float32)
        return uncond + scale * (cond - uncond)

    return apply


def temperature(value: float) -> Processor | None:
    """Divide by the temperature (0 means greedy, which `pick` handles: no processor)."""
    if value < 0:
        raise LWMError(f"temperature must be >= 0, got {value}")
    if value in (0.0, 1.0):
        return None
    return lambda logits: logits.astype(jnp.float32) / value


def top_k(k: int | None) -> Processor | None:
    """Keep the k largest logits of each row (ties at the k-th value are kept)."""
    if k is None:
        return None
    if k < 1:
        raise LWMError(f"top_k must be >= 1, got {k}")

    def apply(logits):
        if k >= logits.shape[-1]:
            return logits
        kth = jax.lax.top_k(logits, k)[0][:, -1:]  # [B, 1]
        return jnp.where(logits < kth, -jnp.inf, logits)

    return apply


def top_p(p: float | None) -> Processor | None:
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches p (at least one)."""
    if p is None or p >= 1.0:
        return None
    if p <= 0:
        raise LWMError(f"top_p must be in (0, 1], got {p}")

    def apply(logits):
        logits = logits.astype(jnp.float32)
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]  # [B, V] descending
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the tokens ranked above
        keep = before < p  # the first token always has 0 before it
        threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
        return jnp.where(logits < threshold, -jnp.inf, logits)

    return apply


def pick(logits, rng, *, greedy: bool) -> jax.Array:
    """logits [B, V] -> token ids [B] int32: argmax when greedy, else a categorical sample."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, logits.astype(jnp.float32), axis=-1).astype(jnp.int32)
