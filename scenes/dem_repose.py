"""DEM angle of repose: a column of spheres (R = 2 mm, 2,000 by default) collapses onto a
round plate (a mesh disk); spheres that roll off its rim fall into the outflow region and
are removed, the rest form a heap whose slope grows with the rolling friction
(``diffsim.granular.heap_angle`` measures it).

Options: rolling_friction (mu_r, default 0.1), friction (0.5), count (2000), plate radius
(m, 0.04), duration (s, 1.5).
"""
import numpy as np

import diffsim as ds


def plate_mesh(radius, segments=64):
    import trimesh
    a = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    v = np.concatenate([[[0.0, 0.0, 0.0]], np.stack([radius * np.cos(a), radius * np.sin(a), 0 * a], 1)])
    f = [[0, 1 + i, 1 + (i + 1) % segments] for i in range(segments)]
    return trimesh.Trimesh(v, np.asarray(f), process=False)


def build(rolling_friction=0.1, friction=0.5, count=2000, plate=0.04, duration=1.5, dt=2e-5, seed=0):
    R = 0.002
    mat = ds.DEMMaterial(E=5e6, nu=0.3, restitution=0.3, friction=friction, rolling_friction=rolling_friction,
                         density=2500.0)
    sim = ds.DEMSolver((-plate - 0.02, -plate - 0.02, -0.03), (plate + 0.02, plate + 0.02, 0.2), mat, dt=dt,
                       skin=1e-3, outflow_z=-0.02, name="spheres")
    sim.add_wall(ds.MeshWall(plate_mesh(plate), name="plate"))
    # a jittered lattice column of ``count`` spheres above the plate centre, released at once
    side, spacing = 0.032, 2.2 * R
    g = np.arange(-side / 2 + R, side / 2 - R + 1e-9, spacing)
    layers = int(np.ceil(count / len(g) ** 2))
    z = 0.005 + R + spacing * np.arange(layers)
    x = np.stack(np.meshgrid(g, g, z, indexing="ij"), -1).reshape(-1, 3)
    x = x[np.lexsort((x[:, 1], x[:, 0], x[:, 2]))][:count]
    x += np.random.default_rng(seed).uniform(-0.1, 0.1, x.shape) * (spacing - 2 * R)
    if x[:, 2].max() + R > 0.2:
        raise ds.InvalidScene(f"count {count} does not fit in the release column")
    sim.add_particles(x, R)
    return ds.Scene(sim, description=__doc__, steps=int(round(duration / dt)), every=int(round(0.05 / dt)),
                    camera=(15.0, -60.0),
                    options=dict(rolling_friction=rolling_friction, friction=friction, plate=plate))
