"""Why does a learned law fail on a new initial velocity? The strains each motion excites,
and each law's stress error on them (jelly: fixed-corotated, E 20 kPa, nu 0.3).

    python demos/learn_constitutive_law.py --materials jelly      # trains the laws (press only)
    python demos/law_diagnosis.py --laws runs/learn_constitutive_law

1. Strain coverage. The Green strain ``E = (F^T F - I) / 2`` of every particle and frame,
   in the body's reference frame: its normal (diagonal) and shear (off-diagonal) parts,
   for the training press and for the new-velocity throw.
2. Stress error of each law against the reference material (closed form) on
   (a) the press's deformation gradients (what the law was trained on),
   (b) the throw's,
   (c) the press's turned in the material frame, ``F Q`` with random rotations ``Q``: the
       same strains along other directions. An isotropic material has the same stress
       (rotated) for them; a law that is not isotropic by construction must have seen
       every direction.
Writes OUT/diagnosis.md and OUT/diagnosis.json.
"""
import argparse
import json
from pathlib import Path

import torch

import diffsim as ds
from diffsim.learned.constitutive import polar_rotation
from diffsim.learned.training import load_law
from diffsim.scene import build_scene
from diffsim.trajectory import record

from learn_constitutive_law import MATERIALS, PROBE, test_options   # the demo's jelly and its tests

JELLY_E = MATERIALS["jelly"][0]["E"]
MOTIONS = {"press (training)": test_options(MATERIALS["jelly"][0], "training"),
           "throw (new velocity)": test_options(MATERIALS["jelly"][0], "new_velocity")}


def reference_stress(F, E=JELLY_E, nu=0.3):
    """Fixed-corotated Kirchhoff stress (the jelly's material), torch."""
    mu, lam = E / (2 * (1 + nu)), E * nu / ((1 + nu) * (1 - 2 * nu))
    R = polar_rotation(F)
    J = torch.linalg.det(F)
    return 2 * mu * (F - R) @ F.transpose(-1, -2) + (lam * (J - 1) * J)[:, None, None] * torch.eye(3, dtype=F.dtype)


def deformations(options):
    """Every particle's F at every frame after the first (M,3,3)."""
    scene = build_scene(PROBE, options)
    data = record(scene, scene.steps, scene.every, progress=False, full_state=True)
    scene.solver.close()
    return torch.tensor(data.deformation[1:].reshape(-1, 3, 3), dtype=torch.float64)


def strain_coverage(F):
    E = 0.5 * (F.transpose(-1, -2) @ F - torch.eye(3, dtype=F.dtype))
    normal = E.diagonal(dim1=-2, dim2=-1).abs().amax(-1)
    shear = torch.stack([E[:, 0, 1], E[:, 0, 2], E[:, 1, 2]], -1).abs().amax(-1)
    q = lambda t: float(torch.quantile(t, 0.95))
    return {"normal_p95": q(normal), "shear_p95": q(shear), "shear_over_normal_p95": q(shear) / q(normal)}


def random_rotations(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, 3, 3, generator=g, dtype=torch.float64)
    Q, R = torch.linalg.qr(A)
    Q = Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))[:, None, :]
    return Q * torch.sign(torch.linalg.det(Q))[:, None, None]


def relative_error(law, F):
    with torch.no_grad():
        ref, got = reference_stress(F), law(F)
    return float((got - ref).norm(dim=(-1, -2)).sum() / ref.norm(dim=(-1, -2)).sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--laws", default="runs/learn_constitutive_law", help="folder with law_jelly_<kind>.pt")
    ap.add_argument("--out", default=None, help="default: the laws' folder")
    args = ap.parse_args()
    ds.init(precision="f64")
    laws_dir = Path(args.laws)
    out = Path(args.out or laws_dir)
    laws = {p.stem.split("_", 2)[2]: load_law(p)[0] for p in sorted(laws_dir.glob("law_jelly_*.pt"))}
    if not laws:
        raise SystemExit(f"no law_jelly_*.pt in {laws_dir}: train them with demos/learn_constitutive_law.py")
    Fs = {name: deformations(o) for name, o in MOTIONS.items()}
    press = Fs["press (training)"]
    Fs["press, turned in the material frame (F Q)"] = press @ random_rotations(len(press))
    result = {"coverage": {k: strain_coverage(F) for k, F in Fs.items() if "turned" not in k},
              "stress_error": {kind: {k: relative_error(law, F) for k, F in Fs.items()} for kind, law in laws.items()}}
    lines = ["# Why a learned law fails on a new velocity (jelly)", "",
             "Green strain in the reference frame, 95th percentile over particles and frames:", "",
             "| motion | normal | shear | shear / normal |", "|---|---|---|---|"]
    for k, c in result["coverage"].items():
        lines.append(f"| {k} | {c['normal_p95']:.3g} | {c['shear_p95']:.3g} | {c['shear_over_normal_p95']:.2f} |")
    lines += ["", "Stress error against the reference material (sum |tau - tau_ref| / sum |tau_ref|):", "",
              "| law | " + " | ".join(Fs) + " |", "|---|" + "---|" * len(Fs)]
    for kind, row in result["stress_error"].items():
        lines.append(f"| {kind} | " + " | ".join(f"{row[k]:.3g}" for k in Fs) + " |")
    text = "\n".join(lines) + "\n"
    ds.io.atomic_write_text(out / "diagnosis.md", text)
    ds.io.atomic_write_json(out / "diagnosis.json", result)
    print(text)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
