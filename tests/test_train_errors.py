"""Bad input to training fails early with one-line LWMErrors, and a failed save keeps the previous
checkpoint (and the exported weights) intact."""

import os
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import lwm_core
from lwm_core import LWMError
from lwm_core.mesh import make_mesh
from lwm_core.train import TrainConfig, TrainStep, restore_latest, train
from lwm_core.train.synthetic import PatternBatches

TINY = dict(vocab_size=97, hidden_size=48, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
            max_sequence_length=128)


def _model(mesh=None, **overrides):
    return lwm_core.load_model("random:debug", mesh=mesh, **{**TINY, **overrides})


def _batches(**kw):
    return PatternBatches(**{"batch_size": 2, "seq_len": 32, "vocab_size": 97, **kw})


def _one_line(excinfo):
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    return message


@pytest.mark.parametrize("fields,needle", [
    (dict(steps=0), "steps"), (dict(lr=0.0), "lr"), (dict(schedule="linear"), "schedule"),
    (dict(schedule="cosine", warmup=10, steps=10), "warmup"), (dict(freeze="vision"), "freeze"),
    (dict(dtype="int8"), "dtype"), (dict(grad_accum=0), "grad_accum"), (dict(b2=1.0), "b2"),
    (dict(end_lr_ratio=2.0), "end_lr_ratio"), (dict(loss_chunk_size=-1), "loss_chunk_size"),
    (dict(keep=0), "keep"),
])
def test_train_config_invariants(fields, needle):
    with pytest.raises(LWMError) as excinfo:
        TrainConfig(**fields)
    assert needle in _one_line(excinfo)


def test_bad_batches_are_refused_on_the_host():
    model = _model()
    step = TrainStep(model, TrainConfig(grad_accum=2))
    state = step.init_state(model)
    good = next(_batches())
    cases = [
        ({k: v for k, v in good.items() if k != "segment_ids"}, "lacks segment_ids"),
        (dict(good, targets=good["targets"][:, :-1]), "must be [batch, seq]"),
        (dict(good, vision_masks=np.ones_like(good["vision_masks"])), "text-only"),
        (dict(good, input_ids=np.where(good["attention_mask"], 200, 0)), "outside the model's vocabulary"),
        ({k: v[:1] for k, v in good.items()}, "grad_accum=2"),
        ({k: np.concatenate([v] * 5, axis=1) for k, v in good.items()}, "max_sequence_length"),
    ]
    for batch, needle in cases:
        with pytest.raises(LWMError) as excinfo:
            step(state, batch)
        assert needle in _one_line(excinfo)
    assert state.alive  # a refused batch never reaches the donated step


def test_freeze_text_on_a_text_model_is_refused():
    with pytest.raises(LWMError) as excinfo:
        TrainStep(_model(), TrainConfig(freeze="text"))
    assert "nothing to train" in _one_line(excinfo)


def test_a_model_built_off_the_given_mesh_is_refused():
    with pytest.raises(LWMError) as excinfo:
        TrainStep(_model(), TrainConfig(), make_mesh("1,1,1,4", jax.devices()[:4]))
    assert "another mesh" in _one_line(excinfo)


def test_a_sequence_the_mesh_cannot_split(tmp_path):
    mesh = make_mesh("1,1,1,4", jax.devices()[:4])
    model = _model(mesh, attention_impl="ring", scan_query_chunk_size=8, scan_key_chunk_size=8)
    with pytest.raises(LWMError) as excinfo:
        train(TrainConfig(steps=2), model, _batches(seq_len=30), out_dir=tmp_path)
    assert "sequence length 30 does not divide by sp=4" in _one_line(excinfo)


def test_an_output_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(LWMError) as excinfo:
        train(TrainConfig(steps=2), _model(), _batches(), out_dir=tmp_path / "file" / "run")
    assert "not writable" in _one_line(excinfo)


def test_a_read_only_output_folder(tmp_path, monkeypatch):
    # chmod does not stop root (CI runs as root): make writes into the folder fail as a read-only
    # folder (or a full disk) would
    real_write = Path.write_bytes

    def read_only(self, data):
        if self.parent == tmp_path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(LWMError) as excinfo:
        train(TrainConfig(steps=2), _model(), _batches(), out_dir=tmp_path)
    assert "not writable" in _one_line(excinfo) and "Permission denied" in _one_line(excinfo)


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    config = TrainConfig(steps=3, save_every=3, log_every=1, loss_chunk_size=16)
    model = _model()
    first = train(config, model, _batches(), out_dir=tmp_path)
    saved = [np.asarray(x).copy() for x in jax.tree.leaves(first.arrays())]

    def unwritable(self, step, *args, **kwargs):  # what a folder turned read-only (or a full disk) does
        (tmp_path / "checkpoints" / f"{step}.orbax-checkpoint-tmp-1").mkdir()
        raise PermissionError(13, "Permission denied", str(tmp_path / "checkpoints"))

    monkeypatch.setattr(ocp.CheckpointManager, "save", unwritable)
    with pytest.raises(LWMError) as excinfo:
        train(config.replace(steps=6), _model(), _batches(), out_dir=tmp_path, resume=True)
    message = _one_line(excinfo)
    assert "cannot save the checkpoint of step 6" in message and "step 3 is intact" in message
    monkeypatch.undo()

    assert os.readlink(tmp_path / "params") == os.path.join("checkpoints", "3", "params")
    restored = restore_latest(tmp_path, TrainStep(model, config).abstract_state())
    assert int(restored.step) == 3
    for a, b in zip(jax.tree.leaves(restored.arrays()), saved, strict=True):
        assert np.asarray(a).tobytes() == b.tobytes()
    loaded = lwm_core.load_model(str(tmp_path))
    np.testing.assert_array_equal(loaded.params_dict()["lm_head/kernel"],
                                  np.asarray(first.params["lm_head"]["kernel"]))


def test_a_folder_holding_another_models_run(tmp_path):
    train(TrainConfig(steps=1, loss_chunk_size=16), _model(), _batches(), out_dir=tmp_path)
    with pytest.raises(LWMError) as excinfo:
        train(TrainConfig(steps=2), _model(hidden_size=32), _batches(), out_dir=tmp_path, resume=True)
    assert "another model" in _one_line(excinfo)
