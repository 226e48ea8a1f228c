"""FEM kernels: linear tetrahedra, explicit symplectic Euler, penalty contact with rigid
SDF colliders (``@ti.kernel``).

Tape layout. A chunk of ``K`` substeps keeps every state: ``x[t, i]``, ``v[t, i]`` for
``t = 0..K`` and the internal forces ``f[t, i]``. Substep ``t`` reads row ``t`` and writes row
``t + 1``, so no field element is ever overwritten inside a chunk and Taichi's reverse mode
differentiates :func:`substep` as it is (``substep.grad`` walks the same rows backwards).
Kinematic drivers and colliders are given as poses per row (``drv_t``/``drv_R``,
``col_p``/``col_R``): their gradients are the gradients of those poses.

One substep (one kernel, two parallel loops):

1. per tet: ``F = Ds Dm^-1``, first Piola stress ``P(F)`` of the body's model plus the
   stiffness-proportional (Rayleigh) damping stress ``beta (mu (Fd + Fd^T) + lam tr(Fd) I)``
   with ``Fd = Vs Dm^-1``; nodal forces ``-V0 P Dm^-T`` scattered with atomic adds;
2. per node: driven nodes follow their driver's pose; free nodes get
   ``v* = (v + dt ((f + f_ext)/m + g)) / (1 + alpha dt)`` (mass-proportional damping, implicit), then
   for every collider a penalty force on the node's surface area ``A``, linearly implicit
   in the node's own motion so that any stiffness is stable:
   ``f_n = k max(d + dt v_n*, 0) / (1 + dt^2 k / m)`` with ``k = k_n A (1 + c max(v_n*, 0))``
   (``d`` the penetration depth, ``v_n*`` the approach speed, ``c`` the Hunt-Crossley
   damping); at rest this is ``k_n A d`` (penetration = pressure / ``k_n``), and as
   ``k_n`` grows it tends to the non-penetration projection. Then a Coulomb friction
   impulse removes at most ``dt mu f_n / m`` of the tangential relative speed (exact stick,
   no regularisation speed; written as the fraction ``min(1, dt mu f_n / (m |v_t|))`` so
   that a sticking node's adjoint has no ``1/|v_t|``); ``x += dt v``.

Between bodies (a finger and an object, both FEM), each surface node is paired with the
closest facing surface triangle of the other bodies at the start of a chunk (a KD-tree
over triangle centroids: no all-pairs search); the pair keeps its triangle for the chunk,
the penetration is the node's distance to the triangle's current plane, the contact point
its projection there,
and the same implicit penalty and Coulomb law act with the pair's effective mass
(equal and opposite forces, the triangle's share split by the barycentric weights).

The contact laws are branch-free (``max``/``min``), which keeps Taichi's adjoint exact.
"""
import taichi as ti

from . import sdf

# per-body material parameters prm[b, :]
P_E, P_NU, P_ALPHA, P_BETA = 0, 1, 2, 3
N_PRM = 4
# per-body contact parameters cprm[b, :]
C_KN, C_DAMP, C_MU = 0, 1, 2
N_CPRM = 3
# per-node copy: mass damping and contact parameters node_prm[i]
N_ALPHA, N_KN, N_DAMP, N_MU = 0, 1, 2, 3
# constitutive models
NEO_HOOKEAN = 0
COROTATED = 1


