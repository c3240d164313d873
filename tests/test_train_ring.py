"""A tiny model learns with ring attention on 4 simulated devices (mesh 1,1,1,4, zigzag layout): on a
noisy repeating pattern its loss ends far below the unigram entropy of the text, which is all a model
that ignores the context can reach."""

import json

import jax
import numpy as np

import lwm_core
from lwm_core.mesh import make_mesh
from lwm_core.train import TrainConfig, train
from lwm_core.train.synthetic import PatternBatches

TINY = dict(vocab_size=97, hidden_size=48, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
            max_sequence_length=128)


def _batches(seed):
    return PatternBatches(batch_size=4, seq_len=64, vocab_size=97, pattern_len=7, noise=0.1, seed=seed)


def unigram_entropy(batches, n_batches=50) -> float:
    """Entropy (nats) of the targets' token frequencies: the best loss without context."""
    counts = np.zeros(97)
    for _ in range(n_batches):
        batch = next(batches)
        np.add.at(counts, batch["targets"][batch["loss_weights"] > 0], 1)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_ring_training_beats_the_unigram_entropy(tmp_path):
    mesh = make_mesh("1,1,1,4", jax.devices()[:4])
    model = lwm_core.load_model("random:debug", mesh=mesh, **TINY, attention_impl="ring", sequence_layout="zigzag",
                                scan_query_chunk_size=8, scan_key_chunk_size=8, remat_block="nothing_saveable")
    config = TrainConfig(lr=3e-3, warmup=10, schedule="cosine", steps=160, weight_decay=0.0, save_every=80,
                         log_every=1, loss_chunk_size=16)
    state = train(config, model, _batches(seed=0), out_dir=tmp_path, mesh=mesh)

    entropy = unigram_entropy(_batches(seed=1))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    final = float(np.mean([line["loss"] for line in lines[-20:]]))  # every batch is new data
    assert int(state.step) == 160 and len(lines) == 160
    assert 2.0 < entropy < 3.0
    assert lines[0]["loss"] > entropy  # a random model starts near log(97)
    print(f"unigram entropy {entropy:.3f} nats, final loss {final:.3f}")
    assert final < 0.5 * entropy, (final, entropy)
    assert np.mean([line["text_accuracy"] for line in lines[-20:]]) > 0.8  # ~0.9 of the tokens follow the pattern
