"""Gradient cases run in a separate process at a chosen precision (the test session's own
runtime is f64, and Taichi allows one ``ti.init`` per process).

    python tests/precision_cases.py CASE f32|f64 [--steps N] [--threads T]

prints one JSON object: the loss and the gradients (flattened lists) of the case.
Used by ``tests/test_precision.py``; a case is a function ``case(steps) -> (loss, {name: tensor})``
that builds its scene, runs ``ds.rollout`` and calls ``backward``.
"""
import argparse
import json
import math

import numpy as np
import torch

import diffsim as ds


def _dtype():
    return ds.runtime.torch_dtype()


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


def _start_state(sim):
    s = ds.initial_state(sim)
    n = sim.n
    x0, v0 = _leaf(s.x), _leaf(s.v)
    return x0, v0, ds.MPMState(x0, v0, torch.zeros(n, 3, 3, dtype=_dtype()),
                               torch.eye(3, dtype=_dtype()).repeat(n, 1, 1))


def stencil_edge(steps):
    """One particle whose x and y stencil coordinates sit 1e-4 cells above a B-spline
    boundary (weights ~5e-9 per axis) in a 5 cm domain: the node it reaches through both
    small weights has a mass of ~1e-22 kg (its square underflows in f32)."""
    L = 0.05
    sim = ds.MPMSolver(domain_max=(L, L, L), grid=16, dt=1e-4)
    dx = L / 16
    p = np.array([[(8.5 + 1e-4) * dx, (8.5 + 1e-4) * dx, 8.0 * dx]])
    sim.add_particles(p, ds.FixedCorotated(E=1e4, nu=0.3, density=1000), name="b", velocity=(0.1, -0.05, 0.02))
    sim.build()
    x0, v0, st = _start_state(sim)
    final, _ = ds.rollout(sim, steps, state=st)
    loss = final.x.sum() + final.v.sum()
    loss.backward()
    return loss, {"x0": x0.grad, "v0": v0.grad}


def friction_adjoint(steps):
    """The Coulomb wall adjoint (``boundary.contact_velocity_vjp``) at tangential speeds of
    1e-3 down to 1e-14 m/s, with the normal speed just below the sticking limit: the form
    with ``|vt|^3`` in a denominator overflowed in f32 below ~2e-13 m/s. Returns the
    velocity and wall adjoints for each speed (``steps`` is unused)."""
    import taichi as ti
    from diffsim.kernels import boundary
    speeds = [1e-3, 1e-8, 1e-12, 1e-14]
    out = ti.Vector.field(6, float, 4)
    vt = ti.field(float, 4)
    vt.from_numpy(np.array(speeds, dtype=ds.runtime.np_dtype()))

    @ti.kernel
    def run():
        for i in range(4):
            n = ti.Vector([0.0, 0.0, 1.0])
            v = ti.Vector([vt[i], 0.0, -0.5 * vt[i]])      # mu |vn| = 0.25 |vt|: sliding
            vb, wb = boundary.contact_velocity_vjp(v, ti.Vector.zero(float, 3), n, boundary.SEPARATE, 0.5,
                                                   ti.Vector([0.3, -0.2, 0.7]))
            out[i] = ti.Vector([vb[0], vb[1], vb[2], wb[0], wb[1], wb[2]])

    run()
    g = torch.tensor(out.to_numpy())
    return g.sum(), {f"speed_{s:g}": g[i] for i, s in enumerate(speeds)}


CASES = {"stencil_edge": stencil_edge, "friction_adjoint": friction_adjoint}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=sorted(CASES))
    ap.add_argument("precision", choices=["f32", "f64"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    ds.init(precision=a.precision, threads=a.threads)
    loss, grads = CASES[a.case](a.steps)
    print(json.dumps({"loss": float(loss.detach()), "grads": {k: v.detach().double().flatten().tolist()
                                                     for k, v in grads.items()}}))


if __name__ == "__main__":
    main()
