"""Differentiable MPM rollouts: torch autograd is the outer tape.

One substep is the composition of three differentiable pieces::

    F1, tau  = MaterialStage(F, C, prm)            # Taichi forward, hand-written adjoint
    F1, tau  <- NeuralMaterial(F1) on its bodies   # plain torch (optional)
    x1, v1, C1 = Transfer(x, v, C, tau, colliders)  # Taichi P2G/grid/G2P; hand-written
                                                    # P2G/G2P adjoints, Taichi autodiff of
                                                    # the grid update (colliders, walls)

so gradients reach initial positions/velocities, material parameters (E, nu, yield
stress, friction angle, ... through :meth:`Material.parameter_vector`), collider
positions and per-step velocities, and the parameters of torch modules.

Segments and memory. With built-in materials a rollout of ``T`` substeps is cut into
segments of ``K`` substeps (``checkpoint_every``, default ~sqrt(T)); each segment is one
segment of the adjoint core (:mod:`diffsim.core.adjoint`, :class:`MPMHooks`) whose forward
runs the fused one-kernel substep; the torch graph keeps
only the segment's input state. The states and grids of a segment's substeps go to a
*tape* (Taichi fields); tapes are kept, least-recently-written evicted first, within
``tape_memory`` (default 1 GiB). The backward pass reverses each segment substep by
substep from its tape, re-running the segment first if its tape was evicted. Peak memory
is about

    (T / K) * S  +  min(tape_memory, (T / K) * K * (S + G))  +  fields

with ``S`` = one particle state (x, v, C, F: 24 floats per particle), ``G`` one grid
(momentum and mass: 4 floats per node) and ``fields`` the solver's own Taichi fields
(~110 floats per particle plus ~13 per grid node, allocated once). With ``tape_memory=0``
(one tape) it is ``(T/K + K) * S + K * G + fields``: for 30k particles, T = 1000,
K = 32, a 64^3 grid in f32 about 0.3 GB beyond the fields (measured peak process memory
791 MB); with the default 1 GiB of tapes 1.55 GB
(``python benchmarks/mpm.py --case memory_1000steps_30k``).

With torch materials (:class:`NeuralMaterial`) each substep is a chain of three
Functions (material stage, the torch module, transfer) and segments are checkpointed
with ``torch.utils.checkpoint`` (same memory formula, plus the module's activations
for one segment).

Inside a rollout deformation gradients travel as ``F - I`` (:func:`state_rows`), as the
solver's fields hold them (see :mod:`diffsim.kernels.constitutive`: f32 keeps small strains
to their own relative precision that way); states handed to users (records, the final
state) carry ``F``.

The contact/boundary branches (which grid nodes touch a collider, whether a particle
yields) are taken as they were in the forward pass; gradients are exact almost
everywhere and one-sided at contact or yield onset.
"""
from __future__ import annotations


import numpy as np
import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from .. import adjoint_health, runtime
from ..core.adjoint import DEFAULT_TAPE_MEMORY, SegmentHooks, segment, tape_cache
from ..core.adjoint import cuts as segment_cuts
from ..core.state import State
from ..errors import GradientNotFinite, InvalidScene
from ..materials import NeuralMaterial


class MPMState(State):
    """MPM particle state: x (N,3) m, v (N,3) m/s, C (N,3,3) 1/s (APIC affine), F (N,3,3)
    (deformation gradient); a :class:`~diffsim.State` with these four fields."""

    def __init__(self, x: torch.Tensor, v: torch.Tensor, C: torch.Tensor, F: torch.Tensor):
        super().__init__(x=x, v=v, C=C, F=F)

    @classmethod
    def of(cls, state: State) -> "MPMState":
        """``state`` (any :class:`~diffsim.State` with x, v, C, F) as an MPMState."""
        return state if isinstance(state, cls) else cls(*(state[k] for k in ("x", "v", "C", "F")))


def state_rows(state: MPMState) -> tuple:
    """``(x, v, C, F - I)``: a state as a rollout carries it."""
    return state.x, state.v, state.C, state.F - torch.eye(3, dtype=state.F.dtype)


def state_from_rows(x, v, C, F_minus_I) -> MPMState:
    """Inverse of :func:`state_rows`."""
    return MPMState(x, v, C, F_minus_I + torch.eye(3, dtype=F_minus_I.dtype))


