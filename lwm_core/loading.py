"""`load_model`: a checkpoint spec in any supported format -> a ready `LWMModel`, optionally sharded."""

from __future__ import annotations

import jax

from lwm_core.checkpoint import checkpoint_config, load_params
from lwm_core.config import RANDOM_PREFIX, RUN_FIELDS, ModelConfig, random_config
from lwm_core.errors import LWMError
from lwm_core.model import LWMModel
from lwm_core.sharding import build_model


def _check_run_options(run_options: dict) -> None:
    wrong = sorted(set(run_options) - set(RUN_FIELDS))
    if wrong:
        raise LWMError(f"{', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} not run options (those are "
                       f"{', '.join(RUN_FIELDS)}); the architecture comes from the checkpoint or the config, and "
                       "rope_theta / max_sequence_length are changed with the arguments of those names")


def _changes(rope_theta, max_sequence_length) -> dict:
    changes = {}
    if rope_theta is not None:
        changes["rope_theta"] = float(rope_theta)
    if max_sequence_length is not None:
        changes["max_sequence_length"] = int(max_sequence_length)
    return changes


def generation_options() -> dict:
    """Run options for sampling (`lwm ask`, `lwm generate`) on the default JAX backend: unscanned
    layers on a CPU, where XLA copies each layer's slice of a stacked weight inside `lax.scan` (for
    the '200m' model a fixed ~55 ms a pass: a forward over 2 x 48 tokens took 296 / 311 ms (min /
    median of 7) scanned against 228 / 249 unscanned, over 16 tokens 133 / 139 against 76 / 80);
    {} elsewhere. Unscanned layers compile once per layer: a longer first call, and long prefills
    do not gain (docs/model.md)."""
    return {"scan_layers": False} if jax.default_backend() == "cpu" else {}


def random_model(spec: str, config: ModelConfig | str | None = None, seed: int = 0, *, mesh=None,
                 rope_theta: float | None = None, max_sequence_length: int | None = None,
                 **run_options) -> LWMModel:
    """`random:PRESET` (e.g. `random:debug`, `random:7b-1m`): untrained random weights, to try the
    tools and measure speed without downloading a checkpoint. With `mesh`, each weight is
    initialised directly on its shards."""
    config = random_config(spec, config)
    changes = {**_changes(rope_theta, max_sequence_length), **run_options}
    if changes:
        config = config.replace(**changes)
    return build_model(config, None, mesh=mesh, seed=seed)


def load_model(checkpoint_spec: str, config: ModelConfig | str | None = None, *, mesh=None, progress=None,
               rope_theta: float | None = None, max_sequence_length: int | None = None,
               **run_options) -> LWMModel:
    """Load a model from `params::PATH`, `trainstate_params::PATH`, a Hugging Face LLaMA folder or
    our own orbax folder (or `random:PRESET` for untrained random weights).

    The architecture comes from the checkpoint when it carries one (Hugging Face and orbax folders);
    a bare LWM streaming file needs `config` (a ModelConfig or a preset name such as '7b-1m'). A
    given config that disagrees with the stored one on the architecture (shapes, rope_theta,
    max_sequence_length, ...) is refused; change rope_theta or max_sequence_length on purpose with
    the arguments of those names. `run_options` set how the model runs, not what it is
    (e.g. `attention_impl="ring"`, `dtype="bfloat16"`, `scan_layers=False`).

    With `mesh` (see `lwm_core.make_mesh`) every weight is placed on its shards as it is read, by the
    logical axes on the parameters and `lwm_core.mesh.LOGICAL_AXIS_RULES`.
    """
    if checkpoint_spec.startswith(RANDOM_PREFIX):  # no stored config: any field may be set
        return random_model(checkpoint_spec, config, mesh=mesh, rope_theta=rope_theta,
                            max_sequence_length=max_sequence_length, **run_options)
    _check_run_options(run_options)
    ckpt = load_params(checkpoint_spec, progress=progress)
    config = checkpoint_config(config, ckpt.params, ckpt.config, str(checkpoint_spec),
                               changes=_changes(rope_theta, max_sequence_length))
    if config is None:
        raise LWMError(f"{checkpoint_spec} carries no model config; pass one, e.g. "
                       "config='7b-1m' (CLI: --config 7b-1m) or a JSON ModelConfig file")
    if run_options:
        config = config.replace(**run_options)
    # build_model consumes the dict (each host array is freed once it is on its devices)
    return build_model(config, ckpt.params, mesh=mesh)
