"""Discrete element method (spheres) Taichi fields and kernels.

Contact law, Hertz-Mindlin as LIGGGHTS computes it, for an overlap
``d = r_i + r_j - |x_i - x_j| > 0`` with unit normal ``n`` (from j to i):

* ``Y* = E / (2 (1 - nu^2))``, ``G* = E / (4 (2 - nu)(1 + nu))`` (one material),
  ``R* = r_i r_j / (r_i + r_j)``, ``m* = m_i m_j / (m_i + m_j)`` (walls: ``R* = r_i``,
  ``m* = m_i``); ``S_n = 2 Y* sqrt(R* d)``, ``S_t = 8 G* sqrt(R* d)``;
* normal: ``F_n = 4/3 Y* sqrt(R*) d^1.5 - gamma_n v_n``,
  ``gamma_n = -2 sqrt(5/6) beta sqrt(S_n m*)``, ``beta = ln e / sqrt(ln^2 e + pi^2)``;
  not clipped at zero (briefly attractive at the end of a damped contact, as LIGGGHTS);
* tangential: the contact's tangential displacement ``s`` (history, rotated into the
  current tangent plane) grows by ``v_t dt``; ``F_t = -S_t s - gamma_t v_t`` while
  sticking; when ``|F_t| > mu |F_n|`` the contact slides: ``F_t = -mu |F_n| s / |s|``
  (no damping) and ``s`` is rescaled to ``mu |F_n| / S_t``;
* rolling resistance (constant directional torque): ``-mu_r F_n,el R* w_rel / |w_rel|``
  (``/ max(|w_rel|, w_c)`` with a smoothing rate ``w_c`` > 0: viscous below ``w_c``);
* optional cohesion (simplified JKR): an attractive ``k_c A``, contact area
  ``A = pi R* d``, ``k_c`` in J/m^3.

The linear spring-dashpot model (``LINEAR``) replaces the stiffnesses by constants
``k_n`` (N/m) and ``k_t = 2/7 k_n`` with ``gamma = 2 zeta sqrt(k m*)``,
``zeta = -ln e / sqrt(pi^2 + ln^2 e)``.

Integration: leapfrog (velocity Verlet with half-step velocities): forces at ``x_n`` with
``v_{n-1/2}``, ``v_{n+1/2} = v_{n-1/2} + a dt``, ``x_{n+1} = x_n + v_{n+1/2} dt``; rotations
likewise with ``I = 2/5 m r^2``.

The state lives in two :class:`DEMState` buffers; one step reads one and writes the other
(one kernel launch per step, and the kernel obeys Taichi's autodiff rules, so the same
kernel is differentiated for gradients). Walls are rigid: their geometry is stored in the
frame of their initial pose; the pose is a rotation ``R`` about the centre ``c`` (set per
step, not differentiated) and a translation ``o`` (part of the state: ``o += v_wall dt``).

Parameter field ``prm``: (E Pa, nu, e, mu, mu_r, cohesion J/m^3, k_n N/m, dt s, rolling
smoothing rate rad/s).
"""
import math

import taichi as ti

HERTZ = 0
LINEAR = 1

# wall codes
W_NONE = 0
W_PLANE = 1      # point p, normal n (into the particles)
W_CYLINDER = 2   # axis through p along n (unit), radius a: particles inside
W_MESH = 3       # triangles via the wall's triangle cell grid
W_BOX = 4        # particles inside the axis-aligned box [p, p + n] (its six faces)

N_PRM = 9


@ti.data_oriented
class DEMState:
    """What a step reads and writes: sphere kinematics, contact histories, wall offsets."""

    def __init__(self, N, K, W, dtype, needs_grad):
        kw = dict(needs_grad=needs_grad)
        self.x = ti.Vector.field(3, dtype, N, **kw)
        self.v = ti.Vector.field(3, dtype, N, **kw)
        self.w = ti.Vector.field(3, dtype, N, **kw)
        self.hist = ti.Vector.field(3, dtype, N * K, **kw)  # per pair p (see DEMFields)
        self.w_hist = ti.Vector.field(3, dtype, (N, W), **kw)
        self.w_off = ti.Vector.field(3, dtype, W, **kw)

    def fields(self):
        return {"x": self.x, "v": self.v, "w": self.w, "hist": self.hist, "w_hist": self.w_hist,
                "w_off": self.w_off}


