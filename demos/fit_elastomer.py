"""Recover a tactile sensor's elastomer stiffness (Young's modulus E) and its contact
stiffness from a marker-displacement sequence, by gradient descent through the whole press
(``diffsim.rollout`` + ``TactileSensor.read``).

A dome sensor (FEM, markers detected in the DiffTactile reference image, fisheye camera)
is pressed 0.27 mm into a soft FEM block (E = 3e4 Pa, known: a soft object, so that the
sensor's own deformation depends on its E) and held. The "observed"
marker pixels at 8 instants come from hidden values (E = 2.5e5 Pa, contact stiffness
5e8 Pa/m); the fit starts a factor of 3 off (E = 7.5e5, 1.5e9) and runs L-BFGS (strong
Wolfe line search) on log-parameters through all 2400 substeps (one tape chunk: the
body-body contact pairs are fixed for the whole press, so the loss is smooth in the
parameters). ~2-4 min on 2 CPU cores (float64).

    python demos/fit_elastomer.py [--iterations 20]
"""
import argparse
import time

import numpy as np
import torch

import diffsim as ds
from diffsim import runtime
from diffsim.fitting import fit_log_parameters

HIDDEN = {"E": 2.5e5, "contact_stiffness": 5e8}
START = {"E": 7.5e5, "contact_stiffness": 1.5e9}
SPEED = 0.03          # m/s, plate approach speed
DT = 5e-6             # s
OBJECT_E = 3e4        # Pa: a soft object, so that the sensor's own deformation tells its E
DAMPING = 6000.0      # 1/s, mass-proportional: about critical for the pad's first mode (quasi-static press)


def build(tape_substeps=2400):
    """The dome pad facing down over a soft block; returns ``(sim, sensor)``. The tape
    holds the whole rollout (one chunk: smooth in the parameters)."""
    sim = ds.FEMSolver(dt=DT, gravity=(0, 0, 0), tape_substeps=tape_substeps)
    down = np.diag([1.0, -1.0, -1.0])                               # pad's +z (the dome) faces -z
    mesh = ds.dome_pad(width=0.02, thickness=0.003, cap_height=0.003, cap_radius=0.02, resolution=0.0015)
    h = float(mesh.vertices[:, 2].max())
    top = 0.004                                                     # block top (m)
    pad = sim.add_body(mesh, ds.FEMMaterial(E=5e5, nu=0.45, density=1100, mass_damping=DAMPING),
                       contact=ds.PenaltyContact(stiffness=1e9, friction=1.0),
                       position=(0, 0, top + h + 5e-5), rotation=down, name="sensor")
    plate = sim.add_driver(pad, pad.nodes_where(lambda X: X[:, 2] > top + h + 5e-5 - 1e-9), name="plate")
    block = sim.add_body(ds.box_tet_mesh((0.016, 0.016, top), (8, 8, 3), origin=(-0.008, -0.008, 0.0)),
                         ds.FEMMaterial(E=OBJECT_E, nu=0.4, density=1100, mass_damping=DAMPING),
                         contact=ds.PenaltyContact(stiffness=1e9, friction=1.0), name="object")
    sim.fix_nodes(block, block.nodes_where(lambda X: X[:, 2] < 1e-9), name="table")
    sensor = ds.TactileSensor(sim, pad, plate, frame=down, markers="image")
    return sim, sensor


def press_velocity(records, every):
    """Plate velocity per record interval: approach for 0.32 mm (0.27 mm beyond first
    touch), then hold."""
    vel = torch.zeros((records, 2, 6), dtype=torch.float64)
    travel = 0.0
    for r in range(records):
        if travel < 3.2e-4 - 1e-12:
            vel[r, 0, 2] = -SPEED
            travel += SPEED * every * DT
    return vel


def marker_sequence(sim, sensor, params, records=8, every=300):
    vel = press_velocity(records, every)
    out = ds.rollout(sim, records * every, record_every=every, params=params,
                     control={d.name: vel[:, i] for i, d in enumerate(sim.drivers)})
    o = out.outputs
    seq = [sensor.read(s.x, None, o["driver_translation"][r, 0], o["driver_rotation"][r, 0])["markers_px"]
           for r, (_, s) in enumerate(out.records)]
    return torch.stack(seq)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=20, help="L-BFGS iterations at most")
    a = ap.parse_args(argv)
    if not runtime.ensure_f64():
        raise SystemExit("this demo needs float64 gradients: diffsim.init(precision='f64')")
    f64 = torch.float64
    sim, sensor = build()
    t0 = time.perf_counter()
    with torch.no_grad():
        observed = marker_sequence(sim, sensor, {k: torch.tensor(v, dtype=f64) for k, v in HIDDEN.items()})
    print(f"observed {observed.shape[0]} frames of {observed.shape[1]} markers; largest marker motion "
          f"{(observed - observed[0:1]).abs().max().item() + (observed[0] - torch.as_tensor(sensor.ref_px)).abs().max().item():.2f} px",
          flush=True)

    def report(evaluation, loss, params):
        print(f"eval {evaluation:3d}  loss {loss:.4e} px^2  E {params['E']:.5g} Pa  "
              f"contact stiffness {params['contact_stiffness']:.4g} Pa/m  ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    final, losses = fit_log_parameters(lambda p: ((marker_sequence(sim, sensor, p) - observed) ** 2).mean(),
                                       START, a.iterations, tolerance_grad=1e-12, report=report)
    for k, v in final.items():
        print(f"{k}: fitted {v:.5g}, hidden {HIDDEN[k]:.5g}, error {abs(v - HIDDEN[k]) / HIDDEN[k]:.2%}")
    print(f"{len(losses)} evaluations in {time.perf_counter() - t0:.0f} s")
    return final


if __name__ == "__main__":
    main()
