"""MLS-MPM (APIC, quadratic B-splines) Taichi fields and kernels.

:class:`MPMFields` owns every Taichi field of one MPM domain; instances are pooled by
:mod:`diffsim.pool` and reused across scenes so that fields are allocated, and kernels
compiled, once per shape (re-creating fields per scene leaks memory).

Two code paths share the same ``@ti.func`` building blocks:

* :func:`step_fused` -- one kernel launch per substep (material + P2G + grid + G2P,
  in place); the fast path for forward simulation.
* :func:`material_stage` / :func:`p2g` / :func:`grid_update` / :func:`g2p` -- separate
  kernels with separate input and output fields for the differentiable path: Taichi
  autodiff provides ``p2g.grad`` etc., the material stage has the hand-written adjoint
  :func:`material_stage_vjp`.

Units: positions m, velocities m/s, stress Pa, mass kg, volume m^3, time s.
"""
import taichi as ti

from . import boundary, constitutive, sdf

N_WALLS = 6  # -x, +x, -y, +y, -z, +z
BOUND = 3    # grid nodes next to each face that belong to the wall


@ti.data_oriented
class MPMFields:
    """All Taichi fields of one MPM domain.

    Args:
        capacity: maximum number of particles.
        grid_shape: grid nodes per axis ``(nx, ny, nz)``.
        n_slots: collider slots (compile-time constant).
        sdf_capacity: number of floats for mesh-collider SDF grids.
        max_bodies: bodies that per-body statistics can be reported for.
    """

    def __init__(self, capacity, grid_shape, n_slots, sdf_capacity, max_bodies, dtype):
        self.capacity = int(capacity)
        self.grid_shape = tuple(int(g) for g in grid_shape)
        self.n_slots = int(n_slots)
        self.sdf_capacity = int(sdf_capacity)
        self.max_bodies = int(max_bodies)
        self.dtype = dtype
        f, N, G = dtype, self.capacity, self.grid_shape
        vec3 = ti.types.vector(3, f)
        mat3 = ti.types.matrix(3, 3, f)
        # particle state (input side of a step) and the output side of the split path
        self.x = ti.Vector.field(3, f, N, needs_grad=True)
        self.v = ti.Vector.field(3, f, N, needs_grad=True)
        self.C = ti.Matrix.field(3, 3, f, N, needs_grad=True)
        self.F_minus_I = ti.Matrix.field(3, 3, f, N)   # F - I: see kernels.constitutive
        self.x1 = ti.Vector.field(3, f, N, needs_grad=True)
        self.v1 = ti.Vector.field(3, f, N, needs_grad=True)
        self.C1 = ti.Matrix.field(3, 3, f, N, needs_grad=True)
        self.F1_minus_I = ti.Matrix.field(3, 3, f, N)
        self.tau = ti.Matrix.field(3, 3, f, N, needs_grad=True)
        # adjoints of the material stage (hand-written VJP)
        self.adj_F1 = ti.Matrix.field(3, 3, f, N)
        self.adj_F = ti.Matrix.field(3, 3, f, N)
        self.adj_C = ti.Matrix.field(3, 3, f, N)
        self.adj_prm = ti.Vector.field(4, f, N)
        self.acc_prm = ti.Vector.field(4, f, N)  # adjoint of prm summed over a segment
        # per-particle constants
        self.mass = ti.field(f, N)
        self.vol = ti.field(f, N)
        self.mtype = ti.field(ti.i32, N)
        self.prm = ti.Vector.field(4, f, N)
        self.body = ti.field(ti.i32, N)
        # grid
        self.g_mv = ti.Vector.field(3, f, G, needs_grad=True)
        self.g_m = ti.field(f, G, needs_grad=True)
        self.g_vw = ti.Vector.field(3, f, G, needs_grad=True)  # after walls, before colliders
        self.g_v = ti.Vector.field(3, f, G, needs_grad=True)
        # colliders
        S = self.n_slots
        self.c_type = ti.field(ti.i32, S)
        self.c_kind = ti.field(ti.i32, S)
        self.c_mu = ti.field(f, S)
        self.c_pos = ti.Vector.field(3, f, S, needs_grad=True)
        self.c_vel = ti.Vector.field(3, f, S, needs_grad=True)
        self.c_omega = ti.Vector.field(3, f, S, needs_grad=True)
        self.c_rot = ti.Matrix.field(3, 3, f, S)
        self.c_shape = ti.Vector.field(4, f, S)
        self.c_mesh = ti.Vector.field(4, ti.i32, S)
        self.sdf = ti.field(f, max(self.sdf_capacity, 1))
        # domain walls
        self.w_kind = ti.field(ti.i32, N_WALLS)
        self.w_mu = ti.field(f, N_WALLS)
        # diagnostics: per body [kinetic, potential, elastic, px, py, pz, mass, max speed]
        self.stats = ti.Vector.field(8, f, self.max_bodies)
        self.bad_particle = ti.field(ti.i32, ())
        self.escaped = ti.field(ti.i32, ())
        del vec3, mat3


