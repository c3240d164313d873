"""Reading videos and images into uint8 frames, LWM's preprocessing, and writing frames back out.

Videos are read with decord (what LWM uses) and, when decord is missing or fails on a file, with
OpenCV; images (and animated GIFs) with Pillow. Frames are sampled uniformly like LWM
(`linspace(0, n - 1, max_n_frames)`, all frames if fewer) or at a target fps.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from lwm_core.errors import LWMError
from lwm_core.fileio import atomic_path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp"}
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES
BACKENDS = ("auto", "decord", "opencv")


@dataclasses.dataclass
class Media:
    """Sampled frames of one file: frames [N, H, W, 3] uint8, their indices [N] in the source,
    the source fps (0.0 for a still image) and its total frame count."""

    frames: np.ndarray
    indices: np.ndarray
    fps: float
    num_source_frames: int
    backend: str


@dataclasses.dataclass
class MediaStream:
    """An opened file whose sampled frames are decoded lazily, `chunk_size` at a time, so a long
    video never sits in memory whole. `indices` [N] are the frames `chunks()` will yield."""

    path: pathlib.Path
    indices: np.ndarray
    fps: float
    num_source_frames: int
    backend: str
    _chunks: Callable[[int], Iterator[tuple[np.ndarray, np.ndarray]]]

    def chunks(self, chunk_size: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (frames [n, H, W, 3] uint8 RGB, their source indices [n])."""
        return self._chunks(chunk_size)


def sample_indices(n: int, native_fps: float, max_n_frames: int | None = None,
                   fps: float | None = None) -> np.ndarray:
    """Which of `n` frames to keep: every frame, or one per 1/fps seconds, then at most
    `max_n_frames` of those picked uniformly as LWM does (linspace over the candidates, int cast)."""
    if n <= 0:
        return np.zeros((0,), np.int64)
    candidates = np.arange(n)
    if fps is not None:
        if fps <= 0:
            raise LWMError(f"fps must be positive, got {fps}")
        if native_fps > 0:
            times = np.arange(0.0, n / native_fps, 1.0 / fps)  # seconds
            candidates = np.unique(np.clip(np.round(times * native_fps).astype(np.int64), 0, n - 1))
    if max_n_frames is not None:
        if max_n_frames <= 0:
            raise LWMError(f"max_n_frames must be positive, got {max_n_frames}")
        if len(candidates) > max_n_frames:
            candidates = candidates[np.linspace(0, len(candidates) - 1, max_n_frames, dtype=int)]
    return candidates.astype(np.int64)


def _open_image(path: pathlib.Path, max_n_frames, fps) -> MediaStream:
    try:
        with Image.open(path) as im:
            frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
            duration_ms = im.info.get("duration") or 0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise LWMError(f"{path}: not a readable image ({exc})") from None
    native_fps = 1000.0 / duration_ms if len(frames) > 1 and duration_ms else 0.0
    idx = sample_indices(len(frames), native_fps, max_n_frames, fps)

    def chunks(size):
        for start in range(0, len(idx), size):
            part = idx[start:start + size]
            yield np.stack([frames[i] for i in part]), part

    return MediaStream(path, idx, native_fps, len(frames), "pillow", chunks)


def _open_decord(path: pathlib.Path, max_n_frames, fps) -> MediaStream:
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
    n, native_fps = len(vr), float(vr.get_avg_fps())
    idx = sample_indices(n, native_fps, max_n_frames, fps)
    if len(idx) == 0:
        raise LWMError(f"{path}: the video has no frames")
    vr.get_batch(idx[:1].tolist())  # fail here, where OpenCV can still take over, not mid-run

    def chunks(size):
        for start in range(0, len(idx), size):
            part = idx[start:start + size]
            try:
                yield vr.get_batch(part.tolist()).asnumpy(), part  # [n, H, W, 3] RGB uint8
            except Exception as exc:  # decord's own error types
                raise LWMError(f"{path}: decoding failed at frame {part[0]} ({exc})") from None

    return MediaStream(path, idx, native_fps, n, "decord", chunks)


def _open_opencv(path: pathlib.Path, max_n_frames, fps) -> MediaStream:
    import cv2

    cap = cv2.VideoCapture(str(path))
    ok = cap.isOpened() and cap.grab()
    native_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    cap.release()
    if not ok:
        raise LWMError(f"{path}: OpenCV cannot decode this video")
    if n <= 0:  # some containers do not store a count: count by decoding
        cap = cv2.VideoCapture(str(path))
        while cap.grab():
            n += 1
        cap.release()
    idx = sample_indices(n, native_fps, max_n_frames, fps)

    def chunks(size):
        cap = cv2.VideoCapture(str(path))
        wanted = set(idx.tolist())
        frames, got = [], []
        try:
            # Decode sequentially (seeking is inexact in many codecs) and keep the wanted frames.
            for i in range(int(idx[-1]) + 1):
                if not cap.grab():
                    break
                if i in wanted:
                    ok, bgr = cap.retrieve()
                    if ok:
                        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                        got.append(i)
                    if len(frames) == size:
                        yield np.stack(frames), np.asarray(got, np.int64)
                        frames, got = [], []
        finally:
            cap.release()
        if frames:
            yield np.stack(frames), np.asarray(got, np.int64)

    return MediaStream(path, idx, native_fps, n, "opencv", chunks)


