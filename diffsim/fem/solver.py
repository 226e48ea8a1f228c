"""Finite elements: soft bodies of linear tetrahedra (Python side).

    sim = ds.FEMSolver(dt=2e-5, gravity=(0, 0, 0))
    pad = sim.add_body(ds.dome_pad(), ds.FEMMaterial(E=3e5, nu=0.45, density=1100),
                       contact=ds.PenaltyContact(stiffness=1e10, friction=1.0))
    plate = sim.add_driver(pad, pad.nodes_where(lambda X: X[:, 2] < 1e-6), velocity=(0, 0, -0.01))
    sim.add_collider(ds.SphereCollider(center=(0, 0, -0.004), radius=0.005))
    sim.step(500)

Bodies are tetrahedral meshes (:class:`~diffsim.TetMesh`) with a hyperelastic material
(stable Neo-Hookean or fixed corotated) and Rayleigh-style damping; node sets can be
driven kinematically by a rigid 6-DoF motion (a sensor's back plate, a gripper finger;
zero velocity = fixed). Surface nodes touch rigid colliders (:mod:`diffsim.colliders`,
analytic or mesh SDFs, so no triangle search) through a penalty pressure with Coulomb
friction. The kernels and the contact law: :mod:`diffsim.kernels.fem`; gradients:
:func:`diffsim.rollout`.

Units: SI (m, kg, s, Pa). ``contact.stiffness`` is a pressure per metre of penetration
(Pa/m): a node of surface area ``A`` at depth ``d`` feels ``k_n A d``, so the contact
does not stiffen when the mesh is refined.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import pool, runtime
from ..core.names import by_part
from ..core.state import State
from ..core.system import Rollout, System
from ..colliders import Collider, pack_colliders, rotation_step, sdf_size
from ..errors import InvalidMaterial, InvalidScene, SimulationDiverged, UnstableTimeStep
from .tetmesh import TetMesh, check_tet_mesh

MODELS = {"neo_hookean": 0, "corotated": 1}


@dataclass(frozen=True)
class FEMMaterial:
    """Hyperelastic solid.

    Args:
        E: Young's modulus (Pa). nu: Poisson ratio (-1, 0.5). density: kg/m^3.
        model: ``"neo_hookean"`` (stable Neo-Hookean, robust to inversion; default) or
            ``"corotated"`` (fixed corotated; assumes elements are not inverted).
        mass_damping: mass-proportional damping alpha (1/s): ``f = -alpha m v``.
        stiffness_damping: stiffness-proportional damping beta (s): a viscous stress
            ``beta (mu (Fd + Fd^T) + lam tr(Fd) I)`` of the deformation rate ``Fd``.
    """
    E: float = 1e5
    nu: float = 0.45
    density: float = 1100.0
    model: str = "neo_hookean"
    mass_damping: float = 0.0
    stiffness_damping: float = 0.0

    def __post_init__(self):
        def bad(msg):
            raise InvalidMaterial(f"FEMMaterial: {msg}")
        if not (math.isfinite(self.E) and self.E > 0):
            bad(f"Young's modulus E must be > 0 Pa, got {self.E}")
        if not (-1.0 < self.nu < 0.5):
            bad(f"Poisson ratio nu must be in (-1, 0.5), got {self.nu}")
        if not (math.isfinite(self.density) and self.density > 0):
            bad(f"density must be > 0 kg/m^3, got {self.density}")
        if self.model not in MODELS:
            bad(f"model must be one of {sorted(MODELS)}, got {self.model!r}")
        if not (self.mass_damping >= 0 and self.stiffness_damping >= 0):
            bad(f"damping must be >= 0, got alpha={self.mass_damping}, beta={self.stiffness_damping}")

    @property
    def lame(self):
        mu = self.E / (2 * (1 + self.nu))
        return mu, self.E * self.nu / ((1 + self.nu) * (1 - 2 * self.nu))

    def wave_speed(self) -> float:
        """P-wave speed sqrt((lam + 2 mu) / rho) (m/s)."""
        mu, lam = self.lame
        return math.sqrt((lam + 2 * mu) / self.density)

    def vector(self):
        return [self.E, self.nu, self.mass_damping, self.stiffness_damping]

    def describe(self) -> dict:
        return {"E": self.E, "nu": self.nu, "density": self.density, "model": self.model,
                "mass_damping": self.mass_damping, "stiffness_damping": self.stiffness_damping}


@dataclass(frozen=True)
class PenaltyContact:
    """Penalty contact of a body's surface nodes with colliders.

    Args:
        stiffness: pressure per metre of penetration (Pa/m); the penetration under a
            pressure p is p / stiffness.
        damping: Hunt-Crossley factor (s/m): the pressure is multiplied by
            ``1 + damping * approach speed``.
        friction: Coulomb coefficient (stick and slip, no regularisation speed).
    """
    stiffness: float = 1e9
    damping: float = 0.0
    friction: float = 0.5

    def __post_init__(self):
        if not (math.isfinite(self.stiffness) and self.stiffness > 0):
            raise InvalidMaterial(f"PenaltyContact: stiffness must be > 0 Pa/m, got {self.stiffness}")
        if not self.damping >= 0:
            raise InvalidMaterial(f"PenaltyContact: damping must be >= 0 s/m, got {self.damping}")
        if not self.friction >= 0:
            raise InvalidMaterial(f"PenaltyContact: friction must be >= 0, got {self.friction}")

    def vector(self):
        return [self.stiffness, self.damping, self.friction]


@dataclass
class FEMBody:
    """One tetrahedral body of a :class:`FEMSolver` (its nodes are ``start:stop``)."""
    name: str
    mesh: TetMesh                  # in world coordinates at rest
    material: FEMMaterial
    contact: PenaltyContact
    start: int
    stop: int
    tet_start: int
    surface: np.ndarray            # boundary triangles, global node indices

    @property
    def nodes(self) -> np.ndarray:
        return np.arange(self.start, self.stop)

    def nodes_where(self, predicate) -> np.ndarray:
        """Global indices of the nodes whose rest positions (V,3) satisfy ``predicate``."""
        mask = np.asarray(predicate(self.mesh.vertices), bool)
        if mask.shape != (self.stop - self.start,):
            raise InvalidScene("nodes_where: the predicate must return one bool per node")
        return self.start + np.nonzero(mask)[0]


class Driver:
    """Nodes moved as one rigid frame: ``x = R (X - center) + center + translation``.

    ``velocity`` (m/s) and ``angular_velocity`` (rad/s, world frame, about the moving
    center) are constants or callables of time; zero for both = fixed nodes.
    """

    def __init__(self, nodes, center, velocity=(0, 0, 0), angular_velocity=(0, 0, 0), name=None):
        self.nodes = np.asarray(nodes, np.int64)
        self.center = np.asarray(center, np.float64)
        self._velocity = velocity
        self._omega = angular_velocity
        self.name = name
        self.reset()

    def reset(self):
        self.translation = np.zeros(3)
        self.rotation = np.eye(3)

    def velocity_at(self, t):
        v = self._velocity(t) if callable(self._velocity) else self._velocity
        return np.asarray(v, np.float64).reshape(3)

    def angular_velocity_at(self, t):
        w = self._omega(t) if callable(self._omega) else self._omega
        return np.asarray(w, np.float64).reshape(3)

    def advance(self, t, dt):
        self.translation = self.translation + dt * self.velocity_at(t)
        self.rotation = rotation_step(self.rotation, self.angular_velocity_at(t), dt)

    def describe(self):
        return {"name": self.name, "nodes": int(self.nodes.size), "center": self.center.tolist()}


class FEMSolver(System):
    """Explicit FEM of tetrahedral soft bodies with kinematic drivers and rigid colliders.

    Args:
        dt: substep (s); checked against the elastic and contact stability limits.
        gravity: m/s^2 (``(0, 0, 0)`` to switch it off).
        tape_substeps: substeps kept per chunk (the forward runs in chunks of at most
            this many substeps; a differentiable rollout keeps every substep of a chunk
            and recomputes chunks that were overwritten). Memory ~ 18 floats per node
            and substep.
        cfl: safety factor on the elastic time step limit.
        contact_margin: body-body contact pairs are formed, once per chunk, between
            surface nodes and triangles of other bodies closer than this (m); default
            twice the largest mean edge length of the bodies.
    """

    def __init__(self, dt: float, gravity=(0.0, 0.0, -9.81), tape_substeps: int = 100, cfl: float = 0.5,
                 contact_margin: float | None = None):
        if not (math.isfinite(dt) and dt > 0):
            raise UnstableTimeStep(f"dt must be > 0 s, got {dt}", dt=dt)
        if int(tape_substeps) < 1:
            raise InvalidScene(f"tape_substeps must be >= 1, got {tape_substeps}")
        self.dt = float(dt)
        self.gravity = np.asarray(gravity, np.float64).reshape(3)
        self.K = int(tape_substeps)
        self.cfl = float(cfl)
        self._margin = contact_margin
        self.bodies: list[FEMBody] = []
        self.drivers: list[Driver] = []
        self.colliders: list[Collider] = []
        self._loads = []
        # observers (e.g. tactile sensors): readings(x, contact_force) -> diagnostics entries,
        # images(x) -> frame images, describe(); the solver knows nothing else about them
        self.instruments = []
        self.fields = None
        self._pool_token = None
        self.time = 0.0
        self.step_count = 0
        self.penetration_trace: list[float] = []   # deepest penetration per chunk (m)
        self.max_penetration = 0.0
        self._contact_force = None

    # ------------------------------------------------------------------------ scene
    def _require_unbuilt(self):
        if self.fields is not None:
            raise InvalidScene("the FEM scene is already built; add bodies, drivers and colliders before "
                               "build() / step()")

    @property
    def n(self) -> int:
        return self.bodies[-1].stop if self.bodies else 0

    @property
    def n_tets(self) -> int:
        return (self.bodies[-1].tet_start + len(self.bodies[-1].mesh.tets)) if self.bodies else 0

    def add_body(self, mesh: TetMesh, material: FEMMaterial, name: str | None = None,
                 contact: PenaltyContact | None = None, position=(0, 0, 0), rotation=None) -> FEMBody:
        """Add a tetrahedral body; ``position``/``rotation`` place its mesh in the world."""
        self._require_unbuilt()
        if not isinstance(mesh, TetMesh):
            raise InvalidScene(f"add_body needs a TetMesh (see diffsim.load_tet_mesh), got {type(mesh).__name__}")
        if not isinstance(material, FEMMaterial):
            raise InvalidMaterial(f"add_body needs an FEMMaterial, got {type(material).__name__}")
        R = np.eye(3) if rotation is None else np.asarray(rotation, np.float64)
        if R.shape != (3, 3) or not np.allclose(R @ R.T, np.eye(3), atol=1e-9) or np.linalg.det(R) < 0:
            raise InvalidScene("rotation must be a 3x3 proper rotation matrix")
        v = mesh.vertices @ R.T + np.asarray(position, np.float64).reshape(3)
        placed = check_tet_mesh(v, mesh.tets, name=name or f"body{len(self.bodies)}")
        start = self.n
        body = FEMBody(name or f"body{len(self.bodies)}", placed, material, contact or PenaltyContact(),
                       start, start + len(v), self.n_tets, placed.surface() + start)
        if any(b.name == body.name for b in self.bodies):
            raise InvalidScene(f"a body named {body.name!r} exists already")
        self.bodies.append(body)
        return body

    def body(self, name: str) -> FEMBody:
        for b in self.bodies:
            if b.name == name:
                return b
        raise KeyError(f"no body named {name!r}; bodies: {[b.name for b in self.bodies]}")

    def add_driver(self, body: FEMBody, nodes, velocity=(0, 0, 0), angular_velocity=(0, 0, 0), center=None,
                   name: str | None = None) -> Driver:
        """Drive ``nodes`` (global indices) of ``body`` as one rigid frame (see :class:`Driver`);
        ``center`` defaults to the nodes' centroid."""
        self._require_unbuilt()
        nodes = np.unique(np.asarray(nodes, np.int64).ravel())
        if nodes.size == 0:
            raise InvalidScene("add_driver: no nodes selected")
        if nodes.min() < body.start or nodes.max() >= body.stop:
            raise InvalidScene(f"add_driver: nodes outside body {body.name!r}")
        for d in self.drivers:
            if np.intersect1d(d.nodes, nodes).size:
                raise InvalidScene("add_driver: a node can have one driver only")
        X = self._rest_positions()[nodes]
        drv = Driver(nodes, X.mean(0) if center is None else center, velocity, angular_velocity,
                     name or f"driver{len(self.drivers)}")
        self.drivers.append(drv)
        return drv

    def add_load(self, nodes, force, distribute: str = "area"):
        """A constant external force ``force`` (N, 3 components, the total) spread over
        ``nodes`` (global indices) in proportion to their surface area (``"area"``, a uniform
        traction) or equally (``"equal"``). Loads add up; applied from the next step."""
        nodes = np.unique(np.asarray(nodes, np.int64).ravel())
        force = np.asarray(force, np.float64).reshape(3)
        if nodes.size == 0 or nodes.min() < 0 or nodes.max() >= self.n:
            raise InvalidScene(f"add_load: node indices must be in [0, {self.n})")
        if distribute not in ("area", "equal"):
            raise InvalidScene(f"add_load: distribute must be 'area' or 'equal', got {distribute!r}")
        w = np.ones(nodes.size)
        if distribute == "area":
            w = self._lumped()[1][nodes]
            if w.sum() <= 0:
                raise InvalidScene("add_load: the nodes have no surface area; use distribute='equal'")
        self._loads.append((nodes, force[None] * (w / w.sum())[:, None]))
        if self.fields is not None:
            self._upload_loads()

    def _upload_loads(self):
        f = np.zeros((self.n, 3))
        for nodes, share in self._loads:
            np.add.at(f, nodes, share)
        self.fields.f_ext.from_numpy(self._np(f))

    def fix_nodes(self, body: FEMBody, nodes, name: str | None = None) -> Driver:
        """Pin ``nodes`` at their rest positions."""
        return self.add_driver(body, nodes, name=name or f"fixed{len(self.drivers)}")

    def add_collider(self, collider: Collider) -> Collider:
        self._require_unbuilt()
        if not isinstance(collider, Collider):
            raise InvalidScene(f"add_collider needs a diffsim Collider, got {type(collider).__name__}")
        self.colliders.append(collider)
        return collider

    @property
    def contact_margin(self) -> float:
        if self._margin is not None:
            return float(self._margin)
        return 2.0 * max((b.mesh.edge_length() for b in self.bodies), default=0.0)

    @property
    def lo(self) -> np.ndarray:
        """Lower corner of a box around the scene at rest (m), for previews."""
        return self._view_box()[0]

    @property
    def hi(self) -> np.ndarray:
        return self._view_box()[1]

    def _view_box(self):
        X = self._rest_positions()
        lo, hi = X.min(0), X.max(0)
        pad = 0.15 * float(np.max(hi - lo))
        return lo - pad, hi + pad

    def _rest_positions(self) -> np.ndarray:
        return np.concatenate([b.mesh.vertices for b in self.bodies]) if self.bodies else np.zeros((0, 3))

    # ------------------------------------------------------------------------ checks
    def _lumped(self):
        """Node masses (kg) and surface areas (m^2)."""
        mass = np.zeros(self.n)
        area = np.zeros(self.n)
        for b in self.bodies:
            vol = b.mesh.volumes
            np.add.at(mass, b.mesh.tets.ravel() + b.start, np.repeat(b.material.density * vol / 4.0, 4))
            X = self._rest_positions()
            tri = X[b.surface]
            a = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
            np.add.at(area, b.surface.ravel(), np.repeat(a / 3.0, 3))
        return mass, area

    def stable_dt(self, materials=None) -> float:
        """Largest substep (s) the elastic waves (with damping) allow (the penalty contact is
        implicit in each node's motion and adds no limit); ``materials``: one FEMMaterial per
        body replacing the bodies' own (e.g. with a rollout's overrides)."""
        limit = math.inf
        for bi, b in enumerate(self.bodies):
            mat = materials[bi] if materials is not None else b.material
            X = b.mesh.vertices[b.mesh.tets]
            vol = np.abs(b.mesh.volumes)
            faces = [(1, 2, 3), (0, 2, 3), (0, 1, 3), (0, 1, 2)]
            amax = np.max([0.5 * np.linalg.norm(np.cross(X[:, j] - X[:, i], X[:, k] - X[:, i]), axis=1)
                           for i, j, k in faces], axis=0)
            h = float(np.min(3.0 * vol / amax))           # smallest tet altitude (m)
            omega = 2.0 * mat.wave_speed() / h
            zeta = 0.5 * mat.stiffness_damping * omega
            limit = min(limit, self.cfl * 2.0 / omega * (math.sqrt(1 + zeta * zeta) - zeta))
        return limit

    def check_time_step(self, materials=None):
        limit = self.stable_dt(materials)
        if self.dt > limit:
            which = " with the rollout's parameter overrides" if materials is not None else ""
            raise UnstableTimeStep(
                f"dt = {self.dt:.3g} s exceeds the stability limit {limit:.3g} s of this FEM scene{which} (elastic "
                f"waves across the thinnest tet with cfl = {self.cfl}, with the stiffness damping); use "
                f"dt <= {limit:.3g} s, a coarser mesh, a softer material or less stiffness damping",
                dt=self.dt, limit=limit)

    # ------------------------------------------------------------------------ fields
    def build(self):
        """Validate, borrow fields from the pool and upload the scene (idempotent)."""
        if self.fields is not None:
            return self
        if not self.bodies:
            raise InvalidScene("the FEM scene has no bodies; add_body() first")
        self.check_time_step()
        runtime.ensure_init()
        from ..kernels.fem import FEMFields
        S = len(self.colliders)
        sdf = sdf_size(self.colliders)
        self.pair_capacity = sum(len(np.unique(b.surface)) for b in self.bodies) if len(self.bodies) > 1 else 0
        key = ("fem", self.n, self.n_tets, len(self.bodies), max(1, len(self.drivers)), S, sdf, self.K,
               self.pair_capacity, runtime.config().precision)
        self.fields, self._pool_token = pool.acquire(
            key, lambda: FEMFields(self.n, self.n_tets, len(self.bodies), len(self.drivers), S, sdf, self.K,
                                   self.K, self.pair_capacity, runtime.real_dtype()), self)
        self._upload_mesh()
        self.cols = tuple(int(c.code) for c in self.colliders)
        self.models = sum({1 << MODELS[b.material.model] for b in self.bodies})
        self.reset()
        return self

    def close(self):
        pool.release(self._pool_token)
        self.fields = None

    def _np(self, a):
        return np.ascontiguousarray(a, dtype=runtime.np_dtype())

    def _upload_mesh(self):
        fs = self.fields
        X = self._rest_positions()
        tets = np.concatenate([b.mesh.tets + b.start for b in self.bodies]).astype(np.int32)
        Dm = np.stack([X[tets[:, k]] - X[tets[:, 0]] for k in (1, 2, 3)], axis=2)
        mass, area = self._lumped()
        self._mass = mass
        self._area = area
        node_body = np.concatenate([np.full(b.stop - b.start, i, np.int32) for i, b in enumerate(self.bodies)])
        tet_body = np.concatenate([np.full(len(b.mesh.tets), i, np.int32) for i, b in enumerate(self.bodies)])
        driver = np.full(self.n, -1, np.int32)
        centers = np.zeros((max(1, len(self.drivers)), 3))
        for d, drv in enumerate(self.drivers):
            driver[drv.nodes] = d
            centers[d] = drv.center
        fs.X.from_numpy(self._np(X))
        self._upload_loads()
        fs.mass.from_numpy(self._np(mass))
        inv_mass = 1.0 / mass
        inv_mass[driver >= 0] = 0.0
        fs.inv_mass.from_numpy(self._np(inv_mass))
        fs.area.from_numpy(self._np(area))
        fs.node_body.from_numpy(node_body)
        self._node_body, self._tet_body = node_body, tet_body
        fs.driver.from_numpy(driver)
        fs.drv_c.from_numpy(self._np(centers))
        fs.tet.from_numpy(tets)
        fs.Dm_inv.from_numpy(self._np(np.linalg.inv(Dm)))
        fs.vol.from_numpy(self._np(np.abs(np.linalg.det(Dm)) / 6.0))
        fs.tet_body.from_numpy(tet_body)
        fs.model.from_numpy(np.array([MODELS[b.material.model] for b in self.bodies], np.int32))
        fs.prm.from_numpy(self._np([b.material.vector() for b in self.bodies]))
        fs.cprm.from_numpy(self._np([b.contact.vector() for b in self.bodies]))
        if self.colliders:
            packed = pack_colliders(self.colliders, len(self.colliders), fs.sdf.shape[0])
            fs.c_shape.from_numpy(self._np(packed["shape"]))
            fs.c_mesh.from_numpy(packed["mesh"])
            if packed["sdf"] is not None:
                fs.sdf.from_numpy(self._np(packed["sdf"]))

    # ------------------------------------------------------------------------ state
    def rest_state(self):
        """``(x, v)`` at rest: the placed meshes, zero velocity (numpy, (N,3))."""
        X = self._rest_positions()
        return X.copy(), np.zeros_like(X)

    def reset(self):
        """Back to rest at time 0 (drivers and colliders too)."""
        from ..kernels import fem as kf
        self.build()
        x, v = self.rest_state()
        self._pending_state = None
        kf.load_state(self.fields, self._np(x), self._np(v), 0, self.n)
        for d in self.drivers:
            d.reset()
        for c in self.colliders:
            c.reset()
        self.time = 0.0
        self.step_count = 0
        self.penetration_trace = []
        self.max_penetration = 0.0
        self._contact_force = np.zeros((self.n, 3))

    def set_state(self, x, v):
        from ..kernels import fem as kf
        self.build()
        self._pending_state = None
        x = np.asarray(x, np.float64).reshape(self.n, 3)
        v = np.asarray(v, np.float64).reshape(self.n, 3)
        kf.load_state(self.fields, self._np(x), self._np(v), 0, self.n)

    def _row(self, fld, row: int) -> np.ndarray:
        from ..kernels import fem as kf
        out = np.zeros((1, self.n, 3), runtime.np_dtype())
        kf.read_rows(fld, np.array([row], np.int32), out, self.n)
        return out[0].astype(np.float64)

    def get_state(self) -> dict:
        """``{"x": (N,3) m, "v": (N,3) m/s}`` now."""
        self.build()
        if getattr(self, "_pending_state", None) is not None:
            return {k: a.copy() for k, a in self._pending_state.items()}
        return {"x": self._row(self.fields.x, 0), "v": self._row(self.fields.v, 0)}

    def hold_state(self, x, v):
        """The state after a differentiable rollout, kept aside until the solver steps or
        its fields are read: writing it into the fields now would overwrite the rollout's
        tape, which its backward pass still uses."""
        self._pending_state = {"x": np.asarray(x, np.float64).reshape(self.n, 3),
                               "v": np.asarray(v, np.float64).reshape(self.n, 3)}

    def _drop_tape(self):
        """The fields no longer hold a rollout chunk's substeps (a pending backward pass
        recomputes its chunk)."""
        if getattr(self, "_tapes", None) is not None:
            self._tapes.close()

    def _settle_state(self):
        """Write a held state into the fields (the last rollout's tape is then stale)."""
        if getattr(self, "_pending_state", None) is not None:
            st = self._pending_state
            self.set_state(st["x"], st["v"])
            self._drop_tape()

    def positions(self, body: str | None = None) -> np.ndarray:
        x = self.get_state()["x"]
        if body is None:
            return x
        b = self.body(body)
        return x[b.start:b.stop]

    def contact_forces(self) -> np.ndarray:
        """Force (N) the colliders exerted on each node, averaged over the last chunk (N,3)."""
        return self._contact_force.copy()

    # ------------------------------------------------------------------------ poses
    def collider_rows(self, k: int):
        """Collider positions (k+1, S, 3) and rotations (k+1, S, 3, 3) for the rows of the
        next ``k`` substeps (advancing the colliders)."""
        S = max(1, len(self.colliders))
        cp = np.zeros((k + 1, S, 3))
        cR = np.broadcast_to(np.eye(3), (k + 1, S, 3, 3)).copy()
        for j in range(k + 1):
            for s, c in enumerate(self.colliders):
                cp[j, s], cR[j, s] = c.position, c.rotation
                if j < k:
                    c.advance(self.time + j * self.dt, self.dt)
        return cp, cR

    def _pose_rows(self, k: int):
        """Driver and collider poses for rows 0..k of the next chunk (advancing them)."""
        D = max(1, len(self.drivers))
        dt_ = np.zeros((k + 1, D, 3))
        dR = np.broadcast_to(np.eye(3), (k + 1, D, 3, 3)).copy()
        for j in range(k + 1):
            for d, drv in enumerate(self.drivers):
                dt_[j, d], dR[j, d] = drv.translation, drv.rotation
                if j < k:
                    drv.advance(self.time + j * self.dt, self.dt)
        return (dt_, dR) + self.collider_rows(k)

    def _upload_poses(self, dt_, dR, cp, cR):
        fs = self.fields
        K1 = self.K + 1

        def pad(a, eye=False):
            out = np.zeros((K1,) + a.shape[1:])
            if eye:
                out[:] = np.eye(3)
            out[: len(a)] = a
            return self._np(out)
        fs.drv_t.from_numpy(pad(dt_))
        fs.drv_R.from_numpy(pad(dR, True))
        fs.col_p.from_numpy(pad(cp))
        fs.col_R.from_numpy(pad(cR, True))

    # ------------------------------------------------------------------------ stepping
    def contact_pairs(self, x):
        """Body-body contact pairs for a chunk that starts at node positions ``x`` (N,3).

        Every free surface node is paired with the closest surface triangle of any other
        body within ``contact_margin`` among the triangles that *face* it (triangle normal
        against the node's normal, cosine < -0.2): a node near a corner is not pushed out
        sideways through a side face. Candidates come from a KD-tree over triangle
        centroids. Returns ``(nodes (P,), triangles (P,3), bary (P,3))``.
        """
        from scipy.spatial import cKDTree

        from ..geometry.triangles import closest_on_triangles
        empty = (np.zeros(0, np.int32), np.zeros((0, 3), np.int32), np.zeros((0, 3)))
        if len(self.bodies) < 2:
            return empty
        x = np.asarray(x, np.float64)
        free = np.ones(self.n, bool)
        for d in self.drivers:
            free[d.nodes] = False
        cross, node_n = self._surface_normals(x)
        tri_n = {name: cr / np.maximum(np.linalg.norm(cr, axis=1, keepdims=True), 1e-300)
                 for name, cr in cross.items()}
        margin = self.contact_margin
        nodes, tris, bary = [], [], []
        for A in self.bodies:
            na = np.unique(A.surface)
            na = na[free[na]]
            best = np.full(len(na), np.inf)
            tri = np.zeros((len(na), 3), np.int64)
            bc = np.zeros((len(na), 3))
            for B in self.bodies:
                if B is A or len(na) == 0:
                    continue
                t = x[B.surface]
                cent = t.mean(1)
                reach = margin + float(np.linalg.norm(t - cent[:, None], axis=2).max())
                cand = cKDTree(cent).query_ball_point(x[na], reach)
                pi = np.repeat(np.arange(len(na)), [len(c) for c in cand])
                if pi.size == 0:
                    continue
                fi = np.concatenate([np.asarray(c, np.int64) for c in cand])
                ok = np.einsum("ij,ij->i", tri_n[B.name][fi], node_n[na[pi]]) < -0.2
                pi, fi = pi[ok], fi[ok]
                b = closest_on_triangles(x[na[pi]], t[fi, 0], t[fi, 1], t[fi, 2])
                d = np.linalg.norm(np.einsum("ki,kij->kj", b, t[fi]) - x[na[pi]], axis=1)
                order = np.lexsort((fi, d, pi))
                first = order[np.r_[True, pi[order][1:] != pi[order][:-1]]] if order.size else order
                sel = first[d[first] < best[pi[first]]]
                best[pi[sel]], tri[pi[sel]], bc[pi[sel]] = d[sel], B.surface[fi[sel]], b[sel]
            keep = best < margin
            nodes.append(na[keep])
            tris.append(tri[keep])
            bary.append(bc[keep])
        return (np.concatenate(nodes).astype(np.int32), np.concatenate(tris).astype(np.int32),
                np.concatenate(bary))

    def body_parameter_grads(self):
        """Gradients of the per-body material (B,4) and contact (B,3) parameters, summed
        from the per-tet and per-node copies the substep kernel reads."""
        from ..kernels import fem as kf
        fs = self.fields
        B = len(self.bodies)
        tg = fs.tet_prm.grad.to_numpy().astype(np.float64)
        ng = fs.node_prm.grad.to_numpy().astype(np.float64)
        gprm = np.stack([np.bincount(self._tet_body, tg[:, k], minlength=B) for k in range(kf.N_PRM)], 1)
        gprm[:, kf.P_ALPHA] += np.bincount(self._node_body, ng[:, kf.N_ALPHA], minlength=B)
        gcprm = np.stack([np.bincount(self._node_body, ng[:, k], minlength=B)
                          for k in (kf.N_KN, kf.N_DAMP, kf.N_MU)], 1)
        return gprm, gcprm

    def upload_pairs(self, pairs) -> int:
        nodes, tris, bary = pairs
        P = len(nodes)
        if P:
            fs = self.fields
            share = np.zeros(self.n)
            np.add.at(share, nodes, 1.0)
            np.add.at(share, tris[bary > 1e-12], 1.0)
            fs.pair_share.from_numpy(self._np(np.maximum(share, 1.0)))
            cap = fs.pair_node.shape[0]

            def pad(a, dtype):
                out = np.zeros((cap,) + a.shape[1:], dtype)
                out[:P] = a
                return out
            fs.pair_node.from_numpy(pad(nodes, np.int32))
            fs.pair_tri.from_numpy(pad(tris, np.int32))
        return P

    def _surface_normals(self, x):
        """At positions ``x`` (numpy, or a torch tensor to differentiate through): per body,
        the surface triangles' cross products (twice the area times the outward normal),
        and the area-weighted outward unit normals (N,3) of the surface nodes (0 inside)."""
        import torch
        as_numpy = not torch.is_tensor(x)
        xt = torch.as_tensor(np.asarray(x, np.float64)) if as_numpy else x
        cross, nrm = {}, torch.zeros((self.n, 3), dtype=xt.dtype)
        for b in self.bodies:
            t = xt[torch.as_tensor(b.surface, dtype=torch.long)]
            cr = torch.linalg.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
            nrm = nrm.index_add(0, torch.as_tensor(b.surface.ravel(), dtype=torch.long), cr.repeat_interleave(3, 0))
            cross[b.name] = cr
        nrm = nrm / nrm.norm(dim=1, keepdim=True).clamp_min(1e-300)
        if as_numpy:
            return {k: v.numpy() for k, v in cross.items()}, nrm.numpy()
        return cross, nrm

    def vertex_normals(self, x):
        """Outward unit normals (N,3) of the surface nodes at positions ``x`` (0 inside);
        numpy in, numpy out, or torch in, torch out (differentiable)."""
        return self._surface_normals(x)[1]

    def run_chunk(self, k: int, record_every: int, n_pairs: int = 0, before_substep=None, external=None):
        """Substeps rows 0 -> k (poses and contact pairs uploaded by the caller); contact
        forces averaged per ``record_every`` substeps into ``fc``; ``before_substep(t)`` runs
        before each substep (a coupled system steps its other part there and may add
        forces to ``fp[t]``); ``external``: (k, n, 3) forces (N) on the nodes per substep,
        which act as contact forces do (``fp``)."""
        from ..kernels import fem as kf
        fs = self.fields
        kf.spread_params(fs, self.n, self.n_tets)
        fs.f.fill(0)
        if external is None:
            fs.fp.fill(0)
        else:
            rows = np.zeros((self.K, self.n, 3), runtime.np_dtype())
            rows[:k] = external
            fs.fp.from_numpy(rows)
        fs.fc.fill(0)
        fs.pen.fill(0)
        g = self.gravity
        inv = 1.0 / record_every
        for t in range(k):
            if before_substep is not None:
                before_substep(t)
            kf.substep(fs, self.cols, self.models, t, t // record_every, inv, self.dt, self.n, self.n_tets, n_pairs,
                       g[0], g[1], g[2])

    def step(self, n: int = 1, before_substep=None, before_chunk=None):
        """Advance ``n`` substeps (in chunks of at most ``tape_substeps``); the optional
        callbacks run before each substep (``before_substep(t)``) and before each chunk
        (``before_chunk(x)`` with the positions at its start)."""
        from ..kernels import fem as kf
        self.build()
        self._settle_state()
        self._drop_tape()
        n = int(n)
        while n > 0:
            k = min(n, self.K)
            self._upload_poses(*self._pose_rows(k))
            x0 = self._row(self.fields.x, 0)
            pairs = self.upload_pairs(self.contact_pairs(x0)) if self.pair_capacity else 0
            if before_chunk is not None:
                before_chunk(x0)
            self.run_chunk(k, k, pairs, before_substep)
            x_end = self._row(self.fields.x, k)
            if not np.all(np.isfinite(x_end)):
                bad = int(np.nonzero(~np.isfinite(x_end).all(1))[0][0])
                raise SimulationDiverged(self.step_count + k, "node position",
                                         f"node {bad} is NaN/inf: the time step is too large for the "
                                         f"material or contact stiffness", body=self._body_of(bad).name)
            kf.copy_row(self.fields, k, 0, self.n)
            self._contact_force = self._row(self.fields.fc, 0)
            depth = float(self.fields.pen.to_numpy()[:k].max())
            self.penetration_trace.append(depth)
            self.max_penetration = max(self.max_penetration, depth)
            self.time += k * self.dt
            self.step_count += k
            n -= k

    def _body_of(self, i: int) -> FEMBody:
        for b in self.bodies:
            if b.start <= i < b.stop:
                return b
        return self.bodies[-1]

    # ------------------------------------------------------------------------ outputs
    def diagnostics(self) -> dict:
        from ..kernels import fem as kf
        self._settle_state()
        st = self.get_state()
        m = self._mass
        free = np.ones(self.n, bool)
        for d in self.drivers:
            free[d.nodes] = False
        v2 = (st["v"] ** 2).sum(1)
        kinetic = 0.5 * float(np.sum(m[free] * v2[free]))
        potential = -float(np.sum(m[free] * (st["x"][free] @ self.gravity)))
        elastic = float(kf.elastic_energy(self.fields, 0, self.n_tets))
        speed = float(np.sqrt(v2.max())) if self.n else 0.0
        fc = self._contact_force
        return {"time": self.time, "step": self.step_count, "kinetic": kinetic, "potential": potential,
                "elastic": elastic, "energy": kinetic + potential + elastic,
                "momentum": (m[free, None] * st["v"][free]).sum(0).tolist(), "max_speed": speed,
                "contact_force": fc.sum(0).tolist(),
                "max_penetration": self.penetration_trace[-1] if self.penetration_trace else 0.0,
                **{k: v for s in self.instruments for k, v in s.readings(st["x"], fc).items()}}

    def add_instrument(self, instrument):
        """Attach an observer whose ``readings(x, contact_force)`` join :meth:`diagnostics`
        and whose ``images(x)`` join :meth:`frame` (a :class:`~diffsim.TactileSensor` attaches
        itself)."""
        self.instruments.append(instrument)
        return instrument

    def frame(self) -> dict:
        st = self.get_state()
        body = np.concatenate([np.full(b.stop - b.start, i, np.int32) for i, b in enumerate(self.bodies)])
        data = {"body": body, "velocity": st["v"].astype(np.float32),
                "contact_force": self._contact_force.astype(np.float32)}
        meshes = {f"collider{i}": c.surface() for i, c in enumerate(self.colliders)}
        images = {k: v for s in self.instruments for k, v in s.images(st["x"]).items()}
        return {"particles": (st["x"], data), "meshes": meshes, "images": images}

    # ------------------------------------------------------------------------ protocol
    def initial_state(self) -> State:
        x, v = self.rest_state()
        dtype = runtime.torch_dtype()
        return State(x=_torch(x, dtype), v=_torch(v, dtype))

    def current_state(self) -> State:
        dtype = runtime.torch_dtype()
        st = self.get_state()
        return State(x=_torch(st["x"], dtype), v=_torch(st["v"], dtype))

    def parameter_values(self) -> dict:
        """``{"body.E": value, ...}``: each body's material (``E``, ``nu``, ``mass_damping``,
        ``stiffness_damping``) and contact (``contact_stiffness``, ``contact_damping``,
        ``friction``) parameters."""
        from .rollout import CONTACT_KEYS, MATERIAL_KEYS
        out = {}
        for b in self.bodies:
            out.update({f"{b.name}.{k}": float(v) for k, v in zip(MATERIAL_KEYS, b.material.vector())})
            out.update({f"{b.name}.{k}": float(v) for k, v in zip(CONTACT_KEYS, b.contact.vector())})
        return out

    def control_names(self) -> list:
        """Each driver's ``velocity``: (R, 6) per record interval or (6,) constant, linear
        (m/s) then angular (rad/s)."""
        return [f"{d.name}.velocity" for d in self.drivers]

    def parameter_overrides(self, params: dict) -> dict:
        """``{"pad.E": t, ...}`` (qualified names) -> ``{"E": (bodies,) tensor}`` for the
        differentiable rollout (bodies not named keep their own values)."""
        import torch
        dtype = runtime.torch_dtype()
        names = [b.name for b in self.bodies]
        table = {}
        for body, values in by_part(params).items():
            for key, value in values.items():
                table.setdefault(key, {})[names.index(body)] = value
        defaults = self.parameter_values()
        return {key: torch.stack([_torch(per.get(i, defaults[f"{b}.{key}"]), dtype).reshape(())
                                  for i, b in enumerate(names)]) for key, per in table.items()}

    def driver_controls(self, steps: int, record_every: int | None, control: dict) -> dict:
        """``{"<driver>.velocity": (R, 6) or (6,)}`` -> ``{driver index: (R', 6) tensor}``
        (R = steps // record_every rows, or 1 without records; R' rows of
        :meth:`record_interval`)."""
        dtype = runtime.torch_dtype()
        R = steps // (record_every or steps)
        rows = steps // self.record_interval(steps, record_every)
        out = {}
        for d, drv in enumerate(self.drivers):
            given = control.get(f"{drv.name}.velocity")
            if given is not None:
                given = _torch(given, dtype)
                given = given.expand(R, 6) if given.shape == (6,) else given
                if given.shape != (R, 6):
                    raise InvalidScene(f"control {drv.name}.velocity must have shape (6,) or ({R}, 6) (one row "
                                       f"per record interval), got {tuple(given.shape)}")
                out[d] = given.expand(rows, 6) if R == 1 else given
        return out

    def _drivers_to(self, out):
        """The drivers' poses at the end of a rollout (computed in torch there)."""
        for d, drv in enumerate(self.drivers):
            drv.translation = out["driver_translation"][-1, d].detach().double().numpy().copy()
            drv.rotation = out["driver_rotation"][-1, d].detach().double().numpy().copy()

    def record_interval(self, steps: int, record_every: int | None) -> int:
        """The substeps per interval a rollout runs with: ``record_every``, or without
        records the largest that divides both ``steps`` and the tape (``tape_substeps``)."""
        return int(record_every) if record_every else math.gcd(int(steps), self.K)

    def _rollout(self, steps, state, params, control, record_every, tape_memory, check_gradients) -> Rollout:
        from .rollout import rollout_chunks
        self.build()
        overrides = self.parameter_overrides(params)
        driver_velocity = self.driver_controls(steps, record_every, control)
        x0 = v0 = None
        if state is not None:
            x0, v0 = state["x"], state["v"]
        out = rollout_chunks(self, steps, self.record_interval(steps, record_every), overrides, x0, v0,
                             driver_velocity, check_gradients)
        self.hold_state(out["x_final"].detach().double().numpy(), out["v_final"].detach().double().numpy())
        self.step_count = steps
        self._drivers_to(out)
        records = [((r + 1) * record_every, State(x=out["x"][r], v=out["v"][r])) for r in range(out["x"].shape[0])] \
            if record_every else []
        extras = {k: out[k] for k in ("force", "driver_translation", "driver_rotation", "max_penetration")}
        return Rollout(State(x=out["x_final"], v=out["v_final"]), records, extras)

    def checkpoint(self):
        st = self.get_state()
        arrays = {"x": st["x"], "v": st["v"], "contact_force": self._contact_force}
        for i, c in enumerate(self.colliders):
            arrays[f"collider{i}_position"] = c.position.copy()
            arrays[f"collider{i}_rotation"] = c.rotation.copy()
        for i, d in enumerate(self.drivers):
            arrays[f"driver{i}_translation"] = d.translation.copy()
            arrays[f"driver{i}_rotation"] = d.rotation.copy()
        meta = {"time": self.time, "step": self.step_count, "n": self.n,
                "penetration_trace": list(self.penetration_trace)}
        return arrays, meta

    def restore(self, arrays, meta):
        self.build()
        if int(meta["n"]) != self.n:
            raise InvalidScene(f"checkpoint holds {meta['n']} nodes, the scene has {self.n}")
        self.set_state(arrays["x"], arrays["v"])
        self._contact_force = np.asarray(arrays["contact_force"], np.float64)
        for i, c in enumerate(self.colliders):
            c.position = np.asarray(arrays[f"collider{i}_position"], np.float64)
            c.rotation = np.asarray(arrays[f"collider{i}_rotation"], np.float64)
        for i, d in enumerate(self.drivers):
            d.translation = np.asarray(arrays[f"driver{i}_translation"], np.float64)
            d.rotation = np.asarray(arrays[f"driver{i}_rotation"], np.float64)
        self.time = float(meta["time"])
        self.step_count = int(meta["step"])
        self.penetration_trace = list(meta.get("penetration_trace", []))
        self.max_penetration = max(self.penetration_trace, default=0.0)

    def describe(self) -> dict:
        return {"solver": "FEM (linear tetrahedra, explicit)", "dt": self.dt, "gravity": self.gravity.tolist(),
                "nodes": self.n, "tets": self.n_tets, "stable_dt": self.stable_dt(),
                "bodies": [{"name": b.name, "nodes": b.stop - b.start, "tets": len(b.mesh.tets),
                            "material": b.material.describe(),
                            "contact": dict(zip(("stiffness", "damping", "friction"), b.contact.vector()))}
                           for b in self.bodies],
                "drivers": [d.describe() for d in self.drivers],
                "colliders": [c.describe() for c in self.colliders],
                "instruments": [s.describe() for s in self.instruments],
                "max_penetration": self.max_penetration}


def _torch(a, dtype):
    from .rollout import _tensor
    return _tensor(a, dtype)