# ----------------------------------------------------------------------------- helpers


@ti.func
def _stencil(xp, lo, inv_dx, G: ti.template()):
    """Base node, fractional offset and quadratic B-spline weights of a particle."""
    Xp = (xp - lo) * inv_dx
    base = ti.cast(ti.floor(Xp - 0.5), ti.i32)
    for d in ti.static(range(3)):
        base[d] = ti.min(ti.max(base[d], 0), G[d] - 3)
    fx = Xp - base
    W = ti.Matrix.rows([0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1.0) ** 2, 0.5 * (fx - 0.5) ** 2])
    return base, fx, W


# The 27-node stencil loops are dynamic (not ti.static): same speed, 20x faster compiles.


@ti.func
def _stencil_grad(fx):
    """Derivatives of the quadratic B-spline weights with respect to ``fx``:
    ``dW[i, d]`` for node offset ``i`` along axis ``d``."""
    return ti.Matrix.rows([fx - 1.5, -2.0 * (fx - 1.0), fx - 0.5])


@ti.func
def _stencil_node(W, dW, fx, i, j, k, dx):
    """Offset, ``x_i - x_p`` (m), weight and weight gradient (1/m) of stencil node (i, j, k)."""
    off = ti.Vector([i, j, k])
    wt = W[i, 0] * W[j, 1] * W[k, 2]
    gw = ti.Vector([dW[i, 0] * W[j, 1] * W[k, 2], W[i, 0] * dW[j, 1] * W[k, 2],
                    W[i, 0] * W[j, 1] * dW[k, 2]]) / dx
    return off, (off - fx) * dx, wt, gw


@ti.func
def _scatter(fs: ti.template(), p, xp, vp, Cp, taup, dt, dx, lo):
    inv_dx = 1.0 / dx
    base, fx, W = _stencil(xp, lo, inv_dx, ti.static(fs.grid_shape))
    m = fs.mass[p]
    affine = m * Cp - (dt * fs.vol[p] * 4.0 * inv_dx * inv_dx) * taup
    mv = m * vp
    for i, j, k in ti.ndrange(3, 3, 3):
        off = ti.Vector([i, j, k])
        dpos = (off - fx) * dx
        wt = W[i, 0] * W[j, 1] * W[k, 2]
        fs.g_mv[base + off] += wt * (mv + affine @ dpos)
        fs.g_m[base + off] += wt * m


@ti.func
def _gather(fs: ti.template(), xp, dx, lo):
    inv_dx = 1.0 / dx
    base, fx, W = _stencil(xp, lo, inv_dx, ti.static(fs.grid_shape))
    nv = ti.Vector.zero(float, 3)
    nC = ti.Matrix.zero(float, 3, 3)
    for i, j, k in ti.ndrange(3, 3, 3):
        off = ti.Vector([i, j, k])
        dpos = off - fx
        wt = W[i, 0] * W[j, 1] * W[k, 2]
        gv = fs.g_v[base + off]
        nv += wt * gv
        nC += (4.0 * inv_dx * wt) * gv.outer_product(dpos)
    return nv, nC


@ti.func
def _wall_normal(d: ti.template(), sign: ti.template()):
    n = ti.Vector.zero(float, 3)
    n[d] = sign
    return n


