"""The simulation protocol every system implements (MPM, FEM, DEM, their coupling and
learned step modules): :class:`State` (named tensors), :class:`System` (the interface),
:class:`Rollout` (what a differentiable rollout returns), :func:`rollout` (the one
differentiable rollout) and :class:`StepModule` (a torch module that is a system).
See ``docs/architecture.md``."""
from .state import State
from .system import Rollout, System
from .names import by_part, flatten, resolve
from .rollout import rollout
from .step_module import StepModule

__all__ = ["State", "System", "Rollout", "by_part", "flatten", "resolve", "rollout", "StepModule"]
