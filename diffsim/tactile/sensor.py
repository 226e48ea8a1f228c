"""Vision-based tactile sensor: an FEM elastomer pad, markers on its contact surface and a
camera behind it (GelSight / DiffTactile-like).

    sim = ds.FEMSolver(dt=2e-5, gravity=(0, 0, 0))
    pad = sim.add_body(ds.dome_pad(), ds.FEMMaterial(E=3e5, nu=0.45))
    plate = sim.add_driver(pad, pad.nodes_where(lambda X: X[:, 2] < 1e-9), velocity=(0, 0, 0.01))
    sensor = ds.TactileSensor(sim, pad, plate, markers="image")   # markers found in the image
    ...
    out = sensor.read(sim.positions(), sim.contact_forces())      # numpy or torch in, same out

Frames. The sensor lives in its *rest frame*: the pad at rest, ``normal`` pointing from
the back plate towards the objects. Readings are taken in that frame: node positions are
mapped back by the inverse of the driver's pose, so moving the whole scene rigidly (or
the sensor with its plate) changes nothing but the contact itself.

Readings (:meth:`TactileSensor.read`), all differentiable when given torch tensors:

* ``markers_px`` (M, 2) marker pixels in the camera image and ``displacement_px`` (M, 2)
  their motion from rest; markers are bound to the contact surface by barycentric
  coordinates (a regular grid, points, or dots detected in a reference image and cast
  onto the surface through the camera);
* ``force_field`` (S, 3): contact force on each contact-surface node (N), components
  along the sensor's two tangents and its normal;
  ``normal_force`` (N, pressing positive) and ``shear_force`` (2,) along the frame's
  tangent axes;
* ``depth`` (H, W) indentation depth of the contact surface (m) and ``pressure`` (H, W)
  normal contact pressure (Pa), sampled on a regular grid over the pad's footprint.

``flow_image`` draws the marker motion (the picture ``diffsim run`` writes per frame).
"""
from __future__ import annotations

import math

import numpy as np

from .cameras import Camera, FisheyeCamera, look_at
from ..errors import InvalidScene
from ..geometry.triangles import bind_to_surface, ray_mesh_intersect
from .drawing import marker_flow_image
from .markers import detect_markers, grid_markers


def _is_torch(a) -> bool:
    return type(a).__module__.startswith("torch")


