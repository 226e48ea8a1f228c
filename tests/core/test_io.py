"""Tests for diffsim.io: atomic writes, JSON, PLY/VTU through meshio, checkpoints."""
import json
import os

import meshio
import numpy as np
import pytest

from diffsim import io as dio


def _no_temp_files(folder):
    return [f for f in os.listdir(folder) if ".tmp" in f or f.startswith(".")]


def test_atomic_write_text_bytes_creates_parents_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a" / "b" / "out.txt"
    dio.atomic_write_text(p, "hello")
    assert p.read_text() == "hello"
    dio.atomic_write_text(p, "again")  # overwrite
    assert p.read_text() == "again"
    dio.atomic_write_bytes(tmp_path / "a" / "raw.bin", b"\x00\x01\xff")
    assert (tmp_path / "a" / "raw.bin").read_bytes() == b"\x00\x01\xff"
    assert _no_temp_files(tmp_path / "a" / "b") == []
    assert _no_temp_files(tmp_path / "a") == []


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path):
    p = tmp_path / "summary.json"
    dio.atomic_write_json(p, {"ok": 1})
    with pytest.raises(TypeError):
        dio.atomic_write_json(p, {"bad": object()})
    assert json.loads(p.read_text()) == {"ok": 1}
    assert _no_temp_files(tmp_path) == []


def test_atomic_write_permissions_like_open(tmp_path):
    p = tmp_path / "perm.txt"
    dio.atomic_write_text(p, "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~mask)


def test_json_numpy_values(tmp_path):
    p = tmp_path / "s.json"
    obj = {
        "i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True),
        "arr": np.arange(6, dtype=np.int32).reshape(2, 3), "farr": np.array([0.25, 1.5]),
        "nested": [{"x": np.float64(2.0)}], "path": tmp_path / "x", "c": np.complex128(1 + 2j),
    }
    dio.atomic_write_json(p, obj)
    back = json.loads(p.read_text())
    assert back["i"] == 3 and back["f"] == 0.5 and back["b"] is True
    assert back["arr"] == [[0, 1, 2], [3, 4, 5]] and back["farr"] == [0.25, 1.5]
    assert back["nested"][0]["x"] == 2.0
    assert back["path"] == str(tmp_path / "x")
    assert back["c"] == [1.0, 2.0]
    assert p.read_text().endswith("\n")


def test_write_ply_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.random((257, 3)).astype(np.float32)
    vel = rng.normal(size=(257, 3))
    ids = np.arange(257, dtype=np.int32)
    path = tmp_path / "frames" / dio.frame_name("particles", 12, "ply")
    dio.write_ply(path, pts, {"velocity": vel, "id": ids, "active": np.ones(257, bool)})
    assert path.name == "particles_000012.ply"
    m = meshio.read(path)
    np.testing.assert_array_equal(m.points, pts)
    assert m.points.dtype == np.float32
    assert [c.type for c in m.cells] == ["vertex"]
    np.testing.assert_array_equal(m.cells[0].data.ravel(), np.arange(257))
    for j in range(3):
        np.testing.assert_array_equal(m.point_data[f"velocity_{j}"], vel[:, j])
    np.testing.assert_array_equal(m.point_data["id"], ids)
    np.testing.assert_array_equal(m.point_data["active"], 1)
    # Binary format.
    assert b"format binary_" in path.read_bytes()[:200]
    assert _no_temp_files(path.parent) == []


def test_write_ply_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        dio.write_ply(tmp_path / "x.ply", np.zeros((4, 2)))
    with pytest.raises(ValueError, match="point_data"):
        dio.write_ply(tmp_path / "x.ply", np.zeros((4, 3)), {"v": np.zeros(5)})
    assert not (tmp_path / "x.ply").exists()


def test_write_vtu_roundtrip_tetra_and_triangle(tmp_path):
    rng = np.random.default_rng(1)
    pts = rng.random((10, 3))
    tets = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [1, 2, 3, 8]])
    tris = np.array([[0, 1, 9], [2, 3, 9]])
    stress = rng.random((5, 6))
    path = tmp_path / "mesh.vtu"
    dio.write_vtu(path, pts, {"tetra": tets, "triangle": tris},
                  point_data={"u": rng.random((10, 3)), "T": rng.random(10)},
                  cell_data={"stress": stress})
    m = meshio.read(path)
    np.testing.assert_allclose(m.points, pts)
    types = {c.type: c.data for c in m.cells}
    np.testing.assert_array_equal(types["tetra"], tets)
    np.testing.assert_array_equal(types["triangle"], tris)
    assert m.point_data["u"].shape == (10, 3)
    got = np.concatenate(m.cell_data["stress"])
    np.testing.assert_allclose(got, stress)
    assert _no_temp_files(tmp_path) == []


