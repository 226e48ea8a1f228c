"""Neural constitutive laws (NCLaw-style) and an unstructured baseline.

Structured laws (:class:`ElasticityNet`, :class:`PlasticityNet`) guarantee by
construction, not by training:

* rotation equivariance: ``tau(Q F) = Q tau(F) Q^T`` and ``F_e(Q F) = Q F_e(F)`` for every
  rotation ``Q`` -- the network sees only rotation-invariant features of ``C = F^T F``
  (``C - I`` and ``det F - 1``) and its output ``X`` is a tensor of the reference frame,
  pushed forward with ``F``: ``tau = F sym(X) F^T`` (``sym(X)`` plays the second
  Piola-Kirchhoff stress), ``F_e = F (I + a sym(X))``;
* zero stress at rest and ``F_e(I) = I``: the MLPs have no biases and a GELU activation
  (``GELU(0) = 0``), so zero features give ``X = 0`` exactly.

(NCLaw rotates ``X`` with the polar rotation ``R`` of ``F`` instead; pushing forward with
``F`` keeps the same guarantees, needs no polar decomposition, and its derivatives stay
smooth at rest. :func:`polar_rotation` is kept for laws that want ``R``.)

:class:`MLPStress` / :class:`MLPPlasticity` are the unstructured baseline of the same size:
the raw 9 entries of ``F`` in, 9 numbers out, with biases.

Stresses are Kirchhoff stresses in Pa; ``stress_scale`` (Pa) sets the network's output
unit (use roughly the material's Young's modulus).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def polar_rotation(F: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Rotation ``R`` of ``F = R S`` for a batch (N,3,3) with ``det F > 0``: Newton's
    iteration with determinant scaling (quadratic convergence; 6 iterations reach f64
    precision for stretches up to ~10x)."""
    R = F
    for k in range(iterations):
        Rinv_t = torch.linalg.inv(R).transpose(-1, -2)
        if k < iterations - 2:  # scaled steps first, plain steps to polish
            z = torch.abs(torch.linalg.det(R))[:, None, None] ** (-1.0 / 3.0)
            R = 0.5 * (z * R + Rinv_t / z)
        else:
            R = 0.5 * (R + Rinv_t)
    return R


def invariant_features(F: torch.Tensor) -> torch.Tensor:
    """Rotation-invariant features (N,7): the 6 entries of ``F^T F - I`` and ``det F - 1``
    (all zero at rest)."""
    C = F.transpose(-1, -2) @ F
    E = [C[:, 0, 0] - 1.0, C[:, 1, 1] - 1.0, C[:, 2, 2] - 1.0, C[:, 0, 1], C[:, 0, 2], C[:, 1, 2]]
    return torch.stack(E + [torch.linalg.det(F) - 1.0], -1)


def _mlp(n_in, n_out, width, depth, bias):
    layers, d = [], n_in
    for _ in range(depth):
        layers += [nn.Linear(d, width, bias=bias), nn.GELU()]
        d = width
    layers.append(nn.Linear(d, n_out, bias=bias))
    return nn.Sequential(*layers)


def _sym(X):
    return 0.5 * (X + X.transpose(-1, -2))


class ElasticityNet(nn.Module):
    """Structured elasticity: ``F`` (N,3,3) -> Kirchhoff stress (N,3,3), Pa."""

    def __init__(self, width: int = 64, depth: int = 2, stress_scale: float = 1e4):
        super().__init__()
        self.config = {"width": width, "depth": depth, "stress_scale": stress_scale}
        self.stress_scale = float(stress_scale)
        self.mlp = _mlp(7, 9, width, depth, bias=False)

    def forward(self, F):
        X = self.mlp(invariant_features(F)).reshape(-1, 3, 3)
        return F @ (_sym(X) * self.stress_scale) @ F.transpose(-1, -2)


class PlasticityNet(nn.Module):
    """Structured plastic projection: trial ``F`` (N,3,3) -> elastic ``F_e`` (N,3,3)."""

    def __init__(self, width: int = 64, depth: int = 2, step: float = 1e-2):
        super().__init__()
        self.config = {"width": width, "depth": depth, "step": step}
        self.step = float(step)
        self.mlp = _mlp(7, 9, width, depth, bias=False)

    def forward(self, F):
        X = self.mlp(invariant_features(F)).reshape(-1, 3, 3)
        return F + self.step * F @ _sym(X)


