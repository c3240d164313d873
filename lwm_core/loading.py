"""`load_model`: a checkpoint spec in any supported format -> a ready `LWMModel`."""

from __future__ import annotations

from flax import nnx

from lwm_core.checkpoint import checkpoint_config, load_params
from lwm_core.config import RANDOM_PREFIX, ModelConfig, random_config
from lwm_core.errors import LWMError
from lwm_core.model import LWMModel


def random_model(spec: str, config: ModelConfig | str | None = None, seed: int = 0, **overrides) -> LWMModel:
    """`random:PRESET` (e.g. `random:debug`, `random:7b-1m`): untrained random weights, to try the
    tools and measure speed without downloading a checkpoint."""
    config = random_config(spec, config)
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
    if checkpoint_spec.startswith(RANDOM_PREFIX):
        return random_model(checkpoint_spec, config, **overrides)
    ckpt = load_params(checkpoint_spec, progress=progress)
    config = checkpoint_config(config, ckpt.params, ckpt.config, str(checkpoint_spec))
    if config is None:
        raise LWMError(f"{checkpoint_spec} carries no model config; pass one, e.g. "
                       "config='7b-1m' (CLI: --config 7b-1m) or a JSON ModelConfig file")
    if overrides:
        config = config.replace(**overrides)
    return LWMModel.from_params(config, ckpt.params)
