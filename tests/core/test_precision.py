"""float32 gradients: finite where the f64 ones are, and close to them.

Each case runs in its own process (``tests/core/precision_cases.py``) at f32 and at f64; the
test compares the two sets of analytic gradients.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def run_case(case, precision, steps=None, threads=2, extra=()):
    cmd = [sys.executable, os.path.join(HERE, "precision_cases.py"), case, precision, "--threads", str(threads),
           *extra]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def relative_difference(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def compare(case, tol, steps=None, loose=None, seed=None):
    """f32 and f64 gradients of ``case``: all finite, and within ``tol`` relative (``loose``:
    {name: tol} for documented f32 limits). A gradient whose effect on the loss is below
    1e-4 of it (|g| x parameter scale < 1e-4 |loss|) is compared on that scale instead: its
    relative value is rounding noise in both precisions."""
    extra = ["--seed", str(seed)] if seed is not None else []
    lo, hi = run_case(case, "f32", steps, extra=extra), run_case(case, "f64", steps, extra=extra)
    report = {}
    for name, g64 in hi["grads"].items():
        g32 = lo["grads"][name]
        assert np.all(np.isfinite(g64)), f"{case}: f64 gradient {name} not finite"
        assert np.all(np.isfinite(g32)), f"{case}: f32 gradient {name} not finite: {g32[:6]}"
        scale = hi.get("scales", {}).get(name, 1.0)
        floor = 1e-4 * abs(hi["loss"]) / scale
        diff = np.linalg.norm(np.subtract(g32, g64))
        report[name] = float(diff / max(np.linalg.norm(g64), floor))
    print(case, {k: f"{v:.1e}" for k, v in report.items()})
    limits = {k: (loose or {}).get(k, tol) for k in report}
    over = {k: v for k, v in report.items() if v > limits[k]}
    assert not over, f"{case}: f32 vs f64 relative differences over {limits}: {report}"
    return report


def test_particle_next_to_a_stencil_boundary_has_finite_f32_gradients():
    # the node a particle reaches through two ~5e-9 weights has m ~ 1e-22 kg: m * m
    # underflowed in the grid adjoint (0 -> inf -> NaN in the position adjoint)
    compare("stencil_edge", 1e-3)


def test_coulomb_wall_adjoint_is_finite_at_tiny_tangential_speeds():
    report = compare("friction_adjoint", 1e-5)
    assert set(report) == {"speed_0.001", "speed_1e-08", "speed_1e-12", "speed_1e-14"}


def test_fem_press_with_sticking_friction_f32_matches_f64():
    # Taichi's adjoint of min(1, dt mu fn / (m |vt|)) divided by (m |vt|)^2, which
    # underflowed for sticking nodes: NaN gradients of E, nu and the contact stiffness
    compare("fem_press", 1e-3)


@pytest.mark.slow
def test_dem_pile_on_a_mesh_floor_f32_matches_f64():
    # restitution acts through the normal damping of resting contacts, whose relative
    # normal speeds are f32 rounding noise (overlaps of ~3 um between spheres at ~4 mm
    # carry 1e-4 relative error): its f32 gradient is good to ~10%
    compare("dem_pile", 3e-3, loose={"restitution": 0.2})


@pytest.mark.parametrize("seed", [13, pytest.param(2, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow),
                                  pytest.param(7, marks=pytest.mark.slow), pytest.param(14, marks=pytest.mark.slow),
                                  pytest.param(22, marks=pytest.mark.slow), pytest.param(27, marks=pytest.mark.slow)])
def test_random_mpm_scenes_f32_match_f64(seed):
    # plastic flow too (2: von Mises, 3: dry sand): measured 1.6e-5 and 8.6e-7 since the
    # deformation gradient is held as F - I and the Hencky models never form I + small
    # (1.9e-3 and 2.2e-3 before); every seed within 4.3e-5
    compare("random_mpm", 1e-3, seed=seed)


@pytest.mark.slow
def test_issue_cases_over_1000_substeps():
    """The two scenes where f32 gradients turned NaN: finite over 1,000 substeps, and within
    1e-3 of f64. Dry sand near zero pressure flows plastically at strains of ~1e-5: with the
    deformation gradient stored as F (entries ~1, resolved to ~6e-8 in f32) its E gradient
    was 1e-3 to 5e-3 off; held as F - I, with the Hencky return through the eigenvalues of
    b - I, measured E 3.5e-4 to 4.1e-4, friction angle 3.7e-5 to 5.7e-5, initial velocities
    <= 1.0e-4 (one and two threads). The cohesion gradient at cohesion 0 (the cone's apex, a
    one-sided derivative: no central difference exists there) comes from the particles
    inside the apex band, whose strains sit at f32's resolution: 4.5e-3 to 6.1e-3 (8e-2 to
    9.5e-2 before), bounded at 2e-2 as a documented f32 limit."""
    compare("jelly_bumpy", 1e-3, steps=1000)
    compare("sand_cone_paddle", 1e-3, steps=1000, loose={"cohesion": 2e-2})


@pytest.mark.parametrize("kind", ["potential", pytest.param("structured", marks=pytest.mark.slow)])
def test_learned_laws_f32_match_f64(kind):
    # a NeuralMaterial's networks read F = I + (F - I) formed in the runtime's precision (f32
    # for users; strains under ~1e-7 unresolved): over 200 substeps of a plasticine block hit by the probe's sphere, measured
    # potential law 7.5e-7 to 7.4e-6, structured 3.2e-6 to 1.2e-5 (weights, v0 direction)
    compare(f"neural_{kind}", 1e-4)
