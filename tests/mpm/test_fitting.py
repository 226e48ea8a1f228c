"""Trajectory data, `diffsim generate` / `diffsim fit`, and parameter identification."""
import json
import math

import numpy as np
import pytest

import diffsim as ds
from diffsim.fitting import Fitter
from diffsim.scene import build_scene
from diffsim.trajectory import InvalidTrajectory, load_trajectory, record, surface_particles
from _helpers import ROOT

PROBE = ROOT / "scenes" / "material_probe.py"


def _record(tmp_path, name="jelly", **kw):
    options = {"material": name, "grid": 16, "duration": kw.pop("duration", 0.1)}
    options.update(kw.pop("options", {}))
    scene = build_scene(PROBE, options)
    traj = record(scene, scene.steps, scene.every, progress=False, script=str(PROBE), **kw)
    path = tmp_path / f"{name}.npz"
    traj.save(path)
    scene.solver.close()
    return path, options


def test_trajectory_round_trip_and_surface_selection(tmp_path):
    path, _ = _record(tmp_path, surface_only=True, subsample=0.5, noise=0.01, seed=3)
    t = load_trajectory(path)
    assert t.positions.ndim == 3 and t.positions.shape[2] == 3 and t.frames >= 8
    assert t.metadata["observation"]["surface_only"] and 0 < t.observed < t.metadata["n_particles_scene"]
    assert t.metadata["observation"]["noise_m"] > 0
    assert t.dt == pytest.approx(t.substep_dt * t.frame_every)
    # surface particles of a 4x4x4 lattice: all but the 2x2x2 core
    g = (np.arange(4) + 0.5) * 0.1
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    assert len(surface_particles(pts, 0.1)) == 64 - 8


@pytest.mark.parametrize("breakage, words", [
    (lambda d: d.pop("dt"), ["lacks", "dt"]),
    (lambda d: (d.pop("velocities"), d.__setitem__("positions", d["positions"][:, :-3])),
     ["particles observed", "scene had"]),
    (lambda d: d["positions"].__setitem__((2, 5, 1), np.nan), ["NaN", "frame 2", "particle 5"]),
    (lambda d: d.__setitem__("velocities", d["positions"][:, :4]), ["velocities", "must match"]),
    (lambda d: d.__setitem__("metadata", np.asarray(json.dumps({"format": 1}))), ["metadata lacks"]),
])
def test_bad_trajectory_files(tmp_path, breakage, words):
    path, _ = _record(tmp_path)
    d = dict(np.load(path))
    d["positions"] = d["positions"].copy()
    breakage(d)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **d)
    with pytest.raises(InvalidTrajectory) as err:
        load_trajectory(bad)
    for w in words:
        assert w in str(err.value)


def test_scene_mismatch_is_caught_before_fitting(tmp_path):
    path, options = _record(tmp_path)
    data = load_trajectory(path)
    other = build_scene(PROBE, {**options, "grid": 20})  # different particle count
    with pytest.raises(InvalidTrajectory) as err:
        Fitter(other, data, ["E"])
    assert "particles" in str(err.value)
    moved = build_scene(PROBE, {**options, "material": "plasticine"})  # same particles, other material
    with pytest.raises(ds.InvalidScene):
        Fitter(moved, data, ["nu", "friction_angle"])


