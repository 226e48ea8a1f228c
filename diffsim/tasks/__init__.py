"""Robotic tactile manipulation tasks (:mod:`.task`: the task API and controls) and their
optimisers (:mod:`.optimize`: full-horizon gradients, CMA-ES, PPO)."""
from .optimize import METHODS, optimize, write_result
from .task import (SplineControls, Task, TaskRun, bspline_basis, finger_slip_ratios, finger_traces, list_tasks,
                   load_task, sensor_trace, slip_ratio)

__all__ = ["Task", "TaskRun", "SplineControls", "bspline_basis", "load_task", "list_tasks", "optimize",
           "write_result", "METHODS", "sensor_trace", "slip_ratio",
           "finger_traces", "finger_slip_ratios"]
