"""Tactile press: a DiffTactile-like dome sensor (FEM elastomer, markers from the reference
image, fisheye camera) presses an elastic object made from J03_2.obj (scaled from mm,
voxel tet mesh, FEM, resting on a fixed base), then holds. Frames include the sensor's
marker-flow image; the summary traces the normal and shear force and the deepest
penetration.

Options: depth (m the plate travels beyond first touch, 0.6e-3), speed (m/s, 0.02),
E_sensor (Pa, 3e5), E_object (Pa, 2e5), cell (object voxel size, m, 0.006), hold (s, 0.01).
"""
from pathlib import Path

import numpy as np

import diffsim as ds
from diffsim.tactile.sensor import mount_sensor

OBJECT = Path(__file__).resolve().parent / "data" / "difftactile" / "J03_2.obj"


def build(depth=0.6e-3, speed=0.02, E_sensor=3e5, E_object=2e5, cell=0.006, hold=0.01, dt=4e-6):
    sim = ds.FEMSolver(dt=dt, gravity=(0, 0, 0), tape_substeps=200)   # no sag before the press
    shape = ds.MeshShape(OBJECT, scale=1e-3)
    mesh = ds.voxel_tet_mesh(shape, cell)
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    obj = sim.add_body(mesh, ds.FEMMaterial(E=E_object, nu=0.4, density=1200, mass_damping=200),
                       contact=ds.PenaltyContact(stiffness=1e9, friction=1.0), position=-0.5 * (lo + hi) * [1, 1, 0]
                       - [0, 0, lo[2]], name="object")
    sim.fix_nodes(obj, obj.nodes_where(lambda X: X[:, 2] < 1e-9), name="base")
    v = obj.mesh.vertices
    top = float(v[:, 2].max())
    cx, cy = v[v[:, 2] > top - 1e-9, :2].mean(0)           # over the middle of the object's top
    gap = 1e-4
    t_touch = gap / speed
    t_stop = t_touch + depth / speed
    pad, plate, sensor = mount_sensor(
        sim, ds.dome_pad(width=0.02, resolution=0.02 / 15, layers=6),
        ds.FEMMaterial(E=E_sensor, nu=0.45, density=1100, mass_damping=300),
        ds.PenaltyContact(stiffness=1e9, friction=1.0), apex=(cx, cy, top + gap),
        velocity=lambda t: (0.0, 0.0, -speed if t < t_stop else 0.0), markers="image")
    steps = int(round((t_stop + hold) / dt))
    return ds.Scene(sim, description=__doc__, steps=steps, every=max(1, steps // 40), camera=(15.0, -60.0),
                    view_bounds=(np.array([cx - 0.03, cy - 0.03, top - 0.02]), np.array([cx + 0.03, cy + 0.03, top + 0.02])),
                    options=dict(depth=depth, speed=speed, E_sensor=E_sensor, E_object=E_object, cell=cell,
                                 hold=hold))
