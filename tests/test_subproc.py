"""Subprocess vector env: same results as the sync env, crash recovery, timeouts, shutdown."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from cmdp.core.gym_adapter import from_env_fns, make_gymnasium
from cmdp.core.subproc import SubprocVectorCMDP
from cmdp.errors import ConfigError, EnvWorkerError


class CounterEnv(gym.Env):
    """obs = [episode step, reset seed]; cost 1 on every step. Fails at step ``fail_at`` of the
    process's lifetime, in the way ``how`` says, once if ``flag`` names a file (created when it
    fails) or every time if ``flag`` is None."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, fail_at: int | None = None, how: str = "exit", flag: str | None = None) -> None:
        self.fail_at, self.how, self.flag = fail_at, how, flag
        self.lifetime_steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.seed_used = 0, -1 if seed is None else seed
        return self._obs(), {}

    def _obs(self):
        return np.array([self.t, self.seed_used], dtype=np.float32)

    def step(self, action):
        self.lifetime_steps += 1
        if self.lifetime_steps == self.fail_at and not (self.flag and os.path.exists(self.flag)):
            if self.flag:
                Path(self.flag).touch()
            if self.how == "exit":
                os._exit(3)
            if self.how == "hang":
                time.sleep(30)
            raise RuntimeError("boom from the env")
        self.t += 1
        return self._obs(), 1.0, False, False, {"cost": 1.0}


class FourTupleEnv(CounterEnv):
    def step(self, action):
        obs, r, te, tr, info = super().step(action)
        return obs, r, te, info


def cartpole_cost(obs, action, next_obs, info):
    return float(abs(next_obs[2]) > 0.05)


def fns(n_good, **bad):
    return [CounterEnv] * n_good + [lambda: CounterEnv(**bad)]


def test_subproc_matches_sync():
    kw = dict(num_envs=2, seed=11, cost_fn=cartpole_cost, max_episode_steps=12)
    sync = make_gymnasium("CartPole-v1", **kw)
    with make_gymnasium("CartPole-v1", vectorization="subproc", **kw) as sub:
        assert isinstance(sub, SubprocVectorCMDP)
        assert sub.observation_space == sync.observation_space and sub.cost_names == sync.cost_names
        assert sub.max_episode_steps == 12
        np.testing.assert_array_equal(sub.reset()[0], sync.reset()[0])
        rng = np.random.default_rng(1)
        done_seen = False
        for _ in range(40):
            a = rng.integers(0, 2, 2)
            out_sub, out_sync = sub.step(a), sync.step(a)
            for x, y in zip(out_sub[:5], out_sync[:5]):
                np.testing.assert_array_equal(x, y)
            assert out_sub[5].keys() == out_sync[5].keys()
            if "final_obs" in out_sync[5]:
                done_seen = True
                np.testing.assert_array_equal(out_sub[5]["final_obs"], out_sync[5]["final_obs"])
        assert done_seen


@pytest.mark.parametrize("how,why", [("exit", "process died"), ("raise", "boom from the env")])
def test_crashed_worker_is_restarted_and_its_episode_truncated(tmp_path, caplog, how, why):
    env_fns = fns(1, fail_at=3, how=how, flag=str(tmp_path / "failed"))
    venv = from_env_fns(env_fns, vectorization="subproc", seed=100)
    with venv, caplog.at_level(logging.WARNING, "cmdp"):
        obs, _ = venv.reset()
        np.testing.assert_array_equal(obs[:, 1], [100, 101])
        for _ in range(2):
            prev, *_ = venv.step(np.zeros(2, dtype=np.int64))
        assert not caplog.records
        obs, reward, cost, terminated, truncated, info = venv.step(np.zeros(2, dtype=np.int64))
        assert info["restarted"].tolist() == [False, True]
        assert truncated.tolist() == [False, True] and not terminated.any()
        assert reward.tolist() == [1.0, 0.0] and cost.tolist() == [[1.0], [0.0]]
        np.testing.assert_array_equal(info["final_obs"][1], prev[1])  # the last obs it had: t=2
        assert obs[1, 0] == 0 and obs[1, 1] not in (-1, 101)  # a new episode, reseeded afresh
        assert obs[0, 0] == 3  # the healthy env went on undisturbed
        record = caplog.records[-1]
        assert record.levelno == logging.WARNING and record.name == "cmdp"
        assert "env worker 1" in record.getMessage() and why in record.getMessage()
        for t in range(1, 4):  # and stepping goes on
            obs, reward, _, _, truncated, info = venv.step(np.zeros(2, dtype=np.int64))
            assert obs[1, 0] == t and "restarted" not in info and not truncated.any()


