"""Identify an MPM object's stiffness by touching it: gradients through the FEM-MPM
coupling (``diffsim.rollout``) from what a tactile sensor reads.

A flat GelSight-style pad (FEM, a grid of markers) is pushed down onto a soft jelly block
(MPM, fixed corotated, resting on a sticky floor) and reads its normal force over time.
The "observed" force trace comes from a hidden Young's modulus (3e4 Pa); the fit starts a
factor of 3 off (9e4 Pa) and runs L-BFGS on log E through the whole press, each
evaluation a differentiable coupled rollout (sensor FEM + MPM object + grid contact).
~1 min on 2 CPU cores (float64).

    python demos/fit_object_by_touch.py [--iterations 15] [--substeps 600]
"""
import argparse
import time

import torch

import diffsim as ds
from diffsim import runtime
from diffsim.fitting import fit_log_parameters

HIDDEN_E = 3e4        # Pa
START_E = 9e4         # Pa
DT = 4e-6             # s
SPEED = 0.2           # m/s, the pad's approach
EVERY = 50            # substeps per force reading


def build():
    """Jelly block on a sticky floor and a pad just above it; returns ``(coupling, sensor)``."""
    mpm = ds.MPMSolver(domain_min=(-0.01, -0.01, 0.0), domain_max=(0.01, 0.01, 0.02), grid=20, dt=DT,
                       gravity=(0, 0, 0), walls={"-z": "sticky"})
    mpm.add_body(ds.Box((0.0, 0.0, 0.006), (0.008, 0.008, 0.006)),
                 ds.FixedCorotated(E=HIDDEN_E, nu=0.3, density=1000), name="jelly")
    top = float(mpm.positions()[:, 2].max())
    fem = ds.FEMSolver(dt=DT, gravity=(0, 0, 0), tape_substeps=200)
    pad, plate, sensor = ds.mount_sensor(fem, ds.flat_pad(0.006, 0.006, 0.0015, 0.0015),
                                         ds.FEMMaterial(E=2e5, nu=0.45, density=1100, mass_damping=300),
                                         apex=(0, 0, top + 0.2e-3), velocity=(0, 0, -SPEED), markers="grid",
                                         marker_grid=(5, 5))
    return ds.FEMMPMCoupling(mpm, fem, friction=0.5), sensor


def force_trace(both, sensor, E, substeps):
    """The sensor's normal force (N) averaged over each ``EVERY`` substeps of the press."""
    out = ds.rollout(both, substeps, record_every=EVERY, params={"mpm.jelly.E": E})
    o = out.outputs
    return torch.stack([sensor.read(s.fem.x, o["force"][r], o["driver_translation"][r, 0],
                                    o["driver_rotation"][r, 0])["normal_force"]
                        for r, (_, s) in enumerate(out.records)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=15, help="L-BFGS iterations at most")
    ap.add_argument("--substeps", type=int, default=600, help="length of the press (multiple of 200)")
    a = ap.parse_args(argv)
    if a.substeps < 200 or a.substeps % 200:
        raise SystemExit("--substeps must be a positive multiple of 200 (the FEM tape chunk)")
    if not runtime.ensure_f64():
        raise SystemExit("this demo needs float64 gradients: diffsim.init(precision='f64')")
    both, sensor = build()
    t0 = time.perf_counter()
    with torch.no_grad():
        observed = force_trace(both, sensor, torch.tensor(HIDDEN_E, dtype=torch.float64), a.substeps)
    print("observed normal force (N) per", EVERY, "substeps:", [round(f, 4) for f in observed.tolist()], flush=True)
    scale = float(observed.abs().max()) ** 2

    def report(evaluation, loss, params):
        print(f"eval {evaluation:3d}  loss {loss:.4e}  E {params['E']:.6g} Pa  ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    fitted, losses = fit_log_parameters(
        lambda p: ((force_trace(both, sensor, p["E"], a.substeps) - observed) ** 2).mean() / scale,
        {"E": START_E}, a.iterations, tolerance_grad=1e-14, report=report)
    E = fitted["E"]
    print(f"E: fitted {E:.6g} Pa, hidden {HIDDEN_E:.6g} Pa, error {abs(E - HIDDEN_E) / HIDDEN_E:.3%}; "
          f"{len(losses)} evaluations in {time.perf_counter() - t0:.0f} s")
    return E


if __name__ == "__main__":
    main()
