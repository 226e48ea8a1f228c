"""Optical tactile image (GelSight-style shading of the FEM sensor surface): shading
against its formula, a press seen where the membrane is indented, gradients of a pixel
loss against central differences, calibration to reference images."""
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion

import diffsim as ds
from _helpers import ROOT, central_difference
from diffsim.tactile.cameras import FisheyeCamera
from diffsim.tactile.optical import OpticalTactile, light_direction, to_uint8
from diffsim.tactile.sensor import TactileSensor
from test_tactile import R_SPHERE


def _pressed_pad(E=1e5, camera_scale=1, dt=4e-6, chunk=100):
    """The 12 x 12 x 3 mm pad of test_tactile pressed into a sphere; ``camera_scale`` > 1
    shrinks the default 640 x 480 camera by that factor (same field of view)."""
    mesh = ds.flat_pad(width=0.012, depth=0.012, thickness=0.003, resolution=0.001)
    sim = ds.FEMSolver(dt=dt, gravity=(0, 0, 0), tape_substeps=chunk)
    pad = sim.add_body(mesh, ds.FEMMaterial(E=E, nu=0.45, density=1100, mass_damping=300),
                       contact=ds.PenaltyContact(stiffness=1e10, friction=0.8))
    plate = sim.add_driver(pad, pad.nodes_where(lambda X: np.abs(X[:, 2]) < 1e-9), velocity=(0.0, 0.0, 0.05))
    sim.add_collider(ds.SphereCollider(center=(0.001, 0.0, 0.003 + R_SPHERE + 1e-4), radius=R_SPHERE))
    sensor = TactileSensor(sim, pad, plate, markers="grid")
    if camera_scale != 1:
        c = sensor.camera
        sensor = TactileSensor(sim, pad, plate, markers="grid", name="small", camera=FisheyeCamera(
            c.width // camera_scale, c.height // camera_scale, f=c.fx / camera_scale,
            position=c.position, rotation=c.rotation))
    return sim, sensor


@torch.no_grad()
def test_shading_follows_lambert_and_blinn_phong_on_a_tilted_membrane():
    sim, sensor = _pressed_pad(camera_scale=4)
    optics = OpticalTactile(sensor, stride=2, hidden=0, marker_darkness=0.0)
    h, w = optics.coarse_shape
    tilt = np.array([math.sin(0.3), 0.0, math.cos(0.3)])          # outward normal, tilted towards t1
    geo = {"normal": torch.tensor(tilt).view(3, 1, 1).expand(3, h, w).clone(),
           "depth": torch.zeros(1, h, w), "mask": torch.ones(1, h, w), "markers_px": torch.zeros(0, 2)}
    img = optics.shade(geo)
    m = -tilt                                                        # seen from behind
    view = np.array([0.0, 0.0, -1.0])
    expected = np.array([0.08, 0.08, 0.08])
    for az, el, rgb in ((0.0, 30.0, (0.75, 0.12, 0.12)), (120.0, 30.0, (0.12, 0.70, 0.12)),
                        (240.0, 30.0, (0.12, 0.12, 0.80))):
        L = light_direction(az, el)
        H = (L + view) / np.linalg.norm(L + view)
        expected += np.array(rgb) * (max(0.0, m @ L) + 0.25 * max(0.0, m @ H) ** 16)
    assert img.shape == (3, 120, 160)
    assert np.allclose(img.detach().numpy(), expected[:, None, None], atol=1e-12)
    # tilted towards +t1, the membrane's inner side turns away from the red light (azimuth 0)
    flat = optics.shade({**geo, "normal": torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, h, w).clone()})
    assert img[0].mean() < flat[0].mean() - 0.1 and img[2].mean() > flat[2].mean()
    # pixels no ray reaches show the background
    assert np.allclose(optics.shade({**geo, "mask": torch.zeros(1, h, w)}).detach().numpy(), 0.02)


