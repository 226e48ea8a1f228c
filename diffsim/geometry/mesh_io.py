"""Reading and validating triangle meshes (:func:`load_mesh`), placing them in the world."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import trimesh

from ..errors import InvalidMesh
from ._common import MAX_EXTENT_M, MIN_EXTENT_M, _edge_counts, _positive, _rotation_matrix, _suggest_scale, _vec3


def load_mesh(
    source,
    scale: float = 1.0,
    translate=(0.0, 0.0, 0.0),
    rotation=None,
    require_watertight: bool = True,
    name: str | None = None,
) -> trimesh.Trimesh:
    """Load, transform and validate a triangle mesh.

    Parameters
    ----------
    source : str | os.PathLike | trimesh.Trimesh
        A file any trimesh loader reads (OBJ, STL, PLY, OFF, GLB, ...; scenes are merged
        into one mesh) or a ``trimesh.Trimesh`` (copied, never modified).
    scale : float
        Uniform scale applied first, about the origin (e.g. ``1e-3`` for files in mm).
    translate : (3,) float, m
        Translation applied last.
    rotation : None | (3, 3) float
        Proper rotation matrix applied after scaling, about the origin.
    require_watertight : bool
        If True (default) the mesh must be closed with consistent winding and positive
        volume (needed for inside tests, particle sampling and signed distances).
    name : str | None
        Name used in error messages (defaults to the file name).

    Returns
    -------
    trimesh.Trimesh
        Vertices in m (``x' = R (scale x) + translate``), zero-area faces removed
        (their number is stored in ``mesh.metadata["diffsim_removed_degenerate_faces"]``),
        outward-facing consistent winding when ``require_watertight``.

    Raises
    ------
    FileNotFoundError
        The file does not exist (the message contains the path).
    InvalidMesh
        Unreadable, empty, non-finite, all faces degenerate, implausible units (largest
        extent > 10 m or < 0.1 mm after scaling), not watertight, or non-positive volume
        after trying to fix the winding.
    InvalidScene
        ``scale``, ``translate`` or ``rotation`` is invalid.
    """
    scale_f = _positive(scale, "scale")
    t = _vec3(translate, "translate")
    rot = _rotation_matrix(rotation)

    if isinstance(source, trimesh.Trimesh):
        mesh = source.copy()
        label = name or mesh.metadata.get("name") or mesh.metadata.get("file_name") or "<Trimesh>"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        label = name or path.name
        if not path.is_file():
            raise FileNotFoundError(f"mesh file not found: '{path.resolve()}'; check the path")
        try:
            loaded = trimesh.load(str(path), force="mesh")
        except Exception as exc:  # trimesh raises many kinds of errors
            raise InvalidMesh(
                f"mesh '{label}' could not be read by trimesh ({type(exc).__name__}: {exc}); "
                "convert it to OBJ, STL or PLY"
            ) from exc
        if isinstance(loaded, trimesh.Scene):  # defensive: force='mesh' should merge
            loaded = loaded.dump(concatenate=True)
        if not isinstance(loaded, trimesh.Trimesh):
            raise InvalidMesh(
                f"mesh '{label}' does not contain triangles (got {type(loaded).__name__}); "
                "pass a surface mesh file"
            )
        mesh = loaded
    else:
        raise TypeError(f"source must be a path or a trimesh.Trimesh, got {type(source).__name__}")

    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise InvalidMesh(f"mesh '{label}' is empty (no faces); check the file and its format")
    if not np.all(np.isfinite(mesh.vertices)):
        raise InvalidMesh(f"mesh '{label}' has non-finite (NaN/inf) vertex coordinates; repair the file")

    # ---- place it: scale, rotate, translate ------------------------------------------
    v = np.asarray(mesh.vertices, dtype=np.float64) * scale_f
    if rot is not None:
        v = v @ rot.T
    v = v + t
    mesh = trimesh.Trimesh(vertices=v, faces=np.asarray(mesh.faces), process=True, validate=False,
                           metadata=dict(mesh.metadata))
    mesh.metadata["name"] = label

    # ---- units --------------------------------------------------------------------------
    extent = float(np.max(mesh.extents))
    if extent > MAX_EXTENT_M or extent < MIN_EXTENT_M:
        bound = f"larger than {MAX_EXTENT_M:g} m" if extent > MAX_EXTENT_M else f"smaller than {MIN_EXTENT_M:g} m"
        raise InvalidMesh(
            f"mesh '{label}' has extent {extent:.6g} m after scale={scale_f:g}, {bound}: "
            f"{_suggest_scale(extent, scale_f)}"
        )

    # ---- degenerate faces -------------------------------------------------------------------
    faces = np.asarray(mesh.faces)
    tri = mesh.vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    repeated = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 2] == faces[:, 0])
    degenerate = repeated | (area <= 1e-14 * extent * extent)
    n_degenerate = int(np.count_nonzero(degenerate))
    if n_degenerate == len(faces):
        raise InvalidMesh(
            f"mesh '{label}': all {len(faces)} faces have zero area; check the file (and the scale)"
        )
    if n_degenerate:
        mesh.update_faces(~degenerate)
        mesh.remove_unreferenced_vertices()
    mesh.metadata["diffsim_removed_degenerate_faces"] = n_degenerate

    if not require_watertight:
        if not mesh.is_winding_consistent:
            trimesh.repair.fix_winding(mesh)
        return mesh

    # ---- closed? -----------------------------------------------------------------------------
    boundary, nonmanifold = _edge_counts(np.asarray(mesh.faces))
    if boundary or nonmanifold:
        parts = []
        if boundary:
            parts.append(f"{boundary} boundary edges")
        if nonmanifold:
            parts.append(f"{nonmanifold} non-manifold edges (shared by more than 2 faces)")
        extra = f" (after removing {n_degenerate} zero-area faces)" if n_degenerate else ""
        raise InvalidMesh(
            f"mesh '{label}' is not watertight: {', '.join(parts)}{extra}; repair it "
            "(e.g. trimesh.repair.fill_holes, or merge duplicate vertices) or use a closed mesh; "
            "pass require_watertight=False only for meshes used as thin surfaces"
        )

    # ---- orientation -----------------------------------------------------------------------
    if not mesh.is_winding_consistent:
        trimesh.repair.fix_winding(mesh)
    if not mesh.is_winding_consistent:
        raise InvalidMesh(
            f"mesh '{label}' has inconsistent face winding that could not be repaired "
            "(non-orientable or self-overlapping); repair it in a mesh editor"
        )
    if mesh.volume < 0:
        trimesh.repair.fix_inversion(mesh)
    volume = float(mesh.volume)
    if not volume > 0.0:
        raise InvalidMesh(
            f"mesh '{label}' has non-positive volume ({volume:.6g} m^3) after fixing the winding; "
            "it is probably flat or self-intersecting; use a closed solid mesh"
        )
    return mesh
