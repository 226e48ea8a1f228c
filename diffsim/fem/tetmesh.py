"""Tetrahedral meshes for FEM bodies: loading, checking, generating (sensor pads).

    mesh = ds.load_tet_mesh("pad.msh", scale=1e-3)        # meshio: .msh, .vtk, .vtu, ...
    pad = ds.dome_pad(width=0.02, thickness=0.003, cap_height=0.004, cap_radius=0.02)
    box = ds.box_tet_mesh(size=(0.1, 0.01, 0.01), cells=(40, 4, 4))

Every constructor returns a checked :class:`TetMesh` (SI units, m): finite vertices,
indices in range, no repeated vertex in a tet, positive orientation (consistently inverted
input is flipped, mixed input refused), no degenerate (flat) tets, every triangle shared by
at most two tets (manifold), and a size between 0.1 mm and 10 m (a mesh in mm passed
without ``scale`` is refused with a hint).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DiffsimError, InvalidMesh

# the four faces of tet (a, b, c, d), each ordered so that its normal points out of the tet
# when the tet is positively oriented (det[b - a, c - a, d - a] > 0)
_FACES = np.array([[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 2, 1]])


@dataclass
class TetMesh:
    """Vertices (V,3) in m and tetrahedra (T,4) vertex indices, positively oriented."""
    vertices: np.ndarray
    tets: np.ndarray

    @property
    def volumes(self) -> np.ndarray:
        """Signed volume of each tet (m^3), positive for positive orientation."""
        return signed_volumes(self.vertices, self.tets)

    @property
    def volume(self) -> float:
        return float(self.volumes.sum())

    def surface(self) -> np.ndarray:
        """Boundary triangles (F,3), outward oriented: the faces used by exactly one tet."""
        faces = self.tets[:, _FACES].reshape(-1, 3)
        key = np.sort(faces, axis=1)
        _, inv, count = np.unique(key, axis=0, return_inverse=True, return_counts=True)
        return faces[count[inv.ravel()] == 1]

    def surface_vertices(self) -> np.ndarray:
        """Indices of the vertices on the boundary."""
        return np.unique(self.surface())

    def edge_length(self) -> float:
        """Mean edge length (m)."""
        v = self.vertices[self.tets]
        e = [np.linalg.norm(v[:, i] - v[:, j], axis=1) for i in range(4) for j in range(i + 1, 4)]
        return float(np.mean(e))


def signed_volumes(vertices, tets) -> np.ndarray:
    v = np.asarray(vertices, float)[np.asarray(tets)]
    return np.einsum("ij,ij->i", np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), v[:, 3] - v[:, 0]) / 6.0


def check_tet_mesh(vertices, tets, name="mesh", degenerate_ratio=1e-6, orient=True) -> TetMesh:
    """Validate (and, if consistently inverted, re-orient) a tetrahedral mesh; raises
    :class:`InvalidMesh` naming the first offending tet. ``degenerate_ratio``: a tet whose
    volume is below this fraction of (mean edge length)^3 / 6 is flat."""
    v = np.asarray(vertices, float)
    t = np.asarray(tets)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) < 4:
        raise InvalidMesh(f"{name}: vertices must be (V >= 4, 3), got {v.shape}")
    if t.ndim != 2 or t.shape[1] != 4 or len(t) == 0:
        raise InvalidMesh(f"{name}: tets must be (T >= 1, 4) vertex indices, got {t.shape}")
    if not np.issubdtype(t.dtype, np.integer):
        raise InvalidMesh(f"{name}: tet indices must be integers, got {t.dtype}")
    t = t.astype(np.int64)
    if not np.all(np.isfinite(v)):
        raise InvalidMesh(f"{name}: vertices contain NaN/inf")
    if t.min() < 0 or t.max() >= len(v):
        raise InvalidMesh(f"{name}: tet indices outside [0, {len(v) - 1}]")
    s = np.sort(t, axis=1)
    rep = np.any(s[:, 1:] == s[:, :-1], axis=1)
    if rep.any():
        raise InvalidMesh(f"{name}: {int(rep.sum())} tets repeat a vertex (e.g. tet {int(np.argmax(rep))}: "
                          f"{t[int(np.argmax(rep))].tolist()})")
    ext = float(np.linalg.norm(v.max(0) - v.min(0)))
    if ext > 10.0:
        raise InvalidMesh(f"{name}: the mesh is {ext:.3g} m across; if its file is in mm pass scale=1e-3")
    if ext < 1e-4:
        raise InvalidMesh(f"{name}: the mesh is {ext:.3g} m across (< 0.1 mm); check its units/scale")
    vol = signed_volumes(v, t)
    mesh = TetMesh(v, t)
    tiny = degenerate_ratio * mesh.edge_length() ** 3 / 6.0
    flat = np.abs(vol) <= tiny
    if flat.any():
        k = int(np.argmax(flat))
        raise InvalidMesh(f"{name}: {int(flat.sum())} degenerate (flat) tets, e.g. tet {k} with volume {vol[k]:.3g} m^3")
    neg = vol < 0
    if neg.any():
        if orient and neg.all():
            t = t[:, [0, 2, 1, 3]]
        else:
            k = int(np.argmax(neg))
            raise InvalidMesh(f"{name}: {int(neg.sum())} of {len(t)} tets are inverted (e.g. tet {k}); the mesh "
                              f"mixes orientations")
    faces = np.sort(t[:, _FACES].reshape(-1, 3), axis=1)
    _, count = np.unique(faces, axis=0, return_counts=True)
    if count.max() > 2:
        raise InvalidMesh(f"{name}: {int((count > 2).sum())} triangles are shared by more than two tets "
                          f"(non-manifold)")
    used = np.zeros(len(v), bool)
    used[t.ravel()] = True
    if not used.all():  # drop unused vertices, renumber
        new = -np.ones(len(v), np.int64)
        new[used] = np.arange(used.sum())
        v, t = v[used], new[t]
    return TetMesh(v, t)


def load_tet_mesh(path, scale: float = 1.0, translate=(0.0, 0.0, 0.0)) -> TetMesh:
    """Read the tetrahedra of a mesh file with meshio (.msh, .vtk, .vtu, .xdmf, ...);
    vertices are scaled by ``scale`` (e.g. 1e-3 for mm) then translated (m)."""
    import meshio
    try:
        m = meshio.read(path)
    except Exception as e:  # meshio raises several types
        raise InvalidMesh(f"{path}: cannot read it as a mesh ({e})") from e
    tets = [c.data for c in m.cells if c.type == "tetra"]
    if not tets:
        kinds = sorted({c.type for c in m.cells})
        raise InvalidMesh(f"{path}: no tetrahedra (cells: {kinds}); a surface mesh must be tetrahedralized first "
                          f"(diffsim.tetrahedralize)")
    v = np.asarray(m.points, float)[:, :3] * float(scale) + np.asarray(translate, float)
    return check_tet_mesh(v, np.concatenate(tets), name=str(path))


def tetrahedralize(surface, max_volume: float | None = None, quality: float = 1.5) -> TetMesh:
    """Fill a watertight triangle surface (a trimesh.Trimesh or a file trimesh reads; m)
    with tetrahedra using the ``tetgen`` package (optional: ``pip install diffsim[mesh]``)."""
    from ..geometry import load_mesh
    try:
        import tetgen
    except ImportError as e:
        raise DiffsimError("tetrahedralize needs the optional 'tetgen' package: pip install -e \".[mesh]\" "
                           "(or mesh the surface elsewhere and load it with load_tet_mesh)") from e
    surf = load_mesh(surface, require_watertight=True)
    tg = tetgen.TetGen(np.asarray(surf.vertices, float), np.asarray(surf.faces, np.int32))
    kw = {"minratio": float(quality)}
    if max_volume is not None:
        kw["maxvolume"] = float(max_volume)
    nodes, elems = tg.tetrahedralize(**kw)[:2]
    return check_tet_mesh(nodes, elems, name="tetrahedralized surface")


def box_tet_mesh(size, cells, origin=(0.0, 0.0, 0.0)) -> TetMesh:
    """A box of ``size`` (m, 3) split into ``cells`` (3 ints) cubes of 6 tets each (the
    Kuhn split: conforming across cells), corner at ``origin``."""
    size = np.asarray(size, float)
    n = np.asarray(cells, int)
    if size.shape != (3,) or np.any(size <= 0) or n.shape != (3,) or np.any(n < 1):
        raise InvalidMesh("box_tet_mesh needs size > 0 (3) and cells >= 1 (3)")
    o = np.asarray(origin, float)
    return grid_tet_mesh(*[o[a] + np.linspace(0, size[a], n[a] + 1) for a in range(3)])


def grid_tet_mesh(xs, ys, zs) -> TetMesh:
    """A rectilinear grid with node coordinates ``xs``, ``ys``, ``zs`` (m, increasing; the
    spacing may vary, e.g. graded towards a contact), each cell split into 6 tets (Kuhn)."""
    axes = [np.asarray(a, float) for a in (xs, ys, zs)]
    if any(a.ndim != 1 or a.size < 2 or np.any(np.diff(a) <= 0) for a in axes):
        raise InvalidMesh("grid_tet_mesh needs three increasing coordinate arrays of >= 2 values")
    n = np.array([a.size - 1 for a in axes])
    v = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)

    def vid(i, j, k):
        return (i * (n[1] + 1) + j) * (n[2] + 1) + k
    I, J, K = np.meshgrid(np.arange(n[0]), np.arange(n[1]), np.arange(n[2]), indexing="ij")
    I, J, K = I.ravel(), J.ravel(), K.ravel()
    corner = {(a, b, c): vid(I + a, J + b, K + c) for a in (0, 1) for b in (0, 1) for c in (0, 1)}
    tets = []
    # Kuhn: the 6 monotone paths from (0,0,0) to (1,1,1)
    for order, odd in (((0, 1, 2), 0), ((0, 2, 1), 1), ((1, 0, 2), 1), ((1, 2, 0), 0), ((2, 0, 1), 0),
                       ((2, 1, 0), 1)):
        p = [0, 0, 0]
        path = [corner[tuple(p)]]
        for ax in order:
            p[ax] = 1
            path.append(corner[tuple(p)])
        if odd:  # an odd permutation of the axes: swap two vertices for positive volume
            path[2], path[3] = path[3], path[2]
        tets.append(np.stack(path, 1))
    return check_tet_mesh(v, np.concatenate(tets), name="grid_tet_mesh")


def voxel_tet_mesh(shape, cell: float) -> TetMesh:
    """A tet mesh of a solid without a mesher: the cubes of a ``cell``-sized grid (m) whose
    centres lie inside ``shape`` (any :mod:`diffsim.geometry` shape, e.g. a
    :class:`~diffsim.MeshShape` of a watertight STL/OBJ), each split into 6 tets (Kuhn, so
    the mesh is conforming). The boundary is a staircase of ``cell``; vertices shared by
    cubes are merged and unused ones dropped."""
    if not cell > 0:
        raise InvalidMesh(f"voxel_tet_mesh: cell must be > 0 m, got {cell}")
    lo, hi = (np.asarray(b, float) for b in shape.bounds)
    n = np.maximum(1, np.ceil((hi - lo) / cell).astype(int))
    lo = 0.5 * (lo + hi) - 0.5 * n * cell
    grid = grid_tet_mesh(*[lo[a] + cell * np.arange(n[a] + 1) for a in range(3)])
    centres = grid.vertices[grid.tets].mean(1)
    # a cube's 6 tets share its centre: classify cubes by their centre
    idx = np.floor((centres - lo) / cell).astype(int)
    cube = (idx[:, 0] * n[1] + idx[:, 1]) * n[2] + idx[:, 2]
    cc = lo + cell * (np.stack(np.unravel_index(np.arange(n.prod()), tuple(n)), 1) + 0.5)
    inside = np.asarray(shape.contains(cc), bool)
    tets = grid.tets[inside[cube]]
    if len(tets) == 0:
        raise InvalidMesh(f"voxel_tet_mesh: no {cell} m cell has its centre inside the shape; use a smaller cell")
    used, inv = np.unique(tets, return_inverse=True)
    return check_tet_mesh(grid.vertices[used], inv.reshape(-1, 4), name="voxel_tet_mesh")


def flat_pad(width=0.02, depth=0.02, thickness=0.003, resolution=0.001) -> TetMesh:
    """A flat GelSight-style elastomer pad (m): ``width`` x ``depth`` footprint centred on
    the z axis, from z = 0 (the back plate) up to z = ``thickness`` (the contact surface)."""
    cells = [max(1, int(round(s / resolution))) for s in (width, depth, thickness)]
    return box_tet_mesh((width, depth, thickness), cells, origin=(-width / 2, -depth / 2, 0.0))


def dome_pad(width=0.02, thickness=0.002, cap_height=0.004, cap_radius=0.02, resolution=0.001,
             layers: int | None = None) -> TetMesh:
    """A DiffTactile-like dome elastomer (m): a square ``width`` footprint centred on the z
    axis, a base layer of ``thickness`` from z = 0 (back plate), topped by a spherical cap of
    radius ``cap_radius`` rising ``cap_height`` at the centre. Built from a box mesh by the
    orientation-preserving map z -> z h(x, y); ``layers`` tets through the thickness
    (default ``(thickness + cap_height) / resolution``)."""
    if not (width > 0 and thickness > 0 and cap_height >= 0 and cap_radius > cap_height):
        raise InvalidMesh("dome_pad needs width, thickness > 0 and cap_radius > cap_height >= 0")
    nxy = max(2, int(round(width / resolution)))
    nz = int(layers) if layers else max(2, int(round((thickness + cap_height) / resolution)))
    box = box_tet_mesh((width, width, 1.0), (nxy, nxy, nz), origin=(-width / 2, -width / 2, 0.0))
    v = box.vertices.copy()
    r2 = v[:, 0] ** 2 + v[:, 1] ** 2
    cap = np.maximum(0.0, np.sqrt(np.maximum(cap_radius ** 2 - r2, 0.0)) - (cap_radius - cap_height))
    v[:, 2] = v[:, 2] * (thickness + cap)
    return check_tet_mesh(v, box.tets, name="dome_pad")
