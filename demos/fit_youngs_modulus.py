"""Recover a jelly's Young's modulus from its motion by gradient descent through the MPM.

A jelly cube is pressed by a descending sphere. We record the particle positions every 10
substeps with a hidden E, then start from E three times too small and fit log(E) with
L-BFGS on the position error of the whole 120-substep trajectory (every frame, not just
the last one).

    python demos/fit_youngs_modulus.py [--iters 20] [--precision f64]
"""
import argparse
import json
import math
import time

import torch

import diffsim as ds
from diffsim.progress import Progress


def make_scene():
    sim = ds.MPMSolver(grid=24, dt=1e-3, walls={"-z": "sticky"})
    sim.add_body(ds.Box(center=(0.5, 0.5, 0.25), size=0.2), ds.FixedCorotated(E=4e3, nu=0.3), name="jelly")
    sim.add_collider(ds.SphereCollider(center=(0.52, 0.5, 0.46), radius=0.1, velocity=(0.0, 0.0, -0.6),
                                       friction=0.3, name="press"))
    return sim.build()


def trajectory(sim, state0, E, steps=120, every=10):
    sim.time, sim.step_count = 0.0, 0
    for c in sim.colliders:
        c.reset()
    _, frames = ds.rollout(sim, steps, state=state0, params={"jelly": {"E": E}}, record_every=every)
    return torch.stack([s.x for _, s in frames])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=20, help="maximum L-BFGS iterations")
    ap.add_argument("--precision", default="f64", choices=("f32", "f64"))
    ap.add_argument("--true-E", type=float, default=6e3)
    args = ap.parse_args()
    ds.init(precision=args.precision)
    dtype = torch.float64 if args.precision == "f64" else torch.float32
    sim = make_scene()
    state0 = sim.current_state()
    with torch.no_grad():
        target = trajectory(sim, state0, torch.tensor(args.true_E, dtype=dtype))
    log_E = torch.tensor(math.log(args.true_E / 3.0), dtype=dtype, requires_grad=True)
    # a 1-parameter smooth problem: L-BFGS with a strong-Wolfe line search converges in a
    # handful of iterations (each evaluation is one forward + backward rollout)
    opt = torch.optim.LBFGS([log_E], lr=1.0, max_iter=args.iters, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-12)
    t0 = time.perf_counter()
    history = []
    with Progress(total=None, desc="fit E", unit="eval") as bar:
        def closure():
            opt.zero_grad()
            pred = trajectory(sim, state0, torch.exp(log_E))
            loss = ((pred - target) ** 2).mean() / 1e-6  # mm^2
            loss.backward()
            history.append((float(torch.exp(log_E)), float(loss)))
            bar.update(1, E=f"{history[-1][0]:.5g}", loss=f"{history[-1][1]:.3g}")
            return loss
        opt.step(closure)
    E_fit = float(torch.exp(log_E))
    result = {"true_E": args.true_E, "start_E": args.true_E / 3.0, "fitted_E": E_fit,
              "relative_error": abs(E_fit - args.true_E) / args.true_E, "evaluations": len(history),
              "seconds": time.perf_counter() - t0, "final_loss_mm2": history[-1][1]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
