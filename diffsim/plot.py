"""Dependency-free line plots (loss curves, diagnostics) as numpy RGB images.

- A built-in 5x7 bitmap font (printable ASCII plus a few symbols such as ``μ ° × ± ²``):
  :func:`draw_text` draws into an ``(H, W, 3)`` uint8 image (clipped at the borders,
  optionally rotated for vertical labels) and :func:`text_size` measures a string.
- :func:`line_plot` renders one or more series with nice 1/2/5 x 10^k ticks (decades on
  log axes), a light grid, axis labels, a title and a legend; :func:`write_plot` writes
  the result as PNG through :func:`diffsim.render.write_png`.

Text metrics (scale 1): every glyph sits in a 5 x 9 cell (7 rows above the baseline, 2
rows of descender), characters advance by 6 px and lines by 11 px. ``text_size`` returns
the tight box of that cell grid, so it is independent of which letters a string contains.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from .render import write_png

__all__ = ["draw_text", "text_size", "line_plot", "write_plot", "PALETTE"]

# --------------------------------------------------------------------------- font

GLYPH_W, GLYPH_H, CAP_H = 5, 9, 7   # cell width, cell height (with descender), cap height
ADVANCE, LINE_GAP = GLYPH_W + 1, 2  # horizontal advance; extra rows between lines

# Each glyph: rows of 5 pixels ('#' on), top to bottom, separated by spaces. 7 rows for
# glyphs that stay above the baseline, 9 rows for those with a descender (g j p q y , ; _).
_GLYPH_SRC = {
    " ": "..... ..... ..... ..... ..... ..... .....",
    "!": "..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..",
    '"': ".#.#. .#.#. .#.#. ..... ..... ..... .....",
    "#": ".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.",
    "$": "..#.. .#### #.#.. .###. ..#.# ####. ..#..",
    "%": "##... ##..# ...#. ..#.. .#... #..## ...##",
    "&": ".##.. #..#. #.#.. .#... #.#.# #..#. .##.#",
    "'": "..#.. ..#.. ..#.. ..... ..... ..... .....",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "*": "..... ..#.. #.#.# .###. #.#.# ..#.. .....",
    "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    ",": "..... ..... ..... ..... ..... .##.. .##.. ..#.. .#...",
    "-": "..... ..... ..... ##### ..... ..... .....",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    "/": "..... ....# ...#. ..#.. .#... #.... .....",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    ";": "..... .##.. .##.. ..... .##.. .##.. ..#.. .#... .....",
    "<": "...#. ..#.. .#... #.... .#... ..#.. ...#.",
    "=": "..... ..... ##### ..... ##### ..... .....",
    ">": ".#... ..#.. ...#. ....# ...#. ..#.. .#...",
    "?": ".###. #...# ....# ...#. ..#.. ..... ..#..",
    "@": ".###. #...# ....# .##.# #.#.# #.#.# .###.",
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "###.. #..#. #...# #...# #...# #..#. ###..",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "[": ".###. .#... .#... .#... .#... .#... .###.",
    "\\": "..... #.... .#... ..#.. ...#. ....# .....",
    "]": ".###. ...#. ...#. ...#. ...#. ...#. .###.",
    "^": "..#.. .#.#. #...# ..... ..... ..... .....",
    "_": "..... ..... ..... ..... ..... ..... ..... ##### .....",
    "`": ".#... ..#.. ...#. ..... ..... ..... .....",
    "a": "..... ..... .###. ....# .#### #...# .####",
    "b": "#.... #.... #.##. ##..# #...# #...# ####.",
    "c": "..... ..... .###. #.... #.... #...# .###.",
    "d": "....# ....# .##.# #..## #...# #...# .####",
    "e": "..... ..... .###. #...# ##### #.... .###.",
    "f": "..##. .#..# .#... ###.. .#... .#... .#...",
    "g": "..... ..... .#### #...# #...# #...# .#### ....# .###.",
    "h": "#.... #.... #.##. ##..# #...# #...# #...#",
    "i": "..#.. ..... .##.. ..#.. ..#.. ..#.. .###.",
    "j": "...#. ..... ..##. ...#. ...#. ...#. ...#. #..#. .##..",
    "k": "#.... #.... #..#. #.#.. ##... #.#.. #..#.",
    "l": ".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "m": "..... ..... ##.#. #.#.# #.#.# #.#.# #.#.#",
    "n": "..... ..... #.##. ##..# #...# #...# #...#",
    "o": "..... ..... .###. #...# #...# #...# .###.",
    "p": "..... ..... ####. #...# #...# #...# ####. #.... #....",
    "q": "..... ..... .#### #...# #...# #...# .#### ....# ....#",
    "r": "..... ..... #.##. ##..# #.... #.... #....",
    "s": "..... ..... .###. #.... .###. ....# ####.",
    "t": ".#... .#... ###.. .#... .#... .#..# ..##.",
    "u": "..... ..... #...# #...# #...# #..## .##.#",
    "v": "..... ..... #...# #...# #...# .#.#. ..#..",
    "w": "..... ..... #...# #...# #.#.# #.#.# .#.#.",
    "x": "..... ..... #...# .#.#. ..#.. .#.#. #...#",
    "y": "..... ..... #...# #...# #...# #...# .#### ....# .###.",
    "z": "..... ..... ##### ...#. ..#.. .#... #####",
    "{": "...#. ..#.. ..#.. .#... ..#.. ..#.. ...#.",
    "|": "..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "}": ".#... ..#.. ..#.. ...#. ..#.. ..#.. .#...",
    "~": "..... ..... .#... #.#.# ...#. ..... .....",
    # A few non-ASCII symbols that show up in physics labels.
    "\u00b5": "..... ..... #...# #...# #...# #..## ###.# #.... #....",  # micro sign
    "\u00b0": ".##.. #..#. .##.. ..... ..... ..... .....",  # degree
    "\u00d7": "..... #...# .#.#. ..#.. .#.#. #...# .....",  # multiplication
    "\u00b1": "..#.. ..#.. ##### ..#.. ..#.. ..... #####",  # plus-minus
    "\u00b7": "..... ..... ..... .##.. .##.. ..... .....",  # middle dot
    "\u00b2": ".##.. ...#. ..#.. .###. ..... ..... .....",  # superscript two
    "\u00b3": ".##.. ..##. ...#. .##.. ..... ..... .....",  # superscript three
    "\u2212": "..... ..... ..... ##### ..... ..... .....",  # minus sign
}
_GLYPH_SRC["\u03bc"] = _GLYPH_SRC["\u00b5"]  # Greek mu looks the same
_FALLBACK_SRC = "##### #...# #...# #...# #...# #...# #####"  # unknown character: a box


def _parse_glyph(src: str) -> np.ndarray:
    rows = src.split()
    if len(rows) not in (CAP_H, GLYPH_H) or any(len(r) != GLYPH_W for r in rows):
        raise ValueError(f"malformed glyph {src!r}")
    g = np.zeros((GLYPH_H, GLYPH_W), dtype=bool)
    g[:len(rows)] = [[c == "#" for c in r] for r in rows]
    return g


_GLYPHS = {ch: _parse_glyph(src) for ch, src in _GLYPH_SRC.items()}
_FALLBACK = _parse_glyph(_FALLBACK_SRC)


def _glyph(ch: str) -> np.ndarray:
    if ch == "\t":
        ch = " "
    return _GLYPHS.get(ch, _FALLBACK)


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    """``(width, height)`` in px of ``text`` drawn with :func:`draw_text` at ``scale``.

    The box covers the full character cells (cap height plus descender) of every line, so
    it does not depend on which letters are used. Lines are separated by ``"\\n"``. Empty
    text has size ``(0, 0)``.
    """
    s = _check_scale(scale)
    text = str(text)
    if text == "":
        return 0, 0
    lines = text.split("\n")
    n = max(len(line) for line in lines)
    w = n * ADVANCE - 1 if n else 0
    h = len(lines) * (GLYPH_H + LINE_GAP) - LINE_GAP
    return w * s, h * s


def _check_scale(scale) -> int:
    s = int(scale)
    if s != scale or s < 1:
        raise ValueError(f"text scale must be a positive integer, got {scale!r}")
    return s


def _text_mask(text: str, scale: int = 1) -> np.ndarray:
    """Boolean ``(h, w)`` mask of the rendered text (the :func:`text_size` box)."""
    s = _check_scale(scale)
    text = str(text)
    w, h = text_size(text, 1)
    mask = np.zeros((h, w), dtype=bool)
    for li, line in enumerate(text.split("\n")):
        y = li * (GLYPH_H + LINE_GAP)
        for ci, ch in enumerate(line):
            x = ci * ADVANCE
            mask[y:y + GLYPH_H, x:x + GLYPH_W] = _glyph(ch)
    if s > 1:
        mask = mask.repeat(s, axis=0).repeat(s, axis=1)
    return mask


def _as_rgb(color) -> np.ndarray:
    c = np.asarray(color, dtype=np.float64).reshape(-1)
    if c.size == 1:
        c = np.repeat(c, 3)
    if c.size != 3 or not np.all(np.isfinite(c)):
        raise ValueError(f"color must be an RGB triple (0-255), got {color!r}")
    return np.clip(np.round(c), 0, 255).astype(np.uint8)


def _paint_mask(image: np.ndarray, x: int, y: int, mask: np.ndarray, color) -> None:
    """Set ``image[y + i, x + j] = color`` where ``mask[i, j]``, clipped to the image."""
    H, W = image.shape[:2]
    h, w = mask.shape
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, W), min(y + h, H)
    if x0 >= x1 or y0 >= y1:
        return
    sub = mask[y0 - y:y1 - y, x0 - x:x1 - x]
    image[y0:y1, x0:x1][sub] = _as_rgb(color)


def draw_text(image: np.ndarray, x: int, y: int, text: str, color=(0, 0, 0), scale: int = 1,
              rotate: bool = False) -> np.ndarray:
    """Draw ``text`` into ``image`` (``(H, W, 3)`` uint8, modified in place) and return it.

    Args:
        image: target image.
        x, y: top-left corner of the text box (px; may be negative or outside: the text is
            clipped at the image borders).
        text: string; ``"\\n"`` starts a new line. Characters without a glyph are drawn as
            a hollow box.
        color: RGB triple, 0-255.
        scale: integer magnification (each font pixel becomes ``scale x scale`` px).
        rotate: draw the text rotated 90 degrees counter-clockwise (reading bottom to top,
            for vertical axis labels); the box is then ``text_size`` transposed.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"draw_text needs an (H, W, 3) uint8 image, got {img.dtype} {img.shape}")
    mask = _text_mask(text, scale)
    if rotate:
        mask = np.rot90(mask)
    if mask.size:
        _paint_mask(image, int(round(x)), int(round(y)), mask, color)
    return image


