"""Manipulation tasks: controls, each task's loss and success on a tiny configuration,
full-horizon gradients against central differences (float64), the optimisers and the CLI."""
import json

import numpy as np
import pytest
import torch

import diffsim as ds
from _helpers import central_difference
from diffsim.tasks import SplineControls, Task, TaskRun, bspline_basis, list_tasks, load_task, optimize


def test_spline_controls_map_waypoints_onto_record_intervals():
    B = bspline_basis(20, 6)
    assert B.shape == (20, 6) and np.allclose(B.sum(1), 1.0) and np.all(B >= 0)
    assert B[0, 0] > 0.75 and B[-1, -1] > 0.75                      # clamped: the ends follow the end waypoints
    nominal = np.zeros((20, 6))
    nominal[:, 0] = 0.1
    c = SplineControls(dofs=[("plate", 2), ("plate", 4)], records=20, waypoints=6, scale=[0.01, 0.5],
                       nominal={"plate": nominal})
    assert c.shape == (6, 2)
    v = c.velocities(torch.zeros(6, 2, dtype=torch.float64))["plate"]
    assert torch.equal(v, torch.as_tensor(nominal))                   # theta = 0: the nominal profile
    v = c.velocities(torch.ones(6, 2, dtype=torch.float64))["plate"]
    assert torch.allclose(v[:, 2], torch.full((20,), 0.01, dtype=torch.float64))
    assert torch.allclose(v[:, 4], torch.full((20,), 0.5, dtype=torch.float64))
    per_step = SplineControls(dofs=[("plate", 0)], records=5, waypoints=None)
    assert per_step.shape == (5, 1) and np.array_equal(per_step.basis, np.eye(5))
    with pytest.raises(ds.InvalidScene, match="shape"):
        c.velocities(torch.zeros(5, 2))
    window = SplineControls(dofs=[("plate", 0)], records=10, waypoints=3, span=(4, 8), scale=1.0)
    v = window.velocities(torch.ones(3, 1, dtype=torch.float64))["plate"][:, 0]
    assert torch.equal(v, torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 2, dtype=torch.float64))
    with pytest.raises(ds.InvalidScene, match="span"):
        SplineControls(dofs=[("plate", 0)], records=10, span=(8, 4))
    with pytest.raises(ds.InvalidScene, match="0..5"):
        SplineControls(dofs=[("plate", 7)], records=5)


def test_built_in_tasks_are_listed_and_bad_names_are_refused():
    assert {"surface_following", "grasp_elastic", "grasp_plastic", "lid_opening", "cable_straightening",
            "object_repositioning"} <= set(list_tasks())
    with pytest.raises(ds.InvalidScene, match="no option"):
        load_task("surface_following", {"speeed": 1.0})
    with pytest.raises(ds.InvalidScene):
        load_task("elastic_drop")                                    # a scene, not a task


def test_task_scripts_also_build_scenes_for_diffsim_run():
    from diffsim.scene import build_scene
    for name in list_tasks():
        scene = build_scene(f"task_{name}")
        scene.solver.step(20)                                         # the nominal controls as drivers
        assert np.isfinite(scene.solver.frame()["particles"][0]).all() and scene.steps > 20, name


def _gradient_check(task, seed):
    """Directional derivative of the task loss at a random theta: autograd through the
    whole rollout vs central differences."""
    g = torch.Generator().manual_seed(seed)
    theta = 0.5 * torch.randn(task.controls.shape, generator=g, dtype=torch.float64)
    d = torch.randn(task.controls.shape, generator=g, dtype=torch.float64)
    th = theta.clone().requires_grad_(True)
    loss = task.loss(task.run(th))
    loss.backward()
    analytic = float((th.grad * d).sum())
    fd = central_difference(lambda eps: task.loss(task.run(theta + eps * d)), 1e-4)
    return float(loss.detach()), analytic, fd


