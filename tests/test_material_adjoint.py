"""The material stage's hand-written adjoint (SVD/polar based) against finite differences, f64."""
import math

import numpy as np
import pytest
import torch

import diffsim as ds
from diffsim.mpm.rollout import _MaterialStage, parameter_tensor

MATERIALS = {
    "fixed_corotated": ds.FixedCorotated(E=1e4, nu=0.3),
    "neo_hookean": ds.NeoHookean(E=1e4, nu=0.3),
    "von_mises": ds.VonMises(E=1e4, nu=0.3, yield_stress=50.0),
    "drucker_prager": ds.DruckerPrager(E=1e4, nu=0.3, friction_angle=math.radians(30)),
    "drucker_prager_cohesive": ds.DruckerPrager(E=1e4, nu=0.3, friction_angle=math.radians(25), cohesion=200.0),
    "fluid": ds.NewtonianFluid(bulk_modulus=1e4, viscosity=1.0),
    "viscoplastic": ds.ViscoplasticFluid(bulk_modulus=1e4, viscosity=1.0, yield_stress=20.0, regularization=0.5),
}
# which entries of the parameter 4-vector are real parameters of each model
ACTIVE = {"fixed_corotated": 2, "neo_hookean": 2, "von_mises": 3, "drucker_prager": 4,
          "drucker_prager_cohesive": 4, "fluid": 2, "viscoplastic": 4}


def _solver(material, n):
    rng = np.random.default_rng(1)
    sim = ds.MPMSolver(grid=16, dt=1e-4)
    sim.add_particles(0.4 + 0.2 * rng.random((n, 3)), material, volume=1e-6)
    return sim.build()


@pytest.mark.parametrize("name", list(MATERIALS))
def test_material_stage_gradcheck(name):
    mat = MATERIALS[name]
    n = 6
    sim = _solver(mat, n)
    rng = np.random.default_rng(2)
    if name in ("fluid", "viscoplastic"):
        F0 = np.eye(3)[None] * (1 + 0.1 * rng.standard_normal(n))[:, None, None]
    else:
        F0 = np.eye(3) + 0.15 * rng.standard_normal((n, 3, 3))
        F0[0] = np.eye(3)                       # at rest: equal singular values
        F0[1] = np.diag([1.1, 1.1, 0.9])        # two equal singular values
    F = torch.tensor(F0, requires_grad=True)
    C = torch.tensor(30 * rng.standard_normal((n, 3, 3)), requires_grad=True)
    prm0 = parameter_tensor(sim).detach()
    k = ACTIVE[name]

    def stage(F, C, p_active):
        prm = torch.cat([p_active, prm0[:, k:]], 1)
        return _MaterialStage.apply(sim, F, C, prm)

    p = prm0[:, :k].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(stage, (F, C, p), eps=1e-6, atol=1e-5, rtol=1e-4)
    sim.close()


def test_rest_state_has_zero_stress_and_finite_gradient():
    sim = _solver(ds.FixedCorotated(E=1e4, nu=0.3), 4)
    F = torch.eye(3, dtype=torch.float64).repeat(4, 1, 1).requires_grad_(True)
    C = torch.zeros(4, 3, 3, dtype=torch.float64, requires_grad=True)
    prm = parameter_tensor(sim).clone().requires_grad_(True)
    F1, tau = _MaterialStage.apply(sim, F, C, prm)
    assert torch.allclose(tau, torch.zeros_like(tau), atol=1e-9)
    (tau.square().sum() + F1.sum()).backward()
    for t in (F.grad, C.grad, prm.grad):
        assert torch.isfinite(t).all()
    sim.close()
