"""Material probe: a small calibration experiment for `diffsim fit` and `diffsim generate`.
jelly/plasticine: a block on a sticky floor is hit and pressed by a descending sphere;
sand: a short column collapses on a rough floor. Small and fast (grid 24 by default).

Options: material ("jelly", "plasticine", "sand"), E (Pa), nu, yield_stress (Pa),
friction_angle (rad), grid (24), duration (s), shape ("box", or "mesh": a DiffTactile
object mesh scaled to the box's size), mesh (file name in scenes/data/difftactile,
default E15_0.obj), velocity (initial, m/s), spin (initial angular velocity about the
vertical axis through the body's centre, rad/s: with the floor holding the bottom, a
twist), release (s: the indenter turns back up at this time; default: it keeps
descending).
"""
import math
from pathlib import Path

import numpy as np

import diffsim as ds

MESHES = Path(__file__).resolve().parent / "data" / "difftactile"


def build(material="jelly", E=None, nu=0.3, yield_stress=400.0, friction_angle=math.radians(30.0), grid=24,
          duration=None, shape="box", velocity=None, mesh="E15_0.obj", release=None, spin=0.0):
    if material == "jelly":
        mat = ds.FixedCorotated(E=E or 5e3, nu=nu, density=1000.0)
    elif material == "plasticine":
        mat = ds.VonMises(E=E or 2e4, nu=nu, yield_stress=yield_stress, density=1000.0)
    elif material == "sand":
        mat = ds.DruckerPrager(E=E or 1e5, nu=nu, friction_angle=friction_angle, density=1500.0)
    else:
        raise ds.InvalidScene(f"material must be 'jelly', 'plasticine' or 'sand', got {material!r}")
    dx = 1.0 / grid
    dt = min(1e-3, 0.5 * 0.4 * dx / mat.wave_speed())
    floor = 3 * dx
    if shape not in ("box", "mesh"):
        raise ds.InvalidScene(f"shape must be 'box' or 'mesh', got {shape!r}")
    size = (0.12, 0.12, 0.2) if material == "sand" else (0.2, 0.2, 0.2)
    center = (0.5, 0.5, floor + size[2] / 2 + 1e-4)
    if shape == "box":
        body_shape = ds.Box(center=center, size=size)
    else:  # the DiffTactile objects are ~80 mm across: scale them to the box's largest side
        body_shape = ds.MeshShape(str(MESHES / mesh), scale=max(size) / 80.0, center=center)
    points = body_shape.sample(dx / 2)
    vel = np.tile(np.asarray(velocity or ((0.0, 0.0, 0.0) if material == "sand" else (0.0, 0.0, -0.2)),
                             dtype=float), (len(points), 1))
    vel[:, 0] -= float(spin) * (points[:, 1] - center[1])   # omega x r about the vertical axis
    vel[:, 1] += float(spin) * (points[:, 0] - center[0])
    if material == "sand":
        sim = ds.MPMSolver(grid=grid, dt=dt, walls={"-z": "separate"}, wall_friction={"-z": 0.5})
    else:
        sim = ds.MPMSolver(grid=grid, dt=dt, walls={"-z": "sticky"})
    sim.add_particles(points, mat, name="sample", volume=(dx / 2) ** 3, velocity=vel, spacing=dx / 2,
                      info={"shape": type(body_shape).__name__})
    if material == "sand":
        T = duration or 0.25
    else:
        start = (0.53, 0.49, floor + 0.32)
        if release is None:
            motion = {"velocity": (0.0, 0.0, -0.8)}
        else:  # down at 0.8 m/s until `release`, then back up at the same speed
            def path(t, r=float(release)):
                return (start[0], start[1], start[2] - 0.8 * (t if t < r else 2 * r - t))
            motion = {"path": path}
        sim.add_collider(ds.SphereCollider(center=start, radius=0.1, friction=0.4, name="indenter", **motion))
        T = duration or 0.15
    steps = int(round(T / dt))
    every = max(1, steps // 15)
    return ds.Scene(sim, description=__doc__, steps=every * (steps // every), every=every, camera=(20.0, -60.0))
