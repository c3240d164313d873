"""VQGAN training on shapes frames: the loss falls, dead codes come back, the weights load as a tokenizer."""

import numpy as np
import pytest

from lwm_core.data.shapes import random_scene
from lwm_core.errors import LWMError
from lwm_core.vqgan import load_vqgan
from lwm_core.vqgan.config import VQGANConfig
from lwm_core.vqgan.model import init_vqgan
from lwm_core.vqgan.train import VQGANTrainConfig, VQGANTrainer

# Two levels, 16 x 16 frames -> 8 x 8 codes: the smallest VQGAN of the same structure (compiles fast).
TINY = VQGANConfig(resolution=16, hidden_channels=8, channel_mult=(1, 2), num_res_blocks=1, z_channels=8,
                   num_embeddings=32, quantized_embed_dim=4, norm_num_groups=4)


def test_training_lowers_reconstruction_and_revives_dead_codes(tmp_path):
    frames = np.concatenate([random_scene(seed, 4).render(16) for seed in range(100)])  # [400, 16, 16, 3]
    model = init_vqgan(TINY, seed=0)
    book = np.array(model.quantize.embeddings[...])
    book[1:] = 100.0  # every code but 0 far from any encoder output: a collapsed codebook
    model.quantize.embeddings[...] = book
    trainer = VQGANTrainer(model, VQGANTrainConfig(restart_every=25))
    state = trainer.init_state()
    rng = np.random.default_rng(0)
    history = []
    for _ in range(100):
        state, metrics = trainer.step(state, frames[rng.choice(len(frames), 16)])
        history.append(metrics)
    # each step's metrics are measured before its update, on a fresh batch
    start = history[0]["l1"] + history[0]["l2"]
    end = np.mean([m["l1"] + m["l2"] for m in history[-10:]])
    assert end < 0.25 * start, (start, end)
    assert history[0]["codes_used"] == 1  # all frames on code 0 before any restart
    assert sum(m["restarted"] for m in history) > 0
    assert min(m["codes_used"] for m in history[-10:]) > 4, [m["codes_used"] for m in history[-10:]]
    assert int(state["step"]) == 100

    # the trained weights load as a tokenizer and encode as the trained model does
    path = tmp_path / "vqgan.safetensors"
    trainer.save(state, path)
    tok = load_vqgan(path, conv="direct")
    assert tok.config == TINY
    x = frames[:8].astype(np.float32) / 127.5 - 1.0
    np.testing.assert_array_equal(tok.encode(x), np.asarray(trainer.model(state).encode(x, "direct")[1]))


def test_bad_frames_and_config_are_refused():
    trainer = VQGANTrainer(init_vqgan(TINY, seed=0))
    with pytest.raises(LWMError, match="takes 16x16"):
        trainer.step(trainer.init_state(), np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(LWMError, match=r"\[B, H, W, 3\]"):
        trainer.step(trainer.init_state(), np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(LWMError, match="learning_rate"):
        VQGANTrainConfig(learning_rate=0)


def test_lwm_tiny_preset_geometry():
    import jax

    from lwm_core.data import VisionSpec

    config = VQGANConfig.from_name("lwm-tiny")
    spec = VisionSpec.from_vqgan("lwm-tiny")
    assert (config.resolution, spec.grid, spec.num_codes) == (64, (8, 8), 512)
    model = init_vqgan(config, seed=0)
    codes = jax.eval_shape(lambda x: model.encode(x, "direct")[1], jax.ShapeDtypeStruct((2, 64, 64, 3), np.float32))
    assert codes.shape == (2, 8, 8)


def test_foreground_weight_weighs_pixels_off_the_background():
    import jax.numpy as jnp

    from lwm_core.vqgan.train import pixel_weights, vqgan_loss

    frames = np.zeros((2, 16, 16, 3), np.uint8)
    frames[0, 4:8, 4:8] = (255, 0, 0)  # 16 of 256 pixels off a black background
    frames[1] = (0, 0, 255)  # a blue background with one white 2 x 8 bar: the background is the median
    frames[1, 0:2, 0:8] = 255
    x = frames.astype(np.float32) / 127.5 - 1.0
    config = VQGANTrainConfig(foreground_weight=5.0)
    w = np.asarray(pixel_weights(jnp.asarray(x), config))[..., 0]
    off = np.zeros((2, 16, 16), bool)
    off[0, 4:8, 4:8] = off[1, 0:2, 0:8] = True
    expected = np.where(off, 5.0, 1.0)
    expected /= expected.mean(axis=(1, 2), keepdims=True)  # each frame's weights average 1
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert pixel_weights(jnp.asarray(x), VQGANTrainConfig()) is None

    model = init_vqgan(TINY, seed=0)
    _, plain = vqgan_loss(model, jnp.asarray(x), VQGANTrainConfig())
    _, weighted = vqgan_loss(model, jnp.asarray(x), config)
    z = model.encode_latents(jnp.asarray(x), "direct")
    recon = np.asarray(model.decode_quantized(model.quantize(z)[0], "direct"))
    np.testing.assert_allclose(float(plain["l1"]), np.abs(recon - x).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(weighted["l1"]), (np.abs(recon - x) * expected[..., None]).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(weighted["l2"]), (np.square(recon - x) * expected[..., None]).mean(), rtol=1e-5)
    with pytest.raises(LWMError, match="foreground weight"):
        VQGANTrainConfig(foreground_weight=0.5)
