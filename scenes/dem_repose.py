"""DEM angle of repose: spheres (R = 2 mm) are poured slowly onto the centre of a round
plate (a mesh disk, radius 20 mm by default) made rough by a layer of glued spheres, and
build a heap; spheres that roll off the rim fall into the outflow region and are
removed. The heap's slope grows with the rolling friction (``diffsim.dem.granular.heap_angle``
measures it from the heap height: atan(H / plate radius); ``heap_angle_from_volume``
from the heap volume, which is far less noisy on a small heap).

Options: rolling_friction (mu_r, default 0.2), friction (0.5), plate (radius m, 0.02),
rate (spheres per second, 800), pour_time (s, 1.5), settle (s, 0.5).
"""
import numpy as np

import diffsim as ds


def plate_mesh(radius, segments=64):
    import trimesh
    a = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    v = np.concatenate([[[0.0, 0.0, 0.0]], np.stack([radius * np.cos(a), radius * np.sin(a), 0 * a], 1)])
    f = [[0, 1 + i, 1 + (i + 1) % segments] for i in range(segments)]
    return trimesh.Trimesh(v, np.asarray(f), process=False)


def build(rolling_friction=0.2, friction=0.5, plate=0.02, rate=800.0, pour_time=1.5, settle=0.5, dt=2e-5, seed=0):
    R = 0.002
    mat = ds.DEMMaterial(E=5e6, nu=0.3, restitution=0.3, friction=friction, rolling_friction=rolling_friction,
                         density=2500.0)
    sim = ds.DEMSolver((-plate - 0.02, -plate - 0.02, -0.03), (plate + 0.02, plate + 0.02, 0.1), mat, dt=dt,
                       skin=1e-3, outflow_z=-0.02, name="spheres")
    sim.add_wall(ds.MeshWall(plate_mesh(plate), name="plate"))
    g = np.arange(-plate, plate + 1e-9, 2.1 * R)
    base = np.stack(np.meshgrid(g, g, [R], indexing="ij"), -1).reshape(-1, 3)
    base = base[np.hypot(base[:, 0], base[:, 1]) <= plate - R]
    sim.add_particles(base, R, fixed=True)  # the rough base
    m = mat.density * 4 / 3 * np.pi * R ** 3
    sim.add_pour(ds.Pour((-0.006, -0.006, 0.06), (0.006, 0.006, 0.08), R, mass_rate=rate * m, start=0.0,
                         stop=pour_time, interval=0.02, velocity=(0, 0, -0.3), seed=seed))
    duration = pour_time + settle
    return ds.Scene(sim, description=__doc__, steps=int(round(duration / dt)), every=int(round(0.05 / dt)),
                    camera=(15.0, -60.0),
                    options=dict(rolling_friction=rolling_friction, friction=friction, plate=plate, rate=rate))
