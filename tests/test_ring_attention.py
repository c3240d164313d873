"""Ring attention over 1, 2, 4 and 8 simulated devices against the plain reference, every layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention_helpers import assert_matches_plain, make_inputs

from lwm_core.attention import dot_product_attention, layout, plain_attention
from lwm_core.attention.ring import chunk_pair_counts
from lwm_core.mesh import make_mesh


def sp_mesh(n_sp: int, spec: str | None = None):
    """A (dp, fsdp, tp, sp) mesh over the first devices: sp = n_sp unless `spec` is given."""
    spec = spec or f"1,1,1,{n_sp}"
    sizes = [int(s) for s in spec.split(",")]
    return make_mesh(spec, devices=jax.devices()[: int(np.prod(sizes))])


def ring_fn(causal, seg, mask, lay, chunks, mesh=None):
    def fn(q, k, v):
        return dot_product_attention(q, k, v, causal=causal, segment_ids=seg, mask=mask, impl="ring",
                                     layout=lay, query_chunk_size=chunks[0], key_chunk_size=chunks[1],
                                     mesh=mesh)
    return fn


@pytest.mark.parametrize("n_sp", [1, 2, 4, 8])
@pytest.mark.parametrize("lay", layout.LAYOUTS)
def test_ring_causal_packed_left_padded(n_sp, lay):
    # T = 48: 6 per device on 8 devices; chunk 4 x 5 does not divide the local block evenly
    q, k, v, seg, mask = make_inputs(seq=48, packed=True, left_pad=True, seed=n_sp)
    with jax.set_mesh(sp_mesh(n_sp)):  # mesh from the context, as the model calls it
        assert_matches_plain(ring_fn(True, seg, mask, lay, (4, 5)), q, k, v, causal=True, segment_ids=seg,
                             mask=mask)


@pytest.mark.parametrize("n_sp,lay,packed", [(2, "zigzag", False), (4, "striped", True), (8, "contiguous", True)])
def test_ring_bidirectional(n_sp, lay, packed):
    q, k, v, seg, mask = make_inputs(seq=32, packed=packed, left_pad=True, seed=10 + n_sp)
    assert_matches_plain(ring_fn(False, seg, mask, lay, (4, 4), mesh=sp_mesh(n_sp)), q, k, v, causal=False,
                         segment_ids=seg, mask=mask)


@pytest.mark.parametrize("spec,lay", [("1,2,1,4", "zigzag"), ("1,1,2,4", "striped"), ("2,1,1,4", "contiguous")])
def test_ring_with_batch_and_head_axes(spec, lay):
    # heads = 3 does not divide tp = 2: they stay replicated there; batch 2 splits over dp / fsdp
    q, k, v, seg, mask = make_inputs(seq=40, packed=True, seed=3)
    with jax.set_mesh(sp_mesh(0, spec)):
        assert_matches_plain(ring_fn(True, seg, mask, lay, (8, 8)), q, k, v, causal=True, segment_ids=seg,
                             mask=mask)


def test_sequence_not_dividing_ring_is_padded():
    # T = 37 on sp = 4 zigzag: padded to 40 and masked
    q, k, v, _, _ = make_inputs(batch=1, seq=37, seed=5)
    assert_matches_plain(ring_fn(True, None, None, "zigzag", (3, 4), mesh=sp_mesh(4)), q, k, v, causal=True,
                         segment_ids=None, mask=None)


def test_no_mesh_falls_back_to_blockwise():
    q, k, v, _, _ = make_inputs(batch=1, seq=16)
    assert_matches_plain(ring_fn(True, None, None, "striped", (4, 4)), q, k, v, causal=True, segment_ids=None,
                         mask=None)


@pytest.mark.parametrize("lay", layout.LAYOUTS)
def test_layout_permutation_is_a_permutation(lay):
    perm = layout.permutation(48, 4, lay)
    assert sorted(perm.tolist()) == list(range(48))
    assert np.array_equal(perm[layout.inverse(perm)], np.arange(48))
    blocks = perm.reshape(4, 12)
    if lay == "contiguous":
        assert np.array_equal(blocks[1], np.arange(12, 24))
    if lay == "striped":
        assert np.array_equal(blocks[1], np.arange(1, 48, 4))
    if lay == "zigzag":  # pieces of 6: device 1 holds pieces 1 and 6
        assert np.array_equal(blocks[1], np.r_[6:12, 36:42])


def test_balanced_layouts_balance_causal_work():
    counts = {lay: chunk_pair_counts(4096, 8, lay, query_chunk_size=64, key_chunk_size=64)
              for lay in layout.LAYOUTS}
    # every layout computes the same causal triangle in total, up to diagonal chunks
    assert counts["contiguous"].max() / counts["contiguous"].mean() > 1.5
    for lay in ("striped", "zigzag"):
        assert counts[lay].max() / counts[lay].mean() <= 1.1
    # contiguous on one device: chunk pairs on or below the diagonal only
    n = 4096 // 8 // 64
    assert counts["contiguous"][0] == n * (n + 1) // 2


def test_ring_bf16_error_no_worse_than_plain_bf16():
    import jax.numpy as jnp

    from lwm_core.attention import plain_attention

    q, k, v, seg, mask = make_inputs(seq=64, head_dim=16, packed=True, left_pad=True, dtype=jnp.bfloat16)
    ref = plain_attention(*(x.astype(jnp.float32) for x in (q, k, v)), segment_ids=seg, mask=mask)

    def err(x):
        return float(jnp.max(jnp.abs(x.astype(jnp.float32) - ref)))

    out = ring_fn(True, seg, mask, "zigzag", (8, 8), mesh=sp_mesh(4))(q, k, v)
    assert out.dtype == jnp.bfloat16
    assert err(out) <= err(plain_attention(q, k, v, segment_ids=seg, mask=mask))


@pytest.mark.parametrize("lay", layout.LAYOUTS)
def test_ring_really_runs_a_ring_and_keeps_the_sequence_sharded(lay):
    """Guards against a silent fall-back to single-device blockwise attention: under an sp=4 mesh the
    jaxpr passes key/value blocks with ppermute, and the output stays sharded over sp (tokens given in
    the layout's order, as the model arranges them once before its first layer)."""
    q, k, v, seg, mask = make_inputs(seq=32, packed=False, left_pad=True, seed=3)
    mesh = sp_mesh(4)
    order = layout.permutation(32, 4, lay)
    q, k, v, mask = (jnp.take(x, jnp.asarray(order), axis=1) for x in (q, k, v, mask))

    def fn(q, k, v):
        return dot_product_attention(q, k, v, mask=mask, impl="ring", layout=lay, query_chunk_size=4,
                                     key_chunk_size=4, mesh=mesh, positions=order)

    jaxpr = str(jax.make_jaxpr(fn)(q, k, v))
    assert "ppermute" in jaxpr and "shard_map" in jaxpr
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "sp"))
    out = jax.jit(fn)(*(jax.device_put(x, sharding) for x in (q, k, v)))
    assert out.sharding.spec[1] == "sp"
    assert {s.data.shape[1] for s in out.addressable_shards} == {8}  # 32 tokens / 4 devices
    # the arranged result is the plain result, arranged
    q0, k0, v0, _, mask0 = make_inputs(seq=32, packed=False, left_pad=True, seed=3)
    expected = plain_attention(q0, k0, v0, causal=True, mask=mask0)
    np.testing.assert_allclose(np.asarray(out), np.asarray(jnp.take(expected, jnp.asarray(order), axis=1)),
                               atol=1e-5, rtol=1e-5)
    # without the sp axis the same call is plain blockwise: no collective at all
    single = str(jax.make_jaxpr(ring_fn(True, None, mask0, lay, (4, 4), mesh=sp_mesh(1)))(q0, k0, v0))
    assert "ppermute" not in single