@ti.data_oriented
class DEMFields:
    """All fields of one DEM system (pooled like the MPM fields). ``needs_grad`` allocates
    the adjoint fields (differentiable rollouts)."""

    def __init__(self, capacity, max_neighbors, n_walls, n_tris, n_tri_cells, n_tri_refs, cells, dtype,
                 needs_grad=False):
        self.capacity = int(capacity)
        self.K = int(max_neighbors)
        self.n_walls = int(n_walls)
        self.cells = tuple(int(c) for c in cells)
        self.needs_grad = bool(needs_grad)
        f, N, K, W = dtype, self.capacity, self.K, self.n_walls
        # Real fields first, integer fields last: Taichi lays fields out one after another
        # in the root buffer, and an f64 after an odd number of i32 is misaligned on CUDA.
        self.A = DEMState(N, K, W, f, needs_grad)
        self.B = DEMState(N, K, W, f, needs_grad)
        self.prm = ti.field(f, N_PRM, needs_grad=needs_grad)
        self.derived = ti.field(f, 4, needs_grad=needs_grad)  # beta, Y*, G*, sqrt(S_t / S_n)
        self.gravity = ti.Vector.field(3, f, ())
        self.radius = ti.field(f, N)
        self.mass = ti.field(f, N)
        self.x_ref = ti.Vector.field(3, f, N)
        self.pair_f = ti.Vector.field(3, f, N * K, needs_grad=needs_grad)   # per pair p: force on i
        self.pair_ti = ti.Vector.field(3, f, N * K, needs_grad=needs_grad)  # torque on i
        self.pair_tj = ti.Vector.field(3, f, N * K, needs_grad=needs_grad)  # torque on j
        # walls (geometry in the frame of the initial pose)
        self.w_p = ti.Vector.field(3, f, W)
        self.w_n = ti.Vector.field(3, f, W)
        self.w_a = ti.field(f, W)
        self.w_vel = ti.Vector.field(3, f, W, needs_grad=needs_grad)
        self.w_omega = ti.Vector.field(3, f, W)
        self.w_c = ti.Vector.field(3, f, W)
        self.w_R = ti.Matrix.field(3, 3, f, W)
        # mesh walls: triangles + a uniform cell grid of triangle references per wall
        self.tri_a = ti.Vector.field(3, f, max(n_tris, 1))
        self.tri_b = ti.Vector.field(3, f, max(n_tris, 1))
        self.tri_c = ti.Vector.field(3, f, max(n_tris, 1))
        self.mg_lo = ti.Vector.field(3, f, W)
        self.mg_inv_h = ti.field(f, W)
        # diagnostics
        self.max_disp = ti.field(f, ())
        self.removed_mass = ti.field(f, ())
        self.stats = ti.Vector.field(8, f, ())
        # --- integer fields
        self.active = ti.field(ti.i32, N)
        self.fixed = ti.field(ti.i32, N)  # glued spheres: contacts act on others, they do not move
        # half neighbour lists (j > i in the list of i), numbered pairs, reverse lists
        self.nbr_n = ti.field(ti.i32, N)
        self.nbr_new = ti.field(ti.i32, (N, K))
        self.nbr_new_n = ti.field(ti.i32, N)
        self.rev = ti.field(ti.i32, (N, K))    # reverse list: the pairs p where this sphere is j
        self.rev_n = ti.field(ti.i32, N)
        self.pair_start = ti.field(ti.i32, N + 1)
        self.pair_i = ti.field(ti.i32, N * K)
        self.pair_j = ti.field(ti.i32, N * K)
        self.perm = ti.field(ti.i32, (N, K))       # old pair index of each new pair (-1: new contact)
        self.pair_perm = ti.field(ti.i32, N * K)   # the same by new pair index
        self.overflow = ti.field(ti.i32, ())
        # cell grid (counting sort)
        C = self.cells[0] * self.cells[1] * self.cells[2]
        self.n_cells = C
        self.cell_count = ti.field(ti.i32, C)
        self.cell_start = ti.field(ti.i32, C + 1)
        self.cell_fill = ti.field(ti.i32, C)
        self.sorted = ti.field(ti.i32, N)
        self.w_type = ti.field(ti.i32, W)
        self.w_on = ti.field(ti.i32, W)
        self.w_moving = ti.field(ti.i32, W)       # translated or rotated: always checked
        self.wall_near = ti.field(ti.i32, N)      # bit k: sphere may touch wall k before the next rebuild
        self.mg_dims = ti.Vector.field(3, ti.i32, W)
        self.mg_cell0 = ti.field(ti.i32, W)
        self.tcell_start = ti.field(ti.i32, max(n_tri_cells, 1) + 1)
        self.tcell_tri = ti.field(ti.i32, max(n_tri_refs, 1))
        self.removed = ti.field(ti.i32, ())