def open_media(path: str | os.PathLike, max_n_frames: int | None = None, fps: float | None = None,
               backend: str = "auto") -> MediaStream:
    """Open one video or image file and choose its sampled frames. `backend`: 'auto' (decord, then
    OpenCV), 'decord' or 'opencv' (videos only). Raises LWMError with one line for anything
    unreadable; decoding happens in `MediaStream.chunks()`."""
    p = pathlib.Path(path)
    if backend not in BACKENDS:
        raise LWMError(f"unknown video backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if not p.exists():
        raise LWMError(f"{p}: no such file")
    if p.is_dir():
        raise LWMError(f"{p}: is a folder, not a video or image")
    if p.stat().st_size == 0:
        raise LWMError(f"{p}: the file is empty")
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return _open_image(p, max_n_frames, fps)
    errors = []
    if backend in ("auto", "decord"):
        try:
            return _open_decord(p, max_n_frames, fps)
        except LWMError:
            raise
        except ImportError as exc:
            errors.append(f"decord unavailable ({exc})")
        except Exception as exc:  # decord raises its own DECORDError / RuntimeError subclasses
            errors.append(f"decord: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}")
    if backend in ("auto", "opencv"):
        try:
            return _open_opencv(p, max_n_frames, fps)
        except LWMError as exc:
            errors.append(str(exc).removeprefix(f"{p}: "))
    raise LWMError(f"{p}: not a readable video ({'; '.join(errors)})")


def load_media(path: str | os.PathLike, max_n_frames: int | None = None, fps: float | None = None,
               backend: str = "auto") -> Media:
    """`open_media` and decode every sampled frame at once."""
    stream = open_media(path, max_n_frames=max_n_frames, fps=fps, backend=backend)
    parts = list(stream.chunks(256))
    if not parts:
        raise LWMError(f"{stream.path}: no decodable frames")
    frames = np.concatenate([f for f, _ in parts])
    indices = np.concatenate([i for _, i in parts])
    return Media(frames, indices, stream.fps, stream.num_source_frames, stream.backend)


def read_video(path: str | os.PathLike, max_n_frames: int | None = None, fps: float | None = None,
               backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(frames [N, H, W, 3] uint8 RGB, indices [N] int64 into the source). Images give N = 1
    (animated GIFs one frame per GIF frame)."""
    media = load_media(path, max_n_frames=max_n_frames, fps=fps, backend=backend)
    return media.frames, media.indices


def preprocess_frames(frames: np.ndarray, size: int = 256) -> np.ndarray:
    """LWM's preprocessing: resize the short side to `size` (keep aspect, bicubic), centre-crop
    size x size (offset rounded half to even, as PIL rounds LWM's box), scale to x / 127.5 - 1.
    frames [N, H, W, 3] uint8 -> [N, size, size, 3] float32."""
    out = np.empty((len(frames), size, size, 3), np.float32)
    for i, frame in enumerate(frames):
        image = Image.fromarray(frame)
        width, height = image.size
        if width < height:
            new_w, new_h = size, int(size * height / width)
        else:
            new_w, new_h = int(size * width / height), size
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        # LWM crops with the float box ((w - size) / 2, ...), which PIL rounds with Python's round():
        # half to even, so a 423-pixel side starts at 84 (flooring would give 83).
        left, top = round((new_w - size) / 2), round((new_h - size) / 2)
        out[i] = np.asarray(image.crop((left, top, left + size, top + size)), np.float32) / 127.5 - 1.0
    return out


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8 (rounded); uint8 passes through."""
    if frames.dtype == np.uint8:
        return frames
    return np.clip(np.round((np.asarray(frames, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_frames(frames: np.ndarray, path: str | os.PathLike, fps: float = 4.0) -> list[pathlib.Path]:
    """Write frames [N, H, W, 3] (uint8, or float in [-1, 1]) by the name: .mp4 (OpenCV, mp4v),
    .gif (Pillow, looping), .png (one frame, or name_00000.png ... for several), or a folder
    (no suffix) of frame_00000.png .... Each file is written under a temporary name, then renamed.
    Returns the files written."""
    frames = to_uint8(np.asarray(frames))
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise LWMError(f"frames to write must be [N>0, H, W, 3], got {frames.shape}")
    if fps <= 0:
        raise LWMError(f"fps must be positive, got {fps}")
    p = pathlib.Path(path)
    suffix = p.suffix.lower()
    if suffix in ("", ".png") and not (suffix == ".png" and len(frames) == 1):
        if suffix == "":
            p.mkdir(parents=True, exist_ok=True)
            targets = [p / f"frame_{i:05d}.png" for i in range(len(frames))]
        else:
            targets = [p.with_name(f"{p.stem}_{i:05d}.png") for i in range(len(frames))]
        for frame, target in zip(frames, targets, strict=True):
            _atomic(target, lambda tmp, f=frame: Image.fromarray(f).save(tmp, format="PNG"))
        return targets
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        _atomic(p, lambda tmp: Image.fromarray(frames[0]).save(tmp, format="PNG"))
    elif suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        _atomic(p, lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                                              duration=int(round(1000 / fps)), loop=0))
    elif suffix == ".mp4":
        _atomic(p, lambda tmp: _write_mp4(frames, tmp, fps))
    else:
        raise LWMError(f"{p}: cannot write {suffix!r}; use .mp4, .gif, .png or a folder")
    return [p]


def _write_mp4(frames: np.ndarray, path: pathlib.Path, fps: float) -> None:
    import cv2

    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise LWMError(f"{path}: OpenCV cannot write MP4 here")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def _atomic(target: pathlib.Path, write) -> None:
    # atomic_path's temporary name keeps the suffix: OpenCV picks the container from it.
    with atomic_path(target, overwrite=True) as tmp:
        write(tmp)