@ti.data_oriented
class FEMFields:
    """Every field of one FEM scene (allocated once, reused through the pool)."""

    def __init__(self, n_nodes, n_tets, n_bodies, n_drivers, n_slots, sdf_size, rows, records, n_pairs, dtype):
        N, T, B, D, S, K = n_nodes, n_tets, n_bodies, max(n_drivers, 1), max(n_slots, 1), rows
        self.capacity = (N, T, B, D, S, K, records)
        self.n_records = records
        # tape (differentiable)
        self.x = ti.Vector.field(3, dtype, shape=(K + 1, N), needs_grad=True)
        self.v = ti.Vector.field(3, dtype, shape=(K + 1, N), needs_grad=True)
        self.f = ti.Vector.field(3, dtype, shape=(K, N), needs_grad=True)
        self.fp = ti.Vector.field(3, dtype, shape=(K, N), needs_grad=True)   # body-body contact forces (N)
        self.fc = ti.Vector.field(3, dtype, shape=(records, N), needs_grad=True)  # mean contact force per record (N)
        self.prm = ti.field(dtype, shape=(B, N_PRM))                # per body (the source)
        self.cprm = ti.field(dtype, shape=(B, N_CPRM))
        # per-tet and per-node copies read by the substep: their gradients accumulate
        # without contention (summed per body afterwards)
        self.tet_prm = ti.Vector.field(N_PRM, dtype, shape=T, needs_grad=True)
        self.node_prm = ti.Vector.field(4, dtype, shape=N, needs_grad=True)
        self.drv_t = ti.Vector.field(3, dtype, shape=(K + 1, D), needs_grad=True)
        self.drv_R = ti.Matrix.field(3, 3, dtype, shape=(K + 1, D), needs_grad=True)
        self.col_p = ti.Vector.field(3, dtype, shape=(K + 1, S), needs_grad=True)
        self.col_R = ti.Matrix.field(3, 3, dtype, shape=(K + 1, S), needs_grad=True)
        # constants of the scene
        self.X = ti.Vector.field(3, dtype, shape=N)          # rest positions (m)
        self.mass = ti.field(dtype, shape=N)                 # lumped node mass (kg)
        self.f_ext = ti.Vector.field(3, dtype, shape=N)      # constant external load (N)
        self.area = ti.field(dtype, shape=N)                 # lumped surface area (m^2), 0 inside
        self.node_body = ti.field(ti.i32, shape=N)
        self.driver = ti.field(ti.i32, shape=N)              # driver index or -1
        self.drv_c = ti.Vector.field(3, dtype, shape=D)      # driver pivot at rest (m)
        self.inv_mass = ti.field(dtype, shape=N)             # 1/kg, 0 for driven nodes
        P = max(int(n_pairs), 1)
        self.pair_node = ti.field(ti.i32, shape=P)           # body-body contact: node ...
        self.pair_tri = ti.Vector.field(3, ti.i32, shape=P)  # ... against a triangle of another body (per chunk)
        self.pair_share = ti.field(dtype, shape=N)           # pairs each node takes part in (>= 1)
        self.tet = ti.Vector.field(4, ti.i32, shape=T)
        self.Dm_inv = ti.Matrix.field(3, 3, dtype, shape=T)
        self.vol = ti.field(dtype, shape=T)                  # rest volume (m^3)
        self.tet_body = ti.field(ti.i32, shape=T)
        self.model = ti.field(ti.i32, shape=B)
        self.c_shape = ti.Vector.field(4, dtype, shape=S)
        self.c_mesh = ti.Vector.field(4, ti.i32, shape=S)
        self.sdf = ti.field(dtype, shape=max(int(sdf_size), 1))
        # forward-only diagnostics
        self.pen = ti.field(dtype, shape=K)                  # deepest penetration per substep (m)

    def tape_fields(self):
        return (self.x, self.v, self.f, self.fp, self.fc, self.tet_prm, self.node_prm, self.drv_t, self.drv_R,
                self.col_p, self.col_R)


@ti.func
def _lame(E, nu):
    return E / (2.0 * (1.0 + nu)), E * nu / ((1.0 + nu) * (1.0 - 2.0 * nu))


@ti.func
def _inverse_transpose(M):
    return M.inverse().transpose()


@ti.func
def polar_rotation_newton(F):
    """Rotation of ``F = R S`` by 10 unrolled Newton steps ``R <- (R + R^-T) / 2`` (plain
    arithmetic, so Taichi differentiates it; converges to machine precision for stretches
    within ~[0.2, 5]; assumes ``det F > 0``)."""
    R = F
    for _ in ti.static(range(10)):
        R = 0.5 * (R + _inverse_transpose(R))
    return R


