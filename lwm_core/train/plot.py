"""A loss-curve PNG from a run's metrics.jsonl, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

import json
from pathlib import Path

from lwm_core.fileio import atomic_path

_COLOURS = {"loss": (31, 119, 180), "text_loss": (44, 160, 44), "vision_loss": (214, 39, 40)}


def read_metrics(path) -> list[dict]:
    """The JSON lines of a metrics file (lines that do not parse are skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def loss_curve_png(metrics_path, out_path, *, size=(800, 480)) -> Path | None:
    """Draw loss (and text / vision loss where logged) against step; None when nothing was logged."""
    from PIL import Image, ImageDraw

    rows = [r for r in read_metrics(metrics_path) if "step" in r and "loss" in r]
    if not rows:
        return None
    series = {name: [(r["step"], r[name]) for r in rows if isinstance(r.get(name), (int, float))]
              for name in _COLOURS}
    series = {k: v for k, v in series.items()  # drop a part that is empty or the same curve as the loss
              if v and (k == "loss" or (any(y > 0 for _, y in v) and v != series["loss"]))}
    steps = [s for v in series.values() for s, _ in v]
    values = [y for v in series.values() for _, y in v]
    width, height = size
    left, right, top, bottom = 70, 20, 30, 50
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    y0, y1 = min(min(values), 0.0), max(values) * 1.05 or 1.0
    px = lambda s: left + (s - x0) / (x1 - x0) * (width - left - right)
    py = lambda y: top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    for i in range(5):  # y ticks
        y = y0 + (y1 - y0) * i / 4
        draw.line([left - 4, py(y), left, py(y)], fill=(0, 0, 0))
        draw.text((5, py(y) - 6), f"{y:.3g}", fill=(0, 0, 0))
    for i in range(5):  # x ticks
        s = x0 + (x1 - x0) * i / 4
        draw.line([px(s), height - bottom, px(s), height - bottom + 4], fill=(0, 0, 0))
        draw.text((px(s) - 10, height - bottom + 8), f"{s:.0f}", fill=(0, 0, 0))
    draw.text((width // 2 - 15, height - 18), "step", fill=(0, 0, 0))
    for n, (name, points) in enumerate(series.items()):
        colour = _COLOURS[name]
        coords = [(px(s), py(y)) for s, y in points]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=2)
        else:
            draw.ellipse([coords[0][0] - 2, coords[0][1] - 2, coords[0][0] + 2, coords[0][1] + 2], fill=colour)
        draw.text((left + 10 + 110 * n, 8), name, fill=colour)
    out_path = Path(out_path)
    with atomic_path(out_path, overwrite=True) as tmp:
        image.save(tmp, format="PNG")
    return out_path
