"""Tests for diffsim.geometry: mesh loading/validation, shapes and sampling, inside tests,
exact distances and SDF grids. Procedural meshes only, except one test on the shared
DiffTactile mesh that is skipped when the data folder is missing."""
import math
import time

import numpy as np
import pytest
import trimesh

from diffsim.errors import InvalidMesh, InvalidScene
from diffsim.geometry import (
    Box,
    Cylinder,
    MeshShape,
    SDFGrid,
    Sphere,
    load_mesh,
    mesh_sdf_grid,
    mesh_signed_distance,
    mesh_to_vtu_cells,
    mesh_unsigned_distance,
    points_inside_mesh,
)
from _helpers import ROOT

J03 = ROOT / "scenes" / "data" / "difftactile" / "J03_2.obj"


def _rng(seed=0):
    return np.random.default_rng(seed)


def _rot(ax, ay, az):
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


# ----------------------------------------------------------------------------------------
# primitive shapes: sampling
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("center", [(0.0, 0.0, 0.0), (0.3, -1.7, 2.05), (1e-3, 0.1234567, 5.5)])
def test_box_sample_count_exact(center):
    box = Box(center, 0.49)
    pts = box.sample(0.01)
    assert pts.shape == (49 ** 3, 3)
    assert pts.dtype == np.float64
    lo, hi = box.bounds
    assert np.all(pts >= lo) and np.all(pts <= hi)
    # cell-centred: half a spacing from the faces
    np.testing.assert_allclose(pts.min(axis=0), lo + 0.005, atol=1e-9)
    np.testing.assert_allclose(pts.max(axis=0), hi - 0.005, atol=1e-9)


def test_box_sample_anisotropic_and_jitter():
    box = Box((0.0, 0.0, 1.0), (0.1, 0.2, 0.05))
    pts = box.sample(0.01)
    assert len(pts) == 10 * 20 * 5
    j1 = box.sample(0.01, jitter=0.8, seed=1)
    j1b = box.sample(0.01, jitter=0.8, seed=1)
    j2 = box.sample(0.01, jitter=0.8, seed=2)
    assert len(j1) == len(pts)  # jitter <= 1 keeps every point in its cell
    np.testing.assert_array_equal(j1, j1b)
    assert not np.allclose(j1, j2)
    assert np.all(np.abs(j1 - pts) <= 0.4 * 0.01 + 1e-12)
    assert np.all(box.contains(j1))


@pytest.mark.parametrize("center", [(0.0, 0.0, 0.0), (0.0123, -0.5, 0.77)])
def test_sphere_sample_count(center):
    s = Sphere(center, 0.1)
    h = 0.005
    pts = s.sample(h)
    expected = s.volume / h ** 3
    assert abs(len(pts) - expected) / expected < 0.02
    assert np.all(np.linalg.norm(pts - np.asarray(center), axis=1) <= 0.1)
    assert math.isclose(s.volume, 4 / 3 * math.pi * 0.1 ** 3)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_cylinder_axis(axis):
    c = np.array([0.1, -0.2, 0.3])
    cyl = Cylinder(c, radius=0.05, height=0.2, axis=axis)
    lo, hi = cyl.bounds
    ext = hi - lo
    assert math.isclose(ext[axis], 0.2)
    assert np.allclose(np.delete(ext, axis), 0.1)
    h = 0.004
    pts = cyl.sample(h)
    d = pts - c
    other = [i for i in range(3) if i != axis]
    assert np.all(np.hypot(d[:, other[0]], d[:, other[1]]) <= 0.05)
    assert np.all(np.abs(d[:, axis]) <= 0.1)
    expected = cyl.volume / h ** 3
    assert abs(len(pts) - expected) / expected < 0.03
    # contains / sdf against an explicit formula on random points
    q = _rng(axis).uniform(lo - 0.02, hi + 0.02, size=(5000, 3))
    dq = q - c
    radial = np.hypot(dq[:, other[0]], dq[:, other[1]])
    inside = (radial <= 0.05) & (np.abs(dq[:, axis]) <= 0.1)
    np.testing.assert_array_equal(cyl.contains(q), inside)
    np.testing.assert_array_equal(cyl.sdf(q) <= 0, inside)


