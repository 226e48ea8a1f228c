"""Tactile slide: a flat GelSight-style pad (FEM, 20 x 20 x 3 mm, a 10 x 14 marker grid,
fisheye camera) presses into the rigid bumpy surface of Random-surface.stl (a mesh SDF
collider, scaled from mm) and slides 5 mm along x with friction. The summary traces the
normal and shear force and the deepest penetration; frames include the marker flow.

Options: depth (m pressed beyond first touch, 0.4e-3), slide (m, 5e-3), speed (m/s, 0.05),
friction (0.8), E (Pa, 3e5).
"""
from pathlib import Path

import numpy as np

import diffsim as ds
from diffsim.tactile.sensor import mount_sensor

SURFACE = Path(__file__).resolve().parent / "data" / "difftactile" / "Random-surface.stl"


def build(depth=0.4e-3, slide=5e-3, speed=0.05, friction=0.8, E=3e5, dt=5e-6):
    sim = ds.FEMSolver(dt=dt, gravity=(0, 0, 0), tape_substeps=200)
    ground = sim.add_collider(ds.MeshCollider(SURFACE, scale=1e-3, resolution=96, name="surface"))
    # the surface's height under the pad's start: highest point within the footprint
    v = ground.mesh.vertices
    x0 = -0.01
    under = (np.abs(v[:, 0] - x0) < 0.012) & (np.abs(v[:, 1]) < 0.012)
    top = float(v[under, 2].max())
    gap = 1e-4
    t_press = (gap + depth) / speed
    t_slide = slide / speed
    pad, plate, sensor = mount_sensor(
        sim, ds.flat_pad(width=0.02, depth=0.02, thickness=0.003, resolution=0.001),
        ds.FEMMaterial(E=E, nu=0.45, density=1100, mass_damping=300),
        ds.PenaltyContact(stiffness=1e10, friction=friction), apex=(x0, 0.0, top + gap),
        velocity=lambda t: (0.0, 0.0, -speed) if t < t_press else (speed if t < t_press + t_slide else 0.0, 0.0, 0.0),
        markers="grid")
    steps = int(round((t_press + t_slide) / dt))
    return ds.Scene(sim, description=__doc__, steps=steps, every=max(1, steps // 40), camera=(20.0, -70.0),
                    view_bounds=(np.array([-0.03, -0.02, top - 0.01]), np.array([0.02, 0.02, top + 0.01])),
                    options=dict(depth=depth, slide=slide, speed=speed, friction=friction, E=E))
