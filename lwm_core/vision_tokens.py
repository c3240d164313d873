"""LWM's vision token stream: each frame's codes (row-major), then <eof> = 8192, except the last
frame, which ends with <eov> = 8193. Shared by the data stagers, `ask` and `generate`."""

from __future__ import annotations

import numpy as np

from lwm_core.errors import LWMError

NUM_CODES = 8192
EOF_TOKEN = 8192  # end of frame
EOV_TOKEN = 8193  # end of vision (after the last frame)
VISION_VOCAB_SIZE = 8448  # 8192 codes + 256 extra ids


def frames_to_vision_tokens(codes) -> np.ndarray:
    """codes [N, h, w] (or [N, h*w]) -> int32 [N * (h*w + 1)]: frame 0 codes, 8192, frame 1 codes,
    8192, ..., frame N-1 codes, 8193. These are vision-vocabulary ids (the model's `vte` rows);
    the `<vision>` / `</vision>` text around them is the caller's."""
    codes = np.asarray(codes)
    if codes.ndim not in (2, 3) or len(codes) == 0:
        raise LWMError(f"codes must be [N>0, h, w] or [N>0, h*w], got shape {codes.shape}")
    flat = codes.reshape(len(codes), -1).astype(np.int64)  # [N, h*w]
    if flat.min() < 0 or flat.max() >= NUM_CODES:
        raise LWMError(f"VQGAN codes must lie in [0, {NUM_CODES}), got [{flat.min()}, {flat.max()}]")
    ends = np.full((len(flat), 1), EOF_TOKEN, np.int64)
    ends[-1, 0] = EOV_TOKEN
    return np.concatenate([flat, ends], axis=1).reshape(-1).astype(np.int32)  # [N * (h*w + 1)]


def vision_tokens_to_frames(tokens, tokens_per_frame: int = 256) -> np.ndarray:
    """The inverse: a stream of whole frames (each `tokens_per_frame` codes + <eof>/<eov>) ->
    codes [N, tokens_per_frame] int32. Raises LWMError if a frame does not end in 8192/8193."""
    tokens = np.asarray(tokens).reshape(-1)
    step = tokens_per_frame + 1
    if len(tokens) == 0 or len(tokens) % step:
        raise LWMError(f"{len(tokens)} vision tokens are not whole frames of {tokens_per_frame} + 1")
    frames = tokens.reshape(-1, step)  # [N, step]
    if not np.isin(frames[:, -1], (EOF_TOKEN, EOV_TOKEN)).all() or frames[:, :-1].max() >= NUM_CODES:
        raise LWMError("vision tokens are not frames of codes each followed by <eof>/<eov>")
    return frames[:, :-1].astype(np.int32)
