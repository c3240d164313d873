"""Checkpoints of a training run (orbax), and its newest weights in our `orbax::` format.

Layout of the output folder OUT:

    OUT/lwm_config.json            the architecture: ModelConfig.to_json(run_options=False)
    OUT/params -> checkpoints/S/params   symlink to the newest checkpoint's weights
    OUT/metrics.jsonl              the trainer's log, one JSON line per logged step
    OUT/checkpoints/S/             one orbax step folder per saved step S; the last `keep` are kept
        params/        the weights: orbax PyTree of the nested canonical dict (LWM's key names)
        opt_state/     the optimizer state's leaves, {"00000": ..., "00001": ...} in tree order
        train/         {"step": int32 [], "rng": uint32 [2]}
        data/          JSON: the batch iterator's state (TrainState.data_state)
        model_config/  JSON: the architecture (ModelConfig.architecture())

`lwm_config.json` + `params/` make OUT itself an `orbax::` checkpoint folder
(`lwm_core.checkpoint.orbax_io`): `load_model("OUT")` loads the newest weights with no copy of them.

Atomic: orbax writes each step in a temporary folder and renames it once complete; the symlink is
then replaced by a rename, so OUT/params always names a complete checkpoint, and a failed save
(LWMError, one line) leaves the previous checkpoint and the link as they were.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import jax

from lwm_core.checkpoint.orbax_io import CONFIG_FILE, PARAMS_DIR, read_orbax_config
from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError
from lwm_core.fileio import atomic_path
from lwm_core.train.state import TrainState

CHECKPOINTS_DIR = "checkpoints"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def check_writable(out_dir: str | os.PathLike) -> Path:
    """Create OUT if needed and check that files can be written in it (and in its checkpoints)."""
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        for folder in (out, out / CHECKPOINTS_DIR):
            if folder.is_dir():
                probe = folder / f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                probe.write_bytes(b"")
                probe.unlink()
    except OSError as exc:
        raise LWMError(f"output folder {out} is not writable ({_reason(exc)}); pick another --out") from None
    return out


def prepare_output(out_dir: str | os.PathLike, model_config: ModelConfig) -> Path:
    """`check_writable`, then check OUT holds no other model's run and write its lwm_config.json."""
    out = check_writable(out_dir)
    link = out / PARAMS_DIR
    if os.path.lexists(link) and not link.is_symlink():
        raise LWMError(f"{link} is a folder, not the link a training run keeps there; pick another output folder")
    if (out / CONFIG_FILE).is_file():
        stored = read_orbax_config(out).architecture()
        for name, value in model_config.architecture().items():
            if stored[name] != value:
                raise LWMError(f"{out} holds a run of another model ({name}={stored[name]}, this model has "
                               f"{value}); pick another output folder")
    elif jax.process_index() == 0:  # one writer; the others only read it
        with atomic_path(out / CONFIG_FILE, overwrite=False) as tmp:
            tmp.write_text(model_config.to_json(run_options=False) + "\n")
    return out


