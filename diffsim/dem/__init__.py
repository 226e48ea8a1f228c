"""DEM: the material (:mod:`.material`), walls (:mod:`.walls`), pours and packings
(:mod:`.insertion`), the solver (:mod:`.solver`), its differentiable rollout
(:mod:`.rollout`), granular-flow analysis (:mod:`.granular`) and discharge figures
(:mod:`.discharge`)."""
from .material import PARAMETERS, DEMMaterial
from .walls import BoxWall, CylinderWall, MeshWall, PlaneWall, Wall
from .insertion import Pour, random_packing
from .solver import DEMSolver
from .discharge import HopperDischarge, discharge_figures, flow_regime

__all__ = ["PARAMETERS", "BoxWall", "CylinderWall", "DEMMaterial", "DEMSolver", "HopperDischarge", "MeshWall", "PlaneWall", "Pour",
           "Wall", "discharge_figures", "flow_regime", "random_packing"]
