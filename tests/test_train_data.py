"""The trainer consumes what `lwm_core.data` produces: the same batch contract, masked-packed text and
vision examples through a train step, and the data position saved and put back by either iterator
convention (lwm_core.data's state/restore, grain's get_state/set_state) or by replay."""

import numpy as np

import lwm_core
from lwm_core import data
from lwm_core.train import BATCH_KEYS, TrainConfig, TrainStep
from lwm_core.train.step import _DTYPES
from lwm_core.train.trainer import _position, _restore_position

TINY = dict(vocab_size=97, hidden_size=48, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
            max_sequence_length=128, vision=True)


def test_the_batch_contract_is_the_data_pipelines():
    assert BATCH_KEYS == data.BATCH_KEYS
    assert {k: np.dtype(v) for k, v in _DTYPES.items()} == {k: np.dtype(v) for k, v in data.packing.DTYPES.items()}


def _example(rng, length, vision):
    tokens = rng.integers(3, 97, length)
    is_vision = np.zeros(length, bool)
    if vision:  # a span of vision codes in the middle, as LWM's `<vision>` ... `</vision>`
        is_vision[length // 3: 2 * length // 3] = True
        tokens = np.where(is_vision, rng.integers(0, 8192, length), tokens)
    loss = np.ones(length, np.float32)
    loss[:2] = 0.0  # a bracketed prompt: no loss
    return data.Example(tokens, loss, is_vision)


def test_packed_examples_from_lwm_core_data_train():
    rng = np.random.default_rng(0)
    examples = [_example(rng, int(n), vision=i % 2 == 0) for i, n in enumerate(rng.integers(6, 13, 16))]
    batches, _ = data.pack_examples(examples, batch_size=2, seq_length=32)
    model = lwm_core.load_model("random:debug", **TINY)
    step = TrainStep(model, TrainConfig(lr=1e-3, warmup=0, loss_chunk_size=8))
    state = step.init_state(model)
    for batch in batches[:2]:
        assert (batch["segment_ids"] > 1).any() and batch["target_vision"].any()  # packed, with vision targets
        state, metrics = step(state, batch)
        assert int(metrics["tokens"]) == int((batch["loss_weights"] > 0).sum())
        assert np.isfinite(float(metrics["loss"])) and float(metrics["vision_loss"]) > 0


class _Grain:
    """grain's convention: get_state / set_state."""

    def __init__(self):
        self.i = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.i += 1
        return self.i

    def get_state(self):
        return {"i": self.i}

    def set_state(self, state):
        self.i = state["i"]


def test_data_position_conventions():
    grain = _Grain()
    next(grain), next(grain)
    assert _position(grain, 2) == {"batches": 2, "iterator": {"i": 2}}
    fresh = _Grain()
    assert _restore_position(fresh, fresh, {"batches": 2, "iterator": {"i": 2}}) == 2 and next(fresh) == 3

    plain = iter(range(10))  # no position methods: replayed
    assert _position(plain, 4) == {"batches": 4}
    assert _restore_position(plain, plain, {"batches": 4}) == 4 and next(plain) == 4