@ti.func
def _node_velocity_walls(fs: ti.template(), I, dt, gravity):
    """Grid momentum -> velocity, gravity and the domain walls (0 on empty nodes)."""
    m = fs.g_m[I]
    v = ti.Vector.zero(float, 3)
    if m > 0.0:
        v = fs.g_mv[I] / m + dt * gravity
        G = ti.static(fs.grid_shape)
        for d in ti.static(range(3)):
            if I[d] < BOUND:
                v = boundary.contact_velocity(v, ti.Vector.zero(float, 3), _wall_normal(d, 1.0),
                                              fs.w_kind[2 * d], fs.w_mu[2 * d])
            if I[d] >= G[d] - BOUND:
                v = boundary.contact_velocity(v, ti.Vector.zero(float, 3), _wall_normal(d, -1.0),
                                              fs.w_kind[2 * d + 1], fs.w_mu[2 * d + 1])
    return v


@ti.func
def _node_velocity_walls_adjoint(fs: ti.template(), I, dt, gravity, v_bar):
    """Adjoint of :func:`_node_velocity_walls`: ``(mv_bar, m_bar)`` for ``v_bar``."""
    m = fs.g_m[I]
    mv_bar = ti.Vector.zero(float, 3)
    m_bar = 0.0
    if m > 0.0:
        G = ti.static(fs.grid_shape)
        # forward again, keeping the input of each of the six wall stages
        v0 = fs.g_mv[I] / m + dt * gravity
        ins = [v0, v0, v0, v0, v0, v0]
        v = v0
        for d in ti.static(range(3)):
            ins[2 * d] = v
            if I[d] < BOUND:
                v = boundary.contact_velocity(v, ti.Vector.zero(float, 3), _wall_normal(d, 1.0),
                                              fs.w_kind[2 * d], fs.w_mu[2 * d])
            ins[2 * d + 1] = v
            if I[d] >= G[d] - BOUND:
                v = boundary.contact_velocity(v, ti.Vector.zero(float, 3), _wall_normal(d, -1.0),
                                              fs.w_kind[2 * d + 1], fs.w_mu[2 * d + 1])
        g = v_bar
        for dd in ti.static(range(3)):
            d = ti.static(2 - dd)
            if I[d] >= G[d] - BOUND:
                g, _ = boundary.contact_velocity_vjp(ins[2 * d + 1], ti.Vector.zero(float, 3),
                                                     _wall_normal(d, -1.0), fs.w_kind[2 * d + 1],
                                                     fs.w_mu[2 * d + 1], g)
            if I[d] < BOUND:
                g, _ = boundary.contact_velocity_vjp(ins[2 * d], ti.Vector.zero(float, 3),
                                                     _wall_normal(d, 1.0), fs.w_kind[2 * d], fs.w_mu[2 * d], g)
        # d(mv/m)/dm = -(mv/m)/m, written as two divisions: a node that a particle reaches
        # only through a weight of ~1e-11 has m ~ 1e-20 kg, and m * m underflows in f32
        # (0 -> inf -> NaN in the particle's position adjoint); g / m and mv / m are both
        # ratios of equally small numbers and stay finite.
        mv_bar = g / m
        m_bar = -mv_bar.dot(fs.g_mv[I] / m)
    return mv_bar, m_bar


@ti.func
def _node_velocity_colliders(fs: ti.template(), I, v, dx, lo, cols: ti.template()):
    """Collider boundary conditions on a (non-empty) node's velocity."""
    out = v
    if fs.g_m[I] > 0.0:
        xi = lo + I * dx
        for c in ti.static(range(len(cols))):
            R = fs.c_rot[c]
            r = xi - fs.c_pos[c]
            phi, n_loc = sdf.collider_sdf(fs.sdf, cols[c], R.transpose() @ r, fs.c_shape[c], fs.c_mesh[c])
            if phi < 0.0:
                n = R @ n_loc
                v_wall = fs.c_vel[c] + fs.c_omega[c].cross(r)
                out = boundary.contact_velocity(out, v_wall, n, fs.c_kind[c], fs.c_mu[c])
    return out


