"""The input `ask` gives the model: LWM's chat template around a video's VQGAN codes, with the exact
vision mask.

    spec = vision_spec(model.config, vqgan.config)      # codes per frame, eof/eov ids, checked
    prompt = chat_input(tokenizer, "What happens?", codes, spec)   # codes [N, tokens_per_frame]
    prompt.ids, prompt.vision_mask                       # [T] int32, [T] bool

Frame layouts (`frame_layout`):
- 'chat' (default): what LWM's `vision_chat.py` builds. It runs the VQGAN on one frame per call and
  picks the end token per call, so EVERY frame ends with eov (8193) and eof never appears.
- 'training': what LWM's training data holds (`data.py`): eof (8192) after every frame but the
  last, eov after the last.
A single frame (an image) ends with eov in both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lwm_core.config import ModelConfig
from lwm_core.data.vision import VisionSpec, frame_tokens
from lwm_core.errors import LWMError
from lwm_core.text.prompts import lwm_chat_segments
from lwm_core.text.tokenizer import Tokenizer
from lwm_core.token_files import TokenFile, is_done, load_tokens, save_tokens
from lwm_core.video import IMAGE_SUFFIXES, open_media, preprocess_frames, sample_indices
from lwm_core.vqgan.config import VQGANConfig

FRAME_LAYOUTS = ("chat", "training")


@dataclasses.dataclass
class ChatInput:
    """One model input: ids [T] int32 (text ids where `vision_mask` is False, vision ids where True)."""

    ids: np.ndarray
    vision_mask: np.ndarray
    num_frames: int


def vision_spec(model_config: ModelConfig, vqgan_config: VQGANConfig, task: str = "ask") -> VisionSpec:
    """The frame layout a VQGAN gives this model, or a one-line LWMError when they do not fit: a
    text-only model, or a VQGAN with more codes than the model has slots for (`vision_codes`)."""
    if not model_config.vision:
        raise LWMError(f"this checkpoint is a text-only model (no vision embeddings or vision head); {task} "
                       "needs a vision-language checkpoint such as LWM-Chat (params with transformer/vte)")
    spec = VisionSpec.from_vqgan(vqgan_config, model_config.vision_codes)  # more codes than slots: refused
    if spec.eov_id >= model_config.vision_vocab_size:  # ModelConfig already checks this; kept for clarity
        raise LWMError(f"the model's vision vocabulary ({model_config.vision_vocab_size}) has no end-of-video id "
                       f"{spec.eov_id}")
    return spec


def vision_ids(codes: np.ndarray, spec: VisionSpec, frame_layout: str = "chat") -> np.ndarray:
    """codes [N, tokens_per_frame] -> the vision ids [N * (tokens_per_frame + 1)] int32 of `frame_layout`."""
    if frame_layout not in FRAME_LAYOUTS:
        raise LWMError(f"unknown frame layout {frame_layout!r}; choose chat (LWM's chat script) or training")
    codes = np.asarray(codes)
    if codes.ndim != 2 or len(codes) == 0 or codes.shape[1] != spec.tokens_per_frame:
        raise LWMError(f"codes must be [frames > 0, {spec.tokens_per_frame}], got {codes.shape}")
    if codes.min() < 0 or codes.max() >= spec.num_codes:
        raise LWMError(f"codes must lie in [0, {spec.num_codes}), got [{codes.min()}, {codes.max()}]")
    ids = frame_tokens(codes, spec).reshape(len(codes), spec.tokens_per_frame + 1)  # [N, tpf + 1]
    if frame_layout == "chat":
        ids[:, -1] = spec.eov_id  # LWM's chat script: one VQGAN call per frame, each ends the "video"
    return ids.reshape(-1)


def chat_input(tokenizer: Tokenizer, question: str, codes: np.ndarray, spec: VisionSpec,
               frame_layout: str = "chat") -> ChatInput:
    """LWM's chat input for `question` about frames `codes` [N, tokens_per_frame]:
    `[bos] + enc("You are a helpful assistant. USER: {question}\\n") + enc("<vision>") + frames +
    enc("</vision>") + enc(" ASSISTANT:")`, the vision mask True exactly on the frames (codes and
    their end tokens)."""
    prefix, suffix = lwm_chat_segments(tokenizer, question)
    frames = vision_ids(codes, spec, frame_layout)
    ids = np.concatenate([np.asarray(prefix, np.int32), frames, np.asarray(suffix, np.int32)])
    mask = np.zeros(len(ids), bool)
    mask[len(prefix):len(prefix) + len(frames)] = True
    return ChatInput(ids=ids, vision_mask=mask, num_frames=len(codes))


# ---------------------------------------------------------------- media -> codes
@dataclasses.dataclass
class MediaCodes:
    """A video, image or folder of frames read, preprocessed (LWM's PIL steps) and VQGAN-encoded once."""

    source: str
    codes: np.ndarray  # [N, tokens_per_frame] int32
    frames: np.ndarray  # [N] int64: the source frames used
    read_s: float  # decoding + preprocessing
    vqgan_s: float  # VQGAN encoding
    origin: str  # 'encoded', or 'cache-dir' when the codes came from a token file


def _folder_frames(folder: Path) -> list[Path]:
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                   and not f.name.startswith("."))
    if not files:
        raise LWMError(f"{folder}: no images in this folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); "
                       "pass a video, an image or a folder of frames")
    return files


