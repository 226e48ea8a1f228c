"""The material stage's hand-written adjoint (spectral/SVD/polar based) against finite differences, f64.

The stage maps ``F - I`` to ``F_e - I`` (how the solver stores deformation gradients); the
tests pass and compare ``F``."""
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
        F0[2] = np.eye(3) + 1e-5 * rng.standard_normal((3, 3))   # strains of 1e-5 (sand near rest)
    F = torch.tensor(F0, requires_grad=True)
    C = torch.tensor(30 * rng.standard_normal((n, 3, 3)), requires_grad=True)
    prm0 = parameter_tensor(sim).detach()
    k = ACTIVE[name]

    def stage(F, C, p_active):
        prm = torch.cat([p_active, prm0[:, k:]], 1)
        eye = torch.eye(3, dtype=F.dtype)
        D1, tau = _MaterialStage.apply(sim, F - eye, C, prm)
        return D1 + eye, tau

    p = prm0[:, :k].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(stage, (F, C, p), eps=1e-6, atol=1e-5, rtol=1e-4)
    sim.close()


@pytest.mark.parametrize("name", ["von_mises", "drucker_prager_cohesive"])
def test_hencky_svd_form_near_singular_states(name):
    """Trial states with a stretch below 1e-2 (or inverted) take the SVD form of the Hencky
    models; the two forms are one function (equal just above and below the switch) and the
    SVD form's adjoint matches central differences (relative to the Jacobian's size: the
    stress is stiff there)."""
    sim = _solver(MATERIALS[name], 3)
    prm = parameter_tensor(sim).detach()
    eye = torch.eye(3, dtype=torch.float64)
    C = torch.zeros(3, 3, 3, dtype=torch.float64)
    s3 = 1e-2 * (1 + 1e-9)
    rot = torch.tensor(np.linalg.qr(np.random.default_rng(3).standard_normal((3, 3)))[0])
    F = torch.stack([torch.diag(torch.tensor([1.0, 0.9, s3], dtype=torch.float64)),
                     torch.diag(torch.tensor([1.0, 0.9, s3 * (1 - 2e-9)], dtype=torch.float64)),
                     rot @ torch.diag(torch.tensor([1.05, 0.95, 0.006], dtype=torch.float64))])
    with torch.no_grad():
        D1, tau = _MaterialStage.apply(sim, F - eye, C, prm)
    assert torch.allclose(D1[0], D1[1], atol=1e-7) and torch.allclose(tau[0], tau[1], rtol=1e-6)

    def stage(F):
        D1, tau = _MaterialStage.apply(sim, F - eye, C, prm)
        return torch.cat([(D1 + eye).flatten(), tau.flatten() / 1e4])
    J = torch.autograd.functional.jacobian(stage, F)
    h = 1e-7
    for idx in np.ndindex(3, 3):
        e = torch.zeros(3, 3, 3, dtype=torch.float64)
        e[(2,) + idx] = h
        fd = (stage(F + e) - stage(F - e)) / (2 * h)
        col = J[(slice(None), 2) + idx]
        assert (col - fd).abs().max() < 1e-6 * J.abs().max(), (idx, (col - fd).abs().max())
    sim.close()


def test_rest_state_has_zero_stress_and_finite_gradient():
    sim = _solver(ds.FixedCorotated(E=1e4, nu=0.3), 4)
    F = torch.eye(3, dtype=torch.float64).repeat(4, 1, 1).requires_grad_(True)
    C = torch.zeros(4, 3, 3, dtype=torch.float64, requires_grad=True)
    prm = parameter_tensor(sim).clone().requires_grad_(True)
    F1, tau = _MaterialStage.apply(sim, F - torch.eye(3, dtype=F.dtype), C, prm)
    assert torch.allclose(tau, torch.zeros_like(tau), atol=1e-9)
    (tau.square().sum() + F1.sum()).backward()
    for t in (F.grad, C.grad, prm.grad):
        assert torch.isfinite(t).all()
    sim.close()
