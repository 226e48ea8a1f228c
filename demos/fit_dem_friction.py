"""Recover DEM friction and restitution from observed motion, by gradient descent through
the DEM (``diffsim.rollout``).

A small pile of spheres (13, R = 1 mm) on a floor is spun and shoved by a moving wall; the
"observed" trajectory comes from hidden values (friction 0.45, restitution 0.6). Starting
from 0.2 and 0.3 the fit minimises the position error at four times with L-BFGS
(strong Wolfe line search) on log-parameters. Runs in ~1-2 min on 2 CPU cores (float64).

    python demos/fit_dem_friction.py [--iterations 30]
"""
import argparse

import numpy as np
import torch

import diffsim as ds
from diffsim import runtime
from diffsim.fitting import fit_log_parameters

R = 1e-3
HIDDEN = {"friction": 0.45, "restitution": 0.6}


def build(mesh_floor=False):
    """The pile; ``mesh_floor``: the floor as a triangulated slab (a MeshWall) instead of a plane."""
    mat = ds.DEMMaterial(E=1e6, nu=0.3, restitution=0.5, friction=0.4, rolling_friction=0.02, density=2500.0,
                         rolling_smoothing=1.0)
    sim = ds.DEMSolver((-0.01, -0.01, -0.002), (0.01, 0.01, 0.01), mat, dt=2e-5, skin=1e-3, requires_grad=True)
    if mesh_floor:
        import trimesh
        slab = trimesh.creation.box(extents=(0.02, 0.02, 0.001)).apply_translation((0, 0, -0.0005))
        sim.add_wall(ds.MeshWall(slab, name="floor"))
    else:
        sim.add_wall(ds.PlaneWall((0, 0, 0), (0, 0, 1), name="floor"))
    a = 2.3 * R
    sim.add_wall(ds.PlaneWall((-a - R + 2e-6, 0, 0), (1, 0, 0), name="pusher"))
    g = np.array([-a, 0.0, a])
    base = np.stack(np.meshgrid(g, g, [R - 2e-6], indexing="ij"), -1).reshape(-1, 3)
    h = np.sqrt((2 * R) ** 2 - 2 * (a / 2) ** 2) - 3e-6
    top = np.stack(np.meshgrid(g[:2] + a / 2, g[:2] + a / 2, [R - 2e-6 + h], indexing="ij"), -1).reshape(-1, 3)
    sim.add_particles(np.concatenate([base, top]), R, check_overlap=False)
    return sim


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=30, help="L-BFGS iterations at most")
    ap.add_argument("--steps", type=int, default=200)
    a = ap.parse_args(argv)
    if not runtime.ensure_f64():  # (a test session may have initialised the runtime already)
        raise SystemExit("this demo needs float64 gradients: diffsim.init(precision='f64')")
    f64 = torch.float64
    sim = build()
    n, steps = sim.n, a.steps
    rng = np.random.default_rng(1)
    w0 = torch.tensor(rng.normal(0, 30.0, (n, 3)), dtype=f64)
    v0 = torch.tensor(rng.normal(0, 1e-3, (n, 3)), dtype=f64)
    wall = torch.zeros(steps, 2, 3, dtype=f64)
    wall[:, 1, 0] = 0.03
    every = steps // 4

    def run(params):
        out = ds.rollout(sim, steps, params=params, state=sim.initial_state().replace(v=v0, w=w0),
                         control={w.name: wall[:, i] for i, w in enumerate(sim.walls[:2])}, record_every=every)
        return out.stacked("x")

    with torch.no_grad():
        observed = run({k: torch.tensor(v, dtype=f64) for k, v in HIDDEN.items()})
    scale = 1e-6 ** 2  # (1 um)^2

    def report(evaluation, loss, params):
        print(f"eval {evaluation:3d}  loss {loss:.4e} um^2  friction {params['friction']:.4f}  "
              f"restitution {params['restitution']:.4f}", flush=True)
    final, _ = fit_log_parameters(lambda p: ((run(p) - observed) ** 2).mean() / scale,
                                  {"friction": 0.2, "restitution": 0.3}, a.iterations, tolerance_grad=1e-10,
                                  report=report)
    for k, v in final.items():
        print(f"{k}: fitted {v:.4f}, hidden {HIDDEN[k]}, error {abs(v - HIDDEN[k]) / HIDDEN[k]:.2%}")
    return final


if __name__ == "__main__":
    main()