def _content_digest(path: Path) -> str:
    """sha256 of the file's bytes (a folder: of its frame files' names and bytes, in order)."""
    h = hashlib.sha256()
    for f in _folder_frames(path) if path.is_dir() else [path]:
        h.update(f.name.encode() + b"\0" if path.is_dir() else b"")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _cache_file(cache_dir: Path, path: Path, vqgan, max_frames, fps) -> Path:
    # Keyed by content, not name: a re-encoded or edited video never reuses stale codes; the VQGAN
    # and the frame sampling change the codes too, so they are part of the key.
    key = f"{_content_digest(path)}|{vqgan.identity}|max_frames={max_frames}|fps={fps}"
    return cache_dir / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"


def _frame_chunks(path: Path, max_frames, fps, backend, chunk: int):
    """(frames to read, iterator of (uint8 frames [n, H, W, 3] or a list of differently sized ones,
    their source indices [n]))."""
    if not path.is_dir():
        stream = open_media(path, max_n_frames=max_frames, fps=fps, backend=backend)
        return len(stream.indices), stream.chunks(chunk)
    if fps is not None:
        raise LWMError(f"{path}: a folder of frames has no frame rate; use --max-frames instead of --fps")
    files = _folder_frames(path)
    idx = sample_indices(len(files), 0.0, max_frames, None)

    def chunks():
        for start in range(0, len(idx), chunk):
            part = idx[start:start + chunk]
            frames = []
            for i in part:
                try:
                    with Image.open(files[i]) as im:
                        frames.append(np.asarray(im.convert("RGB")))
                except (UnidentifiedImageError, OSError, ValueError) as exc:
                    raise LWMError(f"{files[i]}: not a readable image ({exc})") from None
            yield frames, part

    return len(idx), chunks()


def check_media(path: str | os.PathLike, *, max_frames: int | None = 8, fps: float | None = None,
                backend: str = "auto") -> int:
    """Open a video, image or folder of frames without decoding its frames (a video's first frame is
    read to prove it decodes); returns how many frames will be used. A cheap check that a bad input
    fails in one line before a model is loaded."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LWMError(f"{p}: no such video, image or folder")
    total, _ = _frame_chunks(p, max_frames, fps, backend, 1)
    return total


def read_media_codes(path: str | os.PathLike, vqgan, *, max_frames: int | None = 8, fps: float | None = None,
                     backend: str = "auto", cache_dir: str | os.PathLike | None = None,
                     on_frames: Callable[[int, int], None] | None = None) -> MediaCodes:
    """Sample a video's frames (LWM's linspace, or `fps`), preprocess them as LWM does and encode them
    with `vqgan` (a `VQGANTokenizer`), a few batches at a time. With `cache_dir` the codes are kept as
    a token file named by the content's hash and the VQGAN, and read back instead of encoding.
    `on_frames(done, total)` reports progress."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LWMError(f"{p}: no such video, image or folder")
    cached = None
    if cache_dir is not None:
        cached = _cache_file(Path(cache_dir), p, vqgan, max_frames, fps)
        if is_done(cached, vqgan.identity):
            tokens = load_tokens(cached)
            codes = tokens.codes.reshape(len(tokens.codes), -1).astype(np.int32)
            return MediaCodes(str(p), codes, tokens.frame_indices, 0.0, 0.0, "cache-dir")
    read_s = vqgan_s = 0.0
    codes, indices = [], []
    tick = time.perf_counter()
    total, chunks = _frame_chunks(p, max_frames, fps, backend, vqgan.batch_size * 4)
    for frames, idx in chunks:
        x = np.concatenate([preprocess_frames(f[None], vqgan.config.resolution) for f in frames])  # [n, R, R, 3]
        now = time.perf_counter()
        read_s += now - tick
        codes.append(vqgan.encode(x))  # [n, h, w]
        indices.append(np.asarray(idx, np.int64))
        tick = time.perf_counter()
        vqgan_s += tick - now
        if on_frames:
            on_frames(sum(len(i) for i in indices), total)
    if not codes:
        raise LWMError(f"{p}: no decodable frames")
    grid = np.concatenate(codes)  # [N, h, w]
    frames = np.concatenate(indices)
    if cached is not None:
        save_tokens(cached, TokenFile(codes=grid, frame_indices=frames, fps=0.0, source=str(p),
                                      vqgan_id=vqgan.identity, vqgan_config=vqgan.config.to_json()))
    return MediaCodes(str(p), grid.reshape(len(grid), -1).astype(np.int32), frames, read_s, vqgan_s, "encoded")
