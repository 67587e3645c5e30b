"""The PIL charts: points land where the axes say, dashes leave gaps, bad input is refused."""

from __future__ import annotations

import pytest
from PIL import Image

from wm.plots import PALETTE, bar_plot, line_plot


def test_line_plot_draws_each_series_at_its_values(tmp_path):
    path = tmp_path / "lines.png"
    # y spans 20..30 exactly, 11 points: x = 1..11
    rising = [20.0 + i for i in range(11)]
    flat = [25.0] * 11
    line_plot([("rising", rising, 0, False), ("flat", flat, 1, True)], path, "t", "x", "y", width=640, height=400)
    img = Image.open(path).convert("RGB")
    assert img.size == (640, 400) and not list(tmp_path.glob(".*"))  # no temporary file left
    left, top, pw, ph = 56, 32, 640 - 56 - 16, 400 - 32 - 44  # the plot box of line_plot

    def at(i: int, y: float) -> tuple[int, int]:
        return round(left + pw * i / 10), round(top + ph * (30 - y) / 10)

    # the rising series' first, 4th (x = 4, y = 23) and last points, in its colour (at x = 6 it
    # crosses the flat series, drawn over it)
    for i in (0, 3, 10):
        assert img.getpixel(at(i, rising[i])) == PALETTE[0], i
    # the dashed flat line: coloured at its points, and with gaps between them somewhere
    assert img.getpixel(at(2, 25.0)) == PALETTE[1] or img.getpixel(at(3, 25.0)) == PALETTE[1]
    row = [img.getpixel((x, at(0, 25.0)[1])) for x in range(at(7, 25)[0], at(9, 25)[0])]
    assert PALETTE[1] in row and any(p != PALETTE[1] for p in row)
    # nothing drawn in the data colours outside the plot box but in the legend
    below = {img.getpixel((x, top + ph + 20)) for x in range(left, left + pw)}
    assert PALETTE[0] not in below and PALETTE[1] not in below


def test_line_plot_refuses_no_data(tmp_path):
    with pytest.raises(ValueError, match="non-empty series"):
        line_plot([("empty", [], 0, False)], tmp_path / "x.png", "t", "x", "y")
    assert not (tmp_path / "x.png").exists()


def test_bar_plot_writes_a_png(tmp_path):
    path = tmp_path / "bars.png"
    bar_plot({"a": {"mean": 2.0, "ci95": 0.5}, "b": {"mean": 1.0, "ci95": float("nan")}}, path)
    assert Image.open(path).size == (480, 300)


def test_save_gif_keeps_every_frame_and_replaces_the_old_file(tmp_path):
    from wm.plots import save_gif

    path = tmp_path / "clip.gif"
    path.write_bytes(b"an older version")
    frames = [Image.new("RGB", (8, 6), (40 * i, 0, 0)) for i in range(5)]
    save_gif(frames, path, duration_ms=70)
    gif = Image.open(path)
    assert gif.n_frames == 5 and gif.size == (8, 6) and gif.info["duration"] == 70 and gif.info["loop"] == 0
    gif.seek(3)
    assert gif.convert("RGB").getpixel((0, 0)) == (120, 0, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif"]  # no temporary file left


def test_interval_plot_puts_dots_and_bars_at_their_values(tmp_path):
    from wm.plots import interval_plot

    path = tmp_path / "diffs.png"
    rows = [("a minus b", 0.5, (0.2, 0.8), 0), ("c minus d", -0.3, (-0.9, 0.1), 1), ("no interval", 0.1, None, 2)]
    interval_plot(rows, path, "paired differences", "dB", width=640, row_height=28)
    img = Image.open(path).convert("RGB")
    assert img.size == (640, 32 + 44 + 3 * 28)
    left, pw = 250, 640 - 250 - 24
    lo, hi = -0.9 - 0.08 * 1.7, 0.8 + 0.08 * 1.7

    def px(v):
        return round(left + pw * (v - lo) / (hi - lo))

    y0, y1, y2 = 32 + 14, 32 + 28 + 14, 32 + 56 + 14
    assert img.getpixel((px(0.5), y0)) == PALETTE[0] and img.getpixel((px(0.3), y0)) == PALETTE[0]  # on the bar
    assert img.getpixel((px(0.1), y0)) == (255, 255, 255)  # outside a's interval
    assert img.getpixel((px(-0.6), y1)) == PALETTE[1]
    assert img.getpixel((px(0.1), y2)) == PALETTE[2] and img.getpixel((px(0.3), y2)) == (255, 255, 255)
    with pytest.raises(ValueError, match="at least one row"):
        interval_plot([], path, "t", "x")
