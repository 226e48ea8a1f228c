"""Velocity boundary conditions on grid nodes (``@ti.func``), shared by every grid solver.

Contact kinds:

* ``STICKY``: the node takes the wall's velocity.
* ``SLIP``: the approaching normal component is removed; tangential motion is free.
* ``SEPARATE``: like ``SLIP``, and the tangential relative speed is reduced by Coulomb
  friction ``mu |v_n|`` (it stops when friction wins). Separation is free.
"""
import taichi as ti

STICKY = 0
SLIP = 1
SEPARATE = 2

# Tangential speeds below 1e-15 m/s count as sticking (friction wins). Besides being
# physically nil, this keeps 1 / |vt|^2 (Taichi's autodiff of mu vn / |vt| in the collider
# stage) far from f32 underflow.
VT_SQ_MIN = 1e-30


@ti.func
def contact_velocity(v, v_wall, n, kind, mu):
    """New velocity of a node in contact with a wall of outward normal ``n``."""
    out = v
    if kind == STICKY:
        out = v_wall
    else:
        rel = v - v_wall
        vn = rel.dot(n)
        if vn < 0.0:
            vt = rel - vn * n
            if kind == SEPARATE:
                vt_sq = vt.dot(vt)
                scale = 0.0
                if vt_sq > VT_SQ_MIN:
                    vt_len = ti.sqrt(vt_sq)
                    scale = ti.max(0.0, 1.0 + mu * vn / vt_len)
                vt = vt * scale
            out = v_wall + vt
    return out


@ti.func
def contact_velocity_vjp(v, v_wall, n, kind, mu, g):
    """Adjoint of :func:`contact_velocity` for a fixed normal: returns ``(v_bar, v_wall_bar)``
    for the output adjoint ``g``."""
    v_bar = g
    w_bar = ti.Vector.zero(float, 3)
    if kind == STICKY:
        v_bar = ti.Vector.zero(float, 3)
        w_bar = g
    else:
        rel = v - v_wall
        vn = rel.dot(n)
        if vn < 0.0:
            vt = rel - vn * n
            rel_bar = g - g.dot(n) * n
            if kind == SEPARATE:
                vt_sq = vt.dot(vt)
                rel_bar = ti.Vector.zero(float, 3)
                if vt_sq > VT_SQ_MIN:
                    vt_len = ti.sqrt(vt_sq)
                    s = 1.0 + mu * vn / vt_len
                    if s > 0.0:
                        # written with the unit tangent t (not vt / |vt|^3): |vt|^3 underflows
                        # in f32 below ~2e-13 m/s
                        t = vt / vt_len
                        a = g.dot(t)
                        h = s * g - (a * (s - 1.0)) * t
                        rel_bar = h - h.dot(n) * n + (a * mu) * n
            v_bar = rel_bar
            w_bar = g - rel_bar
    return v_bar, w_bar
