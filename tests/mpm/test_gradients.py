"""Gradients of rollout losses (>= 50 substeps) against central finite differences, f64.

Covers every parameter class of the differentiable MPM: material parameters (E, nu, yield
stress, friction angle), initial positions and velocities, per-step collider velocities
and a NeuralMaterial's weights. Smooth cases must agree to 1e-4 relative.
"""
import math

import numpy as np
import pytest
import torch

import diffsim as ds
from diffsim.mpm.rollout import MPMState

from _helpers import directional_fd_check

STEPS = 50


def _press_scene(material, collider_speed=-0.4):
    """A block on the floor, pressed by a descending sphere (contact throughout)."""
    sim = ds.MPMSolver(grid=16, dt=1e-3, gravity=(0.0, 0.0, -9.81), walls={"-z": "sticky"})
    sim.add_body(ds.Box(center=(0.5, 0.5, 0.27), size=(0.16, 0.16, 0.16)), material, name="block",
                 velocity=(0.05, 0.02, 0.0))
    sim.add_collider(ds.SphereCollider(center=(0.52, 0.49, 0.43), radius=0.09, velocity=(0.0, 0.0, collider_speed),
                                       friction=0.3, name="press"))
    return sim.build()


def _rollout_loss(sim, weights, x0, v0, params=None, cvel=None):
    """Loss after STEPS substeps from (x0, v0) with C = 0 and F = I."""
    sim.time, sim.step_count = 0.0, 0
    for c in sim.colliders:
        c.reset()
    n = x0.shape[0]
    state = MPMState(x0, v0, torch.zeros(n, 3, 3, dtype=x0.dtype), torch.eye(3, dtype=x0.dtype).repeat(n, 1, 1))
    cv = {"press": cvel} if cvel is not None else None
    final, _ = ds.rollout(sim, STEPS, state=state, params=params, control=cv)
    return (final.x * weights).sum() + 0.05 * (final.v * weights).sum()


def _check(results, tol):
    worst = max(r[2] for r in results)
    assert worst <= tol, f"relative errors {[f'{r[2]:.2e}' for r in results]} (worst {worst:.2e} > {tol})"
    return worst


