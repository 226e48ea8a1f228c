"""float32 gradients: finite where the f64 ones are, and close to them.

Each case runs in its own process (``tests/precision_cases.py``) at f32 and at f64; the
test compares the two sets of analytic gradients.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def run_case(case, precision, steps=None, threads=2):
    cmd = [sys.executable, os.path.join(HERE, "precision_cases.py"), case, precision, "--threads", str(threads)]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def relative_difference(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def compare(case, tol, steps=None):
    lo, hi = run_case(case, "f32", steps), run_case(case, "f64", steps)
    report = {}
    for name, g64 in hi["grads"].items():
        g32 = lo["grads"][name]
        assert np.all(np.isfinite(g64)), f"{case}: f64 gradient {name} not finite"
        assert np.all(np.isfinite(g32)), f"{case}: f32 gradient {name} not finite: {g32[:6]}"
        report[name] = relative_difference(g32, g64)
    print(case, {k: f"{v:.1e}" for k, v in report.items()})
    worst = max(report.values())
    assert worst <= tol, f"{case}: f32 vs f64 relative differences {report}"
    return report


def test_particle_next_to_a_stencil_boundary_has_finite_f32_gradients():
    # the node a particle reaches through two ~5e-9 weights has m ~ 1e-22 kg: m * m
    # underflowed in the grid adjoint (0 -> inf -> NaN in the position adjoint)
    compare("stencil_edge", 1e-3)


def test_coulomb_wall_adjoint_is_finite_at_tiny_tangential_speeds():
    report = compare("friction_adjoint", 1e-5)
    assert set(report) == {"speed_0.001", "speed_1e-08", "speed_1e-12", "speed_1e-14"}
