"""The hyperelastic potential law family: isotropy, equivariance, zero stress at rest,
stress = derivative of the energy, convexity, and the isotropic plastic projection; the
trainer on several trajectories."""
import numpy as np
import pytest
import torch

from diffsim.learned.constitutive import J_MIN, IsotropicPlasticity, PotentialElasticity, isochoric_invariants

from test_learned import _probe_scene, _random_F, _random_rotations, _trained

EYE = torch.eye(3, dtype=torch.float64)


def _law(trained, seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    el, pl = PotentialElasticity(width=16, depth=2, stress_scale=1e4).double(), IsotropicPlasticity(width=16).double()
    if trained:
        _trained(el, g), _trained(pl, g)
    return el, pl, g


@pytest.mark.parametrize("trained", [False, True])
def test_potential_law_is_isotropic_equivariant_and_zero_at_rest(trained):
    el, pl, g = _law(trained, 11 + int(trained))
    F, Q = _random_F(200, g), _random_rotations(200, g)
    with torch.no_grad():
        tau = el(F)
        scale = tau.abs().max()
        assert scale > 0
        assert (el(Q @ F) - Q @ tau @ Q.transpose(1, 2)).abs().max() < 1e-9 * scale   # frame indifference
        assert (el(F @ Q) - tau).abs().max() < 1e-9 * scale                           # isotropy
        assert (tau - tau.transpose(1, 2)).abs().max() < 1e-9 * scale                 # symmetric
        assert el(EYE[None]).abs().max() < 1e-12 * scale                              # no stress at rest
        Fe = pl(F)
        assert (pl(Q @ F) - Q @ Fe).abs().max() < 1e-12
        assert (pl(F @ Q) - Fe @ Q).abs().max() < 1e-12
        assert torch.equal(pl(EYE[None]), EYE[None])
        b, be = F @ F.transpose(1, 2), Fe @ Fe.transpose(1, 2)
        assert (b @ be - be @ b).abs().max() < 1e-12     # the return keeps the principal directions
        assert (Fe - F).abs().max() > 1e-6                 # and is not the identity map


def _hencky_deviator_norm(F):
    w = torch.linalg.eigvalsh(F @ F.transpose(-1, -2))
    e = 0.5 * torch.log(w)
    return (e - e.mean(-1, keepdim=True)).norm(dim=-1)


@pytest.mark.parametrize("trained", [False, True])
def test_yield_surface_holds_below_and_returns_radially_above(trained):
    """With a yield surface the map is the identity while the deviatoric Green strain is
    inside the learned radius (no creep at rest under a small load), stays isotropic and
    equivariant, and (network corrections zeroed) returns a strain just outside the surface
    onto it, at constant volume, along the trial stretch's own directions."""
    g = torch.Generator().manual_seed(51 + int(trained))
    torch.manual_seed(51)
    pl = IsotropicPlasticity(width=16, yield_strain=0.05).double()
    if trained:
        _trained(pl, g)
    r = float(pl.yield_radius(torch.zeros(())).detach())
    size = 0.06 * torch.rand(300, 1, 1, generator=g, dtype=torch.float64)
    F = _random_rotations(300, g) @ (EYE + size * torch.randn(300, 3, 3, generator=g, dtype=torch.float64))
    Q = _random_rotations(300, g)
    E = 0.5 * (F.transpose(1, 2) @ F - EYE)
    D = E - E.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None] / 3 * EYE
    q = D.norm(dim=(1, 2))
    inside = q < r
    assert 20 < int(inside.sum()) < 280                        # both cases are exercised
    with torch.no_grad():
        Fe = pl(F)
        assert torch.equal(Fe[inside], F[inside])                # no flow inside the surface
        assert (Fe[~inside] - F[~inside]).abs().amax((1, 2)).min() > 1e-6
        assert (pl(Q @ F) - Q @ Fe).abs().max() < 1e-12
        assert (pl(F @ Q) - Fe @ Q).abs().max() < 1e-12
        b, be = F @ F.transpose(1, 2), Fe @ Fe.transpose(1, 2)
        assert (b @ be - be @ b).abs().max() < 1e-12
        pl.mlp[-1].weight.zero_()                                # the radial return alone
        S = torch.diag(torch.tensor([1.0, -0.5, -0.5], dtype=torch.float64))
        for over in (1.02, 1.1, 1.3):
            # a pure deviatoric stretch whose Green-strain deviator norm is `over` x the radius
            lo, hi = 0.0, 1.0
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                Ft = Q[:1] @ torch.matrix_exp(S * mid) @ Q[:1].transpose(1, 2)
                Et = 0.5 * (Ft.transpose(1, 2) @ Ft - EYE)
                Dt = Et - Et.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None] / 3 * EYE
                lo, hi = (mid, hi) if float(Dt.norm()) < over * r else (lo, mid)
            Fr = pl(Ft)
            Er = 0.5 * (Fr.transpose(1, 2) @ Fr - EYE)
            Dr = Er - Er.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None] / 3 * EYE
            assert abs(float(Dr.norm()) / r - 1) < 0.01, (over, float(Dr.norm()) / r)
            assert abs(float(torch.linalg.det(Fr)) - 1) < 0.1 * r ** 2   # isochoric to second order
            assert float(_hencky_deviator_norm(Fr)) < float(_hencky_deviator_norm(Ft))
    with pytest.raises(ValueError, match="yield_strain"):
        IsotropicPlasticity(yield_strain=0.0)
    with pytest.raises(ValueError, match="pressure_slope"):
        IsotropicPlasticity(pressure_slope=1.0)


