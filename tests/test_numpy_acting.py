"""The NumPy acting path acts as the policy's torch modules do, to float32 rounding."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from cmdp.algorithms import PPOLag
from cmdp.policies.encoders import obs_to_tensor
from cmdp.policies.mlp import MLPActorCritic
from cmdp.policies.numpy_acting import NumpyActing, numpy_obs

BOX_OBS = gym.spaces.Box(-np.inf, np.inf, (3, 4), np.float32)
DICT_OBS = gym.spaces.Dict(
    {"pos": gym.spaces.Box(-5, 5, (2,), np.float64), "room": gym.spaces.Discrete(3, start=1), "bits": gym.spaces.MultiBinary(4)}
)
# bounds off centre, so that the squashing's centre and half range matter
BOX_ACTIONS = gym.spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 3.0], np.float32))


def _torch_step(policy, obs):
    with torch.no_grad():
        out = policy.act(obs)
        action = out.dist.sample()
        logp = out.dist.log_prob(action)
    return {
        "env_action": policy.to_env_action(action),
        "action": action.numpy(),
        "logp": logp.numpy(),
        "value": out.value.numpy(),
        "cost_value": out.cost_value.numpy(),
        **{key: v.numpy() for key, v in out.dist.params().items()},
    }


@pytest.mark.parametrize(
    "obs_space, action_space, activation",
    [(BOX_OBS, BOX_ACTIONS, "tanh"), (DICT_OBS, gym.spaces.Discrete(5), "relu"), (DICT_OBS, BOX_ACTIONS, "elu")],
)
def test_numpy_step_equals_torch_step(obs_space, action_space, activation):
    torch.manual_seed(0)
    policy = MLPActorCritic(obs_space, action_space, num_costs=2, hidden_sizes=(32, 16), activation=activation)
    # larger weights than at initialisation, so that actions spread over the whole box
    with torch.no_grad():
        policy.action_head.net.weight.mul_(100)
    obs_space.seed(1)
    batch = [obs_space.sample() for _ in range(64)]
    if isinstance(obs_space, gym.spaces.Dict):
        raw = {k: np.stack([b[k] for b in batch]) for k in obs_space.spaces}
    else:
        raw = np.stack(batch) * 3
    obs = obs_to_tensor(raw, obs_space)
    acting = NumpyActing.from_policy(policy)
    assert acting is not None
    torch.manual_seed(7)
    expected = _torch_step(policy, obs)
    torch.manual_seed(7)
    step = acting.act(numpy_obs(obs))
    got = {
        "env_action": step.env_action,
        "action": step.action,
        "logp": step.logp,
        "value": step.value,
        "cost_value": step.cost_value,
        **step.dist_params,
    }
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key].dtype == expected[key].dtype, key
        assert got[key].shape == expected[key].shape, key
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-5, err_msg=key)
    if isinstance(action_space, gym.spaces.Box):
        # the clipping into the box is exercised
        assert (step.env_action != step.action).any()
        assert ((step.env_action >= action_space.low) & (step.env_action <= action_space.high)).all()
    else:
        assert len(np.unique(step.action)) > 1
    value, cost_value = acting.values(numpy_obs(obs))
    np.testing.assert_allclose(value, expected["value"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cost_value, expected["cost_value"], rtol=1e-5, atol=1e-6)


def test_policies_without_a_numpy_counterpart_act_in_torch():
    gelu = MLPActorCritic(BOX_OBS, BOX_ACTIONS, num_costs=1, activation="gelu")
    assert NumpyActing.from_policy(gelu) is None
    image = gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)
    assert NumpyActing.from_policy(MLPActorCritic(image, BOX_ACTIONS, num_costs=1)) is None
    gru = PPOLag("PointGoal-v0", cost_limit=5.0, network="gru", run_dir=False, progress_bar=False, num_envs=2, steps_per_epoch=64)
    assert NumpyActing.from_policy(gru.policy) is None


def test_rollout_with_numpy_acting_equals_rollout_in_torch():
    options = dict(run_dir=False, progress_bar=False, num_envs=4, steps_per_epoch=256, env_kwargs={"max_episode_steps": 30})
    runs = {flag: PPOLag("PointGoal-v0", cost_limit=5.0, seed=3, numpy_acting=flag, **options) for flag in (True, False)}
    collected = {}
    for flag, algo in runs.items():
        torch.manual_seed(11)
        collected[flag] = algo.collect_here()
    (data, episodes, _), (expected, expected_episodes, _) = collected[True], collected[False]
    assert expected_episodes["returns"], "episodes of 30 steps end within the 64 steps of each env"
    assert data.keys() == expected.keys()
    for key in expected:
        if expected[key] is None:
            assert data[key] is None
            continue
        parts = expected[key].items() if isinstance(expected[key], dict) else [("", expected[key])]
        for sub, value in parts:
            got = data[key][sub] if sub else data[key]
            assert got.dtype == value.dtype and got.shape == value.shape, (key, sub)
            torch.testing.assert_close(got, value, rtol=1e-4, atol=1e-4, msg=f"{key}/{sub}")
    np.testing.assert_allclose(episodes["returns"], expected_episodes["returns"], rtol=1e-4)
    np.testing.assert_array_equal(episodes["lengths"], expected_episodes["lengths"])
