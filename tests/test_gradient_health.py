"""Gradient health checks: a NaN/inf adjoint raises GradientNotFinite naming the substep,
the stage and the particle; ``check_gradients=False`` lets it through."""
import numpy as np
import pytest
import torch

import diffsim as ds
from diffsim.autodiff import MPMState


def _two_blobs():
    sim = ds.MPMSolver(grid=16, dt=1e-3)
    far = np.array([[0.25, 0.25, 0.6]])              # an isolated particle
    sim.add_particles(far, ds.FixedCorotated(E=1e3, nu=0.3), name="lone")
    mat = ds.FixedCorotated(E=1e3, nu=0.3)
    sim.add_body(ds.Box(center=(0.65, 0.65, 0.5), size=0.15), mat, name="block")
    return sim.build()


def _state(sim, poison):
    s = ds.initial_state(sim)
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
