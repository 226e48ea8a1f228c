"""MPM materials: small validated dataclasses in SI units.

Every material knows its solver code, its density (kg/m^3), the speed of its fastest
elastic wave (m/s, for the time-step check) and how to turn its parameters into the
per-particle parameter 4-vector of :mod:`diffsim.kernels.constitutive` *in torch*, so
that gradients with respect to E, nu, yield stress, friction angle, viscosity, ... are
ordinary torch gradients.

Angles are in radians.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from .errors import InvalidMaterial
from .kernels import constitutive as K


def _check(cond: bool, material: str, message: str) -> None:
    if not cond:
        raise InvalidMaterial(f"{material}: {message}")


def _finite(name, value, material):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidMaterial(f"{material}: {name} must be a number, got {value!r}") from None
    _check(math.isfinite(v), material, f"{name} must be finite, got {value!r}")
    return v


def scalar_override(owner: str, name: str, value) -> torch.Tensor:
    """A parameter override as a 0-d float tensor: a number, a 0-d or a one-element tensor
    (gradients flow through the reshape); anything else raises :class:`InvalidMaterial`
    naming ``owner`` (the material class) and the parameter."""
    t = value if torch.is_tensor(value) else torch.tensor(_finite(name, value, owner), dtype=torch.float64)
    if t.numel() != 1:
        raise InvalidMaterial(f"{owner}: the override of {name} must be a number, a 0-d or a one-element "
                              f"tensor, got shape {tuple(t.shape)}")
    return (t if t.is_floating_point() else t.to(torch.float64)).reshape(())


def lame(E, nu):
    """Lame parameters ``(mu, lam)`` in Pa from Young's modulus ``E`` (Pa) and Poisson's ratio."""
    mu = E / (2.0 * (1.0 + nu))
    lam = E * nu / ((1.0 + nu) * (1.0 - 2.0 * nu))
    return mu, lam


class Material:
    """Base class. Subclasses are frozen dataclasses with a ``density`` field (kg/m^3)."""

    code: int = -1
    #: names of the parameters that :meth:`parameter_vector` accepts as torch overrides
    differentiable: tuple[str, ...] = ()

    def __post_init__(self):
        name = type(self).__name__
        _check(_finite("density", self.density, name) > 0, name,
               f"density must be > 0 kg/m^3, got {self.density}")
        self.validate()

    def validate(self) -> None:  # pragma: no cover - overridden
        pass

    def wave_speed(self) -> float:
        """Speed of the fastest elastic wave (m/s) used by the time-step check."""
        raise NotImplementedError

    def viscosity_limit(self) -> float:
        """Largest (effective) kinematic viscosity in m^2/s, for the explicit diffusion limit."""
        return 0.0

    def values(self, overrides: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """Parameter values as 0-d float64 tensors, with ``overrides`` (tensors) in place.

        Overrides are validated like the constructor's arguments (same messages): each is a
        number, a 0-d or a one-element tensor, and the material they describe must be valid
        (:meth:`with_overrides`)."""
        overrides = self._override_tensors(overrides)
        if overrides:
            self.with_overrides(overrides)
        out = {}
        for name in self.differentiable:
            if name in overrides:
                out[name] = overrides[name]
            else:
                out[name] = torch.tensor(float(getattr(self, name)), dtype=torch.float64)
        return out

    def _override_tensors(self, overrides) -> dict[str, torch.Tensor]:
        """Overrides as 0-d tensors (numbers, 0-d and one-element tensors accepted)."""
        mname = type(self).__name__
        overrides = dict(overrides or {})
        unknown = set(overrides) - set(self.differentiable)
        if unknown:
            raise InvalidMaterial(
                f"{mname}: cannot differentiate/override {sorted(unknown)}; "
                f"available: {list(self.differentiable)}")
        return {name: scalar_override(mname, name, t) for name, t in overrides.items()}

    def with_overrides(self, overrides: dict[str, Any] | None = None) -> "Material":
        """This material with the (float values of the) overrides, validated by the
        constructor: raises :class:`InvalidMaterial` naming the parameter and its range."""
        overrides = self._override_tensors(overrides)
        if not overrides:
            return self
        import dataclasses
        return dataclasses.replace(self, **{k: float(v.detach()) for k, v in overrides.items()})

    def parameter_vector(self, overrides: dict[str, Any] | None = None) -> torch.Tensor:
        """The solver's 4-vector of per-particle parameters (see kernels.constitutive)."""
        raise NotImplementedError

    def describe(self) -> dict:
        d = {"model": type(self).__name__}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (int, float, str, bool)):
                d[f.name] = v
        return d