def test_primitive_sdf_exact_values():
    box = Box((1.0, 2.0, 3.0), (0.2, 0.4, 0.6))
    p = np.array([[1.0, 2.0, 3.0], [1.3, 2.0, 3.0], [1.2, 2.3, 3.0], [1.05, 2.0, 3.0]])
    np.testing.assert_allclose(box.sdf(p), [-0.1, 0.2, math.hypot(0.1, 0.1), -0.05], atol=1e-12)
    s = Sphere((0, 0, 1), 0.5)
    np.testing.assert_allclose(s.sdf([[0, 0, 1], [0, 0, 2], [0.3, 0, 1]]), [-0.5, 0.5, -0.2], atol=1e-12)
    cyl = Cylinder((0, 0, 0), 0.1, 0.4, axis=2)
    q = [[0, 0, 0], [0.2, 0, 0], [0, 0, 0.3], [0.2, 0, 0.3], [0.05, 0, 0.19]]
    np.testing.assert_allclose(cyl.sdf(q), [-0.1, 0.1, 0.1, math.hypot(0.1, 0.1), -0.01], atol=1e-12)
    assert math.isclose(cyl.volume, math.pi * 0.01 * 0.4)
    assert math.isclose(box.volume, 0.2 * 0.4 * 0.6)


def test_shapes_are_immutable_and_validated():
    s = Sphere((0, 0, 0), 0.1)
    with pytest.raises(AttributeError):
        s.radius = 0.2
    for bad in (lambda: Sphere((0, 0, 0), -1.0), lambda: Sphere((0, 0, 0), 0.0),
                lambda: Box((0, 0, 0), (0.1, 0.0, 0.1)), lambda: Cylinder((0, 0, 0), 0.1, -0.1),
                lambda: Cylinder((0, 0, 0), 0.1, 0.1, axis=3), lambda: Box((0, 0), 0.1)):
        with pytest.raises(InvalidScene):
            bad()


@pytest.mark.parametrize("spacing", [0.0, -0.01, float("nan")])
def test_sample_bad_spacing(spacing):
    with pytest.raises(InvalidScene, match="spacing"):
        Box((0, 0, 0), 0.1).sample(spacing)
    with pytest.raises(InvalidScene, match="spacing"):
        Sphere((0, 0, 0), 0.1).sample(spacing)


def test_sample_zero_points_and_bad_jitter():
    with pytest.raises(InvalidScene, match="spacing") as exc:
        Box((0, 0, 0), (0.005, 0.1, 0.1)).sample(0.01)
    assert "0.005" in str(exc.value)
    with pytest.raises(InvalidScene, match="jitter"):
        Box((0, 0, 0), 0.1).sample(0.01, jitter=1.5)


# ----------------------------------------------------------------------------------------
# points_inside_mesh
# ----------------------------------------------------------------------------------------
def test_points_inside_icosphere_matches_analytic():
    r = 0.1
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=r)
    p = _rng(1).uniform(-0.12, 0.12, size=(20000, 3))
    got = points_inside_mesh(mesh, p)
    want = np.linalg.norm(p, axis=1) < r
    bad = got != want
    assert np.all(np.abs(np.linalg.norm(p[bad], axis=1) - r) < 1e-3), bad.sum()
    assert bad.sum() < 200
    # exact against the mesh itself: mismatches only within the faceting layer
    assert 0.3 < got.mean() < 0.4


