"""DEM mixer: a bowl (cylinder wall and floor) of spheres stirred by a rotating two-paddle
blade. The blade is a triangle mesh the scene writes as an STL file (trimesh) and loads
back through MeshWall, as a user's CAD part would be; it spins about the vertical axis.

Options: omega (rad/s, default 6), count (spheres, 3000), radius (sphere radius m, 2e-3),
duration (s, 1.0).
"""
import os
import tempfile


import diffsim as ds


def write_blade_stl(path, bowl_radius, height=0.02, thickness=0.006):
    """Two crossed paddles (boxes) through the axis, from z = 2 mm up; an STL at ``path``."""
    import trimesh
    length = 2 * (bowl_radius - 0.006)
    a = trimesh.creation.box(extents=(length, thickness, height))
    b = trimesh.creation.box(extents=(thickness, length, height))
    blade = trimesh.util.concatenate([a, b])
    blade.apply_translation((0, 0, 0.002 + height / 2))
    tmp = path + ".tmp"
    blade.export(tmp, file_type="stl")
    os.replace(tmp, path)
    return path


def build(omega=6.0, count=3000, radius=2e-3, duration=1.0, dt=2e-5, seed=0):
    bowl = 0.05
    mat = ds.DEMMaterial(E=5e6, nu=0.3, restitution=0.5, friction=0.4, rolling_friction=0.02, density=2500.0)
    sim = ds.DEMSolver((-bowl - 0.005, -bowl - 0.005, -0.005), (bowl + 0.005, bowl + 0.005, 0.12), mat, dt=dt,
                       skin=1e-3, max_neighbors=16, name="spheres")
    sim.add_wall(ds.PlaneWall(point=(0, 0, 0), normal=(0, 0, 1), name="floor"))
    sim.add_wall(ds.CylinderWall(point=(0, 0, 0), axis=(0, 0, 1), radius=bowl, name="bowl"))
    stl = write_blade_stl(os.path.join(tempfile.gettempdir(), f"diffsim_mixer_blade_{os.getpid()}.stl"), bowl)
    sim.add_wall(ds.MeshWall(stl, angular_velocity=(0, 0, omega), center=(0, 0, 0), name="blade"))
    # spheres above the blade, in the bowl
    c = 0.7 * bowl
    sim.fill_random((-c, -c, 0.025), (c, c, 0.11), radius, count, seed=seed)
    return ds.Scene(sim, description=__doc__, steps=int(round(duration / dt)), every=int(round(0.02 / dt)),
                    camera=(35.0, -60.0), options=dict(omega=omega, count=count, radius=radius))