@ti.func
def first_piola(F, mu, lam, model, models: ti.template()):
    """First Piola-Kirchhoff stress (Pa).

    * NEO_HOOKEAN: stable Neo-Hookean (Smith et al. 2018, without the log term)
      ``Psi = mu/2 (I_C - 3) + lam_s/2 (J - a)^2``, ``lam_s = lam + mu``, ``a = 1 + mu/lam_s``;
      ``P = mu F + lam_s (J - a) cof(F)``: rest-stable, linearises to ``lam``, ``mu``, and
      defined for inverted elements.
    * COROTATED: fixed corotated ``P = 2 mu (F - R) + lam (J - 1) cof(F)``.
    """
    J = F.determinant()
    c0 = ti.Vector([F[0, 1], F[1, 1], F[2, 1]]).cross(ti.Vector([F[0, 2], F[1, 2], F[2, 2]]))
    c1 = ti.Vector([F[0, 2], F[1, 2], F[2, 2]]).cross(ti.Vector([F[0, 0], F[1, 0], F[2, 0]]))
    c2 = ti.Vector([F[0, 0], F[1, 0], F[2, 0]]).cross(ti.Vector([F[0, 1], F[1, 1], F[2, 1]]))
    cof = ti.Matrix.cols([c0, c1, c2])
    # one model: a single expression (no mutable local, which keeps the adjoint cheap)
    if ti.static(models == 1 << NEO_HOOKEAN):
        return _neo_hookean(F, J, cof, mu, lam)
    elif ti.static(models == 1 << COROTATED):
        return _corotated(F, J, cof, mu, lam)
    else:
        P = _neo_hookean(F, J, cof, mu, lam)
        if model == COROTATED:
            P = _corotated(F, J, cof, mu, lam)
        return P


@ti.func
def _neo_hookean(F, J, cof, mu, lam):
    lam_s = lam + mu
    return mu * F + lam_s * (J - 1.0 - mu / lam_s) * cof


@ti.func
def _corotated(F, J, cof, mu, lam):
    return 2.0 * mu * (F - polar_rotation_newton(F)) + lam * (J - 1.0) * cof


@ti.func
def _columns(a, b, c, d):
    return ti.Matrix.cols([b - a, c - a, d - a])


@ti.func
def _predicted_velocity(fs: ti.template(), t, i, dt, gravity):
    """Velocity of node ``i`` after this substep's internal and external forces (driven
    nodes have inv_mass 0 and keep their velocity)."""
    free = ti.select(fs.inv_mass[i] > 0.0, 1.0, 0.0)
    return fs.v[t, i] + dt * fs.inv_mass[i] * (fs.f[t, i] + fs.f_ext[i]) + (free * dt) * gravity


