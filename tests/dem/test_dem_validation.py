"""Long DEM validation (``python -m pytest -m slow tests/dem/test_dem_validation.py``, ~20 min on
2 cores, in f64 like the whole test session): silo discharge against the Beverloo law,
angle of repose against rolling friction."""
import json
import os

import numpy as np
import pytest

import diffsim as ds
from diffsim.dem import granular
from _helpers import ROOT

SCENES = os.path.join(ROOT, "scenes")

pytestmark = pytest.mark.slow


def _discharge(orifice, duration):
    sc = ds.build_scene(os.path.join(SCENES, "dem_silo.py"), {"orifice": orifice, "duration": duration})
    sim = sc.solver
    rec = granular.record_discharge(sim, sc.steps, sc.every)
    x = sim.get_state()
    top = x["x"][x["active"], 2].max()
    sim.close()
    return rec["time"], rec["discharged_mass"], top


def test_silo_discharge_is_steady_and_follows_beverloo():
    duration = 1.0
    orifices = (0.020, 0.024, 0.028)
    rates, windows = [], []
    for D in orifices:
        t, m, top = _discharge(D, duration)
        assert top > 2 * D  # the bed stays above 2 orifice diameters
        rates.append(granular.flow_rate(t, m, 0.2))
        windows.append(granular.windowed_rates(t, m, 0.2, duration, windows=2))
    print("rates kg/s", rates, "windows", windows)
    # steady: the two halves of [0.2 s, 1.0 s] agree within 15% for the benchmark orifice
    # (the flow is intermittent over 0.4 s windows; runs differ in rounding order: measured
    # 1.1% in one CI run and 10.9% in another run, both with 0.0995-0.0998 kg/s overall)
    w = windows[1]
    assert abs(w[0] - w[1]) < 0.15 * rates[1], windows
    assert rates[0] < rates[1] < rates[2]
    path = os.path.join(SCENES, "data", "dem_silo")
    P = json.load(open(os.path.join(path, "params.json")))
    x = np.loadtxt(os.path.join(path, "settled_state.csv"), delimiter=",", skiprows=1)[:, 1:4]
    rho_b = granular.bulk_density(x, P["radius"], P["density"], (-0.03, -0.03, 0.02), (0.03, 0.03, 0.12),
                                  inside=lambda p: np.hypot(p[:, 0], p[:, 1]) < 0.03)
    assert 1300 < rho_b < 1600
    fit = granular.beverloo_fit(rates, orifices, rho_b, 2 * P["radius"], P["gravity"])
    fixed = granular.beverloo_fit(rates, orifices, rho_b, 2 * P["radius"], P["gravity"], k=1.5)
    print("Beverloo fit", fit, "with k = 1.5", fixed)
    # The (C, k) pair of a free fit over 20-28 mm is ill-conditioned: runs that differ only in
    # rounding order (threads) give rates up to ~8% apart for the same orifice (24 mm:
    # 0.0995-0.0998 kg/s in two runs, 0.1075 in a third), so C/k moved from 0.56/1.73 to
    # 0.38/1.02 to 0.53/1.57 and the free fit's worst residual reached 6.1%. The law is checked
    # with Beverloo's k = 1.5 (C ~ 0.58 in the literature) and the free k loosely, both with
    # residuals within that run-to-run noise. The fixed-k fit's worst residual is the 20 mm
    # orifice (D/d = 5, where Beverloo's law itself is weakest): 10.6% in a later CI run
    # (0.0597 kg/s; the free fit's residuals were within 1.5% in the same run) and 12.9% in
    # another (C = 0.51; the other two orifices -0.9% and +6.6%), with no DEM change between
    # them: the ~8% run-to-run spread of single rates on top of the law's own misfit at
    # D/d = 5, so 15% (a rate 15% off the law at k = 1.5 is still caught).
    assert 0.4 <= fixed["C"] <= 0.7 and max(map(abs, fixed["relative_residuals"])) < 0.15, fixed
    assert 0.5 <= fit["k"] <= 3.0 and max(map(abs, fit["relative_residuals"])) < 0.1, fit


def test_angle_of_repose_rises_with_rolling_friction():
    """Heaps poured on a rough 30 mm plate (glued spheres): steeper with more rolling
    friction. The angle comes from the heap's volume (every sphere counts): the heap is
    only a few spheres high, and the height of its top spheres moves in steps of a sphere
    layer from pour to pour (measured: 33.8 deg for both mu_r = 0.15 and 0.4 in one run
    with a 20 mm plate). Volume angles measured over pours with three seeds (1 thread):
    37.6-37.8, 42.8-43.5, 45.6-46.4 deg for mu_r = 0.02, 0.4, 0.6 (and 38.2-38.9 for 0.1,
    38.9-39.7 for 0.2)."""
    angles, tops = [], []
    for mu_r in (0.02, 0.4, 0.6):
        sc = ds.build_scene(os.path.join(SCENES, "dem_repose.py"), {"rolling_friction": mu_r, "plate": 0.03})
        sc.step(sc.steps)
        st = sc.solver.get_state()
        x, v = st["x"][st["active"]], st["v"][st["active"]]
        on_plate = (np.hypot(x[:, 0], x[:, 1]) < 0.03) & (x[:, 2] > 0.003)
        moving = np.linalg.norm(v, axis=1) > 0.05
        assert (moving & on_plate).sum() <= 0.01 * on_plate.sum()  # settled (a few still roll off the rim)
        angles.append(np.degrees(granular.heap_angle_from_volume(x, 0.002, 0.03, base_height=0.004)))
        tops.append(np.degrees(granular.heap_angle(x, 0.002, 0.03, base_height=0.004)))
        sc.solver.close()
    print("repose angles (deg) for mu_r = 0.02, 0.4, 0.6: from the volume", angles, "from the top", tops)
    assert angles[0] < angles[1] < angles[2], angles
    assert 10 < angles[0] and angles[2] < 60, angles
