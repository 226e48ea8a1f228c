"""A hopper discharge run by a trained NeuralDEM, as a system (a step module): what
``scenes/dem_hopper.py --set solver=neuraldem`` runs in place of the DEM.

The state holds marker points (the fill's sphere centres) advected by the surrogate's
velocity field, their velocities, the time since the gate opened and the discharged mass
(the time integral of the surrogate's flux through the slot). One substep is one frame of
the training data. The conditions (``angle``, ``friction``, ``rolling_friction``) are the
module's parameters: :func:`diffsim.rollout` differentiates through them and the
:class:`~diffsim.Fitter` fits them like any simulator parameter.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffsim.core import State, StepModule
from diffsim.errors import InvalidScene

from .granular_fields import CONDITIONS
from .neuraldem import NeuralDEM


class HopperSurrogate(StepModule):
    """Args:
        model: a :class:`NeuralDEM` (or a path to one).
        markers: (N,3) m, the material's points when the gate opens (e.g. the fill).
        angle, friction, rolling_friction: the conditions (degrees, -, -).
        sphere_mass: kg per marker (diagnostics).
        extrapolate: accept conditions outside the trained range (with a warning).
    """

    def __init__(self, model, markers, angle: float, friction: float, rolling_friction: float,
                 sphere_mass: float, extrapolate: bool = False):
        from diffsim import runtime
        dtype = runtime.torch_dtype()
        model = NeuralDEM.load(model, dtype) if isinstance(model, (str, Path)) else model.to(dtype)
        markers = np.asarray(markers, np.float64)
        if markers.ndim != 2 or markers.shape[1] != 3 or not len(markers):
            raise InvalidScene(f"HopperSurrogate: markers must be (N,3) m, got {markers.shape}")
        conditions = dict(zip(CONDITIONS, (angle, friction, rolling_friction)))
        model.check_conditions(conditions, extrapolate)
        lo, hi, _, depth = model.stats["grid"]
        state = State(x=torch.as_tensor(markers), v=torch.zeros(len(markers), 3, dtype=torch.float64),
                      time=torch.zeros(1, dtype=torch.float64), discharged=torch.zeros(1, dtype=torch.float64))
        super().__init__(state, float(model.stats["frame_dt"]), mass=float(sphere_mass),
                         bounds=((lo[0], -depth, lo[1]), (hi[0], depth, hi[1])))
        self.model, self.extrapolate = model, bool(extrapolate)
        self.outlet_z = float(model.stats["outlet_z"])
        for name, value in conditions.items():
            setattr(self, name, nn.Parameter(torch.tensor(float(value), dtype=dtype)))
        for p in self.model.parameters():   # a trained surrogate: its weights are not fitted by default
            p.requires_grad_(False)
        slot, self.slot_dx = model.slot_points()
        self.register_buffer("slot", torch.as_tensor(slot, dtype=dtype))
        self.reset()

    def forward(self, state: State, control: dict, dt: float) -> State:
        """Midpoint step: the fields at t + dt/2 move the markers still inside and give the
        flux through the slot over the step."""
        cond = torch.stack([getattr(self, n) for n in CONDITIONS])[None].to(state.x.dtype)
        t = state.time + 0.5 * dt
        xz = torch.cat([state.x[:, [0, 2]], self.slot])[None]
        fields = self.model(cond, t, xz)[0]
        n = state.x.shape[0]
        occ, vx, vz = fields[:, 0], fields[:, 1], fields[:, 2]
        inside = (state.x[:, 2] >= self.outlet_z)[:, None]
        v = torch.stack([vx[:n], torch.zeros_like(vx[:n]), vz[:n]], -1)
        v = torch.where(inside, v, state.v)                       # markers that left keep falling
        x = state.x + dt * v
        flux = self.model.slot_flux(occ[n:], vz[n:], self.slot_dx)
        return State(x=x, v=v, time=state.time + dt, discharged=state.discharged + dt * flux)

    # ------------------------------------------------------------------ for diffsim run
    def get_state(self) -> dict:
        """``active``: the markers not yet below the outlet (as a DEM solver reports)."""
        return {"active": (self._state.x[:, 2] >= self.outlet_z).numpy()}

    def frame(self) -> dict:
        out = super().frame()
        x, data = out["particles"]
        keep = self.get_state()["active"]
        out["particles"] = (x[keep], {k: v[keep] for k, v in data.items()})
        return out

    def diagnostics(self) -> dict:
        d = super().diagnostics()
        active = self.get_state()["active"]
        d.update(particles_active=int(active.sum()), discharged_mass=float(self._state.discharged[0]))
        return d
