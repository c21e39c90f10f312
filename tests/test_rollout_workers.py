"""Rollout workers: the merged epoch equals what the workers' solvers collect in one process."""

from __future__ import annotations

import copy
import functools
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

from cmdp.algorithms import CPO, PPOLag
from cmdp.algorithms.rollout_workers import build_worker_solver
from cmdp.core.running_stats import RunningMeanStd
from cmdp.errors import ConfigError, EnvWorkerError

OPTIONS = dict(run_dir=False, progress_bar=False, num_envs=4, steps_per_epoch=256, minibatch_size=128, update_epochs=2)


def _assert_same(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}/{key}")
    elif a is None:
        assert b is None, where
    else:
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=where)


@pytest.mark.parametrize("solver", [PPOLag, CPO])
def test_epoch_equals_the_workers_solvers_in_one_process(solver):
    # 30-step episodes, so that some end within the 64 steps each env takes
    algo = solver("PointGoal-v0", cost_limit=5.0, seed=3, rollout_workers=2, env_kwargs={"max_episode_steps": 30}, **OPTIONS)
    try:
        replicas = [build_worker_solver(*copy.deepcopy(spec)) for spec in _specs(algo)]
        rms_start = algo.env.obs_rms.state_dict()
        data, stats, info = algo._collect()
        assert algo.global_step == 256
        parts = []
        for spec, replica in zip(algo._rollout_workers.specs, replicas):
            torch.manual_seed(spec[3])  # a worker's torch stream is its own; here they share one
            parts.append(replica.collect_here())
        # the envs are those of a one-process run: env i seeded with seed + i
        assert [r.seed for r in replicas] == [3, 5]
        for key in data:
            expected = [p[0][key] for p in parts]
            if expected[0] is None:
                assert data[key] is None
            elif isinstance(expected[0], dict):
                _assert_same(data[key], {k: torch.cat([e[k] for e in expected], dim=1) for k in expected[0]}, key)
            else:
                _assert_same(data[key], torch.cat(expected, dim=1), key)
        returns = [x for p in parts for x in p[1]["returns"]]
        assert returns and info["Metrics/Episodes"] == len(returns) == stats.episodes
        assert info["Metrics/EpRet"] == pytest.approx(np.mean(returns))
        np.testing.assert_array_equal(algo._ep_len, np.concatenate([r._ep_len for r in replicas]))
        # the statistics are those of every observation either worker saw
        merged = RunningMeanStd(rms_start["mean"].shape)
        merged.load_state_dict(rms_start)
        for r in replicas:
            merged.update_from_moments(*r.env.obs_rms.moments_since(rms_start))
        np.testing.assert_allclose(algo.env.obs_rms.mean, merged.mean, rtol=1e-12)
        np.testing.assert_allclose(algo.env.obs_rms.var, merged.var, rtol=1e-12)
        assert algo.env.obs_rms.count == rms_start["count"] + 4 + 256  # the first observations too
    finally:
        algo.close()


def _specs(algo):
    from cmdp.algorithms.rollout_workers import RolloutWorkers

    algo._rollout_workers = RolloutWorkers(algo)
    return algo._rollout_workers.specs


def test_training_with_workers_is_reproducible_and_updates_the_policy():
    runs = []
    for _ in range(2):
        algo = PPOLag("PointGoal-v0", cost_limit=5.0, seed=0, rollout_workers=2, **OPTIONS)
        try:
            before = copy.deepcopy(algo.policy.state_dict())
            algo.learn(512)
            after = algo.policy.state_dict()
            assert any(not torch.equal(before[k], after[k]) for k in before)
            runs.append((after, algo.evaluate(episodes=2, seed=7)))
        finally:
            algo.close()
    for k in runs[0][0]:
        assert torch.equal(runs[0][0][k], runs[1][0][k]), k
    assert runs[0][1] == runs[1][1]


