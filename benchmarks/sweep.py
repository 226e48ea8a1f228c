"""Sweep throughput: the same N small runs serially in one process, on a plain process pool
and on Ray (``diffsim sweep``), side by side in one invocation. One JSON object per case.

    python benchmarks/sweep.py                 # 8 runs of elastic_drop at grid 32, 2 workers
    python benchmarks/sweep.py --runs 16 --workers 2 --steps 200

Fields: case, runs, workers, wall_s, runs_per_s, per_run_s (wall / runs x workers: the
cost of one run including its share of start-up), and for ``ray`` ``over_pool`` (its wall
time over the process pool's).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", default="elastic_drop")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--grid", type=int, default=32, help="the scene's grid option")
    a = ap.parse_args(argv)
    from diffsim.scene import resolve_script
    from diffsim.sweep import expand, run_id, run_one, sweep
    script = str(resolve_script(a.scene).resolve())
    grid = {"E": [3e4 + 1e3 * i for i in range(a.runs)], "grid": [a.grid]}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # serial, in this process (one runtime, kernels compiled once)
        t0 = time.perf_counter()
        rows = sweep(script, os.path.join(tmp, "serial"), grid=grid, steps=a.steps, every=a.steps, backend="serial",
                     threads=1, progress=False)
        results["serial"] = time.perf_counter() - t0
        assert all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
        # a plain process pool, one run per task
        runs = expand(grid)
        t0 = time.perf_counter()
        with ProcessPoolExecutor(a.workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_one, script, r["options"], r["seed"], a.steps, a.steps,
                                   os.path.join(tmp, "pool", run_id(script, r["options"], r["seed"], a.steps, a.steps)))
                       for r in runs]
            statuses = [(f.result()["status"], f.result()["error"]) for f in futures]
        results["process_pool"] = time.perf_counter() - t0
        assert all(s == "completed" for s, _ in statuses), statuses
        try:
            import ray
        except ImportError:
            ray = None
        if ray is not None:
            t0 = time.perf_counter()    # Ray's start-up counted, like the pool's process start-up
            ray.init(num_cpus=a.workers, include_dashboard=False, log_to_driver=False)
            rows = sweep(script, os.path.join(tmp, "ray"), grid=grid, steps=a.steps, every=a.steps, backend="ray",
                         threads=1, progress=False)
            results["ray"] = time.perf_counter() - t0
            ray.shutdown()
            assert all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
    for case, wall in results.items():
        workers = 1 if case == "serial" else a.workers
        row = {"case": case, "scene": a.scene, "runs": a.runs, "steps": a.steps, "workers": workers,
               "wall_s": wall, "runs_per_s": a.runs / wall, "per_run_s": wall * workers / a.runs}
        if case == "ray":
            row["over_pool"] = wall / results["process_pool"]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
