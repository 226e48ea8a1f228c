"""An FEM pad and a torch step module (learned/damping.py's particles) coupled by a torch
contact term: the composition runs like the FEM stepping with forces, conserves momentum
through the term, and its gradients match central differences."""
import numpy as np
import pytest
import torch

import diffsim as ds
from _helpers import central_difference
from diffsim.learned.damping import LinearDamping

T = torch.float64
STEPS = 150


def _scene(E=1e5, rate=0.5):
    fem = ds.FEMSolver(dt=1e-4, tape_substeps=50)
    pad = fem.add_body(ds.box_tet_mesh((0.04, 0.04, 0.01), (4, 4, 1)), ds.FEMMaterial(E=E, nu=0.3, density=1000),
                       name="pad")
    fem.fix_nodes(pad, pad.nodes_where(lambda X: X[:, 2] < 1e-9))
    X = fem.rest_state()[0]
    top = X[np.abs(X[:, 2] - X[:, 2].max()) < 1e-9]
    inner = top[(top[:, 0] > 1e-3) & (top[:, 0] < 0.039) & (top[:, 1] > 1e-3) & (top[:, 1] < 0.039)]
    x = inner + [0.0, 0.0, 3e-3]                     # one grain above each inner top node
    v = np.tile([0.02, -0.01, -0.4], (len(x), 1))
    grains = LinearDamping(x, v, dt=1e-4, rate=rate, mass=1e-3)
    return ds.FEMModuleCoupling(fem, grains, ds.ParticleContact(radius=2e-3, stiffness=400.0, damping=0.02))


def test_grains_bounce_off_the_pad_and_the_rollout_equals_stepping():
    both = _scene()
    with torch.no_grad():
        out = ds.rollout(both, STEPS, record_every=50)
    xb = out.final.module.x
    assert [k for k, _ in out.records] == [50, 100, 150]
    assert float(out.final.module.v[:, 2].min()) > 0          # every grain bounced back up
    top = float(both.fem.rest_state()[0][:, 2].max())
    assert float(xb[:, 2].min()) > top                        # none went through
    assert float(out.outputs["force"][:, :, 2].abs().max()) > 0  # the pad felt them
    both.reset()
    both.step(STEPS)
    np.testing.assert_allclose(both.module.current_state().x.numpy(), xb.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(both.fem.positions(), out.final.fem.x.numpy(), rtol=0, atol=1e-12)


def test_contact_term_is_equal_and_opposite():
    term = ds.ParticleContact(radius=2e-3, stiffness=400.0, damping=0.05)
    g = torch.Generator().manual_seed(0)
    xa, xb = torch.rand(30, 3, generator=g, dtype=T) * 0.01, torch.rand(40, 3, generator=g, dtype=T) * 0.01
    va, vb = torch.randn(30, 3, generator=g, dtype=T), torch.randn(40, 3, generator=g, dtype=T)
    fa, fb = term(xa, va, xb, vb)
    assert float(fa.abs().sum()) > 0
    torch.testing.assert_close(fa.sum(0), -fb.sum(0), rtol=0, atol=1e-12)
    far = term(xa, va, xb + 1.0, vb)
    assert float(far[0].abs().sum()) == 0 and float(far[1].abs().sum()) == 0
    with pytest.raises(ds.InvalidScene, match="contact.force"):
        ds.FEMModuleCoupling(_scene().fem, _drag_without_force(), term)


def _drag_without_force():
    class NoForce(LinearDamping):
        controls = ("wind.velocity",)
    return NoForce(np.zeros((1, 3)), np.zeros((1, 3)), dt=1e-4)


def test_gradients_through_the_contact_match_central_differences():
    both = _scene()
    n_b = both.module.n
    w = torch.linspace(-1.0, 1.0, n_b * 3, dtype=T).reshape(n_b, 3)
    dv = torch.linspace(0.5, -0.5, n_b * 3, dtype=T).reshape(n_b, 3)

    def loss(E, rate, eps_v=0.0):
        start = both.initial_state()
        mod = start["module"].replace(v=start["module"].v + eps_v * dv)
        out = ds.rollout(both, STEPS, state=ds.State(fem=start["fem"], module=mod),
                         params={"fem.pad.E": E, "module.rate": rate})
        return (out.final.module.x * w).sum() * 1e3 + out.final.fem.x[:, 2].sum() * 1e3, out

    E = torch.tensor(1e5, dtype=T, requires_grad=True)
    rate = torch.tensor(0.5, dtype=T, requires_grad=True)
    eps = torch.tensor(0.0, dtype=T, requires_grad=True)
    L, out = loss(E, rate, eps)
    L.backward()
    checks = {"fem.pad.E": (float(E.grad), central_difference(lambda h: loss(1e5 + h, 0.5)[0], 10.0)),
              "module.rate": (float(rate.grad), central_difference(lambda h: loss(1e5, 0.5 + h)[0], 1e-4)),
              "module start velocity": (float(eps.grad), central_difference(lambda h: loss(1e5, 0.5, h)[0], 1e-5))}
    for name, (an, fd) in checks.items():
        print(f"{name}: analytic {an:.8e} central {fd:.8e}")
        assert abs(fd) > 1e-9, name
        assert an == pytest.approx(fd, rel=1e-4), name


def test_checkpoint_restore_continues_the_coupled_run():
    both = _scene()
    both.step(60)
    arrays, meta = both.checkpoint()
    both.step(40)
    expected = both.module.current_state().x.detach().clone(), both.fem.positions().copy()
    again = _scene()
    again.restore(arrays, meta)
    assert again.step_count == 60 and again.time == pytest.approx(60 * again.dt)
    again.step(40)
    torch.testing.assert_close(again.module.current_state().x, expected[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(again.fem.positions(), expected[1], rtol=0, atol=1e-12)
    d = again.diagnostics()
    assert set(d["module"]) == {"kinetic", "elastic", "momentum"} and d["kinetic"] >= d["module"]["kinetic"]
    x, data = again.frame()["particles"]
    assert len(x) == again.n and set(np.unique(data["body"])) == {0, 1}