@ti.func
def _node_velocity(fs: ti.template(), I, dt, dx, lo, gravity, cols: ti.template()):
    """Grid momentum -> velocity, gravity, wall and collider boundary conditions."""
    return _node_velocity_colliders(fs, I, _node_velocity_walls(fs, I, dt, gravity), dx, lo, cols)


# ----------------------------------------------------------------------------- fused step


def _has_hook(hook) -> bool:
    return hook is not None


@ti.kernel
def step_fused(fs: ti.template(), mats: ti.template(), cols: ti.template(), n: ti.i32, dt: float,
               dx: float, lox: float, loy: float, loz: float, gx: float, gy: float, gz: float,
               hook: ti.template()):
    """One full substep in place (no external stresses).

    ``mats``: material mask (compile-time); ``cols``: tuple of the collider codes per slot;
    ``hook``: None, or an object whose ``@ti.func`` ``grid_contact(fs, q, dt, dx, lo, True)``
    runs for ``q < hook.count[None]``, one after the other (a serial loop, so that the
    result does not depend on thread order), between the grid update and G2P (FEM surface
    nodes exchanging momentum with the grid: :mod:`diffsim.kernels.coupling`).
    """
    lo = ti.Vector([lox, loy, loz])
    gravity = ti.Vector([gx, gy, gz])
    for I in ti.grouped(fs.g_m):
        fs.g_mv[I] = ti.Vector.zero(float, 3)
        fs.g_m[I] = 0.0
    for p in range(n):
        Cp = fs.C[p]
        K = constitutive.trial_deformation(fs.F_minus_I[p], Cp, dt)
        De, taup = constitutive.material_response(fs.mtype[p], K, Cp, fs.prm[p], mats)
        fs.F_minus_I[p] = De
        _scatter(fs, p, fs.x[p], fs.v[p], Cp, taup, dt, dx, lo)
    for I in ti.grouped(fs.g_m):
        fs.g_v[I] = _node_velocity(fs, I, dt, dx, lo, gravity, cols)
    if ti.static(_has_hook(hook)):
        ti.loop_config(serialize=True)
        for q in range(hook.count[None]):
            hook.grid_contact(fs, q, dt, dx, lo, True)
    for p in range(n):
        nv, nC = _gather(fs, fs.x[p], dx, lo)
        fs.v[p] = nv
        fs.C[p] = nC
        fs.x[p] += dt * nv


# ----------------------------------------------------------------------------- split path


@ti.kernel
def material_stage(fs: ti.template(), mats: ti.template(), n: ti.i32, dt: float):
    """``(F - I, C) -> (F1 - I, tau)`` for every particle (EXTERNAL ones get F1 = F_tr,
    tau = 0)."""
    for p in range(n):
        Cp = fs.C[p]
        K = constitutive.trial_deformation(fs.F_minus_I[p], Cp, dt)
        De, taup = constitutive.material_response(fs.mtype[p], K, Cp, fs.prm[p], mats)
        fs.F1_minus_I[p] = De
        fs.tau[p] = taup


@ti.kernel
def material_stage_vjp(fs: ti.template(), mats: ti.template(), n: ti.i32, dt: float):
    """Adjoint of :func:`material_stage`: ``(adj_F1, tau.grad) -> (adj_F, adj_C, adj_prm)``."""
    for p in range(n):
        Fb, Cb, pb = constitutive.material_vjp(fs.mtype[p], fs.F_minus_I[p], fs.C[p], fs.prm[p], dt,
                                               fs.adj_F1[p], fs.tau.grad[p], mats)
        fs.adj_F[p] = Fb
        fs.adj_C[p] = Cb
        fs.adj_prm[p] = pb


@ti.kernel
def clear_grid(fs: ti.template()):
    for I in ti.grouped(fs.g_m):
        fs.g_mv[I] = ti.Vector.zero(float, 3)
        fs.g_m[I] = 0.0


@ti.kernel
def clear_grid_grad(fs: ti.template()):
    for I in ti.grouped(fs.g_m):
        fs.g_vw.grad[I] = ti.Vector.zero(float, 3)
        fs.g_v.grad[I] = ti.Vector.zero(float, 3)
        fs.g_mv.grad[I] = ti.Vector.zero(float, 3)
        fs.g_m.grad[I] = 0.0