# ----------------------------------------------------------------------------- contact law


@ti.func
def safe_norm(v):
    """|v|, with a zero (not NaN) derivative at v = 0 (Taichi's reverse mode would otherwise
    multiply a zero adjoint by 0/0)."""
    return ti.sqrt(ti.max(v.dot(v), 1e-36))


@ti.func
def contact_force(model: ti.template(), d, n, v_rel, w_rel, s_old, R, m, prm, beta, Ys, Gs, t_ratio):
    """Force on i, tangential force, rolling torque and new tangential history for an overlap
    ``d`` > 0 with normal ``n`` (j -> i), relative contact velocity ``v_rel``, relative
    angular velocity ``w_rel``, history ``s_old``, effective radius ``R`` and mass ``m``."""
    mu, mu_r, coh = prm[3], prm[4], prm[5]
    Sn = 0.0 * d
    St = 0.0 * d
    fn_el = 0.0 * d
    if ti.static(model == HERTZ):
        sq = ti.sqrt(R * d)
        Sn = 2.0 * Ys * sq
        St = 8.0 * Gs * sq
        fn_el = 4.0 / 3.0 * Ys * sq * d
    else:
        Sn = prm[6]
        St = 2.0 / 7.0 * prm[6]
        fn_el = Sn * d
    damp = 2.0 * ti.sqrt(5.0 / 6.0) if ti.static(model == HERTZ) else 2.0
    gn = -damp * beta * ti.sqrt(Sn * m)
    gt = gn * t_ratio
    vn = v_rel.dot(n)
    vt = v_rel - vn * n
    fn = fn_el - gn * vn - coh * math.pi * R * d
    # history: rotate into the tangent plane (keeping its length), then integrate.
    # Branch-free (selects, not ifs): Taichi's reverse mode mishandles locals that are
    # reassigned under a branch inside the neighbour loop.
    s = s_old - s_old.dot(n) * n
    s = s * ti.sqrt(ti.max(s_old.dot(s_old), 1e-36) / ti.max(s.dot(s), 1e-36))
    s += vt * prm[7]
    ft = -St * s - gt * vt
    cap = mu * ti.abs(fn)
    slide = ti.select(safe_norm(ft) > cap, 1.0, 0.0)
    s_norm = safe_norm(s)
    ft = ft + slide * (-cap * s / s_norm - ft)
    s = s + slide * ((cap / St) * s / s_norm - s)
    tr = -mu_r * fn_el * R * w_rel / ti.max(safe_norm(w_rel), prm[8])  # prm[8] > 0: viscous below that rate
    return fn * n + ft, ft, tr, s


