"""Parity with Hugging Face `LlamaForCausalLM` (an independent implementation) on tiny random weights,
and LWM streaming checkpoints written in LWM's key layout loading back into the same model."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import LlamaConfig, LlamaForCausalLM

from lwm_core import LWMError, ModelConfig, load_model, load_params, save_params
from lwm_core.model import LWMModel

# Prime-ish sizes: 5 heads of 12, vocab 97, MLP 88, 3 layers.
HF_TINY = LlamaConfig(vocab_size=97, hidden_size=60, intermediate_size=88, num_hidden_layers=3,
                      num_attention_heads=5, num_key_value_heads=5, max_position_embeddings=128,
                      rms_norm_eps=1e-6, rope_theta=50000.0, tie_word_embeddings=False, bos_token_id=1,
                      eos_token_id=2)


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    model = LlamaForCausalLM(HF_TINY).eval()
    with torch.no_grad():
        for p in model.parameters():  # norms too, so a dropped norm weight shows up
            p.normal_(0.0, 0.15)
    return model


def hf_logits(model, ids, mask=None):
    with torch.no_grad():
        kwargs = {} if mask is None else {"attention_mask": torch.tensor(mask, dtype=torch.long)}
        return model(torch.tensor(ids), **kwargs).logits.numpy()


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_logits_match_transformers(hf_model, tmp_path, safe):
    hf_model.save_pretrained(tmp_path, safe_serialization=safe)
    model = load_model(str(tmp_path))
    assert model.config.rope_theta == 50000.0 and model.config.num_attention_heads == 5
    ids = np.random.RandomState(0).randint(0, 97, (2, 17))
    ours, _ = model(jnp.asarray(ids))
    np.testing.assert_allclose(np.asarray(ours), hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def test_left_padded_logits_match_transformers(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path)
    model = load_model(str(tmp_path))
    ids = np.random.RandomState(1).randint(3, 97, (2, 12))
    mask = np.ones_like(ids)
    mask[1, :5] = 0
    ours, _ = model(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    ref = hf_logits(hf_model, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(ours)[real], ref[real], atol=1e-4, rtol=0)


def test_hf_round_trip_is_identical(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "src")
    ckpt = load_params(str(tmp_path / "src"))
    save_params(ckpt.params, f"hf::{tmp_path / 'dst'}", config=ckpt.config)
    again = LlamaForCausalLM.from_pretrained(tmp_path / "dst").state_dict()
    original = hf_model.state_dict()
    assert sorted(again) == sorted(original)
    for name, tensor in original.items():
        assert torch.equal(again[name], tensor), name


@pytest.mark.parametrize("layout", ["scanned", "unscanned"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lwm_streaming_checkpoint_reproduces_model(tmp_path, layout, dtype):
    cfg = ModelConfig(vocab_size=97, hidden_size=60, intermediate_size=88, num_hidden_layers=3,
                      num_attention_heads=5, max_sequence_length=64, vision=True, initializer_range=0.1)
    model = LWMModel(cfg, rngs=nnx.Rngs(3))
    path = tmp_path / "params"
    save_params(model.params_dict(), f"params::{path}", dtype=dtype, layout=layout)
    ckpt = load_params(f"params::{path}")
    assert (ckpt.format, ckpt.layout, ckpt.dtype) == ("lwm", layout, dtype)
    loaded = load_model(f"params::{path}", config=cfg)

    if dtype == "bfloat16":  # the reference is the in-memory model with bf16-rounded weights
        rounded = {k: np.asarray(jnp.asarray(v, jnp.bfloat16).astype(jnp.float32))
                   for k, v in model.params_dict().items()}
        model = LWMModel.from_params(cfg, rounded)
    ids = jnp.asarray(np.random.RandomState(4).randint(0, 97, (2, 10)))
    vmask = jnp.asarray(np.random.RandomState(5).rand(2, 10) < 0.5)
    ref_text, ref_vision = model(ids, vision_masks=vmask)
    text, vision = loaded(ids, vision_masks=vmask)
    np.testing.assert_array_equal(np.asarray(text), np.asarray(ref_text))
    np.testing.assert_array_equal(np.asarray(vision), np.asarray(ref_vision))


def test_bare_streaming_file_needs_a_config_and_matching_shapes(tmp_path):
    cfg = ModelConfig(vocab_size=97, hidden_size=60, intermediate_size=88, num_hidden_layers=3,
                      num_attention_heads=5, max_sequence_length=64)
    save_params(LWMModel(cfg, rngs=nnx.Rngs(0)).params_dict(), f"params::{tmp_path / 'p'}")
    with pytest.raises(LWMError, match="carries no model config"):
        load_model(f"params::{tmp_path / 'p'}")
    with pytest.raises(LWMError, match="shape"):
        load_model(f"params::{tmp_path / 'p'}", config=cfg.replace(intermediate_size=90))
