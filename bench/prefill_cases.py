"""The cases of bench/prefill.py: what each child process runs and measures.

`bench/prefill.py --child JSON` calls `child_main`, which runs the case of that kind (`CHILDREN`) and prints
its result as one `RESULT {...}` line: `hf` and `hf-decode` (transformers), `lwm` (chunked prefill through
the Sampler), `ring`, `lwm-decode`, `breakdown` (`--breakdown`: the parts of one prefill chunk, torch's
beside them), `longest` (`--longest`), and `setup` (writes the random weights as a Hugging Face folder).
The prefill, decode and `longest` cases call `reset_hwm` after loading and warming up, so their peak RSS
is the timed part's; `child_main` adds the share of the cores other processes kept busy since then
(`others_share`) and the whole process's peak (`ru_maxrss`).

jax, torch and lwm_core are imported inside the cases only, so the parent (bench/prefill.py: command
line, rounds, tables) imports this module without them.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
import time
from pathlib import Path

RESULT = "RESULT "  # a child's result: the stdout line that starts with this, then JSON
VOCAB = 32000  # of every preset; the prompts are random ids below it


# ------------------------------------------------------------------------------------ measurement
def hwm_bytes() -> int:
    """Peak resident set size of this process since start or the last `reset_hwm`."""
    match = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(match.group(1)) * 1024


def rss_bytes() -> int:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(match.group(1)) * 1024


def reset_hwm() -> None:
    """Start of the timed part: reset the peak RSS and note the CPU counters (see `others_share`)."""
    Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := VmRSS
    _MARK[:] = cpu_counters()


_MARK: list = []


def cpu_counters():
    """(busy seconds of the whole machine, CPU seconds of this process, wall time)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait
    own = os.times()
    return busy, own.user + own.system, time.perf_counter()


def others_share() -> float | None:
    """Fraction of the machine's cores that other processes kept busy since `reset_hwm`: 0 on a quiet
    machine; a run that shared its cores is slower (torch's spinning OpenMP threads suffer most)."""
    if not _MARK:
        return None
    busy, own, wall = (b - a for a, b in zip(_MARK, cpu_counters(), strict=True))
    return max(0.0, (busy - own) / (wall * os.cpu_count()))



# ------------------------------------------------------------------------------------ child side
def child_jax(devices: int):
    if devices > 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={devices}").strip()
    import jax

    return jax


def xla_bytes(compiled) -> int | None:
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def prompt_ids(length: int, seed: int = 0):
    import numpy as np

    return np.random.RandomState(seed).randint(3, VOCAB, (length,)).astype(np.int32)


def run_hf(case: dict) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(case["threads"])
    hf = LlamaForCausalLM.from_pretrained(case["hf_dir"], dtype=torch.float32, attn_implementation="sdpa").eval()
    ids = torch.from_numpy(prompt_ids(case["length"]).astype("int64"))[None]
    with torch.inference_mode():
        hf(ids[:, :min(512, ids.shape[1])], use_cache=True, logits_to_keep=1)  # warm up
        loaded = rss_bytes()
        reset_hwm()
        times, token = [], None
        for _ in range(case["inner"]):
            start = time.perf_counter()
            out = hf(ids, use_cache=True, logits_to_keep=1)
            token = int(out.logits[0, -1].argmax())
            times.append(time.perf_counter() - start)
            del out
    return dict(times=times, peak=hwm_bytes(), loaded=loaded, token=token, threads=torch.get_num_threads())


def load_lwm(case: dict, jax, mesh=None, **options):
    from lwm_core import load_model

    if case.get("attn"):  # attention chunk sizes (run options of the config)
        options.update(scan_query_chunk_size=case["attn"][0], scan_key_chunk_size=case["attn"][1])
    return load_model(case["hf_dir"], mesh=mesh, max_sequence_length=case["max_seq"],
                      scan_layers=case["scan_layers"], **options)


