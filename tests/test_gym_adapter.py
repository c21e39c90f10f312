"""Gymnasium / safety-gymnasium adapters: auto-reset, final observations, cost channels, dtypes."""

from __future__ import annotations

import sys
import types

import gymnasium as gym
import numpy as np
import pytest

from cmdp.core.gym_adapter import SyncVectorCMDP, from_env_fns, make_gymnasium, make_safety_gymnasium
from cmdp.errors import ActionShapeError, ConfigError


class WalkEnv(gym.Env):
    """1-d walk from a random start in {-1, 0, 1}; action 1 moves +1, action 0 moves -1.

    Ends (terminated) at |pos| >= 3, successfully if pos >= 3. Reward = pos after the move.
    Cost channels: ``neg`` = pos < 0, ``far`` = |pos| >= 2. ``cost_as`` picks how the cost is
    reported: "scalar" (neg only), "array" (both), "dict" (both by name), "none".
    """

    def __init__(self, cost_as: str = "scalar", report_success: bool = True) -> None:
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (2,), np.float64)
        self.action_space = gym.spaces.Discrete(2)
        self.cost_as = cost_as
        self.report_success = report_success

    def _obs(self) -> np.ndarray:
        return np.array([self.pos, self.t], dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.t = float(self.np_random.integers(-1, 2)), 0
        return self._obs(), {}

    def step(self, action):
        self.pos += 1.0 if action == 1 else -1.0
        self.t += 1
        neg, far = float(self.pos < 0), float(abs(self.pos) >= 2)
        info = {}
        if self.cost_as == "scalar":
            info["cost"] = neg
        elif self.cost_as == "array":
            info["cost"] = np.array([neg, far])
        elif self.cost_as == "dict":
            info["cost"] = {"far": far, "neg": neg}
        terminated = abs(self.pos) >= 3
        if terminated and self.report_success:
            info["is_success"] = self.pos >= 3
        return self._obs(), self.pos, terminated, False, info


class DictObsEnv(gym.Env):
    """Dict observations with a float, an image (uint8) and a Discrete key; never terminates."""

    observation_space = gym.spaces.Dict(
        {
            "pos": gym.spaces.Box(-np.inf, np.inf, (2,), np.float64),
            "img": gym.spaces.Box(0, 255, (2, 2, 1), np.uint8),
            "mode": gym.spaces.Discrete(3),
        }
    )
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _obs(self):
        img = np.full((2, 2, 1), self.t % 256, dtype=np.uint8)
        return {"pos": self.pos.copy(), "img": img, "mode": self.t % 3}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.t = self.np_random.normal(size=2), 0
        return self._obs(), {}

    def step(self, action):
        self.pos = self.pos + action
        self.t += 1
        return self._obs(), 0.0, False, False, {"cost": float(np.abs(self.pos).sum() > 2)}


class DiscreteObsEnv(gym.Env):
    observation_space = gym.spaces.Discrete(5)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.s = 0
        return self.s, {}

    def step(self, action):
        self.s = min(self.s + int(action), 4)
        return self.s, 0.0, self.s == 4, False, {"cost": 0.0}


class DeclaresCostNames(WalkEnv):
    cost_names = ("neg", "far")

    def __init__(self) -> None:
        super().__init__(cost_as="array")


class SixTupleEnv(WalkEnv):
    """A stand-in for a safety-gymnasium env: step returns (obs, reward, cost, term, trunc, info)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(cost_as="none")
        self.kwargs = kwargs

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, 10.0 + self.pos, terminated, truncated, info


def cartpole_cost(obs, action, next_obs, info):
    return float(abs(next_obs[0]) > 0.1)


def walk_fns(n, **kw):
    return [lambda: WalkEnv(**kw)] * n


# ---- auto-reset and final observations ------------------------------------------------------


def test_cartpole_matches_manual_single_env_loop():
    n, seed, steps = 3, 7, 120
    venv = make_gymnasium("CartPole-v1", n, seed=seed, cost_fn=cartpole_cost, max_episode_steps=15)
    assert venv.max_episode_steps == 15 and venv.cost_names == ("cost",)
    envs = [gym.make("CartPole-v1", max_episode_steps=15) for _ in range(n)]
    manual_obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
    obs, _ = venv.reset()
    np.testing.assert_array_equal(obs, manual_obs)
    assert obs.dtype == np.float32 and obs.shape == (n, 4)
    rng = np.random.default_rng(0)
    ends = {"terminated": 0, "truncated": 0}
    for _ in range(steps):
        actions = rng.integers(0, 2, size=n)
        obs, reward, cost, terminated, truncated, info = venv.step(actions)
        assert cost.shape == (n, 1) and cost.dtype == np.float64 and reward.dtype == np.float64
        for i, e in enumerate(envs):
            o, r, te, tr, _ = e.step(int(actions[i]))
            assert reward[i] == r and terminated[i] == te and truncated[i] == tr
            assert cost[i, 0] == cartpole_cost(None, None, o, None)  # cost of the true last obs
            if te or tr:
                np.testing.assert_array_equal(info["final_obs"][i], o)
                o, _ = e.reset()
                ends["terminated" if te else "truncated"] += 1
            np.testing.assert_array_equal(obs[i], o)
        if not (terminated | truncated).any():
            assert "final_obs" not in info
    assert ends["terminated"] > 0 and ends["truncated"] > 0  # both paths were exercised


def test_success_and_final_obs_of_toy_env():
    venv = from_env_fns(walk_fns(2), seed=3)
    obs, _ = venv.reset()
    last = obs.copy()
    seen_success = []
    for _ in range(6):  # always +1: every episode ends with success within 4 steps
        obs, reward, cost, terminated, truncated, info = venv.step(np.ones(2, dtype=np.int64))
        if terminated.any():
            assert info["success"].dtype == bool
            for i in np.flatnonzero(terminated):
                assert info["final_obs"][i, 0] == 3.0 and info["final_obs"][i, 1] == last[i, 1] + 1
                assert obs[i, 1] == 0  # already the next episode's first observation
                seen_success.append(bool(info["success"][i]))
        last = obs.copy()
    assert seen_success and all(seen_success)


def test_success_reported_as_false_where_not_reported():
    venv = from_env_fns([lambda: WalkEnv(), lambda: WalkEnv(report_success=False)], seed=0)
    venv.reset()
    for _ in range(5):
        _, _, _, terminated, _, info = venv.step(np.ones(2, dtype=np.int64))
        if terminated[0]:
            assert info["success"].tolist()[0] is True
        if "success" in info:
            assert not info["success"][1]


# ---- cost channels ------------------------------------------------------------------------


def test_cost_channels_from_array_and_dict():
    for cost_as in ("array", "dict"):
        venv = from_env_fns(walk_fns(3, cost_as=cost_as), cost_names=("neg", "far"), seed=1)
        assert venv.cost_names == ("neg", "far") and venv.num_costs == 2
        obs, _ = venv.reset()
        for _ in range(5):
            prev = obs
            obs, _, cost, terminated, _, info = venv.step(np.zeros(3, dtype=np.int64))
            pos = np.where(terminated, info.get("final_obs", obs)[:, 0], obs[:, 0])
            assert cost.shape == (3, 2)
            np.testing.assert_array_equal(cost[:, 0], pos < 0)
            np.testing.assert_array_equal(cost[:, 1], np.abs(pos) >= 2)
            assert np.all(pos == prev[:, 0] - 1)


def test_cost_names_declared_by_env_fix_k_before_the_first_step():
    venv = from_env_fns([DeclaresCostNames] * 2)
    assert venv.cost_names == ("neg", "far")
    venv.reset(seed=0)
    assert venv.step(np.zeros(2, dtype=np.int64))[2].shape == (2, 2)


def test_cost_length_change_names_cost_names():
    venv = from_env_fns(walk_fns(2, cost_as="array"), seed=0)  # K defaults to 1
    assert venv.cost_names == ("cost",)
    venv.reset()
    with pytest.raises(ConfigError, match=r"2 cost value\(s\).*cost_names="):
        venv.step(np.zeros(2, dtype=np.int64))


def test_dict_cost_with_other_channel_names_is_an_error():
    venv = from_env_fns(walk_fns(1, cost_as="dict"), cost_names=("neg", "wall"), seed=0)
    venv.reset()
    with pytest.raises(ConfigError, match="'far', 'neg'"):
        venv.step(np.zeros(1, dtype=np.int64))


def test_missing_cost_asks_for_cost_fn():
    venv = from_env_fns(walk_fns(2, cost_as="none"), seed=0)
    venv.reset()
    with pytest.raises(ConfigError, match="cost_fn"):
        venv.step(np.zeros(2, dtype=np.int64))
    # a cost_fn fixes it, and K follows cost_names
    venv = from_env_fns(
        walk_fns(2, cost_as="none"), seed=0, cost_names=("a", "b"), cost_fn=lambda o, a, n, i: [n[0], -n[0]]
    )
    obs, _ = venv.reset()
    _, _, cost, _, _, _ = venv.step(np.ones(2, dtype=np.int64))
    np.testing.assert_array_equal(cost, np.stack([obs[:, 0] + 1, -obs[:, 0] - 1], axis=1))


def test_cost_names_validation():
    for bad in ((), ("a", "a"), ("a", ""), 3):
        with pytest.raises(ConfigError, match="cost_names"):
            from_env_fns(walk_fns(1), cost_names=bad)
    assert from_env_fns(walk_fns(1), cost_names="hazard").cost_names == ("hazard",)


# ---- observation spaces -------------------------------------------------------------------


def test_dict_observations_keep_per_key_dtypes():
    venv = from_env_fns([DictObsEnv] * 2, seed=0, max_episode_steps=3)
    space = venv.observation_space
    assert space["pos"].dtype == np.float32 and space["img"].dtype == np.uint8
    obs, _ = venv.reset()
    assert obs["pos"].dtype == np.float32 and obs["pos"].shape == (2, 2)
    assert obs["img"].dtype == np.uint8 and obs["img"].shape == (2, 2, 2, 1)
    assert obs["mode"].dtype == np.int64 and obs["mode"].shape == (2,)
    actions = np.full((2, 2), 0.5, dtype=np.float32)
    for _ in range(3):
        prev = obs
        obs, _, _, terminated, truncated, info = venv.step(actions)
    assert truncated.all() and not terminated.any()
    final = info["final_obs"]
    np.testing.assert_allclose(final["pos"], prev["pos"] + 0.5, rtol=1e-6)
    assert final["img"].dtype == np.uint8 and (final["img"] == 3).all() and (final["mode"] == 0).all()
    assert (obs["mode"] == 0).all() and (obs["img"] == 0).all()  # next episode's first obs


def test_discrete_observations_are_int64():
    venv = from_env_fns([DiscreteObsEnv] * 3, seed=0)
    obs, _ = venv.reset()
    assert obs.dtype == np.int64 and obs.shape == (3,)
    for _ in range(4):
        obs, _, _, terminated, _, info = venv.step(np.ones(3, dtype=np.int64))
    assert terminated.all() and (info["final_obs"] == 4).all() and (obs == 0).all()
    assert info["final_obs"].dtype == np.int64


# ---- time limit, seeds, argument errors ---------------------------------------------------


def test_time_limit_of_from_env_fns_truncates():
    venv = from_env_fns([DictObsEnv], seed=0, max_episode_steps=4)
    assert venv.max_episode_steps == 4
    venv.reset()
    ends = [venv.step(np.zeros((1, 2), np.float32))[4][0] for _ in range(9)]
    assert ends == [False, False, False, True] * 2 + [False]


def test_seed_determinism():
    def rollout(seed):
        venv = make_gymnasium("CartPole-v1", 2, seed=seed, cost_fn=cartpole_cost)
        out = [venv.reset()[0]]
        for _ in range(30):
            out.append(venv.step(np.array([0, 1]))[0])
        return np.stack(out)

    np.testing.assert_array_equal(rollout(5), rollout(5))
    assert not np.array_equal(rollout(5), rollout(6))
    # env i is seeded with seed + i; reset(seed=) reseeds, later resets continue the stream
    venv = make_gymnasium("CartPole-v1", 2, seed=5, cost_fn=cartpole_cost)
    single = gym.make("CartPole-v1")
    np.testing.assert_array_equal(venv.reset()[0][1], single.reset(seed=6)[0])
    np.testing.assert_array_equal(venv.reset(seed=10)[0][0], single.reset(seed=10)[0])
    np.testing.assert_array_equal(venv.reset()[0][0], single.reset()[0])


def test_argument_errors():
    with pytest.raises(ConfigError, match="'sync', 'subproc'.*'async'"):
        make_gymnasium("CartPole-v1", 1, vectorization="async")
    with pytest.raises(ConfigError, match="num_envs"):
        make_gymnasium("CartPole-v1", 0)
    with pytest.raises(ConfigError, match="seed"):
        from_env_fns(walk_fns(1), seed=-1)
    with pytest.raises(ConfigError, match="max_episode_steps"):
        from_env_fns(walk_fns(1), max_episode_steps=0)
    with pytest.raises(ConfigError, match=r"env_fns\[1\]"):
        from_env_fns([WalkEnv, "CartPole-v1"])
    with pytest.raises(ConfigError, match=r"env_fns\[0\] returned a int"):
        from_env_fns([lambda: 3])
    with pytest.raises(ConfigError, match="env 1 has observation_space"):
        from_env_fns([WalkEnv, DiscreteObsEnv])


def test_step_before_reset_bad_actions_and_close():
    venv = from_env_fns(walk_fns(2))
    with pytest.raises(RuntimeError, match="reset"):
        venv.step(np.zeros(2, dtype=np.int64))
    venv.reset(seed=0)
    with pytest.raises(ActionShapeError):
        venv.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(ActionShapeError, match="outside Discrete"):
        venv.step(np.array([0, 2]))
    venv.close()
    venv.close()
    with pytest.raises(RuntimeError, match="closed"):
        venv.reset()


def test_old_gym_step_api_is_rejected_clearly():
    class FourTuple(WalkEnv):
        def step(self, action):
            obs, r, te, tr, info = super().step(action)
            return obs, r, te or tr, info

    venv = from_env_fns([FourTuple])
    venv.reset(seed=0)
    with pytest.raises(ConfigError, match="4-tuple"):
        venv.step(np.zeros(1, dtype=np.int64))


# ---- safety-gymnasium ---------------------------------------------------------------------


def test_safety_gymnasium_six_tuple(monkeypatch):
    made = []

    def fake_make(env_id, **kwargs):
        made.append((env_id, kwargs))
        return SixTupleEnv(**kwargs)  # safety-gymnasium applies max_episode_steps with its own wrapper

    monkeypatch.setitem(sys.modules, "safety_gymnasium", types.SimpleNamespace(make=fake_make))
    venv = make_safety_gymnasium("SafetyFakeGoal0-v0", num_envs=2, seed=0, max_episode_steps=2, level=1)
    assert isinstance(venv, SyncVectorCMDP) and venv.cost_names == ("cost",)
    assert made == [("SafetyFakeGoal0-v0", {"level": 1, "max_episode_steps": 2})] * 2
    obs, _ = venv.reset()
    _, reward, cost, _, _, _ = venv.step(np.ones(2, dtype=np.int64))
    np.testing.assert_array_equal(cost[:, 0], 10.0 + obs[:, 0] + 1)
    np.testing.assert_array_equal(reward, obs[:, 0] + 1)
    assert cost.shape == (2, 1)


def test_safety_gymnasium_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "safety_gymnasium", None)  # makes `import` fail
    with pytest.raises(ImportError, match="pip install safety-gymnasium"):
        make_safety_gymnasium("SafetyPointGoal1-v0")
