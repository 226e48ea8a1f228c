"""Sphere and wall material of the DEM (:class:`DEMMaterial`) and its differentiable parameter names."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidMaterial
from ..kernels import dem as kd


@dataclass(frozen=True)
class DEMMaterial:
    """Sphere (and wall) material, SI units.

    Args:
        E: Young's modulus (Pa). nu: Poisson's ratio.
        restitution: coefficient of restitution e in (0, 1].
        friction: sliding friction mu. rolling_friction: mu_r (constant directional torque).
        density: kg/m^3. cohesion: simplified-JKR energy density (J/m^3; 0: dry).
        model: ``"hertz"`` (Hertz-Mindlin, default) or ``"linear"`` (spring-dashpot with
            normal stiffness ``stiffness`` N/m and tangential 2/7 of it).
        rolling_smoothing: rad/s; 0 (default) is the exact constant-directional-torque
            model (as LIGGGHTS); w_c > 0 divides by max(|w_rel|, w_c) instead of |w_rel|,
            i.e. a viscous torque below w_c. The exact model's direction w/|w| chatters
            around rest and its derivative ~1/|w| is useless for gradients through resting
            contacts: use w_c a few times mu_r g dt / (0.4 R) there.
    """
    E: float = 5e6
    nu: float = 0.3
    restitution: float = 0.5
    friction: float = 0.5
    rolling_friction: float = 0.0
    density: float = 2500.0
    cohesion: float = 0.0
    model: str = "hertz"
    stiffness: float = 0.0
    rolling_smoothing: float = 0.0

    def __post_init__(self):
        def bad(msg):
            raise InvalidMaterial(f"DEMMaterial: {msg}")
        for name in ("E", "nu", "restitution", "friction", "rolling_friction", "density", "cohesion", "stiffness",
                     "rolling_smoothing"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(f"{name} must be a finite number, got {v!r}")
        if self.E <= 0:
            bad(f"Young's modulus E must be > 0 Pa, got {self.E}")
        if not -1 < self.nu < 0.5:
            bad(f"Poisson's ratio nu must be in (-1, 0.5), got {self.nu}")
        if not 0 < self.restitution <= 1:
            bad(f"restitution must be in (0, 1], got {self.restitution}")
        if self.friction < 0 or self.rolling_friction < 0:
            bad("friction and rolling_friction must be >= 0")
        if self.density <= 0:
            bad(f"density must be > 0 kg/m^3, got {self.density}")
        if self.cohesion < 0:
            bad(f"cohesion must be >= 0 J/m^3, got {self.cohesion}")
        if self.rolling_smoothing < 0:
            bad(f"rolling_smoothing must be >= 0 rad/s, got {self.rolling_smoothing}")
        if self.model not in ("hertz", "linear"):
            bad(f"model must be 'hertz' or 'linear', got {self.model!r}")
        if self.model == "linear" and not self.stiffness > 0:
            bad(f"the linear model needs stiffness > 0 N/m, got {self.stiffness}")

    @property
    def model_code(self) -> int:
        return kd.HERTZ if self.model == "hertz" else kd.LINEAR

    def vector(self, dt: float):
        """The kernels' parameter vector (E, nu, e, mu, mu_r, cohesion, k_n, dt, w_c)."""
        return [self.E, self.nu, self.restitution, self.friction, self.rolling_friction, self.cohesion,
                self.stiffness, dt, self.rolling_smoothing]

    def sphere_mass(self, radius):
        """Mass (kg) of spheres of ``radius`` (m; a number or an array)."""
        return self.density * 4.0 / 3.0 * np.pi * np.asarray(radius, float) ** 3

    def rayleigh_time(self, radius: float) -> float:
        """Rayleigh time (s) of a sphere of ``radius`` (m)."""
        G = self.E / (2 * (1 + self.nu))
        return math.pi * radius * math.sqrt(self.density / G) / (0.1631 * self.nu + 0.8766)

    def contact_time(self, radius: float) -> float:
        """Linear model: duration (s) of an undamped sphere-sphere contact, pi sqrt(m*/k_n)."""
        return math.pi * math.sqrt(0.5 * float(self.sphere_mass(radius)) / self.stiffness)


PARAMETERS = ("E", "nu", "restitution", "friction", "rolling_friction", "cohesion", "stiffness")
