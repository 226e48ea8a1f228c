"""Tactile sensor: markers, forces and maps of an FEM pad pressed by a rigid sphere."""
import math
import os

import numpy as np
import pytest
import torch

import diffsim as ds
from _helpers import central_difference
from diffsim.tactile.sensor import TactileSensor

R_SPHERE = 0.004


def _rot(axis, angle):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def _press(Rw=np.eye(3), pw=np.zeros(3), E=1e5, markers="grid", steps_per_chunk=50):
    """A flat 12 x 12 x 3 mm pad on a back plate moving along its normal into a sphere
    (0.1 mm apart at rest), all placed by the rigid motion (Rw, pw)."""
    mesh = ds.flat_pad(width=0.012, depth=0.012, thickness=0.003, resolution=0.001)
    sim = ds.FEMSolver(dt=4e-6, gravity=tuple(Rw @ [0, 0, -9.81]), tape_substeps=steps_per_chunk)
    pad = sim.add_body(mesh, ds.FEMMaterial(E=E, nu=0.45, density=1100, mass_damping=300),
                       contact=ds.PenaltyContact(stiffness=1e10, friction=0.8), position=pw, rotation=Rw)
    plate = sim.add_driver(pad, pad.nodes_where(lambda X: np.abs((X - pw) @ Rw[:, 2]) < 1e-9),
                           velocity=tuple(Rw @ [0.0, 0.0, 0.05]), center=pw)
    sim.add_collider(ds.SphereCollider(center=tuple(Rw @ [0.001, 0.0, 0.003 + R_SPHERE + 1e-4] + pw),
                                       radius=R_SPHERE))
    sensor = TactileSensor(sim, pad, plate, frame=Rw, markers=markers, map_resolution=(48, 48))
    return sim, sensor


def test_pressed_pad_reads_consistent_forces_markers_and_depth():
    sim, sensor = _press()
    sim.step(2000)                                  # 8 ms: the plate rose 0.4 mm, 0.3 mm into the sphere
    r = sensor.read(sim.positions(), sim.contact_forces())
    fz = sim.contact_forces()[:, 2].sum()
    assert r["normal_force"] == pytest.approx(-fz, rel=1e-12) and r["normal_force"] > 0.05
    # the marker motion is largest near the contact point (x = 1 mm)
    m0 = sensor._marker_points(sensor.X)
    m1 = sensor._marker_points(sensor.to_sensor_frame(sim.positions()))
    biggest = np.argmax(np.linalg.norm(m1 - m0, axis=1))
    assert np.linalg.norm(m0[biggest, :2] - [0.001, 0.0]) < 0.003
    assert np.abs(r["displacement_px"]).max() > 0.5
    # the depth map peaks under the sphere at the plate's travel beyond first touch
    depth = r["depth"]
    i, j = np.unravel_index(np.argmax(depth), depth.shape)
    u = np.linspace(sensor.uv_lo[0], sensor.uv_hi[0], 48)[j]
    assert abs(u - 0.001) < 0.0008
    travel = sim.time * 0.05 - 1e-4
    assert depth.max() == pytest.approx(travel, rel=0.15)
    # the pressure map integrates to the normal force
    cell = np.prod((sensor.uv_hi - sensor.uv_lo) / 47)
    assert r["pressure"].sum() * cell == pytest.approx(r["normal_force"], rel=0.1)
    d = sim.diagnostics()
    assert d["sensor_normal_force"] == pytest.approx(r["normal_force"])
    img = sensor.flow_image(scale=5.0)
    assert img.shape == (480, 640, 3) and img.dtype == np.uint8


def test_markers_detected_in_the_reference_image_land_on_the_dome():
    sim = ds.FEMSolver(dt=1e-6, gravity=(0, 0, 0))
    pad = sim.add_body(ds.dome_pad(), ds.FEMMaterial(E=3e5, nu=0.45))
    plate = sim.add_driver(pad, pad.nodes_where(lambda X: X[:, 2] < 1e-9))
    sensor = TactileSensor(sim, pad, plate, markers="image")
    assert sensor.marker_count == 137 and sensor.markers_dropped == 0
    # cast through the camera: each marker re-projects onto its detected pixel
    from diffsim.tactile.markers import detect_markers
    from diffsim.tactile.sensor import default_marker_image
    px = detect_markers(default_marker_image())
    assert np.allclose(sensor.ref_px, px, atol=1e-6)
    pts = sensor._marker_points(sensor.X)
    assert np.all(pts[:, 2] > 0.002 - 1e-9)          # on the cap side, above the base layer


