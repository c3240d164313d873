"""The pixel checker judges rendered frames degraded like a VQGAN's output (blur + noise)."""

import cv2
import numpy as np

from lwm_core.data.shapes import COLOURS, DIRECTIONS, SHAPES, Scene, Shape
from lwm_core.data.shapes_check import check_image, check_video, detect, detect_all, motion_direction
from lwm_core.data.shapes_text import prompt_scene


def degrade(frames, rng, blur=1.0, noise=20.0):
    """Gaussian blur (sigma in pixels) and Gaussian noise, as a decoder's smudged output."""
    out = np.stack([cv2.GaussianBlur(f.astype(np.float32), (0, 0), blur) for f in frames])
    return np.clip(np.round(out + rng.normal(0, noise, out.shape)), 0, 255).astype(np.uint8)


def _case(rng, i):
    colour, shape = list(COLOURS)[rng.integers(5)], SHAPES[rng.integers(3)]
    direction = DIRECTIONS[rng.integers(5)]
    return colour, shape, direction, f"a {colour} {shape}" + (f" moving {direction}" if direction != "none" else "")


def test_images_at_least_98_percent_right_under_blur_and_noise():
    rng = np.random.default_rng(0)
    right, wrong = 0, []
    for i in range(200):
        colour, shape, _, _ = _case(rng, i)
        image = degrade(prompt_scene(f"a {colour} {shape}", seed=i).render(64), rng)[0]
        found = check_image(image)
        right += (found.colour, found.shape) == (colour, shape)
        if (found.colour, found.shape) != (colour, shape):
            wrong.append((colour, shape, found))
    assert right / 200 >= 0.98, wrong


def test_videos_at_least_98_percent_right_under_blur_and_noise():
    rng = np.random.default_rng(1)
    right, wrong = 0, []
    for i in range(200):
        colour, shape, direction, prompt = _case(rng, i)
        frames = degrade(prompt_scene(prompt, seed=i, num_frames=8).render(64), rng)
        ok = check_video(frames, colour, shape, direction)
        right += ok
        if not ok:
            wrong.append((prompt, motion_direction(frames, colour)))
    assert right / 200 >= 0.98, wrong
    # and a wrong claim is refused
    frames = degrade(prompt_scene("a red square moving left", seed=3, num_frames=8).render(64), rng)
    assert check_video(frames, "red", "square", "left")
    assert not check_video(frames, "red", "square", "right") and not check_video(frames, "red", "circle", "left")
    assert not check_video(frames, "blue", "square", "left")


def test_black_and_noise_images_are_none():
    rng = np.random.default_rng(2)
    assert check_image(np.zeros((64, 64, 3), np.uint8)).colour == "none"
    assert check_image(degrade(np.zeros((1, 64, 64, 3), np.uint8), rng)[0]).colour == "none"
    for _ in range(5):
        assert check_image(rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)).shape == "none"
    # a cloud of red specks is no shape either
    cloud = np.zeros((64, 64, 3), np.uint8)
    cloud[10:50, 10:50][rng.random((40, 40)) < 0.35] = COLOURS["red"]
    assert check_image(cloud).shape == "none"
    assert motion_direction(np.zeros((4, 32, 32, 3), np.uint8), "red") == "absent"


def test_float_frames_in_minus_one_to_one_read_like_uint8():
    frame = Scene((Shape("white", "triangle", 0.3, 0.4, 0.6),)).render(64)[0]
    as_float = frame.astype(np.float32) / 127.5 - 1.0
    assert check_image(as_float) == check_image(frame)
    assert (check_image(frame).colour, check_image(frame).shape) == ("white", "triangle")


def test_several_shapes_each_found_with_its_motion():
    rng = np.random.default_rng(3)
    scene = Scene((Shape("red", "square", 0.25, 0.2, 0.2, "down", 0.4),
                   Shape("blue", "circle", 0.25, 0.8, 0.8, "left", 0.4),
                   Shape("yellow", "triangle", 0.25, 0.8, 0.2)), 6)
    frames = degrade(scene.render(64), rng)
    found = {d.colour: d.shape for d in detect_all(frames[0])}
    assert found == {"red": "square", "blue": "circle", "yellow": "triangle"}
    assert [motion_direction(frames, c) for c in ("red", "blue", "yellow")] == ["down", "left", "none"]
    assert detect(frames[0], "green").colour == "none"