class Checkpoints:
    """The checkpoints of one run under OUT (see the module docstring); use as a context manager."""

    def __init__(self, out_dir: str | os.PathLike, model_config: ModelConfig, *, keep: int = 3,
                 read_only: bool = False):
        import orbax.checkpoint as ocp

        self.out = Path(out_dir).expanduser() if read_only else prepare_output(out_dir, model_config)
        self.model_config = model_config
        if read_only:
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None,
                                                   save_interval_steps=0)
        else:
            options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False,
                                                   cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager((self.out / CHECKPOINTS_DIR).absolute(), options=options)

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.manager.close()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: TrainState) -> bool:
        """Save `state` as step `state.step` (a step already saved is skipped: returns False)."""
        import orbax.checkpoint as ocp

        step = int(state.step)
        if step in self.manager.all_steps():
            return False
        previous = self.latest_step()
        leaves = jax.tree.leaves(state.opt_state)
        items = dict(
            params=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave({f"{i:05d}": leaf for i, leaf in enumerate(leaves)}),
            train=ocp.args.StandardSave({"step": state.step, "rng": state.rng}),
            data=ocp.args.JsonSave(state.data_state),
            model_config=ocp.args.JsonSave(self.model_config.architecture()),
        )
        try:
            self.manager.save(step, args=ocp.args.Composite(**items), force=True)
            self.manager.wait_until_finished()
            if jax.process_index() == 0:  # orbax saved every process's shards; one process moves the link
                self._link_params(step)
        except Exception as exc:  # orbax and tensorstore raise many kinds; the user needs one line
            kept = (f"the checkpoint of step {previous} is intact" if previous is not None
                    else "no earlier checkpoint exists")
            raise LWMError(f"cannot save the checkpoint of step {step} in {self.out} ({_reason(exc)}); "
                           f"{kept}") from exc
        return True

    def _link_params(self, step: int) -> None:
        target = Path(CHECKPOINTS_DIR) / str(step) / PARAMS_DIR
        if not (self.out / target).is_dir():
            raise FileNotFoundError(f"orbax wrote no {self.out / target}")
        tmp = self.out / f".{PARAMS_DIR}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.symlink(target, tmp)  # relative: OUT may be moved
        try:
            os.replace(tmp, self.out / PARAMS_DIR)  # atomic
        finally:
            if os.path.lexists(tmp):
                tmp.unlink()

    def restore(self, abstract: TrainState, step: int | None = None) -> TrainState:
        """The state saved at `step` (default: the newest), on the shardings of `abstract` (see
        `TrainStep.abstract_state`). LWMError when there is none or it holds another model."""
        import orbax.checkpoint as ocp

        step = self.latest_step() if step is None else step
        if step is None:
            raise LWMError(f"{self.out / CHECKPOINTS_DIR} holds no checkpoint to resume from")
        leaves, treedef = jax.tree.flatten(abstract.opt_state)
        items = dict(
            params=ocp.args.StandardRestore(abstract.params),
            opt_state=ocp.args.StandardRestore({f"{i:05d}": leaf for i, leaf in enumerate(leaves)}),
            train=ocp.args.StandardRestore({"step": abstract.step, "rng": abstract.rng}),
            data=ocp.args.JsonRestore(),
            model_config=ocp.args.JsonRestore(),
        )
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, OSError) as exc:
            raise LWMError(f"checkpoint {self.out / CHECKPOINTS_DIR / str(step)} cannot be restored onto this "
                           f"model and optimizer ({_reason(exc)})") from exc
        found = restored["model_config"]
        for name, value in self.model_config.architecture().items():
            if found.get(name) != value:
                raise LWMError(f"checkpoint step {step} in {self.out} is of another model ({name}={found.get(name)}, "
                               f"this model has {value})")
        opt_leaves = restored["opt_state"]
        return TrainState(params=restored["params"],
                          opt_state=jax.tree.unflatten(treedef, [opt_leaves[f"{i:05d}"] for i in range(len(leaves))]),
                          step=restored["train"]["step"], rng=restored["train"]["rng"],
                          data_state=dict(restored["data"] or {}))


def restore_latest(out_dir: str | os.PathLike, abstract_state: TrainState,
                   model_config: ModelConfig | None = None) -> TrainState | None:
    """The newest checkpoint under OUT restored onto `abstract_state`'s shardings; None when there is
    none. `model_config` (default: OUT/lwm_config.json's) must be the architecture that was saved."""
    out = Path(out_dir).expanduser()
    if not (out / CHECKPOINTS_DIR).is_dir():
        return None
    config = model_config if model_config is not None else read_orbax_config(out)
    with Checkpoints(out, config, read_only=True) as checkpoints:
        if checkpoints.latest_step() is None:
            return None
        return checkpoints.restore(abstract_state)
