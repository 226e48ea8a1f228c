"""Points and rays against triangle meshes given as arrays: closest points (barycentric
coordinates, :func:`bind_to_surface`) and first ray hits (:func:`ray_mesh_intersect`,
Moller-Trumbore). Used to attach tactile markers to a gel surface and to read depth maps."""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


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
