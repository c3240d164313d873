"""The cases of bench/gpu.py: what each child process runs and measures.

`bench/gpu.py --child KIND JSON` runs `CHILDREN[KIND](case)` here and prints its result as one JSON line:
attention (ours, cuDNN, torch), the whole-sequence forward, chunked prefill + decode through the Sampler
(ours) and transformers, the cuDNN hand-off check and XLA's memory analysis of one prefill chunk. jax,
torch and lwm_core are imported inside the cases only, so the parent (bench/gpu.py: command line, rounds,
tables) imports this module without them.
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def inputs(t, heads, dim, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, t, heads, dim), dtype=np.float32) for _ in range(3)]


def child_jax_attention(case):
    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, ROOT)
    from lwm_core.attention import blockwise_attention

    t, heads, dim = case["seq"], case["heads"], case["dim"]
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in inputs(t, heads, dim))
    if case["impl"] == "ours":
        qc, kc = case["chunks"]
        attend = lambda q, k, v: blockwise_attention(q, k, v, causal=True, query_chunk_size=qc,  # noqa: E731
                                                     key_chunk_size=kc)
    else:
        attend = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,  # noqa: E731
                                                              implementation="cudnn")
    if case.get("backward"):  # forward + backward: gradients of a scalar of the output
        grad = jax.grad(lambda q, k, v: attend(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2))
        fn = jax.jit(lambda q, k, v: (attend(q, k, v), grad(q, k, v)))
    else:
        fn = jax.jit(attend)
    start = time.perf_counter()
    out = jax.block_until_ready(fn(q, k, v))
    out = out[0] if case.get("backward") else out
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(case["repeats"]):
        start = time.perf_counter()
        jax.block_until_ready(fn(q, k, v))
        times.append(time.perf_counter() - start)
    sample = np.asarray(out[0, -min(t, 256):].astype(jnp.float32))  # the last rows see every key
    return dict(times=times, compile_s=compile_s, sample=sample.tolist() if case.get("keep") else None,
                device=str(jax.devices()[0]))


def child_torch_attention(case):
    import torch
    import torch.nn.functional as F

    t, heads, dim = case["seq"], case["heads"], case["dim"]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    backward = bool(case.get("backward"))
    q, k, v = (torch.from_numpy(x).to(dev, torch.bfloat16).transpose(1, 2).requires_grad_(backward)
               for x in inputs(t, heads, dim))
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def run():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if backward:
            torch.autograd.grad(out.float().sum(), (q, k, v))
        return out.detach()

    with torch.inference_mode(not backward):
        out = run()
        sync()
        times = []
        for _ in range(case["repeats"]):
            start = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - start)
    sample = out.transpose(1, 2)[0, -min(t, 256):].float().cpu().numpy()
    return dict(times=times, sample=sample.tolist() if case.get("keep") else None, device=dev)


def progress(what: str) -> None:
    """A stamped line on stderr: what a case that times out had done (run_child shows the last ones)."""
    print(f"[progress {time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def child_jax_prefill(case):
    import jax
    import numpy as np

    sys.path.insert(0, ROOT)
    from lwm_core import load_model
    from lwm_core.infer import Sampler

    length, new = case["length"], case["decode"]
    model = load_model(f"random:{case['preset']}", max_sequence_length=length + 512, dtype="bfloat16",
                       param_dtype="bfloat16", attention_impl="blockwise",
                       scan_query_chunk_size=case["chunks"][0], scan_key_chunk_size=case["chunks"][1])
    sampler = Sampler(model, chunk_size=case["chunk"])
    prompt = np.random.default_rng(0).integers(3, 32000, length).astype(np.int32)
    progress("model loaded")
    start = time.perf_counter()
    token, cache, key, _ = sampler.prefill([prompt], max_new_tokens=new)  # compiles, then runs
    jax.block_until_ready(token)
    first_s = time.perf_counter() - start
    progress(f"first prefill (compile + run) {first_s:.1f} s")
    del cache
    times = []
    for _ in range(case["repeats"]):
        start = time.perf_counter()
        token, cache, key, _ = sampler.prefill([prompt], max_new_tokens=new)
        jax.block_until_ready(token)
        times.append(time.perf_counter() - start)
        progress(f"prefill {times[-1]:.2f} s")
        if _ < case["repeats"] - 1:
            del cache
    rng = jax.random.PRNGKey(0)
    token, cache = sampler.step(token, cache, key, is_vision=False, rng=rng)  # compile the step
    jax.block_until_ready(token)
    start = time.perf_counter()
    for _ in range(new - 1):
        token, cache = sampler.step(token, cache, key, is_vision=False, rng=rng)
    jax.block_until_ready(token)
    decode_s = time.perf_counter() - start
    stats_ = jax.devices()[0].memory_stats() or {}
    return dict(times=times, first_s=first_s, decode_tok_s=(new - 1) / decode_s,
                peak=stats_.get("peak_bytes_in_use"), cache_slots=cache.max_length, device=str(jax.devices()[0]))


def child_jax_forward(case):
    """A whole-sequence forward (training's forward, `lwm info --forward`): last position's logits."""
    import jax
    import numpy as np
    from flax import nnx

    sys.path.insert(0, ROOT)
    from lwm_core import load_model
    from lwm_core.model import default_position_ids

    length = case["length"]
    model = load_model(f"random:{case['preset']}", max_sequence_length=length, dtype="bfloat16",
                       param_dtype="bfloat16", attention_impl="blockwise",
                       scan_query_chunk_size=case["chunks"][0], scan_key_chunk_size=case["chunks"][1])
    graphdef, state = nnx.split(model)

    @jax.jit
    def last_logits(state, ids):
        m = nnx.merge(graphdef, state)
        hidden = m._hidden(ids, None, default_position_ids(*ids.shape), None, None)  # no mask: cuDNN eligible
        return m._heads(hidden[:, -1:])[0][:, 0]

    ids = jax.numpy.asarray(np.random.default_rng(0).integers(3, 32000, (1, length)).astype(np.int32))
    start = time.perf_counter()
    jax.block_until_ready(last_logits(state, ids))
    first_s = time.perf_counter() - start
    times = []
    for _ in range(case["repeats"]):
        start = time.perf_counter()
        jax.block_until_ready(last_logits(state, ids))
        times.append(time.perf_counter() - start)
    stats_ = jax.devices()[0].memory_stats() or {}
    return dict(times=times, first_s=first_s, peak=stats_.get("peak_bytes_in_use"), device=str(jax.devices()[0]))


def torch_model(case):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lwm_core.config import ModelConfig

    c = ModelConfig.from_name(case["preset"])
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                      num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                      max_position_embeddings=case["length"] + 512, rms_norm_eps=c.rms_norm_eps,
                      rope_theta=c.rope_theta, attn_implementation="sdpa")
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(dev):
        model = LlamaForCausalLM(cfg).eval()
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    return model, cfg, dev, sync


def child_torch_forward(case):
    import torch

    sys.path.insert(0, ROOT)
    model, _, dev, sync = torch_model(case)
    ids = torch.randint(3, 32000, (1, case["length"]), device=dev)
    times = []
    with torch.inference_mode():
        model(ids[:, :512], use_cache=False, logits_to_keep=1)
        sync()
        for _ in range(case["repeats"]):
            start = time.perf_counter()
            model(ids, use_cache=False, logits_to_keep=1)
            sync()
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if dev == "cuda" else None
    return dict(times=times, peak=peak, device=dev)


def child_torch_prefill(case):
    import torch
    from transformers import DynamicCache

    sys.path.insert(0, ROOT)
    model, cfg, dev, sync = torch_model(case)
    ids = torch.randint(3, 32000, (1, case["length"]), device=dev)
    times = []
    with torch.inference_mode():
        model(ids[:, :512], use_cache=True, logits_to_keep=1)
        sync()
        for i in range(case["repeats"]):
            if i == case["repeats"] - 1 and dev == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            out = model(ids, past_key_values=DynamicCache(config=cfg), use_cache=True, logits_to_keep=1)
            sync()
            times.append(time.perf_counter() - start)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        del out
        new = case["decode"]
        out = model(token, past_key_values=cache, use_cache=True)
        sync()
        start = time.perf_counter()
        for _ in range(new - 1):
            out = model(out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values, use_cache=True)
        sync()
        decode_s = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if dev == "cuda" else None
    return dict(times=times, decode_tok_s=(new - 1) / decode_s, peak=peak, device=dev)


def child_jax_check(case):
    """Last-position logits of one prompt three ways, in one process: chunked prefill with the cuDNN
    cache hand-off, the same with it off (our kernel), and the whole-sequence forward."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, ROOT)
    from lwm_core import load_model
    from lwm_core.attention import fused

    length = case["length"]
    model = load_model(f"random:{case['preset']}", max_sequence_length=length + 512, dtype="bfloat16",
                       param_dtype="bfloat16", attention_impl="blockwise")
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 32000, (1, length)).astype(np.int32))
    out = {}
    for name, env in (("handoff", "1"), ("ours", "0")):
        os.environ[fused.ENV] = env
        jax.clear_caches()
        logits = model.prefill(ids, model.init_cache(1, length + 512), chunk_size=case["chunk"], last_only=True)[0]
        out[name] = np.asarray(logits[0, -1], np.float32)
    os.environ[fused.ENV] = "1"
    out["forward"] = np.asarray(model(ids)[0][0, -1], np.float32)
    ref = out["forward"]
    return dict({f"{k}_max_abs_vs_forward": float(np.abs(v - ref).max()) for k, v in out.items()},
                handoff_max_abs_vs_ours=float(np.abs(out["handoff"] - out["ours"]).max()),
                argmax_agree=bool(len({int(v.argmax()) for v in out.values()}) == 1),
                logit_scale=float(np.abs(ref).max()), device=str(jax.devices()[0]))


