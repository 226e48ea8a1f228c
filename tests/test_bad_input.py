"""Bad input gets a clear error (type and message) before anything runs."""

import json

import numpy as np
import pytest
import torch
import trimesh

import diffsim as ds
from diffsim.runner import run_scene


@pytest.mark.parametrize("make, words", [
    (lambda: ds.FixedCorotated(E=-1.0), ["Young's modulus", "> 0"]),
    (lambda: ds.FixedCorotated(E=1e5, nu=0.5), ["Poisson", "(-1, 0.5)"]),
    (lambda: ds.NeoHookean(E=1e5, nu=0.3, density=0.0), ["density"]),
    (lambda: ds.VonMises(yield_stress=0.0), ["yield_stress", "> 0"]),
    (lambda: ds.DruckerPrager(friction_angle=30.0), ["friction_angle", "radians"]),
    (lambda: ds.DruckerPrager(cohesion=-5.0), ["cohesion"]),
    (lambda: ds.NewtonianFluid(viscosity=-1.0), ["viscosity"]),
    (lambda: ds.FixedCorotated(E=float("nan")), ["finite"]),
])
def test_invalid_material(make, words):
    with pytest.raises(ds.InvalidMaterial) as err:
        make()
    for w in words:
        assert w in str(err.value)


def test_time_step_over_stability_limit_names_the_limit():
    sim = ds.MPMSolver(grid=32, dt=5e-3)
    sim.add_body(ds.Box((0.5, 0.5, 0.5), 0.1), ds.FixedCorotated(E=1e6, nu=0.3), name="stiff")
    with pytest.raises(ds.UnstableTimeStep) as err:
        sim.build()
    limit = sim.stable_dt()
    assert err.value.limit == pytest.approx(limit)
    assert f"{limit:.3g}" in str(err.value) and "stiff" in str(err.value)
    assert sim.fields is None  # nothing was allocated


def test_particles_outside_domain():
    sim = ds.MPMSolver(grid=16)
    with pytest.raises(ds.InvalidScene) as err:
        sim.add_body(ds.Box((0.5, 0.5, 0.05), 0.1), ds.FixedCorotated(), name="low")
    assert "outside the usable domain" in str(err.value) and "low" in str(err.value)


def test_non_watertight_mesh(tmp_path):
    box = trimesh.creation.box(extents=(0.1, 0.1, 0.1))
    box.update_faces(np.arange(len(box.faces)) != 0)
    path = tmp_path / "open_box.stl"
    box.export(path)
    with pytest.raises(ds.InvalidMesh) as err:
        ds.MeshShape(str(path))
    assert "watertight" in str(err.value)
    with pytest.raises(ds.InvalidMesh):
        ds.MeshCollider(str(path))


class _Bomb(torch.nn.Module):
    """A 'learned' stress that turns to NaN after a number of calls."""

    def __init__(self, after):
        super().__init__()
        self.calls, self.after = 0, after

    def forward(self, F):
        self.calls += 1
        eye = torch.eye(3, dtype=F.dtype)
        tau = 1e3 * (F @ F.transpose(1, 2) - eye)
        return tau * float("nan") if self.calls > self.after else tau


def test_nan_during_run_names_step_body_and_cause_and_keeps_frames(tmp_path):
    sim = ds.MPMSolver(grid=16, dt=1e-3)
    sim.add_body(ds.Box((0.3, 0.5, 0.5), 0.1), ds.FixedCorotated(E=1e3), name="calm")
    sim.add_body(ds.Box((0.7, 0.5, 0.5), 0.1), ds.NeuralMaterial(elasticity=_Bomb(after=15), wave_speed_estimate=2.0),
                 name="doomed")
    scene = ds.Scene(sim, name="nan_case", steps=30, every=10)
    with pytest.raises(ds.SimulationDiverged) as err:
        run_scene(scene, tmp_path, progress=False)
    e = err.value
    assert e.step == 20 and e.body == "doomed" and "NaN" in e.cause
    assert "step 20" in str(e) and "doomed" in str(e)
    assert (tmp_path / "frames" / "particles_000001.ply").exists()
    assert not (tmp_path / "frames" / "particles_000002.ply").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and "doomed" in summary["error"]


def test_exploding_speed_is_caught():
    sim = ds.MPMSolver(grid=16, dt=1e-3, gravity=(0, 0, 0))
    sim.add_body(ds.Box((0.5, 0.5, 0.5), 0.1), ds.FixedCorotated(E=1e3), name="rocket", velocity=(200.0, 0, 0))
    sim.build()
    with pytest.raises(ds.SimulationDiverged) as err:
        sim.diagnostics()
    assert "exploding" in str(err.value) and err.value.body == "rocket"


def test_bad_collider_and_scene_options():
    with pytest.raises(ds.InvalidScene):
        ds.SphereCollider(radius=-1.0)
    with pytest.raises(ds.InvalidScene):
        ds.PlaneCollider(kind="glue")
    with pytest.raises(ds.InvalidScene):
        ds.MPMSolver(walls={"-w": "sticky"})
    with pytest.raises(ds.UnstableTimeStep):
        ds.MPMSolver(dt=-1.0)
