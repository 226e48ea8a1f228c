"""The one simulation protocol: State, name resolution, ds.rollout for every system, a
learned step module (diffsim.learned.damping.LinearDamping) in ds.rollout, diffsim run and
the Fitter, and one Fitter code path for MPM, DEM and FEM parameters."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import diffsim as ds
from _helpers import ROOT, central_difference
from diffsim.core import flatten, resolve
from diffsim.fitting import Fitter
from diffsim.learned.damping import LinearDamping
from diffsim.trajectory import record

T = torch.float64


# ---------------------------------------------------------------- State and names
def test_state_fields_replace_detach_and_nesting():
    x = torch.zeros(2, 3, requires_grad=True)
    s = ds.State(x=x * 2, v=torch.ones(2, 3))
    assert s.x.requires_grad and list(s) == ["x", "v"] and s["v"] is s.v
    with pytest.raises(AttributeError, match="fields: \\['x', 'v'\\]"):
        s.F
    with pytest.raises(AttributeError, match="immutable"):
        s.x = x
    with pytest.raises(KeyError, match="unknown state fields"):
        s.replace(w=x)
    d = s.detach()
    assert not d.x.requires_grad and type(d) is ds.State
    both = ds.State(fem=s, mpm=ds.MPMState(x, x, torch.zeros(2, 3, 3), torch.eye(3).repeat(2, 1, 1)))
    assert both.mpm.F.shape == (2, 3, 3) and isinstance(both.detach().mpm, ds.MPMState)
    assert len(both.tensors()) == 6
    leaves = s.leaves()
    assert leaves.x.is_leaf and leaves.x.requires_grad and torch.equal(leaves.v, s.v)


def test_names_flatten_and_resolve():
    assert flatten({"jelly": {"E": 1, "nu": 2}, "fem.pad.E": 3}) == {"jelly.E": 1, "jelly.nu": 2, "fem.pad.E": 3}
    known = ["jelly.E", "jelly.nu", "sand.E"]
    assert resolve({"E": 5}, known) == {"jelly.E": 5, "sand.E": 5}
    assert resolve({"E": 5, "sand.E": 7}, known) == {"jelly.E": 5, "sand.E": 7}   # explicit wins
    assert resolve({"sand": {"E": 7}, "E": 5}, known) == {"sand.E": 7, "jelly.E": 5}
    both = ["fem.pad.E", "fem.plate.E", "mpm.jelly.E"]
    assert resolve({"fem.E": 1}, both) == {"fem.pad.E": 1, "fem.plate.E": 1}
    assert resolve({"jelly.E": 2}, both) == {"mpm.jelly.E": 2}
    with pytest.raises(ds.InvalidScene, match="unknown parameter 'yield_stress'.*jelly.E"):
        resolve({"yield_stress": 1}, known)


# ---------------------------------------------------------------- the learned step module
def _drag(n=5, rate=2.0, dt=1e-3, seed=0):
    rng = np.random.default_rng(seed)
    return LinearDamping(rng.normal(0, 0.01, (n, 3)), rng.normal(0, 0.5, (n, 3)), dt=dt, rate=rate,
                         mass=0.01)


def test_learned_damping_matches_its_discrete_solution():
    m = _drag()
    v0 = m.initial_state().v
    g = torch.tensor([0.0, 0.0, -9.81], dtype=T)
    c, dt, n = 2.0, 1e-3, 400
    out = ds.rollout(m, n, record_every=100)
    v_inf = g / c
    expect = v_inf + (v0 - v_inf) / (1 + c * dt) ** n
    assert torch.allclose(out.final.v, expect, rtol=1e-12, atol=1e-14)
    # x_n = x_0 + dt sum_{k=1..n} v_k (geometric series)
    q = 1 / (1 + c * dt)
    expect_x = m.initial_state().x + dt * (n * v_inf + (v0 - v_inf) * q * (1 - q ** n) / (1 - q))
    assert torch.allclose(out.final.x, expect_x, rtol=1e-12, atol=1e-14)
    assert [k for k, _ in out.records] == [100, 200, 300, 400] and list(out.records[0][1]) == ["x", "v"]
    assert m.time == pytest.approx(n * dt) and m.step_count == n
    assert torch.equal(m.current_state().v, out.final.v)


def test_learned_damping_gradients_match_central_differences():
    m = _drag()
    w = torch.tensor(np.random.default_rng(1).normal(size=(5, 3)))
    wind = torch.tensor([0.3, -0.1, 0.0], dtype=T).repeat(120, 1)

    def loss(rate, wind, v0):
        st = m.initial_state().replace(v=v0)
        out = ds.rollout(m, 120, state=st, params={"rate": rate}, control={"wind": wind}, checkpoint_every=16,
                         record_every=40)
        return (out.final.x * w).sum() + (out.records[0][1].v * w).sum()

    rate = torch.tensor(2.0, dtype=T, requires_grad=True)
    wr = wind.clone().requires_grad_(True)
    v0 = m.initial_state().v.clone().requires_grad_(True)
    loss(rate, wr, v0).backward()
    # (a step of 1e-6 loses 3e-6 to cancellation; 1e-4 and 1e-5 agree to 1e-8)
    fd = central_difference(lambda eps: loss(rate.detach() + eps, wind, v0.detach()), 1e-4)
    assert float(rate.grad) == pytest.approx(fd, rel=1e-6)
    d = torch.zeros_like(wind)
    d[37, 0] = 1.0
    fd = central_difference(lambda eps: loss(rate.detach(), wind + eps * d, v0.detach()), 1e-4)
    assert float(wr.grad[37, 0]) == pytest.approx(fd, rel=1e-7)
    # without overrides the module's own parameter is trained
    m.rate.grad = None
    out = ds.rollout(m, 50)
    out.final.x[:, 2].sum().backward()
    assert m.rate.grad is not None and float(m.rate.grad) != 0.0


def test_step_module_non_finite_adjoint_names_the_substep():
    m = _drag()
    v0 = m.initial_state().v.clone().requires_grad_(True)
    out = ds.rollout(m, 30, state=m.initial_state().replace(v=v0), record_every=10)
    x = out.records[1][1].x                           # after substep 20
    loss = (x[3, 0] - x[3, 0].detach()).abs().sqrt() + out.final.x.sum()
    with pytest.raises(ds.GradientNotFinite) as e:
        loss.backward()
    assert e.value.step == 20 and "particle 3" in str(e.value) and "LinearDamping" in str(e.value)


def test_rollout_starting_mid_schedule_and_bad_arguments():
    m = _drag()
    full = ds.rollout(m, 40)
    mid = ds.rollout(m, 20)
    rest = ds.rollout(m, 20, state=mid.final, start=20)
    assert torch.allclose(rest.final.x, full.final.x, rtol=1e-14) and m.step_count == 40
    with pytest.raises(ds.InvalidScene, match="needs the state"):
        ds.rollout(m, 5, start=3)
    with pytest.raises(ds.InvalidScene, match="steps must be an integer >= 1"):
        ds.rollout(m, 0)
    with pytest.raises(ds.InvalidScene, match="unknown option.*tape_substeps"):
        ds.rollout(m, 5, tape_substeps=3)
    with pytest.raises(ds.InvalidScene, match="unknown control 'gust'.*wind.velocity"):
        ds.rollout(m, 5, control={"gust": torch.zeros(3)})
    with pytest.raises(ds.InvalidScene, match="needs a diffsim system"):
        ds.rollout(object(), 5)


# ---------------------------------------------------------------- every system, one rollout
def _mpm():
    sim = ds.MPMSolver(domain_max=(0.1, 0.1, 0.1), grid=16, dt=5e-4, walls={"-z": "sticky"})
    sim.add_body(ds.Box(center=(0.05, 0.05, 0.035), size=0.025), ds.FixedCorotated(E=2e3, nu=0.3, density=1000),
                 name="jelly", velocity=(0.2, 0.0, -0.6))
    return sim


def _dem():
    R = 2e-3
    sim = ds.DEMSolver((-0.05, -0.05, -0.01), (0.05, 0.05, 0.03), ds.DEMMaterial(E=1e6, nu=0.3, friction=0.4,
                       restitution=0.5, density=2500), dt=5e-5, requires_grad=True)
    sim.add_particles([[-0.02, 0.0, R], [0.0, 0.01, R], [0.02, -0.01, R]], R, velocity=(0.2, 0.05, 0.0))
    sim.add_wall(ds.PlaneWall(point=(0, 0, 0), normal=(0, 0, 1)))
    return sim


def _fem(tape_substeps=100):
    sim = ds.FEMSolver(dt=1e-4, tape_substeps=tape_substeps)
    body = sim.add_body(ds.box_tet_mesh((0.04, 0.01, 0.01), (4, 1, 1)), ds.FEMMaterial(E=1e5, nu=0.3, density=1000),
                        name="beam")
    sim.fix_nodes(body, body.nodes_where(lambda X: X[:, 0] < 1e-9))
    return sim


def test_every_system_goes_through_the_same_rollout():
    systems = {"mpm": (_mpm(), ["x", "v", "C", "F"]), "dem": (_dem(), ["x", "v", "w"]),
               "fem": (_fem(), ["x", "v"]), "module": (_drag(), ["x", "v"])}
    for name, (system, fields) in systems.items():
        assert isinstance(system, ds.System)
        out = ds.rollout(system, 40, record_every=20)
        assert isinstance(out, ds.Rollout) and list(out.final) == fields, name
        assert [k for k, _ in out.records] == [20, 40] and all(list(s) == fields for _, s in out.records), name
        assert torch.allclose(out.records[-1][1].x, out.final.x), name
        assert system.time == pytest.approx(40 * system.dt) and system.step_count == 40, name
        assert np.allclose(system.current_state().x.numpy(), out.final.x.detach().numpy(), atol=1e-12), name
        # a second rollout starts from the beginning again
        again = ds.rollout(system, 40)
        assert torch.allclose(again.final.x, out.final.x, atol=1e-12), name


def test_fem_rollout_matches_forward_stepping_and_reports_forces():
    sim = _fem()
    out = ds.rollout(sim, 200, record_every=100, params={"E": 2e5})
    assert out.outputs["force"].shape == (2, sim.n, 3) and out.outputs["max_penetration"] == 0.0
    sim.body("beam").material = ds.FEMMaterial(E=2e5, nu=0.3, density=1000)
    sim.reset()
    sim.step(200)
    assert np.allclose(sim.positions(), out.final.x.numpy(), atol=1e-12)


# ---------------------------------------------------------------- one Fitter for every system
FITS = {  # system, parameter, true value, start (3x off or so), substeps, every
    "mpm": (_mpm, "E", 2e3, 6e3, 40, 10),
    "dem": (_dem, "friction", 0.4, 0.15, 160, 40),
    "fem": (_fem, "E", 1e5, 3e5, 400, 100),
    "module": (_drag, "rate", 2.0, 6.0, 200, 50),
}


@pytest.mark.parametrize("kind", sorted(FITS))
def test_one_fitter_for_mpm_dem_fem_and_a_learned_module(kind):
    make, name, true, start, steps, every = FITS[kind]
    system = make()
    scene = ds.Scene(system, name=f"fit_{kind}", steps=steps, every=every)
    data = record(scene, steps, every, progress=False)
    system.reset()
    fitter = Fitter(scene, data, [name], init={name: start})
    res = fitter.run(iters=25, progress=False)
    assert res["fitted"][name] == pytest.approx(true, rel=2e-3), res["history"][-3:]
    assert res["final_loss_mm2"] < 1e-6


# ---------------------------------------------------------------- diffsim run
def test_diffsim_run_runs_a_step_module_scene(tmp_path):
    script = ROOT / "scenes" / "learned_drag.py"
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "diffsim", "run", str(script), "--out", str(out), "--steps", "200",
                        "--every", "50", "--no-video"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 200
    assert len(list((out / "frames").glob("particles_*.ply"))) == 5
    energy = summary["traces"]["kinetic"][-1] + summary["traces"]["potential"][-1]
    assert math.isfinite(energy) and summary["traces"]["step"][-1] == 200
    # resumable like any run: continue to 300 substeps from the checkpoint
    r = subprocess.run([sys.executable, "-m", "diffsim", "run", str(script), "--out", str(out), "--steps", "300",
                        "--every", "50", "--no-video", "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] == 200


def test_fem_rollout_then_stepping_equals_stepping_throughout():
    """After a rollout the solver holds the final state, clock and driver poses: stepping on
    from there gives what stepping from the start gives."""
    def make():
        sim = ds.FEMSolver(dt=1e-4, tape_substeps=50)
        body = sim.add_body(ds.box_tet_mesh((0.02, 0.01, 0.01), (2, 1, 1)), ds.FEMMaterial(E=1e5, nu=0.3, density=1000),
                            name="block")
        sim.add_driver(body, body.nodes_where(lambda X: X[:, 0] < 1e-9), velocity=(0.0, 0.0, -0.05),
                       angular_velocity=(0.0, 2.0, 0.0), name="grip")
        return sim
    a, b = make(), make()
    ds.rollout(a, 100, record_every=50)
    a.step(100)
    b.step(200)
    assert a.time == pytest.approx(b.time) and a.step_count == b.step_count == 200
    np.testing.assert_allclose(a.positions(), b.positions(), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- the one adjoint core
def test_tape_cache_keeps_what_fits_the_budget_and_evicts_the_oldest():
    from diffsim.core.adjoint import Tape, TapeCache
    made, released = [], []

    def make():
        made.append(Tape())
        return made[-1], lambda t=made[-1]: released.append(t)
    cache = TapeCache(budget=250)
    a = cache.acquire("k", 100, make)
    b = cache.acquire("k", 100, make)
    c = cache.acquire("k", 100, make)           # 250 // 100 = 2 tapes: a's is taken
    assert len(made) == 2 and c is a and cache.find(a.owner) is a
    ids = (b.owner, c.owner)
    assert cache.find(ids[0]) is b and cache.find(ids[0] - 1) is None and cache.find(None) is None
    b.owner = None                               # b's segment is done: its tape is free again
    d = cache.acquire("k", 100, make)
    assert d is b and len(made) == 2
    cache.acquire("other", 100, make)            # another shape releases every tape
    assert released == made[:2] and len(made) == 3
    e = cache.acquire("other", 100, make)
    assert len(made) == 4 and len(cache.slots) == 2
    for t in made:
        t.owner = None
    cache.budget = 100                           # a smaller budget releases free tapes
    assert cache.acquire("other", 100, make) is made[2] and len(cache.slots) == 1 and released[-1] is e
    one = TapeCache(budget=0)                    # nbytes None or over the budget: one tape
    assert one.acquire("k", None, make) is one.acquire("k", None, make)


def _recomputed_vs_kept(system, param, steps, record_every):
    """Gradients of one loss w.r.t. a parameter and the start velocities, with every tape
    kept (default budget) and with none (every segment but the last recomputed)."""
    from diffsim.core.adjoint import tape_cache
    out = []
    for memory in (None, 0):
        p = torch.tensor(system.parameter_values()[param], dtype=T, requires_grad=True)
        start = system.initial_state()
        v0 = start.v.detach().clone().requires_grad_(True)
        res = ds.rollout(system, steps, state=start.replace(v=v0), params={param: p}, record_every=record_every,
                         tape_memory=memory)
        w = torch.linspace(-1.0, 1.0, res.final.x.numel(), dtype=T).reshape(res.final.x.shape)
        loss = (res.final.x * w).sum() + (res.records[0][1].v ** 2).sum()
        loss.backward()
        out.append((float(p.grad), v0.grad.clone(), len(tape_cache(system).slots)))
    return out


@pytest.mark.parametrize("kind", ["mpm", "dem"])
def test_recomputed_segments_give_the_gradients_of_kept_tapes(kind):
    """MPM and DEM segments whose tapes were evicted are re-run (the DEM's replayed through
    its neighbour-list rebuilds) in the backward pass: the gradients do not change."""
    system, param = (_mpm(), "jelly.E") if kind == "mpm" else (_dem(), "friction")
    (g_kept, gv_kept, slots_kept), (g_re, gv_re, slots_re) = _recomputed_vs_kept(system, param, 160, 80)
    assert slots_kept > 2 and slots_re == 1            # the budget was applied
    if kind == "dem":
        assert system.rebuilds > 2                     # neighbour lists rebuilt inside the window
    assert g_kept != 0 and torch.count_nonzero(gv_kept) > 0
    assert g_re == pytest.approx(g_kept, rel=1e-12, abs=0)
    torch.testing.assert_close(gv_re, gv_kept, rtol=1e-12, atol=1e-300)


def test_fem_chunks_recomputed_give_the_gradients_of_one_chunk():
    grads = []
    for tape in (100, 300):                            # three chunks (two recomputed) vs one
        sim = _fem(tape)
        E = torch.tensor(1e5, dtype=T, requires_grad=True)
        res = ds.rollout(sim, 300, params={"E": E}, record_every=100)
        (res.final.x[:, 2].sum() + res.records[0][1].x[:, 1].sum()).backward()
        grads.append(float(E.grad))
    assert grads[0] != 0 and grads[0] == pytest.approx(grads[1], rel=1e-10)
