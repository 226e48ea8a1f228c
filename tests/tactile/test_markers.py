"""Tests for diffsim.tactile.markers: PNG decoding, marker detection, mesh binding, flow images."""
import os
import struct
import zlib

import numpy as np
import pytest
import trimesh

from diffsim.geometry.triangles import bind_to_surface, ray_mesh_intersect
from diffsim.io import read_png
from diffsim.tactile.drawing import marker_flow_image
from diffsim.tactile.markers import detect_markers, grid_markers, marker_rows
from diffsim.render import encode_png
from _helpers import ROOT

REFERENCE = os.path.join(str(ROOT), "scenes", "data", "difftactile",
                         "marker_reference_640x480.png")


# --------------------------------------------------------------------------- PNG


def _chunk(tag, body):
    return struct.pack(">I", len(body)) + tag + body + struct.pack(
        ">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


def encode_filtered(rows, width, height, ctype, depth, filters, plte=None, interlace=0):
    """A tiny PNG encoder: ``rows (H, stride)`` raw bytes, filter ``filters[r]`` per row."""
    rows = np.asarray(rows, dtype=np.int64)
    samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    bpp = max(1, samples * depth // 8)
    out = bytearray()
    for r, ft in enumerate(filters):
        out.append(ft)
        for i in range(rows.shape[1]):
            x = rows[r, i]
            a = rows[r, i - bpp] if i >= bpp else 0
            b = rows[r - 1, i] if r else 0
            c = rows[r - 1, i - bpp] if (r and i >= bpp) else 0
            if ft == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            else:
                pred = (0, a, b, (a + b) // 2)[ft]
            out.append((x - pred) % 256)
    head = struct.pack(">IIBBBBB", width, height, depth, ctype, 0, 0, interlace)
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", head)
    if plte is not None:
        png += _chunk(b"PLTE", np.asarray(plte, dtype=np.uint8).tobytes())
    return png + _chunk(b"IDAT", zlib.compress(bytes(out))) + _chunk(b"IEND", b"")


def test_png_round_trip_through_encode_png(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (17, 9), dtype=np.uint8)
    rgba = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    np.testing.assert_array_equal(read_png(encode_png(rgb)), rgb)
    np.testing.assert_array_equal(read_png(encode_png(gray)), gray[:, :, None])
    np.testing.assert_array_equal(read_png(encode_png(rgba)), rgba)
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(rgb))
    out = read_png(path)
    assert out.dtype == np.uint8 and out.shape == (23, 31, 3)
    np.testing.assert_array_equal(read_png(str(path)), rgb)


@pytest.mark.parametrize("ftype", [0, 1, 2, 3, 4, "mixed"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_every_filter_type(ftype, channels):
    rng = np.random.default_rng(channels)
    h, w = 6, 7
    img = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    img[2] = 255  # saturated rows exercise the modulo-256 arithmetic
    # small values: many ties between the Paeth predictor's candidates
    img[3:] = rng.integers(0, 7, (h - 3, w, channels), dtype=np.uint8)
    filters = [0, 1, 2, 3, 4, 4] if ftype == "mixed" else [ftype] * h
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    png = encode_filtered(img.reshape(h, -1), w, h, ctype, 8, filters)
    np.testing.assert_array_equal(read_png(png), img)


def test_png_16bit_palette_and_low_bit_gray():
    rng = np.random.default_rng(3)
    # 16-bit RGB: reduced to the high byte
    img16 = rng.integers(0, 65536, (4, 5, 3)).astype(">u2")
    png = encode_filtered(img16.view(np.uint8).reshape(4, -1), 5, 4, 2, 16, [4, 3, 1, 2])
    np.testing.assert_array_equal(read_png(png), (img16 >> 8).astype(np.uint8))
    # 4-bit palette, odd width (padding nibble at the end of each row)
    pal = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    idx = rng.integers(0, 16, (3, 5))
    packed = np.zeros((3, 3), dtype=np.uint8)
    for j in range(5):
        packed[:, j // 2] |= (idx[:, j] << (4 * (1 - j % 2))).astype(np.uint8)
    png = encode_filtered(packed, 5, 3, 3, 4, [0, 4, 3], plte=pal)
    np.testing.assert_array_equal(read_png(png), pal[idx])
    # 1-bit gray: 0 -> 0, 1 -> 255
    bits = rng.integers(0, 2, (2, 10))
    png = encode_filtered(np.packbits(bits, axis=1), 10, 2, 0, 1, [1, 2])
    np.testing.assert_array_equal(read_png(png)[:, :, 0], 255 * bits)


def test_png_errors(tmp_path):
    good = encode_png(np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="not a PNG"):
        read_png(b"GIF89a" + good[6:])
    bad_crc = bytearray(good)
    bad_crc[-20] ^= 0xFF  # inside the IDAT data
    with pytest.raises(ValueError, match="corrupted"):
        read_png(bytes(bad_crc))
    with pytest.raises(ValueError, match="<bytes>"):
        read_png(good[:30])
    gif = tmp_path / "marker.gif"
    from PIL import Image
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(gif)
    with pytest.raises(ValueError, match="not a PNG file \\(GIF\\)"):
        read_png(gif)
    with pytest.raises(FileNotFoundError):
        read_png(tmp_path / "missing.png")


# --------------------------------------------------------------------------- detection


def synthetic_markers(centres, shape=(150, 200), sigma=1.6, depth=140.0):
    """Gaussian dark dots on a vignetted background (brighter in the middle)."""
    h, w = shape
    vv, uu = np.mgrid[0:h, 0:w].astype(float)
    r2 = ((uu - w / 2) / w) ** 2 + ((vv - h / 2) / h) ** 2
    img = 230.0 - 120.0 * r2
    for u, v in centres:
        img -= depth * np.exp(-((uu - u) ** 2 + (vv - v) ** 2) / (2 * sigma ** 2))
    return img


def test_detect_markers_synthetic_grid_subpixel():
    rng = np.random.default_rng(7)
    rows, cols = 5, 7
    truth = grid_markers(rows, cols, (25.0, 20.0), (175.0, 130.0))
    truth = truth + rng.uniform(-0.5, 0.5, truth.shape)  # arbitrary sub-pixel positions
    img = synthetic_markers(truth)
    for image in (img, np.clip(img, 0, 255).round().astype(np.uint8)):
        found = detect_markers(image)
        assert found.shape == (rows * cols, 2)
        # the grid is row-major, so sorted detections line up with the truth
        np.testing.assert_allclose(found, truth, atol=0.1)
    # RGB and a PNG path give the same answer
    rgb = np.repeat(np.clip(img, 0, 255).round().astype(np.uint8)[:, :, None], 3, axis=2)
    np.testing.assert_allclose(detect_markers(encode_png(rgb)), truth, atol=0.1)


def test_detect_markers_filters_specks_and_dark_border():
    truth = grid_markers(3, 4, (60.0, 50.0), (140.0, 100.0))
    img = synthetic_markers(truth)
    img[:, :12] = 10.0  # a dark border band (large region)
    img[5, 100] = img[140, 30] = 0.0  # single-pixel specks
    img[10:12, 150:152] = 0.0  # a small isolated blot far from the grid
    found = detect_markers(img)
    np.testing.assert_allclose(found, truth, atol=0.1)
    assert detect_markers(np.full((40, 40), 200.0)).shape == (0, 2)


def test_marker_rows_tilted_grid():
    pts = grid_markers(4, 6, (0.0, 0.0), (50.0, 30.0))
    ang = np.radians(12.0)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    tilted = pts @ rot.T
    perm = np.random.default_rng(0).permutation(len(pts))
    rows = marker_rows(tilted[perm])
    assert [len(r) for r in rows] == [6] * 4
    np.testing.assert_array_equal(np.concatenate([perm[r] for r in rows]), np.arange(24))


def test_detect_markers_reference_image():
    found = detect_markers(REFERENCE)
    rows = marker_rows(found)
    # 14 x 10 printed grid; three markers are smeared beyond recognition in this image
    assert len(found) == 137
    assert [len(r) for r in rows] == [14, 14, 14, 14, 14, 13, 13, 13, 14, 14]
    np.testing.assert_array_equal(np.concatenate(rows), np.arange(len(found)))  # sorted
    assert ((found[:, 0] > 200) & (found[:, 0] < 450)).all()
    assert ((found[:, 1] > 130) & (found[:, 1] < 310)).all()
    pitch_u = np.median(np.concatenate([np.diff(found[r, 0]) for r in rows]))
    assert 15.0 < pitch_u < 19.0


def test_detect_markers_bad_input():
    with pytest.raises(ValueError, match="image must be"):
        detect_markers(np.zeros((10, 10, 5)))
    with pytest.raises(ValueError, match="min_area"):
        detect_markers(np.zeros((10, 10)), min_area=50, max_area=10)
    with pytest.raises(ValueError, match="NaN"):
        detect_markers(np.full((10, 10), np.nan))


# --------------------------------------------------------------------------- grids, meshes


def test_grid_markers():
    g = grid_markers(2, 3, (0.0, -1.0), (0.02, 1.0))
    np.testing.assert_allclose(g, [[0, -1], [0.01, -1], [0.02, -1],
                                   [0, 1], [0.01, 1], [0.02, 1]])
    np.testing.assert_allclose(grid_markers(1, 1, (0, 0), (2, 4)), [[1, 2]])
    with pytest.raises(ValueError, match="rows"):
        grid_markers(0, 3, (0, 0), (1, 1))
    with pytest.raises(ValueError, match="lo < hi"):
        grid_markers(2, 2, (0, 1), (1, 1))


def unit_box():
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    return np.asarray(box.vertices), np.asarray(box.faces)


def test_bind_to_surface_box_known_answers():
    v, f = unit_box()
    pts = np.array([[0.2, 0.1, 2.0],      # above the top face
                    [1.0, 1.0, 1.0],      # outside a corner
                    [0.1, 0.0, 0.3],      # inside, nearest to the top face
                    [0.8, 0.0, -0.8]])    # outside an edge
    face, bary, dist = bind_to_surface(pts, v, f)
    closest = np.einsum("ki,kij->kj", bary, v[f[face]])
    np.testing.assert_allclose(dist, [1.5, np.sqrt(0.75), 0.2, np.sqrt(0.18)], atol=1e-12)
    np.testing.assert_allclose(closest, [[0.2, 0.1, 0.5], [0.5, 0.5, 0.5], [0.1, 0.0, 0.5],
                                         [0.5, 0.0, -0.5]], atol=1e-12)
    np.testing.assert_allclose(bary.sum(axis=1), 1.0)
    assert (bary >= -1e-12).all()
    np.testing.assert_allclose(v[f[face[:1]]][0, :, 2], 0.5)  # a top-face triangle


def test_bind_to_surface_sphere_is_truly_closest():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    rng = np.random.default_rng(2)
    pts = rng.normal(size=(60, 3))
    pts *= rng.uniform(0.3, 2.0, (60, 1)) / np.linalg.norm(pts, axis=1, keepdims=True)
    face, bary, dist = bind_to_surface(pts, v, f, chunk_pairs=50)  # many small chunks
    closest = np.einsum("ki,kij->kj", bary, v[f[face]])
    np.testing.assert_allclose(np.linalg.norm(closest - pts, axis=1), dist, atol=1e-12)
    radial = np.abs(np.linalg.norm(pts, axis=1) - 1.0)
    assert (np.abs(dist - radial) < 0.02).all()  # the icosphere is within 1.2 % of the sphere
    # no surface sample is closer than the returned point
    samples = trimesh.sample.sample_surface(sphere, 20000, seed=0)[0]
    d_samples = np.linalg.norm(samples[None] - pts[:, None], axis=2).min(axis=1)
    assert (dist <= d_samples + 1e-12).all()
    assert (d_samples - dist).max() < 0.05


def test_ray_mesh_intersect_box():
    v, f = unit_box()
    origins = np.array([[0.1, 0.2, -5.0], [3.0, 3.0, -5.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    dirs = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [2.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    face, bary, t = ray_mesh_intersect(origins, dirs, v, f)
    np.testing.assert_allclose(t, [4.5, np.inf, 0.25, 0.5])
    assert face[1] == -1 and np.isnan(bary[1]).all()
    hits = np.einsum("ki,kij->kj", bary[[0, 2, 3]], v[f[face[[0, 2, 3]]]])
    np.testing.assert_allclose(hits, [[0.1, 0.2, -0.5], [0.5, 0.0, 0.0], [0.0, -0.5, 0.0]],
                               atol=1e-12)
    # t_min skips the near face: the ray exits through the top
    _, _, t2 = ray_mesh_intersect(origins[:1], dirs[:1], v, f, t_min=4.6)
    np.testing.assert_allclose(t2, [5.5])


def test_ray_mesh_intersect_sphere_from_inside():
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    dirs = np.random.default_rng(4).normal(size=(100, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    origins = np.zeros_like(dirs)
    face, bary, t = ray_mesh_intersect(origins, dirs, v, f, chunk_pairs=500)
    assert (face >= 0).all()
    assert ((t > 0.95) & (t <= 1.0 + 1e-12)).all()
    hits = np.einsum("ki,kij->kj", bary, v[f[face]])
    np.testing.assert_allclose(hits, dirs * t[:, None], atol=1e-12)


def test_mesh_bad_input():
    v, f = unit_box()
    with pytest.raises(ValueError, match="faces index"):
        bind_to_surface(np.zeros((1, 3)), v, f + 100)
    with pytest.raises(ValueError, match="points"):
        bind_to_surface(np.zeros((1, 2)), v, f)
    with pytest.raises(ValueError, match="non-zero"):
        ray_mesh_intersect(np.zeros((1, 3)), np.zeros((1, 3)), v, f)
    with pytest.raises(ValueError, match="same shape"):
        ray_mesh_intersect(np.zeros((2, 3)), np.ones((1, 3)), v, f)


# --------------------------------------------------------------------------- flow image


def test_marker_flow_image_draws_segments():
    ref = np.array([[20.0, 30.0], [5.0, 5.0], [np.nan, 3.0], [500.0, 10.0]])
    cur = np.array([[30.0, 30.0], [5.0, 5.0], [4.0, 4.0], [501.0, 10.0]])
    img = marker_flow_image(ref, cur, 80, 60, scale=3.0, color=(255, 0, 0), dot_color=(0, 0, 0))
    assert img.shape == (60, 80, 3) and img.dtype == np.uint8
    # the arrow runs from (20, 30) to (50, 30): every pixel past the dot along it is red
    np.testing.assert_array_equal(img[30, 23:51], [[255, 0, 0]] * 28)
    assert (img[30, 52:] == 240).all() and (img[29, 30:40] == 240).all()
    assert (img[30, 18:20] == 0).all() and (img[5, 5] == 0).all()  # reference dots
    # barbs of the arrow head go back and up/down from the tip
    assert (img[28, 46:49] == [255, 0, 0]).all(axis=1).any()
    # gray background of the right size is accepted and not modified in place
    bg = np.full((60, 80), 100, dtype=np.uint8)
    img2 = marker_flow_image(ref, cur, 80, 60, background=bg)
    assert (bg == 100).all() and (img2[0, 79] == 100).all()


def test_marker_flow_image_bad_input():
    with pytest.raises(ValueError, match="same|\\(M, 2\\)"):
        marker_flow_image(np.zeros((3, 2)), np.zeros((2, 2)), 10, 10)
    with pytest.raises(ValueError, match="background"):
        marker_flow_image(np.zeros((1, 2)), np.zeros((1, 2)), 10, 10,
                          background=np.zeros((9, 10, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="width"):
        marker_flow_image(np.zeros((1, 2)), np.zeros((1, 2)), 0, 10)
