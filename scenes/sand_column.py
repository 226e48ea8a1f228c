"""Granular column collapse: a cylinder of dry sand (Drucker-Prager, friction angle phi)
is released on a rough floor and spreads into a pile whose slope is set by phi.

Options: friction_angle (deg, default 30), height (m, 0.16), radius (m, 0.06), grid (64),
E (Pa, 3e5), cohesion (Pa, 0).
"""
import math

import diffsim as ds


def build(friction_angle=30.0, height=0.16, radius=0.06, grid=64, E=3e5, nu=0.3, cohesion=0.0,
          floor_friction=0.6):
    sand = ds.DruckerPrager(E=E, nu=nu, friction_angle=math.radians(friction_angle), cohesion=cohesion,
                            density=1600.0)
    L = 0.6
    dx = L / grid
    dt = min(2e-4, 0.5 * 0.4 * dx / sand.wave_speed())
    sim = ds.MPMSolver(domain_max=(L, L, 0.3), grid=grid, dt=dt,
                       walls={"-z": "separate"}, wall_friction={"-z": floor_friction})
    z0 = 3 * dx
    sim.add_body(ds.Cylinder(center=(L / 2, L / 2, z0 + height / 2 + 1e-4), radius=radius, height=height, axis=2),
                 sand, name="sand")
    return ds.Scene(sim, description=__doc__, steps=int(round(0.8 / dt)), every=int(round(0.02 / dt)),
                    camera=(20.0, -60.0))
