"""Motion that diffsim did not simulate: particle positions from another simulator (or a
measurement), with what is needed to simulate the same body, loaded, checked and turned
into a trajectory a law can be trained on.

File format (``.npz``):

=================  ============================================================
key                content
=================  ============================================================
``positions``      (T, N, 3) float, m -- frame ``t`` is ``t * frame_dt`` after the start;
                   frame 0 is the body at rest shape (undeformed: F = I)
``frame_dt``       scalar, s
``volume``         scalar or (N,), m^3 per particle
``mass``           scalar or (N,), kg per particle (one body: uniform density)
``domain``         (2, 3), m -- the box [lo, hi] whose faces are the walls (the planes
                   the body cannot cross); diffsim puts its wall layers outside it
``walls``          optional JSON string ``{face: kind}``, faces ``-x +x -y +y -z +z``,
                   kinds ``sticky`` / ``slip`` / ``separate`` (default ``separate``
                   everywhere: the floor and the box's sides hold the body back)
``wall_friction``  optional JSON string ``{face: mu}`` (default 0)
``gravity``        optional (3,), m/s^2 (default (0, 0, -9.81))
=================  ============================================================

:func:`load_motion` raises :class:`~diffsim.trajectory.InvalidTrajectory` naming what is
wrong. :func:`estimate_state` recovers the full MPM state (x, v, C, F) that teacher forcing
restarts from, from positions alone: velocities by central differences in time, ``F`` and
the velocity gradient ``C`` by least squares over each particle's nearest neighbours (exact
for locally affine motion). ``scenes/external_motion.py`` builds the scene (the data's
particles, domain, walls and gravity) and :func:`to_trajectory` the data the trainer reads:

    diffsim import-motion motion.npz --out data.npz --grid 24
    diffsim train-law --data data.npz --kind potential --plastic ...
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .trajectory import InvalidTrajectory, Trajectory

FACES = ("-x", "+x", "-y", "+y", "-z", "+z")
WALL_KINDS = ("sticky", "slip", "separate")
SCENE = "external_motion"   # the built-in scene that simulates a motion file's body


@dataclass
class ExternalMotion:
    positions: np.ndarray      # (T, N, 3)
    frame_dt: float
    volume: np.ndarray         # (N,)
    mass: np.ndarray           # (N,)
    domain: np.ndarray         # (2, 3)
    walls: dict
    wall_friction: dict
    gravity: np.ndarray
    path: str | None = None

    @property
    def density(self) -> float:
        return float(np.mean(self.mass / self.volume))

    @property
    def spacing(self) -> float:
        """Median distance of a particle to its nearest neighbour at frame 0 (m)."""
        from scipy.spatial import cKDTree
        d, _ = cKDTree(self.positions[0]).query(self.positions[0], k=2)
        return float(np.median(d[:, 1]))


def _fail(where, msg):
    raise InvalidTrajectory(f"{where}: {msg}")


def _faces(where, raw, name, check):
    if raw is None:
        return {}
    try:
        d = json.loads(str(raw)) if not isinstance(raw, dict) else raw
    except json.JSONDecodeError as e:
        _fail(where, f"{name} must be a JSON object {{face: value}}: {e}")
    if not isinstance(d, dict):
        _fail(where, f"{name} must be a JSON object {{face: value}}, got {type(d).__name__}")
    bad = sorted(set(d) - set(FACES))
    if bad:
        _fail(where, f"{name}: unknown faces {bad}; faces are {list(FACES)}")
    for f, v in d.items():
        check(f, v)
    return dict(d)


def validate_motion(positions, frame_dt, volume, mass, domain, walls=None, wall_friction=None, gravity=None,
                    path=None) -> ExternalMotion:
    """An :class:`ExternalMotion` from arrays, or :class:`InvalidTrajectory` naming the problem."""
    w = f"motion {str(path)!r}" if path else "motion"
    p = np.asarray(positions)
    if p.ndim != 3 or p.shape[2] != 3 or p.shape[0] < 3 or p.shape[1] < 4:
        _fail(w, f"positions must have shape (T >= 3, N >= 4, 3), got {p.shape}")
    if not np.issubdtype(p.dtype, np.floating):
        _fail(w, f"positions must be floating point, got {p.dtype}")
    bad = ~np.isfinite(p)
    if bad.any():
        t, i, _ = np.argwhere(bad)[0]
        _fail(w, f"positions contain {int(bad.sum())} NaN/inf values (first at frame {t}, particle {i})")
    p = p.astype(np.float64)
    n = p.shape[1]
    try:
        frame_dt = float(frame_dt)
    except (TypeError, ValueError):
        _fail(w, f"frame_dt must be a number of seconds, got {frame_dt!r}")
    if not (np.isfinite(frame_dt) and frame_dt > 0):
        _fail(w, f"frame_dt must be > 0 s, got {frame_dt}")
    per = {}
    for name, v in (("volume", volume), ("mass", mass)):
        a = np.asarray(v, dtype=np.float64)
        if a.ndim == 0:
            a = np.full(n, float(a))
        if a.shape != (n,):
            _fail(w, f"{name} must be a scalar or one value per particle ({n},), got shape {a.shape}")
        if not np.all(np.isfinite(a) & (a > 0)):
            _fail(w, f"{name} must be finite and > 0 for every particle")
        per[name] = a
    rho = per["mass"] / per["volume"]
    if rho.max() > 1.01 * rho.min():
        _fail(w, f"mass / volume varies from {rho.min():.4g} to {rho.max():.4g} kg/m^3: one body of uniform "
                 f"density is expected (split the data by body)")
    dom = np.asarray(domain, dtype=np.float64)
    if dom.shape != (2, 3) or not np.all(np.isfinite(dom)) or np.any(dom[1] <= dom[0]):
        _fail(w, f"domain must be [[lo x, y, z], [hi x, y, z]] with hi > lo, got {np.asarray(domain).tolist()}")
    # the body starts inside the walls' box; later, particles of a grid-based simulation
    # sink a fraction of a cell into a wall, so 5% of the box's size is allowed
    margin = 0.05 * (dom[1] - dom[0])
    for where, frames, lo, hi in (("at frame 0", p[:1], dom[0], dom[1]),
                                  ("beyond the walls by more than 5% of the box", p, dom[0] - margin, dom[1] + margin)):
        outside = np.any((frames < lo) | (frames > hi), axis=2)
        if outside.any():
            t, i = np.argwhere(outside)[0]
            _fail(w, f"{int(outside.sum())} particle positions lie outside the domain {where} (first: frame {t}, "
                     f"particle {i} at {p[t, i].round(4).tolist()})")

    def kind_ok(f, k):
        if k not in WALL_KINDS:
            _fail(w, f"walls: face {f} has kind {k!r}; kinds are {list(WALL_KINDS)}")

    def mu_ok(f, mu):
        if not (isinstance(mu, (int, float)) and np.isfinite(mu) and mu >= 0):
            _fail(w, f"wall_friction: face {f} has {mu!r}; a friction coefficient >= 0 is expected")

    walls = _faces(w, walls, "walls", kind_ok)
    friction = _faces(w, wall_friction, "wall_friction", mu_ok)
    g = np.asarray((0.0, 0.0, -9.81) if gravity is None else gravity, dtype=np.float64)
    if g.shape != (3,) or not np.all(np.isfinite(g)):
        _fail(w, f"gravity must be 3 finite numbers (m/s^2), got {np.asarray(gravity).tolist()}")
    return ExternalMotion(p, frame_dt, per["volume"], per["mass"], dom, walls, friction, g,
                          str(path) if path else None)


def load_motion(path) -> ExternalMotion:
    """Read and check a motion file (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise InvalidTrajectory(f"motion {str(path)!r}: no such file")
    try:
        z = np.load(path, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zip or npy errors: a truncated or foreign file
        raise InvalidTrajectory(f"motion {str(path)!r}: not a readable .npz file ({type(e).__name__}: {e})") from None
    missing = [k for k in ("positions", "frame_dt", "volume", "mass", "domain") if k not in arrays]
    if missing:
        raise InvalidTrajectory(f"motion {str(path)!r}: lacks {missing} (see diffsim.external for the format)")
    opt = {k: (arrays[k] if k == "gravity" else str(arrays[k])) for k in ("walls", "wall_friction", "gravity")
           if k in arrays}
    return validate_motion(arrays["positions"], arrays["frame_dt"], arrays["volume"], arrays["mass"],
                           arrays["domain"], path=path, **opt)


def save_motion(path, motion: ExternalMotion):
    """Write a motion file atomically (the format above)."""
    from .io import _atomic_path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, positions=motion.positions, frame_dt=np.asarray(motion.frame_dt), volume=motion.volume,
                 mass=motion.mass, domain=motion.domain, walls=np.asarray(json.dumps(motion.walls)),
                 wall_friction=np.asarray(json.dumps(motion.wall_friction)), gravity=motion.gravity)


def _local_fit(rel_from: np.ndarray, rel_to: np.ndarray) -> np.ndarray:
    """Least-squares linear maps ``A`` (N,3,3) with ``rel_to ~ A rel_from`` over each
    particle's neighbours (N,k,3)."""
    M = np.einsum("nki,nkj->nij", rel_from, rel_from)
    B = np.einsum("nki,nkj->nij", rel_to, rel_from)
    return B @ np.linalg.inv(M)


def _frame_velocities(x: np.ndarray, frame_dt: float) -> np.ndarray:
    """Central differences in time, second-order one-sided at the ends (exact for motion
    quadratic in time)."""
    v = np.empty_like(x)
    v[1:-1] = (x[2:] - x[:-2]) / (2 * frame_dt)
    v[0] = (-3 * x[0] + 4 * x[1] - x[2]) / (2 * frame_dt)
    v[-1] = (3 * x[-1] - 4 * x[-2] + x[-3]) / (2 * frame_dt)
    return v


def estimate_state(positions: np.ndarray, frame_dt: float, neighbours: int = 26):
    """``(velocities, affine, deformation)`` of every frame from positions alone:
    ``v`` by central differences in time (second-order one-sided at the ends), ``F`` by the
    least-squares map from each particle's neighbours at frame 0 to the same neighbours
    now, ``C`` by the least-squares velocity gradient over the same neighbours now. Exact
    for motions that are locally affine in space and quadratic in time."""
    from scipy.spatial import cKDTree
    x = np.asarray(positions, dtype=np.float64)
    T, n, _ = x.shape
    k = min(int(neighbours), n - 1)
    if k < 3:
        raise InvalidTrajectory(f"state estimation needs at least 4 particles, got {n}")
    _, nb = cKDTree(x[0]).query(x[0], k=k + 1)
    nb = nb[:, 1:]
    v = _frame_velocities(x, frame_dt)
    X_rel = x[0][nb] - x[0][:, None, :]
    F = np.empty((T, n, 3, 3))
    C = np.empty((T, n, 3, 3))
    for t in range(T):
        x_rel = x[t][nb] - x[t][:, None, :]
        F[t] = _local_fit(X_rel, x_rel)
        C[t] = _local_fit(x_rel, v[t][nb] - v[t][:, None, :])
    F[0] = np.eye(3)   # frame 0 is the rest shape
    return v, C, F


def cell_size(motion: ExternalMotion, grid: int) -> float:
    """MPM cell size (m) for ``grid`` cells along the walls' box's longest side."""
    return float((motion.domain[1] - motion.domain[0]).max()) / int(grid)


def substeps_per_frame(motion: ExternalMotion, grid: int, stiffness: float, nu: float = 0.3) -> int:
    """Substeps per frame for an explicit MPM of the data's body at ``grid`` cells along the
    walls' box's longest side, with a material of Young's modulus ``stiffness`` (Pa): the
    largest substep below both 1 ms and 0.2 dx / (elastic wave speed)."""
    dx = cell_size(motion, grid)
    lam = stiffness * nu / ((1 + nu) * (1 - 2 * nu))
    mu = stiffness / (2 * (1 + nu))
    c = np.sqrt((lam + 2 * mu) / motion.density)
    return int(np.ceil(motion.frame_dt / min(1e-3, 0.2 * dx / c)))


def integrator_shift(motion: ExternalMotion, substeps: int) -> np.ndarray:
    """What to subtract from a velocity estimated from positions to get the MPM's state
    velocity: the MPM steps ``v += dt g`` before ``x += dt v``, so in free flight its
    positions follow the parabola of initial velocity ``v + g dt / 2``; starting from
    ``v_estimate - g dt / 2`` it reproduces the data's parabola exactly."""
    return motion.gravity * (motion.frame_dt / substeps) / 2


def initial_velocity(motion: ExternalMotion, substeps: int) -> np.ndarray:
    """The MPM state velocity (N,3) of frame 0: estimated from the first three frames,
    shifted by :func:`integrator_shift`."""
    return _frame_velocities(motion.positions[:3], motion.frame_dt)[0] - integrator_shift(motion, substeps)


def to_trajectory(motion: ExternalMotion, grid: int = 24, stiffness: float = 1e4, substeps: int | None = None,
                  neighbours: int = 26) -> Trajectory:
    """A full-state :class:`~diffsim.trajectory.Trajectory` (estimated state) whose scene is
    ``scenes/external_motion.py`` with this motion file (``motion.path`` must be set: the
    scene reads the file). ``stiffness`` (Pa): the order of the material's Young's modulus,
    for the time step and the law's output scale."""
    if motion.path is None:
        raise InvalidTrajectory("to_trajectory needs a motion loaded from a file (the scene reads it); "
                                "save_motion it first")
    substeps = int(substeps or substeps_per_frame(motion, grid, stiffness))
    v, C, F = estimate_state(motion.positions, motion.frame_dt, neighbours)
    v = v - integrator_shift(motion, substeps)
    T, n, _ = motion.positions.shape
    options = {"data": str(Path(motion.path).resolve()), "grid": int(grid), "substeps": substeps,
               "stiffness": float(stiffness)}
    meta = {"format": 1, "substep_dt": motion.frame_dt / substeps, "frame_every": substeps,
            "n_particles_scene": n, "scene": {"name": SCENE, "script": SCENE, "options": options},
            "bodies": [{"name": "body", "start": 0, "count": n, "material": {"model": "unknown"}}],
            "source": {"motion": str(motion.path), "state": "estimated from positions"}}
    return Trajectory(motion.positions, motion.frame_dt, meta, velocities=v, deformation=F, affine=C)
