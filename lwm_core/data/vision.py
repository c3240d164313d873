"""Vision fields of training records: VQGAN codes -> LWM's vision span.

A vision field's value is either a flat list of codes (LWM's layout: `tokens_per_frame` codes per
frame, row-major) or, ours, a string path to a token file written by `lwm tokenize-video`
(`lwm_core.token_files`), relative to the jsonl file that names it. With `max_n_frames`, frames are
kept by `linspace(0, n-1, max_n_frames)` (all when there are fewer), as LWM.

The span (LWM's `data.py`): text `<vision>` + per frame its codes + <eof> (<eov> after the last
frame) + text `</vision>`; the vision mask covers the codes and eof/eov, not the tag text. The frame
geometry and code count come from the VQGAN config (`VisionSpec.from_vqgan`), never from constants.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from lwm_core.errors import LWMError
from lwm_core.vision_tokens import EOF_TOKEN, EOV_TOKEN


class BadRecord(Exception):
    """A record that cannot be built into an example (missing key, wrong type, bad codes, missing
    token file): the loader counts it, reports its file:line and skips it."""


@dataclasses.dataclass(frozen=True)
class VisionSpec:
    """What a frame is: `tokens_per_frame` codes (a `grid` of h x w when known), each < `num_codes`,
    then `eof_id` (`eov_id` after the last frame). Build it from the VQGAN's config with `from_vqgan`."""

    tokens_per_frame: int
    num_codes: int
    grid: tuple[int, int] | None = None
    eof_id: int = EOF_TOKEN
    eov_id: int = EOV_TOKEN

    def __post_init__(self):
        if self.tokens_per_frame < 1 or self.num_codes < 1:
            raise LWMError(f"tokens_per_frame and num_codes must be positive, got {self.tokens_per_frame}, "
                           f"{self.num_codes}")
        if self.grid is not None and self.grid[0] * self.grid[1] != self.tokens_per_frame:
            raise LWMError(f"grid {self.grid} does not hold {self.tokens_per_frame} codes")
        if min(self.eof_id, self.eov_id) < self.num_codes or self.eof_id == self.eov_id:
            raise LWMError(f"eof/eov ids ({self.eof_id}, {self.eov_id}) must be distinct and not codes "
                           f"(< {self.num_codes})")

    @classmethod
    def from_vqgan(cls, config=None, vision_codes: int | None = None) -> VisionSpec:
        """From a VQGANConfig (or its dict / JSON / preset name; None = LWM's published VQGAN):
        latent_size^2 codes per frame (16 x 16 = 256 for LWM), num_embeddings codes (8192). The end
        ids follow the model's codebook slots `vision_codes` (ModelConfig.vision_codes; default the
        VQGAN's own size): end of frame = vision_codes, end of vision = vision_codes + 1 (LWM: 8192 /
        8193; lwm-tiny's 512 codes: 512 / 513). A VQGAN with fewer codes than the model's slots fits."""
        from lwm_core.vqgan.config import VQGANConfig

        if config is None:
            config = VQGANConfig()
        elif isinstance(config, dict):
            config = VQGANConfig.from_dict(config)
        elif isinstance(config, str):
            config = VQGANConfig.from_json(config) if config.lstrip().startswith("{") else VQGANConfig.from_name(config)
        side, codes = config.latent_size, config.num_embeddings
        slots = codes if vision_codes is None else vision_codes
        if codes > slots:
            raise LWMError(f"the VQGAN has {codes} codes but the model has {slots} code slots (its end-of-frame id "
                           f"is {slots}); use the VQGAN the model was trained with or the matching --vqgan-config")
        return cls(tokens_per_frame=side * side, num_codes=codes, grid=(side, side), eof_id=slots, eov_id=slots + 1)


def is_vision_field(name: str) -> bool:
    """LWM's rule: any field whose name contains `vision` holds codes."""
    return "vision" in name


