"""VQGAN weight formats: LWM's pickle, diffusers folders, ours; conversion; load errors."""

import pickle

import numpy as np
import pytest
from flax import nnx

from lwm_core.errors import LWMError
from lwm_core.vqgan import VQGANConfig, convert_vqgan, load_vqgan, read_vqgan
from lwm_core.vqgan.model import init_vqgan
from lwm_core.vqgan.params_lwm import lwm_to_model, model_to_lwm, unflatten

TINY = VQGANConfig.from_name("tiny")


@pytest.fixture(scope="module")
def model():
    return init_vqgan(TINY, seed=7)


def _lwm_pickle(model, path):
    """Write the pickle the way LWM does: the plain nested dict of numpy arrays, LWM's names."""
    tree = unflatten(model_to_lwm(model))
    with open(path, "wb") as f:
        pickle.dump(tree, f)
    return tree


def test_lwm_pickle_loads_and_reproduces_the_model(model, tmp_path):
    tree = _lwm_pickle(model, tmp_path / "vqgan.pkl")
    assert set(tree) == {"encoder", "quant_conv", "quantize", "post_quant_conv", "decoder"}
    assert tree["encoder"]["DownsamplingBlock_1"]["ResnetBlock_0"]["Conv_2"]["kernel"].shape == (1, 1, 16, 32)
    assert tree["decoder"]["UpsamplingBlock_0"]["Upsample_0"]["Conv_0"]["kernel"].shape == (3, 3, 96, 96)
    tok = load_vqgan(tmp_path / "vqgan.pkl", TINY)
    assert not tok.untrained and tok.identity.startswith("sha256:")
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    want = np.asarray(nnx.jit(lambda m, x: m.encode(x)[1])(model, frames.astype(np.float32) / 127.5 - 1))
    np.testing.assert_array_equal(tok.encode(frames), want)
    np.testing.assert_allclose(tok.decode(want), np.asarray(nnx.jit(lambda m, c: m.decode(c))(model, want)),
                               atol=1e-5, rtol=0)


def test_pickle_with_params_level_and_wrong_config(model, tmp_path):
    with open(tmp_path / "wrapped.pkl", "wb") as f:
        pickle.dump({"params": unflatten(model_to_lwm(model))}, f)
    params, _ = read_vqgan(tmp_path / "wrapped.pkl", TINY)
    assert len(params) == len(model_to_lwm(model))
    with pytest.raises(LWMError, match="pass the matching config"):
        read_vqgan(tmp_path / "wrapped.pkl")  # the full-size default does not fit tiny weights


def test_pickle_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"encoder": Evil()}, f)
    with pytest.raises(LWMError, match="builtins.print"):
        read_vqgan(tmp_path / "evil.pkl", TINY)


def test_convert_round_trip_through_diffusers_and_ours(model, tmp_path):
    _lwm_pickle(model, tmp_path / "a.pkl")
    assert convert_vqgan(tmp_path / "a.pkl", tmp_path / "hf", TINY) == "diffusers"
    assert convert_vqgan(tmp_path / "hf", tmp_path / "b.safetensors") == "ours"
    assert convert_vqgan(tmp_path / "b.safetensors", tmp_path / "c.pkl") == "lwm"
    original = model_to_lwm(model)
    for src in ("hf", "b.safetensors"):  # both carry their config
        params, config = read_vqgan(tmp_path / src)
        assert config == TINY
        assert all(np.array_equal(params[k], original[k]) for k in original)
    params, _ = read_vqgan(tmp_path / "c.pkl", TINY)
    assert all(np.array_equal(params[k], original[k]) for k in original)
    rebuilt = model_to_lwm(lwm_to_model(params, TINY))
    assert all(np.array_equal(rebuilt[k], original[k]) for k in original)


def test_diffusers_reads_our_diffusers_folder(model, tmp_path):
    import diffusers
    import torch
    _lwm_pickle(model, tmp_path / "a.pkl")
    convert_vqgan(tmp_path / "a.pkl", tmp_path / "hf", TINY)
    ref = diffusers.VQModel.from_pretrained(tmp_path / "hf").eval()
    x = np.random.default_rng(1).uniform(-1, 1, (1, 32, 48, 3)).astype(np.float32)
    with torch.no_grad():
        latents = ref.encode(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).latents.numpy()
    ours = np.asarray(nnx.jit(lambda m, v: m.encode_latents(v))(model, x))
    np.testing.assert_allclose(ours, latents.transpose(0, 2, 3, 1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("spec, message", [
    ("/no/such/vqgan.pkl", "VQGAN weights not found"),
    ("random:huge", "unknown VQGAN preset"),
    ("random:tiny:x", "bad random VQGAN spec"),
])
def test_load_errors_are_one_line(spec, message):
    with pytest.raises(LWMError, match=message) as info:
        load_vqgan(spec)
    assert "\n" not in str(info.value)


def test_not_a_pickle_and_foreign_safetensors(tmp_path):
    (tmp_path / "junk.pkl").write_text("hello")
    with pytest.raises(LWMError, match="not a readable VQGAN pickle"):
        load_vqgan(tmp_path / "junk.pkl")
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(LWMError, match="lwm convert"):
        load_vqgan(tmp_path / "other.safetensors")


def test_random_weights_are_labelled_and_reproducible():
    a, b = load_vqgan("random:tiny"), load_vqgan("random:tiny")
    assert a.untrained and a.identity == b.identity and a.identity.startswith("random:tiny:seed0:")
    assert load_vqgan("random:tiny:1").identity != a.identity


def test_config_invariants():
    with pytest.raises(LWMError, match="norm_num_groups"):
        VQGANConfig(hidden_channels=20)
    with pytest.raises(LWMError, match="attention-free"):
        VQGANConfig(attn_resolutions=(16,))
    assert VQGANConfig.from_dict({**VQGANConfig().to_dict(), "num_resolutions": 5}) == VQGANConfig()
    assert VQGANConfig().latent_size == 16
