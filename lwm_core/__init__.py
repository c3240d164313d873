"""lwm_core: the library behind the `lwm` command.

The public API is the names below; `from lwm_core import load_model` works without importing
the heavy pieces (VQGAN, video I/O) that a caller does not use.
"""

from __future__ import annotations

import importlib

# public name -> module that defines it
_EXPORTS = {
    "LWMError": "lwm_core.errors",
    "ModelConfig": "lwm_core.config",
    "LWMModel": "lwm_core.model",
    "KVCache": "lwm_core.cache",
    "init_cache": "lwm_core.cache",
    "bucket_length": "lwm_core.cache",
    "Sampler": "lwm_core.infer",
    "SamplingSettings": "lwm_core.infer",
    "ForcedTokens": "lwm_core.infer",
    "GenerationSettings": "lwm_core.infer",
    "plan_generation": "lwm_core.infer",
    "generate_vision": "lwm_core.infer",
    "write_generation": "lwm_core.infer",
    "Asker": "lwm_core.infer",
    "load_model": "lwm_core.loading",
    "load_params": "lwm_core.checkpoint",
    "save_params": "lwm_core.checkpoint",
    "make_mesh": "lwm_core.mesh",
    "plan_layout": "lwm_core.layout",
    "VQGANConfig": "lwm_core.vqgan",
    "load_vqgan": "lwm_core.vqgan",
    "read_video": "lwm_core.video",
    "frames_to_vision_tokens": "lwm_core.vision_tokens",
    "load_tokenizer": "lwm_core.text",
    "Tokenizer": "lwm_core.text",
    "NeedleSettings": "lwm_core.evals",
    "run_needle": "lwm_core.evals",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lwm_core' has no attribute {name!r}")


def __dir__():
    return __all__
