"""Training neural constitutive laws inside the differentiable MPM, from one or several
trajectories.

    law = make_law("structured", plastic=True, stress_scale=1e4)
    trainer = LawTrainer(scene, data, *law)          # scene: built with the reference options
    history = trainer.train(iterations=200)
    save_law("law.pt", *law, metadata=trainer.metadata())

    # several motions of the same material (press, shear, twist ...): one scene per trajectory
    trainer = LawTrainer([scene_press, scene_shear], [data_press, data_shear], *law)

With several trajectories every iteration rolls out ``batch`` windows (default: one per
trajectory), drawn from the trajectories in turn, and the loss is their mean.

A window whose rollout is not finite (a step made the law too stiff for the time step)
does not end training: that step is undone (weights and Adam moments; again: the step
before), the learning rate halved from then on, and the iteration repeated (``events`` in
the metadata); after ``max_backoffs`` halvings the trainer raises, naming the iteration
and the window.

Teacher forcing: each iteration restarts the simulation from a recorded frame (the full
MPM state x, v, C, F of the data, when it has it) and rolls ``window`` frames forward; the
window grows linearly from ``window_start`` to ``window_end`` frames over the iterations
(NCLaw's schedule). Without full-state data every window starts at frame 0. Loss: mean
squared particle position error (mm^2) over the window's frames, averaged over ``batch``
windows per iteration; Adam with gradient-norm clipping.

Data parallel: under ``torchrun`` (``torch.distributed`` initialised, e.g. by ``diffsim
train-law``), each of the W processes (its own Taichi runtime) rolls out every W-th of an
iteration's ``batch`` windows and the gradients are summed across processes (gloo on CPU)
before the identical optimiser step everywhere: the result equals one process doing all
``batch`` windows. Only rank 0 writes files.
"""
from __future__ import annotations

import collections
import copy
import math
import time

import numpy as np
import torch

MM2 = 1e-6