@ti.kernel
def p2g(fs: ti.template(), n: ti.i32, dt: float, dx: float, lox: float, loy: float, loz: float):
    # (autodiff kernels: nothing outside the loop)
    for p in range(n):
        lo = ti.Vector([lox, loy, loz])
        _scatter(fs, p, fs.x[p], fs.v[p], fs.C[p], fs.tau[p], dt, dx, lo)


@ti.kernel
def grid_walls(fs: ti.template(), dt: float, gx: float, gy: float, gz: float):
    """``g_vw`` = walls(grid momentum / mass + gravity); adjoint: :func:`grid_walls_adjoint`."""
    for I in ti.grouped(fs.g_m):
        fs.g_vw[I] = _node_velocity_walls(fs, I, dt, ti.Vector([gx, gy, gz]))


@ti.kernel
def grid_colliders(fs: ti.template(), cols: ti.template(), dx: float, lox: float, loy: float, loz: float):
    """``g_v`` = colliders(``g_vw``); differentiated by Taichi autodiff (SDF normals and
    collider poses included)."""
    for I in ti.grouped(fs.g_m):
        lo = ti.Vector([lox, loy, loz])
        fs.g_v[I] = _node_velocity_colliders(fs, I, fs.g_vw[I], dx, lo, cols)


def grid_update(fs, cols, dt, dx, lox, loy, loz, gx, gy, gz):
    """The split path's grid update (two kernels)."""
    grid_walls(fs, dt, gx, gy, gz)
    grid_colliders(fs, cols, dx, lox, loy, loz)


def grid_update_adjoint(fs, cols, dt, dx, lox, loy, loz, gx, gy, gz):
    """``g_v.grad -> g_mv.grad, g_m.grad`` (added to, e.g. a grid hook's part; cleared by
    :func:`clear_grid_grad`) and collider grads; needs the forward grid."""
    from diffsim.runtime import call_quietly_once
    call_quietly_once(("grid_colliders.grad", id(fs), cols), grid_colliders.grad, fs, cols, dx, lox, loy, loz)
    grid_walls_adjoint(fs, dt, gx, gy, gz)


@ti.kernel
def grid_walls_adjoint(fs: ti.template(), dt: float, gx: float, gy: float, gz: float):
    for I in ti.grouped(fs.g_m):
        mvb, mb = _node_velocity_walls_adjoint(fs, I, dt, ti.Vector([gx, gy, gz]), fs.g_vw.grad[I])
        fs.g_mv.grad[I] += mvb
        fs.g_m.grad[I] += mb


@ti.kernel
def g2p(fs: ti.template(), n: ti.i32, dt: float, dx: float, lox: float, loy: float, loz: float):
    for p in range(n):
        lo = ti.Vector([lox, loy, loz])
        xp = fs.x[p]
        nv, nC = _gather(fs, xp, dx, lo)
        fs.v1[p] = nv
        fs.C1[p] = nC
        fs.x1[p] = xp + dt * nv


# ----------------------------------------------------------------------------- adjoints
# Hand-written reverse passes of p2g and g2p (Taichi's autodiff of the unrolled 27-node
# stencil compiles for minutes and uses atomics on particle gradients).


@ti.kernel
def g2p_adjoint(fs: ti.template(), n: ti.i32, dt: float, dx: float, lox: float, loy: float, loz: float):
    """``(x1.grad, v1.grad, C1.grad) -> x.grad (=), g_v.grad (+=)``."""
    for p in range(n):
        lo = ti.Vector([lox, loy, loz])
        inv_dx = 1.0 / dx
        xp = fs.x[p]
        base, fx, W = _stencil(xp, lo, inv_dx, ti.static(fs.grid_shape))
        dW = _stencil_grad(fx)
        xb1 = fs.x1.grad[p]
        vb = fs.v1.grad[p] + dt * xb1
        Cb = fs.C1.grad[p]
        c = 4.0 * inv_dx * inv_dx
        xbar = xb1
        nv = ti.Vector.zero(float, 3)
        for i, j, k in ti.ndrange(3, 3, 3):
            off, dpos, wt, gw = _stencil_node(W, dW, fx, i, j, k, dx)
            gv = fs.g_v[base + off]
            Cd = Cb @ dpos
            fs.g_v.grad[base + off] += wt * (vb + c * Cd)
            xbar += gw * gv.dot(vb + c * Cd)
            nv += wt * gv
        # d(dpos)/dx = -I: sum_i c w_i C_bar^T g_v,i = c C_bar^T v_new
        fs.x.grad[p] = xbar - c * (Cb.transpose() @ nv)


