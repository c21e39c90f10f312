"""cmdp envs as OmniSafe environments (cmdp.interop.omnisafe).

OmniSafe is not installed in the main venv: these tests (all but the first) run in the peer env,
`bash benchmarks/peers/run_peer_tests.sh`, and are skipped elsewhere with the reason.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

try:
    import omnisafe  # noqa: F401
    import torch

    OMNISAFE_PROBLEM = None
except Exception as e:  # ImportError, or the dataclass ValueError without the 3.11 hook
    OMNISAFE_PROBLEM = f"{type(e).__name__}: {e}"

needs_omnisafe = pytest.mark.skipif(
    OMNISAFE_PROBLEM is not None,
    reason=f"omnisafe is not importable here ({OMNISAFE_PROBLEM}); run bash benchmarks/peers/run_peer_tests.sh",
)


def test_importing_cmdp_imports_no_omnisafe():
    code = (
        "import sys, cmdp, cmdp.interop, cmdp.algorithms, cmdp.cli\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('omnisafe', 'safety_gymnasium')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent)


# ---- helpers for the OmniSafe tests ---------------------------------------------------------

OMNISAFE_EPISODE_WINDOW = 50
"""Episodes over which OmniSafe 0.5.0 averages Metrics/EpRet, EpCost and EpLen (a fixed window)."""

RECORDERS: list = []
"""Every EpisodeRecorder built in this process: the truth OmniSafe's logs are checked against."""


def _recorder_class():
    from cmdp.core.wrappers import VectorWrapper

    class EpisodeRecorder(VectorWrapper):
        """Records (return, per-channel cost, length) of every episode that finishes."""

        def __init__(self, env):
            super().__init__(env)
            self.episodes: list[tuple[float, np.ndarray, int]] = []
            RECORDERS.append(self)

        def reset(self, *, seed=None):
            out = self.env.reset(seed=seed)
            n, k = self.num_envs, self.num_costs
            self._ret, self._cost, self._len = np.zeros(n), np.zeros((n, k)), np.zeros(n, dtype=int)
            return out

        def step(self, actions):
            out = self.env.step(actions)
            _, reward, cost, terminated, truncated, _ = out
            self._ret += reward
            self._cost += cost
            self._len += 1
            for i in np.flatnonzero(terminated | truncated):
                self.episodes.append((float(self._ret[i]), self._cost[i].copy(), int(self._len[i])))
                self._ret[i], self._cost[i], self._len[i] = 0.0, 0.0, 0
            return out

    return EpisodeRecorder


def _recorded(builtin_id):
    def factory(num_envs=1, seed=None, **kwargs):
        from cmdp.core import registry

        return _recorder_class()(registry._REGISTRY[builtin_id].factory(num_envs=num_envs, seed=seed, **kwargs))

    return factory


@pytest.fixture(scope="module")
def interop():
    """The adapter module, with recorded copies of two built-in envs registered for both libraries."""
    from cmdp.core import registry

    import cmdp.interop.omnisafe as interop

    registry.builtin_ids()  # loads the built-in envs
    added = {"RecordedPointGoal-v0": "PointGoal-v0", "RecordedTwoChannelGrid-v0": "TwoChannelGrid-v0"}
    for new_id, builtin in added.items():
        registry.register(new_id, _recorded(builtin))
    interop.register(*added)
    yield interop
    for new_id in added:
        registry._REGISTRY.pop(new_id, None)


def _omnisafe_make(env_id, **kwargs):
    from omnisafe.envs.core import make

    return make(env_id, **kwargs)


def _train(algo, env_id, tmp_path, num_envs, steps_per_epoch, epochs, **algo_cfgs):
    RECORDERS.clear()
    cfgs = {
        "seed": 0,
        "train_cfgs": {"total_steps": steps_per_epoch * epochs, "torch_threads": 1, "vector_env_nums": num_envs},
        "algo_cfgs": {"steps_per_epoch": steps_per_epoch, "update_iters": 2, **algo_cfgs},
        "logger_cfgs": {"log_dir": str(tmp_path), "use_tensorboard": False},
    }
    agent = omnisafe.Agent(algo, env_id, custom_cfgs=cfgs)
    ep_ret, ep_cost, ep_len = agent.learn()
    stepped = [r for r in RECORDERS if r.episodes]
    assert len(stepped) == 1, "exactly one env (the training env) should have finished episodes"
    # learn() reports means over OmniSafe's window of the last 50 finished episodes
    return agent, (ep_ret, ep_cost, ep_len), stepped[0].episodes[-OMNISAFE_EPISODE_WINDOW:]


