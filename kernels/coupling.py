"""FEM surface nodes against the MPM grid (a hook of :func:`diffsim.kernels.mpm.step_fused`).

Each free FEM surface node samples the MPM grid at its position with the quadratic
B-spline weights ``w_I`` of the MPM stencil: the interpolated mass ``m_g = sum w_I m_I``
and velocity ``v_g = sum w_I m_I v_I / m_g``. Where the MPM material is present
(``m_g / dx^3`` above ``density_min``) and the node approaches it along its outward normal,
the two exchange an inelastic impulse with the reduced mass ``m_i m_g / (m_i + m_g)``:
the normal relative velocity is removed and the tangential one reduced by Coulomb friction
(``mu`` times the normal impulse, at most to sticking). The node receives ``J`` (added to
its body-body contact force ``fp[t, i] = J / dt``, so the sensor reports it); each grid node
of its stencil receives ``-J w_I / m_g`` in velocity, which conserves momentum exactly.

The nodes are visited one after the other in a fixed order (a serial loop: each sees the
grid as the previous ones left it, so the result does not depend on thread scheduling
and two nodes pushing the same grid node do not both remove its whole approach
velocity). The reverse pass (:meth:`FEMGridContact.adjoint`) visits them backwards,
undoing each node's impulse on the grid before differentiating it. Nodes far from the
MPM material cost one 27-node gather.
"""
import taichi as ti

from .mpm import _stencil, _stencil_grad, _stencil_node


