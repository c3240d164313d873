"""How much of a shape's colour and kind a VQGAN's codes carry, code by code (the shapes world).

    python bench/vqgan_codes.py                                  # lwm-tiny's VQGAN
    python bench/vqgan_codes.py --vqgan a.safetensors --vqgan b.safetensors --images 1600

A language model over VQGAN tokens reads an image as a set of codes. This measures what that set
tells without any model: single-shape test-split images (`random_scene(..., num_shapes=1)`) are
encoded; on the first half, each code's counts of the colours and of the kinds (square, circle,
triangle) of the images it appears in are taken (add-one smoothed; the most common code, the
background, left out); each image of the second half is then named by the product of its distinct
codes' shares (naive Bayes). Chance is 20% for colour and 33% for kind. lwm-tiny's VQGAN gives
colour 87.8% and kind 42.7% here, and lwm-tiny itself names the colour of every single-shape test
image and the kind of half (docs/lwm-tiny.md): what the codes hold one by one it has learnt, the kind,
which lies in how a shape's codes fit together, it has not. Run this on a new VQGAN before training a
model on its tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def single_shape_images(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames [n, size, size, 3] uint8, colour index [n], kind index [n]) of test-split images."""
    from lwm_core.data.shapes import COLOURS, SHAPES, random_scene, scene_seed

    frames, colours, kinds = [], [], []
    for i in range(n):
        scene = random_scene(scene_seed("test", i), 1, num_shapes=1)
        frames.append(scene.render(size)[0])
        colours.append(list(COLOURS).index(scene.shapes[0].colour))
        kinds.append(SHAPES.index(scene.shapes[0].shape))
    return np.stack(frames), np.array(colours), np.array(kinds)


def vote_accuracy(codes: np.ndarray, labels: np.ndarray, classes: int, num_codes: int) -> float:
    """Naive-Bayes vote over each image's distinct non-background codes: fit on the first half of
    codes [N, C] / labels [N], the accuracy on the second half."""
    background = np.bincount(codes.reshape(-1), minlength=num_codes).argmax()
    half = len(codes) // 2
    counts = np.ones((num_codes, classes))
    for row, label in zip(codes[:half], labels[:half], strict=True):
        used = np.unique(row[row != background])
        counts[used, label] += 1
    log_share = np.log(counts / counts.sum(1, keepdims=True))
    hits = [log_share[np.unique(row[row != background])].sum(0).argmax() == label
            for row, label in zip(codes[half:], labels[half:], strict=True)]
    return float(np.mean(hits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vqgan", action="append", help="VQGAN weights (repeatable); default lwm-tiny's")
    parser.add_argument("--images", type=int, default=2000, help="single-shape test images (half fit, half scored)")
    args = parser.parse_args()

    from lwm_core import load_vqgan
    from lwm_core.data.shapes import COLOURS, SHAPES
    from lwm_core.tiny import tiny_files

    for path in args.vqgan or [tiny_files(None).vqgan]:
        vq = load_vqgan(path)
        frames, colours, kinds = single_shape_images(args.images, vq.config.resolution)
        codes = np.asarray(vq.encode(frames)).reshape(len(frames), -1)
        k = vq.config.num_embeddings
        print(f"{path}: {codes.shape[1]} codes an image from {k}, {len(np.unique(codes))} used; vote on "
              f"{len(frames) - len(frames) // 2} images: colour {vote_accuracy(codes, colours, len(COLOURS), k):.1%}, "
              f"kind {vote_accuracy(codes, kinds, len(SHAPES), k):.1%}")


if __name__ == "__main__":
    main()
