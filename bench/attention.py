"""Attention bench: blockwise / ring attention against a matmul and LWM's own `ringattention==0.1.2`.

Run on the CPU, fp32, everything side by side in one process (peak-memory cases in fresh processes):

    python bench/attention.py flops   [--seq 16384]          # causal forward FLOP rate vs jnp.matmul
    python bench/attention.py memory  [--seqs 4096,...]      # peak RSS of forward+backward, per impl
    python bench/attention.py ring    [--seq 16384]          # ring on 8 devices vs blockwise on 1
    python bench/attention.py longest [--seqs 8192,...]      # longest debug-model fwd+bwd, ring on 8
                                                             # (LWM_BENCH_LIMIT_GB: cap, default 10)
    python bench/attention.py all

The peer columns need `pip install ringattention==0.1.2 einops`; without it they are skipped with a
message. Timings are the minimum over repeats (the machine is shared); ratios are measured in the run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
import types

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from lwm_core.attention import blockwise_attention, plain_attention, ring_attention  # noqa: E402
from lwm_core.attention.ring import chunk_pair_counts  # noqa: E402
from lwm_core.mesh import make_mesh, shard_batch  # noqa: E402

HEADS, HEAD_DIM = 8, 64
Q_CHUNK, K_CHUNK = 1024, 512
MEMORY_LIMIT = 6e9  # never start a case XLA says needs more: peak RSS runs ~2x that, and the
# 24 GiB machine is shared (plain at 8K needed 8.7 GB by XLA and 19 GB of RSS)
LONGEST_LIMIT = float(os.environ.get("LWM_BENCH_LIMIT_GB", 10)) * 1e9  # the whole-model case: XLA's
# estimate over all 8 devices (peak RSS ran ~0.7 GB above it); raise it on a machine of your own


def load_peer():
    """LWM's `ringattention.ring_attention`, or None (with a message) when it is not installed."""
    try:
        import jax.extend.backend

        jax.lib.xla_bridge = types.SimpleNamespace(get_backend=jax.extend.backend.get_backend)
        from ringattention import ring_attention as peer
    except ImportError as err:
        print(f"[peer skipped] ringattention==0.1.2 is not installed ({err}); "
              "`pip install ringattention==0.1.2 einops` adds the peer columns")
        return None
    return peer


def peer_attention(peer, mesh, q_chunk=Q_CHUNK, k_chunk=K_CHUNK):
    """The peer's causal ring attention as LWM calls it: shard_map over `sp`, [B, T, H, D] in and out."""
    kwargs = dict(causal_block_size=1, deterministic=True, dropout_rng=None, attn_pdrop=0.0,
                  query_chunk_size=q_chunk, key_chunk_size=k_chunk, dtype=jnp.float32,
                  policy=jax.checkpoint_policies.nothing_saveable, precision=None, prevent_cse=True)
    fn = functools.partial(peer, attn_bias=None, segment_ids=None, cache_idx=None, axis_name="sp",
                           float32_logits=True, blockwise_kwargs=kwargs)
    spec = P(None, "sp", None, None)
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec, check_vma=False)


def interleaved(cases, repeats=3):
    """{name: min wall time} for cases {name: (fn, args)}, run round-robin after one warm-up each, so
    that load from other users of the machine hits every case alike."""
    for fn, args in cases.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (fn, args) in cases.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def qkv(seq, batch=1, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return [jax.random.normal(k, (batch, seq, HEADS, HEAD_DIM), jnp.float32) for k in keys]


def fwd_bwd(attn):
    """jit of forward + backward (gradients of q, k, v) of a scalar loss of `attn`."""
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v) ** 2), argnums=(0, 1, 2)))


def one_device_mesh():
    return make_mesh("1,1,1,1", devices=jax.devices()[:1])


