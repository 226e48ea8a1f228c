"""Inverse design through the NeuralDEM surrogate: the hopper angle that gives a target
outflow rate, found by gradient descent on the surrogate's rate, then verified by running
the DEM at the answer.

The surrogate's outflow rate (the steady slope of its discharge curve, from the flux of its
fields through the slot) is differentiable in the angle; Newton steps with the autograd
derivative, safeguarded by a bracket, reach the target within 0.5% in a few evaluations. The
DEM run at the answer (scenes/dem_hopper.py, 2,000 spheres) reports its own rate.

    python demos/neuraldem_design.py [--model scenes/data/neuraldem/hopper.pt] [--target 0.15]
                                     [--friction 0.5] [--rolling-friction 0.05] [--no-verify]
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "scenes" / "dem_hopper.py"


def design(model, target: float, friction: float, rolling: float, tolerance: float = 0.005, iters: int = 20):
    """(angle, history): the angle whose surrogate outflow rate is ``target`` within
    ``tolerance`` (relative): a coarse scan of the trained angle range brackets it, then
    Newton steps with the autograd derivative inside the bracket (bisection when a step
    would leave it); the best evaluated angle is returned."""
    lo, hi = model.stats["ranges"]["angle"]

    def evaluate(angle):
        a = torch.tensor(angle, dtype=torch.float64, requires_grad=True)
        rate = model.outflow_rate({"angle": a, "friction": friction, "rolling_friction": rolling})
        (slope,) = torch.autograd.grad(rate, a)
        return float(rate.detach()), float(slope)

    history = []
    # a coarse scan first (the learned rate need not be monotonic): the bracket is the
    # first pair of neighbouring angles whose rates straddle the target
    grid = np.linspace(lo, hi, 13)
    with torch.no_grad():
        rates = [float(model.outflow_rate({"angle": torch.tensor(g, dtype=torch.float64), "friction": friction,
                                           "rolling_friction": rolling})) for g in grid]
    cross = [i for i in range(12) if (rates[i] - target) * (rates[i + 1] - target) <= 0]
    if not cross:
        raise SystemExit(f"target {target} kg/s lies outside the surrogate's rates over the trained angles "
                         f"[{lo:.3g}, {hi:.3g}] deg: {min(rates):.4g}..{max(rates):.4g} kg/s")
    i = cross[0]
    a, b, falling = grid[i], grid[i + 1], rates[i] > rates[i + 1]
    angle = float(a + (b - a) * (rates[i] - target) / (rates[i] - rates[i + 1] or 1.0))
    for k in range(iters):
        rate, slope = evaluate(angle)
        history.append({"iteration": k, "angle": angle, "rate": rate, "d_rate_d_angle": slope})
        miss = rate - target
        if abs(miss) <= tolerance * target or b - a < 1e-3:
            break
        if (miss > 0) == falling:                    # on the far side of the target: move the bracket's start
            a = angle
        else:
            b = angle
        step = angle - miss / slope if slope else None
        angle = step if step is not None and a < step < b else 0.5 * (a + b)
    best = min(history, key=lambda r: abs(r["rate"] - target))
    return best["angle"], history


def verify(angle: float, friction: float, rolling: float, duration: float) -> dict:
    """The DEM's own figures at ``angle``: a run of scenes/dem_hopper.py (in a temporary folder)."""
    import tempfile

    from diffsim.runner import run_scene
    from diffsim.runtime import init
    from diffsim.scene import build_scene
    init(arch="cpu", precision="f32")
    scene = build_scene(str(SCENE), {"angle": angle, "friction": friction, "rolling_friction": rolling,
                                     "duration": duration})
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        summary = run_scene(scene, Path(out) / "run", progress=True, video=False)
        return {**summary["outputs"], "wall_s": time.perf_counter() - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "scenes" / "data" / "neuraldem" / "hopper.pt"))
    ap.add_argument("--target", type=float, default=0.15, help="outflow rate wanted (kg/s)")
    ap.add_argument("--friction", type=float, default=0.5)
    ap.add_argument("--rolling-friction", type=float, default=0.05)
    ap.add_argument("--no-verify", action="store_true", help="skip the DEM run at the answer")
    args = ap.parse_args()
    from diffsim.learned.neuraldem import NeuralDEM
    model = NeuralDEM.load(args.model, dtype=torch.float64)
    model.check_conditions({"friction": args.friction, "rolling_friction": args.rolling_friction})
    t0 = time.perf_counter()
    angle, history = design(model, args.target, args.friction, args.rolling_friction)
    seconds = time.perf_counter() - t0
    for row in history:
        print(json.dumps(row))
    best = min(history, key=lambda r: abs(r["rate"] - args.target))
    result = {"target": args.target, "angle": angle, "surrogate_rate": best["rate"],
              "surrogate_evaluations": len(history), "design_s": seconds}
    if not args.no_verify:
        dem = verify(angle, args.friction, args.rolling_friction, float(model.stats["ranges"]["time"][1]))
        result.update(dem_rate=dem["outflow_rate"], dem_regime=dem["regime"], dem_wall_s=dem["wall_s"],
                      dem_error=abs(dem["outflow_rate"] - args.target) / args.target)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
