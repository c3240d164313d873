"""Token files: one `.npz` per input video or image.

Why one small file per input rather than a sharded array store: a video's codes are small
(512 bytes a frame), a file per input makes "already done" a file-exists check (resumable runs),
a crash can only lose the file being written (it is renamed into place when complete), and the
data stagers can shard or concatenate them later at no cost. Fields:

    codes          [N, h, w] uint16   VQGAN codes per sampled frame
    frame_indices  [N] int64          which source frames they are
    fps            float64            the source fps (0 for still images)
    source         str                the input path
    vqgan_id       str                the tokenizer's identity (content hash of its weights)
    vqgan_config   str                its VQGANConfig as JSON (to decode without guessing)
    format         str                'lwm-vision-tokens-v1'
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import zipfile

import numpy as np

from lwm_core.errors import LWMError
from lwm_core.fileio import atomic_path

FORMAT = "lwm-vision-tokens-v1"


@dataclasses.dataclass
class TokenFile:
    codes: np.ndarray  # [N, h, w] uint16
    frame_indices: np.ndarray  # [N] int64
    fps: float
    source: str
    vqgan_id: str
    vqgan_config: str


def save_tokens(path: str | os.PathLike, tokens: TokenFile) -> None:
    """Write atomically (temporary name, then rename)."""
    codes = np.asarray(tokens.codes)
    if codes.ndim != 3:
        raise LWMError(f"codes must be [N, h, w], got {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() > np.iinfo(np.uint16).max):
        raise LWMError("codes do not fit uint16")
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    # Through an open file: np.savez given a name appends .npz to any other suffix.
    with atomic_path(p, overwrite=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, codes=codes.astype(np.uint16),
                 frame_indices=np.asarray(tokens.frame_indices, np.int64),
                 fps=np.float64(tokens.fps), source=np.str_(tokens.source),
                 vqgan_id=np.str_(tokens.vqgan_id), vqgan_config=np.str_(tokens.vqgan_config),
                 format=np.str_(FORMAT))


def load_tokens(path: str | os.PathLike) -> TokenFile:
    """Read a token file; LWMError (one line) when missing or not one of ours."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise LWMError(f"{p}: no such token file")
    try:
        with np.load(p, allow_pickle=False) as data:
            if str(data.get("format", "")) != FORMAT:
                raise LWMError(f"{p}: not an lwm token file (format {FORMAT} expected)")
            return TokenFile(codes=data["codes"], frame_indices=data["frame_indices"],
                             fps=float(data["fps"]), source=str(data["source"]),
                             vqgan_id=str(data["vqgan_id"]), vqgan_config=str(data["vqgan_config"]))
    except LWMError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise LWMError(f"{p}: unreadable token file ({exc})") from None


def is_done(path: str | os.PathLike, vqgan_id: str) -> bool:
    """True when `path` is a complete token file written by the same VQGAN (resume check)."""
    try:
        return load_tokens(path).vqgan_id == vqgan_id
    except LWMError:
        return False