# --------------------------------------------------------------------------- ticks

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
_BG = (255, 255, 255)
_AXIS = (0, 0, 0)
_GRID = (224, 224, 224)
_TEXT = (0, 0, 0)
_LEGEND_EDGE = (170, 170, 170)
_EPS = 1e-9
# Values beyond these magnitudes are treated like inf (skipped) so limits and ticks stay finite.
_MAX_ABS = 1e150
_LOG_RANGE = (1e-250, 1e250)


def _strip_zeros(s: str) -> str:
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def _fmt_sci(v: float, digits: int) -> str:
    """``v`` as ``m.mmeE`` with ``digits`` mantissa decimals, trailing zeros removed."""
    if v == 0:
        return "0"
    e = int(math.floor(math.log10(abs(v)) + _EPS))
    m = v / 10.0 ** e
    if round(abs(m), digits) >= 10:  # 9.99 rounding up
        e += 1
        m = v / 10.0 ** e
    return f"{_strip_zeros(f'{m:.{max(digits, 0)}f}')}e{e}"


def _fmt_value(v: float) -> str:
    """Compact label for one value (3 significant digits at most)."""
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    e = math.floor(math.log10(abs(v)) + _EPS)
    if e < -3 or e >= 5:
        return _fmt_sci(v, 2)
    return _strip_zeros(f"{v:.{max(0, 2 - e)}f}")


