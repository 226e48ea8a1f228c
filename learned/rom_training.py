"""Training a GIOROM surrogate on a recorded sweep (``diffsim train-rom``).

Two stages on the ``train`` split (``val`` is monitored): the time-stepper learns one-frame
accelerations of sparse subsets (farthest-point samples of each trajectory's first frame)
with random-walk noise on the velocity window (so that it corrects its own rollout errors),
then the decoder's correction learns the dense displacements from the sparse ones.

Checkpoints (the model file plus optimizer state and iteration) are written atomically every
``checkpoint_every`` iterations and at the end; ``resume=True`` continues from one. Under
``torchrun`` every process draws its own batches and gradients are averaged (gloo or NCCL);
rank 0 writes.
"""
from __future__ import annotations

import json
import math

import numpy as np
import torch

from diffsim.errors import InvalidScene

from .rom import GIOROM, frame_velocities, history_at, material_type
from .training import _average_gradients, _distributed, descend, optimise, resume_checkpoint

SUBSETS = 4          # sparse subsets per trajectory (farthest-point samples from different starts)
DECODER_QUERIES = 1024


class ROMData:
    """Trajectories of one split of a recorded sweep, as arrays for training and evaluation."""

    def __init__(self, trajectories, sparse: int, horizon: int | None = None, seed: int = 0):
        from .giorom import farthest_point_sample
        if not trajectories:
            raise InvalidScene("ROMData: no trajectories (is the split empty? record more runs)")
        rng = np.random.default_rng(seed)
        self.items = []
        frame_dt = None
        for traj in trajectories:
            if traj.velocities is None:
                raise InvalidScene(f"{traj.path}: GIOROM data needs the velocities of frame 0 (record them)")
            if frame_dt is not None and abs(traj.dt - frame_dt) > 1e-9 * frame_dt:
                raise InvalidScene(f"{traj.path}: frame spacing {traj.dt} s differs from {frame_dt} s of the others")
            frame_dt = traj.dt
            pos = np.asarray(traj.positions, np.float32)
            if horizon is not None:
                pos = pos[:horizon + 1]
            if pos.shape[1] < sparse:
                raise InvalidScene(f"{traj.path}: {pos.shape[1]} particles, fewer than the {sparse} sparse points")
            vel = frame_velocities(pos, np.asarray(traj.velocities[0], np.float32) * np.float32(traj.dt))
            subsets = [farthest_point_sample(pos[0], sparse, int(rng.integers(pos.shape[1]))) for _ in range(SUBSETS)]
            self.items.append({"positions": pos, "velocities": vel, "subsets": subsets,
                               "type": material_type(traj), "path": traj.path,
                               "bounds": traj.metadata.get("bounds")})
        self.frame_dt = float(frame_dt)
        bounds = [it["bounds"] for it in self.items if it["bounds"] is not None]
        self.bounds = bounds[0] if bounds else [[0.0] * 3, [1.0] * 3]

    def statistics(self) -> dict:
        v = np.concatenate([it["velocities"].reshape(-1, 3) for it in self.items])
        a = np.concatenate([np.diff(it["velocities"][1:], axis=0).reshape(-1, 3) for it in self.items])
        return {"v_mean": v.mean(0).tolist(), "v_std": np.maximum(v.std(0), 1e-8).tolist(),
                "a_mean": a.mean(0).tolist(), "a_std": np.maximum(a.std(0), 1e-8).tolist()}

    def windows(self, rng, size: int, history: int, frames: int):
        """Start states (x, hist, types, reference) and the next ``frames`` positions
        (B,frames,M,3) of ``size`` random (run, subset, start frame)."""
        rows = []
        for _ in range(size):
            it, ids, t, x, hist = self._draw(rng, history, frames)
            rows.append((x, hist, it, ids, it["positions"][t + 1:t + 1 + frames, ids]))
        return _tensors(rows)

    def batch(self, rng, size: int, history: int, noise: float):
        """Inputs (x, hist, types, reference) and target accelerations for ``size`` random
        (run, subset, frame)."""
        rows = []
        for _ in range(size):
            it, ids, t, x, hist = self._draw(rng, history, 1)
            if noise > 0:   # random walk on the window; the target still lands on the data
                steps = rng.normal(0.0, noise / math.sqrt(history), hist.shape).astype(np.float32)
                hist = hist + steps
                x = x + steps.sum(1)
            rows.append((x, hist, it, ids, (it["positions"][t + 1, ids] - x) - hist[:, -1]))
        return _tensors(rows)

    def _draw(self, rng, history: int, frames: int):
        """A random run, sparse subset and frame ``t`` with ``frames`` frames after it: the
        run, the subset's ids, t, positions (M,3) and velocity window (M,H,3) at t."""
        it = self.items[int(rng.integers(len(self.items)))]
        ids = it["subsets"][int(rng.integers(SUBSETS))]
        t = int(rng.integers(it["positions"].shape[0] - frames))
        return it, ids, t, it["positions"][t, ids], history_at(it["velocities"][:, ids], t, history).transpose(1, 0, 2)


