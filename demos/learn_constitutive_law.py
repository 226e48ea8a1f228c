"""Learn constitutive laws from recorded motions, and test how far they generalise.

For each material (jelly = fixed-corotated, plasticine = von Mises, sand = Drucker-Prager)
the `material_probe` scene records full-state training trajectories of the chosen
motions (`--motions`, default each material's RECIPE: press, shear and twist, and for
jelly and plasticine a slam. `press`: jelly and plasticine are
pressed by an indenter for 0.08 s that then retracts, sand is a collapsing column;
`shear`: the block is thrown sideways onto the floor that holds its bottom; `twist`: spun
about the vertical axis on it; `stretch`: thrown upwards from it; `slam`: thrown straight
down onto it at 0.8 m/s, the largest compression). Three law families of
the same size are trained on them inside the differentiable MPM (teacher forcing, Adam
with the family's learning rate, gradient clipping):

* `potential`: an isotropic, input-convex energy of the invariants; stress = its
  derivative (`PotentialElasticity`, `IsotropicPlasticity`),
* `structured`: rotation-equivariant, zero stress at rest, but not isotropic
  (`ElasticityNet`, `PlasticityNet`),
* `mlp`: the unstructured baseline (raw entries of F in, stress out).

    python demos/learn_constitutive_law.py                  # train (and save laws) + evaluate
    python demos/learn_constitutive_law.py --eval           # evaluate saved laws only
    python demos/learn_constitutive_law.py --materials jelly --iters 40   # quicker
    python demos/learn_constitutive_law.py --motions press,shear,twist    # several motions

Evaluation (position MSE against the reference material, mm^2): the training (press)
trajectory, twice its horizon, a new initial velocity, a new shape (the DiffTactile mesh
E15_0), a finer grid, and a stability check at 4x the training horizon. Writes
OUT/results.md, OUT/results.json and side-by-side images OUT/compare_<material>_<test>.png
(reference | one column per law).
"""
import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import diffsim as ds
from diffsim.learned.constitutive import KINDS, make_law
from diffsim.learned.training import LawTrainer, load_law, save_law, simulate_with_law
from diffsim.scene import build_scene
from diffsim.trajectory import record

PROBE = Path(__file__).resolve().parents[1] / "scenes" / "material_probe.py"
MATERIALS = {  # options of material_probe, stress scale (Pa), plastic law?
    "jelly": ({"material": "jelly", "E": 2e4, "release": 0.08}, 2e4, False),
    "plasticine": ({"material": "plasticine", "E": 5e4, "yield_stress": 3e3, "release": 0.08}, 5e4, True),
    "sand": ({"material": "sand", "E": 1e5}, 1e5, True),
}
# training motions (material_probe options on top of the material's); the new-velocity
# test's velocity is none of these
MOTIONS = {
    "press": lambda material: {},
    "shear": lambda material: {"velocity": (-0.3, 0.5, -0.3) if material != "sand" else (-0.2, 0.4, 0.0)},
    "twist": lambda material: {"spin": 8.0},
    "stretch": lambda material: {"velocity": (0.0, 0.0, 0.4)},
    "slam": lambda material: {"velocity": (0.0, 0.0, -0.8)},
}
# the recipe per material (docs/learned_laws/generalisation.md): a slam brought the
# new-velocity error from 4.1x to 1.9x the training error for jelly and from 4.2x to 2.8x for
# plasticine (whose law fits it since its yield surface is learned fast enough); sand's
# column was not slammed (its three motions already generalise)
RECIPE = {"jelly": ("press", "shear", "twist", "slam"), "plasticine": ("press", "shear", "twist", "slam"),
          "sand": ("press", "shear", "twist")}
TESTS = ["training", "double_horizon", "new_velocity", "new_shape", "finer_grid", "stability_4x"]
COLORS = {"potential": (44, 160, 44), "structured": (31, 119, 180), "mlp": (214, 39, 40)}
# Adam learning rates: the potential law's weights sit behind softplus (non-negative
# weights), a step moves its stiffness less than the same step moves the other nets'.
# At 3e-2 the plasticine law became unstable within 8 iterations on press + shear + twist
# (rollouts not finite even after 4 undone steps), sand's at 5e-3 and above (iterations 3-51).
LEARNING_RATE = {"potential": 3e-2, "structured": 3e-3, "mlp": 3e-3}
LEARNING_RATE_OVERRIDES = {("plasticine", "potential"): 1e-2, ("sand", "potential"): 3e-3}


