"""Marker displacement ("flow") pictures for previews and frames."""
from __future__ import annotations

import numpy as np


def _draw_segments(img, p0, p1, color):
    """Draw 1-pixel segments ``p0 -> p1`` (``(K, 2)`` ``(u, v)`` pixels) into ``img``.

    Each segment is sampled at most half a pixel apart and the samples are rounded to the
    nearest pixel centre; samples outside the image are clipped away.
    """
    if len(p0) == 0:
        return
    n = np.ceil(2.0 * np.abs(p1 - p0).max(axis=1)).astype(np.int64) + 1
    seg = np.repeat(np.arange(len(p0)), n)
    frac = (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)) / np.maximum(
        np.repeat(n - 1, n), 1)
    pts = p0[seg] + frac[:, None] * (p1 - p0)[seg]
    u, v = np.rint(pts[:, 0]).astype(np.int64), np.rint(pts[:, 1]).astype(np.int64)
    ok = (u >= 0) & (u < img.shape[1]) & (v >= 0) & (v < img.shape[0])
    img[v[ok], u[ok]] = color


def marker_flow_image(ref_px, cur_px, width: int, height: int, scale: float = 1.0,
                      background=None, color=(220, 30, 30), dot_color=(40, 40, 40),
                      radius: float = 2.0, head: float = 4.0) -> np.ndarray:
    """Marker displacement picture: a dot per marker and an arrow for its motion.

    ``ref_px``, ``cur_px``: ``(M, 2)`` ``(u, v)`` reference and current marker pixels.
    Each marker is drawn as a disc of ``radius`` px in ``dot_color`` at its reference
    position and an arrow in ``color`` from ``ref`` to ``ref + scale * (cur - ref)``, with
    a head of up to ``head`` px (no arrow below half a pixel, no head below one pixel).
    ``background``: an ``(H, W)`` gray or ``(H, W, 3|4)`` uint8 image of the same size
    (copied), or ``None`` for a light gray canvas. Markers with NaN coordinates or a
    reference position outside the image are skipped; arrow pixels outside the image are
    clipped. Returns ``(height, width, 3)`` uint8. numpy rasterisation only.
    """
    for name, n in (("width", width), ("height", height)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{name} must be a positive integer (pixels), got {n!r}")
    ref = np.asarray(ref_px, dtype=np.float64)
    cur = np.asarray(cur_px, dtype=np.float64)
    if ref.ndim != 2 or ref.shape[1] != 2 or cur.shape != ref.shape:
        raise ValueError(f"ref_px and cur_px must both be (M, 2) (u, v) arrays, got "
                         f"{ref.shape} and {cur.shape}")
    if not np.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if background is None:
        img = np.full((height, width, 3), 240, dtype=np.uint8)
    else:
        bg = np.asarray(background)
        if bg.dtype != np.uint8:
            raise ValueError(f"background must be uint8, got {bg.dtype}")
        if bg.ndim == 3 and bg.shape[2] in (1, 3, 4):
            bg = bg[:, :, :3] if bg.shape[2] != 1 else bg[:, :, 0]
        if bg.ndim == 2:
            bg = np.repeat(bg[:, :, None], 3, axis=2)
        if bg.shape != (height, width, 3):
            raise ValueError(f"background must be ({height}, {width}) gray or "
                             f"({height}, {width}, 3|4) RGB(A), got {np.shape(background)}")
        img = bg.copy()
    ok = (np.isfinite(ref).all(axis=1) & np.isfinite(cur).all(axis=1)
          & (ref[:, 0] > -0.5) & (ref[:, 0] < width - 0.5)
          & (ref[:, 1] > -0.5) & (ref[:, 1] < height - 0.5))
    ref, tip = ref[ok], ref[ok] + scale * (cur[ok] - ref[ok])
    r = int(np.ceil(radius))
    dv, du = np.mgrid[-r:r + 1, -r:r + 1]
    disc = du ** 2 + dv ** 2 <= radius ** 2 + 1e-9
    centre = np.rint(ref).astype(np.int64)
    u = (centre[:, 0, None] + du[disc]).ravel()
    v = (centre[:, 1, None] + dv[disc]).ravel()
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    img[v[inside], u[inside]] = dot_color
    vec = tip - ref
    length = np.hypot(vec[:, 0], vec[:, 1])
    moved = length >= 0.5  # shorter arrows would only mark the dot's centre pixel
    _draw_segments(img, ref[moved], tip[moved], color)
    big = length >= 1.0
    if big.any() and head > 0:
        back = -vec[big] / length[big, None] * np.minimum(head, 0.4 * length[big])[:, None]
        for ang in (0.45, -0.45):  # head barbs at about +-26 degrees
            c, s = np.cos(ang), np.sin(ang)
            barb = np.stack([c * back[:, 0] - s * back[:, 1],
                             s * back[:, 0] + c * back[:, 1]], axis=1)
            _draw_segments(img, tip[big], tip[big] + barb, color)
    return img
