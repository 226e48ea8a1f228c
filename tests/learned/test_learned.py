"""Neural constitutive laws: structure by construction, gradients, training, save/load."""
import pytest
import torch

import diffsim as ds
from diffsim.learned.constitutive import ElasticityNet, MLPStress, PlasticityNet, make_law, polar_rotation
from diffsim.learned.training import LawTrainer, load_law, save_law

from _helpers import ROOT, directional_fd_check


def _random_rotations(n, g):
    q = torch.randn(n, 4, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], 1)


def _random_F(n, g):
    F = torch.eye(3, dtype=torch.float64) + 0.3 * torch.randn(n, 3, 3, generator=g, dtype=torch.float64)
    F[torch.linalg.det(F) < 0] *= -1
    return F


def _trained(module, g):
    """Perturb the weights the way training would (a few Adam steps on random targets)."""
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    F = _random_F(64, g)
    for _ in range(20):
        opt.zero_grad()
        out = module(F)
        ((out - torch.randn(out.shape, generator=g, dtype=torch.float64)) ** 2).mean().backward()
        opt.step()
    return module


@pytest.mark.parametrize("trained", [False, True])
def test_structured_laws_are_rotation_equivariant_and_zero_at_rest(trained):
    g = torch.Generator().manual_seed(1 + int(trained))
    el, pl = ElasticityNet(width=32, depth=2, stress_scale=1e4).double(), PlasticityNet(width=32).double()
    if trained:
        _trained(el, g), _trained(pl, g)
    F = _random_F(200, g)
    Q = _random_rotations(200, g)
    with torch.no_grad():
        tau, tauQ = el(F), el(Q @ F)
        rel = (tauQ - Q @ tau @ Q.transpose(1, 2)).abs().max() / tau.abs().max()
        assert rel < 1e-5
        Fe, FeQ = pl(F), pl(Q @ F)
        assert (FeQ - Q @ Fe).abs().max() < 1e-5
        eye = torch.eye(3, dtype=torch.float64)[None]
        assert torch.equal(el(eye), torch.zeros_like(eye))      # exactly zero stress at rest
        assert torch.equal(pl(eye), eye)                          # exactly I
        assert not torch.equal(tau, torch.zeros_like(tau))        # but not trivially zero


def test_unstructured_baseline_has_no_such_guarantees():
    g = torch.Generator().manual_seed(3)
    mlp = MLPStress(width=32, depth=2, stress_scale=1e4).double()
    F, Q = _random_F(50, g), _random_rotations(50, g)
    with torch.no_grad():
        eye = torch.eye(3, dtype=torch.float64)[None]
        assert mlp(eye).abs().max() > 0
        assert (mlp(Q @ F) - Q @ mlp(F) @ Q.transpose(1, 2)).abs().max() > 1e-3


def test_polar_rotation():
    g = torch.Generator().manual_seed(4)
    F = _random_F(100, g)
    R = polar_rotation(F)
    eye = torch.eye(3, dtype=torch.float64)
    assert (R.transpose(1, 2) @ R - eye).abs().max() < 1e-12
    S = R.transpose(1, 2) @ F
    assert (S - S.transpose(1, 2)).abs().max() < 1e-12
    assert torch.allclose(torch.linalg.det(R), torch.ones(100, dtype=torch.float64))


def _probe_scene(opts):
    from diffsim.scene import build_scene
    return build_scene(ROOT / "scenes" / "material_probe.py", opts)


