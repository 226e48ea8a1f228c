"""Line plots (loss curves, traces) with matplotlib, written atomically as PNG, and text
labels on preview images with Pillow.

    write_plot("runs/fit/loss.png", {"loss (mm^2)": (iterations, losses)}, logy=True)
"""
from __future__ import annotations

import numpy as np

from .render import write_png

__all__ = ["line_plot", "write_plot", "draw_text"]

_LEGEND = {True: "best", "upper right": "upper right", "upper left": "upper left", "lower left": "lower left",
           "lower right": "lower right"}


def _series(series) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``{name: (x, y)}``, ``{name: y}`` or a bare ``y`` -> ``[(name, x, y)]`` (float arrays)."""
    if not isinstance(series, dict):
        series = {"": series}
    out = []
    for name, s in series.items():
        if isinstance(s, tuple):
            x, y = (np.asarray(a, float).ravel() for a in s)
            if x.shape != y.shape:
                raise ValueError(f"series {name!r}: x and y differ in length ({x.size} vs {y.size})")
        else:
            y = np.asarray(s, float).ravel()
            x = np.arange(y.size, dtype=float)
        out.append((str(name), x, y))
    return out


def line_plot(series, width: int = 640, height: int = 400, title: str | None = None, xlabel: str | None = None,
              ylabel: str | None = None, logy: bool = False, logx: bool = False, xlim=None, ylim=None,
              markers: bool = False, legend=True) -> np.ndarray:
    """Render a line plot as an ``(height, width, 3)`` uint8 RGB image.

    ``series``: ``{name: (x, y)}`` or ``{name: y}`` (``x = 0..n-1``) or one bare ``y``;
    NaN/inf points (and non-positive ones on a log axis) break the line. ``legend``:
    ``True`` (best place), ``"upper right"`` ... or ``False``; unnamed series are not
    listed. ``xlim``/``ylim``: ``(lo, hi)``, either may be None."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    width, height = int(width), int(height)
    if width < 16 or height < 16:
        raise ValueError(f"plot size must be at least 16x16 px, got {width}x{height}")
    if legend not in _LEGEND and legend not in (False, None):
        raise ValueError(f"legend must be True, False or one of {list(_LEGEND)[1:]}, got {legend!r}")
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, x, y in _series(series):
        bad = ~np.isfinite(x) | ~np.isfinite(y) | ((y <= 0) if logy else False) | ((x <= 0) if logx else False)
        ax.plot(x, np.where(bad, np.nan, y), marker="o" if markers else None, markersize=3, label=name or None)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    if xlim is not None:
        ax.set_xlim(*xlim)
    if ylim is not None:
        if logy and ylim[0] is not None and ylim[0] <= 0:
            raise ValueError(f"a log axis needs positive limits, got {ylim}")
        ax.set_ylim(*ylim)
    ax.set_title(title or "")
    ax.set_xlabel(xlabel or "")
    ax.set_ylabel(ylabel or "")
    ax.grid(True, alpha=0.3)
    if legend and any(name for name, _, _ in _series(series)):
        ax.legend(loc=_LEGEND[legend])
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def write_plot(path, series, **kw) -> np.ndarray:
    """Render :func:`line_plot` ``(series, **kw)`` and write it to ``path`` as PNG
    (atomic; parent folders created). Returns the image."""
    img = line_plot(series, **kw)
    write_png(path, img)
    return img


def draw_text(image: np.ndarray, x: int, y: int, text: str, color=(0, 0, 0)) -> np.ndarray:
    """Write ``text`` into the ``(H, W, 3)`` uint8 ``image`` in place (Pillow's default
    font), top-left corner at pixel ``(x, y)``; returns the image."""
    from PIL import Image, ImageDraw
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"draw_text needs an (H, W, 3) uint8 image, got {img.dtype} {img.shape}")
    pil = Image.fromarray(img)
    ImageDraw.Draw(pil).text((int(x), int(y)), str(text), fill=tuple(int(c) for c in color))
    image[...] = np.asarray(pil)
    return image