def _linear_labels(ticks: np.ndarray, step: float) -> list[str]:
    ticks = np.where(np.abs(ticks) < step * 1e-6, 0.0, ticks)  # no "-0" or 1e-17
    decimals = max(0, -int(math.floor(math.log10(step) + _EPS)))
    big = float(np.max(np.abs(ticks))) if len(ticks) else 0.0
    if big >= 1e6 or decimals > 4:
        e_step = int(math.floor(math.log10(step) + _EPS))
        out = []
        for v in ticks:
            if v == 0:
                out.append("0")
                continue
            e = int(math.floor(math.log10(abs(v)) + _EPS))
            out.append(_fmt_sci(float(v), max(0, e - e_step)))
        return out
    return [f"{v:.{decimals}f}" for v in ticks]


def _linear_tick_options(lo: float, hi: float):
    """Candidate ``(step, first_index, count)`` for 1/2/5 x 10^k steps in ``[lo, hi]``."""
    span = hi - lo
    e0 = int(math.floor(math.log10(span)))
    for e in range(e0 - 2, e0 + 2):
        for m in (1, 2, 5):
            step = m * 10.0 ** e
            i0 = math.ceil(lo / step - _EPS)
            i1 = math.floor(hi / step + _EPS)
            yield step, i0, i1 - i0 + 1


def _linear_ticks(lo: float, hi: float, max_ticks: int = 7, min_ticks: int = 4,
                  expand: bool = False):
    """Nice ticks for ``[lo, hi]`` (``lo < hi``): ``(ticks, step, lo, hi)``.

    Picks a 1/2/5 x 10^k step with ``min_ticks..max_ticks`` ticks inside the range (count
    nearest 5.5, ties to the larger step). If none exists and ``expand``, the range is
    widened outwards to multiples of a step that gives such a count; otherwise the
    densest option with at most ``max_ticks`` ticks is used.
    """
    min_ticks = min(min_ticks, max_ticks)
    opts = list(_linear_tick_options(lo, hi))
    good = [o for o in opts if min_ticks <= o[2] <= max_ticks]
    if good:
        step, i0, n = min(good, key=lambda o: (abs(o[2] - 5.5), -o[0]))
    elif expand:
        best = None
        for step, _, _ in opts:
            j0 = math.floor(lo / step + _EPS)
            j1 = math.ceil(hi / step - _EPS)
            n = j1 - j0 + 1
            if min_ticks <= n <= max_ticks:
                key = (abs(n - 5.5), -step)
                if best is None or key < best[0]:
                    best = (key, step, j0, n)
        if best is None:  # cannot happen for sane ranges; fall through to the densest
            return _linear_ticks(lo, hi, max_ticks, min_ticks, expand=False)
        _, step, i0, n = best
        lo, hi = i0 * step, (i0 + n - 1) * step
    else:
        fit = [o for o in opts if 1 <= o[2] <= max_ticks]
        if not fit:
            return np.array([]), hi - lo, lo, hi
        step, i0, n = max(fit, key=lambda o: (o[2], -o[0]))
    ticks = (np.arange(n) + i0) * step
    return ticks, step, lo, hi


