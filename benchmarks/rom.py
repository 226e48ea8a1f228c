"""GIOROM surrogate against the MPM that made its data (scenes/rom_body.py), on held-out
runs. One JSON object per case.

    python benchmarks/rom.py --model scenes/data/rom/jelly.pt --test DATA/jelly_test
    python benchmarks/rom.py --model ... --test ... --cases accuracy          # one kind only

Cases:
  accuracy  each held-out run (unseen initial velocities and orientations; shape "mesh2" is
            unseen in training): relative L2 of the decoded dense positions at frame 100
            (sqrt(sum |x - x_gt|^2 / sum |x_gt - x_gt(0)|^2) over the particles), over frames
            1..100, Chamfer distance (m) at frame 100, and at 2x the horizon (frame 200) the
            same error, whether every position is finite and how far the decoded points go
            outside the walls; the decoder alone (decoding the true sparse points); then one
            ``accuracy_summary`` per group (seen shapes / unseen shape): median and max.
  density   the same runs re-simulated by the MPM with 4x the particles (spacing / 4^(1/3),
            same grid) and decoded at those points without retraining: error ratio to the
            training density (at frame 100), for the rollout and for the decoder alone.
  speed     one body of ~100k particles (grid 100): time per frame and memory (resident set
            grown from before the scene was built to after the frames; the process's peak
            too, which includes the libraries and Taichi's pool) of the MPM (f32, this machine's
            threads) and of the surrogate producing the same dense frames, each in its own
            process, side by side; ``speedup`` = MPM / surrogate time per frame.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from _memory import peak_rss_mb, rss_mb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SCENE = os.path.join(ROOT, "scenes", "rom_body.py")


def emit(**row):
    print(json.dumps(row), flush=True)


def _mpm_positions(options, frames):
    from diffsim.scene import build_scene
    from diffsim.trajectory import record
    scene = build_scene(SCENE, {**options, "frames": frames})
    traj = record(scene, scene.steps, scene.every, progress=False, velocities=True)
    return traj.positions, traj.velocities[0]


def decode_truth(model, pos, frames):
    """The decoder alone: dense positions (frames+1, N, 3) decoded from the true sparse points."""
    import torch

    from diffsim.learned.giorom import farthest_point_sample
    ids = farthest_point_sample(pos[0], model.sparse)
    ref = torch.as_tensor(pos[0])
    prepared = model.decoder.prepare(ref[ids], ref)
    with torch.no_grad():
        return np.stack([pos[0] + model.decoder(prepared, torch.as_tensor(pos[t, ids] - pos[0, ids])).numpy()
                         for t in range(frames + 1)])


def accuracy(model, test, frames=100):
    from diffsim.learned.rom import material_type
    from diffsim.learned.rom_training import chamfer, relative_l2, rollout_dense
    from diffsim.sweep import load_dataset
    rows = []
    for traj in load_dataset(test):
        run = traj.metadata["run"]
        pos = np.asarray(traj.positions, np.float64)
        long = min(2 * frames, pos.shape[0] - 1)
        t0 = time.perf_counter()
        pred = rollout_dense(model, pos, traj.velocities[0], long, material_type(traj))
        wall = time.perf_counter() - t0
        lo, hi = np.asarray(model.bounds[0]), np.asarray(model.bounds[1])
        outside = float(np.max(np.maximum(lo - pred, 0.0) + np.maximum(pred - hi, 0.0))) if np.all(np.isfinite(pred)) \
            else float("inf")
        row = dict(case="accuracy", shape=run["options"].get("shape"), seed=run["seed"], particles=pos.shape[1],
                   rel_l2_100=relative_l2(pred, pos, frames),
                   rel_l2_frames=relative_l2(pred[:frames + 1], pos[:frames + 1]),
                   chamfer_100_m=chamfer(pred[frames], pos[frames]),
                   decoder_only_rel_l2_100=relative_l2(decode_truth(model, pos, frames), pos[:frames + 1], frames),
                   rel_l2_at_2x=relative_l2(pred, pos[:long + 1], long), frame_2x=long,
                   finite_2x=bool(np.all(np.isfinite(pred))), max_outside_walls_m=outside, surrogate_s=wall)
        emit(**row)
        rows.append(row)
    for group, sel in (("seen shapes", lambda r: r["shape"] != "mesh2"), ("unseen shape", lambda r: r["shape"] == "mesh2")):
        g = [r for r in rows if sel(r)]
        if g:
            e = [r["rel_l2_100"] for r in g]
            emit(case="accuracy_summary", group=group, runs=len(g), rel_l2_100_median=float(np.median(e)),
                 rel_l2_100_max=float(np.max(e)), chamfer_100_median_m=float(np.median([r["chamfer_100_m"] for r in g])),
                 decoder_only_rel_l2_100_median=float(np.median([r["decoder_only_rel_l2_100"] for r in g])),
                 rel_l2_at_2x_median=float(np.median([r["rel_l2_at_2x"] for r in g])),
                 all_finite_2x=all(r["finite_2x"] for r in g),
                 max_outside_walls_m=max(r["max_outside_walls_m"] for r in g))
    return rows


def density(model, test, frames=100, runs=3):
    from diffsim.learned.rom import material_type
    from diffsim.learned.rom_training import relative_l2, rollout_dense
    from diffsim.sweep import load_dataset
    ratios, dec_ratios = [], []
    for traj in load_dataset(test)[:runs]:
        run = traj.metadata["run"]
        opts = dict(run["options"], seed=run["seed"])
        grid = int(opts.get("grid", 32))
        fine, v0 = _mpm_positions({**opts, "spacing": 0.5 / grid / 4 ** (1 / 3)}, frames)
        pos = np.asarray(traj.positions, np.float64)
        base = relative_l2(rollout_dense(model, pos, traj.velocities[0], frames, material_type(traj)),
                           pos[:frames + 1], frames)
        dense = relative_l2(rollout_dense(model, fine, v0, frames, material_type(traj)), fine, frames)
        dec = relative_l2(decode_truth(model, pos, frames), pos[:frames + 1], frames)
        dec_4x = relative_l2(decode_truth(model, fine, frames), fine, frames)
        ratios.append(dense / base)
        dec_ratios.append(dec_4x / dec)
        emit(case="density", shape=opts.get("shape"), seed=run["seed"], particles=pos.shape[1],
             particles_4x=fine.shape[1], rel_l2_100=base, rel_l2_100_4x=dense, ratio=dense / base,
             decoder_only_rel_l2_100=dec, decoder_only_rel_l2_100_4x=dec_4x, decoder_only_ratio=dec_4x / dec)
    emit(case="density_summary", runs=len(ratios), ratio_median=float(np.median(ratios)), ratio_max=float(np.max(ratios)),
         decoder_only_ratio_median=float(np.median(dec_ratios)), decoder_only_ratio_max=float(np.max(dec_ratios)))


def speed_one(kind, model_path, frames, grid, size):
    """Runs in its own process: time per frame (after one warm-up frame) and peak RSS."""
    import diffsim as ds
    ds.init(arch="cpu", precision="f32")
    from diffsim.scene import build_scene
    opts = {"material": "jelly", "shape": "cube", "grid": grid, "size": size, "seed": 100, "frames": frames + 1}
    if kind == "rom":
        opts.update(solver="rom", model=model_path)
    before = rss_mb()
    scene = build_scene(SCENE, opts)
    sim = scene.solver
    sim.build()
    n = len(sim.frame()["particles"][0])
    per_frame = scene.every
    scene.step(per_frame)
    sim.frame()   # warm-up: compilation, first decode
    t0 = time.perf_counter()
    for _ in range(frames):
        scene.step(per_frame)
        sim.frame()["particles"][0]
    wall = (time.perf_counter() - t0) / frames
    return {"kind": kind, "particles": n, "s_per_frame": wall, "memory_mb": rss_mb() - before,
            "peak_rss_mb": peak_rss_mb()}


def speed(model_path, frames=20, grid=100, size=0.23):
    out = {}
    for kind in ("mpm", "rom"):
        r = subprocess.run([sys.executable, __file__, "--speed-one", kind, "--model", model_path, "--frames",
                            str(frames), "--grid", str(grid), "--size", str(size)], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(r.stderr[-3000:])
        out[kind] = json.loads(r.stdout.strip().splitlines()[-1])
        emit(case="speed", **out[kind])
    emit(case="speed_summary", particles=out["mpm"]["particles"],
         speedup=out["mpm"]["s_per_frame"] / out["rom"]["s_per_frame"],
         memory_ratio=out["mpm"]["memory_mb"] / max(out["rom"]["memory_mb"], 1e-3), threads=os.cpu_count())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--test", help="held-out recorded sweep (diffsim sweep --record)")
    ap.add_argument("--cases", default="accuracy,density,speed")
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--grid", type=int, default=100, help="speed case: MPM grid (~100k particles at 100)")
    ap.add_argument("--size", type=float, default=0.23, help="speed case: body size (m)")
    ap.add_argument("--speed-one", choices=("mpm", "rom"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.speed_one:
        print(json.dumps(speed_one(a.speed_one, a.model, a.frames or 20, a.grid, a.size)))
        return
    import torch

    import diffsim as ds
    from diffsim.learned.rom import GIOROM
    ds.init(arch="cpu", precision="f32")
    torch.set_num_threads(os.cpu_count() or 1)
    model = GIOROM.load(a.model, torch.float64)
    cases = a.cases.split(",")
    if "accuracy" in cases:
        accuracy(model, a.test, a.frames or 100)
    if "density" in cases:
        density(model, a.test, a.frames or 100)
    if "speed" in cases:
        speed(a.model, a.frames or 20, a.grid, a.size)


if __name__ == "__main__":
    main()