def test_moments_since_recovers_what_each_copy_saw():
    rng = np.random.default_rng(0)
    base = RunningMeanStd((3,))
    base.update(rng.normal(5.0, 2.0, (1000, 3)))
    start = base.state_dict()
    batches = [rng.normal(-1.0, 3.0, (50, 3)), rng.normal(2.0, 1.0, (70, 3))]
    merged = RunningMeanStd((3,))
    merged.load_state_dict(start)
    for x in batches:
        copy_ = RunningMeanStd((3,))
        copy_.load_state_dict(start)
        copy_.update(x[:20])
        copy_.update(x[20:])
        mean, var, count = copy_.moments_since(start)
        np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-10)
        np.testing.assert_allclose(var, x.var(axis=0), rtol=1e-10)
        assert count == len(x)
        merged.update_from_moments(mean, var, count)
    reference = RunningMeanStd((3,))
    reference.load_state_dict(start)
    reference.update(np.concatenate(batches))
    np.testing.assert_allclose(merged.mean, reference.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.var, reference.var, rtol=1e-12)
    assert base.moments_since(start)[2] == 0.0


class _DiesInWorkers(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, trainer_pid: int):
        self.trainer_pid = trainer_pid

    def reset(self, *, seed=None, options=None):
        return np.zeros(2, np.float32), {}

    def step(self, action):
        if os.getpid() != self.trainer_pid:
            os._exit(3)
        return np.zeros(2, np.float32), 0.0, False, False, {"cost": 0.0}


def test_a_worker_that_dies_is_an_error():
    env_fn = functools.partial(_DiesInWorkers, trainer_pid=os.getpid())
    algo = PPOLag(env_fn, cost_limit=1.0, seed=0, rollout_workers=2, **OPTIONS)
    try:
        with pytest.raises(EnvWorkerError, match="rollout worker 0 died"):
            algo.learn(256)
    finally:
        algo.close()


class _CannotBuildInWorkers(_DiesInWorkers):
    def __init__(self, trainer_pid: int):
        super().__init__(trainer_pid)
        if os.getpid() != trainer_pid:
            raise RuntimeError("no simulator licence in this process")


def test_a_worker_that_cannot_build_fails_the_construction():
    env_fn = functools.partial(_CannotBuildInWorkers, trainer_pid=os.getpid())
    with pytest.raises(EnvWorkerError, match="rollout worker 0 failed(.|\n)*no simulator licence"):
        PPOLag(env_fn, cost_limit=1.0, seed=0, rollout_workers=2, **OPTIONS)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="multiple of rollout_workers"):
        PPOLag("PointGoal-v0", cost_limit=5.0, rollout_workers=3, **OPTIONS)
    with pytest.raises(ConfigError, match="rollout_workers"):
        PPOLag("PointGoal-v0", cost_limit=5.0, rollout_workers=-1, **OPTIONS)
    with pytest.raises(ConfigError, match="feed-forward"):
        PPOLag("PointGoal-v0", cost_limit=5.0, rollout_workers=2, network="gru", **OPTIONS)
    from cmdp.core.registry import make

    env = make("PointGoal-v0", num_envs=4)
    with pytest.raises(ConfigError, match="an id or a callable"):
        PPOLag(env, cost_limit=5.0, rollout_workers=2, **OPTIONS)


def test_a_run_with_workers_resumes_from_its_checkpoint(tmp_path):
    algo = PPOLag("PointGoal-v0", cost_limit=5.0, seed=0, rollout_workers=2, **OPTIONS)
    try:
        algo.learn(256)
        path = algo.save(tmp_path / "ckpt.pt")
        count = algo.env.obs_rms.count
    finally:
        algo.close()
    again = PPOLag.load(path, progress_bar=False)
    try:
        assert again.config.rollout_workers == 2 and again.global_step == 256
        assert again.env.obs_rms.count == count  # the merged statistics came back
        again.learn(512)
        assert again.global_step == 512
        assert again.env.obs_rms.count == count + 4 + 256  # new episodes: new first observations
    finally:
        again.close()
