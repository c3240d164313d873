"""The language model against itself and against literal expectations: caching, packing, vision routing,
presets. (Parity with Hugging Face lives in test_hf_parity.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import LlamaConfig, LlamaForCausalLM

from lwm_core import LWMError, ModelConfig
from lwm_core.checkpoint.keys import state_to_params as checkpoint_dict
from lwm_core.model import LWMModel, default_position_ids
from lwm_core.sharding import count_params

# Prime-ish sizes so a transposed axis fails loudly; 5 heads of 12.
TINY = dict(vocab_size=97, hidden_size=60, intermediate_size=88, num_hidden_layers=3, num_attention_heads=5,
            max_sequence_length=64, initializer_range=0.1)


def tiny_model(seed=0, **overrides):
    return LWMModel(ModelConfig(**{**TINY, **overrides}), rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_cached_decoding_equals_full_forward_with_left_padding(scan_layers):
    model = tiny_model(scan_layers=scan_layers)
    rng = np.random.RandomState(1)
    prompt_lens, pad_to, steps = [7, 4, 1], 7, 20
    batch = len(prompt_lens)
    ids = rng.randint(3, 97, (batch, pad_to + steps))
    mask = np.ones_like(ids, bool)
    for b, n in enumerate(prompt_lens):
        mask[b, : pad_to - n] = False  # left padding
        ids[b, : pad_to - n] = 0
    full_logits, _ = model(jnp.asarray(ids), attention_mask=jnp.asarray(mask))

    cache = model.init_cache(batch, pad_to + steps)
    prefill_logits, _, cache = model.prefill(jnp.asarray(ids[:, :pad_to]), cache,
                                             attention_mask=jnp.asarray(mask[:, :pad_to]))
    step_logits = []
    for t in range(pad_to, pad_to + steps):
        logits, _, cache = model.decode(jnp.asarray(ids[:, t : t + 1]), cache)
        step_logits.append(np.asarray(logits[:, 0]))
    full = np.asarray(full_logits)
    # Every step's logits against the full forward pass, every row.
    np.testing.assert_allclose(np.stack(step_logits, 1), full[:, pad_to:], atol=1e-5, rtol=0)
    # Prompt logits agree at real (unpadded) positions.
    real = mask[:, :pad_to]
    np.testing.assert_allclose(np.asarray(prefill_logits)[real], full[:, :pad_to][real], atol=1e-5, rtol=0)


def test_left_padded_row_equals_unpadded_row():
    model = tiny_model()
    ids = np.random.RandomState(2).randint(3, 97, (1, 9))
    alone, _ = model(jnp.asarray(ids))
    padded = np.concatenate([np.zeros((1, 4), int), ids], axis=1)
    mask = np.concatenate([np.zeros((1, 4), bool), np.ones((1, 9), bool)], axis=1)
    out, _ = model(jnp.asarray(padded), attention_mask=jnp.asarray(mask))
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(np.asarray(out)[:, 4:], np.asarray(alone), atol=1e-5, rtol=0)


def test_packed_sequences_equal_each_example_alone():
    model = tiny_model()
    rng = np.random.RandomState(3)
    a, b = rng.randint(3, 97, (1, 7)), rng.randint(3, 97, (1, 6))
    packed = np.concatenate([a, b], axis=1)
    segments = np.array([[1] * 7 + [2] * 6])
    out, _ = model(jnp.asarray(packed), segment_ids=jnp.asarray(segments))
    alone_a, _ = model(jnp.asarray(a))
    alone_b, _ = model(jnp.asarray(b))
    np.testing.assert_allclose(np.asarray(out)[:, :7], np.asarray(alone_a), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(out)[:, 7:], np.asarray(alone_b), atol=1e-5, rtol=0)
    # Without segment ids the second example sees the first one: the mask matters.
    unmasked, _ = model(jnp.asarray(packed))
    assert np.abs(np.asarray(unmasked)[:, 7:] - np.asarray(alone_b)).max() > 1e-3


def test_unscanned_layers_hold_the_same_checkpoint_and_logits():
    scanned = tiny_model()
    params = scanned.params_dict()
    unscanned = LWMModel.from_params(scanned.config.replace(scan_layers=False), params)
    assert len(unscanned.transformer.h.layers) == 3  # one module per layer, no stacked weights
    assert unscanned.transformer.h.layers[1].attention.wq.kernel.shape == (60, 60)
    again = unscanned.params_dict()
    assert sorted(again) == sorted(params)
    for key, value in params.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)
    ids = jnp.asarray(np.random.RandomState(6).randint(3, 97, (2, 9)))
    np.testing.assert_allclose(np.asarray(unscanned(ids)[0]), np.asarray(scanned(ids)[0]), atol=1e-5, rtol=0)


def test_random_weights_are_the_same_scanned_or_not():
    """`random:PRESET` is one model whatever the run options: `lwm ask` loads it unscanned on a CPU, a
    test or the library scanned, and both must answer alike."""
    from lwm_core import load_model

    scanned = load_model("random:debug").params_dict()
    unscanned = load_model("random:debug", scan_layers=False).params_dict()
    assert sorted(unscanned) == sorted(scanned)
    for key, value in scanned.items():
        np.testing.assert_array_equal(np.asarray(unscanned[key]), np.asarray(value), err_msg=key)


def test_default_position_ids_restart_per_segment_and_skip_padding():
    seg = jnp.array([[1, 1, 1, 2, 2, 3]])
    np.testing.assert_array_equal(default_position_ids(1, 6, segment_ids=seg), [[0, 1, 2, 0, 1, 0]])
    mask = jnp.array([[0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(default_position_ids(1, 5, attention_mask=mask), [[-1, -1, 0, 1, 2]])


def test_vision_masks_route_embeddings_and_heads():
    model = tiny_model(vision=True)
    # <text> <text> code code <eof> code <eov> <text>: vision ids are far beyond the text vocabulary.
    ids = jnp.array([[5, 3, 4000, 17, 8192, 8191, 8193, 9]])
    vmask = jnp.array([[0, 0, 1, 1, 1, 1, 1, 0]], bool)
    wte = model.transformer.wte.embedding[...]
    vte = model.transformer.vte.embedding[...]
    emb = np.asarray(model.transformer.embed(ids, vmask))
    expected = [wte[5], wte[3], vte[4000], vte[17], vte[8192], vte[8191], vte[8193], wte[9]]
    np.testing.assert_array_equal(emb[0], np.stack(expected))

    text_logits, vision_logits = model(ids, vision_masks=vmask)
    assert text_logits.shape == (1, 8, 97) and vision_logits.shape == (1, 8, 8448)
    # Both heads read the same final hidden state: recover it from the text head and check the vision head.
    hidden = np.linalg.lstsq(np.asarray(model.lm_head.kernel[...]).T, np.asarray(text_logits[0]).T, rcond=None)[0].T
    np.testing.assert_allclose(hidden @ np.asarray(model.vision_head.kernel[...]), np.asarray(vision_logits[0]),
                               atol=1e-4, rtol=0)
    # Zeroing the vision table changes nothing before the first vision position.
    nnx.update(model, nnx.State({"transformer": {"vte": {"embedding": nnx.Param(jnp.zeros_like(vte))}}}))
    text2, _ = model(ids, vision_masks=vmask)
    np.testing.assert_array_equal(np.asarray(text2)[:, :2], np.asarray(text_logits)[:, :2])
    assert np.abs(np.asarray(text2)[:, 2:] - np.asarray(text_logits)[:, 2:]).max() > 1e-4


def test_text_only_model_refuses_vision_masks():
    model = tiny_model()
    with pytest.raises(LWMError, match="text-only"):
        model(jnp.zeros((1, 4), jnp.int32), vision_masks=jnp.zeros((1, 4), bool))


def test_sequence_longer_than_max_is_refused():
    model = tiny_model()
    with pytest.raises(LWMError, match="max_sequence_length 64"):
        model(jnp.zeros((1, 65), jnp.int32))
    cache = model.init_cache(1, 8)
    with pytest.raises(LWMError, match="KV cache full"):
        model.prefill(jnp.zeros((1, 9), jnp.int32), cache)


@pytest.mark.parametrize("variant", [dict(remat_block="nothing_saveable"), dict(scan_mlp_chunk_size=4),
                                     dict(scan_layers=False, remat_block="nothing_saveable"),
                                     dict(attention_impl="plain")])
def test_execution_choices_change_nothing(variant):
    ids = jnp.asarray(np.random.RandomState(4).randint(3, 97, (2, 11)))
    base = tiny_model()
    other = LWMModel.from_params(base.config.replace(**variant), base.params_dict())  # same weights

    def loss(model):
        logits, _ = model(ids)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, ids[..., None], -1)[..., 0])

    l0, g0 = nnx.value_and_grad(loss)(base)
    l1, g1 = nnx.value_and_grad(loss)(other)
    np.testing.assert_allclose(l1, l0, atol=1e-6, rtol=0)
    g0, g1 = checkpoint_dict(g0), checkpoint_dict(g1)
    assert sorted(g0) == sorted(g1)
    for key, grad in g0.items():
        np.testing.assert_allclose(g1[key], grad, atol=1e-6, rtol=0, err_msg=key)


def _hf_param_count(cfg: ModelConfig) -> int:
    hf = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                     intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
                     num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_attention_heads,
                     tie_word_embeddings=False)
    with torch.device("meta"):
        return sum(p.numel() for p in LlamaForCausalLM(hf).parameters())


def test_full_size_7b_builds_abstractly_with_llama2_parameter_count():
    text = ModelConfig.from_name("7b", context="1m")
    assert (text.rope_theta, text.max_sequence_length) == (5e7, 1048576)
    n_text = count_params(text)  # jax.eval_shape: no memory touched
    assert n_text == _hf_param_count(text) == text.num_params()
    assert 6.7e9 < n_text < 6.75e9
    vision = ModelConfig.from_name("7b", vision=True)
    assert vision.rope_theta == 5e7
    assert count_params(vision) - n_text == 2 * 8448 * 4096  # vte + vision_head


def test_presets_and_invariants():
    cfg = ModelConfig.from_name("7b-128k")
    assert (cfg.rope_theta, cfg.max_sequence_length, cfg.hidden_size) == (1e7, 131072, 4096)
    assert ModelConfig.from_name("200m").num_hidden_layers == 14
    with pytest.raises(LWMError, match="unknown model preset"):
        ModelConfig.from_name("70b")
    with pytest.raises(LWMError, match="unknown context"):
        ModelConfig.from_name("7b", context="2m")
    with pytest.raises(LWMError, match="must divide"):
        ModelConfig(hidden_size=60, num_attention_heads=7)
    with pytest.raises(LWMError, match="attention_impl"):
        ModelConfig(attention_impl="flash")
    assert ModelConfig.from_json(cfg.to_json()) == cfg
