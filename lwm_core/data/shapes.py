"""The shapes world of lwm-tiny: flat shapes on black, as scene descriptions rendered with numpy.

    scene = random_scene(scene_seed("train", 7), num_frames=8)   # 1-3 shapes, motion, maybe an event
    frames = scene.render(64)                                     # [8, 64, 64, 3] uint8
    frames = scene.render((240, 320))                             # any H x W

The vocabulary is fixed (evaluations and users rely on it): colours red, green, blue, yellow, white
(pure RGB), shapes square, circle, triangle, directions left, right, up, down or none (still).

Geometry lives in a unit square: x grows to the right, y downwards, a shape's `size` is the side of
its bounding box. A frame of H x W shows the unit square as its centred min(H, W) square (the rest
stays black), so a non-square render, read the way LWM reads frames (short side resized, centre
crop), shows what a square render shows. Shapes are drawn in list order: later ones cover earlier
ones (occlusion). A shape may appear after frame 0 or leave before the end (events); while visible
it stays wholly inside the frame, so its motion is never cut by the border.

Questions, captions and the text corpus are in `shapes_text`; the pixel checker in `shapes_check`;
the writer of a data set on disk in `shapes_write`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lwm_core.errors import LWMError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0), "white": (255, 255, 255),
}
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = ("left", "right", "up", "down", "none")  # "none": the shape does not move
MOVES = DIRECTIONS[:4]
_UNIT_STEP = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0), "none": (0.0, 0.0)}

MIN_SIZE, MAX_SIZE = 0.1, 1.0 / 3.0  # bounding-box side, fraction of the frame
MIN_TRAVEL, MAX_TRAVEL = 0.25, 0.45  # distance a moving shape covers from the first to the last frame
MIN_VISIBLE = 0.5  # every shape keeps at least half its pixels in view in every frame it is in (occlusion)

# Disjoint seed ranges: the scene of index i in a split is seeded by the split's start + i.
SPLIT_SIZE = 100_000_000
SPLITS = {"train": 0, "validation": SPLIT_SIZE, "test": 2 * SPLIT_SIZE}


def scene_seed(split: str, index: int) -> int:
    """The seed of scene `index` of a split; the three splits never share a seed."""
    if split not in SPLITS:
        raise LWMError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if not 0 <= index < SPLIT_SIZE:
        raise LWMError(f"scene index {index} is outside 0..{SPLIT_SIZE - 1}")
    return SPLITS[split] + int(index)


def split_of(seed: int) -> str:
    """Which split a scene seed belongs to."""
    for name, start in SPLITS.items():
        if start <= seed < start + SPLIT_SIZE:
            return name
    raise LWMError(f"seed {seed} belongs to no split (0..{3 * SPLIT_SIZE - 1})")


@dataclasses.dataclass(frozen=True)
class Shape:
    """One shape. (x, y) is its centre at frame 0 in the unit square (where it would be, even if it
    appears later); it moves `travel` along `direction` by the last frame, at constant speed. It is
    visible in frames appear <= t < leave (leave None: to the end)."""

    colour: str
    shape: str
    size: float
    x: float
    y: float
    direction: str = "none"
    travel: float = 0.0
    appear: int = 0
    leave: int | None = None

    def __post_init__(self):
        if self.colour not in COLOURS:
            raise LWMError(f"unknown colour {self.colour!r}; choose from {', '.join(COLOURS)}")
        if self.shape not in SHAPES:
            raise LWMError(f"unknown shape {self.shape!r}; choose from {', '.join(SHAPES)}")
        if self.direction not in DIRECTIONS:
            raise LWMError(f"unknown direction {self.direction!r}; choose from {', '.join(DIRECTIONS)}")
        if not 0 < self.size <= 1:
            raise LWMError(f"shape size must be in (0, 1], got {self.size}")

    @property
    def name(self) -> str:
        """'red square': how questions and captions name it."""
        return f"{self.colour} {self.shape}"

    @property
    def moves(self) -> bool:
        return self.direction != "none" and self.travel > 0

    def centre(self, t: int, num_frames: int) -> tuple[float, float]:
        """Centre at frame t, unit-square coordinates."""
        progress = t / (num_frames - 1) if num_frames > 1 else 0.0
        dx, dy = _UNIT_STEP[self.direction]
        return self.x + dx * self.travel * progress, self.y + dy * self.travel * progress

    def visible(self, t: int, num_frames: int) -> bool:
        return self.appear <= t < (num_frames if self.leave is None else self.leave)

    def frames_visible(self, num_frames: int) -> range:
        return range(self.appear, num_frames if self.leave is None else min(self.leave, num_frames))


@dataclasses.dataclass(frozen=True)
class Scene:
    """Shapes in draw order (later ones in front) over `num_frames` frames (1: an image)."""

    shapes: tuple[Shape, ...]
    num_frames: int = 1
    seed: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "shapes", tuple(self.shapes))
        if self.num_frames < 1:
            raise LWMError(f"a scene needs at least one frame, got {self.num_frames}")
        if not self.shapes:
            raise LWMError("a scene needs at least one shape")

    def render(self, size: int | tuple[int, int]) -> np.ndarray:
        """Frames [T, H, W, 3] uint8 (size: S for S x S, or (H, W))."""
        masks = self.masks(size)  # [n, T, H, W]
        frames = np.zeros(masks.shape[1:] + (3,), np.uint8)
        for shape, mask in zip(self.shapes, masks, strict=True):
            frames[mask] = COLOURS[shape.colour]  # later shapes overwrite: occlusion by draw order
        return frames

    def masks(self, size: int | tuple[int, int]) -> np.ndarray:
        """Each shape's own pixels before occlusion, [n_shapes, T, H, W] bool (empty where hidden)."""
        height, width = (size, size) if isinstance(size, int | np.integer) else size
        if height < 1 or width < 1:
            raise LWMError(f"frame size must be positive, got {height} x {width}")
        side = min(height, width)
        left, top = (width - side) / 2.0, (height - side) / 2.0
        px = (np.arange(width, dtype=np.float64) + 0.5)[None, :]  # pixel centres, [1, W]
        py = (np.arange(height, dtype=np.float64) + 0.5)[:, None]  # [H, 1]
        out = np.zeros((len(self.shapes), self.num_frames, height, width), bool)
        for i, shape in enumerate(self.shapes):
            half = shape.size * side / 2.0
            for t in shape.frames_visible(self.num_frames):
                cx, cy = shape.centre(t, self.num_frames)
                out[i, t] = shape_mask(shape.shape, px - (left + cx * side), py - (top + cy * side), half)
        return out

    def visible_fractions(self, size: int = 64) -> np.ndarray:
        """[n_shapes, T]: the part of each shape's pixels left in view after occlusion (nan where
        the shape is not in the frame)."""
        masks = self.masks(size)
        out = np.full(masks.shape[:2], np.nan)
        covered = np.zeros(masks.shape[1:], bool)
        for i in range(len(masks) - 1, -1, -1):  # front to back
            own = masks[i].sum(axis=(1, 2))
            seen = (masks[i] & ~covered).sum(axis=(1, 2))
            out[i] = np.where(own > 0, seen / np.maximum(own, 1), np.nan)
            covered |= masks[i]
        return out

    def events(self) -> list[tuple[int, str, Shape]]:
        """(frame, 'appears' | 'leaves', shape) for every entry after frame 0 and exit before the
        end, in frame order."""
        found = [(s.appear, "appears", s) for s in self.shapes if s.appear > 0]
        found += [(s.leave, "leaves", s) for s in self.shapes if s.leave is not None and s.leave < self.num_frames]
        return sorted(found, key=lambda e: e[0])

    def to_dict(self) -> dict[str, Any]:
        return {"num_frames": self.num_frames, "seed": self.seed,
                "shapes": [dataclasses.asdict(s) for s in self.shapes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        return cls(tuple(Shape(**s) for s in data["shapes"]), int(data["num_frames"]), data.get("seed"))


def shape_mask(kind: str, dx: np.ndarray, dy: np.ndarray, half: float) -> np.ndarray:
    """Pixels of a shape of bounding-box half-side `half` whose centre is at offset 0: dx [1, W] and
    dy [H, 1] are pixel-centre offsets from it. Square fills its box, circle pi/4 of it, triangle
    (apex up, base at the bottom of the box) half of it."""
    if kind == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if kind == "circle":
        return dx * dx + dy * dy <= half * half
    # triangle: width grows linearly from 0 at the apex (dy = -half) to 2 * half at the base (dy = half)
    return (dy <= half) & (np.abs(dx) <= (dy + half) / 2.0)


def random_scene(seed: int, num_frames: int = 8, *, num_shapes: int | None = None, event: str | None = None,
                 event_prob: float = 0.3, still_prob: float = 0.2) -> Scene:
    """A random scene, the same for the same arguments. 1-3 shapes (or `num_shapes`) of distinct
    colours; each moves left/right/up/down (still with probability `still_prob`; images are still).
    `event`: None (with probability `event_prob` one of the two below, when the clip has >= 4 frames),
    'none', 'enter' (shapes appear one after another: only the first is there from frame 0) or
    'leave' (one shape leaves before the end). Occlusion never hides more than half a shape."""
    if num_frames < 1:
        raise LWMError(f"num_frames must be positive, got {num_frames}")
    if num_shapes is not None and not 1 <= num_shapes <= 3:
        raise LWMError(f"num_shapes must be 1, 2 or 3, got {num_shapes}")
    if event not in (None, "none", "enter", "leave"):
        raise LWMError(f"unknown event {event!r}; choose from none, enter, leave")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 4)) if num_shapes is None else num_shapes
    if event is None:
        event = "none"
        if num_frames >= 4 and rng.random() < event_prob:
            event = "enter" if n >= 2 and rng.random() < 0.5 else "leave"
    if event != "none" and num_frames < 3:
        raise LWMError(f"an {event!r} event needs at least 3 frames, got {num_frames}")
    if event == "enter" and n < 2:
        raise LWMError("an 'enter' event needs at least two shapes")
    if event == "enter" and n - 1 > num_frames - 2:  # entries at distinct frames 1 .. T-2
        raise LWMError(f"{n} shapes entering one after another need at least {n + 1} frames, got {num_frames}")
    for _ in range(200):  # rejection sampling against heavy occlusion; almost always the first try
        scene = Scene(_draw_shapes(rng, n, num_frames, event, still_prob), num_frames, seed)
        fractions = scene.visible_fractions(64)
        if np.all(np.isnan(fractions) | (fractions >= MIN_VISIBLE)):
            return scene
    raise LWMError(f"seed {seed}: no scene without heavy occlusion found")  # not met in practice


