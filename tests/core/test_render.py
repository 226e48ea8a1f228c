"""Tests for diffsim.render (software renderer, PNG encoder) and diffsim.progress."""
import io
import sys
import time

import numpy as np
import pytest

from diffsim.progress import Progress
from diffsim.render import hstack_images, render_points, write_animation, write_png

W, H = 160, 120


def decode_png(data: bytes) -> np.ndarray:
    """An independent decoder (Pillow) for what write_png produced."""
    import io

    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return np.asarray(im)


def sphere_points(n=5000, r=0.1, center=(0.0, 0.0, 0.1), seed=0):
    v = np.random.default_rng(seed).normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * r + np.asarray(center)


def box_mesh(lo, hi):
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    verts = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                      for z in (lo[2], hi[2])])
    faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return verts, faces


def foreground(img, bg=255):
    return (img != bg).any(axis=2)


def view_back(elev=25.0, azim=-60.0):
    e, a = np.radians(elev), np.radians(azim)
    return np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])


# --------------------------------------------------------------------------- PNG


@pytest.mark.parametrize("shape", [(37, 53, 3), (20, 31), (9, 8, 4)])
def test_png_roundtrip(tmp_path, shape):
    img = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / "sub" / "img.png"
    write_png(path, img)
    np.testing.assert_array_equal(decode_png(path.read_bytes()), img)
    assert [p.name for p in path.parent.iterdir()] == ["img.png"]  # no temp files left


def test_png_rejects_non_uint8(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "x.png", np.zeros((4, 4, 3), dtype=np.float32))


# --------------------------------------------------------------------------- points


def test_sphere_cloud_coverage_and_png(tmp_path):
    img = render_points([(sphere_points(), (200, 60, 40))], width=W, height=H)
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    frac = foreground(img).mean()
    assert 0.05 < frac < 0.6, frac
    # The sphere fills the frame: most of its pixels are red-dominated.
    red = img[foreground(img)]
    assert (red[:, 0] > red[:, 2]).mean() > 0.8
    write_png(tmp_path / "sphere.png", img)
    np.testing.assert_array_equal(decode_png((tmp_path / "sphere.png").read_bytes()), img)


@pytest.mark.parametrize("elev,azim", [(25.0, -60.0), (0.0, 0.0), (60.0, 135.0), (90.0, 10.0)])
def test_center_of_bounds_maps_to_image_center(elev, azim):
    lo, hi = np.array([-1.0, 0.0, 0.0]), np.array([3.0, 1.0, 2.0])
    c = 0.5 * (lo + hi)
    img = render_points([(c[None], (0, 0, 0))], width=W, height=H, bounds=(lo, hi),
                        elev=elev, azim=azim, point_radius_px=2, ground_outline=False)
    ys, xs = np.nonzero(foreground(img))
    assert len(xs) > 0
    assert abs(xs.mean() + 0.5 - W / 2) <= 1.5 and abs(ys.mean() + 0.5 - H / 2) <= 1.5


def test_z_up_and_fit_in_frame():
    lo, hi = np.zeros(3), np.ones(3)
    top = render_points([(np.array([[0.5, 0.5, 1.0]]), (0, 0, 0))], width=W, height=H,
                        bounds=(lo, hi), point_radius_px=1, ground_outline=False)
    bottom = render_points([(np.array([[0.5, 0.5, 0.0]]), (0, 0, 0))], width=W, height=H,
                           bounds=(lo, hi), point_radius_px=1, ground_outline=False)
    y_top = np.nonzero(foreground(top))[0].mean()
    y_bottom = np.nonzero(foreground(bottom))[0].mean()
    assert y_top < y_bottom  # higher z is higher in the image (smaller row)
    # All 8 corners of the bounds are inside the image.
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float)
    img = render_points([(corners, (0, 0, 0))], width=W, height=H, bounds=(lo, hi),
                        point_radius_px=1, ground_outline=False)
    assert foreground(img).sum() >= 8 * 5


