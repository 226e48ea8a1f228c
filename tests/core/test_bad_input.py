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


@pytest.mark.parametrize("name, shape", [("F", (4, 3)), ("F", (5, 3, 3)), ("x", (4, 2))])
def test_mpm_state_of_the_wrong_shape_names_the_array(name, shape):
    sim = ds.MPMSolver(grid=16, dt=1e-4)
    sim.add_particles(np.full((4, 3), 0.5) + 0.01 * np.arange(4)[:, None], ds.FixedCorotated(E=1e4))
    sim.build()
    with pytest.raises(ds.InvalidScene, match=rf"state\['{name}'\] has shape"):
        sim.set_state({name: np.zeros(shape)})
    sim.set_state({"F": np.eye(3) * 1.01 + np.zeros((4, 3, 3))})    # the right shape round-trips
    assert np.allclose(sim.get_state()["F"], 1.01 * np.eye(3))
    sim.close()


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


# ----------------------------------------------------------------------------- rollout overrides
# The differentiable path validates parameter overrides like the constructors do.


def _mpm_override(material, **overrides):
    sim = ds.MPMSolver(grid=16, dt=1e-3)
    sim.add_body(ds.Box(center=(0.5, 0.5, 0.5), size=0.2), material, name="b")
    sim.build()
    try:
        return ds.rollout(sim, 2, params={"b": overrides})
    finally:
        sim.close()


@pytest.mark.parametrize("material,overrides,words", [
    (ds.FixedCorotated(E=1e3, nu=0.3), {"E": torch.tensor(-1e3)}, ["E", "> 0 Pa", "-1000"]),
    (ds.FixedCorotated(E=1e3, nu=0.3), {"nu": torch.tensor(0.5)}, ["nu", "(-1, 0.5)"]),
    (ds.DruckerPrager(E=1e3, nu=0.3), {"friction_angle": torch.tensor(33.0)}, ["friction_angle", "(0, pi/2) rad"]),
    (ds.DruckerPrager(E=1e3, nu=0.3), {"cohesion": -5.0}, ["cohesion", ">= 0 Pa"]),
    (ds.FixedCorotated(E=1e3, nu=0.3), {"E": torch.tensor([1e3, 2e3])}, ["E", "one-element", "(2,)"]),
])
def test_invalid_overrides_raise_like_the_constructor(material, overrides, words):
    with pytest.raises(ds.InvalidMaterial) as e:
        _mpm_override(material, **overrides)
    for w in words:
        assert w in str(e.value)


def test_override_beyond_the_time_step_limit_is_refused():
    with pytest.raises(ds.UnstableTimeStep) as e:
        _mpm_override(ds.FixedCorotated(E=1e3, nu=0.3), E=torch.tensor(1e7))
    assert "overrides" in str(e.value) and "dt <=" in str(e.value)


def test_one_element_override_tensor_is_accepted():
    E = torch.tensor([1e3], dtype=torch.float64, requires_grad=True)
    sim = ds.MPMSolver(grid=16, dt=1e-3)
    sim.add_body(ds.Box(center=(0.5, 0.5, 0.5), size=0.2), ds.FixedCorotated(E=1e3, nu=0.3), name="b")
    final, _ = ds.rollout(sim.build(), 2, params={"b": {"E": E}})
    final.x[:, 2].sum().backward()
    assert E.grad.shape == (1,) and torch.isfinite(E.grad).all()
    sim.close()


def _dem(model="hertz", **kw):
    mat = ds.DEMMaterial(E=5e6, nu=0.3, model=model, **kw)
    sim = ds.DEMSolver((-0.01, -0.01, -0.01), (0.01, 0.01, 0.01), mat, dt=1e-6, requires_grad=True)
    sim.add_particles(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 2.1e-3]]), 1e-3)
    return sim


@pytest.mark.parametrize("params,exc,words", [
    ({"restitution": torch.tensor(1.5)}, ds.InvalidMaterial, ["restitution", "(0, 1]"]),
    ({"nu": torch.tensor(0.5)}, ds.InvalidMaterial, ["nu", "(-1, 0.5)"]),
    ({"stiffness": torch.tensor(1e4)}, ds.InvalidMaterial, ["stiffness", "linear model", "hertz"]),
    ({"E": torch.tensor([1e6, 2e6])}, ds.InvalidMaterial, ["E", "one-element"]),
    ({"E": torch.tensor(5e12)}, ds.UnstableTimeStep, ["overrides", "Rayleigh"]),
])
def test_dem_overrides_are_validated(params, exc, words):
    sim = _dem()
    with pytest.raises(exc) as e:
        ds.rollout(sim, 2, params=params)
    for w in words:
        assert w in str(e.value)


def test_fem_overrides_are_validated():
    mesh = ds.box_tet_mesh((0.02, 0.02, 0.01), (2, 2, 1))
    sim = ds.FEMSolver(dt=1e-5, gravity=(0, 0, 0), tape_substeps=10)
    sim.add_body(mesh, ds.FEMMaterial(E=1e5, nu=0.3, density=1000))
    with pytest.raises(ds.InvalidMaterial, match=r"nu must be in \(-1, 0.5\)"):
        ds.rollout(sim, 10, params={"nu": torch.tensor(0.5)})
    with pytest.raises(ds.InvalidMaterial, match="friction must be >= 0"):
        ds.rollout(sim, 10, params={"friction": torch.tensor(-0.1)})
    with pytest.raises(ds.UnstableTimeStep, match="overrides"):
        ds.rollout(sim, 10, params={"E": torch.tensor(1e12)})
