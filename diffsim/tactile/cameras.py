"""Cameras for vision-based tactile sensors: pinhole and equidistant fisheye models.

A camera inside a GelSight/DiffTactile-like sensor looks at the elastomer's inner surface;
:meth:`Camera.project` maps simulated 3D marker positions to pixels, differentiably when
given torch tensors, and :meth:`Camera.rays` maps pixels back to viewing rays.

Conventions
-----------
- World coordinates in metres. ``position`` is the camera centre in the world and
  ``rotation`` the camera -> world rotation: its columns are the camera axes in world
  coordinates, so ``p_cam = rotation.T @ (p_world - position)``.
- Camera frame as in OpenCV: ``x`` right, ``y`` down, ``z`` forward (viewing direction).
- Pixels ``(u, v)``: ``u`` to the right (column), ``v`` down (row), with the **centre** of
  the top-left pixel at ``(0, 0)``; the image covers ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``
  and the default principal point is the image centre ``((W - 1) / 2, (H - 1) / 2)``.
  (Same convention as :func:`diffsim.tactile.markers.detect_markers`.)
- Focal lengths in pixels (pinhole: pixels; fisheye: pixels per radian).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["Camera", "PinholeCamera", "FisheyeCamera", "look_at"]


def _is_torch(x) -> bool:
    """True for a torch tensor (torch is only imported when the caller uses it)."""
    return type(x).__module__.startswith("torch")


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera -> world rotation ``(3, 3)`` of a camera at ``eye`` looking at ``target``.

    OpenCV axes: the camera's ``z`` points from ``eye`` to ``target``, its ``y`` (image
    down) points as much against the world ``up`` vector as possible, ``x = y cross z``
    (image right). ``eye``, ``target`` in metres, ``up`` any non-zero vector not parallel
    to the viewing direction.
    """
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    if eye.shape != (3,) or target.shape != (3,) or up.shape != (3,):
        raise ValueError("eye, target and up must be 3-vectors")
    z = target - eye
    nz = np.linalg.norm(z)
    if not nz > 0:
        raise ValueError(f"eye and target must differ, both are {eye}")
    z = z / nz
    x = np.cross(z, up)
    nx = np.linalg.norm(x)
    if not nx > 1e-9 * max(np.linalg.norm(up), 1e-300):
        raise ValueError(f"up {up} is parallel to the viewing direction {z}; pick another up")
    x = x / nx
    return np.stack([x, np.cross(z, x), z], axis=1) + 0.0  # + 0.0: no negative zeros


