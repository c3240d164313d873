"""Model FLOPs and MFU (model FLOPs utilisation) of a training step.

    per_token = train_flops_per_token(config, seq_len)      # model FLOPs of one trained token
    peak = matmul_flops_per_s(dtype="float32")              # this process's devices, measured now
    mfu = tokens_per_s * per_token / peak

Model FLOPs (PaLM's definition, what the model needs, not what the hardware ran: remat recomputation
and padding are not discounted or added):

    6 * N * tokens + 6 * L * D * T * tokens

- N: the parameters used by a matmul: per layer 4 D^2 (q, k, v, o) + 3 D F (gate, up, down), plus the
  text head V x D and, in a vision-language model, the vision head Vv x D (the loss runs both heads on
  every position). Embedding lookups, norms and biases are not matmuls and are left out.
  6 = 2 (multiply + add) x 3 (forward, and a backward pass twice the forward).
- The attention term: per layer and token, scores Q K^T and the weighted sum A V over the T / 2 keys a
  causal query sees on average: 2 x 2 x D x T / 2 = 2 D T forward, 6 D T with the backward pass.

The peak is measured, not looked up: `matmul_flops_per_s` times a plain [n, n] @ [n, n] matmul on
every local device at once (one per device, so simulated CPU devices that share cores are not counted
as extra hardware) in the training dtype, times `jax.process_count()`.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np


def matmul_params(config) -> int:
    """Parameters that take part in a matmul per token: the decoder's dense kernels and the head(s)."""
    d, f = config.hidden_size, config.intermediate_size
    n = config.num_hidden_layers * (4 * d * d + 3 * d * f) + d * config.vocab_size
    if config.vision:
        n += d * config.vision_vocab_size
    return n


def train_flops_per_token(config, seq_len: int) -> float:
    """Model FLOPs of one trained token (forward + backward) in rows of `seq_len` tokens."""
    attention = 6 * config.num_hidden_layers * config.hidden_size * seq_len
    return float(6 * matmul_params(config) + attention)


@functools.cache
def _matmul_rate(devices: tuple, dtype: str, n: int, seconds: float) -> float:
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(devices), ("d",))
    x = jax.device_put(jnp.ones((len(devices), n, n), dtype), NamedSharding(mesh, PartitionSpec("d")))
    # [devices, n, n]: each device multiplies its own square; the result stays where it was made
    f = jax.jit(lambda a: jnp.einsum("bij,bjk->bik", a, a))
    f(x).block_until_ready()
    runs, start = 0, time.perf_counter()
    while True:
        f(x).block_until_ready()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and runs >= 2:
            return 2 * n**3 * len(devices) * runs / elapsed


def matmul_flops_per_s(dtype: str = "float32", *, n: int = 1024, seconds: float = 0.3) -> float:
    """The plain matmul FLOP rate of all devices of the run, in `dtype`, measured once per process
    (cached): every local device multiplies an [n, n] square at the same time, for about `seconds`."""
    return _matmul_rate(tuple(jax.local_devices()), str(jnp.dtype(dtype)), n, seconds) * jax.process_count()


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops_per_s: float) -> float:
    """Model FLOPs per second over the measured peak."""
    return tokens_per_s * flops_per_token / max(peak_flops_per_s, 1e-9)