# ---- the contract --------------------------------------------------------------------------


@needs_omnisafe
def test_every_builtin_id_is_registered_and_unknown_ids_are_refused(interop):
    from omnisafe.envs.core import support_envs

    from cmdp.core.registry import builtin_ids
    from cmdp.errors import UnknownNameError

    assert {f"cmdp:{i}" for i in builtin_ids()} <= set(support_envs())
    assert interop.register("CartPole-v1") == ["cmdp:CartPole-v1"]
    assert "cmdp:CartPole-v1" in support_envs()
    with pytest.raises(UnknownNameError, match="PointGoal-v9"):
        interop.register("PointGoal-v9")


@needs_omnisafe
def test_batched_steps_equal_the_cmdp_env_and_carry_final_observations(interop):
    import cmdp

    ours = cmdp.make("PointGoal-v0", num_envs=2, max_episode_steps=5)
    theirs = _omnisafe_make("cmdp:PointGoal-v0", num_envs=2, max_episode_steps=5)
    assert theirs.max_episode_steps == 5
    assert not theirs.need_auto_reset_wrapper and not theirs.need_time_limit_wrapper
    assert theirs.observation_space == ours.observation_space and theirs.action_space == ours.action_space
    obs_a, _ = ours.reset(seed=3)
    obs_b, _ = theirs.reset(seed=3)
    np.testing.assert_array_equal(obs_b.numpy(), obs_a)
    rng = np.random.default_rng(0)
    for t in range(7):
        action = rng.uniform(-1, 1, size=(2, 2)).astype(np.float32)
        obs_a, r_a, c_a, te_a, tr_a, info_a = ours.step(action)
        obs_b, r_b, c_b, te_b, tr_b, info_b = theirs.step(torch.as_tensor(action))
        for x in (obs_b, r_b, c_b, te_b, tr_b):
            assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
        assert obs_b.shape == (2, 41) and r_b.shape == c_b.shape == te_b.shape == (2,)
        np.testing.assert_array_equal(obs_b.numpy(), obs_a)
        np.testing.assert_allclose(r_b.numpy(), r_a, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(c_b.numpy(), c_a[:, 0])
        np.testing.assert_array_equal(info_b["costs"].numpy(), c_a)
        np.testing.assert_array_equal(tr_b.numpy().astype(bool), tr_a)
        ended = te_a | tr_a
        assert ended.any() == (t == 4)  # the time limit of 5 steps
        if ended.any():
            np.testing.assert_array_equal(info_b["final_observation"].numpy(), info_a["final_obs"])
            np.testing.assert_array_equal(info_b["_final_observation"].numpy(), ended)
        else:
            assert "final_observation" not in info_b
    ours.close()
    theirs.close()


@needs_omnisafe
def test_one_env_is_unbatched_as_omnisafe_expects(interop):
    env = _omnisafe_make("cmdp:PointGoal-v0", num_envs=1, max_episode_steps=2, render_mode="rgb_array", width=64)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (41,)
    obs, reward, cost, terminated, truncated, info = env.step(torch.zeros(2))
    assert obs.shape == (41,) and reward.shape == cost.shape == terminated.shape == truncated.shape == ()
    obs, reward, cost, terminated, truncated, info = env.step(torch.zeros(1, 2))  # as Unsqueeze hands it
    assert bool(truncated) and info["final_observation"].shape == (41,) and "_final_observation" not in info
    env.close()


@needs_omnisafe
def test_channels_are_summed_with_a_warning_and_discrete_actions_take_the_argmax(interop):
    import cmdp

    with pytest.warns(UserWarning, match="sum"):
        theirs = _omnisafe_make("cmdp:TwoChannelGrid-v0", num_envs=3)
    ours = cmdp.make("TwoChannelGrid-v0", num_envs=3)
    assert theirs.action_space == gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    ours.reset(seed=5)
    theirs.reset(seed=5)
    rng = np.random.default_rng(1)
    lava = water = 0.0
    for _ in range(60):
        scores = rng.normal(size=(3, 4)).astype(np.float32)
        obs_a, r_a, c_a, te_a, tr_a, _ = ours.step(scores.argmax(axis=1))
        obs_b, r_b, c_b, te_b, tr_b, info_b = theirs.step(torch.as_tensor(scores))
        np.testing.assert_array_equal(obs_b.numpy(), obs_a)
        np.testing.assert_array_equal(r_b.numpy(), r_a)
        np.testing.assert_array_equal(c_b.numpy(), c_a.sum(axis=1))
        np.testing.assert_array_equal(info_b["costs"].numpy(), c_a)
        lava, water = lava + c_a[:, 0].sum(), water + c_a[:, 1].sum()
    assert lava > 0 and water > 0, "both channels must have fired for the sum to be tested"
    ours.close()
    theirs.close()


@needs_omnisafe
def test_observations_flatten_like_gymnasium_and_unsupported_spaces_are_refused(interop):
    from cmdp.errors import ConfigError

    space = gym.spaces.Dict(
        {
            "image": gym.spaces.Box(0, 255, (2, 3), np.uint8),
            "cell": gym.spaces.Discrete(4, start=1),
            "flags": gym.spaces.MultiBinary(3),
            "parts": gym.spaces.MultiDiscrete([2, 3]),
        }
    )
    space.seed(0)
    rows = [space.sample() for _ in range(5)]
    batch = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in space.spaces}
    box, flatten = interop.flat_observations(space)
    expected = np.stack([gym.spaces.flatten(space, r) for r in rows]).astype(np.float32)
    np.testing.assert_array_equal(flatten(batch), expected)
    assert box.shape == expected.shape[1:] and box.dtype == np.float32
    with pytest.raises(ConfigError, match="Text"):
        interop.flat_observations(gym.spaces.Text(5))
    with pytest.raises(ConfigError, match="MultiDiscrete"):
        interop.box_actions(gym.spaces.MultiDiscrete([2, 2]))


