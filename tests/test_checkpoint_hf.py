"""Hugging Face LLaMA: the q/k RoPE permutation, round trips, and transformers as the reference reader/writer."""

from __future__ import annotations

import json
import sys

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from lwm_core.checkpoint import expected_shapes, load_params, save_params
from lwm_core.checkpoint.hf import hf_to_lwm_qk, lwm_to_hf_qk, write_hf
from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError

CONFIG = ModelConfig(vocab_size=97, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                     num_attention_heads=3, max_sequence_length=64, rope_theta=5e4)
LAYER = "transformer/h/scan_decoder/"


def random_params(config: ModelConfig, dtype=np.float32, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in expected_shapes(config).items()}


def rope_interleaved(x, pos, theta):  # LWM: pairs (2j, 2j+1); x [T, H, hd]
    hd = x.shape[-1]
    angle = pos[:, None, None] * theta ** (-np.arange(0, hd, 2) / hd)  # [T, 1, hd/2]
    re, im = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = re * np.cos(angle) - im * np.sin(angle)
    out[..., 1::2] = re * np.sin(angle) + im * np.cos(angle)
    return out


def rope_rotate_half(x, pos, theta):  # HF LLaMA: pairs (j, j + hd/2)
    hd = x.shape[-1]
    angle = pos[:, None, None] * theta ** (-np.arange(0, hd, 2) / hd)
    cos, sin = np.cos(np.concatenate([angle, angle], -1)), np.sin(np.concatenate([angle, angle], -1))
    rotated = np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], -1)
    return x * cos + rotated * sin


def test_qk_permutation_literal_rows():
    # 2 heads of head_dim 4, in = 1: LWM rows per head (0,1),(2,3) are pairs; HF wants (0,2),(1,3).
    kernel = np.arange(8, dtype=np.float32)[None, :]  # [in=1, out=8]
    hf = lwm_to_hf_qk(kernel, n_heads=2)
    np.testing.assert_array_equal(hf[:, 0], [0, 2, 1, 3, 4, 6, 5, 7])
    np.testing.assert_array_equal(hf_to_lwm_qk(hf, n_heads=2), kernel)


def test_qk_permutation_gives_same_attention_scores():
    # Interleaved RoPE on LWM's q/k and rotate-half RoPE on HF's q/k must give identical scores.
    rng = np.random.default_rng(1)
    d, heads, t = 24, 3, 7
    x = rng.standard_normal((t, d))
    wq, wk = rng.standard_normal((d, d)), rng.standard_normal((d, d))  # LWM kernels [in, out]
    pos = np.arange(t, dtype=np.float64)

    def scores(q, k):
        return np.einsum("thd,shd->hts", q, k)

    q_lwm = rope_interleaved((x @ wq).reshape(t, heads, -1), pos, 1e4)
    k_lwm = rope_interleaved((x @ wk).reshape(t, heads, -1), pos, 1e4)
    q_hf = rope_rotate_half((x @ lwm_to_hf_qk(wq, heads).T).reshape(t, heads, -1), pos, 1e4)
    k_hf = rope_rotate_half((x @ lwm_to_hf_qk(wk, heads).T).reshape(t, heads, -1), pos, 1e4)
    np.testing.assert_allclose(scores(q_hf, k_hf), scores(q_lwm, k_lwm), rtol=1e-10, atol=1e-10)
    assert not np.allclose(scores(rope_rotate_half((x @ wq).reshape(t, heads, -1), pos, 1e4), k_hf),
                           scores(q_lwm, k_lwm))  # without the permutation they differ


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_round_trip(tmp_path, dtype):
    params = random_params(CONFIG, dtype)
    save_params(params, f"hf::{tmp_path / 'm'}", config=CONFIG)
    ckpt = load_params(tmp_path / "m")  # a bare folder with config.json is HF
    assert (ckpt.format, ckpt.layout, ckpt.dtype) == ("hf", "unscanned", np.dtype(dtype).name)
    assert ckpt.config == CONFIG
    for key, value in params.items():
        assert ckpt.params[key].dtype == value.dtype
        np.testing.assert_array_equal(ckpt.params[key], value, err_msg=key)


def test_transformers_loads_our_files(tmp_path):
    import torch
    import transformers
    params = random_params(CONFIG)
    write_hf(params, tmp_path / "m", CONFIG, shard_bytes=20_000)  # several shards + an index
    assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
    hf_config = transformers.LlamaConfig.from_pretrained(tmp_path / "m")
    assert hf_config.rope_parameters["rope_theta"] == CONFIG.rope_theta
    assert hf_config.max_position_embeddings == CONFIG.max_sequence_length
    reference = transformers.LlamaForCausalLM(hf_config).state_dict()
    model, info = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "m", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    np.testing.assert_array_equal(state["model.embed_tokens.weight"], params["transformer/wte/embedding"])
    np.testing.assert_array_equal(state["lm_head.weight"], params["lm_head/kernel"].T)
    np.testing.assert_array_equal(state["model.layers.2.mlp.down_proj.weight"],
                                  params[LAYER + "feed_forward/w2/kernel"][2].T)
    np.testing.assert_array_equal(state["model.layers.1.self_attn.v_proj.weight"],
                                  params[LAYER + "attention/wv/kernel"][1].T)
    np.testing.assert_array_equal(state["model.layers.0.self_attn.k_proj.weight"],
                                  lwm_to_hf_qk(params[LAYER + "attention/wk/kernel"][0], 3))
    np.testing.assert_array_equal(state["model.layers.1.post_attention_layernorm.weight"],
                                  params[LAYER + "ffn_norm/kernel"][1])
    assert torch.is_tensor(model.model.norm.weight)


