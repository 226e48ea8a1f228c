"""Hopper discharge (the NeuralDEM data scene): discharge figures against analytic traces,
the flow-regime rule, the scene's input checks, and a short run whose summary carries the
figures with the mass accounted for."""
import json
import math
import os

import numpy as np
import pytest

import diffsim as ds
from diffsim.dem import discharge_figures, flow_regime
from diffsim.runner import run_scene
from diffsim.scene import build_scene

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOPPER = os.path.join(ROOT, "scenes", "dem_hopper.py")


def _ramp(rate, gate, drained_at, total, residual, end, dt=0.01):
    """A discharge at constant ``rate`` from ``gate`` until ``(1 - residual) total`` has left."""
    t = np.arange(0.0, end + 1e-12, dt)
    return t, np.minimum(np.clip(t - gate, 0, None) * rate, (1 - residual) * total)


def test_figures_of_a_constant_rate_discharge():
    """Rate exact, drainage time within one frame, residual exact, flow stopped."""
    total, residual, rate, gate = 0.05, 0.1, 0.06, 0.3
    t, m = _ramp(rate, gate, None, total, residual, end=1.5)
    f = discharge_figures(t, m, total, gate_time=gate)
    assert f["outflow_rate"] == pytest.approx(rate, rel=1e-9)
    assert f["residual_mass_fraction"] == pytest.approx(residual, abs=1e-12)
    assert f["stopped"]
    expected = 0.99 * (1 - residual) * total / rate
    assert abs(f["drainage_time"] - expected) <= 0.01 + 1e-12


def test_figures_of_a_discharge_still_flowing():
    t, m = _ramp(0.06, 0.3, None, 0.05, 0.0, end=0.9)   # 0.036 kg of 0.05 have left at the end
    f = discharge_figures(t, m, 0.05, gate_time=0.3)
    assert not f["stopped"] and f["drainage_time"] is None
    assert f["outflow_rate"] == pytest.approx(0.06, rel=1e-9)
    assert f["residual_mass_fraction"] == pytest.approx(1 - 0.036 / 0.05, abs=1e-9)


def test_figures_refuse_bad_traces():
    t = np.linspace(0, 1, 11)
    with pytest.raises(ds.InvalidScene, match="decreases"):
        discharge_figures(t, 1.0 - t, 1.0)
    with pytest.raises(ds.InvalidScene, match="one length"):
        discharge_figures(t, t[:5], 1.0)
    with pytest.raises(ds.InvalidScene, match="increasing"):
        discharge_figures(t[::-1], t, 1.0)
    with pytest.raises(ds.InvalidScene, match="total_mass"):
        discharge_figures(t, t, 0.0)


def test_flow_regime_rule():
    frac = np.linspace(0, 1, 21)
    core = np.full(21, 0.2)
    assert flow_regime(np.full(21, 0.1), core, frac)["regime"] == "mass"
    slow = flow_regime(np.full(21, 0.01), core, frac)
    assert slow["regime"] == "funnel" and slow["wall_to_core_speed"] == pytest.approx(0.05)
    # empty sets (None) and frames outside 25-75% are ignored
    wall = [None if f < 0.5 else 0.1 for f in frac]
    assert flow_regime(wall, core, frac)["regime"] == "mass"
    assert flow_regime(np.full(3, 0.1), np.full(3, 0.2), [0.0, 0.1, 0.9])["regime"] is None


@pytest.mark.parametrize("options, match", [({"angle": 80}, "angle"), ({"orifice": 0.008}, "jams"),
                                            ({"depth": 0.004}, "depth"), ({"count": 3}, "count"),
                                            ({"duration": 0}, "duration")])
def test_hopper_refuses_bad_options(options, match):
    with pytest.raises(ds.InvalidScene, match=match):
        build_scene(HOPPER, options)


def test_fill_lies_inside_the_wedge_without_overlaps():
    import importlib.util
    spec = importlib.util.spec_from_file_location("dem_hopper", HOPPER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r, angle, orifice, depth = 0.002, 40.0, 0.024, 0.02
    x = mod.fill_positions(angle, orifice, depth, r, 500, seed=3)
    assert x.shape == (500, 3)
    t, c = math.tan(math.radians(angle)), math.cos(math.radians(angle))
    assert np.all((0.5 * orifice + x[:, 2] * t - np.abs(x[:, 0])) * c > r)      # off the panels
    assert np.all(np.abs(x[:, 1]) < 0.5 * depth - r) and np.all(x[:, 2] > r)    # off the walls and the gate
    from scipy.spatial import cKDTree
    assert cKDTree(x).query(x, k=2)[0][:, 1].min() > 2 * r


def test_short_discharge_reports_figures_and_conserves_mass(tmp_path):
    """A small hopper drains through its slot: summary.json carries the figures; every
    sphere is either inside or discharged at every frame."""
    scene = build_scene(HOPPER, {"count": 150, "fill_time": 0.1, "duration": 0.5, "angle": 20})
    summary = run_scene(scene, tmp_path / "run", progress=False, video=False)
    assert summary["status"] == "completed"
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    out, tr = s["outputs"], s["traces"]
    mass = 2500.0 * 4 / 3 * math.pi * 0.002 ** 3
    for active, discharged in zip(tr["particles_active"], tr["discharged_mass"]):
        assert active * mass + discharged == pytest.approx(150 * mass, rel=1e-5)
    assert tr["discharged_mass"][0] == 0 and out["discharged_mass"] > 0.5 * 150 * mass
    assert out["outflow_rate"] > 0 and 0 <= out["residual_mass_fraction"] < 0.5
    assert len(tr["wall_speed"]) == len(tr["time"])


def test_recorded_sweep_keeps_traces_and_figures(tmp_path):
    """A dataset run (sweep --record) stores the discharge traces and figures next to its
    trajectory; the figures are those of its traces, and the spheres below the outlet in
    the last frame are the discharged ones."""
    from diffsim.sweep import load_dataset, sweep
    out = tmp_path / "data"
    sweep(HOPPER, out, grid={"count": [120], "fill_time": [0.1], "duration": [0.4], "angle": [25]},
          backend="serial", record=True, progress=False)
    (traj,) = load_dataset(out)
    run = next(p for p in (out / "runs").iterdir() if p.is_dir())
    s = json.loads((run / "summary.json").read_text())
    figures = discharge_figures(s["traces"]["time"], s["traces"]["discharged_mass"], 120 * 2500.0 * 4 / 3 * math.pi
                                * 0.002 ** 3, gate_time=0.1)
    assert figures["outflow_rate"] > 0
    assert s["outputs"]["outflow_rate"] == pytest.approx(figures["outflow_rate"], rel=1e-12)
    mass = 2500.0 * 4 / 3 * math.pi * 0.002 ** 3
    below = int((traj.positions[-1, :, 2] < -0.03).sum())
    assert below == round(s["traces"]["discharged_mass"][-1] / mass) > 0
    assert "outflow_rate" in (out / "summary.csv").read_text().splitlines()[0]
