"""Tests for diffsim.tactile.cameras: pinhole and equidistant fisheye projection, rays, gradients."""
import math

import numpy as np
import pytest
import torch

from diffsim.tactile.cameras import Camera, FisheyeCamera, PinholeCamera, look_at


def tilted_pose():
    """A camera 5 cm above a pad, looking down and slightly sideways."""
    eye = np.array([0.01, -0.02, 0.05])
    return eye, look_at(eye, [0.0, 0.0, 0.0], up=[0.0, 1.0, 0.0])


def cameras():
    eye, rot = tilted_pose()
    return [PinholeCamera(320, 240, 300.0, 310.0, cx=150.0, cy=125.0, position=eye,
                          rotation=rot),
            FisheyeCamera(320, 240, f=120.0, cx=162.0, cy=118.0, position=eye, rotation=rot)]


def test_pinhole_hand_computed_pixels():
    cam = PinholeCamera(101, 81, fx=100.0, fy=120.0, cx=50.0, cy=40.0)
    uv = cam.project(np.array([[0.1, -0.2, 2.0], [0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(uv, [[55.0, 28.0], [50.0, 40.0]], atol=1e-12)
    # default principal point: centre of the image with pixel centres at integers
    assert (PinholeCamera(640, 480, 500.0).cx, PinholeCamera(640, 480, 500.0).cy) == (319.5, 239.5)


def test_look_at_pose_and_projection():
    rot = look_at([0, 0, 1], [0, 0, 0], up=[0, 1, 0])
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    np.testing.assert_allclose(rot[:, 2], [0, 0, -1])  # looks down
    np.testing.assert_allclose(rot[:, 1], [0, -1, 0])  # image down = against up
    cam = PinholeCamera(200, 100, 50.0, cx=100.0, cy=50.0, position=[0, 0, 1], rotation=rot)
    # world (0.1, 0.2, 0): camera x = 0.1, y = -0.2, z = 1
    np.testing.assert_allclose(cam.project([0.1, 0.2, 0.0]), [105.0, 40.0], atol=1e-12)


def test_fisheye_radius_is_f_theta():
    f, cx, cy = 150.0, 320.0, 240.0
    cam = FisheyeCamera(640, 480, f=f, cx=cx, cy=cy)
    for deg in (0.0, 30.0, 60.0, 100.0, 170.0):
        th = math.radians(deg)
        p = 3.0 * np.array([math.sin(th), 0.0, math.cos(th)])
        np.testing.assert_allclose(cam.project(p), [cx + f * th, cy], atol=1e-9)
    # off-axis along a diagonal: the radius is f * theta, the image direction is (x, y)'s
    th, phi = math.radians(45.0), math.radians(30.0)
    p = np.array([math.sin(th) * math.cos(phi), math.sin(th) * math.sin(phi), math.cos(th)])
    uv = cam.project(2.0 * p)
    np.testing.assert_allclose(uv - [cx, cy], f * th * np.array([math.cos(phi), math.sin(phi)]),
                               atol=1e-9)


@pytest.mark.parametrize("cam", cameras(), ids=["pinhole", "fisheye"])
def test_rays_project_round_trip(cam):
    rng = np.random.default_rng(1)
    px = rng.uniform([0, 0], [cam.width - 1, cam.height - 1], size=(50, 2))
    d = cam.rays(px)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-12)
    depth = rng.uniform(0.01, 0.2, size=(50, 1))
    np.testing.assert_allclose(cam.project(cam.position + depth * d), px, atol=1e-8)
    # the principal point looks along the camera's z axis
    np.testing.assert_allclose(cam.rays([cam.cx, cam.cy]), cam.rotation[:, 2], atol=1e-12)
    assert cam.visible(cam.position + depth * d).all()


@pytest.mark.parametrize("cam", cameras() + [PinholeCamera(64, 48, 40.0),
                                             FisheyeCamera(64, 48, f=30.0, fy=35.0)],
                         ids=["pinhole", "fisheye", "pinhole-axes", "fisheye-axes"])
def test_project_gradcheck_including_optical_axis(cam):
    # camera-frame points in front of the camera, the first on the optical axis
    # (bit-exactly so after the world transform for the cameras at the origin with R = I)
    pc = np.array([[0.0, 0.0, 0.04], [0.003, 0.002, 0.05], [-0.01, 0.015, 0.03]])
    pts = cam.position + pc @ cam.rotation.T
    x = torch.tensor(pts, dtype=torch.float64, requires_grad=True)
    uv = cam.project(x)
    assert isinstance(uv, torch.Tensor) and uv.dtype == torch.float64 and uv.shape == (3, 2)
    np.testing.assert_allclose(uv.detach().numpy(), cam.project(pts), atol=1e-10)
    assert torch.autograd.gradcheck(cam.project, (x,), eps=1e-7, atol=1e-5, rtol=1e-6)
    uv.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_fisheye_gradient_on_axis_matches_analytic():
    cam = FisheyeCamera(100, 100, fx=80.0, fy=90.0)
    x = torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(cam.project, x)
    # near the axis theta/r -> 1/z: du/dx = fx / z, dv/dy = fy / z, nothing else
    np.testing.assert_allclose(jac.numpy(), [[160.0, 0.0, 0.0], [0.0, 180.0, 0.0]], atol=1e-9)


def test_visible_mask():
    cam = PinholeCamera(100, 80, 100.0)
    pts = np.array([[0, 0, 1.0], [0, 0, -1.0], [10.0, 0, 1.0], [0.49, 0.0, 1.0]])
    np.testing.assert_array_equal(cam.visible(pts), [True, False, False, True])
    fish = FisheyeCamera(1000, 1000, f=100.0, max_angle=math.radians(80))
    th = np.radians([0.0, 70.0, 85.0, 120.0])
    pts = np.stack([np.sin(th), 0 * th, np.cos(th)], axis=1)
    np.testing.assert_array_equal(fish.visible(pts), [True, True, False, False])
    mask = fish.visible(torch.tensor(pts))
    assert mask.dtype == torch.bool and mask.tolist() == [True, True, False, False]


def test_describe_and_fov():
    cam = PinholeCamera(640, 480, 320.0)
    d = cam.describe()
    assert d["model"] == "pinhole" and d["width"] == 640 and d["position_m"] == [0.0, 0.0, 0.0]
    assert d["fov_x_deg"] == pytest.approx(2 * math.degrees(math.atan(1.0)))
    fish = FisheyeCamera(640, 480, f=640 / math.pi).describe()
    assert fish["fov_x_deg"] == pytest.approx(180.0) and fish["max_angle_deg"] == 90.0
    assert isinstance(cam, Camera) and "PinholeCamera(640x480" in repr(cam)


@pytest.mark.parametrize("kwargs, match", [
    (dict(width=0), "width"),
    (dict(height=2.5), "height"),
    (dict(fx=-1.0), "fx"),
    (dict(fy=0.0), "fy"),
    (dict(fx=float("nan")), "fx"),
    (dict(position=[0, 0]), "position"),
    (dict(rotation=np.diag([1.0, 1.0, 2.0])), "orthonormal"),
    (dict(rotation=np.diag([1.0, 1.0, -1.0])), "det"),
])
def test_bad_camera_arguments(kwargs, match):
    args = dict(width=64, height=48, fx=50.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        PinholeCamera(**args)


def test_bad_inputs():
    cam = PinholeCamera(64, 48, 50.0)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        cam.project(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        cam.rays(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="parallel"):
        look_at([0, 0, 1], [0, 0, 0], up=[0, 0, 1])
    with pytest.raises(ValueError, match="differ"):
        look_at([0, 0, 1], [0, 0, 1])
    with pytest.raises(ValueError, match="exactly one"):
        FisheyeCamera(64, 48, fx=10.0, f=10.0)
    with pytest.raises(ValueError, match="max_angle"):
        FisheyeCamera(64, 48, f=10.0, max_angle=4.0)