@ti.func
def closest_on_triangle(p, a, b, c):
    """Closest point to ``p`` on triangle (a, b, c): face, edge or vertex (Voronoi regions)."""
    ab = b - a
    ac = c - a
    ap = p - a
    d1 = ab.dot(ap)
    d2 = ac.dot(ap)
    q = a
    done = False
    if d1 <= 0.0 and d2 <= 0.0:
        q, done = a, True
    bp = p - b
    d3 = ab.dot(bp)
    d4 = ac.dot(bp)
    if not done and d3 >= 0.0 and d4 <= d3:
        q, done = b, True
    vc = d1 * d4 - d3 * d2
    if not done and vc <= 0.0 and d1 >= 0.0 and d3 <= 0.0:
        q, done = a + d1 / (d1 - d3) * ab, True
    cp = p - c
    d5 = ab.dot(cp)
    d6 = ac.dot(cp)
    if not done and d6 >= 0.0 and d5 <= d6:
        q, done = c, True
    vb = d5 * d2 - d1 * d6
    if not done and vb <= 0.0 and d2 >= 0.0 and d6 <= 0.0:
        q, done = a + d2 / (d2 - d6) * ac, True
    va = d3 * d6 - d5 * d4
    if not done and va <= 0.0 and (d4 - d3) >= 0.0 and (d5 - d6) >= 0.0:
        q, done = b + (d4 - d3) / ((d4 - d3) + (d5 - d6)) * (c - b), True
    if not done:
        denom = 1.0 / (va + vb + vc)
        q = a + ab * (vb * denom) + ac * (vc * denom)
    return q


@ti.func
def mesh_candidates(fs: ti.template(), k, x):
    """Range [e0, e1) of triangle references in the cell of ``x`` (reference frame) when
    wall k is a mesh wall, else an empty range."""
    e0 = 0
    e1 = 0
    if fs.w_type[k] == W_MESH:
        c = ti.cast(ti.floor((x - fs.mg_lo[k]) * fs.mg_inv_h[k]), ti.i32)
        dims = fs.mg_dims[k]
        if (c >= 0).all() and (c < dims).all():
            cell = fs.mg_cell0[k] + (c[0] * dims[1] + c[1]) * dims[2] + c[2]
            e0 = fs.tcell_start[cell]
            e1 = fs.tcell_start[cell + 1]
    return e0, e1


@ti.func
def wall_contact_local(fs: ti.template(), k, x, r):
    """Overlap (<= 0: none), unit normal into the particle and contact point of a sphere
    (x, r) with wall k, all in the wall's reference frame. (Loops sit outside branches:
    Taichi's reverse mode needs that.)"""
    t = fs.w_type[k]
    p = fs.w_p[k]
    nn = fs.w_n[k]
    d = -1.0
    n = ti.Vector([0.0, 0.0, 1.0])
    cpt = x
    e0, e1 = mesh_candidates(fs, k, x)
    best = r
    for e in range(e0, e1):
        tr = fs.tcell_tri[e]
        q = closest_on_triangle(x, fs.tri_a[tr], fs.tri_b[tr], fs.tri_c[tr])
        dist = safe_norm(x - q)
        if dist < best:
            best = dist
            cpt = q
    if t == W_MESH:
        d = r - best
        if d > 0.0:
            n = (x - cpt) / best
    elif t == W_PLANE:
        h = (x - p).dot(nn)
        d = r - h
        n = nn
        cpt = x - h * nn
    elif t == W_CYLINDER:
        rel = x - p
        radial = rel - rel.dot(nn) * nn
        rl = safe_norm(radial)
        d = r - (fs.w_a[k] - rl)
        if rl > 0.0:
            n = -radial / rl
        cpt = x - n * (r - d)
    elif t == W_BOX:
        hi = p + nn
        bb = 1e30
        for a in ti.static(range(3)):
            g0 = x[a] - p[a]
            if g0 < bb:
                bb = g0
                n = ti.Vector.zero(float, 3)
                n[a] = 1.0
            g1 = hi[a] - x[a]
            if g1 < bb:
                bb = g1
                n = ti.Vector.zero(float, 3)
                n[a] = -1.0
        d = r - bb
        cpt = x - bb * n
    return d, n, cpt


# ----------------------------------------------------------------------------- neighbours


@ti.func
def cell_of(fs: ti.template(), x, lo, inv_h):
    c = ti.cast(ti.floor((x - lo) * inv_h), ti.i32)
    G = ti.static(fs.cells)
    for k in ti.static(range(3)):
        c[k] = ti.min(ti.max(c[k], 0), G[k] - 1)
    return c


@ti.func
def cell_index(fs: ti.template(), c):
    G = ti.static(fs.cells)
    return (c[0] * G[1] + c[1]) * G[2] + c[2]


