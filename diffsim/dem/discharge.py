"""Hopper and silo discharge figures: outflow rate, drainage time, residual mass and the
flow regime, from a run's traces.

Flow regime, by the order in which material leaves: in mass flow the whole bed descends
and what went in first (the bottom) comes out first, the lower material along the walls
included; in funnel flow a channel above the orifice drains the top first while the
material on the walls' lower part (the shoulders) waits, first in, last out. The *exit-order
ratio* is the mean time to leave of the shoulders (the lower half of the bed within two
diameters of a wall) over that of the top of the core (the top quarter of the bed above
the orifice): under 1 mass flow, from 1 funnel flow. On the 60-run hopper dataset
(docs/neuraldem.md) the ratio grows steadily with the wall angle, from 0.46 at 11 deg to
2.2 at 70 deg, and crosses 1 at 34.8-34.9 deg (22 mass-flow and 38 funnel-flow runs);
runs near the crossing are borderline by nature.

:class:`HopperDischarge` is a scene *measure*: the runner asks it for extra trace columns
at every written frame (the fractions of the two sets still inside) and, at the end, for
the run's figures (``summary.json`` ``outputs``). The figures come from the traces alone,
so a resumed run reports the same figures as an uninterrupted one.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidScene
from .granular import flow_rate

STEADY = (0.2, 0.8)      # fractions of the finally discharged mass between which the rate is fitted
DRAINED = 0.99           # drainage time: when this fraction of the finally discharged mass has left
QUIET = 0.1              # s without outflow before the end of the run: the flow has stopped
ROUNDING = 1e-4         # residual fractions below this are round-off of float32 mass sums
FUNNEL_ORDER = 1.0       # exit-order ratio from which the flow is funnel flow


def discharge_figures(time, discharged_mass, total_mass: float, gate_time: float = 0.0) -> dict:
    """Figures of one discharge from its trace.

    Args:
        time: (T,) s, increasing. discharged_mass: (T,) kg left through the outlet by then.
        total_mass: kg in the container when the gate opened. gate_time: s the gate opened.

    Returns a dict: ``outflow_rate`` (kg/s, least-squares slope while the discharged mass
    lies between 20% and 80% of its final value), ``drainage_time`` (s after the gate opened
    until 99% of the finally discharged mass had left; None when the flow had not stopped
    ``QUIET`` s before the end), ``residual_mass_fraction`` (of ``total_mass`` still inside at
    the end; under 1e-4, the round-off of float32 sums, it is 0), ``stopped`` (bool) and ``discharged_mass`` (kg, final)."""
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
    residual = 1.0 - final / total_mass
    out = {"discharged_mass": final, "residual_mass_fraction": residual if residual > ROUNDING else 0.0,
           "outflow_rate": 0.0, "drainage_time": None, "stopped": False}
    if final <= 0:
        out["stopped"] = bool(t[-1] - gate_time >= QUIET)
        return out
    # the steady window: from the first frame past 20% of the final mass to the last frame below 80%
    i = int(np.argmax(m >= STEADY[0] * final))
    t0 = t[i]
    t1 = t[np.nonzero(m <= STEADY[1] * final)[0][-1]] if np.any(m <= STEADY[1] * final) else t0
    if t1 <= t0:   # it all left between two frames: the rate is not resolved
        t0, t1 = t[max(i - 1, 0)], t[min(i + 1, len(t) - 1)]
    out["outflow_rate"] = flow_rate(t, m, t0, t1)
    last_change = t[np.nonzero(m < final)[0][-1] + 1] if np.any(m < final) else t[0]
    out["stopped"] = bool(t[-1] - last_change >= QUIET)
    if out["stopped"]:
        out["drainage_time"] = float(t[int(np.argmax(m >= DRAINED * final))] - gate_time)
    return out


def order_sets(points, angle: float, orifice: float, radius: float, weights=None):
    """Boolean masks (shoulders, top) of the material at ``points`` (N, 3) or (N, 2) as
    (x, z) in a wedge hopper (panels at ``angle`` deg from the vertical, slot ``orifice``
    wide at z = 0): shoulders, heights between min(orifice, half the median height) and the
    median, within two diameters of a panel; top, above the 75th percentile of height in the
    central half of the bed's width. Percentiles weighted by ``weights``
    (e.g. occupancy) when given."""
    p = np.asarray(points, float)
    w = np.ones(len(p)) if weights is None else np.asarray(weights, float)
    x, z = p[:, 0], p[:, -1]
    order = np.argsort(z)
    cum = np.cumsum(w[order]) / max(w.sum(), 1e-300)
    median, upper = (z[order][min(int(np.searchsorted(cum, q)), len(z) - 1)] for q in (0.5, 0.75))
    t, c = math.tan(math.radians(angle)), math.cos(math.radians(angle))
    shoulders = (z > min(orifice, 0.5 * median)) & (z < median) & ((0.5 * orifice + z * t - np.abs(x)) * c < 4 * radius)
    top = (z > upper) & (np.abs(x) < 0.5 * (0.5 * orifice + z * t))
    return shoulders, top


def flow_regime(time, shoulders_inside, top_inside, gate_time: float = 0.0) -> dict:
    """Regime from the fractions of the shoulders and of the top (see :func:`order_sets`)
    still inside at each time: their mean times to leave are the integrals of those
    fractions from the gate's opening (censored at the end of the run).
    ``{"regime": "mass" | "funnel" | None, "exit_order_ratio"}``."""
    t = np.asarray(time, float)
    a = np.array([np.nan if v is None else v for v in shoulders_inside], float)
    b = np.array([np.nan if v is None else v for v in top_inside], float)
    use = (t >= gate_time) & np.isfinite(a) & np.isfinite(b)
    if use.sum() < 2:
        return {"regime": None, "exit_order_ratio": None}
    ta, tb = (float(np.trapezoid(f[use], t[use])) for f in (a, b))
    if not tb > 0:
        return {"regime": None, "exit_order_ratio": None}
    ratio = ta / tb
    return {"regime": "funnel" if ratio >= FUNNEL_ORDER else "mass", "exit_order_ratio": ratio}


class HopperDischarge:
    """The discharge measure of a plane wedge hopper: panels at ``angle`` degrees from the
    vertical leaving a slot ``orifice`` wide at z = 0 (x across, z up), spheres of
    ``radius`` and ``total_mass`` (kg) in all, filled at ``initial_positions`` (N, 3) (the
    shoulders and the top are chosen there, see :func:`order_sets`); the gate opens at
    ``gate_time`` (s)."""

    columns = ("shoulders_inside", "top_inside")

    def __init__(self, angle: float, orifice: float, radius: float, total_mass: float, gate_time: float,
                 initial_positions):
        self.angle, self.orifice, self.radius = float(angle), float(orifice), float(radius)
        self.total_mass, self.gate_time = float(total_mass), float(gate_time)
        self.shoulders, self.top = order_sets(initial_positions, angle, orifice, radius)
        if not self.shoulders.any() or not self.top.any():
            raise InvalidScene("HopperDischarge: the bed is too small to have shoulders and a top; add spheres")

    def trace(self, solver) -> dict:
        """Fractions of the shoulders and of the top still inside."""
        active = solver.get_state()["active"]
        return {"shoulders_inside": float(active[self.shoulders].mean()), "top_inside": float(active[self.top].mean())}

    def figures(self, traces: dict) -> dict:
        """:func:`discharge_figures` and :func:`flow_regime` of the run's traces."""
        fig = discharge_figures(traces["time"], traces["discharged_mass"], self.total_mass, self.gate_time)
        return {**fig, **flow_regime(traces["time"], traces["shoulders_inside"], traces["top_inside"], self.gate_time)}