def test_elastic_parameters_initial_state_and_collider_velocity():
    sim = _press_scene(ds.FixedCorotated(E=3e3, nu=0.3))
    s = sim.current_state()
    w = torch.randn(sim.n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    E = torch.tensor(3e3, dtype=torch.float64, requires_grad=True)
    nu = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    x0 = s.x.clone().requires_grad_(True)
    v0 = s.v.clone().requires_grad_(True)
    cv = torch.tensor([0.0, 0.0, -0.4], dtype=torch.float64).repeat(STEPS, 1).requires_grad_(True)

    def f(E, nu, x0, v0, cv):
        return _rollout_loss(sim, w, x0, v0, {"block": {"E": E, "nu": nu}}, cv)

    loss = f(E, nu, x0, v0, cv)
    loss.backward()
    # the sphere really pushes the block: the collider velocity matters
    assert cv.grad.abs().sum() > 0 and E.grad.abs() > 0
    with torch.no_grad():
        res = directional_fd_check(lambda *a: f(*a).item(), [E, nu, x0, v0, cv],
                                   [E.grad, nu.grad, x0.grad, v0.grad, cv.grad], h_rel=1e-6, n_dirs=2)
    _check(res, 1e-4)
    sim.close()


@pytest.mark.parametrize("model", ["neo_hookean", "von_mises", "drucker_prager"])
def test_material_parameters_through_plasticity(model):
    if model == "neo_hookean":
        mat, names = ds.NeoHookean(E=3e3, nu=0.3), ("E", "nu")
    elif model == "von_mises":
        mat, names = ds.VonMises(E=5e3, nu=0.3, yield_stress=60.0), ("E", "yield_stress")
    else:
        mat, names = ds.DruckerPrager(E=5e3, nu=0.3, friction_angle=math.radians(30)), ("E", "friction_angle")
    sim = _press_scene(mat)
    s = sim.current_state()
    w = torch.randn(sim.n, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    vals = [torch.tensor(float(getattr(mat, k)), dtype=torch.float64, requires_grad=True) for k in names]

    def f(*p):
        return _rollout_loss(sim, w, s.x, s.v, {"block": dict(zip(names, p))})

    f(*vals).backward()
    with torch.no_grad():
        res = directional_fd_check(lambda *a: f(*a).item(), vals, [v.grad for v in vals], h_rel=1e-7, n_dirs=1)
    _check(res, 1e-4)
    sim.close()


class _TinyNet(torch.nn.Module):
    """A small stress network: tau = mu_net(F) (F F^T - I) + lam_net(F) log(J) I."""

    def __init__(self):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        self.mlp.double()
        torch.nn.init.normal_(self.mlp[2].weight, std=0.1)

    def forward(self, F):
        J = torch.det(F)
        B = F @ F.transpose(1, 2)
        feats = torch.stack([torch.log(J), B.diagonal(dim1=1, dim2=2).sum(-1) - 3.0], -1)
        ml = 1e3 * torch.nn.functional.softplus(self.mlp(feats) + 1.0)
        eye = torch.eye(3, dtype=F.dtype)
        return ml[:, 0, None, None] * (B - eye) + ml[:, 1, None, None] * torch.log(J)[:, None, None] * eye


def test_neural_material_weights():
    torch.manual_seed(3)
    net = _TinyNet()
    sim = _press_scene(ds.NeuralMaterial(elasticity=net, density=1000.0, wave_speed_estimate=5.0))
    s = sim.current_state()
    w = torch.randn(sim.n, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    params = list(net.parameters())
    grads = torch.autograd.grad(_rollout_loss(sim, w, s.x, s.v), params)
    _check_weight_gradients(sim, w, s, params, grads)
    sim.close()


def _check_weight_gradients(sim, w, s, params, grads):
    """``grads`` of the rollout loss against a directional central difference in the
    weights ``params`` (restored afterwards), 1e-4 relative."""
    def f(*ps):
        with torch.no_grad():
            for p, v in zip(params, ps):
                p.copy_(v)
        return _rollout_loss(sim, w, s.x, s.v).item()

    base = [p.detach().clone() for p in params]
    res = directional_fd_check(f, base, grads, h_rel=1e-5, n_dirs=1)
    for p, v in zip(params, base):
        p.data.copy_(v)
    _check(res, 1e-4)


class _TinyPlasticity(torch.nn.Module):
    """A small plastic projection: F_e = F_tr (I - s dev(F_tr^T F_tr - I)), s = 0.1 sigmoid(w)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(-1.0, dtype=torch.float64))

    def forward(self, F):
        eye = torch.eye(3, dtype=F.dtype)
        E = F.transpose(1, 2) @ F - eye
        dev = E - E.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None] / 3 * eye
        return F @ (eye - 0.1 * torch.sigmoid(self.w) * dev)


def test_neural_material_with_plastic_projection():
    torch.manual_seed(4)
    net, plast = _TinyNet(), _TinyPlasticity()
    sim = _press_scene(ds.NeuralMaterial(elasticity=net, plasticity=plast, density=1000.0, wave_speed_estimate=5.0))
    s = sim.current_state()
    w = torch.randn(sim.n, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    params = [plast.w, net.mlp[2].weight]
    grads = torch.autograd.grad(_rollout_loss(sim, w, s.x, s.v), params)
    assert grads[0].abs() > 0
    _check_weight_gradients(sim, w, s, params, grads)
    sim.close()


def test_checkpointing_does_not_change_gradients():
    sim = _press_scene(ds.FixedCorotated(E=3e3, nu=0.3))
    s = sim.current_state()
    grads = []
    for K in (0, 7, 50):
        E = torch.tensor(3e3, dtype=torch.float64, requires_grad=True)
        sim.time, sim.step_count = 0.0, 0
        for c in sim.colliders:
            c.reset()
        final, _ = ds.rollout(sim, STEPS, state=s, params={"block": {"E": E}}, checkpoint_every=K)
        sim.set_state(s.__dict__)
        final.x[:, 2].sum().backward()
        grads.append(E.grad.item())
    assert grads[0] != 0
    assert np.allclose(grads, grads[0], rtol=1e-9, atol=0)
    sim.close()


def test_backward_after_other_rollouts_uses_its_own_trajectory():
    """The tape is shared: a rollout run between a forward and its backward must not
    change the gradient (the segment is recomputed when the tape was overwritten)."""
    sim = _press_scene(ds.FixedCorotated(E=3e3, nu=0.3))
    s = sim.current_state()
    grads = []
    for interleave in (False, True):
        E = torch.tensor(3e3, dtype=torch.float64, requires_grad=True)
        sim.set_state(s.__dict__)
        sim.time, sim.step_count = 0.0, 0
        for c in sim.colliders:
            c.reset()
        final, _ = ds.rollout(sim, STEPS, state=s, params={"block": {"E": E}}, checkpoint_every=0)
        if interleave:
            with torch.no_grad():
                ds.rollout(sim, STEPS, state=s, params={"block": {"E": torch.tensor(9e3, dtype=torch.float64)}})
            E2 = torch.tensor(5e3, dtype=torch.float64, requires_grad=True)
            other, _ = ds.rollout(sim, STEPS, state=s, params={"block": {"E": E2}}, checkpoint_every=0)
        final.x[:, 2].sum().backward()
        grads.append(E.grad.item())
    assert grads[0] != 0 and grads[1] == pytest.approx(grads[0], rel=1e-9)
    sim.close()


@pytest.mark.parametrize("case", ["contact_onset", "yield_onset"])
def test_onset_cases(case):
    """Contact and yield onset inside the window: the loss is only piecewise smooth (a grid
    node entering the collider, a particle starting to yield), so the tolerance is looser.
    Measured (README): ~2e-6 (contact onset), ~9e-6 (yield onset)."""
    if case == "contact_onset":
        mat, names, z = ds.FixedCorotated(E=3e3, nu=0.3), ("E",), 0.455
    else:
        mat, names, z = ds.VonMises(E=5e3, nu=0.3, yield_stress=150.0), ("E", "yield_stress"), 0.43
    sim = ds.MPMSolver(grid=16, dt=1e-3, walls={"-z": "sticky"})
    sim.add_body(ds.Box(center=(0.5, 0.5, 0.27), size=(0.16, 0.16, 0.16)), mat, name="block")
    sim.add_collider(ds.SphereCollider(center=(0.52, 0.49, z), radius=0.09, velocity=(0.0, 0.0, -0.5),
                                       friction=0.3, name="press"))
    sim.build()
    n = sim.n
    x0 = torch.tensor(sim.initial_positions())
    w = torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    vals = [torch.tensor(float(getattr(mat, k)), dtype=torch.float64, requires_grad=True) for k in names]
    cv = torch.tensor([0.0, 0.0, -0.5], dtype=torch.float64).repeat(60, 1).requires_grad_(True)

    def loss(*a):
        sim.time, sim.step_count = 0.0, 0
        sim.colliders[0].reset()
        st = MPMState(x0, torch.zeros(n, 3, dtype=torch.float64), torch.zeros(n, 3, 3, dtype=torch.float64),
                      torch.eye(3, dtype=torch.float64).repeat(n, 1, 1))
        f, _ = ds.rollout(sim, 60, state=st, params={"block": dict(zip(names, a[:-1]))},
                          control={"press": a[-1]})
        return (f.x * w).sum()

    loss(*vals, cv).backward()
    assert all(v.grad.abs() > 0 for v in vals)
    with torch.no_grad():
        res = directional_fd_check(lambda *a: loss(*a).item(), vals + [cv], [v.grad for v in vals] + [cv.grad],
                                   h_rel=1e-4, n_dirs=2)
    _check(res, 1e-3)
    sim.close()
