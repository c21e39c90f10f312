"""Safety-CHORES as single gymnasium envs (``gymnasium.make("SafetyChores-Fetch-v0")`` after
``import cmdp``): ``step`` returns the usual 5-tuple with the length-5 cost vector in
``info["cost"]`` and the channel names in ``info["cost_names"]``."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from cmdp.envs.chores.costs import COST_NAMES


class ChoresGymEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(self, task: str, render_mode: str | None = None, **kwargs: Any) -> None:
        from cmdp.envs.chores.env import ChoresEnv

        self._env = ChoresEnv(task, num_envs=1, render_mode=render_mode, **kwargs)
        self.observation_space = self._env.observation_space
        self.action_space = self._env.action_space
        self.render_mode = render_mode
        self.cost_names = COST_NAMES
        self.spec_max_steps = self._env.max_episode_steps

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31))
        obs, _ = self._env.reset(seed=seed)
        return _row(obs), {"instruction": self._env.specs[0].instruction}

    def step(self, action):
        obs, reward, cost, terminated, truncated, info = self._env.step(np.asarray([action]))
        done = bool(terminated[0] or truncated[0])
        if done:
            obs = info["final_obs"]
            # the vector env has already begun the next episode; the next reset() replaces it
        out = {
            "cost": cost[0].copy(),
            "cost_names": COST_NAMES,
            "success": bool(info["success"][0]),
            "collided": bool(info["collided"][0]),
        }
        if done:
            out["episode"] = info["episode"][0]
        return _row(obs), float(reward[0]), bool(terminated[0]), bool(truncated[0]), out

    def render(self):
        if self.render_mode == "rgb_array":
            return self._env.render(0)
        return None

    @property
    def unwrapped_vector(self):
        return self._env


def _row(obs: Any) -> Any:
    if isinstance(obs, dict):
        return {k: (v[0] if np.ndim(v) > 1 or k in ("holding", "last_action") else v[0]) for k, v in obs.items()}
    return obs[0]


def register_gymnasium_ids() -> None:
    for task in ("ObjectNav", "PickUp", "Fetch"):
        env_id = f"SafetyChores-{task}-v0"
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="cmdp.envs.chores.gym_env:ChoresGymEnv", kwargs={"task": task})