def test_readings_are_invariant_to_a_rigid_motion_of_the_whole_scene():
    a_sim, a = _press()
    Rw, pw = _rot((1.0, -2.0, 0.5), 0.9), np.array([0.3, -0.2, 0.1])
    b_sim, b = _press(Rw, pw)
    a_sim.step(1500)
    b_sim.step(1500)
    ra = a.read(a_sim.positions(), a_sim.contact_forces())
    rb = b.read(b_sim.positions(), b_sim.contact_forces())
    assert ra["normal_force"] > 0.02
    assert rb["normal_force"] == pytest.approx(ra["normal_force"], rel=1e-6)
    assert np.allclose(rb["shear_force"], ra["shear_force"], atol=1e-6 * ra["normal_force"])
    assert np.allclose(rb["displacement_px"], ra["displacement_px"], atol=1e-6)
    assert np.allclose(rb["depth"], ra["depth"], atol=1e-10)
    assert np.allclose(rb["force_field"], ra["force_field"], atol=1e-8)


def test_sensor_readings_are_differentiable_through_the_press():
    sim, sensor = _press(steps_per_chunk=100)

    def loss(E):
        out = ds.rollout(sim, 1000, record_every=100, params={"E": E})
        o = out.outputs
        r = sensor.read(out.final.x, o["force"][-1], o["driver_translation"][-1, 0], o["driver_rotation"][-1, 0])
        return (r["displacement_px"] ** 2).sum() + 10 * r["normal_force"]
    E = torch.tensor(1e5, dtype=torch.float64, requires_grad=True)
    L = loss(E)
    L.backward()
    fd = central_difference(lambda eps: loss(torch.tensor(1e5 + eps, dtype=torch.float64)), 1e5 * 1e-6)
    assert float(L.detach()) > 0
    assert E.grad.item() == pytest.approx(fd, rel=1e-4)


