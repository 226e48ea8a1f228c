"""Geometry: mesh loading and validation, primitive shapes, particle sampling, SDFs.

Pure numpy / scipy / trimesh (no Taichi, no torch), so it can be used to build scenes
before any runtime is initialised. SI units (lengths in m, volumes in m^3), z up. Point
arrays are ``(N, 3) float64`` in m unless stated otherwise.

- :func:`load_mesh` (:mod:`.mesh_io`) reads and validates a triangle mesh (watertight,
  positive volume, plausible units) and places it in the world.
- :class:`Box`, :class:`Sphere`, :class:`Cylinder`, :class:`MeshShape` (:mod:`.shapes`):
  ``sample(spacing)`` (cell-centred lattice particles), ``contains``, ``sdf``, ``volume``,
  ``bounds``.
- :func:`points_inside_mesh` (:mod:`.inside`): fast, robust inside test (ray parity along +z).
- :func:`mesh_unsigned_distance`, :func:`mesh_signed_distance` (:mod:`.distance`).
- :class:`SDFGrid` / :func:`mesh_sdf_grid` (:mod:`.sdf`): a signed distance grid with
  trilinear sampling and gradients, built from exact point-to-triangle distances.
"""
from .mesh_io import load_mesh
from .inside import points_inside_mesh
from .distance import mesh_signed_distance, mesh_unsigned_distance
from .shapes import Box, Cylinder, MeshShape, Shape, Sphere
from .sdf import SDFGrid, mesh_sdf_grid, mesh_to_vtu_cells, sdf_cache_dir

__all__ = ["load_mesh", "Shape", "Box", "Sphere", "Cylinder", "MeshShape", "points_inside_mesh",
           "mesh_unsigned_distance", "mesh_signed_distance", "SDFGrid", "mesh_sdf_grid", "mesh_to_vtu_cells",
           "sdf_cache_dir"]