class MLPStress(nn.Module):
    """Unstructured baseline: the 9 entries of ``F`` -> 9 stress entries (Pa), with biases."""

    def __init__(self, width: int = 64, depth: int = 2, stress_scale: float = 1e4):
        super().__init__()
        self.config = {"width": width, "depth": depth, "stress_scale": stress_scale}
        self.stress_scale = float(stress_scale)
        self.mlp = _mlp(9, 9, width, depth, bias=True)

    def forward(self, F):
        return self.mlp(F.reshape(-1, 9)).reshape(-1, 3, 3) * self.stress_scale


class MLPPlasticity(nn.Module):
    """Unstructured baseline projection: ``F_e = F + step * MLP(F)`` on the raw entries."""

    def __init__(self, width: int = 64, depth: int = 2, step: float = 1e-2):
        super().__init__()
        self.config = {"width": width, "depth": depth, "step": step}
        self.step = float(step)
        self.mlp = _mlp(9, 9, width, depth, bias=True)

    def forward(self, F):
        return F + self.step * self.mlp(F.reshape(-1, 9)).reshape(-1, 3, 3)


J_MIN = 0.05   # volume ratios below this (or inverted) are read as this: finite stress, no NaN


def isochoric_invariants(F: torch.Tensor):
    """``(x, b_bar)``: the invariants ``x = (I1_bar - 3, I2_bar - 3, ln J)`` (N,3) of ``F``
    (all zero at rest; the first two are >= 0) and the isochoric left Cauchy-Green tensor
    ``b_bar = J^(-2/3) F F^T`` (N,3,3), with ``J = max(det F, J_MIN)``."""
    J = torch.linalg.det(F).clamp_min(J_MIN)
    b_bar = J[:, None, None] ** (-2.0 / 3.0) * (F @ F.transpose(-1, -2))
    i1 = b_bar.diagonal(dim1=-2, dim2=-1).sum(-1)
    i2 = 0.5 * (i1 ** 2 - (b_bar * b_bar).sum((-1, -2)))
    return torch.stack([i1 - 3.0, i2 - 3.0, torch.log(J)], -1), b_bar


def _inv_softplus(y: float) -> float:
    return math.log(math.expm1(y))


def _dev(A):
    return A - A.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None] / 3.0 * torch.eye(3, dtype=A.dtype)


class _ConvexEnergy(nn.Module):
    """Input-convex network ``psi(x)`` of ``x = (i1, i2, ln J)``: convex in ``x`` and
    non-decreasing in ``i1`` and ``i2`` (softplus layers, non-negative weights on the hidden
    path and on the ``i1``, ``i2`` inputs), shifted so that ``psi(0) = 0`` and
    ``d psi / d lnJ (0) = 0`` (no energy and no pressure at rest; subtracting an affine
    function keeps it convex)."""

    def __init__(self, width: int, depth: int, feature_scale: float):
        super().__init__()
        self.feature_scale = float(feature_scale)
        self.inputs = nn.ModuleList([nn.Linear(3, width) for _ in range(depth)])
        # initialised near a neo-Hookean solid of moduli ~stress_scale / 2 (a softer or
        # stiffer start makes the first rollouts needlessly wrong or unstable)
        self.hidden = nn.ParameterList([nn.Parameter(torch.randn(width, width) / width - 4.0)
                                        for _ in range(depth - 1)])
        self.out = nn.Parameter(torch.randn(width) / width + _inv_softplus(2.0 / (width * self.feature_scale ** 2)))
        self.linear = nn.Parameter(torch.full((2,), _inv_softplus(0.01 / self.feature_scale)))
        for lin in self.inputs:
            nn.init.normal_(lin.weight, std=1.0)
            nn.init.zeros_(lin.bias)

    def _raw(self, x):
        x = x * self.feature_scale
        sign = torch.tensor([1.0, 1.0, 0.0], dtype=x.dtype)
        z = None
        for k, lin in enumerate(self.inputs):
            # non-negative weights on i1, i2 (monotone), any sign on ln J (convex either way)
            w = lin.weight * (1 - sign) + nn.functional.softplus(lin.weight) * sign
            a = x @ w.T + lin.bias
            if z is not None:
                a = a + z @ nn.functional.softplus(self.hidden[k - 1]).T
            z = nn.functional.softplus(a)
        return z @ nn.functional.softplus(self.out) + x[:, :2] @ nn.functional.softplus(self.linear)

    def forward(self, x):
        zero = torch.zeros((1, 3), dtype=x.dtype, requires_grad=True)
        with torch.enable_grad():
            psi0 = self._raw(zero)
            (g0,) = torch.autograd.grad(psi0.sum(), zero, create_graph=torch.is_grad_enabled())
        return self._raw(x) - psi0 - x[:, 2] * g0[0, 2]


