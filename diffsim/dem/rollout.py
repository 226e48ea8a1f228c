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
contact histories, wall offsets). The rollout is a chain of segments of the adjoint core
(:mod:`diffsim.core.adjoint`, :class:`DEMHooks`; max(64, sqrt(steps)) steps each, cut at
records) whose tapes hold every step's packed input state, within ``tape_memory``; a
segment whose tape was evicted is replayed from its input with the neighbour lists it
used. The backward pass restores each step's input and runs the step kernel's Taichi
adjoint (it recomputes the pair forces itself: the kernel reads only its input state and
writes the per-pair buffers before it sums them linearly, so nothing else is re-run); the
adjoints stay in the two state fields' adjoints, alternating (three launches per step), and
are tested once per segment (a non-finite one: the segment again, step by step).
Neighbour lists, pair lists and the active set are constants of the backward pass: a
contact that opens or closes inside the window is differentiated on each side of the
event, not across it (the gradient of the discrete event itself is not defined). Memory:
one packed state per step (about n (9 + 3 max_neighbors + 3 walls) numbers) while the
tapes fit ``tape_memory``, else one per segment plus one segment's.

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
from ..core.adjoint import DEFAULT_TAPE_MEMORY, SegmentHooks, Tape, segment, tape_cache
from ..core.adjoint import cuts as segment_cuts
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
    """Where each state field sits in one packed (rows, 3) state (see kd.pack_vectors)."""

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


SEGMENT_STEPS = 64            # shortest segment of a rollout (fewer, longer segments: less overhead)

_EPOCH_FIELDS = ("nbr_n", "rev", "rev_n", "active", "pair_i", "pair_j", "pair_perm", "pair_start")


class _DEMTape(Tape):
    """Every step's input state of a segment, packed: (steps, rows, 3)."""

    def __init__(self, steps, rows, dtype):
        self.snaps = np.empty((steps, rows, 3), dtype)


class _DEMSegment:
    """Steps ``start .. start + steps``. Its first forward run writes ``script``: per step
    the wall data and neighbour-list epoch it used and the epoch a rebuild after it
    switched to (or None); a re-run replays the script (same pairs, no rebuild)."""

    def __init__(self, start, steps):
        self.start, self.steps, self.script = start, steps, None