def _in_range(v: np.ndarray, log: bool) -> np.ndarray:
    """Finite values within the plottable range (positive on a log axis)."""
    with np.errstate(invalid="ignore"):
        if log:
            return np.isfinite(v) & (v >= _LOG_RANGE[0]) & (v <= _LOG_RANGE[1])
        return np.isfinite(v) & (np.abs(v) <= _MAX_ABS)


class _Axis:
    """One axis: limits in data units, transform (log10 or identity), ticks and labels."""

    def __init__(self, values: np.ndarray, log: bool, lim, name: str):
        self.log = bool(log)
        lo_user, hi_user = (None, None) if lim is None else tuple(lim)
        for v in (lo_user, hi_user):
            if v is not None and not math.isfinite(float(v)):
                raise ValueError(f"{name} limits must be finite, got {lim!r}")
            if v is not None and self.log and float(v) <= 0:
                raise ValueError(f"{name} limits must be positive on a log axis, got {lim!r}")
            if v is not None and not _in_range(np.array([float(v)]), self.log)[0]:
                raise ValueError(f"{name} limits out of the plottable range, got {lim!r}")
        t = self.fwd(values) if len(values) else values
        if lo_user is not None and hi_user is not None and float(lo_user) == float(hi_user):
            lo_user = hi_user = None  # degenerate: treat as the single value below
            t = self.fwd(np.array([float(lim[0])]))
        inverted = (lo_user is not None and hi_user is not None
                    and float(lo_user) > float(hi_user))
        if inverted:
            lo_user, hi_user = hi_user, lo_user
        tlo = float(self.fwd(np.array([float(lo_user)]))[0]) if lo_user is not None else None
        thi = float(self.fwd(np.array([float(hi_user)]))[0]) if hi_user is not None else None
        # Limits from the data (in transformed units), then a 5 % margin on auto sides.
        sel = t
        if tlo is not None:
            sel = sel[sel >= tlo]
        if thi is not None:
            sel = sel[sel <= thi]
        if len(sel):
            dlo, dhi = float(sel.min()), float(sel.max())
        elif tlo is not None or thi is not None:
            ref = tlo if tlo is not None else thi
            dlo = dhi = ref
        else:
            dlo, dhi = (0.0, 1.0)
        if tlo is not None:
            dlo = tlo
        if thi is not None:
            dhi = thi
        if dhi <= dlo:
            half = 0.5 if self.log else (abs(dlo) * 0.1 if dlo != 0 else 1.0)
            if tlo is None and thi is None:
                dlo, dhi = dlo - half, dhi + half
            elif tlo is None:
                dlo = dhi - 2 * half
            else:
                dhi = dlo + 2 * half
        pad = 0.05 * (dhi - dlo)
        self.auto_lo, self.auto_hi = tlo is None, thi is None
        self.tlo = dlo - pad if self.auto_lo else dlo
        self.thi = dhi + pad if self.auto_hi else dhi
        self.inverted = inverted
        self.set_ticks(7, first=True)

    # transform ---------------------------------------------------------------
    def fwd(self, v):
        v = np.asarray(v, dtype=np.float64)
        if self.log:
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.log10(v)
        return v

    def frac(self, v):
        """Data values -> fraction along the axis (0 at the low end, 1 at the high end)."""
        with np.errstate(over="ignore", invalid="ignore"):
            f = (self.fwd(v) - self.tlo) / (self.thi - self.tlo)
        return 1.0 - f if self.inverted else f

    # ticks -----------------------------------------------------------------
    def set_ticks(self, max_ticks: int, first: bool = False):
        if self.log:
            self._log_ticks(max_ticks)
        else:
            expand = first and (self.auto_lo and self.auto_hi)
            ticks, step, lo, hi = _linear_ticks(self.tlo, self.thi, max_ticks, 4, expand=expand)
            if expand:
                self.tlo, self.thi = min(lo, self.tlo), max(hi, self.thi)
            self.major = ticks
            self.minor = np.array([])
            self.labels = _linear_labels(ticks, step) if len(ticks) else []

    def _log_ticks(self, max_ticks: int):
        lo, hi = self.tlo, self.thi
        e0, e1 = math.ceil(lo - _EPS), math.floor(hi + _EPS)
        n_dec = e1 - e0 + 1
        if n_dec >= 3 or (n_dec >= 2 and max_ticks < 4):
            stride = 1
            for s in (1, 2, 3, 4, 5, 10, 20, 25, 50, 100):
                stride = s
                if len([e for e in range(e0, e1 + 1) if e % s == 0]) <= max_ticks:
                    break
            exps = [e for e in range(e0, e1 + 1) if e % stride == 0]
            self.major = 10.0 ** np.array(exps, dtype=np.float64)
            if stride == 1:
                minor = [m * 10.0 ** e for e in range(e0 - 1, e1 + 1) for m in range(2, 10)]
            else:
                minor = [10.0 ** e for e in range(e0, e1 + 1) if e % stride]
            minor = np.array(minor, dtype=np.float64)
            tm = np.log10(minor) if len(minor) else minor
            self.minor = minor[(tm >= lo - _EPS) & (tm <= hi + _EPS)]
            sci = any(e < -3 or e > 4 for e in exps)
            self.labels = [f"1e{e}" if sci else _fmt_value(10.0 ** e) for e in exps]
            return
        # Less than ~2 decades: 1-2-5 mantissas, else plain nice values placed on the log scale.
        cands = np.array([m * 10.0 ** e for e in range(e0 - 1, e1 + 1) for m in (1, 2, 5)])
        t = np.log10(cands)
        sel = cands[(t >= lo - _EPS) & (t <= hi + _EPS)]
        if 3 <= len(sel) <= max_ticks:
            self.major = sel
            allm = np.array([m * 10.0 ** e for e in range(e0 - 1, e1 + 1) for m in range(1, 10)])
            ta = np.log10(allm)
            allm = allm[(ta >= lo - _EPS) & (ta <= hi + _EPS)]
            self.minor = np.setdiff1d(allm, sel)
        else:
            vlo, vhi = 10.0 ** lo, 10.0 ** hi
            ticks, step, _, _ = _linear_ticks(vlo, vhi, max_ticks, 3)
            self.major = ticks[ticks > 0]
            self.minor = np.array([])
        self.labels = [_fmt_value(float(v)) for v in self.major]