def test_points_inside_box_mesh_including_lattice_points_on_edges():
    mesh = trimesh.creation.box(extents=(0.2, 0.2, 0.2))
    h = np.array([0.1, 0.1, 0.1])
    p = _rng(2).uniform(-0.15, 0.15, size=(20000, 3))
    np.testing.assert_array_equal(points_inside_mesh(mesh, p), np.all(np.abs(p) < h, axis=1))
    # lattice points whose vertical rays pass exactly through the face diagonals and
    # through the shared edges/vertices of the top and bottom faces
    g = np.linspace(-0.15, 0.15, 31)
    X, Y, Z = np.meshgrid(g, g, g + 0.0013, indexing="ij")
    q = np.stack([X.ravel(), Y.ravel(), Z.ravel()], axis=1)
    on_surface = np.any(np.isclose(np.abs(q), 0.1, atol=1e-12), axis=1)
    q = q[~on_surface]
    want = np.all(np.abs(q) < 0.1, axis=1)
    np.testing.assert_array_equal(points_inside_mesh(mesh, q), want)
    # the same through a rotated, translated copy
    R = _rot(0.3, -0.7, 1.1)
    t = np.array([0.5, -0.2, 1.0])
    moved = load_mesh(mesh, rotation=R, translate=t)
    np.testing.assert_array_equal(points_inside_mesh(moved, p @ R.T + t), np.all(np.abs(p) < h, axis=1))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_points_inside_cylinder_mesh(axis):
    tf = np.eye(4)
    if axis != 2:  # trimesh cylinders lie along z; rotate to the requested axis
        tf[:3, :3] = _rot(0.0, math.pi / 2, 0.0) if axis == 0 else _rot(-math.pi / 2, 0.0, 0.0)
    mesh = trimesh.creation.cylinder(radius=0.05, height=0.2, sections=64, transform=tf)
    cyl = Cylinder((0, 0, 0), 0.05, 0.2, axis=axis)
    lo, hi = cyl.bounds
    p = _rng(3 + axis).uniform(lo - 0.02, hi + 0.02, size=(20000, 3))
    got = points_inside_mesh(mesh, p)
    want = cyl.contains(p)
    bad = got != want
    assert np.all(np.abs(cyl.sdf(p[bad])) < 1e-3)
    assert bad.sum() < 100


def test_points_inside_edge_cases():
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.1)
    assert points_inside_mesh(mesh, np.zeros((0, 3))).shape == (0,)
    far = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 0, 1.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(points_inside_mesh(mesh, far), [False, False, False, True])
    # orientation does not matter
    flipped = trimesh.Trimesh(mesh.vertices, mesh.faces[:, ::-1], process=False)
    p = _rng(4).uniform(-0.12, 0.12, size=(2000, 3))
    np.testing.assert_array_equal(points_inside_mesh(mesh, p), points_inside_mesh(flipped, p))


def _winding_numbers(mesh, p):
    """Generalized winding numbers (van Oosterom-Strackee solid angles), brute force."""
    tri = np.asarray(mesh.vertices)[np.asarray(mesh.faces)]
    a, b, c = (tri[None, :, k] - p[:, None] for k in range(3))
    la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
    det = np.einsum("ijk,ijk->ij", a, np.cross(b, c))
    den = (la * lb * lc + np.einsum("ijk,ijk->ij", a, b) * lc
           + np.einsum("ijk,ijk->ij", b, c) * la + np.einsum("ijk,ijk->ij", c, a) * lb)
    return 2.0 * np.arctan2(det, den).sum(axis=1) / (4.0 * math.pi)


def test_points_inside_nonconvex_matches_winding_number_and_trimesh():
    mesh = trimesh.creation.annulus(r_min=0.03, r_max=0.08, height=0.05)  # non-convex
    p = _rng(5).uniform(-0.1, 0.1, size=(400, 3))
    got = points_inside_mesh(mesh, p)
    np.testing.assert_array_equal(got, _winding_numbers(mesh, p) > 0.5)
    try:
        ref = mesh.contains(p)
    except (ImportError, ModuleNotFoundError) as exc:  # trimesh needs rtree/embree for this
        pytest.skip(f"trimesh.contains unavailable ({exc}); checked against winding numbers only")
    np.testing.assert_array_equal(got, ref)


def test_points_inside_speed():
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=0.1)  # 20,480 triangles
    p = _rng(6).uniform(-0.11, 0.11, size=(200_000, 3))
    t0 = time.perf_counter()
    inside = points_inside_mesh(mesh, p)
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0, elapsed
    frac = inside.mean()
    assert abs(frac - 4 / 3 * math.pi * 0.1 ** 3 / 0.22 ** 3) < 0.01


