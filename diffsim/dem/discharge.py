"""Hopper and silo discharge figures: outflow rate, drainage time, residual mass and the
flow regime, from a run's traces.

:class:`HopperDischarge` is a scene *measure*: the runner asks it for extra trace columns
at every written frame (the near-wall and core descent speeds of a wedge hopper) and, at
the end, for the run's figures (``summary.json`` ``outputs``). The figures are computed
from the traces alone, so a resumed run reports the same figures as an uninterrupted one.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidScene
from .granular import flow_rate

STEADY = (0.2, 0.8)      # fractions of the finally discharged mass between which the rate is fitted
DRAINED = 0.99           # drainage time: when this fraction of the finally discharged mass has left
QUIET = 0.1              # s without outflow before the end of the run: the flow has stopped
MASS_FLOW_RATIO = 0.2    # near-wall / core descent speed at or above which the flow is mass flow


def discharge_figures(time, discharged_mass, total_mass: float, gate_time: float = 0.0) -> dict:
    """Figures of one discharge from its trace.

    Args:
        time: (T,) s, increasing. discharged_mass: (T,) kg left through the outlet by then.
        total_mass: kg in the container when the gate opened. gate_time: s the gate opened.

    Returns a dict: ``outflow_rate`` (kg/s, least-squares slope while the discharged mass
    lies between 20% and 80% of its final value), ``drainage_time`` (s after the gate opened
    until 99% of the finally discharged mass had left; None when the flow had not stopped
    ``QUIET`` s before the end), ``residual_mass_fraction`` (of ``total_mass`` still inside at
    the end), ``stopped`` (bool) and ``discharged_mass`` (kg, final)."""
    t = np.asarray(time, float)
    m = np.asarray(discharged_mass, float)
    if t.ndim != 1 or t.shape != m.shape or len(t) < 2:
        raise InvalidScene(f"discharge_figures: time and discharged_mass must be two 1-D traces of one length >= 2, "
                           f"got {t.shape} and {m.shape}")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(m))) or np.any(np.diff(t) <= 0):
        raise InvalidScene("discharge_figures: the traces must be finite and time strictly increasing")
    if np.any(np.diff(m) < -1e-12 * max(1.0, abs(m).max())):
        raise InvalidScene("discharge_figures: the discharged mass decreases; it is cumulative")
    if not total_mass > 0:
        raise InvalidScene(f"discharge_figures: total_mass must be > 0 kg, got {total_mass}")
    final = float(m[-1])
    out = {"discharged_mass": final, "residual_mass_fraction": max(0.0, 1.0 - final / total_mass),
           "outflow_rate": 0.0, "drainage_time": None, "stopped": False}
    if final <= 0:
        out["stopped"] = bool(t[-1] - gate_time >= QUIET)
        return out
    # the steady window: from the first frame past 20% of the final mass to the last frame below 80%
    t0 = t[int(np.argmax(m >= STEADY[0] * final))]
    t1 = t[np.nonzero(m <= STEADY[1] * final)[0][-1]] if np.any(m <= STEADY[1] * final) else t0
    if t1 <= t0:   # it all left between two frames: the rate is not resolved
        i = int(np.argmax(m >= STEADY[0] * final))
        t0, t1 = t[max(i - 1, 0)], t[min(i + 1, len(t) - 1)]
    out["outflow_rate"] = flow_rate(t, m, t0, t1)
    last_change = t[np.nonzero(m < final)[0][-1] + 1] if np.any(m < final) else t[0]
    out["stopped"] = bool(t[-1] - last_change >= QUIET)
    if out["stopped"]:
        out["drainage_time"] = float(t[int(np.argmax(m >= DRAINED * final))] - gate_time)
    return out


def flow_regime(wall_speed, core_speed, discharged_fraction) -> dict:
    """Mass or funnel flow from the descent speeds of the spheres by the walls and in the
    core (lower half of the bed, see :meth:`HopperDischarge.trace`) while 25-75% of the
    finally discharged mass has left: mass flow when the median ratio is at least
    ``MASS_FLOW_RATIO`` (the bed moves along the walls), funnel flow otherwise (stagnant
    shoulders). ``{"regime", "wall_to_core_speed"}``; regime None without such frames."""
    w, c, f = (np.array([np.nan if a is None else a for a in arr], float)
               for arr in (wall_speed, core_speed, discharged_fraction))
    use = (f >= 0.25) & (f <= 0.75) & np.isfinite(w) & np.isfinite(c) & (c > 0)
    if not use.any():
        return {"regime": None, "wall_to_core_speed": None}
    ratio = float(np.median(w[use] / c[use]))
    return {"regime": "mass" if ratio >= MASS_FLOW_RATIO else "funnel", "wall_to_core_speed": ratio}


class HopperDischarge:
    """The discharge measure of a plane wedge hopper: panels at ``angle`` degrees from the
    vertical leaving a slot ``orifice`` wide at z = 0 (x across, z up), spheres of
    ``radius`` and ``total_mass`` (kg) in all; the gate opens at ``gate_time`` (s)."""

    columns = ("wall_speed", "core_speed")

    def __init__(self, angle: float, orifice: float, radius: float, total_mass: float, gate_time: float):
        self.angle, self.orifice, self.radius = float(angle), float(orifice), float(radius)
        self.total_mass, self.gate_time = float(total_mass), float(gate_time)

    def trace(self, solver) -> dict:
        """Mean descent speed (m/s, -v_z) of the active spheres in the lower half of the bed
        (above the slot's own height) within two diameters of a panel, and in the core
        (within half the slot's width of the axis); None where a set is empty."""
        st = solver.get_state()
        keep = st["active"]
        x, v = st["x"][keep], st["v"][keep]
        if len(x) == 0:
            return {"wall_speed": None, "core_speed": None}
        z = x[:, 2]
        band = (z > self.orifice) & (z < np.median(z))
        t, c = math.tan(math.radians(self.angle)), math.cos(math.radians(self.angle))
        to_panel = (0.5 * self.orifice + z * t - np.abs(x[:, 0])) * c
        wall = band & (to_panel < 4 * self.radius)
        core = band & (np.abs(x[:, 0]) < 0.5 * self.orifice)

        def mean(sel):
            return float(-v[sel, 2].mean()) if sel.any() else None
        return {"wall_speed": mean(wall), "core_speed": mean(core)}

    def figures(self, traces: dict) -> dict:
        """:func:`discharge_figures` and :func:`flow_regime` of the run's traces."""
        fig = discharge_figures(traces["time"], traces["discharged_mass"], self.total_mass, self.gate_time)
        fraction = np.asarray(traces["discharged_mass"], float) / max(fig["discharged_mass"], 1e-300)
        return {**fig, **flow_regime(traces["wall_speed"], traces["core_speed"], fraction)}