def test_restart_seed_is_reproducible(tmp_path):
    firsts = []
    for run in range(2):
        flag = tmp_path / f"failed{run}"
        with from_env_fns(fns(0, fail_at=1, flag=str(flag)), vectorization="subproc", seed=5) as venv:
            venv.reset()
            firsts.append(venv.step(np.zeros(1, dtype=np.int64))[0][0, 1])
    assert firsts[0] == firsts[1]


def test_too_many_restarts_raise_env_worker_error(caplog):
    venv = from_env_fns(fns(1, fail_at=1), vectorization="subproc", max_restarts=2, seed=0)
    venv.reset()
    with (
        caplog.at_level(logging.WARNING, "cmdp"),
        pytest.raises(EnvWorkerError, match=r"env worker 1 failed 3 times.*max_restarts=2"),
    ):
        for _ in range(5):
            venv.step(np.zeros(2, dtype=np.int64))
    assert len([r for r in caplog.records if "restarting" in r.getMessage()]) == 2
    with pytest.raises(RuntimeError, match="closed"):
        venv.step(np.zeros(2, dtype=np.int64))


def test_hung_worker_times_out_and_is_restarted(tmp_path, caplog):
    env_fns = fns(0, fail_at=2, how="hang", flag=str(tmp_path / "hung"))
    venv = from_env_fns(env_fns, vectorization="subproc", step_timeout=0.5, seed=0)
    with venv, caplog.at_level(logging.WARNING, "cmdp"):
        venv.reset()
        venv.step(np.zeros(1, dtype=np.int64))
        start = time.monotonic()
        _, _, _, _, truncated, info = venv.step(np.zeros(1, dtype=np.int64))
        assert time.monotonic() - start < 10
        assert truncated[0] and info["restarted"][0]
        assert "did not answer within 0.5 s" in caplog.text


def test_configuration_errors_in_a_worker_are_raised_not_restarted():
    venv = from_env_fns([FourTupleEnv], vectorization="subproc")
    venv.reset(seed=0)
    with pytest.raises(ConfigError, match="4-tuple"):
        venv.step(np.zeros(1, dtype=np.int64))
    with pytest.raises(RuntimeError, match="closed"):
        venv.reset()


def _broken_env():
    raise ValueError("cannot build this env")


def test_worker_that_cannot_start_is_an_error():
    with pytest.raises(EnvWorkerError, match="(?s)env worker 1 failed to start.*ValueError: cannot build this env"):
        SubprocVectorCMDP([CounterEnv, _broken_env])


def test_env_fn_returning_no_env_is_a_config_error():
    with pytest.raises(ConfigError, match=r"env_fns\[1\] returned a NoneType"):
        SubprocVectorCMDP([CounterEnv, _returns_none])


def _returns_none():
    return None


def test_unpicklable_env_fn_is_a_config_error():
    lock = threading.Lock()
    with pytest.raises(ConfigError, match=r"env_fns\[0\] or cost_fn cannot be pickled.*vectorization='sync'"):
        SubprocVectorCMDP([lambda: CounterEnv() if lock else None])


def test_close_is_idempotent_and_ends_the_processes():
    venv = SubprocVectorCMDP([CounterEnv] * 2)
    procs = [w.process for w in venv._workers]
    assert all(p.is_alive() for p in procs)
    venv.close()
    venv.close()
    assert not any(p.is_alive() for p in procs)
    # an env that is dropped without close() is shut down when collected
    venv = SubprocVectorCMDP([CounterEnv])
    proc = venv._workers[0].process
    del venv
    gc.collect()
    assert not proc.is_alive()


def test_argument_checks():
    with pytest.raises(ConfigError, match="step_timeout"):
        SubprocVectorCMDP([CounterEnv], step_timeout=0)
    with pytest.raises(ConfigError, match="max_restarts"):
        SubprocVectorCMDP([CounterEnv], max_restarts=-1)
    with pytest.raises(ConfigError, match="start_method"):
        SubprocVectorCMDP([CounterEnv], start_method="teleport")


def test_training_survives_a_crashed_worker(tmp_path, caplog):
    from cmdp.algorithms import PPOLag

    flag = str(tmp_path / "crashed-once")
    env_fns = [lambda: CounterEnv(fail_at=None)] + [lambda: CounterEnv(fail_at=40, how="exit", flag=flag)]
    env = from_env_fns(env_fns, vectorization="subproc", seed=0, max_episode_steps=10)
    try:
        algo = PPOLag(env, cost_limit=5.0, seed=0, run_dir=False, num_envs=2, steps_per_epoch=64,
                      minibatch_size=32, update_epochs=1, progress_bar=False)
        with caplog.at_level(logging.WARNING, logger="cmdp"):
            algo.learn(192)
        assert algo.global_step == 192
        assert os.path.exists(flag)  # the worker did crash, and training went on
        assert "restart" in caplog.text.lower()
    finally:
        env.close()