# ----------------------------------------------------------------------------------------
# exact distances and SDF grids
# ----------------------------------------------------------------------------------------
def test_mesh_distance_exact_on_box():
    box = Box((0.0, 0.0, 0.0), (0.2, 0.1, 0.3))
    mesh = trimesh.creation.box(extents=(0.2, 0.1, 0.3))
    p = _rng(7).uniform(-0.4, 0.4, size=(3000, 3))
    np.testing.assert_allclose(mesh_unsigned_distance(mesh, p), np.abs(box.sdf(p)), atol=1e-12)
    np.testing.assert_allclose(mesh_signed_distance(mesh, p), box.sdf(p), atol=1e-12)
    grid = mesh_sdf_grid(mesh, resolution=24)
    lo, hi = grid.bounds
    axes = [lo[i] + grid.spacing * np.arange(grid.shape[i]) for i in range(3)]
    nodes = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    np.testing.assert_allclose(grid.values.reshape(-1), box.sdf(nodes), atol=1e-6)


def test_mesh_sdf_grid_icosphere():
    r = 0.1
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=r)
    grid = mesh_sdf_grid(mesh, resolution=48, padding=3)
    assert isinstance(grid, SDFGrid)
    assert grid.values.dtype == np.float32 and grid.values.shape == (48, 48, 48)
    assert grid.origin.shape == (3,) and grid.origin.dtype == np.float64
    h = grid.spacing
    assert math.isclose(h, 2 * r / (48 - 2 * 3 - 1), rel_tol=1e-3)
    lo, hi = grid.bounds
    assert np.all(lo <= -r - 3 * h + 1e-9) and np.all(hi >= r + 3 * h - 1e-9)

    p = _rng(8).uniform(lo, hi, size=(20000, 3))
    rad = np.linalg.norm(p, axis=1)
    keep = rad > 3 * h  # trilinear interpolation cannot follow the cone at the centre
    p, rad = p[keep], rad[keep]
    s = grid.sample(p)
    assert np.max(np.abs(s - (rad - r))) < 2e-3
    far = np.abs(rad - r) > 2e-3
    np.testing.assert_array_equal(s[far] < 0, rad[far] < r)
    g = grid.gradient(p)
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, atol=1e-9)
    assert np.all(np.einsum("ij,ij->i", g, p / rad[:, None]) > 0.9)

    # outside the grid: clamped value + distance to the box, still pointing outward
    q = np.array([[1.0, 0.0, 0.0], [0.0, -0.5, 0.3]])
    np.testing.assert_allclose(grid.sample(q), np.linalg.norm(q, axis=1) - r, atol=0.05)
    assert np.all(grid.sample(q) > 0.2)
    assert np.all(np.einsum("ij,ij->i", grid.gradient(q), q) > 0)


def test_mesh_sdf_grid_exact_flag_and_spacing():
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.05)
    a = mesh_sdf_grid(mesh, spacing=0.01, padding=2)
    b = mesh_sdf_grid(mesh, spacing=0.01, padding=2, exact=True)
    assert a.shape == b.shape == (15, 15, 15)
    np.testing.assert_allclose(a.values, b.values, atol=1e-6)
    lo, hi = a.bounds
    axes = [lo[i] + a.spacing * np.arange(a.shape[i]) for i in range(3)]
    nodes = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    np.testing.assert_allclose(b.values.reshape(-1), mesh_signed_distance(mesh, nodes), atol=1e-6)
    with pytest.raises(InvalidScene):
        mesh_sdf_grid(mesh, spacing=0.0)


def test_sdf_grid_linear_field():
    # trilinear interpolation reproduces a linear function exactly
    origin = np.array([0.1, -0.2, 0.3])
    h = 0.05
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in (5, 6, 7)], indexing="ij"), axis=-1)
    x = origin + h * idx
    n = np.array([1.0, 2.0, -2.0]) / 3.0
    grid = SDFGrid(values=(x @ n - 0.1).astype(np.float32), origin=origin, spacing=h)
    lo, hi = grid.bounds
    p = _rng(9).uniform(lo, hi, size=(1000, 3))
    np.testing.assert_allclose(grid.sample(p), p @ n - 0.1, atol=1e-6)
    np.testing.assert_allclose(grid.gradient(p), np.broadcast_to(n, p.shape), atol=1e-5)