class LawTrainer:
    """Train ``elasticity`` (and ``plasticity``) as the material of one body of ``scene``.

    ``scene`` and ``data`` may be lists of equal length (one scene per trajectory, e.g. the
    same body pressed, sheared and twisted): the same modules are the body's material in
    every scene. The scenes must not be built yet: the body's material is replaced by a
    :class:`diffsim.NeuralMaterial` (keeping its density and wave speed for the time step).
    """

    def __init__(self, scene, data, elasticity, plasticity=None, body: str | None = None, lr: float = 3e-3,
                 clip: float = 1.0, window_start: int = 2, window_end: int | None = None, seed: int = 0,
                 checkpoint_every: int = 0, lr_decay: float = 0.1, batch: int | None = None, max_backoffs: int = 4):
        import diffsim as ds
        scenes = list(scene) if isinstance(scene, (list, tuple)) else [scene]
        datas = list(data) if isinstance(data, (list, tuple)) else [data]
        if len(scenes) != len(datas) or not scenes:
            raise ds.InvalidScene(f"give one scene per trajectory: {len(scenes)} scenes, {len(datas)} trajectories")
        self.datas = datas
        self.sims = [sc.solver for sc in scenes]
        self.scene, self.sim, self.data = scenes[0], self.sims[0], datas[0]
        self.elasticity, self.plasticity = elasticity, plasticity
        for sc, sim, d in zip(scenes, self.sims, datas):
            if sim.built:
                raise ds.InvalidScene("LawTrainer needs unbuilt scenes (it swaps the body's material)")
            bodies = sim.bodies if body is None else [sim.body(body)]
            if len(bodies) != 1:
                raise ds.InvalidScene(f"the scene has {len(bodies)} bodies; name the one to learn with body=")
            b = bodies[0]
            if sim is self.sim:
                self.body, self.reference_material = b, b.material
            b.material = ds.NeuralMaterial(elasticity=elasticity, plasticity=plasticity,
                                           density=b.material.density, wave_speed_estimate=b.material.wave_speed())
            sim.build()
            d.check_scene(sc)
        self.modules = [m for m in (elasticity, plasticity) if m is not None]
        self.params = [p for m in self.modules for p in m.parameters()]
        self.opt = torch.optim.Adam(self.params, lr=lr)
        self.lr, self.lr_decay = float(lr), float(lr_decay)  # lr decays to lr * lr_decay (cosine)
        self.clip = float(clip)
        self.window_start = max(1, int(window_start))
        self.window_end = int(window_end or (min(d.frames for d in datas) - 1))
        self.rng = np.random.default_rng(seed)
        self.batch = len(datas) if batch is None else int(batch)
        if self.batch < 1:
            raise ds.InvalidScene(f"batch must be >= 1 window, got {batch}")
        self.rank, self.world = _distributed()
        if self.world > 1:  # every process starts from rank 0's weights
            import torch.distributed as dist
            for p in self.params:
                dist.broadcast(p.data, 0)
        self.checkpoint_every = checkpoint_every  # 0: keep the whole window (no recomputation)
        self.dtype = next(iter(self.params)).dtype
        self.history = []
        self.max_backoffs = int(max_backoffs)
        self.lr_factor, self.backoffs, self.events = 1.0, 0, []
        self._snapshots = collections.deque(maxlen=self.max_backoffs)   # weights and Adam state before each step

    def close(self):
        """Release every scene's solver."""
        for sim in self.sims:
            sim.close()

    # ------------------------------------------------------------------ rollouts
    def state_at(self, frame: int, case: int = 0):
        """Trajectory ``case``'s MPM state at ``frame`` (full-state data unless frame 0)."""
        from diffsim.mpm.rollout import MPMState
        d, dt = self.datas[case], self.dtype
        if frame == 0 and not d.full_state:
            return self.sims[case].initial_state()
        if not d.full_state:
            raise ValueError("teacher forcing from frame > 0 needs full-state data (diffsim generate --full-state)")
        return MPMState(torch.tensor(d.positions[frame], dtype=dt), torch.tensor(d.velocities[frame], dtype=dt),
                        torch.tensor(d.affine[frame], dtype=dt), torch.tensor(d.deformation[frame], dtype=dt))

    def rollout_positions(self, start_frame: int, frames: int, state=None, case: int = 0):
        """Positions (frames, N, 3) of trajectory ``case``'s scene after each of ``frames``
        frames from ``start_frame``."""
        import diffsim as ds
        sim, every = self.sims[case], self.datas[case].frame_every
        state = self.state_at(start_frame, case) if state is None else state
        _, recs = ds.rollout(sim, frames * every, state=state, record_every=every, start=start_frame * every,
                             checkpoint_every=self.checkpoint_every)
        return torch.stack([s.x for _, s in recs])

    def window(self, iteration: int, iterations: int) -> int:
        f = iteration / max(iterations - 1, 1)
        return int(round(self.window_start + f * (self.window_end - self.window_start)))

    # ------------------------------------------------------------------ training
    def train(self, iterations: int = 200, progress: bool = True) -> list[dict]:
        from diffsim.progress import Progress
        targets = [torch.tensor(d.positions, dtype=self.dtype) for d in self.datas]
        T = min(d.frames for d in self.datas)
        t0 = time.perf_counter()
        with Progress(total=iterations, desc="train law", unit="iter", disable=not progress) as bar:
            for it in range(iterations):
                w = min(self.window(it, iterations), T - 1)
                f = it / max(iterations - 1, 1)
                # the same draws in every process; each rolls out its share of the windows;
                # the trajectories take turns
                cases = [(it * self.batch + k) % len(self.datas) for k in range(self.batch)]
                starts = [(c, int(self.rng.integers(0, self.datas[c].frames - w)) if self.datas[c].full_state else 0)
                          for c in cases]
                while True:
                    for g in self.opt.param_groups:
                        g["lr"] = self.lr * self.lr_factor * (self.lr_decay + (1 - self.lr_decay) * 0.5 *
                                                              (1 + math.cos(math.pi * f)))
                    total, bad = self._windows(starts, w, targets)
                    if not _any_across_processes(bad, self.world):
                        break
                    self._back_off(it, w, bad or "another process's window")
                loss = _sum_across_processes(total, self.params, self.world)
                start = starts[0][1]
                gnorm = float(torch.nn.utils.clip_grad_norm_(self.params, self.clip))
                self._snapshots.append(([p.detach().clone() for p in self.params],
                                        copy.deepcopy(self.opt.state_dict())))
                self.opt.step()
                self.history.append({"iteration": it + 1, "loss_mm2": float(loss.detach()), "window": w,
                                     "start": start, "lr": self.opt.param_groups[0]["lr"],
                                     "grad_norm": gnorm, "seconds": time.perf_counter() - t0})
                bar.update(1, loss=f"{float(loss.detach()):.3g}", window=w)
        return self.history

    def _windows(self, starts, w, targets):
        """This process's windows: their summed loss (gradients accumulated), and ``None``
        or a description of the first window whose rollout was not finite."""
        self.opt.zero_grad()
        total = torch.zeros((), dtype=self.dtype)
        for case, start in starts[self.rank::self.world]:
            pred = self.rollout_positions(start, w, case=case)
            part = ((pred - targets[case][start + 1:start + 1 + w]) ** 2).mean() / MM2 / self.batch
            if not torch.isfinite(part):
                return total, f"trajectory {case}, frames {start}..{start + w}"
            part.backward()
            total = total + part.detach()
        return total, None

    def _back_off(self, it: int, w: int, where: str):
        """A window's rollout blew up (a step made the law unstable for the time step):
        undo the last step not yet undone (weights and Adam moments; a repeated failure
        goes one step further back), halve the learning rate from now on, and try the
        iteration again; after ``max_backoffs`` halvings, raise."""
        if not self._snapshots or self.backoffs >= self.max_backoffs:
            raise FloatingPointError(
                f"training diverged at iteration {it} (window of {w} frames, {where}: the rollout is not finite) "
                f"after {self.backoffs} learning-rate halvings; lower lr (now {self.lr * self.lr_factor:.3g}) or "
                f"the law's stress_scale")
        weights, opt_state = self._snapshots.pop()
        with torch.no_grad():
            for p, v in zip(self.params, weights):
                p.copy_(v)
        self.opt.load_state_dict(opt_state)
        self.lr_factor *= 0.5
        self.backoffs += 1
        self.events.append({"iteration": it, "event": "rollout not finite: step undone, lr halved",
                            "where": where, "lr_factor": self.lr_factor})

    def metadata(self) -> dict:
        return {"data": self.data.path if len(self.datas) == 1 else [d.path for d in self.datas],
                "scene": self.data.metadata.get("scene"), "body": self.body.name,
                "reference_material": self.reference_material.describe(),
                "density": self.reference_material.density, "wave_speed": self.reference_material.wave_speed(),
                "iterations": len(self.history), "events": self.events,
                "final_loss_mm2": self.history[-1]["loss_mm2"] if self.history else None}