@ti.func
def _pair_contact(fs: ti.template(), p, t, dt, gravity):
    """Node ``i`` of one body against a surface triangle of another (outward normal ``n``):
    the same implicit penalty and Coulomb law as for colliders, with the pair's effective
    mass ``1 / (c_i/m_i + sum_k b_k^2 c_k/m_k)``, where ``c`` counts the pairs a node
    takes part in (its mass is split between them, so that pairs acting on one node
    together stay stable); equal and opposite forces go to ``fp`` (the triangle's share
    by the barycentric weights ``b``)."""
    i = fs.pair_node[p]
    tri = fs.pair_tri[p]
    xa, xb, xc = fs.x[t, tri[0]], fs.x[t, tri[1]], fs.x[t, tri[2]]
    e1, e2, q = xb - xa, xc - xa, fs.x[t, i] - xa
    cr = e1.cross(e2)
    n = cr / ti.sqrt(cr.dot(cr) + 1e-60)
    gap = q.dot(n)
    ti.atomic_max(fs.pen[t], -gap)
    # barycentric coordinates of the node's projection on the triangle's plane (smooth,
    # not clamped: a node sliding off its triangle within a chunk extrapolates the plane)
    a11, a12, a22 = e1.dot(e1), e1.dot(e2), e2.dot(e2)
    r1, r2 = q.dot(e1), q.dot(e2)
    det = a11 * a22 - a12 * a12
    u = (a22 * r1 - a12 * r2) / det
    v = (a11 * r2 - a12 * r1) / det
    w = ti.Vector([1.0 - u - v, u, v])
    v_tri = ti.Vector([0.0, 0.0, 0.0])
    inv_m = fs.inv_mass[i] * fs.pair_share[i]
    for k in ti.static(range(3)):
        v_tri += w[k] * _predicted_velocity(fs, t, tri[k], dt, gravity)
        inv_m += w[k] * w[k] * fs.inv_mass[tri[k]] * fs.pair_share[tri[k]]
    m_eff = 1.0 / ti.max(inv_m, 1e-30)
    rel = _predicted_velocity(fs, t, i, dt, gravity) - v_tri
    vrn = rel.dot(n)
    cp = fs.node_prm[i]
    k_eff = fs.area[i] * cp[N_KN] * (1.0 + cp[N_DAMP] * ti.max(-vrn, 0.0))
    fn = k_eff * ti.max(-gap - dt * vrn, 0.0) / (1.0 + dt * dt * k_eff / m_eff)
    rel += (dt * fn / m_eff) * n
    vt = rel - rel.dot(n) * n
    vt_len = ti.sqrt(vt.dot(vt) + 1e-30)
    # Coulomb: sticking removes vt; sliding applies mu fn along the unit tangent. (Not
    # min(1, dt mu fn / (m vt_len)): Taichi's adjoint of that quotient divides by
    # (m vt_len)^2, which underflows in f32 for a sticking node (0 * inf = NaN).)
    force = fn * n - (m_eff / dt) * vt
    if dt * cp[N_MU] * fn < m_eff * vt_len:
        force = fn * n - (cp[N_MU] * fn / vt_len) * vt
    fs.fp[t, i] += force
    for k in ti.static(range(3)):
        fs.fp[t, tri[k]] -= w[k] * force


@ti.func
def _tet_forces(fs: ti.template(), models: ti.template(), t, e):
    """Elastic and stiffness-damping nodal forces of tet ``e`` (atomic adds into ``f[t]``)."""
    ids = fs.tet[e]
    tp = fs.tet_prm[e]
    mu, lam = _lame(tp[P_E], tp[P_NU])
    Dinv = fs.Dm_inv[e]
    F = _columns(fs.x[t, ids[0]], fs.x[t, ids[1]], fs.x[t, ids[2]], fs.x[t, ids[3]]) @ Dinv
    Fd = _columns(fs.v[t, ids[0]], fs.v[t, ids[1]], fs.v[t, ids[2]], fs.v[t, ids[3]]) @ Dinv
    H = -fs.vol[e] * (first_piola(F, mu, lam, fs.model[fs.tet_body[e]], models) + tp[P_BETA] * (
        mu * (Fd + Fd.transpose()) + lam * Fd.trace() * ti.Matrix.identity(float, 3))) @ Dinv.transpose()
    for k in ti.static(range(3)):
        fs.f[t, ids[k + 1]] += ti.Vector([H[0, k], H[1, k], H[2, k]])
    fs.f[t, ids[0]] -= ti.Vector([H[0, 0] + H[0, 1] + H[0, 2], H[1, 0] + H[1, 1] + H[1, 2],
                                  H[2, 0] + H[2, 1] + H[2, 2]])


