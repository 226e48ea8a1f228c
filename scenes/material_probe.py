"""Material probe: a small calibration experiment for `diffsim fit` and `diffsim generate`.
jelly/plasticine: a block on a sticky floor is hit and pressed by a descending sphere;
sand: a short column collapses on a rough floor. Small and fast (grid 24 by default).

Options: material ("jelly", "plasticine", "sand"), E (Pa), nu, yield_stress (Pa),
friction_angle (rad), grid (24), duration (s).
"""
import math

import diffsim as ds


def build(material="jelly", E=None, nu=0.3, yield_stress=400.0, friction_angle=math.radians(30.0), grid=24,
          duration=None):
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
    if material == "sand":
        sim = ds.MPMSolver(grid=grid, dt=dt, walls={"-z": "separate"}, wall_friction={"-z": 0.5})
        sim.add_body(ds.Box(center=(0.5, 0.5, floor + 0.1 + 1e-4), size=(0.12, 0.12, 0.2)), mat, name="sample")
        T = duration or 0.25
    else:
        sim = ds.MPMSolver(grid=grid, dt=dt, walls={"-z": "sticky"})
        sim.add_body(ds.Box(center=(0.5, 0.5, floor + 0.1 + 1e-4), size=(0.2, 0.2, 0.2)), mat, name="sample",
                     velocity=(0.0, 0.0, -0.2))
        sim.add_collider(ds.SphereCollider(center=(0.53, 0.49, floor + 0.32), radius=0.1, velocity=(0.0, 0.0, -0.8),
                                           friction=0.4, name="indenter"))
        T = duration or 0.15
    steps = int(round(T / dt))
    every = max(1, steps // 15)
    return ds.Scene(sim, description=__doc__, steps=every * (steps // every), every=every, camera=(20.0, -60.0))
