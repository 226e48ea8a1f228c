"""Tetrahedral meshes (FEM, issue 3's first slice): generators, checks, file round trips."""
import numpy as np
import pytest
import trimesh

import diffsim as ds


def test_box_mesh_is_conforming_positive_and_exact():
    b = ds.box_tet_mesh((0.1, 0.02, 0.03), (5, 2, 3))
    assert len(b.tets) == 6 * 30 and np.all(b.volumes > 0)
    assert abs(b.volume - 6e-5) < 1e-15
    surf = trimesh.Trimesh(b.vertices, b.surface(), process=False)
    assert surf.is_watertight and surf.is_winding_consistent  # conforming: no interior face left over
    assert abs(surf.volume - 6e-5) < 1e-15  # outward normals
    assert abs(surf.area - 2 * (0.1 * 0.02 + 0.1 * 0.03 + 0.02 * 0.03)) < 1e-12


def test_sensor_pads():
    flat = ds.flat_pad(width=0.02, depth=0.016, thickness=0.003, resolution=0.001)
    assert np.allclose(flat.vertices.min(0), [-0.01, -0.008, 0]) and np.allclose(flat.vertices.max(0), [0.01, 0.008, 0.003])
    dome = ds.dome_pad(width=0.02, thickness=0.002, cap_height=0.004, cap_radius=0.02, resolution=0.001)
    assert np.all(dome.volumes > 0)
    assert abs(dome.vertices[:, 2].max() - 0.006) < 1e-12
    # the top surface follows the cap: height at the rim of the footprint
    top = dome.vertices[np.isclose(dome.vertices[:, 0], 0.01) & np.isclose(dome.vertices[:, 1], 0.0)][:, 2].max()
    expected = 0.002 + np.sqrt(0.02 ** 2 - 0.01 ** 2) - (0.02 - 0.004)
    assert abs(top - expected) < 1e-12
    assert trimesh.Trimesh(dome.vertices, dome.surface(), process=False).is_watertight


def test_bad_meshes_are_refused_with_the_reason():
    b = ds.box_tet_mesh((0.01, 0.01, 0.01), (1, 1, 1))
    v, t = b.vertices, b.tets
    mixed = t.copy()
    mixed[0] = mixed[0, [0, 2, 1, 3]]
    with pytest.raises(ds.InvalidMesh, match="inverted"):
        ds.check_tet_mesh(v, mixed)
    flipped = ds.check_tet_mesh(v, t[:, [0, 2, 1, 3]])  # consistently inverted: re-oriented
    assert np.all(flipped.volumes > 0)
    flat_v = np.concatenate([v, [[0.005, 0.005, 0.0]]])
    with pytest.raises(ds.InvalidMesh, match="degenerate"):
        ds.check_tet_mesh(flat_v, np.concatenate([t, [[0, 2, 4, len(v)]]]))  # four vertices on z = 0
    with pytest.raises(ds.InvalidMesh, match="repeat a vertex"):
        ds.check_tet_mesh(v, np.concatenate([t, [[0, 0, 1, 2]]]))
    face = b.surface()[0]  # outward oriented: apexes outside give positive tets
    a, bb, c = v[face]
    n = np.cross(bb - a, c - a)
    n /= np.linalg.norm(n)
    apex = (a + bb + c) / 3 + np.outer([0.004, 0.007], n)
    with pytest.raises(ds.InvalidMesh, match="non-manifold"):  # three tets on one triangle
        ds.check_tet_mesh(np.concatenate([v, apex]), np.concatenate([t, [[*face, len(v)], [*face, len(v) + 1]]]))
    with pytest.raises(ds.InvalidMesh, match="scale=1e-3"):
        ds.check_tet_mesh(v * 1e3 * 20, t)  # a 0.2 m box written in mm
    with pytest.raises(ds.InvalidMesh, match="outside"):
        ds.check_tet_mesh(v, t + 100)


@pytest.mark.parametrize("ext", ["vtu", "vtk", "msh"])
def test_meshio_round_trip(tmp_path, ext):
    import meshio
    b = ds.box_tet_mesh((0.02, 0.01, 0.005), (4, 2, 2))
    path = tmp_path / f"pad.{ext}"
    kw = {"file_format": "gmsh22", "binary": False} if ext == "msh" else {}
    meshio.write(path, meshio.Mesh(b.vertices * 1e3, [("tetra", b.tets)]), **kw)  # written in mm
    with pytest.raises(ds.InvalidMesh, match="scale"):
        ds.load_tet_mesh(path)
    m = ds.load_tet_mesh(path, scale=1e-3)
    assert np.allclose(m.vertices, b.vertices) and np.array_equal(m.tets, b.tets)
    surf = tmp_path / "surface.vtu"
    meshio.write(surf, meshio.Mesh(b.vertices, [("triangle", b.surface())]))
    with pytest.raises(ds.InvalidMesh, match="no tetrahedra"):
        ds.load_tet_mesh(surf)


def test_tetrahedralize_without_tetgen_says_how_to_get_it():
    import importlib.util
    if importlib.util.find_spec("tetgen") is None:  # the usual case: tetgen is an optional extra
        with pytest.raises(ds.DiffsimError, match="tetgen"):
            ds.tetrahedralize(trimesh.creation.box(extents=(0.01, 0.01, 0.01)))
    else:
        m = ds.tetrahedralize(trimesh.creation.box(extents=(0.01, 0.01, 0.01)))
        assert abs(m.volume - 1e-6) < 1e-9