# --------------------------------------------------------------------------- raster helpers


def _clip_segments(x0, y0, x1, y1, xmin, xmax, ymin, ymax):
    """Liang-Barsky clipping of segments to a rectangle; returns the clipped endpoints.

    Each clipped point is computed from the nearer original endpoint (``t`` from ``p0``,
    ``s = 1 - t`` from ``p1``, both without cancellation), so a segment towards a point
    far outside the axes (zoomed-in limits, a diverging value) still clips precisely.
    """
    with np.errstate(all="ignore"):
        dx, dy = x1 - x0, y1 - y0
        keep = np.isfinite(dx) & np.isfinite(dy)
        t0, s0 = np.zeros_like(x0), np.ones_like(x0)  # entry: t from p0, s = 1 - t from p1
        t1, s1 = np.ones_like(x0), np.zeros_like(x0)  # exit
        # p * t <= q for each edge; q - p is the same inequality measured from p1.
        for p, q, qs in ((-dx, x0 - xmin, xmin - x1), (dx, xmax - x0, x1 - xmax),
                         (-dy, y0 - ymin, ymin - y1), (dy, ymax - y0, y1 - ymax)):
            r, rs = q / p, qs / p  # rs = 1 - r
            keep &= ~((p == 0) & (q < 0))
            enter = (p < 0) & (r > t0)
            leave = (p > 0) & (r < t1)
            t0, s0 = np.where(enter, r, t0), np.where(enter, rs, s0)
            t1, s1 = np.where(leave, r, t1), np.where(leave, rs, s1)
        keep &= t0 <= t1
        x0, y0, x1, y1, dx, dy, t0, s0, t1, s1 = (
            a[keep] for a in (x0, y0, x1, y1, dx, dy, t0, s0, t1, s1))

        def at(t, s):
            near0 = t <= 0.5
            return (np.where(near0, x0 + t * dx, x1 - s * dx),
                    np.where(near0, y0 + t * dy, y1 - s * dy))

        ax, ay = at(t0, s0)
        bx, by = at(t1, s1)
    ok = np.isfinite(ax) & np.isfinite(ay) & np.isfinite(bx) & np.isfinite(by)
    # Clamp away the last rounding error so no sample lands outside the rectangle.
    return (np.clip(ax[ok], xmin, xmax), np.clip(ay[ok], ymin, ymax),
            np.clip(bx[ok], xmin, xmax), np.clip(by[ok], ymin, ymax))


def _sample_segments(x0, y0, x1, y1):
    """Points every <= 1 px along each segment (endpoints included)."""
    n = np.ceil(np.maximum(np.abs(x1 - x0), np.abs(y1 - y0))).astype(np.int64) + 1
    total = int(n.sum())
    if total == 0:
        return np.zeros(0), np.zeros(0)
    seg = np.repeat(np.arange(len(n)), n)
    start = np.cumsum(n) - n
    k = np.arange(total) - start[seg]
    t = k / np.maximum(n[seg] - 1, 1)
    return x0[seg] + t * (x1 - x0)[seg], y0[seg] + t * (y1 - y0)[seg]


def _stamp(img, xs, ys, offsets, box, color):
    """Paint ``offsets`` (K, 2 int: dx, dy) around integer points, inside ``box``."""
    if len(xs) == 0:
        return
    L, T, R, B = box
    px = (xs[:, None] + offsets[None, :, 0]).ravel()
    py = (ys[:, None] + offsets[None, :, 1]).ravel()
    ok = (px >= L) & (px <= R) & (py >= T) & (py <= B)
    img[py[ok], px[ok]] = _as_rgb(color)


def _disk(radius: float) -> np.ndarray:
    r = int(math.ceil(radius))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    sel = dx * dx + dy * dy <= radius * radius + 1e-9
    return np.stack([dx[sel], dy[sel]], axis=1)