@pytest.mark.slow
def test_slide_scene_runs_from_the_cli_with_marker_flow_frames_and_force_traces(tmp_path):
    import json
    import subprocess
    import sys
    out = tmp_path / "slide"
    r = subprocess.run([sys.executable, "-m", "diffsim.cli", "run", "tactile_slide", "--out", str(out),
                        "--steps", "1200", "--every", "400", "--set", "speed=0.2", "--set", "slide=1e-3"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    tr = s["traces"]
    assert len(tr["sensor_normal_force"]) == 4 and tr["sensor_normal_force"][-1] > 0.5
    assert tr["max_penetration"][-1] < 2e-5
    assert len(tr["sensor_shear_force"][-1]) == 2
    pngs = sorted((out / "frames").glob("sensor_markers_*.png"))
    assert len(pngs) == 4
    from diffsim.io import read_png
    img = read_png(pngs[-1])
    assert img.shape == (480, 640, 3) and (img[..., 0] > img[..., 1] + 80).any()   # red arrows drawn
    assert s["scene_setup"]["solver"]["instruments"][0]["markers"] == 140


def test_press_scene_builds_presses_and_resumes_identically():
    a = ds.build_scene("tactile_press", {"cell": 0.008})
    a.build()
    a.step(1000)                                    # first touch after 1250 substeps
    arrays, meta = a.checkpoint()
    a.step(600)
    b = ds.build_scene("tactile_press", {"cell": 0.008})
    b.restore(arrays, meta)
    b.step(600)
    # same to rounding: the order of atomic force additions varies between threads
    assert np.allclose(a.solver.positions(), b.solver.positions(), rtol=0, atol=1e-12)
    d = a.diagnostics()
    assert d["sensor_normal_force"] > 0 and np.isfinite(d["energy"])
    assert a.solver.describe()["instruments"][0]["markers"] == 137


def test_voxel_tet_mesh_fills_a_sphere():
    m = ds.voxel_tet_mesh(ds.Sphere((0, 0, 0), 0.01), 0.001)
    assert m.volume == pytest.approx(4 / 3 * math.pi * 1e-6, rel=0.03)
    assert np.all(m.volumes > 0)
    import trimesh
    surf = trimesh.Trimesh(m.vertices, m.surface())
    assert surf.is_watertight and surf.volume == pytest.approx(m.volume, rel=1e-9)


def _mounted_press(facing):
    """A flat pad mounted with ``mount_sensor`` facing ``facing``, its plate driven along the
    facing into a sphere 0.1 mm ahead of it (1 mm off centre): the facing-down press turned
    by the rotation that takes -z to ``facing``."""
    from diffsim.tactile.sensor import FACING_DOWN, facing_rotation
    Q = facing_rotation(facing) @ FACING_DOWN.T          # world rotation: the down press -> this one
    sim = ds.FEMSolver(dt=4e-6, gravity=(0, 0, 0), tape_substeps=50)
    sim.add_collider(ds.SphereCollider(center=tuple(Q @ [0.001, 0.0, -R_SPHERE - 1e-4]), radius=R_SPHERE))
    pad, plate, sensor = ds.mount_sensor(
        sim, ds.flat_pad(width=0.012, depth=0.012, thickness=0.003, resolution=0.001),
        ds.FEMMaterial(E=1e5, nu=0.45, density=1100, mass_damping=300),
        ds.PenaltyContact(stiffness=1e10, friction=0.8), velocity=tuple(Q @ [0.0, 0.0, -0.05]),
        facing=facing, markers="grid", map_resolution=(32, 32))
    return sim, pad, plate, sensor


def test_mount_sensor_facing_sideways_reads_like_facing_down():
    from diffsim.tactile.sensor import FACING_DOWN
    down = _mounted_press((0.0, 0.0, -1.0))
    side = _mounted_press((1.0, 0.0, 0.0))
    # the default is today's placement, bit for bit
    sim0 = ds.FEMSolver(dt=4e-6, gravity=(0, 0, 0))
    mesh = ds.flat_pad(width=0.012, depth=0.012, thickness=0.003, resolution=0.001)
    pad0, plate0, sensor0 = ds.mount_sensor(sim0, mesh, ds.FEMMaterial(E=1e5), apex=(0.001, 0.002, 0.003))
    assert np.array_equal(pad0.mesh.vertices, mesh.vertices @ FACING_DOWN.T + [0.001, 0.002, 0.003 + 0.003])
    z = pad0.mesh.vertices[:, 2]
    assert np.array_equal(plate0.nodes, np.nonzero(z > 0.006 - 1e-9)[0]) and np.array_equal(sensor0.frame, FACING_DOWN)
    # facing +x: the pad's contact side, its plate and the sensor frame all turned to +x
    sim, pad, plate, sensor = side
    assert np.allclose(sensor.normal, [1, 0, 0]) and np.allclose(np.linalg.det(sensor.frame), 1)
    x = pad.mesh.vertices[:, 0]
    assert np.isclose(x.max(), 0.0) and np.allclose(x[plate.nodes], -0.003) and plate.nodes.size == down[2].nodes.size
    assert sensor.marker_count == down[3].marker_count
    down[0].step(1500)                              # plate moved 0.3 mm: 0.2 mm into the sphere
    sim.step(1500)
    ra = down[3].read(down[0].positions(), down[0].contact_forces())
    rb = sensor.read(sim.positions(), sim.contact_forces())
    assert ra["normal_force"] > 0.02
    assert rb["normal_force"] == pytest.approx(ra["normal_force"], rel=1e-6)
    assert rb["normal_force"] == pytest.approx(-sim.contact_forces()[:, 0].sum(), rel=1e-9)   # pushes back along -x
    assert np.allclose(rb["shear_force"], ra["shear_force"], atol=1e-6 * ra["normal_force"])
    assert np.allclose(rb["displacement_px"], ra["displacement_px"], atol=1e-6)
    assert np.allclose(rb["depth"], ra["depth"], atol=1e-10)


@pytest.mark.slow
def test_tactile_slide_second_set_up_is_fast(tmp_path):
    """The surface's distance grid (~40 s on 2 cores) is cached on disk: a second process
    builds the scene in seconds."""
    import subprocess
    import sys
    import time
    env = dict(os.environ, DIFFSIM_CACHE=str(tmp_path))
    code = "import diffsim as ds; ds.build_scene('tactile_slide')"
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
        times.append(time.perf_counter() - t0)
    print("tactile_slide set-up (s):", [round(t, 1) for t in times])
    # the cache, not the machine's speed: the second set-up (process start and imports
    # included) takes a fraction of the first. An absolute 5 s bound failed once at 5.3 s
    # (50.1 s first) with the other CI worker running the DEM silo beside it.
    assert times[1] < min(10.0, 0.2 * times[0]), times