def _c(t: torch.Tensor, dtype) -> torch.Tensor:
    return t.detach().to(dtype=dtype).contiguous()


def _put(fields, tensors, n, dtype):
    """Copy per-particle tensors (first dim ``n``) into fields with one kernel launch."""
    from ..kernels import mpm as km
    km.copy_in_packed(tuple(fields), torch.cat([t.detach().reshape(n, -1).to(dtype) for t in tensors], 1)
                      .contiguous(), n)


def _get(fields, shapes, n, dtype):
    """Per-particle tensors of the given trailing shapes out of fields (one launch)."""
    from ..kernels import mpm as km
    widths = [int(np.prod(sh)) for sh in shapes]
    buf = torch.empty((n, sum(widths)), dtype=dtype)
    km.copy_out_packed(tuple(fields), buf, n)
    return [c.reshape((n,) + tuple(sh)) for c, sh in zip(torch.split(buf, widths, 1), shapes)]


class _MaterialStage(torch.autograd.Function):
    """``(F - I, C, prm) -> (F1 - I, tau)``."""

    @staticmethod
    def forward(ctx, sim, F, C, prm, substep=None, check=True):
        from ..kernels import mpm as km
        fs, n, dt = sim.fields, sim.n, sim.dt
        dtype = F.dtype
        _put((fs.F_minus_I, fs.C, fs.prm), (F, C, prm), n, dtype)
        km.material_stage(fs, sim.mats, n, dt)
        F1, tau = _get((fs.F1_minus_I, fs.tau), ((3, 3), (3, 3)), n, dtype)
        ctx.sim, ctx.substep, ctx.check = sim, substep, check
        ctx.save_for_backward(F, C, prm)
        return F1, tau

    @staticmethod
    def backward(ctx, gF1, gtau):
        from ..kernels import mpm as km
        sim = ctx.sim
        F, C, prm = ctx.saved_tensors
        fs, n, dt = sim.fields, sim.n, sim.dt
        dtype = F.dtype
        gF1 = torch.zeros_like(F) if gF1 is None else gF1
        gtau = torch.zeros_like(F) if gtau is None else gtau
        _put((fs.F_minus_I, fs.C, fs.prm, fs.adj_F1, fs.tau.grad), (F, C, prm, gF1, gtau), n, dtype)
        km.material_stage_vjp(fs, sim.mats, n, dt)
        gF, gC, gprm = _get((fs.adj_F, fs.adj_C, fs.adj_prm), ((3, 3), (3, 3), (4,)), n, dtype)
        if ctx.check and not adjoint_health.all_finite(gF, gC, gprm):
            if not adjoint_health.all_finite(gF1, gtau):
                raise GradientNotFinite(ctx.substep, "material", "the adjoint arriving from the torch "
                                        "material or the transfer is not finite")
            bad = ~(torch.isfinite(gF).flatten(1).all(1) & torch.isfinite(gC).flatten(1).all(1)
                    & torch.isfinite(gprm).all(1))
            raise GradientNotFinite(ctx.substep, "material", adjoint_health._particle(sim, int(bad.nonzero()[0, 0])))
        return None, gF, gC, gprm.to(prm.dtype), None, None