def select_frames(n: int, max_n_frames: int | None) -> np.ndarray:
    """Indices of the frames kept: all when n <= max_n_frames, else linspace(0, n-1) as ints."""
    if max_n_frames is None or n <= max_n_frames:
        return np.arange(n)
    return np.linspace(0, n - 1, max_n_frames).astype(np.int64)


def _check_token_file(path: Path, tf, spec: VisionSpec) -> np.ndarray:
    """Codes [N, tokens_per_frame] of a token file, after checking that its VQGAN matches `spec`."""
    codes = np.asarray(tf.codes)
    grid = tuple(codes.shape[1:])
    try:
        file_codes = int(json.loads(tf.vqgan_config)["num_embeddings"])
    except (ValueError, KeyError, TypeError):
        file_codes = None
    want_grid = spec.grid or (None,)
    grid_ok = grid == spec.grid if spec.grid else int(np.prod(grid)) == spec.tokens_per_frame
    if not grid_ok or (file_codes is not None and file_codes != spec.num_codes):
        have = f"{'x'.join(map(str, grid))} codes per frame from a {file_codes or '?'}-entry codebook"
        want = f"{'x'.join(map(str, want_grid)) if spec.grid else spec.tokens_per_frame} from {spec.num_codes}"
        raise LWMError(f"{path} was written by a different VQGAN ({have}; the data config expects {want}); "
                       "tokenize with the VQGAN the model uses or set the data's VQGAN config to match")
    if codes.ndim != 3 or len(codes) == 0:
        raise BadRecord(f"{path}: no frames")
    return codes.reshape(len(codes), -1)


def vision_codes(value, spec: VisionSpec, *, base_dir: str | Path = ".", max_n_frames: int | None = None) -> np.ndarray:
    """A vision field's value -> codes [N, tokens_per_frame] int32 (frames already selected).

    BadRecord for bad values; LWMError for a token file from another VQGAN (a config problem that
    every record would share)."""
    if isinstance(value, str):
        from lwm_core.token_files import load_tokens

        path = Path(value) if Path(value).is_absolute() else Path(base_dir) / value
        if not path.is_file():
            raise BadRecord(f"token file {path} not found")
        try:
            tf = load_tokens(path)
        except LWMError as exc:
            raise BadRecord(str(exc)) from None
        codes = _check_token_file(path, tf, spec)
    elif isinstance(value, list):
        if not value or not all(isinstance(c, int) and not isinstance(c, bool) for c in value):
            raise BadRecord("a vision field must be a non-empty list of integer codes or a token file path")
        if len(value) % spec.tokens_per_frame:
            raise BadRecord(f"{len(value)} codes are not whole frames of {spec.tokens_per_frame}")
        codes = np.asarray(value, np.int64).reshape(-1, spec.tokens_per_frame)
    else:
        raise BadRecord(f"a vision field must be a list of codes or a token file path, got {type(value).__name__}")
    if codes.min() < 0 or codes.max() >= spec.num_codes:
        raise BadRecord(f"codes must lie in [0, {spec.num_codes}), got [{codes.min()}, {codes.max()}]")
    return codes[select_frames(len(codes), max_n_frames)].astype(np.int32)


def frame_tokens(codes: np.ndarray, spec: VisionSpec) -> np.ndarray:
    """codes [N, tokens_per_frame] -> the span's vision ids: each frame's codes + eof, eov at the end."""
    ends = np.full((len(codes), 1), spec.eof_id, np.int32)
    ends[-1, 0] = spec.eov_id
    return np.concatenate([codes.astype(np.int32), ends], axis=1).reshape(-1)


def vision_span(codes: np.ndarray, spec: VisionSpec, open_ids, close_ids) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vision_mask) of `<vision>` (open_ids) + frames + `</vision>` (close_ids)."""
    frames = frame_tokens(codes, spec)
    ids = np.concatenate([np.asarray(open_ids, np.int32), frames, np.asarray(close_ids, np.int32)])
    mask = np.zeros(len(ids), bool)
    mask[len(open_ids):len(open_ids) + len(frames)] = True
    return ids, mask