def test_surface_following_short_loss_success_and_gradient():
    task = load_task("surface_following", {"trace": 2e-3, "waypoints": 3})
    with torch.no_grad():
        nominal = task.run(task.initial_controls())
    f = nominal.observed["normal_force"]
    assert f.shape == (task.steps // task.record_every,) and float(f.max()) > 0.05
    assert not task.success(nominal)                                  # uncontrolled: off the target
    assert task.loss(nominal) > 0.01
    loss, analytic, fd = _gradient_check(task, seed=0)
    assert abs(analytic) > 1e-3 * loss
    assert analytic == pytest.approx(fd, rel=1e-4)


def test_grasp_elastic_short_loss_success_and_gradient():
    task = load_task("grasp_elastic", {"lift": 1e-3, "waypoints": 2})
    with torch.no_grad():
        nominal = task.run(task.initial_controls())
        firm = task.run(task.initial_controls() + 2.0)                # close 0.04 m/s more: a firm grip
    assert not task.success(nominal) and nominal.observed["rise"][-1] < 0.5e-3
    m = task.metrics(firm)                                            # lifted without slip, but squeezed
    assert m["rise_m"] > 0.9e-3 and m["max_slip_ratio"] < 1.0
    assert m["max_grip_error"] > 0.2 and not task.success(firm)       # too hard: not a gentle grasp
    assert task.loss(firm) < task.loss(nominal)
    loss, analytic, fd = _gradient_check(task, seed=1)
    assert abs(analytic) > 1e-4 * loss
    assert analytic == pytest.approx(fd, rel=1e-4)


def test_lid_opening_angle_follows_the_push_and_has_a_gradient():
    task = load_task("lid_opening", {"waypoints": 2})
    with torch.no_grad():
        nominal = task.run(task.initial_controls())
        higher = task.run(task.initial_controls() + torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    a0, a1 = nominal.observed["angle"], higher.observed["angle"]
    assert abs(float(a0[0])) < 0.5 and 5.0 < float(a0[-1]) < 15.0         # shut at first, opened by the push
    assert float(a1[-1]) > float(a0[-1]) + 2.0                            # pushing further opens it further
    assert not task.success(nominal) and task.loss(higher) < task.loss(nominal)
    th = task.initial_controls().requires_grad_(True)
    task.loss(task.run(th)).backward()
    assert float(th.grad[:, 1].sum()) < 0                                # the gradient says: push up more


def test_cable_straightening_measures_the_bend_and_a_pull_straightens_it():
    task = load_task("cable_straightening", {"duration": 0.03, "waypoints": 2})
    with torch.no_grad():
        nominal = task.run(task.initial_controls())
        # drag the held end away from the cable (-x, -y: the arc curves towards +x, +y)
        pulled = task.run(torch.tensor([[-2.5, -2.5, 0.0], [-2.5, -2.5, 0.0]], dtype=torch.float64))
    dev0 = nominal.observed["deviation"][-1].abs().max()
    assert 4e-3 < float(dev0) < 7e-3                                      # a quarter circle: 5.6 mm off its chord
    assert float(nominal.observed["stretch"][-1]) == pytest.approx(2 * np.sqrt(2) / np.pi - 1, abs=0.01)
    assert not task.success(nominal)
    assert float(pulled.observed["deviation"][-1].abs().max()) < 0.95 * float(dev0)   # measured 0.89
    assert float(pulled.observed["stretch"][-1]) > float(nominal.observed["stretch"][-1]) + 0.03
    assert task.loss(pulled) < 0.9 * task.loss(nominal)


def test_planar_pose_recovers_a_known_shift_and_turn():
    from diffsim.scene import load_script, scenes_dir
    planar_pose = load_script(f"{scenes_dir()}/task_object_repositioning.py").planar_pose
    X0 = torch.as_tensor(np.random.default_rng(0).uniform(-1, 1, (30, 3)))
    a = np.deg2rad(17.0)
    R = torch.tensor([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]], dtype=torch.float64)
    x = X0 @ R.T + torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    c, yaw = planar_pose(x, X0)
    # the centroid moves by the shift plus the turn of the rest centroid about the origin
    assert torch.allclose(c, (X0.mean(0) @ R.T - X0.mean(0))[:2] + torch.tensor([0.3, -0.2], dtype=torch.float64))
    assert float(yaw) == pytest.approx(a, abs=1e-12)


def test_object_repositioning_push_and_twist_move_the_block():
    task = load_task("object_repositioning", {"shift": (1e-3, 0.0), "yaw": 5.0, "move": 0.006, "waypoints": 2})
    with torch.no_grad():
        nominal = task.run(task.initial_controls())
        push = task.run(torch.tensor([[3.0, 0.0, 0.0]] * 2, dtype=torch.float64))     # +x at 0.3 m/s: 1.8 mm
        twist = task.run(torch.tensor([[0.0, 0.0, 3.0]] * 2, dtype=torch.float64))    # 30 rad/s about +z: 10 deg
    m0, mp, mt = task.metrics(nominal), task.metrics(push), task.metrics(twist)
    assert max(abs(v) for v in m0["shift_m"]) < 2e-5 and abs(m0["yaw_deg"]) < 0.1      # pressed, not moved
    assert float(nominal.observed["normal_force"][-1]) > 0.5                           # a firm press
    assert not task.success(nominal) and m0["miss_m"] == pytest.approx(1e-3, rel=0.03)
    # the block lags the pad (it shears before it slides on the table): measured 1.37 mm, 3.6 deg
    assert 1e-3 < mp["shift_m"][0] < 1.8e-3 and abs(mp["shift_m"][1]) < 2e-5 and abs(mp["yaw_deg"]) < 0.1
    assert 2.5 < mt["yaw_deg"] < 10.0 and max(abs(v) for v in mt["shift_m"]) < 2e-5   # turned about its centre
    assert task.loss(push) < task.loss(nominal) and task.loss(twist) < task.loss(nominal)


@pytest.mark.slow          # three coupled FEM-MPM rollouts: ~40 s (the default suite builds and steps the scene)
def test_grasp_plastic_squeeze_lifts_and_a_hard_squeeze_dents():
    task = load_task("grasp_plastic", {"lift": 5e-4, "waypoints": 2})
    with torch.no_grad():
        runs = [task.run(task.initial_controls() + a) for a in (0.0, 0.5, 1.5)]
    light, gentle, hard = (task.metrics(r) for r in runs)
    # no grip: the fingers slide up the block (slip ratio ~1: sliding) and it stays behind
    assert light["rise_m"] < 0.5 * 5e-4 and light["max_slip_ratio"] > 0.9 and not task.success(runs[0])
    assert gentle["rise_m"] > 0.9 * 5e-4 and gentle["max_slip_ratio"] < 1.0 and gentle["dent"] < 0.1
    assert task.success(runs[1])
    assert hard["dent"] > 0.1 and not task.success(runs[2])                            # crushed
    assert task.loss(runs[1]) < min(task.loss(runs[0]), task.loss(runs[2]))


class _Bowl(Task):
    """A stand-in task without a simulator: a quadratic bowl with coupled directions and
    unequal curvatures (like a block's yaw and position under one pad's controls)."""
    name = "bowl"
    A = torch.tensor([[1.0, 0.9, 0, 0], [0.9, 1.0, 0, 0], [0, 0, 30, 5], [0, 0, 5, 1.0]], dtype=torch.float64)
    target = torch.tensor([2.0, 1.0, 1.5, -1.0], dtype=torch.float64)

    def __init__(self):
        self.controls = SplineControls(dofs=[("p", 0), ("p", 5)], records=2, waypoints=None)

    def run(self, theta):
        return TaskRun(theta, None, {"theta": theta.reshape(4)})

    def observe(self, rollout):
        return {}

    def loss(self, run):
        e = run.observed["theta"].double() - self.target
        return e @ self.A @ e

    def success(self, run):
        return bool(self.loss(run).detach() < 1e-3)


def test_gradient_method_backtracks_when_adam_overshoots(monkeypatch):
    import importlib
    opt = importlib.import_module("diffsim.tasks.optimize")      # (the package exports the function of that name)
    r = optimize(_Bowl(), "grad", budget=300, lr=0.1, progress=False)
    losses = [h["loss"] for h in r["history"]]
    assert r["success"]
    best = np.minimum.accumulate(losses)
    rises = np.flatnonzero(np.array(losses[1:]) > opt.BACKTRACK * best[:-1]) + 1
    assert rises.size                                           # Adam did overshoot ...
    assert all(losses[k + 1] < losses[k] for k in rises if k + 1 < len(losses))   # ... and came back at once
    monkeypatch.setattr(opt, "BACKTRACK", np.inf)               # plain Adam
    plain = optimize(_Bowl(), "grad", budget=300, lr=0.1, progress=False)
    assert plain["rollouts"] > r["rollouts"]


def test_gradient_and_cmaes_optimisers_count_rollouts_and_stop_at_success():
    pytest.importorskip("cma", reason="the cma package (pip install 'diffsim[tasks]') runs the CMA-ES baseline")
    task = load_task("grasp_elastic", {"lift": 1e-3, "waypoints": 2})
    r = optimize(task, "grad", budget=15, lr=0.5, progress=False)
    assert r["success"] and r["rollouts"] == len(r["history"]) <= 15
    assert r["history"][-1]["success"] and not r["history"][0]["success"]
    theta = torch.tensor(r["theta"], dtype=torch.float64)
    with torch.no_grad():
        assert task.success(task.run(theta))                          # the reported controls succeed
    c = optimize(task, "cmaes", budget=4, sigma=0.3, popsize=4, progress=False)
    assert len(c["history"]) <= 4 and c["method"] == "cmaes" and c["budget"] == 4
    with pytest.raises(ds.InvalidScene, match="budget"):
        optimize(task, "grad", budget=0)
    with pytest.raises(ds.InvalidScene, match="method"):
        optimize(task, "newton", budget=3)


def test_ppo_baseline_runs_on_the_gym_wrapper():
    pytest.importorskip("stable_baselines3", reason="PPO needs pip install 'diffsim[rl]' (gymnasium, stable-baselines3)")
    from diffsim.tasks.gym_env import make_env
    task = load_task("grasp_elastic", {"lift": 1e-3, "waypoints": 2})
    seen = []
    env = make_env(task, lambda theta, loss, ok: seen.append((theta.clone(), loss, ok)))
    obs, _ = env.reset(seed=0)
    _, reward, done, truncated, info = env.step(np.zeros(4, np.float32))     # the nominal controls
    assert done and not truncated and not info["success"] and len(seen) == 1
    with torch.no_grad():
        assert reward == pytest.approx(-float(task.loss(task.run(task.initial_controls()))), rel=1e-9)
    r = optimize(task, "ppo", budget=10, progress=False)
    assert r["method"] == "ppo" and len(r["history"]) <= 10 and r["rollouts"] >= 1


def test_optimize_cli_writes_a_result_file(tmp_path):
    pytest.importorskip("cma", reason="the cma package (pip install 'diffsim[tasks]') runs the CMA-ES baseline")
    from test_cli import _diffsim
    out = tmp_path / "r.json"
    p = _diffsim("optimize", "grasp_elastic", "--set", "lift=1e-3", "--set", "waypoints=2", "--method", "cmaes",
                 "--budget", 3, "--popsize", 3, "--out", out, "--quiet")
    line = json.loads(p.stdout.strip().splitlines()[-1])
    r = json.loads(out.read_text())
    assert p.returncode == (0 if r["success"] else 1) and line["success"] == r["success"]
    assert r["method"] == "cmaes" and r["rollouts"] == line["rollouts"] <= 3 and line["out"] == str(out)
    assert r["controls"]["shape"] == [2, 2] and len(r["history"]) == r["rollouts"]
    assert len(r["theta"]) == 2 and all(len(row) == 2 for row in r["theta"])
    bad = _diffsim("optimize", "no_such_task", "--quiet")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("diffsim: error:")


@pytest.mark.slow
def test_object_repositioning_full_horizon_gradient_matches_central_differences():
    task = load_task("object_repositioning", {"shift": (1e-3, 5e-4), "yaw": 5.0, "move": 0.006, "waypoints": 2})
    loss, analytic, fd = _gradient_check(task, seed=2)
    assert abs(analytic) > 1e-4 * loss
    assert analytic == pytest.approx(fd, rel=1e-3)


@pytest.mark.slow
def test_grasp_plastic_gradient_says_grip_harder():
    """At the empty grasp both fingers' gradients say: close more. (No central-difference
    check here: the grid contact's particle/empty switches make this loss piecewise smooth
    with steps of ~1e-6, so differences below eps 1e-4 do not converge; the coupling's
    gradients are checked on smooth cases in test_coupling.py.)"""
    task = load_task("grasp_plastic", {"lift": 5e-4, "waypoints": 2})
    th = task.initial_controls().requires_grad_(True)
    task.loss(task.run(th)).backward()
    assert torch.isfinite(th.grad).all() and (th.grad.sum(0) < 0).all()


@pytest.mark.slow
def test_gradient_method_solves_the_full_grasp_task():
    """The benchmark's figure (success after 8 rollouts, f32) within a margin, in f64."""
    task = load_task("grasp_elastic")
    r = optimize(task, "grad", budget=20, lr=0.1, progress=False)
    assert r["success"] and r["rollouts"] <= 20