def child_jax_memory(case):
    """Compile one prefill chunk of the Sampler for an abstract model (no weights) and report XLA's
    memory analysis: arguments, outputs, aliased (donated cache) and temporaries."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    sys.path.insert(0, ROOT)
    from lwm_core.cache import init_cache
    from lwm_core.config import ModelConfig
    from lwm_core.infer import Sampler
    from lwm_core.infer.sampler import SamplingSettings
    from lwm_core.model import LWMModel

    cfg = ModelConfig.from_name(case["preset"]).replace(
        max_sequence_length=case["slots"], dtype="bfloat16", param_dtype="bfloat16", attention_impl="blockwise",
        scan_query_chunk_size=case["chunks"][0], scan_key_chunk_size=case["chunks"][1])
    model = nnx.eval_shape(lambda: LWMModel(cfg, rngs=nnx.Rngs(0)))
    sampler = Sampler(model, chunk_size=case["chunk"])
    fn = sampler._prefill_fn(("text", SamplingSettings(), None, False))
    sds = jax.ShapeDtypeStruct
    cache = jax.eval_shape(lambda: init_cache(cfg, 1, case["slots"], dtype=jnp.bfloat16))
    chunk = (1, case["chunk"])
    start = time.perf_counter()
    compiled = fn.lower(sampler.state, ((sds(chunk, jnp.int32), sds(chunk, bool), sds(chunk, bool)),), cache,
                        sds((2,), jnp.uint32), sds((), jnp.int32)).compile()
    m = compiled.memory_analysis()
    return dict(args=m.argument_size_in_bytes, out=m.output_size_in_bytes, alias=m.alias_size_in_bytes,
                temp=m.temp_size_in_bytes, compile_s=time.perf_counter() - start, device=str(jax.devices()[0]))


CHILDREN = dict(jax_memory=child_jax_memory, jax_check=child_jax_check,
                jax_attention=child_jax_attention, torch_attention=child_torch_attention,
                jax_forward=child_jax_forward, torch_forward=child_torch_forward,
                jax_prefill=child_jax_prefill, torch_prefill=child_torch_prefill)
