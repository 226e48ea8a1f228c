"""Coupled systems: FEM bodies in contact with MPM material (:mod:`.system`, its
differentiable rollout :mod:`.rollout`: the FEM's and MPM's adjoint hooks composed with the
grid contact term), and an FEM body in contact with a torch step module (:mod:`.module`).
"""
from .module import FEMModuleCoupling, ParticleContact
from .system import FEMMPMCoupling

__all__ = ["FEMMPMCoupling", "FEMModuleCoupling", "ParticleContact"]