# ---- OmniSafe trains on cmdp envs ----------------------------------------------------------


@needs_omnisafe
def test_omnisafe_ppolag_trains_on_a_cmdp_env_and_logs_its_episodes(interop, tmp_path):
    agent, (ep_ret, ep_cost, ep_len), episodes = _train(
        "PPOLag", "cmdp:RecordedPointGoal-v0", tmp_path, num_envs=2, steps_per_epoch=2000, epochs=2
    )
    # two envs, 1000-step episodes, OmniSafe restarts episodes every epoch: 2 per epoch
    assert len(episodes) == 4 and all(length == 1000 for _, _, length in episodes)
    returns = [r for r, _, _ in episodes]
    costs = [c.sum() for _, c, _ in episodes]
    assert np.isfinite([ep_ret, ep_cost, ep_len]).all()
    assert ep_len == 1000
    np.testing.assert_allclose(ep_ret, np.mean(returns), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ep_cost, np.mean(costs), rtol=1e-5)
    assert 0 <= ep_cost <= 1000 and abs(ep_ret) < 200  # at most 1 cost per step; returns of a barely trained policy
    progress = (Path(agent.agent.logger.log_dir) / "progress.csv").read_text().splitlines()
    assert len(progress) == 1 + 2  # a header and one row per epoch


@needs_omnisafe
def test_omnisafe_cpo_gets_the_summed_cost_of_a_two_channel_env_and_evaluates(interop, tmp_path):
    from omnisafe.evaluator import Evaluator

    with pytest.warns(UserWarning, match="sum"):
        agent, (ep_ret, ep_cost, ep_len), episodes = _train(
            "CPO", "cmdp:RecordedTwoChannelGrid-v0", tmp_path, num_envs=1, steps_per_epoch=1000, epochs=2
        )
    lava = np.array([c[0] for _, c, _ in episodes])
    water = np.array([c[1] for _, c, _ in episodes])
    assert len(episodes) == OMNISAFE_EPISODE_WINDOW and lava.sum() > 0 and water.sum() > 0
    np.testing.assert_allclose(ep_cost, np.mean(lava + water), rtol=1e-5)
    assert ep_cost > np.mean(lava)  # the water channel counted too
    np.testing.assert_allclose(ep_ret, np.mean([r for r, _, _ in episodes]), rtol=1e-5)
    np.testing.assert_allclose(ep_len, np.mean([n for _, _, n in episodes]), rtol=1e-5)
    # OmniSafe's own evaluator rebuilds the env unbatched, with its rendering arguments
    log_dir = Path(agent.agent.logger.log_dir)
    saved = sorted((log_dir / "torch_save").glob("epoch-*.pt"))
    assert saved, "OmniSafe saves the final model"
    evaluator = Evaluator()
    evaluator.load_saved(save_dir=str(log_dir), model_name=saved[-1].name)
    rewards, costs = evaluator.evaluate(num_episodes=3)
    assert len(rewards) == len(costs) == 3
    assert all(np.isfinite(rewards)) and all(c >= 0 and float(c).is_integer() for c in costs)
