"""Long-context prefill and decode: lwm vs transformers' LlamaForCausalLM, same weights, one run.

    python bench/prefill.py --quick                         # smoke run: 'debug' preset, 1K/2K
    python bench/prefill.py --lengths 8K --repeats 3        # '200m', 8K: three rounds
    python bench/prefill.py --lengths 32K --skip-ring --repeats 1 --decode-context 0
    python bench/prefill.py --lengths 8K --chunk-size 512,2048 --scan-layers true,false --skip-ring
    python bench/prefill.py --breakdown 8K                  # where one prefill chunk spends its time
    python bench/prefill.py --longest                       # memory check of the longest prompt that fits

Cases, each run in a fresh subprocess (so its peak RSS is its own; the parent imports neither jax nor
torch), in rounds: every round runs every case once, so ours and transformers alternate and share
whatever else the machine is doing. Figures are min / median / max over the rounds.

- `hf`: transformers' LlamaForCausalLM, `attn_implementation="sdpa"` (torch's CPU flash attention, no
  [T, T] mask: `is_causal=True`), fp32, one forward over the prompt with `use_cache=True,
  logits_to_keep=1` - what its `generate` does first;
- `lwm`: `lwm_core.infer.Sampler(model, chunk_size=C).prefill(prompt, max_new_tokens=0)` on one
  device, blockwise attention: the prompt goes through the KV cache C tokens at a time (what
  `lwm generate` runs). max_new_tokens=0 sizes the cache to the prompt, as transformers' is;
  `generate(N)` allocates `bucket_length(T + N)` slots (up to 1.5x);
- `ring`: 8 simulated CPU devices (`--xla_force_host_platform_device_count=8`), mesh sp=8, ring
  attention with the zigzag layout, one jitted full forward (no KV cache) returning the last
  position's logits. The weights are replicated on all 8 devices (8 copies in host memory).

Decode (`--decode-context`, default 32K): `--decode-steps` greedy steps after a context whose KV
cache is filled with random keys/values (the cost of a step does not depend on their values; a real
32K prefill would take minutes per case). Ours: `Sampler.step`, the cache sized by `Sampler.plan`
(a bucket: 32K + steps -> 48K slots); transformers: one forward per step with a `DynamicCache`
holding the context, as `generate` does it.

Shared machine: every run records the share of the cores other processes kept busy while it was
timed; the tables count only runs where that stayed under `--max-others` (10%), since torch's spinning
OpenMP threads lose far more than XLA's when cores are shared (loaded runs showed lwm at 1.4x where
quiet ones show 0.9x). `--wait-quiet` waits for a quiet machine before each case, `--retry-noisy N`
runs a disturbed case again, `--from-json` prints the tables of saved runs again.

Peak RSS is the process's VmHWM during the timed part only (reset through /proc/self/clear_refs after
loading and warming up); "xla" is `compiled.memory_analysis()` of the jitted step (arguments + temp +
outputs - aliased). Before each case the bench estimates its memory and skips it with the reason when
it would not fit in the available RAM.

Threads: torch.set_num_threads(--threads, default: all cores); XLA's CPU client uses one intra-op
thread per core by default. Both sides run fp32 on the CPU with the same weights (the random
'200m' model written once as a Hugging Face folder, `--hf-dir`, reused across runs).

This file is the command line, the rounds and the tables; what each case's child process runs and
measures is in bench/prefill_cases.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prefill_cases import RESULT, VOCAB, child_main, cpu_counters

GIB = 1 << 30
HERE = Path(__file__).resolve()


# ------------------------------------------------------------------------------------ helpers
def tokens(text: str) -> int:
    """'8K' -> 8192, '1M' -> 1048576, '3000' -> 3000."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def fmt_tokens(n: int) -> str:
    for unit, size in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def available_bytes() -> int:
    match = re.search(r"MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    return int(match.group(1)) * 1024


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return re.search(r"Model name:\s+(.*)", out).group(1).strip()
    except Exception:  # noqa: BLE001 - informational only
        return "?"


def stats(values):
    values = sorted(values)
    return values[0], statistics.median(values), values[-1]


# ------------------------------------------------------------------------------------ estimates
PRESETS = {  # hidden, intermediate, layers, heads (lwm_core.config._PRESETS; no jax import here)
    "debug": (256, 256, 2, 2), "200m": (1024, 2048, 14, 8), "1b": (2048, 5504, 22, 16),
    "3b": (3200, 8640, 26, 32), "7b": (4096, 11008, 32, 32), "13b": (5120, 13824, 40, 40),
}
RUNTIME = 1.2 * GIB  # python + jax/torch + compiled code, measured ~1 GiB on this box


def shape(preset: str):
    d, f, layers, heads = PRESETS[preset]
    params = 2 * VOCAB * d + layers * (4 * d * d + 3 * d * f + 2 * d) + d
    return d, f, layers, heads, params


def kv_bytes(preset: str, slots: int) -> int:
    d, _, layers, _, _ = shape(preset)
    return 2 * layers * slots * d * 4


def bucket_length(needed: int, multiple: int = 1, minimum: int = 256) -> int:  # = lwm_core.cache.bucket_length
    size = max(minimum, 2)
    while True:
        for candidate in (size, size + size // 2):
            if candidate >= needed:
                return -(-candidate // multiple) * multiple
        size *= 2


def estimate(case: dict) -> int:
    """Rough peak bytes of a case (weights + KV cache + activations + runtime)."""
    preset, length = case["preset"], case["length"]
    d, f, layers, heads, params = shape(preset)
    weights = 4 * params
    if case["kind"] == "hf":
        # one cache copy, plus per layer q/k/v/attn/out [T, D] and the MLP's three [T, F]
        return weights + kv_bytes(preset, length) + length * (6 * d + 3 * f) * 4 + RUNTIME
    if case["kind"] == "lwm":
        chunk = case["chunk"]
        return weights + kv_bytes(preset, length) + chunk * (8 * d + 4 * f) * 4 + RUNTIME
    if case["kind"] == "ring":
        # weights replicated on every simulated device; activations of the whole sequence (measured
        # ~160 KiB per token for '200m': 7.9 GiB at 8K, 11.9 GiB at 32K)
        return case["devices"] * weights + length * (24 * d + 8 * f) * 4 + RUNTIME
    if case["kind"] == "hf-decode":
        return weights + kv_bytes(preset, length) + kv_bytes(preset, length) // layers + RUNTIME
    if case["kind"] == "lwm-decode":
        return weights + kv_bytes(preset, case["cache"]) + RUNTIME
    raise ValueError(case["kind"])


# ------------------------------------------------------------------------------------ parent side
def run_child(case: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(HERE), "--child", json.dumps(case)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:.0f} s")
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        return dict(error=f"exit {proc.returncode}: " + " | ".join(tail))
    result = json.loads(lines[-1][len(RESULT):])
    result["wall"] = wall
    return result


def label(case: dict) -> str:
    if case["kind"] == "hf":
        return "transformers sdpa"
    if case["kind"] == "ring":
        return f"lwm ring sp={case['devices']} zigzag" + ("" if case["scan_layers"] else " unscanned")
    if case["kind"] == "lwm":
        attn = f" a={case['attn'][0]}x{case['attn'][1]}" if case.get("attn") else ""
        return f"lwm blockwise c={case['chunk']}{attn}" + ("" if case["scan_layers"] else " unscanned")
    if case["kind"] == "hf-decode":
        return "transformers sdpa"
    if case["kind"] == "lwm-decode":
        return "lwm Sampler.step" + ("" if case["scan_layers"] else " unscanned")
    return case["kind"]


def pct(x) -> str:
    return "?" if x is None else f"{x:.0%}"


def gib(x) -> str:
    return "-" if x is None else f"{x / GIB:.2f}"


def wait_quiet(limit: float, threshold: float = 0.15, window: float = 3.0) -> None:
    """Wait (at most `limit` s) until other processes use under `threshold` of the cores over `window` s."""
    start = time.perf_counter()
    while True:
        busy0, _, t0 = cpu_counters()
        time.sleep(window)
        busy1, _, t1 = cpu_counters()
        share = (busy1 - busy0) / ((t1 - t0) * os.cpu_count())
        waited = time.perf_counter() - start
        if share < threshold or waited >= limit:
            if waited > window + 1:
                print(f"  (waited {waited:.0f} s for a quiet machine: others at {share:.0%})", flush=True)
            return


def run_cases(cases: list[dict], args, log: list) -> dict[int, list]:
    """Run every case `args.repeats` times, round-robin; -> case index -> results."""
    results: dict[int, list] = {i: [] for i in range(len(cases))}
    skipped: dict[int, str] = {}
    t0 = time.perf_counter()
    for rnd in range(args.repeats):
        for i, case in enumerate(cases):
            if i in skipped:
                continue
            need, avail = estimate(case), available_bytes()
            if need > args.memory_fraction * avail:
                skipped[i] = (f"estimated {need / GIB:.1f} GiB > {args.memory_fraction:.0%} of the "
                              f"{avail / GIB:.1f} GiB available")
            elif args.time_budget and (time.perf_counter() - t0) / 60 > args.time_budget:
                skipped[i] = f"time budget of {args.time_budget} min spent"
            if i in skipped:
                print(f"  skip {label(case)} @ {fmt_tokens(case['length'])}: {skipped[i]}", flush=True)
                results[i].append(dict(error="skipped: " + skipped[i]))
                continue
            if args.wait_quiet:
                wait_quiet(args.wait_quiet)
            load = os.getloadavg()[0]
            res = run_child(case, args.case_timeout)
            res["estimate"], res["load_before"] = need, load
            for _ in range(args.retry_noisy):
                if "error" in res or (res.get("others") or 0) <= args.max_others:
                    break
                if args.time_budget and (time.perf_counter() - t0) / 60 > args.time_budget:
                    break
                print(f"  ({label(case)} @ {fmt_tokens(case['length'])}: others kept {pct(res['others'])} of the cores "
                      f"busy, {sum(res['times']):.1f} s; again)", flush=True)
                log.append(dict(case=case, round=rnd, result=res))
                results[i].append(res)
                if args.wait_quiet:
                    wait_quiet(args.wait_quiet)
                res = run_child(case, args.case_timeout)
                res["estimate"], res["load_before"] = need, os.getloadavg()[0]
            results[i].append(res)
            log.append(dict(case=case, round=rnd, result=res))
            if "error" in res:
                print(f"  {label(case)} @ {fmt_tokens(case['length'])} round {rnd + 1}: {res['error']}", flush=True)
                skipped[i] = res["error"]
            else:
                extra = "".join(f", {k} {res[k]:.1f} s" for k in ("compile_s",) if res.get(k) is not None)
                times = ", ".join(f"{t:.2f}" if t >= 1 else f"{t:.3f}" for t in res["times"])
                print(f"  {label(case)} @ {fmt_tokens(case['length'])} round {rnd + 1}: "
                      f"{times} s{extra}, peak {gib(res['peak'])} GiB "
                      f"(loaded {gib(res['loaded'])}, est. {gib(need)}), token {res.get('token')}, "
                      f"process {res['wall']:.0f} s, others busy {pct(res.get('others'))} of the cores while timed "
                      f"(load avg before {load:.1f})", flush=True)
    return results


def summarize(cases, results, per_run_tokens, per_round=False, max_others=1.0):
    """Rates (tokens/s) min/median/max over every timed run, or (per_round) over the rounds, each
    round's rate being its tokens over its total time (decode: steps / time of all steps). Only runs
    during which other processes kept at most `max_others` of the cores busy count, when any did."""
    rows = []
    for i, case in enumerate(cases):
        ok = [r for r in results[i] if "error" not in r]
        if not ok:
            err = results[i][0]["error"] if results[i] else "not run"
            rows.append(dict(case=case, error=err))
            continue
        total = len(ok)
        clean = [r for r in ok if (r.get("others") or 0) <= max_others]
        ok = clean or ok  # runs that shared the cores with other processes only when there is nothing else
        if per_round:
            rates = [per_run_tokens(case) * len(r["times"]) / sum(r["times"]) for r in ok]
        else:
            rates = [per_run_tokens(case) / t for r in ok for t in r["times"]]
        rows.append(dict(case=case, rate=stats(rates), peak=max(r["peak"] for r in ok), loaded=ok[0]["loaded"],
                         xla=ok[0].get("xla"), slots=ok[0].get("cache_slots"),
                         n=f"{len(clean)}/{total}" if clean else f"*0/{total}",
                         tokens={r.get("token") for r in ok}))
    return rows


def rate_text(rate) -> str:
    lo, med, hi = rate
    digits = 1 if med >= 10 else 2
    return f"{med:9.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"


def print_table(title, rows, ref_kind):
    print(f"\n{title}")
    head = (f"{'case':<30} {'len':>5} {'ours tok/s [min-max]':>26} {'tf tok/s [min-max]':>26} {'ratio':>6} "
            f"{'best':>6} {'ours peak':>9} {'tf peak':>8} {'ours xla':>8} {'runs':>5}")
    print(head)
    print("-" * len(head))
    refs = {r["case"]["length"]: r for r in rows if r["case"]["kind"] == ref_kind}
    for row in rows:
        case = row["case"]
        if case["kind"] == ref_kind:
            continue
        length = fmt_tokens(case["length"])
        ref = refs.get(case["length"])
        ref_ok = ref is not None and "error" not in ref
        ref_text = rate_text(ref["rate"]) if ref_ok else ("-" if ref is None else ref["error"][:26])
        if "error" in row:
            print(f"{label(case):<30} {length:>5} {row['error'][:26]:>26} {ref_text:>26}")
            continue
        ratio = f"{row['rate'][1] / ref['rate'][1]:5.2f}x" if ref_ok else "-"
        best = f"{row['rate'][2] / ref['rate'][2]:5.2f}x" if ref_ok else "-"  # fastest vs fastest
        print(f"{label(case):<30} {length:>5} {rate_text(row['rate']):>26} {ref_text:>26} {ratio:>6} {best:>6} "
              f"{gib(row['peak']):>9} {gib(ref['peak']) if ref_ok else '-':>8} {gib(row.get('xla')):>8} {row['n']:>5}"
              f"{'' if not ref_ok else ' tf ' + ref['n']}")
    for length, ref in refs.items():  # a reference whose ours-rows were all skipped still shows
        ours = any(r["case"]["length"] == length and r["case"]["kind"] != ref_kind for r in rows)
        if not ours and "error" not in ref:
            print(f"{'(transformers only)':<30} {fmt_tokens(length):>5} {'-':>26} {rate_text(ref['rate']):>26}"
                  f" {'':>6} {'':>6} {'':>9} {gib(ref['peak']):>8}")


def report_prefill(cases, results, max_others) -> None:
    rows = summarize(cases, results, lambda c: c["length"], max_others=max_others)
    print_table("prefill tokens/s, median [min-max] of the rounds; ratio: median/median, best: fastest/fastest; "
                f"peak RSS (GiB) during the timed prefill; runs: clean/all (others busy <= {max_others:.0%}; only "
                "clean runs count, *: none was clean, all count)",
                rows, "hf")
    for row in rows:
        if "error" not in row and len(row["tokens"]) > 1:
            print(f"note: {label(row['case'])} @ {fmt_tokens(row['case']['length'])} gave different tokens "
                  f"across rounds: {row['tokens']}")
    by_len = {}
    for row in rows:
        if "error" not in row:
            by_len.setdefault(row["case"]["length"], {})[label(row["case"])] = row["tokens"]
    for length, toks in by_len.items():
        if len({frozenset(t) for t in toks.values()}) > 1:
            print(f"note: first generated token differs between cases at {fmt_tokens(length)}: {toks}")


def report_decode(cases, results, max_others) -> None:
    rows = summarize(cases, results, lambda c: 1, per_round=True, max_others=max_others)
    for context in sorted({c["length"] for c in cases}):
        sub = [r for r in rows if r["case"]["length"] == context]
        steps = sub[0]["case"]["steps"]
        print_table(f"decode tokens/s at a {fmt_tokens(context)}-token context ({steps} steps per round, median "
                    f"[min-max] of the rounds); peak RSS (GiB) while decoding; runs: clean/all (others busy <= "
                    f"{max_others:.0%})", sub, "hf-decode")
        for row in sub:
            if "error" not in row and row.get("slots"):
                print(f"  {label(row['case'])}: cache of {row['slots']} slots")


def report_saved(paths: list[str], max_others: float) -> None:
    """Tables again from the --json-out files of earlier runs (rounds of equal cases are pooled)."""
    cases, results = [], []
    for path in paths:
        for run in json.loads(Path(path).read_text())["runs"]:
            case = run["case"]
            if case not in cases:
                cases.append(case)
                results.append([])
            results[cases.index(case)].append(run["result"])
    for kinds, report in ((("hf", "lwm", "ring"), report_prefill), (("hf-decode", "lwm-decode"), report_decode)):
        picked = [i for i, c in enumerate(cases) if c["kind"] in kinds]
        picked.sort(key=lambda i: cases[i]["length"])
        if picked:
            report([cases[i] for i in picked], {j: results[i] for j, i in enumerate(picked)}, max_others)


def parse_bools(text: str) -> list[bool]:
    return [{"true": True, "false": False, "1": True, "0": False}[t.strip().lower()] for t in text.split(",")]


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child_main(sys.argv[2])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--preset", default="200m", choices=sorted(PRESETS))
    p.add_argument("--lengths", default="8K,32K,64K", help="prompt lengths (K = 1024)")
    p.add_argument("--repeats", type=int, default=3, help="rounds: every case runs once per round")
    p.add_argument("--inner", type=int, default=1, help="timed runs per case per round (after the warm-up)")
    p.add_argument("--chunk-size", default="512", help="Sampler chunk size(s), e.g. 512,2048")
    p.add_argument("--scan-layers", default="true", help="prefill (blockwise and ring): true, false or true,false")
    p.add_argument("--attn-chunks", default=None, help="attention query x key chunk sizes to try, e.g. "
                                                       "512x512,128x512 (default: the config's, 512x512)")
    p.add_argument("--decode-scan-layers", default="true,false")
    p.add_argument("--devices", type=int, default=8, help="simulated devices of the ring case (sp)")
    p.add_argument("--skip-ring", action="store_true")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--skip-blockwise", action="store_true")
    p.add_argument("--decode-context", default="32K", help="0 skips the decode table")
    p.add_argument("--decode-steps", type=int, default=16)
    p.add_argument("--decode-warm", type=int, default=2, help="untimed steps first (compile)")
    p.add_argument("--max-seq", default="1M", help="max_sequence_length of our model (a bucket, so the "
                                                   "Sampler's cache is bucketed as for LWM's 1M models)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--hf-dir", default=None, help="the weights as a HF folder (default /tmp/lwm_bench_PRESET_hf)")
    p.add_argument("--memory-fraction", type=float, default=0.9, help="skip a case estimated above this "
                                                                       "fraction of MemAvailable")
    p.add_argument("--case-timeout", type=float, default=3600)
    p.add_argument("--retry-noisy", type=int, default=0, help="run a case again (up to this many times) when "
                                                              "other processes kept more than --max-others busy")
    p.add_argument("--max-others", type=float, default=0.1, help="the table counts only runs during which other "
                   "processes kept at most this fraction of the cores busy (all runs when none did)")
    p.add_argument("--wait-quiet", type=float, default=120, help="before each case wait up to this many seconds "
                                                                 "for other processes to leave the cores (0: no wait)")
    p.add_argument("--time-budget", type=float, default=0, help="minutes; start no case after (0: none)")
    p.add_argument("--json-out", default=None, help="write every raw result here")
    p.add_argument("--from-json", default=None, metavar="FILES", help="only: print the tables of earlier --json-out "
                                                                      "files (comma-separated; rounds pooled)")
    p.add_argument("--quick", action="store_true", help="smoke run: debug preset, 1K,2K, decode at 2K, 2 rounds")
    p.add_argument("--breakdown", default=None, metavar="LEN", help="only: time the parts of the middle prefill "
                                                                    "chunk at this length (per --chunk-size)")
    p.add_argument("--longest", nargs="?", const="auto", default=None, metavar="LEN",
                   help="only: peak memory of our prefill at LEN (auto: the longest the estimate allows)")
    args = p.parse_args()
    if args.quick:
        args.preset, args.lengths, args.decode_context, args.decode_steps = "debug", "1K,2K", "2K", 8
        args.repeats = min(args.repeats, 2)
    if args.from_json:
        report_saved(args.from_json.split(","), args.max_others)
        return
    lengths = [tokens(x) for x in args.lengths.split(",") if x]
    chunks = [int(x) for x in args.chunk_size.split(",")]
    attns = [None]
    if args.attn_chunks:
        attns = [tuple(int(v) for v in a.split("x")) for a in args.attn_chunks.split(",")]
    max_seq = tokens(args.max_seq)
    hf_dir = args.hf_dir or f"{tempfile.gettempdir()}/lwm_bench_{args.preset}_hf"
    d, f, layers, heads, params = shape(args.preset)

    import importlib.metadata as md

    versions = {name: md.version(name) for name in ("jax", "flax", "torch", "transformers")}
    print(f"{cpu_model()}, {os.cpu_count()} cores, {available_bytes() / GIB:.1f} GiB available; "
          + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"preset {args.preset}: {params / 1e6:.0f}M params ({layers} layers, d={d}, ffn={f}, {heads} heads), fp32; "
          f"KV cache {kv_bytes(args.preset, 1024) / (1 << 20):.0f} MiB per 1K tokens; torch threads {args.threads}, "
          f"XLA CPU default (one intra-op thread per core); weights: {hf_dir}", flush=True)

    if not (Path(hf_dir) / "config.json").is_file():
        print(f"writing random {args.preset} weights to {hf_dir} ...", flush=True)
        res = run_child(dict(kind="setup", preset=args.preset, hf_dir=hf_dir, max_seq=max_seq), args.case_timeout)
        if "error" in res:
            sys.exit(f"setup failed: {res['error']}")

    base = dict(preset=args.preset, hf_dir=hf_dir, threads=args.threads, inner=args.inner, max_seq=max_seq)
    log: list = []

    if args.breakdown:
        length = tokens(args.breakdown)
        for scan, chunk, attn in ((s, c, a) for s in parse_bools(args.scan_layers) for c in chunks for a in attns):
            case = dict(base, kind="breakdown", length=length, chunk=chunk, scan_layers=scan, attn=attn,
                        inner=max(args.inner, 3))
            res = run_child(case, args.case_timeout)
            if "error" in res:
                print(f"chunk {chunk}: {res['error']}")
                continue
            per = res["per_layer"]
            total = sum(per.values())
            print(f"\nmiddle chunk of a {fmt_tokens(length)} prefill, chunk {chunk}, scan_layers={scan}"
                  f"{'' if attn is None else f', attention chunks {attn[0]}x{attn[1]}'}: whole "
                  f"step {res['step'] * 1e3:.0f} ms = {chunk / res['step']:.0f} tok/s (~ the whole prefill's); "
                  f"one layer's parts "
                  f"(x{res['layers']} = {total * res['layers'] * 1e3:.0f} ms):")
            for name, t in per.items():
                flops = res["flops"].get(name)
                gf = f"  {flops / 1e9:6.2f} GFLOP, {flops / t / 1e9:5.0f} GFLOP/s" if flops else ""
                print(f"  {name:<18} {t * 1e3:8.1f} ms {t / total:6.1%}{gf}")
            ref = res["torch"]
            print(f"  torch, per layer: SDPA over the whole causal {fmt_tokens(length)} "
                  f"{ref['sdpa GFLOP/s']:.0f} GFLOP/s ({ref['sdpa (whole prompt) per chunk'] * 1e3:.1f} ms per "
                  f"{chunk} tokens), MLP of {chunk} tokens {ref['mlp'] * 1e3:.1f} ms")
        return

    if args.longest:
        chunk = chunks[0]
        avail = available_bytes()
        if args.longest == "auto":
            per_token = kv_bytes(args.preset, 1)
            fixed = estimate(dict(base, kind="lwm", length=0, chunk=chunk))
            length = int((args.memory_fraction * avail - fixed) // per_token) // chunk * chunk
        else:
            length = tokens(args.longest)
        case = dict(base, kind="longest", length=length, chunk=chunk, scan_layers=True, max_seq=max(max_seq, length))
        print(f"longest prompt check: {length} tokens ({length / 1024:.1f}K), chunk {chunk}, "
              f"estimate {estimate(dict(case, kind='lwm')) / GIB:.1f} GiB of {avail / GIB:.1f} GiB available",
              flush=True)
        res = run_child(case, args.case_timeout)
        if "error" in res:
            print(f"failed: {res['error']}")
        else:
            print(f"ok: cache {gib(res['cache_bytes'])} GiB, peak RSS {gib(res['peak'])} GiB (whole process "
                  f"{gib(res['ru_maxrss'])}), the last chunk took {res['times'][0]:.1f} s "
                  f"({chunk / res['times'][0]:.0f} tok/s at that depth, compile included)")
        return

    # ---------------------------------------------------------------- prefill
    cases = []
    for length in lengths:
        if not args.skip_hf:
            cases.append(dict(base, kind="hf", length=length, scan_layers=True))
        if not args.skip_blockwise:
            for scan in parse_bools(args.scan_layers):
                for chunk in chunks:
                    for attn in attns:
                        cases.append(dict(base, kind="lwm", length=length, chunk=chunk, scan_layers=scan, attn=attn))
        if not args.skip_ring:
            for scan in parse_bools(args.scan_layers):
                cases.append(dict(base, kind="ring", length=length, devices=args.devices, scan_layers=scan))
    if cases:
        print(f"\nprefill: {len(cases)} cases x {args.repeats} rounds", flush=True)
        results = run_cases(cases, args, log)
        report_prefill(cases, results, args.max_others)

    # ---------------------------------------------------------------- decode
    context = tokens(args.decode_context)
    if context:
        dcases = []
        if not args.skip_hf:
            dcases.append(dict(base, kind="hf-decode", length=context, steps=args.decode_steps,
                               warm=args.decode_warm, scan_layers=True))
        for scan in parse_bools(args.decode_scan_layers):
            cache = bucket_length(-(-context // chunks[0]) * chunks[0] + args.decode_warm + args.decode_steps)
            cache = cache if cache <= max_seq else context + args.decode_warm + args.decode_steps
            dcases.append(dict(base, kind="lwm-decode", length=context, steps=args.decode_steps, warm=args.decode_warm,
                               chunk=chunks[0], scan_layers=scan, cache=cache))
        print(f"\ndecode at a {fmt_tokens(context)} context: {len(dcases)} cases x {args.repeats} rounds", flush=True)
        results = run_cases(dcases, args, log)
        report_decode(dcases, results, args.max_others)

    if args.json_out:
        Path(args.json_out).write_text(json.dumps(dict(args=vars(args), versions=versions, cpu=cpu_model(),
                                                       runs=log), indent=1))


if __name__ == "__main__":
    main()
