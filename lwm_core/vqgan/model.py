"""LWM's VQGAN in Flax NNX: encoder, vector quantizer and decoder (images NHWC, kernels HWIO).

Shapes at full size: frames [N, 256, 256, 3] -> latents [N, 16, 16, 64] -> codes [N, 16, 16] ->
frames [N, 256, 256, 3]. Attribute names are readable (`conv_in`, `down`, `norm1`); `params_lwm.py`
maps them onto LWM's Flax auto-names (`Conv_0`, `DownsamplingBlock_0`, `GroupNorm_0`).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm_core.errors import LWMError
from lwm_core.vqgan import winograd
from lwm_core.vqgan.config import VQGANConfig

CONV_IMPLS = ("auto", "winograd", "direct")
# "auto" takes Winograd where it paid on a 2-core Zen 4 (`python bench/vqgan.py --convs`): inputs of
# at least 32x32 and at least 64 channels in and out (1.3-2.9x faster than lax.conv). Smaller frames
# are a few tiles that re-read the 36 transformed kernels (4x the weights) for little work (16x16,
# 768 channels: 0.6x); with fewer channels the transforms, not the matmuls, do the work (32: 1.0x).
WINOGRAD_MIN_PIXELS = 32 * 32
WINOGRAD_MIN_CHANNELS = 64


def _group_norm(channels: int, config: VQGANConfig, rngs: nnx.Rngs) -> nnx.GroupNorm:
    # eps 1e-6 as LWM and diffusers; the two-pass variance keeps parity with torch at 1e-4.
    return nnx.GroupNorm(channels, num_groups=config.norm_num_groups, epsilon=1e-6,
                         use_fast_variance=False, rngs=rngs)


def norm_silu(norm: nnx.GroupNorm, x: jax.Array) -> jax.Array:
    """silu(norm(x)) for an NHWC x, the same two-pass fp32 statistics as `nnx.GroupNorm` with
    use_fast_variance=False, written so XLA CPU reduces over H*W with channels minor (vectorised)
    and fuses normalise, affine and SiLU into one pass (nnx.GroupNorm + silu: ~1.7x slower)."""
    n, h, w, c = x.shape
    groups = norm.num_groups
    per_group = c // groups
    count = h * w * per_group
    flat = x.reshape(n, h * w, c)

    def group_mean(v):  # [N, HW, C] -> [N, 1, C]: the mean over H, W and the channel's group
        sums = jnp.sum(jnp.sum(v, axis=1).reshape(n, groups, per_group), axis=-1) / count
        return jnp.repeat(sums, per_group, axis=1)[:, None, :]

    centered = flat - group_mean(flat)
    inv = jax.lax.rsqrt(group_mean(jnp.square(centered)) + norm.epsilon)
    y = centered * inv * norm.scale[...] + norm.bias[...]
    return nnx.silu(y).reshape(x.shape)


def _conv(c_in: int, c_out: int, size: int, rngs: nnx.Rngs, **kwargs) -> nnx.Conv:
    return nnx.Conv(c_in, c_out, (size, size), rngs=rngs, **kwargs)


def check_conv_impl(conv: str) -> str:
    if conv not in CONV_IMPLS:
        raise LWMError(f"unknown VQGAN conv implementation {conv!r}; choose from {', '.join(CONV_IMPLS)}")
    return conv


def _winograd_pays(pixels: int, channels: int) -> bool:
    """The "auto" rule. Only on a CPU: there the band loop keeps the transforms in cache; a GPU's
    library convolution is another matter (and the loop's many small kernels would cost there)."""
    return (jax.default_backend() == "cpu" and pixels >= WINOGRAD_MIN_PIXELS
            and channels >= WINOGRAD_MIN_CHANNELS)


def conv3x3(layer: nnx.Conv, x: jax.Array, *, residual: jax.Array | None = None, upsample: bool = False,
            conv: str = "auto") -> jax.Array:
    """layer(x) (+ residual) for a 3x3 stride-1 SAME conv, x nearest-x2 upsampled first when
    `upsample`. conv: "direct" (lax.conv; the upsampled case as `upsample_conv`), "winograd"
    (F(4x4, 3x3) wherever the output divides into 4x4 tiles) or "auto" (on a CPU, Winograd for
    inputs of at least WINOGRAD_MIN_PIXELS and WINOGRAD_MIN_CHANNELS; elsewhere direct)."""
    kernel, bias = layer.kernel[...], layer.bias[...]
    scale = 2 if upsample else 1
    out_h, out_w = x.shape[1] * scale, x.shape[2] * scale
    use_winograd = winograd.supports(out_h, out_w) and (
        conv == "winograd" or (conv == "auto" and _winograd_pays(x.shape[1] * x.shape[2], min(kernel.shape[2:]))))
    if use_winograd:
        return winograd.winograd_conv3x3(x, kernel, bias, residual=residual, upsample=upsample)
    y = upsample_conv(x, kernel, bias) if upsample else layer(x)
    return y if residual is None else residual + y


class ResnetBlock(nnx.Module):
    """GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3, plus a 1x1 conv shortcut when widths differ."""

    def __init__(self, c_in: int, c_out: int, config: VQGANConfig, *, rngs: nnx.Rngs):
        self.norm1 = _group_norm(c_in, config, rngs)
        self.conv1 = _conv(c_in, c_out, 3, rngs)
        self.norm2 = _group_norm(c_out, config, rngs)
        self.conv2 = _conv(c_out, c_out, 3, rngs)
        self.shortcut = _conv(c_in, c_out, 1, rngs) if c_in != c_out else None

    def __call__(self, x: jax.Array, conv: str = "auto") -> jax.Array:  # [N, H, W, c_in] -> [N, H, W, c_out]
        h = conv3x3(self.conv1, norm_silu(self.norm1, x), conv=conv)
        residual = self.shortcut(x) if self.shortcut is not None else x
        return conv3x3(self.conv2, norm_silu(self.norm2, h), residual=residual, conv=conv)


class DownLevel(nnx.Module):
    """One encoder level: ResNet blocks, then (all levels but the deepest) a stride-2 conv."""

    def __init__(self, c_in: int, c_out: int, downsample: bool, config: VQGANConfig, *, rngs: nnx.Rngs):
        widths = [c_in] + [c_out] * config.num_res_blocks
        self.resnets = nnx.List([ResnetBlock(a, b, config, rngs=rngs) for a, b in itertools.pairwise(widths)])
        # LWM pads right/bottom by one, then a VALID 3x3 stride-2 conv (diffusers: padding=0 + F.pad).
        self.downsample = (_conv(c_out, c_out, 3, rngs, strides=2, padding=((0, 1), (0, 1)))
                           if downsample else None)

    def __call__(self, x: jax.Array, conv: str = "auto") -> jax.Array:  # [N, H, W, c_in] -> [N, H/2, W/2, c_out]
        for block in self.resnets:
            x = block(x, conv)
        return self.downsample(x) if self.downsample is not None else x


class UpLevel(nnx.Module):
    """One decoder level: num_res_blocks + 1 ResNet blocks, then (all but the shallowest level)
    nearest-neighbour x2 upsampling and a 3x3 conv."""

    def __init__(self, c_in: int, c_out: int, upsample: bool, config: VQGANConfig, *, rngs: nnx.Rngs):
        widths = [c_in] + [c_out] * (config.num_res_blocks + 1)
        self.resnets = nnx.List([ResnetBlock(a, b, config, rngs=rngs) for a, b in itertools.pairwise(widths)])
        self.upsample = _conv(c_out, c_out, 3, rngs) if upsample else None

    def __call__(self, x: jax.Array, conv: str = "auto") -> jax.Array:  # [N, H, W, c_in] -> [N, 2H, 2W, c_out]
        for block in self.resnets:
            x = block(x, conv)
        if self.upsample is None:
            return x
        return conv3x3(self.upsample, x, upsample=True, conv=conv)


# Row (and column) taps of a 3x3 SAME conv over a nearest-x2 upsampled image, folded onto the
# low-resolution image: output row 2i reads input rows (i-1, i, i) through kernel rows (0, 1, 2),
# row 2i+1 reads (i, i, i+1). _FOLD[a][t, k] = 1 when kernel row k lands on tap t of phase a,
# where the taps of phase a are low-res rows (i-1+a, i+a).
_FOLD = np.array([[[1, 0, 0], [0, 1, 1]],
                  [[1, 1, 0], [0, 0, 1]]], np.float32)  # [phase, tap, kernel row]


def upsample_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """conv3x3_SAME(nearest_upsample_x2(x)) without building the upsampled image.

    Each of the four output phases (row parity a, column parity b) is a 2x2 conv of x with kernel
    taps summed per _FOLD: 4 instead of 9 multiply-adds per output value and input channel.
    All four run as one 2x2 VALID conv with 4*C_out outputs over x padded by one on every side;
    phase (a, b) is that output shifted by (a, b). Same sums as the upsampled conv, with the kernel
    taps that read the same input pixel added first. [N, H, W, Ci] -> [N, 2H, 2W, Co]."""
    n, h, w, _ = x.shape
    co = kernel.shape[-1]
    fold = jnp.asarray(_FOLD)
    folded = jnp.einsum("aty,bux,yxio->tuiabo", fold, fold, kernel,
                        precision="highest").reshape(2, 2, kernel.shape[2], 4 * co)
    y = jax.lax.conv_general_dilated(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), folded, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))  # [N, H+1, W+1, 4Co]
    y = y.reshape(n, h + 1, w + 1, 2, 2, co)
    rows = [jnp.stack([y[:, a:a + h, b:b + w, a, b] for b in (0, 1)], axis=3) for a in (0, 1)]
    return (jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, co) + bias).astype(x.dtype)


