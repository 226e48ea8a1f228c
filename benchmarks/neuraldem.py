"""NeuralDEM surrogate against the DEM that made its data (scenes/dem_hopper.py), on the
held-out runs of a recorded hopper sweep. One JSON object per case.

    python benchmarks/neuraldem.py --model hopper.pt --data DATA            # val + test splits
    python benchmarks/neuraldem.py --model ... --data ... --cases speed     # one kind only

Cases:
  accuracy  each held-out run: outflow rate, drainage time and residual mass of the
            surrogate (from its fields: the flux through the slot, the occupancy integral)
            against the DEM run's own, relative errors (residual in percentage points; the
            summary gives it also apart for the runs whose flow stopped within the
            simulated time and for those still flowing at its end);
            the flow regime of both (exit-order ratio, diffsim.dem.discharge); the IoU of
            the occupied region (occupancy > 0.3) at 0.1, 0.3, 0.5, 0.8 and 1.2 s; then one
            ``accuracy_summary``: medians and worst cases, regimes right. With
            ``--reference-seeds DIR ...`` (sweeps of the held-out conditions with other fill
            seeds: ``diffsim sweep ... --seeds 1,2``) also the errors against the mean of
            all seeds' DEM figures (``*_vs_seeds``) and the DEM's own spread: the surrogate
            is conditioned on angle and frictions only, and a single run carries the
            noise of its fill.
  speed     one held-out run's conditions: the DEM run it replaces (scene build, Taichi
            compile and stepping, and stepping alone) against the surrogate's full discharge
            curve and figures (median of 20, after one warm-up), same process, same threads.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SCENE = os.path.join(ROOT, "scenes", "dem_hopper.py")


def emit(**row):
    print(json.dumps(row), flush=True)


def held_out(data):
    from diffsim.sweep import load_dataset
    return load_dataset(data, "val") + load_dataset(data, "test")


def seed_references(dirs):
    """{(angle, friction, rolling friction): [completed runs' summary rows]} of the sweep
    folders ``dirs`` (their ``summary.csv``)."""
    import csv
    from diffsim.learned.granular_fields import CONDITIONS
    out = {}
    for d in dirs or ():
        path = os.path.join(d, "summary.csv")
        if not os.path.exists(path):
            raise SystemExit(f"--reference-seeds {d}: no summary.csv (a `diffsim sweep` folder)")
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("status") == "completed":
                    out.setdefault(tuple(round(float(row[k]), 9) for k in CONDITIONS), []).append(row)
    return out


def against_seeds(row, pred, own, others):
    """The surrogate's errors against the mean of the DEM figures of all fill seeds (its own
    run ``own`` and the summary rows ``others``); None where a seed's flow had not stopped
    (no drainage time)."""
    from diffsim.learned.neuraldem_training import relative_error
    number = lambda v: None if v in ("", None) else float(v)  # noqa: E731
    others = [o for o in others if number(o["outflow_rate"]) is not None]
    rates = [own["outflow_rate"]] + [number(o["outflow_rate"]) for o in others]
    drains = [own["drainage_time"]] + [number(o["drainage_time"]) for o in others]
    resid = [own["residual_mass_fraction"]] + [number(o["residual_mass_fraction"]) for o in others]
    rate = float(np.mean(rates))
    drain = None if any(d is None for d in drains) else float(np.mean(drains))
    row.update(seeds=len(rates), outflow_rate_seeds=rate, outflow_rate_seed_spread=float(np.std(rates) / rate),
               outflow_rate_error_vs_seeds=relative_error(pred["outflow_rate"], rate), drainage_time_seeds=drain,
               drainage_time_error_vs_seeds=(relative_error(pred["drainage_time"], drain)
                                             if drain is not None and pred["drainage_time"] is not None else None),
               residual_error_pp_vs_seeds=100 * abs(pred["residual_mass_fraction"] - float(np.mean(resid))))


def accuracy(model, trajs, figure_options, references=None):
    from diffsim.learned.granular_fields import CONDITIONS, FieldGrid
    from diffsim.learned.neuraldem_training import HopperFieldData, evaluate_run, relative_error
    lo, hi, h, depth = model.stats["grid"]
    grid = FieldGrid(lo, hi, h, depth)
    data = HopperFieldData(trajs, grid=grid)
    rows = []
    for traj, run in zip(trajs, data.runs):
        r = evaluate_run(model, run, grid, radius=float(traj.metadata["scene"]["options"]["radius"]),
                         **figure_options)
        p, t = r["pred"], r["true"]
        row = {"case": "accuracy", "run": os.path.basename(os.path.dirname(traj.path)), **r["conditions"],
               "outflow_rate": t["outflow_rate"], "outflow_rate_pred": p["outflow_rate"],
               "outflow_rate_error": relative_error(p["outflow_rate"], t["outflow_rate"]),
               "drainage_time": t["drainage_time"], "drainage_time_pred": p["drainage_time"],
               "drainage_time_error": (relative_error(p["drainage_time"], t["drainage_time"])
                                       if p["drainage_time"] is not None and t["drainage_time"] is not None else None),
               "residual_pct": 100 * t["residual_mass_fraction"], "residual_pct_pred": 100 * p["residual_mass_fraction"],
               "residual_error_pp": 100 * abs(p["residual_mass_fraction"] - t["residual_mass_fraction"]),
               "regime": t["regime"], "regime_pred": p["regime"], "exit_order": t["exit_order_ratio"],
               "exit_order_pred": p["exit_order_ratio"], "iou": r["iou"]}
        if references:
            opts = traj.metadata["run"]["options"]
            others = references.get(tuple(round(float(opts[k]), 9) for k in CONDITIONS))
            if others:
                against_seeds(row, p, t, others)
        rows.append(row)
        emit(**row)

    def stats(key, keep=lambda r: True):
        v = np.array([r[key] for r in rows if r.get(key) is not None and keep(r)], float)
        return {"median": float(np.median(v)), "max": float(v.max()), "n": int(len(v))} if len(v) else None
    # the residual of a run whose flow stopped within the simulated time is what stays in the
    # hopper; of one still flowing at the end it is the mass yet to leave (a timing error)
    emit(case="accuracy_summary", runs=len(rows), outflow_rate_error=stats("outflow_rate_error"),
         drainage_time_error=stats("drainage_time_error"), residual_error_pp=stats("residual_error_pp"),
         residual_error_pp_stopped=stats("residual_error_pp", lambda r: r["drainage_time"] is not None),
         residual_error_pp_flowing=stats("residual_error_pp", lambda r: r["drainage_time"] is None),
         regimes_right=int(sum(r["regime"] == r["regime_pred"] for r in rows)),
         regimes=sorted({str(r["regime"]) for r in rows}),
         iou_median=[float(np.median([r["iou"][k] for r in rows])) for k in range(len(rows[0]["iou"]))])
    if any("seeds" in r for r in rows):
        emit(case="accuracy_vs_seeds", runs=sum("seeds" in r for r in rows),
             seeds=sorted({r["seeds"] for r in rows if "seeds" in r}),
             outflow_rate_seed_spread=stats("outflow_rate_seed_spread"),
             outflow_rate_error=stats("outflow_rate_error_vs_seeds"),
             drainage_time_error=stats("drainage_time_error_vs_seeds"),
             residual_error_pp=stats("residual_error_pp_vs_seeds"),
             residual_error_pp_stopped=stats("residual_error_pp_vs_seeds", lambda r: r["drainage_time_seeds"] is not None),
             residual_error_pp_flowing=stats("residual_error_pp_vs_seeds",
                                             lambda r: "seeds" in r and r["drainage_time_seeds"] is None))


def speed(model, traj, figure_options):
    import torch

    from diffsim.runtime import init
    from diffsim.scene import build_scene
    opts = dict(traj.metadata["scene"]["options"])
    cond = {k: float(opts[k]) for k in ("angle", "friction", "rolling_friction")}
    times = model.default_times()
    model.figures(cond, times, extrapolate=True, **figure_options)       # warm-up
    surrogate = []
    for _ in range(20):
        t0 = time.perf_counter()
        model.figures(cond, times, extrapolate=True, **figure_options)
        surrogate.append(time.perf_counter() - t0)
    init(arch="cpu", precision="f32")
    t0 = time.perf_counter()
    scene = build_scene(SCENE, opts)
    scene.build()
    scene.step(1)                                       # compiles the kernels
    t1 = time.perf_counter()
    scene.step(scene.steps - 1)
    scene.diagnostics()                                 # synchronises
    t2 = time.perf_counter()
    s = float(np.median(surrogate))
    emit(case="speed", **cond, **figure_options, members=len(getattr(model, "members", [model])),
         spheres=int(opts["count"]), simulated_s=float(scene.time), dem_total_s=t2 - t0,
         dem_stepping_s=t2 - t1, surrogate_s=s, frames=int(len(times)), torch_threads=torch.get_num_threads(),
         speedup_total=(t2 - t0) / s, speedup_stepping=(t2 - t1) / s)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="the recorded hopper sweep (its val and test splits are held out)")
    ap.add_argument("--cases", default="accuracy,speed")
    ap.add_argument("--every", type=int, default=2, help="the surrogate's flux at every N-th frame (figures)")
    ap.add_argument("--residual-times", type=int, default=12, help="times of the residual-mass estimate (figures)")
    ap.add_argument("--reference-seeds", nargs="*", default=(),
                    help="sweep folders of the held-out conditions run with other fill seeds: errors also against "
                         "the mean of all seeds' DEM figures")
    args = ap.parse_args(argv)
    from diffsim.learned.neuraldem import NeuralDEM
    model = NeuralDEM.load(args.model)
    figure_options = {"every": args.every, "residual_times": args.residual_times}
    trajs = held_out(args.data)
    if not trajs:
        raise SystemExit(f"{args.data}: no held-out (val/test) runs")
    cases = args.cases.split(",")
    if "accuracy" in cases:
        accuracy(model, trajs, figure_options, seed_references(args.reference_seeds))
    if "speed" in cases:
        speed(model, trajs[0], figure_options)


if __name__ == "__main__":
    main()
