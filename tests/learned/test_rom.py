"""GIOROM surrogate (learned/giorom.py, learned/rom.py, learned/rom_training.py): neighbour
search, sampling, the decoder's exactness for affine motion and its queries at arbitrary
points, model files, training data checks, training (resume, torchrun), the step module in
ds.rollout (gradients to the initial velocity against central differences) and in
`diffsim run`."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import diffsim as ds
from diffsim.learned.giorom import (FieldDecoder, SparseStepper, bspline_stencil, farthest_point_sample,
                                    radius_graph)
from diffsim.learned.model_file import InvalidModel
from diffsim.learned.rom import GIOROM, ROMBody
from diffsim.sweep import load_dataset
from diffsim.learned.rom_training import ROMData, chamfer, relative_l2, rollout_dense, train_rom

from _helpers import ROOT, central_difference, check_model_file_errors, lattice

SCENE = ROOT / "scenes" / "rom_body.py"
TINY = dict(sparse=24, width=8, layers=1, grid=6, latent=4, modes=2, operator_layers=1, decoder_hidden=8,
            radius=0.12)


def test_radius_graph_equals_brute_force_and_never_crosses_batches():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.uniform(0, 1, (2 * 150, 3)))
    s, r = radius_graph(x, 0.2, batch=2)
    got = set(zip(s.tolist(), r.tolist()))
    want = set()
    for b in range(2):
        for i in range(b * 150, (b + 1) * 150):
            for j in range(b * 150, (b + 1) * 150):
                if i != j and float((x[i] - x[j]).norm()) < 0.2:
                    want.add((j, i))
    assert got == want and len(want) > 300


def test_farthest_point_sampling_spreads_and_checks_its_input():
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 1, (2000, 3))
    ids = farthest_point_sample(pts, 100)
    assert len(set(ids.tolist())) == 100
    from scipy.spatial.distance import pdist
    random_ids = rng.choice(2000, 100, replace=False)
    assert pdist(pts[ids]).min() > 2 * pdist(pts[random_ids]).min()
    with pytest.raises(ValueError, match="1 <= m <= 2000"):
        farthest_point_sample(pts, 2001)


def test_bspline_weights_are_a_partition_of_unity_with_the_right_gradient():
    p = torch.tensor(np.random.default_rng(2).uniform(0.3, 0.7, (50, 3)), requires_grad=True)
    idx, w = bspline_stencil(p, torch.zeros(3, dtype=torch.float64), 0.1, (11, 11, 11))
    assert torch.allclose(w.sum(1), torch.ones(50, dtype=torch.float64), atol=1e-12)
    # the weighted mean of node positions reproduces the point (quadratic B-splines are linear-exact)
    k = torch.stack([idx // 121, (idx // 11) % 11, idx % 11], -1).double() * 0.1
    assert torch.allclose((w[..., None] * k).sum(1), p, atol=1e-12)
    g, = torch.autograd.grad((w * torch.arange(27.0, dtype=torch.float64)).sum(), p)
    h = 1e-6
    e = torch.zeros_like(p)
    e[0, 1] = h
    with torch.no_grad():
        fd = ((bspline_stencil(p + e, torch.zeros(3, dtype=torch.float64), 0.1, (11,) * 3)[1]
               - bspline_stencil(p - e, torch.zeros(3, dtype=torch.float64), 0.1, (11,) * 3)[1]) *
              torch.arange(27.0, dtype=torch.float64)).sum() / (2 * h)
    assert abs(float(g[0, 1]) - float(fd)) < 1e-6 * max(1.0, abs(float(fd)))


def test_decoder_reproduces_rigid_motion_at_any_density():
    """The untrained decoder (zero correction) maps sparse displacements of a rotated and
    moved body to its dense points, at the training density and at 4x the density."""
    dense = torch.tensor(lattice((0.5, 0.5, 0.5), 0.2, 0.01))           # 8000 points
    denser = torch.tensor(lattice((0.5, 0.5, 0.5), 0.2, 0.0063))        # ~4x
    ids = farthest_point_sample(dense.numpy(), 200)
    dec = FieldDecoder().double()
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    R, t = torch.tensor(q), torch.tensor([0.05, -0.02, 0.1])
    for queries in (dense, denser):
        prep = dec.prepare(dense[ids], queries)
        with torch.no_grad():
            u = dec(prep, (dense[ids] @ R.T + t) - dense[ids])
        err = (u - ((queries @ R.T + t) - queries)).norm(dim=1).max()
        assert float(err) < 2e-3 * float(((queries @ R.T + t) - queries).norm(dim=1).max())
    with pytest.raises(ValueError, match="outside the sparse points' box"):
        dec.prepare(dense[ids], dense + 0.5)


def test_model_file_round_trip_and_clear_errors(tmp_path):
    torch.manual_seed(0)
    model = GIOROM("small", **TINY)
    model.save(tmp_path / "m.pt")
    again = GIOROM.load(tmp_path / "m.pt")
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    check_model_file_errors(GIOROM.load, tmp_path / "m.pt", "giorom", "something else")
    with pytest.raises(InvalidModel, match="unknown GIOROM options"):
        GIOROM("small", widht=3)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """Six short MPM runs of scenes/rom_body.py (coarse grid, 10 frames), recorded by a sweep."""
    out = tmp_path_factory.mktemp("rom") / "data"
    ds.sweep(str(SCENE), out, grid={"shape": ["cube", "sphere"], "grid": [16], "frames": [10]}, seeds=(0, 1, 2),
             backend="serial", record=True, progress=False)
    return out


def test_training_data_are_checked(tiny_dataset):
    trajs = load_dataset(tiny_dataset)
    data = ROMData(trajs, sparse=24)
    stats = data.statistics()
    assert all(np.all(np.isfinite(v)) for v in stats.values()) and min(stats["v_std"]) > 0
    assert data.bounds[0][2] > 0 and data.frame_dt == pytest.approx(5e-3)
    with pytest.raises(ds.InvalidScene, match="fewer than the 100000 sparse points"):
        ROMData(trajs, sparse=100000)
    with pytest.raises(ds.InvalidScene, match="no trajectories"):
        ROMData([], sparse=24)
    trajs[0].velocities = None
    with pytest.raises(ds.InvalidScene, match="needs the velocities of frame 0"):
        ROMData(trajs, sparse=24)


def test_training_learns_resumes_bit_identically_and_runs_the_scene(tiny_dataset, tmp_path, monkeypatch):
    kw = dict(config="small", iterations=6, decoder_iterations=2, batch=2, unroll=2, unroll_from=0.7,
              checkpoint_every=100, progress=False, **TINY)
    straight = train_rom(tiny_dataset, tmp_path / "a.pt", **kw)
    calls = {"n": 0}
    batch = ROMData.batch

    def interrupted_at_the_fourth(self, *a):    # Ctrl-C during iteration 3
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return batch(self, *a)
    monkeypatch.setattr(ROMData, "batch", interrupted_at_the_fourth)
    with pytest.raises(ds.errors.RunInterrupted, match="interrupted at step 3"):
        train_rom(tiny_dataset, tmp_path / "b.pt", **kw)
    monkeypatch.setattr(ROMData, "batch", batch)
    blob = torch.load(tmp_path / "b.pt", weights_only=True)
    assert blob["iteration"] == 3
    resumed = train_rom(tiny_dataset, tmp_path / "b.pt", **{**kw, "resume": True})
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    losses = [h["loss"] for h in straight.metadata["history"]]
    assert len(losses) == 8 and all(np.isfinite(losses))

    # the trained file runs a body in `diffsim run` (frames, summary) like an MPM scene
    run = subprocess.run([sys.executable, "-m", "diffsim", "run", str(SCENE), "--set", "solver=rom", "--set",
                          f"model={tmp_path / 'a.pt'}", "--set", "grid=16", "--steps", "4", "--every", "2",
                          "--out", str(tmp_path / "run"), "--quiet", "--no-video"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert len(list((tmp_path / "run").glob("frames/*"))) >= 3

    # evaluation helpers on a held-out run: finite rollout, metrics defined
    traj = load_dataset(tiny_dataset)[0]
    pred = rollout_dense(straight, traj.positions, traj.velocities[0], 10, 0)
    assert pred.shape == traj.positions.shape and np.all(np.isfinite(pred))
    assert relative_l2(traj.positions, traj.positions, 10) == 0.0
    assert np.isfinite(relative_l2(pred, traj.positions, 10)) and chamfer(pred[10], traj.positions[10]) >= 0


def test_training_under_torchrun_equals_one_process(tiny_dataset, tmp_path):
    """2 CPU processes (gloo) share each batch and average gradients: the weights equal one
    process training on the whole batch."""
    common = ["train-rom", str(tiny_dataset), "--iters", "3", "--decoder-iters", "1", "--batch", "2", "--quiet",
              "--threads", "1", *sum((["--set", f"{k}={v}"] for k, v in TINY.items()), [])]
    env = dict(os.environ)
    one = subprocess.run([sys.executable, "-m", "diffsim", *common, "--out", str(tmp_path / "one.pt")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(port), "-m", "diffsim", *common,
                          "--out", str(tmp_path / "two.pt")], capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads(two.stdout.strip().splitlines()[-1])["processes"] == 2
    a, b = GIOROM.load(tmp_path / "one.pt"), GIOROM.load(tmp_path / "two.pt")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-6), k


def test_gradient_of_decoded_positions_wrt_initial_velocity_matches_central_differences():
    """A small random model in float64: d(loss on the decoded dense field after 3 frames)/d(v0)
    through ds.rollout equals central differences."""
    torch.manual_seed(0)
    model = GIOROM("small", bounds=((0.0,) * 3, (1.0,) * 3), frame_dt=5e-3, **TINY).double()
    for last in (model.stepper.decode[-1], model.decoder.correction[-1]):   # trained-like: not zero
        torch.nn.init.normal_(last.weight, std=0.3)
    ref = lattice((0.5, 0.5, 0.5), 0.15, 0.02)
    body = ROMBody(model, ref, velocity=(0.3, -0.2, 0.5))
    target = torch.tensor(ref) + 0.01
    s0 = body.initial_state()

    def loss_of(v0):
        hist = (v0 * body.dt).expand(s0.history.shape)
        out = ds.rollout(body, 3, state=s0.replace(history=hist))
        return ((body.dense(out.final) - target) ** 2).sum()

    v0 = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=True)
    g, = torch.autograd.grad(loss_of(v0), v0)
    assert torch.all(torch.isfinite(g)) and float(g.abs().max()) > 0
    for k in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[k] = 1.0
        fd = central_difference(lambda h: loss_of(v0.detach() + h * e), 1e-6)
        assert abs(float(g[k]) - fd) <= 1e-5 * max(1.0, abs(fd)), (k, float(g[k]), fd)


def test_fitter_recovers_an_initial_velocity_through_the_surrogate():
    """ROMBody goes through the generic Fitter: data recorded from the surrogate (its decoded
    dense points) with one initial velocity, fitted back from rest through vx, vy, vz."""
    from diffsim.fitting import Fitter
    from diffsim.trajectory import record
    torch.manual_seed(2)
    model = GIOROM("small", bounds=((0.0,) * 3, (1.0,) * 3), frame_dt=5e-3, **TINY).double()
    torch.nn.init.normal_(model.stepper.decode[-1].weight, std=0.05)
    ref = lattice((0.5, 0.5, 0.5), 0.15, 0.02)
    truth = ROMBody(model, ref, velocity=(0.4, -0.2, 0.3))
    assert truth.parameter_values() == {"vx": pytest.approx(0.4), "vy": pytest.approx(-0.2), "vz": pytest.approx(0.3)}
    data = record(ds.Scene(truth, name="rom_truth", steps=6, every=2), 6, 2, velocities=False, progress=False)
    assert data.positions.shape == (4, len(ref), 3)
    np.testing.assert_allclose(data.positions[0], ref, atol=1e-12)   # at rest the decoder returns the reference
    guess = ROMBody(model, ref, velocity=(0.0, 0.0, 0.0))
    res = Fitter(ds.Scene(guess, name="rom_fit", steps=6, every=2), data, ["vx", "vy", "vz"]).run(iters=30,
                                                                                                    progress=False)
    for k, v in zip(("vx", "vy", "vz"), (0.4, -0.2, 0.3)):
        assert res["fitted"][k] == pytest.approx(v, abs=1e-5), res["history"][-3:]


def test_stepper_keeps_points_inside_the_walls():
    torch.manual_seed(1)
    st = SparseStepper(((0.1,) * 3, (0.9,) * 3), radius=0.1, width=8, layers=1, grid=6, latent=4, modes=2)
    x = torch.full((1, 10, 3), 0.12)
    x[0, :, 0] = torch.linspace(0.12, 0.8, 10)
    hist = torch.full((1, 10, 5, 3), -0.5)       # fast into the low walls
    with torch.no_grad():
        xn, hn = st(x, hist, torch.zeros(1, 10, dtype=torch.long), x)
    assert float(xn.min()) >= 0.1 - 1e-7 and torch.allclose(hn[:, :, -1], xn - x)
