"""Our own checkpoints (`orbax::DIR`): `lwm_config.json` + the canonical params saved with orbax.

Layout of the folder:
    DIR/lwm_config.json   the architecture: ModelConfig.to_json(run_options=False)
    DIR/params/           orbax PyTree checkpoint of the nested canonical dict (scanned layout)

Run options (dtype, attention_impl, chunk sizes, ...) are never stored: they say how a model was run,
not what it is. Folders written before that still have them in lwm_config.json; they are dropped on
read, so the config read back always has default run options.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from lwm_core.checkpoint.common import ProgressFn, atomic_path, cast, flatten_tree, np_dtype, unflatten_tree
from lwm_core.checkpoint.keys import ArrayInfo, dtype_summary
from lwm_core.config import RUN_FIELDS, ModelConfig
from lwm_core.errors import LWMError

CONFIG_FILE = "lwm_config.json"
PARAMS_DIR = "params"


class _NoStepMetadataWarning(logging.Filter):
    """Drops orbax's "Metadata file does not exist" warning. A training run's `params/` is one item of a
    CheckpointManager step, whose metadata file sits one level up: reading the item alone is fine."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Metadata file does not exist")


@contextlib.contextmanager
def _quiet_item_metadata():
    logger, quiet = logging.getLogger("absl"), _NoStepMetadataWarning()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def write_orbax(params: dict[str, np.ndarray], path: str | os.PathLike, config: ModelConfig, *,
                dtype: str | None = None, overwrite: bool = True, progress: ProgressFn | None = None) -> None:
    """Write canonical `params` and `config` to the folder `path`, atomically."""
    import orbax.checkpoint as ocp

    total = sum(v.nbytes for v in params.values())
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.mkdir()
        (tmp / CONFIG_FILE).write_text(config.to_json(run_options=False) + "\n")
        tree = unflatten_tree({k: cast(v, dtype) for k, v in params.items()})
        with ocp.PyTreeCheckpointer() as checkpointer:  # synchronous: done when save returns
            checkpointer.save((tmp / PARAMS_DIR).absolute(), tree)
        if progress:
            progress(total, total, "params")


def read_orbax_config(folder: Path) -> ModelConfig:
    """The stored architecture, with default run options (older files' run options are dropped)."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise LWMError(f"{folder} has no {CONFIG_FILE}; it is not an lwm orbax checkpoint")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise LWMError(f"{path} is not a valid ModelConfig JSON ({exc})") from None
    if not isinstance(data, dict):
        raise LWMError(f"{path} is not a valid ModelConfig JSON (not an object)")
    return ModelConfig.from_dict({k: v for k, v in data.items() if k not in RUN_FIELDS})


def read_orbax(path: str | os.PathLike, *, dtype: str | None = None, shapes_only: bool = False,
               progress: ProgressFn | None = None) -> tuple[dict[str, object], ModelConfig, str]:
    """(canonical params as numpy arrays or ArrayInfo, config, stored dtype) of an orbax folder."""
    import jax
    import orbax.checkpoint as ocp

    folder = Path(path)
    if not folder.is_dir():
        raise LWMError(f"checkpoint {folder} does not exist" if not folder.exists()
                       else f"checkpoint {folder} is not a folder (orbax:: needs a checkpoint folder)")
    config = read_orbax_config(folder)
    params_dir = (folder / PARAMS_DIR).absolute()
    if not params_dir.is_dir():
        raise LWMError(f"{folder} has no {PARAMS_DIR}/ folder; the checkpoint is incomplete")
    with ocp.PyTreeCheckpointer() as checkpointer, _quiet_item_metadata():
        try:
            metadata = checkpointer.metadata(params_dir).item_metadata.tree
            infos = {k: ArrayInfo(tuple(m.shape), np.dtype(m.dtype).name)
                     for k, m in flatten_tree(metadata).items()}
            if shapes_only:
                params: dict[str, object] = {k: ArrayInfo(i.shape, dtype or i.dtype) for k, i in infos.items()}
            else:
                # Ask for numpy arrays: the canonical dict is host memory, placement is the model's job.
                restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
                tree = checkpointer.restore(params_dir, restore_args=restore_args)
                params = {k: cast(np.asarray(v), dtype) for k, v in flatten_tree(tree).items()}
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise LWMError(f"{params_dir} cannot be restored by orbax ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); it is incomplete or corrupt") from None
    if progress:
        total = sum(i.size * np_dtype(i.dtype).itemsize for i in infos.values())
        progress(total, total, "params")
    return params, config, dtype_summary([i.dtype for i in infos.values()])