@ti.func
def _advance_node(fs: ti.template(), cols: ti.template(), t, i, rec, inv_rec, dt, gravity):
    """Node ``i``: driven, or integrated with its forces and collider contacts."""
    d = fs.driver[i]
    xi = fs.x[t, i]
    if d >= 0:
        c = fs.drv_c[d]
        target = fs.drv_R[t + 1, d] @ (fs.X[i] - c) + c + fs.drv_t[t + 1, d]
        fs.x[t + 1, i] = target
        fs.v[t + 1, i] = (target - xi) / dt
    else:
        m = fs.mass[i]
        vn = (fs.v[t, i] + dt * ((fs.f[t, i] + fs.fp[t, i] + fs.f_ext[i]) / m + gravity)) / \
            (1.0 + dt * fs.node_prm[i][N_ALPHA])
        area = fs.area[i]
        if area > 0.0:
            v_free = vn
            for s in ti.static(range(len(cols))):
                R0 = fs.col_R[t, s]
                q = R0.transpose() @ (xi - fs.col_p[t, s])
                phi, n_loc = sdf.collider_sdf(fs.sdf, cols[s], q, fs.c_shape[s], fs.c_mesh[s])
                n = R0 @ n_loc
                ti.atomic_max(fs.pen[t], ti.max(-phi, 0.0))
                # velocity of the collider's material point under the node over this substep
                v_wall = (fs.col_R[t + 1, s] @ q + fs.col_p[t + 1, s] - xi) / dt
                rel = vn - v_wall
                vrn = rel.dot(n)
                k_eff = area * fs.node_prm[i][N_KN] * (1.0 + fs.node_prm[i][N_DAMP] * ti.max(-vrn, 0.0))
                fn = k_eff * ti.max(-phi - dt * vrn, 0.0) / (1.0 + dt * dt * k_eff / m)
                rel += (dt * fn / m) * n
                vt = rel - rel.dot(n) * n
                vt_len = ti.sqrt(vt.dot(vt) + 1e-30)
                slide = dt * fs.node_prm[i][N_MU] * fn / m   # tangential speed friction removes
                if slide < vt_len:                           # sliding (see _pair_contact)
                    rel -= (slide / vt_len) * vt
                else:                                        # sticking
                    rel -= vt
                vn = rel + v_wall
            fs.fc[rec, i] += (m * inv_rec / dt) * (vn - v_free) + inv_rec * fs.fp[t, i]
        fs.x[t + 1, i] = xi + dt * vn
        fs.v[t + 1, i] = vn


@ti.kernel
def substep(fs: ti.template(), cols: ti.template(), models: ti.template(), t: ti.i32, rec: ti.i32, inv_rec: float,
            dt: float, n_nodes: ti.i32, n_tets: ti.i32, n_pairs: ti.i32, gx: float, gy: float, gz: float):
    """Rows ``t -> t + 1`` of the tape; contact forces accumulate into ``fc[rec]`` times
    ``inv_rec`` (1 / substeps per record). ``cols``: collider codes per slot; ``models``:
    bit mask of the constitutive models present (both compile-time)."""
    for e in range(n_tets):
        _tet_forces(fs, models, t, e)
    for p in range(n_pairs):
        _pair_contact(fs, p, t, dt, ti.Vector([gx, gy, gz]))
    for i in range(n_nodes):
        _advance_node(fs, cols, t, i, rec, inv_rec, dt, ti.Vector([gx, gy, gz]))


@ti.kernel
def advance(fs: ti.template(), cols: ti.template(), t: ti.i32, rec: ti.i32, inv_rec: float, dt: float,
            n_nodes: ti.i32, n_pairs: ti.i32, gx: float, gy: float, gz: float):
    """The part of :func:`substep` after the tet forces (its Taichi adjoint, followed by
    :func:`tet_forces_vjp`, is the adjoint of a Neo-Hookean substep)."""
    for p in range(n_pairs):
        _pair_contact(fs, p, t, dt, ti.Vector([gx, gy, gz]))
    for i in range(n_nodes):
        _advance_node(fs, cols, t, i, rec, inv_rec, dt, ti.Vector([gx, gy, gz]))


