"""The cuDNN hand-off (`lwm_core/attention/fused.py`): which calls it takes, and that on a CPU the
blockwise kernel still runs (cuDNN itself runs only on a GPU: bench/gpu.py checks it there against
torch's flash attention)."""

import jax
import jax.numpy as jnp
import numpy as np

from lwm_core.attention import blockwise_attention, fused, plain_attention


def qkv(dtype=jnp.bfloat16, dim=64, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return [jax.random.normal(k, (2, 37, 3, dim), jnp.float32).astype(dtype) for k in keys]


def test_only_plain_causal_half_precision_on_gpu_is_handed_to_cudnn(monkeypatch):
    q = qkv()[0]
    ones = jnp.ones(q.shape[:2], bool)
    assert fused.eligible(q, causal=True, backend="gpu")
    assert fused.eligible(q.astype(jnp.float16), causal=True, backend="gpu")
    assert not fused.eligible(q, causal=True, backend="cpu")
    assert not fused.eligible(q, causal=True, backend="tpu")
    assert not fused.eligible(q.astype(jnp.float32), causal=True, backend="gpu")  # fp32: ours is exact fp32
    assert not fused.eligible(q, causal=False, backend="gpu")
    assert not fused.eligible(q, causal=True, mask=ones, backend="gpu")  # left padding
    assert not fused.eligible(q, causal=True, segment_ids=ones.astype(jnp.int32), backend="gpu")  # packing
    assert not fused.eligible(qkv(dim=256)[0], causal=True, backend="gpu")  # head dim cuDNN does not take
    assert not fused.eligible(qkv(dim=36)[0], causal=True, backend="gpu")
    monkeypatch.setenv(fused.ENV, "0")
    assert not fused.eligible(q, causal=True, backend="gpu")


def test_cpu_keeps_the_blockwise_kernel(monkeypatch):
    calls = []
    monkeypatch.setattr(fused, "fused_attention", lambda *a: calls.append(a))
    q, k, v = qkv()
    out = blockwise_attention(q, k, v, causal=True, query_chunk_size=8, key_chunk_size=8)
    assert calls == [] and jax.default_backend() == "cpu"
    ref = plain_attention(*(x.astype(jnp.float32) for x in (q, k, v)), causal=True)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=2e-2)  # bf16 output


def test_an_eligible_call_goes_to_cudnn(monkeypatch):
    seen = []
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(fused, "fused_attention", lambda q, k, v: seen.append(q.shape) or q)
    q, k, v = qkv()
    assert blockwise_attention(q, k, v, causal=True) is q and seen == [q.shape]
    blockwise_attention(q, k, v, causal=True, mask=jnp.ones(q.shape[:2], bool))  # masked: our kernel
    assert seen == [q.shape]
