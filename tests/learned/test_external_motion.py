"""Motion from another simulator: an independent numpy MLS-MPM (numpy_mpm.py) makes the
data; loading, checking, state estimation, the scene that re-simulates it, and a law
trained on it."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

import diffsim as ds
from diffsim.external import estimate_state, load_motion, save_motion, to_trajectory, validate_motion
from diffsim.trajectory import InvalidTrajectory, load_trajectory

import numpy_mpm
from _helpers import ROOT

E, NU, RHO = 2e4, 0.3, 1000.0
THROW = (0.4, -0.2, -0.6)   # a jelly block thrown sideways onto a floor that holds it


def _throw(grid, dt, substeps, frames=15, jitter=0.0):
    """The numpy MPM's positions of the thrown block (frames + 1, N, 3), and its particles'
    volume (``jitter``: random offsets of the particle lattice, in spacings)."""
    dx = 1.0 / grid
    lift = 0.03   # free flight for the first three frames, then the floor
    x0 = numpy_mpm.box_particles((0.4, 0.4, 3 * dx + lift), (0.6, 0.6, 3 * dx + lift + 0.2), dx / 2)
    x0 = x0 + np.random.default_rng(0).uniform(-jitter, jitter, x0.shape) * dx / 2
    v0 = np.tile(THROW, (len(x0), 1))
    vol = (dx / 2) ** 3
    x = numpy_mpm.simulate(x0, v0, vol, RHO, E, NU, grid, dt, substeps, frames, walls={"-z": "sticky"})
    return x, vol


def _motion(path, x, vol, grid):
    """The numpy run as a motion file: its walls are the faces of the box [3 dx, 1 - 3 dx]."""
    wall = numpy_mpm.BOUND / grid
    m = validate_motion(x, 0.01, vol, RHO * vol, [[wall] * 3, [1 - wall] * 3], walls={"-z": "sticky"}, path=path)
    save_motion(path, m)
    return load_motion(path)


def test_numpy_mpm_and_diffsim_agree():
    """Two implementations of the same MLS-MPM (fixed-corotated, sticky floor, gravity):
    diffsim's Taichi kernels and the test's numpy code."""
    grid, dt, sub = 24, 1e-3, 10
    x, vol = _throw(grid, dt, sub, frames=6)
    sim = ds.MPMSolver(grid=grid, dt=dt, walls={"-z": "sticky"})
    sim.add_particles(x[0], ds.FixedCorotated(E=E, nu=NU, density=RHO), volume=vol, velocity=THROW,
                      spacing=1.0 / grid / 2)
    sim.build()
    ours = [sim.positions()]
    for _ in range(6):
        sim.step(sub)
        ours.append(sim.positions())
    sim.close()
    moved = np.abs(x[-1] - x[0]).max()
    assert moved > 0.02
    assert np.abs(np.stack(ours) - x).max() < 1e-9 * max(1.0, moved)


def test_state_estimate_is_exact_for_affine_motion_quadratic_in_time():
    rng = np.random.default_rng(0)
    X = rng.uniform(0.3, 0.5, (200, 3))
    G, H = rng.normal(0, 0.5, (3, 3)), rng.normal(0, 0.5, (3, 3))
    b1, b2 = rng.normal(0, 1, 3), rng.normal(0, 1, 3)
    ts = np.arange(8) * 0.01
    A = [np.eye(3) + t * G + t * t * H for t in ts]
    x = np.stack([X @ a.T + t * b1 + t * t * b2 for a, t in zip(A, ts)])
    v, C, F = estimate_state(x, 0.01)
    for k, t in enumerate(ts):
        Adot = G + 2 * t * H
        assert np.abs(F[k] - A[k]).max() < 1e-10
        assert np.abs(v[k] - (X @ Adot.T + b1 + 2 * t * b2)).max() < 1e-9
        assert np.abs(C[k] - Adot @ np.linalg.inv(A[k])).max() < 1e-8


def test_bad_motion_files_get_clear_errors(tmp_path):
    x, vol = _throw(12, 2e-3, 5, frames=3)
    good = dict(positions=x, frame_dt=np.asarray(0.01), volume=np.asarray(vol), mass=np.asarray(RHO * vol),
                domain=np.array([[0.0, 0, 0], [1, 1, 1]]))

    def write(name, **change):
        arrays = {k: v for k, v in {**good, **change}.items() if v is not None}
        p = tmp_path / f"{name}.npz"
        np.savez(p, **arrays)
        return p

    cases = {
        "missing": (dict(mass=None), "lacks ['mass']"),
        "nan": (dict(positions=np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x)), "NaN/inf"),
        "shape": (dict(positions=x[..., :2]), "shape (T >= 3, N >= 4, 3)"),
        "dt": (dict(frame_dt=np.asarray(-1.0)), "frame_dt must be > 0"),
        "outside": (dict(domain=np.array([[0.0, 0, 0], [0.5, 1, 1]])), "outside the domain"),
        "density": (dict(mass=np.linspace(1, 2, x.shape[1]) * RHO * vol), "uniform density"),
        "volume": (dict(volume=np.ones(5)), "one value per particle"),
        "walls": (dict(walls=np.asarray(json.dumps({"-z": "glue"}))), "kinds are"),
        "faces": (dict(walls=np.asarray(json.dumps({"down": "sticky"}))), "unknown faces"),
        "json": (dict(walls=np.asarray("{not json")), "JSON object"),
    }
    for name, (change, message) in cases.items():
        with pytest.raises(InvalidTrajectory, match=re.escape(message)):
            load_motion(write(name, **change))
    ok = write("ok")
    load_motion(ok)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(ok.read_bytes()[:200])
    with pytest.raises(InvalidTrajectory, match="not a readable .npz"):
        load_motion(truncated)
    with pytest.raises(InvalidTrajectory, match="no such file"):
        load_motion(tmp_path / "absent.npz")


def test_imported_motion_is_resimulated_by_its_scene(tmp_path):
    """import-motion -> trajectory with an estimated full state -> the external_motion
    scene re-simulates the numpy data with the true material to within the estimate's
    error (the initial velocity from three frames)."""
    x, vol = _throw(24, 1e-3, 10)
    _motion(tmp_path / "motion.npz", x, vol, 24)
    out = tmp_path / "data.npz"
    r = subprocess.run([sys.executable, "-m", "diffsim", "import-motion", str(tmp_path / "motion.npz"), "--out",
                        str(out), "--stiffness", str(E), "--grid", "18"],   # 18 cells between the walls: dx 1/24
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["substeps_per_frame"] == 10
    data = load_trajectory(out)
    assert data.full_state and data.frames == 16
    scene = ds.build_scene(ROOT / "scenes" / "external_motion.py", data.metadata["scene"]["options"])
    scene.build()
    data.check_scene(scene)
    assert scene.solver.bodies[0].material.density == pytest.approx(RHO)
    sim = scene.solver
    assert np.abs(sim.get_state()["v"] - np.asarray(THROW)).max() < 1e-9   # free flight: the estimate is exact
    assert np.abs(data.velocities[0] - np.asarray(THROW)).max() < 1e-9
    again = [sim.positions()]
    for _ in range(data.frames - 1):
        sim.step(scene.every)
        again.append(sim.positions())
    sim.close()
    assert np.abs(np.stack(again) - x).max() < 1e-8
    with pytest.raises(ds.InvalidScene, match="needs --set data"):
        ds.build_scene(ROOT / "scenes" / "external_motion.py", {})


@pytest.mark.slow
def test_law_trained_on_numpy_mpm_data_is_as_good_as_on_diffsim_data(tmp_path):
    """Issue 15's external-data figure. The numpy MPM throws a block of jittered particles
    with its own time step (0.5 ms); diffsim re-simulates the same particles with the true
    material (its own data: 1 ms substeps, the import's estimated initial state). A
    potential law is trained on each, positions only through the same import, and rolled
    out over the training horizon: the error on the numpy data is within 2x of the error on
    diffsim's own."""
    import torch
    from diffsim.learned.constitutive import make_law
    from diffsim.learned.training import LawTrainer
    grid = 26                      # cells between the walls: dx = 1/32, the numpy run's cell
    foreign, vol = _throw(32, 5e-4, 20, jitter=0.25)
    motion = _motion(tmp_path / "numpy_mpm.npz", foreign, vol, 32)
    data = to_trajectory(motion, grid=grid, stiffness=E)
    scene = ds.build_scene(ROOT / "scenes" / "external_motion.py", data.metadata["scene"]["options"])
    scene.build()
    own = [scene.solver.positions()]
    for _ in range(data.frames - 1):
        scene.solver.step(scene.every)
        own.append(scene.solver.positions())
    scene.solver.close()
    own = np.stack(own)
    gap = float(((own - foreign) ** 2).mean()) / 1e-6
    errors = {}
    for name, x in (("numpy_mpm", foreign), ("diffsim", own)):
        m = _motion(tmp_path / f"{name}.npz", x, vol, 32)
        d = to_trajectory(m, grid=grid, stiffness=E)
        torch.manual_seed(0)
        el, _ = make_law("potential", width=32, depth=2, stress_scale=E)
        trainer = LawTrainer(ds.build_scene(ROOT / "scenes" / "external_motion.py", d.metadata["scene"]["options"]),
                             d, el, lr=3e-2, window_start=2)
        trainer.train(60, progress=False)
        with torch.no_grad():
            pred = trainer.rollout_positions(0, d.frames - 1).numpy()
        errors[name] = float(((pred - x[1:]) ** 2).mean()) / 1e-6
        trainer.close()
    print(f"position MSE at the training horizon (mm^2): {errors}; diffsim with the true material vs the numpy "
          f"data: {gap:.3g}; motion: {float(((foreign - foreign[0]) ** 2).mean()) / 1e-6:.4g}")
    assert errors["numpy_mpm"] <= 2.0 * errors["diffsim"], errors
