"""Gradient cases run in a separate process at a chosen precision (the test session's own
runtime is f64, and Taichi allows one ``ti.init`` per process).

    python tests/core/precision_cases.py CASE f32|f64 [--steps N] [--threads T]

prints one JSON object: the loss and the gradients (flattened lists) of the case.
Used by ``tests/core/test_precision.py``; a case is a function ``case(steps) -> (loss, {name: tensor})``
that builds its scene, runs ``ds.rollout`` and calls ``backward``.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

import diffsim as ds

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: random_scenes, _helpers
from _helpers import ROOT  # noqa: E402


def _dtype():
    return ds.runtime.torch_dtype()


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


PERTURB = {}  # "round": start positions rounded to f32; "noise": random offsets of this size (m)


def _start_state(sim):
    s = sim.current_state()
    n = sim.n
    x = s.x
    if PERTURB.get("round"):
        x = x.float().to(x.dtype)
    if PERTURB.get("noise"):
        g = torch.Generator().manual_seed(99)
        x = x + PERTURB["noise"] * torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.dtype)
    x0, v0 = _leaf(x), _leaf(s.v)
    return x0, v0, ds.MPMState(x0, v0, torch.zeros(n, 3, 3, dtype=_dtype()),
                               torch.eye(3, dtype=_dtype()).repeat(n, 1, 1))


def stencil_edge(steps=None):
    """One particle whose x and y stencil coordinates sit 1e-4 cells above a B-spline
    boundary (weights ~5e-9 per axis) in a 5 cm domain: the node it reaches through both
    small weights has a mass of ~1e-22 kg (its square underflows in f32)."""
    L = 0.05
    sim = ds.MPMSolver(domain_max=(L, L, L), grid=16, dt=1e-4)
    dx = L / 16
    p = np.array([[(8.5 + 1e-4) * dx, (8.5 + 1e-4) * dx, 8.0 * dx]])
    sim.add_particles(p, ds.FixedCorotated(E=1e4, nu=0.3, density=1000), name="b", velocity=(0.1, -0.05, 0.02))
    sim.build()
    x0, v0, st = _start_state(sim)
    final, _ = ds.rollout(sim, steps or 3, state=st)
    loss = final.x.sum() + final.v.sum()
    loss.backward()
    return loss, {"x0": x0.grad, "v0": v0.grad}


def friction_adjoint(steps):
    """The Coulomb wall adjoint (``boundary.contact_velocity_vjp``) at tangential speeds of
    1e-3 down to 1e-14 m/s, with the normal speed just below the sticking limit: the form
    with ``|vt|^3`` in a denominator overflowed in f32 below ~2e-13 m/s. Returns the
    velocity and wall adjoints for each speed (``steps`` is unused)."""
    import taichi as ti
    from diffsim.kernels import boundary
    speeds = [1e-3, 1e-8, 1e-12, 1e-14]
    out = ti.Vector.field(6, float, 4)
    vt = ti.field(float, 4)
    vt.from_numpy(np.array(speeds, dtype=ds.runtime.np_dtype()))

    @ti.kernel
    def run():
        for i in range(4):
            n = ti.Vector([0.0, 0.0, 1.0])
            v = ti.Vector([vt[i], 0.0, -0.5 * vt[i]])      # mu |vn| = 0.25 |vt|: sliding
            vb, wb = boundary.contact_velocity_vjp(v, ti.Vector.zero(float, 3), n, boundary.SEPARATE, 0.5,
                                                   ti.Vector([0.3, -0.2, 0.7]))
            out[i] = ti.Vector([vb[0], vb[1], vb[2], wb[0], wb[1], wb[2]])

    run()
    g = torch.tensor(out.to_numpy())
    return g.sum(), {f"speed_{s:g}": g[i] for i, s in enumerate(speeds)}


SHIFT = {}  # parameter -> offset, set by --fd: loss only, no backward
SCALES = {}  # parameter -> its magnitude (gradient x scale = the loss change per relative change)


def _mpm_loss(sim, steps, params, tool=None, seed=0):
    """Rollout from the start with initial velocities ``v0 + a d`` (d random): gradients of
    a random linear loss of the final positions and velocities with respect to the material
    parameters ``params`` {name: value}, ``a`` and (``tool``) a collider's velocity."""
    x0, v0, st = _start_state(sim)
    g = torch.Generator().manual_seed(seed)
    n = sim.n
    w = torch.randn(n, 3, generator=g, dtype=torch.float64).to(_dtype())
    d = (0.05 * torch.randn(n, 3, generator=g, dtype=torch.float64)).to(_dtype())
    a = torch.tensor(SHIFT.get("v0_direction", 0.0), dtype=_dtype(), requires_grad=True)
    prm = {k: torch.tensor(v + SHIFT.get(k, 0.0), dtype=_dtype(), requires_grad=True) for k, v in params.items()}
    st = ds.MPMState(st.x, st.v + a * d, st.C, st.F)
    cv = None
    if tool is not None:
        cv = torch.tensor(sim.colliders[0].velocity_at(0.0, sim.dt), dtype=_dtype(), requires_grad=True)
    final, _ = ds.rollout(sim, steps, state=st, params={sim.bodies[0].name: prm},
                          control={tool: cv} if tool is not None else None)
    loss = (final.x * w).sum() + 0.1 * (final.v * w).sum()
    if SHIFT:
        return loss, {}
    loss.backward()
    grads = {k: t.grad for k, t in prm.items()}
    SCALES.update({k: max(abs(v), 1.0) for k, v in params.items()})
    grads["v0_direction"] = a.grad
    if cv is not None:
        grads["tool_velocity"] = cv.grad
    return loss, grads