class _Elastic(Material):
    def _check_elastic(self):
        name = type(self).__name__
        _check(_finite("E", self.E, name) > 0, name, f"Young's modulus E must be > 0 Pa, got {self.E}")
        nu = _finite("nu", self.nu, name)
        _check(-1.0 < nu < 0.5, name, f"Poisson's ratio nu must be in (-1, 0.5), got {nu}")

    def wave_speed(self):
        mu, lam = lame(self.E, self.nu)
        return math.sqrt((lam + 2 * mu) / self.density)


@dataclass(frozen=True)
class FixedCorotated(_Elastic):
    """Fixed-corotated hyperelasticity (Stomakhin et al. 2012): jelly, rubber, soft bodies.

    E: Young's modulus (Pa); nu: Poisson's ratio; density: kg/m^3.
    """
    E: float = 1e5
    nu: float = 0.3
    density: float = 1000.0
    code = K.FIXED_COROTATED
    differentiable = ("E", "nu")

    def validate(self):
        self._check_elastic()

    def parameter_vector(self, overrides=None):
        p = self.values(overrides)
        mu, lam = lame(p["E"], p["nu"])
        z = torch.zeros((), dtype=mu.dtype)
        return torch.stack([mu, lam, z, z])


@dataclass(frozen=True)
class NeoHookean(FixedCorotated):
    """Compressible Neo-Hookean hyperelasticity. E (Pa), nu, density (kg/m^3)."""
    code = K.NEO_HOOKEAN


@dataclass(frozen=True)
class VonMises(_Elastic):
    """Elastoplastic metal/plasticine: Hencky (log) strain elasticity with a von Mises yield
    surface on the Kirchhoff stress (perfect plasticity, return mapping in log-strain space).

    E (Pa), nu, yield_stress (Pa, deviatoric Kirchhoff stress norm at yield / sqrt(1)),
    density (kg/m^3).
    """
    E: float = 2e5
    nu: float = 0.3
    yield_stress: float = 1e3
    density: float = 1000.0
    code = K.VON_MISES
    differentiable = ("E", "nu", "yield_stress")

    def validate(self):
        self._check_elastic()
        _check(_finite("yield_stress", self.yield_stress, "VonMises") > 0, "VonMises",
               f"yield_stress must be > 0 Pa, got {self.yield_stress}")

    def parameter_vector(self, overrides=None):
        p = self.values(overrides)
        mu, lam = lame(p["E"], p["nu"])
        return torch.stack([mu, lam, p["yield_stress"].to(mu.dtype), torch.zeros((), dtype=mu.dtype)])


@dataclass(frozen=True)
class DruckerPrager(_Elastic):
    """Granular material (sand): Hencky elasticity with a Drucker-Prager yield cone
    (Klar et al. 2016).

    E (Pa), nu, friction_angle (rad, internal friction phi), cohesion (Pa: the hydrostatic
    tension the material sustains; 0 for dry sand), density (kg/m^3, bulk).
    """
    E: float = 3.5e5
    nu: float = 0.3
    friction_angle: float = math.radians(30.0)
    cohesion: float = 0.0
    density: float = 1600.0
    code = K.DRUCKER_PRAGER
    differentiable = ("E", "nu", "friction_angle", "cohesion")

    def validate(self):
        self._check_elastic()
        phi = _finite("friction_angle", self.friction_angle, "DruckerPrager")
        _check(0.0 < phi < math.pi / 2, "DruckerPrager",
               f"friction_angle must be in (0, pi/2) rad, got {phi} (angles are in radians: "
               f"30 degrees is {math.radians(30):.4f})")
        _check(_finite("cohesion", self.cohesion, "DruckerPrager") >= 0, "DruckerPrager",
               f"cohesion must be >= 0 Pa, got {self.cohesion}")

    def parameter_vector(self, overrides=None):
        p = self.values(overrides)
        mu, lam = lame(p["E"], p["nu"])
        s = torch.sin(p["friction_angle"].to(mu.dtype))
        alpha = math.sqrt(2.0 / 3.0) * 2.0 * s / (3.0 - s)
        cohesive_strain = 3.0 * p["cohesion"].to(mu.dtype) / (3.0 * lam + 2.0 * mu)
        return torch.stack([mu, lam, alpha, cohesive_strain])


@dataclass(frozen=True)
class NewtonianFluid(Material):
    """Weakly compressible Newtonian fluid: pressure p = K (1 - J), viscous stress 2 eta D.

    bulk_modulus K (Pa; choose it so that sqrt(K/rho) is ~10x the flow speed), viscosity
    eta (Pa s), density (kg/m^3).
    """
    bulk_modulus: float = 2e5
    viscosity: float = 1e-3
    density: float = 1000.0
    code = K.FLUID
    differentiable = ("bulk_modulus", "viscosity")

    def validate(self):
        name = type(self).__name__
        _check(_finite("bulk_modulus", self.bulk_modulus, name) > 0, name,
               f"bulk_modulus must be > 0 Pa, got {self.bulk_modulus}")
        _check(_finite("viscosity", self.viscosity, name) >= 0, name,
               f"viscosity must be >= 0 Pa s, got {self.viscosity}")

    def wave_speed(self):
        return math.sqrt(self.bulk_modulus / self.density)

    def viscosity_limit(self):
        return self.viscosity / self.density

    def parameter_vector(self, overrides=None):
        p = self.values(overrides)
        z = torch.zeros((), dtype=torch.float64)
        return torch.stack([p["bulk_modulus"].to(z.dtype), p["viscosity"].to(z.dtype), z, z])


