"""The optimizer and the step: schedules, which weights decay, freezing (frozen weights bit-identical),
gradient accumulation equal to the whole batch, optimizer state sharded like the parameters."""

import jax
import numpy as np
import pytest

import lwm_core
from lwm_core.checkpoint import canonical_keys
from lwm_core.checkpoint.common import flatten_tree
from lwm_core.mesh import make_mesh
from lwm_core.train import TrainConfig, TrainStep, learning_rate
from lwm_core.train.optim import decays, split_frozen
from lwm_core.train.synthetic import PatternBatches

TINY = dict(vocab_size=97, hidden_size=48, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
            max_sequence_length=128)


def _model(mesh=None, **overrides):
    return lwm_core.load_model("random:debug", mesh=mesh, **{**TINY, **overrides})


def test_schedules_warm_up_then_hold_or_decay():
    constant = learning_rate(TrainConfig(lr=1e-3, warmup=4, schedule="constant", steps=100))
    assert [float(constant(s)) for s in (0, 2, 4, 50, 99)] == pytest.approx([0, 5e-4, 1e-3, 1e-3, 1e-3])
    cosine = learning_rate(TrainConfig(lr=1e-3, warmup=10, schedule="cosine", steps=110, end_lr_ratio=0.1))
    assert float(cosine(5)) == pytest.approx(5e-4)
    assert float(cosine(10)) == pytest.approx(1e-3)
    assert float(cosine(60)) == pytest.approx(1e-4 + 0.5 * 9e-4)  # halfway down the cosine
    assert float(cosine(110)) == pytest.approx(1e-4)
    assert float(learning_rate(TrainConfig(lr=2e-3, warmup=0))(0)) == pytest.approx(2e-3)


def test_weight_decay_skips_norms_and_embeddings_unless_decay_all():
    keys = canonical_keys(vision=True)
    decayed = sorted(k for k in keys if decays(k, decay_all=False))
    layer = "transformer/h/scan_decoder/"
    assert decayed == ["lm_head/kernel"] + [layer + k for k in (
        "attention/wk/kernel", "attention/wo/kernel", "attention/wq/kernel", "attention/wv/kernel",
        "feed_forward/w1/kernel", "feed_forward/w2/kernel", "feed_forward/w3/kernel")] + ["vision_head/kernel"]
    assert all(decays(k, decay_all=True) for k in keys)


def test_weight_decay_shrinks_only_decayed_weights():
    """With lr on and a batch whose weights are all zero (no gradient), only decay moves weights."""
    model = _model()
    step = TrainStep(model, TrainConfig(lr=0.1, warmup=0, weight_decay=0.5))
    before = flatten_tree(jax.device_get(step.init_state(model).params))
    batch = next(PatternBatches(batch_size=2, seq_len=16, vocab_size=97, padding=2))
    batch["loss_weights"][:] = 0
    state, _ = step(step.init_state(model), batch)
    after = flatten_tree(jax.device_get(state.params))
    for key in before:
        shrunk = np.allclose(after[key], before[key] * (1 - 0.1 * 0.5), rtol=1e-6)
        assert shrunk == decays(key, decay_all=False), key


def test_freeze_text_trains_only_the_vision_weights():
    model = _model(vision=True)
    step = TrainStep(model, TrainConfig(lr=1e-2, warmup=0, freeze="text", weight_decay=0.1, decay_all=True))
    state = step.init_state(model)
    before = flatten_tree(jax.device_get(state.params))
    trained, _ = split_frozen(state.params, "text")
    assert sorted(flatten_tree(trained)) == ["transformer/vte/embedding", "vision_head/kernel"]
    mu = state.opt_state[1][0].mu  # AdamW's moments cover only the trained weights
    assert sorted(flatten_tree(mu)) == ["transformer/vte/embedding", "vision_head/kernel"]
    batches = PatternBatches(batch_size=2, seq_len=32, vocab_size=97, vision=True)
    for _ in range(3):
        state, _ = step(state, next(batches))
    after = flatten_tree(jax.device_get(state.params))
    for key in before:
        if key in ("transformer/vte/embedding", "vision_head/kernel"):
            assert not np.array_equal(after[key], before[key]), key
        else:
            assert after[key].tobytes() == before[key].tobytes(), key


def test_gradient_accumulation_equals_the_whole_batch():
    batch = next(PatternBatches(batch_size=4, seq_len=32, vocab_size=97))
    results = []
    for accum in (1, 2):
        model = _model()
        step = TrainStep(model, TrainConfig(lr=1e-3, warmup=0, grad_accum=accum))
        _, metrics = step(step.init_state(model), batch)
        results.append({k: float(v) for k, v in metrics.items()})
    for name in ("loss", "text_loss", "grad_norm", "text_accuracy", "tokens"):
        assert results[1][name] == pytest.approx(results[0][name], rel=1e-6), name


def test_optimizer_state_is_sharded_like_the_parameters():
    mesh = make_mesh("1,2,2,1", jax.devices()[:4])
    model = _model(mesh)
    state = TrainStep(model, TrainConfig()).init_state(model)
    params = flatten_tree(state.params)
    adam = state.opt_state[1][0]
    for moments in (adam.mu, adam.nu):
        for key, moment in flatten_tree(moments).items():
            assert moment.sharding == params[key].sharding, key
    wq = params["transformer/h/scan_decoder/attention/wq/kernel"]
    assert wq.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tp")
    assert adam.count.sharding.is_fully_replicated
