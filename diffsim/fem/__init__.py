"""FEM soft bodies: tetrahedral meshes (:mod:`.tetmesh`), the solver (:mod:`.solver`) and
its differentiable rollout (:mod:`.rollout`)."""
from .solver import Driver, FEMBody, FEMMaterial, FEMSolver, PenaltyContact

__all__ = ["Driver", "FEMBody", "FEMMaterial", "FEMSolver", "PenaltyContact"]