class _Transfer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sim, x, v, C, tau, c_pos, c_vel, c_omega, substep=None, check=True):
        from ..kernels import mpm as km
        fs, n = sim.fields, sim.n
        dtype = x.dtype
        _load_transfer_inputs(sim, x, v, C, tau, c_pos, c_vel, c_omega)
        dt, dx, lx, ly, lz, gx, gy, gz = sim.kernel_args
        km.clear_grid(fs)
        km.p2g(fs, n, dt, dx, lx, ly, lz)
        km.grid_update(fs, sim.cols, dt, dx, lx, ly, lz, gx, gy, gz)
        km.g2p(fs, n, dt, dx, lx, ly, lz)
        x1, v1, C1 = _get((fs.x1, fs.v1, fs.C1), ((3,), (3,), (3, 3)), n, dtype)
        ctx.sim, ctx.substep, ctx.check = sim, substep, check
        ctx.save_for_backward(x, v, C, tau, c_pos, c_vel, c_omega)
        return x1, v1, C1

    @staticmethod
    def backward(ctx, gx1, gv1, gC1):
        from ..kernels import mpm as km
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
        S = c_pos.shape[0]
        if S:
            for f in (fs.c_pos.grad, fs.c_vel.grad, fs.c_omega.grad):
                f.fill(0)
        km.clear_grid_grad(fs)
        _put((fs.x1.grad, fs.v1.grad, fs.C1.grad),
             (gx1 if gx1 is not None else torch.zeros_like(x), gv1 if gv1 is not None else torch.zeros_like(v),
              gC1 if gC1 is not None else torch.zeros_like(C)), n, dtype)
        km.g2p_adjoint(fs, n, dt, dx, lx, ly, lz)
        km.grid_update_adjoint(fs, sim.cols, dt, dx, lx, ly, lz, gx, gy, gz)
        km.p2g_adjoint(fs, n, dt, dx, lx, ly, lz)
        gx_, gv_, gC_, gtau = _get((fs.x.grad, fs.v.grad, fs.C.grad, fs.tau.grad), ((3,), (3,), (3, 3), (3, 3)),
                                   n, dtype)
        out = []
        for f, ref in ((fs.c_pos.grad, c_pos), (fs.c_vel.grad, c_vel), (fs.c_omega.grad, c_omega)):
            out.append(torch.from_numpy(f.to_numpy()[:S]).to(ref.dtype) if S and ref.requires_grad else None)
        if ctx.check and not adjoint_health.all_finite(gx_, gv_, gC_, gtau, *out):
            # again, stage by stage, from the same output adjoints (they are still in x1.grad ...)
            km.grid_update(fs, sim.cols, dt, dx, lx, ly, lz, gx, gy, gz)
            adjoint_health.reverse_substep_checked(sim, ctx.substep, material=False)
            raise GradientNotFinite(ctx.substep, "transfer", "an output adjoint (not placed by the stage-by-stage "
                                    "pass: check the loss and the inputs)")
        return (None, gx_, gv_, gC_, gtau, *out, None, None)


def _load_transfer_inputs(sim, x, v, C, tau, c_pos, c_vel, c_omega):
    fs, n = sim.fields, sim.n
    dtype = x.dtype
    _put((fs.x, fs.v, fs.C, fs.tau), (x, v, C, tau), n, dtype)
    S = c_pos.shape[0]
    if S:
        _put((fs.c_pos, fs.c_vel, fs.c_omega), (c_pos, c_vel, c_omega), S, dtype)


class _MPMSegment:
    """Substeps ``start .. start + steps`` of a rollout (the collider rotations per substep
    or None); ``g_*`` accumulate the colliders' adjoints during its reverse pass."""

    def __init__(self, start, steps, rotations):
        self.start, self.steps, self.rotations = start, steps, rotations


