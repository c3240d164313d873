"""Text generation with the KV cache: one jitted prefill, then one jitted step per token."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm_core.errors import LWMError
from lwm_core.model import KVCache, LWMModel


def sample_token(logits, rng, *, temperature: float = 0.0, top_k: int | None = None):
    """logits [B, V] -> token ids [B]: greedy when temperature == 0, else top-k sampling."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


class Generator:
    """Compiled prefill and decode step for one model; reuse it across calls to skip recompiling."""

    def __init__(self, model: LWMModel, *, temperature: float = 0.0, top_k: int | None = None):
        self.config = model.config
        self.graphdef, self.state = nnx.split(model)
        pick = lambda logits, rng: sample_token(logits, rng, temperature=temperature, top_k=top_k)

        # The cache is donated: XLA writes new keys/values in place instead of copying the whole
        # cache every step.
        @functools.partial(jax.jit, donate_argnums=(3,))
        def prefill(state, input_ids, attention_mask, cache, rng):
            model = nnx.merge(self.graphdef, state)
            logits, _, cache = model.prefill(input_ids, cache, attention_mask=attention_mask, last_only=True)
            return pick(logits[:, -1], rng), cache

        @functools.partial(jax.jit, donate_argnums=(2,))
        def step(state, token, cache, rng):
            model = nnx.merge(self.graphdef, state)
            logits, _, cache = model.decode(token[:, None], cache)
            return pick(logits[:, -1], rng), cache

        self._prefill, self._step = prefill, step

    def prefill(self, input_ids, attention_mask=None, *, max_length: int, rng=None) -> tuple[jax.Array, KVCache]:
        """Run a left-padded prompt [B, T] into a fresh cache of `max_length` slots.

        Returns the first new token of each row [B] and the cache.
        """
        input_ids = jnp.asarray(input_ids, jnp.int32)
        batch, seq = input_ids.shape
        if max_length > self.config.max_sequence_length:
            raise LWMError(f"prompt of {seq} tokens + {max_length - seq} new tokens exceeds max_sequence_length "
                           f"{self.config.max_sequence_length}")
        if attention_mask is None:
            attention_mask = jnp.ones((batch, seq), bool)
        cache = nnx.merge(self.graphdef, self.state).init_cache(batch, max_length)
        rng = jax.random.PRNGKey(0) if rng is None else rng
        return self._prefill(self.state, input_ids, jnp.asarray(attention_mask, bool), cache, rng)

    def step(self, token, cache: KVCache, rng=None) -> tuple[jax.Array, KVCache]:
        """Feed tokens [B] and pick the next ones; the cache passed in is consumed (donated)."""
        return self._step(self.state, token, cache, jax.random.PRNGKey(0) if rng is None else rng)

    def __call__(self, input_ids, attention_mask=None, *, max_new_tokens: int, eos_token_id: int | None = None,
                 seed: int = 0, on_token: Callable[[int], None] | None = None) -> np.ndarray:
        """input_ids [B, T] (left-padded, `attention_mask` 0 on padding) -> new tokens [B, N].

        Stops early once every row has produced `eos_token_id`; rows that finished early are
        filled with eos. `on_token(i)` is called after each generated position (progress bars).
        """
        batch, seq = np.shape(input_ids)
        rngs = jax.random.split(jax.random.PRNGKey(seed), max_new_tokens)
        token, cache = self.prefill(input_ids, attention_mask, max_length=seq + max_new_tokens, rng=rngs[0])
        out = [np.asarray(token)]
        done = np.zeros(batch, bool) if eos_token_id is None else out[0] == eos_token_id
        if on_token:
            on_token(0)
        for i in range(1, max_new_tokens):
            if done.all():
                break
            token, cache = self.step(token, cache, rngs[i])
            tok = np.where(done, eos_token_id if eos_token_id is not None else 0, np.asarray(token))
            out.append(tok)
            if eos_token_id is not None:
                done |= tok == eos_token_id
            if on_token:
                on_token(i)
        result = np.stack(out, axis=1)
        if result.shape[1] < max_new_tokens:  # stopped early: pad finished rows with eos
            pad = np.full((batch, max_new_tokens - result.shape[1]), eos_token_id, result.dtype)
            result = np.concatenate([result, pad], axis=1)
        return result


def generate(model: LWMModel, input_ids, attention_mask=None, *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int | None = None, eos_token_id: int | None = None,
             seed: int = 0) -> np.ndarray:
    """One-off generation; see `Generator` to reuse the compiled functions."""
    gen = Generator(model, temperature=temperature, top_k=top_k)
    return gen(input_ids, attention_mask, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, seed=seed)
