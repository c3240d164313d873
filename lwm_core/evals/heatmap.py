"""The needle heatmap as LWM's figure shows it, drawn with Pillow (no plotting library needed):
context length across, depth percent down, each cell the mean score of its trials on LWM's
red #F0496E -> yellow #EBB839 -> green #0CD79F scale over 0..1.

    png = heatmap_png(records, "needle_results.png", title="LWM-Text-1M, single needle")
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from lwm_core.fileio import atomic_path

RED, YELLOW, GREEN = (0xF0, 0x49, 0x6E), (0xEB, 0xB8, 0x39), (0x0C, 0xD7, 0x9F)


def score_colour(score: float) -> tuple[int, int, int]:
    """LWM's three-stop scale: 0 red, 0.5 yellow, 1 green, linear in between."""
    s = min(max(float(score), 0.0), 1.0)
    a, b, t = (RED, YELLOW, s * 2) if s <= 0.5 else (YELLOW, GREEN, s * 2 - 1)
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def grid_scores(records: list[dict]) -> tuple[list[int], list[float], dict[tuple[int, float], float]]:
    """(context lengths, depths, {(length, depth): mean `correct`}) over the records' trials."""
    cells: dict[tuple[int, float], list[float]] = defaultdict(list)
    for r in records:
        cells[(int(r["context_length"]), float(r["depth_percent"]))].append(float(r["correct"]))
    lengths = sorted({k[0] for k in cells})
    depths = sorted({k[1] for k in cells})
    return lengths, depths, {k: sum(v) / len(v) for k, v in cells.items()}


def length_label(n: int) -> str:
    """1048576 -> '1M', 131072 -> '128K', 1000 -> '1000', 55632 -> '54K' (K = 1024 throughout, as the
    lengths are given; a length that is not a whole number of K is rounded)."""
    for unit, size in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n / 1024:.0f}K" if n >= 10_000 else str(n)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # an old Pillow without the scalable default font
        return ImageFont.load_default()


def heatmap_png(records: list[dict], out_path, *, title: str = "", x_label: str = "Context Length",
                cell=(44, 26)) -> Path:
    """Draw the records' grid to `out_path` (written atomically); returns the path. `x_label`: LWM's
    "Context Length", or e.g. "Frames" for the visual needle."""
    from PIL import Image, ImageDraw

    lengths, depths, scores = grid_scores(records)
    if not lengths:
        lengths, depths = [0], [0.0]
    cw, ch = max(cell[0], 560 // max(len(lengths), 1)), cell[1]
    left, top, right, bottom = 90, 46, 90, 70
    width, height = left + cw * len(lengths) + right, top + ch * len(depths) + bottom
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    small, big = _font(11), _font(14)
    for i, length in enumerate(lengths):
        for j, depth in enumerate(depths):
            box = [left + i * cw, top + j * ch, left + (i + 1) * cw - 1, top + (j + 1) * ch - 1]
            score = scores.get((length, depth))
            draw.rectangle(box, fill=(235, 235, 235) if score is None else score_colour(score), outline="white")
        x = left + i * cw + cw // 2
        draw.text((x, top + ch * len(depths) + 6), length_label(length), fill="black", font=small, anchor="ma")
    for j, depth in enumerate(depths):
        draw.text((left - 6, top + j * ch + ch // 2), f"{depth:g}", fill="black", font=small, anchor="rm")
    draw.text((left + cw * len(lengths) // 2, height - 24), x_label, fill="black", font=big, anchor="ma")
    label = Image.new("RGB", (140, 20), "white")  # the y label, drawn then turned upright
    ImageDraw.Draw(label).text((70, 10), "Depth Percent", fill="black", font=big, anchor="mm")
    image.paste(label.rotate(90, expand=True), (8, top + ch * len(depths) // 2 - 70))
    mean = sum(scores.values()) / len(scores) if scores else 0.0
    heading = f"{title}  " if title else ""
    draw.text((left, 14), f"{heading}average score {mean:.3f}", fill="black", font=big)
    bar_x = left + cw * len(lengths) + 30  # the colour bar: 1 at the top, 0 at the bottom
    span = ch * len(depths)
    for y in range(span):
        draw.line([bar_x, top + y, bar_x + 16, top + y], fill=score_colour(1 - y / max(span - 1, 1)))
    for value in (0.0, 0.5, 1.0):
        draw.text((bar_x + 22, top + (1 - value) * (span - 1)), f"{value:g}", fill="black", font=small, anchor="lm")
    out_path = Path(out_path)
    with atomic_path(out_path, overwrite=True) as tmp:
        image.save(tmp, format="PNG")
    return out_path
