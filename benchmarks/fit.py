"""Training throughput of the fitting and learning loops: one JSON object per case.

    python benchmarks/fit.py [--threads T] [--precision f64]
    python benchmarks/fit.py --coverage 20      # honesty of the reported uncertainties

Cases: ``fit_E_nu_jelly`` -- parameter identification (material_probe jelly, grid 24,
729 particles, 150 substeps per evaluation, L-BFGS); ``train_law_jelly`` -- one training
iteration of a structured neural law on the same data (teacher-forcing window of 10
frames = 100 substeps). Fields: case, particles, mpm_steps_per_s (substeps per second,
forward + backward), seconds, peak_rss_mb.

``--coverage N`` instead fits E and nu of the same jelly N times to surface-only data with
1% position noise (noise seeds 0..N-1, start 3x off) and prints one object per fit and a
summary: the fraction of fits whose true value lies within 2 reported standard deviations
(about 95% if the reported uncertainties are honest).
"""
import argparse
import json
import time
from pathlib import Path

import torch

from _memory import peak_rss_mb

PROBE = Path(__file__).resolve().parents[1] / "scenes" / "material_probe.py"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", default="f64", choices=("f32", "f64"))
    ap.add_argument("--coverage", type=int, default=0, metavar="N", help="N noisy fits: uncertainty coverage")
    args = ap.parse_args()
    import diffsim as ds
    from diffsim.fitting import Fitter
    from diffsim.learned.constitutive import make_law
    from diffsim.learned.training import LawTrainer
    from diffsim.scene import build_scene
    from diffsim.trajectory import record
    ds.init(precision=args.precision, threads=args.threads)
    if args.coverage:
        return coverage(args.coverage)
    opts = {"material": "jelly", "grid": 24}
    scene = build_scene(PROBE, opts)
    data = record(scene, scene.steps, scene.every, progress=False, script=str(PROBE), full_state=True)
    scene.solver.close()

    fitter = Fitter(build_scene(PROBE, opts), data, ["E", "nu"], init={"E": 2e3, "nu": 0.1})
    fitter.loss().backward()  # compile
    t0 = time.perf_counter()
    n_eval = 3
    for _ in range(n_eval):
        fitter.u.grad = None
        fitter.loss().backward()
    sec = (time.perf_counter() - t0) / n_eval
    print(json.dumps({"case": "fit_E_nu_jelly", "particles": fitter.sim.n, "substeps": fitter.steps,
                      "mpm_steps_per_s": fitter.steps / sec, "seconds_per_evaluation": sec,
                      "peak_rss_mb": peak_rss_mb(), "precision": args.precision}), flush=True)

    torch.manual_seed(0)
    el, pl = make_law("structured", width=32, depth=2, stress_scale=5e3)
    trainer = LawTrainer(build_scene(PROBE, opts), data, el, pl, window_start=10, window_end=10)
    trainer.train(1, progress=False)  # compile
    t0 = time.perf_counter()
    iters = 3
    trainer.train(iters, progress=False)
    sec = (time.perf_counter() - t0) / iters
    steps = 10 * data.frame_every
    print(json.dumps({"case": "train_law_jelly", "particles": trainer.sim.n, "substeps": steps,
                      "mpm_steps_per_s": steps / sec, "seconds_per_iteration": sec, "peak_rss_mb": peak_rss_mb(),
                      "precision": args.precision}), flush=True)


def coverage(n):
    from diffsim.fitting import Fitter
    from diffsim.scene import build_scene
    from diffsim.trajectory import record
    truth = {"E": 5e3, "nu": 0.3}
    opts = {"material": "jelly", "grid": 24, **truth}
    z = {k: [] for k in truth}
    for seed in range(n):
        t0 = time.perf_counter()
        scene = build_scene(PROBE, opts)
        data = record(scene, scene.steps, scene.every, progress=False, script=str(PROBE), surface_only=True,
                      noise=0.01, seed=seed)
        scene.solver.close()
        fit = Fitter(build_scene(PROBE, opts), data, list(truth), init={"E": 5e3 / 3, "nu": 0.1}).run(
            iters=30, progress=False)
        row = {"case": "fit_coverage", "seed": seed, "seconds": time.perf_counter() - t0}
        for k, v in truth.items():
            std = fit["std"][k]
            z[k].append(abs(fit["fitted"][k] - v) / std if std else float("inf"))
            row[k] = {"fitted": fit["fitted"][k], "std": std, "z": z[k][-1]}
        print(json.dumps(row), flush=True)
    print(json.dumps({"case": "fit_coverage_summary", "fits": n,
                      "within_2_std": {k: sum(x <= 2 for x in v) / n for k, v in z.items()},
                      "median_abs_z": {k: sorted(v)[n // 2] for k, v in z.items()},
                      "method": "Gauss-Newton curvature (diffsim.fitting)"}), flush=True)


if __name__ == "__main__":
    main()
