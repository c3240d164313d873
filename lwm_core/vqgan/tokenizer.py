"""The VQGAN as a frame tokenizer: jitted, batched over frames, chunked for long videos.

`load_vqgan` returns a `VQGANTokenizer`; `encode(frames) -> codes`, `decode(codes) -> frames`. Frames
go through the network `batch_size` at a time, so a long video never holds every frame's
activations at once; a short last chunk is padded to a power of two so only a few shapes compile.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm_core.config import RANDOM_PREFIX
from lwm_core.errors import LWMError
from lwm_core.vqgan.config import VQGANConfig
from lwm_core.vqgan.io import read_vqgan
from lwm_core.vqgan.model import VQGAN, check_conv_impl, init_vqgan
from lwm_core.vqgan.params_lwm import lwm_to_model, model_to_lwm, params_digest

# XLA CPU hands convolutions and dots to YNNPACK by default (jaxlib 0.10); for this network its
# Eigen path is faster (a 256x256x128 3x3 conv: 0.43 s vs 0.52 s; the Winograd matmuls: ~230 vs
# ~85 GFLOP/s). Asked per compilation, so nothing else in the process changes.
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
_compiler_options: dict[str, str] | None = None


def compiler_options() -> dict[str, str]:
    """_CPU_OPTIONS when the default backend is a CPU whose XLA knows them, else {}."""
    global _compiler_options
    if _compiler_options is None:
        _compiler_options = {}
        if jax.default_backend() == "cpu":
            try:  # an XLA without the option rejects it at compile time
                jax.jit(lambda x: x + 1, compiler_options=_CPU_OPTIONS).lower(jnp.zeros(1)).compile()
                _compiler_options = dict(_CPU_OPTIONS)
            except Exception:  # any rejection means: compile with the defaults
                pass
    return _compiler_options


def _bucket(n: int, batch_size: int) -> int:
    """Smallest power of two >= n, capped at batch_size."""
    return min(batch_size, 1 << max(0, (n - 1).bit_length()))


class VQGANTokenizer:
    """Frames <-> codes with one VQGAN.

    `identity` names the weights (a content hash, or `random:<preset>:seed<k>:<hash>` for untrained
    ones) and is written into token files so training can check it uses the matching tokenizer.
    `conv` picks the 3x3 convolution algorithm: "auto" (Winograd where it is faster), "winograd" or
    "direct" (lax.conv); see `lwm_core.vqgan.model.conv3x3`.
    """

    def __init__(self, model: VQGAN, *, identity: str, source: str, untrained: bool = False,
                 batch_size: int = 8, conv: str = "auto"):
        if batch_size <= 0:
            raise LWMError(f"batch_size must be positive, got {batch_size}")
        self.conv = check_conv_impl(conv)
        self.model = model
        self.config: VQGANConfig = model.config
        self.identity = identity
        self.source = source
        self.untrained = untrained
        self.batch_size = batch_size
        graphdef, state = nnx.split(model)
        self._state = state
        options = compiler_options()
        self._encode = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode(x, conv)[1],  # [B,H,W,3] -> [B,h,w]
                               compiler_options=options)
        self._decode = jax.jit(lambda s, c: nnx.merge(graphdef, s).decode(c, conv),  # [B,h,w] -> [B,H,W,3]
                               compiler_options=options)

    def _check_frames(self, frames: np.ndarray) -> None:
        if frames.ndim != 4 or frames.shape[-1] != self.config.num_channels:
            raise LWMError(f"frames must be [N, H, W, {self.config.num_channels}], got {frames.shape}")
        f = self.config.downsample_factor
        if frames.shape[1] % f or frames.shape[2] % f:
            raise LWMError(f"frame size {frames.shape[1]}x{frames.shape[2]} must divide by {f}")

    def _chunked(self, fn, items: np.ndarray, pad_value) -> list[np.ndarray]:
        out = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            n = len(chunk)
            size = _bucket(n, self.batch_size)
            if size != n:
                pad = np.full((size - n,) + chunk.shape[1:], pad_value, dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            out.append(np.asarray(fn(self._state, jnp.asarray(chunk)))[:n])
        return out

    def encode(self, frames) -> np.ndarray:
        """frames [N, H, W, 3] (uint8, or float in [-1, 1]) -> codes [N, H/f, W/f] int32 (f = 16)."""
        frames = np.asarray(frames)
        self._check_frames(frames)
        if frames.dtype == np.uint8:
            frames = frames.astype(np.float32) / 127.5 - 1.0
        frames = frames.astype(np.float32, copy=False)
        if len(frames) == 0:
            f = self.config.downsample_factor
            return np.zeros((0, frames.shape[1] // f, frames.shape[2] // f), np.int32)
        return np.concatenate(self._chunked(self._encode, frames, 0.0))

    def decode(self, codes) -> np.ndarray:
        """codes [N, h, w] -> frames [N, h*f, w*f, 3] float32 in [-1, 1]."""
        codes = np.asarray(codes)
        if codes.ndim != 3:
            raise LWMError(f"codes must be [N, h, w], got shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.config.num_embeddings):
            raise LWMError(f"codes must lie in [0, {self.config.num_embeddings}), got "
                           f"[{codes.min()}, {codes.max()}]; was another VQGAN used?")
        codes = codes.astype(np.int32)
        if len(codes) == 0:
            f = self.config.downsample_factor
            return np.zeros((0, codes.shape[1] * f, codes.shape[2] * f, 3), np.float32)
        return np.concatenate(self._chunked(self._decode, codes, 0))


def load_vqgan(path_or_preset: str | os.PathLike, config: VQGANConfig | None = None, *,
               batch_size: int = 8, conv: str = "auto") -> VQGANTokenizer:
    """A ready tokenizer from weights or, explicitly, random untrained weights.

    `path_or_preset`: a LWM pickle, a diffusers VQModel folder, our .safetensors, or
    'random:tiny' / 'random:full' (optionally ':<seed>') for UNTRAINED random weights.
    The config comes from the checkpoint when it carries one, else `config`, else the full default.
    """
    spec = os.fspath(path_or_preset)
    if spec.startswith(RANDOM_PREFIX):
        preset, _, seed_text = spec[len(RANDOM_PREFIX):].partition(":")
        try:
            seed = int(seed_text or 0)
        except ValueError:
            raise LWMError(f"bad random VQGAN spec {spec!r}; use random:<preset>[:<seed>]") from None
        config = config or VQGANConfig.from_name(preset or "full")
        model = init_vqgan(config, seed)
        identity = f"random:{preset}:seed{seed}:{params_digest(model_to_lwm(model))}"
        return VQGANTokenizer(model, identity=identity, source=spec, untrained=True, batch_size=batch_size,
                              conv=conv)
    params, config = read_vqgan(spec, config)
    model = lwm_to_model(params, config)
    return VQGANTokenizer(model, identity=f"sha256:{params_digest(params)}", source=spec,
                          batch_size=batch_size, conv=conv)
