"""The cuDNN hand-off (`lwm_core/attention/fused.py`): which calls it takes, and that on a CPU the
blockwise kernel still runs (cuDNN itself runs only on a GPU: bench/gpu.py checks it there against
torch's flash attention)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwm_core import ModelConfig, load_model, make_mesh
from lwm_core.attention import blockwise_attention, cache_attention, extend_attention, fused, plain_attention


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


def _cache_case(dtype, seed=0):
    """Queries 30..50 over a 64-slot cache; row 0 left-padded by 5, and one query row (slot 2 of a
    row whose first 5 slots are padding) that sees no slot at all."""
    rng = np.random.default_rng(seed)
    b, h, s, d, new = 2, 4, 64, 16, 21
    q = jnp.asarray(rng.standard_normal((b, new, h, d)), jnp.float32).astype(dtype)
    k, v = (jnp.asarray(rng.standard_normal((b, h, s, d)), jnp.float32).astype(dtype) for _ in range(2))
    valid = np.zeros((b, s), bool)
    valid[:, : 30 + new] = True
    valid[0, :5] = False
    q_slots = np.asarray(30 + np.arange(new), np.int32)
    q_slots[0] = 2  # row 0 sees nothing from this query (its slots 0-4 are padding)
    return q, k, v, jnp.asarray(q_slots), jnp.asarray(valid)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_fused_cache_attention_equals_our_kernel(monkeypatch, dtype, tol):
    """The cuDNN hand-off for prefill chunks, run here through jax's XLA implementation (the same
    code, mask and layout as on a GPU), against our chunked kernel and a float32 reference."""
    import lwm_core.attention.decode as decode

    monkeypatch.setattr(fused, "IMPLEMENTATION", "xla")
    monkeypatch.setattr(decode, "_PLAIN_SCORE_BYTES", 0)  # our chunked kernel, not the one-matmul path
    q, k, v, q_slots, valid = _cache_case(dtype)
    got = fused.fused_cache_attention(jnp.swapaxes(q, 1, 2), k, v, q_slots, valid)
    bounded = fused.fused_cache_attention(jnp.swapaxes(q, 1, 2), k, v, q_slots, valid, filled=jnp.int32(51))
    np.testing.assert_array_equal(np.asarray(bounded, np.float32), np.asarray(got, np.float32))
    ours = cache_attention(q, k, v, q_slots, valid, query_chunk_size=8, key_chunk_size=16)
    assert got.shape == q.shape and got.dtype == q.dtype
    mask = np.asarray(valid)[:, None, :] & (np.arange(64)[None, None, :] <= np.asarray(q_slots)[None, :, None])
    ref = plain_attention(q.astype(jnp.float32), jnp.swapaxes(k, 1, 2).astype(jnp.float32),
                          jnp.swapaxes(v, 1, 2).astype(jnp.float32), causal=False, mask=jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref), atol=tol, rtol=tol)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ours, np.float32), atol=tol, rtol=tol)
    np.testing.assert_array_equal(np.asarray(got[0, 0], np.float32), 0)  # no visible slot: zeros


def test_long_cache_chunks_go_to_cudnn_only_on_one_gpu_device(monkeypatch):
    """`extend_attention` (what the model calls) writes the chunk and attends the layer; the hand-off
    gives the same output and caches as our kernel, and is taken only where it should be."""
    import lwm_core.attention.decode as decode

    seen = []
    real = fused.fused_cache_attention
    monkeypatch.setattr(fused, "IMPLEMENTATION", "xla")
    monkeypatch.setattr(fused, "fused_cache_attention", lambda *a, **k: seen.append(a[0].shape) or real(*a, **k))
    q, _, _, _, valid = _cache_case(jnp.bfloat16)
    rng = np.random.default_rng(9)
    k_new, v_new = (jnp.asarray(rng.standard_normal(q.shape), jnp.bfloat16) for _ in range(2))
    k_all, v_all = (jnp.asarray(rng.standard_normal((3, 2, 4, 64, 16)), jnp.bfloat16) for _ in range(2))
    q_slots = jnp.arange(30, 51, dtype=jnp.int32)

    def run(q, k_all, v_all, **kw):
        return extend_attention(q, k_new.astype(q.dtype), v_new.astype(q.dtype), k_all.astype(q.dtype),
                                v_all.astype(q.dtype), 1, 30, q_slots, valid, query_chunk_size=8,
                                key_chunk_size=16, **kw)

    ours = run(q, k_all, v_all)
    assert seen == []  # a CPU keeps our kernel
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    run(q, k_all, v_all)
    assert seen == []  # a short chunk: one matmul, as on a CPU
    monkeypatch.setattr(decode, "_PLAIN_SCORE_BYTES", 0)
    handed = run(q, k_all, v_all)
    assert seen == [(2, 4, 21, 16)]
    np.testing.assert_allclose(np.asarray(handed[0], np.float32), np.asarray(ours[0], np.float32), atol=2e-2)
    for a, b in zip(handed[1:], ours[1:], strict=True):  # the chunk written into layer 1 alone
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    run(q.astype(jnp.float32), k_all, v_all)
    run(q, k_all, v_all, mesh=make_mesh("1,1,1,8"))  # sharded cache
    monkeypatch.setenv(fused.ENV, "0")
    run(q, k_all, v_all)
    assert seen == [(2, 4, 21, 16)]  # fp32, a sharded cache and the switch keep our kernel


def test_chunked_prefill_through_the_hand_off_equals_our_kernels_prefill(monkeypatch):
    """A bf16 model's chunked prefill of a left-padded batch with the hand-off taken (through jax's
    XLA implementation) gives the logits of our own kernel's prefill."""
    import lwm_core.attention.decode as decode

    monkeypatch.setattr(fused, "IMPLEMENTATION", "xla")
    monkeypatch.setattr(decode, "_PLAIN_SCORE_BYTES", 0)
    config = ModelConfig.from_name("debug").replace(dtype="bfloat16", max_sequence_length=128)
    model = load_model("random:debug", config)
    ids = jnp.asarray(np.random.default_rng(7).integers(3, config.vocab_size, (2, 61)), jnp.int32)
    mask = jnp.asarray(np.arange(61)[None, :] >= np.array([[0], [7]]))
    ours = model.prefill(ids, model.init_cache(2, 96), attention_mask=mask, chunk_size=16)[0]
    seen = []
    real_fn = fused.fused_cache_attention
    monkeypatch.setattr(fused, "fused_cache_attention", lambda *a, **k: seen.append(1) or real_fn(*a, **k))
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    jax.clear_caches()  # compiled afresh: jit caches the first trace by shape
    handed = model.prefill(ids, model.init_cache(2, 96), attention_mask=mask, chunk_size=16)[0]
    assert seen  # traced through the hand-off
    real = np.asarray(mask)
    a, b = np.asarray(handed, np.float32)[real], np.asarray(ours, np.float32)[real]
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=5e-2, rtol=5e-2)  # bf16 activations, two summation orders
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.95
