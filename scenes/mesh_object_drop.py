"""Mesh object drop: the DiffTactile test object J03_2.obj (a watertight mesh, millimetres,
about 80 mm across) is sampled into particles as a soft elastic solid and dropped onto a
rigid sphere, a rigid mesh collider (the same mesh, scaled down) and the floor.

Options: mesh (path, default scenes/data/difftactile/J03_2.obj), scale (m per file unit,
1e-3), E (Pa, 3e4), grid (64), spacing (m, grid spacing / 2).
"""
from pathlib import Path

import diffsim as ds

HERE = Path(__file__).resolve().parent
DEFAULT_MESH = HERE / "data" / "difftactile" / "J03_2.obj"


def build(mesh=str(DEFAULT_MESH), scale=1e-3, E=3e4, nu=0.3, grid=64, spacing=None):
    soft = ds.NeoHookean(E=E, nu=nu, density=1100.0)
    L = 0.3
    dx = L / grid
    dt = min(2e-4, 0.5 * 0.4 * dx / soft.wave_speed())
    sim = ds.MPMSolver(domain_max=(L, L, L), grid=grid, dt=dt, walls="separate", wall_friction=0.4)
    shape = ds.MeshShape(mesh, scale=scale, center=(0.15, 0.15, 0.2))
    sim.add_body(shape, soft, name="object", spacing=spacing)
    sim.add_collider(ds.SphereCollider(center=(0.17, 0.13, 0.06), radius=0.04, friction=0.3, name="ball"))
    sim.add_collider(ds.MeshCollider(mesh, scale=scale * 0.5, position=(0.06, 0.2, 3 * dx), resolution=40,
                                     friction=0.3, name="rock"))
    return ds.Scene(sim, description=__doc__, steps=int(round(0.6 / dt)), every=int(round(0.01 / dt)),
                    camera=(20.0, -50.0))
