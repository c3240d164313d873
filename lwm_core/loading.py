"""`load_model`: a checkpoint spec in any supported format -> a ready `LWMModel`."""

from __future__ import annotations

import json
from pathlib import Path

from flax import nnx

from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError
from lwm_core.model import LWMModel


def resolve_config(config: ModelConfig | str | None) -> ModelConfig | None:
    """A ModelConfig, a preset name ('7b-1m', 'debug') or a path to a JSON ModelConfig."""
    if config is None or isinstance(config, ModelConfig):
        return config
    path = Path(config)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise LWMError(f"config file {config} does not exist")
        try:
            return ModelConfig.from_json(path.read_text())
        except json.JSONDecodeError as exc:
            raise LWMError(f"config file {config} is not valid JSON: {exc}") from None
    return ModelConfig.from_name(config)


RANDOM_PREFIX = "random:"


def random_model(spec: str, config: ModelConfig | None = None, seed: int = 0, **overrides) -> LWMModel:
    """`random:PRESET` (e.g. `random:debug`, `random:7b-1m`): untrained random weights, to try the
    tools and measure speed without downloading a checkpoint."""
    config = config or ModelConfig.from_name(spec[len(RANDOM_PREFIX):])
    if overrides:
        config = config.replace(**overrides)
    return LWMModel(config, rngs=nnx.Rngs(seed))


def load_model(checkpoint_spec: str, config: ModelConfig | str | None = None, *, progress=None,
               **overrides) -> LWMModel:
    """Load a model from `params::PATH`, `trainstate_params::PATH`, a Hugging Face LLaMA folder or
    our own orbax folder (or `random:PRESET` for untrained random weights).

    The config comes from the checkpoint when it carries one (Hugging Face and orbax folders); a
    bare LWM streaming file needs `config` (a ModelConfig or a preset name such as '7b-1m'). A
    given config overrides the stored one; `overrides` change single fields (e.g.
    `attention_impl="blockwise"`, `dtype="bfloat16"`). Shapes are checked against the config.
    """
    from lwm_core.checkpoint import load_params

    config = resolve_config(config)
    if checkpoint_spec.startswith(RANDOM_PREFIX):
        return random_model(checkpoint_spec, config, **overrides)
    ckpt = load_params(checkpoint_spec, config=config, progress=progress)
    config = config or ckpt.config
    if config is None:
        raise LWMError(f"{checkpoint_spec} carries no model config; pass one, e.g. "
                       "config='7b-1m' (CLI: --config 7b-1m) or a JSON ModelConfig file")
    if overrides:
        config = config.replace(**overrides)
    return LWMModel.from_params(config, ckpt.params)