class PotentialElasticity(nn.Module):
    """Hyperelastic law from a learned energy: ``F`` (N,3,3) -> Kirchhoff stress (N,3,3), Pa.

    ``psi(I1_bar - 3, I2_bar - 3, ln J)`` is an input-convex network (:class:`_ConvexEnergy`)
    and the stress its derivative,
    ``tau = 2 dev[(psi_1 + I1_bar psi_2) b_bar - psi_2 b_bar^2] + psi_lnJ I`` (times
    ``stress_scale``). By construction: isotropic and rotation-equivariant (a function of
    the invariants only), zero stress at rest, energy-conserving (a potential), and with
    non-negative shear response (``psi_1, psi_2 >= 0``) and a convex volumetric energy. The
    structured :class:`ElasticityNet` is rotation-equivariant but not isotropic: it must see
    every strain direction in training, this law learns shear from a compression test.
    """

    def __init__(self, width: int = 32, depth: int = 2, stress_scale: float = 1e4, feature_scale: float = 10.0):
        super().__init__()
        self.config = {"width": width, "depth": depth, "stress_scale": stress_scale, "feature_scale": feature_scale}
        self.stress_scale = float(stress_scale)
        self.energy = _ConvexEnergy(width, depth, feature_scale)

    def forward(self, F):
        outer = torch.is_grad_enabled()
        with torch.enable_grad():
            x, b_bar = isochoric_invariants(F)
            xr = x if x.requires_grad else x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.energy(xr).sum(), xr, create_graph=outer)
        i1 = x[:, 0] + 3.0
        p1, p2, pJ = g[:, 0, None, None], g[:, 1, None, None], g[:, 2, None, None]
        tau = 2.0 * _dev((p1 + i1[:, None, None] * p2) * b_bar - p2 * (b_bar @ b_bar))
        tau = tau + pJ * torch.eye(3, dtype=F.dtype)
        return tau * self.stress_scale


