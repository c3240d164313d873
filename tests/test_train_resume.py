"""The loop, checkpoints and resume: 20 steps straight equal 10 steps, Ctrl-C (checkpoint saved), a
fresh restart with new objects, and 10 more steps: the same losses and the same parameters, bit for bit.
The run's folder is an `orbax::` checkpoint that `load_model` reads."""

import json
import os
import signal

import jax
import numpy as np
import pytest

import lwm_core
from lwm_core.checkpoint.common import flatten_tree
from lwm_core.train import TrainConfig, TrainStep, restore_latest, train
from lwm_core.train.synthetic import PatternBatches

TINY = dict(vocab_size=97, hidden_size=48, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
            max_sequence_length=128)
CONFIG = TrainConfig(lr=3e-3, warmup=3, schedule="cosine", steps=20, save_every=10, keep=2, log_every=1,
                     loss_chunk_size=16, seed=5)


def _fresh():
    """New objects, as a new process would make them."""
    return lwm_core.load_model("random:debug", **TINY), PatternBatches(batch_size=2, seq_len=32, vocab_size=97)


def _lines(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    model, batches = _fresh()
    state = train(CONFIG, model, batches, out_dir=out)
    return out, model, state


def test_metrics_log_every_step(straight):
    out, _, _ = straight
    lines = _lines(out)
    assert [line["step"] for line in lines] == list(range(1, 21))
    for name in ("loss", "text_loss", "vision_loss", "lr", "grad_norm", "tokens", "tokens_per_s", "param_norm"):
        assert all(np.isfinite(line[name]) for line in lines), name
    assert lines[0]["lr"] == 0.0 and lines[3]["lr"] == pytest.approx(3e-3)
    assert lines[-1]["loss"] < lines[0]["loss"]


def test_layout_and_load_model_reads_the_newest_weights(straight):
    out, model, state = straight
    assert sorted(os.listdir(out / "checkpoints")) == ["10", "20"]  # keep=2
    assert os.readlink(out / "params") == os.path.join("checkpoints", "20", "params")
    assert json.loads((out / "lwm_config.json").read_text()) == model.config.architecture()
    loaded = lwm_core.load_model(str(out))
    assert loaded.config.architecture() == model.config.architecture()
    ours = flatten_tree(jax.device_get(state.params))
    for key, value in loaded.params_dict().items():
        assert value.tobytes() == ours[key].tobytes(), key
    # The model handed to train() holds the trained weights.
    for key, value in model.params_dict().items():
        assert value.tobytes() == ours[key].tobytes(), key


def test_restore_latest_onto_the_step_shardings(straight):
    out, model, state = straight
    restored = restore_latest(out, TrainStep(model, CONFIG).abstract_state())
    assert int(restored.step) == 20 and restored.data_state == {"batches": 20, "iterator": {"index": 20}}
    for a, b in zip(jax.tree.leaves(restored.arrays()), jax.tree.leaves(state.arrays()), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert restore_latest(out / "nothing-here", TrainStep(model, CONFIG).abstract_state()) is None


def test_interrupt_then_resume_equals_the_straight_run(straight, tmp_path):
    straight_out, _, straight_state = straight
    model, batches = _fresh()

    def ctrl_c_at_step_7(step, metrics):
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)  # deferred: the loop saves step 7, then raises

    with pytest.raises(KeyboardInterrupt):
        train(CONFIG, model, batches, out_dir=tmp_path, on_step=ctrl_c_at_step_7)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["7"]

    with pytest.raises(lwm_core.LWMError, match="resume=True"):  # never silently restart over a run
        train(CONFIG, *_fresh(), out_dir=tmp_path)

    model, batches = _fresh()
    state = train(CONFIG, model, batches, out_dir=tmp_path, resume=True)
    assert int(state.step) == 20
    resumed, reference = _lines(tmp_path), _lines(straight_out)
    assert [line["step"] for line in resumed] == list(range(1, 21))
    for a, b in zip(resumed, reference, strict=True):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], a["step"]
    for a, b in zip(jax.tree.leaves(state.arrays()), jax.tree.leaves(straight_state.arrays()), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_keyboard_interrupt_from_a_callback_saves_that_step(tmp_path):
    model, batches = _fresh()

    def stop(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(CONFIG.replace(steps=5), model, batches, out_dir=tmp_path, on_step=stop)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]
    assert [line["step"] for line in _lines(tmp_path)] == [1, 2, 3]