def random_mpm(steps, seed=0):
    """A scene of tests/random_scenes.py (its own horizon unless ``--steps`` is given)."""
    from random_scenes import random_scene
    sc = random_scene(seed)
    tool = "tool" if sc.collider in ("sphere", "rotating_box") else None
    return _mpm_loss(sc.sim, steps or sc.steps, sc.base, tool, seed)


def sand_cone_paddle(steps, seed=0):
    """Issue case 1: an 896-particle dry Drucker-Prager column (8 x 8 x 14 particles) falls
    onto a mesh cone while a paddle rotates through it (f32 NaN after ~186 substeps)."""
    import trimesh
    sim = ds.MPMSolver(domain_max=(0.2, 0.2, 0.2), grid=32, dt=2e-4, walls={"-z": "sticky"})
    sp = sim.dx / 2
    sim.add_body(ds.Box(center=(0.1, 0.1, 0.11), size=(8 * sp, 8 * sp, 14 * sp)),
                 ds.DruckerPrager(E=2e4, nu=0.3, friction_angle=math.radians(32), density=1500), name="sand",
                 jitter=0.3, seed=seed)
    cone = trimesh.creation.cone(radius=0.05, height=0.05, sections=24)
    sim.add_collider(ds.MeshCollider(cone, position=(0.1, 0.1, 0.02), resolution=40, friction=0.4, name="cone"))
    sim.add_collider(ds.BoxCollider(center=(0.1, 0.1, 0.09), half_size=(0.045, 0.004, 0.004),
                                    angular_velocity=(0.0, 0.0, 10.0), friction=0.3, name="paddle"))
    sim.build()
    return _mpm_loss(sim, steps or 1000, {"E": 2e4, "friction_angle": math.radians(32), "cohesion": 0.0},
                     None, seed)


