"""Prefill and cached-decode throughput: lwm vs transformers' LlamaForCausalLM, same weights, one process.

    python bench/decode.py                      # '200m' preset, fp32, 2K prefill, 32 decode steps
    python bench/decode.py --preset debug --prefill 512 --decode 16

Both run on the CPU with the same thread count. Prefill is one forward over `--prefill` tokens that
fills the KV cache; decode is the time of `--decode` greedy steps after a short prompt, measured as
generate(N) minus generate(1) so the prompt's prefill is not counted. Prints tokens/s and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from transformers import LlamaForCausalLM

from lwm_core import ModelConfig, save_params
from lwm_core.model import LWMModel
from lwm_core.sampling import Generator


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="200m")
    parser.add_argument("--prefill", type=int, default=2048)
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = ModelConfig.from_name(args.preset, max_sequence_length=max(4096, args.prefill + args.decode + 64))
    model = LWMModel(config, rngs=nnx.Rngs(0))
    with tempfile.TemporaryDirectory() as tmp:
        save_params(model.params_dict(), f"hf::{tmp}/hf", config=config)
        hf = LlamaForCausalLM.from_pretrained(f"{tmp}/hf", dtype=torch.float32).eval()
    print(f"preset {args.preset}: {config.num_params() / 1e6:.0f}M params, fp32, {args.threads} threads, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}", flush=True)

    rng = np.random.RandomState(0)
    long_prompt = rng.randint(3, config.vocab_size, (1, args.prefill))
    short_prompt = rng.randint(3, config.vocab_size, (1, 16))
    gen = Generator(model)

    # ---- prefill: one pass over the long prompt, filling the cache
    def ours_prefill():
        cache = gen._empty_cache(1, args.prefill + 1)
        token, cache = gen._prefill(gen.state, jnp.asarray(long_prompt), jnp.ones((1, args.prefill), bool),
                                    cache, jax.random.PRNGKey(0))
        jax.block_until_ready(token)

    def hf_prefill():
        with torch.no_grad():
            hf(torch.tensor(long_prompt), use_cache=True)

    ours_prefill()  # compile
    hf_prefill()
    t_ours_prefill = best_of(ours_prefill, args.repeats)
    t_hf_prefill = best_of(hf_prefill, args.repeats)

    # ---- decode: generate(N) - generate(1) from a short prompt
    def ours_generate(n):
        return lambda: gen(short_prompt, max_new_tokens=n)

    def hf_generate(n):
        def run():
            with torch.no_grad():
                hf.generate(torch.tensor(short_prompt), attention_mask=torch.ones_like(torch.tensor(short_prompt)),
                            max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return run

    ours_generate(args.decode)()  # compile prefill and step
    hf_generate(2)()
    steps = args.decode - 1
    t_ours_decode = best_of(ours_generate(args.decode), args.repeats) - best_of(ours_generate(1), args.repeats)
    t_hf_decode = best_of(hf_generate(args.decode), args.repeats) - best_of(hf_generate(1), args.repeats)

    rows = [("prefill", args.prefill / t_ours_prefill, args.prefill / t_hf_prefill),
            ("decode", steps / t_ours_decode, steps / t_hf_decode)]
    print(f"{'phase':<8} {'lwm tok/s':>12} {'transformers tok/s':>20} {'ratio':>8}")
    for name, ours, ref in rows:
        print(f"{name:<8} {ours:>12.1f} {ref:>20.1f} {ours / ref:>7.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