def bench_flops(seq):
    peer = load_peer()
    q, k, v = qkv(seq)
    ours = functools.partial(blockwise_attention, causal=True, query_chunk_size=Q_CHUNK, key_chunk_size=K_CHUNK)
    n = 4096
    a, b = (jax.random.normal(jax.random.PRNGKey(i), (n, n), jnp.float32) for i in (7, 8))
    matmul = jax.jit(jnp.matmul)
    flops = 4 * seq * seq * HEADS * HEAD_DIM / 2  # QK^T and PV over the causal half
    print(f"causal forward, T={seq}, {HEADS} heads x {HEAD_DIM}, batch 1, fp32, chunks q={Q_CHUNK} k={K_CHUNK}; "
          f"attention FLOPs counted = 4*T^2*H*D/2 = {flops / 1e9:.0f} GFLOP")
    rows = [("blockwise (lwm)", jax.jit(ours), fwd_bwd(ours))]
    if peer is not None:
        mesh = one_device_mesh()
        theirs = peer_attention(peer, mesh)
        rows.append(("ringattention 0.1.2", jax.jit(theirs), fwd_bwd(theirs)))
    cases = {"matmul": (matmul, (a, b))}
    for name, fwd, both in rows:
        cases[name + " fwd"] = (fwd, (q, k, v))
        cases[name + " fwd+bwd"] = (both, (q, k, v))
    times = interleaved(cases, repeats=3)
    mm_rate = 2 * n**3 / times["matmul"]
    print(f"  jnp.matmul {n}x{n}x{n}: {times['matmul']:.3f} s, {mm_rate / 1e9:.1f} GFLOP/s")
    for name, _, _ in rows:
        t_fwd, t_both = times[name + " fwd"], times[name + " fwd+bwd"]
        rate = flops / t_fwd
        print(f"  {name:20s} forward {t_fwd:6.2f} s  {rate / 1e9:6.1f} GFLOP/s = {rate / mm_rate:.2f} of matmul"
              f"   forward+backward {t_both:6.2f} s")
    print("  (min over 3 round-robin repeats of every case)")


def memory_case(impl, seq):
    """Run in a fresh process: forward+backward of one impl at one length; print JSON with peak RSS."""
    q, k, v = qkv(seq)
    if impl == "plain":
        attn = functools.partial(plain_attention, causal=True)
    elif impl == "blockwise":
        attn = functools.partial(blockwise_attention, causal=True, query_chunk_size=Q_CHUNK,
                                 key_chunk_size=K_CHUNK)
    else:
        peer = load_peer()
        if peer is None:
            print(json.dumps({"impl": impl, "seq": seq, "skipped": "not installed"}))
            return
        attn = peer_attention(peer, one_device_mesh())
    compiled = fwd_bwd(attn).lower(q, k, v).compile()
    stats = compiled.memory_analysis()
    need = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
    result = {"impl": impl, "seq": seq, "xla_bytes": need}
    if need > MEMORY_LIMIT:
        result["skipped"] = f"XLA needs {need / 1e9:.1f} GB"
    else:
        start = time.perf_counter()
        jax.block_until_ready(compiled(q, k, v))
        result["seconds"] = time.perf_counter() - start
        result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result))


def fresh_process(*args):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:100]}
    return json.loads(lines[-1])


def bench_memory(seqs):
    print("peak RSS of causal forward+backward (fresh process per case; XLA's own estimate in brackets)")
    print(f"  {'T':>6s}  " + "  ".join(f"{impl:>28s}" for impl in ("plain", "blockwise", "ringattention")))
    for seq in seqs:
        cells = []
        for impl in ("plain", "blockwise", "peer"):
            r = fresh_process("_memory", impl, str(seq))
            if "peak_rss" in r:
                cells.append(f"{r['peak_rss'] / 1e9:6.2f} GB [{r['xla_bytes'] / 1e9:6.2f}] {r['seconds']:5.1f}s")
            else:
                cells.append(r.get("skipped", r.get("error", "?")))
        print(f"  {seq:6d}  " + "  ".join(f"{c:>28s}" for c in cells))


def bench_ring(seq):
    peer = load_peer()
    q, k, v = qkv(seq)
    one, eight = one_device_mesh(), make_mesh("1,1,1,8")
    chunks = dict(query_chunk_size=Q_CHUNK, key_chunk_size=K_CHUNK)
    print(f"causal, T={seq}, {HEADS} heads x {HEAD_DIM}, fp32, chunks q={chunks['query_chunk_size']} "
          f"k={chunks['key_chunk_size']}; ring over 8 simulated devices vs blockwise on 1 (both on this CPU)")
    rows = [("lwm blockwise, 1 device", functools.partial(ring_attention, mesh=one, **chunks))]
    for lay in ("contiguous", "striped", "zigzag"):
        rows.append((f"lwm ring {lay}, 8 dev", functools.partial(ring_attention, mesh=eight, layout=lay, **chunks)))
    if peer is not None:
        rows.append(("ringattention, 1 device", peer_attention(peer, one, *chunks.values())))
        rows.append(("ringattention, 8 dev", peer_attention(peer, eight, *chunks.values())))
    cases = {}
    for name, attn in rows:
        cases[name + " fwd"] = (jax.jit(attn), (q, k, v))
        cases[name + " fwd+bwd"] = (fwd_bwd(attn), (q, k, v))
    measured = interleaved(cases, repeats=2)
    times = {name: (measured[name + " fwd"], measured[name + " fwd+bwd"]) for name, _ in rows}
    for name, (t_f, t_b) in times.items():
        base = times["ringattention, 1 device" if name.startswith("ringattention") else "lwm blockwise, 1 device"]
        print(f"  {name:28s} forward {t_f:6.2f} s ({t_f / base[0]:.2f}x)   forward+backward {t_b:6.2f} s "
              f"({t_b / base[1]:.2f}x)")
    print("per-device unmasked (query chunk, key chunk) pairs, ring over 8, T=" + str(seq))
    for lay in ("contiguous", "striped", "zigzag"):
        c = chunk_pair_counts(seq, 8, lay, **chunks)
        print(f"  {lay:10s} {c.tolist()}  max/mean {c.max() / c.mean():.2f}")


