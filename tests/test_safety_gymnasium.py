"""safety-gymnasium ids through cmdp.make, on safety-gymnasium 1.0.0 and gymnasium 0.29.

The first test fakes the package and runs everywhere. The others need safety-gymnasium, which
lives in the peer env (`bash benchmarks/peers/run_peer_tests.sh`), and are skipped elsewhere.
"""

from __future__ import annotations

import sys
import types

import gymnasium as gym
import numpy as np
import pytest

import cmdp
from cmdp.core import registry

try:
    import safety_gymnasium

    SAFETY_GYMNASIUM_PROBLEM = None
except Exception as e:  # ImportError, or the dataclass ValueError without the 3.11 hook
    SAFETY_GYMNASIUM_PROBLEM = f"{type(e).__name__}: {e}"

needs_safety_gymnasium = pytest.mark.skipif(
    SAFETY_GYMNASIUM_PROBLEM is not None,
    reason=f"safety-gymnasium is not importable here ({SAFETY_GYMNASIUM_PROBLEM}); "
    "run bash benchmarks/peers/run_peer_tests.sh",
)


def test_ids_are_found_in_safe_registry_when_the_package_exports_no_registry(monkeypatch):
    # safety-gymnasium 1.0.0 keeps its ids in the set utils.registration.safe_registry; its ids
    # are in gymnasium's registry too, where make() would build them with the wrong adapter
    made = []

    class SixTupleEnv:
        observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        metadata: dict = {}

        def reset(self, seed=None):
            return np.zeros(2, np.float32), {}

        def step(self, action):
            return np.zeros(2, np.float32), 1.0, 0.5, False, False, {}

        def close(self):
            pass

    def fake_make(env_id, **kwargs):
        made.append(env_id)
        return SixTupleEnv()

    package = types.ModuleType("safety_gymnasium")
    package.make = fake_make
    utils = types.ModuleType("safety_gymnasium.utils")
    registration = types.ModuleType("safety_gymnasium.utils.registration")
    registration.safe_registry = {"SafetyFakeGoal0-v0"}
    for name, module in [("safety_gymnasium", package), ("safety_gymnasium.utils", utils),
                         ("safety_gymnasium.utils.registration", registration)]:
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(registry, "safety_gymnasium_available", lambda: True)

    assert registry._safety_gymnasium_ids() == ["SafetyFakeGoal0-v0"]
    env = cmdp.make("SafetyFakeGoal0-v0", num_envs=2, seed=0)
    env.reset()
    _, reward, cost, *_ = env.step(np.zeros((2, 1), np.float32))
    assert made == ["SafetyFakeGoal0-v0"] * 2
    np.testing.assert_array_equal(cost, [[0.5], [0.5]])  # the 6-tuple's cost, read by the safety adapter
    env.close()


@needs_safety_gymnasium
def test_make_steps_safety_point_goal_like_the_package_itself():
    ours = cmdp.make("SafetyPointGoal1-v0", num_envs=1, seed=7)
    theirs = safety_gymnasium.make("SafetyPointGoal1-v0")
    assert ours.cost_names == ("cost",) and ours.max_episode_steps == 1000
    assert type(ours.envs[0].unwrapped).__module__.startswith("safety_gymnasium")
    obs_a, _ = ours.reset()
    obs_b, _ = theirs.reset(seed=7)
    np.testing.assert_allclose(obs_a[0], obs_b, rtol=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        action = rng.uniform(-1, 1, size=2)
        obs_a, r_a, c_a, *_ = ours.step(action[None])
        obs_b, r_b, c_b, *_ = theirs.step(action)
        np.testing.assert_allclose(obs_a[0], obs_b, rtol=1e-5, atol=1e-6)
        assert r_a[0] == pytest.approx(r_b) and c_a[0, 0] == c_b
    ours.close()
    theirs.close()


@needs_safety_gymnasium
def test_ppolag_trains_and_evaluates_on_safety_point_goal(tmp_path):
    from cmdp.algorithms import PPOLag

    algo = PPOLag(
        "SafetyPointGoal1-v0",
        cost_limit=25.0,
        seed=0,
        run_dir=tmp_path,
        progress_bar=False,
        tensorboard=False,
        num_envs=1,
        steps_per_epoch=1000,
        update_epochs=2,
    )
    algo.learn(2000)
    info = algo.last_info
    assert info["Metrics/EpLen"] == 1000 and info["Metrics/Episodes"] == 1
    assert np.isfinite(info["Metrics/EpRet"]) and 0 <= info["Metrics/EpCost"] <= 1000
    result = algo.evaluate(episodes=1)
    assert result["ep_length"] == 1000 and np.isfinite(result["ep_return"]) and result["ep_cost"] >= 0
    assert (tmp_path / "progress.csv").read_text().count("\n") == 1 + 2  # a header and two epochs
    algo.close()


@needs_safety_gymnasium
def test_car_goal_builds_and_steps_on_the_installed_mujoco():
    # The Car has joint sensors; safety-gymnasium looks their joints up with a one-element array,
    # which mujoco 4 rejects unless benchmarks/peers/omnisafe_compat.py's import hook is in place
    env = cmdp.make("SafetyCarGoal1-v0", num_envs=2, seed=3)
    obs, _ = env.reset()
    assert obs.shape == (2, 72) and env.cost_names == ("cost",)
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs, reward, cost, *_ = env.step(rng.uniform(-1, 1, size=(2, 2)))
        assert np.isfinite(obs).all() and np.isfinite(reward).all() and (cost >= 0).all()
    env.close()
