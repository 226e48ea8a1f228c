"""Fast, robust inside test of points against a closed mesh (ray parity along +z)."""
from __future__ import annotations

import math

import numpy as np
import trimesh
from ._common import _as_points


class _ParityIndex:
    """Triangles of a mesh prepared for +z ray-parity tests (see points_inside_mesh).

    Each triangle is projected to the xy plane and oriented counter-clockwise there;
    triangles with zero projected area (vertical) are dropped. Edge functions are always
    evaluated from the lower vertex index to the higher one, so the two triangles
    sharing an edge get bit-identical values of opposite sign; points exactly on a
    projected edge or vertex are then assigned to exactly one triangle by a tie-break
    rule on the edge direction (as in watertight rasterisation). This makes the parity
    count exact for lattice points lying on projected edges (e.g. the diagonals of a
    box's faces), without any perturbation.
    """

    # packed columns: 3 edges x (ax, ay, dx, dy, sign, tie) = 18, then plane (Ax, Ay, Az, gx, gy)
    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        vertices = np.asarray(vertices, dtype=np.float64)
        faces = np.asarray(faces, dtype=np.int64)
        # merge bit-identical vertices so that shared edges use shared indices
        v, inv = np.unique(vertices, axis=0, return_inverse=True)
        f = inv.reshape(-1)[faces]
        a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
        area2 = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
        keep = area2 != 0.0
        f, area2 = f[keep], area2[keep]
        cw = area2 < 0
        f[cw] = f[cw][:, [0, 2, 1]]
        p_idx = f
        q_idx = f[:, [1, 2, 0]]
        lo = np.minimum(p_idx, q_idx)
        hi = np.maximum(p_idx, q_idx)
        sign = np.where(p_idx == lo, 1.0, -1.0)
        ax, ay = v[lo, 0], v[lo, 1]
        dx, dy = v[hi, 0] - ax, v[hi, 1] - ay
        ex, ey = sign * dx, sign * dy  # edge direction P -> Q (exact)
        tie = ((ey > 0) | ((ey == 0) & (ex > 0))).astype(np.float64)
        A = v[f[:, 0]]
        B = v[f[:, 1]]
        C = v[f[:, 2]]
        n = np.cross(B - A, C - A)
        gx = -n[:, 0] / n[:, 2]
        gy = -n[:, 1] / n[:, 2]
        cols = [np.stack([ax[:, k], ay[:, k], dx[:, k], dy[:, k], sign[:, k], tie[:, k]], axis=1)
                for k in range(3)]
        self.data = np.concatenate(cols + [A, gx[:, None], gy[:, None]], axis=1)
        self.ntri = len(f)
        tri_xy = v[f][:, :, :2]
        self.tmin = tri_xy.min(axis=1)
        self.tmax = tri_xy.max(axis=1)
        self.lo = v.min(axis=0) if len(v) else np.zeros(3)
        self.hi = v.max(axis=0) if len(v) else np.zeros(3)
        self._build_grid()

    def _build_grid(self):
        if self.ntri == 0:
            self.cell = 1.0
            self.dims = np.array([1, 1])
            self.cell_start = np.zeros(2, dtype=np.int64)
            self.cell_tris = np.zeros(0, dtype=np.int64)
            return
        size = np.max(self.tmax - self.tmin, axis=1)
        ext = np.maximum(self.hi[:2] - self.lo[:2], 1e-300)
        h = 0.5 * float(np.median(size))
        # keep the grid below ~1M cells and the (triangle, cell) list modest
        h = max(h, float(np.max(ext)) / 1024.0, math.sqrt(ext[0] * ext[1] / 1.0e6), 1e-300)
        limit = max(20_000_000, 64 * self.ntri)
        while True:  # coarsen if large triangles would fill too many cells
            dims = np.maximum(np.ceil(ext / h).astype(np.int64), 1)
            i0 = np.clip(np.floor((self.tmin - self.lo[:2]) / h).astype(np.int64), 0, dims - 1)
            i1 = np.clip(np.floor((self.tmax - self.lo[:2]) / h).astype(np.int64), 0, dims - 1)
            nx = i1[:, 0] - i0[:, 0] + 1
            ny = i1[:, 1] - i0[:, 1] + 1
            cnt = nx * ny
            if int(cnt.sum()) <= limit or np.all(dims == 1):
                break
            h *= 2.0
        tri = np.repeat(np.arange(self.ntri), cnt)
        local = np.arange(tri.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        cx = i0[tri, 0] + local % nx[tri]
        cy = i0[tri, 1] + local // nx[tri]
        cell_id = cx * dims[1] + cy
        order = np.argsort(cell_id, kind="stable")
        self.cell_tris = tri[order]
        counts = np.bincount(cell_id, minlength=int(dims[0] * dims[1]))
        self.cell_start = np.concatenate([[0], np.cumsum(counts)])
        self.cell = h
        self.dims = dims

    def contains(self, points: np.ndarray, max_pairs: int = 400_000) -> np.ndarray:
        n = len(points)
        inside = np.zeros(n, dtype=bool)
        if self.ntri == 0 or n == 0:
            return inside
        cand = np.nonzero(
            np.all((points >= self.lo) & (points <= self.hi), axis=1)
        )[0]
        if cand.size == 0:
            return inside
        pc = points[cand]
        ij = np.floor((pc[:, :2] - self.lo[:2]) / self.cell).astype(np.int64)
        ij = np.clip(ij, 0, self.dims - 1)
        cid = ij[:, 0] * self.dims[1] + ij[:, 1]
        start = self.cell_start[cid]
        cnt = self.cell_start[cid + 1] - start
        csum = np.cumsum(cnt)
        crossings = np.zeros(cand.size, dtype=np.int64)
        # chunk the candidate points so that each chunk makes at most ~max_pairs pairs
        b0 = 0
        done = 0
        while b0 < cand.size:
            b1 = int(np.searchsorted(csum, done + max_pairs, side="right"))
            b1 = max(b1, b0 + 1)
            c = cnt[b0:b1]
            m = int(c.sum())
            if m:
                pl = np.repeat(np.arange(b0, b1), c)
                off = np.arange(m) - np.repeat(np.cumsum(c) - c, c)
                ti = self.cell_tris[start[pl] + off]
                crossings += np.bincount(pl[self._hits(pc[pl], ti)], minlength=cand.size)
            done = int(csum[b1 - 1])
            b0 = b1
        inside[cand] = (crossings % 2) == 1
        return inside

    def _hits(self, p: np.ndarray, ti: np.ndarray) -> np.ndarray:
        d = self.data[ti]
        px, py, pz = p[:, 0], p[:, 1], p[:, 2]
        ok = np.ones(len(ti), dtype=bool)
        for k in range(3):
            o = 6 * k
            e = d[:, o + 2] * (py - d[:, o + 1]) - d[:, o + 3] * (px - d[:, o])
            se = d[:, o + 4] * e
            ok &= (se > 0) | ((e == 0) & (d[:, o + 5] > 0))
        zhit = d[:, 20] + d[:, 21] * (px - d[:, 18]) + d[:, 22] * (py - d[:, 19])
        return ok & (zhit > pz)


def points_inside_mesh(mesh: trimesh.Trimesh, points) -> np.ndarray:
    """Which points lie inside a closed triangle mesh.

    Counts the crossings of a ray from each point along +z with the mesh (ray parity).
    Triangles are binned in an xy grid so each point only tests the triangles above its
    cell; points on projected edges/vertices are resolved by a consistent tie-break (see
    ``_ParityIndex``), so the result is exact up to floating-point rounding for points
    farther than ~1e-12 x (mesh size) from the surface. Points exactly on the surface may
    go either way.

    Parameters
    ----------
    mesh : trimesh.Trimesh
        Watertight mesh (see :func:`load_mesh`); for open meshes the result is
        meaningless. Orientation does not matter.
    points : (N, 3) float, m

    Returns
    -------
    (N,) bool
        True inside.

    Performance: ~200k points against a 10k-triangle mesh take well under a second.
    """
    p = _as_points(points)
    return _ParityIndex(mesh.vertices, mesh.faces).contains(p)
