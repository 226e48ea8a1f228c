"""DEM silo discharge: the project's benchmark silo (scenes/data/dem_silo: 15,000 spheres,
R = 2 mm, in a flat-bottomed cylinder of radius 40 mm); the orifice in the bottom plate
(a triangle mesh) opens at t = 0 and the spheres drain; those below z = -0.02 m are removed
and the discharged mass is traced against time (summary.json: traces.discharged_mass).

Options: start ("settled": the bed of settled_state.csv, default; "fill": the lattice of
initial_positions.csv, settling for fill_time s behind a closed gate first), orifice
(diameter, m, default 0.024: the shared plate_orifice.stl; other sizes build the same
96-gon annulus), fill_height (m: keep only spheres below it; default all), duration (s of
discharge, default 1.0), data (folder of the silo files).
"""
import json
import os

import numpy as np

import diffsim as ds

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_CANDIDATES = (os.path.join(HERE, "data", "dem_silo"), os.path.join(HERE, "..", "..", "shared", "data", "dem_silo"))


def find_data(path=None):
    for p in ([path] if path else []) + list(DATA_CANDIDATES):
        if p and os.path.exists(os.path.join(p, "params.json")):
            return os.path.abspath(p)
    raise ds.InvalidScene(f"dem_silo: no silo data (params.json, settled_state.csv, ...) in {path or DATA_CANDIDATES}")


def orifice_plate(diameter, outer_radius, segments=96):
    """Annulus at z = 0 from a ``segments``-gon hole (vertices on the circle of ``diameter``)
    to a ``segments``-gon rim of ``outer_radius`` (m); a trimesh.Trimesh."""
    import trimesh
    a = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    ring = np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], 1)
    v = np.concatenate([0.5 * diameter * ring, outer_radius * ring])
    f = []
    for i in range(segments):
        j = (i + 1) % segments
        f += [[i, j, segments + i], [j, segments + j, segments + i]]
    return trimesh.Trimesh(v, np.asarray(f), process=False)


def build(start="settled", orifice=None, fill_height=None, duration=1.0, fill_time=None, data=None, dt=None):
    path = find_data(data)
    with open(os.path.join(path, "params.json")) as fh:
        P = json.load(fh)
    if start not in ("settled", "fill"):
        raise ds.InvalidScene(f"start must be 'settled' or 'fill', got {start!r}")
    R = P["radius"]
    mat = ds.DEMMaterial(E=P["youngs_modulus"], nu=P["poisson_ratio"], restitution=P["restitution"],
                         friction=P["friction"], rolling_friction=P["rolling_friction"], density=P["density"])
    dt = float(dt or P["dt"])
    z_out = -0.02
    xy = P["box_xy"]
    sim = ds.DEMSolver((-xy, -xy, z_out - 4 * R), (xy, xy, P["box_zhi"] + 2 * R), mat, dt=dt,
                       gravity=(0, 0, -P["gravity"]), skin=P["neighbor_skin"], outflow_z=z_out, name="spheres")
    sim.add_wall(ds.CylinderWall(point=(0, 0, 0), axis=(0, 0, 1), radius=P["silo_radius"], name="silo"))
    D0 = float(orifice or P["orifice_diameter"])
    if not 2 * R < D0 < 2 * P["silo_radius"]:
        raise ds.InvalidScene(f"orifice diameter must lie between a sphere diameter and the silo's, got {D0}")
    if abs(D0 - P["orifice_diameter"]) < 1e-12:
        plate = ds.MeshWall(os.path.join(path, "plate_orifice.stl"), name="plate")
    else:
        plate = ds.MeshWall(orifice_plate(D0, P["plate_outer_radius"], P["orifice_segments"]), name="plate")
    sim.add_wall(plate)
    fill_time = float(P["fill_time"] if fill_time is None else fill_time) if start == "fill" else 0.0
    sim.add_wall(ds.PlaneWall(point=(0, 0, 0), normal=(0, 0, 1), remove_at=fill_time, name="gate"))
    if start == "settled":
        d = np.loadtxt(os.path.join(path, "settled_state.csv"), delimiter=",", skiprows=1)
        x, v, w = d[:, 1:4], d[:, 4:7], d[:, 7:10]
    else:
        d = np.loadtxt(os.path.join(path, "initial_positions.csv"), delimiter=",", skiprows=1)
        x, v, w = d[:, 1:4], np.zeros((len(d), 3)), np.zeros((len(d), 3))
    if fill_height is not None:
        keep = x[:, 2] < float(fill_height)
        if not keep.any():
            raise ds.InvalidScene(f"fill_height {fill_height} m keeps no spheres")
        x, v, w = x[keep], v[keep], w[keep]
    # the reference bed touches the walls within round-off: tolerate that, not real overlaps
    sim.add_particles(x, R, velocity=v, angular_velocity=w, check_overlap=start == "fill")
    steps = int(round((fill_time + float(duration)) / dt))
    every = max(1, int(round(P["output_interval"] / dt)))
    return ds.Scene(sim, description=__doc__, steps=steps, every=every, camera=(12.0, -60.0),
                    view_bounds=((-xy, -xy, z_out), (xy, xy, 0.3)),
                    options=dict(start=start, orifice=D0, fill_height=fill_height, duration=duration))