def longest_case(seq):
    """Fresh process: debug-preset model, causal LM loss forward+backward, ring over 8 devices."""
    from flax import nnx

    from lwm_core.config import ModelConfig
    from lwm_core.model import LWMModel

    config = ModelConfig.from_name("debug", max_sequence_length=seq, attention_impl="ring",
                                   sequence_layout="zigzag", scan_query_chunk_size=1024, scan_key_chunk_size=512)
    mesh = make_mesh("1,1,1,8")
    graphdef, state = nnx.split(LWMModel(config, rngs=nnx.Rngs(0)))
    # the whole model runs sequence-sharded: ids split over sp, GSPMD carries it through the layers
    ids = shard_batch(jax.random.randint(jax.random.PRNGKey(0), (1, seq), 3, config.vocab_size), mesh)

    def loss(state, ids):
        logits, _ = nnx.merge(graphdef, state)(ids)  # [1, T, V]: the vocabulary dominates memory here
        logits = logits[:, :-1]
        target = jnp.take_along_axis(logits, ids[:, 1:, None], axis=-1)[..., 0]
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - target)

    with jax.set_mesh(mesh):
        compiled = jax.jit(jax.value_and_grad(loss)).lower(state, ids).compile()
        stats = compiled.memory_analysis()  # per device
        need = (stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes) * 8
        result = {"seq": seq, "xla_bytes": need}
        if need > LONGEST_LIMIT:
            result["skipped"] = f"XLA needs {need / 1e9:.1f} GB"
        else:
            start = time.perf_counter()
            value, _ = jax.block_until_ready(compiled(state, ids))
            result.update(seconds=time.perf_counter() - start, loss=float(value),
                          peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps(result))


def bench_longest(seqs):
    print("debug preset (vocab 32000, 2 layers, hidden 256), causal LM loss forward+backward, ring zigzag "
          f"over 8 simulated devices, fresh process per length; cases XLA sizes above {LONGEST_LIMIT / 1e9:.0f} GB "
          "are not started (shared machine)")
    for seq in seqs:
        r = fresh_process("_longest", str(seq))
        if "peak_rss" in r:
            print(f"  T={seq:7d}: {r['seconds']:7.1f} s, peak RSS {r['peak_rss'] / 1e9:.2f} GB "
                  f"(XLA {r['xla_bytes'] / 1e9:.2f} GB), loss {r['loss']:.3f}")
        else:
            print(f"  T={seq:7d}: not run: {r.get('skipped', r.get('error'))}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["flops", "memory", "ring", "longest", "all", "_memory", "_longest"])
    parser.add_argument("args", nargs="*")
    parser.add_argument("--seq", type=int, default=16384)
    parser.add_argument("--seqs", default="")
    opts = parser.parse_args()

    def seqs(default):
        return [int(s) for s in (opts.seqs or default).split(",")]

    if opts.what == "_memory":
        return memory_case(opts.args[0], int(opts.args[1]))
    if opts.what == "_longest":
        return longest_case(int(opts.args[0]))
    if opts.what in ("flops", "all"):
        bench_flops(opts.seq)
    if opts.what in ("memory", "all"):
        bench_memory(seqs("4096,8192,16384,32768"))
    if opts.what in ("ring", "all"):
        bench_ring(opts.seq)
    if opts.what in ("longest", "all"):
        bench_longest(seqs("8192,16384,24576,32768"))


if __name__ == "__main__":
    main()
