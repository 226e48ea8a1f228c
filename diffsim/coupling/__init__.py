"""FEM bodies in contact with MPM material: the coupled system (:mod:`.system`) and its
differentiable rollout (:mod:`.rollout`)."""
from .system import FEMMPMCoupling

__all__ = ["FEMMPMCoupling"]
