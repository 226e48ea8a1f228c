"""Exact point-to-triangle distances: unsigned and signed distances to a mesh."""
from __future__ import annotations

import numpy as np
import trimesh
from scipy.spatial import cKDTree
from ._common import _as_points
from .inside import points_inside_mesh


def _point_triangle_dist2(p, a, b, c) -> np.ndarray:
    """Squared exact distance (M,) from points p to triangles (a, b, c); all (M, 3) in m.

    If the projection of p onto the triangle's plane falls inside the triangle, the
    distance is the distance to the plane; otherwise it is the distance to the nearest of
    the three edges (clamped segment projection). Degenerate triangles reduce to segment
    distances."""
    px, py, pz = p[:, 0], p[:, 1], p[:, 2]
    ax, ay, az = a[:, 0], a[:, 1], a[:, 2]
    abx, aby, abz = b[:, 0] - ax, b[:, 1] - ay, b[:, 2] - az
    acx, acy, acz = c[:, 0] - ax, c[:, 1] - ay, c[:, 2] - az
    apx, apy, apz = px - ax, py - ay, pz - az
    # normal and barycentric test
    nx = aby * acz - abz * acy
    ny = abz * acx - abx * acz
    nz = abx * acy - aby * acx
    nn = nx * nx + ny * ny + nz * nz
    # signed sub-areas (times |n|^2 scale) via (edge x (p - vertex)) . n
    # edge AB
    s_ab = (aby * apz - abz * apy) * nx + (abz * apx - abx * apz) * ny + (abx * apy - aby * apx) * nz
    # edge CA: (a - c) x (p - c); note p - c = ap - ac, a - c = -ac
    cpx, cpy, cpz = apx - acx, apy - acy, apz - acz
    s_ca = (-(acy * cpz - acz * cpy)) * nx + (-(acz * cpx - acx * cpz)) * ny + (-(acx * cpy - acy * cpx)) * nz
    s_bc = nn - s_ab - s_ca  # sum of the three equals |n|^2 (times 1) for in-plane projection
    inside = (s_ab >= 0) & (s_ca >= 0) & (s_bc >= 0) & (nn > 0)
    dn = apx * nx + apy * ny + apz * nz
    face = dn * dn / np.where(nn > 0, nn, 1.0)

    def seg(ox, oy, oz, ex, ey, ez):  # |q - t e|^2 with q = p - origin, t clamped
        ee = ex * ex + ey * ey + ez * ez
        t = (ox * ex + oy * ey + oz * ez) / np.where(ee > 0, ee, 1.0)
        np.clip(t, 0.0, 1.0, out=t)
        dx = ox - t * ex
        dy = oy - t * ey
        dz = oz - t * ez
        return dx * dx + dy * dy + dz * dz

    bpx, bpy, bpz = apx - abx, apy - aby, apz - abz
    d = seg(apx, apy, apz, abx, aby, abz)
    np.minimum(d, seg(apx, apy, apz, acx, acy, acz), out=d)
    np.minimum(d, seg(bpx, bpy, bpz, acx - abx, acy - aby, acz - abz), out=d)
    return np.where(inside, face, d)