class MPMHooks(SegmentHooks):
    """The MPM's hooks into the adjoint core (:mod:`diffsim.core.adjoint`). A segment's
    inputs are ``(x, v, C, F - I, prm, c_pos, c_vel, c_omega)``, its outputs ``(x, v, C,
    F - I)``. Forward: the fused one-kernel substep, taping every substep's state (and
    grid). Reverse: each substep from its tape with the hand-written P2G/G2P and material
    adjoints, the walls' adjoint and Taichi autodiff of the collider conditions, all in
    Taichi fields. ``hook``: a grid hook (a coupling term, e.g.
    :class:`diffsim.kernels.coupling.FEMGridContact`: ``row``, ``replay``, ``adjoint``)
    applied inside the fused kernel, replayed on the loaded grid and reversed between the
    G2P and grid adjoints."""

    def __init__(self, sim, longest, check=True, hook=None):
        self.sim, self.check, self.hook = sim, check, hook
        self.cache = tape_cache(sim)
        self.length = max(1, 1 << (int(longest) - 1).bit_length())

    def tape_spec(self, seg):
        from .. import pool
        from ..kernels.mpm import MPMTape
        sim = self.sim
        itemsize = 8 if runtime.config().precision == "f64" else 4
        grid_bytes = self.length * int(np.prod(sim.grid_shape)) * 4 * itemsize
        grid = sim.grid_shape if grid_bytes <= 2 ** 30 else None  # else recompute P2G
        nbytes = (self.length + 1) * sim.fields.capacity * 24 * itemsize + (grid_bytes if grid else 0)
        key = ("tape", sim.fields.capacity, self.length, grid, runtime.config().precision)

        def make():
            tape, token = pool.acquire(key, lambda: MPMTape(key[1], self.length, grid, runtime.real_dtype()), sim)
            return tape, lambda: pool.release(token)
        return key, nbytes, make

    def load(self, seg, inputs):
        fs = self.sim.fields
        _put((fs.x, fs.v, fs.C, fs.F_minus_I, fs.prm), inputs[:5], self.sim.n, inputs[0].dtype)

    def run(self, seg, tape, inputs):
        for k in range(seg.steps):
            self.substep(seg, tape, k, inputs)

    def substep(self, seg, tape, k, inputs):
        """Forward substep ``k`` of the segment (taped when ``tape`` is given)."""
        c_pos, c_vel, c_omega = inputs[5:]
        if self.hook is not None:
            self.hook.row[None] = k
        segment_substep(self.sim, tape, k, c_pos[k], c_vel[k], c_omega, seg.rotations, self.hook)

    def outputs(self, seg, inputs):
        fs = self.sim.fields
        return _get((fs.x, fs.v, fs.C, fs.F_minus_I), ((3,), (3,), (3, 3), (3, 3)), self.sim.n, inputs[0].dtype)

    def reload(self, seg, inputs):
        _put((self.sim.fields.prm,), inputs[4:5], self.sim.n, inputs[4].dtype)

    def seed(self, seg, tape, grads):
        seed_adjoint(self.sim, *grads)
        S = len(self.sim.colliders)
        seg.g_pos, seg.g_vel, seg.g_omega = np.zeros((seg.steps, S, 3)), np.zeros((seg.steps, S, 3)), np.zeros((S, 3))

    def load_substep(self, seg, tape, k, inputs):
        c_pos, c_vel, c_omega = inputs[5:]
        load_substep(self.sim, tape, k, c_pos[k], c_vel[k], c_omega, seg.rotations)

    def reverse(self, seg, tape, k, inputs):
        sim, hook = self.sim, self.hook
        fs = sim.fields
        self.load_substep(seg, tape, k, inputs)
        after_g2p = None
        if hook is not None:          # the hook again on the loaded grid, then its adjoint
            args = sim.kernel_args[:5]
            hook.row[None] = k
            hook.replay(fs, *args)
            after_g2p = lambda: hook.adjoint(fs, *args)  # noqa: E731
        reverse_substep(sim, first=k == seg.steps - 1, after_g2p=after_g2p)
        S = len(sim.colliders)
        if S:
            seg.g_pos[k] = fs.c_pos.grad.to_numpy()[:S]
            seg.g_vel[k] = fs.c_vel.grad.to_numpy()[:S]
            seg.g_omega += fs.c_omega.grad.to_numpy()[:S]

    def input_grads(self, seg, tape, inputs):
        fs = self.sim.fields
        x, prm, c_pos, c_vel, c_omega = inputs[0], inputs[4], *inputs[5:]
        *outs, gprm = _get((fs.x1.grad, fs.v1.grad, fs.C1.grad, fs.adj_F1, fs.acc_prm),
                           ((3,), (3,), (3, 3), (3, 3), (4,)), self.sim.n, x.dtype)
        return (*outs, gprm.to(prm.dtype), torch.from_numpy(seg.g_pos).to(c_pos.dtype),
                torch.from_numpy(seg.g_vel).to(c_vel.dtype), torch.from_numpy(seg.g_omega).to(c_omega.dtype))

    def locate(self, seg, tape, grads, inputs):
        adjoint_health.locate(self.sim, tape, seg.start, seg.steps,
                              lambda k: self.load_substep(seg, tape, k, inputs), grads[:4])


def seed_adjoint(sim, gx, gv, gC, gF):
    """Output adjoints of the last substep of a segment (None: zero) into the fields."""
    fs, n = sim.fields, sim.n
    dtype = runtime.torch_dtype()
    zeros3 = torch.zeros((n, 3), dtype=dtype)
    zeros33 = torch.zeros((n, 3, 3), dtype=dtype)
    _put((fs.x1.grad, fs.v1.grad, fs.C1.grad, fs.adj_F1),
         (gx if gx is not None else zeros3, gv if gv is not None else zeros3,
          gC if gC is not None else zeros33, gF if gF is not None else zeros33), n, dtype)