@ti.kernel
def bin_particles(fs: ti.template(), S: ti.template(), n: ti.i32, lox: float, loy: float, loz: float,
                  inv_h: float, z_out: float):
    """Remove (and count) spheres below ``z_out``; counting sort of the rest into cells."""
    lo = ti.Vector([lox, loy, loz])
    for c in range(fs.n_cells):
        fs.cell_count[c] = 0
        fs.cell_fill[c] = 0
    for i in range(n):
        if fs.active[i]:
            if S.x[i][2] < z_out:
                fs.active[i] = 0
                ti.atomic_add(fs.removed[None], 1)
                ti.atomic_add(fs.removed_mass[None], fs.mass[i])
            else:
                ti.atomic_add(fs.cell_count[cell_index(fs, cell_of(fs, S.x[i], lo, inv_h))], 1)
    ti.loop_config(serialize=True)
    for c in range(fs.n_cells + 1):
        if c == 0:
            fs.cell_start[0] = 0
        else:
            fs.cell_start[c] = fs.cell_start[c - 1] + fs.cell_count[c - 1]
    for i in range(n):
        if fs.active[i]:
            c = cell_index(fs, cell_of(fs, S.x[i], lo, inv_h))
            slot = ti.atomic_add(fs.cell_fill[c], 1)
            fs.sorted[fs.cell_start[c] + slot] = i


@ti.kernel
def build_neighbours(fs: ti.template(), S: ti.template(), n: ti.i32, lox: float, loy: float, loz: float,
                     inv_h: float, skin: float):
    """New half neighbour lists (j > i, closer than r_i + r_j + skin) and, per new pair, the slot
    it had in the old list (``perm``, -1 for a new pair) so its history carries over.
    Reads the old lists (``pair_start``, ``pair_j``, ``nbr_n``): run before committing."""
    lo = ti.Vector([lox, loy, loz])
    G = ti.static(fs.cells)
    for i in range(n):
        cnt = 0
        if fs.active[i]:
            xi = S.x[i]
            ri = fs.radius[i]
            ci = cell_of(fs, xi, lo, inv_h)
            for a, b, c in ti.ndrange((-1, 2), (-1, 2), (-1, 2)):
                cc = ci + ti.Vector([a, b, c])
                if 0 <= cc[0] < G[0] and 0 <= cc[1] < G[1] and 0 <= cc[2] < G[2]:
                    k = cell_index(fs, cc)
                    for s in range(fs.cell_start[k], fs.cell_start[k + 1]):
                        j = fs.sorted[s]
                        if j > i and (S.x[j] - xi).norm() < ri + fs.radius[j] + skin:
                            if cnt < fs.K:
                                fs.nbr_new[i, cnt] = j
                                old = -1
                                p0 = fs.pair_start[i]
                                for q in range(fs.nbr_n[i]):
                                    if fs.pair_j[p0 + q] == j:
                                        old = p0 + q
                                fs.perm[i, cnt] = old
                            else:
                                fs.overflow[None] = 1
                            cnt += 1
        fs.nbr_new_n[i] = ti.min(cnt, fs.K)
        fs.x_ref[i] = S.x[i]


@ti.kernel
def commit_neighbours(fs: ti.template(), n: ti.i32):
    """Install the new lists as consecutive pairs p = pair_start[i] + q (``pair_i``,
    ``pair_j``, ``pair_perm``; n_pairs = pair_start[n]) and build the reverse lists (the
    pairs p in which a sphere is the j)."""
    for i in range(n):
        fs.nbr_n[i] = fs.nbr_new_n[i]
        fs.rev_n[i] = 0
    ti.loop_config(serialize=True)
    for i in range(n + 1):
        if i == 0:
            fs.pair_start[0] = 0
        else:
            fs.pair_start[i] = fs.pair_start[i - 1] + fs.nbr_n[i - 1]
    for i in range(n):
        for q in range(fs.nbr_n[i]):
            j = fs.nbr_new[i, q]
            p = fs.pair_start[i] + q
            fs.pair_i[p] = i
            fs.pair_j[p] = j
            fs.pair_perm[p] = fs.perm[i, q]
            slot = ti.atomic_add(fs.rev_n[j], 1)
            if slot < fs.K:
                fs.rev[j, slot] = p
            else:
                fs.overflow[None] = 1
    for i in range(n):
        fs.rev_n[i] = ti.min(fs.rev_n[i], fs.K)


