"""Tactile sensor benchmarks: one JSON object per case on stdout.

    python benchmarks/tactile.py                 # all cases, CPU, float32
    python benchmarks/tactile.py --case rigid --arch gpu

Cases (each in its own process, so ``peak_rss_mb`` is the case's own):

* ``dome_rigid_press_slide`` -- a DiffTactile-sized dome sensor (1,792 nodes, 8,100
  linear tets, stable Neo-Hookean, markers from the reference image) presses 0.5 mm into
  the rigid object J03_2.obj (scaled from mm; a 96^3 signed-distance grid: each surface
  node looks its distance up, no triangle search) and slides 2 mm along x with friction.
  ``ms_per_substep`` = median over 5 runs of 400 forward substeps (``FEMSolver.step``);
  ``backward_over_forward`` = the backward pass of a 400-substep differentiable rollout
  (``ds.rollout``, loss on the final marker pixels and the contact forces) over its
  forward pass (median of 3).

* ``dome_mpm_press`` -- the same dome pressing an elastic MPM object made from J03_2.obj
  (scaled to 30 mm: 27,000 particles at 1 mm, grid dx 2 mm, fixed corotated E = 5e4 Pa),
  coupled through the MPM grid (:class:`diffsim.FEMMPMCoupling`). ``ms_per_substep`` is
  the coupled substep, ``mpm_ms_per_substep`` the same object stepped alone (medians of
  5 alternating runs of 200 substeps) and ``overhead_over_mpm`` = coupled / MPM-only - 1.
  ``backward_over_forward``: the backward pass of a 200-substep differentiable coupled
  rollout (``ds.rollout`` of the coupling; loss on the marker pixels, the normal force and
  the object's particle positions; gradients for the elastomer's and the object's E)
  over its forward pass (median of 3).

* ``optical_image_640x480`` -- the optical tactile image (:class:`diffsim.OpticalTactile`,
  default settings: geometry every 4th pixel, three lights, 8-wide per-pixel MLP, the 137
  reference-image markers) of the dome of ``dome_rigid_press_slide`` after 200 substeps of
  the press. ``ms_per_frame``: forward (node positions -> image), ``backward_ms_per_frame``:
  backward of a pixel loss to the node positions, ``backward_over_forward`` their ratio,
  ``ms_per_frame_no_grad`` the forward without autograd; medians of 30 frames, in the
  benchmark's precision.

Fields: case, tets, nodes, particles (MPM particles; 0 here), substeps, dt,
ms_per_substep, backward_over_forward, peak_rss_mb, threads, arch, precision.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _memory import peak_rss_mb

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CASES = {"rigid": "dome_rigid_press_slide", "mpm": "dome_mpm_press", "optical": "optical_image_640x480"}


def _dome_over_rigid(dt, substeps):
    import diffsim as ds
    from diffsim.tactile.sensor import mount_sensor
    sim = ds.FEMSolver(dt=dt, gravity=(0, 0, 0), tape_substeps=substeps)
    obj = sim.add_collider(ds.MeshCollider(os.path.join(ROOT, "scenes", "data", "difftactile", "J03_2.obj"),
                                           scale=1e-3, resolution=96, name="object"))
    top = float(obj.mesh.vertices[:, 2].max())
    c = obj.mesh.vertices[obj.mesh.vertices[:, 2] > top - 1e-4].mean(0)
    press, slide = 0.5e-3 / (substeps * dt / 2), 2e-3 / (substeps * dt / 2)
    t_half = substeps * dt / 2
    pad, plate, sensor = mount_sensor(
        sim, ds.dome_pad(width=0.02, resolution=0.02 / 15, layers=6),
        ds.FEMMaterial(E=3e5, nu=0.45, density=1100, mass_damping=300),
        ds.PenaltyContact(stiffness=1e9, friction=0.8), apex=(c[0], c[1], top),
        velocity=lambda t: (0.0, 0.0, -press) if t < t_half else (slide, 0.0, 0.0), markers="image")
    return sim, sensor


def run_rigid(arch, threads, precision, substeps=400, dt=4e-6):
    import torch
    import diffsim as ds
    ds.init(arch=arch, threads=threads, precision=precision)
    sim, sensor = _dome_over_rigid(dt, substeps)
    sim.build()
    sim.step(substeps)                          # compile
    forward = []
    for _ in range(5):
        sim.reset()
        t0 = time.perf_counter()
        sim.step(substeps)
        forward.append(time.perf_counter() - t0)
    d = sim.diagnostics()
    penetration = sim.max_penetration

    def rollout():
        E = torch.tensor(3e5, dtype=ds.runtime.torch_dtype(), requires_grad=True)
        t0 = time.perf_counter()
        out = ds.rollout(sim, substeps, record_every=substeps // 4, params={"E": E})
        o = out.outputs
        r = sensor.read(out.final.x, o["force"][-1], o["driver_translation"][-1, 0], o["driver_rotation"][-1, 0])
        loss = (r["displacement_px"] ** 2).sum() + r["normal_force"]
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1
    rollout()                                   # compile the adjoint
    ratios = [b / f for f, b in (rollout() for _ in range(3))]
    return {"case": CASES["rigid"], "tets": sim.n_tets, "nodes": sim.n, "particles": 0, "substeps": substeps,
            "dt": dt, "ms_per_substep": 1e3 * statistics.median(forward) / substeps,
            "backward_over_forward": statistics.median(ratios), "normal_force_n": d["sensor_normal_force"],
            "max_penetration_m": penetration, "peak_rss_mb": peak_rss_mb(),
            "threads": threads or os.cpu_count(), "arch": arch, "precision": precision}


def _dome_over_mpm(dt):
    import diffsim as ds
    from diffsim.tactile.sensor import mount_sensor
    mpm = ds.MPMSolver(domain_min=(-0.025, -0.025, 0.0), domain_max=(0.025, 0.025, 0.05), grid=25, dt=dt,
                       gravity=(0, 0, 0))
    shape = ds.MeshShape(os.path.join(ROOT, "scenes", "data", "difftactile", "J03_2.obj"), scale=3.75e-4,
                         center=(0.0, 0.0, 0.0215))
    mpm.add_body(shape, ds.FixedCorotated(E=5e4, nu=0.3, density=1000), name="object", spacing=1e-3)
    top = float(mpm.positions()[:, 2].max())
    fem = ds.FEMSolver(dt=dt, gravity=(0, 0, 0), tape_substeps=200)
    pad, plate, sensor = mount_sensor(fem, ds.dome_pad(width=0.02, resolution=0.02 / 15, layers=6),
                 ds.FEMMaterial(E=3e5, nu=0.45, density=1100, mass_damping=300),
                 ds.PenaltyContact(stiffness=1e9, friction=0.8), apex=(0.0, 0.0, top + 5e-4),
                 velocity=(0.0, 0.0, -0.05), markers="image")
    return mpm, fem, sensor, ds.FEMMPMCoupling(mpm, fem, friction=0.8)


def run_mpm(arch, threads, precision, substeps=200, dt=4e-6):
    import taichi as ti
    import torch
    import diffsim as ds
    ds.init(arch=arch, threads=threads, precision=precision)
    mpm, fem, sensor, both = _dome_over_mpm(dt)
    both.build()
    both.step(2 * substeps)                     # compile, and the dome reaches the object
    mpm.step(substeps)                          # compile the MPM-only kernel
    coupled, alone = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        both.step(substeps)
        ti.sync()
        coupled.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        mpm.step(substeps)
        ti.sync()
        alone.append(time.perf_counter() - t0)
    d = both.diagnostics()
    c, m = statistics.median(coupled) / substeps, statistics.median(alone) / substeps
    weights = torch.linspace(-1.0, 1.0, 3 * mpm.n, dtype=ds.runtime.torch_dtype()).reshape(mpm.n, 3)

    def rollout():
        E_pad = torch.tensor(3e5, dtype=ds.runtime.torch_dtype(), requires_grad=True)
        E_obj = torch.tensor(5e4, dtype=ds.runtime.torch_dtype(), requires_grad=True)
        t0 = time.perf_counter()
        out = ds.rollout(both, substeps, record_every=substeps // 4,
                         params={"fem.E": E_pad, "mpm.object.E": E_obj})
        o = out.outputs
        r = sensor.read(out.final.fem.x, o["force"][-1], o["driver_translation"][-1, 0], o["driver_rotation"][-1, 0])
        loss = (r["displacement_px"] ** 2).sum() + r["normal_force"] + 1e3 * (weights * out.final.mpm.x).sum()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        assert E_pad.grad is not None and E_obj.grad is not None
        return t1 - t0, t2 - t1
    rollout()                                   # compile the adjoints
    ratios = [b / f for f, b in (rollout() for _ in range(3))]
    return {"case": CASES["mpm"], "tets": fem.n_tets, "nodes": fem.n, "particles": mpm.n, "substeps": substeps,
            "dt": dt, "ms_per_substep": 1e3 * c, "mpm_ms_per_substep": 1e3 * m, "overhead_over_mpm": c / m - 1.0,
            "backward_over_forward": statistics.median(ratios), "normal_force_n": d["sensor_normal_force"],
            "peak_rss_mb": peak_rss_mb(), "threads": threads or os.cpu_count(), "arch": arch,
            "precision": precision}


def run_optical(arch, threads, precision, substeps=200, dt=4e-6):
    import torch
    import diffsim as ds
    ds.init(arch=arch, threads=threads, precision=precision)
    if threads:
        torch.set_num_threads(threads)
    sim, sensor = _dome_over_rigid(dt, 2 * substeps)
    sim.build()
    sim.step(substeps)
    optics = ds.OpticalTactile(sensor)
    dtype = ds.runtime.torch_dtype()
    T, R = sim.drivers[0].translation, sim.drivers[0].rotation
    x = torch.as_tensor(sim.positions(), dtype=dtype)
    weights = torch.rand(3, optics.height, optics.width, dtype=dtype, generator=torch.Generator().manual_seed(0))
    fwd, bwd, plain = [], [], []
    for i in range(33):
        xg = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        img = optics(xg, T, R)
        t1 = time.perf_counter()
        (weights * img).sum().backward()
        t2 = time.perf_counter()
        with torch.no_grad():
            t3 = time.perf_counter()
            optics(x, T, R)
            t4 = time.perf_counter()
        if i >= 3:                              # warm-up
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            plain.append(t4 - t3)
    f, b = statistics.median(fwd), statistics.median(bwd)
    return {"case": CASES["optical"], "tets": sim.n_tets, "nodes": sim.n, "particles": 0, "width": optics.width,
            "height": optics.height, "stride": optics.stride, "markers": sensor.marker_count,
            "ms_per_frame": 1e3 * f, "backward_ms_per_frame": 1e3 * b, "backward_over_forward": b / f,
            "ms_per_frame_no_grad": 1e3 * statistics.median(plain), "peak_rss_mb": peak_rss_mb(),
            "threads": threads or os.cpu_count(), "torch_threads": torch.get_num_threads(), "arch": arch,
            "precision": precision}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=sorted(CASES) + ["all"], default="all")
    ap.add_argument("--arch", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", choices=["f32", "f64"], default="f32")
    ap.add_argument("--inline", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    cases = sorted(CASES) if a.case == "all" else [a.case]
    if a.inline:
        for c in cases:
            print(json.dumps({"rigid": run_rigid, "mpm": run_mpm, "optical": run_optical}[c](a.arch, a.threads, a.precision)), flush=True)
        return
    for c in cases:  # one process per case: peak memory is the case's own
        cmd = [sys.executable, os.path.abspath(__file__), "--inline", "--case", c, "--arch", a.arch,
               "--precision", a.precision] + (["--threads", str(a.threads)] if a.threads else [])
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
