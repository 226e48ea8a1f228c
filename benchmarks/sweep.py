"""Sweep throughput: the same N small runs serially in one process, on a plain process pool
and on Ray (``diffsim sweep``), side by side in one invocation. One JSON object per case.

    python benchmarks/sweep.py                 # 8 runs of elastic_drop at grid 32, 2 workers
    python benchmarks/sweep.py --runs 16 --workers 2 --steps 200
    python benchmarks/sweep.py --runs 24 --steps 400 --repeat 5

Fields: case, runs, workers, repeat, wall_s (median over the repetitions; walls_s lists
them), runs_per_s, per_run_s (wall / runs x workers: the cost of one run including its share
of start-up), and for ``ray`` (a fresh local instance, its start-up counted) and
``ray_started`` (the same sweeps timed from the moment the instance is up, as when joining a
running cluster with ``--address``) ray_init_s (the instance's start-up), over_pool (median
wall over the process pool's), over_pool_each (per repetition) and overhead_per_run_s
(Ray's extra wall per run and worker against the pool's).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
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
    ap.add_argument("--repeat", type=int, default=1, help="repetitions (cases alternate; medians reported)")
    a = ap.parse_args(argv)
    from diffsim.scene import resolve_script
    from diffsim.sweep import expand, run_id, run_one, start_ray, sweep
    script = str(resolve_script(a.scene).resolve())
    grid = {"E": [3e4 + 1e3 * i for i in range(a.runs)], "grid": [a.grid]}
    try:
        import ray
    except ImportError:
        ray = None
        print("ray is not installed (pip install -e '.[cluster]'): the ray case is skipped", file=sys.stderr)
    walls = {"serial": [], "process_pool": []}
    if ray is not None:
        walls.update(ray=[], ray_started=[])
    ray_init = []
    runs = expand(grid)
    # the cases alternate within each repetition, so that a slow phase of the machine hits all
    # of them; medians over the repetitions are reported
    for rep in range(a.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            # serial, in this process (one runtime, kernels compiled once; later repetitions
            # reuse the compiled kernels, as a serial sweep of many runs does)
            t0 = time.perf_counter()
            rows = sweep(script, os.path.join(tmp, "serial"), grid=grid, steps=a.steps, every=a.steps,
                         backend="serial", threads=1, progress=False)
            walls["serial"].append(time.perf_counter() - t0)
            assert all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
            # a plain process pool, one run per task (its process start-up counted)
            t0 = time.perf_counter()
            with ProcessPoolExecutor(a.workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(run_one, script, r["options"], r["seed"], a.steps, a.steps,
                                       os.path.join(tmp, "pool", run_id(script, r["options"], r["seed"], a.steps,
                                                                          a.steps)))
                           for r in runs]
                statuses = [(f.result()["status"], f.result()["error"]) for f in futures]
            walls["process_pool"].append(time.perf_counter() - t0)
            assert all(s == "completed" for s, _ in statuses), statuses
            if ray is not None:
                # a fresh local instance: "ray" counts its start-up (like the pool's process
                # start-up), "ray_started" starts the clock once the instance is up, as when a
                # sweep joins a running cluster (--address): its workers are fresh processes
                # that import diffsim and compile the kernels, like the pool's
                t0 = time.perf_counter()
                start_ray(a.workers)
                t1 = time.perf_counter()
                rows = sweep(script, os.path.join(tmp, "ray"), grid=grid, steps=a.steps, every=a.steps,
                             backend="ray", threads=1, progress=False)
                t2 = time.perf_counter()
                walls["ray"].append(t2 - t0)
                walls["ray_started"].append(t2 - t1)
                ray_init.append(t1 - t0)
                ray.shutdown()
                assert all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
    med = {case: statistics.median(w) for case, w in walls.items()}
    for case, w in walls.items():
        workers = 1 if case == "serial" else a.workers
        row = {"case": case, "scene": a.scene, "runs": a.runs, "steps": a.steps, "workers": workers,
               "repeat": a.repeat, "wall_s": med[case], "walls_s": w, "runs_per_s": a.runs / med[case],
               "per_run_s": med[case] * workers / a.runs}
        if case.startswith("ray"):
            row["ray_init_s"] = statistics.median(ray_init)
            row["over_pool"] = med[case] / med["process_pool"]
            row["over_pool_each"] = [r / p for r, p in zip(w, walls["process_pool"])]
            row["overhead_per_run_s"] = (med[case] - med["process_pool"]) * a.workers / a.runs
        print(json.dumps(row), flush=True)

if __name__ == "__main__":
    main()