def load_substep(sim, tape, k, pos, vel, omega, rotations):
    """Substep ``k`` of a taped segment back in the fields: its input state, colliders and
    grid (after the grid update, before any hook)."""
    from ..kernels import mpm as km
    fs, n = sim.fields, sim.n
    args = sim.kernel_args
    dt, dx, lx, ly, lz = args[:5]
    km.tape_load(fs, tape, k, n)
    _load_colliders(sim, pos, vel, omega, rotations, k)
    if tape.with_grid:
        km.tape_load_grid(fs, tape, k)
    else:
        km.material_stage(fs, sim.mats, n, dt)
        km.clear_grid(fs)
        km.p2g(fs, n, dt, dx, lx, ly, lz)
    km.grid_update(fs, sim.cols, *args)


def reverse_substep(sim, first, after_g2p=None):
    """Reverse pass of the substep loaded by :func:`load_substep`: the output adjoints in
    ``x1.grad`` ... become the input adjoints (in the same fields), parameter adjoints are
    summed into ``acc_prm`` (``first``: the segment's last substep, which starts the sum),
    collider adjoints land in ``c_*.grad``. ``after_g2p()`` runs between the G2P and grid
    adjoints (a grid hook's reverse pass)."""
    from ..kernels import mpm as km
    fs, n = sim.fields, sim.n
    args = sim.kernel_args
    dt, dx, lx, ly, lz = args[:5]
    km.clear_grid_grad(fs)
    if len(sim.colliders):
        for f in (fs.c_pos.grad, fs.c_vel.grad, fs.c_omega.grad):
            f.fill(0)
    km.g2p_adjoint(fs, n, dt, dx, lx, ly, lz)
    if after_g2p is not None:
        after_g2p()
    km.grid_update_adjoint(fs, sim.cols, *args)
    km.substep_adjoint_particles(fs, sim.mats, n, dt, dx, lx, ly, lz, int(first))


def segment_substep(sim, tape, k, pos, vel, omega, rotations, hook=None):
    """Substep ``k`` of a segment (fused kernel, optional grid ``hook``), its input state
    and grid taped when ``tape`` is given."""
    from ..kernels import mpm as km
    fs, n = sim.fields, sim.n
    if tape is not None:
        km.tape_store(fs, tape, k, n)
    _load_colliders(sim, pos, vel, omega, rotations, k)
    km.step_fused(fs, sim.mats, sim.cols, n, *sim.kernel_args, hook)
    if tape is not None and tape.with_grid:
        km.tape_store_grid(fs, tape, k)


def _load_colliders(sim, pos, vel, omega, rotations, k):
    """Collider slots for substep ``k`` of a segment (pos/vel: (S,3) tensors)."""
    from ..kernels import mpm as km
    S = pos.shape[0]
    if not S:
        return
    fs = sim.fields
    dtype = runtime.torch_dtype()
    km.copy_in(fs.c_pos, _c(pos, dtype), S)
    km.copy_in(fs.c_vel, _c(vel, dtype), S)
    km.copy_in(fs.c_omega, _c(omega, dtype), S)
    if rotations is not None:
        fs.c_rot.from_numpy(rotations[k])


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
    # validated like the constructors (ranges, shapes) and against the time-step limit
    sim.check_time_step({b.name: b.material.with_overrides(params[b.name]) for b in sim.bodies if b.name in params})
    rows = [b.material.parameter_vector(params.get(b.name)).to(dtype).expand(b.count, 4) for b in sim.bodies]
    return torch.cat(rows, 0)


def step(sim, x, v, C, F, prm: torch.Tensor, c_pos: torch.Tensor, c_vel: torch.Tensor,
         c_omega: torch.Tensor, substep: int | None = None, check_gradients: bool = True) -> tuple:
    """One differentiable substep (see the module docstring) of a state as rollouts carry
    it (``F`` is ``F - I``, :func:`state_rows`); ``substep`` names it in gradient errors."""
    F1, tau = _MaterialStage.apply(sim, F, C, prm, substep, check_gradients)
    eye = torch.eye(3, dtype=F1.dtype)
    for b in sim.bodies:
        if isinstance(b.material, NeuralMaterial):
            F_e, tau_b = b.material.respond(F1[b.start:b.stop] + eye)
            F1 = torch.cat([F1[:b.start], F_e.to(F1.dtype) - eye, F1[b.stop:]], 0)
            tau = torch.cat([tau[:b.start], tau_b.to(tau.dtype), tau[b.stop:]], 0)
    x1, v1, C1 = _Transfer.apply(sim, x, v, C, tau, c_pos, c_vel, c_omega, substep, check_gradients)
    return x1, v1, C1, F1


