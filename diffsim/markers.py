"""Markers of a vision-based tactile sensor: image I/O, detection, binding to the gel mesh.

A camera inside a GelSight/DiffTactile-like sensor looks at the elastomer's inner surface,
which carries a grid of dark dot markers. This module holds the numpy-only pieces around
those markers (no Taichi, no torch, no Pillow):

- :func:`read_png`: PNG decoding (Pillow) to uint8 arrays.
- :func:`detect_markers` / :func:`marker_rows`: dark-dot centroids in an image, sorted by
  rows then columns.
- :func:`grid_markers`: a regular grid of procedural marker positions in the pad's plane.
- :func:`bind_to_surface`: closest point on a triangle mesh (face + barycentric coordinates),
  to attach markers to the gel surface once at setup time.
- :func:`ray_mesh_intersect`: first hit of rays on a triangle mesh (Moller-Trumbore).
- :func:`marker_flow_image`: a marker displacement ("flow") picture for previews.

Pixel convention (shared with :mod:`diffsim.cameras`): ``u`` is the column and ``v`` the
row, in pixels, with the **centre** of the top-left pixel at ``(u, v) = (0, 0)``; the image
therefore covers ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``. Lengths in 3D are in metres.
"""
from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = ["read_png", "detect_markers", "marker_rows", "grid_markers", "bind_to_surface",
           "ray_mesh_intersect", "marker_flow_image"]

# --------------------------------------------------------------------------- PNG decoding