def _transformers_model(dtype_name: str):
    import torch
    import transformers
    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(vocab_size=97, hidden_size=24, intermediate_size=40,
                                         num_hidden_layers=3, num_attention_heads=3, num_key_value_heads=3,
                                         max_position_embeddings=64, rope_theta=5e4, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(hf_config).to(getattr(torch, dtype_name)), torch


def _as_numpy(tensor, torch):
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_reads_transformers_sharded_safetensors_and_bin(tmp_path, dtype_name):
    model, torch = _transformers_model(dtype_name)
    model.save_pretrained(tmp_path / "st", max_shard_size="30KB")
    assert (tmp_path / "st" / "model.safetensors.index.json").is_file()
    state = {k: _as_numpy(v.detach(), torch) for k, v in model.state_dict().items()}
    ckpt = load_params(f"hf::{tmp_path / 'st'}")
    assert ckpt.dtype == dtype_name and ckpt.config.rope_theta == 5e4
    p = ckpt.params
    np.testing.assert_array_equal(p["transformer/wte/embedding"], state["model.embed_tokens.weight"])
    np.testing.assert_array_equal(p[LAYER + "feed_forward/w1/kernel"][2],
                                  state["model.layers.2.mlp.gate_proj.weight"].T)
    np.testing.assert_array_equal(p[LAYER + "feed_forward/w3/kernel"][0],
                                  state["model.layers.0.mlp.up_proj.weight"].T)
    np.testing.assert_array_equal(p[LAYER + "attention_norm/kernel"][1],
                                  state["model.layers.1.input_layernorm.weight"])
    np.testing.assert_array_equal(p[LAYER + "attention/wq/kernel"][1],
                                  hf_to_lwm_qk(state["model.layers.1.self_attn.q_proj.weight"], 3))
    # Writing back gives transformers' tensors exactly.
    save_params(p, f"hf::{tmp_path / 'back'}", config=ckpt.config)
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(back) == sorted(state)
    for name, value in state.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)
    # The same weights as a torch.save'd pytorch_model.bin.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    from_bin = load_params(tmp_path / "bin")
    for key, value in p.items():
        np.testing.assert_array_equal(from_bin.params[key], value, err_msg=key)


def test_bin_without_torch_is_one_line_error(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 97, "hidden_size": 24,
                                                      "intermediate_size": 40, "num_hidden_layers": 3,
                                                      "num_attention_heads": 3}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(LWMError, match="reading .bin checkpoints needs torch: pip install torch"):
        load_params(f"hf::{tmp_path}")


@pytest.mark.parametrize("change, message", [
    ({"num_key_value_heads": 1}, "grouped-query attention"),
    ({"tie_word_embeddings": True}, "ties lm_head"),
    ({"model_type": "mistral"}, "only LLaMA"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4}}, "RoPE scaling"),
])
def test_refuses_architectures_lwm_cannot_run(tmp_path, change, message):
    save_params(random_params(CONFIG), f"hf::{tmp_path / 'm'}", config=CONFIG)
    path = tmp_path / "m" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(LWMError, match=message):
        load_params(f"hf::{tmp_path / 'm'}")


def test_old_style_rope_theta_is_read(tmp_path):
    save_params(random_params(CONFIG), f"hf::{tmp_path / 'm'}", config=CONFIG)
    path = tmp_path / "m" / "config.json"
    hf = json.loads(path.read_text())
    del hf["rope_parameters"]
    hf["rope_theta"] = 123.0
    path.write_text(json.dumps(hf))
    assert load_params(f"hf::{tmp_path / 'm'}").config.rope_theta == 123.0


def test_vision_params_and_missing_config_are_refused(tmp_path):
    vision = CONFIG.replace(vision=True, rope_theta=5e7)
    with pytest.raises(LWMError, match="no vision"):
        save_params(random_params(vision), f"hf::{tmp_path / 'v'}", config=vision)
    with pytest.raises(LWMError, match="needs a model config"):
        save_params(random_params(CONFIG), f"hf::{tmp_path / 'n'}")
    assert not (tmp_path / "v").exists() and not list(tmp_path.iterdir())  # no temporary leftovers


def test_truncated_safetensors_and_given_config_mismatch(tmp_path):
    save_params(random_params(CONFIG), f"hf::{tmp_path / 'm'}", config=CONFIG)
    with pytest.raises(LWMError, match="num_hidden_layers=2 but"):
        load_params(tmp_path / "m", config=CONFIG.replace(num_hidden_layers=2))
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(LWMError, match="truncated"):
        load_params(tmp_path / "m")