def jelly_bumpy(steps, seed=0):
    """Issue case 2: a 729-particle (9^3) fixed-corotated jelly dropped on a bumpy mesh
    (a 3 x 3 field of half-buried spheres; f32 NaN after ~872 substeps)."""
    import trimesh
    sim = ds.MPMSolver(domain_max=(0.2, 0.2, 0.2), grid=32, dt=2e-4)
    sp = sim.dx / 2
    sim.add_body(ds.Box(center=(0.1, 0.1, 0.1), size=9 * sp), ds.FixedCorotated(E=5e3, nu=0.3, density=1000),
                 name="jelly", velocity=(0.1, 0.05, -0.3), jitter=0.3, seed=seed)
    bumps = [trimesh.creation.icosphere(subdivisions=2, radius=0.022).apply_translation((x, y, 0.012))
             for x in (0.06, 0.1, 0.14) for y in (0.06, 0.1, 0.14)]
    sim.add_collider(ds.MeshCollider(trimesh.util.concatenate(bumps), resolution=48, friction=0.5, name="bumps"))
    sim.build()
    return _mpm_loss(sim, steps or 1000, {"E": 5e3, "nu": 0.3}, None, seed)


def dem_pile(steps, seed=0):
    """13 spheres in sustained contact (demos/fit_dem_friction.py's pile) on a mesh floor
    (a triangulated slab, MeshWall) with rolling friction, pushed by a moving plane."""
    import importlib.util
    path = os.path.join(str(ROOT), "demos", "fit_dem_friction.py")
    spec = importlib.util.spec_from_file_location("fit_dem_friction", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    sim = demo.build(mesh_floor=True)
    sim.build()
    steps = steps or 300
    n = sim.n
    rng = np.random.default_rng(seed)
    dt_ = _dtype()
    v0 = torch.tensor(rng.normal(0, 1e-3, (n, 3)), dtype=dt_, requires_grad=True)
    w0 = torch.tensor(rng.normal(0, 5.0, (n, 3)), dtype=dt_)
    wv = torch.zeros(steps, 2, 3, dtype=dt_)
    wv[:, 1, 0] = 0.03
    wv.requires_grad_(True)
    weights = torch.tensor(rng.normal(size=(n, 3)), dtype=dt_)
    P = {k: torch.tensor(v, dtype=dt_, requires_grad=True)
         for k, v in dict(E=1e6, nu=0.3, restitution=0.5, friction=0.4, rolling_friction=0.05).items()}
    out = ds.rollout(sim, steps, params=P, state=sim.initial_state().replace(v=v0, w=w0),
                     control={w.name: wv[:, i] for i, w in enumerate(sim.walls[:2])})
    loss = (out.final.x * weights).sum() * 1e2 + 1e-4 * (out.final.w ** 2).sum()
    loss.backward()
    grads = {k: t.grad for k, t in P.items()}
    SCALES.update({k: max(abs(float(t.detach())), 1.0) for k, t in P.items()})
    grads["v0"], grads["wall_velocity"] = v0.grad, wv.grad
    return loss, grads


def fem_press(steps, seed=0):
    """A 6 x 6 x 2 mm pad pressed into a sphere, pushed, slid and twisted (sticking and
    sliding friction; tests/fem/test_fem.py's press scene), 200 substeps."""
    mesh = ds.box_tet_mesh((0.006, 0.006, 0.002), (6, 6, 2), origin=(-0.003, -0.003, 0.0))
    sim = ds.FEMSolver(dt=2e-5, gravity=(0, 0, 0), tape_substeps=40)
    body = sim.add_body(mesh, ds.FEMMaterial(E=5e4, nu=0.4, density=1000, mass_damping=20, stiffness_damping=1e-5),
                        contact=ds.PenaltyContact(stiffness=2e9, friction=0.6, damping=1.0))
    sim.add_driver(body, body.nodes_where(lambda X: X[:, 2] < 1e-9))
    sim.add_collider(ds.SphereCollider(center=(0, 0, 0.002 + 0.004 - 0.0001), radius=0.004))
    rec = 20
    R = (steps or 200) // rec
    dt_ = _dtype()
    vel = torch.zeros((R, 1, 6), dtype=dt_)
    vel[:, 0, 2], vel[:, 0, 0], vel[:, 0, 3] = 0.2, 0.1, 3.0
    vel.requires_grad_(True)
    P = {k: torch.tensor(v, dtype=dt_, requires_grad=True)
         for k, v in dict(E=5e4, nu=0.4, contact_stiffness=2e9, friction=0.6).items()}
    out = ds.rollout(sim, R * rec, record_every=rec, params=P, control={"driver0": vel[:, 0]})
    force = out.outputs["force"]
    loss = (out.records[-1][1].x ** 2).sum() * 1e4 + force[1:].sum() * 10 + force[-1, :, 0].sum() * 30
    loss.backward()
    grads = {k: t.grad for k, t in P.items()}
    SCALES.update({k: max(abs(float(t.detach())), 1.0) for k, t in P.items()})
    grads["driver_velocity"] = vel.grad
    return loss, grads


def neural_law(steps, seed=0, kind="potential"):
    """A plasticine block of scenes/material_probe.py (grid 16, hit by its sphere) with a
    learned elastic + plastic law (``make_law(kind)``, width 16, random weights; the
    networks in the runtime's precision), the loss of :func:`_mpm_loss` over 200 substeps:
    gradients in the elastic network's first two parameters, the plastic network's last
    and the initial velocity's direction ``v0_direction``."""
    from diffsim.learned.constitutive import make_law
    from diffsim.scene import build_scene
    torch.manual_seed(seed)
    el, pl = (net.double().to(_dtype()) for net in make_law(kind, plastic=True, width=16, depth=2,
                                                             stress_scale=2e4))
    sim = build_scene(os.path.join(ROOT, "scenes", "material_probe.py"), {"material": "plasticine", "grid": 16}).solver
    ref = sim.bodies[0].material
    sim.bodies[0].material = ds.NeuralMaterial(elasticity=el, plasticity=pl, density=ref.density,
                                               wave_speed_estimate=ref.wave_speed())
    sim.build()
    loss, grads = _mpm_loss(sim, steps or 200, {}, seed=seed)
    nets = {"elastic_w0": list(el.parameters())[0], "elastic_b0": list(el.parameters())[1],
            "plastic_last": list(pl.parameters())[-1]}
    return loss, {**grads, **{k: p.grad for k, p in nets.items()}}


CASES = {"neural_potential": neural_law, "neural_structured": lambda steps, seed=0: neural_law(steps, seed, "structured"),
         "dem_pile": dem_pile, "fem_press": fem_press, "stencil_edge": stencil_edge, "friction_adjoint": friction_adjoint, "random_mpm": random_mpm,
         "sand_cone_paddle": sand_cone_paddle, "jelly_bumpy": jelly_bumpy}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=sorted(CASES))
    ap.add_argument("precision", choices=["f32", "f64"])
    ap.add_argument("--steps", type=int, default=None, help="substeps (default: the case's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fd", default=None, help="NAME:H1,H2,...: central differences of the loss in NAME "
                    "(a material parameter or v0_direction) instead of gradients")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--round-start", action="store_true", help="start positions rounded to f32 (f64 runs)")
    ap.add_argument("--noise", type=float, default=0.0, help="random offsets of the start positions (m)")
    a = ap.parse_args()
    PERTURB.update({"round": a.round_start, "noise": a.noise})
    ds.init(precision=a.precision, threads=a.threads)
    import inspect
    fn = CASES[a.case]
    kw = {"seed": a.seed} if "seed" in inspect.signature(fn).parameters else {}
    if a.fd:
        name, hs = a.fd.split(":")
        out = {}
        for h in map(float, hs.split(",")):
            vals = []
            for sgn in (1.0, -1.0):
                SHIFT.clear()
                SHIFT[name] = sgn * h
                vals.append(float(fn(a.steps, **kw)[0]))
            out[str(h)] = (vals[0] - vals[1]) / (2 * h)
        print(json.dumps({"fd": name, "central": out}))
        return
    loss, grads = fn(a.steps, **kw)
    print(json.dumps({"loss": float(loss.detach()), "grads": {k: v.detach().double().flatten().tolist()
                                                     for k, v in grads.items()},
                      "scales": SCALES}))


if __name__ == "__main__":
    main()
