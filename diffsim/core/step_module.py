"""A torch module that is a system: learned (or any pure-torch) step modules."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from .. import runtime
from ..errors import GradientNotFinite, InvalidScene, SimulationDiverged
from .state import State
from .system import Rollout, System


class StepModule(torch.nn.Module, System):
    """Base class of systems written in torch: one substep is :meth:`forward`, its
    gradients are torch's own. A subclass implements ``forward(state, control, dt) ->
    State`` (``control``: this substep's actions, ``{name: tensor}``) and may list
    ``controls`` (names of the actions it accepts, ``"actuator.quantity"``).

    Its ``torch.nn.Parameter``s are its differentiable parameters (by their names in
    ``named_parameters()``): :func:`diffsim.rollout` overrides them through ``params``
    (``torch.func.functional_call``) or, without overrides, trains them.

    Args:
        state: the initial :class:`State` (particle positions ``x`` (N,3) at least, for
            frames and diagnostics; ``v`` (N,3) for energies).
        dt: substep (s).
        mass: particle masses (kg), scalar or (N,), for diagnostics.
        gravity: (3,) m/s^2, for the potential energy in diagnostics (and for subclasses).
        bounds: ``(lo, hi)`` region shown in previews (default: the initial positions' box).
    """

    controls: tuple = ()
    rollout_options = frozenset({"checkpoint_every"})
    starts_anywhere = True

    def __init__(self, state: State, dt: float, mass=1.0, gravity=(0.0, 0.0, -9.81), bounds=None):
        torch.nn.Module.__init__(self)
        if not isinstance(state, State) or "x" not in state:
            raise InvalidScene("StepModule: state must be a diffsim State with particle positions 'x' (N,3)")
        if not dt > 0:
            raise InvalidScene(f"StepModule: dt must be > 0, got {dt}")
        dtype = runtime.torch_dtype()
        self._initial = state.map(lambda t: torch.as_tensor(t).detach().to(dtype).clone())
        self._state = self._initial
        self.dt = float(dt)
        self.n = int(self._initial.x.shape[0])
        m = np.broadcast_to(np.asarray(mass, np.float64), (self.n,))
        if not np.all(m > 0):
            raise InvalidScene("StepModule: masses must be > 0")
        self.mass = m.copy()
        self.gravity = np.asarray(gravity, np.float64).reshape(3)
        x0 = self._initial.x.detach().double().numpy()
        lo, hi = (x0.min(0), x0.max(0)) if bounds is None else (np.asarray(b, float) for b in bounds)
        pad = 0.05 * max(float(np.max(hi - lo)), 1e-9)
        self.lo, self.hi = lo - pad, hi + pad
        self.time, self.step_count = 0.0, 0

    # ---------------------------------------------------------------- the protocol
    def build(self):
        return self

    def control_names(self) -> list:
        return list(self.controls)

    def control_at(self, step: int) -> dict:
        """The actions of substep ``step`` when none are given (default: none)."""
        return {}

    def begin(self, state: State, parameters: dict) -> State:
        """The start state of a rollout from the set-up state ``state`` given the module's
        parameters (``{name: tensor}``, overrides applied). Default: ``state`` itself; a
        module whose parameters set its initial condition (e.g. an initial velocity to fit)
        overrides this. Not applied to a state passed to :func:`diffsim.rollout`."""
        return state

    def initial_state(self) -> State:
        with torch.no_grad():
            return self.begin(self._initial, dict(self.named_parameters())).detach()

    def current_state(self) -> State:
        return self._state

    def reset(self):
        self._state = self.initial_state()
        self.time, self.step_count = 0.0, 0

    def parameter_values(self) -> dict:
        return {k: float(p.detach()) if p.numel() == 1 else p.detach().clone() for k, p in self.named_parameters()}

    def step(self, n: int = 1):
        with torch.no_grad():
            for _ in range(int(n)):
                self._state = self(self._state, self.control_at(self.step_count), self.dt).detach()
                self.step_count += 1
                self.time += self.dt

    def _rollout(self, steps, state, params, control, record_every, tape_memory, check_gradients, start=0,
                 checkpoint_every=None) -> Rollout:
        self.reset()
        dtype = runtime.torch_dtype()
        shapes = {k: p.shape for k, p in self.named_parameters()}
        overrides = {k: torch.as_tensor(v).to(dtype).reshape(shapes[k]) for k, v in params.items()}
        st = self.begin(self._initial, {**dict(self.named_parameters()), **overrides}) if state is None \
            else state.map(lambda t: t.to(dtype))
        control = {k: torch.as_tensor(v).to(dtype) for k, v in control.items()}

        def one(s, k):
            c = {name: (v[k - start] if v.dim() > 1 else v) for name, v in control.items()} if control \
                else self.control_at(k)
            if overrides:
                return torch.func.functional_call(self, overrides, (s, c, self.dt))
            return self(s, c, self.dt)

        def segment(a, b, *tensors):
            s = st._new(dict(zip(st, tensors)))
            for k in range(a, b):
                s = one(s, k)
            return tuple(s[name] for name in st)

        K = int(checkpoint_every) if checkpoint_every else max(1, int(math.ceil(math.sqrt(steps))))
        cuts = set(range(0, steps, K)) | {steps} | (set(range(0, steps, record_every)) if record_every else set())
        cuts = sorted(cuts)
        tensors, records = tuple(st[name] for name in st), []
        for a, b in zip(cuts[:-1], cuts[1:]):
            if torch.is_grad_enabled() and b - a > 1:
                tensors = _checkpoint(segment, start + a, start + b, *tensors, use_reentrant=False)
            else:
                tensors = segment(start + a, start + b, *tensors)
            if check_gradients:
                tensors = tuple(_guard(t, b, type(self).__name__) for t in tensors)
            if record_every and b % record_every == 0:
                records.append((b, st._new(dict(zip(st, tensors)))))
        final = st._new(dict(zip(st, tensors)))
        self._state = final.detach()
        self.time, self.step_count = (start + steps) * self.dt, start + steps
        return Rollout(final, records)

    # ---------------------------------------------------------------- for diffsim run
    def velocities(self, state: State) -> torch.Tensor:
        """Particle velocities (N,3) m/s of ``state`` for frames and diagnostics: its ``v``,
        zero without one; a module whose state holds velocities otherwise overrides this."""
        return state["v"] if "v" in state else torch.zeros_like(state.x)

    def frame(self) -> dict:
        x = self._state.x.detach().double().numpy()
        v = self.velocities(self._state).detach().double().numpy()
        return {"particles": (x, {"body": np.zeros(self.n, np.int32), "velocity": v.astype(np.float32)}),
                "meshes": {}}

    def diagnostics(self) -> dict:
        x = self._state.x.detach().double().numpy()
        v = self.velocities(self._state).detach().double().numpy()
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(v))):
            raise SimulationDiverged(self.step_count, "state", f"NaN/inf in the state of {type(self).__name__}")
        m = self.mass
        kinetic = 0.5 * float(m @ (v * v).sum(1))
        potential = -float(m @ (x @ self.gravity))
        speed = float(np.linalg.norm(v, axis=1).max()) if self.n else 0.0
        return {"time": self.time, "step": self.step_count, "kinetic": kinetic, "potential": potential,
                "elastic": 0.0, "energy": kinetic + potential, "momentum": (m @ v).tolist(), "max_speed": speed}

    def checkpoint(self):
        arrays = {k: t.detach().double().numpy() for k, t in self._state.items()}
        arrays.update({f"parameter:{k}": p.detach().double().numpy() for k, p in self.named_parameters()})
        return arrays, {"time": self.time, "step": self.step_count, "n": self.n}

    def restore(self, arrays, meta):
        if int(meta["n"]) != self.n:
            raise InvalidScene(f"checkpoint holds {meta['n']} particles, the module has {self.n}")
        dtype = runtime.torch_dtype()
        self._state = self._initial._new({k: torch.as_tensor(arrays[k]).to(dtype) for k in self._initial})
        with torch.no_grad():
            for k, p in self.named_parameters():
                p.copy_(torch.as_tensor(arrays[f"parameter:{k}"]).to(p.dtype))
        self.time, self.step_count = float(meta["time"]), int(meta["step"])

    def describe(self) -> dict:
        return {"solver": f"step module {type(self).__name__}", "particles": self.n, "dt": self.dt,
                "parameters": {k: v for k, v in self.parameter_values().items() if isinstance(v, float)}}


def _guard(t: torch.Tensor, substep: int, module: str) -> torch.Tensor:
    """``t`` with a backward hook raising :class:`GradientNotFinite` if its adjoint is not finite."""
    if not t.requires_grad:
        return t

    def check(g):
        if not torch.isfinite(g).all():
            row = int((~torch.isfinite(g.reshape(g.shape[0], -1))).any(1).nonzero()[0, 0]) if g.dim() else 0
            raise GradientNotFinite(substep, f"step module {module}", f"particle {row}")
        return g
    t = t.view_as(t)
    t.register_hook(check)
    return t
