"""Checkpoint I/O: one module per format behind `load_params` / `save_params`.

Spec strings (LWM's own plus ours):
    params::PATH             LWM streaming msgpack (`lwm_streaming`); a bare `*.msgpack` path too
    trainstate_params::PATH  the same inside a train state: keys under ('params', 'params')
    hf::DIR                  Hugging Face LLaMA folder (`hf`); a bare folder with config.json too
    orbax::DIR               our orbax checkpoint (`orbax_io`); a bare folder with lwm_config.json too

Every format is read into the canonical parameters: a flat `dict[str, np.ndarray]` with LWM's key
names ('/'-joined, no outer 'params'), scanned layout (layers stacked on axis 0), kernels [in, out],
wq/wk in LWM's interleaved RoPE order. See `keys.expected_shapes` for every shape.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from lwm_core.checkpoint.common import ProgressFn, check_dtype
from lwm_core.checkpoint.keys import (
    ArrayInfo, canonical_keys, check_config, check_shapes, dtype_summary, expected_shapes, is_vision,
    stack_infos, to_scanned, validate_keys,
)
from lwm_core.config import (
    ARCHITECTURE_FIELDS, CHANGEABLE_FIELDS, INIT_ONLY_FIELDS, ModelConfig, apply_changes, check_changes,
    resolve_config,
)
from lwm_core.errors import LWMError

__all__ = ["ArrayInfo", "Checkpoint", "CheckpointSpec", "ProgressFn", "canonical_keys", "check_config",
           "check_shapes", "checkpoint_config", "describe_params", "expected_shapes", "load_params",
           "merge_configs", "parse_spec", "save_params"]

FORMATS = ("lwm", "hf", "orbax")
TRAINSTATE_PREFIX = ("params", "params")
_PREFIXES = {"params": ("lwm", ()), "trainstate_params": ("lwm", TRAINSTATE_PREFIX),
             "hf": ("hf", ()), "orbax": ("orbax", ())}


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    """A parsed spec string: which format, where, and the key prefix inside an LWM streaming file."""

    format: str
    path: Path
    prefix: tuple[str, ...] = ()


@dataclasses.dataclass
class Checkpoint:
    """Parameters read from a checkpoint, and what was found about them.

    params: canonical flat dict (see the module docstring); `describe_params` gives `ArrayInfo`s.
    config: the stored architecture (with the caller's run options) or, when the source stores none,
      the caller's config; None when neither exists. See `merge_configs`.
    format: 'lwm' | 'hf' | 'orbax'. layout: 'scanned' | 'unscanned', as stored. dtype: as stored.
    """

    params: dict[str, np.ndarray]
    config: ModelConfig | None
    format: str
    layout: str
    dtype: str

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(v.shape, dtype=np.int64)) for v in self.params.values())

    @property
    def vision(self) -> bool:
        return is_vision(self.params)


def parse_spec(spec: str | os.PathLike, *, for_writing: bool = False) -> CheckpointSpec:
    """Parse a spec string; a bare path's format is inferred (reading: from what is there)."""
    text = os.fspath(spec)
    if "::" in text:
        prefix, _, rest = text.partition("::")
        if prefix not in _PREFIXES:
            raise LWMError(f"unknown checkpoint prefix {prefix}::; use one of "
                           f"{', '.join(p + '::' for p in _PREFIXES)}")
        if not rest:
            raise LWMError(f"checkpoint spec {text!r} has no path after {prefix}::")
        fmt, key_prefix = _PREFIXES[prefix]
        return CheckpointSpec(fmt, Path(rest).expanduser(), key_prefix)
    path = Path(text).expanduser()
    if for_writing:
        if path.suffix == ".msgpack":
            return CheckpointSpec("lwm", path)
        raise LWMError(f"cannot tell which format to write {path}: prefix it, e.g. params::{path} "
                       f"(LWM streaming), hf::{path} or orbax::{path}")
    if not path.exists():
        raise LWMError(f"checkpoint {path} does not exist")
    if path.is_dir():
        if (path / "lwm_config.json").is_file():
            return CheckpointSpec("orbax", path)
        if (path / "config.json").is_file():
            return CheckpointSpec("hf", path)
        raise LWMError(f"{path} is a folder with neither lwm_config.json (orbax::) nor config.json (hf::)")
    if path.suffix == ".msgpack":
        return CheckpointSpec("lwm", path)
    raise LWMError(f"cannot tell the format of {path}: prefix it, e.g. params::{path} for LWM streaming")


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):  # a JSON or float32 round trip may move the last digits
        return not isinstance(a, bool) and not isinstance(b, bool) and math.isclose(a, b, rel_tol=1e-6)
    return a == b


