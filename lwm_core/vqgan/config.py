"""VQGAN configuration: one frozen dataclass with LWM's field names and named presets.

LWM's `VQGANModel` config fields are kept (resolution, num_channels, hidden_channels, channel_mult,
num_res_blocks, z_channels, num_embeddings, quantized_embed_dim, ...). `norm_num_groups` is ours:
LWM hard-codes GroupNorm(32); the field exists so a tiny preset can use few channels.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from lwm_core.errors import LWMError


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
    """Architecture of LWM's VQGAN. The defaults are the full-size published tokenizer:
    256x256 RGB -> 16x16 codes from 8192 entries of dim 64.

    Example: `VQGANConfig()`, `VQGANConfig.from_name("tiny")`.
    """

    resolution: int = 256  # frames are preprocessed to resolution x resolution
    num_channels: int = 3
    hidden_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 4, 6)
    num_res_blocks: int = 2  # per encoder level; the decoder has one more per level
    z_channels: int = 64  # encoder output / decoder input channels
    num_embeddings: int = 8192  # codebook size
    quantized_embed_dim: int = 64  # codebook vector size
    norm_num_groups: int = 32
    # LWM fields that only have one supported value here (its VQGAN uses no attention).
    attn_resolutions: tuple[int, ...] = ()
    no_attn_mid_block: bool = True
    resample_with_conv: bool = True
    dropout: float = 0.0
    commitment_cost: float = 0.25

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        for name in ("resolution", "num_channels", "hidden_channels", "num_res_blocks", "z_channels",
                     "num_embeddings", "quantized_embed_dim", "norm_num_groups"):
            if getattr(self, name) <= 0:
                raise LWMError(f"VQGANConfig.{name} must be positive, got {getattr(self, name)}")
        if not self.channel_mult or min(self.channel_mult) <= 0:
            raise LWMError(f"VQGANConfig.channel_mult must be positive integers, got {self.channel_mult}")
        for width in self.level_channels:
            if width % self.norm_num_groups:
                raise LWMError(f"channel width {width} must divide by norm_num_groups {self.norm_num_groups}")
        if self.resolution % self.downsample_factor:
            raise LWMError(f"resolution {self.resolution} must divide by the downsample factor "
                           f"{self.downsample_factor}")
        if self.num_embeddings > 65536:
            raise LWMError("num_embeddings must fit uint16 token files (<= 65536)")
        if self.attn_resolutions or not self.no_attn_mid_block or not self.resample_with_conv:
            raise LWMError("only LWM's attention-free VQGAN with conv resampling is supported "
                           "(attn_resolutions=(), no_attn_mid_block=True, resample_with_conv=True)")

    @property
    def num_resolutions(self) -> int:
        return len(self.channel_mult)

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Channel width of each level, shallowest first: (128, 256, 256, 512, 768) at full size."""
        return tuple(self.hidden_channels * m for m in self.channel_mult)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (self.num_resolutions - 1)

    @property
    def latent_size(self) -> int:
        """Codes per side for a `resolution` frame (16 at full size)."""
        return self.resolution // self.downsample_factor

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> VQGANConfig:
        """A preset: 'full' (LWM's published tokenizer), 'tiny' (for tests, same structure) or
        'lwm-tiny' (64x64 frames, 8x8 codes: the shapes world's tokenizer)."""
        key = name.lower()
        if key not in PRESETS:
            raise LWMError(f"unknown VQGAN preset {name!r}; choose from {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[key], **overrides)

    def replace(self, **changes: Any) -> VQGANConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["channel_mult"] = list(self.channel_mult)
        data["attn_resolutions"] = list(self.attn_resolutions)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VQGANConfig:
        """Accepts LWM's config dict too (its derived `num_resolutions` is checked, not stored)."""
        data = dict(data)
        num_resolutions = data.pop("num_resolutions", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LWMError(f"unknown VQGANConfig fields {unknown}")
        config = cls(**data)
        if num_resolutions is not None and num_resolutions != config.num_resolutions:
            raise LWMError(f"num_resolutions {num_resolutions} does not match channel_mult "
                           f"{config.channel_mult}")
        return config

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VQGANConfig:
        return cls.from_dict(json.loads(text))


PRESETS: dict[str, VQGANConfig] = {
    "full": VQGANConfig(),
    # Same five levels and block counts; widths 16..96, 64x64 frames -> 4x4 codes.
    "tiny": VQGANConfig(resolution=64, hidden_channels=16, z_channels=16, num_embeddings=512,
                        quantized_embed_dim=8, norm_num_groups=8),
    # lwm-tiny's tokenizer for the shapes world: four levels, 64x64 frames -> 8x8 = 64 codes from 512.
    # Trains on a 2-core CPU: 0.6-0.75 CPU-seconds a step at batch 16 (lwm_core.vqgan.train).
    "lwm-tiny": VQGANConfig(resolution=64, hidden_channels=16, channel_mult=(1, 2, 2, 4), num_res_blocks=1,
                            z_channels=32, num_embeddings=512, quantized_embed_dim=16, norm_num_groups=8),
}
