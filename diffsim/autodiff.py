"""Differentiable MPM rollouts: torch autograd is the outer tape.

One substep is the composition of three differentiable pieces::

    F1, tau  = MaterialStage(F, C, prm)            # Taichi forward, hand-written adjoint
    F1, tau  <- NeuralMaterial(F1) on its bodies   # plain torch (optional)
    x1, v1, C1 = Transfer(x, v, C, tau, colliders)  # Taichi P2G/grid/G2P, Taichi autodiff

so gradients reach initial positions/velocities, material parameters (E, nu, yield
stress, friction angle, ... through :meth:`Material.parameter_vector`), collider
positions and per-step velocities, and the parameters of torch modules.

Memory (segment checkpointing). A rollout of ``T`` steps is cut into segments of ``K``
steps (``checkpoint_every``); only each segment's input state is kept during the forward
pass, and a segment is recomputed during the backward pass. Peak memory is about

    (T / K) * S  +  K * (S + G)  + recorded outputs

where ``S`` is one particle state (x, v, C, F: 24 floats per particle, plus the stress
and trial gradient saved by the stages: 42 floats per particle in all) and ``G`` the grid
momentum and mass saved per step (4 floats per grid node). ``K ~ sqrt(T)`` minimises it;
that is the default. For 30k particles, a 64^3 grid and T = 1000 steps in f32:
S ~ 5 MB, G ~ 4 MB, K = 32 -> about 0.5 GB (measured in ``benchmarks/mpm.py``).

The contact/boundary branches (which grid nodes touch a collider, whether a particle
yields) are taken as they were in the forward pass; gradients are exact almost
everywhere and one-sided at contact or yield onset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from . import runtime
from .errors import InvalidScene
from .materials import NeuralMaterial


@dataclass
class MPMState:
    """Particle state as torch tensors: x (N,3) m, v (N,3) m/s, C (N,3,3) 1/s, F (N,3,3)."""
    x: torch.Tensor
    v: torch.Tensor
    C: torch.Tensor
    F: torch.Tensor

    def detach(self) -> "MPMState":
        return MPMState(self.x.detach(), self.v.detach(), self.C.detach(), self.F.detach())

    def tensors(self):
        return self.x, self.v, self.C, self.F


def _c(t: torch.Tensor, dtype) -> torch.Tensor:
    return t.detach().to(dtype=dtype).contiguous()


class _MaterialStage(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sim, F, C, prm):
        from .kernels import mpm as km
        fs, n, dt = sim.fields, sim.n, sim.dt
        dtype = F.dtype
        km.copy_in(fs.F, _c(F, dtype), n)
        km.copy_in(fs.C, _c(C, dtype), n)
        km.copy_in(fs.prm, _c(prm, dtype), n)
        km.material_stage(fs, sim.mats, n, dt)
        F1 = torch.empty((n, 3, 3), dtype=dtype)
        tau = torch.empty((n, 3, 3), dtype=dtype)
        km.copy_out(fs.F1, F1, n)
        km.copy_out(fs.tau, tau, n)
        ctx.sim = sim
        ctx.save_for_backward(F, C, prm)
        return F1, tau

    @staticmethod
    def backward(ctx, gF1, gtau):
        from .kernels import mpm as km
        sim = ctx.sim
        F, C, prm = ctx.saved_tensors
        fs, n, dt = sim.fields, sim.n, sim.dt
        dtype = F.dtype
        gF1 = torch.zeros_like(F) if gF1 is None else gF1
        gtau = torch.zeros_like(F) if gtau is None else gtau
        km.copy_in(fs.F, _c(F, dtype), n)
        km.copy_in(fs.C, _c(C, dtype), n)
        km.copy_in(fs.prm, _c(prm, dtype), n)
        km.copy_in(fs.adj_F1, _c(gF1, dtype), n)
        km.copy_in(fs.tau.grad, _c(gtau, dtype), n)
        km.material_stage_vjp(fs, sim.mats, n, dt)
        gF = torch.empty_like(F)
        gC = torch.empty_like(C)
        gprm = torch.empty((n, 4), dtype=dtype)
        km.copy_out(fs.adj_F, gF, n)
        km.copy_out(fs.adj_C, gC, n)
        km.copy_out(fs.adj_prm, gprm, n)
        return None, gF, gC, gprm.to(prm.dtype)


class _Transfer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sim, x, v, C, tau, c_pos, c_vel, c_omega):
        from .kernels import mpm as km
        fs, n = sim.fields, sim.n
        dtype = x.dtype
        _load_transfer_inputs(sim, x, v, C, tau, c_pos, c_vel, c_omega)
        dt, dx, lx, ly, lz, gx, gy, gz = sim.kernel_args
        km.clear_grid(fs)
        km.p2g(fs, n, dt, dx, lx, ly, lz)
        km.grid_update(fs, sim.cols, dt, dx, lx, ly, lz, gx, gy, gz)
        km.g2p(fs, n, dt, dx, lx, ly, lz)
        x1 = torch.empty((n, 3), dtype=dtype)
        v1 = torch.empty((n, 3), dtype=dtype)
        C1 = torch.empty((n, 3, 3), dtype=dtype)
        km.copy_out(fs.x1, x1, n)
        km.copy_out(fs.v1, v1, n)
        km.copy_out(fs.C1, C1, n)
        ctx.sim = sim
        ctx.save_for_backward(x, v, C, tau, c_pos, c_vel, c_omega)
        return x1, v1, C1

    @staticmethod
    def backward(ctx, gx1, gv1, gC1):
        from .kernels import mpm as km
        sim = ctx.sim
        x, v, C, tau, c_pos, c_vel, c_omega = ctx.saved_tensors
        fs, n = sim.fields, sim.n
        dtype = x.dtype
        dt, dx, lx, ly, lz, gx, gy, gz = sim.kernel_args
        # recompute the grid of this step
        _load_transfer_inputs(sim, x, v, C, tau, c_pos, c_vel, c_omega)
        km.clear_grid(fs)
        km.p2g(fs, n, dt, dx, lx, ly, lz)
        km.grid_update(fs, sim.cols, dt, dx, lx, ly, lz, gx, gy, gz)
        # reverse sweep
        for f in (fs.c_pos.grad, fs.c_vel.grad, fs.c_omega.grad):
            f.fill(0)
        km.clear_grid_grad(fs)
        km.copy_in(fs.x1.grad, _c(gx1 if gx1 is not None else torch.zeros_like(x), dtype), n)
        km.copy_in(fs.v1.grad, _c(gv1 if gv1 is not None else torch.zeros_like(v), dtype), n)
        km.copy_in(fs.C1.grad, _c(gC1 if gC1 is not None else torch.zeros_like(C), dtype), n)
        km.g2p_adjoint(fs, n, dt, dx, lx, ly, lz)
        km.grid_update.grad(fs, sim.cols, dt, dx, lx, ly, lz, gx, gy, gz)
        km.p2g_adjoint(fs, n, dt, dx, lx, ly, lz)
        gx_ = torch.empty_like(x)
        gv_ = torch.empty_like(v)
        gC_ = torch.empty_like(C)
        gtau = torch.empty_like(tau)
        km.copy_out(fs.x.grad, gx_, n)
        km.copy_out(fs.v.grad, gv_, n)
        km.copy_out(fs.C.grad, gC_, n)
        km.copy_out(fs.tau.grad, gtau, n)
        S = c_pos.shape[0]
        out = []
        for f, ref in ((fs.c_pos.grad, c_pos), (fs.c_vel.grad, c_vel), (fs.c_omega.grad, c_omega)):
            out.append(torch.from_numpy(f.to_numpy()[:S]).to(ref.dtype) if ref.requires_grad else None)
        return (None, gx_, gv_, gC_, gtau, *out)


def _load_transfer_inputs(sim, x, v, C, tau, c_pos, c_vel, c_omega):
    from .kernels import mpm as km
    fs, n = sim.fields, sim.n
    dtype = x.dtype
    km.copy_in(fs.x, _c(x, dtype), n)
    km.copy_in(fs.v, _c(v, dtype), n)
    km.copy_in(fs.C, _c(C, dtype), n)
    km.copy_in(fs.tau, _c(tau, dtype), n)
    S = c_pos.shape[0]
    if S:
        km.copy_in(fs.c_pos, _c(c_pos, dtype), S)
        km.copy_in(fs.c_vel, _c(c_vel, dtype), S)
        km.copy_in(fs.c_omega, _c(c_omega, dtype), S)


# --------------------------------------------------------------------------- public API


def parameter_tensor(sim, params: dict | None = None) -> torch.Tensor:
    """Per-particle material parameters (N,4) in torch, with per-body overrides.

    ``params``: ``{body_name: {"E": tensor, "nu": tensor, ...}}``.
    """
    params = params or {}
    unknown = set(params) - {b.name for b in sim.bodies}
    if unknown:
        raise InvalidScene(f"params name unknown bodies {sorted(unknown)}; bodies: {[b.name for b in sim.bodies]}")
    dtype = runtime.torch_dtype()
    rows = [b.material.parameter_vector(params.get(b.name)).to(dtype).expand(b.count, 4) for b in sim.bodies]
    return torch.cat(rows, 0)


def step(sim, state: MPMState, prm: torch.Tensor, c_pos: torch.Tensor, c_vel: torch.Tensor,
         c_omega: torch.Tensor) -> MPMState:
    """One differentiable substep (see the module docstring)."""
    F1, tau = _MaterialStage.apply(sim, state.F, state.C, prm)
    for b in sim.bodies:
        if isinstance(b.material, NeuralMaterial):
            F_e, tau_b = b.material.respond(F1[b.start:b.stop])
            F1 = torch.cat([F1[:b.start], F_e.to(F1.dtype), F1[b.stop:]], 0)
            tau = torch.cat([tau[:b.start], tau_b.to(tau.dtype), tau[b.stop:]], 0)
    x1, v1, C1 = _Transfer.apply(sim, state.x, state.v, state.C, tau, c_pos, c_vel, c_omega)
    return MPMState(x1, v1, C1, F1)


def initial_state(sim, requires_grad: bool = False) -> MPMState:
    """The solver's current state as torch tensors (optionally leaves requiring grad)."""
    s = sim.get_state()
    dtype = runtime.torch_dtype()
    ts = [torch.tensor(s[k], dtype=dtype, requires_grad=requires_grad) for k in ("x", "v", "C", "F")]
    return MPMState(*ts)


