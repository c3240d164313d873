"""`lwm train --stage vqgan` and `--stage tokenizer`: the files they write load with the library's own
readers (load_vqgan, load_tokenizer), the held-out summary is measured, and bad input is one line."""

import json

import numpy as np
from typer.testing import CliRunner

from lwm_cli.main import app
from lwm_core.data.shapes_write import write_shapes_dataset
from lwm_core.text import load_tokenizer
from lwm_core.text.train_tokenizer import corpus_lines
from lwm_core.vqgan import VQGANConfig, load_vqgan
from lwm_core.vqgan.train import read_training_frames

runner = CliRunner()
SMALL = VQGANConfig(resolution=16, hidden_channels=8, channel_mult=(1, 2), num_res_blocks=1, z_channels=8,
                    num_embeddings=32, quantized_embed_dim=4, norm_num_groups=4)


def _lwm(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_vqgan_stage_trains_and_writes_a_loadable_vqgan(tmp_path):
    write_shapes_dataset(tmp_path / "d", "train", n=6, size=40, frames=4)
    frames = read_training_frames([tmp_path / "d" / "clips"], 16)
    assert frames.shape == (24, 16, 16, 3) and frames.dtype == np.uint8  # 40x40 clips read at 16x16
    out = tmp_path / "vq.safetensors"
    result = _lwm("train", "--stage", "vqgan", "--data", tmp_path / "d" / "clips", "--vqgan-config", SMALL.to_json(),
                  "--steps", "4", "--batch-size", "4", "--log-every", "2", "--out", out)
    assert result.exit_code == 0, result.output
    vq = load_vqgan(out)
    assert vq.config == SMALL
    assert vq.encode(frames[:2].astype(np.float32) / 127.5 - 1).shape == (2, 8, 8)
    metrics = [json.loads(line) for line in (tmp_path / "vq.safetensors.metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4]
    summary = json.loads((tmp_path / "vq.safetensors.summary.json").read_text())
    assert summary["frames"] == 24 and summary["held_out_frames"] == 0  # 24 // 50: too few to hold out


def test_vqgan_stage_refusals(tmp_path):
    result = _lwm("train", "--stage", "vqgan", "--data", tmp_path / "none", "--vqgan-config", "lwm-tiny",
                  "--out", tmp_path / "vq.safetensors")
    assert result.exit_code == 2 and "no such file or folder" in result.output
    result = _lwm("train", "--stage", "vqgan", "--data", tmp_path, "--out", tmp_path / "vq.safetensors")
    assert result.exit_code == 2 and "--vqgan-config" in result.output
    result = _lwm("train", "--stage", "3", "--data", tmp_path, "--out", tmp_path / "x")
    assert result.exit_code == 2 and "vqgan or tokenizer" in result.output
    result = _lwm("train", "--stage", "vqgan", "--data", tmp_path, "--vqgan-config", "lwm-tiny",
                  "--foreground-weight", "0.5", "--out", tmp_path / "vq.safetensors")
    assert result.exit_code == 2 and "foreground weight must be at least 1" in result.output
    assert not list(tmp_path.glob("vq*"))


def test_tokenizer_stage_trains_a_llama_style_sentencepiece(tmp_path):
    lines = [{"text": f"The red square {k} moves left.", "vision": "tokens/x.npz",
              "conversations": [{"from": "human", "value": "What colour is the circle?"},
                                {"from": "gpt", "value": "Blue."}]} for k in range(300)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    out = tmp_path / "tok" / "tokenizer.model"
    result = _lwm("train", "--stage", "tokenizer", "--data", tmp_path / "a.jsonl", "--vocab-size", "320",
                  "--out", out)
    assert result.exit_code == 0, result.output
    tok = load_tokenizer(out)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (320, 1, 2)
    assert tok.decode(tok.encode("What colour is the circle? 1234")) == "What colour is the circle? 1234"
    assert len(tok.encode("1234")) == 5  # digits split as LLaMA's (the dummy-prefix piece, then one per digit)
    text = list(corpus_lines([tmp_path / "a.jsonl"]))
    assert "Blue." in text and not any("npz" in line for line in text)  # conversations read, vision paths not
    result = _lwm("train", "--stage", "tokenizer", "--data", tmp_path / "a.jsonl", "--vocab-size", "5000",
                  "--out", tmp_path / "big.model")
    assert result.exit_code == 2 and "Vocabulary size too high" in result.output
    assert not (tmp_path / "big.model").exists()
