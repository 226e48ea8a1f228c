"""Robotic tactile manipulation tasks (:mod:`.task`: the task API and controls) and their
optimisers (:mod:`.optimize`: full-horizon gradients, CMA-ES, PPO)."""
from .optimize import METHODS, optimize, write_result
from .task import (SplineControls, Task, TaskRun, bspline_basis, list_tasks, load_task, sensor_trace,
                   slip_ratio)

__all__ = ["Task", "TaskRun", "SplineControls", "bspline_basis", "load_task", "list_tasks", "optimize",
           "write_result", "METHODS", "sensor_trace", "slip_ratio"]