def _decimate(px, py, valid, ncols):
    """Drop points that cannot change the drawn polyline (x monotonic, many points/column).

    Per pixel column and run of valid points only the first, last, lowest and highest
    points are kept (M4 decimation), so the rendered line is the same while a million
    noisy points cost ~4 segments per column instead of one per point.
    """
    n = len(px)
    if n <= 4 * max(ncols, 1):
        return px, py
    d = np.diff(px[valid])
    if not (np.all(d >= 0) or np.all(d <= 0)):
        return px, py
    col = np.where(valid, np.floor(np.where(valid, px, 0.0)), np.nan)
    idx = np.nonzero(valid)[0]
    c = col[idx]
    # A new group starts where the column changes or a run of valid points restarts.
    start = np.ones(len(idx), dtype=bool)
    start[1:] = (c[1:] != c[:-1]) | (np.diff(idx) != 1)
    gid = np.cumsum(start) - 1
    order = np.lexsort((py[idx], gid))  # within each group by y
    gstart = np.nonzero(start)[0]
    gend = np.append(gstart[1:], len(idx)) - 1
    sorted_first = np.searchsorted(gid[order], np.arange(len(gstart)), side="left")
    sorted_last = np.searchsorted(gid[order], np.arange(len(gstart)), side="right") - 1
    keep = np.zeros(n, dtype=bool)
    keep[~valid] = True  # NaN separators
    keep[idx[gstart]] = keep[idx[gend]] = True
    keep[idx[order[sorted_first]]] = keep[idx[order[sorted_last]]] = True
    return px[keep], py[keep]


def _draw_series(img, px, py, color, box, thickness, marker_radius):
    """Polyline through pixel coords ``px, py`` (NaN breaks it), clipped to ``box``."""
    L, T, R, B = box
    valid = np.isfinite(px) & np.isfinite(py)
    if not valid.any():
        return
    # Segments between consecutive valid points.
    lx, ly = _decimate(px, py, valid, R - L + 1)
    lvalid = np.isfinite(lx) & np.isfinite(ly)
    seg = lvalid[:-1] & lvalid[1:]
    if seg.any():
        x0, y0, x1, y1 = _clip_segments(lx[:-1][seg], ly[:-1][seg], lx[1:][seg], ly[1:][seg],
                                        L, R, T, B)
        sx, sy = _sample_segments(x0, y0, x1, y1)
        off = np.array([(i, j) for j in range(thickness) for i in range(thickness)])
        shift = (thickness - 1) / 2.0
        _stamp(img, np.floor(sx - shift + 0.5).astype(np.int64),
               np.floor(sy - shift + 0.5).astype(np.int64), off, box, color)
    inside = valid & (px >= L) & (px <= R) & (py >= T) & (py <= B)
    if marker_radius:
        pts = inside
    else:  # isolated points would be invisible without a dot
        prev = np.concatenate([[False], valid[:-1]])
        nxt = np.concatenate([valid[1:], [False]])
        pts = inside & ~prev & ~nxt
        marker_radius = max(1.5, thickness * 0.75)
    if pts.any():
        _stamp(img, np.round(px[pts]).astype(np.int64), np.round(py[pts]).astype(np.int64),
               _disk(marker_radius), box, color)


def _hline(img, y, x0, x1, color):
    H, W = img.shape[:2]
    if 0 <= y < H:
        img[y, max(x0, 0):max(min(x1 + 1, W), 0)] = color


def _vline(img, x, y0, y1, color):
    H, W = img.shape[:2]
    if 0 <= x < W:
        img[max(y0, 0):max(min(y1 + 1, H), 0), x] = color


def _text_at(img, x, y, text, scale, ha="left", va="top", color=_TEXT, rotate=False):
    """Draw text anchored at ``(x, y)``: ``ha`` left/center/right, ``va`` top/center/bottom.

    ``va="center"`` centres the cap height (digits, capitals), not the descender cell.
    """
    w, h = text_size(text, scale)
    if rotate:
        w, h = h, w
    if ha == "center":
        x = x - w / 2.0
    elif ha == "right":
        x = x - w + 1
    if va == "center":
        y = y - (h if rotate else CAP_H * scale) / 2.0
    elif va == "bottom":
        y = y - h + 1
    draw_text(img, int(math.floor(x + 0.5)), int(math.floor(y + 0.5)), text, color, scale,
              rotate=rotate)


# --------------------------------------------------------------------------- plots


def _normalize_series(series) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if series is None:
        return []
    if not isinstance(series, Mapping):
        series = {"": series}  # a bare y array (or (x, y) pair): one unnamed series
    out = []
    for name, data in series.items():
        if (isinstance(data, (tuple, list)) and len(data) == 2
                and all(np.ndim(d) >= 1 for d in data)):
            x = np.asarray(data[0], dtype=np.float64)
            y = np.asarray(data[1], dtype=np.float64)
        else:
            y = np.asarray(data, dtype=np.float64)
            x = None
        for arr, what in ((y, "y"), (x, "x")):
            if arr is not None and arr.ndim > 1 and sum(d > 1 for d in arr.shape) > 1:
                raise ValueError(f"series {name!r}: {what} must be 1-D, got shape {arr.shape}")
        y = y.reshape(-1)
        x = np.arange(len(y), dtype=np.float64) if x is None else x.reshape(-1)
        if len(x) != len(y):
            raise ValueError(f"series {name!r}: x and y lengths differ ({len(x)} vs {len(y)})")
        out.append(("" if name is None else str(name), x, y))
    return out