class TactileSensor:
    """An FEM pad of ``solver`` seen by a camera, with markers on its contact surface.

    Args:
        solver: the :class:`~diffsim.FEMSolver` holding the pad (the sensor registers
            itself: frames written by ``diffsim run`` then include its marker-flow image).
        body: the pad (:class:`~diffsim.FEMBody`).
        driver: the pad's back-plate :class:`~diffsim.Driver` (the sensor frame moves
            with it), or None for a sensor at rest.
        frame: 3x3 rotation whose columns are the sensor's two tangent axes and its
            normal (from the back plate towards the contact surface), at rest, in the
            world; default identity (a pad facing +z). Shear forces, the maps and the
            default camera and marker grid are laid out in this frame.
        camera: a :class:`~diffsim.tactile.cameras.Camera` in the rest frame; default an
            equidistant fisheye 640 x 480 behind the plate whose central ~60% of the
            image spans the pad.
        markers: ``"grid"`` (``marker_grid`` rows x cols over ``marker_extent`` of the
            footprint), ``"image"`` (dots detected in ``marker_image``, cast through the
            camera), or an (M, 3) array of rest-frame points (bound to the closest
            surface point).
        marker_image: path or array of a reference marker image (same size as the
            camera image); default the DiffTactile reference image when available.
        map_resolution: (H, W) of the depth and pressure maps.
        name: label in outputs.
    """

    def __init__(self, solver, body, driver=None, frame=None, camera: Camera | None = None,
                 markers="grid", marker_grid=(10, 14), marker_extent=0.7, marker_image=None,
                 map_resolution=(64, 64), name: str = "sensor"):
        self.solver, self.body, self.driver, self.name = solver, body, driver, name
        Rf = np.eye(3) if frame is None else np.asarray(frame, np.float64)
        if Rf.shape != (3, 3) or not np.allclose(Rf.T @ Rf, np.eye(3), atol=1e-9) or np.linalg.det(Rf) < 0:
            raise InvalidScene("TactileSensor: frame must be a 3x3 rotation (columns: two tangents, normal)")
        self.frame = Rf
        self.t1, self.t2, self.normal = Rf[:, 0], Rf[:, 1], Rf[:, 2]
        X = body.mesh.vertices
        faces = body.surface - body.start                   # local node indices
        tri = X[faces]
        fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        fn /= np.linalg.norm(fn, axis=1, keepdims=True)
        self.faces = faces[fn @ self.normal > 0.3]          # the contact side
        if len(self.faces) == 0:
            raise InvalidScene(f"TactileSensor: body {body.name!r} has no surface facing {self.normal}")
        self.nodes = np.unique(self.faces)                  # contact-surface nodes (local)
        self.X = X
        h = X @ self.normal
        self.center = X.mean(0) - self.normal * (X.mean(0) @ self.normal - h.min())   # on the plate
        uv = np.stack([X @ self.t1, X @ self.t2], 1)
        self.uv_lo, self.uv_hi = uv[self.nodes].min(0), uv[self.nodes].max(0)
        self.top = float(h.max())
        self.camera = camera if camera is not None else self._default_camera()
        self._bind_markers(markers, marker_grid, marker_extent, marker_image)
        self._bind_map(map_resolution)
        areas = np.zeros(len(X))
        a = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
        np.add.at(areas, faces.ravel(), np.repeat(a / 3.0, 3))
        self.node_area = areas
        self.ref_px = np.asarray(self.camera.project(self._marker_points(X)), np.float64)
        solver.add_instrument(self)

    # ------------------------------------------------------------------ as an instrument of the solver
    def readings(self, x, contact_force) -> dict:
        """Diagnostics entries (traced by ``diffsim run``): normal and shear force (N) and
        the largest marker displacement (px)."""
        r = self.read(x, contact_force)
        return {f"{self.name}_normal_force": float(r["normal_force"]),
                f"{self.name}_shear_force": [float(v) for v in r["shear_force"]],
                f"{self.name}_max_marker_px": float(np.abs(r["displacement_px"]).max())}

    def images(self, x) -> dict:
        """Frame images: the marker flow."""
        return {f"{self.name}_markers": self.flow_image(x)}

    # ------------------------------------------------------------------ setup
    def _default_camera(self) -> Camera:
        width = float(np.max(self.uv_hi - self.uv_lo))
        dist = 0.6 * width + (self.top - self.center @ self.normal)
        eye = self.center - self.normal * 0.6 * width
        up = -self.t2                                        # image v grows along t2
        theta = math.atan(0.5 * width / dist)
        return FisheyeCamera(640, 480, f=0.6 * 240 / theta, position=eye,
                             rotation=look_at(eye, eye + self.normal, up))

    def _cast(self, origins, dirs):
        face, bary, t = ray_mesh_intersect(origins, dirs, self.X, self.faces)
        return face, bary

    def _bind_markers(self, markers, grid, extent, image):
        if isinstance(markers, str) and markers == "grid":
            rows, cols = grid
            mid = 0.5 * (self.uv_lo + self.uv_hi)
            half = 0.5 * extent * (self.uv_hi - self.uv_lo)
            uv = grid_markers(int(rows), int(cols), mid - half, mid + half)
            face, bary = self._cast_down(uv)
        elif isinstance(markers, str) and markers == "image":
            if image is None:
                image = default_marker_image()
            px = detect_markers(image)
            origins = np.broadcast_to(self.camera.position, (len(px), 3))
            face, bary = self._cast(origins, self.camera.rays(px))
        elif isinstance(markers, str):
            raise InvalidScene(f"TactileSensor: markers must be 'grid', 'image' or an (M, 3) array, got {markers!r}")
        else:
            pts = np.asarray(markers, np.float64)
            if pts.ndim != 2 or pts.shape[1] != 3:
                raise InvalidScene("TactileSensor: marker points must be an (M, 3) array in m")
            face, bary, _ = bind_to_surface(pts, self.X, self.faces)
        keep = face >= 0
        if not keep.any():
            raise InvalidScene("TactileSensor: no marker lands on the contact surface (check the camera "
                               "and the marker layout)")
        self.marker_tri = self.faces[face[keep]]             # (M, 3) local node indices
        self.marker_bary = bary[keep]
        self.markers_dropped = int((~keep).sum())

    def _cast_down(self, uv):
        """Rays along -normal through tangent-plane points ``uv``; a ray that slips between
        two triangles through rounding is cast again a hair (1e-7 of the pad) aside."""
        o = (uv[:, :1] * self.t1 + uv[:, 1:] * self.t2) + self.normal * (self.top + 1.0)
        face, bary = self._cast(o, np.broadcast_to(-self.normal, o.shape))
        miss = face < 0
        if miss.any():
            nudge = 1e-7 * float(np.max(self.uv_hi - self.uv_lo)) * (self.t1 + self.t2)
            f2, b2 = self._cast(o[miss] + nudge, np.broadcast_to(-self.normal, (int(miss.sum()), 3)))
            face[miss], bary[miss] = f2, b2
        return face, bary

    def _bind_map(self, res):
        H, W = int(res[0]), int(res[1])
        if H < 2 or W < 2:
            raise InvalidScene("TactileSensor: map_resolution must be at least (2, 2)")
        eps = 1e-6 * (self.uv_hi - self.uv_lo)            # edge pixels hit the surface robustly
        us = np.linspace(self.uv_lo[0] + eps[0], self.uv_hi[0] - eps[0], W)
        vs = np.linspace(self.uv_lo[1] + eps[1], self.uv_hi[1] - eps[1], H)
        U, V = np.meshgrid(us, vs)
        face, bary = self._cast_down(np.stack([U.ravel(), V.ravel()], 1))
        self.map_shape = (H, W)
        self.map_hit = face >= 0
        self.map_tri = np.where(self.map_hit[:, None], self.faces[np.maximum(face, 0)], 0)
        self.map_bary = np.where(self.map_hit[:, None], np.nan_to_num(bary), 0.0)

    # ------------------------------------------------------------------ readout
    @property
    def marker_count(self) -> int:
        return len(self.marker_tri)

    def _marker_points(self, x):
        return (self.marker_bary[:, :, None] * x[self.marker_tri]).sum(1) if not _is_torch(x) else \
            (_t(self.marker_bary, x)[:, :, None] * x[_t(self.marker_tri, x, int)]).sum(1)

    def to_sensor_frame(self, x, translation=None, rotation=None):
        """World points -> rest frame, undoing the driver's pose (``translation`` (3,),
        ``rotation`` (3,3); default: the driver's current pose)."""
        if self.driver is None:
            return x
        if translation is None:
            translation, rotation = self.driver.translation, self.driver.rotation
        c = self.driver.center
        if _is_torch(x):
            import torch
            T = torch.as_tensor(translation, dtype=x.dtype)
            R = torch.as_tensor(rotation, dtype=x.dtype)
            cc = torch.as_tensor(c, dtype=x.dtype)
            return (x - cc - T) @ R + cc
        return (np.asarray(x) - c - translation) @ np.asarray(rotation) + c

    def read(self, x, force=None, translation=None, rotation=None) -> dict:
        """Sensor readings from the pad's node positions ``x`` (all solver nodes (N,3) or
        the body's (V,3), world, m) and contact forces ``force`` (same rows, N); numpy or
        torch (differentiable). ``translation``/``rotation``: the driver's pose when ``x``
        is not the solver's current state (e.g. a record of :func:`~diffsim.rollout`)."""
        b = self.body
        if x.shape[0] != len(self.X):
            x = x[b.start:b.stop]
            force = None if force is None else force[b.start:b.stop]
        xs = self.to_sensor_frame(x, translation, rotation)
        torch_in = _is_torch(xs)
        m = self._marker_points(xs)
        px = self.camera.project(m)
        ref = _t(self.ref_px, xs) if torch_in else self.ref_px
        n = _t(self.normal, xs) if torch_in else self.normal
        X = _t(self.X, xs) if torch_in else self.X
        depth_node = (X - xs) @ n                                  # pushed in along -normal (m)
        out = {"markers_px": px, "displacement_px": px - ref,
               "depth": self._map(depth_node, xs)}
        if force is not None:
            f = self._rotate_back(force, rotation)
            nodes = _t(self.nodes, xs, int) if torch_in else self.nodes
            local = f[nodes] @ (_t(self.frame, xs) if torch_in else self.frame)   # (t1, t2, n) components
            out["force_field"] = local
            out["normal_force"] = -local[:, 2].sum()
            out["shear_force"] = local[:, :2].sum(0)
            area = _t(np.maximum(self.node_area, 1e-30), xs) if torch_in else np.maximum(self.node_area, 1e-30)
            out["pressure"] = self._map(-(f @ n) / area, xs)
        return out

    def _rotate_back(self, vec, rotation=None):
        """World vectors -> rest frame (the driver's rotation undone)."""
        if self.driver is None:
            return vec
        R = self.driver.rotation if rotation is None else rotation
        if _is_torch(vec):
            import torch
            return vec @ torch.as_tensor(R, dtype=vec.dtype)
        return np.asarray(vec) @ np.asarray(R)

    def _map(self, node_values, like):
        H, W = self.map_shape
        if _is_torch(like):
            vals = (node_values[_t(self.map_tri, like, int)] * _t(self.map_bary, like)).sum(1)
            return (vals * _t(self.map_hit.astype(float), like)).reshape(H, W)
        vals = (node_values[self.map_tri] * self.map_bary).sum(1) * self.map_hit
        return vals.reshape(H, W)

    def flow_image(self, x=None, scale: float = 5.0) -> np.ndarray:
        """Marker-flow picture (H, W, 3 uint8) of the current state (or of ``x``)."""
        if x is None:
            x = self.solver.positions()
        px = np.asarray(self.read(np.asarray(x))["markers_px"], np.float64)
        return marker_flow_image(self.ref_px, px, self.camera.width, self.camera.height, scale=scale)

    def describe(self) -> dict:
        return {"name": self.name, "body": self.body.name, "markers": self.marker_count,
                "markers_dropped": self.markers_dropped, "camera": self.camera.describe(),
                "frame": self.frame.tolist(), "map_resolution": list(self.map_shape)}