class Encoder(nnx.Module):
    def __init__(self, config: VQGANConfig, *, rngs: nnx.Rngs):
        widths = config.level_channels
        self.conv_in = _conv(config.num_channels, widths[0], 3, rngs)
        ins = (widths[0],) + widths[:-1]
        last = config.num_resolutions - 1
        self.down = nnx.List([DownLevel(a, b, i != last, config, rngs=rngs)
                              for i, (a, b) in enumerate(zip(ins, widths, strict=True))])
        self.mid = nnx.List([ResnetBlock(widths[-1], widths[-1], config, rngs=rngs) for _ in range(2)])
        self.norm_out = _group_norm(widths[-1], config, rngs)
        self.conv_out = _conv(widths[-1], config.z_channels, 3, rngs)

    def __call__(self, x: jax.Array, conv: str = "auto") -> jax.Array:  # [N, H, W, 3] -> [N, H/f, W/f, z]
        x = self.conv_in(x)  # 3 input channels: direct (a Winograd matmul with K=3 is all overhead)
        for level in self.down:
            x = level(x, conv)
        for block in self.mid:
            x = block(x, conv)
        return self.conv_out(norm_silu(self.norm_out, x))


class Decoder(nnx.Module):
    """`up[0]` is the deepest, widest level (LWM's `UpsamplingBlock_0`); levels run in list order."""

    def __init__(self, config: VQGANConfig, *, rngs: nnx.Rngs):
        widths = config.level_channels[::-1]  # deepest first: (768, 512, 256, 256, 128)
        self.conv_in = _conv(config.z_channels, widths[0], 3, rngs)
        self.mid = nnx.List([ResnetBlock(widths[0], widths[0], config, rngs=rngs) for _ in range(2)])
        ins = (widths[0],) + widths[:-1]
        last = config.num_resolutions - 1
        self.up = nnx.List([UpLevel(a, b, i != last, config, rngs=rngs)
                            for i, (a, b) in enumerate(zip(ins, widths, strict=True))])
        self.norm_out = _group_norm(widths[-1], config, rngs)
        self.conv_out = _conv(widths[-1], config.num_channels, 3, rngs)

    def __call__(self, z: jax.Array, conv: str = "auto") -> jax.Array:  # [N, h, w, z] -> [N, h*f, w*f, 3], unclipped
        x = self.conv_in(z)
        for block in self.mid:
            x = block(x, conv)
        for level in self.up:
            x = level(x, conv)
        return self.conv_out(norm_silu(self.norm_out, x))  # 3 output channels: direct


