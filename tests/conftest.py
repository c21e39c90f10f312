"""Shared test fixtures: a tiny CMDP with a known constrained optimum, and the benchmark scripts
loaded as modules."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from cmdp.core.vector import VectorCMDP


class CornerBandit(VectorCMDP):
    """Repeated two-armed choice: arm 0 pays 1 and costs 1 per step, arm 1 pays 0.2 and costs 0.

    The unconstrained optimum is the deterministic unsafe corner (always arm 0). With per-episode
    limit d over ``horizon`` steps, the constrained optimum plays arm 0 with probability
    p = d / horizon: return horizon * (0.2 + 0.8 p), cost d. The observation is the step index
    (normalised), so the problem is a one-state CMDP in disguise.
    """

    def __init__(self, num_envs: int = 4, horizon: int = 10, seed: int = 0, nan_at: int | None = None) -> None:
        self.num_envs = num_envs
        self.horizon = horizon
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.cost_names = ("unsafe",)
        self.max_episode_steps = horizon
        self.t = np.zeros(num_envs, dtype=np.int64)
        self.total = 0
        self.nan_at = nan_at

    @staticmethod
    def optimum(cost_limit: float, horizon: int = 10) -> float:
        p = min(1.0, cost_limit / horizon)
        return horizon * (0.2 + 0.8 * p)

    def _obs(self) -> np.ndarray:
        return (self.t / self.horizon).astype(np.float32)[:, None]

    def reset(self, *, seed=None):
        self.t[:] = 0
        return self._obs(), {}

    def step(self, actions):
        a = self.check_actions(actions)
        reward = np.where(a == 0, 1.0, 0.2)
        cost = (a == 0).astype(np.float64)[:, None]
        self.total += 1
        if self.nan_at is not None and self.total == self.nan_at:
            reward = reward.copy()
            reward[1] = np.nan
        self.t += 1
        # the step index is observed, so the horizon is a true end (terminated), not a time limit
        term = self.t >= self.horizon
        info = {}
        if term.any():
            info["final_obs"] = self._obs()
            info["success"] = np.ones(self.num_envs, dtype=bool)
            self.t[term] = 0
        return self._obs(), reward, cost, term, np.zeros(self.num_envs, bool), info

    def state_dict(self):
        return {"t": self.t.copy(), "total": self.total}

    def load_state_dict(self, state):
        self.t = np.asarray(state["t"]).copy()
        self.total = int(state["total"])


@pytest.fixture
def bandit():
    return CornerBandit


BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


@contextlib.contextmanager
def _benchmark_module(name: str):
    """``benchmarks/<name>.py`` as a module, with its directory on the path for its ``report``
    import and the module registered by name (dataclasses look their module up in sys.modules)."""
    sys.path.insert(0, str(BENCHMARKS_DIR))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(BENCHMARKS_DIR))


@pytest.fixture(scope="session")
def benchmark_script():
    """Load a benchmark script for a test module: ``with benchmark_script("name") as module``."""
    return _benchmark_module
