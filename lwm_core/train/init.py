"""The model a run starts from: random weights of a preset, or any checkpoint, optionally given LWM's
vision embeddings and head (stage 2 from a text checkpoint, which LWM's own code could not do: its
issue #67)."""

from __future__ import annotations

import numpy as np

from lwm_core.checkpoint import checkpoint_config, load_params
from lwm_core.checkpoint.keys import VISION_KEYS, is_vision
from lwm_core.config import RANDOM_PREFIX, RUN_FIELDS, VISION_ROPE_THETA, ModelConfig, resolve_config
from lwm_core.errors import LWMError
from lwm_core.model import LWMModel
from lwm_core.sharding import build_model


def initial_model(init: str | None, config: ModelConfig | str | None = None, *, vision: bool = False,
                  mesh=None, seed: int = 0, progress=None, changes: dict | None = None,
                  vision_codes: int | None = None, **run_options) -> LWMModel:
    """The model to train.

    init: a checkpoint spec (`lwm_core.load_model`'s), `random:PRESET`, or None (random weights of
      `config`). A text checkpoint with `vision=True` keeps every text weight and adds freshly
      initialised `vte` and `vision_head` (normal, std = initializer_range, seeded by `seed`); the
      model then uses LWM's vision RoPE theta only if the checkpoint had none of its own.
    config: a preset, JSON path or ModelConfig; required without `init`, checked against a checkpoint.
    changes: architecture changes made on purpose ({'rope_theta': ..., 'max_sequence_length': ...}).
    vision_codes: the codebook size of the VQGAN the data was made with (None: LWM's 8192). A model
      given vision here gets that many code slots (`vision_vocab_size` from `vision_vocabulary`) and
      records the training frame layout; a vision checkpoint must have at least that many.
    run_options: how to run it (attention_impl, sequence_layout, dtype, remat_block, ...).
    """
    changes = dict(changes or {})
    if init is None or init.startswith(RANDOM_PREFIX):
        base = resolve_config(config) if init is None else resolve_config(config) or ModelConfig.from_name(
            init[len(RANDOM_PREFIX):])
        if base is None:
            raise LWMError("a run from scratch needs --config (a preset such as 200m, or a ModelConfig JSON)")
        if vision and not base.vision:
            base = base.replace(vision=True, rope_theta=VISION_ROPE_THETA if init is None else base.rope_theta)
            base = with_vision_codes(base, vision_codes)
        elif vision:
            check_vision_codes(base, vision_codes, "--config")
        return build_model(base.replace(**{**run_options, **changes}), None, mesh=mesh, seed=seed)
    wrong = sorted(set(run_options) - set(RUN_FIELDS))
    if wrong:
        raise LWMError(f"{', '.join(wrong)}: not run options; a checkpoint's architecture comes from the checkpoint")
    ckpt = load_params(init, progress=progress)
    params = ckpt.params
    if vision and not is_vision(params):
        # the stored config (or the given one) describes a text model: check it as such, then extend it
        text_config = checkpoint_config(config if config is None or not isinstance(config, str) else
                                        resolve_config(config, vision=False), params, ckpt.config, init,
                                        changes=changes)
        if text_config is None:
            raise LWMError(f"{init} carries no model config; pass --config (e.g. 200m)")
        model_config = with_vision_codes(text_config.replace(vision=True), vision_codes)
        rng = np.random.default_rng(seed)
        std, d, v = model_config.initializer_range, model_config.hidden_size, model_config.vision_vocab_size
        params[VISION_KEYS[0]] = (rng.standard_normal((v, d), np.float32) * std)  # vte [8448, D]
        params[VISION_KEYS[1]] = (rng.standard_normal((d, v), np.float32) * std)  # vision_head [D, 8448]
    else:
        model_config = checkpoint_config(config, params, ckpt.config, init, changes=changes)
        if model_config is None:
            raise LWMError(f"{init} carries no model config; pass --config (e.g. 200m)")
        if vision:
            check_vision_codes(model_config, vision_codes, init)
    return build_model(model_config.replace(**run_options), params, mesh=mesh, seed=seed)


def vision_vocabulary(codes: int) -> int:
    """The vision vocabulary for a codebook of `codes`: LWM's 8448 for its 8192 codes, else the codes
    plus end-of-frame / end-of-vision rounded up to a multiple of 64 (512 codes: 576)."""
    return 8448 if codes == 8192 else -(-(codes + 2) // 64) * 64


def with_vision_codes(config: ModelConfig, codes: int | None) -> ModelConfig:
    """A config given vision for data of a `codes`-entry VQGAN: its vocabulary, and the frame layout of
    `lwm train --stage 2`'s data (end-of-frame between frames), so `lwm ask` builds the same."""
    codes = config.vision_codes if codes is None else codes
    return config.replace(vision_codes=codes, vision_vocab_size=vision_vocabulary(codes), frame_layout="training")


def check_vision_codes(config: ModelConfig, codes: int | None, source: str) -> None:
    if codes is not None and codes > config.vision_codes:
        raise LWMError(f"{source} has {config.vision_codes} VQGAN code slots but the data's VQGAN has {codes} "
                       "codes; pass the --vqgan-config the model was trained with")
