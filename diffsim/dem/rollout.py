"""Differentiable DEM rollouts (PyTorch in, PyTorch out).

    sim = ds.DEMSolver(..., requires_grad=True)          # f64 recommended: ds.init(precision="f64")
    E = torch.tensor(5e6, dtype=torch.float64, requires_grad=True)
    start = sim.initial_state()
    out = ds.rollout(sim, 200, params={"E": E}, state=start.replace(v=v0), control={"lid.velocity": wv})
    loss = out.final.x[:, 2].mean(); loss.backward()

Gradients flow to the material parameters (``E``, ``nu``, ``restitution``, ``friction``,
``rolling_friction``, ``cohesion``, ``stiffness``), the initial positions, velocities and
angular velocities, and the walls' translation velocities per step (control
``"<wall>.velocity"``, (steps, 3) m/s; a wall's position is the integral of its velocity, so a loss on the
spheres "sees" where the wall pushed them).

How: each step is one Taichi kernel that reads state A and writes state B (kinematics,
contact histories, wall offsets); the forward pass keeps a snapshot of every step's input
state and of every neighbour-list epoch; the backward pass restores each snapshot, re-runs
that step's kernel (the per-pair force buffers) and runs its Taichi adjoint. Neighbour
lists, pair lists and the active set are constants of the backward pass: a contact that
opens or closes inside the window is differentiated on each side of the event, not across
it (the gradient of the discrete event itself is not defined). Memory: one state snapshot
per step, about n (9 + 3 max_neighbors + 3 walls) numbers.

Not differentiable (``NotImplementedError``): density and radii, wall rotation rates, and
rollouts in which spheres are removed by an outflow region or inserted by a pour.

Rolling resistance: the exact constant-directional torque ``-mu_r F R w/|w|`` has a
derivative ~1/|w| that explodes where spheres rest (w chatters around zero); for
gradients through resting contacts give the material ``rolling_smoothing`` > 0 (rad/s).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import adjoint_health, runtime
from .material import PARAMETERS
from .solver import DEMSolver
from ..errors import GradientNotFinite, InvalidMaterial, InvalidScene
from ..kernels import dem as kd

_PRM_INDEX = {name: i for i, name in enumerate(PARAMETERS)}  # E, nu, e, mu, mu_r, cohesion, k_n


def checked_overrides(sim, params: dict) -> dict:
    """DEM parameter overrides as 0-d tensors, validated like :class:`DEMMaterial`'s
    arguments (same messages) and against the time-step limit."""
    import dataclasses
    from ..materials import scalar_override
    out = {name: scalar_override("DEMMaterial", name, t) for name, t in params.items()}
    if "stiffness" in out and sim.material.model != "linear":
        raise InvalidMaterial(f"DEMMaterial: stiffness (N/m) is a parameter of the linear model; this material "
                              f"uses model={sim.material.model!r}, where it has no effect (its gradient would be 0)")
    if out:
        mat = dataclasses.replace(sim.material, **{k: float(v.detach()) for k, v in out.items()})
        sim.check_time_step(mat, " (with the rollout's parameter overrides)")
    return out


class _Layout:
    """Where each state field sits in one packed (rows, 3) snapshot (see kd.pack_vectors)."""

    def __init__(self, S):
        starts, self.size = kd.row_offsets(S.fields().values())
        self.rows = {name: slice(r, r + math.prod(f.shape))
                     for (name, f), r in zip(S.fields().items(), starts)}

    @staticmethod
    def values(S):
        return tuple(S.fields().values())

    @staticmethod
    def adjoints(S):
        return tuple(f.grad for f in S.fields().values())


_EPOCH_FIELDS = ("nbr_n", "rev", "rev_n", "active", "pair_i", "pair_j", "pair_perm", "pair_start")


class _Rollout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sim, steps, record_every, wall_velocity, prm, x0, v0, w0, check=True):
        fs = sim.fields
        n, W = sim.n, fs.n_walls
        dt = runtime.np_dtype()
        fs.prm.from_numpy(prm.detach().cpu().numpy().astype(dt))
        kd.derive_constants(fs, sim.material.model_code)
        sim._reset_for_rollout(x0.detach().cpu().numpy(), v0.detach().cpu().numpy(), w0.detach().cpu().numpy())
        wv = None if wall_velocity is None else wall_velocity.detach().cpu().numpy().astype(dt)
        model = sim.material.model_code
        epochs = [dict({k: getattr(fs, k).to_numpy() for k in _EPOCH_FIELDS}, n_pairs=sim.n_pairs)]
        layout = _Layout(fs.A)
        snaps = np.empty((steps, layout.size, 3), dt)  # every step's input state, packed
        tape, records = [], []
        removed0 = int(fs.removed[None])
        pose_key, walls = object(), None
        for t in range(steps):
            sim._update_wall_pose()           # writes the wall fields only when the pose changed
            if sim._pose_key is not pose_key:
                pose_key = sim._pose_key
                walls = (fs.w_vel.to_numpy(), fs.w_R.to_numpy(), fs.w_on.to_numpy())
            step_walls = walls
            if wv is not None:
                vel = walls[0].copy()
                vel[: wv.shape[1]] = wv[t]
                fs.w_vel.from_numpy(vel)
                step_walls = (vel,) + walls[1:]
            kd.pack_vectors(layout.values(sim.state), snaps[t])
            tape.append(("step", t, step_walls, len(epochs) - 1))
            # the tracked kernel (as DEMSolver.step) records the largest displacement since the
            # last neighbour build and skips walls flagged far at that build; a wall driven by
            # the control may move in from afar, so then every wall is checked and the
            # displacement measured apart (the backward pass differentiates the untracked kernel)
            kd.step(fs, sim.state, sim.spare, model, W, wv is None, n, sim.n_pairs)
            sim._swap()
            sim._advance_walls()
            sim.time += sim.dt
            sim.step_count += 1
            if wv is not None:
                fs.max_disp[None] = 0.0
                kd.max_displacement(fs, sim.state, n)
            if fs.max_disp[None] > 0.5 * sim.skin:
                sim._rebuild()
                if int(fs.removed[None]) != removed0:
                    raise NotImplementedError("DEM rollout: spheres left through the outflow region during a "
                                              "differentiable rollout; removal is not differentiable")
                epochs.append(dict({k: getattr(fs, k).to_numpy() for k in _EPOCH_FIELDS}, n_pairs=sim.n_pairs))
                tape.append(("remap", len(epochs) - 1))
            if record_every and (t + 1) % record_every == 0:
                tape.append(("record", len(records)))
                records.append(sim.state_tensors())
        sim._pose_key = None                  # the wall velocities may hold the control's values
        final = sim.state_tensors()
        ctx.sim, ctx.tape, ctx.epochs, ctx.steps, ctx.check = sim, tape, epochs, steps, check
        ctx.snaps, ctx.layout = snaps, layout
        ctx.prm = fs.prm.to_numpy()  # restored in backward (another rollout may run in between)
        ctx.has_wall_velocity = wall_velocity is not None
        ctx.n_walls_given = 0 if wall_velocity is None else wall_velocity.shape[1]
        ctx.n_records = len(records)
        out = list(final)
        for r in records:
            out += list(r)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        sim, fs = ctx.sim, ctx.sim.fields
        n, W = sim.n, fs.n_walls
        dt = runtime.np_dtype()
        model = sim.material.model_code
        A, B = fs.A, fs.B
        layout = ctx.layout
        rows = layout.rows
        A_val, A_adj, B_adj = layout.values(A), layout.adjoints(A), layout.adjoints(B)
        step_adj = A_adj + (fs.pair_f.grad, fs.pair_ti.grad, fs.pair_tj.grad, fs.w_vel.grad)

        def add_kinematic(acc, gx, gv, gw):
            for k, gt in (("x", gx), ("v", gv), ("w", gw)):
                if gt is not None:
                    acc[rows[k]][:n] += gt.detach().cpu().numpy().astype(dt)

        gs = np.zeros((layout.size, 3), dt)   # the adjoint of the current step's input state, packed
        add_kinematic(gs, *grads[:3])
        fs.prm.from_numpy(ctx.prm)
        kd.derive_constants(fs, model)
        fs.prm.grad.fill(0)
        fs.derived.grad.fill(0)  # accumulates over all steps, mapped to prm at the end
        wv_grad = np.zeros((ctx.steps, W, 3), dt)
        epoch_loaded, walls_loaded = None, (None, None, None)

        def load_epoch(e):
            nonlocal epoch_loaded
            if epoch_loaded != e:
                for k in _EPOCH_FIELDS:
                    getattr(fs, k).from_numpy(ctx.epochs[e][k])
                epoch_loaded = e

        for entry in reversed(ctx.tape):
            if entry[0] == "record":
                k = entry[1]
                add_kinematic(gs, *grads[3 + 3 * k: 6 + 3 * k])
            elif entry[0] == "remap":
                load_epoch(entry[1])
                kd.zero_vectors(A_adj)
                kd.unpack_vectors(B_adj, gs)
                kd.remap_state.grad(fs, A, B, n, ctx.epochs[entry[1]]["n_pairs"], W)
                kd.pack_vectors(A_adj, gs)
            else:
                _, t, walls, e = entry
                load_epoch(e)
                kd.unpack_vectors(A_val, ctx.snaps[t])
                for f, a, loaded in zip((fs.w_vel, fs.w_R, fs.w_on), walls, walls_loaded):
                    if a is not loaded:
                        f.from_numpy(a)
                walls_loaded = walls
                kd.step(fs, A, B, model, W, False, n, ctx.epochs[e]["n_pairs"])  # this step's pair buffers
                kd.zero_vectors(step_adj)
                kd.unpack_vectors(B_adj, gs)
                kd.step.grad(fs, A, B, model, W, False, n, ctx.epochs[e]["n_pairs"])
                kd.pack_vectors(A_adj, gs)
                if ctx.has_wall_velocity:
                    wv_grad[t] = fs.w_vel.grad.to_numpy()
                if ctx.check:
                    hit = adjoint_health.first_bad_row({f"{k} adjoint": gs[rows[k]] for k in ("x", "v", "w")}, n)
                    if hit is not None:
                        raise GradientNotFinite(t, "DEM step (contacts, walls, integration)",
                                                f"{hit[0]} of sphere {hit[1]}",
                                                f"in {runtime.config().precision} the contact law's "
                                                f"derivatives can overflow: try diffsim.init(precision='f64')")
        kd.derive_constants.grad(fs, model)
        sim._pose_key = None
        bad = [name for name, a in (("parameters", fs.prm.grad.to_numpy()), ("initial state", gs[rows["x"]][:n]),
                                    ("wall velocities", wv_grad)) if not np.all(np.isfinite(a))]
        if bad and ctx.check:
            raise GradientNotFinite(0, "DEM material constants", f"the gradient of the {', '.join(bad)}",
                                    f"in {runtime.config().precision} the contact law's derivatives can "
                                    f"overflow: try diffsim.init(precision='f64')")
        tdt = runtime.torch_dtype()
        g_prm = torch.from_numpy(fs.prm.grad.to_numpy().astype(np.float64)).to(tdt)
        g_x0, g_v0, g_w0 = (torch.from_numpy(gs[rows[k]][:n].astype(np.float64)).to(tdt) for k in ("x", "v", "w"))
        g_wv = torch.from_numpy(wv_grad[:, : ctx.n_walls_given].astype(np.float64)).to(tdt) \
            if ctx.has_wall_velocity else None
        return None, None, None, g_wv, g_prm, g_x0, g_v0, g_w0, None


def rollout_steps(sim: DEMSolver, steps: int, params: dict | None = None, x0=None, v0=None, w0=None,
                  wall_velocity=None, record_every: int | None = None, check_gradients: bool = True) -> dict:
    """Run ``steps`` DEM steps from t = 0 differentiably (see the module docstring); behind
    :func:`diffsim.rollout`.

    Args:
        sim: a :class:`DEMSolver` created with ``requires_grad=True``.
        params: ``{name: tensor}`` overriding the material's ``E``, ``nu``, ``restitution``,
            ``friction``, ``rolling_friction``, ``cohesion`` or ``stiffness``.
        x0, v0, w0: initial positions (m), velocities (m/s), angular velocities (rad/s),
            (n,3) tensors; default: what was added to the solver.
        wall_velocity: (steps, k, 3) translation velocities (m/s) of the first k walls per
            step, replacing their own ``velocity``.
        record_every: also return the state every that many steps.
        check_gradients: NaN/inf adjoints raise :class:`~diffsim.GradientNotFinite` naming
            the step and sphere where they appear (checked after every reversed step;
            False: skip).

    Returns ``{"x", "v", "w": (n,3) tensors after the last step, "records": [{"x","v","w"}]}``.
    """
    if not isinstance(sim, DEMSolver):
        raise InvalidScene("a differentiable DEM rollout needs a DEMSolver")
    if not sim.requires_grad:
        raise InvalidScene("a differentiable DEM rollout needs DEMSolver(..., requires_grad=True) (adjoint fields)")
    if sim.pours:
        raise NotImplementedError("DEM rollout: pouring inserts spheres, which is not differentiable")
    steps = int(steps)
    if steps < 1:
        raise InvalidScene("steps must be >= 1")
    sim.build()
    dtype = runtime.torch_dtype()
    params = dict(params or {})
    unknown = set(params) - set(PARAMETERS)
    if unknown:
        raise InvalidScene(f"unknown DEM parameters {sorted(unknown)}; differentiable ones: {list(PARAMETERS)}")
    params = checked_overrides(sim, params)
    base = torch.tensor(sim.material.vector(sim.dt), dtype=dtype)
    entries = [params[name].to(dtype) if name in params else base[i]
               for name, i in _PRM_INDEX.items()]
    prm = torch.stack(entries + [base[7], base[8]])
    init = sim.initial_arrays()
    x0, v0, w0 = (torch.as_tensor(init[k], dtype=dtype) if t is None else t.to(dtype)
                  for k, t in (("x", x0), ("v", v0), ("w", w0)))
    for name, t in (("x0", x0), ("v0", v0), ("w0", w0)):
        if tuple(t.shape) != (sim.n, 3):
            raise InvalidScene(f"{name} must have shape ({sim.n}, 3), got {tuple(t.shape)}")
    if wall_velocity is not None:
        wall_velocity = wall_velocity.to(dtype)
        if wall_velocity.dim() != 3 or wall_velocity.shape[0] != steps or wall_velocity.shape[2] != 3 \
                or not 1 <= wall_velocity.shape[1] <= len(sim.walls):
            raise InvalidScene(f"wall_velocity must have shape ({steps}, k <= {len(sim.walls)}, 3), got "
                               f"{tuple(wall_velocity.shape)}")
    every = int(record_every or 0)
    out = _Rollout.apply(sim, steps, every, wall_velocity, prm, x0, v0, w0, bool(check_gradients))
    records = [dict(zip("xvw", out[3 + 3 * k: 6 + 3 * k])) for k in range((len(out) - 3) // 3)]
    return {"x": out[0], "v": out[1], "w": out[2], "records": records}
