"""ROM data body: one body of jelly, plasticine, sand or water (MPM) thrown into a box with a
random orientation and a random initial velocity (both drawn from ``seed``), falling onto
the floor and against the walls. It generates the GIOROM surrogate's training data
(``diffsim sweep scenes/rom_body.py --grid material=jelly --grid shape=cube,sphere,cylinder,mesh
--seeds 0,1,...,9 --record``; docs/rom.md) and, with ``solver=rom``, runs the same body with
a trained surrogate instead of the MPM (same frames, preview and summary).

Options: material ("jelly", "plasticine", "sand", "water"), shape ("cube", "sphere",
"cylinder", "mesh" = scenes/data/difftactile/J03_2.obj, "mesh2" = E15_0.obj, a shape kept
out of training), size (m, 0.22), speed (m/s, largest horizontal speed, 1.0), grid (32),
frame_dt (s, 5e-3), seed (0), spacing (particle spacing, m; default grid spacing / 2),
solver ("mpm" or "rom"), model (the surrogate's file; default scenes/data/rom/<material>.pt),
frames (200).
"""
import math
from pathlib import Path

import numpy as np

import diffsim as ds

HERE = Path(__file__).resolve().parent
MESHES = {"mesh": HERE / "data" / "difftactile" / "J03_2.obj", "mesh2": HERE / "data" / "difftactile" / "E15_0.obj"}
MATERIALS = {
    "jelly": lambda: ds.FixedCorotated(E=3e4, nu=0.3, density=1000.0),
    "plasticine": lambda: ds.VonMises(E=8e4, nu=0.3, yield_stress=1.5e3, density=1300.0),
    "sand": lambda: ds.DruckerPrager(E=3e5, nu=0.3, friction_angle=math.radians(35.0), density=1500.0),
    "water": lambda: ds.NewtonianFluid(bulk_modulus=1e5, viscosity=0.01, density=1000.0),
}
SHAPES = ("cube", "sphere", "cylinder", "mesh", "mesh2")


def _random_rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _shape(shape: str, size: float):
    if shape == "cube":
        return ds.Box(center=(0, 0, 0), size=size)
    if shape == "sphere":
        return ds.Sphere(center=(0, 0, 0), radius=0.5 * size)
    if shape == "cylinder":
        return ds.Cylinder(center=(0, 0, 0), radius=0.4 * size, height=size, axis=2)
    lo, hi = ds.MeshShape(MESHES[shape], scale=1e-3, center=(0, 0, 0)).bounds  # the files are in mm
    return ds.MeshShape(MESHES[shape], scale=1e-3 * size / float(np.max(hi - lo)), center=(0, 0, 0))


def build(material="jelly", shape="cube", size=0.22, speed=1.0, grid=32, frame_dt=5e-3, seed=0, solver="mpm",
          model=None, frames=200, spacing=None):
    if material not in MATERIALS:
        raise ds.InvalidScene(f"material must be one of {sorted(MATERIALS)}, got {material!r}")
    if shape not in SHAPES:
        raise ds.InvalidScene(f"shape must be one of {list(SHAPES)}, got {shape!r}")
    if not 0.05 <= float(size) <= 0.4:
        raise ds.InvalidScene(f"size must be in [0.05, 0.4] m, got {size}")
    if solver not in ("mpm", "rom"):
        raise ds.InvalidScene(f"solver must be 'mpm' or 'rom', got {solver!r}")
    mat = MATERIALS[material]()
    grid = int(grid)
    dx = 1.0 / grid
    dt_max = 0.5 * 0.4 * dx / mat.wave_speed()
    substeps = max(1, math.ceil(float(frame_dt) / min(dt_max, 1e-3)))
    dt = float(frame_dt) / substeps
    rng = np.random.default_rng(int(seed))
    rotation = _random_rotation(rng)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    horizontal = float(speed) * math.sqrt(rng.uniform())
    velocity = (horizontal * math.cos(angle), horizontal * math.sin(angle), rng.uniform(-1.0, 0.5))
    center = np.array([0.5 + rng.uniform(-0.1, 0.1), 0.5 + rng.uniform(-0.1, 0.1), 0.45 + rng.uniform(0.0, 0.1)])
    spacing = dx / 2 if spacing is None else float(spacing)
    points = _shape(shape, float(size)).sample(spacing) @ rotation.T + center
    if solver == "rom":
        from diffsim.learned.rom import GIOROM, ROMBody, material_type_of
        surrogate = GIOROM.load(model or HERE / "data" / "rom" / f"{material}.pt")
        if abs(surrogate.frame_dt - float(frame_dt)) > 1e-9:
            raise ds.InvalidScene(f"the surrogate was trained with frames of {surrogate.frame_dt} s, not {frame_dt} s")
        body = ROMBody(surrogate, points, velocity, density=mat.density, material_type=material_type_of(mat))
        return ds.Scene(body, description=__doc__, steps=int(frames), every=1, camera=(20.0, -60.0))
    sim = ds.MPMSolver(domain_max=(1.0, 1.0, 1.0), grid=grid, dt=dt, walls="separate", wall_friction=0.3)
    sim.add_particles(points, mat, name=material, volume=spacing ** 3, velocity=velocity, spacing=spacing,
                      info={"shape": shape})
    return ds.Scene(sim, description=__doc__, steps=int(frames) * substeps, every=substeps, camera=(20.0, -60.0))
