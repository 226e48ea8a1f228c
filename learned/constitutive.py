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


KINDS = {"structured": (ElasticityNet, PlasticityNet), "mlp": (MLPStress, MLPPlasticity)}


def make_law(kind: str = "structured", plastic: bool = False, width: int = 64, depth: int = 2,
             stress_scale: float = 1e4, plastic_step: float = 1e-2, dtype=torch.float64):
    """``(elasticity, plasticity or None)`` modules of the given kind."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    E_cls, P_cls = KINDS[kind]
    elasticity = E_cls(width, depth, stress_scale).to(dtype)
    plasticity = P_cls(width, depth, plastic_step).to(dtype) if plastic else None
    return elasticity, plasticity