def read_png(path) -> np.ndarray:
    """Decode a PNG file into an ``(H, W, C)`` uint8 array (with Pillow).

    ``path`` is a file path or the PNG bytes themselves. ``C`` is 1 (gray), 2 (gray +
    alpha), 3 (RGB) or 4 (RGBA): 16-bit samples are reduced to 8 bits (high byte), 1/2/4-bit
    gray is scaled to 0..255, palette images become RGB (RGBA when the palette has alpha).
    Raises ``ValueError`` for anything that is not a readable PNG.
    """
    from PIL import Image, UnidentifiedImageError
    if isinstance(path, (bytes, bytearray)):
        src, name = io.BytesIO(bytes(path)), "<bytes>"
    else:
        src = name = os.fspath(path)
        if not os.path.exists(name):
            raise FileNotFoundError(f"{name}: no such image file")
    try:
        with Image.open(src) as im:
            if im.format != "PNG":
                raise ValueError(f"{name}: not a PNG file ({im.format}); expected a .png image")
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode == "1":
                im = im.convert("L")
            if im.mode.startswith("I"):   # 16-bit gray: the high byte
                img = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
            elif im.mode in ("L", "LA", "RGB", "RGBA"):
                img = np.asarray(im, dtype=np.uint8)
            else:
                raise ValueError(f"{name}: unsupported PNG pixel mode {im.mode}")
    except (UnidentifiedImageError, SyntaxError, OSError, EOFError, struct.error, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{name}: not a PNG file or a corrupted one ({exc})") from None
    return np.ascontiguousarray(img if img.ndim == 3 else img[:, :, None], dtype=np.uint8)


# --------------------------------------------------------------------------- detection


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


# --------------------------------------------------------------------------- 3D markers


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


def _check_mesh(vertices, faces):
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0 or not np.isfinite(v).all():
        raise ValueError(f"vertices must be a finite (V, 3) array, got shape {v.shape}")
    if (f.ndim != 2 or f.shape[1] != 3 or len(f) == 0
            or not np.issubdtype(f.dtype, np.integer)):
        raise ValueError(f"faces must be a non-empty (F, 3) integer array, got shape "
                         f"{f.shape}, dtype {f.dtype}")
    if f.min() < 0 or f.max() >= len(v):
        raise ValueError(f"faces index vertices 0..{len(v) - 1}, got indices "
                         f"{f.min()}..{f.max()}")
    return v, f.astype(np.int64)


def _check_points(points, name):
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or not np.isfinite(p).all():
        raise ValueError(f"{name} must be a finite (M, 3) array, got shape {p.shape}")
    return p


def closest_on_triangles(p, a, b, c):
    """Barycentric coordinates ``(K, 3)`` of the closest point to ``p`` on triangles abc.

    All inputs ``(K, 3)``. Voronoi-region classification of the triangle's vertices, edges
    and face (as in Ericson, Real-Time Collision Detection, 5.1.5), vectorised: the regions
    are written from the last test to the first so earlier tests take precedence.
    """
    ab, ac, ap, bp, cp = b - a, c - a, p - a, p - b, p - c

    def dot(x, y):
        return np.einsum("ij,ij->i", x, y)

    d1, d2, d3, d4, d5, d6 = dot(ab, ap), dot(ac, ap), dot(ab, bp), dot(ac, bp), \
        dot(ab, cp), dot(ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    bary = np.empty((len(p), 3))
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = va + vb + vc
        v, w = vb / denom, vc / denom  # face interior
        bary[:] = np.stack([1 - v - w, v, w], axis=1)
        t = (d4 - d3) / ((d4 - d3) + (d5 - d6))  # edge bc
        m = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
        bary[m] = np.stack([np.zeros_like(t), 1 - t, t], axis=1)[m]
        t = d2 / (d2 - d6)  # edge ac
        m = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
        bary[m] = np.stack([1 - t, np.zeros_like(t), t], axis=1)[m]
        bary[(d6 >= 0) & (d5 <= d6)] = (0.0, 0.0, 1.0)  # vertex c
        t = d1 / (d1 - d3)  # edge ab
        m = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
        bary[m] = np.stack([1 - t, t, np.zeros_like(t)], axis=1)[m]
    bary[(d3 >= 0) & (d4 <= d3)] = (0.0, 1.0, 0.0)  # vertex b
    bary[(d1 <= 0) & (d2 <= 0)] = (1.0, 0.0, 0.0)  # vertex a
    return bary


def bind_to_surface(points, vertices, faces, chunk_pairs: int = 1_000_000):
    """Closest point on a triangle mesh for each 3D point (setup-time marker binding).

    ``points (M, 3)``, ``vertices (V, 3)`` (same length unit, e.g. m), ``faces (F, 3)``
    vertex indices. Returns ``(face (M,) int64, bary (M, 3) float64, distance (M,))``:
    the closest point of point ``k`` is ``bary[k] @ vertices[faces[face[k]]]``, at
    ``distance[k]`` (unsigned, same unit) from it; ties go to the lowest face index.

    Exact and vectorised without an ``M x F`` table: the distance ``D`` to the nearest
    mesh vertex bounds the answer, so only faces whose centroid is within ``D + R`` of the
    point (``R``: the largest centroid-to-vertex distance of any face) can hold the
    closest point; they are found with a KD-tree and tested in chunks of about
    ``chunk_pairs`` point-face pairs. Degenerate (zero-area) faces are skipped.
    """
    v, f = _check_mesh(vertices, faces)
    p = _check_points(points, "points")
    m = len(p)
    face_out = np.full(m, -1, dtype=np.int64)
    bary_out = np.full((m, 3), np.nan)
    dist_out = np.full(m, np.inf)
    if m == 0:
        return face_out, bary_out, dist_out
    tri = v[f]
    centroid = tri.mean(axis=1)
    radius = np.linalg.norm(tri - centroid[:, None], axis=2).max()
    bound = cKDTree(v[np.unique(f)]).query(p)[0]  # vertices used by faces only
    cand = cKDTree(centroid).query_ball_point(p, bound + radius * (1 + 1e-9) + 1e-12)
    counts = np.array([len(c) for c in cand])
    start = 0
    while start < m:  # chunks of points with about chunk_pairs candidate pairs
        stop = start + max(1, int(np.searchsorted(np.cumsum(counts[start:]), chunk_pairs)))
        stop = min(stop, m)
        pi = np.repeat(np.arange(start, stop), counts[start:stop])
        fi = np.concatenate([np.asarray(c, dtype=np.int64) for c in cand[start:stop]])
        t = tri[fi]
        bary = closest_on_triangles(p[pi], t[:, 0], t[:, 1], t[:, 2])
        d = np.linalg.norm(np.einsum("ki,kij->kj", bary, t) - p[pi], axis=1)
        d[~np.isfinite(d)] = np.inf
        order = np.lexsort((fi, d, pi))  # per point: smallest distance, then lowest face
        first = order[np.r_[True, pi[order][1:] != pi[order][:-1]]]
        face_out[pi[first]] = fi[first]
        bary_out[pi[first]] = bary[first]
        dist_out[pi[first]] = d[first]
        start = stop
    return face_out, bary_out, dist_out


def ray_mesh_intersect(origins, directions, vertices, faces, t_min: float = 0.0,
                       chunk_pairs: int = 250_000):
    """First hit of each ray on a triangle mesh (Moller-Trumbore, both face sides).

    ``origins (M, 3)``, ``directions (M, 3)`` (any non-zero length), ``vertices (V, 3)``,
    ``faces (F, 3)``. A hit is a point ``origin + t * direction`` with ``t > t_min`` on a
    triangle (edges included). Returns ``(face (M,) int64, bary (M, 3), t (M,))``: the
    nearest hit's face, its barycentric coordinates with respect to the face's three
    vertices, and ``t`` (in units of the direction's length: metres for unit directions).
    Misses have face ``-1``, NaN barycentrics and ``t = inf``. Brute force over
    ``chunk_pairs``-sized blocks of ray-face pairs (setup-time use).
    """
    v, f = _check_mesh(vertices, faces)
    o = _check_points(origins, "origins")
    d = _check_points(directions, "directions")
    if o.shape != d.shape:
        raise ValueError(f"origins and directions must have the same shape, got {o.shape} "
                         f"and {d.shape}")
    dlen = np.linalg.norm(d, axis=1)
    if (dlen == 0).any():
        raise ValueError("directions must be non-zero vectors")
    m = len(o)
    face_out = np.full(m, -1, dtype=np.int64)
    bary_out = np.full((m, 3), np.nan)
    t_out = np.full(m, np.inf)
    a = v[f[:, 0]]
    e1, e2 = v[f[:, 1]] - a, v[f[:, 2]] - a
    scale = np.linalg.norm(e1, axis=1) * np.linalg.norm(e2, axis=1)  # (F,)
    step = max(1, chunk_pairs // len(f))
    for s in range(0, m, step):
        od, dd = o[s:s + step, None, :], d[s:s + step, None, :]  # (R, 1, 3)
        pvec = np.cross(dd, e2)  # (R, F, 3)
        det = np.einsum("rfi,fi->rf", pvec, e1)
        ok = np.abs(det) > 1e-12 * scale * dlen[s:s + step, None]  # not parallel
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        tvec = od - a  # (R, F, 3)
        u = np.einsum("rfi,rfi->rf", tvec, pvec) * inv
        qvec = np.cross(tvec, e1)
        w = np.einsum("rfi,rfi->rf", qvec, dd) * inv  # ~ second barycentric coordinate
        t = np.einsum("rfi,fi->rf", qvec, e2) * inv
        hit = ok & (u >= 0) & (w >= 0) & (u + w <= 1) & (t > t_min)
        t = np.where(hit, t, np.inf)
        best = np.argmin(t, axis=1)
        rows = np.arange(len(best))
        tb = t[rows, best]
        got = np.isfinite(tb)
        idx = np.arange(s, s + len(best))[got]
        ub, wb = u[rows, best][got], w[rows, best][got]
        face_out[idx] = best[got]
        bary_out[idx] = np.stack([1 - ub - wb, ub, wb], axis=1)
        t_out[idx] = tb[got]
    return face_out, bary_out, t_out


# --------------------------------------------------------------------------- drawing


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
