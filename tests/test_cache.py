"""The KV cache module: bucket sizes, sharded placement by the rules table, in-place writes that only
the owning shard performs, and attention over a (sharded) cache against plain attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lwm_core.attention import cache_attention, plain_attention
from lwm_core.cache import KVCache, bucket_length, check_room, init_cache, layer_view, write_layer
from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError
from lwm_core.mesh import make_mesh

CONFIG = ModelConfig.from_name("debug", vocab_size=97, max_sequence_length=512, num_hidden_layers=3,
                               num_attention_heads=4, hidden_size=32)


def test_bucket_lengths_are_few_and_round():
    assert [bucket_length(n) for n in (1, 256, 257, 385, 513, 1025, 5000)] == [256, 256, 384, 512, 768, 1536, 6144]
    assert bucket_length(300, multiple=24) == 384  # 384 is a multiple of 24 already
    assert bucket_length(10, minimum=16, multiple=5) == 20
    assert sorted({bucket_length(n) for n in range(1, 4097)}) == [256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096]


@pytest.mark.parametrize("spec,expected", [("1,1,2,4", P(None, None, "tp", "sp", None)),
                                           ("2,2,1,2", P(None, ("dp", "fsdp"), None, "sp", None))])
def test_cache_is_placed_by_the_rules_table(spec, expected):
    cache = init_cache(CONFIG, 4, 64, mesh=make_mesh(spec))
    assert cache.k.shape == (3, 4, 4, 64, 8)  # [L, B, H, S, Dh]
    assert cache.k.sharding.spec == expected and cache.v.sharding.spec == expected
    assert cache.key_valid.sharding.spec == P(expected[1], "sp")


def test_mesh_that_cannot_hold_the_cache_is_refused():
    with pytest.raises(LWMError, match="does not divide over sp=4"):
        init_cache(CONFIG, 1, 66, mesh=make_mesh("1,1,2,4"))
    with pytest.raises(LWMError, match="4 attention heads do not divide over tp=8"):
        init_cache(CONFIG.replace(num_attention_heads=4), 1, 64, mesh=make_mesh("1,1,8,1"))
    with pytest.raises(LWMError, match="exceeds max_sequence_length 512"):
        init_cache(CONFIG, 1, 1024)


def _cache(length=16):
    return init_cache(CONFIG, 2, length)


def test_overflow_is_an_error_eagerly_and_inside_jit():
    cache = _cache()._replace(length=jnp.int32(14))
    check_room(cache, 2)  # exactly full is fine
    with pytest.raises(LWMError, match="KV cache full: 14 \\+ 3 tokens exceed its 16 slots"):
        check_room(cache, 3)

    @jax.jit
    def step(cache):
        check_room(cache, 3)
        return cache.length + 3

    with pytest.raises(jax.errors.JaxRuntimeError, match="KV cache full: 14 \\+ 3 tokens exceed its 16 slots"):
        jax.block_until_ready(step(cache))


@pytest.mark.parametrize("spec", ["1,1,1,8", "1,2,1,4", "1,1,2,4"])
def test_sharded_writes_equal_unsharded_and_stay_sharded(spec):
    rng = np.random.default_rng(0)
    mesh = make_mesh(spec)
    whole = jnp.zeros((3, 2, 4, 32, 8))
    sharded = init_cache(CONFIG, 2, 32, mesh=mesh).k
    write = jax.jit(lambda c, new, layer, index: write_layer(c, new, layer, index, mesh=mesh), donate_argnums=0)
    # writes straddling shards (4 slots each at sp=8), longer than a shard, and single tokens
    for layer, index, count in [(0, 3, 2), (1, 0, 13), (2, 30, 2), (1, 13, 1), (0, 5, 9)]:
        new = jnp.asarray(rng.standard_normal((2, count, 4, 8)), jnp.float32)
        whole = whole.at[layer, :, :, index:index + count].set(jnp.swapaxes(new, 1, 2))
        sharded = write(sharded, new, layer, index)
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(whole))
    assert sharded.sharding.spec[3] == "sp"


@pytest.mark.parametrize("spec", [None, "1,1,1,8", "1,2,2,2"])
@pytest.mark.parametrize("new", [1, 3, 40])  # decode steps and a prompt chunk (blockwise path at 40)
def test_cache_attention_equals_plain_attention(spec, new, monkeypatch):
    import lwm_core.attention.decode as decode

    if new == 40:
        monkeypatch.setattr(decode, "_PLAIN_SCORE_BYTES", 0)  # force the blockwise kernel
    rng = np.random.default_rng(1)
    b, h, s, d, filled = 2, 4, 64, 8, 9
    q = jnp.asarray(rng.standard_normal((b, new, h, d)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((b, h, s, d)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((b, h, s, d)), jnp.float32)
    valid = np.zeros((b, s), bool)
    valid[:, : filled + new] = True
    valid[1, :4] = False  # row 1 is left-padded by 4
    q_slots = filled + np.arange(new)
    mesh = make_mesh(spec) if spec else None
    got = jax.jit(lambda *a: cache_attention(*a, mesh=mesh, query_chunk_size=16, key_chunk_size=16))(
        q, k, v, jnp.asarray(q_slots, jnp.int32), jnp.asarray(valid))
    # reference: plain attention with an explicit [B, T, S] mask
    mask = valid[:, None, :] & (np.arange(s)[None, None, :] <= q_slots[None, :, None])
    ref = plain_attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), causal=False, mask=jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-5)


def test_blockwise_cache_attention_pads_an_odd_cache_length(monkeypatch):
    """67 slots have no chunk divisor but 1: the kernel pads the keys (masked) instead of walking 67
    one-slot chunks (which made an exact-size 2049-slot cache ~3x slower)."""
    import lwm_core.attention.decode as decode

    monkeypatch.setattr(decode, "_PLAIN_SCORE_BYTES", 0)
    rng = np.random.default_rng(2)
    q = jnp.asarray(rng.standard_normal((1, 5, 2, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((1, 2, 67, 8)), jnp.float32) for _ in range(2))
    valid = jnp.asarray(np.arange(67)[None] < 66)
    q_slots = jnp.arange(61, 66, dtype=jnp.int32)
    got = cache_attention(q, k, v, q_slots, valid, query_chunk_size=16, key_chunk_size=16)
    mask = np.asarray(valid)[:, None, :] & (np.arange(67)[None, None, :] <= np.asarray(q_slots)[None, :, None])
    ref = plain_attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), causal=False, mask=jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", [None, "1,1,1,8"])
@pytest.mark.parametrize("plain", [False, True])
def test_stacked_cache_with_a_layer_index_equals_that_layer_alone(spec, plain, monkeypatch):
    """The decoder passes the cache of every layer and a traced layer index; both kernels read that
    layer, and a cache length the key chunk does not divide (sp=1: 60 slots, chunks of 16) is read
    without counting the moved-back last chunk's slots twice."""
    import lwm_core.attention.decode as decode

    if not plain:
        monkeypatch.setattr(decode, "_PLAIN_SCORE_BYTES", 0)
    rng = np.random.default_rng(3)
    layers, b, h, s, d, new = 3, 2, 4, 64 if spec else 60, 8, 21
    q = jnp.asarray(rng.standard_normal((b, new, h, d)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((layers, b, h, s, d)), jnp.float32) for _ in range(2))
    valid = np.zeros((b, s), bool)
    valid[:, : 30 + new] = True
    valid[0, :5] = False
    q_slots = jnp.asarray(30 + np.arange(new), jnp.int32)
    mesh = make_mesh(spec) if spec else None
    chunks = dict(mesh=mesh, query_chunk_size=16, key_chunk_size=16)
    got = jax.jit(lambda k, v, layer: cache_attention(q, k, v, q_slots, jnp.asarray(valid), layer=layer, **chunks))(
        k, v, 1)
    alone = cache_attention(q, k[1], v[1], q_slots, jnp.asarray(valid), **chunks)
    mask = valid[:, None, :] & (np.arange(s)[None, None, :] <= np.asarray(q_slots)[None, :, None])
    ref = plain_attention(q, jnp.swapaxes(k[1], 1, 2), jnp.swapaxes(v[1], 1, 2), causal=False, mask=jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(alone), np.asarray(ref), atol=1e-5, rtol=1e-5)


