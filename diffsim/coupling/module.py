"""An FEM body in contact with a torch step module (e.g. a learned surrogate of the
material an MPM would simulate), coupled by a contact term written in torch.

    fem = ds.FEMSolver(dt=1e-4, ...)                  # a pad, a finger, a sensor
    grains = MyModule(...)                            # a StepModule accepting "contact.force"
    both = ds.FEMModuleCoupling(fem, grains, ds.ParticleContact(radius=2e-3, stiffness=50.0))
    out = ds.rollout(both, 200, params={"fem.pad.E": E}, record_every=50)

Composition per substep (the shape of Genesis' coupler: couple, then step each part):

1. couple: the term maps both states to forces, ``f_fem, f_module = term(fem nodes,
   module particles)`` (torch; equal and opposite: momentum is conserved);
2. the FEM substep with ``f_fem`` on its nodes (they act as contact forces do, so a
   sensor reports them);
3. the module substep with the control ``contact.force = f_module``.

Neither side's kernels know about the other: the FEM runs its own hooks of the adjoint
core (one-substep chunks, the external forces as an input), the module its torch
``forward``, the term is torch. Gradients reach the FEM's parameters, drivers and
start state, the module's parameters and start state, through the contact.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import runtime
from ..core.state import State
from ..core.system import Rollout
from ..errors import InvalidScene
from .pair import CoupledPair, split


class ParticleContact:
    """Penalty contact between FEM surface nodes and module particles: a node and a
    particle closer than ``radius`` (m) push apart along the line between them with
    ``stiffness (radius - d) - damping v_n`` (N; never pulling). Pairs are found on the
    detached positions (a k-d tree, scipy); the force is differentiable in both
    positions and velocities (one-sided where a pair starts or stops touching)."""

    def __init__(self, radius: float, stiffness: float, damping: float = 0.0):
        if not radius > 0 or not stiffness > 0 or not damping >= 0:
            raise InvalidScene("ParticleContact: radius and stiffness must be > 0, damping >= 0")
        self.radius, self.stiffness, self.damping = float(radius), float(stiffness), float(damping)

    def __call__(self, xa, va, xb, vb):
        """Forces ``(fa (Na,3), fb (Nb,3))`` on the nodes ``a`` and the particles ``b``."""
        from scipy.spatial import cKDTree
        pa, pb = (t.detach().cpu().double().numpy() for t in (xa, xb))
        hits = cKDTree(pb).query_ball_point(pa, self.radius)   # one tree: the module's particles
        i = np.repeat(np.arange(len(hits)), [len(h) for h in hits])
        j = np.fromiter((k for h in hits for k in h), np.int64, count=len(i))
        fa, fb = torch.zeros_like(xa), torch.zeros_like(xb)
        if not len(i):
            return fa, fb
        i, j = torch.from_numpy(i), torch.from_numpy(j)
        d = xa[i] - xb[j]
        dist = d.norm(dim=1, keepdim=True)
        n = d / dist.clamp_min(1e-12 * self.radius)
        vn = ((va[i] - vb[j]) * n).sum(1, keepdim=True)
        f = (self.stiffness * (self.radius - dist) - self.damping * vn).clamp_min(0.0) * n
        return fa.index_add(0, i, f), fb.index_add(0, j, -f)


class FEMModuleCoupling(CoupledPair):
    """An :class:`~diffsim.FEMSolver` and a :class:`~diffsim.StepModule` stepped together,
    coupled by ``term`` (e.g. :class:`ParticleContact`) on the FEM's free surface nodes.

    The module must accept the control ``"contact.force"`` ((N,3) N per substep). Names:
    parameters ``fem.<body>.<name>`` and ``module.<parameter>``; controls the FEM
    drivers' ``fem.<driver>.velocity``; states ``State(fem=..., module=...)``.
    """

    rollout_options = frozenset()

    names, clock = ("fem", "module"), "fem"

    def __init__(self, fem, module, term):
        from ..core.step_module import StepModule
        if not isinstance(module, StepModule) or "contact.force" not in module.controls:
            raise InvalidScene("FEMModuleCoupling: the module must be a StepModule whose controls include "
                               "'contact.force' (the coupling term's force on its particles)")
        if abs(module.dt - fem.dt) > 1e-12 * fem.dt:
            raise InvalidScene(f"FEMModuleCoupling: the FEM and module substeps differ ({fem.dt} vs {module.dt} s)")
        if not callable(term):
            raise InvalidScene("FEMModuleCoupling: term must be callable (xa, va, xb, vb) -> (fa, fb)")
        self.fem, self.module, self.term = fem, module, term
        self.surface = None

    def build(self):
        if self.surface is None:
            self.fem.build()
            fs = self.fem.fields
            free = (fs.area.to_numpy()[: self.fem.n] > 0) & (fs.inv_mass.to_numpy()[: self.fem.n] > 0)
            self.surface = torch.from_numpy(np.nonzero(free)[0])
        return self

    def _forces(self, x, v, sb):
        """The term on the surface nodes: node forces (n, 3) and particle forces."""
        s = self.surface
        fa, fb = self.term(x[s], v[s], sb.x, self.module.velocities(sb))
        return torch.zeros_like(x).index_add(0, s, fa), fb

    def step(self, n: int = 1):
        """Advance both parts ``n`` substeps (no gradients)."""
        from ..kernels import fem as kf
        self.build()
        fem, mod = self.fem, self.module
        fs = fem.fields
        dtype = runtime.np_dtype()
        row = np.zeros((1, fem.n, 3), dtype)

        def before_substep(t):
            rows = np.array([t], np.int32)
            kf.read_rows(fs.x, rows, row, fem.n)
            x = torch.from_numpy(row[0].copy())
            kf.read_rows(fs.v, rows, row, fem.n)
            v = torch.from_numpy(row[0].copy())
            with torch.no_grad():
                f_fem, f_mod = self._forces(x, v, mod._state)
                kf.write_rows(fs.fp, rows, f_fem.numpy()[None].astype(dtype), fem.n)
                mod._state = mod(mod._state, {"contact.force": f_mod}, mod.dt).detach()
            mod.step_count += 1
            mod.time += mod.dt
        fem.step(n, before_substep=before_substep)

    # ------------------------------------------------------------------ protocol
    def control_names(self) -> list:
        return [f"fem.{k}" for k in self.fem.control_names()]

    def observed_positions(self, state: State):
        return self.module.observed_positions(state["module"])

    def _rollout(self, steps, state, params, control, record_every, tape_memory, check_gradients) -> Rollout:
        """One-substep FEM chunks (the term's forces are an input of each), the module's
        substeps in torch between them; both from the start."""
        from ..core.adjoint import segment
        from ..fem.rollout import FEMHooks, run_chunks
        self.build()
        fem, mod = self.fem, self.module
        dtype = runtime.torch_dtype()
        fem_overrides = fem.parameter_overrides(split(params, "fem."))
        mod_params = {k: torch.as_tensor(v).to(dtype) for k, v in split(params, "module.").items()}
        fem_control = split(control, "fem.")
        if record_every and steps % record_every:
            raise InvalidScene(f"rollout: record_every ({record_every}) must divide steps ({steps})")
        driver_velocity = {d: v.repeat_interleave(steps // v.shape[0], 0) for d, v in   # one row per substep
                           fem.driver_controls(steps, record_every, fem_control).items()}
        mod.reset()
        shapes = {k: p.shape for k, p in mod.named_parameters()}
        overrides = {k: v.reshape(shapes[k]) for k, v in mod_params.items()}
        if state is None:
            sb = mod.begin(mod._initial, {**dict(mod.named_parameters()), **overrides})
            x0 = v0 = None
        else:
            sb = state["module"].map(lambda t: t.to(dtype))
            x0, v0 = state["fem"]["x"], state["fem"]["v"]
        hooks = FEMHooks(fem, bool(check_gradients))
        parts = {"module": sb, "records": []}

        def module_step(s, c):
            if overrides:
                return torch.func.functional_call(mod, overrides, (s, c, mod.dt))
            return mod(s, c, mod.dt)

        def chunk(seg, x, v, *rest):
            f_fem, f_mod = self._forces(x, v, parts["module"])
            out = segment(hooks, seg, x, v, *rest, f_fem[None])
            parts["module"] = module_step(parts["module"], {"contact.force": f_mod})
            if record_every and (seg.start + 1) % record_every == 0:
                parts["records"].append(parts["module"])
            return out
        out = run_chunks(fem, steps, 1, fem_overrides, x0, v0, driver_velocity, chunk, records_per_chunk=1)
        fem.hold_state(out["x_final"].detach().double().numpy(), out["v_final"].detach().double().numpy())
        fem.step_count = steps
        fem._drivers_to(out)
        final_b = parts["module"]
        mod._state = final_b.detach()
        mod.time, mod.step_count = steps * mod.dt, steps
        records = []
        for r, sbr in enumerate(parts["records"]):
            k = (r + 1) * record_every
            records.append((k, State(fem=State(x=out["x"][k - 1], v=out["v"][k - 1]), module=sbr)))
        final = State(fem=State(x=out["x_final"], v=out["v_final"]), module=final_b)
        return Rollout(final, records, {"force": out["force"], "max_penetration": out["max_penetration"]})

    def describe(self) -> dict:
        term = {k: v for k, v in vars(self.term).items() if isinstance(v, (int, float, str))}
        return {"solver": "FEM + step module", "term": {"type": type(self.term).__name__, **term},
                "fem": self.fem.describe(), "module": self.module.describe()}

