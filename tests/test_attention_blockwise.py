"""Blockwise attention against the plain reference: outputs and gradients, every mask kind."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention_helpers import assert_matches_plain, make_inputs

from lwm_core.attention import dot_product_attention, plain_attention
from lwm_core.errors import LWMError


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("packed,left_pad", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("chunks", [(8, 8), (7, 5)])  # divides 40 evenly / does not
def test_blockwise_matches_plain(causal, packed, left_pad, chunks):
    q, k, v, seg, mask = make_inputs(packed=packed, left_pad=left_pad)

    def fn(q, k, v):
        return dot_product_attention(q, k, v, causal=causal, segment_ids=seg, mask=mask, impl="blockwise",
                                     query_chunk_size=chunks[0], key_chunk_size=chunks[1])

    assert_matches_plain(fn, q, k, v, causal=causal, segment_ids=seg, mask=mask)


def test_chunks_larger_than_sequence_and_head_dim_16():
    q, k, v, seg, mask = make_inputs(batch=1, seq=13, heads=2, head_dim=16, packed=True)

    def fn(q, k, v):
        return dot_product_attention(q, k, v, segment_ids=seg, impl="blockwise", query_chunk_size=64,
                                     key_chunk_size=32)

    assert_matches_plain(fn, q, k, v, causal=True, segment_ids=seg, mask=None)


def test_fully_padded_rows_give_zeros_and_finite_grads():
    q, k, v, _, _ = make_inputs(batch=2, seq=24)
    mask = jnp.asarray(np.arange(24)[None, :] >= np.array([[0], [24]]))  # row 1: nothing to attend

    def loss(q, k, v):
        return jnp.sum(dot_product_attention(q, k, v, mask=mask, impl="blockwise", query_chunk_size=8,
                                             key_chunk_size=8) ** 2)

    out = dot_product_attention(q, k, v, mask=mask, impl="blockwise", query_chunk_size=8, key_chunk_size=8)
    assert np.all(np.asarray(out[1]) == 0)
    for g in jax.grad(loss, argnums=(0, 1, 2))(q, k, v):
        assert np.all(np.isfinite(np.asarray(g)))


def _max_err(x, ref):
    return float(jnp.max(jnp.abs(x.astype(jnp.float32) - ref)))


def test_bf16_error_no_worse_than_plain_bf16():
    q, k, v, seg, _ = make_inputs(batch=2, seq=64, heads=3, head_dim=16, packed=True, dtype=jnp.bfloat16)
    ref = plain_attention(*(x.astype(jnp.float32) for x in (q, k, v)), segment_ids=seg)
    plain_err = _max_err(plain_attention(q, k, v, segment_ids=seg), ref)
    out = dot_product_attention(q, k, v, segment_ids=seg, impl="blockwise", query_chunk_size=16,
                                key_chunk_size=8)
    assert out.dtype == jnp.bfloat16
    assert _max_err(out, ref) <= plain_err


def test_user_errors_are_lwm_errors():
    q, k, v, _, _ = make_inputs(batch=1, seq=8)
    with pytest.raises(LWMError, match="impl"):
        dot_product_attention(q, k, v, impl="flash")
    with pytest.raises(LWMError, match="impl='plain'"):
        dot_product_attention(q, k, v, impl="blockwise", mask=jnp.ones((1, 8, 8), bool))
    with pytest.raises(LWMError, match="one shape"):
        dot_product_attention(q, k[:, :4], v, impl="blockwise")
    with pytest.raises(LWMError, match="layout"):
        dot_product_attention(q, k, v, impl="ring", layout="spiral")
