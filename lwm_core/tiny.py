"""lwm-tiny, the model shipped in the package: what `ask`, `generate` and `needle` use when no
`--checkpoint` is given. Made by `examples/lwm-tiny/recipe.sh` (docs/lwm-tiny.md, its model card).

    from lwm_core.tiny import tiny_files
    files = tiny_files()
    model = load_model(files.checkpoint, files.config)
    tok, vq = load_tokenizer(files.tokenizer), load_vqgan(files.vqgan)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lwm_core.errors import LWMError

TINY_DIR = Path(__file__).resolve().parent / "assets" / "lwm-tiny"


@dataclasses.dataclass(frozen=True)
class TinyFiles:
    checkpoint: str  # a checkpoint spec: LWM streaming msgpack
    config: str  # its ModelConfig JSON (frame layout and codebook size included)
    tokenizer: str  # SentencePiece tokenizer.model
    vqgan: str  # .safetensors with its VQGANConfig
    haystack: str  # jsonl of shapes-world documents: the default needle haystack


def tiny_files(folder: str | Path | None = None) -> TinyFiles:
    """The files of lwm-tiny (in the package, or in `folder`); LWMError naming what is missing."""
    root = Path(folder) if folder is not None else TINY_DIR
    files = TinyFiles(checkpoint=f"params::{root / 'params.msgpack'}", config=str(root / "config.json"),
                      tokenizer=str(root / "tokenizer.model"), vqgan=str(root / "vqgan.safetensors"),
                      haystack=str(root / "haystack.jsonl"))
    missing = [p for p in (files.checkpoint.removeprefix("params::"), files.config, files.tokenizer, files.vqgan,
                           files.haystack) if not Path(p).is_file()]
    if missing:
        raise LWMError(f"lwm-tiny is incomplete ({', '.join(missing)} missing); reinstall the package or pass "
                       "--checkpoint, --tokenizer and --vqgan")
    return files
