"""Manipulation tasks: a scene, a control parameterisation, a loss and a success test, so
that one task serves gradient-based optimisation, CMA-ES and RL alike.

    task = load_task("surface_following")             # scenes/task_surface_following.py
    theta = task.initial_controls()                   # (waypoints, dofs), normalised units
    run = task.run(theta)                             # the rollout and what the task observes
    loss, ok = task.loss(run), task.success(run)      # differentiable loss, bool

Controls. A task's drivers (the FEM pads' back plates) take 6-DoF velocities ``[v (m/s),
w (rad/s)]`` per record interval. :class:`SplineControls` maps a small parameter array
``theta`` (``waypoints x dofs``, dimensionless) onto them: the task's nominal velocity
profile plus ``scale x`` a clamped cubic B-spline through the waypoints (``waypoints=None``:
one value per record interval, i.e. per-step control). ``theta = 0`` is the nominal
profile. The same ``theta`` is what CMA-ES searches and what an RL policy's actions set.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidScene


def bspline_basis(records: int, waypoints: int, degree: int = 3) -> np.ndarray:
    """(records, waypoints) clamped uniform B-spline basis sampled at the record
    intervals' midpoints: rows sum to 1, the first and last waypoints are reached at the
    ends (degree is lowered for few waypoints)."""
    if waypoints < 1 or records < 1:
        raise InvalidScene(f"spline controls need >= 1 waypoint and record, got {waypoints}, {records}")
    if waypoints == 1:
        return np.ones((records, 1))
    from scipy.interpolate import BSpline
    k = min(int(degree), waypoints - 1)
    inner = np.linspace(0.0, 1.0, waypoints - k + 1)
    knots = np.concatenate([np.zeros(k), inner, np.ones(k)])
    s = (np.arange(records) + 0.5) / records
    return BSpline.design_matrix(s, knots, k).toarray()


@dataclass
class SplineControls:
    """Which driver DoFs a task controls and how ``theta`` becomes velocities.

    ``dofs``: ``[(driver name, dof index 0..5), ...]`` (0-2 linear velocity, 3-5 angular);
    ``records``: record intervals of the rollout; ``waypoints``: spline waypoints (None:
    per-step, one per record interval); ``scale``: velocity (m/s or rad/s) of one unit of
    ``theta`` (a number or one per dof); ``nominal``: ``{driver: (records, 6) array}``
    base profile (missing drivers: zero); ``bound``: ``|theta|`` limit used by CMA-ES and
    RL (the gradient method may leave it, the physics has its own limits); ``span``:
    ``(first, stop)`` record intervals the spline acts on (default all; outside it the
    nominal profile alone, e.g. a fixed approach before the controlled phase).
    """
    dofs: list
    records: int
    waypoints: int | None = 8
    scale: object = 0.01
    nominal: dict = field(default_factory=dict)
    bound: float = 3.0
    span: tuple | None = None

    def __post_init__(self):
        if not self.dofs:
            raise InvalidScene("a task needs at least one controlled dof")
        for name, k in self.dofs:
            if not 0 <= int(k) <= 5:
                raise InvalidScene(f"control dof of {name!r} must be 0..5, got {k}")
        first, stop = (0, self.records) if self.span is None else (int(self.span[0]), int(self.span[1]))
        if not 0 <= first < stop <= self.records:
            raise InvalidScene(f"control span must satisfy 0 <= first < stop <= {self.records}, got {self.span}")
        n = stop - first if self.waypoints is None else int(self.waypoints)
        self.basis = np.zeros((self.records, n))
        self.basis[first:stop] = np.eye(n) if self.waypoints is None else bspline_basis(stop - first, n)
        self.scales = np.broadcast_to(np.asarray(self.scale, np.float64), (len(self.dofs),)).copy()
        for name, prof in self.nominal.items():
            if np.shape(prof) != (self.records, 6):
                raise InvalidScene(f"nominal profile of {name!r} must be ({self.records}, 6), got {np.shape(prof)}")

    @property
    def shape(self) -> tuple:
        return (self.basis.shape[1], len(self.dofs))

    def drivers(self) -> list:
        return sorted({name for name, _ in self.dofs} | set(self.nominal))

    def velocities(self, theta: torch.Tensor) -> dict:
        """``{driver: (records, 6) tensor}`` for ``theta`` (shape :attr:`shape`)."""
        if tuple(theta.shape) != self.shape:
            raise InvalidScene(f"controls must have shape {self.shape} (waypoints x dofs), got {tuple(theta.shape)}")
        dt = theta.dtype
        path = torch.as_tensor(self.basis, dtype=dt) @ (theta * torch.as_tensor(self.scales, dtype=dt))
        out = {name: torch.as_tensor(np.asarray(self.nominal.get(name, np.zeros((self.records, 6)))), dtype=dt)
               for name in self.drivers()}
        for j, (name, k) in enumerate(self.dofs):
            col = torch.zeros(6, dtype=dt)
            col[int(k)] = 1.0
            out[name] = out[name] + path[:, j:j + 1] * col
        return out


@dataclass
class TaskRun:
    """One rollout of a task: the controls, the :class:`~diffsim.core.Rollout` and what the
    task observed (``observed``: named tensors, differentiable where the rollout was)."""
    theta: torch.Tensor
    rollout: object
    observed: dict


class Task(abc.ABC):
    """A manipulation task (see the module docstring). Subclasses set ``system`` (a diffsim
    system), ``controls`` (:class:`SplineControls`), ``steps`` and ``record_every`` and
    implement :meth:`observe`, :meth:`loss` and :meth:`success`."""

    name = "task"
    system = None
    controls: SplineControls = None
    steps: int = 0
    record_every: int = 1
    #: parameter overrides every rollout uses (e.g. {"E": ...}); tensors or numbers
    params: dict = {}

    def initial_controls(self, dtype=None) -> torch.Tensor:
        """The nominal profile (``theta = 0``)."""
        from .. import runtime
        return torch.zeros(self.controls.shape, dtype=dtype or runtime.torch_dtype())

    def run(self, theta: torch.Tensor) -> TaskRun:
        """Roll the task out under ``theta`` (differentiable when ``theta`` requires grad)."""
        from ..core.rollout import rollout
        vel = self.controls.velocities(theta)
        out = rollout(self.system, self.steps, record_every=self.record_every, params=self.params,
                      control={name: v for name, v in vel.items()})
        return TaskRun(theta, out, self.observe(out))

    def evaluate(self, theta: torch.Tensor) -> tuple:
        """``(loss, success)`` of one forward rollout without gradients (what CMA-ES and RL
        see); a non-finite loss is returned as it is."""
        with torch.no_grad():
            run = self.run(theta)
            return float(self.loss(run)), self.success(run)

    @abc.abstractmethod
    def observe(self, rollout) -> dict:
        """Named tensors the loss and success test use (sensor readings, object state)."""

    @abc.abstractmethod
    def loss(self, run: TaskRun) -> torch.Tensor:
        """Differentiable scalar, lower is better."""

    @abc.abstractmethod
    def success(self, run: TaskRun) -> bool:
        """The task's success criterion (stated in the scene's docstring)."""

    def metrics(self, run: TaskRun) -> dict:
        """Floats for result files (default: none besides loss and success)."""
        return {}

    def describe(self) -> dict:
        return {"task": self.name, "steps": self.steps, "record_every": self.record_every,
                "controls": {"dofs": [[n, int(k)] for n, k in self.controls.dofs],
                             "span": None if self.controls.span is None else list(self.controls.span),
                             "waypoints": self.controls.waypoints, "shape": list(self.controls.shape),
                             "scale": self.controls.scales.tolist(), "bound": self.controls.bound}}


def sensor_trace(rollout, sensor) -> dict:
    """A tactile sensor's readings at every record of a task's rollout (of its FEM solver,
    alone or inside an FEM-MPM coupling): ``{"normal": (records,), "shear": (records,)}``,
    the normal force and the magnitude of the shear force (N), differentiable."""
    o = rollout.outputs
    d = sensor.solver.drivers.index(sensor.driver)
    normal, shear = [], []
    for r, (_, state) in enumerate(rollout.records):
        x = state["fem"]["x"] if "fem" in state else state["x"]
        read = sensor.read(x, o["force"][r], o["driver_translation"][r, d], o["driver_rotation"][r, d])
        normal.append(read["normal_force"])
        shear.append(torch.linalg.vector_norm(read["shear_force"]))
    return {"normal": torch.stack(normal), "shear": torch.stack(shear)}


def finger_traces(rollout, sensors) -> dict:
    """:func:`sensor_trace` of several sensors (a gripper's fingers) as
    ``{"<sensor>_normal": ..., "<sensor>_shear": ...}``."""
    out = {}
    for sensor in sensors:
        trace = sensor_trace(rollout, sensor)
        out[f"{sensor.name}_normal"], out[f"{sensor.name}_shear"] = trace["normal"], trace["shear"]
    return out


def slip_ratio(shear: torch.Tensor, normal: torch.Tensor, friction: float) -> torch.Tensor:
    """DiffTactile's slip measure ``|shear| / (friction x normal force)``: about 1 when the
    contact slides, below while it sticks (a normal force under 1 uN counts as 1 uN)."""
    return shear / (friction * normal.clamp(min=1e-6))


def finger_slip_ratios(observed: dict, sensors, friction: float, first: int = 0) -> torch.Tensor:
    """(fingers, records from ``first``) :func:`slip_ratio` of the traces
    :func:`finger_traces` put into ``observed``."""
    return torch.stack([slip_ratio(observed[f"{s.name}_shear"][first:], observed[f"{s.name}_normal"][first:],
                                   friction) for s in sensors])


def load_task(name_or_path, options: dict | None = None) -> Task:
    """A task from a scene script's ``task(**options)`` (``"surface_following"`` finds
    ``scenes/task_surface_following.py``; a path works too)."""
    import inspect
    from ..scene import check_option_types, load_script, scenes_dir
    p = Path(str(name_or_path))
    if not p.suffix and not p.exists() and (Path(scenes_dir()) / f"task_{p.name}.py").exists():
        p = Path(scenes_dir()) / f"task_{p.name}.py"
    module = load_script(str(p))
    if not hasattr(module, "task"):
        raise InvalidScene(f"{p}: not a task script (it has no task() function); tasks: {list_tasks()}")
    options = dict(options or {})
    sig = inspect.signature(module.task)
    unknown = [k for k in options if k not in sig.parameters]
    if unknown:
        raise InvalidScene(f"task {p.stem} has no option(s) {unknown}; available: {list(sig.parameters)}")
    task = module.task(**check_option_types(sig, options, p.name))
    if not isinstance(task, Task):
        raise InvalidScene(f"{p}: task() must return a diffsim Task, got {type(task).__name__}")
    return task


def list_tasks() -> list:
    """Names of the built-in tasks (``scenes/task_*.py``)."""
    from ..scene import scenes_dir
    return sorted(q.stem[len("task_"):] for q in Path(scenes_dir()).glob("task_*.py"))