@ti.func
def _p2g_particle_adjoint(fs: ti.template(), p, xp, vp, Cp, taup, dt, dx, lo):
    """Adjoint of one particle's scatter: ``(x_bar, v_bar, C_bar, tau_bar)`` from the grid
    adjoints ``g_mv.grad``, ``g_m.grad``."""
    inv_dx = 1.0 / dx
    base, fx, W = _stencil(xp, lo, inv_dx, ti.static(fs.grid_shape))
    dW = _stencil_grad(fx)
    m = fs.mass[p]
    kst = dt * fs.vol[p] * 4.0 * inv_dx * inv_dx
    affine = m * Cp - kst * taup
    mv = m * vp
    vbar = ti.Vector.zero(float, 3)
    Abar = ti.Matrix.zero(float, 3, 3)
    xbar = ti.Vector.zero(float, 3)
    for i, j, k in ti.ndrange(3, 3, 3):
        off, dpos, wt, gw = _stencil_node(W, dW, fx, i, j, k, dx)
        gmv = fs.g_mv.grad[base + off]
        wg = wt * gmv
        vbar += wg
        Abar += wg.outer_product(dpos)
        xbar += gw * (gmv.dot(mv + affine @ dpos) + fs.g_m.grad[base + off] * m)
    xbar -= affine.transpose() @ vbar  # d(dpos)/dx = -I
    return xbar, m * vbar, m * Abar, -kst * Abar


@ti.kernel
def p2g_adjoint(fs: ti.template(), n: ti.i32, dt: float, dx: float, lox: float, loy: float, loz: float):
    """``(g_mv.grad, g_m.grad) -> x.grad (+=), v.grad, C.grad, tau.grad (=)`` (stress from ``tau``)."""
    for p in range(n):
        lo = ti.Vector([lox, loy, loz])
        xb, vb, Cb, tb = _p2g_particle_adjoint(fs, p, fs.x[p], fs.v[p], fs.C[p], fs.tau[p], dt, dx, lo)
        fs.v.grad[p] = vb
        fs.C.grad[p] = Cb
        fs.tau.grad[p] = tb
        fs.x.grad[p] += xb


@ti.kernel
def substep_adjoint_particles(fs: ti.template(), mats: ti.template(), n: ti.i32, dt: float, dx: float,
                              lox: float, loy: float, loz: float, first: ti.i32):
    """Particle half of a fused substep's reverse pass: P2G and material adjoints, then the
    input adjoints become the previous substep's output adjoints (``x1.grad``, ``v1.grad``,
    ``C1.grad``, ``adj_F1``); parameter adjoints are summed into ``acc_prm``.

    Needs ``x.grad`` from :func:`g2p_adjoint` and the grid adjoints."""
    for p in range(n):
        lo = ti.Vector([lox, loy, loz])
        Dp = fs.F_minus_I[p]
        Cp = fs.C[p]
        prm = fs.prm[p]
        K = constitutive.trial_deformation(Dp, Cp, dt)
        _, taup = constitutive.material_response(fs.mtype[p], K, Cp, prm, mats)
        xb, vb, Cb, tb = _p2g_particle_adjoint(fs, p, fs.x[p], fs.v[p], Cp, taup, dt, dx, lo)
        Fb, Cb2, pb = constitutive.material_vjp(fs.mtype[p], Dp, Cp, prm, dt, fs.adj_F1[p], tb, mats)
        fs.x1.grad[p] = fs.x.grad[p] + xb
        fs.v1.grad[p] = vb
        fs.C1.grad[p] = Cb + Cb2
        fs.adj_F1[p] = Fb
        if first:
            fs.acc_prm[p] = pb
        else:
            fs.acc_prm[p] += pb


# ----------------------------------------------------------------------------- segment tape


