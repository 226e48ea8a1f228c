"""Plasticine press: a kinematic box (the press) comes down on a block of plasticine
(von Mises elastoplastic on Hencky strain), squashes it and lifts off again; the block
keeps its new shape.

Options: yield_stress (Pa, default 2e3), E (Pa, 1e5), depth (m pressed, 0.04), grid (64).
"""
import diffsim as ds


def build(yield_stress=2e3, E=1e5, nu=0.3, depth=0.04, grid=64, speed=0.2):
    clay = ds.VonMises(E=E, nu=nu, yield_stress=yield_stress, density=1500.0)
    L = 0.5
    dx = L / grid
    dt = min(2e-4, 0.5 * 0.4 * dx / clay.wave_speed())
    floor = 3 * dx
    top = floor + 0.1
    half = (0.08, 0.08, 0.02)
    t_down = (depth + 0.01) / speed

    def path(t):
        # down at `speed` until t_down, hold 0.1 s, then back up
        z0 = top + 0.01 + half[2]
        if t < t_down:
            z = z0 - speed * t
        elif t < t_down + 0.1:
            z = z0 - speed * t_down
        else:
            z = z0 - speed * t_down + speed * (t - t_down - 0.1)
        return (L / 2, L / 2, z)

    sim = ds.MPMSolver(domain_max=(L, L, L / 2), grid=grid, dt=dt, walls={"-z": "sticky"})
    sim.add_body(ds.Box(center=(L / 2, L / 2, floor + 0.05), size=(0.1, 0.1, 0.1)), clay, name="plasticine")
    sim.add_collider(ds.BoxCollider(center=path(0.0), half_size=half, path=path, kind="sticky", name="press"))
    T = 2 * t_down + 0.2
    return ds.Scene(sim, description=__doc__, steps=int(round(T / dt)), every=int(round(0.01 / dt)),
                    camera=(15.0, -60.0))
