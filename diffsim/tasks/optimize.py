"""Optimise a task's controls: full-horizon gradients, CMA-ES, or PPO.

    result = optimize(task, method="grad", budget=50)      # rollouts at most
    result["success"], result["rollouts"], result["wall_s"]

Every method counts *simulated rollouts* (a gradient iteration is one rollout with its
backward pass; a CMA-ES candidate or an RL episode is one forward rollout) and stops at the
first rollout that meets the task's success criterion, or when the budget is spent.

* ``grad``: Adam on ``theta`` with the gradient of the task loss through the whole
  rollout (checkpointed, not truncated); a rollout whose loss exceeds 1.5x the best so far
  sends ``theta`` back to the best with half the step and Adam's moments reset.
* ``cmaes``: the ``cma`` package (population 20, initial sigma 0.015 in units of the
  controls' bound, as DiffTactile's baseline), within ``[-bound, bound]``.
* ``ppo``: stable-baselines3 PPO on a gymnasium wrapper of the task (:mod:`.gym_env`).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..errors import InvalidScene
from ..progress import Progress

METHODS = ("grad", "cmaes", "ppo")
BACKTRACK = 1.5      # grad: a loss above this times the best so far sends theta back to the best


def optimize(task, method: str = "grad", budget: int = 50, lr: float = 0.1, seed: int = 0,
             sigma: float = 0.015, popsize: int = 20, progress: bool = True, stop_at_success: bool = True) -> dict:
    """Optimise ``task``'s controls with ``method`` for at most ``budget`` rollouts.

    Returns a result dict: task, method, budget, success, rollouts (to the first success,
    or all used), wall_s (to the first success, or total), best_loss, history (one entry
    per rollout: loss, success, wall_s), theta (the first successful controls, else the
    lowest-loss ones, as a nested list) and the task's description."""
    if method not in METHODS:
        raise InvalidScene(f"optimize: method must be one of {METHODS}, got {method!r}")
    if isinstance(budget, bool) or int(budget) != budget or budget < 1:
        raise InvalidScene(f"optimize: budget must be a positive number of rollouts, got {budget!r}")
    log = _Log(task, method, int(budget), progress)
    try:
        if method == "grad":
            _grad(task, log, lr, stop_at_success)
        elif method == "cmaes":
            _cmaes(task, log, sigma, popsize, seed, stop_at_success)
        else:
            from .gym_env import run_ppo
            run_ppo(task, log, seed, stop_at_success)
    except _Done:
        pass
    finally:
        log.close()
    return log.result()


class _Done(Exception):
    """Raised inside a method when the budget is spent or success is reached."""


class _Log:
    def __init__(self, task, method, budget, progress):
        self.task, self.method, self.budget = task, method, budget
        self.history, self.best, self.best_theta, self.first_success = [], math.inf, None, None
        self.t0 = time.perf_counter()
        self.bar = Progress(total=budget, desc=f"{task.name} {method}", unit="rollout", disable=not progress)

    def record(self, theta, loss: float, success: bool, stop_at_success: bool):
        wall = time.perf_counter() - self.t0
        self.history.append({"rollout": len(self.history) + 1, "loss": loss, "success": bool(success), "wall_s": wall})
        if loss < self.best and self.first_success is None:
            self.best_theta = theta.detach().clone()
        self.best = min(loss, self.best)
        if success and self.first_success is None:
            self.first_success = len(self.history)
            self.best_theta = theta.detach().clone()
        self.bar.update(1, loss=loss, success=int(self.first_success is not None))
        if (success and stop_at_success) or len(self.history) >= self.budget:
            raise _Done

    def close(self):
        self.bar.close()

    def result(self) -> dict:
        n = self.first_success or len(self.history)
        return {"task": self.task.name, "method": self.method, "budget": self.budget,
                "success": self.first_success is not None, "rollouts": n,
                "wall_s": self.history[n - 1]["wall_s"] if self.history else 0.0,
                "best_loss": self.best, "history": self.history,
                "theta": None if self.best_theta is None else self.best_theta.double().tolist(),
                **self.task.describe()}


def _grad(task, log, lr, stop_at_success):
    theta = task.initial_controls().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    best, best_theta, best_grad = math.inf, None, None
    while True:
        opt.zero_grad()
        run = task.run(theta)
        loss = task.loss(run)
        ok = task.success(run)
        if not bool(torch.isfinite(loss)):
            raise InvalidScene(f"{task.name}: the loss is not finite ({loss.item()}) at rollout {len(log.history) + 1}")
        loss.backward()
        log.record(theta, loss.item(), ok, stop_at_success)
        if loss.item() < best:
            best, best_theta, best_grad = loss.item(), theta.detach().clone(), theta.grad.clone()
        elif loss.item() > BACKTRACK * best:
            # Adam's momentum can carry a few-parameter control far past the optimum
            # (measured on object_repositioning: from a loss of 1 back up to 30): return to
            # the best controls with half the step and fresh moments. (Smaller rises are
            # Adam's ordinary noise and are left alone.)
            for group in opt.param_groups:
                group["lr"] *= 0.5
            opt.state.clear()
            with torch.no_grad():
                theta.copy_(best_theta)
            theta.grad = best_grad.clone()
        opt.step()


def _cmaes(task, log, sigma, popsize, seed, stop_at_success):
    try:
        import cma
    except ImportError:
        raise InvalidScene("method 'cmaes' needs the cma package: pip install 'diffsim[tasks]'") from None
    shape, bound = task.controls.shape, float(task.controls.bound)
    dtype = task.initial_controls().dtype
    x0 = np.zeros(int(np.prod(shape)))
    es = cma.CMAEvolutionStrategy(x0, sigma * bound, {"popsize": popsize, "seed": seed + 1, "verbose": -9,
                                                      "bounds": [-bound, bound]})
    while True:
        xs = es.ask()
        losses = []
        for x in xs:
            theta = torch.as_tensor(np.asarray(x).reshape(shape), dtype=dtype)
            loss, ok = task.evaluate(theta)
            losses.append(loss if math.isfinite(loss) else 1e30)
            log.record(theta, loss, ok, stop_at_success)
        es.tell(xs, losses)


def write_result(result: dict, path) -> None:
    """Write a result dict as JSON, atomically."""
    from ..io import atomic_write_json
    atomic_write_json(path, result, indent=1)