_LEGEND_LOCS = {True: "upper right", "upper right": "upper right", "upper left": "upper left",
                "lower left": "lower left", "lower right": "lower right"}


def line_plot(series, width: int = 640, height: int = 400, title: str | None = None,
              xlabel: str | None = None, ylabel: str | None = None, logy: bool = False,
              logx: bool = False, xlim=None, ylim=None, markers: bool = False,
              legend=True, font_scale: int | None = None, linewidth: int = 2) -> np.ndarray:
    """Render a line plot as an ``(height, width, 3)`` uint8 RGB image.

    Args:
        series: ``{name: (x, y)}`` or ``{name: y}`` (then ``x = 0..n-1``); a bare ``y``
            array is one unnamed series. Colours follow :data:`PALETTE` in order. NaN/inf
            points (and non-positive ones on a log axis) are skipped and break the line;
            empty or all-invalid series draw empty axes.
        width, height: image size, px.
        title: centred above the axes. xlabel: below the x tick labels. ylabel: rotated
            90 degrees, left of the y tick labels.
        logx, logy: logarithmic axes (ticks at decades, thinned to <= 7; 1-2-5 mantissas
            when the range covers less than two decades).
        xlim, ylim: ``(lo, hi)``; either end may be ``None`` (automatic, from the data with
            a 5 % margin). ``lo > hi`` inverts the axis.
        markers: draw a dot at every data point.
        legend: ``True``/``"upper right"`` (default), ``"upper left"``, ``"lower left"``,
            ``"lower right"``, or ``False``. Unnamed (``""``) series are not listed.
        font_scale: integer text magnification; default 1 below 900 px width, else 2
            (the title uses twice this).
        linewidth: line thickness, px.
    """
    width, height = int(width), int(height)
    if width < 16 or height < 16:
        raise ValueError(f"plot size must be at least 16x16 px, got {width}x{height}")
    if not (legend is None or isinstance(legend, bool)
            or (isinstance(legend, str) and legend in _LEGEND_LOCS)):
        raise ValueError("legend must be True, False, 'upper right', 'upper left', "
                         f"'lower left' or 'lower right', got {legend!r}")
    fs = _check_scale(font_scale) if font_scale is not None else (1 if width < 900 else 2)
    lw = max(1, int(linewidth))
    data = _normalize_series(series)

    # Valid points per series (finite, positive on log axes) -> axis limits.
    valid = []
    for _, x, y in data:
        valid.append(_in_range(x, logx) & _in_range(y, logy))
    allx = np.concatenate([x[ok] for (_, x, _), ok in zip(data, valid)] or [np.zeros(0)])
    ally = np.concatenate([y[ok] for (_, _, y), ok in zip(data, valid)] or [np.zeros(0)])
    # The y range follows the x window (points outside xlim do not stretch the y axis).
    xax = _Axis(allx, logx, xlim, "xlim")
    if xlim is not None and len(allx):
        tx = xax.fwd(allx)
        ally = ally[(tx >= xax.tlo - _EPS) & (tx <= xax.thi + _EPS)]
    yax = _Axis(ally, logy, ylim, "ylim")

    # ---- layout (margins from the label sizes)
    pad = 4 * fs
    tick = 4 * fs
    cell = GLYPH_H * fs
    title_scale = 2 * fs
    if title:
        tw = text_size(title, title_scale)[0]
        if tw > width - 2 * pad:
            title_scale = fs
    ylab_w = max([text_size(s, fs)[0] for s in yax.labels] or [0])
    xlab_last = text_size(xax.labels[-1], fs)[0] if xax.labels else 0
    xlab_first = text_size(xax.labels[0], fs)[0] if xax.labels else 0
    top = 3 * pad + (text_size(title, title_scale)[1] if title else 0)
    top = max(top, 2 * pad)
    left = pad + (cell + pad if ylabel else 0) + ylab_w + pad + tick
    left = max(left, xlab_first // 2 + pad)
    bottom = tick + pad + cell + (2 * pad + cell if xlabel else 0) + pad
    right = max(3 * pad, xlab_last // 2 + pad)
    L, T = left, top
    R = max(width - 1 - right, L + 2)
    B = max(height - 1 - bottom, T + 2)

    def xpix(v):
        return L + xax.frac(v) * (R - L)

    def ypix(v):
        return B - yax.frac(v) * (B - T)

    # ---- thin tick labels that would overlap
    gap = 3 * fs
    for _ in range(6):
        pos = xpix(xax.major)
        widths = np.array([text_size(s, fs)[0] for s in xax.labels], dtype=np.float64)
        if len(pos) < 2 or np.all(np.abs(np.diff(pos)) >= (widths[:-1] + widths[1:]) / 2 + gap):
            break
        xax.set_ticks(max(2, len(pos) - 1))
    for _ in range(6):
        pos = ypix(yax.major)
        if len(pos) < 2 or np.all(np.abs(np.diff(pos)) >= CAP_H * fs + gap):
            break
        yax.set_ticks(max(2, len(pos) - 1))

    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = _BG
    grid = np.asarray(_GRID, dtype=np.uint8)
    axis = np.asarray(_AXIS, dtype=np.uint8)

    # ---- grid
    xt = np.round(xpix(xax.major)).astype(np.int64) if len(xax.major) else np.zeros(0, int)
    yt = np.round(ypix(yax.major)).astype(np.int64) if len(yax.major) else np.zeros(0, int)
    for x in xt:
        if L < x < R:
            _vline(img, int(x), T + 1, B - 1, grid)
    for y in yt:
        if T < y < B:
            _hline(img, int(y), L + 1, R - 1, grid)

    # ---- data
    box = (L + 1, T + 1, R - 1, B - 1)
    for i, ((_, x, y), ok) in enumerate(zip(data, valid)):
        if not ok.any():
            continue
        px = np.where(ok, xpix(np.where(ok, x, 1.0)), np.nan)
        py = np.where(ok, ypix(np.where(ok, y, 1.0)), np.nan)
        _draw_series(img, px, py, PALETTE[i % len(PALETTE)], box, lw,
                     (lw + 1.5) * 0.9 if markers else 0)

    # ---- frame, ticks, tick labels
    _hline(img, T, L, R, axis)
    _hline(img, B, L, R, axis)
    _vline(img, L, T, B, axis)
    _vline(img, R, T, B, axis)
    for x, s in zip(xt, xax.labels):
        if L <= x <= R:
            _vline(img, int(x), B + 1, B + tick, axis)
            _text_at(img, x, B + tick + pad, s, fs, ha="center")
    for y, s in zip(yt, yax.labels):
        if T <= y <= B:
            _hline(img, int(y), L - tick, L - 1, axis)
            _text_at(img, L - tick - pad, y, s, fs, ha="right", va="center")
    for v in xax.minor:
        x = int(round(float(xpix(v))))
        if L <= x <= R:
            _vline(img, x, B + 1, B + tick // 2, axis)
    for v in yax.minor:
        y = int(round(float(ypix(v))))
        if T <= y <= B:
            _hline(img, y, L - tick // 2, L - 1, axis)

    # ---- labels and title
    if xlabel:
        _text_at(img, (L + R) / 2.0, B + tick + pad + cell + 2 * pad, str(xlabel), fs, ha="center")
    if ylabel:
        _text_at(img, pad, (T + B) / 2.0, str(ylabel), fs, ha="left", va="center", rotate=True)
    if title:
        tx = (L + R) / 2.0
        tw = text_size(title, title_scale)[0]
        tx = min(max(tx, tw / 2.0 + pad), width - tw / 2.0 - pad)  # keep it inside the image
        _text_at(img, tx, 2 * pad, str(title), title_scale, ha="center")

    # ---- legend
    entries = [(name, PALETTE[i % len(PALETTE)]) for i, (name, _, _) in enumerate(data) if name]
    loc = _LEGEND_LOCS[legend] if legend not in (False, None) else None
    if entries and loc:
        _draw_legend(img, entries, (L, T, R, B), loc, fs, lw, markers)
    return img


def _draw_legend(img, entries, axes_box, loc, fs, lw, markers):
    L, T, R, B = axes_box
    pad = 5 * fs
    row_h = GLYPH_H * fs + 4 * fs
    swatch = 18 * fs
    name_w = max(text_size(name, fs)[0] for name, _ in entries)
    w = pad + swatch + pad + name_w + pad
    h = pad + row_h * len(entries) - 4 * fs + pad
    margin = 6 * fs
    x0 = R - margin - w if "right" in loc else L + margin
    y0 = T + margin if "upper" in loc else B - margin - h
    x0, y0 = int(max(x0, L + 1)), int(max(y0, T + 1))
    x1, y1 = min(x0 + w, R - 1), min(y0 + h, B - 1)
    img[y0:y1 + 1, x0:x1 + 1] = _BG
    edge = np.asarray(_LEGEND_EDGE, dtype=np.uint8)
    _hline(img, y0, x0, x1, edge)
    _hline(img, y1, x0, x1, edge)
    _vline(img, x0, y0, y1, edge)
    _vline(img, x1, y0, y1, edge)
    inner = (x0 + 1, y0 + 1, x1 - 1, y1 - 1)
    for k, (name, color) in enumerate(entries):
        ty = y0 + pad + k * row_h
        cy = ty + (CAP_H * fs) // 2
        sx0, sx1 = x0 + pad, x0 + pad + swatch
        _draw_series(img, np.array([sx0, sx1], dtype=np.float64), np.array([cy, cy], float),
                     color, inner, lw, 0)
        if markers:
            _stamp(img, np.array([(sx0 + sx1) // 2]), np.array([cy]), _disk((lw + 1.5) * 0.9),
                   inner, color)
        draw_text(img, sx1 + pad, ty, name, _TEXT, fs)


def write_plot(path, series, **kw) -> np.ndarray:
    """Render :func:`line_plot` ``(series, **kw)`` and write it to ``path`` as PNG (atomic).

    Returns the image.
    """
    img = line_plot(series, **kw)
    write_png(path, img)
    return img