def test_query_with_no_visible_slot_gets_zeros():
    q = jnp.ones((1, 1, 1, 2))
    k = jnp.ones((1, 1, 8, 2))
    out = cache_attention(q, k, k, jnp.asarray([3]), jnp.zeros((1, 8), bool), mesh=make_mesh("1,1,1,8"))
    np.testing.assert_array_equal(np.asarray(out), 0)


def test_layer_view_reads_one_layer():
    cache = KVCache(*_cache()[:2], *_cache()[2:])
    k = cache.k.at[1].set(1.0)
    assert float(layer_view(k, 1).sum()) == k[1].size and float(layer_view(k, 0).sum()) == 0


@pytest.mark.parametrize("left_pad", [False, True])
def test_chunks_seen_whole_skip_the_mask_and_the_rest_keep_it(left_pad, monkeypatch):
    """Queries at slots 40-60 over 16-slot key chunks: chunks [0, 16) and [16, 32) are seen whole by
    every query (they run unmasked when every row is valid there), [32, 48) and [48, 64) are cut by
    the causal mask, [64, 96) is empty. A left-padded row keeps every chunk masked."""
    import lwm_core.attention.decode as decode

    monkeypatch.setattr(decode, "_PLAIN_SCORE_BYTES", 0)
    rng = np.random.default_rng(4)
    b, h, s, d, first, new = 2, 2, 96, 8, 40, 21
    q = jnp.asarray(rng.standard_normal((b, new, h, d)) * 3, jnp.float32)  # peaked softmax: masks matter
    k, v = (jnp.asarray(rng.standard_normal((b, h, s, d)), jnp.float32) for _ in range(2))
    valid = np.zeros((b, s), bool)
    valid[:, : first + new] = True
    if left_pad:
        valid[1, :3] = False
    q_slots = jnp.asarray(first + np.arange(new), jnp.int32)
    got = cache_attention(q, k, v, q_slots, jnp.asarray(valid), query_chunk_size=16, key_chunk_size=16)
    mask = valid[:, None, :] & (np.arange(s)[None, None, :] <= np.asarray(q_slots)[None, :, None])
    ref = plain_attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), causal=False, mask=jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-5)
