"""Differentiable FEM-MPM rollouts (:meth:`diffsim.FEMMPMCoupling.rollout`).

The coupled system's adjoint is a composition (:class:`CoupledHooks`): the FEM's hooks,
the MPM's hooks and the contact term between them (the MPM's grid hook,
:class:`diffsim.kernels.coupling.FEMGridContact`), run by the one adjoint core
(:mod:`diffsim.core.adjoint`) in the FEM solver's chunks (``tape_substeps``). Each chunk
steps both solvers substep by substep exactly as the forward coupling does (the MPM's
fused substep with the term on its grid, then the FEM substep) and tapes both (the FEM
rows on the FEM solver's tape, the MPM states and grids on an MPM tape of the same
:class:`~diffsim.core.adjoint.TapeCache` the MPM's own rollouts use). Its backward
reverses each substep:

1. the FEM substep's adjoint (row ``t + 1`` -> ``t``; it also yields the adjoint of the
   contact force ``fp[t]`` that the grid exchanged with each node);
2. the MPM substep loaded from its tape, the term replayed on the grid (impulses kept);
3. the MPM G2P adjoint; the term's hand-written adjoint, node by node backwards
   (:meth:`diffsim.kernels.coupling.FEMGridContact.adjoint`: FEM node position and
   velocity adjoints, grid velocity and mass adjoints); the grid and P2G/material
   adjoints.

A chunk whose tape was overwritten (the FEM keeps one) is re-run first. The FEM surface
normals the grid contact uses are computed once per chunk from the node positions at its
start (in torch, so gradients flow through them too); the contact and stick/slip branches
are taken as in the forward pass (gradients are one-sided where they switch).
"""
from __future__ import annotations

import itertools

import torch

from ..core.adjoint import SegmentHooks, segment
from ..errors import GradientNotFinite, InvalidScene
from ..fem import rollout as fem_rollout
from ..mpm.rollout import (MPMHooks, MPMState, _MPMSegment, collider_schedule, finish_rollout, initial_state,
                           parameter_tensor, state_from_rows, state_rows)

_FEM, _MPM = slice(1, 9), slice(9, 17)   # a coupled chunk's inputs: normals, the FEM's, the MPM's

_pair_ids = itertools.count(1)


class _PairTape:
    """The FEM's and the MPM's tapes of one coupled chunk; freeing it frees both."""

    def __init__(self, fem, mpm):
        self.fem, self.mpm = fem, mpm
        self.ids = (fem.owner, mpm.owner)
        self._owner = next(_pair_ids)

    @property
    def owner(self):
        return self._owner

    @owner.setter
    def owner(self, value):
        self._owner = value
        if value is None:
            for tape, mine in ((self.fem, self.ids[0]), (self.mpm, self.ids[1])):
                if tape.owner == mine:
                    tape.owner = None

    def intact(self) -> bool:
        return (self.fem.owner, self.mpm.owner) == self.ids


class _CoupledChunk:
    def __init__(self, fem_seg, mpm_seg):
        self.fem, self.mpm = fem_seg, mpm_seg
        self.start, self.steps = fem_seg.start, fem_seg.steps