def _t(a, like, kind=float):
    import torch
    if kind is int:
        return torch.as_tensor(np.asarray(a), dtype=torch.long)
    return torch.as_tensor(np.asarray(a, np.float64), dtype=like.dtype)


def default_marker_image():
    """The DiffTactile marker reference image shipped in ``scenes/data/difftactile``."""
    from pathlib import Path
    cand = Path(__file__).resolve().parents[2] / "scenes" / "data" / "difftactile" / "marker_reference_640x480.png"
    if cand.exists():
        return str(cand)
    raise InvalidScene("no marker image given and the DiffTactile reference image was not found; pass "
                       "marker_image=PATH or use markers='grid'")


FACING_DOWN = np.diag([1.0, -1.0, -1.0])     # a pad's +z (its contact side) turned to -z


def facing_rotation(facing=(0.0, 0.0, -1.0)) -> np.ndarray:
    """The rotation that turns a pad's +z (its contact side) to the unit vector ``facing``:
    :data:`FACING_DOWN` for -z, the identity for +z, otherwise the smallest rotation
    (about ``z x facing``); e.g. +x gives the tangents (0, 0, -1), (0, 1, 0)."""
    f = np.asarray(facing, np.float64).reshape(3)
    norm = float(np.linalg.norm(f))
    if not (np.isfinite(norm) and norm > 0):
        raise InvalidScene(f"mount_sensor: facing must be a nonzero vector, got {facing}")
    f = f / norm
    if f[2] < -1.0 + 1e-12:
        return FACING_DOWN.copy()
    v = np.array([-f[1], f[0], 0.0])                 # z x f
    K = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + K + K @ K / (1.0 + f[2])


