"""Differentiable FEM rollouts (PyTorch in, PyTorch out).

    ds.init(precision="f64")                        # gradient checks; f32 works too
    E = torch.tensor(3e5, dtype=torch.float64, requires_grad=True)
    out = ds.rollout(sim, 600, record_every=50, params={"E": E},     # every body's E
                     control={"press.velocity": vel})   # (600 // 50, 6) [v (m/s), w (rad/s)]
    loss = out.records[-1][1].x[sensor_nodes, 2].sum(); loss.backward()

Gradients reach the material parameters (``E``, ``nu``, ``mass_damping``,
``stiffness_damping``), the contact parameters (``contact_stiffness``,
``contact_damping``, ``friction``), for all bodies (``"E"``) or one (``"pad.E"``),
the initial state (``x``, ``v``) and the drivers' linear and angular velocities per record
interval (a driver's pose is the integral of its velocities, computed in torch).
Colliders follow their own (non-differentiable) kinematics.

How: the rollout runs in chunks of at most ``sim.K`` (``tape_substeps``) substeps, each a
segment of the adjoint core (:mod:`diffsim.core.adjoint`, :class:`FEMHooks`). A chunk
keeps every substep's state on the solver's tape, and its backward runs Taichi's adjoint
of the substep kernel row by row; a chunk whose tape was overwritten by a later chunk is
recomputed first (checkpointing: memory is one tape plus one state per chunk). Contact is a penalty law with a max/min structure, so
gradients are exact almost everywhere and one-sided where a node touches or leaves a
collider or switches between stick and slip.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import adjoint_health, runtime
from ..core.adjoint import SegmentHooks, Tape, segment, tape_cache
from ..errors import InvalidScene

MATERIAL_KEYS = ("E", "nu", "mass_damping", "stiffness_damping")
CONTACT_KEYS = ("contact_stiffness", "contact_damping", "friction")


def _skew(w):
    z = torch.zeros_like(w[..., 0])
    return torch.stack([torch.stack([z, -w[..., 2], w[..., 1]], -1),
                        torch.stack([w[..., 2], z, -w[..., 0]], -1),
                        torch.stack([-w[..., 1], w[..., 0], z], -1)], -2)


def _params(sim, params, dtype):
    """(B,4) material and (B,3) contact parameter tensors with the overrides of ``params``."""
    B = len(sim.bodies)
    unknown = set(params) - set(MATERIAL_KEYS) - set(CONTACT_KEYS)
    if unknown:
        raise InvalidScene(f"rollout: unknown parameter(s) {sorted(unknown)}; known: "
                           f"{list(MATERIAL_KEYS + CONTACT_KEYS)}")

    def table(keys, defaults):
        cols = []
        for j, k in enumerate(keys):
            base = torch.tensor([d[j] for d in defaults], dtype=dtype)
            if k in params:
                val = params[k]
                val = val.to(dtype) if torch.is_tensor(val) else torch.as_tensor(np.asarray(val, np.float64), dtype=dtype)
                if val.numel() == 1:
                    val = val.reshape(()).expand(B)
                if val.shape != (B,):
                    raise InvalidScene(f"rollout: {k} must be a scalar or one value per body ({B})")
                base = val
            cols.append(base)
        return torch.stack(cols, 1)
    prm = table(MATERIAL_KEYS, [b.material.vector() for b in sim.bodies])
    cprm = table(CONTACT_KEYS, [b.contact.vector() for b in sim.bodies])
    if params:
        _validate(sim, prm, cprm)
    return prm, cprm


def _validate(sim, prm, cprm):
    """Overridden parameters checked by the constructors (same messages, per body) and
    against the time-step limit."""
    import dataclasses
    mats = []
    for bi, b in enumerate(sim.bodies):
        mv = prm[bi].detach().double().tolist()
        cv = cprm[bi].detach().double().tolist()
        mats.append(dataclasses.replace(b.material, **dict(zip(MATERIAL_KEYS, mv))))
        dataclasses.replace(b.contact, **{"stiffness": cv[0], "damping": cv[1], "friction": cv[2]})
    sim.check_time_step(mats)


class FEMChunk:
    """Substeps ``start .. start + steps`` of a rollout, recorded every ``rec``, with the
    contact pairs found at its start."""

    def __init__(self, start, steps, rec, pairs):
        self.start, self.steps, self.rec, self.pairs = start, steps, rec, pairs


class FEMHooks(SegmentHooks):
    """The FEM's hooks into the adjoint core (:mod:`diffsim.core.adjoint`). A segment (a
    chunk of at most ``tape_substeps``) has inputs ``(x0, v0, prm, cprm, drv_t, drv_R,
    col_p, col_R)`` and optionally ``external`` ((steps, n, 3) node forces), outputs
    ``(x_k, v_k, x_records, v_records, force_records)``; its
    tape is the solver's own (every substep's row; one per solver), reversed row by row
    with Taichi's adjoint of the substep kernel. ``before_substep(t)`` runs before each
    substep (a coupled system steps its other part there)."""

    def __init__(self, sim, check=True, before_substep=None):
        self.sim, self.check, self.before_substep = sim, check, before_substep
        self.cache = tape_cache(sim)

    def tape_spec(self, seg):
        return ("fem",), None, lambda: (Tape(), None)

    def load(self, seg, inputs):
        from ..kernels import fem as kf
        sim = self.sim
        x0, v0, prm, cprm, drv_t, drv_R, col_p, col_R = (t.detach().cpu().numpy() for t in inputs[:8])
        seg.external = inputs[8].detach().cpu().numpy() if len(inputs) > 8 else None
        kf.load_state(sim.fields, sim._np(x0), sim._np(v0), 0, sim.n)
        sim.fields.prm.from_numpy(sim._np(prm))
        sim.fields.cprm.from_numpy(sim._np(cprm))
        sim._upload_poses(drv_t, drv_R, col_p, col_R)
        seg.n_pairs = sim.upload_pairs(seg.pairs)

    def run(self, seg, tape, inputs):
        if tape is None:
            self.sim._drop_tape()      # these substeps overwrite the tape
        self.sim.run_chunk(seg.steps, seg.rec, seg.n_pairs, self.before_substep, seg.external)

    def outputs(self, seg, inputs):
        return outputs(self.sim, seg.steps, seg.rec, inputs[0].dtype)

    def seed(self, seg, tape, grads):
        seed_adjoint(self.sim, seg.steps, seg.rec, *grads)

    def reverse(self, seg, tape, k, inputs):
        substep_adjoint(self.sim, k, seg.rec, seg.n_pairs)

    def input_grads(self, seg, tape, inputs):
        grads = input_grads(self.sim, seg.steps, inputs[:8])
        if len(inputs) > 8:          # the external forces act through fp
            fp = self.sim.fields.fp.grad.to_numpy()[: seg.steps, : self.sim.n]
            grads += (torch.from_numpy(fp).to(inputs[8].dtype),)
        return grads

    def locate(self, seg, tape, grads, inputs):
        adjoint_health.locate_in_fem_tape(self.sim, seg.start, seg.steps, lambda: self.seed(seg, tape, grads),
                                          lambda t: self.reverse(seg, tape, t, inputs))


def outputs(sim, k, rec, dtype):
    """A chunk's outputs from the tape: final positions and velocities, positions and
    velocities at the end of each record interval, mean contact forces over each."""
    rows = np.array([k] + [(r + 1) * rec for r in range(k // rec)], np.int32)
    xs = _read(sim, sim.fields.x, rows, dtype)
    vs = _read(sim, sim.fields.v, rows, dtype)
    fcs = _read(sim, sim.fields.fc, np.arange(k // rec, dtype=np.int32), dtype)
    return xs[0], vs[0], xs[1:], vs[1:], fcs


def seed_adjoint(sim, k, rec, g_xk, g_vk, g_xs, g_vs, g_fc):
    """Clear the tape's adjoints and put the output adjoints of a ``k``-substep chunk in."""
    fs = sim.fields
    for f in fs.tape_fields():
        f.grad.fill(0)
    dtype = runtime.np_dtype()
    N = sim.n
    for fld, g_last, g_records in ((fs.x, g_xk, g_xs), (fs.v, g_vk, g_vs)):
        g = np.zeros((sim.K + 1, N, 3), dtype)      # tape rows: the chunk's end and each record's end
        if g_last is not None:
            g[k] += g_last.detach().cpu().numpy()
        if g_records is not None:
            for r in range(k // rec):
                g[(r + 1) * rec] += g_records[r].detach().cpu().numpy()
        fld.grad.from_numpy(g)
    if g_fc is not None:
        gf = np.zeros((fs.n_records, N, 3), dtype)
        gf[: k // rec] = g_fc.detach().cpu().numpy()
        fs.fc.grad.from_numpy(gf)


def substep_adjoint(sim, t, rec, n_pairs):
    """Reverse pass of tape row ``t -> t + 1``: adjoints of row ``t + 1`` into row ``t``
    (and the per-tet/per-node parameters, poses, ``fp[t]``)."""
    from ..kernels import fem as kf
    fs = sim.fields
    g = sim.gravity
    N = sim.n
    if sim.models == 1 << kf.NEO_HOOKEAN:   # Taichi's adjoint of the node part, the tet part by hand
        runtime.call_quietly_once(("advance.grad", id(fs), sim.cols), kf.advance.grad, fs, sim.cols, t, t // rec,
                                  1.0 / rec, sim.dt, N, n_pairs, g[0], g[1], g[2])
        kf.tet_forces_vjp(fs, t, sim.n_tets)
    else:
        runtime.call_quietly_once(("substep.grad", id(fs), sim.cols, sim.models), kf.substep.grad, fs, sim.cols,
                                  sim.models, t, t // rec, 1.0 / rec, sim.dt, N, sim.n_tets, n_pairs,
                                  g[0], g[1], g[2])


def input_grads(sim, k, saved):
    """Adjoints of a chunk's inputs ``(x0, v0, prm, cprm, drv_t, drv_R)`` after its reverse
    pass, and None for the colliders."""
    fs = sim.fields
    x0, v0, prm, cprm, drv_t, drv_R, col_p, col_R = saved
    gx0 = torch.from_numpy(fs.x.grad.to_numpy()[0]).to(x0.dtype)
    gv0 = torch.from_numpy(fs.v.grad.to_numpy()[0]).to(v0.dtype)
    gprm, gcprm = sim.body_parameter_grads()
    gprm, gcprm = torch.from_numpy(gprm).to(prm.dtype), torch.from_numpy(gcprm).to(cprm.dtype)
    gdt = torch.from_numpy(fs.drv_t.grad.to_numpy()[: k + 1, : drv_t.shape[1]]).to(drv_t.dtype)
    gdR = torch.from_numpy(fs.drv_R.grad.to_numpy()[: k + 1, : drv_R.shape[1]]).to(drv_R.dtype)
    return gx0, gv0, gprm, gcprm, gdt, gdR, None, None


def _tensor(a, dtype):
    """``a`` as a tensor of ``dtype`` (numbers converted from float64, not float32)."""
    return a.to(dtype) if torch.is_tensor(a) else torch.as_tensor(np.asarray(a, np.float64), dtype=dtype)


def _read(sim, fld, rows, dtype):
    from ..kernels import fem as kf
    out = np.zeros((len(rows), sim.n, 3), runtime.np_dtype())
    kf.read_rows(fld, np.ascontiguousarray(rows, np.int32), out, sim.n)
    return torch.from_numpy(out).to(dtype)


def rollout_chunks(sim, substeps: int, record_every: int | None = None, params: dict | None = None,
                   x0=None, v0=None, driver_velocity=None, check_gradients: bool = True) -> dict:
    """The differentiable FEM rollout behind :func:`diffsim.rollout` (from rest at time 0,
    or from ``(x0, v0)``).

    Args:
        sim: a built or unbuilt :class:`~diffsim.FEMSolver` (it is reset to time 0; its
            fields are scratch space of the rollout).
        record_every: substeps per record interval (default: all in one); must divide
            ``substeps`` and ``sim.K`` must be a multiple of it.
        params: overrides ``{key: scalar or (bodies,) tensor}`` (``MATERIAL_KEYS``,
            ``CONTACT_KEYS``).
        driver_velocity: ``{driver index: (substeps // record_every, 6) tensor}``, linear
            (m/s) and angular (rad/s) velocity of that driver, constant over each record
            interval; other drivers follow their own velocities.
        check_gradients: after each chunk's backward pass, NaN/inf adjoints raise
            :class:`~diffsim.GradientNotFinite` naming the substep and node (False: skip).

    Returns a dict of tensors: ``x``/``v`` (R, N, 3) node positions and velocities at the
    end of each record interval, ``force`` (R, N, 3) mean contact force on each node over
    each interval (N), ``x_final``/``v_final`` (N, 3), the drivers' poses at the end of each
    interval ``driver_translation`` (R, D, 3) and ``driver_rotation`` (R, D, 3, 3), and
    ``max_penetration`` (float, m, not differentiable).
    """
    hooks = FEMHooks(sim, bool(check_gradients))
    return run_chunks(sim, substeps, record_every, params, x0, v0, driver_velocity,
                      lambda seg, *tensors: segment(hooks, seg, *tensors))


def run_chunks(sim, substeps, record_every, params, x0, v0, driver_velocity, chunk, records_per_chunk=None) -> dict:
    """:func:`rollout_chunks` with the chunk given: ``chunk(seg, x, v, prm, cprm, drv_t,
    drv_R, col_p, col_R) -> (x_k, v_k, x_records, v_records, force_records)`` with ``seg`` a
    :class:`FEMChunk` (the FEM-MPM coupling passes one that steps the MPM along);
    ``records_per_chunk`` caps the record intervals per chunk (default: as many as the
    tape holds)."""
    sim.build()
    sim.reset()
    dtype = runtime.torch_dtype()
    substeps = int(substeps)
    rec = int(record_every or substeps)
    if substeps < 1 or substeps % rec:
        raise InvalidScene(f"rollout: record_every ({rec}) must divide substeps ({substeps})")
    if sim.K % rec and rec <= sim.K:
        raise InvalidScene(f"rollout: tape_substeps ({sim.K}) must be a multiple of record_every ({rec})")
    if rec > sim.K:
        raise InvalidScene(f"rollout: record_every ({rec}) exceeds tape_substeps ({sim.K}); build the "
                           f"solver with tape_substeps >= {rec}")
    R = substeps // rec
    prm, cprm = _params(sim, params or {}, dtype)
    xr, vr = sim.rest_state()
    x = _tensor(xr if x0 is None else x0, dtype)
    v = _tensor(vr if v0 is None else v0, dtype)
    D = len(sim.drivers)
    Dp = max(1, D)
    vel = torch.zeros((R, Dp, 6), dtype=dtype)
    for r in range(R):
        t = r * rec * sim.dt
        for d, drv in enumerate(sim.drivers):
            vel[r, d, :3] = torch.as_tensor(drv.velocity_at(t))
            vel[r, d, 3:] = torch.as_tensor(drv.angular_velocity_at(t))
    if driver_velocity:  # {driver index: (R, 6)}: differentiable columns
        vel = torch.stack([driver_velocity[d].to(dtype) if d in driver_velocity else vel[:, d] for d in range(Dp)], 1)
    trans = torch.zeros((Dp, 3), dtype=dtype)
    rot = torch.eye(3, dtype=dtype).expand(Dp, 3, 3)
    j = torch.arange(rec + 1, dtype=dtype)
    xs, vs, fcs, trans_out, rot_out = [], [], [], [], []
    per_chunk = min(sim.K // rec, records_per_chunk or sim.K)
    r = 0
    max_pen = 0.0
    while r < R:
        nrec = min(per_chunk, R - r)
        k = nrec * rec
        # poses of rows 0..k: integrate each interval's constant velocities
        t_rows, R_rows = [trans[None]], [rot[None]]
        for q in range(nrec):
            vq = vel[r + q]
            steps = (j[1:, None, None] * sim.dt)                             # (rec, 1, 1)
            t_rows.append(trans[None] + steps * vq[None, :, :3])
            dR = torch.linalg.matrix_exp(_skew(steps * vq[None, :, 3:]))     # (rec, D, 3, 3)
            R_rows.append(dR @ rot[None])
            trans, rot = t_rows[-1][-1], R_rows[-1][-1]
            trans_out.append(trans)
            rot_out.append(rot)
        drv_t = torch.cat(t_rows)
        drv_R = torch.cat(R_rows)
        cp, cR = (torch.from_numpy(a) for a in sim.collider_rows(k))
        sim.time += k * sim.dt
        pairs = sim.contact_pairs(x.detach().cpu().numpy().astype(np.float64))
        x, v, xr_, vr_, fr_ = chunk(FEMChunk(r * rec, k, rec, pairs), x, v, prm, cprm, drv_t, drv_R, cp, cR)
        max_pen = max(max_pen, float(sim.fields.pen.to_numpy()[:k].max()))
        xs.append(xr_)
        vs.append(vr_)
        fcs.append(fr_)
        r += nrec
    return {"x": torch.cat(xs), "v": torch.cat(vs), "force": torch.cat(fcs), "x_final": x, "v_final": v,
            "driver_translation": torch.stack(trans_out)[:, :D], "driver_rotation": torch.stack(rot_out)[:, :D],
            "max_penetration": max_pen}

