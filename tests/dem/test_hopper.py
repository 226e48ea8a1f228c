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
from diffsim.dem.discharge import order_sets
from diffsim.runner import run_scene
from diffsim.scene import build_scene
from _helpers import ROOT

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


def test_flow_regime_by_exit_order():
    """Shoulders draining over 2 s and the top over 1 s: they take twice as long (ratio 2,
    funnel flow); the other way round, half as long (mass flow)."""
    t = np.linspace(0.0, 3.0, 301)
    slow, fast = np.clip(1 - t / 2, 0, 1), np.clip(1 - t / 1, 0, 1)
    funnel = flow_regime(t, slow, fast)
    assert funnel["regime"] == "funnel" and funnel["exit_order_ratio"] == pytest.approx(2.0, rel=1e-3)
    mass = flow_regime(t, fast, slow)
    assert mass["regime"] == "mass" and mass["exit_order_ratio"] == pytest.approx(0.5, rel=1e-3)
    # frames before the gate opens do not count; None values (no data) are skipped
    assert flow_regime(t + 0.5, slow, fast, gate_time=0.5)["exit_order_ratio"] == pytest.approx(2.0, rel=1e-3)
    assert flow_regime([0.0, 1.0], [None, None], [1.0, 0.5])["regime"] is None


def test_order_sets_pick_the_shoulders_and_the_top():
    """On a filled wedge the shoulders hug the panels in the lower half and the top is the
    highest quarter in the middle: disjoint, both non-empty, where they should be."""
    angle, orifice, r = 40.0, 0.024, 0.002
    g = np.stack(np.meshgrid(np.linspace(-0.2, 0.2, 201), np.linspace(0.001, 0.1, 100), indexing="ij"), -1).reshape(-1, 2)
    t = math.tan(math.radians(angle))
    x = g[np.abs(g[:, 0]) < 0.5 * orifice + g[:, 1] * t - r]
    shoulders, top = order_sets(x, angle, orifice, r)
    assert shoulders.any() and top.any() and not (shoulders & top).any()
    median = np.median(x[:, 1])
    assert x[shoulders, 1].max() < median and x[top, 1].min() > np.quantile(x[:, 1], 0.74)
    assert np.all(np.abs(x[shoulders, 0]) > 0.5 * orifice)       # on the panels' side of the slot's edges
    assert np.all(np.abs(x[top, 0]) < 0.5 * (0.5 * orifice + x[top, 1] * t) + 1e-12)


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
    assert len(tr["shoulders_inside"]) == len(tr["time"]) and tr["shoulders_inside"][0] == 1.0
    assert out["regime"] in ("mass", "funnel") and out["exit_order_ratio"] > 0


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