@pytest.mark.parametrize("kind", ["structured", "potential", "potential_yield"])
def test_network_weight_gradients_through_mpm_match_finite_differences(kind):
    """>= 20 MPM substeps with an elastic + plastic law, f64, 1e-4 relative (the potential
    law's stress is itself a derivative: its backward is a second derivative). With a yield
    surface the last parameter is its radius (its gradient is not zero: some particles flow)."""
    torch.manual_seed(0)
    surface = {"yield_strain": 2e-3} if kind == "potential_yield" else {}
    el, pl = make_law(kind.split("_")[0], plastic=True, width=16, depth=2, stress_scale=2e4, **surface)
    scene = _probe_scene({"material": "plasticine", "grid": 16})
    sim = scene.solver
    ref = sim.bodies[0].material
    sim.bodies[0].material = ds.NeuralMaterial(elasticity=el, plasticity=pl, density=ref.density,
                                               wave_speed_estimate=ref.wave_speed())
    sim.build()
    start = sim.initial_state()
    w = torch.randn(sim.n, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    params = [*list(el.parameters())[:2], list(pl.parameters())[-1]]

    def loss():
        sim.reset()
        final, _ = ds.rollout(sim, 24, state=start)
        return (final.x * w).sum()

    grads = torch.autograd.grad(loss(), params)
    assert all(float(g.abs().max()) > 0 for g in grads)

    def f(*ps):
        with torch.no_grad():
            for p, v in zip(params, ps):
                p.copy_(v)
        return loss().item()

    base = [p.detach().clone() for p in params]
    res = directional_fd_check(f, base, grads, h_rel=1e-4, n_dirs=1)
    for p, v in zip(params, base):
        p.data.copy_(v)
    assert max(r[2] for r in res) < 1e-4, res
    sim.close()


def test_training_reduces_the_loss_and_laws_round_trip(tmp_path):
    from diffsim.trajectory import record
    opts = {"material": "jelly", "grid": 16, "duration": 0.08}
    scene = _probe_scene(opts)
    data = record(scene, scene.steps, scene.every, progress=False, full_state=True)
    scene.solver.close()
    torch.manual_seed(0)
    el, pl = make_law("structured", plastic=False, width=16, depth=2, stress_scale=5e3)
    trainer = LawTrainer(_probe_scene(opts), data, el, pl, lr=3e-3, window_start=2, window_end=3)
    target = torch.tensor(data.positions[1:])

    def full_loss():
        with torch.no_grad():
            return float(((trainer.rollout_positions(0, data.frames - 1) - target) ** 2).mean())

    before = full_loss()
    trainer.train(12, progress=False)
    after = full_loss()
    assert after < 0.9 * before, (before, after)
    path = tmp_path / "law.pt"
    save_law(path, el, pl, metadata=trainer.metadata())
    el2, pl2, meta = load_law(path)
    F = torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn(5, 3, 3, dtype=torch.float64)
    assert pl2 is None and meta["body"] == "sample" and meta["iterations"] == 12
    assert torch.equal(el(F), el2(F))
    trainer.sim.close()


def test_train_law_under_torchrun_equals_one_process(tmp_path):
    """Data parallel training (2 CPU processes, gloo): each rolls out one of the iteration's
    two windows and the gradients are summed; losses and weights equal one process doing
    both windows."""
    import os
    import subprocess
    import sys
    probe = ROOT / "scenes" / "material_probe.py"
    data = tmp_path / "d.npz"
    env = dict(os.environ)
    gen = subprocess.run([sys.executable, "-m", "diffsim", "generate", str(probe), "--out", str(data), "--full-state",
                          "--set", "material=jelly", "--set", "grid=12", "--set", "duration=0.06", "--quiet",
                          "--precision", "f64"], capture_output=True, text=True, timeout=300, env=env)
    assert gen.returncode == 0, gen.stderr
    common = ["train-law", "--data", str(data), "--batch", "2", "--iters", "3", "--width", "8", "--window", "1,2",
              "--quiet", "--threads", "1"]
    one = subprocess.run([sys.executable, "-m", "diffsim", *common, "--out", str(tmp_path / "one.pt")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr
    import socket
    with socket.socket() as sock:       # a free port for the rendezvous (a fixed one may linger in TIME_WAIT)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(port), "-m", "diffsim", *common,
                          "--out", str(tmp_path / "two.pt")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    el1, _, m1 = load_law(tmp_path / "one.pt")
    el2, _, m2 = load_law(tmp_path / "two.pt")
    assert m2["processes"] == 2 and m1["processes"] == 1
    l1 = [h["loss_mm2"] for h in m1["history"]]
    l2 = [h["loss_mm2"] for h in m2["history"]]
    assert l1 == pytest.approx(l2, rel=1e-9), (l1, l2)
    for a, b in zip(el1.state_dict().values(), el2.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