@ti.data_oriented
class MPMTape:
    """Particle states at the start of each substep of a segment: ``x[k, p]`` etc."""

    def __init__(self, capacity, length, grid_shape, dtype):
        self.capacity = int(capacity)
        self.length = int(length)
        shape = (self.length + 1, self.capacity)
        self.x = ti.Vector.field(3, dtype, shape)
        self.v = ti.Vector.field(3, dtype, shape)
        self.C = ti.Matrix.field(3, 3, dtype, shape)
        self.F_minus_I = ti.Matrix.field(3, 3, dtype, shape)
        # grid momentum and mass of every substep (saves recomputing P2G); empty if None
        self.with_grid = grid_shape is not None
        gshape = (self.length,) + tuple(grid_shape) if self.with_grid else (1, 1, 1, 1)
        self.g_mv = ti.Vector.field(3, dtype, gshape)
        self.g_m = ti.field(dtype, gshape)


@ti.kernel
def tape_store(fs: ti.template(), tape: ti.template(), k: ti.i32, n: ti.i32):
    for p in range(n):
        tape.x[k, p] = fs.x[p]
        tape.v[k, p] = fs.v[p]
        tape.C[k, p] = fs.C[p]
        tape.F_minus_I[k, p] = fs.F_minus_I[p]


@ti.kernel
def tape_store_grid(fs: ti.template(), tape: ti.template(), k: ti.i32):
    for I in ti.grouped(fs.g_m):
        tape.g_mv[k, I[0], I[1], I[2]] = fs.g_mv[I]
        tape.g_m[k, I[0], I[1], I[2]] = fs.g_m[I]


@ti.kernel
def tape_load_grid(fs: ti.template(), tape: ti.template(), k: ti.i32):
    for I in ti.grouped(fs.g_m):
        fs.g_mv[I] = tape.g_mv[k, I[0], I[1], I[2]]
        fs.g_m[I] = tape.g_m[k, I[0], I[1], I[2]]


@ti.kernel
def tape_load(fs: ti.template(), tape: ti.template(), k: ti.i32, n: ti.i32):
    for p in range(n):
        fs.x[p] = tape.x[k, p]
        fs.v[p] = tape.v[k, p]
        fs.C[p] = tape.C[k, p]
        fs.F_minus_I[p] = tape.F_minus_I[k, p]


# ----------------------------------------------------------------------------- diagnostics


@ti.func
def not_finite(s):
    """NaN/inf test on the bit pattern (``s != s`` is folded away under fast math)."""
    bad = False
    if ti.static(ti.lang.impl.get_runtime().default_fp == ti.f64):
        bad = (ti.bit_cast(s, ti.i64) & ti.i64(0x7FF0000000000000)) == ti.i64(0x7FF0000000000000)
    else:
        bad = (ti.bit_cast(s, ti.i32) & 0x7F800000) == 0x7F800000
    return bad


@ti.kernel
def diagnostics(fs: ti.template(), mats: ti.template(), n: ti.i32, dx: float, gx: float, gy: float,
                gz: float, lox: float, loy: float, loz: float, hix: float, hiy: float, hiz: float):
    """Per-body energies/momentum into ``stats``; first non-finite particle into
    ``bad_particle`` (``n`` if none); particles that left the domain into ``escaped``.

    The kinetic energy is APIC's: the particle's translation plus its affine velocity
    field, ``m/2 (|v|^2 + dx^2/4 |C|_F^2)`` (what the grid sees after P2G)."""
    gravity = ti.Vector([gx, gy, gz])
    lo = ti.Vector([lox, loy, loz])
    hi = ti.Vector([hix, hiy, hiz])
    for b in range(fs.max_bodies):
        fs.stats[b] = ti.Vector.zero(float, 8)
    fs.bad_particle[None] = n
    fs.escaped[None] = 0
    for p in range(n):
        b = fs.body[p]
        m = fs.mass[p]
        xp = fs.x[p]
        vp = fs.v[p]
        s = xp.sum() + vp.sum() + fs.F_minus_I[p].sum() + fs.C[p].sum()
        if not_finite(s) or ti.abs(s) > 1e30:
            ti.atomic_min(fs.bad_particle[None], p)
        else:
            psi = constitutive.energy_density(fs.mtype[p], ti.Matrix.identity(float, 3) + fs.F_minus_I[p],
                                             fs.prm[p], mats)
            fs.stats[b][0] += 0.5 * m * (vp.dot(vp) + 0.25 * dx * dx * fs.C[p].norm_sqr())
            fs.stats[b][1] += -m * gravity.dot(xp)
            fs.stats[b][2] += psi * fs.vol[p]
            fs.stats[b][3] += m * vp[0]
            fs.stats[b][4] += m * vp[1]
            fs.stats[b][5] += m * vp[2]
            fs.stats[b][6] += m
            ti.atomic_max(fs.stats[b][7], vp.norm())
            if (xp < lo).any() or (xp > hi).any():
                fs.escaped[None] += 1


