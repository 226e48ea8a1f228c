"""Recover a tactile sensor's elastomer stiffness (Young's modulus E) and the contact
friction coefficient from a sequence of optical tactile images (GelSight-style RGB,
:class:`diffsim.OpticalTactile`), by gradient descent through the whole press-and-slide
(``diffsim.rollout`` + the image renderer).

The scene of ``fit_elastomer.py``: a dome sensor (FEM, markers from the DiffTactile
reference image, fisheye camera) over a soft FEM block (E = 3e4 Pa, known). The plate
presses 0.32 mm and then slides 0.6 mm along x, so that the contact slips partly and the
membrane's shear (hence the image) depends on the friction. The "observed" 640 x 480
images at 9 instants come from hidden values (E = 2.5e5 Pa, friction 0.3); the fit is not
told them and starts a factor of 3 off (E = 7.5e5 Pa, friction 0.1). L-BFGS (strong Wolfe
line search) on log-parameters through all 3,600 substeps (one tape chunk, so the
body-body contact pairs are fixed and the loss is smooth); the loss is the mean squared
pixel difference over all frames relative to the observed images' own change from the
first frame. ~3-6 min on 2 CPU cores (float64).

    python demos/fit_elastomer_from_images.py [--iterations 15] [--save fit.png]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import diffsim as ds  # noqa: E402
from diffsim import runtime  # noqa: E402
from diffsim.fitting import fit_log_parameters  # noqa: E402
from diffsim.tactile.optical import to_uint8  # noqa: E402
from fit_elastomer import DT, build  # noqa: E402  (the same sensor and block)

HIDDEN = {"E": 2.5e5, "friction": 0.3}
START = {"E": 7.5e5, "friction": 0.1}
SPEED = 0.05                    # m/s, plate speed (press, then slide)
PRESS, SLIDE = 3.2e-4, 6e-4     # m
RECORDS, EVERY = 9, 400         # frames observed, substeps between them


def plate_velocity():
    """Plate velocity per record interval: down for PRESS, then along x for SLIDE."""
    vel = torch.zeros((RECORDS, 2, 6), dtype=torch.float64)
    down = along = 0.0
    step = SPEED * EVERY * DT
    for r in range(RECORDS):
        if down < PRESS - 1e-12:
            f = min(1.0, (PRESS - down) / step)
            vel[r, 0, 2] = -SPEED * f
            down += step * f
            if f < 1.0:
                vel[r, 0, 0] = SPEED * (1.0 - f)
                along += step * (1.0 - f)
        elif along < SLIDE - 1e-12:
            f = min(1.0, (SLIDE - along) / step)
            vel[r, 0, 0] = SPEED * f
            along += step * f
    return vel


def image_sequence(sim, optics, params):
    """(RECORDS, 3, 480, 640) images at the end of each record interval."""
    vel = plate_velocity()
    out = ds.rollout(sim, RECORDS * EVERY, record_every=EVERY, params=params,
                     control={d.name: vel[:, i] for i, d in enumerate(sim.drivers)})
    o = out.outputs
    return torch.stack([optics(s.x, o["driver_translation"][r, 0], o["driver_rotation"][r, 0])
                        for r, (_, s) in enumerate(out.records)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=15, help="L-BFGS iterations at most")
    ap.add_argument("--start", default=None, metavar="E=...,friction=...",
                    help=f"start values (default {','.join(f'{k}={v:g}' for k, v in START.items())})")
    ap.add_argument("--save", default=None, help="write the observed and fitted last frames side by side (PNG)")
    a = ap.parse_args(argv)
    if not runtime.ensure_f64():
        raise SystemExit("this demo needs float64 gradients: diffsim.init(precision='f64')")
    f64 = torch.float64
    start = dict(START)
    for item in (a.start.split(",") if a.start else []):
        key, _, value = item.partition("=")
        if key not in START or not value:
            raise SystemExit(f"--start: expected E=...,friction=..., got {a.start!r}")
        start[key] = float(value)
    sim, sensor = build(tape_substeps=RECORDS * EVERY)
    optics = ds.OpticalTactile(sensor)
    t0 = time.perf_counter()
    with torch.no_grad():
        observed = image_sequence(sim, optics, {k: torch.tensor(v, dtype=f64) for k, v in HIDDEN.items()})
    scale = ((observed - observed[0:1]) ** 2).mean()
    print(f"observed {observed.shape[0]} images of {observed.shape[3]} x {observed.shape[2]} px "
          f"({time.perf_counter() - t0:.0f} s); rms change from the first frame {scale.sqrt().item():.4f}",
          flush=True)

    def report(evaluation, loss, params):
        print(f"eval {evaluation:3d}  loss {loss:.4e}  E {params['E']:.5g} Pa  friction {params['friction']:.4f}  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    final, losses = fit_log_parameters(lambda p: ((image_sequence(sim, optics, p) - observed) ** 2).mean() / scale,
                                       start, a.iterations, tolerance_grad=1e-10, report=report)
    errors = {k: abs(v - HIDDEN[k]) / HIDDEN[k] for k, v in final.items()}
    for k, v in final.items():
        print(f"{k}: fitted {v:.5g}, hidden {HIDDEN[k]:.5g}, start {start[k]:.5g}, error {errors[k]:.2%}")
    print(f"{len(losses)} evaluations in {time.perf_counter() - t0:.0f} s")
    if a.save:
        import imageio.v3 as iio
        with torch.no_grad():
            fitted = image_sequence(sim, optics, {k: torch.tensor(v, dtype=f64) for k, v in final.items()})
        iio.imwrite(a.save, np.concatenate([to_uint8(observed[-1]), to_uint8(fitted[-1])], axis=1))
        print(f"wrote {a.save} (observed | fitted, last frame)")
    return final, errors


if __name__ == "__main__":
    main()
