"""FEM soft bodies: statics against closed forms, contact balance, energy, gradients."""
import math

import numpy as np
import pytest
import torch

import diffsim as ds
from _helpers import central_difference
from diffsim.errors import InvalidMaterial, InvalidMesh, InvalidScene, UnstableTimeStep


def T(v, **kw):
    return torch.tensor(v, dtype=torch.float64, **kw)


def _settle(sim, periods, period):
    sim.step(int(math.ceil(periods * period / sim.dt)))


@pytest.mark.parametrize("model", ["neo_hookean", "corotated"])
def test_uniaxial_bar_stretches_by_FL_over_EA(model):
    """nu = 0: a bar fixed at one end and pulled by a uniform traction at the other is in
    uniform uniaxial stress; linear tets are exact, so the elongation is F L / (E A) up to
    the geometric nonlinearity (strain 1e-3)."""
    L, a, E, rho = 0.05, 0.01, 1e5, 1000.0
    mesh = ds.box_tet_mesh((L, a, a), (10, 2, 2))
    c = math.sqrt(E / rho)
    sim = ds.FEMSolver(dt=1.0, gravity=(0, 0, 0), tape_substeps=200)
    body = sim.add_body(mesh, ds.FEMMaterial(E=E, nu=0.0, density=rho, model=model,
                                             mass_damping=2 * (math.pi * c / (2 * L))))
    sim.dt = 0.9 * sim.stable_dt()
    sim.fix_nodes(body, body.nodes_where(lambda X: X[:, 0] < 1e-9))
    end = body.nodes_where(lambda X: X[:, 0] > L - 1e-9)
    F = 1e-3 * E * a * a
    sim.add_load(end, (F, 0, 0))
    _settle(sim, 12, 4 * L / c)
    # measured mid-length, away from the loaded end's local (Saint-Venant) disturbance
    mid = body.nodes_where(lambda X: np.abs(X[:, 0] - L / 2) < 1e-9)
    stretch = (sim.positions()[mid, 0] - L / 2).mean()
    assert stretch == pytest.approx(F * L / 2 / (E * a * a), rel=1e-3)


def test_block_resting_on_plane_carries_its_weight_with_penetration_p_over_k():
    mesh = ds.box_tet_mesh((0.02, 0.02, 0.01), (4, 4, 2), origin=(-0.01, -0.01, 0.0))
    k_n = 1e8
    sim = ds.FEMSolver(dt=2e-5, gravity=(0, 0, -9.81), tape_substeps=250)
    sim.add_body(mesh, ds.FEMMaterial(E=1e5, nu=0.3, density=1000, mass_damping=100),
                 contact=ds.PenaltyContact(stiffness=k_n, friction=0.5))
    sim.add_collider(ds.PlaneCollider(point=(0, 0, 0), normal=(0, 0, 1)))
    sim.step(10000)
    weight = mesh.volume * 1000 * 9.81
    force = sim.contact_forces().sum(0)
    assert force[2] == pytest.approx(weight, rel=2e-3)
    assert abs(force[0]) + abs(force[1]) < 1e-6 * weight
    pressure = weight / 0.02 ** 2
    sink = -sim.positions()[:, 2].min()
    assert sink == pytest.approx(pressure / k_n, rel=0.2)   # lumped areas: corner nodes carry less
    d = sim.diagnostics()
    assert d["max_penetration"] == pytest.approx(sink, rel=0.05)
    assert d["contact_force"][2] == pytest.approx(weight, rel=2e-3)


def test_free_vibration_conserves_energy_without_damping():
    mesh = ds.box_tet_mesh((0.04, 0.01, 0.01), (8, 2, 2))
    sim = ds.FEMSolver(dt=1.0, gravity=(0, 0, 0), tape_substeps=100)
    sim.add_body(mesh, ds.FEMMaterial(E=1e5, nu=0.3, density=1000))
    sim.dt = 0.05 * sim.stable_dt()   # symplectic Euler: energy oscillates by ~ omega dt
    sim.build()
    x, v = sim.rest_state()
    x = x.copy()
    x[:, 0] *= 1.01                      # stretched 1 %, released
    sim.set_state(x, v)
    e0 = sim.diagnostics()["energy"]
    assert e0 > 0
    energies = []
    for _ in range(40):
        sim.step(100)
        energies.append(sim.diagnostics()["energy"])
    assert max(abs(e - e0) for e in energies) < 0.01 * e0
    assert sim.time > 3 * 2 * 0.04 / math.sqrt(1e5 / 1000)     # three periods of the axial mode
    assert np.allclose(sim.diagnostics()["momentum"], 0, atol=1e-9)


