"""Manipulation task benchmark: rollouts and wall time to reach each task's success
criterion, full-horizon gradients vs CMA-ES at the same budget. One JSON object per
(task, method) on stdout.

    python benchmarks/tasks.py                          # every built-in task, CPU, float32
    python benchmarks/tasks.py --tasks grasp_elastic --budget 200

Methods (each from the nominal controls, theta = 0):

* ``grad`` -- Adam (step ``--lr``) on the spline waypoints, gradients through the whole
  rollout; one rollout (forward + backward) per iteration.
* ``cmaes`` -- the ``cma`` package with DiffTactile's baseline settings (population 20,
  initial sigma 0.015 of the controls' bound).
* ``cmaes_wide`` -- the same with sigma 0.3 of the bound (a step that can reach the
  solution within a few generations: a fairer baseline for our control scaling).
* ``ppo`` -- stable-baselines3 PPO on the task's gymnasium wrapper (one-step episodes:
  the action is the whole control array; 8 rollouts per update), if installed.

Every method stops at the first rollout that meets the criterion or after ``--budget``
rollouts. Fields: task, method, success, rollouts (to success, or all), wall_s (to
success, or total), ms_per_rollout, best_loss, final metrics of the best controls,
budget, threads, precision.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

METHODS = {"grad": {}, "cmaes": {"sigma": 0.015}, "cmaes_wide": {"sigma": 0.3}, "ppo": {}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=None, help="comma-separated task names (default: all built-in)")
    ap.add_argument("--methods", default="grad,cmaes,cmaes_wide", help=f"comma-separated, from {list(METHODS)}")
    ap.add_argument("--budget", type=int, default=300, help="rollouts per method")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", choices=["f32", "f64"], default="f32")
    a = ap.parse_args(argv)
    import torch
    import diffsim as ds
    from diffsim.tasks import list_tasks, load_task, optimize
    ds.init(arch="cpu", threads=a.threads, precision=a.precision, seed=a.seed)
    names = a.tasks.split(",") if a.tasks else list_tasks()
    for name in names:
        task = load_task(name)
        for method in a.methods.split(","):
            kind = method if method in ("grad", "ppo") else "cmaes"
            r = optimize(task, kind, budget=a.budget, lr=a.lr, seed=a.seed, progress=False,
                         **METHODS[method])
            theta = torch.tensor(r["theta"], dtype=ds.runtime.torch_dtype())
            with torch.no_grad():
                metrics = task.metrics(task.run(theta))
            total = r["history"][-1]["wall_s"] if r["history"] else 0.0
            print(json.dumps({"task": name, "method": method, "success": r["success"], "rollouts": r["rollouts"],
                              "wall_s": r["wall_s"], "ms_per_rollout": 1e3 * total / max(len(r["history"]), 1),
                              "best_loss": r["best_loss"], "metrics": metrics, "budget": a.budget,
                              "controls": r["controls"]["shape"], "threads": a.threads or os.cpu_count(),
                              "precision": a.precision}), flush=True)


if __name__ == "__main__":
    main()