@ti.func
def _cross_vjp(a, b, g):
    """For c = a x b and the adjoint g of c: the adjoints of a and b."""
    return b.cross(g), g.cross(a)


@ti.kernel
def tet_forces_vjp(fs: ti.template(), t: ti.i32, n_tets: ti.i32):
    """Hand-written adjoint of the stable Neo-Hookean tet forces of row ``t``: from
    ``f.grad[t]`` to ``x.grad[t]``, ``v.grad[t]`` and ``tet_prm.grad`` (E, nu, beta).
    (Taichi's generated adjoint of the same loop is ~5x slower than the forward.)"""
    for e in range(n_tets):
        ids = fs.tet[e]
        tp = fs.tet_prm[e]
        E, nu, beta = tp[P_E], tp[P_NU], tp[P_BETA]
        mu, lam = _lame(E, nu)
        Dinv = fs.Dm_inv[e]
        F = _columns(fs.x[t, ids[0]], fs.x[t, ids[1]], fs.x[t, ids[2]], fs.x[t, ids[3]]) @ Dinv
        Fd = _columns(fs.v[t, ids[0]], fs.v[t, ids[1]], fs.v[t, ids[2]], fs.v[t, ids[3]]) @ Dinv
        g0 = fs.f.grad[t, ids[0]]
        Hb = ti.Matrix.cols([fs.f.grad[t, ids[1]] - g0, fs.f.grad[t, ids[2]] - g0, fs.f.grad[t, ids[3]] - g0])
        Sb = -fs.vol[e] * Hb @ Dinv                                    # adjoint of the total stress
        f0 = ti.Vector([F[0, 0], F[1, 0], F[2, 0]])
        f1 = ti.Vector([F[0, 1], F[1, 1], F[2, 1]])
        f2 = ti.Vector([F[0, 2], F[1, 2], F[2, 2]])
        cof = ti.Matrix.cols([f1.cross(f2), f2.cross(f0), f0.cross(f1)])
        J = F.determinant()
        s = (lam + mu) * (J - 1.0) - mu                                # P = mu F + s cof(F)
        Sbc = Sb * s
        p0 = ti.Vector([Sbc[0, 0], Sbc[1, 0], Sbc[2, 0]])
        p1 = ti.Vector([Sbc[0, 1], Sbc[1, 1], Sbc[2, 1]])
        p2 = ti.Vector([Sbc[0, 2], Sbc[1, 2], Sbc[2, 2]])
        a1, a2 = _cross_vjp(f1, f2, p0)
        b2, b0 = _cross_vjp(f2, f0, p1)
        c0, c1 = _cross_vjp(f0, f1, p2)
        Fb = mu * Sb + (lam + mu) * (Sb * cof).sum() * cof + ti.Matrix.cols([b0 + c0, a1 + c1, a2 + b2])
        sym = Fd + Fd.transpose()
        trd = Fd.trace()
        Fdb = beta * (mu * (Sb + Sb.transpose()) + lam * Sb.trace() * ti.Matrix.identity(float, 3))
        mu_b = (Sb * (F + (J - 2.0) * cof)).sum() + beta * (Sb * sym).sum()
        lam_b = (J - 1.0) * (Sb * cof).sum() + beta * trd * Sb.trace()
        beta_b = (Sb * (mu * sym + lam * trd * ti.Matrix.identity(float, 3))).sum()
        d = (1.0 + nu) * (1.0 - 2.0 * nu)
        E_b = mu_b / (2.0 * (1.0 + nu)) + lam_b * nu / d
        nu_b = -mu_b * E / (2.0 * (1.0 + nu) ** 2) + lam_b * E * (1.0 + 2.0 * nu * nu) / (d * d)
        fs.tet_prm.grad[e] += ti.Vector([E_b, nu_b, 0.0, beta_b])
        Db = Fb @ Dinv.transpose()
        Vb = Fdb @ Dinv.transpose()
        for k in ti.static(range(3)):
            fs.x.grad[t, ids[k + 1]] += ti.Vector([Db[0, k], Db[1, k], Db[2, k]])
            fs.v.grad[t, ids[k + 1]] += ti.Vector([Vb[0, k], Vb[1, k], Vb[2, k]])
        fs.x.grad[t, ids[0]] -= ti.Vector([Db[0, 0] + Db[0, 1] + Db[0, 2], Db[1, 0] + Db[1, 1] + Db[1, 2],
                                           Db[2, 0] + Db[2, 1] + Db[2, 2]])
        fs.v.grad[t, ids[0]] -= ti.Vector([Vb[0, 0] + Vb[0, 1] + Vb[0, 2], Vb[1, 0] + Vb[1, 1] + Vb[1, 2],
                                           Vb[2, 0] + Vb[2, 1] + Vb[2, 2]])


