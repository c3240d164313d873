"""A plain pixel checker for the shapes world: which colour and shape an image shows, and which way
a colour moves in a video. It judges generated (VQGAN-decoded, so noisy and blurred) frames.

    check_image(image)                     # Detection(colour='red', shape='square', ...) or colour 'none'
    motion_direction(frames, "red")        # 'left' | 'right' | 'up' | 'down' | 'none' | 'absent'
    check_video(frames, "red", "square", "left")   # True when most frames show it and it moves so

Colour: every bright pixel (max channel >= BRIGHT) takes the nearest pure colour of the world; the
colour with most pixels wins, and its largest connected blob is the shape. Shape: the blob's fill of
its bounding box (square 1, circle pi/4, triangle 1/2) is the idea, but a box read off a blurred,
noisy blob is a pixel or two too large each side (a 12-pixel square then fills 0.73 of it: 78% right
over rendered cases with blur sigma 1 and noise 20 at 64 x 64). So the fill is measured against
the ideal shapes instead: each is drawn with the blob's own area and centroid (both sums, so noise
and blur barely move them), blurred at a few strengths, and the closest one (relative squared
error of the colour's intensity around the blob) wins; 'none' when even that is far off (noise).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lwm_core.data.shapes import COLOURS, shape_mask
from lwm_core.errors import LWMError

BRIGHT = 100  # a pixel with every channel below this is background
MIN_PIXELS = 12  # a 1/10-of-the-frame circle at 64 x 64 is ~32 pixels
BLURS = (0.0, 0.5, 0.8, 1.2, 1.7, 2.3)  # Gaussian sigmas (pixels) the ideal shapes are compared at
MAX_ERROR = 0.5  # relative squared error above which the blob is no shape (noise scores > 1)
MIN_MOTION = 0.08  # centroid travel (fraction of the frame side) below which a shape does not move
_SUPERSAMPLE = 4  # ideal shapes are drawn at 4x4 samples a pixel: area-exact even at 6 pixels wide

_NAMES = ("black",) + tuple(COLOURS)  # colour_labels' values
_PALETTE = np.array([(0, 0, 0)] + list(COLOURS.values()), np.float32)  # [6, 3]


@dataclasses.dataclass(frozen=True)
class Detection:
    """colour and shape ('none' when nothing is found), the blob's pixel count, fill ratio of its
    box, centroid (x, y) as fractions of the width and height, and the shape fit's error."""

    colour: str
    shape: str
    pixels: int = 0
    fill: float = 0.0
    centroid: tuple[float, float] = (float("nan"), float("nan"))
    error: float = float("nan")


NOTHING = Detection("none", "none")