def test_yield_radius_grows_with_compression_only():
    """The cone of a frictional material: the radius grows with compression (tr E < 0) at
    the learned slope, not with dilation; a strain inside it under pressure does not flow
    and the same deviator without the pressure does."""
    pl = IsotropicPlasticity(width=8, yield_strain=0.01, pressure_slope=1.0).double()
    tr = torch.tensor([0.05, 0.0, -0.02, -0.05], dtype=torch.float64)
    r = pl.yield_radius(tr).detach()
    assert torch.allclose(r, torch.tensor([0.01, 0.01, 0.03, 0.06], dtype=torch.float64))
    dev = torch.diag(torch.tensor([0.02, -0.01, -0.01], dtype=torch.float64))
    with torch.no_grad():
        squeezed = torch.linalg.matrix_exp(dev - 0.02 * EYE)[None]   # tr of Green strain ~ -0.06
        free = torch.linalg.matrix_exp(dev)[None]
        assert torch.equal(pl(squeezed), squeezed)
        assert not torch.equal(pl(free), free)


@pytest.mark.parametrize("trained", [False, True])
def test_potential_stress_is_the_derivative_of_the_energy(trained):
    """tau = (d psi / d F) F^T, with psi from the network itself (closed form vs autograd)."""
    el, _, g = _law(trained, 21 + int(trained))
    F = _random_F(80, g)
    F = F[torch.linalg.det(F) > 2 * J_MIN].requires_grad_(True)    # below J_MIN the volume is clamped
    psi = el.energy(isochoric_invariants(F)[0]).sum() * el.stress_scale
    (P,) = torch.autograd.grad(psi, F)
    with torch.no_grad():
        tau = el(F.detach())
        assert (tau - P @ F.detach().transpose(1, 2)).abs().max() < 1e-9 * tau.abs().max()


@pytest.mark.parametrize("trained", [False, True])
def test_energy_is_convex_in_the_invariants_and_monotone_in_shear(trained):
    el, _, g = _law(trained, 31 + int(trained))
    n = 400
    x = torch.rand(n, 3, generator=g, dtype=torch.float64) * torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64)
    x[:, 2] -= 0.5
    d = torch.randn(n, 3, generator=g, dtype=torch.float64)
    h = 1e-2
    with torch.no_grad():
        second = el.energy(x + h * d) - 2 * el.energy(x) + el.energy(x - h * d)
        assert second.min() > -1e-10, float(second.min())
        assert float(el.energy(torch.zeros(1, 3, dtype=torch.float64))) == 0.0
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(el.energy(xr).sum(), xr)
    assert grad[:, :2].min() >= 0                      # psi_1, psi_2 >= 0: shear stiffness never negative
    z = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    (g0,) = torch.autograd.grad(el.energy(z).sum(), z)
    assert abs(float(g0[0, 2])) < 1e-12                # no pressure at rest


def test_small_strain_moduli_are_positive():
    el, _, _ = _law(False, 41)
    eps = 1e-5
    with torch.no_grad():
        bulk = el((EYE * (1 + eps))[None])[0].trace() / 3 / (3 * eps)
        S = torch.zeros(3, 3, dtype=torch.float64)
        S[0, 1] = S[1, 0] = eps
        shear = el((EYE + S)[None])[0, 0, 1] / (2 * eps)
    assert bulk > 0 and shear > 0
    assert 0.05 < float(shear) / 1e4 < 5 and 0.05 < float(bulk) / 1e4 < 5   # the init starts near stress_scale


