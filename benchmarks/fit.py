"""Training throughput of the fitting and learning loops: one JSON object per case.

    python benchmarks/fit.py [--threads T] [--precision f64]

Cases: ``fit_E_nu_jelly`` -- parameter identification (material_probe jelly, grid 24,
729 particles, 150 substeps per evaluation, L-BFGS); ``train_law_jelly`` -- one training
iteration of a structured neural law on the same data (teacher-forcing window of 10
frames = 100 substeps). Fields: case, particles, mpm_steps_per_s (substeps per second,
forward + backward), seconds, peak_rss_mb.
"""
import argparse
import json
import resource
import time
from pathlib import Path

import torch

PROBE = Path(__file__).resolve().parents[1] / "scenes" / "material_probe.py"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", default="f64", choices=("f32", "f64"))
    args = ap.parse_args()
    import diffsim as ds
    from diffsim.fitting import Fitter
    from diffsim.learned.constitutive import make_law
    from diffsim.learned.training import LawTrainer
    from diffsim.scene import build_scene
    from diffsim.trajectory import record
    ds.init(precision=args.precision, threads=args.threads)
    opts = {"material": "jelly", "grid": 24}
    scene = build_scene(PROBE, opts)
    data = record(scene, scene.steps, scene.every, progress=False, script=str(PROBE), full_state=True)
    scene.solver.close()

    def rss():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

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
                      "peak_rss_mb": rss(), "precision": args.precision}), flush=True)

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
                      "mpm_steps_per_s": steps / sec, "seconds_per_iteration": sec, "peak_rss_mb": rss(),
                      "precision": args.precision}), flush=True)


if __name__ == "__main__":
    main()
