"""Hugging Face LLaMA `config.json` <-> `ModelConfig`.

transformers 5 keeps RoPE's base in `rope_parameters['rope_theta']`, older versions in `rope_theta`;
we read both and write both so either version loads our folders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError

# HF name -> ModelConfig name, for the fields that map one to one.
_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "max_position_embeddings": "max_sequence_length",
    "rms_norm_eps": "rms_norm_eps",
    "initializer_range": "initializer_range",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
}


def _rope_theta(hf: dict[str, Any], source: str) -> float | None:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise LWMError(f"{source} uses RoPE scaling {rope_type!r}; LWM models use plain RoPE")
    theta = rope.get("rope_theta", hf.get("rope_theta"))
    return None if theta is None else float(theta)


def config_from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
    """ModelConfig from a parsed HF LLaMA config.json; refuses what LWM's architecture cannot run."""
    if hf.get("model_type", "llama") != "llama":
        raise LWMError(f"{source} is a {hf.get('model_type')!r} model; only LLaMA checkpoints are supported")
    heads = hf.get("num_attention_heads")
    kv_heads = hf.get("num_key_value_heads", heads)
    if kv_heads != heads:
        raise LWMError(f"{source} uses grouped-query attention ({kv_heads} key/value heads for {heads} "
                       "heads); LWM models have none")
    if hf.get("tie_word_embeddings", False):
        raise LWMError(f"{source} ties lm_head to the embeddings; LWM models keep them separate")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise LWMError(f"{source} has biases; LWM models have none")
    if hf.get("hidden_act", "silu") != "silu":
        raise LWMError(f"{source} uses activation {hf.get('hidden_act')!r}; LWM models use silu")
    head_dim = hf.get("head_dim")
    if head_dim is not None and heads and head_dim * heads != hf.get("hidden_size"):
        raise LWMError(f"{source} has head_dim {head_dim} x {heads} heads != hidden_size")
    fields: dict[str, Any] = {}
    for hf_name, name in _FIELDS.items():
        value = hf.get(hf_name)
        if isinstance(value, list):  # eos_token_id may be a list in newer configs: LWM has one
            value = value[0] if value else None
        if value is not None:
            fields[name] = value
    missing = [n for n in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if _FIELDS.get(n, n) not in fields]
    if missing:
        raise LWMError(f"{source} lacks {', '.join(missing)}")
    theta = _rope_theta(hf, source)
    if theta is not None:
        fields["rope_theta"] = theta
    return ModelConfig(**fields)


def read_hf_config(folder: Path) -> ModelConfig:
    path = folder / "config.json"
    if not path.is_file():
        raise LWMError(f"{folder} has no config.json; it is not a Hugging Face model folder")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LWMError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return config_from_hf(hf, str(path))


def config_to_hf(config: ModelConfig, dtype: str) -> dict[str, Any]:
    """The config.json that `transformers.LlamaConfig` reads back into the same architecture."""
    hf: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "num_key_value_heads": config.num_attention_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "torch_dtype": dtype,
        "dtype": dtype,
    }
    hf.update({hf_name: getattr(config, name) for hf_name, name in _FIELDS.items()})
    return dict(sorted(hf.items()))
