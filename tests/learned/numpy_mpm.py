"""An MLS-MPM written in numpy for the tests, independently of diffsim's kernels: motion
data that no diffsim code produced (fixed-corotated elasticity, quadratic B-splines, APIC
transfers, gravity, box walls that are sticky or let the body separate)."""
import numpy as np

OFFSETS = np.array([(i, j, k) for i in range(3) for j in range(3) for k in range(3)])
BOUND = 3   # node layers next to each face that act as the wall


def fixed_corotated(F, E, nu):
    """Kirchhoff stress 2 mu (F - R) F^T + lam (J - 1) J I, R from the SVD."""
    mu, lam = E / (2 * (1 + nu)), E * nu / ((1 + nu) * (1 - 2 * nu))
    U, _, Vt = np.linalg.svd(F)
    flip = np.linalg.det(U @ Vt) < 0
    U[flip, :, 2] *= -1
    R = U @ Vt
    J = np.linalg.det(F)
    return 2 * mu * (F - R) @ np.swapaxes(F, 1, 2) + (lam * (J - 1) * J)[:, None, None] * np.eye(3)


def box_particles(lo, hi, spacing):
    """Particles at the centres of a cubic lattice of ``spacing`` filling [lo, hi]."""
    axes = [np.arange(a + spacing / 2, b, spacing) for a, b in zip(lo, hi)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def simulate(x0, v0, volume, density, E, nu, grid, dt, substeps, frames, domain=((0, 0, 0), (1, 1, 1)),
             gravity=(0.0, 0.0, -9.81), walls=None):
    """Positions (frames + 1, N, 3), one frame every ``substeps`` substeps of ``dt``.
    ``walls``: {face: "sticky" | "separate"} (default separate everywhere)."""
    lo, hi = (np.asarray(a, dtype=float) for a in domain)
    dx = float((hi - lo).max()) / grid
    shape = np.round((hi - lo) / dx).astype(int)
    walls = walls or {}
    x, v = np.array(x0, dtype=float), np.array(v0, dtype=float)
    n = len(x)
    mass = density * volume
    C = np.zeros((n, 3, 3))
    F = np.tile(np.eye(3), (n, 1, 1))
    g = np.asarray(gravity, dtype=float)
    out = [x.copy()]
    for _ in range(frames):
        for _ in range(substeps):
            F = (np.eye(3) + dt * C) @ F
            affine = -dt * volume * 4 / dx ** 2 * fixed_corotated(F, E, nu) + mass * C
            rel = (x - lo) / dx
            base = np.floor(rel - 0.5).astype(int)
            fx = rel - base
            w = np.stack([0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1) ** 2, 0.5 * (fx - 0.5) ** 2])   # (3, N, 3)
            weight = w[OFFSETS[:, 0], :, 0] * w[OFFSETS[:, 1], :, 1] * w[OFFSETS[:, 2], :, 2]    # (27, N)
            dpos = (OFFSETS[:, None, :] - fx[None]) * dx                                      # (27, N, 3)
            node = base[None] + OFFSETS[:, None, :]
            flat = np.ravel_multi_index(tuple(np.moveaxis(node, -1, 0)), shape).ravel()
            mv = weight[..., None] * (mass * v[None] + np.einsum("nij,knj->kni", affine, dpos))
            gm = np.bincount(flat, (weight * mass).ravel(), minlength=shape.prod())
            gv = np.stack([np.bincount(flat, mv[..., d].ravel(), minlength=shape.prod()) for d in range(3)], -1)
            has = gm > 0
            gv[has] = gv[has] / gm[has, None] + dt * g
            gv = gv.reshape(*shape, 3)
            for d, axis in enumerate("xyz"):
                for side, layers in (("-", np.s_[:BOUND]), ("+", np.s_[shape[d] - BOUND:])):
                    kind = walls.get(side + axis, "separate")
                    sl = [slice(None)] * 3
                    sl[d] = layers
                    block = gv[tuple(sl)]
                    if kind == "sticky":
                        block[...] = 0.0
                    elif side == "-":
                        block[..., d] = np.maximum(block[..., d], 0.0)
                    else:
                        block[..., d] = np.minimum(block[..., d], 0.0)
            gv = gv.reshape(-1, 3)[flat].reshape(27, n, 3)
            v = np.einsum("kn,kni->ni", weight, gv)
            C = 4 / dx ** 2 * np.einsum("kn,kni,knj->nij", weight, gv, dpos)
            x = x + dt * v
        out.append(x.copy())
    return np.stack(out)