def test_write_vtu_validates(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        dio.write_vtu(tmp_path / "m.vtu", np.zeros((3, 3)), {"triangle": np.array([[0, 1, 3]])})
    with pytest.raises(ValueError, match="cell_data"):
        dio.write_vtu(tmp_path / "m.vtu", np.zeros((3, 3)), {"triangle": np.array([[0, 1, 2]])},
                      cell_data={"a": np.zeros(2)})


def test_checkpoint_bitwise_roundtrip(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {
        "x": rng.random((100, 3)).astype(np.float32),
        "v": rng.normal(size=(100, 3)),  # float64
        "F": rng.normal(size=(100, 3, 3)).astype(np.float32),
        "ids": rng.integers(-2**40, 2**40, size=50),
        "flags": rng.random(7) > 0.5,
        "scalar": np.float64(np.pi),
        "weird": np.array([np.nan, np.inf, -0.0, 5e-324]),
    }
    meta = {"step": np.int64(1200), "dt": 1e-4, "scene": "elastic_drop", "E": np.float32(1e5)}
    path = tmp_path / "ckpt" / "state.npz"
    dio.save_checkpoint(path, arrays, meta)
    back, m = dio.load_checkpoint(path)
    assert set(back) == set(arrays)
    for k, a in arrays.items():
        a = np.asarray(a)
        assert back[k].dtype == a.dtype and back[k].shape == a.shape, k
        assert back[k].tobytes() == a.tobytes(), k
    assert m == {"step": 1200, "dt": 1e-4, "scene": "elastic_drop", "E": 1e5}
    assert _no_temp_files(path.parent) == []


def test_checkpoint_missing_and_corrupt_raise_valueerror_naming_path(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(ValueError, match="nope.npz"):
        dio.load_checkpoint(missing)

    path = tmp_path / "state.npz"
    dio.save_checkpoint(path, {"x": np.arange(1000.0)}, {"step": 1})
    data = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.npz"):
        dio.load_checkpoint(truncated)

    # Flip bytes inside the array payload: the zip CRC check must catch it.
    flipped = bytearray(data)
    i = data.index(b"x.npy") + 200
    flipped[i:i + 8] = b"\xff" * 8
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="flipped.npz"):
        dio.load_checkpoint(bad)

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="garbage.npz"):
        dio.load_checkpoint(garbage)

    # A valid npz without the metadata entry is not a diffsim checkpoint.
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.zeros(3))
    with pytest.raises(ValueError, match="plain.npz"):
        dio.load_checkpoint(plain)
    with pytest.raises(dio.CheckpointError):
        dio.load_checkpoint(plain)


def test_checkpoint_overwrite_is_atomic(tmp_path):
    path = tmp_path / "state.npz"
    dio.save_checkpoint(path, {"x": np.zeros(3)}, {"step": 1})
    with pytest.raises(ValueError):
        dio.save_checkpoint(path, {"o": np.array([object()], dtype=object)}, {"step": 2})
    arrays, meta = dio.load_checkpoint(path)
    assert meta == {"step": 1}
    assert _no_temp_files(tmp_path) == []


def test_frame_name():
    assert dio.frame_name("prefix", 12, "ext") == "prefix_000012.ext"
    assert dio.frame_name("p", 3, ".png", width=4) == "p_0003.png"
    assert dio.frame_name("p", 1234567, "ply") == "p_1234567.ply"
    with pytest.raises(ValueError):
        dio.frame_name("p", -1, "ply")