def _tensors(rows):
    """(x, hist, types, reference, target) batches from rows ``(x, hist, run, ids, target)``."""
    x, hist, runs, ids, target = zip(*rows)
    types = [np.full(len(i), run["type"]) for run, i in zip(runs, ids)]
    reference = [run["positions"][0, i] for run, i in zip(runs, ids)]
    return (torch.from_numpy(np.stack(x)), torch.from_numpy(np.stack(hist)), torch.from_numpy(np.stack(types)).long(),
            torch.from_numpy(np.stack(reference)), torch.from_numpy(np.stack(target)))


def train_rom(dataset, out, config="small", iterations: int = 2000, decoder_iterations: int = 100,
              batch: int = 8, lr: float = 1e-3, noise: float = 2e-5, horizon: int | None = 100,
              unroll: int = 4, unroll_from: float = 0.5, checkpoint_every: int = 200, resume: bool = False,
              seed: int = 0, progress: bool = True, **overrides) -> GIOROM:
    """Train a GIOROM on the recorded sweep ``dataset`` (a folder or its dataset.json) and
    write the model file ``out``.

    Args:
        config: "small" or "paper" (:data:`diffsim.learned.rom.CONFIGS`); ``overrides``
            change single entries (e.g. ``sparse=256``).
        iterations: time-stepper optimiser steps; decoder_iterations: decoder steps.
        batch: samples per step (under torchrun shared among the processes). noise: random-walk noise std (m/frame) of the
            velocity window. horizon: frames of each trajectory used (the training horizon).
        unroll: from ``unroll_from`` x ``iterations`` on, train on rollouts of this many
            frames (positions, back-propagated through the whole window) instead of single
            frames: rollout errors compound, and this is what a surrogate is used for.
        resume: continue from ``out`` (its optimizer state and iteration).
    """
    from pathlib import Path

    from diffsim.sweep import load_dataset
    rank, world = _distributed()
    out = Path(out)
    torch.manual_seed(seed)
    model, extra, start, history_log = resume_checkpoint(GIOROM.load, out, resume)
    if model is not None:
        train = ROMData(load_dataset(dataset, "train"), model.sparse, horizon, seed)
    else:
        cfg = dict(GIOROM(config, **overrides).config)
        train = ROMData(load_dataset(dataset, "train"), cfg["sparse"], horizon, seed)
        model = GIOROM(cfg, train.bounds, train.statistics(), train.frame_dt,
                       metadata={"dataset": str(dataset), "horizon": horizon, "runs": len(train.items)})
    stepper_params = list(model.stepper.parameters())
    opt = torch.optim.Adam(stepper_params, lr=lr)
    dec_opt = torch.optim.Adam(model.decoder.parameters(), lr=1e-3)
    if extra is not None and "optimizer" in extra:
        opt.load_state_dict(extra["optimizer"])
        if "decoder_optimizer" in extra:
            dec_opt.load_state_dict(extra["decoder_optimizer"])
    sched = lambda k: lr * (0.1 ** (k / max(iterations, 1)))  # noqa: E731  (exponential decay to lr/10)
    if batch % world:
        raise InvalidScene(f"train-rom: the batch ({batch}) must be a multiple of the processes ({world})")
    rng = np.random.default_rng(seed)   # the same stream on every process: each takes its share of a batch
    if extra is not None and "rng" in extra:
        rng.bit_generator.state = json.loads(extra["rng"])
    total = iterations + decoder_iterations
    a_std = model.stepper.a_std

    def save(k, rng_state):
        if rank == 0:
            model.metadata["history"] = history_log[-50:]
            model.save(out, {"iteration": k, "history": history_log, "optimizer": opt.state_dict(),
                             "decoder_optimizer": dec_opt.state_dict(), "rng": json.dumps(rng_state)})

    def iteration(k):
        if k < iterations:
            for g in opt.param_groups:
                g["lr"] = sched(k)
            if unroll and k >= unroll_from * iterations:
                x, hist, types, ref, target = (t[rank::world] for t in train.windows(rng, batch, model.history, unroll))
                errors = []
                for j in range(unroll):
                    x, hist = model.stepper(x, hist, types, ref)
                    errors.append((((x - target[:, j]) / a_std) ** 2).mean())
                loss = torch.stack(errors).mean()
            else:
                x, hist, types, ref, target = (t[rank::world] for t in train.batch(rng, batch, model.history, noise))
                pred = model.stepper.acceleration(x, hist, types, ref)
                loss = (((pred - target) / a_std) ** 2).mean()
            return descend(opt, loss, stepper_params, world), "stepper"
        return _decoder_step(model, train, rng, dec_opt, world), "decoder"

    optimise(iteration, start, total, save, history_log, checkpoint_every, rng, out, "train-rom", progress, rank)
    return model


