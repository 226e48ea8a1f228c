"""Dam break: a column of weakly compressible water collapses, runs along the floor and
splashes around a cylindrical pillar. With viscoplastic=True the fluid is a Bingham mud
(non-Newtonian, regularised yield stress) that stops when the stress falls below yield.

Options: viscosity (Pa s, default 0.01), viscoplastic (False), yield_stress (Pa, 30),
grid (48), sound_speed (m/s, 25).
"""
import diffsim as ds


def build(viscosity=0.01, viscoplastic=False, yield_stress=30.0, grid=48, sound_speed=25.0):
    rho = 1000.0
    K = rho * sound_speed ** 2
    if viscoplastic:
        fluid = ds.ViscoplasticFluid(bulk_modulus=K, viscosity=max(viscosity, 1.0), yield_stress=yield_stress,
                                     regularization=0.01, density=rho)
    else:
        fluid = ds.NewtonianFluid(bulk_modulus=K, viscosity=viscosity, density=rho)
    L = 0.8
    dx = L / grid
    dt = min(2e-4, 0.5 * sim_limit(dx, fluid))
    sim = ds.MPMSolver(domain_max=(L, 0.4, 0.4), grid=grid, dt=dt, walls="slip")
    m = 3 * dx  # wall layers
    h = min(0.3, 0.4 - 2 * m - 1e-3)  # column height (smaller on coarse grids)
    sim.add_body(ds.Box(center=(m + 0.1, 0.2, m + h / 2), size=(0.2, 0.4 - 2 * m - 1e-3, h)), fluid, name="water")
    sim.add_collider(ds.CylinderCollider(center=(0.55, 0.2, 0.2), radius=0.04, height=0.4, kind="slip",
                                         name="pillar"))
    return ds.Scene(sim, description=__doc__, steps=int(round(0.8 / dt)), every=int(round(0.02 / dt)),
                    camera=(25.0, -55.0))


def sim_limit(dx, fluid):
    c = fluid.wave_speed()
    lim = 0.4 * dx / c
    nu = fluid.viscosity_limit()
    if nu > 0:
        lim = min(lim, dx * dx / (6 * nu))
    return lim