@ti.kernel
def spread_params(fs: ti.template(), n_nodes: ti.i32, n_tets: ti.i32):
    """Per-body parameters -> the per-tet and per-node copies the substep reads."""
    for e in range(n_tets):
        b = fs.tet_body[e]
        for k in ti.static(range(N_PRM)):
            fs.tet_prm[e][k] = fs.prm[b, k]
    for i in range(n_nodes):
        b = fs.node_body[i]
        fs.node_prm[i] = ti.Vector([fs.prm[b, P_ALPHA], fs.cprm[b, C_KN], fs.cprm[b, C_DAMP], fs.cprm[b, C_MU]])


@ti.kernel
def copy_row(fs: ti.template(), src: ti.i32, dst: ti.i32, n_nodes: ti.i32):
    """State row ``src`` -> row ``dst`` (start the next chunk from the last state)."""
    for i in range(n_nodes):
        fs.x[dst, i] = fs.x[src, i]
        fs.v[dst, i] = fs.v[src, i]


@ti.kernel
def load_state(fs: ti.template(), x: ti.types.ndarray(), v: ti.types.ndarray(), row: ti.i32, n_nodes: ti.i32):
    for i in range(n_nodes):
        for k in ti.static(range(3)):
            fs.x[row, i][k] = x[i, k]
            fs.v[row, i][k] = v[i, k]


@ti.kernel
def read_rows(field: ti.template(), rows: ti.types.ndarray(), out: ti.types.ndarray(), n: ti.i32):
    """``out[r] = field[rows[r], :n]`` for (rows x n x 3) vector fields."""
    for r, i in ti.ndrange(rows.shape[0], n):
        for k in ti.static(range(3)):
            out[r, i, k] = field[rows[r], i][k]


@ti.kernel
def write_rows(field: ti.template(), rows: ti.types.ndarray(), src: ti.types.ndarray(), n: ti.i32):
    for r, i in ti.ndrange(rows.shape[0], n):
        for k in ti.static(range(3)):
            field[rows[r], i][k] = src[r, i, k]


@ti.kernel
def elastic_energy(fs: ti.template(), row: ti.i32, n_tets: ti.i32) -> float:
    """Total strain energy (J) of the state in ``row``."""
    total = 0.0
    for e in range(n_tets):
        ids = fs.tet[e]
        b = fs.tet_body[e]
        mu, lam = _lame(fs.prm[b, P_E], fs.prm[b, P_NU])
        F = _columns(fs.x[row, ids[0]], fs.x[row, ids[1]], fs.x[row, ids[2]], fs.x[row, ids[3]]) @ fs.Dm_inv[e]
        J = F.determinant()
        psi = 0.0
        if fs.model[b] == COROTATED:
            R = polar_rotation_newton(F)
            psi = mu * (F - R).norm_sqr() + 0.5 * lam * (J - 1.0) ** 2
        else:
            lam_s = lam + mu
            a = 1.0 + mu / lam_s
            psi = 0.5 * mu * ((F.transpose() @ F).trace() - 3.0) + 0.5 * lam_s * ((J - a) ** 2 - (1.0 - a) ** 2)
        total += fs.vol[e] * psi
    return total
