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
Nodes far from the MPM material cost one 27-node gather.
"""
import taichi as ti

from .mpm import _stencil


@ti.data_oriented
class FEMGridContact:
    """Hook state: the FEM fields, the tape row of the current substep, thresholds."""

    def __init__(self, fem_fields, n_nodes, dtype):
        self.fem = fem_fields
        self.count = ti.field(ti.i32, shape=())
        self.row = ti.field(ti.i32, shape=())
        self.density_min = ti.field(dtype, shape=())
        self.friction = ti.field(dtype, shape=())
        self.normal = ti.Vector.field(3, dtype, shape=n_nodes)   # outward normals, per chunk
        self.count[None] = n_nodes

    @ti.func
    def grid_contact(self, ms: ti.template(), i, dt, dx, lo):
        fs = self.fem
        t = self.row[None]
        if fs.area[i] > 0.0 and fs.inv_mass[i] > 0.0:
            xi = fs.x[t, i]
            Xg = (xi - lo) / dx
            inside = 1
            for d in ti.static(range(3)):
                if Xg[d] < 1.0 or Xg[d] > ms.grid_shape[d] - 2.0:
                    inside = 0
            if inside:
                base, fx, W = _stencil(xi, lo, 1.0 / dx, ti.static(ms.grid_shape))
                m_g = 0.0
                p = ti.Vector([0.0, 0.0, 0.0])
                for a, b, c in ti.ndrange(3, 3, 3):
                    I = base + ti.Vector([a, b, c])
                    w = W[a, 0] * W[b, 1] * W[c, 2]
                    m_g += w * ms.g_m[I]
                    p += (w * ms.g_m[I]) * ms.g_v[I]
                if m_g > self.density_min[None] * dx * dx * dx:
                    n = -self.normal[i]          # from the material towards the node
                    rel = fs.v[t, i] - p / m_g
                    vn = rel.dot(n)
                    if vn < 0.0:
                        m_i = fs.mass[i]
                        mred = m_i * m_g / (m_i + m_g)
                        jn = -mred * vn
                        vt = rel - vn * n
                        vt_len = vt.norm()
                        J = jn * n
                        if vt_len > 0.0:
                            J -= ti.min(self.friction[None] * jn, mred * vt_len) / vt_len * vt
                        fs.fp[t, i] += J / dt
                        for a, b, c in ti.ndrange(3, 3, 3):
                            I = base + ti.Vector([a, b, c])
                            if ms.g_m[I] > 0.0:
                                ms.g_v[I] -= (W[a, 0] * W[b, 1] * W[c, 2] / m_g) * J
