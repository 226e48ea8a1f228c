"""Learned drag (a step module, no solver): a cloud of particles thrown upwards falls under
gravity against a learned linear drag rate (diffsim.learned.damping.LinearDamping, pure
torch). The worked example of docs/architecture.md: a torch module that implements the
simulation protocol runs in `diffsim run`, `ds.rollout` and the fitter like a solver.

Options: rate (1/s, default 2.0), particles (200), speed (m/s, 1.5), seed (0).
"""
import numpy as np

import diffsim as ds
from diffsim.learned.damping import LinearDamping


def build(rate=2.0, particles=200, speed=1.5, seed=0):
    if int(particles) < 1:
        raise ds.InvalidScene(f"particles must be >= 1, got {particles}")
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.02, (int(particles), 3)) + (0.0, 0.0, 0.5)
    v = rng.normal(0.0, 0.2 * speed, (int(particles), 3)) + (0.0, 0.0, speed)
    module = LinearDamping(x, v, dt=1e-3, rate=rate, mass=1e-3, bounds=((-0.5, -0.5, 0.0), (0.5, 0.5, 1.0)))
    return ds.Scene(module, description=__doc__, steps=600, every=20, camera=(15.0, -60.0))