class IsotropicPlasticity(nn.Module):
    """Isotropic plastic projection: trial ``F`` (N,3,3) -> ``F_e = G F`` with
    ``G = I + a0 I + a1 B + a2 B^2``, ``B = b_bar - I``, where ``a = (tanh(m0) / 2,
    tanh(m1), tanh(m2))``, ``m = MLP(features)`` (no biases: ``F_e = F`` at rest). ``G`` is
    an isotropic function of ``b = F F^T``, so the projection is rotation-equivariant,
    isotropic, keeps the principal directions of the trial stretch (as every isotropic
    return map does) and can express any such map; ``a1 = -1`` returns the deviatoric
    stretch to first order, so the outputs are O(1) numbers.
    Features: ``(tr E, |dev E|, tr(dev E^3) / |dev E|^2, ln J)`` of the Green strain ``E``,
    each of the order of the strain (scaled by ``feature_scale``), so that yield at strains
    of a few percent is within the network's reach. ``step`` scales the last layer at
    construction: training starts near ``F_e = F``.

    ``yield_strain`` (a number) adds a yield surface: no plastic flow while the deviatoric
    Green strain's norm ``q`` stays under a learned radius ``r`` (initially
    ``yield_strain``), so a body at rest under a load below yield keeps its shape; above
    it the map starts from the radial return of the deviatoric log stretch onto the
    surface (``G = b_bar^(-f/2)``, ``f = (q - r) / q``, to second order in ``B``) and the
    network's outputs, times ``f``, correct it. Without it (``None``) every strain flows a
    little in every substep, however small: a creep that a von Mises material never
    shows (it made plasticine slump after unloading, ``docs/learned_laws``).
    ``pressure_slope`` (with a yield surface) lets the radius grow with compression,
    ``r = r0 + k max(-tr E, 0)`` with ``k`` learned from ``pressure_slope`` on: the cone of
    a frictional (Drucker-Prager-like) material such as sand."""

    def __init__(self, width: int = 32, depth: int = 2, step: float = 1e-2, feature_scale: float = 10.0,
                 yield_strain: float | None = None, pressure_slope: float | None = None):
        super().__init__()
        if yield_strain is not None and not yield_strain > 0:
            raise ValueError(f"yield_strain must be > 0 (or None for no yield surface), got {yield_strain}")
        if pressure_slope is not None and (yield_strain is None or not pressure_slope > 0):
            raise ValueError(f"pressure_slope must be > 0 and needs a yield_strain, got {pressure_slope} "
                             f"(yield_strain {yield_strain})")
        self.config = {"width": width, "depth": depth, "step": step, "feature_scale": feature_scale,
                       "yield_strain": yield_strain, "pressure_slope": pressure_slope}
        self.feature_scale = float(feature_scale)
        self.mlp = _mlp(4, 3, width, depth, bias=False)
        with torch.no_grad():
            self.mlp[-1].weight.mul_(float(step))
        self.yield_strain = None if yield_strain is None else float(yield_strain)
        self.pressure_slope = None if pressure_slope is None else float(pressure_slope)
        if yield_strain is not None:   # learned in log space: r0 = yield_strain * exp(gain * log_yield[0]), ...
            self.log_yield = nn.Parameter(torch.zeros(1 if pressure_slope is None else 2))

    # the surface's log-parameters move YIELD_GAIN times an optimiser's step (Adam moves a
    # parameter by about its learning rate per step): with the plain parameter the radius
    # moved 4% in 120 iterations at lr 1e-2, while the network's corrections compensated
    YIELD_GAIN = 10.0

    def yield_radius(self, trace_E: torch.Tensor) -> torch.Tensor:
        """The yield surface's radius in deviatoric Green strain at volumetric strain ``tr E``."""
        if self.yield_strain is None:
            raise ValueError("this plastic map has no yield surface (made without yield_strain)")
        scale = torch.exp(self.YIELD_GAIN * self.log_yield)
        r = self.yield_strain * scale[0]
        if self.pressure_slope is not None:
            r = r + self.pressure_slope * scale[1] * torch.relu(-trace_E)
        return r

    def forward(self, F):
        eye = torch.eye(3, dtype=F.dtype)
        E = 0.5 * (F.transpose(-1, -2) @ F - eye)
        D = _dev(E)
        n2 = (D * D).sum((-1, -2))
        eps = 1e-8
        feats = torch.stack([E.diagonal(dim1=-2, dim2=-1).sum(-1), torch.sqrt(n2 + eps ** 2) - eps,
                             (D @ D * D).sum((-1, -2)) / (n2 + 1e-12),
                             torch.log(torch.linalg.det(F).clamp_min(J_MIN))], -1)
        # bounded: the volume changes by at most a factor 2 per projection and at most the
        # whole deviatoric stretch is returned (an unbounded net made rollouts blow up)
        a = torch.tanh(self.mlp(feats * self.feature_scale)) * torch.tensor([0.5, 1.0, 1.0], dtype=F.dtype)
        if self.yield_strain is not None:
            q = feats[:, 1]
            f = torch.relu(q - self.yield_radius(feats[:, 0])) / (q + 1e-12)                  # 0 inside the surface
            radial = torch.stack([torch.zeros_like(f), -0.5 * f, 0.25 * f + 0.125 * f * f], -1)
            a = radial + f[:, None] * a
        _, b_bar = isochoric_invariants(F)
        B = b_bar - eye
        G = a[:, 0, None, None] * eye + a[:, 1, None, None] * B + a[:, 2, None, None] * (B @ B)
        return F + G @ F


KINDS = {"structured": (ElasticityNet, PlasticityNet), "mlp": (MLPStress, MLPPlasticity),
         "potential": (PotentialElasticity, IsotropicPlasticity)}


def make_law(kind: str = "structured", plastic: bool = False, width: int = 64, depth: int = 2,
             stress_scale: float = 1e4, plastic_step: float = 1e-2, yield_strain: float | None = None,
             pressure_slope: float | None = None, dtype=torch.float64):
    """``(elasticity, plasticity or None)`` modules of the given kind; ``yield_strain`` and
    ``pressure_slope``: the initial yield surface of the ``potential`` kind's plastic map
    (:class:`IsotropicPlasticity`; None: none)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if (yield_strain is not None or pressure_slope is not None) and kind != "potential":
        raise ValueError(f"a yield surface applies to the 'potential' kind's plasticity only, not {kind!r}")
    E_cls, P_cls = KINDS[kind]
    elasticity = E_cls(width, depth, stress_scale).to(dtype)
    extra = {k: v for k, v in (("yield_strain", yield_strain), ("pressure_slope", pressure_slope)) if v is not None}
    plasticity = P_cls(width, depth, plastic_step, **extra).to(dtype) if plastic else None
    return elasticity, plasticity