def run_lwm(case: dict) -> dict:
    jax = child_jax(1)
    from lwm_core.infer import Sampler

    model = load_lwm(case, jax, attention_impl="blockwise")
    sampler = Sampler(model, chunk_size=case["chunk"])
    prompt = prompt_ids(case["length"])
    padded, chunk, cache_len = sampler.plan(len(prompt), 0)
    # warm up (compile) with the very shapes of the timed run: one chunk into a cache of cache_len slots
    start = time.perf_counter()
    token, cache, _, _ = sampler.prefill([prompt[:chunk]], max_new_tokens=cache_len - chunk)
    jax.block_until_ready(token)
    compile_s = time.perf_counter() - start
    assert cache.max_length == cache_len, (cache.max_length, cache_len)
    del cache
    compiled_xla = None
    try:  # XLA's estimate of the chunk step (private: the Sampler keeps its jitted functions)
        (fn,) = [f for k, f in sampler._jitted.items() if k[0] == "prefill"]
        import jax.numpy as jnp

        from lwm_core.cache import init_cache

        spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # noqa: E731
        empty = jax.eval_shape(lambda: init_cache(model.config, 1, cache_len))
        ids = jax.ShapeDtypeStruct((1, chunk), jnp.int32)
        mask = jax.ShapeDtypeStruct((1, chunk), jnp.bool_)
        compiled_xla = xla_bytes(fn.lower(sampler.state, ((ids, mask, mask),), jax.tree.map(spec, empty),
                                          jax.random.PRNGKey(0), jnp.int32(-1)).compile())
    except Exception as exc:  # noqa: BLE001
        print(f"(no XLA memory analysis: {type(exc).__name__}: {exc})", file=sys.stderr)
    compilations = sampler.compilations
    loaded = rss_bytes()
    reset_hwm()
    times = []
    for _ in range(case["inner"]):
        start = time.perf_counter()
        token, cache, _, _ = sampler.prefill([prompt], max_new_tokens=0)
        token = int(jax.block_until_ready(token)[0])
        times.append(time.perf_counter() - start)
        assert cache.max_length == cache_len
        del cache
    recompiled = sampler.compilations - compilations
    return dict(times=times, peak=hwm_bytes(), loaded=loaded, token=token, compile_s=compile_s, xla=compiled_xla,
                cache_slots=cache_len, chunk=chunk, recompiled=recompiled, devices=len(jax.devices()))


def run_ring(case: dict) -> dict:
    jax = child_jax(case["devices"])
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from lwm_core import make_mesh
    from lwm_core.model import default_position_ids

    mesh = make_mesh(f"1,1,1,{case['devices']}")
    with jax.set_mesh(mesh):
        model = load_lwm(case, jax, mesh=mesh, attention_impl="ring", sequence_layout="zigzag")
        graphdef, state = nnx.split(model)

        def last_logits(state, ids):
            m = nnx.merge(graphdef, state)
            b, t = ids.shape
            hidden = m._hidden(ids, None, default_position_ids(b, t), None, None)  # [B, T, D], T over sp
            return m._heads(hidden[:, -1:])[0][:, 0]  # the head on the last position only

        ids = jax.device_put(jnp.asarray(prompt_ids(case["length"]))[None], NamedSharding(mesh, P()))
        start = time.perf_counter()
        compiled = jax.jit(last_logits).lower(state, ids).compile()
        compile_s = time.perf_counter() - start
        loaded = rss_bytes()
        reset_hwm()
        times, token = [], None
        for _ in range(case["inner"]):
            start = time.perf_counter()
            logits = compiled(state, ids)
            token = int(jnp.argmax(jax.block_until_ready(logits)[0]))
            times.append(time.perf_counter() - start)
            del logits
    return dict(times=times, peak=hwm_bytes(), loaded=loaded, token=token, compile_s=compile_s,
                xla=xla_bytes(compiled), devices=len(jax.devices()))


