"""`train`: one training run, readable top to bottom.

    from lwm_core.train import TrainConfig, train
    state = train(TrainConfig(lr=1e-4, steps=1000), "random:debug", batches, out_dir="runs/debug")
    model = lwm_core.load_model("runs/debug")  # the newest weights (see lwm_core.train.checkpoints)

Sections: output folder -> model and step function -> state (fresh, or the newest checkpoint with
`resume=True`) -> position in the data -> the loop (step, log, save, Ctrl-C).

`batches` yields dicts of [B, T] numpy arrays, the contract of `lwm_core.data` (`loss.BATCH_KEYS`).
Its position is saved with every checkpoint and put back on resume, through `state()` / `restore()`
(`lwm_core.data.DataLoader`) or `get_state()` / `set_state()` (grain's convention); an iterator with
neither is replayed: a resumed run skips as many batches as were consumed (exact when deterministic).

Every `log_every` steps a JSON line goes to OUT/metrics.jsonl: step, loss, text_loss, vision_loss,
text_accuracy, vision_accuracy, lr, grad_norm (before clipping), param_norm, tokens (trained target
positions of the step), tokens_per_s (real input tokens per second since the last line; the first
line includes compilation), mfu (model FLOPs per second over the matmul rate measured in this process,
`lwm_core.train.flops`) and elapsed_s. A resumed run first drops the lines after its checkpoint. The
same scalars (loss, text_loss, vision_loss, lr, grad_norm, tokens_per_s, mfu) go to a TensorBoard event
file in OUT (`lwm_core.train.tensorboard`; a new file per run, so a resumed run's redone steps appear
twice there). With several processes only process 0 writes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from lwm_core.errors import LWMError
from lwm_core.fileio import atomic_path
from lwm_core.model import LWMModel
from lwm_core.train.checkpoints import Checkpoints, check_writable
from lwm_core.train.config import TrainConfig
from lwm_core.train.flops import matmul_flops_per_s, train_flops_per_token
from lwm_core.train.state import TrainState
from lwm_core.train.step import TrainStep
from lwm_core.train.tensorboard import EventWriter

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"


def train(config: TrainConfig, model_or_spec: LWMModel | str, batches: Iterable[dict], *, out_dir,
          mesh=None, on_step: Callable[[int, dict], None] | None = None, resume: bool = False) -> TrainState:
    """Train up to `config.steps` optimizer steps; returns the final TrainState.

    model_or_spec: an LWMModel (trained in place: it holds the new weights when `train` returns) or a
      checkpoint spec for `lwm_core.load_model` (e.g. 'random:debug', 'hf::/models/llama').
    batches: iterable of batch dicts (see the module docstring).
    out_dir: the run's folder (layout: lwm_core.train.checkpoints); created if needed.
    mesh: where to train; default the model's (a spec is loaded onto `mesh`).
    on_step: called as on_step(step, metrics) after every step; metrics are device scalars.
    resume: continue from the newest checkpoint in out_dir (or start fresh when there is none); without
      it, a folder that already holds checkpoints is refused.
    Raises LWMError (one line) for bad input; KeyboardInterrupt after saving a checkpoint.
    """
    # ---------------------------------------------------------------- output folder (before any heavy work)
    out = check_writable(out_dir)

    # ---------------------------------------------------------------- model and step function
    if isinstance(model_or_spec, str):
        from lwm_core.loading import load_model

        model = load_model(model_or_spec, mesh=mesh)
    else:
        model = model_or_spec
    step_fn = TrainStep(model, config, mesh)

    # ---------------------------------------------------------------- state: fresh or resumed
    state = None
    with Checkpoints(out, step_fn.model_config, keep=config.keep) as checkpoints:
        try:
            latest = checkpoints.latest_step()
            if latest is not None and not resume:
                raise LWMError(f"{out} already holds checkpoints (newest: step {latest}); resume=True (--resume) "
                               "continues that run, or pick a new output folder")
            if latest is not None:
                state = checkpoints.restore(step_fn.abstract_state())
                log.info("resumed from step %d of %s", int(state.step), out)
            else:
                state = step_fn.init_state(model)

            # -------------------------------------------------------- position in the data
            iterator = iter(batches)
            source = batches if _position_methods(batches) else iterator
            consumed = _restore_position(source, iterator, state.data_state)

            # -------------------------------------------------------- the loop
            metrics_log = MetricsLog(out / METRICS_FILE, start_step=int(state.step),
                                     model_config=step_fn.model_config)
            try:
                state = _loop(config, step_fn, checkpoints, state, iterator, source, consumed, metrics_log, on_step)
            finally:
                metrics_log.close()
        finally:
            if isinstance(model_or_spec, LWMModel) and state is not None and state.alive:
                nnx.update(model_or_spec, state.params)  # the caller's model holds the trained weights
    return state


def _loop(config, step_fn, checkpoints, state, iterator, source, consumed, metrics_log, on_step) -> TrainState:
    step = int(state.step)
    with _deferred_interrupt() as interrupted:
        try:
            while step < config.steps:
                try:
                    batch = next(iterator)
                except StopIteration:
                    log.warning("the data ran out after %d batches, at step %d of %d", consumed, step, config.steps)
                    break
                state, metrics = step_fn(state, batch)
                step, consumed = step + 1, consumed + 1
                state = dataclasses.replace(state, data_state=_position(source, consumed))
                metrics_log.count(batch)
                if step % config.log_every == 0 or step == config.steps:
                    metrics_log.write(step, metrics)
                if on_step is not None:
                    on_step(step, metrics)
                if step % config.save_every == 0 or step == config.steps:
                    checkpoints.save(state)
                if interrupted():
                    raise KeyboardInterrupt
            checkpoints.save(state)  # the last step (skipped when just saved)
        except KeyboardInterrupt:
            if state.alive:  # arrays handed to an interrupted step are gone: the last checkpoint stands
                try:
                    if checkpoints.save(state):
                        log.warning("interrupted: saved step %d in %s", step, checkpoints.out)
                except LWMError as exc:
                    log.error("interrupted, and %s", exc)
            raise
    return state


# -------------------------------------------------------------------- data position
_POSITION_METHODS = (("state", "restore"), ("get_state", "set_state"))  # lwm_core.data's, grain's


def _position_methods(source) -> tuple | None:
    """(get, set) bound methods that save and restore where `source` is, or None."""
    for get, put in _POSITION_METHODS:
        if callable(getattr(source, get, None)) and callable(getattr(source, put, None)):
            return getattr(source, get), getattr(source, put)
    return None


def _position(source, consumed: int) -> dict:
    position = {"batches": consumed}
    methods = _position_methods(source)
    if methods is not None:
        position["iterator"] = methods[0]()
    return position


def _restore_position(source, iterator, data_state: dict) -> int:
    """Put the data where the checkpoint left it; returns the number of batches consumed so far."""
    consumed = int(data_state.get("batches", 0))
    methods = _position_methods(source)
    if "iterator" in data_state and methods is not None:
        methods[1](data_state["iterator"])
        return consumed
    for _ in range(consumed):  # no saved iterator state: replay a deterministic iterator
        try:
            next(iterator)
        except StopIteration:
            raise LWMError(f"the data has fewer than the {consumed} batches the checkpoint consumed; resume with "
                           "the same data") from None
    return consumed


# -------------------------------------------------------------------- Ctrl-C
@contextlib.contextmanager
def _deferred_interrupt():
    """A first Ctrl-C (SIGINT) only sets a flag, read between steps, so the loop stops at a step
    boundary with its state intact; a second one interrupts at once. Main thread only."""
    hit = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if hit:
            raise KeyboardInterrupt
        hit.append(signum)
        log.warning("Ctrl-C: saving a checkpoint after this step (press again to stop at once)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hit)
    finally:
        signal.signal(signal.SIGINT, previous)


# -------------------------------------------------------------------- metrics
class MetricsLog:
    """OUT/metrics.jsonl and a TensorBoard event file: one entry per logged step (see the module
    docstring). Only process 0 writes."""

    TENSORBOARD = ("loss", "text_loss", "vision_loss", "lr", "grad_norm", "tokens_per_s", "mfu")

    def __init__(self, path: Path, *, start_step: int, model_config):
        self.path, self.model_config = path, model_config
        self.writes = jax.process_index() == 0
        if self.writes and path.exists():  # a resumed run redoes the steps after its checkpoint: drop their lines
            kept = [line for line in path.read_text().splitlines() if _line_step(line) <= start_step]
            with atomic_path(path, overwrite=True) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept))
        self.peak = matmul_flops_per_s(model_config.dtype)  # before the clock starts: not a training second
        self.events = EventWriter(path.parent) if self.writes else None
        self.start = self.last = time.perf_counter()
        self.tokens, self.flops = 0, 0.0

    def count(self, batch: dict) -> None:
        """Add a batch (this process's rows): real tokens for tokens_per_s, every position for the FLOPs."""
        rows, length = np.shape(batch["attention_mask"])
        hosts = jax.process_count()  # every process holds as many rows (real tokens: this host's x N, an estimate)
        self.tokens += int(np.count_nonzero(np.asarray(batch["attention_mask"]))) * hosts
        self.flops += rows * hosts * length * train_flops_per_token(self.model_config, length)

    def write(self, step: int, metrics: dict) -> None:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        seconds = max(now - self.last, 1e-9)
        line = {"step": step, **values, "tokens": int(values["tokens"]), "tokens_per_s": self.tokens / seconds,
                "mfu": self.flops / seconds / self.peak, "elapsed_s": now - self.start}
        self.last, self.tokens, self.flops = now, 0, 0.0
        if not self.writes:
            return
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(line) + "\n")
            self.events.scalars(step, {k: line[k] for k in self.TENSORBOARD})
        except OSError as exc:  # a full disk, a folder made read-only: one line, the checkpoints stand
            raise LWMError(f"cannot write the metrics of step {step} in {self.path.parent} ({exc.strerror or exc}); "
                           "free space or fix the folder, then --resume from its newest checkpoint") from exc
        log.info("step %d loss %.4f (text %.4f, vision %.4f) lr %.3g grad_norm %.3g %.0f tok/s mfu %.3f", step,
                 line["loss"], line["text_loss"], line["vision_loss"], line["lr"], line["grad_norm"],
                 line["tokens_per_s"], line["mfu"])

    def close(self) -> None:
        if self.events is not None:
            self.events.close()


def _line_step(line: str) -> float:
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")