def _distributed() -> tuple[int, int]:
    """``(rank, world size)`` of an initialised ``torch.distributed`` group, else ``(0, 1)``."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _any_across_processes(flag, world) -> bool:
    """True in every process when ``flag`` is truthy in any (no-op alone)."""
    if world == 1:
        return bool(flag)
    import torch.distributed as dist
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _sum_across_processes(loss, params, world):
    """Sum the loss and the parameters' gradients over the processes (no-op alone)."""
    if world == 1:
        return loss
    import torch.distributed as dist
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
    dist.all_reduce(loss, op=dist.ReduceOp.SUM)
    return loss


def _average_gradients(loss, params, world):
    """The loss and the gradients of ``params`` averaged over the processes (no-op alone)."""
    loss = _sum_across_processes(loss.detach(), params, world) / world
    for p in params:
        p.grad /= world
    return loss


def descend(opt, loss, params, world: int, clip: float = 1.0):
    """One optimiser step: gradients of ``loss``, averaged over the processes, clipped to
    norm ``clip``; returns the loss averaged over the processes."""
    opt.zero_grad()
    loss.backward()
    loss = _average_gradients(loss, params, world)
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    return loss


def resume_checkpoint(load, out, resume: bool):
    """``(model, extra, iteration, history)`` of the checkpoint ``out`` to resume (``load``:
    the model class's loader with ``with_extra``), or ``(None, None, 0, [])`` for a fresh
    start; a missing checkpoint to resume, or an ``out`` that is not a model file to
    overwrite, is an error."""
    from diffsim.errors import InvalidScene
    if resume:
        if not out.exists():
            raise InvalidScene(f"--resume: {out} does not exist; start without --resume")
        model, extra = load(out, with_extra=True)
        return model, extra, int(extra.get("iteration", 0)), list(extra.get("history", []))
    if out.exists():
        load(out)   # refuse to clobber something that is not a model
    return None, None, 0, []


