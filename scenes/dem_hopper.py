"""DEM wedge-hopper discharge (the NeuralDEM data scene): spheres settle in a plane wedge
hopper behind a gate at the orifice, the gate opens at t = fill_time and the hopper drains;
spheres falling below z = -0.03 m leave and their mass is traced (summary.json:
traces.discharged_mass, and the discharge figures under ``outputs``: outflow rate,
drainage time, residual mass, flow regime; see diffsim.dem.discharge).

Geometry: x across the wedge, y along its depth (flat front and back walls), z up. Two
inclined panels at ``angle`` degrees from the vertical leave a slot ``orifice`` wide at
z = 0. Mass flow (everything moves) at steep walls, funnel flow (stagnant shoulders on the
walls) at shallow ones.

Options: angle (panel half-angle from the vertical, deg, 5-75; default 30), orifice (slot
width, m; default 0.024 = 6 sphere diameters), count (spheres; default 2000), friction and
rolling_friction (sphere-sphere and sphere-wall; defaults 0.5, 0.05), radius (m, default
0.002), depth (m between front and back walls, default 5 diameters), fill_time (s of settling
behind the gate, default 0.3), duration (s of discharge, default 2.0), seed (the fill's
jitter), density (kg/m^3 of the spheres, default 2500), solver ("dem", default, or
"neuraldem": the trained surrogate of docs/neuraldem.md runs the discharge from the gate's
opening; model: its file, default scenes/data/neuraldem/hopper.pt; extrapolate: accept
conditions outside its trained range).
"""
import math
from pathlib import Path

import numpy as np

import diffsim as ds
from diffsim.dem import HopperDischarge

OUTLET_Z = -0.03
DEFAULT_MODEL = str(Path(__file__).resolve().parent / "data" / "neuraldem" / "hopper.pt")


def wedge_panels(angle_deg, orifice, height, depth):
    """The two inclined panels as one triangle mesh (a trimesh.Trimesh): each a rectangle
    from the slot's edge (x = +-orifice/2, z = 0) up to ``height`` at ``angle_deg`` from the
    vertical, spanning y in [-depth/2, depth/2] (a little beyond, so no sphere slips past
    an edge)."""
    import trimesh
    t = math.tan(math.radians(angle_deg))
    y = 0.5 * depth * 1.2
    verts, faces = [], []
    for side in (-1.0, 1.0):
        x0, x1 = side * 0.5 * orifice, side * (0.5 * orifice + height * t)
        k = len(verts)
        verts += [(x0, -y, 0.0), (x0, y, 0.0), (x1, y, height), (x1, -y, height)]
        faces += [(k, k + 1, k + 2), (k, k + 2, k + 3)]
    return trimesh.Trimesh(np.asarray(verts), np.asarray(faces), process=False)


def fill_positions(angle_deg, orifice, depth, radius, count, seed=0):
    """``count`` sphere centres on a jittered lattice inside the wedge, lowest first (every
    centre at least 1.05 radii from the panels, the walls and the gate)."""
    t = math.tan(math.radians(angle_deg))
    spacing = 2.2 * radius
    cos = math.cos(math.radians(angle_deg))
    # enough layers for `count` spheres: the slot's width grows by 2 h tan(angle) per height h
    per_area = count * spacing ** 3 / max(depth - 2 * radius, spacing)
    height = spacing
    while height * (orifice + height * t) < 1.6 * per_area + 4 * spacing * (orifice + height * t):
        height += spacing
    half = 0.5 * orifice + height * t
    xs = np.arange(-half, half + 1e-12, spacing)
    ys = np.arange(-0.5 * depth + 1.05 * radius, 0.5 * depth - 1.05 * radius + 1e-12, spacing)
    zs = np.arange(1.05 * radius, height, spacing)
    x = np.stack(np.meshgrid(xs, ys, zs, indexing="ij"), -1).reshape(-1, 3)
    # distance to a panel: (|x| - orifice/2 - z tan) cos, positive outside the wedge
    outside = (np.abs(x[:, 0]) - 0.5 * orifice - x[:, 2] * t) * cos
    x = x[outside < -1.05 * radius]
    if len(x) < count:
        raise ds.InvalidScene(f"dem_hopper: only {len(x)} spheres fit the fill region; lower count")
    x = x[np.lexsort((x[:, 0], x[:, 1], x[:, 2]))][:count]
    rng = np.random.default_rng(seed)
    return x + rng.uniform(-0.05, 0.05, x.shape) * (spacing - 2 * radius)


