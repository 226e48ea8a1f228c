"""MLS-MPM: the solver (:mod:`.solver`) and its differentiable rollout (:mod:`.rollout`)."""
from .solver import MPMSolver
from .rollout import MPMState, parameter_tensor

__all__ = ["MPMSolver", "MPMState", "parameter_tensor"]
