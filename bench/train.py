"""Training throughput: lwm's train step vs transformers' LlamaForCausalLM + torch AdamW, one run.

    python bench/train.py --quick                   # smoke run: 'debug' at 128 / 256 tokens, 2 steps
    python bench/train.py --quick --longest         # smoke run of --longest: 'debug', 128 to 512 tokens
    python bench/train.py                           # 'debug' and '200m' at 2K and 16K, side by side
    python bench/train.py --presets 200m --lengths 2K --steps 5 --rounds 3
    python bench/train.py --longest                 # longest context '200m' trains at (ring, 8 devices)

Every case runs in a fresh subprocess (this parent imports neither jax nor torch), in rounds: each
round runs every case once, so both sides share whatever else the machine does; the table shows the
median over rounds. A first `peak` case measures the plain matmul FLOP rate of this machine in fp32
(`lwm_core.train.flops.matmul_flops_per_s`, every core, the same probe `lwm train` uses; torch's
rate for the same square is printed beside it) - the MFU denominator of both sides.

- `lwm`: `lwm_core.train.TrainStep` on one device: blockwise attention, the chunked loss
  (`--loss-chunk`), AdamW as LWM (b2 0.95, clip 1.0, weight decay 0.1), fp32, remat of each layer
  when `--remat` says so. Timed: `--steps` steps after one warm-up (compiling) step.
- `torch`: `LlamaForCausalLM(attn_implementation="sdpa")` (same shapes: LWM's LLaMA, untied head,
  vocab 32000) with `torch.optim.AdamW(betas=(0.9, 0.95), weight_decay=0.1)`, gradient clipping at
  1.0, `gradient_checkpointing_enable()` when lwm remats, fp32, the loss on full logits (its own).
- Same batch on both sides: `max(1, --tokens-per-step // T)` rows of T random token ids.
- MFU: model FLOPs (6 N + 6 L D T per token, docs/train.md "MFU") per second over the peak.

`--remat auto` (default) turns it on (both sides) above 4K tokens, where activations of every layer
would not fit. Before each case the bench estimates its memory and skips it, with the reason, when it
would not fit in the available RAM; `--max-others` marks rounds where other processes kept more than
that share of the cores busy (shared machine: such figures are not comparable).

`--longest`: '200m' on `--mesh` (default 1,1,1,8: ring attention over 8 simulated CPU devices, zigzag
layout), remat `nothing_saveable`, chunked loss, one row: lengths double from `--start` until one does
not fit (XLA's memory analysis of the compiled step over the available RAM, or the step failing),
then the midpoint is tried; each length compiles and runs two steps in a fresh process. XLA's
figure is per device times the devices (simulated devices share the host's RAM): on 1,1,1,8 the
weights and AdamW moments are replicated on all 8 (about 8 x 2.5 GiB for '200m'), so `--mesh 1,1,2,4`
(tensor parallel over 2, ring over 4) may reach further; the figure printed for each length says why.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

GIB = 1 << 30
RESULT = "RESULT "
PRESETS = {"debug": (256, 256, 2, 2), "200m": (1024, 2048, 14, 8)}  # hidden, intermediate, layers, heads
VOCAB = 32000
RUNTIME = 1.5 * GIB  # python + jax or torch + compiled code


def tokens(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def fmt(n: int) -> str:
    return f"{n >> 10}K" if n >= 1024 and n % 1024 == 0 else str(n)


def available_bytes() -> int:
    return int(re.search(r"MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text()).group(1)) * 1024


def hwm_bytes() -> int:
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def machine_busy() -> tuple[float, float]:
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    own = os.times()
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), own.user + own.system


def others_share(mark, wall: float) -> float:
    """Share of the cores other processes kept busy since `mark` (0 on a quiet machine)."""
    busy, own = (b - a for a, b in zip(mark, machine_busy(), strict=True))
    return max(0.0, (busy - own) / (wall * os.cpu_count()))


def flops_per_token(preset: str, length: int) -> float:
    """= lwm_core.train.flops.train_flops_per_token (checked in the lwm child)."""
    d, f, layers, _ = PRESETS[preset]
    return 6.0 * (layers * (4 * d * d + 3 * d * f) + d * VOCAB) + 6.0 * layers * d * length


def estimate(case: dict) -> float:
    """Rough peak bytes: weights, gradients, two moments; activations (all layers, or one with remat)."""
    d, f, layers, _ = PRESETS[case["preset"]]
    params = 2 * VOCAB * d + layers * (4 * d * d + 3 * d * f)
    tokens_ = case["rows"] * case["length"]
    per_layer = tokens_ * (10 * d + 4 * f) * 4
    kept = layers * tokens_ * d * 4 + per_layer if case["remat"] else layers * per_layer
    logits = tokens_ * VOCAB * 4 * (3 if case["kind"] == "torch" else 0)  # torch: logits, softmax, grad
    return 4 * params * 4 + kept + logits + RUNTIME


# ------------------------------------------------------------------------------------ children
def batch_ids(case: dict):
    import numpy as np

    ids = np.random.RandomState(0).randint(3, VOCAB, (case["rows"], case["length"] + 1))
    return ids[:, :-1].astype(np.int32), ids[:, 1:].astype(np.int32)


def run_peak(case: dict) -> dict:
    import torch

    from lwm_core.train.flops import matmul_flops_per_s

    jax_rate = matmul_flops_per_s("float32", seconds=1.0)
    torch.set_num_threads(os.cpu_count())
    a = torch.ones(1024, 1024)
    a @ a
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        a @ a
        runs += 1
    return {"jax": jax_rate, "torch": 2 * 1024**3 * runs / (time.perf_counter() - start)}


def run_lwm(case: dict) -> dict:
    if case.get("devices", 1) > 1:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={case['devices']}"
    import jax
    import numpy as np

    import lwm_core
    from lwm_core.mesh import make_mesh
    from lwm_core.train import TrainConfig, TrainStep
    from lwm_core.train.flops import train_flops_per_token

    mesh = make_mesh(case["mesh"]) if case.get("mesh") else None
    options = {"attention_impl": "ring", "sequence_layout": "zigzag"} if case.get("mesh") else {}
    model = lwm_core.load_model(f"random:{case['preset']}", mesh=mesh, max_sequence_length=case["length"],
                                remat_block="nothing_saveable" if case["remat"] else "", **options)
    assert train_flops_per_token(model.config, case["length"]) == flops_per_token(case["preset"], case["length"])
    step = TrainStep(model, TrainConfig(loss_chunk_size=case["loss_chunk"], warmup=0), mesh)
    ids, targets = batch_ids(case)
    ones = np.ones_like(ids)
    batch = {"input_ids": ids, "targets": targets, "loss_weights": ones.astype(np.float32), "segment_ids": ones,
             "position_ids": np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape).copy(),
             "vision_masks": ones == 0, "target_vision": ones == 0, "attention_mask": ones == 1}
    state = step.init_state(model)
    del model
    xla = None
    if case.get("analyse"):  # --longest: XLA's memory need before running anything
        from lwm_core.mesh import shard_batch
        from lwm_core.train.step import check_batch

        placed = shard_batch(check_batch(batch, step.model_config, mesh=mesh), mesh) if mesh else batch
        m = step._step.lower(state.arrays(), placed).compile().memory_analysis()
        xla = int(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes)
        xla *= len(jax.devices())  # the analysis is per device; simulated devices share this host's RAM
        if xla > available_bytes():
            return {"fits": False, "xla": xla}
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics["loss"])
    compile_s = time.perf_counter() - start
    mark, start = machine_busy(), time.perf_counter()
    for _ in range(case["steps"]):
        state, metrics = step(state, batch)
    loss = float(jax.block_until_ready(metrics["loss"]))
    wall = time.perf_counter() - start
    return {"fits": True, "seconds": wall, "compile_s": compile_s, "loss": loss, "peak_rss": hwm_bytes(),
            "xla": xla, "others": others_share(mark, wall)}


def run_torch(case: dict) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    d, f, layers, heads = PRESETS[case["preset"]]
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=d, intermediate_size=f, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=case["length"],
                         rms_norm_eps=1e-6, tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).train()
    if case["remat"]:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=8e-5, betas=(0.9, 0.95), weight_decay=0.1)
    ids, targets = (torch.from_numpy(x.astype("int64")) for x in batch_ids(case))

    def step():
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    start = time.perf_counter()
    step()
    compile_s = time.perf_counter() - start
    mark, start = machine_busy(), time.perf_counter()
    for _ in range(case["steps"]):
        loss = step()
    wall = time.perf_counter() - start
    return {"fits": True, "seconds": wall, "compile_s": compile_s, "loss": loss, "peak_rss": hwm_bytes(),
            "others": others_share(mark, wall)}


CHILDREN = {"peak": run_peak, "lwm": run_lwm, "torch": run_torch}


# ------------------------------------------------------------------------------------ parent
def spawn(case: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(case)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:200]}"}


def throughput(args) -> None:
    peak = spawn({"kind": "peak"}, args.timeout)
    if "error" in peak:
        sys.exit(f"peak probe failed: {peak['error']}")
    print(f"matmul fp32 [1024 x 1024]: jax {peak['jax'] / 1e9:.1f} GFLOP/s, torch {peak['torch'] / 1e9:.1f} "
          f"GFLOP/s (MFU is over jax's); {os.cpu_count()} cores", flush=True)
    cases = []
    for preset in args.presets:
        for length in args.lengths:
            remat = length > 4096 if args.remat == "auto" else args.remat == "on"
            for kind in ("lwm", "torch"):
                cases.append({"kind": kind, "preset": preset, "length": length, "remat": remat,
                              "rows": max(1, args.tokens_per_step // length), "steps": args.steps,
                              "loss_chunk": args.loss_chunk})
    results: dict[int, list] = {i: [] for i in range(len(cases))}
    for r in range(args.rounds):
        for i, case in enumerate(cases):
            need = estimate(case)
            if need > available_bytes():
                results[i].append({"error": f"skipped: needs ~{need / GIB:.1f} GiB, {available_bytes() / GIB:.1f} "
                                            "available"})
                continue
            out = spawn(case, args.timeout)
            results[i].append(out)
            print(f"round {r + 1} {case['kind']:5} {case['preset']:5} {fmt(case['length']):>4}: "
                  + (out.get("error") or f"{case['rows'] * case['length'] * case['steps'] / out['seconds']:,.0f} "
                                         f"tok/s, others {out['others']:.0%}"), flush=True)
    print(f"\n{'preset':6} {'T':>4} {'rows':>4} {'remat':5} | {'lwm tok/s':>10} {'MFU':>6} | "
          f"{'torch tok/s':>11} {'MFU':>6} | {'lwm/torch':>9}")
    for i in range(0, len(cases), 2):
        case, row = cases[i], []
        for j in (i, i + 1):
            done = [o for o in results[j] if "error" not in o]
            if not done:
                row.append(None)
                continue
            rate = statistics.median(cases[j]["rows"] * case["length"] * cases[j]["steps"] / o["seconds"]
                                     for o in done)
            noisy = sum(o["others"] > args.max_others for o in done)
            row.append((rate, rate * flops_per_token(case["preset"], case["length"]) / peak["jax"], noisy))
        cells = [f"{'-':>10} {'-':>6}" if x is None else f"{x[0]:>10,.0f} {x[1]:>6.1%}" for x in row]
        ratio = f"{row[0][0] / row[1][0]:>8.2f}x" if None not in row else f"{'-':>9}"
        noisy = sum(x[2] for x in row if x)
        print(f"{case['preset']:6} {fmt(case['length']):>4} {case['rows']:>4} {str(case['remat']):5} | {cells[0]} | "
              f"{cells[1]:>18} | {ratio}" + (f"  ({noisy} run(s) on a busy machine)" if noisy else ""))
        for j in (i, i + 1):
            errors = {o["error"] for o in results[j] if "error" in o}
            if errors:
                print(f"    {cases[j]['kind']}: {'; '.join(sorted(errors))}")


def longest(args) -> None:
    devices = 1
    for n in args.mesh.split(","):
        devices *= int(n)
    base = {"kind": "lwm", "preset": args.longest_preset, "rows": 1, "steps": 1, "remat": True,
            "loss_chunk": args.loss_chunk, "mesh": args.mesh, "devices": devices, "analyse": True}
    tried: dict[int, dict] = {}

    def attempt(length: int) -> bool:
        out = spawn({**base, "length": length}, args.timeout)
        tried[length] = out
        fits = out.get("fits") is True
        what = (out.get("error") or (f"trains: one step {out['seconds']:.1f} s, peak RSS "
                                     f"{out['peak_rss'] / GIB:.1f} GiB, XLA {out['xla'] / GIB:.1f} GiB" if fits else
                                     f"does not fit: XLA needs {out['xla'] / GIB:.1f} GiB, "
                                     f"{available_bytes() / GIB:.1f} available"))
        print(f"{args.longest_preset} on mesh {args.mesh}, {fmt(length)} tokens: {what}", flush=True)
        return fits

    length, good, bad = args.start, None, None
    while length <= args.stop:
        if not attempt(length):
            bad = length
            break
        good, length = length, length * 2
    if good and bad and bad > good * 1.25:
        middle = (good + bad) // 2 // 1024 * 1024
        if attempt(middle):
            good = middle
    print(f"longest trained: {fmt(good) if good else 'none'} tokens ({args.longest_preset!r}, mesh {args.mesh}, remat, "
          f"loss chunk {args.loss_chunk})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smoke run: debug at 128 / 256 tokens, 2 steps")
    parser.add_argument("--presets", default="debug,200m")
    parser.add_argument("--lengths", default="2K,16K")
    parser.add_argument("--tokens-per-step", type=tokens, default=tokens("8K"))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--remat", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--loss-chunk", type=int, default=1024)
    parser.add_argument("--max-others", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--longest", action="store_true")
    parser.add_argument("--longest-preset", default="200m", choices=tuple(PRESETS))
    parser.add_argument("--mesh", default="1,1,1,8", help="--longest: the mesh (ring over sp)")
    parser.add_argument("--start", type=tokens, default=tokens("16K"), help="--longest: first length")
    parser.add_argument("--stop", type=tokens, default=tokens("1M"), help="--longest: last length tried")
    args = parser.parse_args()
    if args.child:
        case = json.loads(args.child)
        print(RESULT + json.dumps(CHILDREN[case["kind"]](case)), flush=True)
        return
    if args.quick:
        args.presets, args.lengths, args.steps, args.tokens_per_step = "debug", "128,256", 2, 512
        args.start, args.stop, args.longest_preset = 128, 512, "debug"
    args.presets = args.presets.split(",")
    args.lengths = [tokens(x) for x in args.lengths.split(",")]
    unknown = set(args.presets) - set(PRESETS)
    if unknown:
        parser.error(f"--presets: unknown {', '.join(sorted(unknown))} (known: {', '.join(PRESETS)})")
    longest(args) if args.longest else throughput(args)


if __name__ == "__main__":
    main()
