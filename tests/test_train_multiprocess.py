"""Two processes on localhost (jax.distributed, CPU collectives through gloo) x 4 devices each train
like one process x 8 devices: the same losses and final weights to 1e-5, from Python and through
`lwm train --coordinator ... --num-processes 2 --process-id I`.

The mesh 1,2,1,4 puts FSDP across the two processes (weights sharded over them, gradients reduced
between them) and the ring attention over each process's 4 devices; each process feeds its own 2 of
the batch's 4 rows. This file is also the worker: `python tests/test_train_multiprocess.py PID PORT OUT`.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TINY = dict(vocab_size=97, hidden_size=48, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
            max_sequence_length=128, attention_impl="ring", sequence_layout="zigzag", scan_query_chunk_size=8,
            scan_key_chunk_size=8, remat_block="nothing_saveable")
MESH = "1,2,1,4"
PROCESSES, ROWS, STEPS = 2, 4, 4


def _config():
    from lwm_core.train import TrainConfig

    return TrainConfig(lr=3e-3, warmup=1, steps=STEPS, save_every=STEPS, log_every=1, loss_chunk_size=16, seed=3)


class _Rows:
    """The rows [first, first + count) of every batch of `batches` (one process's share)."""

    def __init__(self, batches, first: int, count: int):
        self.batches, self.first, self.count = batches, first, count

    def __iter__(self):
        return self

    def __next__(self):
        return {k: v[self.first:self.first + self.count] for k, v in next(self.batches).items()}


def _run(out, process_id: int = 0, processes: int = 1):
    import lwm_core
    from lwm_core.mesh import make_mesh
    from lwm_core.train import train
    from lwm_core.train.synthetic import PatternBatches

    mesh = make_mesh(MESH)
    model = lwm_core.load_model("random:debug", mesh=mesh, **TINY)
    share = ROWS // processes
    batches = _Rows(PatternBatches(batch_size=ROWS, seq_len=32, vocab_size=97), process_id * share, share)
    train(_config(), model, batches, out_dir=out, mesh=mesh)
    if processes > 1:  # a mesh whose ring spans the processes cannot take per-process rows: refused
        from lwm_core import LWMError
        from lwm_core.train.step import place_batch

        try:
            place_batch(next(batches), make_mesh("1,1,1,8"))
        except LWMError as exc:
            assert "does not split the batch rows over the 2 processes" in str(exc), exc
        else:
            raise AssertionError("a mesh that does not split the rows over the processes was accepted")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_workers(command_for) -> None:
    """Start PROCESSES workers (`command_for(process_id, port)` -> argv) with 4 CPU devices each; wait."""
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    workers = [subprocess.Popen(command_for(i, port), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for i in range(PROCESSES)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-3000:]


def _assert_same_run(one_dir: Path, two_dir: Path) -> list[dict]:
    """The two runs logged the same steps, losses, norms and tokens, and saved the same weights (1e-5);
    returns the one-process run's metrics."""
    import lwm_core

    one, two = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
                for d in (one_dir, two_dir))
    assert [line["step"] for line in two] == list(range(1, STEPS + 1))
    for key in ("loss", "grad_norm", "param_norm", "tokens"):
        np.testing.assert_allclose([line[key] for line in two], [line[key] for line in one], rtol=1e-5, atol=1e-5,
                                   err_msg=key)
    weights_one = lwm_core.load_model(str(one_dir)).params_dict()
    weights_two = lwm_core.load_model(str(two_dir)).params_dict()
    assert weights_two.keys() == weights_one.keys()
    for key, value in weights_one.items():
        np.testing.assert_allclose(weights_two[key], value, rtol=1e-5, atol=1e-5, err_msg=key)
    return one


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    # one process x 8 devices (this one: conftest gives it 8), then two processes x 4 devices
    _run(tmp_path / "one")
    _run_workers(lambda i, port: [sys.executable, __file__, str(i), str(port), str(tmp_path / "two")])
    one = _assert_same_run(tmp_path / "one", tmp_path / "two")
    assert one[-1]["loss"] < one[0]["loss"]  # it trained


@pytest.mark.slow
def test_lwm_train_on_two_processes(tmp_path):
    """The CLI: each process reads every other line and packs its own rows. With `--packing pad` and
    examples shorter than a row, a row is one line, so the global batch holds the same rows as one
    process's (lines 0-3, stacked 0, 2, 1, 3): a sum over rows, the same loss and gradients."""
    import lwm_core
    from typer.testing import CliRunner

    from lwm_cli.main import app

    rng = np.random.default_rng(0)
    words = "the cat sat on a mat and the dog ran to the red ball while birds sang".split()
    lines = [json.dumps({"text": " ".join(rng.choice(words, rng.integers(5, 20)))}) for _ in range(40)]
    (tmp_path / "books.jsonl").write_text("\n".join(lines) + "\n")
    tokenizer = Path(__file__).parent / "data" / "tokenizer" / "tokenizer.model"
    config = lwm_core.ModelConfig(**{k: TINY[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                           "num_attention_heads", "max_sequence_length")},
                                  vocab_size=512)
    (tmp_path / "tiny.json").write_text(config.to_json())
    args = ["train", "--data", str(tmp_path / "books.jsonl"), "--tokenizer", str(tokenizer), "--config",
            str(tmp_path / "tiny.json"), "--seq-len", "64", "--batch-size", str(ROWS), "--steps", str(STEPS),
            "--packing", "pad", "--mesh", MESH, "--log-every", "1", "--lr", "3e-3", "--loss-chunk", "16"]

    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "one")])
    assert result.exit_code == 0, result.output
    command = [sys.executable, "-c", "from lwm_cli.main import main; main()", *args, "--out", str(tmp_path / "two"),
               "--num-processes", str(PROCESSES)]
    _run_workers(lambda i, port: [*command, "--coordinator", f"localhost:{port}", "--process-id", str(i)])
    _assert_same_run(tmp_path / "one", tmp_path / "two")


if __name__ == "__main__":  # a worker: PID PORT OUT
    import jax

    process_id, port, out = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=PROCESSES,
                               process_id=process_id)
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    _run(out, process_id, PROCESSES)