class VectorQuantizer(nnx.Module):
    """Nearest codebook entry by squared L2 distance."""

    def __init__(self, config: VQGANConfig, *, rngs: nnx.Rngs):
        k, d = config.num_embeddings, config.quantized_embed_dim
        self.embeddings = nnx.Param(jax.random.uniform(rngs.params(), (k, d), minval=-1.0 / k, maxval=1.0 / k))

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """z [N, h, w, D] -> (quantized [N, h, w, D], indices [N, h, w] int32)."""
        codebook = self.embeddings[...]  # [K, D]
        # |z - e|^2 = |z|^2 - 2 z.e + |e|^2; |z|^2 is constant per position and does not change argmin
        # but is kept so the distances are the true ones (ties resolve to the lowest index, as torch).
        dist = (jnp.sum(z * z, axis=-1, keepdims=True)
                - 2.0 * jnp.einsum("nhwd,kd->nhwk", z, codebook, precision="highest")
                + jnp.sum(codebook * codebook, axis=-1))  # [N, h, w, K]
        indices = jnp.argmin(dist, axis=-1).astype(jnp.int32)
        return self.lookup(indices), indices

    def lookup(self, indices: jax.Array) -> jax.Array:  # [N, h, w] -> [N, h, w, D]
        return jnp.take(self.embeddings[...], indices, axis=0)