def _decoder_step(model, data, rng, opt, world) -> torch.Tensor:
    it = data.items[int(rng.integers(len(data.items)))]
    ids = it["subsets"][int(rng.integers(SUBSETS))]
    pos = torch.from_numpy(it["positions"])
    q = rng.choice(pos.shape[1], size=min(DECODER_QUERIES, pos.shape[1]), replace=False)
    prepared = model.decoder.prepare(pos[0, ids], pos[0, q])
    t = int(rng.integers(1, pos.shape[0]))
    u = model.decoder(prepared, pos[t, ids] - pos[0, ids])
    loss = (((u - (pos[t, q] - pos[0, q])) / prepared["cell"]) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    loss = _average_gradients(loss, list(model.decoder.parameters()), world)
    opt.step()
    return loss


# ---------------------------------------------------------------------- evaluation
def rollout_dense(model: GIOROM, positions: np.ndarray, velocity0: np.ndarray, frames: int, type_id: int,
                  queries=None, start: int = 0):
    """Run the surrogate from frame 0 of a trajectory: decoded positions (frames+1, Q, 3) of
    the reference points ``queries`` (default all of frame 0's particles)."""
    from .giorom import farthest_point_sample
    dtype = next(model.parameters()).dtype
    ref = torch.as_tensor(positions[0], dtype=dtype)
    ids = farthest_point_sample(positions[0], model.sparse, start)
    q = ref if queries is None else torch.as_tensor(queries, dtype=dtype)
    prepared = model.decoder.prepare(ref[ids], q)
    x = ref[ids][None]
    v0 = torch.as_tensor(np.broadcast_to(velocity0, positions[0].shape)[ids] * model.frame_dt, dtype=dtype)
    hist = v0[None, :, None, :].repeat(1, 1, model.history, 1)
    types = torch.full((1, model.sparse), int(type_id), dtype=torch.long)
    out = [q.clone()]
    with torch.no_grad():
        for _ in range(frames):
            x, hist = model.stepper(x, hist, types, ref[ids][None])
            out.append(q + model.decoder(prepared, x[0] - ref[ids]))
    return torch.stack(out).numpy()


def relative_l2(pred: np.ndarray, truth: np.ndarray, frame: int | None = None) -> float:
    """sqrt(sum |x - x_gt|^2 / sum |x_gt - x_gt(0)|^2) over the particles of ``frame`` (default:
    over all frames too); ``pred``, ``truth``: (T,N,3) with frame 0 the start."""
    sel = slice(None) if frame is None else slice(frame, frame + 1)
    num = float(((pred[sel] - truth[sel]) ** 2).sum())
    den = float(((truth[sel] - truth[:1]) ** 2).sum())
    return math.sqrt(num / max(den, 1e-30))


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric mean nearest-neighbour distance (m) between point sets a and b."""
    from scipy.spatial import cKDTree
    return 0.5 * (float(cKDTree(b).query(a)[0].mean()) + float(cKDTree(a).query(b)[0].mean()))
