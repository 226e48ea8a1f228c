"""Colliders: analytic and mesh signed-distance bodies that impose velocity boundary
conditions on grid solvers, static or kinematic (prescribed velocity or pose per step).

Positions in m, velocities in m/s, angular velocities in rad/s, rotations as 3x3 matrices
(local -> world). The contact ``kind`` is ``"sticky"``, ``"slip"`` or ``"separate"``
(separating contact with Coulomb ``friction``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import InvalidScene
from .kernels import boundary as _bc
from .kernels import sdf as _sdf

KINDS = {"sticky": _bc.STICKY, "slip": _bc.SLIP, "separate": _bc.SEPARATE}


def _vec3(value, name):
    a = np.asarray(value, dtype=np.float64).reshape(-1)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise InvalidScene(f"{name} must be 3 finite numbers, got {value!r}")
    return a


def _rotation(value, name="rotation"):
    if value is None:
        return np.eye(3)
    R = np.asarray(value, dtype=np.float64)
    if R.shape != (3, 3) or not np.allclose(R @ R.T, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0:
        raise InvalidScene(f"{name} must be a 3x3 rotation matrix (orthonormal, det +1)")
    return R


def frame_from_z(normal):
    """A rotation whose local z axis is ``normal`` (unit-normalised)."""
    n = _vec3(normal, "normal")
    length = np.linalg.norm(n)
    if length == 0:
        raise InvalidScene("normal must be non-zero")
    z = n / length
    t = np.array([1.0, 0, 0]) if abs(z[0]) < 0.9 else np.array([0, 1.0, 0])
    x = np.cross(t, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def rotation_step(R, omega, dt):
    """Rotate ``R`` by the angular velocity ``omega`` (world frame) over ``dt`` (Rodrigues)."""
    w = np.asarray(omega, dtype=np.float64) * dt
    th = np.linalg.norm(w)
    if th == 0:
        return R
    k = w / th
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    dR = np.eye(3) + np.sin(th) * Kx + (1 - np.cos(th)) * Kx @ Kx
    return dR @ R


class Collider:
    """Base class of rigid colliders.

    Args:
        position: world position of the collider's local origin (m).
        rotation: 3x3 local->world rotation (default identity).
        velocity: constant linear velocity (m/s), or a callable ``t -> (3,)``.
        angular_velocity: constant angular velocity (rad/s, world frame), or a callable.
        path: optional callable ``t -> position (3,)``: a prescribed trajectory; the
            velocity over each step is the finite difference of the path.
        kind: ``"sticky"``, ``"slip"`` or ``"separate"``.
        friction: Coulomb friction coefficient for ``"separate"``.
        name: label used in outputs and in differentiable controls.
    """

    code = _sdf.NONE

    def __init__(self, position=(0, 0, 0), rotation=None, velocity=(0, 0, 0), angular_velocity=(0, 0, 0),
                 path: Callable | None = None, kind: str = "separate", friction: float = 0.0,
                 name: str | None = None):
        if kind not in KINDS:
            raise InvalidScene(f"collider kind must be one of {sorted(KINDS)}, got {kind!r}")
        if not np.isfinite(friction) or friction < 0:
            raise InvalidScene(f"collider friction must be >= 0, got {friction}")
        self.position = _vec3(position, "position")
        self.rotation = _rotation(rotation)
        self._velocity = velocity if callable(velocity) else _vec3(velocity, "velocity")
        self._omega = angular_velocity if callable(angular_velocity) else _vec3(angular_velocity, "angular_velocity")
        self.path = path
        self.kind = kind
        self.friction = float(friction)
        self.name = name
        self.initial_position = self.position.copy()
        self.initial_rotation = self.rotation.copy()

    # -- kinematics -------------------------------------------------------------------
    def velocity_at(self, t: float, dt: float) -> np.ndarray:
        """Linear velocity (m/s) over the step ``[t, t + dt]``."""
        if self.path is not None:
            return (_vec3(self.path(t + dt), "path(t)") - _vec3(self.path(t), "path(t)")) / dt
        if callable(self._velocity):
            return _vec3(self._velocity(t), "velocity(t)")
        return self._velocity

    def angular_velocity_at(self, t: float) -> np.ndarray:
        if callable(self._omega):
            return _vec3(self._omega(t), "angular_velocity(t)")
        return self._omega

    @property
    def is_static(self) -> bool:
        return (self.path is None and not callable(self._velocity) and not callable(self._omega)
                and not np.any(self._velocity) and not np.any(self._omega))

    def reset(self):
        self.position = self.initial_position.copy()
        self.rotation = self.initial_rotation.copy()

    def advance(self, t, dt):
        """Move the collider over one step (forward simulation)."""
        if self.path is not None:
            self.position = _vec3(self.path(t + dt), "path(t)")
        else:
            self.position = self.position + dt * self.velocity_at(t, dt)
        self.rotation = rotation_step(self.rotation, self.angular_velocity_at(t), dt)

    # -- geometry -----------------------------------------------------------------------
    def shape_vector(self) -> np.ndarray:
        return np.zeros(4)

    def sdf_grid(self):
        """``(values (nx,ny,nz), origin (3,), spacing)`` for mesh colliders, else None."""
        return None

    def surface(self):
        """``(vertices (V,3), faces (F,3))`` in world coordinates, for output and previews."""
        v, f = self._local_surface()
        return v @ self.rotation.T + self.position, f

    def _local_surface(self):
        raise NotImplementedError

    def describe(self) -> dict:
        return {"type": type(self).__name__, "name": self.name, "kind": self.kind, "friction": self.friction,
                "position": self.position.tolist()}


def _trimesh_surface(mesh):
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)


class PlaneCollider(Collider):
    """Infinite plane through ``point`` with outward ``normal``; the solid side is behind it."""

    code = _sdf.PLANE

    def __init__(self, point=(0, 0, 0), normal=(0, 0, 1), size=1.0, **kw):
        super().__init__(position=point, rotation=frame_from_z(normal), **kw)
        self.size = float(size)  # only for drawing

    def _local_surface(self):
        s = self.size / 2
        v = np.array([[-s, -s, 0], [s, -s, 0], [s, s, 0], [-s, s, 0]], dtype=np.float64)
        return v, np.array([[0, 1, 2], [0, 2, 3]])


class BoxCollider(Collider):
    """Box of half extents ``half_size`` (m) centred at ``center``."""

    code = _sdf.BOX

    def __init__(self, center=(0, 0, 0), half_size=(0.1, 0.1, 0.1), rotation=None, **kw):
        super().__init__(position=center, rotation=rotation, **kw)
        self.half_size = _vec3(half_size, "half_size")
        if np.any(self.half_size <= 0):
            raise InvalidScene(f"BoxCollider half_size must be > 0, got {half_size}")

    def shape_vector(self):
        return np.array([*self.half_size, 0.0])

    def _local_surface(self):
        import trimesh
        return _trimesh_surface(trimesh.creation.box(extents=2 * self.half_size))


class SphereCollider(Collider):
    """Sphere of ``radius`` (m) centred at ``center``."""

    code = _sdf.SPHERE

    def __init__(self, center=(0, 0, 0), radius=0.1, **kw):
        super().__init__(position=center, **kw)
        if not radius > 0:
            raise InvalidScene(f"SphereCollider radius must be > 0 m, got {radius}")
        self.radius = float(radius)

    def shape_vector(self):
        return np.array([self.radius, 0, 0, 0.0])

    def _local_surface(self):
        import trimesh
        return _trimesh_surface(trimesh.creation.icosphere(subdivisions=2, radius=self.radius))


class CylinderCollider(Collider):
    """Capped cylinder of ``radius`` and ``height`` (m) along ``axis`` through ``center``."""

    code = _sdf.CYLINDER

    def __init__(self, center=(0, 0, 0), radius=0.05, height=0.2, axis=(0, 0, 1), **kw):
        super().__init__(position=center, rotation=frame_from_z(axis), **kw)
        if not radius > 0 or not height > 0:
            raise InvalidScene(f"CylinderCollider radius and height must be > 0 m, got {radius}, {height}")
        self.radius = float(radius)
        self.height = float(height)

    def shape_vector(self):
        return np.array([self.radius, self.height / 2, 0, 0.0])

    def _local_surface(self):
        import trimesh
        return _trimesh_surface(trimesh.creation.cylinder(radius=self.radius, height=self.height, sections=32))


class MeshCollider(Collider):
    """A rigid triangle mesh (watertight), represented by a signed-distance grid.

    Args:
        source: path or ``trimesh.Trimesh``; its vertex coordinates (after ``scale``) are
            the collider's local frame.
        scale: factor applied to the file's coordinates (1e-3 for millimetre files).
        resolution: SDF grid nodes along the longest side.
        position / rotation / velocity / ...: as :class:`Collider`.
    """

    code = _sdf.MESH

    def __init__(self, source, scale=1.0, resolution=64, position=(0, 0, 0), rotation=None, **kw):
        from . import geometry
        super().__init__(position=position, rotation=rotation, **kw)
        self.mesh = geometry.load_mesh(source, scale=scale, require_watertight=True,
                                       name=kw.get("name"))
        self.grid = geometry.mesh_sdf_grid(self.mesh, resolution=int(resolution))

    def shape_vector(self):
        return np.array([*np.asarray(self.grid.origin, dtype=np.float64), float(self.grid.spacing)])

    def sdf_grid(self):
        return self.grid.values, self.grid.origin, self.grid.spacing

    def _local_surface(self):
        return _trimesh_surface(self.mesh)


def pack_colliders(colliders, n_slots: int, sdf_capacity: int) -> dict:
    """The static description of ``colliders`` as the kernels read it (one slot each).

    Returns numpy arrays ``code`` (S,) int32 (:mod:`diffsim.kernels.sdf` codes), ``kind``
    (S,) int32, ``friction`` (S,), ``shape`` (S, 4) and ``mesh`` (S, 4) int32 (offset and
    size of a mesh collider's SDF grid in the flat ``sdf`` array), and ``sdf``
    (``sdf_capacity``,) or None when no collider is a mesh.
    """
    S = int(n_slots)
    if len(colliders) > S:
        raise InvalidScene(f"{len(colliders)} colliders but only {S} slots")
    code = np.zeros(S, np.int32)
    kind = np.zeros(S, np.int32)
    friction = np.zeros(S)
    shape = np.zeros((S, 4))
    mesh = np.zeros((S, 4), np.int32)
    offset = 0
    grids = []
    for i, c in enumerate(colliders):
        code[i] = c.code
        kind[i] = KINDS[c.kind]
        friction[i] = c.friction
        shape[i] = c.shape_vector()
        g = c.sdf_grid()
        if g is not None:
            vals = np.asarray(g[0], dtype=np.float64)
            mesh[i] = (offset, *vals.shape)
            grids.append(vals.reshape(-1))
            offset += vals.size
    sdf = None
    if grids:
        if offset > sdf_capacity:
            raise InvalidScene(f"mesh collider SDF grids need {offset} values, capacity {sdf_capacity}")
        sdf = np.zeros(int(sdf_capacity))
        sdf[:offset] = np.concatenate(grids)
    return {"code": code, "kind": kind, "friction": friction, "shape": shape, "mesh": mesh, "sdf": sdf}


def sdf_size(colliders) -> int:
    """Number of SDF grid values all mesh colliders need."""
    return sum(int(np.prod(c.sdf_grid()[0].shape)) for c in colliders if c.sdf_grid() is not None)
