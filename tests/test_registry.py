"""cmdp.make: built-in ids, gymnasium ids, and errors that name the close ids."""

from __future__ import annotations

import numpy as np
import pytest

import cmdp
from cmdp.core import registry
from cmdp.core.gym_adapter import SyncVectorCMDP
from cmdp.errors import ConfigError, UnknownNameError


def test_unknown_id_names_the_closest_ids():
    with pytest.raises(UnknownNameError, match="'CartPol-v1'.*closest registered ids: .*CartPole-v1") as err:
        cmdp.make("CartPol-v1")
    assert "`cmdp envs`" in str(err.value)
    if not registry.safety_gymnasium_available():
        assert "safety-gymnasium is not installed" in str(err.value)
    with pytest.raises(KeyError):  # UnknownNameError is a KeyError for callers that catch that
        cmdp.make("NoSuchEnvAnywhere-v9")


def test_gymnasium_id_with_cost_fn():
    env = cmdp.make("CartPole-v1", num_envs=2, seed=0, cost_fn=lambda o, a, n, i: float(n[0] > 0), max_episode_steps=5)
    assert isinstance(env, SyncVectorCMDP) and env.num_envs == 2 and env.max_episode_steps == 5
    obs, _ = env.reset()
    assert obs.shape == (2, 4)
    _, _, cost, _, _, _ = env.step(np.array([0, 1]))
    assert cost.shape == (2, 1)


def test_gymnasium_id_without_cost_explains_what_to_do():
    env = cmdp.make("CartPole-v1", seed=0)
    env.reset()
    with pytest.raises(ConfigError, match="cost_fn="):
        env.step(np.array([0]))


def test_bad_arguments():
    with pytest.raises(TypeError, match="env_id must be a string"):
        cmdp.make(3)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="num_envs"):
            cmdp.make("CartPole-v1", num_envs=bad)
    with pytest.raises(ConfigError, match="vectorization"):
        cmdp.make("CartPole-v1", vectorization="threads")


def test_register_and_make_a_builtin_id():
    made = []

    def factory(num_envs, seed, **kwargs):
        made.append((num_envs, seed, kwargs))
        return cmdp.make("CartPole-v1", num_envs=num_envs, seed=seed, cost_fn=lambda *a: 0.0)

    cmdp.register("TestOnlyToy-v0", factory, "a test id")
    try:
        cmdp.register("TestOnlyToy-v0", factory)  # registering the same factory again is fine
        with pytest.raises(ValueError, match="already registered"):
            cmdp.register("TestOnlyToy-v0", lambda **kw: None)
        env = cmdp.make("TestOnlyToy-v0", num_envs=2, seed=4, level=3)
        assert env.num_envs == 2 and made == [(2, 4, {"level": 3})]
        assert "TestOnlyToy-v0" in registry.builtin_ids()
        with pytest.raises(UnknownNameError, match="TestOnlyToy-v0"):
            cmdp.make("TestOnlyToy-v1")
    finally:
        registry._REGISTRY.pop("TestOnlyToy-v0", None)
