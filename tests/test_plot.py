"""Tests for diffsim.plot (bitmap font, line plots, PNG output)."""
import math
import struct

import numpy as np
import pytest

from diffsim.plot import (PALETTE, _GLYPHS, _linear_ticks, draw_text, line_plot, text_size,
                          write_plot)

WHITE = 255


def color_mask(img, color):
    return np.all(img == np.asarray(color, dtype=np.uint8), axis=2)


def ink(img):
    return np.any(img != WHITE, axis=2)


# --------------------------------------------------------------------------- font


def test_font_covers_printable_ascii_with_distinct_glyphs():
    seen = {}
    for c in range(32, 127):
        ch = chr(c)
        assert ch in _GLYPHS, f"no glyph for {ch!r}"
        g = _GLYPHS[ch]
        if ch != " ":
            assert g.any(), f"empty glyph for {ch!r}"
        key = g.tobytes()
        assert key not in seen, f"{ch!r} and {seen.get(key)!r} share a bitmap"
        seen[key] = ch


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_text_inside_its_box_and_tight(scale):
    text = "Hxg 0.5e-3 [a,b]; _%y"
    w, h = text_size(text, scale)
    assert (w, h) == ((len(text) * 6 - 1) * scale, 9 * scale)
    img = np.full((h + 30, w + 40, 3), WHITE, dtype=np.uint8)
    x0, y0 = 17, 11
    out = draw_text(img, x0, y0, text, color=(10, 20, 30), scale=scale)
    assert out is img
    m = ink(img)
    ys, xs = np.nonzero(m)
    # Nothing outside the box, and the box is tight ('H' touches the top-left, the
    # descender of 'y' the bottom, its right stroke the right edge).
    assert ys.min() == y0 and ys.max() == y0 + h - 1
    assert xs.min() == x0 and xs.max() == x0 + w - 1
    assert np.all(img[m] == (10, 20, 30))


def test_multiline_and_empty_text_size():
    assert text_size("") == (0, 0)
    assert text_size("ab\nc", 2) == ((2 * 6 - 1) * 2, (2 * 9 + 2) * 2)
    with pytest.raises(ValueError):
        text_size("a", 0)


def test_text_clipped_at_borders_and_rotated():
    img = np.full((20, 30, 3), WHITE, dtype=np.uint8)
    draw_text(img, -7, -3, "WWWWWWWWWW", scale=2)  # larger than the image, off the corner
    draw_text(img, 500, 500, "x")  # entirely outside: a no-op
    assert ink(img).any()
    img = np.full((40, 20, 3), WHITE, dtype=np.uint8)
    draw_text(img, 2, 3, "Hey", rotate=True)
    w, h = text_size("Hey")
    ys, xs = np.nonzero(ink(img))
    assert xs.min() >= 2 and xs.max() <= 2 + h - 1 and ys.min() >= 3 and ys.max() <= 3 + w - 1
    assert ys.max() - ys.min() > xs.max() - xs.min()  # tall, not wide


def test_unknown_character_draws_a_box():
    img = np.full((12, 12, 3), WHITE, dtype=np.uint8)
    draw_text(img, 1, 1, "\u2603")
    assert ink(img).sum() > 0


# --------------------------------------------------------------------------- ticks


def test_linear_ticks_are_nice():
    rng = np.random.default_rng(1)
    for _ in range(300):
        lo = rng.uniform(-1e3, 1e3) * 10.0 ** rng.integers(-6, 6)
        hi = lo + rng.uniform(1e-3, 1e3) * 10.0 ** rng.integers(-6, 6)
        ticks, step, lo2, hi2 = _linear_ticks(lo, hi, expand=True)
        assert 4 <= len(ticks) <= 7, (lo, hi, ticks)
        mant = step / 10.0 ** math.floor(math.log10(step) + 1e-9)
        assert min(abs(mant - m) for m in (1, 2, 5)) < 1e-6
        assert lo2 <= lo and hi2 >= hi
        assert ticks[0] >= lo2 - 1e-9 * step and ticks[-1] <= hi2 + 1e-9 * step


# --------------------------------------------------------------------------- plots


