"""The interface every simulated system implements, and what a rollout returns."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

from .state import State


@dataclass
class Rollout:
    """What :func:`diffsim.rollout` returns, for every system.

    ``final``: the :class:`State` after the last substep; ``records``: ``[(substep,
    State)]`` every ``record_every`` substeps (same field names as ``final``);
    ``outputs``: what the system measures besides its state, e.g. FEM contact forces
    per record interval (``force``), driver poses, ``max_penetration``.
    ``final, records = ds.rollout(...)`` unpacks the first two."""

    final: State
    records: list = field(default_factory=list)
    outputs: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.final, self.records))

    def stacked(self, name: str):
        """One field of every record stacked along a new first axis (R, ...)."""
        import torch
        return torch.stack([s[name] for _, s in self.records])


class System(abc.ABC):
    """A simulated system: a solver (MPM, FEM, DEM), a coupling of two systems, or a
    learned step module. It owns its static description (the *model*: bodies, meshes,
    walls, materials), its current :class:`State` and a clock.

    Every system provides

    * ``dt`` (s, one substep), ``time`` (s), ``step_count`` (substeps since the start);
    * :meth:`step` (advance without gradients) and :meth:`reset` (back to ``t = 0`` and
      the state it was set up with);
    * :meth:`initial_state` and :meth:`current_state` as :class:`State` (torch);
    * :meth:`parameter_values`: its differentiable parameters by qualified name
      (``"jelly.E"``, ``"friction"``, ``"fem.pad.E"``) with their current values;
    * :meth:`control_names`: its per-substep actions (``"press.velocity"``);
    * :meth:`observed_positions`: the positions data observe in a state (default ``x``;
      a surrogate that evolves a sparse set returns its decoded dense points);
    * :meth:`_rollout`: the differentiable rollout behind :func:`diffsim.rollout`, which
      has already checked and resolved the arguments.

    Systems run by ``diffsim run`` also give ``frame()``, ``diagnostics()``,
    ``checkpoint()``/``restore()`` and ``describe()`` (see :class:`diffsim.Scene`).
    """

    #: keyword options of :func:`diffsim.rollout` this system accepts besides the common ones
    rollout_options: frozenset = frozenset()
    #: whether :func:`diffsim.rollout` may start at a substep > 0 (``start=``)
    starts_anywhere: bool = False

    @abc.abstractmethod
    def step(self, n: int = 1):
        """Advance ``n`` substeps (no gradients)."""

    @abc.abstractmethod
    def reset(self):
        """Back to ``t = 0`` and the state the system was set up with."""

    @abc.abstractmethod
    def initial_state(self) -> State:
        """The state at ``t = 0`` as set up (torch tensors, runtime precision)."""

    @abc.abstractmethod
    def current_state(self) -> State:
        """The state now (torch tensors, runtime precision, no gradient)."""

    @abc.abstractmethod
    def parameter_values(self) -> dict:
        """``{qualified name: float}`` of every differentiable parameter."""

    def control_names(self) -> list:
        """Names of the per-substep actions :func:`diffsim.rollout` accepts in ``control``."""
        return []

    def observed_positions(self, state: State):
        """The positions (N,3) that recorded data and the fitter compare, in ``state``
        (differentiable): the state's ``x`` unless the system says otherwise."""
        return state.x

    @abc.abstractmethod
    def _rollout(self, steps: int, state: State | None, params: dict, control: dict, record_every: int | None,
                 tape_memory: int | None, check_gradients: bool, **options) -> Rollout:
        """The differentiable rollout (arguments checked; ``params`` by qualified name)."""