# the potential law's initial yield surface (IsotropicPlasticity; learned from there): a
# radius of a few percent of deviatoric strain for a soft solid; for a cohesionless granular
# medium a cone from (nearly) zero whose radius grows with compression
YIELD_SURFACE = {"plasticine": {"yield_strain": 0.05},
                 "sand": {"yield_strain": 0.002, "pressure_slope": 1.0}}


def learning_rate(material, kind):
    return LEARNING_RATE_OVERRIDES.get((material, kind), LEARNING_RATE[kind])


def test_options(base, test):
    o = dict(base, grid=24)
    if test == "new_velocity":
        o["velocity"] = (0.4, -0.2, -0.6) if o["material"] != "sand" else (0.5, 0.0, 0.0)
    elif test == "new_shape":
        o["shape"] = "mesh"
    elif test == "finer_grid":
        o["grid"] = 32
    return o


def reference(options, frames_factor=1):
    """Positions (T+1, N, 3) of the reference material and the frame spacing."""
    scene = build_scene(PROBE, options)
    scene.build()
    every = scene.every
    frames = frames_factor * scene.steps // every
    out = [scene.solver.positions()]
    for _ in range(frames):
        scene.step(every)
        out.append(scene.solver.positions())
    scene.solver.close()
    return np.stack(out), every, frames


def render_compare(path, frames, bounds):
    from diffsim.plot import draw_text
    from diffsim.render import hstack_images, render_points, write_png
    imgs = []
    for label, x, color in frames:
        ok = np.all(np.isfinite(x), axis=1)
        img = render_points([(x[ok], color)], width=320, height=260, bounds=bounds, elev=20, azim=-60)
        draw_text(img, 8, 8, label if ok.all() else f"{label} (diverged)", color=(0, 0, 0))
        imgs.append(img)
    write_png(path, hstack_images(imgs))


def train(name, out, iters, width, depth, kinds, motions, yield_surface=True):
    opts, scale, plastic = MATERIALS[name]
    scenes_options = [dict(opts, grid=24, **MOTIONS[m](opts["material"])) for m in motions]
    datas = []
    for motion, options in zip(motions, scenes_options):
        scene = build_scene(PROBE, options)
        data = record(scene, scene.steps, scene.every, progress=False, script=str(PROBE), full_state=True)
        data.save(out / f"data_{name}_{motion}.npz")
        scene.solver.close()
        datas.append(data)
    info = {}
    for kind in kinds:
        torch.manual_seed(0)
        surface = YIELD_SURFACE.get(name, {}) if yield_surface and plastic and kind == "potential" else {}
        el, pl = make_law(kind, plastic=plastic, width=width, depth=depth, stress_scale=scale, **surface)
        trainer = LawTrainer([build_scene(PROBE, o) for o in scenes_options], datas, el, pl,
                             lr=learning_rate(name, kind), clip=1.0, window_start=2)
        t0 = time.perf_counter()
        hist = trainer.train(iters)
        info[kind] = {"seconds": time.perf_counter() - t0, "final_loss_mm2": hist[-1]["loss_mm2"],
                      "learning_rate": learning_rate(name, kind),
                      "parameters": sum(p.numel() for p in trainer.params), "motions": list(motions)}
        save_law(out / f"law_{name}_{kind}.pt", el, pl, metadata=trainer.metadata())
        trainer.close()
    return info