def test_trainer_on_two_trajectories_averages_their_gradients():
    """One iteration on two recorded motions (press and twist) has the mean of the two
    single-trajectory gradients."""
    from diffsim.learned.constitutive import make_law
    from diffsim.learned.training import LawTrainer
    from diffsim.trajectory import record
    base = {"material": "jelly", "grid": 12, "duration": 0.04}
    options = [base, dict(base, spin=6.0, velocity=(0.0, 0.0, 0.0))]
    datas = []
    for o in options:
        scene = _probe_scene(o)
        datas.append(record(scene, scene.steps, scene.every, progress=False))   # no full state: windows from 0
        scene.solver.close()
    assert not np.allclose(datas[0].positions[-1], datas[1].positions[-1])
    torch.manual_seed(0)
    el, _ = make_law("potential", width=8, depth=2, stress_scale=5e3)
    trainer = LawTrainer([_probe_scene(o) for o in options], datas, el, lr=0.0, clip=1e30, window_start=2,
                         window_end=2)
    assert trainer.batch == 2
    trainer.train(1, progress=False)
    both = [p.grad.clone() for p in trainer.params]
    singles = []
    for case, d in enumerate(datas):
        trainer.opt.zero_grad()
        pred = trainer.rollout_positions(0, 2, case=case)
        (((pred - torch.tensor(d.positions[1:3])) ** 2).mean() / 1e-6).backward()
        singles.append([p.grad.clone() for p in trainer.params])
    for b, s0, s1 in zip(both, *singles):
        assert torch.allclose(b, 0.5 * (s0 + s1), rtol=1e-10, atol=1e-14)
    assert any((s0 - s1).abs().max() > 1e-3 * s0.abs().max() for s0, s1 in zip(*singles))
    trainer.close()


def test_spin_option_gives_a_rigid_rotation_about_the_vertical_axis():
    scene = _probe_scene({"material": "jelly", "grid": 12, "spin": 5.0, "velocity": (0.1, 0.0, 0.0)})
    scene.build()
    x, v = scene.solver.positions(), scene.solver.get_state()["v"]
    r = x - np.array([0.5, 0.5, 0.0])     # the body's vertical axis: x = y = 0.5
    expected = np.stack([0.1 - 5.0 * r[:, 1], 5.0 * r[:, 0], np.zeros(len(x))], 1)
    assert np.allclose(v, expected, atol=1e-9)
    scene.solver.close()


def test_a_rollout_that_blows_up_undoes_the_step_and_halves_the_learning_rate():
    """A non-finite window (the last step made the law unstable) does not end training:
    the step is undone, the learning rate halved and the iteration repeated; a law that
    keeps blowing up raises after max_backoffs halvings, naming the iteration and window."""
    from diffsim.learned.constitutive import make_law
    from diffsim.learned.training import LawTrainer
    from diffsim.trajectory import record
    opts = {"material": "jelly", "grid": 12, "duration": 0.04}
    scene = _probe_scene(opts)
    data = record(scene, scene.steps, scene.every, progress=False)
    scene.solver.close()
    torch.manual_seed(0)
    el, _ = make_law("potential", width=8, depth=2, stress_scale=5e3)
    trainer = LawTrainer(_probe_scene(opts), data, el, lr=1e-2, window_start=1, window_end=2, max_backoffs=2)
    real = trainer._windows
    calls, seen = [0], []

    def flaky(starts, w, targets):
        calls[0] += 1
        seen.append([p.detach().clone() for p in trainer.params])
        total, bad = real(starts, w, targets)
        return (total, "injected") if calls[0] == 2 else (total, bad)   # the second iteration's first try

    trainer._windows = flaky
    trainer.train(3, progress=False)
    assert calls[0] == 4 and trainer.backoffs == 1 and trainer.lr_factor == 0.5
    assert all(torch.equal(a, b) for a, b in zip(seen[2], seen[0]))        # the first step was undone
    assert not all(torch.equal(a, b) for a, b in zip(seen[1], seen[0]))
    assert trainer.events[0]["iteration"] == 1 and trainer.metadata()["events"] == trainer.events
    assert trainer.history[1]["lr"] < 0.6 * trainer.history[0]["lr"]
    trainer._windows = lambda starts, w, targets: (real(starts, w, targets)[0], "always")
    with pytest.raises(FloatingPointError, match=r"diverged at iteration \d+ \(window of \d frames, always"):
        trainer.train(3, progress=False)
    trainer.close()
