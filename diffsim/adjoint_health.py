"""Gradient health checks of the MPM reverse pass.

The rollout checks the adjoints that leave each backward segment (a cheap ``isfinite`` on
tensors it copies out anyway). Only when one is NaN/inf does it call :func:`locate`, which
reverses the segment again stage by stage (G2P, grid-contact hook, colliders, grid, P2G,
material) and raises :class:`~diffsim.errors.GradientNotFinite` naming the substep, the
stage and the particle (with its body) or grid node where the first non-finite value
appeared. The check is on by default; ``ds.rollout(..., check_gradients=False)`` skips it.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import GradientNotFinite


def all_finite(*arrays) -> bool:
    """True when every tensor/array given (None skipped) is finite."""
    for a in arrays:
        if a is None:
            continue
        # fast path: a finite sum means every entry is finite (one pass, no temporary); a
        # sum that overflowed from finite entries gets the exact test
        if isinstance(a, torch.Tensor):
            if not bool(torch.isfinite(a.sum())) and not bool(torch.isfinite(a).all()):
                return False
        elif not np.isfinite(np.sum(a)) and not np.all(np.isfinite(a)):
            return False
    return True


def _particle(sim, p):
    for b in sim.bodies:
        if b.start <= p < b.stop:
            return f"particle {p} (body {b.name!r}, its particle {p - b.start})"
    return f"particle {p}"


def _check(sim, step, stage, particle_fields=(), grid_fields=(), collider_fields=()):
    """Raise at the first non-finite entry of the given (name, field) pairs."""
    n = sim.n
    for name, f in particle_fields:
        a = f.to_numpy()[:n].reshape(n, -1)
        bad = ~np.isfinite(a).all(1)
        if bad.any():
            p = int(np.argmax(bad))
            raise GradientNotFinite(step, stage, f"{name} of {_particle(sim, p)} at x = "
                                    f"{np.round(sim.fields.x.to_numpy()[p], 6).tolist()} m",
                                    f"{int(bad.sum())} particle(s) affected")
    for name, f in grid_fields:
        a = f.to_numpy()
        a = a.reshape(a.shape[:3] + (-1,))
        bad = ~np.isfinite(a).all(-1)
        if bad.any():
            node = np.unravel_index(int(np.argmax(bad)), bad.shape)
            m = float(sim.fields.g_m.to_numpy()[node])
            raise GradientNotFinite(step, stage, f"{name} of grid node {tuple(int(i) for i in node)} "
                                    f"(node mass {m:.3g} kg)", f"{int(bad.sum())} node(s) affected")
    for name, f in collider_fields:
        S = len(sim.colliders)
        a = f.to_numpy()[:S].reshape(S, -1)
        bad = ~np.isfinite(a).all(1)
        if bad.any():
            c = int(np.argmax(bad))
            raise GradientNotFinite(step, stage, f"{name} of collider {sim.colliders[c].name!r}")


def reverse_substep_checked(sim, step, material=True, after_g2p=None):
    """The reverse pass of the substep in the fields (input state, grid after the grid
    update, output adjoints in ``x1.grad``, ``v1.grad``, ``C1.grad`` and, with
    ``material``, ``adj_F1``), split into its stages with a check after each. Raises
    :class:`GradientNotFinite`; returns normally if every stage is finite."""
    from .kernels import mpm as km
    fs, n = sim.fields, sim.n
    args = sim.kernel_args
    dt, dx, lx, ly, lz, gx, gy, gz = args
    seeds = [("position adjoint", fs.x1.grad), ("velocity adjoint", fs.v1.grad), ("affine adjoint", fs.C1.grad)]
    if material:
        seeds.append(("deformation-gradient adjoint", fs.adj_F1))
    _check(sim, step, "loss (the adjoint arriving at this substep)", seeds)
    km.clear_grid_grad(fs)
    if len(sim.colliders):
        for f in (fs.c_pos.grad, fs.c_vel.grad, fs.c_omega.grad):
            f.fill(0)
    km.g2p_adjoint(fs, n, dt, dx, lx, ly, lz)
    _check(sim, step, "G2P", [("position adjoint", fs.x.grad)], [("grid velocity adjoint", fs.g_v.grad)])
    if after_g2p is not None:
        after_g2p()
        _check(sim, step, "contact", (), [("grid velocity adjoint", fs.g_v.grad), ("grid mass adjoint", fs.g_m.grad)])
    from .runtime import call_quietly_once
    call_quietly_once(("grid_colliders.grad", id(fs), sim.cols), km.grid_colliders.grad, fs, sim.cols, dx, lx, ly, lz)
    _check(sim, step, "collider", (), [("grid velocity adjoint", fs.g_vw.grad)],
           [("position adjoint", fs.c_pos.grad), ("velocity adjoint", fs.c_vel.grad),
            ("angular velocity adjoint", fs.c_omega.grad)])
    km.grid_walls_adjoint(fs, dt, gx, gy, gz)
    _check(sim, step, "grid", (), [("grid momentum adjoint", fs.g_mv.grad), ("grid mass adjoint", fs.g_m.grad)])
    if material:
        km.material_stage(fs, sim.mats, n, dt)      # tau of this substep for the P2G adjoint
    km.p2g_adjoint(fs, n, dt, dx, lx, ly, lz)
    _check(sim, step, "P2G", [("position adjoint", fs.x.grad), ("velocity adjoint", fs.v.grad),
                              ("affine adjoint", fs.C.grad), ("stress adjoint", fs.tau.grad)])
    if material:
        km.material_stage_vjp(fs, sim.mats, n, dt)
        _check(sim, step, "material", [("deformation-gradient adjoint", fs.adj_F),
                                       ("affine adjoint", fs.adj_C), ("parameter adjoint", fs.adj_prm)])


def advance_seeds(sim):
    """After :func:`reverse_substep_checked` (with ``material``): the input adjoints become
    the output adjoints of the previous substep."""
    from .mpm.rollout import _get, _put
    from . import runtime
    fs, n = sim.fields, sim.n
    dtype = runtime.torch_dtype()
    xb, vb, Cb, Cm, Fb = _get((fs.x.grad, fs.v.grad, fs.C.grad, fs.adj_C, fs.adj_F),
                              ((3,), (3,), (3, 3), (3, 3), (3, 3)), n, dtype)
    _put((fs.x1.grad, fs.v1.grad, fs.C1.grad, fs.adj_F1), (xb, vb, Cb + Cm, Fb), n, dtype)


def locate(sim, tape, start, steps, load, grads, after_g2p=None):
    """Reverse the taped segment starting at rollout substep ``start`` stage by stage from
    the output adjoints ``grads`` = (gx, gv, gC, gF) and raise where the first non-finite
    value appears. ``load(k)`` puts substep ``k`` of the segment back in the fields."""
    from .mpm.rollout import seed_adjoint
    seed_adjoint(sim, *grads)
    for k in reversed(range(steps)):
        load(k)
        reverse_substep_checked(sim, start + k, material=True, after_g2p=after_g2p)
        advance_seeds(sim)
    raise GradientNotFinite(start, "parameters", "a parameter or collider adjoint summed over the segment",
                            "every stage was finite when reversed again: check the loss and the inputs")


def first_bad_row(named_arrays, n=None):
    """``(name, row)`` of the first non-finite row among ``{name: array (rows, ...)}``
    (only the first ``n`` rows), or None."""
    for name, a in named_arrays.items():
        a = np.asarray(a)
        a = a[:n] if n is not None else a
        bad = ~np.isfinite(a.reshape(a.shape[0], -1)).all(1)
        if bad.any():
            return name, int(np.argmax(bad))
    return None


def locate_in_fem_tape(sim, start, k, reseed, reverse_substep):
    """A FEM chunk's reverse pass (substeps ``start .. start + k`` of the rollout) again,
    checking the node adjoints of each row as it is produced (Taichi's adjoints clear the
    rows they consume): raise :class:`GradientNotFinite` at the first non-finite one.
    ``reseed()`` puts the chunk's output adjoints back, ``reverse_substep(t)`` reverses
    row ``t + 1 -> t``."""
    fs = sim.fields
    reseed()
    for t in range(k, -1, -1):
        if t < k:
            reverse_substep(t)
        hit = first_bad_row({"position adjoint": fs.x.grad.to_numpy()[t],
                             "velocity adjoint": fs.v.grad.to_numpy()[t]}, sim.n)
        if hit is not None:
            stage = "loss (the adjoint arriving at this substep)" if t == k else \
                "FEM substep (elastic forces, contact, integration)"
            raise GradientNotFinite(start + t, stage, f"{hit[0]} of node {hit[1]}")
    hit = first_bad_row({"material parameter adjoint": fs.tet_prm.grad.to_numpy(),
                         "contact parameter adjoint": fs.node_prm.grad.to_numpy()})
    where = f"{hit[0]} of {'tet' if hit[0].startswith('material') else 'node'} {hit[1]}" if hit else \
        "a driver or parameter adjoint"
    raise GradientNotFinite(start, "FEM parameters", where)
