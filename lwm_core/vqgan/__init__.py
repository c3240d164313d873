"""LWM's VQGAN image/video tokenizer (Flax NNX) and its weight formats.

    tok = load_vqgan("vqgan.pkl")            # or a diffusers folder, our .safetensors, 'random:tiny'
    codes = tok.encode(frames)               # [N, 256, 256, 3] uint8 or [-1, 1] -> [N, 16, 16] int32
    frames = tok.decode(codes)               # -> [N, 256, 256, 3] float32 in [-1, 1]
    convert_vqgan("vqgan.pkl", "vqgan_diffusers/")
"""

from lwm_core.vqgan.config import PRESETS, VQGANConfig
from lwm_core.vqgan.io import convert_vqgan, detect_format, read_vqgan, write_vqgan
from lwm_core.vqgan.model import VQGAN
from lwm_core.vqgan.tokenizer import VQGANTokenizer, load_vqgan

__all__ = ["PRESETS", "VQGAN", "VQGANConfig", "VQGANTokenizer", "convert_vqgan", "detect_format",
           "load_vqgan", "read_vqgan", "write_vqgan"]
