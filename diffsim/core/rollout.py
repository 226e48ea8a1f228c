"""The one differentiable rollout, for every :class:`~diffsim.core.System`."""
from __future__ import annotations

from ..errors import InvalidScene
from .names import flatten, resolve
from .state import State
from .system import Rollout, System


def rollout(system: System, steps: int, state: State | None = None, params: dict | None = None,
            control: dict | None = None, record_every: int | None = None, tape_memory: int | None = None,
            check_gradients: bool = True, start: int = 0, **options) -> Rollout:
    """Run ``steps`` substeps of ``system`` differentiably.

    Where it starts: at substep ``start`` (default 0) of the system's own schedule: the
    system is reset (colliders, drivers, walls at their start) and, for ``start > 0``, its
    moving parts advanced to that substep; the particles start from ``state`` if given
    (e.g. tensors requiring grad), else from the state the system was set up with.
    Afterwards the system holds the (detached) final state at ``time = (start + steps) dt``.

    Args:
        system: an MPM, FEM or DEM solver, an FEM-MPM or FEM-module coupling, a
            :class:`StepModule`.
        steps: substeps (>= 1).
        state: the start :class:`State` (the system's field names; see
            ``system.initial_state()``).
        params: differentiable parameter overrides, tensors or numbers, by name:
            ``{"jelly.E": E}`` or ``{"jelly": {"E": E}}``; a short name (``{"E": E}``) sets
            it for every body or part that has it. ``system.parameter_values()`` lists them.
        control: per-substep actions by name, e.g. ``{"press.velocity": (steps, 3) tensor}``
            (``{"press": v}`` means its velocity); ``system.control_names()`` lists them.
        record_every: also return the state every that many substeps.
        tape_memory: bytes of substep tapes kept between the forward and the backward pass
            (the adjoint core's budget, :mod:`diffsim.core.adjoint`; default 1 GiB; 0
            recomputes every segment but the last). The FEM keeps one tape, its own rows.
        check_gradients: non-finite adjoints raise :class:`~diffsim.GradientNotFinite`
            naming the substep and stage (False skips the check).
        start: the substep the rollout begins at (MPM and step modules; needs ``state``).
        options: system-specific (MPM: ``checkpoint_every``), listed in
            ``system.rollout_options``.

    Returns a :class:`Rollout` (``final, records = ds.rollout(...)`` also works).
    """
    if not isinstance(system, System):
        raise InvalidScene(f"ds.rollout needs a diffsim system (MPMSolver, FEMSolver, DEMSolver, FEMMPMCoupling, "
                           f"FEMModuleCoupling "
                           f"or a StepModule), got {type(system).__name__}")
    steps = _positive_int("steps", steps)
    if record_every is not None:
        record_every = _positive_int("record_every", record_every)
    if tape_memory is not None and int(tape_memory) < 0:
        raise InvalidScene(f"tape_memory must be >= 0 bytes, got {tape_memory}")
    unknown = set(options) - set(system.rollout_options)
    if unknown:
        raise InvalidScene(f"ds.rollout: unknown option(s) {sorted(unknown)} for {type(system).__name__}; "
                           f"its options: {sorted(system.rollout_options) or 'none'}")
    if state is not None and not isinstance(state, State):
        raise InvalidScene(f"state must be a diffsim State (see system.initial_state()), got {type(state).__name__}")
    start = int(start)
    if start < 0:
        raise InvalidScene(f"start must be >= 0, got {start}")
    if start and state is None:
        raise InvalidScene("a rollout that starts at substep > 0 needs the state there (state=...)")
    if start and not system.starts_anywhere:
        raise NotImplementedError(f"{type(system).__name__}: a differentiable rollout starts at substep 0 (its "
                                  f"drivers' and walls' schedules are not offset yet)")
    params = resolve(params or {}, system.parameter_values(), "parameter")
    control = _controls(system, control)
    if start:
        options["start"] = start
    return system._rollout(steps, state, params, control, record_every, tape_memory, bool(check_gradients),
                           **options)


def _positive_int(name, value) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise InvalidScene(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _controls(system, control) -> dict:
    """``{"press": v}`` -> ``{"press.velocity": v}``; unknown names raise."""
    known = system.control_names()
    out = {}
    for name, value in flatten(control).items():
        if name not in known and f"{name}.velocity" in known:
            name = f"{name}.velocity"
        if name not in known:
            raise InvalidScene(f"unknown control {name!r}; this system has: {known or 'none'}")
        out[name] = value
    return out
