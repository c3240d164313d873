"""Write a shapes data set for lwm-tiny (clips + jsonl records), one split per call.

Example:
    python examples/make_shapes.py data/shapes/train_videos --split train --n 2000 --frames 8 --size 64
    python examples/make_shapes.py data/shapes/train_images --split train --n 2000 --frames 1
    python examples/make_shapes.py data/shapes/gen_videos --n 600 --num-shapes 1 --event-prob 0
    lwm tokenize-video data/shapes/train_videos/clips --out data/shapes/train_videos/tokens --vqgan vqgan.safetensors

Seeds come from the split's own range (train, validation and test never share a scene); --seed is
the first clip index within it, so a second call with --seed 2000 adds 2000 new clips.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lwm_core.data.shapes import SPLITS
from lwm_core.data.shapes_write import write_shapes_dataset
from lwm_core.errors import LWMError


def _size(text: str) -> int | tuple[int, int]:
    """'64' -> 64, '240x320' -> (240, 320) (height x width)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: give S or HxW, e.g. 64 or 240x320") from None
    if len(values) not in (1, 2) or min(values) < 8:
        raise argparse.ArgumentTypeError(f"size {text!r}: give S or HxW with sides of at least 8 pixels")
    return values[0] if len(values) == 1 else (values[0], values[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder (created; written whole or not at all)")
    parser.add_argument("--split", default="train", choices=list(SPLITS))
    parser.add_argument("--n", type=int, default=100, help="number of clips (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="first clip index within the split (default 0)")
    parser.add_argument("--size", type=_size, default=64, help="frame size S or HxW (default 64)")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip; 1 writes images (default 8)")
    parser.add_argument("--fps", type=float, default=4.0, help="frame rate of the mp4 clips (default 4)")
    parser.add_argument("--num-shapes", type=int, choices=(1, 2, 3), default=None,
                        help="shapes per clip (default: 1 to 3 at random); 1 with --event-prob 0 for generation data")
    parser.add_argument("--event-prob", type=float, default=0.3,
                        help="chance that a clip of >= 4 frames has a shape entering or leaving (default 0.3)")
    parser.add_argument("--text-docs", type=int, default=None, help="text corpus documents (default: --n)")
    parser.add_argument("--needles", type=int, default=0, help="needle documents to write (default 0)")
    parser.add_argument("--needle-length", type=int, default=1000, help="haystack words per needle document")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(f"{args.split} clips", total=args.n)
            info = write_shapes_dataset(args.out, args.split, args.n, args.seed, args.size, args.frames,
                                        fps=args.fps, num_shapes=args.num_shapes,
                                        event_prob=args.event_prob, text_docs=args.text_docs, needles=args.needles,
                                        needle_length=args.needle_length, overwrite=args.overwrite,
                                        on_clip=lambda i: progress.update(task, completed=i + 1))
    except LWMError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        return 2
    records = ", ".join(f"{v} {k}" for k, v in info["records"].items() if v)
    Console().print(f"wrote {args.out}: {records}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
