"""Slow FEM validation against closed forms (``python -m pytest -m slow``): Hertz contact
of a rigid sphere on an elastic block, and the tip deflection of a slender cantilever."""
import math

import numpy as np
import pytest

import diffsim as ds

pytestmark = pytest.mark.slow


def _graded(fine_half, h0, half, ratio):
    """Node coordinates on [-half, half]: spacing ``h0`` on [-fine_half, fine_half], then
    growing geometrically by ``ratio`` towards both ends."""
    inner = np.linspace(-fine_half, fine_half, 2 * int(round(fine_half / h0)) + 1)
    out, x, h = [], fine_half, h0
    while x < half:
        h *= ratio
        x = x + h if half - (x + h) > 0.5 * h * ratio else half
        out.append(x)
    out = np.array(out)
    return np.concatenate([-out[::-1], inner, out])


def test_hertz_sphere_on_block():
    """A frictionless rigid sphere (R = 10 mm) is pressed into a block (E = 100 kPa,
    nu = 0.3, 80 x 80 x 40 mm, bottom fixed) in five increments of 0.02 R, each followed by
    a hold of half the block's lowest period (critical mass damping) so the force is read at
    rest; it follows F = 4/3 E/(1-nu^2) sqrt(R) d^1.5 within 10% for d/R in [0.02, 0.1].

    Mesh: Kuhn tets of 0.35 mm in the contact zone (|x|, |y| < 3.5 mm, 2.1 mm deep: 4 to 9
    elements across the contact radius), graded by 1.3 outwards (209k tets). Measured
    (f64): F / F_Hertz = 1.049, 1.056, 1.065, 1.073, 1.081: the linear tets are a little
    stiff and the finite block stiffens as the contact grows (1.04 - 1.065 with a block
    twice as large)."""
    R, E, nu, rho = 0.01, 1e5, 0.3, 1000.0
    L, h0 = 4 * R, 0.35e-3
    xs = _graded(3.5e-3, h0, L, 1.3)
    zs = _graded(2.1e-3, h0, L, 1.3)
    zs = np.sort(L - zs[zs >= 0])                    # fine towards the top face z = L
    mesh = ds.grid_tet_mesh(xs, xs, zs)
    cp = math.sqrt(E * (1 - nu) / ((1 + nu) * (1 - 2 * nu) * rho))
    omega1 = 2 * math.pi * cp / (4 * L)              # lowest (axial) mode of the fixed block
    sim = ds.FEMSolver(dt=1.0, gravity=(0, 0, 0), tape_substeps=200)
    body = sim.add_body(mesh, ds.FEMMaterial(E=E, nu=nu, density=rho, mass_damping=2 * omega1),
                        contact=ds.PenaltyContact(stiffness=1e11, friction=0.0))
    sim.fix_nodes(body, body.nodes_where(lambda X: X[:, 2] < 1e-9))
    levels = np.array([0.02, 0.04, 0.06, 0.08, 0.1])
    move, hold = 2 * L / cp, 0.5 * 2 * math.pi / omega1
    speed = 0.02 * R / move

    def velocity(t):
        k = int(t // (move + hold))
        return (0, 0, -speed) if k < len(levels) and t - k * (move + hold) < move else (0, 0, 0)
    sphere = sim.add_collider(ds.SphereCollider(center=(0, 0, L + R), radius=R, velocity=velocity))
    sim.dt = 0.9 * sim.stable_dt()
    depth, force = [], []
    for k in range(len(levels)):
        sim.step(int(round((k + 1) * (move + hold) / sim.dt)) - sim.step_count)
        depth.append(L + R - sphere.position[2])
        force.append(-sim.contact_forces()[:, 2].sum())     # the block is pushed down
    depth, force = np.array(depth), np.array(force)
    assert depth / R == pytest.approx(levels, rel=1e-3)
    hertz = 4 / 3 * E / (1 - nu ** 2) * math.sqrt(R) * depth ** 1.5
    print("\nd/R", np.round(depth / R, 4), "F/F_Hertz", np.round(force / hertz, 4),
          "max penetration", sim.max_penetration)
    assert np.all(np.abs(force / hertz - 1) < 0.10)
    slope = np.polyfit(np.log(depth), np.log(force), 1)[0]
    assert slope == pytest.approx(1.5, abs=0.05)
    assert sim.max_penetration < 1e-3 * depth[-1]       # the penalty is stiff enough not to matter


def test_cantilever_tip_deflection():
    """A slender cantilever (L = 100 mm, h = 10 mm, b = 1.67 mm, nu = 0: beam theory's
    assumptions; Kuhn tets of 0.83 mm) under a tip load settles (mass damping 1.4 x the
    first bending frequency, 2 periods) to F L^3 / (3 E I) within 5% (measured -1.7%;
    Timoshenko's shear term adds +0.6% to the theory, so the tets are ~2% too stiff)."""
    L, h, E, rho = 0.1, 0.01, 1e6, 1000.0
    nx, ny, nz = 120, 2, 12
    b = h * ny / nz
    I, A = b * h ** 3 / 12, b * h
    omega1 = 1.875 ** 2 * math.sqrt(E * I / (rho * A * L ** 4))
    sim = ds.FEMSolver(dt=1.0, gravity=(0, 0, 0), tape_substeps=200)
    body = sim.add_body(ds.box_tet_mesh((L, b, h), (nx, ny, nz)),
                        ds.FEMMaterial(E=E, nu=0.0, density=rho, mass_damping=1.4 * omega1))
    sim.dt = 0.9 * sim.stable_dt()
    sim.fix_nodes(body, body.nodes_where(lambda X: X[:, 0] < 1e-9))
    end = body.nodes_where(lambda X: X[:, 0] > L - 1e-9)
    beam_theory = 0.002 * L
    sim.add_load(end, (0, 0, -beam_theory * 3 * E * I / L ** 3))
    period = 2 * math.pi / omega1
    z0 = sim.positions()[end, 2].mean()
    sim.step(int(1.6 * period / sim.dt))
    w1 = z0 - sim.positions()[end, 2].mean()
    sim.step(int(0.4 * period / sim.dt))
    w2 = z0 - sim.positions()[end, 2].mean()
    print(f"\ntip deflection {w2:.6g} m, beam theory {beam_theory:.6g} m, ratio {w2 / beam_theory:.4f}")
    assert w2 == pytest.approx(w1, rel=5e-3)            # settled (quasi-static)
    assert w2 == pytest.approx(beam_theory, rel=0.05)
