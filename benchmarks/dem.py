"""DEM benchmarks: one JSON object per case on stdout.

    python benchmarks/dem.py                          # the silo discharge (1.0 s, 50,000 steps)
    python benchmarks/dem.py --duration 0.4           # shorter
    python benchmarks/dem.py --beverloo 0.020,0.024,0.028   # + flow rate vs orifice, Beverloo fit
    python benchmarks/dem.py --arch gpu
    python benchmarks/dem.py --grad                   # only the gradient case (below)
    python benchmarks/dem.py --scale                  # 10k ... 1M spheres (GPU: --arch gpu, to 3M)

Cases (each in its own process, so ``peak_rss_mb`` is the case's own):

* ``silo_settled_15k`` -- the benchmark silo of shared/data/dem_silo from
  ``settled_state.csv``: 15,000 spheres (R = 2 mm), Hertz-Mindlin with rolling friction,
  dt = 2e-5 s, the 24 mm orifice of ``plate_orifice.stl`` opens at t = 0; spheres below
  z = -0.02 m are removed. ``particle_steps_per_s`` = mean spheres in the domain x steps /
  seconds of time stepping (as LIGGGHTS' figure); ``flow_rate_kg_s`` = least-squares slope
  of discharged mass over t in [0.2 s, duration]; ``rate_windows_kg_s``: the slope in
  four equal windows of that interval (constancy).
* ``silo_orifice_<D>mm`` (with ``--beverloo``) -- the same for other orifice diameters,
  then ``beverloo_fit``: W = C rho_b sqrt(g) (D0 - k d)^2.5 fitted to the rates (rho_b, the
  bulk density of the settled bed, measured in its core).

* ``grad_pile_300`` (with ``--grad``) -- a differentiable rollout: 300 spheres (R = 1 mm,
  Hertz-Mindlin with rolling friction, f64) in a 10 x 10 x 3 block pressed together (0.5%
  overlaps) on a floor, 300 steps of dt = 2e-6 s; gradients of the mean height with
  respect to E, friction and rolling friction. ``forward_s``, ``backward_s`` (medians of 3
  after a warm-up), ``backward_over_forward``, ``contacts``.

* ``scale_<N>`` (with ``--scale``) -- about N spheres (R = 1 mm, Hertz-Mindlin with rolling
  friction, f32) in an ``a x a x a/2`` block pressed together (0.5% overlaps, as
  ``grad_pile_300``) relaxing on a floor between four side walls, dt = 2e-6 s; N = 10k,
  30k, 100k, 300k, 1M (GPU also 3M). Timed steps shrink with size (at least 20, after 20
  warm-up steps); ``contacts`` at the end, ``scene_mb`` (peak memory above the process
  before the scene, kernel compilation included: memory per sphere is its slope between
  sizes).

Fields: case, particles, steps, dt, particle_steps_per_s, wall_s (time stepping),
peak_rss_mb, flow_rate_kg_s, rate_windows_kg_s, threads, arch.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _memory import peak_rss_mb, rss_mb

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_silo(orifice, duration, arch, threads):
    import numpy as np
    import diffsim as ds
    from diffsim.dem import granular
    ds.init(arch=arch, threads=threads)
    sc = ds.build_scene(os.path.join(ROOT, "scenes", "dem_silo.py"), {"orifice": orifice, "duration": duration})
    sim = sc.solver
    steps = sc.steps
    rec = granular.record_discharge(sim, steps, sc.every)
    times, mass, active, stepping = rec["time"], rec["discharged_mass"], rec["particles_active"], rec["stepping_s"]
    # mean spheres in the domain over the steps (trapezoid over the samples)
    mean_active = float(np.mean(0.5 * (np.asarray(active[1:]) + np.asarray(active[:-1]))))
    t_lo = 0.2
    name = "silo_settled_15k" if abs(orifice - 0.024) < 1e-9 else f"silo_orifice_{orifice * 1e3:.0f}mm"
    return {"case": name, "particles": sim.n, "mean_particles": mean_active, "steps": steps, "dt": sim.dt,
            "orifice_m": orifice, "particle_steps_per_s": mean_active * steps / stepping, "wall_s": stepping,
            "peak_rss_mb": peak_rss_mb(), "flow_rate_kg_s": granular.flow_rate(times, mass, t_lo),
            "rate_windows_kg_s": granular.windowed_rates(times, mass, t_lo, duration),
            "discharged_kg": float(mass[-1]), "rebuilds": sim.rebuilds,
            "threads": threads or os.cpu_count(), "arch": arch,
            "trace": {"time": [round(float(t), 6) for t in times], "discharged_mass": mass.tolist()}}


def silo_beverloo(rates, orifices):
    """Beverloo fit of the silo's rates; rho_b from the settled bed's core (r < 30 mm,
    20 mm < z < 120 mm)."""
    import numpy as np
    sys.path.insert(0, os.path.join(ROOT, "scenes"))
    from dem_silo import find_data  # noqa: E402
    from diffsim.dem import granular
    path = find_data()
    P = json.load(open(os.path.join(path, "params.json")))
    x = np.loadtxt(os.path.join(path, "settled_state.csv"), delimiter=",", skiprows=1)[:, 1:4]
    rho_b = granular.bulk_density(x, P["radius"], P["density"], (-0.03, -0.03, 0.02), (0.03, 0.03, 0.12),
                                  inside=lambda p: np.hypot(p[:, 0], p[:, 1]) < 0.03)
    fit = granular.beverloo_fit(rates, orifices, rho_b, 2 * P["radius"], P["gravity"])
    return dict({"case": "beverloo_fit", "orifices_m": list(orifices), "rates_kg_s": list(rates)}, **fit)


def run_grad_pile(arch, threads):
    import statistics
    import time

    import numpy as np
    import torch

    import diffsim as ds
    ds.init(arch=arch, precision="f64", threads=threads)
    R, steps = 1e-3, 300
    mat = ds.DEMMaterial(E=1e7, nu=0.3, restitution=0.5, friction=0.4, rolling_friction=0.05, rolling_smoothing=1.0)
    sim = ds.DEMSolver((0, 0, -0.001), (0.03, 0.03, 0.01), mat, dt=2e-6, requires_grad=True)
    sim.add_wall(ds.PlaneWall((0, 0, 0), (0, 0, 1), name="floor"))
    axis = np.arange(10) * 1.99 * R + 2 * R
    x = np.stack(np.meshgrid(axis, axis, np.arange(3) * 1.99 * R + 0.995 * R, indexing="ij"), -1).reshape(-1, 3)
    sim.add_particles(x, R, check_overlap=False)
    sim.build()
    P = {k: torch.tensor(getattr(mat, k), dtype=torch.float64, requires_grad=True)
         for k in ("E", "friction", "rolling_friction")}

    def once():
        t0 = time.perf_counter()
        out = ds.rollout(sim, steps, params=P)
        t1 = time.perf_counter()
        out.final.x[:, 2].mean().backward()
        return t1 - t0, time.perf_counter() - t1

    once()
    fwd, bwd = zip(*[once() for _ in range(3)])
    f, b = statistics.median(fwd), statistics.median(bwd)
    return {"case": "grad_pile_300", "particles": sim.n, "steps": steps, "dt": sim.dt, "forward_s": round(f, 4),
            "backward_s": round(b, 4), "backward_over_forward": round(b / f, 2),
            "contacts": int(sim.fields.nbr_n.to_numpy()[:sim.n].sum()), "peak_rss_mb": peak_rss_mb(),
            "threads": threads, "arch": arch}


SCALE_CPU = (10_000, 30_000, 100_000, 300_000, 1_000_000)
SCALE_GPU = SCALE_CPU + (3_000_000,)


def run_scale(n_target, arch, threads):
    import time

    import numpy as np

    import diffsim as ds
    ds.init(arch=arch, threads=threads)
    R, gap = 1e-3, 1.99e-3
    a = max(2, round((2 * n_target) ** (1.0 / 3.0)))           # a x a x a/2 spheres
    h = max(1, round(n_target / (a * a)))
    side = (a - 1) * gap + 2 * 0.995 * R                          # 0.5% overlap with the walls too
    base = rss_mb()
    mat = ds.DEMMaterial(E=1e7, nu=0.3, restitution=0.5, friction=0.4, rolling_friction=0.05)
    sim = ds.DEMSolver((-0.001, -0.001, -0.001), (side + 0.001, side + 0.001, h * gap + 0.01), mat, dt=2e-6)
    sim.add_wall(ds.PlaneWall((0, 0, 0), (0, 0, 1), name="floor"))
    for axis in (0, 1):
        for lo, sign in ((0.0, 1.0), (side, -1.0)):
            p, nrm = np.zeros(3), np.zeros(3)
            p[axis], nrm[axis] = lo, sign
            sim.add_wall(ds.PlaneWall(tuple(p), tuple(nrm)))
    g = np.arange(a) * gap + 0.995 * R
    x = np.stack(np.meshgrid(g, g, np.arange(h) * gap + 0.995 * R, indexing="ij"), -1).reshape(-1, 3)
    sim.add_particles(x, R, check_overlap=False)
    sim.build()
    sim.step(20)                                                # compile, first neighbour build
    steps = max(20, min(200, int(4e7 / sim.n)))
    t0 = time.perf_counter()
    sim.step(steps)
    x = sim.positions()                                         # (also waits for the device)
    wall = time.perf_counter() - t0
    if not np.isfinite(x).all():
        raise SystemExit("scale case diverged")
    peak = peak_rss_mb()
    return {"case": f"scale_{n_target}", "particles": sim.n, "steps": steps, "dt": sim.dt,
            "particle_steps_per_s": sim.n * steps / wall, "wall_s": wall,
            "contacts": int(sim.fields.nbr_n.to_numpy()[:sim.n].sum()), "rebuilds": sim.rebuilds,
            "scene_mb": round(peak - base, 1),
            "peak_rss_mb": peak, "threads": threads or os.cpu_count(), "arch": arch}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=1.0, help="seconds of discharge (default 1.0)")
    ap.add_argument("--arch", default="cpu", choices=("cpu", "gpu"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--beverloo", default=None, help="comma-separated orifice diameters (m) to fit Beverloo")
    ap.add_argument("--trace", action="store_true", help="include the discharged-mass trace in the JSON")
    ap.add_argument("--grad", action="store_true", help="run the gradient case grad_pile_300 only")
    ap.add_argument("--scale", action="store_true", help="10k ... 1M spheres (GPU: to 3M), one process each")
    ap.add_argument("--_one", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_scale_one", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._scale_one is not None:
        print(json.dumps(run_scale(a._scale_one, a.arch, a.threads)), flush=True)
        return
    if a.scale:
        for n in SCALE_GPU if a.arch == "gpu" else SCALE_CPU:
            cmd = [sys.executable, os.path.abspath(__file__), "--_scale_one", str(n), "--arch", a.arch] + \
                (["--threads", str(a.threads)] if a.threads else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            print(lines[-1] if out.returncode == 0 and lines else
                  json.dumps({"case": f"scale_{n}", "error": (out.stderr or out.stdout)[-2000:]}), flush=True)
        return
    if a.grad:
        print(json.dumps(run_grad_pile(a.arch, a.threads)), flush=True)
        return
    if a._one is not None:
        r = run_silo(a._one, a.duration, a.arch, a.threads)
        print(json.dumps(r))
        return
    orifices = [0.024]
    if a.beverloo:
        orifices = sorted(set(orifices + [float(s) for s in a.beverloo.split(",")]))
    results = []
    for D in orifices:
        cmd = [sys.executable, os.path.abspath(__file__), "--_one", str(D), "--duration", str(a.duration),
               "--arch", a.arch] + (["--threads", str(a.threads)] if a.threads else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            raise SystemExit(f"case with orifice {D} m failed")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        if not a.trace:
            r = {k: v for k, v in r.items() if k != "trace"}
        print(json.dumps(r), flush=True)
    if a.beverloo:
        print(json.dumps(silo_beverloo([r["flow_rate_kg_s"] for r in results], orifices)), flush=True)


if __name__ == "__main__":
    main()