def test_driven_plate_rotates_rigidly():
    mesh = ds.box_tet_mesh((0.01, 0.01, 0.004), (2, 2, 2), origin=(-0.005, -0.005, 0))
    sim = ds.FEMSolver(dt=1e-5, gravity=(0, 0, 0), tape_substeps=100)
    body = sim.add_body(mesh, ds.FEMMaterial(E=1e5, nu=0.3, density=1000, mass_damping=200))
    plate = body.nodes_where(lambda X: X[:, 2] < 1e-9)
    sim.add_driver(body, plate, velocity=(0.01, 0, 0), angular_velocity=(0, 0, 2.0), center=(0, 0, 0))
    sim.step(500)                                    # 5 ms: 0.01 rad, 50 um
    th = 2.0 * 5e-3
    Rz = np.array([[math.cos(th), -math.sin(th), 0], [math.sin(th), math.cos(th), 0], [0, 0, 1]])
    expect = mesh.vertices[plate] @ Rz.T + [0.01 * 5e-3, 0, 0]
    assert np.allclose(sim.positions()[plate], expect, atol=1e-12)


def test_checkpoint_resume_is_identical():
    mesh = ds.box_tet_mesh((0.01, 0.01, 0.004), (2, 2, 2), origin=(-0.005, -0.005, 0.001))

    def make():
        sim = ds.FEMSolver(dt=2e-5, tape_substeps=50)
        sim.add_body(mesh, ds.FEMMaterial(E=1e5, nu=0.3, density=1000),
                     contact=ds.PenaltyContact(stiffness=1e9, friction=0.5))
        sim.add_collider(ds.PlaneCollider(point=(0, 0, 0), normal=(0, 0.2, 1)))
        return sim
    a = make()
    a.step(300)
    arrays, meta = a.checkpoint()
    a.step(300)
    b = make()
    b.restore(arrays, meta)
    b.step(300)
    assert np.array_equal(a.positions(), b.positions())
    assert b.step_count == 600 and b.time == pytest.approx(a.time)


def test_bad_input_is_refused_with_clear_errors():
    with pytest.raises(InvalidMaterial, match="Young"):
        ds.FEMMaterial(E=-1.0)
    with pytest.raises(InvalidMaterial, match="Poisson"):
        ds.FEMMaterial(nu=0.5)
    with pytest.raises(InvalidMaterial, match="model"):
        ds.FEMMaterial(model="linear")
    with pytest.raises(InvalidMaterial, match="stiffness"):
        ds.PenaltyContact(stiffness=0)
    with pytest.raises(InvalidMaterial, match="friction"):
        ds.PenaltyContact(friction=-0.1)
    mesh = ds.box_tet_mesh((0.01, 0.01, 0.01), (2, 2, 2))
    sim = ds.FEMSolver(dt=1e-3)
    sim.add_body(mesh, ds.FEMMaterial(E=1e6, density=1000))
    with pytest.raises(UnstableTimeStep, match="dt <="):
        sim.build()
    with pytest.raises(InvalidScene, match="TetMesh"):
        ds.FEMSolver(dt=1e-5).add_body(mesh.vertices, ds.FEMMaterial())
    flipped = ds.TetMesh(mesh.vertices, mesh.tets.copy())
    flipped.tets[0, [0, 1]] = flipped.tets[0, [1, 0]]
    with pytest.raises(InvalidMesh):
        ds.FEMSolver(dt=1e-5).add_body(flipped, ds.FEMMaterial())
    sim = ds.FEMSolver(dt=1e-6)
    b = sim.add_body(mesh, ds.FEMMaterial())
    with pytest.raises(InvalidScene, match="no nodes"):
        sim.add_driver(b, [])
    with pytest.raises(InvalidScene, match="node indices"):
        sim.add_load([10 ** 6], (0, 0, 1))


