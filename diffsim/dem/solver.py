"""Discrete element method: frictional spheres with Hertz-Mindlin contacts (Python side).

    sim = ds.DEMSolver(domain_min=(-0.05, -0.05, -0.03), domain_max=(0.05, 0.05, 0.3),
                       material=ds.DEMMaterial(E=5e6, nu=0.3, restitution=0.5, friction=0.5,
                                               rolling_friction=0.05, density=2500), dt=2e-5)
    sim.add_wall(ds.PlaneWall(point=(0, 0, 0), normal=(0, 0, 1)))
    sim.fill_lattice(lo=(-0.03, -0.03, 0.01), hi=(0.03, 0.03, 0.1), radius=0.002, spacing=0.0044)
    sim.step(1000)

Contact law and integration: :mod:`diffsim.kernels.dem`. Neighbour lists are rebuilt
(cell grid, counting sort) when a sphere has moved more than half the skin since the
last build; contact histories are carried over. Gradients: :func:`diffsim.rollout` (:mod:`diffsim.dem.rollout`).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import taichi as ti

from .. import pool, runtime
from ..colliders import rotation_step
from ..core.state import State
from ..core.system import Rollout, System
from ..errors import InvalidScene, SimulationDiverged, UnstableTimeStep
from ..kernels import dem as kd
from .insertion import Pour, random_packing
from .material import PARAMETERS, DEMMaterial
from .walls import MeshWall, Wall


class DEMSolver(System):
    """Spheres of one :class:`DEMMaterial` in a box domain (the domain sizes the neighbour
    cell grid; spheres that leave it are clamped into its boundary cells).

    Args:
        domain_min, domain_max: box (m) enclosing all spheres.
        material: :class:`DEMMaterial` (walls share it).
        dt: time step (s); refused above ``rayleigh_fraction`` x the Rayleigh time of the
            smallest sphere (linear model: above 1/20 of its contact time).
        gravity: m/s^2.
        skin: neighbour skin (m), default 0.5 x the smallest radius.
        max_neighbors: neighbour slots per sphere (an error names an overflow).
        outflow_z: spheres whose centre falls below this height (m) are removed and their
            mass counted as discharged.
        requires_grad: allocate adjoint fields (for :func:`diffsim.rollout`).
    """

    def __init__(self, domain_min, domain_max, material: DEMMaterial, dt: float, gravity=(0, 0, -9.81),
                 skin: float | None = None, max_neighbors: int = 24, rayleigh_fraction: float = 0.2,
                 outflow_z: float | None = None, requires_grad: bool = False, name: str = "dem"):
        self.lo = np.asarray(domain_min, float)
        self.hi = np.asarray(domain_max, float)
        if self.lo.shape != (3,) or self.hi.shape != (3,) or np.any(self.hi <= self.lo):
            raise InvalidScene("domain_max must exceed domain_min on every axis")
        if not isinstance(material, DEMMaterial):
            raise InvalidScene("material must be a DEMMaterial")
        if not (isinstance(dt, (int, float)) and dt > 0 and math.isfinite(dt)):
            raise UnstableTimeStep(f"dt must be > 0 s, got {dt}", dt=dt)
        if skin is not None and not skin > 0:
            raise InvalidScene(f"skin must be > 0 m, got {skin}")
        if int(max_neighbors) < 1:
            raise InvalidScene("max_neighbors must be >= 1")
        self.material = material
        self.dt = float(dt)
        self.gravity = np.asarray(gravity, float)
        self.skin = skin
        self.K = int(max_neighbors)
        self.rayleigh_fraction = float(rayleigh_fraction)
        self.outflow_z = -1e30 if outflow_z is None else float(outflow_z)
        self.requires_grad = bool(requires_grad)
        self.name = name
        self.walls: list[Wall] = []
        self.pours: list[Pour] = []
        self._x, self._v, self._w, self._r, self._on, self._fixed = [], [], [], [], [], []
        self.n = 0
        self.fields = None
        self.time = 0.0
        self.step_count = 0
        self.rebuilds = 0
        self._pose_key = None

    # ------------------------------------------------------------------ building
    def add_particles(self, positions, radius, velocity=(0, 0, 0), angular_velocity=(0, 0, 0),
                      check_overlap=True, fixed=False):
        """Add spheres: positions (N,3) m, radius (scalar or (N,)) m, velocities (m/s,
        rad/s). Overlapping spheres are refused (``check_overlap``). ``fixed``: glued in
        place (a rough base; they push on the others and never move; the contact uses the
        moving sphere's mass as for a wall). Returns their index slice."""
        self._check_open()
        x = np.asarray(positions, float).reshape(-1, 3)
        r = np.broadcast_to(np.asarray(radius, float), (len(x),)).copy()
        if len(x) == 0:
            raise InvalidScene("add_particles: no positions given")
        if not np.all(np.isfinite(r)) or np.any(r <= 0):
            raise InvalidScene(f"sphere radii must be finite and > 0 m, got min {r.min()}")
        if not np.all(np.isfinite(x)):
            raise InvalidScene("positions contain NaN/inf")
        out = np.any((x - r[:, None] < self.lo) | (x + r[:, None] > self.hi), axis=1)
        if out.any():
            i = int(np.argmax(out))
            raise InvalidScene(f"{int(out.sum())} spheres lie (partly) outside the domain "
                               f"[{self.lo.tolist()}, {self.hi.tolist()}], e.g. at {x[i].tolist()}")
        if check_overlap:
            self._check_overlap(x, r)
        self._x.append(x)
        self._r.append(r)
        self._v.append(np.broadcast_to(np.asarray(velocity, float), x.shape).copy())
        self._w.append(np.broadcast_to(np.asarray(angular_velocity, float), x.shape).copy())
        self._on.append(np.ones(len(x), np.int32))
        self._fixed.append(np.full(len(x), int(bool(fixed)), np.int32))
        self.n += len(x)
        return slice(self.n - len(x), self.n)

    def _check_overlap(self, x, r, tol=1e-9):
        from scipy.spatial import cKDTree
        allx = np.concatenate(self._x + [x])
        allr = np.concatenate(self._r + [r])
        pairs = cKDTree(allx).query_pairs(2 * allr.max(), output_type="ndarray")
        if len(pairs):
            gap = np.linalg.norm(allx[pairs[:, 0]] - allx[pairs[:, 1]], axis=1) - allr[pairs[:, 0]] - allr[pairs[:, 1]]
            bad = gap < -tol * allr.max()
            if bad.any():
                k = int(np.argmin(gap))
                i, j = pairs[k]
                raise InvalidScene(f"{int(bad.sum())} inserted sphere pairs overlap (worst: spheres {i} and {j} by "
                                   f"{-gap[k]:.3g} m); inserting overlapping spheres explodes the contact forces")

    def fill_lattice(self, lo, hi, radius, spacing=None, jitter=0.0, seed=0, velocity=(0, 0, 0), inside=None):
        """Simple-cubic lattice of spheres inside the box [lo, hi] (m); ``jitter`` moves each
        by up to that fraction of the gap; ``inside(x) -> bool`` masks the region."""
        spacing = float(spacing or 2.2 * radius)
        if spacing < 2 * radius:
            raise InvalidScene(f"lattice spacing {spacing} m < sphere diameter {2 * radius} m: they would overlap")
        lo = np.asarray(lo, float) + radius
        hi = np.asarray(hi, float) - radius
        axes = [np.arange(l, h + 1e-12, spacing) for l, h in zip(lo, hi)]
        x = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        if inside is not None:
            x = x[np.asarray(inside(x), bool)]
        if jitter:
            x += np.random.default_rng(seed).uniform(-jitter, jitter, x.shape) * (spacing - 2 * radius) / 2
        return self.add_particles(x, radius, velocity=velocity)

    def fill_random(self, lo, hi, radius, count, seed=0, velocity=(0, 0, 0)):
        """``count`` non-overlapping spheres at random positions in the box [lo, hi] (m);
        ``radius`` a number or (min, max) for a uniform size distribution. Raises if the
        region cannot hold them."""
        obst = (np.concatenate(self._x), np.concatenate(self._r)) if self._x else None
        x, r = random_packing(lo, hi, radius, int(count), np.random.default_rng(seed), obst)
        if len(x) < count:
            raise InvalidScene(f"fill_random: only {len(x)} of {count} spheres fit in [{list(lo)}, {list(hi)}] "
                               f"(random packing fills ~30% of a region); enlarge it or insert fewer")
        return self.add_particles(x, r, velocity=velocity, check_overlap=False)

    def add_pour(self, pour: Pour) -> Pour:
        """Reserve room for a :class:`Pour` (inactive spheres until inserted)."""
        self._check_open()
        rmax = float(np.max(pour.radius))
        m_min = float(self.material.sphere_mass(np.min(pour.radius)))
        count = int(math.ceil(pour.mass_rate * (pour.stop - pour.start) / m_min)) + 1
        park = np.tile(self.lo + rmax, (count, 1))
        self._x.append(park)
        self._r.append(np.full(count, rmax) if np.isscalar(pour.radius) else
                       np.random.default_rng(0).uniform(*pour.radius, count))
        self._v.append(np.zeros((count, 3)))
        self._w.append(np.zeros((count, 3)))
        self._on.append(np.zeros(count, np.int32))
        self._fixed.append(np.zeros(count, np.int32))
        pour.slots = np.arange(self.n, self.n + count)
        pour.used = 0
        self.n += count
        self.pours.append(pour)
        return pour

    def add_wall(self, wall: Wall) -> Wall:
        self._check_open()
        if not isinstance(wall, Wall):
            raise InvalidScene(f"expected a Wall, got {type(wall).__name__}")
        wall.name = wall.name or f"wall{len(self.walls)}"
        self.walls.append(wall)
        return wall

    def _check_open(self):
        if self.fields is not None:
            raise InvalidScene("spheres, pours and walls must be added before the first step/build()")

    def time_step_limit(self, material: DEMMaterial | None = None) -> float:
        """The largest accepted dt (s) (for ``material``, default the solver's own)."""
        mat = material or self.material
        rmin = float(np.concatenate(self._r).min())
        if mat.model == "linear":
            return mat.contact_time(rmin) / 20.0
        return self.rayleigh_fraction * mat.rayleigh_time(rmin)

    def check_time_step(self, material: DEMMaterial | None = None, which: str = ""):
        """Raise :class:`UnstableTimeStep` if dt exceeds :meth:`time_step_limit`."""
        mat = material or self.material
        limit = self.time_step_limit(mat)
        if self.dt > limit:
            what = ("1/20 of the linear contact time" if mat.model == "linear" else
                    f"{self.rayleigh_fraction} x the Rayleigh time")
            raise UnstableTimeStep(f"dt = {self.dt:.3g} s exceeds {what} of the smallest sphere{which}: use dt <= "
                                   f"{limit:.3g} s", dt=self.dt, limit=limit)

    def build(self):
        """Check the time step, allocate the fields and build the first neighbour lists."""
        if self.fields is not None:
            return self
        if self.n == 0:
            raise InvalidScene("the DEM system has no spheres")
        self.check_time_step()
        cfg = runtime.ensure_init()
        if cfg.arch == "gpu" and cfg.precision == "f64":
            raise NotImplementedError(
                "DEM in float64 on the GPU stops with a CUDA misaligned-address fault in Taichi 1.7.4; "
                "run DEM on the GPU in f32, or in f64 on the CPU (gradient checks)")
        r = np.concatenate(self._r)
        if self.skin is None:
            self.skin = 0.5 * float(r.min())
        self.cell = 2 * float(r.max()) + self.skin
        cells = tuple(int(max(1, math.ceil(e / self.cell))) for e in (self.hi - self.lo))
        self._grids = [w.triangle_grid(float(r.max()) * 1.01) if isinstance(w, MeshWall) else None
                       for w in self.walls]
        n_tris = sum(len(w.faces) for w in self.walls if isinstance(w, MeshWall))
        n_tcells = sum(len(g[3]) - 1 for g in self._grids if g is not None)
        n_trefs = sum(len(g[4]) for g in self._grids if g is not None)
        key = ("dem", pool.bucket(self.n), self.K, max(1, len(self.walls)), pool.bucket(max(n_tris, 1), 1),
               pool.bucket(max(n_tcells, 1), 1), pool.bucket(max(n_trefs, 1), 1), cells, self.requires_grad,
               runtime.config().precision)
        self.fields, self._token = pool.acquire(
            key, lambda: kd.DEMFields(key[1], self.K, key[3], key[4], key[5], key[6], cells, runtime.real_dtype(),
                                      self.requires_grad), self)
        self.state, self.spare = self.fields.A, self.fields.B
        self._upload()
        self._rebuild()
        return self

    def close(self):
        pool.release(getattr(self, "_token", None))
        self.fields = None

    def _np(self, a):
        return np.ascontiguousarray(a, dtype=runtime.np_dtype())

    def _upload(self):
        fs = self.fields
        r = np.concatenate(self._r)
        self._put(fs.radius, r)
        self._put(fs.mass, self._masses(r))
        self._put(fs.active, np.concatenate(self._on))
        self._put(fs.fixed, np.concatenate(self._fixed))
        fs.nbr_n.fill(0)
        fs.removed.fill(0)
        fs.removed_mass.fill(0)
        self.set_state(np.concatenate(self._x), np.concatenate(self._v), np.concatenate(self._w))
        self._upload_walls()
        self._upload_params()

    def _masses(self, r):
        """Sphere masses (kg); glued spheres get a huge mass so that m* of their contacts is
        the moving sphere's (as for a wall)."""
        m = self.material.sphere_mass(r)
        return np.where(np.concatenate(self._fixed).astype(bool), 1e20 * m, m)

    def _put(self, field, values):
        """Write the first n rows of a 1-D (per-sphere) field."""
        from ..kernels import mpm as km
        v = np.ascontiguousarray(values, np.int32 if field.dtype == ti.i32 else runtime.np_dtype())
        km.copy_in(field, v, len(v))

    def _get(self, field, shape_tail=(3,)):
        from ..kernels import mpm as km
        a = np.empty((self.n,) + shape_tail, np.int32 if field.dtype == ti.i32 else runtime.np_dtype())
        km.copy_out(field, a, self.n)
        return a

    def set_state(self, x, v, w):
        """Positions (m), velocities (m/s), angular velocities (rad/s), (n,3) each; contact
        histories and wall offsets reset to zero."""
        S = self.state
        for f, a in ((S.x, x), (S.v, v), (S.w, w)):
            self._put(f, np.asarray(a, float).reshape(self.n, 3))
        S.hist.fill(0)
        S.w_hist.fill(0)
        S.w_off.fill(0)

    def initial_arrays(self) -> dict:
        """The spheres as added: x, v, w (n,3) numpy arrays."""
        return {k: np.concatenate(a) for k, a in (("x", self._x), ("v", self._v), ("w", self._w))}

    def state_tensors(self):
        """(x, v, w) of the current state as (n,3) torch tensors (runtime precision)."""
        import torch
        S = self.state
        return tuple(torch.from_numpy(self._get(f).astype(np.float64)).to(runtime.torch_dtype())
                     for f in (S.x, S.v, S.w))

    def reset(self):
        """Back to t = 0 with the spheres as added (walls at their initial pose)."""
        init = self.initial_arrays()
        self._reset_for_rollout(init["x"], init["v"], init["w"])

    def _reset_for_rollout(self, x, v, w):
        self.build()
        fs = self.fields
        self.time, self.step_count = 0.0, 0
        for wall in self.walls:
            wall.rotation = np.eye(3)
        for p in self.pours:
            p.used, p.inserted_mass, p.next_time = 0, 0.0, p.start
        self._put(fs.active, np.concatenate(self._on))
        self._put(fs.fixed, np.concatenate(self._fixed))
        fs.nbr_n.fill(0)
        fs.removed.fill(0)
        fs.removed_mass.fill(0)
        self.set_state(x, v, w)
        self._pose_key = None
        self._update_wall_pose()
        self._rebuild()

    def _upload_params(self):
        p = np.zeros(kd.N_PRM)
        p[:] = self.material.vector(self.dt)
        self.fields.prm.from_numpy(self._np(p))
        self.fields.gravity[None] = self.gravity.tolist()
        kd.derive_constants(self.fields, self.material.model_code)

    def _upload_walls(self):
        fs = self.fields
        W = fs.n_walls
        t = np.zeros(W, np.int32)
        p, nn, a = np.zeros((W, 3)), np.zeros((W, 3)), np.zeros(W)
        ctr = np.zeros((W, 3))
        mg_lo, mg_h, mg_dims, mg_cell0 = np.zeros((W, 3)), np.ones(W), np.zeros((W, 3), np.int32), np.zeros(W, np.int32)
        tris, starts, refs = [], [], []
        toff = coff = roff = 0
        for i, w in enumerate(self.walls):
            t[i] = w.code
            p[i], nn[i], a[i] = w.params()
            ctr[i] = w.center
            g = self._grids[i]
            if g is not None:
                lo, h, dims, start, ids = g
                mg_lo[i], mg_h[i], mg_dims[i], mg_cell0[i] = lo, 1.0 / h, dims, coff
                tris.append(w.triangles())
                starts.append(start[:-1] + roff)
                refs.append(ids + toff)
                toff += len(w.faces)
                coff += len(start) - 1
                roff += len(ids)
        fs.w_type.from_numpy(t)
        for f, val in ((fs.w_p, p), (fs.w_n, nn), (fs.w_a, a), (fs.w_c, ctr), (fs.mg_lo, mg_lo), (fs.mg_inv_h, mg_h)):
            f.from_numpy(self._np(val))
        fs.mg_dims.from_numpy(mg_dims)
        fs.mg_cell0.from_numpy(mg_cell0)
        if tris:
            allt = np.concatenate(tris)
            for k, f in enumerate((fs.tri_a, fs.tri_b, fs.tri_c)):
                buf = np.zeros((f.shape[0], 3))
                buf[:len(allt)] = allt[:, k]
                f.from_numpy(self._np(buf))
            st = np.zeros(fs.tcell_start.shape[0], np.int32)
            st[:coff] = np.concatenate(starts)
            st[coff:] = roff
            fs.tcell_start.from_numpy(st)
            rf = np.zeros(fs.tcell_tri.shape[0], np.int32)
            rf[:roff] = np.concatenate(refs)
            fs.tcell_tri.from_numpy(rf)
        self._rotating = [w for w in self.walls if w.rotating()]
        self._walls_dynamic = bool(self._rotating) or any(callable(w.velocity) for w in self.walls)
        moving = np.zeros(W, np.int32)
        moving[:len(self.walls)] = [w.rotating() or callable(w.velocity) or bool(np.any(w.velocity))
                                    for w in self.walls]
        fs.w_moving.from_numpy(moving)
        self._pose_key = None
        self._update_wall_pose()

    def _update_wall_pose(self):
        """Per-step wall data: on/off, translation velocity, rotation (host -> device).
        Skipped while nothing can have changed (static walls between removal times)."""
        if self._pose_key is not None and not self._walls_dynamic and self.time < self._next_removal:
            return
        later = [w.remove_at for w in self.walls if w.remove_at is not None and w.remove_at > self.time]
        self._next_removal = min(later) if later else math.inf
        fs = self.fields
        W = fs.n_walls
        on = np.zeros(W, np.int32)
        vel, om, R = np.zeros((W, 3)), np.zeros((W, 3)), np.tile(np.eye(3), (W, 1, 1))
        for i, w in enumerate(self.walls):
            on[i] = w.on_at(self.time)
            vel[i] = w.velocity_at(self.time)
            om[i] = w.angular_velocity
            R[i] = w.rotation
        key = (on.tobytes(), vel.tobytes(), R.tobytes())
        if key == self._pose_key:
            return
        self._pose_key = key
        fs.w_on.from_numpy(on)
        fs.w_vel.from_numpy(self._np(vel))
        fs.w_omega.from_numpy(self._np(om))
        fs.w_R.from_numpy(self._np(R))

    def _advance_walls(self):
        """Rotate the rotating walls over one step (translation is integrated on the device)."""
        for w in self._rotating:
            w.rotation = rotation_step(w.rotation, w.angular_velocity, self.dt)

    def _swap(self):
        self.state, self.spare = self.spare, self.state

    def _rebuild(self):
        fs = self.fields
        inv_h = 1.0 / self.cell
        kd.bin_particles(fs, self.state, self.n, *self.lo.tolist(), inv_h, self.outflow_z)
        fs.overflow[None] = 0
        kd.build_neighbours(fs, self.state, self.n, *self.lo.tolist(), inv_h, self.skin)
        if fs.overflow[None]:
            raise InvalidScene(f"step {self.step_count}: a sphere has more than max_neighbors = {self.K} "
                               f"neighbours within the skin; raise max_neighbors (or reduce the skin)")
        kd.commit_neighbours(fs, self.n)
        if fs.overflow[None]:
            raise InvalidScene(f"step {self.step_count}: a sphere is the neighbour of more than max_neighbors = "
                               f"{self.K} spheres; raise max_neighbors")
        self.n_pairs = int(fs.pair_start[self.n])
        kd.remap_state(fs, self.state, self.spare, self.n, self.n_pairs, fs.n_walls)
        self._swap()
        if fs.n_walls <= kd.MAX_FLAGGED_WALLS:
            kd.flag_near_walls(fs, self.state, fs.n_walls, self.n, self.skin)
        fs.max_disp[None] = 0.0
        self.rebuilds += 1

    # ------------------------------------------------------------------ stepping
    def step(self, n: int = 1):
        """Advance ``n`` time steps."""
        self.build()
        fs = self.fields
        model = self.material.model_code
        for _ in range(int(n)):
            if self.pours:
                self._pour()
            self._update_wall_pose()
            kd.step(fs, self.state, self.spare, model, fs.n_walls, True, self.n, self.n_pairs)
            self._swap()
            self._advance_walls()
            self.time += self.dt
            self.step_count += 1
            if fs.max_disp[None] > 0.5 * self.skin:
                self._rebuild()

    def _pour(self):
        for p in self.pours:
            if p.start <= self.time < p.stop and self.time >= p.next_time - 0.5 * self.dt:
                p.next_time += p.interval
                self._insert(p)

    def _insert(self, p: Pour):
        fs = self.fields
        target = p.mass_rate * (min(self.time + p.interval, p.stop) - p.start)
        slots = p.slots[p.used:]
        r_all = np.concatenate(self._r)
        m = self.material.sphere_mass(r_all)
        k = 0
        while k < len(slots) and p.inserted_mass + m[slots[:k + 1]].sum() <= target + 0.5 * m[slots[k]]:
            k += 1
        if k == 0:
            return
        st = self.get_state()
        act = st["active"]
        x, r = random_packing(p.lo, p.hi, (r_all[slots[:k]].min(), r_all[slots[:k]].max()), k, p.rng,
                              (st["x"][act], r_all[act]))
        k = len(x)
        if k == 0:
            warnings.warn(f"t = {self.time:.3g} s: no room in the pour region; insertion skipped", RuntimeWarning)
            return
        use = slots[:k]
        X, V, Wv = st["x"], st["v"], st["w"]
        X[use], V[use], Wv[use] = x, p.velocity, 0.0
        on = act.astype(np.int32)
        on[use] = 1
        r_all[use] = r
        self._r = [r_all]
        S = self.state
        for f, a in ((S.x, X), (S.v, V), (S.w, Wv)):
            self._put(f, a)
        self._put(fs.radius, r_all)
        self._put(fs.mass, self._masses(r_all))
        self._put(fs.active, on)
        p.used += k
        p.inserted_mass += float(self.material.sphere_mass(r).sum())
        self._rebuild()

    # ------------------------------------------------------------------ state and output
    def get_state(self):
        """Dict of numpy arrays: x, v, w (n,3), active (n,) bool, radius (n,)."""
        self.build()
        S = self.state
        out = {k: self._get(f).astype(np.float64) for k, f in (("x", S.x), ("v", S.v), ("w", S.w))}
        out["active"] = self._get(self.fields.active, ()).astype(bool)
        out["radius"] = np.concatenate(self._r)
        return out

    def positions(self):
        return self.get_state()["x"]

    def wall_offsets(self) -> np.ndarray:
        """Translation (m) of each wall since t = 0, (W,3)."""
        return self.state.w_off.to_numpy()[: len(self.walls)].astype(np.float64)

    def diagnostics(self) -> dict:
        """Energies (J), momentum, active and discharged counts; raises
        :class:`SimulationDiverged` on NaN/inf, warns when a sphere outruns the skin."""
        self.build()
        fs = self.fields
        kd.diagnostics(fs, self.state, self.n, *self.gravity.tolist())
        s = fs.stats[None].to_numpy().astype(float)
        if not np.all(np.isfinite(s)):
            raise SimulationDiverged(self.step_count, "sphere state", "NaN/inf velocities or positions; dt too "
                                     "large or spheres inserted overlapping", body=self.name)
        if s[7] * self.dt > 0.5 * self.skin:
            warnings.warn(f"step {self.step_count}: a sphere moves {s[7] * self.dt:.3g} m per step, more than half "
                          f"the neighbour skin {self.skin:.3g} m; contacts may be missed (reduce dt or raise the "
                          f"skin)", RuntimeWarning, stacklevel=2)
        return {"time": self.time, "step": self.step_count, "kinetic": s[0], "rotational": s[1], "potential": s[2],
                "elastic": 0.0, "energy": s[0] + s[1] + s[2], "momentum": s[3:6].tolist(), "max_speed": s[7],
                "particles_active": int(s[6]), "discharged": int(fs.removed[None]),
                "discharged_mass": float(fs.removed_mass[None])}

    def frame(self) -> dict:
        """``{"particles": (x, point_data), "meshes": {name: (verts, faces)}}`` of the active spheres."""
        st = self.get_state()
        keep = st["active"]
        data = {"body": np.zeros(int(keep.sum()), np.int32), "radius": st["radius"][keep].astype(np.float32),
                "velocity": st["v"][keep].astype(np.float32)}
        off = self.wall_offsets()
        # finite mesh walls only: planes, boxes and cylinders would hide the spheres in previews
        meshes = {w.name: w.surface(off[i]) for i, w in enumerate(self.walls)
                  if w.on_at(self.time) and w.surface() is not None}
        return {"particles": (st["x"][keep], data), "meshes": meshes}

    def checkpoint(self):
        """(arrays, meta) to resume from (see :meth:`restore`)."""
        self.build()
        fs, S, n = self.fields, self.state, self.n
        arrays = {k: f.to_numpy()[:n] for k, f in S.fields().items() if k not in ("w_off", "hist")}
        arrays["w_off"] = S.w_off.to_numpy()
        arrays["hist"] = S.hist.to_numpy()[: self.n_pairs]
        arrays["x_ref"] = fs.x_ref.to_numpy()[:n]
        arrays["active"] = fs.active.to_numpy()[:n]
        arrays["radius"] = np.concatenate(self._r)
        arrays["nbr_n"] = fs.nbr_n.to_numpy()[:n]
        arrays["pair_start"] = fs.pair_start.to_numpy()[: n + 1]
        arrays["pair_i"] = fs.pair_i.to_numpy()[: self.n_pairs]
        arrays["pair_j"] = fs.pair_j.to_numpy()[: self.n_pairs]
        arrays["wall_rotation"] = np.array([w.rotation for w in self.walls]).reshape(-1, 3, 3)
        meta = {"time": self.time, "step": self.step_count, "n": n, "removed": int(fs.removed[None]),
                "removed_mass": float(fs.removed_mass[None]),
                "pours": [[p.used, p.inserted_mass, p.next_time] for p in self.pours]}
        return arrays, meta

    def restore(self, arrays, meta):
        self.build()
        fs, S, n = self.fields, self.state, self.n
        if int(meta["n"]) != n:
            raise InvalidScene(f"checkpoint has {meta['n']} spheres, the solver {n}")

        def put(f, a):
            full = f.to_numpy()
            full[: len(a)] = a
            f.from_numpy(full)
        for k, f in S.fields().items():
            put(f, arrays[k])
        for k in ("x_ref", "active", "nbr_n", "pair_start", "pair_i", "pair_j"):
            put(getattr(fs, k), arrays[k])
        self._r = [np.asarray(arrays["radius"], float)]
        self._put(fs.radius, self._r[0])
        self._put(fs.mass, self._masses(self._r[0]))
        for w, R in zip(self.walls, arrays["wall_rotation"]):
            w.rotation = np.asarray(R)
        self.time, self.step_count = float(meta["time"]), int(meta["step"])
        fs.removed[None] = int(meta["removed"])
        fs.removed_mass[None] = float(meta["removed_mass"])
        for p, (used, mass, nxt) in zip(self.pours, meta.get("pours", [])):
            p.used, p.inserted_mass, p.next_time = int(used), float(mass), float(nxt)
        self._pose_key = None
        self._update_wall_pose()
        self._rebuild()

    # ------------------------------------------------------------------ protocol
    def initial_state(self) -> State:
        import torch
        dtype = runtime.torch_dtype()
        return State({k: torch.as_tensor(a, dtype=dtype) for k, a in self.initial_arrays().items()})

    def current_state(self) -> State:
        self.build()
        return State(dict(zip("xvw", self.state_tensors())))

    def parameter_values(self) -> dict:
        """The material's ``E``, ``nu``, ``restitution``, ``friction``, ``rolling_friction``,
        ``cohesion`` and (linear model) ``stiffness``."""
        return {k: float(getattr(self.material, k)) for k in PARAMETERS}

    def control_names(self) -> list:
        """Each wall's translation ``velocity``: (steps, 3) or (3,) m/s."""
        return [f"{w.name}.velocity" for w in self.walls]

    def _rollout(self, steps, state, params, control, record_every, tape_memory, check_gradients) -> Rollout:
        import torch
        from .rollout import rollout_steps
        dtype = runtime.torch_dtype()
        wall_velocity = None
        given = {i: control[f"{w.name}.velocity"] for i, w in enumerate(self.walls) if f"{w.name}.velocity" in control}
        if given:
            cols = []
            for i in range(max(given) + 1):
                if i in given:
                    v = given[i].to(dtype) if torch.is_tensor(given[i]) else torch.as_tensor(given[i], dtype=dtype)
                    v = v.expand(steps, 3) if v.shape == (3,) else v
                    if v.shape != (steps, 3):
                        raise InvalidScene(f"control {self.walls[i].name}.velocity must have shape (3,) or "
                                           f"({steps}, 3), got {tuple(v.shape)}")
                else:
                    v = torch.as_tensor(np.array([self.walls[i].velocity_at(k * self.dt) for k in range(steps)]),
                                        dtype=dtype)
                cols.append(v)
            wall_velocity = torch.stack(cols, 1)
        x0, v0, w0 = (None, None, None) if state is None else (state["x"], state["v"], state["w"])
        out = rollout_steps(self, steps, params, x0, v0, w0, wall_velocity, record_every, check_gradients,
                            tape_memory)
        every = record_every or steps
        records = [((k + 1) * every, State(r)) for k, r in enumerate(out["records"])]
        return Rollout(State(x=out["x"], v=out["v"], w=out["w"]), records)

    def describe(self) -> dict:
        m = self.material
        return {"solver": f"DEM ({'Hertz-Mindlin' if m.model == 'hertz' else 'linear spring-dashpot'})",
                "particles": self.n, "dt": self.dt, "time_step_limit": self.time_step_limit(),
                "material": dict(m.__dict__), "walls": [type(w).__name__ for w in self.walls],
                "domain_min": self.lo.tolist(), "domain_max": self.hi.tolist(), "skin": self.skin,
                "max_neighbors": self.K, "outflow_z": None if self.outflow_z < -1e29 else self.outflow_z}