@dataclass(frozen=True)
class ViscoplasticFluid(NewtonianFluid):
    """Non-Newtonian (Bingham) viscoplastic fluid, Papanastasiou-regularised:
    eta_eff = eta + yield_stress (1 - exp(-m rate)) / rate, rate = sqrt(2 D:D) (1/s).

    bulk_modulus (Pa), viscosity eta (Pa s), yield_stress (Pa), regularization m (s),
    density (kg/m^3). Mud, toothpaste, fresh concrete.
    """
    yield_stress: float = 50.0
    regularization: float = 0.05
    code = K.VISCOPLASTIC
    differentiable = ("bulk_modulus", "viscosity", "yield_stress")

    def validate(self):
        super().validate()
        _check(_finite("yield_stress", self.yield_stress, "ViscoplasticFluid") >= 0, "ViscoplasticFluid",
               f"yield_stress must be >= 0 Pa, got {self.yield_stress}")
        _check(_finite("regularization", self.regularization, "ViscoplasticFluid") > 0, "ViscoplasticFluid",
               f"regularization m must be > 0 s, got {self.regularization}")

    def viscosity_limit(self):
        return (self.viscosity + self.yield_stress * self.regularization) / self.density

    def parameter_vector(self, overrides=None):
        p = self.values(overrides)
        z = torch.tensor(float(self.regularization), dtype=torch.float64)
        return torch.stack([p["bulk_modulus"], p["viscosity"], p["yield_stress"], z]).to(torch.float64)


@dataclass(frozen=True, eq=False)
class NeuralMaterial(Material):
    """A material whose stress comes from torch modules (e.g. a neural constitutive law).

    elasticity: ``nn.Module`` mapping deformation gradients ``F`` (N,3,3) to Kirchhoff
        stress (N,3,3) in Pa.
    plasticity: optional ``nn.Module`` mapping the trial ``F_tr`` (N,3,3) to the elastic
        ``F_e`` (N,3,3) (a plastic projection); applied before ``elasticity``.
    density: kg/m^3.
    wave_speed_estimate: m/s, for the time-step check (e.g. sqrt((lam+2mu)/rho) of the
        material the network imitates).

    Gradients reach the modules' parameters through torch autograd.
    """
    elasticity: Any = None
    plasticity: Any = None
    density: float = 1000.0
    wave_speed_estimate: float = 10.0
    code = K.EXTERNAL

    def validate(self):
        _check(isinstance(self.elasticity, torch.nn.Module), "NeuralMaterial",
               f"elasticity must be a torch.nn.Module, got {type(self.elasticity).__name__}")
        _check(self.plasticity is None or isinstance(self.plasticity, torch.nn.Module), "NeuralMaterial",
               "plasticity must be None or a torch.nn.Module")
        _check(_finite("wave_speed_estimate", self.wave_speed_estimate, "NeuralMaterial") > 0,
               "NeuralMaterial", "wave_speed_estimate must be > 0 m/s")

    def wave_speed(self):
        return float(self.wave_speed_estimate)

    def parameter_vector(self, overrides=None):
        if overrides:
            raise InvalidMaterial("NeuralMaterial: its parameters are the modules' parameters; "
                                  "optimise those directly")
        return torch.zeros(4, dtype=torch.float64)

    def respond(self, F_tr: torch.Tensor):
        """``(F_e, tau)`` for trial deformation gradients ``F_tr`` (N,3,3)."""
        F_e = F_tr if self.plasticity is None else self.plasticity(F_tr)
        tau = self.elasticity(F_e)
        if tau.shape != F_tr.shape:
            raise InvalidMaterial(f"NeuralMaterial: elasticity returned shape {tuple(tau.shape)}, "
                                  f"expected {tuple(F_tr.shape)}")
        return F_e, tau

    def describe(self):
        return {"model": "NeuralMaterial", "density": self.density,
                "elasticity": type(self.elasticity).__name__,
                "plasticity": None if self.plasticity is None else type(self.plasticity).__name__}


# convenient aliases used in scenes and docs
Jelly = FixedCorotated
Plasticine = VonMises
Sand = DruckerPrager
Water = NewtonianFluid
