"""MFU and TensorBoard: the FLOP formula against hand-worked counts and the model's own kernels, MFU in
metrics.jsonl consistent with tokens/s and the measured peak, and the hand-written event files read
back by TensorBoard's own reader with the same scalars as metrics.jsonl."""

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import lwm_core
from lwm_core.config import ModelConfig
from lwm_core.train import TrainConfig, train
from lwm_core.train.flops import matmul_flops_per_s, matmul_params, train_flops_per_token
from lwm_core.train.synthetic import PatternBatches
from lwm_core.train.tensorboard import crc32c, masked_crc32c

TINY = dict(vocab_size=97, hidden_size=48, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
            max_sequence_length=128)


def test_flops_per_token_by_hand():
    # L=2, D=48, F=96, V=512: N = 2 * (4 * 48^2 + 3 * 48 * 96) + 48 * 512 = 2 * (9216 + 13824) + 24576
    config = ModelConfig(vocab_size=512, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4)
    assert matmul_params(config) == 70656
    # 6 N + 6 L D T at T = 32: 423936 + 18432
    assert train_flops_per_token(config, 32) == 442368
    # vision: + 48 * 8448 for the vision head
    assert matmul_params(config.replace(vision=True)) == 70656 + 405504


@pytest.mark.parametrize("vision", [False, True])
def test_matmul_params_are_the_models_kernels(vision):
    model = lwm_core.load_model("random:debug", **TINY, vision=vision)
    params = model.params_dict()
    # dense kernels and heads; the norms' scales are called "kernel" too but are vectors (per layer)
    kernels = sum(int(np.prod(v.shape)) for k, v in params.items() if k.endswith("/kernel") and "norm" not in k
                  and "ln_f" not in k)
    assert matmul_params(model.config) == kernels


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value
    assert masked_crc32c(b"") == 0xA282EAD8  # crc32c('') = 0: the mask adds only its constant


def test_metrics_and_tensorboard(tmp_path):
    config = TrainConfig(lr=3e-3, warmup=1, steps=6, log_every=2, save_every=6, loss_chunk_size=16)
    model = lwm_core.load_model("random:debug", **TINY)
    train(config, model, PatternBatches(batch_size=2, seq_len=32, vocab_size=97), out_dir=tmp_path)

    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 6]
    batch = next(PatternBatches(batch_size=2, seq_len=32, vocab_size=97))
    positions, real = batch["attention_mask"].size, int(batch["attention_mask"].sum())
    peak = matmul_flops_per_s(model.config.dtype)  # the same process: the cached measurement the run used
    for line in lines:
        assert 0 < line["mfu"] < 1
        # mfu * peak = model FLOP/s = (positions / s) * FLOPs per token; tokens_per_s counts real tokens
        flops_per_s = line["tokens_per_s"] * positions / real * train_flops_per_token(model.config, 32)
        np.testing.assert_allclose(line["mfu"] * peak, flops_per_s, rtol=1e-9)

    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(events) == 1
    reader = EventAccumulator(str(tmp_path))
    reader.Reload()
    tags = {"loss", "text_loss", "vision_loss", "lr", "grad_norm", "tokens_per_s", "mfu"}
    assert set(reader.Tags()["scalars"]) == tags
    for tag in tags:
        scalars = reader.Scalars(tag)
        assert [s.step for s in scalars] == [2, 4, 6]
        expected = np.array([line[tag] for line in lines], np.float32)  # simple_value is a float32
        np.testing.assert_array_equal(np.array([s.value for s in scalars], np.float32), expected)