def test_mesh_shape_sdf_and_contains():
    shape = MeshShape(trimesh.creation.icosphere(subdivisions=3, radius=0.1), center=(0.5, 0.5, 0.5))
    lo, hi = shape.bounds
    np.testing.assert_allclose(0.5 * (lo + hi), 0.5, atol=1e-12)
    p = np.array([[0.5, 0.5, 0.5], [0.5, 0.5, 0.7], [0.5, 0.55, 0.5]])
    s = shape.sdf(p)
    assert s[0] < -0.09 and abs(s[1] - 0.1) < 2e-3 and abs(s[2] + 0.05) < 2e-3
    np.testing.assert_array_equal(shape.contains(p), [True, False, True])
    grid = shape.sdf_grid(resolution=24)
    # (not at the centre: trilinear interpolation rounds off the cone of |x| - r there)
    np.testing.assert_allclose(grid.sample(p[1:]), s[1:], atol=3e-3)


# ----------------------------------------------------------------------------------------
# MeshShape sampling
# ----------------------------------------------------------------------------------------
def test_mesh_shape_icosphere_count_matches_sphere():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.1)
    ms = MeshShape(mesh, translate=(0.2, 0.0, 0.3))
    sph = Sphere((0.2, 0.0, 0.3), 0.1)
    h = 0.005
    n_mesh = len(ms.sample(h))
    n_sph = len(sph.sample(h))
    assert abs(n_mesh - n_sph) / n_sph < 0.03
    assert math.isclose(ms.volume, mesh.volume, rel_tol=1e-12)


def test_mesh_shape_scale_rotation_translate():
    mesh = trimesh.creation.box(extents=(100.0, 50.0, 20.0))  # "mm"
    R = _rot(0.0, 0.0, math.pi / 2)
    ms = MeshShape(mesh, scale=1e-3, rotation=R, translate=(1.0, 2.0, 3.0))
    lo, hi = ms.bounds
    np.testing.assert_allclose(hi - lo, [0.05, 0.1, 0.02], atol=1e-12)
    np.testing.assert_allclose(0.5 * (lo + hi), [1.0, 2.0, 3.0], atol=1e-12)
    assert math.isclose(ms.volume, 1e-4, rel_tol=1e-9)
    pts = ms.sample(0.005)
    assert len(pts) == 10 * 20 * 4


def test_j03_mesh_sample_count():
    ms = MeshShape(J03, scale=1e-3)
    h = 2e-3
    n = len(ms.sample(h))
    expected = ms.mesh.volume / h ** 3
    assert abs(n - expected) / expected < 0.05


# ----------------------------------------------------------------------------------------
# load_mesh validation
# ----------------------------------------------------------------------------------------
def test_load_mesh_not_watertight():
    box = trimesh.creation.box(extents=(0.1, 0.1, 0.1))
    holed = trimesh.Trimesh(box.vertices, box.faces[1:], process=False)
    with pytest.raises(InvalidMesh, match="watertight") as exc:
        load_mesh(holed, name="holed box")
    assert "3 boundary edges" in str(exc.value) and "holed box" in str(exc.value)
    with pytest.raises(InvalidMesh, match="watertight"):
        MeshShape(holed)
    m = load_mesh(holed, require_watertight=False)  # allowed for thin surfaces
    assert len(m.faces) == 11


def test_load_mesh_millimetre_units(tmp_path):
    box = trimesh.creation.box(extents=(80.0, 60.0, 40.0))
    path = tmp_path / "part_mm.stl"
    box.export(path)
    with pytest.raises(InvalidMesh, match="scale") as exc:
        load_mesh(path)
    msg = str(exc.value)
    assert "80" in msg and "millimetres" in msg and "scale=0.001" in msg and "part_mm.stl" in msg
    m = load_mesh(path, scale=1e-3)
    np.testing.assert_allclose(m.extents, [0.08, 0.06, 0.04], atol=1e-9)
    assert math.isclose(m.volume, 0.08 * 0.06 * 0.04, rel_tol=1e-6)
    with pytest.raises(InvalidMesh, match="scale"):
        load_mesh(path, scale=1e-6)  # 80 um: too small