def _press_scene():
    """A 6 x 6 x 2 mm pad on a driven back plate, pressed 0.1 mm into a sphere from the
    first substep and then pushed, slid and twisted: contact stays active throughout."""
    mesh = ds.box_tet_mesh((0.006, 0.006, 0.002), (6, 6, 2), origin=(-0.003, -0.003, 0.0))
    sim = ds.FEMSolver(dt=2e-5, gravity=(0, 0, 0), tape_substeps=40)
    body = sim.add_body(mesh, ds.FEMMaterial(E=5e4, nu=0.4, density=1000, mass_damping=20,
                                             stiffness_damping=1e-5),
                        contact=ds.PenaltyContact(stiffness=2e9, friction=0.6, damping=1.0))
    sim.add_driver(body, body.nodes_where(lambda X: X[:, 2] < 1e-9))
    sim.add_collider(ds.SphereCollider(center=(0, 0, 0.002 + 0.004 - 0.0001), radius=0.004))
    return sim


def test_gradients_match_central_differences_through_80_substeps_of_contact():
    sim = _press_scene()
    R, rec = 4, 20
    vel0 = torch.zeros((R, 1, 6), dtype=torch.float64)
    vel0[:, 0, 2], vel0[:, 0, 0], vel0[:, 0, 3] = 0.2, 0.1, 3.0
    base = dict(E=5e4, nu=0.4, contact_stiffness=2e9, friction=0.6, stiffness_damping=1e-5, mass_damping=20.0)
    weights = torch.linspace(0.3, 1.0, 3, dtype=torch.float64)[:, None, None]

    def loss(params, vel):
        res = ds.rollout(sim, R * rec, record_every=rec, params=params, control={"driver0": vel[:, 0]})
        out = {"force": res.outputs["force"], "x": res.stacked("x")}
        return ((out["x"][-1] ** 2).sum() * 1e4 + (out["force"][1:] * weights).sum() * 10
                + out["force"][-1, :, 0].sum() * 30), out

    P = {k: T(v, requires_grad=True) for k, v in base.items()}
    vel = vel0.clone().requires_grad_(True)
    L, out = loss(P, vel)
    L.backward()
    # contact carries load in every record interval, and friction acts (shear force)
    fz = out["force"][:, :, 2].sum(1)
    assert torch.all(fz < -1e-2)
    assert abs(float(out["force"][-1, :, 0].sum().detach())) > 1e-3
    for k, val in base.items():
        fd = central_difference(lambda eps, k=k: loss({**base, k: base[k] + eps}, vel0)[0], val * 1e-6)
        assert P[k].grad.item() == pytest.approx(fd, rel=1e-4), k
    for idx in [(1, 0, 2), (2, 0, 0), (0, 0, 3), (3, 0, 4)]:
        d = torch.zeros_like(vel0)
        d[idx] = 1.0
        fd = central_difference(lambda eps, d=d: loss(base, vel0 + eps * d)[0], 1e-6)
        assert vel.grad[idx].item() == pytest.approx(fd, rel=1e-4), idx


def test_rollout_matches_forward_stepping_and_recomputes_overwritten_chunks():
    """A rollout longer than the tape (3 chunks) equals sim.step, and its gradient with
    respect to the initial velocity matches finite differences (chunks recomputed)."""
    sim = _press_scene()
    out = ds.rollout(sim, 120, record_every=20)
    assert np.allclose(sim.positions(), out.final.x.numpy(), rtol=0, atol=0)   # the solver holds the final state
    assert sim.time == pytest.approx(120 * sim.dt) and sim.step_count == 120
    sim.reset()
    sim.step(120)
    assert np.allclose(out.final.x.numpy(), sim.positions(), rtol=0, atol=1e-15)
    # not from rest: at v = 0 the Hunt-Crossley factor max(approach speed, 0) sits on its kink
    v0 = torch.from_numpy(np.random.default_rng(0).normal(0.0, 1e-2, size=(sim.n, 3)))
    w = torch.from_numpy(np.random.default_rng(1).normal(size=(sim.n, 3)))

    def loss(v):
        o = ds.rollout(sim, 120, record_every=20, state=sim.initial_state().replace(v=v))
        return (o.records[1][1].x * w).sum() + (o.final.x * w).sum()
    v = v0.clone().requires_grad_(True)
    loss(v).backward()
    d = torch.from_numpy(np.random.default_rng(2).normal(size=(sim.n, 3)))
    fd = central_difference(lambda eps: loss(v0 + eps * d), 1e-4)
    assert float((v.grad * d).sum()) == pytest.approx(fd, rel=1e-5)