def _as_pixels(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3], or floats in [-1, 1] (a VQGAN's output) -> float32 0..255."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise LWMError(f"an image must be [H, W, 3], got {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32)
    return np.clip((image.astype(np.float32) + 1.0) * 127.5, 0, 255)


def colour_labels(image: np.ndarray) -> np.ndarray:
    """[H, W] index into ('black', red, green, blue, yellow, white): the nearest pure colour of every
    bright pixel, 0 for dark ones."""
    pixels = _as_pixels(image)
    colours = _PALETTE[1:]
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2; |p|^2 is the same for every c, so it is left out of the argmin
    score = np.sum(colours * colours, axis=-1) - 2.0 * pixels @ colours.T  # [H, W, 5]
    labels = np.argmin(score, axis=-1) + 1
    return np.where(pixels.max(axis=-1) >= BRIGHT, labels, 0)


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return mask
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def detect(image: np.ndarray, colour: str) -> Detection:
    """The blob of one colour: its shape by fill ratio, or NOTHING when the colour is (nearly) absent."""
    if colour not in COLOURS:
        raise LWMError(f"unknown colour {colour!r}; choose from {', '.join(COLOURS)}")
    return _detect(colour_labels(image), colour, image)


def _detect(labels: np.ndarray, colour: str, image: np.ndarray) -> Detection:
    blob = _largest_blob(labels == _NAMES.index(colour))
    pixels = int(blob.sum())
    if pixels < MIN_PIXELS:
        return NOTHING
    ys, xs = np.nonzero(blob)
    fill = pixels / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    pad = 5  # room for the blur around the blob
    top, left = max(ys.min() - pad, 0), max(xs.min() - pad, 0)
    window = _intensity(image[top:ys.max() + pad + 1, left:xs.max() + pad + 1], colour)  # [h, w] 0..1
    errors = _shape_errors(window)
    shape = min(errors, key=errors.get)
    if errors[shape] > MAX_ERROR:
        return NOTHING
    height, width = labels.shape
    return Detection(colour, shape, pixels, float(fill), ((xs.mean() + 0.5) / width, (ys.mean() + 0.5) / height),
                     float(errors[shape]))


def _intensity(image: np.ndarray, colour: str) -> np.ndarray:
    """How much of `colour` each pixel holds, 0..1: its channels' mean less the other channels' mean."""
    pixels = _as_pixels(image) / 255.0
    on = np.array(COLOURS[colour]) > 0
    off = pixels[..., ~on].mean(axis=-1) if (~on).any() else 0.0
    return np.clip(pixels[..., on].mean(axis=-1) - off, 0.0, 1.0)


def _shape_errors(window: np.ndarray) -> dict[str, float]:
    """Relative squared error of the best-blurred ideal square, circle and triangle of the window's
    area (sum of intensity) at its centroid."""
    import cv2

    area = float(window.sum())
    h, w = window.shape
    gy, gx = np.mgrid[0:h, 0:w] + 0.5
    cx, cy = float((window * gx).sum() / area), float((window * gy).sum() / area)
    ss = _SUPERSAMPLE
    px = ((np.arange(w * ss) + 0.5) / ss)[None, :]
    py = ((np.arange(h * ss) + 0.5) / ss)[:, None]
    side = np.sqrt(2 * area)  # a triangle's box side; its centroid is side/6 below the box centre
    fits = {"square": (np.sqrt(area) / 2, 0.0), "circle": (np.sqrt(area / np.pi), 0.0),
            "triangle": (side / 2, -side / 6)}  # (half the box side, box centre - centroid in y)
    norm = float((window ** 2).sum())
    errors = {}
    for kind, (half, shift) in fits.items():
        ideal = shape_mask(kind, px - cx, py - (cy + shift), half).astype(np.float32)
        ideal = ideal.reshape(h, ss, w, ss).mean(axis=(1, 3))  # [h, w] coverage
        errors[kind] = min(float(((window - (cv2.GaussianBlur(ideal, (0, 0), s) if s else ideal)) ** 2).sum())
                           for s in BLURS) / norm
    return errors


def detect_all(image: np.ndarray) -> list[Detection]:
    """Every colour found, most pixels first."""
    labels = colour_labels(image)
    found = [_detect(labels, c, image) for c in COLOURS]
    return sorted((d for d in found if d.colour != "none"), key=lambda d: -d.pixels)


def check_image(image: np.ndarray) -> Detection:
    """The main shape of an image: the colour with the most bright pixels and its shape; NOTHING for
    a black or noise image."""
    labels = colour_labels(image)
    counts = np.bincount(labels.ravel(), minlength=len(_NAMES))[1:]
    if counts.max() < MIN_PIXELS:
        return NOTHING
    return _detect(labels, _NAMES[1 + int(np.argmax(counts))], image)


def motion_direction(frames: np.ndarray, colour: str) -> str:
    """How the centroid of `colour` moves from the first to the last frame it is found in:
    'left' / 'right' / 'up' / 'down' along the larger displacement, 'none' when it moves less than
    MIN_MOTION of the frame, 'absent' when it is found in fewer than two frames. frames [T, H, W, 3]."""
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise LWMError(f"frames must be [T, H, W, 3], got {frames.shape}")
    return _direction([detect(f, colour) for f in frames], frames.shape[1:3])


def _direction(found: list[Detection], frame_size: tuple[int, int]) -> str:
    points = [d.centroid for d in found if d.colour != "none"]
    if len(points) < 2:
        return "absent"
    height, width = frame_size
    side = min(height, width)  # shapes move in the frame's centred square (see shapes.Scene)
    dx = (points[-1][0] - points[0][0]) * width / side
    dy = (points[-1][1] - points[0][1]) * height / side
    if max(abs(dx), abs(dy)) < MIN_MOTION:
        return "none"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def check_video(frames: np.ndarray, colour: str, shape: str, direction: str) -> bool:
    """True when at least half the frames show `colour` as their main shape with the right shape and
    its centroid moves in `direction` ('none' for still)."""
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise LWMError(f"frames must be [T, H, W, 3], got {frames.shape}")
    main = [check_image(f) for f in frames]
    right = sum(d.colour == colour and d.shape == shape for d in main)
    # where the main shape is `colour` its detection is the one motion needs; detect the others
    found = [d if d.colour == colour else detect(f, colour) for d, f in zip(main, frames, strict=True)]
    return 2 * right >= len(frames) and _direction(found, frames.shape[1:3]) == direction
