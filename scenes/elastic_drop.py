"""Elastic drop (the default main job): a jelly cube and a jelly sphere (fixed-corotated)
fall onto a tilted board (a rigid box collider) with friction, bounce and slide onto the floor.

Options: E (Pa, default 5e4), nu (0.3), grid (64 cells), tilt (rad, 0.35), friction (0.3),
material ("fixed_corotated" or "neo_hookean").
"""
import math

import numpy as np

import diffsim as ds


def build(E=5e4, nu=0.3, grid=64, tilt=0.35, friction=0.3, material="fixed_corotated", dt=None):
    if material not in ("fixed_corotated", "neo_hookean"):
        raise ds.InvalidScene(f"material must be 'fixed_corotated' or 'neo_hookean', got {material!r}")
    Model = ds.FixedCorotated if material == "fixed_corotated" else ds.NeoHookean
    jelly = Model(E=E, nu=nu, density=1000.0)
    dx = 1.0 / grid
    if dt is None:  # 60% of the elastic CFL limit, and at most 4e-4 s
        dt = min(4e-4, 0.6 * 0.4 * dx / jelly.wave_speed())
    sim = ds.MPMSolver(domain_max=(1.0, 1.0, 1.0), grid=grid, dt=dt, walls="separate", wall_friction=0.2)
    sim.add_body(ds.Box(center=(0.42, 0.5, 0.62), size=0.18), jelly, name="cube", velocity=(0.0, 0.0, -1.0))
    sim.add_body(ds.Sphere(center=(0.66, 0.48, 0.78), radius=0.08), jelly, name="sphere")
    c, s = math.cos(tilt), math.sin(tilt)
    tilt_about_y = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    sim.add_collider(ds.BoxCollider(center=(0.5, 0.5, 0.3), half_size=(0.22, 0.3, 0.02), rotation=tilt_about_y,
                                    friction=friction, name="ramp"))
    return ds.Scene(sim, description=__doc__, steps=int(round(1.2 / dt)), every=int(round(0.02 / dt)),
                    camera=(18.0, -70.0))
