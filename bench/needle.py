"""Time per needle cell: one LWM single-needle trial (built-in haystack, depth 50, greedy), split into
prefill and decode, for random 'debug' and '200m' models on 8 simulated CPU devices (the KV cache and
attention split over sp = 8, as `lwm needle --mesh 1,1,1,8` runs), and transformers' prefill (sdpa) of
the same prompt length at the lengths it can hold, side by side.

    python bench/needle.py --quick                               # smoke run: 'debug' at 1K and 2K
    python bench/needle.py                                       # debug and 200m at 8K, 32K, 64K, 128K
    python bench/needle.py --presets 200m --lengths 8K --repeats 2
    python bench/needle.py --find-limit --time-limit 600         # the longest cell done in 10 minutes

Every case runs in a fresh subprocess (its compile included in the cold figure; `--repeats 2` adds a warm
run of the same cell in that process). The transformers case is bench/prefill.py's `hf` case (fp32,
sdpa, one forward with logits_to_keep=1) on the same random weights, skipped when it would not fit in
memory. `--find-limit` doubles the length past the last one measured until a cell does not finish
within `--time-limit` seconds, per preset. Ratios are printed side by side from the same process run;
rerun on a quiet machine for figures worth quoting (bench/prefill.py explains why shared cores skew
torch more than XLA).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
import prefill as bp  # noqa: E402  (bench/prefill.py: subprocess, memory and hf helpers)
import prefill_cases as bc  # noqa: E402  (bench/prefill_cases.py: what its child processes run)

RESULT = "RESULT "
TOKENIZER = HERE.parent.parent / "tests" / "data" / "tokenizer" / "tokenizer.model"


# ------------------------------------------------------------------------------------ child side
def run_cell(case: dict) -> dict:
    """One needle cell through lwm_core.evals.run_needle; timings from its records."""
    bc.child_jax(case["devices"])
    import jax

    from lwm_core import ModelConfig, Sampler, load_model, make_mesh
    from lwm_core.evals import NeedleSettings, load_haystack, run_needle
    from lwm_core.text import load_tokenizer

    mesh = make_mesh(case["mesh"], jax.devices()[:case["devices"]])
    tok = load_tokenizer(case["tokenizer"])
    start = time.perf_counter()
    # the text vocabulary is the tokenizer's (the fixture has 512 pieces); prefill computes logits of the
    # last position only, so this does not change the prefill time compared with transformers' 32000
    config = ModelConfig.from_name(case["preset"], vocab_size=tok.vocab_size,
                                   max_sequence_length=max(case["length"], 2048))
    model = load_model(f"random:{case['preset']}", config, mesh=mesh)
    loaded = time.perf_counter() - start
    settings = NeedleSettings(lengths=(case["length"],), depths=(50.0,), batch_size=1,
                              max_new_tokens=case["new_tokens"])
    hay = load_haystack(tok, None, case["length"])
    sampler = Sampler(model, chunk_size=case["chunk"])
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(case["repeats"]):
            start = time.perf_counter()
            (record,) = run_needle(sampler, tok, hay, settings, Path(tmp) / f"r{i}.json")
            runs.append(dict(prefill=record["prefill_s"], decode=record["decode_s"],
                             total=time.perf_counter() - start, tokens=record["context_tokens"]))
    return dict(load=loaded, runs=runs, traces=dict(sampler.traces))


def child_main(spec: str) -> None:
    case = json.loads(spec)
    result = run_cell(case) if case["kind"] == "cell" else bc.CHILDREN[case["kind"]](case)
    print(RESULT + json.dumps(result), flush=True)


def run_child(case: dict, timeout: float) -> dict:
    import subprocess

    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(HERE), "--child", json.dumps(case)], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:.0f} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-4:]
        return dict(error=f"exit {proc.returncode}: " + " | ".join(tail))
    result = json.loads(lines[-1][len(RESULT):])
    result["wall"] = time.perf_counter() - start
    return result


# ------------------------------------------------------------------------------------ parent side
def cell_case(args, preset: str, length: int) -> dict:
    return dict(kind="cell", preset=preset, length=length, devices=args.devices, mesh=f"1,1,1,{args.devices}",
                chunk=args.chunk_size, new_tokens=args.new_tokens, repeats=args.repeats, tokenizer=str(args.tokenizer))


def hf_case(args, preset: str, length: int, hf_dir: str) -> dict:
    # the prompt a needle cell prefills: the length less LWM's buffer of 200
    return dict(kind="hf", preset=preset, length=length - 200, hf_dir=hf_dir, threads=os.cpu_count(), inner=1)


def fmt(x) -> str:
    return "-" if x is None else f"{x:,.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="debug,200m")
    p.add_argument("--lengths", default="8K,32K,64K,128K", help="cell context lengths (K = 1024)")
    p.add_argument("--devices", type=int, default=8, help="simulated CPU devices, all on sp")
    p.add_argument("--chunk-size", type=int, default=2048)
    p.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per answer")
    p.add_argument("--repeats", type=int, default=1, help="runs of the cell per process (the first compiles)")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds a cell may take")
    p.add_argument("--find-limit", action="store_true", help="double the length until a cell exceeds --time-limit")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke run: debug at 1K and 2K, no transformers")
    p.add_argument("--tokenizer", type=Path, default=TOKENIZER, help="any LLaMA-style tokenizer.model")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child_main(args.child)
    if args.quick:
        args.presets, args.lengths, args.skip_hf = "debug", "1K,2K", True
    presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    lengths = [bp.tokens(s) for s in args.lengths.split(",") if s.strip()]
    print(f"needle cells on {args.devices} simulated devices (sp={args.devices}), chunk {args.chunk_size}, "
          f"{args.new_tokens} new tokens; CPU: {bp.cpu_model()}, {os.cpu_count()} cores", flush=True)
    rows, out = [], []
    for preset in presets:
        hf_dir = None
        for length in lengths:
            cell = run_child(cell_case(args, preset, length), args.time_limit)
            hf = None
            if not args.skip_hf:
                if hf_dir is None:
                    hf_dir = tempfile.mkdtemp(prefix=f"needle-hf-{preset}-")
                    bp.run_child(dict(kind="setup", preset=preset, hf_dir=hf_dir, max_seq=max(lengths)), 1800)
                case = hf_case(args, preset, length, hf_dir)
                if bp.estimate(case) < bp.available_bytes():
                    hf = bp.run_child(case, args.time_limit)
                else:
                    hf = dict(error="would not fit in memory")
            out.append(dict(preset=preset, length=length, cell=cell, hf=hf))
            runs = cell.get("runs") or [{}]
            cold, warm = runs[0], runs[-1] if len(runs) > 1 else {}
            hf_s = min(hf["times"]) if hf and "times" in hf else None
            ratio = f"{warm.get('prefill', cold.get('prefill', 0)) / hf_s:.2f}x" if hf_s and "prefill" in cold else "-"
            rows.append((preset, bp.fmt_tokens(length), fmt(cold.get("prefill")), fmt(cold.get("decode")),
                         fmt(warm.get("prefill")), fmt(warm.get("decode")), fmt(hf_s), ratio,
                         cell.get("error", "") or (hf or {}).get("error", "")))
            print("  ".join(str(c) for c in rows[-1]), flush=True)
        if hf_dir is not None:
            shutil.rmtree(hf_dir, ignore_errors=True)
        if args.find_limit:
            length, best = lengths[-1], None
            while True:
                result = run_child(cell_case(args, preset, length), args.time_limit)
                if "error" in result:
                    break
                best, length = length, length * 2
            out.append(dict(preset=preset, longest_within_limit=best, time_limit=args.time_limit))
            print(f"{preset}: longest cell finished within {args.time_limit:.0f} s: "
                  f"{bp.fmt_tokens(best) if best else 'none of those tried'}", flush=True)
    print("\npreset  length  prefill_s  decode_s  warm_prefill_s  warm_decode_s  hf_prefill_s  lwm/hf  note")
    for row in rows:
        print("  ".join(str(c) for c in row))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