def run_hf_decode(case: dict) -> dict:
    import torch
    from transformers import DynamicCache, LlamaForCausalLM

    torch.set_num_threads(case["threads"])
    hf = LlamaForCausalLM.from_pretrained(case["hf_dir"], dtype=torch.float32, attn_implementation="sdpa").eval()
    cfg = hf.config
    heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    gen = torch.Generator().manual_seed(0)
    cache = DynamicCache(config=cfg)
    for layer in range(cfg.num_hidden_layers):
        kv = [torch.randn(1, heads, case["length"], head_dim, generator=gen) for _ in range(2)]
        cache.update(kv[0], kv[1], layer)
        del kv
    token = torch.tensor([[5]])
    times = []
    # transformers >= 5.2x renamed past_key_values to cache
    cache_arg = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    with torch.inference_mode():
        for step in range(case["warm"] + case["steps"]):
            if step == case["warm"]:
                loaded = rss_bytes()
                reset_hwm()
            start = time.perf_counter()
            out = hf(input_ids=token, use_cache=True, **{cache_arg: cache})
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            int(token)
            if step >= case["warm"]:
                times.append(time.perf_counter() - start)
            cache = out.cache if cache_arg == "cache" else out.past_key_values
            del out
    return dict(times=times, peak=hwm_bytes(), loaded=loaded, cache_slots=cache.get_seq_length(),
                threads=torch.get_num_threads())


def run_lwm_decode(case: dict) -> dict:
    jax = child_jax(1)
    import jax.numpy as jnp
    import numpy as np

    from lwm_core import KVCache
    from lwm_core.infer import Sampler

    model = load_lwm(case, jax, attention_impl="blockwise")
    cfg = model.config
    sampler = Sampler(model, chunk_size=case["chunk"])
    context = case["length"]
    _, _, cache_len = sampler.plan(context, case["warm"] + case["steps"])
    shape = (cfg.num_hidden_layers, 1, cfg.num_attention_heads, cache_len, cfg.head_dim)
    filled = jnp.arange(cache_len) < context

    @jax.jit
    def synthetic(key):  # keys/values of a filled context, zeros past it
        k1, k2 = jax.random.split(key)
        mask = filled[None, None, None, :, None]
        return (jnp.where(mask, jax.random.normal(k1, shape), 0.0), jnp.where(mask, jax.random.normal(k2, shape), 0.0))

    k, v = synthetic(jax.random.PRNGKey(0))
    cache = KVCache(k=k, v=v, key_valid=filled[None], length=jnp.int32(context),
                    next_position=jnp.full((1,), context, jnp.int32))
    del k, v
    key = ("text",) + (sampler_settings(),) + (None, cfg.vision)
    token = jnp.array([5], jnp.int32)
    rngs = jax.random.split(jax.random.PRNGKey(0), case["warm"] + case["steps"])
    times = []
    compile_s = None
    for step in range(case["warm"] + case["steps"]):
        if step == case["warm"]:
            loaded = rss_bytes()
            reset_hwm()
        start = time.perf_counter()
        token, cache = sampler.step(token, cache, key, is_vision=False, rng=rngs[step])
        np.asarray(token)  # as Sampler.generate does every step
        if step == 0:
            compile_s = time.perf_counter() - start
        if step >= case["warm"]:
            times.append(time.perf_counter() - start)
    return dict(times=times, peak=hwm_bytes(), loaded=loaded, compile_s=compile_s, cache_slots=cache_len,
                recompiled=sampler.compilations - 1)


def sampler_settings():
    from lwm_core.infer import SamplingSettings

    return SamplingSettings()


