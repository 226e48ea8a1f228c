"""FEM bodies (tactile sensors, fingers) in contact with MPM material.

    mpm = ds.MPMSolver(domain_min=..., domain_max=..., grid=64, dt=4e-6, gravity=(0, 0, 0))
    mpm.add_body(ds.MeshShape("J03_2.obj", scale=4e-4, center=...), ds.FixedCorotated(E=5e4, nu=0.3))
    fem = ds.FEMSolver(dt=4e-6, gravity=(0, 0, 0))
    pad, plate, sensor = ds.mount_sensor(fem, ds.dome_pad(), ...)
    both = ds.FEMMPMCoupling(mpm, fem, friction=0.5)
    both.step(1000)                                  # or ds.Scene(both, ...) for ``diffsim run``

Each substep runs the MPM step (one fused kernel) with the FEM surface as a grid hook
(:mod:`diffsim.kernels.coupling`: the FEM nodes and the grid exchange inelastic impulses
with Coulomb friction, momentum conserving), then the FEM substep, which sees the
reaction as a contact force (so the sensor's forces and markers include it). The MPM and
FEM share one dt. Differentiable rollouts: :func:`diffsim.rollout`
(:mod:`diffsim.coupling.rollout`).
"""
from __future__ import annotations

import numpy as np

from .. import runtime
from ..core.names import by_part
from ..core.state import State
from ..core.system import Rollout
from ..errors import InvalidScene
from .pair import CoupledPair, split


class FEMMPMCoupling(CoupledPair):
    """An :class:`~diffsim.MPMSolver` and an :class:`~diffsim.FEMSolver` stepped together.

    Args:
        mpm, fem: the two solvers (same ``dt``), set up but not necessarily built.
        friction: Coulomb coefficient between FEM surfaces and MPM material.
        density_threshold: fraction of the MPM material's lowest density above which the
            grid around an FEM node counts as material (contact).
    """

    names, clock = ("mpm", "fem"), "fem"

    def __init__(self, mpm, fem, friction: float = 0.5, density_threshold: float = 0.3):
        if abs(mpm.dt - fem.dt) > 1e-12 * fem.dt:
            raise InvalidScene(f"FEMMPMCoupling: the MPM and FEM substeps differ ({mpm.dt} vs {fem.dt} s)")
        if not friction >= 0 or not 0 < density_threshold < 1:
            raise InvalidScene("FEMMPMCoupling: friction must be >= 0 and density_threshold in (0, 1)")
        self.mpm, self.fem = mpm, fem
        self.friction = float(friction)
        self.density_threshold = float(density_threshold)
        self.hook = None

    def build(self):
        if self.hook is None:
            from ..kernels.coupling import FEMGridContact
            self.mpm.build()
            self.fem.build()
            rho = min(b.material.density for b in self.mpm.bodies)
            fs = self.fem.fields
            free_surface = (fs.area.to_numpy()[: self.fem.n] > 0) & (fs.inv_mass.to_numpy()[: self.fem.n] > 0)
            self.hook_nodes = np.nonzero(free_surface)[0]
            self.hook = FEMGridContact(fs, self.hook_nodes, runtime.real_dtype())
            self.hook.density_min[None] = self.density_threshold * rho
            self.hook.friction[None] = self.friction
        return self

    def step(self, n: int = 1):
        """Advance both solvers ``n`` substeps."""
        self.build()
        hook = self.hook

        def before_chunk(x):
            hook.normal.from_numpy(self.fem._np(self.fem.vertex_normals(x)[self.hook_nodes]))

        def before_substep(t):
            hook.row[None] = t
            self.mpm.step(1, hook)
        self.fem.step(n, before_substep=before_substep, before_chunk=before_chunk)

    # ------------------------------------------------------------------ protocol
    def control_names(self) -> list:
        """The FEM drivers' velocities (``fem.<driver>.velocity``; MPM colliders follow
        their own schedule)."""
        return [f"fem.{k}" for k in self.fem.control_names()]

    def _rollout(self, steps, state, params, control, record_every, tape_memory, check_gradients) -> Rollout:
        """Both solvers from the start (:mod:`diffsim.coupling.rollout`); records hold
        ``fem`` (x, v) and ``mpm`` (x, v, C, F) states; outputs as the FEM's."""
        from ..mpm.rollout import MPMState
        from .rollout import rollout_coupled
        self.build()
        fem_params = split(params, "fem.")
        mpm_params = by_part(split(params, "mpm."))
        fem_control = split(control, "fem.")
        driver_velocity = self.fem.driver_controls(steps, record_every, fem_control)
        fem_overrides = self.fem.parameter_overrides(fem_params)
        mpm_state = fem_state = None
        if state is not None:
            mpm_state = MPMState.of(state["mpm"])
            fem_state = (state["fem"]["x"], state["fem"]["v"])
        if tape_memory is not None:
            from ..core.adjoint import tape_cache
            tape_cache(self.mpm).budget = int(tape_memory)
        out = rollout_coupled(self, steps, self.fem.record_interval(steps, record_every), fem_overrides, mpm_params,
                              driver_velocity, mpm_state, fem_state, check_gradients, records=bool(record_every))
        self.fem.hold_state(out["x_final"].detach().double().numpy(), out["v_final"].detach().double().numpy())
        self.fem.step_count = steps
        self.fem._drivers_to(out)
        records = []
        if record_every:
            for r, (step, ms) in enumerate(out["mpm_records"]):
                records.append((step, State(fem=State(x=out["x"][r], v=out["v"][r]), mpm=ms)))
        final = State(fem=State(x=out["x_final"], v=out["v_final"]), mpm=out["mpm"])
        return Rollout(final, records, {k: out[k] for k in ("force", "driver_translation", "driver_rotation",
                                                             "max_penetration")})

    def describe(self) -> dict:
        return {"solver": "FEM-MPM coupling", "friction": self.friction,
                "density_threshold": self.density_threshold, "mpm": self.mpm.describe(),
                "fem": self.fem.describe()}

