"""DEM: the material (:mod:`.material`), walls (:mod:`.walls`), pours and packings
(:mod:`.insertion`), the solver (:mod:`.solver`), its differentiable rollout
(:mod:`.rollout`) and granular-flow analysis (:mod:`.granular`)."""
from .material import PARAMETERS, DEMMaterial
from .walls import BoxWall, CylinderWall, MeshWall, PlaneWall, Wall
from .insertion import Pour, random_packing
from .solver import DEMSolver

__all__ = ["PARAMETERS", "BoxWall", "CylinderWall", "DEMMaterial", "DEMSolver", "MeshWall", "PlaneWall", "Pour",
           "Wall", "random_packing"]
