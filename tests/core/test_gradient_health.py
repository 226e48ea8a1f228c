"""Gradient health checks: a NaN/inf adjoint raises GradientNotFinite naming the substep,
the stage and the particle; ``check_gradients=False`` lets it through."""
import numpy as np
import pytest
import torch

import diffsim as ds
from diffsim.mpm.rollout import MPMState


def _two_blobs():
    sim = ds.MPMSolver(grid=16, dt=1e-3)
    far = np.array([[0.25, 0.25, 0.6]])              # an isolated particle
    sim.add_particles(far, ds.FixedCorotated(E=1e3, nu=0.3), name="lone")
    mat = ds.FixedCorotated(E=1e3, nu=0.3)
    sim.add_body(ds.Box(center=(0.65, 0.65, 0.5), size=0.15), mat, name="block")
    return sim.build()


def _state(sim, poison):
    s = sim.current_state()
    v = s.v.clone()
    if poison:
        v[0, 0] = float("nan")                        # the lone particle: its grid nodes turn NaN
    x = s.x.clone().requires_grad_(True)
    return x, MPMState(x, v, s.C, s.F)


def test_nan_in_g2p_names_substep_stage_and_particle():
    sim = _two_blobs()
    x, st = _state(sim, poison=True)
    final, _ = ds.rollout(sim, 12, state=st, checkpoint_every=4)
    loss = final.x[1:].sum()                          # finite: the block never meets the lone particle
    assert torch.isfinite(loss)
    with pytest.raises(ds.GradientNotFinite) as e:
        loss.backward()
    err = e.value
    assert err.stage == "G2P" and err.step == 11      # the last substep is reversed first
    assert "particle 0 (body 'lone'" in str(err) and "substep 11" in str(err)


def test_check_can_be_switched_off_and_nan_then_propagates():
    sim = _two_blobs()
    x, st = _state(sim, poison=True)
    final, _ = ds.rollout(sim, 12, state=st, checkpoint_every=4, check_gradients=False)
    final.x[1:].sum().backward()
    assert not torch.isfinite(x.grad[0]).all()        # silently NaN, as documented
    assert torch.isfinite(x.grad[1:]).all()


def test_non_finite_loss_gradient_is_reported_as_the_loss_stage():
    sim = _two_blobs()
    x, st = _state(sim, poison=False)
    final, _ = ds.rollout(sim, 6, state=st)
    u = final.x[3, 0] - final.x[3, 0].detach()
    loss = u.abs().sqrt() + final.x.sum()             # d sqrt|u| / du = inf at u = 0
    with pytest.raises(ds.GradientNotFinite) as e:
        loss.backward()
    assert e.value.stage.startswith("loss") and e.value.step == 5 and "particle 3" in str(e.value)


def test_finite_gradients_are_untouched_by_the_check():
    sim = _two_blobs()
    grads = []
    for check in (True, False):
        x, st = _state(sim, poison=False)
        sim.time, sim.step_count = 0.0, 0
        final, _ = ds.rollout(sim, 8, state=st, checkpoint_every=3, check_gradients=check)
        (final.x ** 2).sum().backward()
        grads.append(x.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_dem_nan_names_step_and_sphere():
    sim = ds.DEMSolver((-0.01, -0.01, -0.01), (0.01, 0.01, 0.01), ds.DEMMaterial(E=5e6, nu=0.3), dt=1e-6,
                       gravity=(0, 0, 0), requires_grad=True)
    sim.add_particles(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 2.1e-3], [0.005, 0.005, 0.005]]), 1e-3)
    v0 = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    x = ds.rollout(sim, 5, state=sim.initial_state().replace(v=v0)).final.x
    loss = (x[2, 0] - x[2, 0].detach()).abs().sqrt() + x.sum()
    with pytest.raises(ds.GradientNotFinite) as e:
        loss.backward()
    assert e.value.step == 4 and "sphere 2" in str(e.value)


def test_fem_nan_names_substep_and_node():
    mesh = ds.box_tet_mesh((0.02, 0.02, 0.01), (2, 2, 1))
    sim = ds.FEMSolver(dt=1e-5, gravity=(0, 0, -9.81), tape_substeps=10)
    sim.add_body(mesh, ds.FEMMaterial(E=1e5, nu=0.3, density=1000))
    E = torch.tensor(1e5, dtype=torch.float64, requires_grad=True)
    x = ds.rollout(sim, 20, record_every=10, params={"E": E}).final.x
    loss = (x[4, 2] - x[4, 2].detach()).abs().sqrt() + x.sum()
    with pytest.raises(ds.GradientNotFinite) as e:
        loss.backward()
    assert e.value.step == 20 and e.value.stage.startswith("loss") and "node 4" in str(e.value)


class _NanGradientLaw(torch.nn.Module):
    """A linear stress plus a term whose derivative is infinite at the rest state."""

    def forward(self, F):
        eye = torch.eye(3, dtype=F.dtype)
        kink = (F[..., 0, 0] - F[..., 0, 0].detach()).abs().sqrt()
        return 1e3 * (F - eye) + kink[..., None, None] * eye


def test_torch_material_path_names_the_substep_and_stage():
    sim = ds.MPMSolver(grid=16, dt=1e-3)
    sim.add_body(ds.Box((0.5, 0.5, 0.5), 0.15), ds.NeuralMaterial(elasticity=_NanGradientLaw(), density=1000,
                                                                  wave_speed_estimate=1.0), name="n")
    sim.build()
    s = sim.current_state()
    x = s.x.clone().requires_grad_(True)
    final, _ = ds.rollout(sim, 4, state=MPMState(x, s.v, s.C, s.F))
    with pytest.raises(ds.GradientNotFinite) as e:
        final.x.sum().backward()
    assert e.value.step == 3 and e.value.stage == "material"
