"""Trajectory data: observed particle positions over time, for fitting and learning.

File format (``.npz``):

==================  ===========================================================
key                 content
==================  ===========================================================
``positions``       (T, N, 3) float, m -- frame ``t`` is ``t * frame_dt`` after the start
``velocities``      optional (T, N, 3) float, m/s
``deformation``     optional (T, N, 3, 3) -- the solver's deformation gradients ``F``
``affine``          optional (T, N, 3, 3) 1/s -- the APIC matrices ``C`` (with
                    ``velocities`` and ``deformation``: the full MPM state, which
                    teacher forcing needs to restart a rollout from any frame)
``particle_ids``    optional (N,) int -- which scene particles were observed (default
                    all, in order); lets a file hold a subsample or the surface only
``dt``              scalar float, s -- time between frames
``metadata``        JSON string: ``format``, ``substep_dt`` (s), ``frame_every``
                    (substeps per frame), ``scene`` (name, script, options),
                    ``n_particles_scene``, ``bodies`` (name, start, count, material),
                    ``observation`` (subsample, noise, surface_only, seed)
==================  ===========================================================

:func:`load_trajectory` validates shapes, dtypes, finiteness and metadata and raises
:class:`InvalidTrajectory` naming what is wrong; :meth:`Trajectory.check_scene` checks
that a scene can reproduce the data (same particle count, time step, frame spacing).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DiffsimError

FORMAT = 1
REQUIRED = ("positions", "dt", "metadata")
REQUIRED_META = ("format", "substep_dt", "frame_every", "n_particles_scene", "scene")


class InvalidTrajectory(DiffsimError, ValueError):
    """A trajectory file or array is malformed or does not match its scene."""


@dataclass
class Trajectory:
    """Observed particle positions ``(T, N, 3)`` (m) every ``dt`` seconds."""
    positions: np.ndarray
    dt: float
    metadata: dict
    velocities: np.ndarray | None = None
    particle_ids: np.ndarray | None = None
    deformation: np.ndarray | None = None
    affine: np.ndarray | None = None
    path: str | None = field(default=None, repr=False)

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ properties
    @property
    def frames(self) -> int:
        return self.positions.shape[0]

    @property
    def observed(self) -> int:
        return self.positions.shape[1]

    @property
    def frame_every(self) -> int:
        return int(self.metadata["frame_every"])

    @property
    def substep_dt(self) -> float:
        return float(self.metadata["substep_dt"])

    @property
    def full_state(self) -> bool:
        """True when every particle's x, v, C and F are recorded (teacher forcing possible)."""
        return (self.particle_ids is None and self.velocities is not None and self.deformation is not None
                and self.affine is not None)

    @property
    def ids(self) -> np.ndarray:
        """Indices of the observed particles in the scene (all when not subsampled)."""
        if self.particle_ids is None:
            return np.arange(self.observed)
        return self.particle_ids

    def _where(self):
        return f"trajectory {self.path!r}" if self.path else "trajectory"

    # ------------------------------------------------------------------ checks
    def validate(self):
        w = self._where()
        p = np.asarray(self.positions)
        if p.ndim != 3 or p.shape[2] != 3:
            raise InvalidTrajectory(f"{w}: positions must have shape (T, N, 3), got {p.shape}")
        if p.shape[0] < 2 or p.shape[1] < 1:
            raise InvalidTrajectory(f"{w}: positions need at least 2 frames and 1 particle, got {p.shape}")
        if not np.issubdtype(p.dtype, np.floating):
            raise InvalidTrajectory(f"{w}: positions must be floating point, got {p.dtype}")
        bad = ~np.isfinite(p)
        if bad.any():
            t, i, _ = np.argwhere(bad)[0]
            raise InvalidTrajectory(f"{w}: positions contain {int(bad.sum())} NaN/inf values "
                                    f"(first at frame {t}, particle {i}); clean the data first")
        self.positions = p
        if self.velocities is not None:
            v = np.asarray(self.velocities)
            if v.shape != p.shape:
                raise InvalidTrajectory(f"{w}: velocities have shape {v.shape}, positions {p.shape}; "
                                        f"they must match")
            if not np.all(np.isfinite(v)):
                raise InvalidTrajectory(f"{w}: velocities contain NaN/inf")
            self.velocities = v
        for name in ("deformation", "affine"):
            a = getattr(self, name)
            if a is not None:
                a = np.asarray(a)
                if a.shape != p.shape[:2] + (3, 3):
                    raise InvalidTrajectory(f"{w}: {name} has shape {a.shape}, expected {p.shape[:2] + (3, 3)}")
                if not np.all(np.isfinite(a)):
                    raise InvalidTrajectory(f"{w}: {name} contains NaN/inf")
                setattr(self, name, a)
        try:
            self.dt = float(self.dt)
        except (TypeError, ValueError):
            raise InvalidTrajectory(f"{w}: dt must be a number of seconds, got {self.dt!r}") from None
        if not (self.dt > 0 and np.isfinite(self.dt)):
            raise InvalidTrajectory(f"{w}: dt must be > 0 s, got {self.dt}")
        if not isinstance(self.metadata, dict):
            raise InvalidTrajectory(f"{w}: metadata must be a JSON object")
        missing = [k for k in REQUIRED_META if k not in self.metadata]
        if missing:
            raise InvalidTrajectory(f"{w}: metadata lacks {missing} (required: {list(REQUIRED_META)}); "
                                    f"record data with `diffsim generate` or add them")
        if int(self.metadata["format"]) > FORMAT:
            raise InvalidTrajectory(f"{w}: format {self.metadata['format']} is newer than this diffsim "
                                    f"understands ({FORMAT})")
        sub, every = float(self.metadata["substep_dt"]), int(self.metadata["frame_every"])
        if every < 1 or not sub > 0:
            raise InvalidTrajectory(f"{w}: frame_every must be >= 1 and substep_dt > 0")
        if abs(sub * every - self.dt) > 1e-9 * max(self.dt, 1e-30) + 1e-15:
            raise InvalidTrajectory(f"{w}: dt = {self.dt} s but substep_dt * frame_every = {sub * every} s")
        n_scene = int(self.metadata["n_particles_scene"])
        if self.particle_ids is not None:
            ids = np.asarray(self.particle_ids)
            if ids.ndim != 1 or ids.shape[0] != p.shape[1] or not np.issubdtype(ids.dtype, np.integer):
                raise InvalidTrajectory(f"{w}: particle_ids must be {p.shape[1]} integers (one per observed "
                                        f"particle), got shape {ids.shape}, dtype {ids.dtype}")
            if ids.min() < 0 or ids.max() >= n_scene or len(np.unique(ids)) != len(ids):
                raise InvalidTrajectory(f"{w}: particle_ids must be distinct indices in [0, {n_scene})")
            self.particle_ids = ids.astype(np.int64)
        elif p.shape[1] != n_scene:
            raise InvalidTrajectory(f"{w}: {p.shape[1]} particles observed but the scene had {n_scene} and no "
                                    f"particle_ids say which ones they are")

    def check_scene(self, scene):
        """Raise :class:`InvalidTrajectory` unless ``scene`` can reproduce this data."""
        w = self._where()
        sim = scene.solver
        n_scene = int(self.metadata["n_particles_scene"])
        x0 = _positions(sim, sim.initial_state())
        if len(x0) != n_scene:
            raise InvalidTrajectory(f"{w} was recorded from a scene with {n_scene} particles, but scene "
                                    f"{scene.name!r} has {len(x0)}: wrong scene or different options "
                                    f"(data options: {self.metadata['scene'].get('options')})")
        if abs(sim.dt - self.substep_dt) > 1e-12 * self.substep_dt:
            raise InvalidTrajectory(f"{w} used substeps of {self.substep_dt} s, scene {scene.name!r} uses "
                                    f"{sim.dt} s")
        err = np.abs(x0[self.ids] - self.positions[0]).max()
        noise = float(self.metadata.get("observation", {}).get("noise_m", 0.0))
        if err > max(1e-4, 6 * noise + 1e-6):
            raise InvalidTrajectory(f"{w}: the first frame differs from scene {scene.name!r}'s initial "
                                    f"particles by up to {err:.3g} m; wrong scene or different options")

    # ------------------------------------------------------------------ io
    def save(self, path):
        """Write the ``.npz`` atomically."""
        from .io import _atomic_path, json_default
        arrays = {"positions": self.positions, "dt": np.asarray(self.dt),
                  "metadata": np.asarray(json.dumps(self.metadata, default=json_default))}
        if self.velocities is not None:
            arrays["velocities"] = self.velocities
        for name in ("particle_ids", "deformation", "affine"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        path = Path(path)
        with _atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
        self.path = str(path)


def load_trajectory(path) -> Trajectory:
    """Load and validate a trajectory file (see the module docstring)."""
    path = str(path)
    if not Path(path).is_file():
        raise InvalidTrajectory(f"trajectory file {path!r} does not exist")
    try:
        with open(path, "rb") as fh:
            npz = np.load(fh, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise InvalidTrajectory(f"{path!r} is a single array, not a trajectory .npz")
            data = {k: npz[k] for k in npz.files}
    except InvalidTrajectory:
        raise
    except Exception as exc:  # zip/CRC/format errors
        raise InvalidTrajectory(f"cannot read trajectory {path!r}: {type(exc).__name__}: {exc}") from exc
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise InvalidTrajectory(f"trajectory {path!r} lacks the key(s) {missing}; it has {sorted(data)} "
                                f"(required: {list(REQUIRED)})")
    try:
        meta = json.loads(str(data["metadata"]))
    except json.JSONDecodeError as exc:
        raise InvalidTrajectory(f"trajectory {path!r}: metadata is not valid JSON ({exc})") from exc
    return Trajectory(positions=data["positions"], dt=data["dt"], metadata=meta,
                      velocities=data.get("velocities"), particle_ids=data.get("particle_ids"),
                      deformation=data.get("deformation"), affine=data.get("affine"), path=path)


def surface_particles(points: np.ndarray, spacing: float) -> np.ndarray:
    """Indices of lattice particles on a body's surface: fewer than 6 neighbours at one
    lattice spacing (``points`` (N,3) m, ``spacing`` m)."""
    from scipy.spatial import cKDTree
    tree = cKDTree(points)
    counts = np.array([len(c) for c in tree.query_ball_point(points, r=1.01 * spacing)]) - 1
    return np.flatnonzero(counts < 6)


def _usable_box(sim):
    """``[lo, hi]`` (m) of the region particles can reach (inside the walls), or None."""
    if not (hasattr(sim, "lo") and hasattr(sim, "hi")):
        return None
    pad = getattr(sim, "BOUND", 0) * getattr(sim, "dx", 0.0)
    return [(np.asarray(sim.lo) + pad).tolist(), (np.asarray(sim.hi) - pad).tolist()]


def record(scene, steps: int, every: int, subsample: float = 1.0, noise: float = 0.0,
           surface_only: bool = False, seed: int = 0, velocities: bool = True, progress: bool = True,
           script: str | None = None, full_state: bool = False, on_frame=None) -> Trajectory:
    """Run ``scene`` and record a :class:`Trajectory` (frame 0 = the initial state).

    Args:
        steps: substeps to run; every: substeps per frame.
        subsample: fraction (0, 1] of the (surface) particles to keep (random, seeded).
        noise: observation noise std as a fraction of the scene's largest body extent
            (e.g. 0.01 = 1%); the absolute std (m) is stored as ``observation.noise_m``.
        surface_only: keep only particles on the bodies' surfaces.
        full_state: also store ``F`` and ``C`` of the observed particles (noise-free).
        on_frame: called with ``scene`` at every recorded frame (e.g. to trace diagnostics).
    """
    from .progress import Progress
    sim = scene.solver
    sim.build()
    if steps < every or every < 1:
        raise InvalidTrajectory(f"need steps >= every >= 1, got steps={steps}, every={every}")
    if not 0 < subsample <= 1:
        raise InvalidTrajectory(f"subsample must be in (0, 1], got {subsample}")
    if noise < 0:
        raise InvalidTrajectory(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    x0 = _positions(sim, sim.initial_state())
    bodies = getattr(sim, "bodies", None) or []
    mpm = all(hasattr(b, "spacing") for b in bodies) and bool(bodies)
    if (surface_only or full_state) and not mpm:
        raise InvalidTrajectory(f"surface_only and full_state need an MPM scene, not a {type(sim).__name__}")
    ids = np.arange(len(x0))
    if surface_only:
        ids = np.concatenate([b.start + surface_particles(x0[b.slice], b.spacing) for b in sim.bodies])
    if subsample < 1:
        keep = max(1, int(round(subsample * len(ids))))
        ids = np.sort(rng.choice(ids, size=keep, replace=False))
    extent = max(float(np.ptp(x0[b.start:b.stop], axis=0).max()) for b in bodies) if bodies else \
        float(np.ptp(x0, axis=0).max())
    noise_m = noise * extent
    frames, vels, defs, affs = [], [], [], []
    n_frames = steps // every
    with Progress(total=n_frames * every, desc=f"record {scene.name}", unit="step", disable=not progress) as bar:
        for f in range(n_frames + 1):
            state = sim.current_state()
            st = {k: t.detach().double().numpy() for k, t in state.items()}
            frames.append(_positions(sim, state)[ids])
            if velocities:
                if "v" not in st:
                    raise InvalidTrajectory(f"{type(sim).__name__} has no velocities to record; "
                                            f"pass velocities=False")
                vels.append(st["v"][ids])
            if full_state:
                defs.append(st["F"][ids])
                affs.append(st["C"][ids])
            if on_frame is not None:
                on_frame(scene)
            if f < n_frames:
                scene.step(every)
                bar.update(every)
    pos = np.stack(frames)
    if noise_m > 0:
        pos = pos + rng.normal(0.0, noise_m, size=pos.shape)
    meta = {
        "format": FORMAT, "substep_dt": sim.dt, "frame_every": int(every),
        "n_particles_scene": len(x0),
        "bounds": _usable_box(sim),
        "scene": {"name": scene.name, "script": script, "options": scene.options},
        "bodies": [{"name": b.name, "start": b.start, "count": b.stop - b.start,
                    "material": b.material.describe()} for b in bodies],
        "observation": {"subsample": subsample, "noise": noise, "noise_m": noise_m,
                        "surface_only": bool(surface_only), "seed": seed, "observed": int(len(ids))},
    }
    full = len(ids) == len(x0)
    return Trajectory(positions=pos.astype(np.float64), dt=sim.dt * every, metadata=meta,
                      velocities=np.stack(vels) if velocities else None,
                      particle_ids=None if full else ids.astype(np.int64),
                      deformation=np.stack(defs) if full_state else None,
                      affine=np.stack(affs) if full_state else None)


def _positions(sim, state) -> np.ndarray:
    """The observed positions (N,3) float64 of a system's state (particles, nodes, spheres,
    a surrogate's decoded points)."""
    import torch
    with torch.no_grad():
        return sim.observed_positions(state).detach().double().cpu().numpy()