class DEMHooks(SegmentHooks):
    """The DEM's hooks into the adjoint core (:mod:`diffsim.core.adjoint`). A segment's
    inputs are ``(prm, packed state, wall velocities (steps, k, 3) or None)``, its output
    the packed state (kinematics, contact histories, wall offsets: :class:`_Layout`).
    Forward: the step kernel, rebuilding neighbour lists as :meth:`DEMSolver.step` does;
    the tape holds every step's packed input state. Reverse: restore the step's input, run
    the step kernel's Taichi adjoint; a rebuild's history
    remap is reversed by the remap kernel's adjoint. Neighbour lists (epochs) are constants
    of the backward pass."""

    def __init__(self, sim, longest, check=True):
        self.sim, self.check = sim, check
        self.cache = tape_cache(sim)
        fs = sim.fields
        self.layout = _Layout(fs.A)
        self.longest = int(longest)
        self.model = sim.material.model_code
        self.epochs = [self._epoch()]
        self.epoch_loaded = 0
        self.walls_loaded = (None, None, None)
        self.steps = None                 # of the whole rollout (set by rollout_steps)
        self.removed0 = int(fs.removed[None])

    def _epoch(self):
        fs = self.sim.fields
        return dict({k: getattr(fs, k).to_numpy() for k in _EPOCH_FIELDS}, n_pairs=self.sim.n_pairs)

    def _load_epoch(self, e):
        if self.epoch_loaded != e:
            for k in _EPOCH_FIELDS:
                getattr(self.sim.fields, k).from_numpy(self.epochs[e][k])
            self.epoch_loaded = e

    def tape_spec(self, seg):
        rows = self.layout.size
        dtype = runtime.np_dtype()
        nbytes = self.longest * rows * 3 * np.dtype(dtype).itemsize
        return ("dem", rows, self.longest), nbytes, lambda: (_DEMTape(self.longest, rows, dtype), None)

    def load(self, seg, inputs):
        self.reload(seg, inputs)
        if seg.script is not None:   # a re-run (a first run continues from the fields as they are)
            kd.unpack_vectors(self.layout.values(self.sim.state), inputs[1].detach().cpu().numpy())

    def reload(self, seg, inputs):
        fs = self.sim.fields
        fs.prm.from_numpy(inputs[0].detach().cpu().numpy().astype(runtime.np_dtype()))
        kd.derive_constants(fs, self.model)

    def run(self, seg, tape, inputs):
        wv = inputs[2]
        wv = None if wv is None else wv.detach().cpu().numpy().astype(runtime.np_dtype())
        if seg.script is None:
            self._first_run(seg, tape, wv)
        else:
            self._replay(seg, tape)

    def _first_run(self, seg, tape, wv):
        sim, fs = self.sim, self.sim.fields
        n, W = sim.n, fs.n_walls
        script = []
        pose_key, walls = object(), None
        for t in range(seg.steps):
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
            if tape is not None:
                kd.pack_vectors(self.layout.values(sim.state), tape.snaps[t])
            # the tracked kernel (as DEMSolver.step) records the largest displacement since the
            # last neighbour build and skips walls flagged far at that build; a wall driven by
            # the control may move in from afar, so then every wall is checked and the
            # displacement measured apart (the backward pass differentiates the untracked kernel)
            kd.step(fs, sim.state, sim.spare, self.model, W, wv is None, n, sim.n_pairs)
            sim._swap()
            sim._advance_walls()
            sim.time += sim.dt
            sim.step_count += 1
            if wv is not None:
                fs.max_disp[None] = 0.0
                kd.max_displacement(fs, sim.state, n)
            entry = [step_walls, len(self.epochs) - 1, None]
            if fs.max_disp[None] > 0.5 * sim.skin:
                sim._rebuild()
                if int(fs.removed[None]) != self.removed0:
                    raise NotImplementedError("DEM rollout: spheres left through the outflow region during a "
                                              "differentiable rollout; removal is not differentiable")
                self.epochs.append(self._epoch())
                entry[2] = len(self.epochs) - 1
            self.epoch_loaded = len(self.epochs) - 1
            script.append(entry)
        if wv is not None:
            sim._pose_key = None              # the wall velocities hold the control's values
        seg.script = script

    def _load_walls(self, walls):
        fs = self.sim.fields
        for f, a, loaded in zip((fs.w_vel, fs.w_R, fs.w_on), walls, self.walls_loaded):
            if a is not loaded:
                f.from_numpy(a)
        self.walls_loaded = walls

    def _replay(self, seg, tape):
        sim, fs = self.sim, self.sim.fields
        W = fs.n_walls
        self.epoch_loaded, self.walls_loaded = None, (None, None, None)
        for t, (walls, e, remap) in enumerate(seg.script):
            self._load_epoch(e)
            self._load_walls(walls)
            kd.pack_vectors(self.layout.values(sim.state), tape.snaps[t])
            kd.step(fs, sim.state, sim.spare, self.model, W, False, sim.n, self.epochs[e]["n_pairs"])
            sim._swap()
            if remap is not None:
                self._load_epoch(remap)
                kd.remap_state(fs, sim.state, sim.spare, sim.n, self.epochs[remap]["n_pairs"], W)
                sim._swap()
        sim._pose_key = None

    def outputs(self, seg, inputs):
        out = np.empty((self.layout.size, 3), runtime.np_dtype())
        kd.pack_vectors(self.layout.values(self.sim.state), out)
        return (torch.from_numpy(out.astype(np.float64)).to(inputs[1].dtype),)

    def seed(self, seg, tape, grads):
        fs = self.sim.fields
        g = grads[0]
        gs = (np.zeros((self.layout.size, 3)) if g is None else g.detach().cpu().numpy()).astype(runtime.np_dtype())
        kd.unpack_vectors(self.layout.adjoints(fs.B), gs)
        seg.out = fs.B        # the state whose adjoint fields hold the adjoint of the next step's output
        seg.wv_grad = np.zeros((seg.steps, fs.n_walls, 3), runtime.np_dtype())
        if seg.start + seg.steps == self.steps:   # the backward pass begins: other code may have
            self.epoch_loaded = None              # changed the lists and walls since the forward pass
            self.walls_loaded = (None, None, None)
        fs.prm.grad.fill(0)
        fs.derived.grad.fill(0)  # accumulates over the segment's steps, mapped to prm at the end

    def reverse(self, seg, tape, k, inputs, check=False):
        """Step ``k`` backwards. The adjoints stay in the state fields: the step's output
        adjoint is in ``seg.out``'s, its input state is restored into the other state,
        whose adjoint the Taichi adjoint fills (three launches, no copies); ``check``
        tests the input adjoint (:meth:`locate`)."""
        sim, fs = self.sim, self.sim.fields
        n, W = sim.n, fs.n_walls
        walls, e, remap = seg.script[k]
        if remap is not None:
            inp = fs.A if seg.out is fs.B else fs.B
            self._load_epoch(remap)
            kd.zero_vectors(self.layout.adjoints(inp))
            kd.remap_state.grad(fs, inp, seg.out, n, self.epochs[remap]["n_pairs"], W)
            seg.out = inp
        inp = fs.A if seg.out is fs.B else fs.B
        self._load_epoch(e)
        kd.unpack_vectors(self.layout.values(inp), tape.snaps[k])
        self._load_walls(walls)
        kd.zero_vectors(self.layout.adjoints(inp) + (fs.pair_f.grad, fs.pair_ti.grad, fs.pair_tj.grad, fs.w_vel.grad))
        kd.step.grad(fs, inp, seg.out, self.model, W, False, n, self.epochs[e]["n_pairs"])
        seg.out = inp
        if inputs[2] is not None:
            seg.wv_grad[k] = fs.w_vel.grad.to_numpy()
        if check:
            gs, rows = self._state_adjoint(seg), self.layout.rows
            hit = adjoint_health.first_bad_row({f"{q} adjoint": gs[rows[q]] for q in ("x", "v", "w")}, n)
            if hit is not None:
                raise GradientNotFinite(seg.start + k, "DEM step (contacts, walls, integration)",
                                        f"{hit[0]} of sphere {hit[1]}", _F64_HINT)

    def _state_adjoint(self, seg):
        gs = np.empty((self.layout.size, 3), runtime.np_dtype())
        kd.pack_vectors(self.layout.adjoints(seg.out), gs)
        return gs

    def input_grads(self, seg, tape, inputs):
        fs = self.sim.fields
        kd.derive_constants.grad(fs, self.model)
        self.sim._pose_key = None
        prm, packed, wv = inputs
        g_prm = torch.from_numpy(fs.prm.grad.to_numpy().astype(np.float64)).to(prm.dtype)
        g_packed = torch.from_numpy(self._state_adjoint(seg).astype(np.float64)).to(packed.dtype)
        g_wv = None if wv is None else torch.from_numpy(seg.wv_grad[:, : wv.shape[1]].astype(np.float64)).to(wv.dtype)
        return g_prm, g_packed, g_wv

    def locate(self, seg, tape, grads, inputs):
        """Reverse the segment again testing each step's input adjoint (raises at the first
        non-finite one), else name the parameter or wall adjoints."""
        g_prm, g_packed, g_wv = self.input_grads(seg, tape, inputs)
        if not torch.isfinite(g_packed).all():
            self.seed(seg, tape, grads)
            for k in reversed(range(seg.steps)):
                self.reverse(seg, tape, k, inputs, check=True)
        bad = [name for name, g in (("parameters", g_prm), ("initial state", g_packed), ("wall velocities", g_wv))
               if g is not None and not torch.isfinite(g).all()]
        raise GradientNotFinite(seg.start, "DEM material constants", f"the gradient of the {', '.join(bad)}",
                                _F64_HINT)


