"""Training data for LWM: readers, LWM's field syntax, vision spans, chat records and masked packing.

    from lwm_core.data import DataLoader, RecordProcessor, VisionSpec
    proc = RecordProcessor(tokenizer, "[question],answer", vision=VisionSpec.from_vqgan(vqgan_config))
    loader = DataLoader(["train.jsonl"], proc, batch_size=8, seq_length=4096)
    batch = next(loader)        # input_ids, targets, loss_weights, segment_ids, position_ids,
                                # vision_masks, target_vision, attention_mask: all [B, T]
    state = loader.state(); loader.restore(state)

Modules: `readers` (jsonl / txt, sharding, malformed-line report), `fields` (LWM's field strings ->
`Example`), `vision` (codes and token files -> `<vision>` spans), `chat` (LLaVA conversations in LWM's
chat template), `packing` (the batch contract and the masked / pad / concat packers), `loader`
(resumable, optionally prefetching iterator).
"""

from lwm_core.data.fields import Example, RecordProcessor, parse_fields
from lwm_core.data.loader import DataLoader
from lwm_core.data.packing import BATCH_KEYS, STAT_KEYS, Packer, balanced_weights
from lwm_core.data.readers import ReadReport, Record, RecordReader
from lwm_core.data.vision import BadRecord, VisionSpec

__all__ = ["BATCH_KEYS", "STAT_KEYS", "BadRecord", "DataLoader", "Example", "Packer", "ReadReport", "Record",
           "RecordProcessor", "RecordReader", "VisionSpec", "balanced_weights", "pack_examples", "parse_fields"]


def pack_examples(examples, *, batch_size: int, seq_length: int, **packer_options):
    """Examples (a list) -> (list of batches, stats): the packer without files, e.g. for tests or
    data already in memory. `packer_options` are Packer's (packing, overflow, weighting, open_rows)."""
    import numpy as np

    from lwm_core.data.packing import empty_rows

    packer = Packer(seq_length, **packer_options)
    for example in examples:
        packer.add(example)
    packer.finish()
    batches = []
    while packer.rows_ready():
        rows = [packer.pop_row() for _ in range(min(batch_size, packer.rows_ready()))]
        pad = empty_rows(batch_size - len(rows), seq_length)
        batches.append({k: np.concatenate([np.stack([r[k] for r in rows]), pad[k]]) for k in BATCH_KEYS})
    return batches, packer.stats