def _pad_on_block(chunk):
    """A 12 x 12 x 3 mm pad (facing down) pressed at 0.05 m/s into a softer-edged 8 x 8 x
    3 mm FEM block fixed at its base; 20 um apart at rest."""
    sim = ds.FEMSolver(dt=4e-6, gravity=(0, 0, 0), tape_substeps=chunk)
    down = np.diag([1.0, -1.0, -1.0])
    pad = sim.add_body(ds.flat_pad(0.012, 0.012, 0.003, 0.001), ds.FEMMaterial(E=1e5, nu=0.45, density=1100,
                                                                           mass_damping=300),
                       contact=ds.PenaltyContact(stiffness=1e10, friction=0.8), position=(0, 0, 0.00602),
                       rotation=down, name="pad")
    sim.add_driver(pad, pad.nodes_where(lambda X: X[:, 2] > 0.00602 - 1e-9), velocity=(0, 0, -0.05))
    blk = sim.add_body(ds.box_tet_mesh((0.008, 0.008, 0.003), (6, 6, 3), origin=(-0.004, -0.004, 0.0)),
                       ds.FEMMaterial(E=2e5, nu=0.4, density=1100, mass_damping=300),
                       contact=ds.PenaltyContact(stiffness=1e10, friction=0.8), name="block")
    sim.fix_nodes(blk, blk.nodes_where(lambda X: X[:, 2] < 1e-9))
    return sim


def test_two_bodies_press_with_equal_and_opposite_forces_and_bounded_penetration():
    sim = _pad_on_block(100)
    sim.step(1500)                                  # 0.28 mm of travel beyond first touch
    fc = sim.contact_forces()
    pad, blk = sim.body("pad"), sim.body("block")
    on_pad, on_blk = fc[pad.start:pad.stop].sum(0), fc[blk.start:blk.stop].sum(0)
    assert on_pad[2] > 0.3
    assert np.allclose(on_pad, -on_blk, atol=1e-9 * on_pad[2])
    # block top nodes under the pad stay below the pad's deformed contact surface there
    from diffsim.geometry.triangles import ray_mesh_intersect
    x = sim.positions()
    top = blk.nodes_where(lambda X: (X[:, 2] > 0.003 - 1e-9) & (np.abs(X[:, 0]) < 0.0035) & (np.abs(X[:, 1]) < 0.0035))
    faces = pad.surface[(x[pad.surface].mean(1)[:, 2] < 0.0035)]
    start = np.c_[x[top, :2], np.zeros(len(top))]
    face, _, height = ray_mesh_intersect(start, np.tile([0.0, 0.0, 1.0], (len(top), 1)), x, faces)
    assert np.all(face >= 0)
    depth = x[top, 2] - height
    # mean pressure / k_n ~ 1e4 Pa / 1e10 Pa/m = 1 um; the block's edges concentrate pressure
    assert np.median(depth) < 4e-6 and depth.max() < 1e-5


def test_two_body_contact_gradients_match_central_differences():
    """One chunk (the node-triangle pairs are constants of a chunk, so within one chunk
    the rollout is smooth): E of both bodies and the plate's velocity."""
    sim = _pad_on_block(300)
    w = torch.from_numpy(np.random.default_rng(0).normal(size=(sim.n, 3)))
    vel0 = torch.tensor([[[0.002, 0.0, -0.05, 0.0, 0.0, 0.5], [0.0] * 6]], dtype=torch.float64)

    def loss(E, vel):
        out = ds.rollout(sim, 300, record_every=300, params={f"{b.name}.E": E[i] for i, b in enumerate(sim.bodies)},
                         control={d.name: vel[:, i] for i, d in enumerate(sim.drivers)})
        return (out.final.x * w).sum() * 1e3 + out.outputs["force"][0, :, 2].abs().sum()
    E = T([1e5, 2e5], requires_grad=True)
    vel = vel0.clone().requires_grad_(True)
    L = loss(E, vel)
    L.backward()
    for j in range(2):
        d = torch.zeros(2, dtype=torch.float64)
        d[j] = 1.0
        fd = central_difference(lambda eps, d=d: loss(E.detach() + eps * d, vel0), float(E[j].detach()) * 1e-6)
        assert E.grad[j].item() == pytest.approx(fd, rel=1e-4)
    for idx in [(0, 0, 2), (0, 0, 0), (0, 0, 5)]:
        d = torch.zeros_like(vel0)
        d[idx] = 1.0
        fd = central_difference(lambda eps, d=d: loss(E.detach(), vel0 + eps * d), 1e-7)
        assert vel.grad[idx].item() == pytest.approx(fd, rel=1e-4)