def test_load_mesh_missing_file_and_bad_parameters(tmp_path):
    missing = tmp_path / "nope.obj"
    with pytest.raises(FileNotFoundError, match="nope.obj"):
        load_mesh(missing)
    box = trimesh.creation.box(extents=(0.1, 0.1, 0.1))
    with pytest.raises(InvalidScene, match="rotation"):
        load_mesh(box, rotation=np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(InvalidScene, match="scale"):
        load_mesh(box, scale=-1.0)
    with pytest.raises(InvalidMesh, match="empty"):
        load_mesh(trimesh.Trimesh())


def test_load_mesh_fixes_winding_and_degenerate_faces():
    box = trimesh.creation.box(extents=(0.1, 0.2, 0.3))
    inverted = trimesh.Trimesh(box.vertices, box.faces[:, ::-1], process=False)
    assert inverted.volume < 0
    m = load_mesh(inverted)
    assert math.isclose(m.volume, 0.006, rel_tol=1e-9)
    f = box.faces.copy()
    f[:4] = f[:4, ::-1]
    mixed = trimesh.Trimesh(box.vertices, f, process=False)
    assert math.isclose(load_mesh(mixed).volume, 0.006, rel_tol=1e-9)
    # a zero-area face (repeated vertex) is dropped without breaking watertightness
    with_degenerate = trimesh.Trimesh(box.vertices, np.vstack([box.faces, [[0, 0, 1]]]), process=False)
    m = load_mesh(with_degenerate)
    assert len(m.faces) == 12
    assert m.metadata["diffsim_removed_degenerate_faces"] == 1
    line = trimesh.Trimesh([[0, 0, 0], [0.1, 0, 0], [0.2, 0, 0]], [[0, 1, 2]], process=False)
    with pytest.raises(InvalidMesh, match="zero area"):
        load_mesh(line)
    # the source is copied, never modified
    assert inverted.volume < 0


def test_load_mesh_transform_order():
    box = trimesh.creation.box(extents=(2.0, 1.0, 1.0))
    R = _rot(0.0, 0.0, math.pi / 2)
    m = load_mesh(box, scale=0.1, rotation=R, translate=(0.0, 0.0, 1.0))
    np.testing.assert_allclose(m.bounds, [[-0.05, -0.1, 0.95], [0.05, 0.1, 1.05]], atol=1e-12)


def test_mesh_to_vtu_cells():
    box = trimesh.creation.box(extents=(0.1, 0.1, 0.1))
    pts, cells = mesh_to_vtu_cells(box)
    assert pts.shape == (8, 3) and cells["triangle"].shape == (12, 3)
    assert cells["triangle"].dtype == np.int64


def test_sdf_grids_are_cached_on_disk_keyed_by_mesh_and_resolution(tmp_path, monkeypatch):
    import time
    from diffsim.geometry import mesh_sdf_grid
    monkeypatch.setenv("DIFFSIM_CACHE", str(tmp_path))
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.05)
    t0 = time.perf_counter()
    a = mesh_sdf_grid(mesh, resolution=40)
    t_first = time.perf_counter() - t0
    files = list((tmp_path / "sdf").glob("*.npy"))
    assert len(files) == 1
    t0 = time.perf_counter()
    b = mesh_sdf_grid(mesh, resolution=40)
    assert time.perf_counter() - t0 < t_first
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.origin, b.origin)
    mesh_sdf_grid(mesh, resolution=32)                       # another resolution: another entry
    moved = mesh.copy()
    moved.vertices += 1e-3                                   # another mesh: another entry
    mesh_sdf_grid(moved, resolution=40)
    assert len(list((tmp_path / "sdf").glob("*.npy"))) == 3
    files[0].write_bytes(b"truncated")                       # a damaged entry is recomputed
    c = mesh_sdf_grid(mesh, resolution=40)
    np.testing.assert_array_equal(a.values, c.values)
    monkeypatch.setenv("DIFFSIM_CACHE", "off")
    mesh_sdf_grid(trimesh.creation.box(extents=(0.1, 0.1, 0.1)), resolution=20)
    assert len(list((tmp_path / "sdf").glob("*.npy"))) == 3
