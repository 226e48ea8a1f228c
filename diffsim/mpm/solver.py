"""The MLS-MPM solver (Python side): bodies, colliders, fields, stepping, diagnostics.

Quick start::

    import diffsim as ds
    ds.init()                                   # CPU, f32
    sim = ds.MPMSolver(domain_max=(1, 1, 1), grid=64, dt=2e-4)
    sim.add_body(ds.Box(center=(0.5, 0.5, 0.4), size=(0.2, 0.2, 0.2)),
                 ds.FixedCorotated(E=1e5, nu=0.3), name="jelly")
    sim.add_collider(ds.PlaneCollider(point=(0, 0, 0.1), normal=(0, 0, 1), friction=0.5))
    sim.step(100)
    x = sim.positions("jelly")                  # (N, 3) float, m

Differentiable rollouts: :func:`diffsim.rollout` (see :mod:`diffsim.mpm.rollout`).

The grid has ``grid`` cells along the longest side of the domain; the outer
``BOUND = 3`` node layers on every face are the domain walls, so particles must start at
least 3 cells inside the domain box.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import pool, runtime
from ..core.names import by_part
from ..core.state import State
from ..core.system import Rollout, System
from ..colliders import KINDS, Collider, pack_colliders, sdf_size as collider_sdf_size
from ..errors import InvalidScene, SimulationDiverged, UnstableTimeStep
from ..materials import Material, NeuralMaterial

FACES = ("-x", "+x", "-y", "+y", "-z", "+z")


@dataclass
class Body:
    """A set of particles sharing one material. ``start``/``count`` index the particle arrays."""
    name: str
    material: Material
    start: int
    count: int
    spacing: float
    info: dict = field(default_factory=dict)

    @property
    def stop(self) -> int:
        return self.start + self.count

    @property
    def slice(self) -> slice:
        return slice(self.start, self.start + self.count)


class MPMSolver(System):
    """A 3D MLS-MPM domain with several bodies, materials and colliders.

    Args:
        domain_min, domain_max: corners of the simulation box (m).
        grid: number of grid cells along the longest side of the box (dx = longest / grid).
        dt: substep (s). Checked against the CFL limit ``cfl * dx / c`` of every material.
        gravity: (m/s^2).
        walls: contact kind of the six domain faces: ``"sticky"``, ``"slip"``,
            ``"separate"``, or a dict ``{"-z": "sticky", ...}`` (unlisted faces: separate).
        wall_friction: Coulomb friction of separating walls (float or per-face dict).
        cfl: safety factor of the time-step check (elastic waves must travel less than
            ``cfl`` cells per step).
        name: label used in messages.
    """

    BOUND = 3

    def __init__(self, domain_min=(0.0, 0.0, 0.0), domain_max=(1.0, 1.0, 1.0), grid: int = 64,
                 dt: float = 1e-4, gravity=(0.0, 0.0, -9.81), walls: Any = "separate",
                 wall_friction: Any = 0.0, cfl: float = 0.4, name: str = "mpm"):
        lo = np.asarray(domain_min, dtype=np.float64)
        hi = np.asarray(domain_max, dtype=np.float64)
        if lo.shape != (3,) or hi.shape != (3,) or np.any(hi <= lo):
            raise InvalidScene(f"domain_max must exceed domain_min on every axis, got {domain_min}, {domain_max}")
        if int(grid) < 8:
            raise InvalidScene(f"grid must have at least 8 cells, got {grid}")
        if not (dt > 0 and math.isfinite(dt)):
            raise UnstableTimeStep(f"dt must be a positive number of seconds, got {dt}", dt=dt)
        self.name = name
        self.lo = lo
        self.dx = float((hi - lo).max() / int(grid))
        self.grid_shape = tuple(int(max(8, round(e / self.dx))) for e in (hi - lo))
        self.hi = lo + np.asarray(self.grid_shape) * self.dx
        self.dt = float(dt)
        self.gravity = np.asarray(gravity, dtype=np.float64)
        self.cfl = float(cfl)
        self.wall_kinds, self.wall_mu = self._parse_walls(walls, wall_friction)
        self.bodies: list[Body] = []
        self.colliders: list[Collider] = []
        self._x: list[np.ndarray] = []
        self._v: list[np.ndarray] = []
        self._vol: list[np.ndarray] = []
        self.fields = None
        self._pool_token = None
        self.time = 0.0
        self.step_count = 0
        self.n = 0

    # ------------------------------------------------------------------------ building
    @staticmethod
    def _parse_walls(walls, friction):
        kinds = {}
        if isinstance(walls, str):
            kinds = {f: walls for f in FACES}
        elif isinstance(walls, dict):
            bad = set(walls) - set(FACES)
            if bad:
                raise InvalidScene(f"unknown wall faces {sorted(bad)}; use {FACES}")
            kinds = {f: walls.get(f, "separate") for f in FACES}
        else:
            raise InvalidScene("walls must be a string or a dict of face -> kind")
        for f, k in kinds.items():
            if k not in KINDS:
                raise InvalidScene(f"wall {f}: kind must be one of {sorted(KINDS)}, got {k!r}")
        mus = {f: float(friction.get(f, 0.0)) if isinstance(friction, dict) else float(friction) for f in FACES}
        for f, m in mus.items():
            if not (m >= 0 and math.isfinite(m)):
                raise InvalidScene(f"wall {f}: friction must be >= 0, got {m}")
        return [KINDS[kinds[f]] for f in FACES], [mus[f] for f in FACES]

    def _require_unbuilt(self):
        if self.fields is not None:
            raise InvalidScene("bodies and colliders must be added before the first step/build()")

    def add_body(self, shape, material: Material, name: str | None = None, spacing: float | None = None,
                 velocity=(0.0, 0.0, 0.0), jitter: float = 0.0, seed: int = 0) -> Body:
        """Fill ``shape`` (a :mod:`diffsim.geometry` shape) with particles of ``material``.

        ``spacing`` (m) defaults to dx/2 (8 particles per cell); each particle gets volume
        ``spacing**3`` and mass ``density * spacing**3``. ``velocity``: initial (m/s).
        """
        sp = float(spacing) if spacing is not None else self.dx / 2
        if not sp > 0:
            raise InvalidScene(f"spacing must be > 0 m, got {spacing}")
        points = shape.sample(sp, jitter=jitter, seed=seed)
        info = {"shape": type(shape).__name__}
        return self.add_particles(points, material, name=name, volume=sp ** 3, velocity=velocity,
                                  spacing=sp, info=info)

    def add_particles(self, positions, material: Material, name: str | None = None, volume=None,
                      velocity=(0.0, 0.0, 0.0), spacing: float | None = None, info: dict | None = None) -> Body:
        """Add explicit particles: ``positions`` (N,3) m, ``volume`` per particle (m^3,
        scalar or (N,)), ``velocity`` (3,) or (N,3) m/s."""
        self._require_unbuilt()
        if not isinstance(material, Material):
            raise InvalidScene(f"material must be a diffsim material, got {type(material).__name__}")
        x = np.asarray(positions, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != 3 or len(x) == 0:
            raise InvalidScene(f"positions must be a non-empty (N, 3) array, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise InvalidScene("positions contain NaN or inf")
        name = name or f"body{len(self.bodies)}"
        if any(b.name == name for b in self.bodies):
            raise InvalidScene(f"a body named {name!r} already exists")
        sp = float(spacing) if spacing is not None else self.dx / 2
        vol = np.broadcast_to(np.asarray(sp ** 3 if volume is None else volume, dtype=np.float64), (len(x),))
        if np.any(vol <= 0):
            raise InvalidScene("particle volumes must be > 0")
        v = np.broadcast_to(np.asarray(velocity, dtype=np.float64), x.shape).copy()
        inner_lo = self.lo + self.BOUND * self.dx
        inner_hi = self.hi - self.BOUND * self.dx
        outside = np.any((x < inner_lo) | (x > inner_hi), axis=1)
        if outside.any():
            i = int(np.argmax(outside))
            raise InvalidScene(
                f"body {name!r}: {int(outside.sum())} of {len(x)} particles lie outside the usable domain "
                f"[{inner_lo.round(4).tolist()}, {inner_hi.round(4).tolist()}] m (the domain box minus "
                f"{self.BOUND} wall cells), e.g. particle {i} at {x[i].round(4).tolist()}; move the body "
                f"or enlarge the domain")
        body = Body(name, material, self.n, len(x), sp, info or {})
        self.bodies.append(body)
        self._x.append(x)
        self._v.append(v)
        self._vol.append(vol.copy())
        self.n += len(x)
        return body

    def add_collider(self, collider: Collider) -> Collider:
        """Add a rigid collider (see :mod:`diffsim.colliders`)."""
        self._require_unbuilt()
        if not isinstance(collider, Collider):
            raise InvalidScene(f"expected a Collider, got {type(collider).__name__}")
        if collider.name is None:
            collider.name = f"collider{len(self.colliders)}"
        self.colliders.append(collider)
        return collider

    def body(self, name: str) -> Body:
        for b in self.bodies:
            if b.name == name:
                return b
        raise KeyError(f"no body named {name!r}; bodies: {[b.name for b in self.bodies]}")

    # ------------------------------------------------------------------------ checks
    def stable_dt(self, materials: dict | None = None) -> float:
        """Largest substep (s) the elastic-wave CFL and viscous limits allow; ``materials``
        ``{body: Material}`` replaces bodies' materials (e.g. with a rollout's overrides)."""
        limit = math.inf
        for b in self.bodies:
            mat = (materials or {}).get(b.name, b.material)
            c = mat.wave_speed()
            limit = min(limit, self.cfl * self.dx / c)
            nu = mat.viscosity_limit()
            if nu > 0:
                limit = min(limit, self.dx * self.dx / (6.0 * nu))
        return limit

    def check_time_step(self, materials: dict | None = None):
        """Raise :class:`UnstableTimeStep` if ``dt`` exceeds :meth:`stable_dt`."""
        limit = self.stable_dt(materials)
        if self.dt > limit:
            mats = {b.name: (materials or {}).get(b.name, b.material) for b in self.bodies}
            worst = max(self.bodies, key=lambda b: mats[b.name].wave_speed())
            which = " (with the rollout's parameter overrides)" if materials else ""
            raise UnstableTimeStep(
                f"dt = {self.dt:.3g} s exceeds the stability limit {limit:.3g} s of this scene{which} "
                f"(dx = {self.dx:.4g} m, fastest wave {mats[worst.name].wave_speed():.3g} m/s in body "
                f"{worst.name!r}, CFL factor {self.cfl}); use dt <= {limit:.3g} s, a coarser grid or a "
                f"softer material", dt=self.dt, limit=limit)

    # ------------------------------------------------------------------------ fields
    @property
    def built(self) -> bool:
        return self.fields is not None

    def build(self):
        """Validate the scene, borrow fields from the pool and upload the particles."""
        if self.fields is not None:
            return self
        if not self.bodies:
            raise InvalidScene("the scene has no bodies; add_body() first")
        self.check_time_step()
        runtime.ensure_init()
        from ..kernels.mpm import MPMFields

        sdf_size = collider_sdf_size(self.colliders)
        key = ("mpm", pool.bucket(self.n), self.grid_shape, max(4, 1 << (len(self.colliders) - 1).bit_length()),
               pool.bucket(sdf_size, 1) if sdf_size else 1, max(16, len(self.bodies)), runtime.config().precision)
        dtype = runtime.real_dtype()
        self.fields, self._pool_token = pool.acquire(
            key, lambda: MPMFields(key[1], self.grid_shape, key[3], key[4], key[5], dtype), self)
        self._upload_particles()
        self._upload_static_colliders()
        self._upload_collider_state()
        self._upload_walls()
        self._external = [b for b in self.bodies if isinstance(b.material, NeuralMaterial)]
        from ..kernels.constitutive import material_mask
        self.mats = material_mask(b.material.code for b in self.bodies)
        self.cols = tuple(int(c.code) for c in self.colliders)
        return self

    def close(self):
        """Give the solver's fields back to the pool (the solver is unusable afterwards)."""
        pool.release(self._pool_token)
        if getattr(self, "_tapes", None) is not None:
            self._tapes.close()
            self._tapes = None
        self.fields = None

    def _np(self, a):
        return np.ascontiguousarray(a, dtype=runtime.np_dtype())

    def _upload_particles(self):
        from ..kernels import mpm as km
        fs, n = self.fields, self.n
        x = np.concatenate(self._x)
        v = np.concatenate(self._v)
        vol = np.concatenate(self._vol)
        mass = np.concatenate([vol[b.slice] * b.material.density for b in self.bodies])
        mtype = np.concatenate([np.full(b.count, b.material.code, np.int32) for b in self.bodies])
        body = np.concatenate([np.full(b.count, i, np.int32) for i, b in enumerate(self.bodies)])
        prm = np.concatenate([np.broadcast_to(b.material.parameter_vector().detach().numpy(), (b.count, 4))
                              for b in self.bodies])
        km.copy_in(fs.x, self._np(x), n)
        km.copy_in(fs.v, self._np(v), n)
        km.copy_in(fs.C, self._np(np.zeros((n, 3, 3))), n)
        km.copy_in(fs.F_minus_I, self._np(np.zeros((n, 3, 3))), n)
        km.copy_in(fs.vol, self._np(vol), n)
        km.copy_in(fs.mass, self._np(mass), n)
        km.copy_in(fs.prm, self._np(prm), n)
        km.copy_in(fs.mtype, np.ascontiguousarray(mtype), n)
        km.copy_in(fs.body, np.ascontiguousarray(body), n)
        self._mass = mass
        self._vol_all = vol

    def _upload_static_colliders(self):
        fs = self.fields
        packed = pack_colliders(self.colliders, fs.n_slots, fs.sdf_capacity)
        fs.c_type.from_numpy(packed["code"])
        fs.c_kind.from_numpy(packed["kind"])
        fs.c_mu.from_numpy(self._np(packed["friction"]))
        fs.c_shape.from_numpy(self._np(packed["shape"]))
        fs.c_mesh.from_numpy(packed["mesh"])
        if packed["sdf"] is not None:
            fs.sdf.from_numpy(self._np(packed["sdf"]))
        self._kinematic = [c for c in self.colliders if not c.is_static]

    def collider_state(self):
        """Arrays ``(pos, vel, omega, rot)`` of all collider slots at the current time."""
        S = self.fields.n_slots
        pos = np.zeros((S, 3))
        vel = np.zeros((S, 3))
        omega = np.zeros((S, 3))
        rot = np.broadcast_to(np.eye(3), (S, 3, 3)).copy()
        for i, c in enumerate(self.colliders):
            pos[i] = c.position
            vel[i] = c.velocity_at(self.time, self.dt)
            omega[i] = c.angular_velocity_at(self.time)
            rot[i] = c.rotation
        return pos, vel, omega, rot

    def _upload_collider_state(self):
        fs = self.fields
        pos, vel, omega, rot = self.collider_state()
        fs.c_pos.from_numpy(self._np(pos))
        fs.c_vel.from_numpy(self._np(vel))
        fs.c_omega.from_numpy(self._np(omega))
        fs.c_rot.from_numpy(self._np(rot))

    def _upload_walls(self):
        self.fields.w_kind.from_numpy(np.asarray(self.wall_kinds, np.int32))
        self.fields.w_mu.from_numpy(self._np(self.wall_mu))

    # ------------------------------------------------------------------------ stepping
    @property
    def kernel_args(self):
        """``(dt, dx, lo..., g...)`` scalars passed to the kernels."""
        return (self.dt, self.dx, *self.lo.tolist(), *self.gravity.tolist())

    def step(self, n: int = 1, hook=None):
        """Advance ``n`` substeps (forward only, fastest path). ``hook``: an object acting on
        the grid inside each substep (see :func:`diffsim.kernels.mpm.step_fused`; used by
        :class:`~diffsim.FEMMPMCoupling`)."""
        from ..kernels import mpm as km
        self.build()
        fs = self.fields
        dt, dx, lx, ly, lz, gx, gy, gz = self.kernel_args
        for _ in range(int(n)):
            if self._kinematic:
                self._upload_collider_state()
            if self._external:
                if hook is not None:
                    raise NotImplementedError("grid hooks (FEM coupling) with torch materials")
                self._step_split()
            else:
                km.step_fused(fs, self.mats, self.cols, self.n, dt, dx, lx, ly, lz, gx, gy, gz, hook)
            for c in self._kinematic:
                c.advance(self.time, dt)
            self.time += dt
            self.step_count += 1

    def _step_split(self):
        """Split step with torch materials (no gradients): material, torch, transfer."""
        import torch
        from ..kernels import mpm as km
        fs, n = self.fields, self.n
        dt, dx, lx, ly, lz, gx, gy, gz = self.kernel_args
        km.material_stage(fs, self.mats, n, dt)
        tdt = runtime.torch_dtype()
        with torch.no_grad():
            eye = torch.eye(3, dtype=tdt)
            for b in self._external:
                D_tr = torch.empty((n, 3, 3), dtype=tdt)       # F_tr - I
                km.copy_out(fs.F1_minus_I, D_tr, n)
                F_e, tau = b.material.respond(D_tr[b.slice] + eye)
                D_tr[b.slice] = F_e.to(tdt) - eye
                tau_full = torch.empty((n, 3, 3), dtype=tdt)
                km.copy_out(fs.tau, tau_full, n)
                tau_full[b.slice] = tau.to(tdt)
                km.copy_in(fs.F1_minus_I, D_tr.contiguous(), n)
                km.copy_in(fs.tau, tau_full.contiguous(), n)
        km.clear_grid(fs)
        km.p2g(fs, n, dt, dx, lx, ly, lz)
        km.grid_update(fs, self.cols, dt, dx, lx, ly, lz, gx, gy, gz)
        km.g2p(fs, n, dt, dx, lx, ly, lz)
        for src, dst in ((fs.x1, fs.x), (fs.v1, fs.v), (fs.C1, fs.C), (fs.F1_minus_I, fs.F_minus_I)):
            km.copy_field(src, dst, n)

    # ------------------------------------------------------------------------ state
    _STATE = (("x", (3,)), ("v", (3,)), ("C", (3, 3)), ("F_minus_I", (3, 3)))

    def _read_state(self) -> dict[str, np.ndarray]:
        """x, v, C, F_minus_I (``F - I``, as the fields hold it) in the runtime's precision
        (bitwise copies of the fields: checkpoints resume exactly)."""
        from ..kernels import mpm as km
        self.build()
        n = self.n
        out = {}
        for name, shape in self._STATE:
            a = np.empty((n,) + shape, dtype=runtime.np_dtype())
            km.copy_out(getattr(self.fields, name), a, n)
            out[name] = a
        return out

    def get_state(self) -> dict[str, np.ndarray]:
        """Current particle state as float64 numpy arrays: x (N,3) m, v (N,3) m/s,
        C (N,3,3) 1/s, F (N,3,3)."""
        st = {k: a.astype(np.float64) for k, a in self._read_state().items()}
        st["F"] = st.pop("F_minus_I") + np.eye(3)
        return st

    def set_state(self, state: dict):
        """Overwrite the particle state (arrays as returned by :meth:`get_state`, numpy or
        torch; ``F_minus_I`` may stand for ``F``)."""
        from ..kernels import mpm as km
        self.build()
        n = self.n
        state = dict(state)
        if "F" in state:
            F = state.pop("F")
            F = F.detach().cpu().numpy() if hasattr(F, "detach") else np.asarray(F)
            if F.shape != (n, 3, 3):
                raise InvalidScene(f"state['F'] has shape {F.shape}, expected {(n, 3, 3)}")
            state["F_minus_I"] = F.astype(np.float64) - np.eye(3)
        for name, shape in self._STATE:
            if name not in state:
                continue
            shape = (n,) + shape
            a = state[name]
            a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
            if a.shape != shape:
                raise InvalidScene(f"state[{name!r}] has shape {a.shape}, expected {shape}")
            km.copy_in(getattr(self.fields, name), self._np(a), n)

    def positions(self, body: str | None = None) -> np.ndarray:
        """Particle positions (m), of one body or all, as a float64 (N,3) array."""
        x = self.get_state()["x"]
        return x if body is None else x[self.body(body).slice]

    def initial_positions(self) -> np.ndarray:
        """Particle positions (m) as the bodies were added, (N,3) float64."""
        return np.concatenate(self._x)

    def initial_velocities(self) -> np.ndarray:
        """Particle velocities (m/s) as the bodies were added, (N,3) float64."""
        return np.concatenate(self._v)

    def reset(self):
        """Back to the initial state: particles as added, colliders at their start, t = 0."""
        n = self.n
        self.set_state({"x": self.initial_positions(), "v": self.initial_velocities(),
                        "C": np.zeros((n, 3, 3)), "F": np.broadcast_to(np.eye(3), (n, 3, 3))})
        for c in self.colliders:
            c.reset()
        self.time = 0.0
        self.step_count = 0
        self._upload_collider_state()

    # ------------------------------------------------------------------------ protocol
    rollout_options = frozenset({"checkpoint_every"})
    starts_anywhere = True

    def initial_state(self) -> State:
        from .rollout import initial_state
        self.build()
        return initial_state(self, start=True)

    def current_state(self) -> State:
        from .rollout import initial_state
        self.build()
        return initial_state(self)

    def parameter_values(self) -> dict:
        """``{"body.E": value, ...}``: each body's material parameters (see the materials'
        ``differentiable`` names)."""
        return {f"{b.name}.{k}": float(getattr(b.material, k)) for b in self.bodies for k in b.material.differentiable}

    def control_names(self) -> list:
        """Each collider's ``velocity`` ((steps, 3) or (3,) m/s) and start ``position`` ((3,) m)."""
        return [f"{c.name}.{q}" for c in self.colliders for q in ("velocity", "position")]

    def _rollout(self, steps, state, params, control, record_every, tape_memory, check_gradients, start=0,
                 checkpoint_every=None) -> Rollout:
        from .rollout import MPMState, mpm_rollout
        self.build()
        self.reset()
        if start:
            self.time, self.step_count = start * self.dt, start
            for c in self.colliders:  # where its own schedule puts it at substep ``start``
                for k in range(start):
                    c.advance(k * self.dt, self.dt)
            self._upload_collider_state()
        actions = {q: {n.rsplit(".", 1)[0]: v for n, v in control.items() if n.endswith("." + q)}
                   for q in ("velocity", "position")}
        state = None if state is None else MPMState.of(state)
        final, records = mpm_rollout(self, steps, state, by_part(params), actions["velocity"] or None,
                                     actions["position"] or None, record_every, checkpoint_every, tape_memory,
                                     check_gradients)
        return Rollout(final, records)

    def checkpoint(self) -> tuple[dict, dict]:
        """``(arrays, meta)`` from which :meth:`restore` continues bitwise identically."""
        arrays = self._read_state()
        n = self.n
        for i, c in enumerate(self.colliders):
            arrays[f"collider{i}_position"] = c.position.copy()
            arrays[f"collider{i}_rotation"] = c.rotation.copy()
        meta = {"time": self.time, "step": self.step_count, "n": n, "precision": runtime.config().precision}
        return arrays, meta

    def restore(self, arrays: dict, meta: dict):
        self.build()
        if int(meta["n"]) != self.n:
            raise InvalidScene(f"checkpoint holds {meta['n']} particles, the scene has {self.n}")
        self.set_state({k: arrays[k] for k in ("x", "v", "C", "F_minus_I", "F") if k in arrays})
        for i, c in enumerate(self.colliders):
            c.position = np.asarray(arrays[f"collider{i}_position"], dtype=np.float64)
            c.rotation = np.asarray(arrays[f"collider{i}_rotation"], dtype=np.float64)
        self.time = float(meta["time"])
        self.step_count = int(meta["step"])
        self._upload_collider_state()

    # ------------------------------------------------------------------------ diagnostics
    def frame(self) -> dict:
        """``{"particles": (x (N,3), point_data), "meshes": {name: (verts, faces)}}`` for output."""
        st = self.get_state()
        body_id = np.concatenate([np.full(b.count, i, np.int32) for i, b in enumerate(self.bodies)])
        J = np.linalg.det(st["F"])
        data = {"body": body_id, "velocity": st["v"].astype(np.float32), "J": J.astype(np.float32)}
        meshes = {c.name: c.surface() for c in self.colliders}
        return {"particles": (st["x"], data), "meshes": meshes}

    def diagnostics(self) -> dict:
        """Per-body and total energies (J) and momentum (kg m/s); raises
        :class:`SimulationDiverged` on NaN/inf, escaped particles or a CFL-violating speed."""
        from ..kernels import mpm as km
        self.build()
        fs = self.fields
        km.diagnostics(fs, self.mats, self.n, self.dx, *self.gravity.tolist(), *self.lo.tolist(), *self.hi.tolist())
        bad = int(fs.bad_particle[None])
        if bad < self.n:
            b = self._body_of(bad)
            raise SimulationDiverged(self.step_count, "particle state",
                                     f"NaN/inf in particle {bad} (position/velocity/deformation); the "
                                     f"time step is probably too large for the material or a collider "
                                     f"moves too fast", body=b.name)
        stats = fs.stats.to_numpy()[: len(self.bodies)].astype(np.float64)
        out = {"time": self.time, "step": self.step_count, "bodies": {}}
        tot = np.zeros(8)
        for i, b in enumerate(self.bodies):
            s = stats[i]
            out["bodies"][b.name] = {"kinetic": s[0], "potential": s[1], "elastic": s[2],
                                     "momentum": s[3:6].tolist(), "max_speed": s[7]}
            tot[:7] += s[:7]
            tot[7] = max(tot[7], s[7])
        out.update(kinetic=tot[0], potential=tot[1], elastic=tot[2], energy=tot[0] + tot[1] + tot[2],
                   momentum=tot[3:6].tolist(), max_speed=tot[7])
        limit = self.dx / self.dt
        if tot[7] > limit:
            worst = max(range(len(self.bodies)), key=lambda i: stats[i][7])
            raise SimulationDiverged(
                self.step_count, "velocity",
                f"speed {tot[7]:.3g} m/s exceeds one grid cell per step ({limit:.3g} m/s); kinetic energy "
                f"is {stats[worst][0]:.3g} J: the run is exploding. Reduce dt or the material stiffness",
                body=self.bodies[worst].name)
        if int(fs.escaped[None]) > 0:
            raise SimulationDiverged(self.step_count, "position",
                                     f"{int(fs.escaped[None])} particles left the domain box")
        return out

    def _body_of(self, p: int) -> Body:
        for b in self.bodies:
            if b.start <= p < b.stop:
                return b
        return self.bodies[-1]

    def describe(self) -> dict:
        return {"solver": "MLS-MPM", "domain_min": self.lo.tolist(), "domain_max": self.hi.tolist(),
                "grid": list(self.grid_shape), "dx": self.dx, "dt": self.dt, "gravity": self.gravity.tolist(),
                "particles": self.n,
                "bodies": [{"name": b.name, "particles": b.count, "material": b.material.describe(), **b.info}
                           for b in self.bodies],
                "colliders": [c.describe() for c in self.colliders]}
