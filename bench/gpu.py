"""GPU bench: our attention and long-context prefill/decode against cuDNN and torch on one GPU.

Run on a machine with one NVIDIA GPU, JAX with CUDA and torch (+ transformers) with CUDA:

    python bench/gpu.py all --out gpu.json             # attention, then 7B prefill/decode
    python bench/gpu.py attention --seqs 8192,32768    # causal attention, bf16, 32 heads x 128
    python bench/gpu.py attention --backward --seqs 32768 # forward + backward
    python bench/gpu.py forward --preset 7b --lengths 32768   # whole-sequence forward (no cache)
    python bench/gpu.py prefill --preset 7b --lengths 32768,65536
    python bench/gpu.py check                          # cuDNN cache hand-off vs our kernel, 200m at 8K
    python bench/gpu.py memory --lengths 32768         # XLA's memory analysis of one prefill chunk
    python bench/gpu.py all --smoke                    # tiny sizes: checks the script on a CPU

Every case runs in a fresh subprocess (JAX and torch each own the GPU's memory while they run); what
the subprocesses run is bench/gpu_cases.py.
Attention: our blockwise kernel (`lwm_core.attention.blockwise_attention`, the one the model uses),
`jax.nn.dot_product_attention(implementation="cudnn")` (cuDNN flash attention) and torch
`scaled_dot_product_attention` (flash), same bf16 inputs; outputs checked against each other at the
first length. Prefill: `load_model("random:PRESET", dtype=bf16)` through the Sampler's chunked cache vs
transformers LlamaForCausalLM (sdpa, bf16, random weights of the same shapes: speed only), then decode
steps over the filled cache; "ours-xla" is the same with the cuDNN hand-offs off (our XLA kernel
for the chunks against the cache), up to `--xla-prefill-max` tokens. Check: one process, a bf16 model's
last-position logits after a chunked prefill with the cache hand-off, without it, and from the
whole-sequence forward. Times are min / median / max of `--repeats` runs after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HEADS, HEAD_DIM = 32, 128


def stats(times):
    return dict(min=min(times), median=statistics.median(times), max=max(times), n=len(times))


def attention_flops(t: int, heads: int, dim: int) -> float:
    return 2 * 2 * t * t * heads * dim / 2  # QK^T and PV, causal half


def run_child(kind, case, timeout):
    # Without preallocation JAX's allocator keeps its default limit of 75% of the card (JAX's "GPU memory
    # allocation" page) while torch may use all of it: give JAX 0.95 unless the caller set a fraction
    # (XLA_CLIENT_MEM_FRACTION, or its older name); the 7B 64K prefill needs ~56 GiB. Set ONE name only:
    # JAX 0.11's CUDA plugin refuses both at once ("Remove the latter one") and falls back to the CPU
    # (seen on an H100: every JAX case then timed out); the older name works on old and new JAX.
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONUNBUFFERED="1", **case.get("env", {}))
    if "XLA_CLIENT_MEM_FRACTION" not in env and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = "0.95"
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(case)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        tail = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        done = [line for line in tail.splitlines() if line.startswith("[progress ")][-3:]
        return dict(error=f"timed out after {timeout:.0f} s" + (f"; last: {' | '.join(done)}" if done else ""))
    if proc.returncode:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        errors = [line for line in lines if "Error" in line or "error" in line]
        return dict(error=(errors or lines or ["no output"])[-1][:300])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def bench_attention(args, log):
    import numpy as np

    for i, seq in enumerate(args.seqs):
        base = dict(seq=seq, heads=args.heads, dim=HEAD_DIM, repeats=args.repeats, keep=i == 0,
                    backward=args.backward)
        # "ours": blockwise_attention as the model calls it (cuDNN hand-off where eligible, fused.py);
        # "ours-xla": the same with the hand-off off, i.e. our own kernel at the given chunk sizes
        cases = [("ours", "jax_attention", dict(base, impl="ours", chunks=args.attn_chunks[0]))]
        cases += [("ours-xla", "jax_attention", dict(base, impl="ours", chunks=c, env={"LWM_FUSED_ATTENTION": "0"}))
                  for c in args.attn_chunks if seq <= args.xla_max]
        cases += [("cudnn", "jax_attention", dict(base, impl="cudnn")), ("torch", "torch_attention", base)]
        samples = {}
        for name, kind, case in cases:
            r = run_child(kind, case, args.timeout)
            label = name + (f" q{case['chunks'][0]}/k{case['chunks'][1]}" if name == "ours-xla" else "")
            label += " fwd+bwd" if args.backward else ""
            if "error" in r:
                print(f"attention T={seq:>7} {label:<18} ERROR {r['error']}", flush=True)
                log.append(dict(section="attention", seq=seq, impl=label, error=r["error"]))
                continue
            s = stats(r["times"])
            # fwd+bwd counted as 3.5x the forward's FLOPs (backward = 2 matmuls more + the recomputed QK^T)
            tflops = attention_flops(seq, args.heads, HEAD_DIM) * (3.5 if args.backward else 1) / s["median"] / 1e12
            if r.get("sample") is not None:
                samples[label] = np.asarray(r.pop("sample"))
            r.pop("sample", None)
            print(f"attention T={seq:>7} {label:<18} ms min/med/max {s['min']*1e3:8.2f} {s['median']*1e3:8.2f} "
                  f"{s['max']*1e3:8.2f}  {tflops:6.1f} TFLOP/s  ({r['device']})", flush=True)
            log.append(dict(section="attention", seq=seq, impl=label, tflops=tflops, **s,
                            compile_s=r.get("compile_s")))
        if len(samples) > 1 and "torch" in samples:
            for label, sample in samples.items():
                err = float(np.abs(sample - samples["torch"]).max())
                print(f"attention T={seq:>7} {label:<18} max |out - torch| over the last rows: {err:.3g}")
                log.append(dict(section="attention-check", seq=seq, impl=label, max_abs_vs_torch=err))


def model_cases(section, args, log, variants, fmt):
    """Run `variants` [(name, child kind, case)] at each length; print and log one line each."""
    for length in args.lengths:
        for name, kind, case in variants(dict(preset=args.preset, length=length, repeats=args.repeats)):
            r = run_child(kind, case, args.timeout)
            head = f"{section} {args.preset} T={length:>7} {name:<13}"
            row = dict(section=section, preset=args.preset, length=length, impl=name)
            if "error" in r:
                print(f"{head} ERROR {r['error']}", flush=True)
                log.append(dict(row, error=r["error"]))
                continue
            s = stats(r["times"])
            peak = f"{r['peak'] / 2**30:6.1f} GiB" if r.get("peak") else "   n/a"
            extra = f"  decode {r['decode_tok_s']:6.1f} tok/s" if "decode_tok_s" in r else ""
            print(f"{head} s min/med/max {s['min']:{fmt}} {s['median']:{fmt}} {s['max']:{fmt}}  "
                  f"{length / s['median']:9.0f} tok/s  peak {peak}{extra}  (wall {r['wall_s']:.0f} s, "
                  f"{r['device']})", flush=True)
            log.append(dict(row, tok_s=length / s["median"], decode_tok_s=r.get("decode_tok_s"), peak=r.get("peak"),
                            first_s=r.get("first_s"), **s))
            save(args, log)


def bench_prefill(args, log):
    def variants(base):
        ours = dict(base, decode=args.decode, chunk=args.chunk, chunks=args.model_chunks)
        cases = [("ours", "jax_prefill", ours), ("transformers", "torch_prefill", dict(base, decode=args.decode))]
        if base["length"] <= args.xla_prefill_max:
            cases.append(("ours-xla", "jax_prefill", dict(ours, env={"LWM_FUSED_ATTENTION": "0"})))
        return cases

    model_cases("prefill", args, log, variants, "7.2f")


def bench_memory(args, log):
    for length in args.lengths:
        slots = -(-(length + args.decode) // 16384) * 16384
        for variant in args.variants.split(","):
            case = dict(preset=args.preset, slots=slots, chunk=args.chunk, chunks=args.model_chunks, variant=variant)
            env = {"LWM_FUSED_ATTENTION": "0"} if variant == "xla" else {}
            r = run_child("jax_memory", dict(case, env=env), args.timeout)
            g = 2**30
            sizes = " ".join(f"{k} {r[k] / g:6.2f}" for k in ("args", "out", "alias", "temp") if k in r)
            print(f"memory {args.preset} slots={slots} chunk={args.chunk} {variant:<7} GiB: {sizes or r}", flush=True)
            log.append(dict(section="memory", **case, **r))
            save(args, log)


def bench_check(args, log):
    case = dict(preset=args.check_preset, length=args.check_length, chunk=args.check_chunk)
    r = run_child("jax_check", case, args.timeout)
    print(f"check {case}: {r}", flush=True)
    log.append(dict(section="check", **case, **r))


def bench_forward(args, log):
    model_cases("forward", args, log, lambda base: [
        ("ours", "jax_forward", dict(base, chunks=args.model_chunks)),
        ("ours-xla", "jax_forward", dict(base, chunks=args.model_chunks, env={"LWM_FUSED_ATTENTION": "0"})),
        ("transformers", "torch_forward", base)], "7.3f")


def save(args, log):
    """Write the log so far (a run stopped at its time limit keeps what it measured)."""
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            json.dump(log, f, indent=1)
        os.replace(args.out + ".tmp", args.out)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        if sys.argv[2].startswith("jax_") and os.environ.get("LWM_BENCH_REQUIRE_GPU") == "1":
            import jax

            if jax.default_backend() != "gpu":  # e.g. a CUDA plugin that refused its settings
                raise SystemExit(f"Error: JAX runs on {jax.default_backend()}, not a GPU (see the warnings above)")
        from gpu_cases import CHILDREN  # bench/gpu_cases.py, beside this file

        print(json.dumps(CHILDREN[sys.argv[2]](json.loads(sys.argv[3]))))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["attention", "forward", "prefill", "check", "memory", "all"])
    p.add_argument("--variants", default="handoff,xla",
                   help="memory: compile with the cuDNN hand-offs (handoff) and without (xla)")
    p.add_argument("--seqs", default="4096,32768,131072")
    p.add_argument("--heads", type=int, default=HEADS)
    p.add_argument("--backward", action="store_true", help="attention: time forward + backward")
    p.add_argument("--xla-max", type=int, default=1 << 30, help="attention: longest T for ours-xla cases")
    p.add_argument("--attn-chunks", default="512/512,1024/1024,2048/2048", help="ours: query/key chunk sizes")
    p.add_argument("--preset", default="7b")
    p.add_argument("--lengths", default="32768,65536")
    p.add_argument("--chunk", type=int, default=8192, help="prompt chunk of the Sampler")
    p.add_argument("--model-chunks", default="1024/1024", help="the model's attention query/key chunks")
    p.add_argument("--xla-prefill-max", type=int, default=32768,
                   help="prefill: longest length for the 'ours-xla' case (hand-offs off)")
    p.add_argument("--check-preset", default="200m")
    p.add_argument("--check-length", type=int, default=8192)
    p.add_argument("--check-chunk", type=int, default=2048)
    p.add_argument("--decode", type=int, default=33)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=240)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script on a CPU")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not args.smoke:  # a JAX case on the CPU is an error, not a slow result
        os.environ["LWM_BENCH_REQUIRE_GPU"] = "1"
    if args.smoke:
        os.environ.setdefault("LWM_FUSED_ATTENTION", "1")
        args.seqs, args.heads, args.preset, args.lengths, args.chunk = "512,1024", 4, "debug", "1024", 256
        args.attn_chunks, args.model_chunks, args.decode, args.repeats = "128/128", "128/128", 5, 3
        args.check_preset, args.check_length, args.check_chunk = "debug", 512, 128
    args.seqs = [int(x) for x in args.seqs.split(",")]
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.attn_chunks = [tuple(int(y) for y in x.split("/")) for x in args.attn_chunks.split(",")]
    args.model_chunks = tuple(int(y) for y in args.model_chunks.split("/"))
    log = []
    try:
        if args.what in ("check", "all"):
            bench_check(args, log)
        if args.what == "memory":
            bench_memory(args, log)
        if args.what in ("attention", "all"):
            bench_attention(args, log)
        if args.what in ("forward", "all"):
            bench_forward(args, log)
        if args.what in ("prefill", "all"):
            bench_prefill(args, log)
    finally:
        save(args, log)


if __name__ == "__main__":
    main()
