"""Pictures written with PIL (no plotting library in the install): small PNG charts (the bar chart
of the evaluation's returns and rates, line charts such as PSNR over the prediction horizon) and
the writers every stage's PNGs and GIFs go through, atomically (encoded in memory, then a
temporary file renamed into place), so an interrupted stage never leaves half an image."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from wm.atomic import write_bytes_atomic

# distinguishable on white, in the order series are given
PALETTE = ((40, 90, 200), (220, 110, 20), (30, 150, 60), (190, 40, 40), (120, 70, 170), (110, 110, 110))


def save_png(img: Image.Image, path: str | Path) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def save_gif(frames: Sequence[Image.Image], path: str | Path, duration_ms: int) -> None:
    """An endlessly looping GIF, ``duration_ms`` per frame."""
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=list(frames[1:]), duration=duration_ms, loop=0)
    write_bytes_atomic(path, buf.getvalue())


def bar_plot(results: dict[str, dict[str, float]], path: Path, title: str = "real-game return (mean, 95% CI)",
             fmt: str = ".0f") -> None:
    """One bar per entry (``mean``) with its 95 % interval (``ci95``, drawn when finite)."""
    h, pad = 300, 40
    w = max(480, 2 * pad + 90 * len(results))
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    top = max([r["mean"] + (r["ci95"] if math.isfinite(r["ci95"]) else 0) for r in results.values()] + [0.0]) or 1.0
    bw = (w - 2 * pad) // (2 * len(results))
    for i, (name, r) in enumerate(results.items()):
        x = pad + (2 * i + 0.5) * bw
        y = h - pad - (h - 2 * pad) * max(r["mean"], 0.0) / top
        draw.rectangle([x, y, x + bw, h - pad], fill=(70, 110, 200))
        if math.isfinite(r["ci95"]):
            lo = h - pad - (h - 2 * pad) * (r["mean"] - r["ci95"]) / top
            hi = h - pad - (h - 2 * pad) * (r["mean"] + r["ci95"]) / top
            draw.line([x + bw / 2, lo, x + bw / 2, hi], fill="black", width=2)
        draw.text((x, h - pad + 5), name, fill="black")
        draw.text((x, y - 14), format(r["mean"], fmt), fill="black")
    draw.text((pad, 10), title, fill="black")
    save_png(img, path)


def _segment(draw: ImageDraw.ImageDraw, a: tuple[float, float], b: tuple[float, float], colour: tuple[int, ...],
             dashed: bool, dash: float = 6.0, gap: float = 4.0) -> None:
    if not dashed:
        draw.line([a, b], fill=colour, width=2)
        return
    length = math.dist(a, b)
    t = 0.0
    while t < length:
        u, v = t / length, min(t + dash, length) / length
        draw.line([(a[0] + (b[0] - a[0]) * u, a[1] + (b[1] - a[1]) * u),
                   (a[0] + (b[0] - a[0]) * v, a[1] + (b[1] - a[1]) * v)], fill=colour, width=2)
        t += dash + gap


def line_plot(series: Sequence[tuple[str, Sequence[float], int, bool]], path: Path, title: str, xlabel: str,
              ylabel: str, width: int = 640, height: int = 400) -> None:
    """``series``: (label, y values at x = 1, 2, ..., colour index into ``PALETTE``, dashed).
    Axes span the data (y padded to whole units), a tick per x and per whole y unit (or fewer
    when there are many), the legend in the top-right corner."""
    if not series or not any(len(ys) for _, ys, _, _ in series):
        raise ValueError("line_plot needs at least one non-empty series")
    left, right, top, bottom = 56, 16, 32, 44
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    values = [y for _, ys, _, _ in series for y in ys if math.isfinite(y)]
    lo, hi = math.floor(min(values)), math.ceil(max(values))
    hi = hi if hi > lo else lo + 1
    n = max(len(ys) for _, ys, _, _ in series)
    pw, ph = width - left - right, height - top - bottom

    def px(i: int, y: float) -> tuple[float, float]:  # i: 0-based index of x = i + 1
        return left + pw * (i / max(1, n - 1)), top + ph * (hi - y) / (hi - lo)

    draw.rectangle([left, top, left + pw, top + ph], outline="black")
    ystep = max(1, math.ceil((hi - lo) / 10))
    for y in range(lo, hi + 1, ystep):
        _, yy = px(0, y)
        draw.line([left - 4, yy, left + pw, yy], fill=(225, 225, 225))
        draw.line([left - 4, yy, left, yy], fill="black")
        draw.text((left - 30, yy - 6), str(y), fill="black")
    xstep = max(1, math.ceil(n / 16))
    for i in range(0, n, xstep):
        xx, _ = px(i, lo)
        draw.line([xx, top + ph, xx, top + ph + 4], fill="black")
        draw.text((xx - 4, top + ph + 6), str(i + 1), fill="black")
    for label, ys, colour, dashed in series:
        pts = [px(i, y) for i, y in enumerate(ys) if math.isfinite(y)]
        c = PALETTE[colour % len(PALETTE)]
        for a, b in zip(pts, pts[1:]):
            _segment(draw, a, b, c, dashed)
        for x, y in pts:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=c)
    for j, (label, _, colour, dashed) in enumerate(series):
        y = top + 8 + 14 * j
        x = left + pw - 230
        c = PALETTE[colour % len(PALETTE)]
        _segment(draw, (x, y + 6), (x + 24, y + 6), c, dashed)
        draw.text((x + 30, y), label, fill="black")
    draw.text((left, 8), title, fill="black")
    draw.text((left + pw // 2 - 3 * len(xlabel), height - 18), xlabel, fill="black")
    draw.text((4, 8), ylabel, fill="black")
    save_png(img, path)


def interval_plot(rows: Sequence[tuple[str, float, tuple[float, float] | None, int]], path: Path, title: str,
                  xlabel: str, width: int = 640, row_height: int = 28) -> None:
    """One row per estimate: (label, value, (low, high) interval or None, colour index into
    ``PALETTE``), drawn as a dot on its interval's bar against a vertical line at zero, which
    the axis always includes -- an interval that crosses the line is no evidence either way."""
    if not rows:
        raise ValueError("interval_plot needs at least one row")
    left, right, top, bottom = 250, 24, 32, 44
    height = top + bottom + row_height * len(rows)
    ends = [0.0] + [v for _, x, ci, _ in rows for v in ((x, *ci) if ci else (x,)) if math.isfinite(v)]
    lo, hi = min(ends), max(ends)
    span = (hi - lo) or 1.0
    lo, hi = lo - 0.08 * span, hi + 0.08 * span
    pw = width - left - right
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)

    def px(v: float) -> float:
        return left + pw * (v - lo) / (hi - lo)

    ph = row_height * len(rows)
    draw.rectangle([left, top, left + pw, top + ph], outline="black")
    step = 10 ** math.floor(math.log10((hi - lo) / 2))
    step *= 5 if (hi - lo) / step > 20 else 2 if (hi - lo) / step > 8 else 1
    digits = max(0, -math.floor(math.log10(step)))
    for k in range(math.ceil(lo / step), math.floor(hi / step) + 1):
        draw.line([px(k * step), top + ph, px(k * step), top + ph + 4], fill="black")
        draw.text((px(k * step) - 10, top + ph + 6), f"{k * step:+.{digits}f}" if k else "0", fill="black")
    draw.line([px(0), top, px(0), top + ph], fill=(150, 150, 150), width=1)
    for j, (label, x, ci, colour) in enumerate(rows):
        y = top + row_height * j + row_height // 2
        c = PALETTE[colour % len(PALETTE)]
        if ci:
            draw.line([px(ci[0]), y, px(ci[1]), y], fill=c, width=3)
        draw.ellipse([px(x) - 4, y - 4, px(x) + 4, y + 4], fill=c)
        draw.text((8, y - 6), label, fill="black")
    draw.text((8, 8), title, fill="black")  # from the left edge: a long title fits the whole width
    draw.text((left + pw // 2 - 3 * len(xlabel), height - 18), xlabel, fill="black")
    save_png(img, path)
