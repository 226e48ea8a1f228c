"""diffsim.plot: line plots (matplotlib) written as PNG, text on images (Pillow)."""
import numpy as np
import pytest

from diffsim.io import read_png
from diffsim.plot import draw_text, line_plot, write_plot


def _ink(img):
    return np.any(img < 200, axis=2)


def test_write_plot_png_size_and_content(tmp_path):
    path = tmp_path / "sub" / "loss.png"
    it = np.arange(1, 101)
    img = write_plot(path, {"train": (it, 1.0 / it), "val": (it, 2.0 / it)}, logy=True, width=300, height=200,
                     title="Loss", xlabel="iteration", ylabel="loss")
    assert img.shape == (200, 300, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(read_png(path)[:, :, :3], img)
    assert _ink(img).mean() > 0.02                      # axes, lines and text were drawn
    assert not list(path.parent.glob("*.tmp*"))         # atomic: no temporary left


def test_rising_and_falling_lines_differ_and_nan_is_tolerated():
    x = np.linspace(0, 1, 50)
    up = line_plot({"a": (x, x)}, width=200, height=150, legend=False)
    down = line_plot({"a": (x, 1 - x)}, width=200, height=150, legend=False)
    assert (up != down).any()
    y = x.copy()
    y[10], y[20] = np.nan, np.inf
    assert line_plot(y, width=120, height=100).shape == (100, 120, 3)
    assert line_plot({"empty": np.array([])}, width=120, height=100).shape == (100, 120, 3)


def test_plot_bad_input():
    x = np.arange(5.0)
    with pytest.raises(ValueError, match="differ in length"):
        line_plot({"a": (x, x[:-1])})
    with pytest.raises(ValueError, match="positive limits"):
        line_plot({"a": x + 1}, logy=True, ylim=(0, 1))
    with pytest.raises(ValueError, match="legend"):
        line_plot({"a": x}, legend="middle")
    with pytest.raises(ValueError, match="16x16"):
        line_plot({"a": x}, width=8)


def test_draw_text_inks_only_near_its_anchor():
    img = np.full((60, 200, 3), 255, np.uint8)
    out = draw_text(img, 20, 30, "E = 5e3 Pa", color=(200, 0, 0))
    assert out is img
    ys, xs = np.nonzero(np.any(img != 255, axis=2))
    assert len(xs) > 20 and xs.min() >= 20 and ys.min() >= 30 and ys.max() < 50
    with pytest.raises(ValueError, match="uint8"):
        draw_text(np.zeros((4, 4, 3)), 0, 0, "x")