def initial_state(sim, requires_grad: bool = False, start: bool = False) -> MPMState:
    """The solver's current state as torch tensors (optionally leaves requiring grad);
    with ``start=True`` the state the bodies were added with (C = 0, F = I)."""
    if start:
        n = sim.n
        s = {"x": sim.initial_positions(), "v": sim.initial_velocities(), "C": np.zeros((n, 3, 3)),
             "F": np.broadcast_to(np.eye(3), (n, 3, 3))}
    else:
        s = sim.get_state()
    dtype = runtime.torch_dtype()
    ts = [torch.tensor(s[k], dtype=dtype, requires_grad=requires_grad) for k in ("x", "v", "C", "F")]
    return MPMState(*ts)


def mpm_rollout(sim, steps: int, state: MPMState | None = None, params: dict | None = None,
            collider_velocity: dict | None = None, collider_position: dict | None = None,
            record_every: int | None = None, checkpoint_every: int | None = None,
            tape_memory: int | None = None, check_gradients: bool = True):
    """Differentiable MPM rollout of ``steps`` substeps from the solver's current time
    (behind :func:`diffsim.rollout`, which resets the solver first).

    Args:
        sim: a built (or buildable) :class:`MPMSolver`.
        state: initial :class:`MPMState` (default: the solver's current state, no grad).
        params: material overrides ``{body: {"E": tensor, ...}}`` (see each material's
            ``differentiable`` names).
        collider_velocity: ``{collider_name: tensor (steps, 3) or (3,)}`` linear velocity
            per substep (m/s); default: the collider's own schedule.
        collider_position: ``{collider_name: tensor (3,)}`` initial position (m).
        record_every: also return the state every ``record_every`` substeps.
        checkpoint_every: segment length K: only every K-th state is kept for the
            backward pass, segments are recomputed (default ~sqrt(steps); 0 or None with
            ``steps`` small: one segment).
        tape_memory: bytes of segment tapes (states and grids of every substep of a
            segment) that may be kept from the forward to the backward pass (default
            1 GiB); segments whose tape was evicted are recomputed. 0: always recompute
            (pure checkpointing, smallest memory).
        check_gradients: after each backward segment, test the adjoints for NaN/inf and,
            if one is found, reverse the segment again stage by stage to raise
            :class:`~diffsim.GradientNotFinite` naming the substep, the stage (G2P,
            collider, grid, P2G, material, ...) and the particle or node. Costs one
            ``isfinite`` per segment; False skips it (NaN then propagates silently).

    Returns ``(final_state, records)``: ``records`` is a list of ``(step, state)`` pairs.
    The solver's own state is set to the (detached) final state and its clock advanced.
    """
    sim.build()
    steps = int(steps)
    if steps < 1:
        raise InvalidScene(f"steps must be >= 1, got {steps}")
    if record_every is not None and int(record_every) < 1:
        raise InvalidScene(f"record_every must be >= 1, got {record_every}")
    if state is None:  # the solver's own state, F - I exactly as its fields hold it
        raw = sim._read_state()
        rows = tuple(torch.from_numpy(raw[k]) for k in ("x", "v", "C", "F_minus_I"))
    else:
        rows = state_rows(state)
    prm = parameter_tensor(sim, params)
    pos, vel, omega, rotations, end = collider_schedule(sim, steps, collider_velocity, collider_position)
    tape_cache(sim).budget = DEFAULT_TAPE_MEMORY if tape_memory is None else int(tape_memory)

    cuts = segment_cuts(steps, checkpoint_every, record_every)
    hooks = MPMHooks(sim, max(b - a for a, b in zip(cuts[:-1], cuts[1:])), check_gradients)
    neural = any(isinstance(b.material, NeuralMaterial) for b in sim.bodies)
    start_time, start_step = sim.time, sim.step_count
    x, v, C, F = rows
    records = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        rots = rotations[a:b] if rotations is not None else None
        if neural:
            seg = lambda *t, a=a, b=b, rots=rots: _per_step_segment(sim, a, b, rots, *t,  # noqa: E731
                                                                    check=check_gradients)
            args = (x, v, C, F, prm, pos[a:b], vel[a:b], omega)
            if torch.is_grad_enabled() and checkpoint_every != 0:
                x, v, C, F = _checkpoint(seg, *args, use_reentrant=False)
            else:
                x, v, C, F = seg(*args)
        else:
            x, v, C, F = segment(hooks, _MPMSegment(a, b - a, rots), x, v, C, F, prm, pos[a:b], vel[a:b], omega)
        if record_every and b % int(record_every) == 0:
            records.append((b, state_from_rows(x, v, C, F)))
    final = state_from_rows(x, v, C, F)
    finish_rollout(sim, final, end, rotations, steps, start_time, start_step)
    return final, records