def _disagreement(name: str, given, found, source: str, label: str | None) -> str:
    """One line: which field, both values, what to do."""
    if label is None:  # a ModelConfig from library code
        who, drop = "the given config", "pass config=None (the checkpoint carries its config)"
        change = f"changes={{'{name}': ...}} (load_model: {name}=...)"
    else:  # a preset name or JSON path, as --config takes it
        who, drop = f"--config {label}", "drop --config (the checkpoint carries its config)"
        change = "--" + name.replace("_", "-")
    how = f"change it on purpose with {change}" if name in CHANGEABLE_FIELDS else "pass one that matches"
    return f"{who} says {name}={given} but {source} stores {found}; {drop} or {how}"


def merge_configs(given: ModelConfig | None, found: ModelConfig | None, source: str, *,
                  changes: dict | None = None, label: str | None = None) -> ModelConfig | None:
    """The config of a checkpoint from what it stores (`found`) and what the caller gives.

    - Both: they must agree on every architecture field (`ARCHITECTURE_FIELDS` except
      `INIT_ONLY_FIELDS` and the fields in `changes`; the vision fields only for vision models),
      else LWMError naming the field and both values. The result is the stored architecture with
      the given config's run options (`RUN_FIELDS`).
    - Only `found`: the stored architecture with default run options.
    - Only `given` (LWM streaming files store no config): `given` as it is.
    - Neither: None.
    `changes` ({'rope_theta': ..., 'max_sequence_length': ...}) are then applied on purpose.
    `label` is how the caller named `given` (the --config text), for the message.
    """
    changes = check_changes(changes)
    if found is None:
        return None if given is None else apply_changes(given, changes)
    if given is not None:
        skip = set(INIT_ONLY_FIELDS) | set(changes)
        if not (given.vision or found.vision):
            skip.update(("vision_vocab_size", "vision_codes", "frame_layout"))  # no vision: unused
        for name in ARCHITECTURE_FIELDS:
            if name not in skip and not _same(getattr(given, name), getattr(found, name)):
                raise LWMError(_disagreement(name, getattr(given, name), getattr(found, name), source, label))
    run = given.run_options() if given is not None else {}
    return apply_changes(ModelConfig(**found.architecture(), **run), changes)


def _read(spec: str | os.PathLike, config: ModelConfig | None, dtype: str | None, shapes_only: bool,
          progress: ProgressFn | None) -> Checkpoint:
    check_dtype(dtype)
    parsed = parse_spec(spec)
    source = str(parsed.path)
    found: ModelConfig | None = None
    if parsed.format == "lwm":
        from lwm_core.checkpoint.lwm_streaming import read_streaming

        flat = read_streaming(parsed.path, prefix=parsed.prefix, dtype=dtype, shapes_only=shapes_only,
                              progress=progress)
        stored = dtype_summary([v.dtype if shapes_only else v.dtype.name for v in flat.values()])
        params, layout = to_scanned(flat, source, stack=stack_infos if shapes_only else np.stack)
    elif parsed.format == "hf":
        from lwm_core.checkpoint.hf import read_hf

        params, found, stored = read_hf(parsed.path, dtype=dtype, shapes_only=shapes_only, progress=progress)
        layout = "unscanned"  # HF stores one tensor per layer
    else:
        from lwm_core.checkpoint.orbax_io import read_orbax

        params, found, stored = read_orbax(parsed.path, dtype=dtype, shapes_only=shapes_only,
                                           progress=progress)
        layout = "scanned"
    validate_keys(params, source)
    config = merge_configs(config, found, source)
    if config is not None:
        check_config(params, config, source)
    return Checkpoint(params, config, parsed.format, layout, stored)


def load_params(spec: str | os.PathLike, *, config: ModelConfig | None = None, dtype: str | None = None,
                progress: ProgressFn | None = None) -> Checkpoint:
    """Read a checkpoint of any format into canonical parameters.

    Args:
      spec: see the module docstring, e.g. 'params::/ckpt/lwm-7b', 'hf::/models/LWM-Text-1M'.
      config: used when the source carries none; when it does, the source's architecture is kept and
        `config` must agree with it (LWMError otherwise) and gives only the run options.
      dtype: 'float32' | 'bfloat16' | 'float16' to cast floating arrays while reading; None keeps them.
      progress: optional `progress(done_bytes, total_bytes, item)` callback; quiet by default.
    Returns:
      Checkpoint with params {key: array} in scanned layout, e.g. wq [L, D, D], wte [V, D].
    Raises:
      LWMError (one line) for a missing path, truncated/corrupt file, missing/unexpected keys, or
      shapes that disagree with `config`.
    """
    return _read(spec, config, dtype, False, progress)


