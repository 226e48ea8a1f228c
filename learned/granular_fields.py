"""Granular flow as fields: a hopper run's spheres deposited on a grid of the (x, z) plane.

NeuralDEM treats the material as continuous fields rather than particles. For a plane
(wedge) hopper the fields are depth-averaged over y, on the nodes of a regular grid:

- ``occupancy``: solid volume fraction (0 empty, ~0.6 packed);
- ``velocity`` (vx, vz, m/s) and ``displacement`` (dx, dz, m since frame 0): mass averages;
- ``exit_time``: mass-averaged time (s) until the material there leaves through the
  outlet, censored at the end of the run (material that never leaves counts as leaving
  one frame after the end).

Deposits use bilinear (cloud-in-cell) weights, so the fields are smooth in the spheres'
positions and integrate to the spheres' volume exactly.
"""
from __future__ import annotations

import math

import numpy as np

from diffsim.errors import InvalidScene

FIELDS = ("occupancy", "vx", "vz", "dx", "dz", "exit_time")
CONDITIONS = ("angle", "friction", "rolling_friction")


class FieldGrid:
    """Nodes ``x_k = lo_x + k h`` (k < nx), ``z_k = lo_z + k h`` (k < nz), ``depth`` m deep."""

    def __init__(self, lo, hi, spacing: float, depth: float):
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        if lo.shape != (2,) or hi.shape != (2,) or not np.all(hi > lo) or not spacing > 0 or not depth > 0:
            raise InvalidScene(f"FieldGrid: need lo < hi (x, z), spacing > 0 and depth > 0; got {lo}, {hi}, "
                               f"{spacing}, {depth}")
        self.h, self.depth = float(spacing), float(depth)
        self.shape = tuple(int(math.ceil((b - a) / self.h)) + 1 for a, b in zip(lo, hi))
        self.lo = lo
        self.hi = lo + self.h * (np.asarray(self.shape) - 1)

    def nodes(self) -> np.ndarray:
        """(nx, nz, 2) node coordinates (x, z)."""
        xs = self.lo[0] + self.h * np.arange(self.shape[0])
        zs = self.lo[1] + self.h * np.arange(self.shape[1])
        return np.stack(np.meshgrid(xs, zs, indexing="ij"), -1)

    def _corners(self, xz: np.ndarray):
        """The four bilinear corners of points ``xz`` (N, 2): (node i, node k, weight) each,
        from the cell whose lower corner is ``floor((xz - lo) / h)``."""
        u = (np.asarray(xz, float) - self.lo) / self.h
        i0 = np.floor(u).astype(np.int64)
        f = u - i0
        for di in (0, 1):
            for dk in (0, 1):
                w = (f[:, 0] if di else 1 - f[:, 0]) * (f[:, 1] if dk else 1 - f[:, 1])
                yield i0[:, 0] + di, i0[:, 1] + dk, w

    def deposit(self, xz: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Bilinear deposit of ``weights`` (N, C) at points ``xz`` (N, 2) onto the nodes:
        (nx, nz, C). Points outside the grid are dropped."""
        nx, nz = self.shape
        out = np.zeros((nx * nz, weights.shape[1]))
        for i, k, w in self._corners(xz):
            ok = (i >= 0) & (i < nx) & (k >= 0) & (k < nz)
            idx = i[ok] * nz + k[ok]
            for c in range(weights.shape[1]):
                out[:, c] += np.bincount(idx, w[ok] * weights[ok, c], minlength=nx * nz)
        return out.reshape(nx, nz, -1)

    def sample(self, field: np.ndarray, xz: np.ndarray) -> np.ndarray:
        """Bilinear interpolation of node values ``field`` (..., nx, nz) at points ``xz``
        (P, 2) inside the grid (clipped to it): (..., P)."""
        top = self.hi - 1e-9 * self.h          # the last cell's far edge stays in that cell
        return sum(w * field[..., i, k] for i, k, w in self._corners(np.clip(xz, self.lo, top)))


def slot_line(orifice: float, spacing: float, x0: float) -> tuple[np.ndarray, float]:
    """Points (P, 2) across a hopper's slot on the line z = 0 at the x of the grid's nodes
    (``x0 + k spacing``) reaching two spacings past each edge, and their spacing (m): where
    the outflow is the flux of the fields. On the nodes' x the trapezoid of the deposited
    momentum is exact (the bilinear weights sum to one); points between them made the
    data's flux 3% low (the product of interpolated occupancy and velocity)."""
    half = 0.5 * orifice + 2 * spacing
    k = np.arange(math.ceil((-half - x0) / spacing - 1e-9), math.floor((half - x0) / spacing + 1e-9) + 1)
    xs = x0 + spacing * k
    return np.stack([xs, np.zeros_like(xs)], -1), float(spacing)


def hopper_fields(traj, grid: FieldGrid, outlet_z: float = -0.03) -> dict:
    """The fields of one recorded hopper run (a :class:`diffsim.Trajectory` of
    ``scenes/dem_hopper.py``) on ``grid``: ``{"time": (F,), FIELD: (F, nx, nz)}`` with time
    in s after the gate opened (frames before it are dropped), and ``conditions`` (the
    run's angle, friction, rolling friction) and ``total_mass`` (kg)."""
    opts = (traj.metadata.get("scene") or {}).get("options") or {}
    missing = [k for k in (*CONDITIONS, "radius", "fill_time") if k not in opts]
    if missing:
        raise InvalidScene(f"{traj.path}: not a dem_hopper run (its options lack {missing})")
    if traj.velocities is None:
        raise InvalidScene(f"{traj.path}: hopper fields need the recorded velocities")
    x = np.asarray(traj.positions, float)
    v = np.asarray(traj.velocities, float)
    times = np.arange(x.shape[0]) * traj.dt - float(opts["fill_time"])
    start = int(np.argmax(times >= -1e-9))
    x, v, times = x[start:], v[start:], times[start:]
    radius = float(opts["radius"])
    volume = 4.0 / 3.0 * math.pi * radius ** 3
    inside = x[..., 2] >= outlet_z                       # (F, N): spheres not yet discharged
    left = ~inside
    first_out = np.where(left.any(0), np.argmax(left, 0), x.shape[0])
    t_exit = np.where(first_out < x.shape[0], times[np.minimum(first_out, x.shape[0] - 1)],
                      times[-1] + traj.dt)                # censored one frame after the end
    cell = grid.h * grid.h * grid.depth
    out = {name: [] for name in FIELDS}
    for f in range(x.shape[0]):
        keep = inside[f]
        xz = x[f, keep][:, [0, 2]]
        w = np.concatenate([np.ones((keep.sum(), 1)), v[f, keep][:, [0, 2]],
                            (x[f, keep] - x[0, keep])[:, [0, 2]], (t_exit[keep] - times[f])[:, None]], 1)
        dep = grid.deposit(xz, w)
        mass = dep[..., 0]
        mean = dep[..., 1:] / np.maximum(mass, 1e-12)[..., None] * (mass > 1e-6)[..., None]
        out["occupancy"].append(mass * volume / cell)
        for j, name in enumerate(FIELDS[1:]):
            out[name].append(mean[..., j])
    fields = {k: np.stack(a).astype(np.float32) for k, a in out.items()}
    density = float(opts.get("density", 2500.0))   # the scene's default before it was an option
    return {"time": times.astype(np.float32), **fields,
            "conditions": np.array([float(opts[k]) for k in CONDITIONS], np.float32),
            "total_mass": float(x.shape[1] * volume * density), "path": traj.path}


def exit_order_from_fields(occupancy: np.ndarray, exit_time: np.ndarray, nodes: np.ndarray, angle: float,
                           orifice: float, radius: float) -> float:
    """The exit-order ratio of :mod:`diffsim.dem.discharge` from the fields at the gate's
    opening (flattened to (Q,), (Q,), (Q, 2)): the occupancy-weighted mean exit time of the
    shoulders' nodes over that of the top's (:func:`diffsim.dem.discharge.order_sets` on
    the nodes with material, occupancy > 0.1). NaN when a set is empty."""
    from diffsim.dem.discharge import order_sets
    occ = np.asarray(occupancy, float)
    keep = occ > 0.1
    w, t = occ[keep], np.asarray(exit_time, float)[keep]
    shoulders, top = order_sets(nodes[keep], angle, orifice, radius, weights=w)
    if not shoulders.any() or not top.any():
        return float("nan")
    mean = lambda sel: (w[sel] * t[sel]).sum() / w[sel].sum()  # noqa: E731
    return float(mean(shoulders) / max(mean(top), 1e-12))
