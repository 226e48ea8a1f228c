"""A gymnasium wrapper of a task, and the PPO baseline (stable-baselines3) on it.

The formulation is open-loop, like the other methods: one episode is one rollout, the
action is the whole control array ``theta`` (scaled to ``[-1, 1]`` from ``[-bound,
bound]``), the observation is constant and the reward is ``-loss`` (a one-step episode,
i.e. a contextual bandit). PPO thus searches the same space as CMA-ES and the gradient
method, with the same rollout count. (DiffTactile's RL baselines act per step from
observations; a closed-loop formulation is not implemented here.)
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InvalidScene


def make_env(task, on_rollout=None):
    """A gymnasium ``Env`` of ``task``; ``on_rollout(theta, loss, success)`` runs after
    every rollout (the optimiser's bookkeeping)."""
    try:
        import gymnasium as gym
    except ImportError:
        raise InvalidScene("method 'ppo' needs gymnasium and stable-baselines3: pip install 'diffsim[rl]'") from None

    class TaskEnv(gym.Env):
        metadata = {"render_modes": []}

        def __init__(self):
            n = int(np.prod(task.controls.shape))
            self.action_space = gym.spaces.Box(-1.0, 1.0, (n,), np.float32)
            self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
            self._dtype = task.initial_controls().dtype

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros(1, np.float32), {}

        def step(self, action):
            a = np.clip(np.asarray(action, np.float64), -1.0, 1.0) * task.controls.bound
            theta = torch.as_tensor(a.reshape(task.controls.shape), dtype=self._dtype)
            loss, ok = task.evaluate(theta)
            if on_rollout is not None:
                on_rollout(theta, loss, ok)
            reward = -loss if math.isfinite(loss) else -1e6
            return np.zeros(1, np.float32), reward, True, False, {"success": ok, "loss": loss}

    return TaskEnv()


def run_ppo(task, log, seed, stop_at_success, n_steps=8):
    """PPO (stable-baselines3 defaults, ``n_steps`` rollouts per update) until success or
    the budget; ``log`` is the optimiser's record keeper."""
    try:
        from stable_baselines3 import PPO
    except ImportError:
        raise InvalidScene("method 'ppo' needs gymnasium and stable-baselines3: pip install 'diffsim[rl]'") from None
    env = make_env(task, lambda theta, loss, ok: log.record(theta, loss, ok, stop_at_success))
    model = PPO("MlpPolicy", env, n_steps=n_steps, batch_size=n_steps, seed=seed, verbose=0, device="cpu")
    model.learn(total_timesteps=log.budget + n_steps)
