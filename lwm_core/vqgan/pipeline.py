"""Files -> token files and back: what `lwm tokenize-video` runs (and the Python API for it).

`plan_tokenize` finds the inputs and names their outputs; `tokenize_files` works through them,
skipping files already done with the same VQGAN and recording bad files instead of stopping.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Iterable

import numpy as np

from lwm_core.errors import LWMError
from lwm_core.token_files import TokenFile, is_done, load_tokens, save_tokens
from lwm_core.video import MEDIA_SUFFIXES, open_media, preprocess_frames, to_uint8, write_frames
from lwm_core.vqgan.config import VQGANConfig
from lwm_core.vqgan.tokenizer import VQGANTokenizer

LIST_SUFFIXES = {".txt", ".lst", ".list"}


@dataclasses.dataclass
class FileResult:
    source: pathlib.Path
    output: pathlib.Path
    status: str  # 'done', 'skipped' (already tokenized), 'failed'
    frames: int = 0
    error: str = ""


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[tuple[pathlib.Path, pathlib.Path]]:
    """(file, output name relative to the output folder, without suffix) for every input."""
    found: list[tuple[pathlib.Path, pathlib.Path]] = []
    for item in inputs:
        p = pathlib.Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in MEDIA_SUFFIXES
                           and not f.name.startswith("."))
            if not files:
                raise LWMError(f"{p}: no videos or images in this folder "
                               f"(looked for {', '.join(sorted(MEDIA_SUFFIXES))})")
            found += [(f, f.relative_to(p).with_suffix("")) for f in files]
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            lines = [ln.strip() for ln in p.read_text().splitlines()]
            listed = [pathlib.Path(ln) for ln in lines if ln and not ln.startswith("#")]
            if not listed:
                raise LWMError(f"{p}: the list of inputs is empty")
            found += [(f, pathlib.Path(f.stem)) for f in listed]  # missing ones are reported per file
        elif p.exists():
            found.append((p, pathlib.Path(p.stem)))
        else:
            raise LWMError(f"{p}: no such file or folder")
    if not found:
        raise LWMError("no inputs given")
    return found


def plan_tokenize(inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike
                  ) -> list[tuple[pathlib.Path, pathlib.Path]]:
    """(input file, output .npz) pairs. Folders keep their sub-folder layout; two inputs that would
    share a name (a.mp4 and a.png) keep their suffix in the output name (a.mp4.npz, a.png.npz)."""
    found = expand_inputs(inputs)
    counts: dict[pathlib.Path, int] = {}
    for _, rel in found:
        counts[rel] = counts.get(rel, 0) + 1
    out = pathlib.Path(out_dir)
    pairs = []
    for src, rel in found:
        name = rel.with_name(rel.name + src.suffix) if counts[rel] > 1 else rel
        pairs.append((src, out / f"{name}.npz"))
    if len({dst for _, dst in pairs}) != len(pairs):
        raise LWMError("two inputs map to the same token file; pass them in separate runs")
    return pairs


def tokenize_file(src: pathlib.Path, dst: pathlib.Path, tokenizer: VQGANTokenizer, *,
                  max_n_frames: int | None = None, fps: float | None = None, backend: str = "auto",
                  on_frames: Callable[[int], None] | None = None) -> int:
    """Tokenize one file into `dst`; returns the number of frames. Decodes, preprocesses and encodes
    `tokenizer.batch_size * 4` frames at a time, so memory does not grow with video length."""
    stream = open_media(src, max_n_frames=max_n_frames, fps=fps, backend=backend)
    codes, indices = [], []
    for frames, idx in stream.chunks(tokenizer.batch_size * 4):
        x = preprocess_frames(frames, tokenizer.config.resolution)  # [n, R, R, 3] in [-1, 1]
        codes.append(tokenizer.encode(x))  # [n, R/f, R/f]
        indices.append(idx)
        if on_frames:
            on_frames(len(idx))
    if not codes:
        raise LWMError(f"{src}: no decodable frames")
    save_tokens(dst, TokenFile(codes=np.concatenate(codes), frame_indices=np.concatenate(indices),
                               fps=stream.fps, source=str(src), vqgan_id=tokenizer.identity,
                               vqgan_config=tokenizer.config.to_json()))
    return int(sum(len(i) for i in indices))


def tokenize_files(pairs: list[tuple[pathlib.Path, pathlib.Path]], tokenizer: VQGANTokenizer, *,
                   max_n_frames: int | None = None, fps: float | None = None, backend: str = "auto",
                   overwrite: bool = False, on_frames: Callable[[int], None] | None = None,
                   on_file: Callable[[FileResult], None] | None = None) -> list[FileResult]:
    """Tokenize every pair; a bad file becomes a 'failed' result and the run goes on."""
    results = []
    for src, dst in pairs:
        if not overwrite and is_done(dst, tokenizer.identity):
            result = FileResult(src, dst, "skipped")
        else:
            try:
                n = tokenize_file(src, dst, tokenizer, max_n_frames=max_n_frames, fps=fps,
                                  backend=backend, on_frames=on_frames)
                result = FileResult(src, dst, "done", frames=n)
            except LWMError as exc:
                result = FileResult(src, dst, "failed", error=str(exc))
        results.append(result)
        if on_file:
            on_file(result)
    return results


def decode_token_file(path: str | os.PathLike, tokenizer_factory: Callable[[VQGANConfig], VQGANTokenizer],
                      out: str | os.PathLike, fps: float | None = None) -> tuple[list[pathlib.Path], str]:
    """Token file -> frames written to `out` (.mp4, .gif, .png or a folder of PNGs).

    `tokenizer_factory(config)` gets the config recorded in the file. Returns (files written, a
    warning: '' or a note that the VQGAN differs from the one that wrote the tokens)."""
    tokens = load_tokens(path)
    tokenizer = tokenizer_factory(VQGANConfig.from_json(tokens.vqgan_config))
    warning = ""
    if tokenizer.identity != tokens.vqgan_id:
        warning = (f"{path} was written by VQGAN {tokens.vqgan_id}, decoding with {tokenizer.identity}")
    frames = to_uint8(tokenizer.decode(tokens.codes.astype(np.int32)))  # [N, H, W, 3]
    rate = fps or (tokens.fps if tokens.fps > 0 else 4.0)
    if tokens.fps > 0 and not fps and len(tokens.frame_indices) > 1:
        # sampled frames play at the rate they were sampled at, so clip duration is preserved
        span = (tokens.frame_indices[-1] - tokens.frame_indices[0]) / tokens.fps
        rate = (len(tokens.frame_indices) - 1) / span if span > 0 else rate
    return write_frames(frames, out, fps=rate), warning
