"""Markers of a vision-based tactile sensor: detection in camera images and procedural grids.

A camera inside a GelSight/DiffTactile-like sensor looks at the elastomer's inner surface,
which carries a grid of dark dot markers.

- :func:`detect_markers` / :func:`marker_rows`: dark-dot centroids in an image, sorted by
  rows then columns (blob labelling with :mod:`scipy.ndimage`).
- :func:`grid_markers`: a regular grid of procedural marker positions in the pad's plane.

Binding markers to the gel mesh and ray casting: :mod:`diffsim.geometry.triangles`;
drawing the marker flow: :mod:`diffsim.tactile.drawing`.

Pixel convention (shared with :mod:`diffsim.tactile.cameras`): ``u`` is the column and ``v`` the
row, in pixels, with the **centre** of the top-left pixel at ``(u, v) = (0, 0)``; the image
therefore covers ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``. Lengths in 3D are in metres.
"""
from __future__ import annotations

import os

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ..io import read_png

__all__ = ["detect_markers", "marker_rows", "grid_markers"]


def _to_gray(image) -> np.ndarray:
    """``(H, W)`` / ``(H, W, C)`` image (or a PNG path) -> ``(H, W)`` float64 gray, 0..255."""
    if isinstance(image, (str, os.PathLike, bytes, bytearray)):
        image = read_png(image)
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] in (1, 2):  # gray, gray + alpha
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] in (3, 4):  # RGB(A): ITU-R 601 luma
        img = img[:, :, :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if img.ndim != 2 or img.shape[0] < 2 or img.shape[1] < 2:
        raise ValueError(f"image must be (H, W) gray or (H, W, C) with C in 1..4 and "
                         f"H, W >= 2, got shape {np.shape(image)}")
    if not (np.issubdtype(img.dtype, np.number) and not np.iscomplexobj(img)):
        raise ValueError(f"image must hold real numbers, got dtype {img.dtype}")
    img = img.astype(np.float64)
    if not np.isfinite(img).all():
        raise ValueError("image contains NaN or inf")
    return img


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values``: maximises the between-class variance."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    p = hist / hist.sum()
    centers = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(p)[:-1]  # class 0 = bins 0..k
    m0 = np.cumsum(p * centers)[:-1]
    mt = float((p * centers).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * (1.0 - w0))
    k = int(np.nanargmax(between))
    return float(edges[k + 1])


def detect_markers(image, threshold=None, min_area: float = 6, max_area: float = 400,
                   max_elongation: float = 2.2, min_fill: float = 0.7,
                   outlier_ratio: float | None = 2.0) -> np.ndarray:
    """Centroids of dark dot markers on a lighter background.

    Parameters
    ----------
    image
        ``(H, W)`` gray or ``(H, W, C)`` gray/RGB(A) image (any real dtype, 0..255 scale
        for uint8), or a PNG path (or PNG bytes), decoded with :func:`read_png`.
    threshold
        Darkness threshold in gray levels: a pixel is "marker" when it is darker than its
        local background by more than this. ``None`` picks it automatically: Otsu's method
        on the darkness image, lowered to half the median peak darkness of the accepted
        blobs where Otsu lands higher (strong dark features can push it into the markers'
        cores).
    min_area, max_area
        Accepted blob areas in pixels (drops specks, large dark regions such as the
        border or vignette). ``max_area`` also sets the background window (about twice
        the largest marker diameter).
    max_elongation, min_fill
        Shape tests: ``sqrt`` of the ratio of the blob's principal second moments (1 for a
        disc) and area / area of the moment-equivalent ellipse (1 for a filled ellipse,
        lower for rings and ragged smudges).
    outlier_ratio
        Grid consistency, needs >= 3 blobs: blobs closer than ``0.6 x`` the median
        nearest-neighbour distance ``d`` are fragments of one marker and merged; blobs
        with fewer than two neighbours within ``outlier_ratio x d`` are dropped as stray
        dirt (every marker of a 2D grid has at least two). ``None`` skips both.

    Returns
    -------
    ``(M, 2)`` float64 ``(u, v)`` centroids in pixels (``u`` column, ``v`` row, pixel
    centres at integers), weighted by the darkness above the threshold, sorted by rows
    then columns (see :func:`marker_rows`).

    Method: gray -> local background by a grey closing (a max then a min filter wider than
    a marker, so it follows vignetting and lighting gradients) -> darkness = background -
    gray -> threshold -> :func:`scipy.ndimage.label` -> area and shape filters.
    """
    gray = _to_gray(image)
    if not (0 < min_area <= max_area):
        raise ValueError(f"need 0 < min_area <= max_area (pixels), got {min_area}, {max_area}")
    if max_elongation < 1 or not (0 <= min_fill <= 1):
        raise ValueError(f"need max_elongation >= 1 and 0 <= min_fill <= 1, got "
                         f"{max_elongation}, {min_fill}")
    if outlier_ratio is not None and outlier_ratio <= 0:
        raise ValueError(f"outlier_ratio must be positive or None, got {outlier_ratio}")
    window = 2 * int(np.ceil(2.0 * np.sqrt(max_area / np.pi))) + 1
    background = ndimage.minimum_filter(ndimage.maximum_filter(gray, window), window)
    dark = background - gray
    if threshold is None:
        thr = _otsu(dark)
        labels, ids, peak = _blobs(dark, thr, min_area, max_area, max_elongation, min_fill)
        # never above half the typical marker depth (see the docstring)
        if len(ids) and 0.5 * np.median(peak) < thr:
            thr = 0.5 * float(np.median(peak))
            labels, ids, peak = _blobs(dark, thr, min_area, max_area, max_elongation, min_fill)
    else:
        thr = float(threshold)
        labels, ids, peak = _blobs(dark, thr, min_area, max_area, max_elongation, min_fill)
    if len(ids) == 0:
        return np.zeros((0, 2))
    vv, uu = np.indices(gray.shape, dtype=np.float64)
    # darkness above the threshold: weights fade to zero at the blob's edge, so pixels
    # cut by the threshold on one side only bias the centroid little
    weight = np.where(labels > 0, dark - thr, 0.0)
    mass = ndimage.sum_labels(weight, labels, ids)
    pts = np.stack([ndimage.sum_labels(weight * uu, labels, ids) / mass,
                    ndimage.sum_labels(weight * vv, labels, ids) / mass], axis=1)
    if outlier_ratio is not None and len(pts) >= 3:
        pts = _grid_cleanup(pts, mass, outlier_ratio)
    order = np.concatenate(marker_rows(pts)) if len(pts) else np.zeros(0, dtype=int)
    return pts[order]


def _blobs(dark, thr, min_area, max_area, max_elongation, min_fill):
    """Label ``dark > thr``; return ``(labels, ids of blobs passing the area and shape
    filters, their peak darkness)``."""
    labels, n = ndimage.label(dark > thr)
    ids = np.arange(1, n + 1)
    if n == 0:
        return labels, ids, np.zeros(0)
    area = ndimage.sum_labels(np.ones_like(dark), labels, ids)
    vv, uu = np.indices(dark.shape, dtype=np.float64)
    mu, mv = ndimage.mean(uu, labels, ids), ndimage.mean(vv, labels, ids)
    # second moments, plus 1/12 per axis: a pixel is a unit square, not a point
    cuu = ndimage.mean(uu * uu, labels, ids) - mu ** 2 + 1 / 12
    cvv = ndimage.mean(vv * vv, labels, ids) - mv ** 2 + 1 / 12
    cuv = ndimage.mean(uu * vv, labels, ids) - mu * mv
    half_tr = 0.5 * (cuu + cvv)
    det = cuu * cvv - cuv ** 2
    root = np.sqrt(np.maximum(half_tr ** 2 - det, 0.0))
    elongation = np.sqrt((half_tr + root) / (half_tr - root))
    fill = area / (4 * np.pi * np.sqrt(det))  # 1 for a filled ellipse
    keep = ((area >= min_area) & (area <= max_area) & (elongation <= max_elongation)
            & (fill >= min_fill))
    return labels, ids[keep], ndimage.maximum(dark, labels, ids[keep])


def _grid_cleanup(pts: np.ndarray, mass: np.ndarray, outlier_ratio: float) -> np.ndarray:
    """Merge fragments of one marker and drop isolated blobs (see :func:`detect_markers`)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pitch = np.median(cKDTree(pts).query(pts, k=2)[0][:, 1])
    pairs = cKDTree(pts).query_pairs(0.6 * pitch, output_type="ndarray")
    if len(pairs):
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                           shape=(len(pts), len(pts)))
        _, group = connected_components(graph, directed=False)
        total = np.bincount(group, weights=mass)
        pts = np.stack([np.bincount(group, weights=mass * pts[:, k]) / total
                        for k in range(2)], axis=1)
    if len(pts) >= 3:
        dist = cKDTree(pts).query(pts, k=3)[0]
        pts = pts[dist[:, 2] <= outlier_ratio * np.median(dist[:, 1])]
    return pts


def marker_rows(points, max_slope: float = 0.7, max_gap: float = 2.5) -> list:
    """Group marker points ``(M, 2)`` ``(u, v)`` into the rows of a grid.

    Each point is linked to its nearest neighbour to the right whose direction is within
    ``|dv| <= max_slope * du`` and whose distance is at most ``max_gap`` times the median
    nearest-neighbour distance (so a row survives a missing marker); when several points
    link to the same one, the closest link wins. The chains of links are the rows, so the
    grid may be tilted or gently curved (fisheye images). Returns a list of index arrays,
    each ordered left to right (increasing ``u``), the rows ordered top to bottom by their
    median ``v``. Points without neighbours form rows of their own.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
        raise ValueError(f"points must be a finite (M, 2) array of (u, v), got shape {pts.shape}")
    if max_slope <= 0 or max_gap <= 0:
        raise ValueError(f"max_slope and max_gap must be positive, got {max_slope}, {max_gap}")
    m = len(pts)
    if m < 2:
        return [np.arange(m)] if m else []
    tree = cKDTree(pts)
    pitch = np.median(tree.query(pts, k=2)[0][:, 1])
    right = np.full(m, -1)
    link_len = np.full(m, np.inf)
    for i, near in enumerate(tree.query_ball_point(pts, max_gap * pitch)):
        near = np.asarray(near, dtype=int)
        d = pts[near] - pts[i]
        ok = (d[:, 0] > 0) & (np.abs(d[:, 1]) <= max_slope * d[:, 0])
        if ok.any():
            dist = np.hypot(d[ok, 0], d[ok, 1])
            right[i], link_len[i] = near[ok][np.argmin(dist)], dist.min()
    # one incoming link per point: keep the shortest
    for i in np.argsort(-link_len):
        j = right[i]
        if j >= 0 and np.sum(right == j) > 1:
            right[i] = -1
    has_left = np.zeros(m, dtype=bool)
    has_left[right[right >= 0]] = True
    rows = []
    for start in np.nonzero(~has_left)[0]:
        chain = [start]
        while right[chain[-1]] >= 0:
            chain.append(right[chain[-1]])
        rows.append(np.array(chain, dtype=int))
    rows.sort(key=lambda r: (np.median(pts[r, 1]), pts[r[0], 0]))
    return rows


def grid_markers(rows: int, cols: int, lo, hi) -> np.ndarray:
    """A regular ``rows x cols`` grid of 2D points filling the rectangle ``[lo, hi]``.

    ``lo``, ``hi``: ``(2,)`` opposite corners (e.g. metres in the pad's plane), ``lo < hi``.
    Columns run along the first coordinate and rows along the second; the first and last
    columns/rows lie on the rectangle's edges (a single row or column is centred).
    Returns ``(rows * cols, 2)`` float64, row-major: point ``i * cols + j`` is row ``i``,
    column ``j``.
    """
    for name, n in (("rows", rows), ("cols", cols)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{name} must be a positive integer, got {n!r}")
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    if lo.shape != (2,) or hi.shape != (2,) or not (np.isfinite(lo).all()
                                                    and np.isfinite(hi).all()):
        raise ValueError(f"lo and hi must be finite (2,) corners, got {lo!r} and {hi!r}")
    if not (lo < hi).all():
        raise ValueError(f"need lo < hi in both coordinates, got lo={lo}, hi={hi}")

    def axis(n, a, b):
        return np.array([0.5 * (a + b)]) if n == 1 else np.linspace(a, b, n)

    x, y = axis(cols, lo[0], hi[0]), axis(rows, lo[1], hi[1])
    yy, xx = np.meshgrid(y, x, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)