def test_nearer_points_are_brighter_and_occlude():
    lo, hi = -np.ones(3), np.ones(3)
    back = view_back()
    kw = dict(width=W, height=H, bounds=(lo, hi), point_radius_px=2, background=(0, 0, 0),
              ground_outline=False)
    near = render_points([(0.8 * back[None], (200, 200, 200))], **kw)
    far = render_points([(-0.8 * back[None], (200, 200, 200))], **kw)
    assert near.max() > far.max() + 40
    # Same pixel, near red in front of far blue: red wins regardless of drawing order.
    for order in (0, 1):
        clouds = [(0.5 * back[None], (255, 0, 0)), (-0.5 * back[None], (0, 0, 255))]
        img = render_points(clouds[::1 if order else -1], **kw)
        px = img[H // 2, W // 2]
        assert px[0] > 100 and px[2] == 0, px


def test_per_point_colors_and_ground_outline():
    pts = np.array([[0.0, 0, 0], [1.0, 1, 1]])
    cols = np.array([[255, 0, 0], [0, 255, 0]])
    img = render_points([(pts, cols)], width=W, height=H, point_radius_px=2, edge_shading=0)
    fg = img[foreground(img)]
    assert ((fg[:, 0] > 100) & (fg[:, 1] < 50)).any()
    assert ((fg[:, 1] > 100) & (fg[:, 0] < 50)).any()
    # Gray ground outline pixels (equal channels, mid gray).
    gray = (fg[:, 0] == fg[:, 1]) & (fg[:, 1] == fg[:, 2]) & (fg[:, 0] > 100) & (fg[:, 0] < 200)
    assert gray.sum() > 50
    no_ground = render_points([(pts, cols)], width=W, height=H, point_radius_px=2,
                              ground_outline=False)
    assert foreground(no_ground).sum() < foreground(img).sum()


def test_points_render_speed_200k():
    pts = sphere_points(200_000)
    render_points([(pts, (200, 60, 40))])  # warm-up
    t = time.perf_counter()
    img = render_points([(pts, (200, 60, 40))])
    dt = time.perf_counter() - t
    assert img.shape == (480, 640, 3)
    assert dt < 3.0, dt  # ~0.3 s on a 2-core CI machine; generous for loaded machines


# --------------------------------------------------------------------------- meshes


def test_mesh_renders_and_occludes_points():
    verts, faces = box_mesh((-0.5, -0.5, 0.0), (0.5, 0.5, 1.0))
    bounds = ((-1, -1, 0), (1, 1, 1))
    img = render_points([], width=W, height=H, bounds=bounds, ground_outline=False,
                        meshes=[(verts, faces, (60, 120, 220))])
    fg = foreground(img)
    assert 0.1 < fg.mean() < 0.7
    px = img[fg]
    assert (px[:, 2] > px[:, 0]).all()  # blue-ish everywhere
    # Flat shading: the visible faces get (at least 2) different shades.
    assert len(np.unique(px, axis=0)) >= 2
    # A point behind the box (far side along the view) is hidden; in front it is visible.
    back = view_back()
    kw = dict(width=W, height=H, bounds=bounds, ground_outline=False, point_radius_px=2,
              meshes=[(verts, faces, (60, 120, 220))])
    c = np.array([0.0, 0.0, 0.5])
    hidden = render_points([((c - 2.0 * back)[None], (255, 0, 0))], **kw)
    shown = render_points([((c + 2.0 * back)[None], (255, 0, 0))], **kw)
    assert not ((hidden[:, :, 0] > 200) & (hidden[:, :, 1] < 50)).any()
    assert ((shown[:, :, 0] > 150) & (shown[:, :, 1] < 50)).any()


def test_mesh_render_speed_10k_triangles():
    n = 71
    x, y = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    z = 0.1 * np.sin(6 * x) * np.cos(5 * y)
    verts = np.c_[x.ravel(), y.ravel(), z.ravel()]
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    faces = np.r_[np.c_[a, b, d], np.c_[a, d, c]]
    assert len(faces) == 9800
    t = time.perf_counter()
    img = render_points([], meshes=[(verts, faces, (180, 180, 120))])
    dt = time.perf_counter() - t
    assert foreground(img).mean() > 0.15
    assert dt < 2.0, dt


def test_hstack_images():
    a = np.zeros((10, 5, 3), np.uint8)
    b = np.full((7, 3), 9, np.uint8)
    out = hstack_images([a, b], pad=2)
    assert out.shape == (10, 10, 3)
    assert (out[:, 5:7] == 255).all() and (out[:7, 7:] == 9).all() and (out[7:, 7:] == 255).all()


def test_write_animation_without_imageio(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio", None)  # import imageio -> ImportError
    frames = [np.zeros((8, 8, 3), np.uint8)] * 3
    assert write_animation(tmp_path / "a.gif", frames) is False
    assert list(tmp_path.iterdir()) == []


def test_write_animation_with_imageio(tmp_path):
    pytest.importorskip("imageio")
    pytest.importorskip("PIL")
    frames = [np.full((8, 8, 3), i * 40, np.uint8) for i in range(4)]
    assert write_animation(tmp_path / "a.gif", frames, fps=10) is True
    assert (tmp_path / "a.gif").read_bytes()[:3] == b"GIF"


# --------------------------------------------------------------------------- progress


def test_progress_log_mode_shows_counts_values_and_stays_short():
    s = io.StringIO()
    with Progress(total=10, desc="elastic_drop", unit="step", stream=s) as bar:
        for _ in range(10):
            bar.update(1, loss=np.float64(0.125), frame=np.int64(3))
    out = s.getvalue()
    for piece in ("elastic_drop", "10/10", "100%", "step/s", "loss=0.125", "frame=3"):
        assert piece in out, (piece, out)
    assert out.count("\r") <= 3        # a fast loop in a log: the first and the last line
    assert bar.n == 10 and bar.elapsed >= 0
    bar.close()  # idempotent
    assert s.getvalue() == out


def test_progress_disabled_prints_nothing():
    s = io.StringIO()
    with Progress(total=5, stream=s, disable=True) as bar:
        for _ in range(5):
            bar.update(1, x=1)
        bar.write("hidden")
    assert s.getvalue() == ""
    assert bar.n == 5


def test_progress_unknown_total_and_messages():
    s = io.StringIO()
    with Progress(desc="gen", unit="frame", stream=s) as bar:
        bar.update(3)
        bar.write("checkpoint written")
    out = s.getvalue()
    assert "3frame" in out.replace(" ", "") and "%" not in out and "checkpoint written\n" in out