def evaluate(name, out, kinds, tests):
    opts, _, _ = MATERIALS[name]
    laws = {kind: load_law(out / f"law_{name}_{kind}.pt") for kind in kinds}
    rows = {}
    for test in tests:
        factor = 2 if test == "double_horizon" else 4 if test == "stability_4x" else 1
        options = test_options(opts, "training" if test == "stability_4x" else test)
        ref, every, frames = reference(options, factor)
        row = {}
        finals = [("reference", ref[-1], (90, 90, 90))]
        for kind, (el, pl, meta) in laws.items():
            pred = simulate_with_law(build_scene(PROBE, options), el, pl, frames, every,
                                     wave_speed=meta.get("wave_speed"))
            finite = bool(np.all(np.isfinite(pred)))
            mse = float(((pred - ref) ** 2).mean()) / 1e-6 if finite else math.inf
            row[kind] = {"mse_mm2": mse, "finite": finite, "frames": frames}
            finals.append((kind, pred[-1], COLORS[kind]))
        rows[test] = row
        lo = np.array([0.3, 0.3, 0.0])
        hi = np.array([0.7, 0.7, 0.45])
        render_compare(out / f"compare_{name}_{test}.png", finals, (lo, hi))
    return rows


def fmt(v):
    return "diverged" if not math.isfinite(v) or v > 1e9 else f"{v:.3g}"


def table(results, kinds):
    """The results as a markdown table: one column per law; the MLP's error over the best
    physically structured law's when both were run."""
    structured = [k for k in kinds if k != "mlp"]
    ratio = "mlp" in kinds and structured
    head = "| material | test | " + " | ".join(kinds) + (" | MLP / best structured |" if ratio else " |")
    lines = ["# Learned constitutive laws: position MSE (mm^2) vs the reference material", "", head,
             "|" + "---|" * (2 + len(kinds) + bool(ratio))]
    for name, entry in results.items():
        for test, r in entry["tests"].items():
            cells = [fmt(r[k]["mse_mm2"]) for k in kinds]
            if ratio:
                best = min(r[k]["mse_mm2"] for k in structured)
                cells.append(fmt(r["mlp"]["mse_mm2"] / best) if best > 0 else "inf")
            lines.append(f"| {name} | {test} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", action="store_true", help="only evaluate the laws saved in OUT")
    ap.add_argument("--materials", default="jelly,plasticine,sand")
    ap.add_argument("--kinds", default="potential,structured,mlp", help=f"law families, of {sorted(KINDS)}")
    ap.add_argument("--motions", default=None,
                    help=f"training motions, of {sorted(MOTIONS)} (default: each material's recipe, {RECIPE})")
    ap.add_argument("--tests", default=",".join(TESTS), help=f"evaluation tests, of {TESTS}")
    ap.add_argument("--iters", type=int, default=120, help="training iterations per law")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--out", default="runs/learn_constitutive_law")
    ap.add_argument("--precision", default="f64", choices=("f32", "f64"))
    ap.add_argument("--no-yield-surface", action="store_true",
                    help="the potential law's plastic map without a yield surface (a free return map: it creeps)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core)")
    args = ap.parse_args()

    def names(text, allowed, what):
        items = [m.strip() for m in text.split(",") if m.strip()]
        bad = [m for m in items if m not in allowed]
        if bad or not items:
            ap.error(f"--{what}: unknown {bad} (choose from {sorted(allowed)})")
        return items

    materials = names(args.materials, MATERIALS, "materials")
    kinds = names(args.kinds, KINDS, "kinds")
    motions = names(args.motions, MOTIONS, "motions") if args.motions else None
    tests = names(args.tests, TESTS, "tests")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    ds.init(precision=args.precision, threads=args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in materials:
        entry = {}
        if not args.eval:
            entry["training"] = train(name, out, args.iters, args.width, args.depth, kinds, motions or RECIPE[name],
                                      yield_surface=not args.no_yield_surface)
        entry["tests"] = evaluate(name, out, kinds, tests)
        results[name] = entry
        print(json.dumps({name: {t: {k: r[k]["mse_mm2"] for k in kinds} for t, r in entry["tests"].items()}}),
              flush=True)
        ds.io.atomic_write_json(out / "results.json", results)     # after every material: nothing lost
        text = table(results, kinds)
        ds.io.atomic_write_text(out / "results.md", text)
    print(text)


if __name__ == "__main__":
    main()
