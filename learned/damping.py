"""A learned step module, the worked example of ``docs/architecture.md``: particles under
gravity with a learned linear drag rate, one substep in pure torch.

    v' = (v + dt g) / (1 + dt c),    x' = x + dt v'        (c >= 0: drag rate, 1/s)

(implicit in the drag, so stable for any c dt). From rest the discrete solution is
``v_n = v_inf + (v_0 - v_inf) / (1 + c dt)^n`` with ``v_inf = g / c``, which the tests
check, and ``c`` is fitted from motion like any simulator parameter.
"""
from __future__ import annotations

import torch

from diffsim.core import State, StepModule


class LinearDamping(StepModule):
    """Free particles with learned linear drag ``rate`` (1/s) under ``gravity``.

    Args:
        x, v: initial positions (m) and velocities (m/s), (N,3).
        dt: substep (s). rate: initial drag rate (1/s, >= 0).
        mass, gravity, bounds: as :class:`diffsim.StepModule`.
    """

    # optional per substep: air velocity (3,) the drag acts against; forces (N,3) on the
    # particles from a coupling term (diffsim.FEMModuleCoupling)
    controls = ("wind.velocity", "contact.force")

    def __init__(self, x, v, dt: float, rate: float = 1.0, mass=1.0, gravity=(0.0, 0.0, -9.81), bounds=None):
        super().__init__(State(x=torch.as_tensor(x), v=torch.as_tensor(v)), dt, mass, gravity, bounds)
        if not rate >= 0:
            raise ValueError(f"LinearDamping: rate must be >= 0, got {rate}")
        self.rate = torch.nn.Parameter(torch.tensor(float(rate), dtype=self._initial.x.dtype))
        self.register_buffer("g", torch.tensor(self.gravity, dtype=self._initial.x.dtype))
        self.register_buffer("inv_mass", torch.tensor(1.0 / self.mass, dtype=self._initial.x.dtype)[:, None])

    def forward(self, state: State, control: dict, dt: float) -> State:
        wind = control.get("wind.velocity")
        v = state.v + dt * self.g
        force = control.get("contact.force")
        if force is not None:
            v = v + dt * self.inv_mass * force
        if wind is not None:
            v = v + dt * self.rate * wind
        v = v / (1.0 + dt * self.rate)
        return State(x=state.x + dt * v, v=v)