class CoupledHooks(SegmentHooks):
    """A coupled system's hooks: the FEM's (:class:`~diffsim.fem.rollout.FEMHooks`) and
    the MPM's (:class:`~diffsim.mpm.rollout.MPMHooks`) composed with the contact term (the
    MPM's grid hook). A chunk's inputs are ``(normals, *FEM inputs, *MPM inputs)``; each
    forward substep is the MPM substep (the term on its grid) then the FEM substep; each
    reverse substep the FEM's, then the MPM's with the term replayed and reversed."""

    def __init__(self, both, longest, check=True):
        self.both, self.check, self.term = both, check, both.hook
        self.mpm = MPMHooks(both.mpm, longest, check, hook=both.hook)
        self.fem = fem_rollout.FEMHooks(both.fem, check)
        self.tapes = {}

    def acquire(self, seg):
        tape = _PairTape(self.fem.acquire(seg.fem), self.mpm.acquire(seg.mpm))
        self.tapes = {k: t for k, t in self.tapes.items() if t.owner is not None and t.intact()}
        self.tapes[tape.owner] = tape
        return tape

    def find(self, owner):
        tape = self.tapes.get(owner)
        return tape if tape is not None and tape.intact() else None

    def load(self, seg, inputs):
        self.fem.load(seg.fem, inputs[_FEM])
        self.mpm.load(seg.mpm, inputs[_MPM])
        self.reload(seg, inputs)

    def reload(self, seg, inputs):
        self.mpm.reload(seg.mpm, inputs[_MPM])
        self.term.normal.from_numpy(self.both.mpm._np(inputs[0].detach().cpu().numpy()))

    def run(self, seg, tape, inputs):
        mpm_tape = tape.mpm if tape is not None else None
        self.fem.before_substep = lambda t: self.mpm.substep(seg.mpm, mpm_tape, t, inputs[_MPM])
        try:
            self.fem.run(seg.fem, tape.fem if tape is not None else None, inputs[_FEM])
        finally:
            self.fem.before_substep = None

    def outputs(self, seg, inputs):
        return (*self.fem.outputs(seg.fem, inputs[_FEM]), *self.mpm.outputs(seg.mpm, inputs[_MPM]))

    def seed(self, seg, tape, grads):
        self.term.normal_grad.fill(0)
        self.fem.seed(seg.fem, tape.fem, grads[:5])
        self.mpm.seed(seg.mpm, tape.mpm, grads[5:])

    def reverse(self, seg, tape, k, inputs):
        self.fem.reverse(seg.fem, tape.fem, k, inputs[_FEM])
        self.mpm.reverse(seg.mpm, tape.mpm, k, inputs[_MPM])

    def input_grads(self, seg, tape, inputs):
        normals = inputs[0]
        g_normals = torch.from_numpy(self.term.normal_grad.to_numpy()[: len(normals)]).to(normals.dtype)
        return (g_normals, *self.fem.input_grads(seg.fem, tape.fem, inputs[_FEM]),
                *self.mpm.input_grads(seg.mpm, tape.mpm, inputs[_MPM]))

    def locate(self, seg, tape, grads, inputs):
        from .. import adjoint_health
        names = ("surface normal", "FEM position", "FEM velocity", "FEM material parameter", "FEM contact parameter",
                 "driver translation", "driver rotation", None, None, "MPM position", "MPM velocity",
                 "MPM affine", "MPM deformation gradient", "MPM parameter", "MPM collider position",
                 "MPM collider velocity", "MPM collider angular velocity")
        out = self.input_grads(seg, tape, inputs)
        bad = [name for name, g in zip(names, out) if name and g is not None and not adjoint_health.all_finite(g)]
        raise GradientNotFinite(seg.start, "FEM-MPM coupled chunk", f"the {', '.join(bad)} adjoint",
                                "reverse the FEM or the MPM alone to find the substep")


def rollout_coupled(both, substeps: int, record_every: int | None = None, fem_params: dict | None = None,
                    mpm_params: dict | None = None, driver_velocity=None, mpm_state: MPMState | None = None,
                    fem_state=None, check_gradients: bool = True, records: bool = True) -> dict:
    """Differentiable rollout of an :class:`~diffsim.FEMMPMCoupling` from the start (both
    solvers are reset; see the module docstring); behind :func:`diffsim.rollout`.

    Args:
        substeps, record_every, fem_params, driver_velocity, check_gradients: as in
            :func:`diffsim.fem.rollout.rollout_chunks` (FEM material, contact and driver inputs).
        mpm_params: MPM material overrides ``{body: {"E": tensor, ...}}``.
        mpm_state: the MPM's initial :class:`~diffsim.MPMState` (default: as the bodies
            were added, no gradient); ``fem_state``: the FEM's ``(x, v)`` (default: rest).
        records: end a chunk at every record interval (for MPM states there).

    Returns :func:`diffsim.fem.rollout.rollout_chunks`'s dict plus ``mpm`` (the final MPM
    state) and ``mpm_records`` (``(substep, MPMState)`` at the end of every record
    interval, or of the whole rollout). MPM colliders follow their own schedule (no
    gradients for them).
    """
    both.build()
    mpm, fem = both.mpm, both.fem
    if mpm._external:
        raise NotImplementedError("a differentiable FEM-MPM rollout with torch materials (NeuralMaterial) in the MPM")
    substeps = int(substeps)
    if substeps < 1:
        raise InvalidScene(f"substeps must be >= 1, got {substeps}")
    mpm.reset()
    state = mpm_state if mpm_state is not None else initial_state(mpm)
    mprm = parameter_tensor(mpm, mpm_params)
    pos, vel, omega, rotations, end = collider_schedule(mpm, substeps)
    current = list(state_rows(state))
    records = []
    nodes = both.hook_nodes
    hooks = CoupledHooks(both, fem.K, bool(check_gradients))

    def chunk(seg, *fem_in):
        a, k = seg.start, seg.steps
        normals = fem.vertex_normals(fem_in[0])[torch.as_tensor(nodes, dtype=torch.long)]
        rots = rotations[a:a + k + 1] if rotations is not None else None
        out = segment(hooks, _CoupledChunk(seg, _MPMSegment(a, k, rots)), normals, *fem_in, *current[:4], mprm,
                      pos[a:a + k], vel[a:a + k], omega)
        current[:4] = out[5:]
        records.append((a + k, state_from_rows(*current[:4])))
        return out[:5]
    x0, v0 = (None, None) if fem_state is None else fem_state
    out = fem_rollout.run_chunks(fem, substeps, record_every, fem_params or {}, x0, v0, driver_velocity, chunk,
                              records_per_chunk=1 if records else None)
    final = state_from_rows(*current[:4])
    finish_rollout(mpm, final, end, rotations, substeps, 0.0, 0)
    out["mpm"], out["mpm_records"] = final, records
    return out
