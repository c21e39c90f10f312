"""Running statistics, observation normalisation, reward/cost scaling and the wrapper base."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from cmdp.core.gym_adapter import from_env_fns, make_gymnasium
from cmdp.core.running_stats import RunningMeanStd
from cmdp.core.vector import VectorCMDP
from cmdp.core.wrappers import NormalizeObservation, ScaleRewardCost, VectorWrapper
from cmdp.errors import CheckpointError, ConfigError


class GaussianVectorEnv(VectorCMDP):
    """Observations drawn from N([0, 5, -3], [1, 2, 0.5]^2); env i's episodes last 3 + i steps.

    Saves its whole state, so a wrapped run can resume exactly. ``dict_obs`` adds an image and
    a Discrete key next to the float observation under "x".
    """

    def __init__(self, num_envs: int = 3, seed: int = 0, dict_obs: bool = False) -> None:
        self.num_envs, self.dict_obs = num_envs, dict_obs
        box = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        if dict_obs:
            img = gym.spaces.Box(0, 255, (2, 2, 1), np.uint8)
            self.observation_space = gym.spaces.Dict({"x": box, "img": img, "k": gym.spaces.Discrete(4)})
        else:
            self.observation_space = box
        self.action_space = gym.spaces.Discrete(2)
        self.cost_names = ("a", "b")
        self.max_episode_steps = 7
        self.rng = np.random.default_rng(seed)
        self.t = np.zeros(num_envs, dtype=np.int64)

    def _draw(self, n):
        x = (self.rng.normal(size=(n, 3)) * [1.0, 2.0, 0.5] + [0.0, 5.0, -3.0]).astype(np.float32)
        if not self.dict_obs:
            return x
        return {"x": x, "img": np.full((n, 2, 2, 1), 200, np.uint8), "k": np.arange(n) % 4}

    def reset(self, *, seed=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t[:] = 0
        return self._draw(self.num_envs), {}

    def step(self, actions):
        self.check_actions(actions)
        self.t += 1
        obs = self._draw(self.num_envs)
        truncated = self.t >= 3 + np.arange(self.num_envs)
        info = {}
        if truncated.any():
            info["final_obs"] = obs
            obs = _where(truncated, self._draw(self.num_envs), obs)  # auto-reset the finished envs
            self.t[truncated] = 0
        cost = np.stack([self.t % 2, np.ones(self.num_envs)], axis=1).astype(np.float64)
        return obs, np.ones(self.num_envs), cost, np.zeros(self.num_envs, bool), truncated, info

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "t": self.t.copy()}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.t = state["t"].copy()


def _where(mask, a, b):
    if isinstance(a, dict):
        return {k: _where(mask, a[k], b[k]) for k in a}
    return np.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


class Recorder(VectorWrapper):
    """Keeps every observation batch (and final_obs) the wrapped env returned."""

    def __init__(self, env):
        super().__init__(env)
        self.seen, self.finals = [], []

    def reset(self, *, seed=None):
        obs, info = self.env.reset(seed=seed)
        self.seen.append(obs)
        return obs, info

    def step(self, actions):
        out = self.env.step(actions)
        self.seen.append(out[0])
        self.finals.append(out[5].get("final_obs"))
        return out


ACT = np.zeros(3, dtype=np.int64)


# ---- RunningMeanStd ------------------------------------------------------------------------


def test_running_mean_std_matches_numpy_for_any_batching():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(1000, 2, 3)) * [[1.0, 10.0, 0.1]]
    rms = RunningMeanStd(shape=(2, 3))
    for chunk in np.array_split(data, [1, 5, 6, 300, 999]):  # includes batches of 1 and 0
        rms.update(chunk)
    np.testing.assert_allclose(rms.mean, data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(rms.var, data.var(axis=0), rtol=1e-10)
    assert rms.count == 1000 and rms.mean.dtype == np.float64
    prior = RunningMeanStd(shape=(), epsilon=1.0)  # one pseudo-sample of mean 0, var 1
    prior.update(np.array([2.0]))
    assert prior.mean == 1.0 and prior.var == pytest.approx(1.5)  # ((1 + 0) + (0 + 0) + 4 * 1/2) / 2


def test_running_mean_std_one_sample_at_a_time_is_the_batch_formula_bit_for_bit():
    rng = np.random.default_rng(1)
    fast, general = RunningMeanStd(shape=(4,)), RunningMeanStd(shape=(4,))
    for row in rng.normal(0.0, [1.0, 1e-3, 1e3, 5.0], size=(500, 4)):
        fast.update(row[None])
        general.update_from_moments(row[None].mean(axis=0), row[None].var(axis=0), 1)
    assert fast.mean.tobytes() == general.mean.tobytes() and fast.var.tobytes() == general.var.tobytes()


def test_running_mean_std_state_round_trip_and_errors():
    rms = RunningMeanStd((2,))
    rms.update(np.arange(10.0).reshape(5, 2))
    state = rms.state_dict()
    assert isinstance(state["count"], float) and isinstance(state["mean"], np.ndarray)
    other = RunningMeanStd((2,))
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.mean, rms.mean)
    np.testing.assert_array_equal(other.var, rms.var)
    assert other.count == rms.count
    state["mean"][:] = 99  # the saved state is a copy
    assert rms.mean[0] != 99
    with pytest.raises(CheckpointError, match=r"shapes mean \(2,\).*expects \(3,\)"):
        RunningMeanStd((3,)).load_state_dict(rms.state_dict())
    with pytest.raises(ValueError, match=r"\[batch, \*\(2,\)\]"):
        rms.update(np.zeros(2))


# ---- NormalizeObservation -------------------------------------------------------------------


def test_normalizer_statistics_match_seen_observations_and_final_obs_is_normalized():
    rec = Recorder(make_gymnasium("CartPole-v1", 3, seed=0, cost_fn=lambda *a: 0.0, max_episode_steps=9))
    env = NormalizeObservation(rec, clip=10.0)
    obs, _ = env.reset()
    rng = np.random.default_rng(0)
    finals_checked = 0
    for _ in range(40):
        obs, _, _, terminated, truncated, info = env.step(rng.integers(0, 2, 3))
        seen = np.concatenate(rec.seen).astype(np.float64)
        np.testing.assert_allclose(env.obs_rms.mean, seen.mean(axis=0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(env.obs_rms.var, seen.var(axis=0), rtol=1e-9, atol=1e-12)
        expect = np.clip((rec.seen[-1] - env.obs_rms.mean) / np.sqrt(env.obs_rms.var + 1e-8), -10, 10)
        np.testing.assert_allclose(obs, expect, rtol=1e-5, atol=1e-6)
        assert obs.dtype == np.float32
        done = terminated | truncated
        if done.any():
            raw_final = rec.finals[-1]
            expect = (raw_final - env.obs_rms.mean) / np.sqrt(env.obs_rms.var + 1e-8)
            np.testing.assert_allclose(info["final_obs"][done], np.clip(expect, -10, 10)[done], rtol=1e-5, atol=1e-6)
            finals_checked += int(done.sum())
    assert finals_checked >= 3
    assert env.observation_space == gym.spaces.Box(-10.0, 10.0, (4,), np.float32)


def test_normalizer_clips_and_freezes():
    env = NormalizeObservation(GaussianVectorEnv(), clip=0.5)
    env.reset(seed=0)
    for _ in range(20):
        obs = env.step(ACT)[0]
    assert np.abs(obs).max() <= 0.5 and np.isclose(np.abs(obs).max(), 0.5)
    env.update = False
    before = env.obs_rms.state_dict()
    env.step(ACT)
    after = env.obs_rms.state_dict()
    assert before["count"] == after["count"]
    np.testing.assert_array_equal(before["mean"], after["mean"])


def test_dict_observations_normalize_float_keys_only():
    rec = Recorder(GaussianVectorEnv(dict_obs=True))
    env = NormalizeObservation(rec)
    assert set(env.obs_rms) == {"x"}
    assert env.observation_space["img"].dtype == np.uint8 and env.observation_space["x"].high[0] == 10
    obs, _ = env.reset(seed=1)
    for _ in range(6):
        obs, _, _, _, truncated, info = env.step(ACT)
    seen = np.concatenate([o["x"] for o in rec.seen]).astype(np.float64)
    np.testing.assert_allclose(env.obs_rms["x"].mean, seen.mean(axis=0), rtol=1e-9)
    np.testing.assert_array_equal(obs["img"], rec.seen[-1]["img"])
    np.testing.assert_array_equal(obs["k"], rec.seen[-1]["k"])
    assert truncated.any()
    np.testing.assert_allclose(info["final_obs"]["x"], env.obs_rms["x"].normalize(rec.finals[-1]["x"], 10.0), rtol=1e-6)
    assert info["final_obs"]["img"].dtype == np.uint8


def test_spaces_with_nothing_to_normalize_pass_through():
    class Discrete(gym.Env):
        observation_space, action_space = gym.spaces.Discrete(3), gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            return 1, {}

        def step(self, a):
            return 2, 0.0, False, False, {"cost": 0.0}

    env = NormalizeObservation(from_env_fns([Discrete] * 2))
    assert env.obs_rms is None and env.observation_space == gym.spaces.Discrete(3)
    assert env.reset()[0].tolist() == [1, 1]
    assert env.step(np.zeros(2, dtype=np.int64))[0].tolist() == [2, 2]


def test_shared_frozen_statistics_for_an_eval_env():
    train = NormalizeObservation(GaussianVectorEnv(seed=0))
    train.reset(seed=0)
    for _ in range(5):
        train.step(ACT)
    evaluation = NormalizeObservation(GaussianVectorEnv(seed=1), obs_rms=train.obs_rms, update=False)
    assert evaluation.obs_rms is train.obs_rms
    count = train.obs_rms.count
    raw, _ = GaussianVectorEnv(seed=1).reset(seed=3)
    obs, _ = evaluation.reset(seed=3)
    np.testing.assert_allclose(obs, train.normalize(raw), rtol=1e-6)
    evaluation.step(ACT)
    assert train.obs_rms.count == count
    with pytest.raises(ConfigError, match=r"RunningMeanStd of shape \(3,\)"):
        NormalizeObservation(GaussianVectorEnv(), obs_rms=RunningMeanStd((4,)))
    with pytest.raises(ConfigError, match=r"keys \['x'\]"):
        NormalizeObservation(GaussianVectorEnv(dict_obs=True), obs_rms=RunningMeanStd((3,)))


def test_state_dict_resumes_exactly():
    env = NormalizeObservation(GaussianVectorEnv(dict_obs=True))
    env.reset(seed=4)
    for _ in range(7):
        env.step(ACT)
    state = env.state_dict()
    assert set(state) == {"env", "obs_rms"} and set(state["obs_rms"]) == {"x"}
    expected = [env.step(ACT) for _ in range(5)]

    resumed = NormalizeObservation(GaussianVectorEnv(dict_obs=True, seed=123))
    resumed.load_state_dict(state)
    for want in expected:
        got = resumed.step(ACT)
        np.testing.assert_array_equal(got[0]["x"], want[0]["x"])
        for g, w in zip(got[1:5], want[1:5]):
            np.testing.assert_array_equal(g, w)
        if "final_obs" in want[5]:
            np.testing.assert_array_equal(got[5]["final_obs"]["x"], want[5]["final_obs"]["x"])
    with pytest.raises(CheckpointError, match="keys"):
        NormalizeObservation(GaussianVectorEnv()).load_state_dict(state)


def test_statistics_save_apart_from_an_env_that_cannot_save():
    env = NormalizeObservation(make_gymnasium("CartPole-v1", 2, seed=0, cost_fn=lambda *a: 0.0))
    with pytest.raises(NotImplementedError):
        env.state_dict()
    env.reset()
    saved = env.obs_rms_state_dict()
    fresh = NormalizeObservation(make_gymnasium("CartPole-v1", 2, seed=0, cost_fn=lambda *a: 0.0))
    fresh.load_obs_rms_state(saved)
    np.testing.assert_array_equal(fresh.obs_rms.mean, env.obs_rms.mean)


# ---- ScaleRewardCost and the base wrapper ---------------------------------------------------


def test_scale_reward_cost():
    env = ScaleRewardCost(GaussianVectorEnv(), reward_scale=0.1, cost_scale=[2.0, 3.0])
    env.reset(seed=0)
    base = GaussianVectorEnv()
    base.reset(seed=0)
    _, reward, cost, *_ = env.step(ACT)
    _, reward0, cost0, *_ = base.step(ACT)
    np.testing.assert_allclose(reward, reward0 * 0.1)
    np.testing.assert_allclose(cost, cost0 * [2.0, 3.0])
    with pytest.raises(ConfigError, match=r"one number or 2 \(one per cost channel \['a', 'b'\]\)"):
        ScaleRewardCost(GaussianVectorEnv(), cost_scale=[1.0, 2.0, 3.0])
    with pytest.raises(ConfigError, match="cost_scale must be finite and > 0"):
        ScaleRewardCost(GaussianVectorEnv(), cost_scale=0.0)
    with pytest.raises(ConfigError, match="reward_scale"):
        ScaleRewardCost(GaussianVectorEnv(), reward_scale=float("nan"))


def test_wrapper_delegates():
    inner = GaussianVectorEnv(num_envs=2)
    env = ScaleRewardCost(NormalizeObservation(inner))
    assert env.num_envs == 2 and env.cost_names == ("a", "b") and env.num_costs == 2
    assert env.max_episode_steps == 7 and env.unwrapped is inner
    assert env.action_space is inner.action_space
    assert env.observation_space.high[0] == 10.0  # the normaliser's space, seen through the outer wrapper
    assert env.obs_rms is env.env.obs_rms  # attribute lookup falls through to wrapped envs
    assert set(env.state_dict()["env"]) == {"env", "obs_rms"}
    with pytest.raises(AttributeError):
        getattr(env, "no_such_attribute")  # noqa: B009
    with pytest.raises(TypeError, match="wraps a VectorCMDP"):
        VectorWrapper(gym.make("CartPole-v1"))
    assert "ScaleRewardCost<NormalizeObservation<GaussianVectorEnv" in repr(env)
