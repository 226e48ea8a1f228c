"""Torch modules for diffsim (learned constitutive laws, reduced-order and surrogate models).

Modules plug into the solvers through :class:`diffsim.NeuralMaterial` and later step
interfaces; see the issues for what is planned.
"""
