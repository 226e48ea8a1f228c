"""Signed distance functions of colliders (``@ti.func``), in the collider's local frame.

Convention: negative inside the solid; the returned normal is the SDF gradient (unit,
pointing out of the solid).

Collider codes and the meaning of the shape 4-vector ``shape``:

=========  ===============================================================
code       shape
=========  ===============================================================
PLANE      -               solid is the half space z_local < 0
BOX        (hx, hy, hz, -) half extents, m
SPHERE     (r, -, -, -)    radius, m
CYLINDER   (r, h, -, -)    radius and half height along z_local, m (capped)
MESH       (ox, oy, oz, d) origin of the SDF grid (local frame) and its spacing, m;
                           the grid itself lives in a flat field (offset, nx, ny, nz)
=========  ===============================================================
"""
import taichi as ti

NONE = 0
PLANE = 1
BOX = 2
SPHERE = 3
CYLINDER = 4
MESH = 5

FAR = 1e3  # distance reported for points outside a mesh SDF grid (m)


@ti.func
def sdf_box(p, h):
    q = ti.abs(p) - h
    qm = ti.max(q, 0.0)
    outside = qm.norm()
    inside = ti.min(ti.max(q[0], ti.max(q[1], q[2])), 0.0)
    d = outside + inside
    n = ti.Vector([0.0, 0.0, 0.0])
    if outside > 0.0:
        for k in ti.static(range(3)):
            n[k] = qm[k] / outside * (1.0 if p[k] >= 0.0 else -1.0)
    else:
        k = 0
        if q[1] > q[k]:
            k = 1
        if q[2] > q[k]:
            k = 2
        n[k] = 1.0 if p[k] >= 0.0 else -1.0
    return d, n


@ti.func
def sdf_sphere(p, r):
    l = p.norm()
    n = ti.Vector([0.0, 0.0, 1.0])
    if l > 0.0:
        n = p / l
    return l - r, n


@ti.func
def sdf_cylinder(p, r, h):
    rho = ti.sqrt(p[0] * p[0] + p[1] * p[1])
    dr = rho - r
    dz = ti.abs(p[2]) - h
    sz = 1.0 if p[2] >= 0.0 else -1.0
    radial = ti.Vector([1.0, 0.0, 0.0])
    if rho > 0.0:
        radial = ti.Vector([p[0] / rho, p[1] / rho, 0.0])
    d = 0.0
    n = ti.Vector([0.0, 0.0, 0.0])
    if dr > 0.0 and dz > 0.0:
        l = ti.sqrt(dr * dr + dz * dz)
        d = l
        n = (dr * radial + ti.Vector([0.0, 0.0, dz * sz])) / l
    elif dr > dz:
        d = dr
        n = radial
    else:
        d = dz
        n = ti.Vector([0.0, 0.0, sz])
    return d, n


@ti.func
def sdf_grid(sdf: ti.template(), p, shape, meta):
    """Trilinear SDF lookup in a flat field; ``meta = (offset, nx, ny, nz)``."""
    org = ti.Vector([shape[0], shape[1], shape[2]])
    h = shape[3]
    g = (p - org) / h
    d = FAR
    n = ti.Vector([0.0, 0.0, 1.0])
    nx, ny, nz = meta[1], meta[2], meta[3]
    if g[0] >= 0.0 and g[1] >= 0.0 and g[2] >= 0.0 and g[0] <= nx - 1.0 and g[1] <= ny - 1.0 and g[2] <= nz - 1.0:
        i = ti.min(ti.cast(ti.floor(g[0]), ti.i32), nx - 2)
        j = ti.min(ti.cast(ti.floor(g[1]), ti.i32), ny - 2)
        k = ti.min(ti.cast(ti.floor(g[2]), ti.i32), nz - 2)
        f = g - ti.Vector([i, j, k])
        d = 0.0
        grad = ti.Vector([0.0, 0.0, 0.0])
        for a, b, c in ti.static(ti.ndrange(2, 2, 2)):
            val = sdf[meta[0] + ((i + a) * ny + (j + b)) * nz + (k + c)]
            wa = f[0] if a == 1 else 1.0 - f[0]
            wb = f[1] if b == 1 else 1.0 - f[1]
            wc = f[2] if c == 1 else 1.0 - f[2]
            d += wa * wb * wc * val
            grad[0] += (1.0 if a == 1 else -1.0) * wb * wc * val
            grad[1] += wa * (1.0 if b == 1 else -1.0) * wc * val
            grad[2] += wa * wb * (1.0 if c == 1 else -1.0) * val
        gl = grad.norm()
        if gl > 0.0:
            n = grad / gl
    return d, n


@ti.func
def collider_sdf(sdf: ti.template(), ctype: ti.template(), p, shape, meta):
    """Signed distance and outward normal of a collider of (compile-time) type ``ctype``
    at local point ``p``."""
    d = FAR
    n = ti.Vector([0.0, 0.0, 1.0])
    if ti.static(ctype == PLANE):
        d = p[2]
    elif ti.static(ctype == BOX):
        d, n = sdf_box(p, ti.Vector([shape[0], shape[1], shape[2]]))
    elif ti.static(ctype == SPHERE):
        d, n = sdf_sphere(p, shape[0])
    elif ti.static(ctype == CYLINDER):
        d, n = sdf_cylinder(p, shape[0], shape[1])
    elif ti.static(ctype == MESH):
        d, n = sdf_grid(sdf, p, shape, meta)
    return d, n