def _draw_shapes(rng: np.random.Generator, n: int, num_frames: int, event: str, still_prob: float
                 ) -> tuple[Shape, ...]:
    colours = rng.choice(len(COLOURS), size=n, replace=False)
    appear = [0] * n
    leave: list[int | None] = [None] * n
    if event == "enter":  # the first drawn is there from frame 0; the others come in at distinct later frames
        entries = np.sort(rng.choice(np.arange(1, num_frames - 1), size=n - 1, replace=False))
        order = rng.permutation(n)  # which shape enters when (draw order stays independent)
        for slot, frame in zip(order[1:], entries, strict=True):
            appear[slot] = int(frame)
    elif event == "leave":
        leave[int(rng.integers(n))] = int(rng.integers(2, num_frames))  # seen in >= 2 frames, gone in >= 1
    shapes = []
    for i in range(n):
        size = float(rng.uniform(MIN_SIZE, MAX_SIZE))
        direction = "none"
        if num_frames > 1 and rng.random() >= still_prob:
            direction = MOVES[int(rng.integers(4))]
        kind = SHAPES[int(rng.integers(3))]
        shapes.append(random_shape(rng, list(COLOURS)[colours[i]], kind, direction, size=size, appear=appear[i],
                                   leave=leave[i]))
    return tuple(shapes)


def random_shape(rng: np.random.Generator, colour: str, shape: str, direction: str = "none", *,
                 size: float | None = None, appear: int = 0, leave: int | None = None) -> Shape:
    """A shape of the given kind with a random size (unless given), travel and start, placed so its
    box stays inside the frame from the first to the last frame."""
    size = float(rng.uniform(MIN_SIZE, MAX_SIZE)) if size is None else size
    travel = float(rng.uniform(MIN_TRAVEL, MAX_TRAVEL)) if direction != "none" else 0.0
    dx, dy = _UNIT_STEP[direction]
    lo, hi = size / 2, 1 - size / 2
    x = float(rng.uniform(lo - min(dx, 0) * travel, hi - max(dx, 0) * travel))
    y = float(rng.uniform(lo - min(dy, 0) * travel, hi - max(dy, 0) * travel))
    return Shape(colour, shape, size, x, y, direction, travel, appear, leave)