def build(angle=30.0, orifice=0.024, count=2000, friction=0.5, rolling_friction=0.05, radius=0.002, depth=None,
          fill_time=0.3, duration=2.0, seed=0, density=2500.0, dt=None, solver="dem", model=None, extrapolate=False):
    angle, orifice, radius = float(angle), float(orifice), float(radius)
    count, depth = int(count), float(depth if depth is not None else 10 * radius)
    if not 5.0 <= angle <= 75.0:
        raise ds.InvalidScene(f"dem_hopper: angle must lie in [5, 75] degrees from the vertical, got {angle}")
    if not orifice >= 3 * 2 * radius:
        raise ds.InvalidScene(f"dem_hopper: orifice {orifice} m is under 3 sphere diameters ({6 * radius} m): "
                              f"the slot jams")
    if not depth >= 2.5 * 2 * radius:
        raise ds.InvalidScene(f"dem_hopper: depth {depth} m is under 2.5 sphere diameters")
    if not count >= 10:
        raise ds.InvalidScene(f"dem_hopper: count must be >= 10, got {count}")
    if not (fill_time >= 0 and duration > 0):
        raise ds.InvalidScene("dem_hopper: fill_time must be >= 0 s and duration > 0 s")
    if solver not in ("dem", "neuraldem"):
        raise ds.InvalidScene(f"dem_hopper: solver must be 'dem' or 'neuraldem', got {solver!r}")
    mat = ds.DEMMaterial(E=5e6, nu=0.3, restitution=0.5, friction=float(friction),
                         rolling_friction=float(rolling_friction), density=float(density))
    x = fill_positions(angle, orifice, depth, radius, count, seed)
    options = dict(angle=angle, orifice=orifice, count=count, friction=float(friction),
                   rolling_friction=float(rolling_friction), radius=radius, depth=depth, fill_time=float(fill_time),
                   duration=float(duration), seed=int(seed), density=float(density))
    sphere_mass = mat.density * 4.0 / 3.0 * math.pi * radius ** 3
    if solver == "neuraldem":
        return _surrogate_scene(x, options, sphere_mass, model, extrapolate)
    height = float(x[:, 2].max()) + 6 * radius
    top = 0.5 * orifice + height * math.tan(math.radians(angle))
    lo, hi = (-top - 4 * radius, -depth, OUTLET_Z - 4 * radius), (top + 4 * radius, depth, height + 4 * radius)
    dt = float(dt or 0.9 * 0.2 * mat.rayleigh_time(radius))   # 90% of the solver's limit
    sim = ds.DEMSolver(lo, hi, mat, dt=dt, gravity=(0, 0, -9.81), outflow_z=OUTLET_Z, name="spheres")
    sim.add_wall(ds.MeshWall(wedge_panels(angle, orifice, height, depth), name="hopper"))
    sim.add_wall(ds.PlaneWall(point=(0, -0.5 * depth, 0), normal=(0, 1, 0), name="back"))
    sim.add_wall(ds.PlaneWall(point=(0, 0.5 * depth, 0), normal=(0, -1, 0), name="front"))
    sim.add_wall(ds.PlaneWall(point=(0, 0, 0), normal=(0, 0, 1), remove_at=float(fill_time), name="gate"))
    sim.add_particles(x, radius)
    steps = int(round((float(fill_time) + float(duration)) / dt))
    every = max(1, int(round(0.01 / dt)))
    measure = HopperDischarge(angle, orifice, radius, count * sphere_mass, gate_time=float(fill_time),
                              initial_positions=x)
    return ds.Scene(sim, description=__doc__, steps=steps, every=every, camera=(0.0, -89.0), measures=[measure],
                    view_bounds=((-top, -depth, OUTLET_Z), (top, depth, height)), options=options)


def _surrogate_scene(x, options, sphere_mass, model, extrapolate):
    """The same hopper run by a trained NeuralDEM from the gate's opening: the fill's
    sphere centres are markers moved by its velocity field, the discharged mass is the
    time integral of its flux through the slot."""
    from diffsim.learned.neuraldem import NeuralDEM
    from diffsim.learned.neuraldem_module import HopperSurrogate
    net = NeuralDEM.load(model or DEFAULT_MODEL)
    if abs(net.stats["orifice"] - options["orifice"]) > 1e-9:
        raise ds.InvalidScene(f"dem_hopper: the surrogate was trained for orifice {net.stats['orifice']} m, not "
                              f"{options['orifice']} m")
    module = HopperSurrogate(net, x, options["angle"], options["friction"], options["rolling_friction"],
                             sphere_mass, extrapolate=bool(extrapolate))
    measure = HopperDischarge(options["angle"], options["orifice"], options["radius"], len(x) * sphere_mass,
                              gate_time=0.0, initial_positions=x)
    steps = max(1, int(round(options["duration"] / module.dt)))
    return ds.Scene(module, description=__doc__, steps=steps, every=1, camera=(0.0, -89.0), measures=[measure],
                    options={**options, "solver": "neuraldem", "model": str(model or DEFAULT_MODEL)})