def run_breakdown(case: dict) -> dict:
    """Time the pieces of the middle prefill chunk of a `length`-token prompt (one layer's weights,
    each piece jitted alone): norm + q/k/v projection + rope, cache write, cache attention, output
    projection, norm + MLP; and the whole chunk step (all layers, last-position head) as the Sampler
    runs it. Attention work grows linearly with depth, so the middle chunk costs an average chunk:
    length / chunk x its time estimates the whole prefill."""
    jax = child_jax(1)
    import jax.numpy as jnp
    from flax import nnx

    from lwm_core import KVCache
    from lwm_core.attention import cache_attention
    from lwm_core.cache import write_layer
    from lwm_core.layers import rope_angles

    model = load_lwm(case, jax, attention_impl="blockwise")
    cfg = model.config
    chunk, length = case["chunk"], case["length"]
    # the middle chunk: attention work grows linearly with depth, so it costs what an average chunk does
    start_slot = (length // 2) // chunk * chunk
    shape = (cfg.num_hidden_layers, 1, cfg.num_attention_heads, length, cfg.head_dim)
    key = jax.random.PRNGKey(0)
    k_all = jax.random.normal(key, shape)
    v_all = jax.random.normal(jax.random.fold_in(key, 1), shape)
    valid = jnp.ones((1, length), bool)
    x = jax.random.normal(key, (1, chunk, cfg.hidden_size))
    pos = start_slot + jnp.arange(chunk, dtype=jnp.int32)[None]
    cos, sin = rope_angles(pos, cfg.head_dim, cfg.rope_theta)
    q_slots = pos[0]
    if cfg.scan_layers:
        layer = nnx.merge(*[nnx.split(model.transformer.h.scan_decoder)[0],
                            jax.tree.map(lambda a: a[0], nnx.split(model.transformer.h.scan_decoder)[1])])
    else:
        layer = model.transformer.h.layers[0]
    att, ffn = layer.attention, layer.feed_forward
    q, k, v = jax.jit(lambda x: att.project(x, cos, sin))(x)

    def timed(name, fn, *args, donate=(), feed=None):
        """Best of `inner` runs. Donated arguments (the cache, as in the Sampler, which writes it in
        place) are replaced by the call's outputs through `feed(args, outputs)`."""
        f = jax.jit(fn, donate_argnums=donate)
        args = tuple(jnp.copy(a) if i in donate else a for i, a in enumerate(args))
        out = jax.block_until_ready(f(*args))  # compile
        best = []
        for _ in range(case["inner"] + 1):
            if feed:
                args = feed(args, out)
            t0 = time.perf_counter()
            out = jax.block_until_ready(f(*args))
            best.append(time.perf_counter() - t0)
        del out
        return name, min(best[1:])

    parts = [
        timed("norm+qkv+rope", lambda x: att.project(layer.attention_norm(x, cfg.dtype), cos, sin), x),
        timed("cache write k+v", lambda c, k, v: write_layer(write_layer(c, k, 3, start_slot), v, 4, start_slot),
              k_all, k, v, donate=(0,), feed=lambda args, out: (out, *args[1:])),
        timed("cache attention", lambda q, kc, vc: cache_attention(q, kc, vc, q_slots, valid, layer=3,
                                                                   query_chunk_size=cfg.scan_query_chunk_size,
                                                                   key_chunk_size=cfg.scan_key_chunk_size),
              q, k_all, v_all),
        timed("wo", lambda o: att.output(o), q),
        timed("norm+mlp", lambda x: ffn(layer.ffn_norm(x, cfg.dtype)), x),
    ]
    graphdef, state = nnx.split(model)
    ids = jnp.asarray(prompt_ids(chunk))[None]

    def whole(state, ids, k, v):
        cache = KVCache(k=k, v=v, key_valid=valid, length=jnp.int32(start_slot),
                        next_position=jnp.full((1,), start_slot, jnp.int32))
        text, _, cache = nnx.merge(graphdef, state).extend(ids, cache, last_only=True, check_ids=False)
        return text, cache.k, cache.v

    # the same chunk again and again: it rewrites the same slots of the donated cache
    _, step = timed("step", whole, state, ids, k_all, v_all, donate=(2, 3),
                    feed=lambda args, out: (*args[:2], out[1], out[2]))
    per_layer = {name: t for name, t in parts}
    per_layer_torch = torch_reference(case, cfg, chunk, length)
    return dict(per_layer=per_layer, torch=per_layer_torch, layers=cfg.num_hidden_layers, step=step, times=[step],
                peak=hwm_bytes(), loaded=rss_bytes(),
                flops={"norm+qkv+rope": 6 * chunk * cfg.hidden_size ** 2, "wo": 2 * chunk * cfg.hidden_size ** 2,
                       "norm+mlp": 6 * chunk * cfg.hidden_size * cfg.intermediate_size,
                       # causal: the keys before the chunk plus half of the chunk itself
                       "cache attention": 4 * chunk * (start_slot + chunk / 2) * cfg.hidden_size})


def torch_reference(case: dict, cfg, chunk: int, length: int) -> dict:
    """What transformers spends on the same work, per layer: torch's SDPA (CPU flash attention) over
    the whole causal `length` (as its prefill runs it; per token it is the average chunk's share),
    and a SwiGLU MLP of `chunk` tokens."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(case["threads"])
    d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads
    q, k, v = (torch.randn(1, h, length, d // h) for _ in range(3))
    x = torch.randn(1, chunk, d)
    w1, w3, w2 = torch.randn(f, d) * 0.02, torch.randn(f, d) * 0.02, torch.randn(d, f) * 0.02

    def best(fn):
        fn()
        times = []
        for _ in range(case["inner"]):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    with torch.inference_mode():
        sdpa = best(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        mlp = best(lambda: F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2))
    # sdpa over the whole prompt, scaled to one chunk's share
    return {"sdpa (whole prompt) per chunk": sdpa * chunk / length, "mlp": mlp,
            "sdpa GFLOP/s": 2 * length * length * d / sdpa / 1e9}


def run_longest(case: dict) -> dict:
    """Peak memory of prefill at `length`: a cache of `length` slots and the chunk step run once at its
    last chunk (where attention reads the whole cache); the cache's contents do not change memory."""
    jax = child_jax(1)
    import jax.numpy as jnp
    from flax import nnx

    from lwm_core import KVCache

    model = load_lwm(case, jax, attention_impl="blockwise")
    cfg = model.config
    chunk, length = case["chunk"], case["length"]
    graphdef, state = nnx.split(model)
    loaded = rss_bytes()
    reset_hwm()
    shape = (cfg.num_hidden_layers, 1, cfg.num_attention_heads, length, cfg.head_dim)
    cache = KVCache(k=jnp.zeros(shape), v=jnp.zeros(shape), key_valid=jnp.ones((1, length), bool),
                    length=jnp.int32(length - chunk), next_position=jnp.full((1,), length - chunk, jnp.int32))

    def chunk_step(state, ids, cache):
        text, _, cache = nnx.merge(graphdef, state).extend(ids, cache, last_only=True, check_ids=False)
        return text, cache

    step = jax.jit(chunk_step, donate_argnums=(2,))
    ids = jnp.asarray(prompt_ids(chunk))[None]
    start = time.perf_counter()
    text, cache = jax.block_until_ready(step(state, ids, cache))
    return dict(times=[time.perf_counter() - start], peak=hwm_bytes(), loaded=loaded,
                cache_bytes=int(cache.k.nbytes + cache.v.nbytes))


def setup_hf_dir(case: dict) -> dict:
    jax = child_jax(1)
    from lwm_core import load_model, save_params

    model = load_model(f"random:{case['preset']}", max_sequence_length=case["max_seq"])
    save_params(model.params_dict(), f"hf::{case['hf_dir']}", config=model.config)
    return dict(params=int(sum(x.size for x in jax.tree.leaves(model.params_dict()))))


CHILDREN = {"hf": run_hf, "lwm": run_lwm, "ring": run_ring, "hf-decode": run_hf_decode,
            "lwm-decode": run_lwm_decode, "breakdown": run_breakdown, "longest": run_longest,
            "setup": setup_hf_dir}


def child_main(spec: str) -> None:
    case = json.loads(spec)
    result = CHILDREN[case["kind"]](case)
    result["others"] = others_share()
    result["ru_maxrss"] = __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss * 1024
    print(RESULT + json.dumps(result), flush=True)