class _DistanceIndex:
    """Exact unsigned distance to a triangle mesh, with a cKDTree over centroids.

    For a point p, the triangles whose centroids are the k nearest give an upper bound
    u on the distance. Any other triangle T has distance >= |p - c_T| - r_T >= d_k - r_max,
    (r_T: largest centroid-to-vertex distance), so the result is certified exact when
    d_k - r_max >= u; otherwise k grows (x4) and finally all triangles are tested.
    """

    def __init__(self, vertices, faces):
        self.tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]
        self.cent = self.tri.mean(axis=1)
        self.rad = np.max(np.linalg.norm(self.tri - self.cent[:, None, :], axis=2), axis=1)
        self.rmax = float(self.rad.max()) if len(self.rad) else 0.0
        self.tree = cKDTree(self.cent)
        self.ntri = len(self.tri)

    def _eval(self, p, idx, u, arg, rows, dk_cand, done_below=None):
        """Evaluate candidate triangles idx (M, k) for points p[rows]; skip candidates
        that cannot beat the current bound, and those with a centroid distance strictly
        below ``done_below`` (M,) (already evaluated at a previous k). Updates u, arg."""
        mask = (dk_cand - self.rad[idx]) <= u[rows][:, None]
        if done_below is not None:
            mask &= dk_cand >= done_below[:, None]
        r_loc, c_loc = np.nonzero(mask)
        if r_loc.size == 0:
            return
        ti = idx[r_loc, c_loc]
        t = self.tri[ti]
        dense = np.full(idx.shape, np.inf)
        dense[r_loc, c_loc] = _point_triangle_dist2(p[rows[r_loc]], t[:, 0], t[:, 1], t[:, 2])
        j = np.argmin(dense, axis=1)
        best = np.sqrt(dense[np.arange(len(rows)), j])
        better = best < u[rows]
        u[rows[better]] = best[better]
        arg[rows[better]] = idx[better, j[better]]

    def query(self, points, max_dist=np.inf, k0=8):
        """Exact distances (N,) and closest triangle ids (N,) for points (N, 3).

        Points whose distance exceeds ``max_dist`` only get an upper bound (a distance to a
        real triangle, not certified minimal) and a flag False in the third output."""
        p = _as_points(points)
        n = len(p)
        u = np.full(n, np.inf)
        arg = np.zeros(n, dtype=np.int64)
        exact = np.zeros(n, dtype=bool)
        if self.ntri == 0 or n == 0:
            return u, arg, exact
        rows = np.arange(n)
        k = min(k0, self.ntri)
        kth = np.zeros(n)  # centroid distance of the last candidate evaluated so far
        while rows.size:
            chunk = max(1, 2_000_000 // k)
            for s in range(0, rows.size, chunk):
                r = rows[s:s + chunk]
                dc, idx = self.tree.query(p[r], k=k, workers=-1)
                if k == 1:
                    dc, idx = dc[:, None], idx[:, None]
                self._eval(p, idx, u, arg, r, dc, kth[r] if k > k0 else None)
                kth[r] = dc[:, -1]
                if k >= self.ntri:
                    exact[r] = True
                else:
                    exact[r] = dc[:, -1] - self.rmax >= u[r]
            rows = rows[~exact[rows] & (u[rows] <= max_dist)]
            if k >= self.ntri:
                break
            k = min(4 * k, self.ntri)
            if k > 4096 and rows.size:  # brute force the few remaining points
                self._brute(p, rows, u, arg)
                exact[rows] = True
                break
        return u, arg, exact

    def _brute(self, p, rows, u, arg):
        tchunk = 4096
        for s in range(0, rows.size, 64):
            r = rows[s:s + 64]
            for t0 in range(0, self.ntri, tchunk):
                t = self.tri[t0:t0 + tchunk]
                nt = len(t)
                pp = np.repeat(p[r], nt, axis=0)
                tt = np.tile(t, (len(r), 1, 1))
                d = np.sqrt(_point_triangle_dist2(pp, tt[:, 0], tt[:, 1], tt[:, 2])).reshape(len(r), nt)
                j = np.argmin(d, axis=1)
                dj = d[np.arange(len(r)), j]
                better = dj < u[r]
                u[r[better]] = dj[better]
                arg[r[better]] = t0 + j[better]


def mesh_unsigned_distance(mesh: trimesh.Trimesh, points) -> np.ndarray:
    """Exact distance (m) from points to the surface of a triangle mesh.

    Parameters
    ----------
    mesh : trimesh.Trimesh
    points : (N, 3) float, m

    Returns
    -------
    (N,) float64, m, >= 0
        Minimum exact point-to-triangle distance (certified via a centroid k-d tree;
        see ``_DistanceIndex``).
    """
    d, _, _ = _DistanceIndex(mesh.vertices, mesh.faces).query(points)
    return d


def mesh_signed_distance(mesh: trimesh.Trimesh, points) -> np.ndarray:
    """Exact signed distance (m) to a watertight mesh: negative inside.

    Parameters
    ----------
    mesh : trimesh.Trimesh, watertight
    points : (N, 3) float, m

    Returns
    -------
    (N,) float64, m
    """
    p = _as_points(points)
    d = mesh_unsigned_distance(mesh, p)
    return np.where(points_inside_mesh(mesh, p), -d, d)