def test_fit_youngs_modulus_from_three_times_off(tmp_path):
    path, options = _record(tmp_path, options={"E": 4e3})
    data = load_trajectory(path)
    scene = build_scene(PROBE, options)
    fitter = Fitter(scene, data, ["E"], init={"E": 4e3 / 3})
    res = fitter.run(iters=20, progress=False, out=tmp_path / "fit")
    assert res["fitted"]["E"] == pytest.approx(4e3, rel=1e-3)
    assert res["std"]["E"] >= 0 and (tmp_path / "fit" / "fit.json").exists()
    assert (tmp_path / "fit" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    scene.solver.close()


@pytest.mark.slow
def test_fit_resumes_from_its_state(tmp_path):
    path, options = _record(tmp_path, options={"E": 4e3})
    data = load_trajectory(path)
    out = tmp_path / "fit"
    a = Fitter(build_scene(PROBE, options), data, ["E"], init={"E": 1e3}).run(iters=2, out=out, progress=False)
    b = Fitter(build_scene(PROBE, options), data, ["E"], init={"E": 1e3}).run(iters=20, out=out, progress=False,
                                                                             resume=True)
    assert a["iterations"] == 2 and b["history"][:2] == a["history"]
    assert b["fitted"]["E"] == pytest.approx(4e3, rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("observation", ["full", "surface_noisy"])
@pytest.mark.parametrize("material, params, truth, start", [
    ("jelly", ("E", "nu"), {"E": 5e3, "nu": 0.3}, {"E": 5e3 / 3, "nu": 0.1}),
    ("plasticine", ("yield_stress", "E"), {"yield_stress": 400.0, "E": 2e4}, {"yield_stress": 400 / 3, "E": 2e4 / 3}),
    ("sand", ("friction_angle",), {"friction_angle": math.radians(30)}, {"friction_angle": math.radians(10)}),
])
def test_parameter_identification(tmp_path, material, params, truth, start, observation):
    """Acceptance: every parameter within 5% from a start 3x off (nu from 0.1, the friction
    angle from 10 degrees), with full observation and with surface-only, 1%-noise data."""
    kw = {"surface_only": True, "noise": 0.01, "seed": 1} if observation == "surface_noisy" else {}
    options = {"material": material, "grid": 24, **truth}
    scene = build_scene(PROBE, options)
    traj = record(scene, scene.steps, scene.every, progress=False, script=str(PROBE), **kw)
    traj.save(tmp_path / "d.npz")
    data = load_trajectory(tmp_path / "d.npz")
    fit = Fitter(build_scene(PROBE, options), data, list(params), init=start).run(iters=30, progress=False)
    for p in params:
        assert fit["fitted"][p] == pytest.approx(truth[p], rel=0.05), (p, fit["fitted"], fit["std"])


def test_train_law_cli_refuses_data_without_full_state(tmp_path):
    import subprocess
    import sys
    path, _ = _record(tmp_path)  # positions and velocities only
    r = subprocess.run([sys.executable, "-m", "diffsim.cli", "train-law", "--data", str(path), "--out",
                        str(tmp_path / "law.pt")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--full-state" in r.stderr
    assert not (tmp_path / "law.pt").exists()


@pytest.mark.parametrize("extra", [["--kind", "structured", "--plastic", "--yield-strain", "0.05"],
                                   ["--kind", "potential", "--yield-strain", "0.05"],
                                   ["--kind", "potential", "--plastic", "--yield-strain", "-1"],
                                   ["--kind", "potential", "--plastic", "--pressure-slope", "1"]])
def test_train_law_cli_refuses_a_misplaced_yield_surface_before_reading_data(tmp_path, extra, capsys):
    from diffsim.cli import main
    code = main(["train-law", "--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "law.pt"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and "--yield-strain" in err, err
    assert "missing.npz" not in err and not (tmp_path / "law.pt").exists()


@pytest.mark.slow
def test_fluid_viscosity_identification(tmp_path):
    dam = PROBE.parent / "fluid_dam_break.py"
    options = {"grid": 20, "viscosity": 2.0}
    scene = build_scene(dam, options)
    traj = record(scene, 300, 30, progress=False, script=str(dam))
    traj.save(tmp_path / "d.npz")
    fit = Fitter(build_scene(dam, options), load_trajectory(tmp_path / "d.npz"), ["viscosity"],
                 init={"viscosity": 2.0 / 3}).run(iters=20, progress=False)
    assert fit["fitted"]["viscosity"] == pytest.approx(2.0, rel=0.05)
