"""KV-cache decoding with the cache sharded over sp equals unsharded decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwm_core.attention import decode_attention, update_cache
from lwm_core.errors import LWMError
from lwm_core.mesh import make_mesh

B, S, H, D = 2, 32, 3, 8


def _decode_run(mesh, prompt, steps, k_new, v_new, pads):
    """Prefill a prompt of `prompt` tokens (row b left-padded by pads[b]), then decode `steps` tokens
    one at a time; -> per-step outputs [steps + 1] and the final caches."""
    k_cache = jnp.zeros((B, S, H, D))
    v_cache = jnp.zeros((B, S, H, D))
    slots = jnp.arange(S)
    real = slots[None, :] >= jnp.asarray(pads)[:, None]  # [B, S]: slots that hold real tokens

    @jax.jit
    def step(k_cache, v_cache, q, k, v, index):
        k_cache = update_cache(k_cache, k, index, mesh=mesh)
        v_cache = update_cache(v_cache, v, index, mesh=mesh)
        q_slots = index + jnp.arange(q.shape[1])  # [T]
        mask = real[:, None, :] & (slots[None, None, :] <= q_slots[None, :, None])  # [B, T, S]
        return k_cache, v_cache, decode_attention(q, k_cache, v_cache, mask, mesh=mesh)

    outs = []
    q, k, v = k_new[:, :prompt] * 0.5, k_new[:, :prompt], v_new[:, :prompt]
    k_cache, v_cache, out = step(k_cache, v_cache, q, k, v, 0)
    outs.append(out)
    for t in range(prompt, prompt + steps):
        sl = slice(t, t + 1)
        k_cache, v_cache, out = step(k_cache, v_cache, k_new[:, sl] * 0.5 + 0.1, k_new[:, sl], v_new[:, sl], t)
        outs.append(out)
    return outs, k_cache, v_cache


@pytest.mark.parametrize("spec", ["1,1,1,8", "1,2,1,4"])
def test_sharded_decode_equals_unsharded_for_16_steps(spec):
    rng = np.random.default_rng(0)
    k_new, v_new = (jnp.asarray(rng.standard_normal((B, S, H, D)), jnp.float32) for _ in range(2))
    # a 5-token prompt: the first decode steps straddle and then cross shard boundaries (4 slots each)
    ref, ref_k, ref_v = _decode_run(None, 5, 16, k_new, v_new, pads=[0, 2])
    got, got_k, got_v = _decode_run(make_mesh(spec), 5, 16, k_new, v_new, pads=[0, 2])
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(got_k), np.asarray(ref_k))
    np.testing.assert_array_equal(np.asarray(got_v), np.asarray(ref_v))
    assert got_k.sharding.spec[1] == "sp"  # the cache stays sharded along its slots


def test_update_cache_writes_only_owned_slots_and_uses_context_mesh():
    cache = jnp.zeros((1, 16, 1, 2))
    new = jnp.ones((1, 3, 1, 2))
    with jax.set_mesh(make_mesh("1,1,2,4")):  # shards of 4 slots: [3, 6) straddles shards 0 and 1
        out = update_cache(cache, new, jnp.int32(3))
    assert out.sharding.spec[1] == "sp"
    written = np.asarray(out)[0, :, 0, 0]
    np.testing.assert_array_equal(written, (np.arange(16) >= 3) & (np.arange(16) < 6))


def test_decode_query_with_no_visible_slot_gives_zeros():
    q = jnp.ones((1, 1, 1, 2))
    cache = jnp.ones((1, 8, 1, 2))
    out = decode_attention(q, cache, cache, jnp.zeros((1, 1, 8), bool), mesh=make_mesh("1,1,1,8"))
    np.testing.assert_array_equal(np.asarray(out), 0)


def test_cache_length_must_divide_by_sp():
    with pytest.raises(LWMError, match="divide by sp"):
        update_cache(jnp.zeros((1, 12, 1, 2)), jnp.ones((1, 1, 1, 2)), 0, mesh=make_mesh("1,1,1,8"))
