"""DEM walls: planes, cylinders, boxes and triangle meshes, with translation and rotation."""
from __future__ import annotations

import numpy as np

from ..errors import InvalidMesh, InvalidScene
from ..kernels import dem as kd


class Wall:
    """A rigid wall of the walls' material (the spheres' :class:`DEMMaterial`).

    Kinematics: ``velocity`` (m/s; a 3-vector or a function of time t in s returning one)
    translates it, ``angular_velocity`` (rad/s, constant) rotates it about ``center``
    (m, moving with the wall). ``remove_at`` (s) switches it off at that time (an orifice
    opens). Geometry arguments are in the pose at t = 0."""
    code = kd.W_NONE

    def __init__(self, velocity=(0, 0, 0), angular_velocity=(0, 0, 0), center=(0, 0, 0), remove_at=None,
                 name=None):
        self.velocity = velocity if callable(velocity) else np.asarray(velocity, float)
        self.angular_velocity = np.asarray(angular_velocity, float)
        self.center = np.asarray(center, float)
        if remove_at is not None and not remove_at >= 0:
            raise InvalidScene(f"remove_at must be a time >= 0 s, got {remove_at}")
        self.remove_at = remove_at
        self.name = name
        self.rotation = np.eye(3)

    def velocity_at(self, t: float) -> np.ndarray:
        v = np.asarray(self.velocity(t) if callable(self.velocity) else self.velocity, float)
        if v.shape != (3,) or not np.all(np.isfinite(v)):
            raise InvalidScene(f"wall {self.name}: velocity must be a finite 3-vector, got {v}")
        return v

    def rotating(self) -> bool:
        return bool(np.any(self.angular_velocity))

    def on_at(self, t: float) -> bool:
        return self.remove_at is None or t < self.remove_at

    def params(self):
        """(p, n, a) of the kernel representation (initial pose)."""
        raise NotImplementedError

    def surface(self, offset=(0, 0, 0)):
        """(vertices, faces) in world coordinates for output, or None (infinite walls)."""
        return None


class PlaneWall(Wall):
    """Infinite plane through ``point`` with ``normal`` pointing to the spheres' side."""
    code = kd.W_PLANE

    def __init__(self, point=(0, 0, 0), normal=(0, 0, 1), **kw):
        super().__init__(**kw)
        self.point = np.asarray(point, float)
        n = np.asarray(normal, float)
        if not np.linalg.norm(n) > 0:
            raise InvalidScene("PlaneWall normal must be non-zero")
        self.normal = n / np.linalg.norm(n)

    def params(self):
        return self.point, self.normal, 0.0


class CylinderWall(Wall):
    """Infinite cylinder of ``radius`` (m) about the axis through ``point`` along ``axis``;
    the spheres are inside."""
    code = kd.W_CYLINDER

    def __init__(self, point=(0, 0, 0), axis=(0, 0, 1), radius=0.05, **kw):
        super().__init__(**kw)
        if not radius > 0:
            raise InvalidScene(f"CylinderWall radius must be > 0 m, got {radius}")
        self.point = np.asarray(point, float)
        a = np.asarray(axis, float)
        self.axis = a / np.linalg.norm(a)
        self.radius = float(radius)

    def params(self):
        return self.point, self.axis, self.radius


class BoxWall(Wall):
    """The inside of the axis-aligned box [lo, hi] (m): its six faces hold the spheres."""
    code = kd.W_BOX

    def __init__(self, lo=(0, 0, 0), hi=(1, 1, 1), **kw):
        super().__init__(**kw)
        self.lo = np.asarray(lo, float)
        self.hi = np.asarray(hi, float)
        if np.any(self.hi <= self.lo):
            raise InvalidScene("BoxWall needs hi > lo on every axis")

    def params(self):
        return self.lo, self.hi - self.lo, 0.0


class MeshWall(Wall):
    """A triangle mesh (STL/OBJ/... through trimesh, or a Trimesh) as a wall: spheres touch
    its faces, edges and vertices (closest point). ``scale`` converts file units to m;
    ``require_watertight`` for meshes that must enclose a volume (an error otherwise)."""
    code = kd.W_MESH

    def __init__(self, source, scale=1.0, position=(0, 0, 0), rotation=None, require_watertight=False, **kw):
        from ..geometry import load_mesh
        super().__init__(**kw)
        mesh = load_mesh(source, scale=scale, require_watertight=require_watertight,
                         translate=position, rotation=rotation)
        if len(mesh.faces) == 0:
            raise InvalidMesh("MeshWall: the mesh has no triangles")
        self.vertices = np.asarray(mesh.vertices, float)
        self.faces = np.asarray(mesh.faces, np.int64)

    def triangles(self):
        return self.vertices[self.faces]  # (F, 3, 3)

    def params(self):
        return self.vertices.min(0), self.vertices.max(0), 0.0

    def triangle_grid(self, margin: float):
        """Uniform cell grid over the mesh's box grown by ``margin`` (m) listing, per cell,
        the triangles whose box grown by ``margin`` overlaps it. Returns (lo, h, dims,
        cell_start (C+1), tri_ids)."""
        tris = self.triangles()
        lo = tris.reshape(-1, 3).min(0) - margin
        hi = tris.reshape(-1, 3).max(0) + margin
        ext = hi - lo
        # about 2 spheres per cell, at most ~2M cells
        h = max(2 * margin, float(ext.max()) / 128)
        dims = np.maximum(1, np.ceil(ext / h).astype(np.int64))
        tlo = np.floor((tris.min(1) - margin - lo) / h).astype(np.int64).clip(0, dims - 1)
        thi = np.floor((tris.max(1) + margin - lo) / h).astype(np.int64).clip(0, dims - 1)
        cells, ids = [], []
        for t in range(len(tris)):
            r = [np.arange(tlo[t, k], thi[t, k] + 1) for k in range(3)]
            c = np.stack(np.meshgrid(*r, indexing="ij"), -1).reshape(-1, 3)
            cells.append((c[:, 0] * dims[1] + c[:, 1]) * dims[2] + c[:, 2])
            ids.append(np.full(len(c), t))
        cells = np.concatenate(cells)
        ids = np.concatenate(ids)
        order = np.argsort(cells, kind="stable")
        count = np.bincount(cells, minlength=int(np.prod(dims)))
        start = np.concatenate([[0], np.cumsum(count)])
        return lo, h, dims, start.astype(np.int32), ids[order].astype(np.int32)

    def surface(self, offset=(0, 0, 0)):
        v = (self.vertices - self.center) @ self.rotation.T + self.center + np.asarray(offset)
        return v, self.faces