def _positive(name, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return v


class Camera:
    """Base class: image size, intrinsics ``fx, fy, cx, cy`` and the camera pose.

    Subclasses implement the lens model through ``_project_cam`` (camera frame -> pixels,
    numpy or torch) and ``_unproject`` (pixels -> unit directions in the camera frame,
    numpy).

    Parameters
    ----------
    width, height : int
        Image size in pixels.
    fx, fy : float
        Focal lengths in pixels (fisheye: pixels per radian); ``fy`` defaults to ``fx``.
    cx, cy : float, optional
        Principal point in pixels; default the image centre ``((W-1)/2, (H-1)/2)``.
    position : (3,) array_like
        Camera centre in the world, m.
    rotation : (3, 3) array_like, optional
        Camera -> world rotation (orthonormal, det +1); default identity. See
        :func:`look_at`.
    """

    model = "camera"

    def __init__(self, width, height, fx, fy=None, cx=None, cy=None,
                 position=(0.0, 0.0, 0.0), rotation=None):
        for name, n in (("width", width), ("height", height)):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ValueError(f"{name} must be a positive integer (pixels), got {n!r}")
        self.width, self.height = int(width), int(height)
        self.fx = _positive("fx", fx)
        self.fy = self.fx if fy is None else _positive("fy", fy)
        self.cx = (self.width - 1) / 2.0 if cx is None else float(cx)
        self.cy = (self.height - 1) / 2.0 if cy is None else float(cy)
        if not (math.isfinite(self.cx) and math.isfinite(self.cy)):
            raise ValueError(f"principal point must be finite, got ({cx}, {cy})")
        pos = np.asarray(position, dtype=np.float64)
        if pos.shape != (3,) or not np.isfinite(pos).all():
            raise ValueError(f"position must be a finite (3,) vector in m, got {position!r}")
        rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
        if rot.shape != (3, 3) or not np.isfinite(rot).all():
            raise ValueError(f"rotation must be a finite (3, 3) matrix, got shape {rot.shape}")
        if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-6):
            raise ValueError("rotation must be orthonormal (R^T R = I); build it with look_at()")
        if np.linalg.det(rot) < 0:
            raise ValueError("rotation must be a proper rotation (det +1), got a reflection")
        self.position, self.rotation = pos, rot

    # ------------------------------------------------------------------ transforms

    def to_camera(self, points):
        """World points ``(..., 3)`` m -> camera-frame points ``(..., 3)`` m (same type)."""
        self._check_last(points, 3, "points")
        if _is_torch(points):
            import torch
            pos = torch.as_tensor(self.position, dtype=points.dtype, device=points.device)
            rot = torch.as_tensor(self.rotation, dtype=points.dtype, device=points.device)
            return (points - pos) @ rot
        return (np.asarray(points, dtype=np.float64) - self.position) @ self.rotation

    def project(self, points):
        """World points ``(..., 3)`` m -> pixels ``(..., 2)`` ``(u, v)``.

        numpy arrays (or lists) give numpy float64; torch tensors give tensors of the same
        dtype/device, built from torch ops so gradients flow to ``points`` (finite on the
        optical axis too). No visibility test: points behind the camera or outside the
        image still get (meaningless or non-finite) pixel values; mask them with
        :meth:`visible`.
        """
        pc = self.to_camera(points)
        if _is_torch(pc):
            import torch
            return self._project_cam(pc, torch)
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._project_cam(pc, np)

    def visible(self, points):
        """Bool mask ``(...)``: in front of the camera (inside its field of view) and
        projecting inside the image ``[-0.5, W - 0.5) x [-0.5, H - 0.5)``.

        Same array type as ``points`` (a torch bool tensor for tensors).
        """
        pc = self.to_camera(points)
        xp = np
        if _is_torch(pc):
            import torch
            xp = torch
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = self._project_cam(pc, xp)
        u, v = uv[..., 0], uv[..., 1]
        return (self._in_front(pc, xp) & (u >= -0.5) & (u < self.width - 0.5)
                & (v >= -0.5) & (v < self.height - 0.5))

    def rays(self, pixels) -> np.ndarray:
        """Pixels ``(..., 2)`` ``(u, v)`` -> unit viewing directions ``(..., 3)`` in the world.

        The inverse of :meth:`project`: ``project(position + depth * rays(px)) == px`` for
        any ``depth > 0``. numpy only (float64); the ray origin is :attr:`position`.
        """
        px = pixels.detach().cpu().numpy() if _is_torch(pixels) else pixels
        px = self._check_last(np.asarray(px, dtype=np.float64), 2, "pixels")
        return self._unproject(px[..., 0], px[..., 1]) @ self.rotation.T

    def describe(self) -> dict:
        """Plain-Python summary: model, size (px), intrinsics (px), pose (m) and the full
        horizontal/vertical field of view through the principal point (degrees)."""
        def fov(lo, hi, c, f):
            return math.degrees(self._angle((c - lo) / f) + self._angle((hi - c) / f))

        return {"model": self.model, "width": self.width, "height": self.height,
                "fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy,
                "position_m": self.position.tolist(), "rotation": self.rotation.tolist(),
                "fov_x_deg": fov(-0.5, self.width - 0.5, self.cx, self.fx),
                "fov_y_deg": fov(-0.5, self.height - 0.5, self.cy, self.fy)}

    def __repr__(self):
        return (f"{type(self).__name__}({self.width}x{self.height}, fx={self.fx:g}, "
                f"fy={self.fy:g}, cx={self.cx:g}, cy={self.cy:g}, "
                f"position={self.position.tolist()})")

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _check_last(a, n, name):
        shape = tuple(a.shape) if hasattr(a, "shape") else np.shape(a)
        if len(shape) == 0 or shape[-1] != n:
            raise ValueError(f"{name} must have shape (..., {n}), got {shape}")
        return a

    def _project_cam(self, pc, xp):  # pragma: no cover - abstract
        raise NotImplementedError

    def _unproject(self, u, v):  # pragma: no cover - abstract
        raise NotImplementedError

    def _in_front(self, pc, xp):  # pragma: no cover - abstract
        raise NotImplementedError

    def _angle(self, r):  # pragma: no cover - abstract
        """Off-axis angle (rad) of a normalised image radius ``r`` (pixels / focal)."""
        raise NotImplementedError


