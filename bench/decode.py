"""Prefill and cached-decode throughput: lwm vs transformers' LlamaForCausalLM, same weights, one process.

    python bench/decode.py                      # '200m' preset, fp32, 2K prefill, 32 decode steps
    python bench/decode.py --preset debug --prefill 512 --decode 16

Both run on the CPU with the same thread count; ours twice, with stacked layers run by lax.scan
(the default) and with one weight per layer (`scan_layers=False`).

- prefill: what generation does first, one forward over `--prefill` tokens that fills the KV cache
  and returns the last position's logits (transformers: `use_cache=True, logits_to_keep=1`, as its
  `generate` does);
- decode: `--decode` greedy steps after a 16-token prompt, timed as generate(N) - generate(1) so the
  prompt is not counted.

Prints tokens/s and the ratio to transformers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
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


def measure(prefill_fn, generate_fn, args) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) for one implementation, compiling/warming up first."""
    prefill_fn()
    generate_fn(args.decode)()
    t_prefill = best_of(prefill_fn, args.repeats)
    t_decode = best_of(generate_fn(args.decode), args.repeats) - best_of(generate_fn(1), args.repeats)
    return args.prefill / t_prefill, (args.decode - 1) / t_decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="200m")
    parser.add_argument("--prefill", type=int, default=2048)
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--attention", default="blockwise", choices=["plain", "blockwise"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = ModelConfig.from_name(args.preset, max_sequence_length=max(4096, args.prefill + args.decode + 64),
                                   attention_impl=args.attention)
    params = LWMModel(config, rngs=nnx.Rngs(0)).params_dict()
    with tempfile.TemporaryDirectory() as tmp:
        save_params(params, f"hf::{tmp}/hf", config=config)
        hf = LlamaForCausalLM.from_pretrained(f"{tmp}/hf", dtype=torch.float32).eval()
    print(f"preset {args.preset}: {config.num_params() / 1e6:.0f}M params, fp32, {args.threads} threads, "
          f"{args.attention} attention, jax {jax.__version__} on {jax.devices()[0].platform}, "
          f"torch {torch.__version__}", flush=True)

    rng = np.random.RandomState(0)
    long_prompt = rng.randint(3, config.vocab_size, (1, args.prefill))
    short_prompt = rng.randint(3, config.vocab_size, (1, 16))

    def hf_prefill():
        with torch.no_grad():
            hf(torch.tensor(long_prompt), use_cache=True, logits_to_keep=1)

    def hf_generate(n):
        def run():
            with torch.no_grad():
                hf.generate(torch.tensor(short_prompt), attention_mask=torch.ones_like(torch.tensor(short_prompt)),
                            max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return run

    results = {"transformers": measure(hf_prefill, hf_generate, args)}
    for scan_layers in (True, False):
        gen = Generator(LWMModel.from_params(config.replace(scan_layers=scan_layers), params))

        def ours_prefill(gen=gen):
            jax.block_until_ready(gen.prefill(long_prompt, max_length=args.prefill + 1))

        def ours_generate(n, gen=gen):
            return lambda: gen(short_prompt, max_new_tokens=n)

        name = "lwm scan_layers=" + str(scan_layers)
        results[name] = measure(ours_prefill, ours_generate, args)

    ref_prefill, ref_decode = results["transformers"]
    print(f"{'':<26} {'prefill tok/s':>14} {'ratio':>7} {'decode tok/s':>14} {'ratio':>7}")
    for name, (prefill, decode) in results.items():
        print(f"{name:<26} {prefill:>14.1f} {prefill / ref_prefill:>6.2f}x {decode:>14.1f} "
              f"{decode / ref_decode:>6.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