def rollout(sim, steps: int, state: MPMState | None = None, params: dict | None = None,
            collider_velocity: dict | None = None, collider_position: dict | None = None,
            record_every: int | None = None, checkpoint_every: int | None = None,
            observe: Callable[[int, MPMState], torch.Tensor | None] | None = None):
    """Differentiable rollout of ``steps`` substeps.

    Args:
        sim: a built (or buildable) :class:`MPMSolver`.
        state: initial :class:`MPMState` (default: the solver's current state, no grad).
        params: material overrides ``{body: {"E": tensor, ...}}``.
        collider_velocity: ``{collider_name: tensor (steps, 3) or (3,)}`` linear velocity
            per step (m/s); default: the collider's own schedule (constant).
        collider_position: ``{collider_name: tensor (3,)}`` initial position (m).
        record_every: also return the state every ``record_every`` steps.
        checkpoint_every: segment length K of the checkpointing (default ~sqrt(steps));
            0 disables checkpointing (everything kept for the backward pass).
        observe: optional ``f(step, state) -> scalar tensor or None`` called after every
            step; the sum of its values is returned as ``loss`` (losses computed inside
            the segments do not force the intermediate states to stay in memory).

    Returns ``(final_state, records, loss)``: ``records`` is a list of ``(step, state)``
    and ``loss`` the summed observations (None without ``observe``). The solver's own
    state is set to the (detached) final state and its clock advanced.
    """
    sim.build()
    steps = int(steps)
    if steps < 1:
        raise InvalidScene(f"steps must be >= 1, got {steps}")
    if state is None:
        state = initial_state(sim)
    dtype = runtime.torch_dtype()
    prm = parameter_tensor(sim, params)
    S = len(sim.colliders)
    pos0, vel0, omega0, _ = sim.collider_state()
    collider_velocity = dict(collider_velocity or {})
    collider_position = dict(collider_position or {})
    names = [c.name for c in sim.colliders]
    for key in list(collider_velocity) + list(collider_position):
        if key not in names:
            raise InvalidScene(f"unknown collider {key!r}; colliders: {names}")
    vel_tables = []
    for i, c in enumerate(sim.colliders):
        if c.name in collider_velocity:
            t = collider_velocity[c.name].to(dtype)
            if t.shape == (3,):
                t = t.expand(steps, 3)
            if t.shape != (steps, 3):
                raise InvalidScene(f"collider_velocity[{c.name!r}] must have shape (3,) or ({steps}, 3), "
                                   f"got {tuple(t.shape)}")
            vel_tables.append(t)
        else:
            vel_tables.append(torch.tensor([c.velocity_at(sim.time + k * sim.dt, sim.dt) for k in range(steps)],
                                           dtype=dtype).reshape(steps, 3))
    pos = torch.stack([collider_position[c.name].to(dtype) if c.name in collider_position
                       else torch.tensor(pos0[i], dtype=dtype) for i, c in enumerate(sim.colliders)]) \
        if S else torch.zeros((0, 3), dtype=dtype)
    vel = torch.stack(vel_tables, 1) if S else torch.zeros((steps, 0, 3), dtype=dtype)
    omega = torch.tensor(omega0[:S], dtype=dtype)
    K = checkpoint_every
    if K is None:
        K = max(1, int(math.ceil(math.sqrt(steps))))
    records = []
    loss = None
    start_time, start_step = sim.time, sim.step_count
    rotations = _rotation_schedule(sim, steps)  # host side; constants of the backward pass

    def run_segment(k0, k1, x, v, C, F, p):
        st = MPMState(x, v, C, F)
        seg_loss = torch.zeros((), dtype=dtype)
        outs = []
        for k in range(k0, k1):
            if rotations is not None:
                sim.fields.c_rot.from_numpy(rotations[k])
            st = step(sim, st, prm, p, vel[k], omega)
            p = p + sim.dt * vel[k]
            if observe is not None:
                val = observe(k + 1, st)
                if val is not None:
                    seg_loss = seg_loss + val
            if record_every and (k + 1) % record_every == 0:
                outs.append(st)
        flat = [t for s_ in outs for t in s_.tensors()]
        return (st.x, st.v, st.C, st.F, p, seg_loss, *flat)

    x, v, C, F = state.tensors()
    p = pos
    k = 0
    while k < steps:
        k1 = min(steps, k + K) if K > 0 else steps
        if K > 0 and torch.is_grad_enabled():
            res = _checkpoint(run_segment, k, k1, x, v, C, F, p, use_reentrant=False)
        else:
            res = run_segment(k, k1, x, v, C, F, p)
        x, v, C, F, p, seg_loss = res[:6]
        flat = res[6:]
        n_rec = len(flat) // 4
        first = ((k // record_every) + 1) * record_every if record_every else 0
        for j in range(n_rec):
            records.append((first + j * record_every, MPMState(*flat[4 * j:4 * j + 4])))
        if observe is not None:
            loss = seg_loss if loss is None else loss + seg_loss
        k = k1
    final = MPMState(x, v, C, F)
    # leave the solver at the end of the rollout
    sim.set_state({"x": x, "v": v, "C": C, "F": F})
    for i, c in enumerate(sim.colliders):
        c.position = p[i].detach().cpu().numpy().astype(float)
        if rotations is not None:
            c.rotation = rotations[steps][i].astype(float)
    sim.time = start_time + steps * sim.dt
    sim.step_count = start_step + steps
    sim._upload_collider_state()
    return final, records, loss


def _rotation_schedule(sim, steps):
    """Per-step rotation arrays (steps+1, slots, 3, 3) for rotating colliders, else None."""
    import numpy as np
    from .colliders import rotation_step
    if not any(np.any(c.angular_velocity_at(sim.time)) for c in sim.colliders):
        return None
    S = sim.fields.n_slots
    R = np.broadcast_to(np.eye(3), (S, 3, 3)).copy()
    for i, c in enumerate(sim.colliders):
        R[i] = c.rotation
    out = [R.astype(runtime.np_dtype())]
    for k in range(steps):
        R = R.copy()
        for i, c in enumerate(sim.colliders):
            R[i] = rotation_step(R[i], c.angular_velocity_at(sim.time + k * sim.dt), sim.dt)
        out.append(R.astype(runtime.np_dtype()))
    return out
