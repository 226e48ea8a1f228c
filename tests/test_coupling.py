"""FEM pad pressing MPM material through the grid (forward coupling)."""
import numpy as np
import pytest

import diffsim as ds
from diffsim.markers import ray_mesh_intersect


def _press(friction=0.5):
    dt = 4e-6
    mpm = ds.MPMSolver(domain_min=(-0.015, -0.015, 0.0), domain_max=(0.015, 0.015, 0.03), grid=30, dt=dt,
                       gravity=(0, 0, 0))
    mpm.add_body(ds.Box((0.0, 0.0, 0.008), (0.012, 0.012, 0.01)), ds.FixedCorotated(E=3e4, nu=0.3, density=1000),
                 name="jelly")
    top = float(mpm.positions()[:, 2].max())
    fem = ds.FEMSolver(dt=dt, gravity=(0, 0, 0), tape_substeps=100)
    pad, plate, sensor = ds.mount_sensor(fem, ds.flat_pad(0.008, 0.008, 0.002, 0.001),
                                         ds.FEMMaterial(E=2e5, nu=0.45, density=1100, mass_damping=300),
                                         apex=(0, 0, top + 1e-3), velocity=(0, 0, -0.1), markers="grid",
                                         marker_grid=(5, 5))
    return mpm, fem, sensor, ds.FEMMPMCoupling(mpm, fem, friction=friction)


@pytest.mark.slow
def test_pad_pushes_mpm_material_without_passing_through_it():
    mpm, fem, sensor, both = _press()
    both.step(6000)                                 # 2.4 mm of travel: ~1.5 mm into the jelly's rest top
    d = both.diagnostics()
    assert d["sensor_normal_force"] > 0.05
    # (the pad faces down: pressing pushes it up; its side faces carry a little of the force)
    assert d["sensor_normal_force"] == pytest.approx(fem.contact_forces()[:, 2].sum(), rel=0.02)
    # no particle under the pad lies above the pad's (deformed) bottom surface
    x, xf = mpm.positions(), fem.positions()
    pad = fem.body("sensor")
    low = pad.surface[xf[pad.surface].mean(1)[:, 2] < xf[pad.start:pad.stop, 2].min() + 5e-4]
    under = np.abs(x[:, 0]) < 0.0035
    under &= np.abs(x[:, 1]) < 0.0035
    face, _, h = ray_mesh_intersect(np.c_[x[under, :2], np.zeros(under.sum())],
                                    np.tile([0.0, 0.0, 1.0], (under.sum(), 1)), xf, low)
    assert np.all(face >= 0)
    assert np.max(x[under, 2] - h) < 0.5 * mpm.dx   # within the grid's resolution of the contact
    # the jelly is compressed against the floor, not flung
    assert d["mpm"]["kinetic"] < 1e-3


def test_coupled_gradients_are_refused():
    *_, both = _press()
    with pytest.raises(NotImplementedError, match="coupling"):
        both.rollout(10)


def test_coupled_scene_checkpoint_restore():
    mpm, fem, sensor, a = _press()
    a.step(500)
    arrays, meta = a.checkpoint()
    a.step(200)
    mpm2, fem2, _, b = _press()
    b.restore(arrays, meta)
    b.step(200)
    assert np.allclose(a.mpm.positions(), b.mpm.positions(), atol=1e-12)
    assert np.allclose(a.fem.positions(), b.fem.positions(), atol=1e-12)


def test_gripper_squeeze_scene(tmp_path):
    """Two tactile fingers (one FEMSolver, facing +x and -x) squeeze a von Mises block,
    hold and open again: symmetric forces, no particle through a pad, a permanent waist."""
    from diffsim.scene import load_script
    grip = load_script("gripper_squeeze")           # the scene's helpers
    scene = ds.build_scene("gripper_squeeze", {"dx": 1.5e-3, "depth": 2e-3, "hold": 1e-3})
    both = scene.build().solver
    w0 = grip.object_width(both)
    s = ds.run_scene(scene, tmp_path / "grip", progress=False, video=False)
    assert s["status"] == "completed" and s["steps"] == scene.steps
    tr = s["traces"]
    left, right = np.array(tr["left_normal_force"]), np.array(tr["right_normal_force"])
    assert left.max() > 0.1 and right.max() > 0.1
    touching = left > 0.2 * left.max()
    assert touching.sum() >= 5
    assert np.all(np.abs(np.log(left[touching] / right[touching])) < np.log(1.5))   # symmetric squeeze
    # the fingers pushed the block and let go of it; no particle got far into a pad (3 mm thick)
    assert max(left[-1], right[-1]) < 0.01 * left.max()
    assert max(tr["max_penetration"]) < 1.5e-3
    frames = len(tr["time"])                        # marker-flow images of both fingers per frame
    assert all(sum(f.startswith(f"{name}_markers_") for f in s["frames"]) == frames for name in ("left", "right"))
    # the block kept a narrower waist: plastic, the elastic strain left in F is small
    w = grip.object_width(both)
    assert w < 0.9 * w0
    F = both.mpm.get_state()["F"]
    elastic_xx = np.abs(np.mean(np.log(F[:, 0, 0])))
    assert elastic_xx < 0.2 * abs(np.log(w / w0))
    assert np.isfinite(both.diagnostics()["energy"])
