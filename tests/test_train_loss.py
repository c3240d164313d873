"""The chunked training loss against its naive twin: the full forward pass's logits, each target scored
by the text or the vision head as `target_vision` says, loss = sum(w * ce) / sum(w). Values, metrics
and gradients agree within 1e-5, for every chunk size and on a ring of 4 simulated devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lwm_core
from lwm_core.mesh import make_mesh, shard_batch
from lwm_core.train import chunked_loss
from lwm_core.train.loss import chunk_layout
from lwm_core.train.synthetic import PatternBatches

TOL = 1e-5
TINY = dict(vocab_size=97, hidden_size=48, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
            max_sequence_length=128, vision=True)


def _model(mesh=None, **options):
    return lwm_core.load_model("random:debug", mesh=mesh, **TINY, **options)


def _batch(seq_len=30, padding=3):
    return next(PatternBatches(batch_size=2, seq_len=seq_len, vocab_size=97, vision=True, padding=padding, seed=3))


def naive_loss(model, batch):
    """The reference: whole [B, T, V] logits from the model's forward pass."""
    text, vision = model(batch["input_ids"], vision_masks=batch["vision_masks"], attention_mask=batch["attention_mask"],
                         segment_ids=batch["segment_ids"], position_ids=batch["position_ids"])
    targets, is_vision, w = batch["targets"], batch["target_vision"], batch["loss_weights"]
    score = lambda logits, t: -jnp.take_along_axis(jax.nn.log_softmax(logits), t[..., None], -1)[..., 0]
    ce = jnp.where(is_vision, score(vision, jnp.where(is_vision, targets, 0)),
                   score(text, jnp.where(is_vision, 0, targets)))
    ce = jnp.where(w > 0, ce, 0.0)
    text_w, vision_w = jnp.where(is_vision, 0.0, w), jnp.where(is_vision, w, 0.0)
    return jnp.sum(w * ce) / jnp.sum(w), {"text_loss": jnp.sum(text_w * ce) / jnp.sum(text_w),
                                          "vision_loss": jnp.sum(vision_w * ce) / jnp.sum(vision_w)}


def _value_and_grads(loss_fn, model, batch):
    (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
    return float(loss), jax.tree.map(float, metrics), nnx.to_pure_dict(nnx.state(grads))


def _assert_trees_close(a, b):
    flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], dict(jax.tree_util.tree_flatten_with_path(b)[0])
    assert len(flat_a) == len(flat_b) > 10
    for path, x in flat_a:
        np.testing.assert_allclose(np.asarray(x), np.asarray(flat_b[path]), rtol=TOL, atol=TOL,
                                   err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def reference():
    model, batch = _model(), _batch()
    return model, batch, _value_and_grads(jax.jit(naive_loss), model, batch)


def test_batch_mixes_text_and_vision_targets(reference):
    _, batch, _ = reference
    used = batch["loss_weights"] > 0
    assert (used & batch["target_vision"]).any() and (used & ~batch["target_vision"]).any()
    assert not batch["attention_mask"].all()  # padding too
    np.testing.assert_allclose(batch["loss_weights"].sum(), 4.0, rtol=1e-6)  # 2 rows x 2 examples, each sums to 1


@pytest.mark.parametrize("chunk_size", [0, 7, 16])  # whole; 5 chunks of 6 (T=30); 2 chunks of 16 with 2 padded
def test_chunked_loss_and_grads_equal_full_logits(reference, chunk_size):
    model, batch, (ref_loss, ref_metrics, ref_grads) = reference
    loss_fn = jax.jit(lambda m, b: chunked_loss(m, b, chunk_size=chunk_size))
    loss, metrics, grads = _value_and_grads(loss_fn, model, batch)
    np.testing.assert_allclose(loss, ref_loss, rtol=TOL)
    np.testing.assert_allclose(metrics["text_loss"], ref_metrics["text_loss"], rtol=TOL)
    np.testing.assert_allclose(metrics["vision_loss"], ref_metrics["vision_loss"], rtol=TOL)
    assert metrics["tokens"] == int((batch["loss_weights"] > 0).sum())
    _assert_trees_close(grads, ref_grads)


def test_chunk_layout():
    assert chunk_layout(30, 0) == (1, 30)
    assert chunk_layout(30, 7) == (5, 6)
    assert chunk_layout(30, 16) == (2, 15)
    assert chunk_layout(64, 16) == (4, 16)
    assert chunk_layout(8, 100) == (1, 8)


def test_targets_are_routed_to_the_head_target_vision_names():
    model, batch = _model(), _batch()
    # A zero vision head predicts every vision code with probability 1 / vision_vocab_size.
    model.vision_head.kernel[...] = jnp.zeros_like(model.vision_head.kernel[...])
    loss_fn = jax.jit(lambda m, b: chunked_loss(m, b, chunk_size=8))
    _, metrics = loss_fn(model, batch)
    np.testing.assert_allclose(float(metrics["vision_loss"]), np.log(model.config.vision_vocab_size), rtol=1e-6)
    # Flipping which head scores the targets changes only what target_vision says.
    text_only = dict(batch, target_vision=np.zeros_like(batch["target_vision"]),
                     targets=np.where(batch["target_vision"], 5, batch["targets"]))
    _, text_metrics = loss_fn(model, text_only)
    assert float(text_metrics["vision_loss"]) == 0.0 and float(text_metrics["vision_accuracy"]) == 0.0
    assert float(text_metrics["text_loss"]) != float(metrics["text_loss"])


@pytest.mark.slow
def test_ring_loss_and_grads_equal_single_device():
    batch = _batch(seq_len=32, padding=5)  # 4 devices: the sequence must divide by 4
    loss_fn = jax.jit(lambda m, b: chunked_loss(m, b, chunk_size=8))
    ref_loss, _, ref_grads = _value_and_grads(loss_fn, _model(), batch)
    mesh = make_mesh("1,1,1,4", jax.devices()[:4])
    ring = _model(mesh, attention_impl="ring", sequence_layout="zigzag", scan_query_chunk_size=4,
                  scan_key_chunk_size=4)
    loss, _, grads = _value_and_grads(loss_fn, ring, shard_batch(batch, mesh))
    np.testing.assert_allclose(loss, ref_loss, rtol=TOL)
    _assert_trees_close(grads, ref_grads)