# ----------------------------------------------------------------------------- data movement
# Copy the first ``n`` rows between fields and torch/numpy arrays (``ndarray`` arguments
# avoid padding arrays to the field capacity).


def _is_matrix(f):
    return isinstance(f, ti.MatrixField) and f.m > 1


def _is_vector(f):
    return isinstance(f, ti.MatrixField) and f.m == 1


@ti.kernel
def copy_in(dst: ti.template(), src: ti.types.ndarray(), n: ti.i32):
    for p in range(n):
        if ti.static(_is_matrix(dst)):
            for i, j in ti.static(ti.ndrange(dst.n, dst.m)):
                dst[p][i, j] = src[p, i, j]
        elif ti.static(_is_vector(dst)):
            for i in ti.static(range(dst.n)):
                dst[p][i] = src[p, i]
        else:
            dst[p] = src[p]


@ti.kernel
def copy_out(src: ti.template(), dst: ti.types.ndarray(), n: ti.i32):
    for p in range(n):
        if ti.static(_is_matrix(src)):
            for i, j in ti.static(ti.ndrange(src.n, src.m)):
                dst[p, i, j] = src[p][i, j]
        elif ti.static(_is_vector(src)):
            for i in ti.static(range(src.n)):
                dst[p, i] = src[p][i]
        else:
            dst[p] = src[p]


@ti.kernel
def zero_rows(dst: ti.template(), n: ti.i32):
    for p in range(n):
        dst[p] = ti.zero(dst[p])


@ti.kernel
def copy_field(src: ti.template(), dst: ti.template(), n: ti.i32):
    for p in range(n):
        dst[p] = src[p]


def _width(f):
    return f.n * f.m if isinstance(f, ti.MatrixField) else 1


def _offsets(fields):
    out, o = [], 0
    for f in fields:
        out.append(o)
        o += _width(f)
    return tuple(out)


@ti.kernel
def copy_in_packed(dsts: ti.template(), src: ti.types.ndarray(), n: ti.i32):
    """Unpack the columns of ``src`` (n, sum of widths) into several per-particle fields."""
    offs = ti.static(_offsets(dsts))
    for p in range(n):
        for q in ti.static(range(len(dsts))):
            f = ti.static(dsts[q])
            off = ti.static(offs[q])
            if ti.static(_is_matrix(f)):
                for i, j in ti.static(ti.ndrange(f.n, f.m)):
                    f[p][i, j] = src[p, off + i * f.m + j]
            elif ti.static(_is_vector(f)):
                for i in ti.static(range(f.n)):
                    f[p][i] = src[p, off + i]
            else:
                f[p] = src[p, off]


@ti.kernel
def copy_out_packed(srcs: ti.template(), dst: ti.types.ndarray(), n: ti.i32):
    """Pack several per-particle fields into the columns of ``dst`` (n, sum of widths)."""
    offs = ti.static(_offsets(srcs))
    for p in range(n):
        for q in ti.static(range(len(srcs))):
            f = ti.static(srcs[q])
            off = ti.static(offs[q])
            if ti.static(_is_matrix(f)):
                for i, j in ti.static(ti.ndrange(f.n, f.m)):
                    dst[p, off + i * f.m + j] = f[p][i, j]
            elif ti.static(_is_vector(f)):
                for i in ti.static(range(f.n)):
                    dst[p, off + i] = f[p][i]
            else:
                dst[p, off] = f[p]
