"""Run a model once on random tokens: does the checkpoint work here, and how fast is a forward pass."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm_core.errors import LWMError
from lwm_core.model import LWMModel


def probe_forward(model: LWMModel, num_tokens: int, *, batch_size: int = 1, seed: int = 0) -> dict:
    """Compile and time one forward pass over `num_tokens` random text tokens per row.

    Returns tokens, compile_s, forward_s, tokens_per_s and whether every logit is finite.
    """
    config = model.config
    if num_tokens < 1:
        raise LWMError(f"--forward needs at least 1 token, got {num_tokens}")
    if num_tokens > config.max_sequence_length:
        raise LWMError(f"{num_tokens} tokens exceed the model's max_sequence_length {config.max_sequence_length}; "
                       "use fewer tokens or a longer-context config (e.g. --config 7b-1m)")
    ids = jnp.asarray(np.random.RandomState(seed).randint(3, config.vocab_size, (batch_size, num_tokens)), jnp.int32)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, ids):
        text_logits, _ = nnx.merge(graphdef, state)(ids)
        return jnp.all(jnp.isfinite(text_logits)), text_logits[:, -1]

    start = time.perf_counter()
    compiled = forward.lower(state, ids).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    finite, _ = jax.block_until_ready(compiled(state, ids))
    forward_s = time.perf_counter() - start
    return {"tokens": batch_size * num_tokens, "compile_s": round(compile_s, 3), "forward_s": round(forward_s, 4),
            "tokens_per_s": round(batch_size * num_tokens / forward_s, 1), "logits_finite": bool(finite)}