def describe_params(spec: str | os.PathLike, *, config: ModelConfig | None = None,
                    progress: ProgressFn | None = None) -> Checkpoint:
    """Like `load_params` but `params` holds `ArrayInfo(shape, dtype)` and no array data is kept.

    HF and orbax read only metadata; an LWM streaming file is scanned once, skipping array data.
    """
    return _read(spec, config, None, True, progress)


def save_params(params: dict[str, np.ndarray], dst: str | os.PathLike, *, config: ModelConfig | None = None,
                format: str | None = None, dtype: str | None = None, layout: str = "scanned",
                overwrite: bool = True, progress: ProgressFn | None = None) -> None:
    """Write canonical `params` to `dst`, atomically (temporary name beside dst, then a rename).

    Args:
      params: canonical flat dict (scanned layout), e.g. from `load_params(...).params`.
      dst: spec string; `format` ('lwm' | 'hf' | 'orbax'), when given, overrides its prefix.
      config: required for 'hf' and 'orbax' (they store it); checked against the shapes when given.
      dtype: cast floating arrays while writing; None keeps them.
      layout: 'scanned' or 'unscanned' (LWM streaming only; HF is per layer, orbax always scanned).
      overwrite: replace an existing dst; False raises LWMError instead.
    """
    check_dtype(dtype)
    if format is not None and "::" not in os.fspath(dst):
        parsed = CheckpointSpec(format, Path(dst).expanduser())
    else:
        parsed = parse_spec(dst, for_writing=True)
    fmt = format or parsed.format
    if fmt not in FORMATS:
        raise LWMError(f"unknown checkpoint format {fmt!r}; choose from {', '.join(FORMATS)}")
    validate_keys(params, f"to be saved as {parsed.path}")
    if config is not None:
        check_config(params, config, f"to be saved as {parsed.path}")
    if fmt != "lwm" and layout != "scanned":
        raise LWMError(f"layout {layout!r} applies to LWM streaming params:: files only, not {fmt}")
    if fmt != "lwm" and config is None:
        raise LWMError(f"writing {fmt}::{parsed.path} needs a model config (the source carries none): "
                       "pass --config with a preset such as 7b-1m or a ModelConfig JSON file")
    if fmt == "lwm":
        from lwm_core.checkpoint.lwm_streaming import write_streaming

        write_streaming(params, parsed.path, prefix=parsed.prefix, layout=layout, dtype=dtype,
                        overwrite=overwrite, progress=progress)
    elif fmt == "hf":
        from lwm_core.checkpoint.hf import write_hf

        write_hf(params, parsed.path, config, dtype=dtype, overwrite=overwrite, progress=progress)
    else:
        from lwm_core.checkpoint.orbax_io import write_orbax

        write_orbax(params, parsed.path, config, dtype=dtype, overwrite=overwrite, progress=progress)


def checkpoint_config(given: ModelConfig | str | None, params: dict, found: ModelConfig | None,
                      source: str, *, changes: dict | None = None) -> ModelConfig | None:
    """The config for a checkpoint's params; see `merge_configs` for how `given` and `found` combine.

    Args:
      given: the caller's config: a ModelConfig, a preset name ('7b-1m') or a ModelConfig JSON path
        (a preset gets vision embeddings when `params` has them). Its run options are kept; its
        architecture must agree with `found` when the checkpoint stores a config.
      params: canonical params (arrays or ArrayInfo); the result's shapes are checked against them.
      found: the config the checkpoint stores (`Checkpoint.config`), None for LWM streaming files.
      source: names the checkpoint in messages.
      changes: architecture changed on purpose, keys among 'rope_theta', 'max_sequence_length'.
    Returns:
      The ModelConfig, or None when neither `given` nor `found` exists.
    Raises:
      LWMError (one line) when `given` disagrees with `found`, or the shapes do not match.
    """
    label = given if isinstance(given, str) else None
    config = merge_configs(resolve_config(given, vision=is_vision(params)), found, source, changes=changes,
                           label=label)
    if config is not None:
        check_config(params, config, source)
    return config