@ti.kernel
def remap_state(fs: ti.template(), Si: ti.template(), So: ti.template(), n: ti.i32, n_pairs: ti.i32, W: ti.i32):
    """``So`` = ``Si`` with the pair histories moved to the new pair numbering (``pair_perm``)."""
    for i in range(n):
        So.x[i] = Si.x[i]
        So.v[i] = Si.v[i]
        So.w[i] = Si.w[i]
        for k in range(W):
            So.w_hist[i, k] = Si.w_hist[i, k]
    for p in range(n_pairs):
        h = ti.Vector.zero(float, 3)
        old = fs.pair_perm[p]
        if old >= 0:
            h = Si.hist[old]
        So.hist[p] = h
    for k in range(W):
        So.w_off[k] = Si.w_off[k]


# ----------------------------------------------------------------------------- the step


@ti.func
def pair_force(fs: ti.template(), Si: ti.template(), So: ti.template(), model: ti.template(), p, prm, c):
    """Contact of pair p = (i, j): force on i and the torques on i and j into ``pair_f``,
    ``pair_ti``, ``pair_tj``; the new history into ``So``."""
    i = fs.pair_i[p]
    j = fs.pair_j[p]
    xi = Si.x[i]
    ri = fs.radius[i]
    rj = fs.radius[j]
    dx = xi - Si.x[j]
    dist = dx.norm()
    d = ri + rj - dist
    s_new = ti.Vector.zero(float, 3)
    f = ti.Vector.zero(float, 3)
    ti_ = ti.Vector.zero(float, 3)
    tj = ti.Vector.zero(float, 3)
    if d > 0.0 and fs.active[j]:
        n = dx / dist
        mi = fs.mass[i]
        mj = fs.mass[j]
        wi = Si.w[i]
        v_rel = Si.v[i] - Si.v[j] - (ri * wi + rj * Si.w[j]).cross(n)
        fc, ft, tr, s = contact_force(model, d, n, v_rel, wi - Si.w[j], Si.hist[p], ri * rj / (ri + rj),
                                      mi * mj / (mi + mj), prm, c[0], c[1], c[2], c[3])
        s_new = s
        f = fc
        ti_ = (-ri * n).cross(ft) + tr
        tj = (-rj * n).cross(ft) - tr
    So.hist[p] = s_new
    fs.pair_f[p] = f
    fs.pair_ti[p] = ti_
    fs.pair_tj[p] = tj


MAX_FLAGGED_WALLS = 31   # walls tracked by the ``wall_near`` bit mask (with more, all are checked)


@ti.func
def wall_local_position(fs: ti.template(), S: ti.template(), k, x):
    """``x`` (world) in wall k's reference frame."""
    ctr = fs.w_c[k]
    return fs.w_R[k].transpose() @ (x - ctr - S.w_off[k]) + ctr


@ti.kernel
def flag_near_walls(fs: ti.template(), S: ti.template(), n_walls: ti.template(), n: ti.i32, margin: float):
    """``wall_near[i]`` bit k: sphere i lies within ``margin`` of static wall k, or wall k
    moves. Spheres move less than half the skin between rebuilds, so with margin >= that
    a sphere without the bit cannot touch the wall before the next rebuild (forward only:
    the differentiable step checks every wall)."""
    for i in range(n):
        mask = 0
        for k in ti.static(range(n_walls)):
            d, nl, cl = wall_contact_local(fs, k, wall_local_position(fs, S, k, S.x[i]), fs.radius[i] + margin)
            if d > 0.0 or fs.w_moving[k]:
                mask |= 1 << k
        fs.wall_near[i] = mask


