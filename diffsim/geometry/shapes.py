"""Shapes to fill with particles: :class:`Box`, :class:`Sphere`, :class:`Cylinder`, :class:`MeshShape`."""
from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidScene
from ._common import MAX_LATTICE_POINTS, _as_points, _positive, _vec3
from .distance import _DistanceIndex
from .inside import _ParityIndex
from .mesh_io import load_mesh
from .sdf import SDFGrid, mesh_sdf_grid


class Shape:
    """Base class of solid shapes (lengths in m).

    Subclasses provide ``bounds``, ``volume``, ``contains(points)`` and ``sdf(points)``;
    ``sample`` fills the shape with lattice points.
    """

    __slots__ = ()

    def __setattr__(self, key, value):
        raise AttributeError(f"{type(self).__name__} is immutable; create a new shape instead")

    def _set(self, **kw):
        for k, v in kw.items():
            if isinstance(v, np.ndarray):
                v.setflags(write=False)
            object.__setattr__(self, k, v)

    # -- interface ------------------------------------------------------------------------
    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounding box ``(lo (3,), hi (3,))`` in m."""
        raise NotImplementedError

    @property
    def volume(self) -> float:
        """Volume in m^3."""
        raise NotImplementedError

    def contains(self, points) -> np.ndarray:
        """(N,) bool: True where points (N, 3), m, lie inside (or on) the shape."""
        return self.sdf(points) <= 0.0

    def sdf(self, points) -> np.ndarray:
        """Signed distance (N,) float64 in m (negative inside) at points (N, 3), m."""
        raise NotImplementedError

    # -- sampling ---------------------------------------------------------------------------
    def _describe_size(self) -> str:
        lo, hi = self.bounds
        return "bounding box " + " x ".join(f"{x:.6g}" for x in (hi - lo)) + " m"

    def sample(self, spacing: float, jitter: float = 0.0, seed: int = 0) -> np.ndarray:
        """Fill the shape with points on a cubic lattice.

        The lattice has the given spacing and is cell-centred in the shape's bounding box:
        along each axis ``n = floor(extent / spacing)`` cells (with a 1e-9 relative
        tolerance) are centred in the box, one point per cell centre, so a Box of size
        0.49 m sampled at 0.01 m gives exactly 49**3 points. Points inside the shape are
        kept.

        Parameters
        ----------
        spacing : float, m
            Lattice spacing (> 0); each point represents a volume ``spacing**3``.
        jitter : float in [0, 1]
            Random offset as a fraction of ``spacing``: each coordinate moves by
            ``U(-0.5, 0.5) * jitter * spacing``, so points stay in their lattice cell.
            The inside test is applied after jittering, so all returned points are inside.
        seed : int
            Seed of the ``numpy.random.Generator`` used for the jitter.

        Returns
        -------
        (N, 3) float64, m

        Raises
        ------
        InvalidScene
            spacing <= 0, jitter outside [0, 1], too many lattice points, or no point
            inside the shape.
        """
        try:
            h = float(spacing)
        except (TypeError, ValueError):
            raise InvalidScene(f"spacing must be a positive number (m), got {spacing!r}") from None
        if not math.isfinite(h) or h <= 0:
            raise InvalidScene(f"spacing must be positive (m), got {spacing!r}; pass e.g. spacing=0.01")
        j = float(jitter)
        if not (0.0 <= j <= 1.0):
            raise InvalidScene(f"jitter must be in [0, 1] (a fraction of the spacing), got {jitter!r}")
        lo, hi = self.bounds
        ext = hi - lo
        n = np.floor(ext / h * (1.0 + 1e-9)).astype(np.int64)
        n = np.maximum(n, 0)
        total = int(np.prod(n.astype(np.float64)))
        if total > MAX_LATTICE_POINTS:
            raise InvalidScene(
                f"{type(self).__name__} with {self._describe_size()} at spacing {h:g} m would need "
                f"{total:.3g} lattice points (limit {MAX_LATTICE_POINTS:.0e}); increase the spacing "
                "(it is in m)"
            )
        pts = np.empty((0, 3))
        if total > 0:
            start = lo + 0.5 * (ext - n * h) + 0.5 * h
            xs = start[0] + h * np.arange(n[0])
            ys = start[1] + h * np.arange(n[1])
            zs = start[2] + h * np.arange(n[2])
            rng = np.random.default_rng(seed)
            per_layer = int(n[0] * n[1])
            layers = max(1, 2_000_000 // max(per_layer, 1))
            X, Y = np.meshgrid(xs, ys, indexing="ij")
            X, Y = X.ravel(), Y.ravel()
            out = []
            for k0 in range(0, int(n[2]), layers):
                zz = zs[k0:k0 + layers]
                p = np.empty((per_layer * len(zz), 3))
                p[:, 0] = np.tile(X, len(zz))
                p[:, 1] = np.tile(Y, len(zz))
                p[:, 2] = np.repeat(zz, per_layer)
                if j > 0:
                    p += (rng.random(p.shape) - 0.5) * (j * h)
                out.append(p[self.contains(p)])
            pts = np.concatenate(out, axis=0)
        if len(pts) == 0:
            raise InvalidScene(
                f"{type(self).__name__} with {self._describe_size()} yields no points at spacing "
                f"{h:g} m; use a spacing smaller than the shape's thinnest dimension"
            )
        return pts


class Box(Shape):
    """Axis-aligned solid box.

    Parameters
    ----------
    center : (3,) float, m
    size : float or (3,) float, m
        Edge lengths (a scalar gives a cube); all > 0.
    """

    __slots__ = ("center", "size")

    def __init__(self, center, size):
        c = _vec3(center, "Box center")
        s = _vec3(size, "Box size")
        if np.any(s <= 0):
            raise InvalidScene(f"Box size must be > 0 along every axis (m), got {s.tolist()}")
        self._set(center=c, size=s)

    def __repr__(self):
        return f"Box(center={self.center.tolist()}, size={self.size.tolist()})"

    @property
    def bounds(self):
        """``(lo (3,), hi (3,))`` in m."""
        return self.center - 0.5 * self.size, self.center + 0.5 * self.size

    @property
    def volume(self) -> float:
        """Volume in m^3."""
        return float(np.prod(self.size))

    def contains(self, points) -> np.ndarray:
        """(N,) bool, inside or on the box, for points (N, 3) in m."""
        p = _as_points(points)
        return np.all(np.abs(p - self.center) <= 0.5 * self.size, axis=1)

    def sdf(self, points) -> np.ndarray:
        """Exact signed distance (N,) in m for points (N, 3) in m (negative inside)."""
        q = np.abs(_as_points(points) - self.center) - 0.5 * self.size
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
        inside = np.minimum(np.max(q, axis=1), 0.0)
        return outside + inside


class Sphere(Shape):
    """Solid sphere.

    Parameters
    ----------
    center : (3,) float, m
    radius : float, m, > 0
    """

    __slots__ = ("center", "radius")

    def __init__(self, center, radius):
        self._set(center=_vec3(center, "Sphere center"), radius=_positive(radius, "Sphere radius (m)"))

    def __repr__(self):
        return f"Sphere(center={self.center.tolist()}, radius={self.radius})"

    @property
    def bounds(self):
        """``(lo (3,), hi (3,))`` in m."""
        return self.center - self.radius, self.center + self.radius

    @property
    def volume(self) -> float:
        """Volume in m^3: 4/3 pi r^3."""
        return 4.0 / 3.0 * math.pi * self.radius ** 3

    def sdf(self, points) -> np.ndarray:
        """Exact signed distance (N,) in m: |p - c| - r."""
        return np.linalg.norm(_as_points(points) - self.center, axis=1) - self.radius


class Cylinder(Shape):
    """Solid capped cylinder.

    Parameters
    ----------
    center : (3,) float, m
        Centre of the cylinder (midway between the caps).
    radius : float, m, > 0
    height : float, m, > 0
        Length along the axis.
    axis : int
        0, 1 or 2 (x, y or z; default z).
    """

    __slots__ = ("center", "radius", "height", "axis")

    def __init__(self, center, radius, height, axis=2):
        if axis not in (0, 1, 2):
            raise InvalidScene(f"Cylinder axis must be 0, 1 or 2 (x, y, z), got {axis!r}")
        self._set(
            center=_vec3(center, "Cylinder center"),
            radius=_positive(radius, "Cylinder radius (m)"),
            height=_positive(height, "Cylinder height (m)"),
            axis=int(axis),
        )

    def __repr__(self):
        return (f"Cylinder(center={self.center.tolist()}, radius={self.radius}, "
                f"height={self.height}, axis={self.axis})")

    @property
    def bounds(self):
        """``(lo (3,), hi (3,))`` in m."""
        half = np.full(3, self.radius)
        half[self.axis] = 0.5 * self.height
        return self.center - half, self.center + half

    @property
    def volume(self) -> float:
        """Volume in m^3: pi r^2 h."""
        return math.pi * self.radius ** 2 * self.height

    def _split(self, points):
        d = _as_points(points) - self.center
        along = d[:, self.axis]
        others = [i for i in range(3) if i != self.axis]
        radial = np.hypot(d[:, others[0]], d[:, others[1]])
        return radial, along

    def contains(self, points) -> np.ndarray:
        """(N,) bool, inside or on the cylinder, for points (N, 3) in m."""
        radial, along = self._split(points)
        return (radial <= self.radius) & (np.abs(along) <= 0.5 * self.height)

    def sdf(self, points) -> np.ndarray:
        """Exact signed distance (N,) in m to the closed (capped) cylinder."""
        radial, along = self._split(points)
        dr = radial - self.radius
        da = np.abs(along) - 0.5 * self.height
        outside = np.hypot(np.maximum(dr, 0.0), np.maximum(da, 0.0))
        return outside + np.minimum(np.maximum(dr, da), 0.0)


class MeshShape(Shape):
    """Solid bounded by a watertight triangle mesh.

    Parameters
    ----------
    source : path | trimesh.Trimesh
        See :func:`load_mesh`.
    scale, translate, rotation :
        Passed to :func:`load_mesh` (scale first, then rotation, then translation).
    center : None | (3,) float, m
        If given, the mesh is moved (after scaling/rotation/translation) so that the centre
        of its bounding box is at ``center``.

    Attributes
    ----------
    mesh : trimesh.Trimesh
        The placed mesh (m). ``sdf`` is exact: exact point-to-triangle distance with the
        sign from :func:`points_inside_mesh`; use :meth:`sdf_grid` for a fast
        interpolated SDF.
    """

    __slots__ = ("mesh", "_parity", "_dist")

    def __init__(self, source, scale=1.0, translate=(0.0, 0.0, 0.0), rotation=None, center=None):
        mesh = load_mesh(source, scale=scale, translate=translate, rotation=rotation,
                         require_watertight=True)
        if center is not None:
            c = _vec3(center, "MeshShape center")
            lo, hi = mesh.bounds
            mesh.apply_translation(c - 0.5 * (lo + hi))
        self._set(mesh=mesh, _parity=None, _dist=None)

    def __repr__(self):
        return f"MeshShape(name={self.mesh.metadata.get('name')!r}, faces={len(self.mesh.faces)})"

    @property
    def bounds(self):
        """``(lo (3,), hi (3,))`` in m."""
        b = np.array(self.mesh.bounds, dtype=np.float64)
        return b[0], b[1]

    @property
    def volume(self) -> float:
        """Mesh volume in m^3."""
        return float(self.mesh.volume)

    def _index(self):
        if self._parity is None:
            object.__setattr__(self, "_parity", _ParityIndex(self.mesh.vertices, self.mesh.faces))
        return self._parity

    def contains(self, points) -> np.ndarray:
        """(N,) bool inside test (ray parity, :func:`points_inside_mesh`)."""
        return self._index().contains(_as_points(points))

    def sdf(self, points) -> np.ndarray:
        """Exact signed distance (N,) in m (negative inside) for points (N, 3) in m."""
        p = _as_points(points)
        if self._dist is None:
            object.__setattr__(self, "_dist", _DistanceIndex(self.mesh.vertices, self.mesh.faces))
        d, _, _ = self._dist.query(p)
        return np.where(self.contains(p), -d, d)

    def sdf_grid(self, spacing=None, resolution=64, padding=3) -> "SDFGrid":
        """:func:`mesh_sdf_grid` of this shape's mesh."""
        return mesh_sdf_grid(self.mesh, spacing=spacing, resolution=resolution, padding=padding)
