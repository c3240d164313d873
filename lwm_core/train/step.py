"""The compiled, sharded train step.

    step = TrainStep(model, TrainConfig(...))          # the model may live on a mesh (load_model(mesh=...))
    state = step.init_state(model)                      # its weights, fresh optimizer state
    state, metrics = step(state, batch)                 # batch: dict of numpy [B, T] arrays (loss.BATCH_KEYS)

The parameters keep the shardings the model was built with (each weight's logical axes through
`lwm_core.mesh.LOGICAL_AXIS_RULES`), the optimizer moments live like their parameters, the batch is
sharded over (dp, fsdp) x sp by `shard_batch`. What runs inside is the model's own configuration:
ring attention over `sp` when `attention_impl="ring"`, each decoder layer rematerialised by
`remat_block`. The state's arrays are donated: a step updates them in place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding

from lwm_core.errors import LWMError, from_runtime_error
from lwm_core.mesh import axis_size, logical_to_spec, seq_axis, shard_batch
from lwm_core.model import LWMModel
from lwm_core.sharding import abstract_model
from lwm_core.train.config import TrainConfig
from lwm_core.train.loss import BATCH_KEYS, finish, loss_sums
from lwm_core.train.optim import join, learning_rate, make_optimizer, split_frozen
from lwm_core.train.state import (
    TrainState, abstract_arrays, opt_state_shardings, params_shardings, replicated,
)

_DTYPES = {"input_ids": np.int32, "targets": np.int32, "loss_weights": np.float32, "segment_ids": np.int32,
           "position_ids": np.int32, "vision_masks": np.bool_, "target_vision": np.bool_,
           "attention_mask": np.bool_}


def check_batch(batch: dict, config, *, grad_accum: int = 1, mesh=None,
                processes: int = 1) -> dict[str, np.ndarray]:
    """The batch contract, checked on the host: every key of `BATCH_KEYS`, all [B, T], ids inside the
    vocabularies, no vision on a text-only model, rows that split into micro-batches and over the
    mesh's data axes. With several processes `batch` is this process's rows, 1 / `processes` of the
    global batch. Returns the arrays in their dtypes (other keys dropped); LWMError otherwise."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise LWMError(f"the batch lacks {', '.join(missing)}; a training batch holds {', '.join(BATCH_KEYS)}")
    out = {k: np.asarray(batch[k]).astype(_DTYPES[k], copy=False) for k in BATCH_KEYS}
    shape = out["input_ids"].shape
    wrong = [f"{k} {v.shape}" for k, v in out.items() if v.shape != shape]
    if len(shape) != 2 or wrong:
        raise LWMError(f"every batch array must be [batch, seq] like input_ids {shape}; got {', '.join(wrong)}")
    rows, length = shape
    rows *= processes  # the global batch
    if length > config.max_sequence_length:
        raise LWMError(f"batch sequences of {length} tokens exceed max_sequence_length {config.max_sequence_length}")
    if rows % grad_accum:
        raise LWMError(f"a batch of {rows} rows does not split into grad_accum={grad_accum} micro-batches")
    data = axis_size(mesh, "dp") * axis_size(mesh, "fsdp")
    if (rows // grad_accum) % data:
        raise LWMError(f"micro-batches of {rows // grad_accum} rows do not divide over dp x fsdp = {data} "
                       "devices; make the batch a multiple of that")
    if not config.vision and (out["vision_masks"].any() or out["target_vision"].any()):
        raise LWMError("the batch has vision tokens but the model is text-only; load a vision-language model")
    for ids, is_vision, used, name in ((out["input_ids"], out["vision_masks"], out["attention_mask"], "input_ids"),
                                       (out["targets"], out["target_vision"], out["loss_weights"] > 0, "targets")):
        limit = np.where(is_vision, config.vision_vocab_size, config.vocab_size)
        bad = used & ((ids < 0) | (ids >= limit))
        if bad.any():
            raise LWMError(f"{name} holds id {ids[bad][0]}, outside the model's vocabulary (text < {config.vocab_size}"
                           + (f", vision < {config.vision_vocab_size}" if config.vision else "") + ")")
    return out


def place_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """Host arrays -> device arrays sharded over (dp, fsdp) x sp. With several processes each one gives
    its own rows and the global batch stacks them in process order (`make_array_from_process_local_data`),
    which needs the processes to split the rows: the mesh's leading (dp, fsdp) devices must be theirs."""
    if mesh is None:
        return jax.device_put(batch)
    processes = jax.process_count()
    if processes == 1:
        return shard_batch(batch, mesh)
    sp = axis_size(mesh, seq_axis())
    if batch["input_ids"].shape[1] % sp:  # the message shard_batch gives on one process
        raise LWMError(f"sequence length {batch['input_ids'].shape[1]} does not divide by sp={sp}; pad it to a "
                       f"multiple of {sp} (lwm_core.mesh.pad_sequence) and mask the padding")

    rows, length = batch["input_ids"].shape
    shape = (rows * processes, length)
    sharding = NamedSharding(mesh, logical_to_spec(["batch", "seq"], mesh, shape))
    # this process's devices must hold whole rows, `rows` of them: [start, start + rows) x [0, length)
    held = sharding.addressable_devices_indices_map(shape).values()
    span = lambda axis, size: (min(s[axis].start or 0 for s in held), max(s[axis].stop or size for s in held))
    if span(0, shape[0])[1] - span(0, shape[0])[0] != rows or span(1, length) != (0, length):
        raise LWMError(f"the mesh {dict(mesh.shape)} does not split the batch rows over the {processes} "
                       "processes; put the processes on the data axes (dp, fsdp), e.g. --mesh "
                       f"1,{processes},1,{mesh.size // processes} (FSDP across them, ring inside each)")
    return {k: jax.make_array_from_process_local_data(sharding, v, (rows * processes, *v.shape[1:]))
            for k, v in batch.items()}


class TrainStep:
    """One model, TrainConfig and mesh -> `init_state`, `abstract_state` and the compiled step."""

    def __init__(self, model: LWMModel, config: TrainConfig, mesh=None):
        one_device = lambda m: m is None or m.size == 1
        mesh = None if one_device(mesh) else mesh
        model_mesh = None if one_device(model.mesh) else model.mesh
        mesh = model_mesh if mesh is None else mesh
        if mesh != model_mesh:
            raise LWMError("the model was built on another mesh than the one given; load it with the same "
                           "mesh (load_model(..., mesh=mesh)) or pass mesh=None")
        if not model.config.scan_layers:
            raise LWMError("training runs scanned layers; load the model with scan_layers=True (the default)")
        self.config, self.mesh = config, mesh
        self.model_config = model.config if config.dtype is None else model.config.replace(dtype=config.dtype)
        # The graph the step merges the parameters into: the model's own, or one with the training dtype.
        runner = model if self.model_config == model.config else abstract_model(self.model_config, model.mesh)
        self.graphdef, _, self.rest = nnx.split(runner, nnx.Param, ...)
        self.schedule = learning_rate(config)

        abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                       nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        trained, _ = split_frozen(abstract_params, config.freeze)
        self.optimizer = make_optimizer(config, trained)
        shardings = params_shardings(model, mesh)
        self.opt_shardings = opt_state_shardings(jax.eval_shape(self.optimizer.init, trained), trained,
                                                 split_frozen(shardings, config.freeze)[0], mesh)
        self.shardings = {"params": shardings, "opt_state": self.opt_shardings, "step": replicated(mesh),
                          "rng": replicated(mesh)}
        self._init_opt = jax.jit(self.optimizer.init, out_shardings=self.opt_shardings)
        self._step = jax.jit(self._train_step, out_shardings=(self.shardings, replicated(mesh)), donate_argnums=0)
        self._abstract = abstract_arrays(
            {"params": abstract_params, "opt_state": jax.eval_shape(self.optimizer.init, trained),
             "step": jax.ShapeDtypeStruct((), jnp.int32), "rng": jax.eval_shape(self._key)},
            self.shardings)

    # ------------------------------------------------------------------ state
    def init_state(self, model: LWMModel) -> TrainState:
        """Step 0: the model's weights (placed on their shardings), fresh optimizer state, the seed's key."""
        params = jax.device_put(nnx.to_pure_dict(nnx.state(model, nnx.Param)), self.shardings["params"])
        trained, _ = split_frozen(params, self.config.freeze)
        return TrainState(params=params, opt_state=self._init_opt(trained),
                          step=jax.device_put(jnp.int32(0), self.shardings["step"]),
                          rng=jax.device_put(self._key(), self.shardings["rng"]))

    def _key(self) -> jax.Array:
        return jax.random.key_data(jax.random.key(self.config.seed))  # raw uint32 words: checkpoint-friendly

    def abstract_state(self) -> TrainState:
        """The state as `jax.ShapeDtypeStruct`s with their shardings: what a checkpoint restores onto."""
        return TrainState(**self._abstract)

    def model(self, state: TrainState) -> LWMModel:
        """The model with the state's parameters (sharing their arrays)."""
        return nnx.merge(self.graphdef, state.params, self.rest)

    # ------------------------------------------------------------------ the step
    def __call__(self, state: TrainState, batch: dict) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer step on `batch` (dict of [B, T] numpy arrays, see `check_batch`). Returns the
        new state and the metrics as device scalars: loss, text_loss, vision_loss, text_accuracy,
        vision_accuracy, tokens, grad_norm (before clipping), param_norm, lr."""
        batch = check_batch(batch, self.model_config, grad_accum=self.config.grad_accum, mesh=self.mesh,
                            processes=jax.process_count())
        placed = place_batch(batch, self.mesh)
        try:
            arrays, metrics = self._step(state.arrays(), placed)
        except jax.errors.JaxRuntimeError as exc:
            error = from_runtime_error(exc)
            if error is None:
                raise
            raise error from None
        return state.with_arrays(arrays), metrics

    def _gradients(self, trained, frozen, batch):
        """Gradient of sum(w * ce) over the trained parameters, and the loss sums of the batch."""

        def weighted_ce(trained, micro):
            model = nnx.merge(self.graphdef, join(trained, frozen), self.rest)
            sums = loss_sums(model, micro, chunk_size=self.config.loss_chunk_size)
            return sums["weighted_ce"], sums

        grad_fn = jax.grad(weighted_ce, has_aux=True)
        accum = self.config.grad_accum
        if accum == 1:
            return grad_fn(trained, batch)
        # Micro-batch j takes rows j, j + accum, ...: the row axis keeps its (dp, fsdp) sharding.
        micro = jax.tree.map(lambda x: jnp.moveaxis(x.reshape(-1, accum, *x.shape[1:]), 1, 0), batch)

        def add(total, micro_batch):
            return jax.tree.map(jnp.add, total, grad_fn(trained, micro_batch)), None

        zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, trained, jax.tree.map(lambda x: x[0], micro)))
        return jax.lax.scan(add, zero, micro)[0]

    def _train_step(self, arrays: dict, batch: dict):
        trained, frozen = split_frozen(arrays["params"], self.config.freeze)
        grads, sums = self._gradients(trained, frozen, batch)
        # d loss = d sum(w * ce) / sum(w): the weights do not depend on the parameters.
        weight = jnp.maximum(sums["weight"], np.finfo(np.float32).tiny)
        grads = jax.tree.map(lambda g: g / weight, grads)
        updates, opt_state = self.optimizer.update(grads, arrays["opt_state"], trained)
        trained = optax.apply_updates(trained, updates)
        _, metrics = finish(sums)
        params = join(trained, frozen)
        metrics.update(grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params),
                       lr=self.schedule(arrays["step"]))
        rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(arrays["rng"]))[0])
        new = {"params": params, "opt_state": opt_state, "step": arrays["step"] + 1, "rng": rng}
        return new, metrics
