"""Signed distance grids (:class:`SDFGrid`, :func:`mesh_sdf_grid`) with a disk cache, and VTU cells of meshes."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh

from ..errors import InvalidMesh, InvalidScene
from ._common import _as_points, _positive
from .distance import _DistanceIndex, _point_triangle_dist2
from .inside import _ParityIndex


@dataclass(eq=False)
class SDFGrid:
    """Signed distance sampled on a regular grid.

    Attributes
    ----------
    values : (nx, ny, nz) float32, m
        Signed distance at the nodes, negative inside.
    origin : (3,) float64, m
        Position of node ``[0, 0, 0]``; node ``[i, j, k]`` is at ``origin + spacing*(i, j, k)``.
    spacing : float, m
        Node spacing.
    """

    values: np.ndarray
    origin: np.ndarray
    spacing: float
    _shape: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.values = np.ascontiguousarray(self.values, dtype=np.float32)
        if self.values.ndim != 3 or min(self.values.shape) < 1:
            raise ValueError(f"SDFGrid values must be a 3-D array, got shape {self.values.shape}")
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        self.spacing = float(self.spacing)
        if not self.spacing > 0:
            raise InvalidScene(f"SDFGrid spacing must be > 0 (m), got {self.spacing}")
        self._shape = np.array(self.values.shape, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(nx, ny, nz)."""
        return tuple(int(s) for s in self.values.shape)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lo (3,), hi (3,))`` in m: positions of the first and last nodes."""
        return self.origin.copy(), self.origin + self.spacing * (self._shape - 1)

    def _locate(self, points):
        p = _as_points(points)
        g = (p - self.origin) / self.spacing
        gc = np.clip(g, 0.0, self._shape - 1)
        i0 = np.clip(np.floor(gc).astype(np.int64), 0, np.maximum(self._shape - 2, 0))
        i1 = np.minimum(i0 + 1, self._shape - 1)
        f = np.clip(gc - i0, 0.0, 1.0)
        out = (g - gc) * self.spacing  # vector from the clamped point to p, m
        return i0, i1, f, out, g, gc

    def _corners(self, i0, i1):
        v = self.values
        c = {}
        for a in (0, 1):
            ia = (i0, i1)[a][:, 0]
            for b in (0, 1):
                ib = (i0, i1)[b][:, 1]
                for d in (0, 1):
                    ic = (i0, i1)[d][:, 2]
                    c[a, b, d] = v[ia, ib, ic].astype(np.float64)
        return c

    def sample(self, points) -> np.ndarray:
        """Trilinearly interpolated signed distance (N,) float64 in m at points (N, 3), m.

        Outside the grid the value at the clamped (nearest in-box) point is used plus the
        distance to the box, so the result keeps growing away from the grid."""
        i0, i1, f, out, _, _ = self._locate(points)
        c = self._corners(i0, i1)
        fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
        c00 = c[0, 0, 0] * (1 - fx) + c[1, 0, 0] * fx
        c01 = c[0, 0, 1] * (1 - fx) + c[1, 0, 1] * fx
        c10 = c[0, 1, 0] * (1 - fx) + c[1, 1, 0] * fx
        c11 = c[0, 1, 1] * (1 - fx) + c[1, 1, 1] * fx
        c0 = c00 * (1 - fy) + c10 * fy
        c1 = c01 * (1 - fy) + c11 * fy
        return c0 * (1 - fz) + c1 * fz + np.linalg.norm(out, axis=1)

    def gradient(self, points) -> np.ndarray:
        """Unit gradient (N, 3) float64 of :meth:`sample` at points (N, 3), m.

        Analytic gradient of the trilinear interpolant (inside the grid), plus the
        direction away from the box outside it; normalised. Where the gradient vanishes
        the result is the zero vector."""
        i0, i1, f, out, g, gc = self._locate(points)
        c = self._corners(i0, i1)
        fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
        gx = ((c[1, 0, 0] - c[0, 0, 0]) * (1 - fy) * (1 - fz) + (c[1, 1, 0] - c[0, 1, 0]) * fy * (1 - fz)
              + (c[1, 0, 1] - c[0, 0, 1]) * (1 - fy) * fz + (c[1, 1, 1] - c[0, 1, 1]) * fy * fz)
        gy = ((c[0, 1, 0] - c[0, 0, 0]) * (1 - fx) * (1 - fz) + (c[1, 1, 0] - c[1, 0, 0]) * fx * (1 - fz)
              + (c[0, 1, 1] - c[0, 0, 1]) * (1 - fx) * fz + (c[1, 1, 1] - c[1, 0, 1]) * fx * fz)
        gz = ((c[0, 0, 1] - c[0, 0, 0]) * (1 - fx) * (1 - fy) + (c[1, 0, 1] - c[1, 0, 0]) * fx * (1 - fy)
              + (c[0, 1, 1] - c[0, 1, 0]) * (1 - fx) * fy + (c[1, 1, 1] - c[1, 1, 0]) * fx * fy)
        grad = np.stack([gx, gy, gz], axis=1) / self.spacing
        # axes where the point was clamped (or the grid is flat) do not vary inside
        grad[(g != gc) | (self._shape < 2)[None, :]] = 0.0
        n_out = np.linalg.norm(out, axis=1)
        has_out = n_out > 0
        grad[has_out] += out[has_out] / n_out[has_out, None]
        norm = np.linalg.norm(grad, axis=1)
        ok = norm > 0
        grad[ok] /= norm[ok, None]
        return grad


def _sweep_closest(nodes, shape, dist, arg, tri, frozen):
    """Improve distances of non-frozen nodes by testing their axis neighbours' closest
    triangles (closest-triangle propagation, as in Bridson's SDFGen), vectorised plane by
    plane in the six axis sweep orders. Modifies dist/arg (shaped like the grid) in place."""
    P = nodes.reshape(tuple(shape) + (3,))
    for axis in range(3):
        for direction in (1, -1):
            n = shape[axis]
            order = range(1, n) if direction == 1 else range(n - 2, -1, -1)
            for i in order:
                prev = i - direction
                sl_cur = [slice(None)] * 3
                sl_prev = [slice(None)] * 3
                sl_cur[axis] = i
                sl_prev[axis] = prev
                sl_cur, sl_prev = tuple(sl_cur), tuple(sl_prev)
                free = ~frozen[sl_cur]
                if not free.any():
                    continue
                cand = arg[sl_prev][free]
                mine = arg[sl_cur][free]
                todo = cand != mine
                if not todo.any():
                    continue
                pts = P[sl_cur][free][todo]
                t = tri[cand[todo]]
                d = np.sqrt(_point_triangle_dist2(pts, t[:, 0], t[:, 1], t[:, 2]))
                dcur = dist[sl_cur][free]
                acur = arg[sl_cur][free]
                sub_d = dcur[todo]
                sub_a = acur[todo]
                better = d < sub_d
                sub_d[better] = d[better]
                sub_a[better] = cand[todo][better]
                dcur[todo] = sub_d
                acur[todo] = sub_a
                view_d = dist[sl_cur]
                view_a = arg[sl_cur]
                view_d[free] = dcur
                view_a[free] = acur


def mesh_sdf_grid(mesh: trimesh.Trimesh, spacing: float | None = None, resolution: int = 64,
                  padding: int = 3, exact: bool = False) -> SDFGrid:
    """Signed distance grid of a watertight mesh.

    The nodes cover the mesh's bounding box plus ``padding`` nodes on each side (the box
    is centred in the node range). If ``spacing`` is None,
    ``spacing = longest extent / (resolution - 2*padding - 1)``, so the longest axis has
    ``resolution`` nodes.

    Distances: every node within ``4*spacing + r_max`` of the surface (``r_max``: largest
    triangle centroid-to-vertex distance), and any node whose nearest-candidate search
    already certifies it, gets the exact point-to-triangle distance (k-d tree over triangle
    centroids; see ``_DistanceIndex``). Farther nodes get the exact distance to the
    closest triangle among those found by propagating closest triangles between
    neighbouring nodes (Bridson's SDFGen scheme): always a true distance to a mesh
    triangle, exact except rarely near the medial axis, where it may slightly
    overestimate. Pass ``exact=True`` to certify every node (slower for large interiors).
    The sign comes from :func:`points_inside_mesh` (negative inside).

    Parameters
    ----------
    mesh : trimesh.Trimesh
        Watertight mesh in m (see :func:`load_mesh`).
    spacing : float | None, m
    resolution : int
        Nodes along the longest axis when ``spacing`` is None (>= 2*padding + 2).
    padding : int
        Extra nodes beyond the bounding box on each side (>= 0).
    exact : bool
        Certify the exact distance at every node.

    Returns
    -------
    SDFGrid
    """
    padding = int(padding)
    if padding < 0:
        raise InvalidScene(f"padding must be >= 0 nodes, got {padding}")
    if len(mesh.faces) == 0:
        raise InvalidMesh("mesh_sdf_grid: the mesh has no faces; pass a closed mesh")
    lo, hi = (np.asarray(b, dtype=np.float64) for b in mesh.bounds)
    ext = hi - lo
    if spacing is None:
        resolution = int(resolution)
        if resolution < 2 * padding + 2:
            raise InvalidScene(
                f"resolution {resolution} is too small for padding {padding}: need at least "
                f"{2 * padding + 2} nodes along the longest axis"
            )
        h = float(np.max(ext)) / (resolution - 2 * padding - 1)
    else:
        h = _positive(spacing, "spacing (m)")
    if not h > 0:
        raise InvalidMesh("mesh_sdf_grid: the mesh has zero extent; pass a closed 3-D mesh")
    n_in = np.maximum(np.ceil(ext / h * (1 - 1e-9)).astype(np.int64), 1)
    shape = n_in + 1 + 2 * padding
    if int(np.prod(shape.astype(np.float64))) > 512 ** 3:
        raise InvalidScene(f"SDF grid {shape.tolist()} is too large; increase spacing (m)")
    center = 0.5 * (lo + hi)
    origin = center - 0.5 * (shape - 1) * h
    cache = _sdf_cache_path(mesh, h, padding, exact, shape)
    cached = _load_cached_sdf(cache, shape)
    if cached is not None:
        return SDFGrid(values=cached, origin=origin, spacing=h)
    axes = [origin[i] + h * np.arange(shape[i]) for i in range(3)]
    nodes = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)

    from ..progress import Progress
    work = len(nodes) * max(1, len(mesh.faces)) ** 0.5
    name = mesh.metadata.get("name") or mesh.metadata.get("file_name") or "mesh"
    with Progress(total=3, desc=f"distance grid of {name} ({'x'.join(map(str, shape.tolist()))}, cached after)",
                  unit="stage", disable=work < 5e7) as bar:
        index = _DistanceIndex(mesh.vertices, mesh.faces)
        band = np.inf if exact else 4.0 * h + index.rmax
        dist, arg, certified = index.query(nodes, max_dist=band)
        bar.update(1)
        if not certified.all():
            d3 = dist.reshape(tuple(shape))
            a3 = arg.reshape(tuple(shape))
            frozen = certified.reshape(tuple(shape))
            for _ in range(2):
                _sweep_closest(nodes, shape, d3, a3, index.tri, frozen)
            dist = d3.reshape(-1)
        bar.update(1)
        inside = _ParityIndex(mesh.vertices, mesh.faces).contains(nodes)
        bar.update(1)
    values = np.where(inside, -dist, dist).reshape(tuple(shape)).astype(np.float32)
    _store_cached_sdf(cache, values)
    return SDFGrid(values=values, origin=origin, spacing=h)


_SDF_CACHE_VERSION = 1


def sdf_cache_dir() -> Path | None:
    """Where signed distance grids are cached: ``$DIFFSIM_CACHE/sdf`` or
    ``~/.cache/diffsim/sdf``; ``DIFFSIM_CACHE=off`` disables the cache."""
    root = os.environ.get("DIFFSIM_CACHE")
    if root == "off":
        return None
    return Path(root or Path.home() / ".cache" / "diffsim") / "sdf"


def _sdf_cache_path(mesh, h, padding, exact, shape) -> Path | None:
    """Cache file keyed by the mesh's exact vertices and faces and the grid's parameters."""
    d = sdf_cache_dir()
    if d is None:
        return None
    import hashlib
    key = hashlib.sha256()
    key.update(np.ascontiguousarray(mesh.vertices, dtype=np.float64).tobytes())
    key.update(np.ascontiguousarray(mesh.faces, dtype=np.int64).tobytes())
    key.update(repr((_SDF_CACHE_VERSION, float(h), int(padding), bool(exact), tuple(int(x) for x in shape))).encode())
    return d / f"{key.hexdigest()[:32]}.npy"


def _load_cached_sdf(path, shape):
    if path is None or not path.is_file():
        return None
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError):     # unreadable or truncated: recompute (and rewrite)
        return None
    return values if values.shape == tuple(int(x) for x in shape) and values.dtype == np.float32 else None


def _store_cached_sdf(path, values) -> None:
    """Atomic write (temporary file, then rename); a read-only cache is skipped."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, values, allow_pickle=False)
        os.replace(tmp, path)
    except OSError:
        pass


def mesh_to_vtu_cells(mesh: trimesh.Trimesh):
    """Points and cells of a triangle mesh for meshio writers.

    Returns
    -------
    points : (V, 3) float64, m
    cells : dict ``{"triangle": (F, 3) int64}``
    """
    return (np.asarray(mesh.vertices, dtype=np.float64),
            {"triangle": np.asarray(mesh.faces, dtype=np.int64)})