def optimise(iteration, start: int, total: int, save, history: list, checkpoint_every: int, rng, out,
             desc: str, progress: bool = True, rank: int = 0) -> None:
    """The loop of the surrogates' training commands: ``iteration(k) -> (loss, stage)`` for
    k in [start, total), a progress bar (rank 0), a finite-loss check naming the iteration,
    ``save(done, rng_state)`` every ``checkpoint_every`` iterations, at the end and on
    Ctrl-C/SIGTERM (then :class:`RunInterrupted`); ``history`` gets one row per iteration."""
    from diffsim.errors import InvalidScene, RunInterrupted
    from diffsim.progress import Progress
    t0 = time.perf_counter()
    done, done_rng = start, rng.bit_generator.state
    with Progress(total=total, desc=desc, unit="it", disable=not progress or bool(rank)) as bar:
        bar.update(start)
        try:
            for k in range(start, total):
                loss, stage = iteration(k)
                if not math.isfinite(float(loss)):
                    raise InvalidScene(f"{desc}: loss became {float(loss)} at iteration {k} ({stage}); the "
                                       f"checkpoint in {out} is from before; resume with a lower learning rate")
                history.append({"iteration": k, "stage": stage, "loss": float(loss),
                                "time_s": time.perf_counter() - t0})
                done, done_rng = k + 1, rng.bit_generator.state
                bar.update(1, stage=stage, loss=float(loss))
                if done % checkpoint_every == 0:
                    save(done, done_rng)
        except KeyboardInterrupt:   # Ctrl-C / SIGTERM: keep every finished iteration
            save(done, done_rng)
            raise RunInterrupted(done, done, str(out)) from None
    save(total, rng.bit_generator.state)


def simulate_with_law(scene, elasticity, plasticity, frames: int, every: int, body: str | None = None,
                      wave_speed: float | None = None) -> np.ndarray:
    """Run an unbuilt ``scene`` with its body's material replaced by the law (no gradients);
    positions (frames + 1, N, 3) including frame 0. Non-finite states are returned as they
    are (callers check for NaN)."""
    import diffsim as ds
    sim = scene.solver
    b = sim.bodies[0] if body is None else sim.body(body)
    ref = b.material
    b.material = ds.NeuralMaterial(elasticity=elasticity, plasticity=plasticity, density=ref.density,
                                   wave_speed_estimate=wave_speed or ref.wave_speed())
    sim.build()
    out = [sim.positions()]
    with torch.no_grad():
        for _ in range(frames):
            sim.step(every)
            x = sim.positions()
            out.append(x)
            if not np.all(np.isfinite(x)):
                out += [np.full_like(x, np.nan)] * (frames + 1 - len(out))
                break
    return np.stack(out)


def save_law(path, elasticity, plasticity=None, metadata: dict | None = None):
    """Save a law (module classes, configs, weights) with its training metadata, atomically."""
    from pathlib import Path
    from diffsim.io import _atomic_path
    blob = {"format": 1, "metadata": metadata or {},
            "elasticity": {"class": type(elasticity).__name__, "config": elasticity.config,
                           "state": elasticity.state_dict()},
            "plasticity": None if plasticity is None else {"class": type(plasticity).__name__,
                                                           "config": plasticity.config,
                                                           "state": plasticity.state_dict()}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_path(path, suffix=".pt") as tmp:
        torch.save(blob, tmp)


def load_law(path, dtype=torch.float64):
    """``(elasticity, plasticity or None, metadata)`` from :func:`save_law`'s file."""
    from . import constitutive as C
    blob = torch.load(path, weights_only=False)
    classes = {c.__name__: c for pair in C.KINDS.values() for c in pair}

    def build(entry):
        if entry is None:
            return None
        m = classes[entry["class"]](**entry["config"]).to(dtype)
        m.load_state_dict(entry["state"])
        return m

    return build(blob["elasticity"]), build(blob["plasticity"]), blob["metadata"]


def position_mse(pred: torch.Tensor, ref: np.ndarray) -> float:
    """Mean squared position error (m^2); inf when the prediction is not finite."""
    p = pred.detach().cpu().numpy() if torch.is_tensor(pred) else np.asarray(pred)
    if not np.all(np.isfinite(p)):
        return math.inf
    return float(((p - ref) ** 2).mean())
