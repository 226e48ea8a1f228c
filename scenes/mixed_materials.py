"""Mixed materials in one grid: a jelly cube, a plasticine ball, a sand heap and a slab
of water fall into the same box and interact through the shared MPM grid.

Options: grid (48).
"""
import math

import diffsim as ds


def build(grid=48):
    jelly = ds.FixedCorotated(E=4e4, nu=0.3, density=1000.0)
    clay = ds.VonMises(E=8e4, nu=0.3, yield_stress=1.5e3, density=1300.0)
    sand = ds.DruckerPrager(E=3e5, nu=0.3, friction_angle=math.radians(35), density=1500.0)
    water = ds.NewtonianFluid(bulk_modulus=2.5e5, viscosity=0.01, density=1000.0)
    L = 0.6
    dx = L / grid
    c = max(m.wave_speed() for m in (jelly, clay, sand, water))
    dt = min(2e-4, 0.5 * 0.4 * dx / c)
    sim = ds.MPMSolver(domain_max=(L, L, L), grid=grid, dt=dt, walls="separate", wall_friction=0.3)
    m = 3 * dx
    sim.add_body(ds.Box(center=(L - m - 0.15, L / 2, m + 0.03), size=(0.3, L - 2 * m - 1e-3, 0.06)), water,
                 name="water")
    sim.add_body(ds.Cylinder(center=(0.2, 0.2, 0.3), radius=0.07, height=0.12), sand, name="sand")
    sim.add_body(ds.Box(center=(0.4, 0.22, 0.32), size=0.12), jelly, name="jelly")
    sim.add_body(ds.Sphere(center=(0.3, 0.42, 0.4), radius=0.07), clay, name="plasticine")
    return ds.Scene(sim, description=__doc__, steps=int(round(1.0 / dt)), every=int(round(0.02 / dt)),
                    camera=(25.0, -60.0))