_F64_HINT = ("the contact law's derivatives can overflow in float32: try diffsim.init(precision='f64')")


def rollout_steps(sim: DEMSolver, steps: int, params: dict | None = None, x0=None, v0=None, w0=None,
                  wall_velocity=None, record_every: int | None = None, check_gradients: bool = True,
                  tape_memory: int | None = None) -> dict:
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
        tape_memory: bytes of step tapes kept from the forward to the backward pass
            (default 1 GiB); segments beyond it are replayed in the backward pass.

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
    sim._reset_for_rollout(x0.detach().cpu().numpy(), v0.detach().cpu().numpy(), w0.detach().cpu().numpy())
    tape_cache(sim).budget = DEFAULT_TAPE_MEMORY if tape_memory is None else int(tape_memory)
    every = int(record_every or 0)
    # A step's tape is small (one packed state) and each segment costs a few launches in
    # both passes: segments of at least SEGMENT_STEPS steps (the budget still applies)
    bounds = segment_cuts(steps, max(SEGMENT_STEPS, math.ceil(math.sqrt(steps))), every or None)
    hooks = DEMHooks(sim, max(b - a for a, b in zip(bounds[:-1], bounds[1:])), bool(check_gradients))
    hooks.steps = steps
    rows = hooks.layout.rows
    base = np.empty((hooks.layout.size, 3), runtime.np_dtype())
    kd.pack_vectors(hooks.layout.values(sim.state), base)
    base = torch.from_numpy(base.astype(np.float64)).to(dtype)
    parts = []                                 # the packed start state, differentiable in x0, v0, w0
    for name, sl in sorted(rows.items(), key=lambda kv: kv[1].start):
        given = {"x": x0, "v": v0, "w": w0}.get(name)
        parts.append(base[sl] if given is None else torch.cat([given, base[sl][sim.n:]]))
    packed = torch.cat(parts)
    records = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        wv = None if wall_velocity is None else wall_velocity[a:b]
        packed, = segment(hooks, _DEMSegment(a, b - a), prm, packed, wv)
        if every and b % every == 0:
            records.append({q: packed[rows[q]][: sim.n] for q in "xvw"})
    sim._pose_key = None                       # the next step uploads the walls' own data again
    return {**{q: packed[rows[q]][: sim.n] for q in "xvw"}, "records": records}