class VQGAN(nnx.Module):
    """frames in [-1, 1] [N, H, W, 3] <-> codes [N, H/f, W/f] with f = 2 ** (levels - 1)."""

    def __init__(self, config: VQGANConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = Encoder(config, rngs=rngs)
        self.quant_conv = _conv(config.z_channels, config.quantized_embed_dim, 1, rngs)
        self.quantize = VectorQuantizer(config, rngs=rngs)
        self.post_quant_conv = _conv(config.quantized_embed_dim, config.z_channels, 1, rngs)
        self.decoder = Decoder(config, rngs=rngs)

    # `conv` picks the 3x3 convolution algorithm (see `conv3x3`); all give the same function up to
    # fp32 rounding (Winograd: ~1e-5 relative, see winograd.py).

    def encode_latents(self, frames: jax.Array, conv: str = "auto") -> jax.Array:  # [N, H, W, 3] -> [N, h, w, D]
        """Encoder + quant_conv: what diffusers' `VQModel.encode` returns (before quantisation)."""
        return self.quant_conv(self.encoder(frames, check_conv_impl(conv)))

    def encode(self, frames: jax.Array, conv: str = "auto") -> tuple[jax.Array, jax.Array]:
        """frames [N, H, W, 3] in [-1, 1] -> (quantized [N, h, w, D], indices [N, h, w] int32)."""
        return self.quantize(self.encode_latents(frames, conv))

    def decode_quantized(self, quantized: jax.Array, conv: str = "auto") -> jax.Array:  # [N, h, w, D] -> [N, H, W, 3]
        """post_quant_conv + decoder, not clipped (what diffusers' `VQModel.decode` returns)."""
        return self.decoder(self.post_quant_conv(quantized), check_conv_impl(conv))

    def decode(self, indices: jax.Array, conv: str = "auto") -> jax.Array:  # [N, h, w] int -> [N, H, W, 3]
        return jnp.clip(self.decode_quantized(self.quantize.lookup(indices), conv), -1.0, 1.0)


def init_vqgan(config: VQGANConfig, seed: int = 0) -> VQGAN:
    """Random weights drawn with numpy into the abstract model: LeCun-normal kernels, zero biases,
    unit norm scales, codebook uniform in +-1/K. (Flax's own init runs op by op, which on CPU costs
    a compile per parameter shape: tens of seconds even for the tiny preset.)"""
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: VQGAN(config, rngs=nnx.Rngs(seed))))
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        shape, name = var.get_value().shape, path[-1]
        if name == "kernel":
            value = rng.standard_normal(shape, np.float32) / np.sqrt(np.prod(shape[:-1]))
        elif name == "embeddings":
            k = config.num_embeddings
            value = rng.uniform(-1.0 / k, 1.0 / k, shape).astype(np.float32)
        else:
            value = np.ones(shape, np.float32) if name == "scale" else np.zeros(shape, np.float32)
        var.set_value(jnp.asarray(value))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
