"""MPM benchmarks: one JSON object per case on stdout.

    python benchmarks/mpm.py                 # all default cases, CPU, all cores
    python benchmarks/mpm.py --arch gpu
    python benchmarks/mpm.py --case grad_30k --threads 1
    python benchmarks/mpm.py --case memory_1000steps_30k
    python benchmarks/mpm.py --scale         # 10k ... 1M particles (GPU: --arch gpu --scale, to 10M)

Cases (each in its own process, so that ``peak_rss_mb`` is the case's own):

* ``elastic_box_118k`` -- the Genesis comparison scene: a 117,649-particle elastic box
  (fixed-corotated, E = 3e5 Pa, nu = 0.2, 1000 kg/m^3), edge 0.49 m, particle spacing
  0.01 m, grid 64 on a 1 m cube, substep 2e-4 s, falling onto the floor.
* ``sand_box_118k`` -- the same box of Drucker-Prager sand (SVD + return mapping).
* ``grad_30k`` -- a differentiable 100-step rollout of 29,791 particles (segments of
  K = 10, default 1 GiB tape memory: here every segment's tape fits, ~0.7 GB, so nothing
  is recomputed), loss on the final positions, gradients for E and the initial
  velocities; ``backward_over_forward`` = backward / forward wall time (median of 3).
* ``grad_30k_recompute`` -- the same with ``tape_memory=0``: pure checkpointing, every
  segment but the last is recomputed in the backward pass.
* ``memory_1000steps_30k`` (not in the default list: ~10x longer) -- the same rollout over
  1000 steps with the default checkpointing; reports the peak memory.
* ``grad_neural_512`` -- a differentiable 60-substep rollout of a NeuralMaterial (structured
  elastic + plastic networks, width 64, NCLaw-style) on a 512-particle box thrown onto the
  floor (lands half-way; grid 32, dt 1e-4, f32); gradients of the final positions for every network weight;
  forward/backward medians of 3 after a warm-up.
* ``scale_<N>`` (``--scale``) -- the elastic box at other sizes: ``n^3`` particles for
  N = 10k, 30k, 100k, 300k, 1M (GPU also 3M and 10M), the Genesis scene's proportions kept
  (box edge 0.49 of the domain, ~3.8 particles per cell: grid ``64 n / 49``, spacing and
  substep ``49 / n`` of the 118k scene's). Timed substeps shrink with size (at least 20);
  ``scene_mb`` per size: peak memory above the process before the scene (fields, grid,
  set-up arrays, kernel compilation); memory per particle is its slope between sizes.

Fields: case, particles, grid, steps, dt, particle_steps_per_s, wall_s (time stepping),
peak_rss_mb, threads, arch, precision (+ forward_s, backward_s, backward_over_forward).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _memory import peak_rss_mb, rss_mb

DEFAULT_CASES = ("elastic_box_118k", "sand_box_118k", "grad_30k", "grad_30k_recompute")
ALL_CASES = DEFAULT_CASES + ("memory_1000steps_30k", "grad_neural_512")


def _box_solver(ds, material, edge_particles, grid=64, dt=2e-4, spacing=0.01):
    import numpy as np
    sp = spacing
    g = (np.arange(edge_particles) + 0.5) * sp
    x = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    x += np.array([0.5, 0.5, 0.5]) - x.mean(0)
    x[:, 2] += 0.5 - 0.5 * edge_particles * sp - 3.0 / grid - 0.02  # near the floor
    sim = ds.MPMSolver(domain_max=(1.0, 1.0, 1.0), grid=grid, dt=dt, walls="separate")
    sim.add_particles(x, material, volume=sp ** 3, spacing=sp, name="box")
    return sim.build()


def _sync():
    import taichi as ti
    ti.sync()


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def case_forward(ds, name, material, steps, repeats=5, sim=None):
    sim = sim or _box_solver(ds, material, 49)
    sim.step(10)  # compile + warm up
    _sync()
    chunk = max(1, steps // repeats)
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sim.step(chunk)
        _sync()
        walls.append(time.perf_counter() - t0)
    sim.diagnostics()  # the run stayed finite
    wall = _median(walls)
    return {"case": name, "particles": sim.n, "grid": list(sim.grid_shape), "steps": chunk * repeats,
            "dt": sim.dt, "particle_steps_per_s": sim.n * chunk / wall, "wall_s": sum(walls),
            "median_of": repeats}


def case_grad(ds, name, steps, checkpoint_every, repeats=3, tape_memory=None):
    import torch
    sim = _box_solver(ds, ds.FixedCorotated(E=3e5, nu=0.2), 31)
    s0 = sim.current_state()
    E = torch.tensor(3e5, dtype=torch.float64, requires_grad=True)
    v0 = s0.v.clone().requires_grad_(True)
    state = ds.MPMState(s0.x, v0, s0.C, s0.F)
    # warm up / compile every kernel of the differentiable path
    f, _ = ds.rollout(sim, 2, state=state, params={"box": {"E": E}}, checkpoint_every=1)
    f.x.sum().backward()
    E.grad = None
    fwds, bwds = [], []
    for _ in range(repeats):
        E.grad = None
        v0.grad = None
        sim.set_state({k: getattr(s0, k) for k in ("x", "v", "C", "F")})
        _sync()
        t0 = time.perf_counter()
        final, _ = ds.rollout(sim, steps, state=state, params={"box": {"E": E}},
                              checkpoint_every=checkpoint_every, tape_memory=tape_memory)
        loss = (final.x[:, 2] ** 2).sum()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        assert E.grad is not None and torch.isfinite(E.grad) and torch.isfinite(v0.grad).all()
        fwds.append(t1 - t0)
        bwds.append(t2 - t1)
    ratios = [b / f for f, b in zip(fwds, bwds)]
    fwd, bwd = _median(fwds), _median(bwds)
    return {"case": name, "particles": sim.n, "grid": list(sim.grid_shape), "steps": steps, "dt": sim.dt,
            "particle_steps_per_s": sim.n * steps / fwd, "wall_s": sum(fwds) + sum(bwds), "forward_s": fwd,
            "backward_s": bwd, "backward_over_forward": _median(ratios), "median_of": repeats,
            "checkpoint_every": checkpoint_every if checkpoint_every is not None else "default (sqrt)",
            "tape_memory": tape_memory if tape_memory is not None else "default (1 GiB)"}


SCALE_CPU = (10_000, 30_000, 100_000, 300_000, 1_000_000)
SCALE_GPU = SCALE_CPU + (3_000_000, 10_000_000)


def case_scale(ds, name, steps):
    """``scale_<N>``: the elastic box with about N particles (see the module docstring)."""
    n_target = int(name.split("_")[1])
    edge = max(2, round(n_target ** (1.0 / 3.0)))
    k = 49.0 / edge
    grid = max(16, round(64 / k))
    material = ds.FixedCorotated(E=3e5, nu=0.2, density=1000.0)
    base = rss_mb()                      # the process before the scene (torch, Taichi)
    sim = _box_solver(ds, material, edge, grid=grid, dt=2e-4 * k, spacing=0.01 * k)
    timed = max(20, min(steps, int(4e7 / sim.n)))
    out = case_forward(ds, name, None, timed, sim=sim)
    out["scene_mb"] = round(peak_rss_mb() - base, 1)
    return out


def case_grad_neural(ds, name, steps=60, repeats=3):
    import numpy as np
    import torch
    from diffsim.learned.constitutive import make_law
    torch.manual_seed(0)
    el, pl = make_law("structured", plastic=True, width=64, depth=2, stress_scale=2e4,
                      dtype=ds.runtime.torch_dtype())
    mat = ds.NeuralMaterial(elasticity=el, plasticity=pl, density=1000.0, wave_speed_estimate=5.0)
    sim = ds.MPMSolver(grid=32, dt=1e-4)
    g = 0.5 + (np.arange(8) - 3.5) * (0.5 / 32)
    x = np.stack(np.meshgrid(g, g, g - 0.34, indexing="ij"), -1).reshape(-1, 3)   # 1 cm above the floor
    sim.add_particles(x, mat, name="law", velocity=(0.2, 0.0, -2.0))                # lands after ~3 ms
    sim.build()
    params = [p for p in list(el.parameters()) + list(pl.parameters())]
    w = torch.randn(sim.n, 3, generator=torch.Generator().manual_seed(1))

    def once():
        for p in params:
            p.grad = None
        t0 = time.perf_counter()
        final, _ = ds.rollout(sim, steps)
        loss = (final.x * w.to(final.x.dtype)).sum()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
        return t1 - t0, t2 - t1
    once()
    fwds, bwds = zip(*[once() for _ in range(repeats)])
    fwd, bwd = _median(fwds), _median(bwds)
    return {"case": name, "particles": sim.n, "grid": list(sim.grid_shape), "steps": steps, "dt": sim.dt,
            "forward_s": fwd, "backward_s": bwd, "backward_over_forward": _median([b / f for f, b in zip(fwds, bwds)]),
            "median_of": repeats, "parameters": sum(p.numel() for p in params)}


def run_case(name, args):
    import diffsim as ds
    ds.init(arch=args.arch, precision=args.precision, threads=args.threads)
    if name.startswith("scale_"):
        out = case_scale(ds, name, args.steps)
    elif name == "elastic_box_118k":
        out = case_forward(ds, name, ds.FixedCorotated(E=3e5, nu=0.2, density=1000.0), args.steps)
    elif name == "sand_box_118k":
        import math
        out = case_forward(ds, name, ds.DruckerPrager(E=3e5, nu=0.2, friction_angle=math.radians(30),
                                                      density=1000.0), args.steps)
    elif name == "grad_30k":
        out = case_grad(ds, name, 100, 10)
    elif name == "grad_neural_512":
        out = case_grad_neural(ds, name)
    elif name == "grad_30k_recompute":
        out = case_grad(ds, name, 100, 10, tape_memory=0)
    elif name == "memory_1000steps_30k":
        out = case_grad(ds, name, 1000, None, repeats=1)
    else:
        raise SystemExit(f"unknown case {name!r}; cases: {ALL_CASES} or scale_<N>")
    import taichi as ti
    out.update(peak_rss_mb=peak_rss_mb(), threads=args.threads or os.cpu_count(), arch=args.arch,
               precision=args.precision, device=str(ti.lang.impl.current_cfg().arch).split(".")[-1])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", action="append", help=f"case(s) to run (default: {', '.join(DEFAULT_CASES)})")
    p.add_argument("--arch", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", default="f32", choices=("f32", "f64"))
    p.add_argument("--steps", type=int, default=200, help="timed substeps of the forward cases")
    p.add_argument("--inline", action="store_true", help="run in this process (one case)")
    p.add_argument("--scale", action="store_true", help="the elastic box at 10k ... 1M particles (GPU: to 10M)")
    args = p.parse_args()
    cases = args.case or list(DEFAULT_CASES)
    if args.scale:
        cases = [f"scale_{n}" for n in (SCALE_GPU if args.arch == "gpu" else SCALE_CPU)]
    if args.inline or len(cases) == 1 and os.environ.get("DIFFSIM_BENCH_CHILD"):
        for c in cases:
            print(json.dumps(run_case(c, args)), flush=True)
        return
    for c in cases:
        cmd = [sys.executable, __file__, "--case", c, "--arch", args.arch, "--precision", args.precision,
               "--steps", str(args.steps)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        r = subprocess.run(cmd, env=dict(os.environ, DIFFSIM_BENCH_CHILD="1"), capture_output=True, text=True)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if r.returncode != 0 or not lines:
            print(json.dumps({"case": c, "error": (r.stderr or r.stdout)[-2000:]}), flush=True)
        else:
            print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
