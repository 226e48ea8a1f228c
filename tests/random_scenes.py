"""Random small MPM scenes for gradient checks (not a test module).

:func:`random_scene` draws a scene from a seed, cycling through materials x colliders x
walls x horizons so that any run of consecutive seeds covers them evenly; :func:`loss_fn`
gives a differentiable loss of its parameters (material parameters, initial velocities,
collider velocity) through ``ds.rollout``.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
import trimesh

import diffsim as ds

MATERIALS = ["fixed_corotated", "neo_hookean", "von_mises", "dry_sand", "cohesive_sand", "fluid", "viscoplastic"]
COLLIDERS = ["none", "sphere", "rotating_box", "mesh_cone"]
WALLS = ["sticky", "slip", "separate"]
HORIZONS = [30, 80]


def _material(kind):
    if kind == "fixed_corotated":
        return ds.FixedCorotated(E=3e3, nu=0.3), ("E", "nu")
    if kind == "neo_hookean":
        return ds.NeoHookean(E=3e3, nu=0.35), ("E", "nu")
    if kind == "von_mises":
        return ds.VonMises(E=5e3, nu=0.3, yield_stress=80.0), ("E", "yield_stress")
    if kind == "dry_sand":
        return ds.DruckerPrager(E=5e3, nu=0.3, friction_angle=math.radians(30)), ("E", "friction_angle", "cohesion")
    if kind == "cohesive_sand":
        return ds.DruckerPrager(E=5e3, nu=0.3, friction_angle=math.radians(35), cohesion=30.0), \
            ("friction_angle", "cohesion")
    if kind == "fluid":
        return ds.NewtonianFluid(bulk_modulus=3e3, viscosity=2.0), ("bulk_modulus", "viscosity")
    return ds.ViscoplasticFluid(bulk_modulus=3e3, viscosity=1.0, yield_stress=30.0), ("viscosity", "yield_stress")


@dataclass
class RandomScene:
    seed: int
    material: str
    collider: str
    walls: str
    steps: int
    sim: object
    names: tuple          # material parameters checked
    base: dict            # their values

    def describe(self):
        return f"seed {self.seed}: {self.material}, {self.collider}, walls {self.walls}, {self.steps} substeps"


def random_scene(seed):
    rng = np.random.default_rng(seed)
    material = MATERIALS[seed % len(MATERIALS)]
    collider = COLLIDERS[seed % len(COLLIDERS)]
    walls = WALLS[seed % len(WALLS)]
    steps = HORIZONS[(seed // len(MATERIALS)) % len(HORIZONS)]
    mat, names = _material(material)
    sim = ds.MPMSolver(grid=16, dt=1e-3, walls=walls, wall_friction=0.3 if walls == "separate" else 0.0)
    size = rng.uniform(0.12, 0.2, 3)
    center = np.array([0.5, 0.5, 0.3]) + rng.uniform(-0.03, 0.03, 3)
    v0 = np.concatenate([rng.uniform(-0.3, 0.3, 2), rng.uniform(-1.2, -0.5, 1)])  # reaches the floor
    sim.add_body(ds.Box(center=tuple(center), size=tuple(size)), mat, name="body", velocity=tuple(v0),
                 jitter=0.3, seed=seed)
    top = center[2] + size[2] / 2
    if collider == "sphere":
        sim.add_collider(ds.SphereCollider(center=(center[0] + 0.02, center[1], top + 0.07), radius=0.08,
                                           velocity=(0.0, 0.0, -0.5), friction=0.3, name="tool"))
    elif collider == "rotating_box":
        # off the grid lines: a node exactly on the box's medial plane takes its inside normal by rounding
        sim.add_collider(ds.BoxCollider(center=(0.513, 0.487, top + 0.02), half_size=(0.15, 0.02, 0.03),
                                        velocity=(0.0, 0.0, -0.4), angular_velocity=(0.0, 0.0, 3.0),
                                        friction=0.4, name="tool"))
    elif collider == "mesh_cone":
        cone = trimesh.creation.cone(radius=0.12, height=0.1, sections=16)
        sim.add_collider(ds.MeshCollider(cone, position=(0.5, 0.5, 0.12), resolution=24, friction=0.5,
                                         name="tool"))
    sim.dt = min(1e-3, 0.5 * sim.stable_dt())
    sim.build()
    base = {k: float(getattr(mat, k)) for k in names}
    return RandomScene(seed, material, collider, walls, steps, sim, names, base)


def loss_fn(scene, weights, v_dir, tool_velocity=None):
    """``f(params: dict of 0-d tensors, a: 0-d tensor, cv: (3,) tensor or None) -> loss``:
    the rollout from the scene's start with initial velocities ``v0 + a * v_dir`` and the
    tool moving at ``cv`` (when it has a translation velocity)."""
    sim = scene.sim
    s0 = sim.initial_state()
    n = sim.n

    def f(params, a, cv=None):
        sim.time, sim.step_count = 0.0, 0
        for c in sim.colliders:
            c.reset()
        dtype = s0.x.dtype
        st = ds.MPMState(s0.x, s0.v + a * v_dir, torch.zeros(n, 3, 3, dtype=dtype),
                         torch.eye(3, dtype=dtype).repeat(n, 1, 1))
        col = {"tool": cv} if cv is not None else None
        final, _ = ds.rollout(sim, scene.steps, state=st, params={"body": params}, control=col)
        return (final.x * weights).sum() + 0.1 * (final.v * weights).sum()

    return f