class PinholeCamera(Camera):
    """Ideal perspective camera: ``u = fx * x / z + cx``, ``v = fy * y / z + cy``.

    Points behind the camera (``z < 0``) are projected through the centre anyway (mirrored
    image positions; ``z = 0`` gives inf/NaN); :meth:`visible` is False for them. See
    :class:`Camera` for the parameters.
    """

    model = "pinhole"

    def _project_cam(self, pc, xp):
        z = pc[..., 2]
        return xp.stack([self.fx * pc[..., 0] / z + self.cx,
                         self.fy * pc[..., 1] / z + self.cy], -1)

    def _unproject(self, u, v):
        d = np.stack([(u - self.cx) / self.fx, (v - self.cy) / self.fy, np.ones_like(u)], -1)
        return d / np.linalg.norm(d, axis=-1, keepdims=True)

    def _in_front(self, pc, xp):
        return pc[..., 2] > 0

    def _angle(self, r):
        return math.atan(r)


class FisheyeCamera(Camera):
    """Equidistant fisheye: the image radius is proportional to the off-axis angle.

    ``theta = atan2(sqrt(x^2 + y^2), z)`` (rad), ``u = cx + fx * theta * x / r``,
    ``v = cy + fy * theta * y / r``, so ``|pixel - c| = f * theta`` for ``fx = fy = f``
    (pixels per radian). Points up to ``theta < pi`` (also behind the image plane) have a
    finite projection; the direction exactly opposite the view (``theta = pi``) has none
    (NaN). :meth:`visible` also requires ``theta <= max_angle``.

    Parameters: as :class:`Camera`, plus ``max_angle`` the half field of view in rad
    (default ``pi / 2``: a 180-degree lens). ``f`` is accepted as an alias of ``fx``.
    """

    model = "fisheye-equidistant"
    _SERIES = 1e-8  # (r/z)^2 below which theta/r uses its Taylor series (exact in f64)

    def __init__(self, width, height, fx=None, fy=None, cx=None, cy=None,
                 position=(0.0, 0.0, 0.0), rotation=None, max_angle=math.pi / 2, f=None):
        if (fx is None) == (f is None):
            raise ValueError("give the focal length (pixels per radian) as fx (and "
                             "optionally fy) or as f, exactly one of fx and f")
        super().__init__(width, height, fx if f is None else f, fy, cx, cy, position,
                         rotation)
        self.max_angle = _positive("max_angle", max_angle)
        if self.max_angle > math.pi:
            raise ValueError(f"max_angle must be at most pi rad, got {max_angle}")

    def _theta_over_r(self, pc, xp):
        """``theta / r`` with ``r = sqrt(x^2 + y^2)``, safe (and differentiable) at r = 0.

        Near the axis (``r^2 <= 1e-8 z^2``, ``z > 0``) it uses ``1/z - r^2 / (3 z^3)``;
        elsewhere ``atan2(r, z) / r``. Each branch is evaluated on harmless stand-in
        values where it is not selected, so no inf/NaN leaks into gradients.
        """
        x, y, z = pc[..., 0], pc[..., 1], pc[..., 2]
        r2 = x * x + y * y
        near = (r2 <= self._SERIES * z * z) & (z > 0)
        one = xp.ones_like(z)
        zs = xp.where(near, z, one)
        series = 1.0 / zs - r2 / (3.0 * zs ** 3)
        r = xp.sqrt(xp.where(near, one, r2))
        return xp.where(near, series, xp.arctan2(r, z) / r)

    def _project_cam(self, pc, xp):
        k = self._theta_over_r(pc, xp)
        return xp.stack([self.cx + self.fx * k * pc[..., 0],
                         self.cy + self.fy * k * pc[..., 1]], -1)

    def _unproject(self, u, v):
        mx, my = (u - self.cx) / self.fx, (v - self.cy) / self.fy
        theta = np.hypot(mx, my)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(theta > 1e-12, np.sin(theta) / np.where(theta > 1e-12, theta, 1.0),
                         1.0)
        d = np.stack([s * mx, s * my, np.cos(theta)], -1)
        d[theta > math.pi] = np.nan  # beyond the equidistant model's range
        return d

    def _in_front(self, pc, xp):
        x, y, z = pc[..., 0], pc[..., 1], pc[..., 2]
        theta = xp.arctan2(xp.sqrt(x * x + y * y), z)
        return theta <= self.max_angle

    def _angle(self, r):
        return min(abs(r), self.max_angle) * (1 if r >= 0 else -1)

    def describe(self) -> dict:
        out = super().describe()
        out["max_angle_deg"] = math.degrees(self.max_angle)
        return out