def collider_schedule(sim, steps, collider_velocity=None, collider_position=None):
    """Per-substep collider slots of the next ``steps`` substeps as tensors: positions and
    velocities (steps, S, 3), angular velocities (S, 3), rotations (steps+1 arrays or
    None) and the final positions (S, 3) (None without colliders); velocities and start
    positions default to the colliders' own schedule."""
    dtype = runtime.torch_dtype()
    S = len(sim.colliders)
    pos0, _, omega0, _ = sim.collider_state()
    collider_velocity = dict(collider_velocity or {})
    collider_position = dict(collider_position or {})
    names = [c.name for c in sim.colliders]
    for key in list(collider_velocity) + list(collider_position):
        if key not in names:
            raise InvalidScene(f"unknown collider {key!r}; colliders: {names}")
    tables = []
    for c in sim.colliders:
        if c.name in collider_velocity:
            t = collider_velocity[c.name].to(dtype)
            if t.shape == (3,):
                t = t.expand(steps, 3)
            if t.shape != (steps, 3):
                raise InvalidScene(f"collider_velocity[{c.name!r}] must have shape (3,) or ({steps}, 3), "
                                   f"got {tuple(t.shape)}")
            tables.append(t)
        else:
            tables.append(torch.tensor(np.array([c.velocity_at(sim.time + k * sim.dt, sim.dt) for k in range(steps)]),
                                       dtype=dtype).reshape(steps, 3))
    if S:
        vel = torch.stack(tables, 1)                                     # (steps, S, 3)
        start = torch.stack([collider_position[c.name].to(dtype) if c.name in collider_position
                             else torch.tensor(pos0[i], dtype=dtype) for i, c in enumerate(sim.colliders)])
        pos = start + sim.dt * (torch.cumsum(vel, 0) - vel)             # position at each substep
        end = start + sim.dt * vel.sum(0)
    else:
        vel = torch.zeros((steps, 0, 3), dtype=dtype)
        pos = torch.zeros((steps, 0, 3), dtype=dtype)
        end = None
    omega = torch.tensor(omega0[:S], dtype=dtype).reshape(S, 3)
    return pos, vel, omega, _rotation_schedule(sim, steps), end


def finish_rollout(sim, final, end, rotations, steps, start_time, start_step):
    """Leave the solver at the end of a rollout: state, colliders, clock."""
    sim.set_state({"x": final.x, "v": final.v, "C": final.C, "F": final.F})
    for i, c in enumerate(sim.colliders):
        c.position = end[i].detach().cpu().numpy().astype(float)
        if rotations is not None:
            c.rotation = rotations[steps][i].astype(float)
    sim.time = start_time + steps * sim.dt
    sim.step_count = start_step + steps
    sim._upload_collider_state()


def _per_step_segment(sim, a, b, rotations, x, v, C, F, prm, pos, vel, omega, check=True):
    """Substeps ``a..b`` as a chain of per-step autograd Functions (torch materials)."""
    for k in range(b - a):
        if rotations is not None:
            sim.fields.c_rot.from_numpy(rotations[k])
        x, v, C, F = step(sim, x, v, C, F, prm, pos[k], vel[k], omega, a + k, check)
    return x, v, C, F


def _rotation_schedule(sim, steps):
    """Per-step rotation arrays (steps+1, slots, 3, 3) for rotating colliders, else None."""
    from ..colliders import rotation_step
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