def test_rising_line_goes_up():
    x = np.linspace(0, 1, 50)
    img = line_plot({"up": (x, 2 * x + 1)}, width=320, height=240, legend=False)
    assert img.shape == (240, 320, 3) and img.dtype == np.uint8
    ys, xs = np.nonzero(color_mask(img, PALETTE[0]))
    assert len(xs) > 100
    first = ys[xs == xs.min()].mean()
    last = ys[xs == xs.max()].mean()
    assert last < first - 100  # higher on screen = smaller row index
    # Continuous: every column between the ends has line pixels.
    assert set(range(xs.min(), xs.max() + 1)) <= set(xs.tolist())


def test_log_axis_six_decades():
    y = np.logspace(-6, 0, 60)
    img = line_plot({"loss": y}, logy=True, title="log", xlabel="it", ylabel="loss")
    m = color_mask(img, PALETTE[0])
    ys, _ = np.nonzero(m)
    assert m.sum() > 200 and ys.max() - ys.min() > 200  # spans most of the axes height
    # Log scale: equal ratios -> equal pixel steps, so the line is straight: its midpoint
    # (y = 1e-3) lies half way between the ends.
    cols = np.nonzero(m.any(axis=0))[0]
    mid_col = (cols.min() + cols.max()) // 2
    rows = np.nonzero(m[:, mid_col])[0]
    assert abs(rows.mean() - (ys.min() + ys.max()) / 2) < 6


def test_legend_two_series():
    x = np.arange(20)
    series = {"alpha": (x, x ** 2), "beta": (x, 30 * x)}
    img = line_plot(series, width=400, height=300)
    for c in PALETTE[:2]:
        assert color_mask(img, c).any()
    no_legend = line_plot(series, width=400, height=300, legend=False)
    diff = np.any(img != no_legend, axis=2)
    ys, xs = np.nonzero(diff)
    assert xs.min() > 200 and ys.max() < 150  # the legend is in the top-right corner
    # Both swatches are in the legend box.
    box = img[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    for c in PALETTE[:2]:
        assert color_mask(box, c).any()


def test_nan_inf_empty_and_nonpositive_do_not_crash():
    y = np.array([1.0, 2.0, np.nan, 4.0, np.inf, -np.inf, 3.0, 0.0, -1.0])
    for kw in ({}, {"logy": True}, {"logx": True, "logy": True}, {"markers": True}):
        img = line_plot({"y": y, "nan": [np.nan] * 4, "empty": []}, width=200, height=150, **kw)
        assert img.shape == (150, 200, 3)
    for series in ({}, {"a": []}, {"a": [np.nan, np.nan]}, {"a": [5.0]}, [1.0, 2.0]):
        img = line_plot(series, width=200, height=150, logy=True, title="t")
        assert img.shape == (150, 200, 3)
        assert ink(img).any()  # axes are drawn


def test_nan_breaks_the_line():
    y = np.ones(21)
    y[10] = np.nan
    img = line_plot({"a": y}, width=300, height=200, legend=False, ylim=(0, 2))
    m = color_mask(img, PALETTE[0])
    cols = np.nonzero(m.any(axis=0))[0]
    gaps = np.diff(cols)
    assert gaps.max() > 10  # a visible hole around index 10


def test_limits_and_errors():
    x = np.linspace(0, 10, 101)
    img = line_plot({"a": (x, x)}, xlim=(2, 4), ylim=(0, None), width=300, height=200)
    assert img.shape == (200, 300, 3)
    with pytest.raises(ValueError):
        line_plot({"a": (x, x[:-1])})
    with pytest.raises(ValueError):
        line_plot({"a": x}, logy=True, ylim=(0, 1))
    with pytest.raises(ValueError):
        line_plot({"a": x}, legend="middle")


def test_write_plot_png(tmp_path):
    path = tmp_path / "sub" / "loss.png"
    it = np.arange(1, 101)
    img = write_plot(path, {"train": (it, 1.0 / it), "val": (it, 2.0 / it)}, logy=True,
                     width=300, height=200, title="Loss")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    assert (w, h) == (300, 200) and img.shape == (200, 300, 3)