def mount_sensor(sim, mesh, material, contact=None, apex=(0.0, 0.0, 0.0), velocity=(0, 0, 0),
                 angular_velocity=(0, 0, 0), name="sensor", facing=(0.0, 0.0, -1.0), **sensor_options):
    """Add a pad (built with its back plate at z = 0 and contact side up, as
    :func:`~diffsim.dome_pad` / :func:`~diffsim.flat_pad`) to ``sim`` with its contact side
    turned to ``facing`` (a unit vector, default down; e.g. (1, 0, 0) for a gripper finger
    pressing along +x; the rotation: :func:`facing_rotation`), its foremost contact point
    (along ``facing``) at ``apex``; drive its back plate with ``velocity`` /
    ``angular_velocity`` (constants or functions of time) and attach a
    :class:`TactileSensor` whose frame is that rotation (so readings are in the pad's own
    tangents and normal). Returns ``(body, driver, sensor)``."""
    R = facing_rotation(facing)
    f = R[:, 2]
    h = float(mesh.vertices[:, 2].max())
    apex = np.asarray(apex, np.float64).reshape(3)
    position = apex - h * f                          # where the back plate's centre goes
    body = sim.add_body(mesh, material, contact=contact, position=position, rotation=R, name=name)
    plate = body.nodes_where(lambda X: (X - position) @ f < 1e-9)   # the back face (mesh z = 0)
    driver = sim.add_driver(body, plate, velocity=velocity, angular_velocity=angular_velocity, name=f"{name}_plate")
    return body, driver, TactileSensor(sim, body, driver, frame=R, name=name, **sensor_options)