@torch.no_grad()
def test_a_press_shows_where_the_membrane_is_indented_and_markers_move_with_it():
    sim, sensor = _pressed_pad()
    optics = OpticalTactile(sensor)
    rest = optics(torch.as_tensor(sim.positions()))
    assert rest.shape == (3, 480, 640) and 0.2 < optics.coverage < 1.0
    plain = OpticalTactile(sensor, marker_darkness=0.0)
    flat = plain(torch.as_tensor(sim.positions()))
    inside = plain.geometry(torch.as_tensor(sim.positions()))["mask"][0].numpy() > 0.999
    inside = binary_erosion(inside, np.ones((3, 3)))                # away from the edge's blend
    coarse = flat[:, 1::4, 1::4].numpy()                            # next to the coarse grid's pixels
    assert inside.sum() > 1000
    assert np.ptp(coarse[:, inside], axis=1).max() < 1e-6           # a flat membrane shades uniformly
    sim.step(2000)                                                  # 0.3 mm into the sphere
    x, T, R = torch.as_tensor(sim.positions()), sim.drivers[0].translation, sim.drivers[0].rotation
    pressed = plain(x, T, R)
    depth = plain.geometry(x, T, R)["depth"][0].numpy()
    change = np.abs(pressed - flat).sum(0).numpy()
    i, j = np.unravel_index(np.argmax(change), change.shape)
    assert change.max() > 0.1
    assert depth[i // 4, j // 4] > 0.3 * depth.max()                # the biggest change sits in the dent
    # markers are drawn at the sensor's marker pixels: darkest there
    px = sensor.read(sim.positions(), None)["markers_px"]
    img = optics(x, T, R)
    u, v = np.rint(px[:, 0]).astype(int), np.rint(px[:, 1]).astype(int)
    assert np.all(img[:, v, u].numpy() < 0.3 * pressed[:, v, u].numpy() + 1e-9)
    rgb = to_uint8(img)
    assert rgb.shape == (480, 640, 3) and rgb.dtype == np.uint8


def test_pixel_loss_gradient_reaches_the_elastomer_modulus():
    """d(pixel loss)/dE through the press (1,000 substeps), the image and the markers,
    against central differences (float64)."""
    sim, sensor = _pressed_pad(camera_scale=2)
    optics = OpticalTactile(sensor, stride=2)
    with torch.no_grad():                                           # a calibrated-looking module
        optics.w2.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(1))
    weights = torch.rand(3, optics.height, optics.width, generator=torch.Generator().manual_seed(2),
                         dtype=torch.float64)

    def loss(E):
        out = ds.rollout(sim, 1000, record_every=100, params={"E": E})
        o = out.outputs
        img = optics(out.final.x, o["driver_translation"][-1, 0], o["driver_rotation"][-1, 0])
        return (weights * img).sum()
    E = torch.tensor(1e5, dtype=torch.float64, requires_grad=True)
    L = loss(E)
    L.backward()
    fd = central_difference(lambda eps: loss(torch.tensor(1e5 + eps, dtype=torch.float64)).detach(), 1e5 * 1e-5)
    assert abs(E.grad.item()) > 0
    assert E.grad.item() == pytest.approx(fd, rel=1e-4)


def test_calibration_to_reference_images_recovers_a_different_sensor_response():
    """Reference images from a stated ground truth the module cannot express without its
    MLP (other lights, a gamma of 0.8): calibrated on three frames, checked on a fourth."""
    sim, sensor = _pressed_pad(camera_scale=4)
    truth = OpticalTactile(sensor, stride=2, hidden=0, marker_darkness=0.0, ambient=(0.1, 0.05, 0.05),
                           lights=((30.0, 40.0, (0.8, 0.2, 0.1)), (150.0, 25.0, (0.1, 0.7, 0.2)),
                                   (270.0, 35.0, (0.2, 0.1, 0.9))))
    model = OpticalTactile(sensor, stride=2, marker_darkness=0.0)
    geos = []
    for _ in range(4):
        sim.step(500)
        x = torch.as_tensor(sim.positions())
        geos.append(model.geometry(x, sim.drivers[0].translation, sim.drivers[0].rotation))
    with torch.no_grad():
        refs = [truth.shade(g).clamp(0, 1) ** 0.8 for g in geos]
        before = ((model.shade(geos[3]) - refs[3]) ** 2).mean().sqrt().item()
    losses = model.calibrate(geos[:3], refs[:3], iterations=300, lr=0.02)
    with torch.no_grad():
        after = ((model.shade(geos[3]) - refs[3]) ** 2).mean().sqrt().item()
    assert losses[-1] < 0.05 * losses[0]
    assert after < 0.2 * before and after < 0.01, (before, after)


def test_bad_optical_settings_are_refused():
    sim, sensor = _pressed_pad(camera_scale=4)
    with pytest.raises(ds.InvalidScene, match="stride"):
        OpticalTactile(sensor, stride=7)
    with pytest.raises(ds.InvalidScene, match="marker_darkness"):
        OpticalTactile(sensor, marker_darkness=2.0)
    optics = OpticalTactile(sensor)
    with pytest.raises(ds.InvalidScene, match="images must be"):
        optics.calibrate([optics.geometry(torch.as_tensor(sim.positions()))], [np.zeros((10, 10, 3), np.uint8)])


@pytest.mark.slow
def test_elastomer_and_friction_are_recovered_from_tactile_images():
    """demos/fit_elastomer_from_images.py: E and friction from nine 640 x 480 images of a
    press-and-slide, starting 3x off (measured: both exact to < 0.01% in 18 evaluations)."""
    import importlib.util
    path = ROOT / "demos" / "fit_elastomer_from_images.py"
    spec = importlib.util.spec_from_file_location("fit_elastomer_from_images", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    final, errors = demo.main(["--iterations", "15"])
    assert errors["E"] < 0.05 and errors["friction"] < 0.05, final
