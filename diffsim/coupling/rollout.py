"""Differentiable FEM-MPM rollouts (:meth:`diffsim.FEMMPMCoupling.rollout`).

The rollout runs in the FEM solver's chunks (``tape_substeps``); each chunk is one torch
autograd Function that steps both solvers substep by substep exactly as the forward
coupling does (the MPM's fused substep with the FEM surface as a grid hook, then the FEM
substep) and tapes both: the FEM rows on the FEM solver's tape, the MPM states and grids
on an MPM segment tape (:class:`diffsim.mpm.rollout.TapeCache`). Its backward reverses each
substep:

1. the FEM substep's adjoint (row ``t + 1`` -> ``t``; it also yields the adjoint of the
   contact force ``fp[t]`` that the grid exchanged with each node);
2. the MPM substep loaded from its tape, the hook replayed on the grid (impulses kept);
3. the MPM G2P adjoint; the hook's hand-written adjoint, node by node backwards
   (:meth:`diffsim.kernels.coupling.FEMGridContact.adjoint`: FEM node position and
   velocity adjoints, grid velocity and mass adjoints); the grid and P2G/material
   adjoints.

A chunk whose tape was overwritten (the FEM keeps one) is re-run first. The FEM surface
normals the grid contact uses are computed once per chunk from the node positions at its
start (in torch, so gradients flow through them too); the contact and stick/slip branches
are taken as in the forward pass (gradients are one-sided where they switch).
"""
from __future__ import annotations

import torch

from ..fem import rollout as fem_rollout
from .. import runtime
from ..mpm.rollout import (MPMState, _get, _put, _tapes, collider_schedule, finish_rollout, initial_state,
                           load_substep, parameter_tensor, reverse_substep, seed_adjoint, segment_substep,
                           state_from_rows, state_rows)
from ..errors import InvalidScene


def _run(both, k, rec, pairs, normals, sched, fem_in, mpm_in, record):
    """Both solvers through ``k`` coupled substeps from the given inputs; returns the MPM
    tape's owner id (with ``record``)."""
    mpm, hook = both.mpm, both.hook
    fs = mpm.fields
    _put((fs.x, fs.v, fs.C, fs.F_minus_I, fs.prm), mpm_in, mpm.n, runtime.torch_dtype())
    hook.normal.from_numpy(_np(mpm, normals))
    tape = _tapes(mpm).acquire(k) if record else None
    pos, vel, omega, rots = sched

    def mpm_substep(t):
        hook.row[None] = t
        segment_substep(mpm, tape, t, pos[t], vel[t], omega, rots, hook)
    fem_rollout._run(both.fem, k, rec, pairs, *fem_in, before_substep=mpm_substep)
    return tape.owner if record else None


def _np(sim, t):
    return sim._np(t.detach().cpu().numpy())


class _CoupledChunk(torch.autograd.Function):
    @staticmethod
    def forward(ctx, both, k, rec, pairs, normals, sched, x0, v0, prm, cprm, drv_t, drv_R, col_p, col_R,
                mx, mv, mC, mF, mprm):
        fem, mpm = both.fem, both.mpm
        fem_in = (x0, v0, prm, cprm, drv_t, drv_R, col_p, col_R)
        mpm_in = (mx, mv, mC, mF, mprm)
        ctx.both, ctx.k, ctx.rec, ctx.pairs, ctx.sched = both, k, rec, pairs, sched
        ctx.save_for_backward(normals, *fem_in, *mpm_in)
        ctx.tape_id = _run(both, k, rec, pairs, normals, sched, fem_in, mpm_in, record=True)
        ctx.token = object()
        fem._tape_owner = ctx.token
        outs = _get((mpm.fields.x, mpm.fields.v, mpm.fields.C, mpm.fields.F_minus_I), ((3,), (3,), (3, 3), (3, 3)),
                    mpm.n, mx.dtype)
        return (*fem_rollout.outputs(fem, k, rec, x0.dtype), *outs)

    @staticmethod
    def backward(ctx, g_xk, g_vk, g_xs, g_vs, g_fc, g_mx, g_mv, g_mC, g_mF):
        both, k, rec = ctx.both, ctx.k, ctx.rec
        fem, mpm, hook = both.fem, both.mpm, both.hook
        fs = mpm.fields
        normals, *saved = ctx.saved_tensors
        fem_in, mpm_in = saved[:8], saved[8:]
        tape = _tapes(mpm).find(ctx.tape_id)
        if tape is None or getattr(fem, "_tape_owner", None) is not ctx.token:
            ctx.tape_id = _run(both, k, rec, ctx.pairs, normals, ctx.sched, fem_in, mpm_in, record=True)
            fem._tape_owner = ctx.token
            tape = _tapes(mpm).find(ctx.tape_id)
        else:
            _put((fs.prm,), mpm_in[4:], mpm.n, mpm_in[4].dtype)
            hook.normal.from_numpy(_np(mpm, normals))
        hook.normal_grad.fill(0)
        fem_rollout.seed_adjoint(fem, k, rec, g_xk, g_vk, g_xs, g_vs, g_fc)
        seed_adjoint(mpm, g_mx, g_mv, g_mC, g_mF)
        pos, vel, omega, rots = ctx.sched
        dt, dx, lx, ly, lz = mpm.kernel_args[:5]
        n_pairs = len(ctx.pairs[0])
        for t in reversed(range(k)):
            fem_rollout.substep_adjoint(fem, t, rec, n_pairs)
            load_substep(mpm, tape, t, pos[t], vel[t], omega, rots)
            hook.row[None] = t
            hook.replay(fs, dt, dx, lx, ly, lz)
            reverse_substep(mpm, first=t == k - 1, after_g2p=lambda: hook.adjoint(fs, dt, dx, lx, ly, lz))
        tape.owner = None
        g_fem = fem_rollout.input_grads(fem, k, fem_in)
        *g_state, g_prm = _get((fs.x1.grad, fs.v1.grad, fs.C1.grad, fs.adj_F1, fs.acc_prm),
                               ((3,), (3,), (3, 3), (3, 3), (4,)), mpm.n, mpm_in[0].dtype)
        g_normals = torch.from_numpy(hook.normal_grad.to_numpy()[: len(normals)]).to(normals.dtype)
        return (None,) * 4 + (g_normals, None) + g_fem + (*g_state, g_prm.to(mpm_in[4].dtype))


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
    done, records = [0], []
    nodes = both.hook_nodes
    fem._check_gradients = bool(check_gradients)

    def chunk(sim, k, rec, pairs, *fem_in):
        a = done[0]
        normals = fem.vertex_normals(fem_in[0])[torch.as_tensor(nodes, dtype=torch.long)]
        rots = rotations[a:a + k + 1] if rotations is not None else None
        out = _CoupledChunk.apply(both, k, rec, pairs, normals, (pos[a:a + k], vel[a:a + k], omega, rots),
                                  *fem_in, *current, mprm)
        current[:] = out[5:]
        done[0] += k
        records.append((done[0], state_from_rows(*current)))
        return out[:5]
    x0, v0 = (None, None) if fem_state is None else fem_state
    out = fem_rollout.run_chunks(fem, substeps, record_every, fem_params or {}, x0, v0, driver_velocity, chunk,
                              records_per_chunk=1 if records else None)
    final = state_from_rows(*current)
    finish_rollout(mpm, final, end, rotations, substeps, 0.0, 0)
    out["mpm"], out["mpm_records"] = final, records
    return out