@ti.func
def wall_force(fs: ti.template(), Si: ti.template(), model: ti.template(), k, i, prm, c):
    """Force, torque and new tangential history of wall k on sphere i."""
    xi = Si.x[i]
    wi = Si.w[i]
    ri = fs.radius[i]
    s_new = ti.Vector.zero(float, 3)
    f = ti.Vector.zero(float, 3)
    tq = ti.Vector.zero(float, 3)
    d, nl, cl = wall_contact_local(fs, k, wall_local_position(fs, Si, k, xi), ri)
    if fs.w_on[k] and d > 0.0:
        R = fs.w_R[k]
        ctr = fs.w_c[k]
        o = Si.w_off[k]
        n = R @ nl
        cpt = R @ (cl - ctr) + ctr + o
        v_wall = fs.w_vel[k] + fs.w_omega[k].cross(cpt - ctr - o)
        v_rel = Si.v[i] - v_wall - (ri * wi).cross(n)
        fc, ft, tr, s = contact_force(model, d, n, v_rel, wi - fs.w_omega[k], Si.w_hist[i, k], ri, fs.mass[i],
                                      prm, c[0], c[1], c[2], c[3])
        s_new = s
        f = fc
        tq = (-ri * n).cross(ft) + tr
    return f, tq, s_new


@ti.func
def wall_forces(fs: ti.template(), Si: ti.template(), So: ti.template(), model: ti.template(),
                n_walls: ti.template(), skip_far: ti.template(), i, prm, c):
    """Force and torque of the walls on sphere i; new wall histories into ``So``.
    ``skip_far`` (forward only): skip the walls not flagged in ``wall_near[i]``."""
    f = ti.Vector.zero(float, 3)
    tq = ti.Vector.zero(float, 3)
    for k in ti.static(range(n_walls)):
        if ti.static(skip_far):
            s_new = ti.Vector.zero(float, 3)
            if (fs.wall_near[i] >> k) & 1:
                fk, tk, s_new = wall_force(fs, Si, model, k, i, prm, c)
                f += fk
                tq += tk
            So.w_hist[i, k] = s_new
        else:
            fk, tk, s_new = wall_force(fs, Si, model, k, i, prm, c)
            f += fk
            tq += tk
            So.w_hist[i, k] = s_new
    return f, tq


@ti.kernel
def derive_constants(fs: ti.template(), model: ti.template()):
    """Material constants from ``prm`` (differentiable): beta, Y*, G*, sqrt(S_t / S_n)."""
    for _ in range(1):
        le = ti.log(fs.prm[2])
        E, nu = fs.prm[0], fs.prm[1]
        fs.derived[0] = le / ti.sqrt(le * le + math.pi * math.pi)
        Ys = E / (2.0 * (1.0 - nu * nu))
        Gs = E / (4.0 * (2.0 - nu) * (1.0 + nu))
        fs.derived[1] = Ys
        fs.derived[2] = Gs
        if ti.static(model == HERTZ):
            fs.derived[3] = ti.sqrt(4.0 * Gs / Ys)
        else:
            fs.derived[3] = ti.sqrt(2.0 / 7.0)


@ti.func
def constants(fs: ti.template()):
    prm = ti.Vector([fs.prm[k] for k in ti.static(range(N_PRM))])
    c = ti.Vector([fs.derived[k] for k in ti.static(range(4))])
    return prm, c


@ti.kernel
def step(fs: ti.template(), Si: ti.template(), So: ti.template(), model: ti.template(), n_walls: ti.template(),
         track: ti.template(), n: ti.i32, n_pairs: ti.i32):
    """One time step ``Si`` -> ``So`` (``prm[7]`` is dt; ``derived`` from
    :func:`derive_constants`): pair forces once per pair (half lists), then per sphere the
    sum over its own and its reverse pairs, the walls, gravity and the leapfrog update;
    wall offsets advance by their velocity. ``track``: record the largest displacement since
    the last neighbour build (forward only)."""
    # one flat loop over the pairs: no inner loop, so no reverse-mode stacks for the
    # contact law's locals (and loops are kept out of branches: Taichi's reverse mode needs that)
    for p in range(n_pairs):
        if fs.active[fs.pair_i[p]]:
            prm, c = constants(fs)
            pair_force(fs, Si, So, model, p, prm, c)
    for i in range(n):
        prm, c = constants(fs)
        m = fs.mass[i]
        f, tq = wall_forces(fs, Si, So, model, n_walls, ti.static(track and n_walls <= MAX_FLAGGED_WALLS), i, prm, c)
        f += m * fs.gravity[None]
        act = fs.active[i]
        p0 = fs.pair_start[i]
        for q in range(fs.nbr_n[i] * act):
            f += fs.pair_f[p0 + q]
            tq += fs.pair_ti[p0 + q]
        for q in range(fs.rev_n[i] * act):
            p = fs.rev[i, q]
            f -= fs.pair_f[p]
            tq += fs.pair_tj[p]
        if act and not fs.fixed[i]:
            r = fs.radius[i]
            dt = prm[7]
            v = Si.v[i] + f / m * dt
            So.v[i] = v
            So.w[i] = Si.w[i] + tq / (0.4 * m * r * r) * dt
            x = Si.x[i] + v * dt
            So.x[i] = x
            if ti.static(track):
                ti.atomic_max(fs.max_disp[None], (x - fs.x_ref[i]).norm())
        else:
            So.x[i] = Si.x[i]
            So.v[i] = Si.v[i]
            So.w[i] = Si.w[i]
    for k in range(n_walls):
        So.w_off[k] = Si.w_off[k] + fs.w_vel[k] * fs.prm[7]