@ti.data_oriented
class FEMGridContact:
    """Hook state: the FEM fields, the contacting node list, the tape row of the current
    substep, thresholds, and the impulses of the last substep (for the reverse pass)."""

    def __init__(self, fem_fields, nodes, dtype):
        n = max(1, len(nodes))
        self.fem = fem_fields
        self.count = ti.field(ti.i32, shape=())
        self.node = ti.field(ti.i32, shape=n)                  # free surface nodes, in visiting order
        self.row = ti.field(ti.i32, shape=())
        self.density_min = ti.field(dtype, shape=())
        self.friction = ti.field(dtype, shape=())
        self.normal = ti.Vector.field(3, dtype, shape=n)       # outward normals, per chunk
        self.normal_grad = ti.Vector.field(3, dtype, shape=n)  # their adjoint (summed over a chunk)
        self.J = ti.Vector.field(3, dtype, shape=n)            # impulse (N s) of the last substep
        self.active = ti.field(ti.i32, shape=n)
        self.count[None] = len(nodes)
        if len(nodes):
            self.node.from_numpy(nodes.astype("int32"))

    @ti.func
    def _sample(self, ms: ti.template(), xi, dx, lo):
        """Stencil of ``xi`` and the grid mass / momentum interpolated there (``ok`` = 0
        when the stencil leaves the grid)."""
        Xg = (xi - lo) / dx
        ok = 1
        for d in ti.static(range(3)):
            if Xg[d] < 1.0 or Xg[d] > ms.grid_shape[d] - 2.0:
                ok = 0
        base, fx, W = _stencil(xi, lo, 1.0 / dx, ti.static(ms.grid_shape))
        m_g = 0.0
        p = ti.Vector([0.0, 0.0, 0.0])
        if ok:
            for a, b, c in ti.ndrange(3, 3, 3):
                I = base + ti.Vector([a, b, c])
                w = W[a, 0] * W[b, 1] * W[c, 2]
                m_g += w * ms.g_m[I]
                p += (w * ms.g_m[I]) * ms.g_v[I]
        return ok, base, fx, W, m_g, p

    @ti.func
    def _impulse(self, rel, n, m_i, m_g):
        """Impulse on the node for relative velocity ``rel`` (node minus material) and
        normal ``n`` (material towards node); zero unless approaching."""
        J = ti.Vector([0.0, 0.0, 0.0])
        vn = rel.dot(n)
        if vn < 0.0:
            mred = m_i * m_g / (m_i + m_g)
            jn = -mred * vn
            vt = rel - vn * n
            vt_len = vt.norm()
            J = jn * n
            if vt_len > 0.0:
                J -= ti.min(self.friction[None] * jn, mred * vt_len) / vt_len * vt
        return J

    @ti.func
    def grid_contact(self, ms: ti.template(), q, dt, dx, lo, write_force: ti.template()):
        """Node ``node[q]`` against the grid (``ms.g_v`` updated in place); with
        ``write_force`` its impulse goes to ``fp`` (the reverse pass replays without)."""
        fs = self.fem
        t = self.row[None]
        i = self.node[q]
        ok, base, fx, W, m_g, p = self._sample(ms, fs.x[t, i], dx, lo)
        self.active[q] = 0
        self.J[q] = ti.Vector([0.0, 0.0, 0.0])
        if ok and m_g > self.density_min[None] * dx * dx * dx:
            J = self._impulse(fs.v[t, i] - p / m_g, -self.normal[q], fs.mass[i], m_g)
            if J.norm_sqr() > 0.0:
                self.active[q] = 1
                self.J[q] = J
                if ti.static(write_force):
                    fs.fp[t, i] += J / dt
                for a, b, c in ti.ndrange(3, 3, 3):
                    I = base + ti.Vector([a, b, c])
                    if ms.g_m[I] > 0.0:
                        ms.g_v[I] -= (W[a, 0] * W[b, 1] * W[c, 2] / m_g) * J

    @ti.kernel
    def replay(self, ms: ti.template(), dt: float, dx: float, lox: float, loy: float, loz: float):
        """The hook of substep ``row`` again on the (recomputed) pre-hook grid, without
        touching ``fp``: leaves the post-hook grid and each node's impulse."""
        ti.loop_config(serialize=True)
        for q in range(self.count[None]):
            self.grid_contact(ms, q, dt, dx, ti.Vector([lox, loy, loz]), False)

    @ti.kernel
    def adjoint(self, ms: ti.template(), dt: float, dx: float, lox: float, loy: float, loz: float):
        """Reverse pass of the hook after :meth:`replay`: turns ``g_v.grad`` (after the
        hook) into the gradient before it, adds to ``g_m.grad`` and to the FEM nodes'
        ``x.grad[row]``, ``v.grad[row]`` (from ``fp.grad[row]`` and the grid) and to
        ``normal_grad``; restores the pre-hook ``g_v``. The contact and stick/slip
        branches are constants."""
        ti.loop_config(serialize=True)
        for r in range(self.count[None]):
            q = self.count[None] - 1 - r
            if self.active[q]:
                self._node_adjoint(ms, q, dt, dx, ti.Vector([lox, loy, loz]))

    @ti.func
    def _node_adjoint(self, ms: ti.template(), q, dt, dx, lo):
        fs = self.fem
        t = self.row[None]
        i = self.node[q]
        xi = fs.x[t, i]
        base, fx, W = _stencil(xi, lo, 1.0 / dx, ti.static(ms.grid_shape))
        dW = _stencil_grad(fx)
        Jold = self.J[q]
        # the grid as this node found it
        m_g = 0.0
        for a, b, c in ti.ndrange(3, 3, 3):
            m_g += W[a, 0] * W[b, 1] * W[c, 2] * ms.g_m[base + ti.Vector([a, b, c])]
        for a, b, c in ti.ndrange(3, 3, 3):
            I = base + ti.Vector([a, b, c])
            if ms.g_m[I] > 0.0:
                ms.g_v[I] += (W[a, 0] * W[b, 1] * W[c, 2] / m_g) * Jold
        p = ti.Vector([0.0, 0.0, 0.0])
        for a, b, c in ti.ndrange(3, 3, 3):
            I = base + ti.Vector([a, b, c])
            p += (W[a, 0] * W[b, 1] * W[c, 2] * ms.g_m[I]) * ms.g_v[I]
        # forward quantities
        n = -self.normal[q]
        m_i = fs.mass[i]
        u = p / m_g
        rel = fs.v[t, i] - u
        vn = rel.dot(n)
        mred = m_i * m_g / (m_i + m_g)
        jn = -mred * vn
        vt = rel - vn * n
        L = vt.norm()
        J = self._impulse(rel, n, m_i, m_g)
        # J -> fp (J / dt) and the grid velocities (-w_I J / m_g)
        Jb = fs.fp.grad[t, i] / dt
        mg_b = 0.0
        xb = ti.Vector([0.0, 0.0, 0.0])
        for a, b, c in ti.ndrange(3, 3, 3):
            off, dpos, w, gw = _stencil_node(W, dW, fx, a, b, c, dx)
            I = base + off
            if ms.g_m[I] > 0.0:
                gV = ms.g_v.grad[I]
                Jb -= (w / m_g) * gV
                mg_b += (w / m_g) * gV.dot(J / m_g)  # not / m_g^2: f32 underflow
                xb -= gw * (gV.dot(J) / m_g)
        # J(rel, mred, n)
        rel_b = ti.Vector([0.0, 0.0, 0.0])
        vt_b = ti.Vector([0.0, 0.0, 0.0])
        mred_b = 0.0
        jn_b = Jb.dot(n)
        if L > 0.0:
            tdir = vt / L
            if self.friction[None] * jn < mred * L:      # sliding
                jn_b -= self.friction[None] * Jb.dot(tdir)
                vt_b = -(self.friction[None] * jn / L) * (Jb - Jb.dot(tdir) * tdir)
            else:                                         # sticking
                vt_b = -mred * Jb
                mred_b -= Jb.dot(vt)
        # jn = -mred vn, vt = rel - vn n, vn = rel . n
        mred_b -= vn * jn_b
        vn_b = -mred * jn_b - vt_b.dot(n)
        rel_b += vt_b + vn_b * n
        self.normal_grad[q] -= jn * Jb + vn_b * rel - vn * vt_b
        mg_b += mred_b * (m_i / (m_i + m_g)) ** 2
        # rel = v_i - p / m_g
        fs.v.grad[t, i] += rel_b
        p_b = -rel_b / m_g
        mg_b += rel_b.dot(u) / m_g
        # p = sum w M V, m_g = sum w M
        for a, b, c in ti.ndrange(3, 3, 3):
            off, dpos, w, gw = _stencil_node(W, dW, fx, a, b, c, dx)
            I = base + off
            M = ms.g_m[I]
            V = ms.g_v[I]
            ms.g_v.grad[I] += (w * M) * p_b
            ms.g_m.grad[I] += w * (V.dot(p_b) + mg_b)
            xb += gw * (M * (V.dot(p_b) + mg_b))
        fs.x.grad[t, i] += xb
