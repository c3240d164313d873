"""Training a (small) VQGAN: reconstruction plus codebook and commitment losses, straight-through.

    trainer = VQGANTrainer(init_vqgan(VQGANConfig.from_name("lwm-tiny")), VQGANTrainConfig())
    state = trainer.init_state()
    for frames in batches:                       # [B, H, W, 3] uint8, or floats in [-1, 1]
        state, metrics = trainer.step(state, frames)
    trainer.save(state, "vqgan.safetensors")     # any format `write_vqgan` writes; loads with load_vqgan

The loss of one batch x (VQ-VAE, van den Oord et al. 2017; LWM's VQGAN was trained the same way
plus a GAN and perceptual term, which a world of flat shapes does not need):

    z   = quant_conv(encoder(x))                  # [B, h, w, D]
    e   = nearest codebook entry of each z        # [B, h, w, D]
    x^  = decoder(post_quant_conv(z + sg(e - z))) # straight-through: decoder gradients reach z as is
    loss = l1 |x^ - x| + l2 (x^ - x)^2 + codebook |sg(z) - e|^2 + beta |z - sg(e)|^2

(means over all elements; beta is the config's commitment_cost, 0.25). With `foreground_weight` W > 1
the two reconstruction terms are weighted means instead: a pixel that differs from its frame's
background (the per-channel median of the frame) by more than `foreground_threshold` in any channel
weighs W, the others 1. On frames that are mostly a flat background (the shapes world, screen
recordings) the plain mean is nearly all background, so the codes learn the objects' colours poorly.

A small codebook trained this way strands entries that no encoder output is near ("dead codes");
every `restart_every` steps the entries whose running usage fell below `dead_usage` of a uniform
share are moved onto encoder outputs of the current batch (as in Jukebox / SoundStream), so the
codebook stays in use.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lwm_core.errors import LWMError
from lwm_core.vqgan.model import VQGAN, check_conv_impl
from lwm_core.vqgan.params_lwm import lwm_to_model, model_to_lwm


@dataclasses.dataclass(frozen=True)
class VQGANTrainConfig:
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    b1: float = 0.9
    b2: float = 0.99
    grad_clip: float = 1.0  # global norm
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    codebook_weight: float = 1.0
    commitment_cost: float | None = None  # None: the VQGAN config's (0.25)
    restart_every: int = 25  # 0: never restart dead codes
    dead_usage: float = 0.03  # a code is dead below this fraction of the uniform usage 1/K
    usage_decay: float = 0.9  # running usage: decay * old + (1 - decay) * this batch's share
    conv: str = "direct"  # 3x3 conv algorithm (see model.conv3x3); direct differentiates plainly
    seed: int = 0
    foreground_weight: float = 1.0  # reconstruction weight of pixels off the frame's background (1: plain mean)
    foreground_threshold: float = 0.1  # in [-1, 1] units (0.1 = 12.75 of 255)

    def __post_init__(self):
        if self.learning_rate <= 0 or self.warmup_steps < 0 or self.restart_every < 0:
            raise LWMError("learning_rate must be positive, warmup_steps and restart_every >= 0")
        if not 0 <= self.usage_decay < 1 or self.dead_usage < 0:
            raise LWMError("usage_decay must be in [0, 1) and dead_usage >= 0")
        if self.foreground_weight < 1 or self.foreground_threshold <= 0:
            raise LWMError(f"the foreground weight must be at least 1 (got {self.foreground_weight}) and its "
                           f"threshold positive (got {self.foreground_threshold})")
        check_conv_impl(self.conv)


def as_model_input(frames) -> np.ndarray:
    """uint8 frames -> floats in [-1, 1] (LWM's x / 127.5 - 1); float frames pass as they are."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise LWMError(f"VQGAN training frames must be [B, H, W, 3], got {frames.shape}")
    if frames.dtype == np.uint8:
        return frames.astype(np.float32) / 127.5 - 1.0
    return frames.astype(np.float32)


def vqgan_loss(model: VQGAN, x: jax.Array, config: VQGANTrainConfig) -> tuple[jax.Array, dict]:
    """(loss, aux) for frames x [B, H, W, 3] in [-1, 1]; aux holds the loss terms, the codes
    [B, h, w] and the encoder outputs z [B, h, w, D]."""
    beta = model.config.commitment_cost if config.commitment_cost is None else config.commitment_cost
    z = model.encode_latents(x, config.conv)  # [B, h, w, D]
    e, codes = model.quantize(z)  # [B, h, w, D], [B, h, w]
    codebook = jnp.mean(jnp.square(jax.lax.stop_gradient(z) - e))
    commitment = jnp.mean(jnp.square(z - jax.lax.stop_gradient(e)))
    recon = model.decode_quantized(z + jax.lax.stop_gradient(e - z), config.conv)  # [B, H, W, 3]
    weights = pixel_weights(x, config)  # [B, H, W, 1] summing to H * W per frame, or None
    mean = jnp.mean if weights is None else (lambda err: jnp.mean(err * weights))
    l1 = mean(jnp.abs(recon - x))
    l2 = mean(jnp.square(recon - x))
    loss = config.l1_weight * l1 + config.l2_weight * l2 + config.codebook_weight * codebook + beta * commitment
    return loss, {"l1": l1, "l2": l2, "codebook": codebook, "commitment": commitment, "codes": codes, "z": z}


def pixel_weights(x: jax.Array, config: VQGANTrainConfig) -> jax.Array | None:
    """Reconstruction weights [B, H, W, 1] for frames x [B, H, W, 3]: `foreground_weight` off the
    frame's background (its per-channel median), 1 on it, scaled so each frame's weights average 1
    (a frame's loss stays a mean, whatever share of it is foreground). None when the weight is 1."""
    if config.foreground_weight == 1.0:
        return None
    b, h, w, c = x.shape
    background = jnp.median(x.reshape(b, h * w, c), axis=1)[:, None, None, :]  # [B, 1, 1, 3]
    off = jnp.max(jnp.abs(x - background), axis=-1, keepdims=True) > config.foreground_threshold
    weights = jnp.where(off, config.foreground_weight, 1.0)
    return weights / jnp.mean(weights, axis=(1, 2, 3), keepdims=True)


class VQGANTrainer:
    """The optimizer (AdamW without decay, warmup then constant, clipped) and the compiled step for
    one VQGAN architecture. The state is a dict of arrays: params (the model's pure dict), opt_state,
    usage [K] (running share of each code), step, rng."""

    def __init__(self, model: VQGAN, config: VQGANTrainConfig | None = None):
        self.config = config or VQGANTrainConfig()
        self.vqgan_config = model.config
        self.graphdef, params = nnx.split(model)
        self._params = nnx.to_pure_dict(params)
        schedule = optax.linear_schedule(0.0, self.config.learning_rate, max(self.config.warmup_steps, 1))
        if self.config.warmup_steps == 0:
            schedule = optax.constant_schedule(self.config.learning_rate)
        self.optimizer = optax.chain(optax.clip_by_global_norm(self.config.grad_clip),
                                     optax.adam(schedule, b1=self.config.b1, b2=self.config.b2))
        self._step = jax.jit(self._train_step, donate_argnums=0)
        self._eval = jax.jit(self._eval_step)

    def init_state(self) -> dict:
        k = self.vqgan_config.num_embeddings
        params = jax.tree.map(jnp.array, self._params)  # copies: the step donates its state
        return {"params": params, "opt_state": self.optimizer.init(params),
                "usage": jnp.full((k,), 1.0 / k, jnp.float32), "step": jnp.int32(0),
                "rng": jax.random.key_data(jax.random.key(self.config.seed))}

    def model(self, state: dict) -> VQGAN:
        return nnx.merge(self.graphdef, state["params"])

    def step(self, state: dict, frames) -> tuple[dict, dict[str, float]]:
        """One optimizer step on frames [B, H, W, 3] (uint8, or [-1, 1] floats) at the config's
        resolution. Metrics: loss, l1, l2, codebook, commitment, codes_used (distinct codes in the
        batch), perplexity (exp of the batch's code entropy), restarted (codes moved this step)."""
        x = as_model_input(frames)
        size = self.vqgan_config.resolution
        if x.shape[1:3] != (size, size):
            raise LWMError(f"frames are {x.shape[1]}x{x.shape[2]} but this VQGAN takes {size}x{size}; "
                           "preprocess them (lwm_core.video.preprocess_frames)")
        state, metrics = self._step(state, jnp.asarray(x))
        return state, {k: float(v) for k, v in metrics.items()}

    def evaluate(self, state: dict, frames) -> dict[str, float]:
        """The loss terms and code usage on frames, without a step."""
        return {k: float(v) for k, v in self._eval(state["params"], jnp.asarray(as_model_input(frames))).items()}

    def _loss(self, params, x):
        return vqgan_loss(nnx.merge(self.graphdef, params), x, self.config)

    def _eval_step(self, params, x):
        loss, aux = self._loss(params, x)
        return {"loss": loss, **_terms(aux), **_usage_metrics(aux["codes"], self.vqgan_config.num_embeddings)}

    def _train_step(self, state, x):
        cfg, k = self.config, self.vqgan_config.num_embeddings
        (loss, aux), grads = jax.value_and_grad(self._loss, has_aux=True)(state["params"], x)
        updates, opt_state = self.optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        share = jnp.bincount(aux["codes"].reshape(-1), length=k) / aux["codes"].size  # [K]
        usage = cfg.usage_decay * state["usage"] + (1 - cfg.usage_decay) * share
        step = state["step"] + 1
        rng, pick = jax.random.split(jax.random.wrap_key_data(state["rng"]))
        restarted = jnp.int32(0)
        if cfg.restart_every:
            dead = (usage < cfg.dead_usage / k) & (step % cfg.restart_every == 0)  # [K]
            z = jax.lax.stop_gradient(aux["z"]).reshape(-1, aux["z"].shape[-1])  # [B*h*w, D]
            fresh = z[jax.random.randint(pick, (k,), 0, z.shape[0])]  # [K, D]
            book = params["quantize"]["embeddings"]
            params = {**params, "quantize": {"embeddings": jnp.where(dead[:, None], fresh, book)}}
            usage = jnp.where(dead, 1.0 / k, usage)  # a restarted code gets a fresh chance
            restarted = dead.sum().astype(jnp.int32)
        state = {"params": params, "opt_state": opt_state, "usage": usage, "step": step,
                 "rng": jax.random.key_data(rng)}
        return state, {"loss": loss, **_terms(aux), **_usage_metrics(aux["codes"], k), "restarted": restarted}

    def save(self, state: dict, dst: str | os.PathLike, fmt: str | None = None) -> str:
        """Write the weights with `write_vqgan` (.safetensors: ours, with the config; .pkl: LWM's
        pickle; a folder: diffusers). Returns the format written."""
        from lwm_core.vqgan.io import write_vqgan

        return write_vqgan(model_to_lwm(self.model(state)), self.vqgan_config, dst, fmt)

    @staticmethod
    def from_lwm_params(params: dict[str, np.ndarray], vqgan_config, config: VQGANTrainConfig | None = None
                        ) -> VQGANTrainer:
        """A trainer starting from read_vqgan's (params, config): fine-tuning a VQGAN on new frames."""
        return VQGANTrainer(lwm_to_model(params, vqgan_config), config)


def _terms(aux: dict) -> dict:
    return {name: aux[name] for name in ("l1", "l2", "codebook", "commitment")}


def _usage_metrics(codes: jax.Array, k: int) -> dict:
    share = jnp.bincount(codes.reshape(-1), length=k) / codes.size  # [K]
    entropy = -jnp.sum(jnp.where(share > 0, share * jnp.log(jnp.maximum(share, 1e-12)), 0.0))
    return {"codes_used": jnp.sum(share > 0).astype(jnp.int32), "perplexity": jnp.exp(entropy)}


# ---------------------------------------------------------------- a whole run (`lwm train --stage vqgan`)
def read_training_frames(sources, resolution: int, *, max_frames_per_clip: int | None = None,
                         progress=None) -> np.ndarray:
    """Every frame of the videos and images in `sources` (files, folders, .txt lists as
    `lwm tokenize-video` takes them), preprocessed as LWM reads frames (short side resized, centre
    crop) at `resolution`: uint8 [N, resolution, resolution, 3]. `progress(done, total)` per file."""
    from lwm_core.video import load_media, preprocess_frames, to_uint8
    from lwm_core.vqgan.pipeline import expand_inputs

    files = [f for f, _ in expand_inputs(sources)]
    parts = []
    for i, path in enumerate(files):
        frames = load_media(path, max_n_frames=max_frames_per_clip).frames
        parts.append(to_uint8(preprocess_frames(frames, resolution)))
        if progress:
            progress(i + 1, len(files))
    return np.concatenate(parts)


def train_vqgan(sources, out: str | os.PathLike, *, vqgan_config=None, init: str | None = None,
                config: VQGANTrainConfig | None = None, steps: int = 1000, batch_size: int = 16,
                log_every: int = 25, save_every: int = 500, max_frames_per_clip: int | None = None,
                on_read=None, on_step=None) -> dict:
    """Train (or with `init`, fine-tune) a VQGAN on the frames of `sources`; writes the weights to
    `out` (any `write_vqgan` format by its name) every `save_every` steps and at the end, each write
    atomic, and one JSON line of metrics per `log_every` steps to `<out>.metrics.jsonl`.

    Batches are drawn without replacement from the frames (a fresh shuffle per epoch, seeded). A
    held-out share of the frames (1/50, at most 256) measures the result: returns its loss terms,
    the pixel accuracy of the round trip (share of pixels within 32 of the input in every channel)
    and the codes it uses, with the wall time."""
    import json
    import time
    from pathlib import Path

    from lwm_core.vqgan.config import VQGANConfig
    from lwm_core.vqgan.io import read_vqgan
    from lwm_core.vqgan.model import init_vqgan

    config = config or VQGANTrainConfig()
    if steps < 1 or batch_size < 1 or log_every < 1 or save_every < 1:
        raise LWMError("steps, batch size, log interval and save interval must be at least 1")
    if init is not None:
        params, vq_config = read_vqgan(init, VQGANConfig.from_name(vqgan_config) if isinstance(vqgan_config, str)
                                       else vqgan_config)
        trainer = VQGANTrainer.from_lwm_params(params, vq_config, config)
    else:
        vq_config = vqgan_config if isinstance(vqgan_config, VQGANConfig) else (
            VQGANConfig.from_name(vqgan_config) if vqgan_config else VQGANConfig())
        trainer = VQGANTrainer(init_vqgan(vq_config, seed=config.seed), config)
    started = time.perf_counter()
    frames = read_training_frames(sources, vq_config.resolution, max_frames_per_clip=max_frames_per_clip,
                                  progress=on_read)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(frames))
    held = min(256, len(frames) // 50)
    test, train = frames[order[:held]], frames[order[held:]]
    if len(train) < batch_size:
        raise LWMError(f"{len(train)} training frames are fewer than one batch of {batch_size}; add data or "
                       "lower --batch-size")
    out = Path(out)
    metrics_path = out.with_name(out.name + ".metrics.jsonl")
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    state = trainer.init_state()
    perm, pos = rng.permutation(len(train)), 0
    with open(metrics_path, "w") as log:
        for step in range(1, steps + 1):
            if pos + batch_size > len(perm):
                perm, pos = rng.permutation(len(train)), 0
            state, metrics = trainer.step(state, train[perm[pos:pos + batch_size]])
            pos += batch_size
            if step % log_every == 0 or step == steps:
                log.write(json.dumps({"step": step, **metrics, "wall_s": time.perf_counter() - started}) + "\n")
                log.flush()
            if step % save_every == 0 and step != steps:
                trainer.save(state, out)
            if on_step:
                on_step(step, metrics)
    trainer.save(state, out)
    result = {"frames": len(frames), "train_frames": len(train), "held_out_frames": held, "steps": steps,
              "batch_size": batch_size, "wall_s": time.perf_counter() - started}
    if held:
        result.update({f"held_out_{k}": v for k, v in trainer.evaluate(state, test).items()})
        result["held_out_pixel_accuracy"] = round_trip_accuracy(trainer.model(state), test, config.conv)
    return result


def round_trip_accuracy(model: VQGAN, frames: np.ndarray, conv: str = "direct", batch: int = 64) -> float:
    """Share of pixels whose every channel comes back within 32 (of 255) after encode -> decode."""
    good = total = 0
    for i in range(0, len(frames), batch):
        x = jnp.asarray(as_model_input(frames[i:i + batch]))
        z = model.encode_latents(x, conv)
        e, _ = model.quantize(z)
        recon = np.asarray(model.decode_quantized(e, conv))
        back = np.clip(np.round((recon + 1) * 127.5), 0, 255)
        good += int((np.abs(back - frames[i:i + batch].astype(np.float32)) <= 32).all(-1).sum())
        total += frames[i:i + batch].shape[0] * frames.shape[1] * frames.shape[2]
    return good / max(total, 1)