@ti.kernel
def max_displacement(fs: ti.template(), S: ti.template(), n: ti.i32):
    for i in range(n):
        if fs.active[i]:
            ti.atomic_max(fs.max_disp[None], (S.x[i] - fs.x_ref[i]).norm())


@ti.kernel
def diagnostics(fs: ti.template(), S: ti.template(), n: ti.i32, gx: float, gy: float, gz: float):
    """[kinetic, rotational, potential, px, py, pz, active count, max speed] into ``stats``."""
    g = ti.Vector([gx, gy, gz])
    fs.stats[None] = ti.Vector.zero(float, 8)
    for i in range(n):
        if fs.active[i]:
            fs.stats[None][6] += 1.0
        if fs.active[i] and not fs.fixed[i]:
            m = fs.mass[i]
            r = fs.radius[i]
            v = S.v[i]
            fs.stats[None][0] += 0.5 * m * v.dot(v)
            fs.stats[None][1] += 0.5 * 0.4 * m * r * r * S.w[i].dot(S.w[i])
            fs.stats[None][2] += -m * g.dot(S.x[i])
            fs.stats[None][3] += m * v[0]
            fs.stats[None][4] += m * v[1]
            fs.stats[None][5] += m * v[2]
            ti.atomic_max(fs.stats[None][7], v.norm())


# ----------------------------------------------------------------------------- rollout tape
# A differentiable rollout keeps every step's input state; copying the six state fields (or
# their adjoints) one by one costs six launches and six numpy arrays per step, which was
# most of a small rollout's time. These copy a tuple of 3-vector fields to/from one
# (rows, 3) array in one launch: field k occupies the rows from row_offsets(fields)[k] on,
# one per element in row-major order. (The MPM's copy_in_packed packs columns instead:
# its fields all have one row per particle, these have different shapes.)


def row_offsets(fields):
    """First row of each field in the packed array, and the total number of rows."""
    out, r = [], 0
    for f in fields:
        out.append(r)
        r += math.prod(f.shape)
    return tuple(out), r


@ti.func
def _flat_row(I, shape: ti.template()):
    r = 0
    for d in ti.static(range(len(shape))):
        r = r * shape[d] + I[d]
    return r


@ti.kernel
def _copy_vectors(fields: ti.template(), array: ti.types.ndarray(), into_array: ti.template()):
    offsets = ti.static(row_offsets(fields)[0])
    for k in ti.static(range(len(fields))):
        for I in ti.grouped(fields[k]):
            r = offsets[k] + _flat_row(I, ti.static(fields[k].shape))
            if ti.static(into_array):
                for c in ti.static(range(3)):
                    array[r, c] = fields[k][I][c]
            else:
                fields[k][I] = ti.Vector([array[r, 0], array[r, 1], array[r, 2]])


def pack_vectors(fields, out):
    """The fields' values into ``out`` (rows, 3), one launch."""
    _copy_vectors(fields, out, True)


def unpack_vectors(fields, src):
    """The fields' values from ``src`` (rows, 3), one launch."""
    _copy_vectors(fields, src, False)


@ti.kernel
def zero_vectors(fields: ti.template()):
    for k in ti.static(range(len(fields))):
        for I in ti.grouped(fields[k]):
            fields[k][I] = ti.zero(fields[k][I])
