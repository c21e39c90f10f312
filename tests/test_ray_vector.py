"""The Ray-backed vector env: same steps as the in-process env, actors hosting gymnasium or cmdp
vector envs, dead actors replaced with their episodes truncated, and training that goes on."""

from __future__ import annotations

import functools
import logging
import sys
import time

import cloudpickle
import numpy as np
import pytest

import cmdp
from cmdp.core.gym_adapter import from_env_fns
from cmdp.errors import ConfigError, EnvWorkerError

ray = pytest.importorskip("ray")
from cmdp.core.ray_vector import RayVectorCMDP  # noqa: E402  (needs ray)

import test_subproc  # noqa: E402  (CounterEnv: a gymnasium env that fails on request)
from test_subproc import CounterEnv, FourTupleEnv, cartpole_cost  # noqa: E402

# Ray's workers cannot import the test modules: send their classes and functions by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(test_subproc)

ZEROS2 = np.zeros(2, dtype=np.int64)


def kill_actor(handle, timeout: float = 30.0) -> None:
    """``ray.kill`` and wait until the actor is gone: the kill is asynchronous, and a step sent
    right after it may otherwise still be served by the dying actor."""
    ray.kill(handle)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get(handle.__ray_ready__.remote(), timeout=5.0)
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:
            continue
        time.sleep(0.05)
    pytest.fail(f"actor {handle} still answers {timeout} s after ray.kill")


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def assert_same_step(a, b):
    for x, y in zip(a[:5], b[:5]):
        np.testing.assert_array_equal(x, y)
    assert a[5].keys() == b[5].keys()
    for key in a[5]:
        np.testing.assert_array_equal(a[5][key], b[5][key])


def test_make_with_ray_vectorization_matches_the_sync_env():
    kw = dict(num_envs=3, seed=11, cost_fn=cartpole_cost, max_episode_steps=12)
    sync = cmdp.make("CartPole-v1", **kw)
    with cmdp.make("CartPole-v1", vectorization="ray", **kw) as remote:
        assert isinstance(remote, RayVectorCMDP) and len(remote.actor_handles) == 3
        assert remote.observation_space == sync.observation_space and remote.cost_names == sync.cost_names
        assert remote.max_episode_steps == 12
        np.testing.assert_array_equal(remote.reset()[0], sync.reset()[0])
        rng = np.random.default_rng(1)
        finals = 0
        for _ in range(40):
            a = rng.integers(0, 2, 3)
            out_remote, out_sync = remote.step(a), sync.step(a)
            assert_same_step(out_remote, out_sync)
            finals += "final_obs" in out_sync[5]
        assert finals > 0


def test_actors_hosting_cmdp_vector_envs_match_in_process_envs():
    make_three = functools.partial(cmdp.make, "TwoChannelGrid-v0", num_envs=3)
    with RayVectorCMDP([make_three, make_three], seed=5) as remote:
        assert remote.num_envs == 6 and remote.cost_names == ("lava", "water")
        local = [cmdp.make("TwoChannelGrid-v0", num_envs=3), cmdp.make("TwoChannelGrid-v0", num_envs=3)]
        obs, _ = remote.reset()
        expected = [env.reset(seed=5 + 3 * k)[0] for k, env in enumerate(local)]  # actor k starts at place 3k
        np.testing.assert_array_equal(obs, np.concatenate(expected))
        rng = np.random.default_rng(2)
        ended = 0
        for _ in range(30):
            a = rng.integers(0, 4, 6)
            got = remote.step(a)
            parts = [env.step(a[3 * k : 3 * k + 3]) for k, env in enumerate(local)]
            for i in range(5):
                np.testing.assert_array_equal(got[i], np.concatenate([p[i] for p in parts]))
            done = got[3] | got[4]
            if done.any():
                ended += int(done.sum())
                want_final = np.concatenate([p[5].get("final_obs", p[0]) for p in parts])
                np.testing.assert_array_equal(got[5]["final_obs"][done], want_final[done])
                want_success = np.concatenate([p[5].get("success", np.zeros(3, bool)) for p in parts])
                np.testing.assert_array_equal(got[5]["success"][done], want_success[done])
        assert ended > 0
        last_obs = got[0]
        kill_actor(remote.actor_handles[1])  # the three envs of the second actor go down together
        obs, reward, cost, terminated, truncated, info = remote.step(np.zeros(6, dtype=np.int64))
        assert info["restarted"].tolist() == truncated.tolist() == [False] * 3 + [True] * 3
        assert not terminated[3:].any() and not reward[3:].any() and not cost[3:].any()
        np.testing.assert_array_equal(info["final_obs"][3:], last_obs[3:])
        np.testing.assert_array_equal(obs[:3], local[0].step(np.zeros(3, dtype=np.int64))[0])


def test_killed_actor_is_replaced_and_its_episode_truncated(caplog):
    with RayVectorCMDP([CounterEnv, CounterEnv], seed=3) as venv, caplog.at_level(logging.WARNING, "cmdp"):
        obs, _ = venv.reset()
        np.testing.assert_array_equal(obs[:, 1], [3, 4])
        for _ in range(3):
            prev, *_ = venv.step(ZEROS2)
        kill_actor(venv.actor_handles[1])  # mid-episode
        obs, reward, cost, terminated, truncated, info = venv.step(ZEROS2)
        assert info["restarted"].tolist() == [False, True]
        assert truncated.tolist() == [False, True] and not terminated.any()
        assert reward.tolist() == [1.0, 0.0] and cost.tolist() == [[1.0], [0.0]]
        np.testing.assert_array_equal(info["final_obs"][1], prev[1])  # its last observation, t=3
        assert obs[1, 0] == 0 and obs[1, 1] not in (-1, 4)  # a new episode, reseeded afresh
        assert obs[0, 0] == 4  # the other env went on undisturbed
        assert "env actor 1 (envs 1-1) failed: its actor died" in caplog.text
        for t in range(1, 4):
            obs, _, _, _, truncated, info = venv.step(ZEROS2)
            assert obs[1, 0] == t and "restarted" not in info and not truncated.any()


@pytest.mark.parametrize("how, why", [("exit", "its actor died"), ("raise", "boom from the env")])
def test_crashed_actor_process_or_raising_env_is_replaced(tmp_path, caplog, how, why):
    bad = functools.partial(CounterEnv, fail_at=2, how=how, flag=str(tmp_path / "failed"))
    with RayVectorCMDP([CounterEnv, bad], seed=0) as venv, caplog.at_level(logging.WARNING, "cmdp"):
        venv.reset()
        venv.step(ZEROS2)
        _, _, _, _, truncated, info = venv.step(ZEROS2)
        assert truncated.tolist() == [False, True] and info["restarted"].tolist() == [False, True]
        assert why in caplog.text
        assert venv.step(ZEROS2)[0][1, 0] == 1


def test_hung_actor_times_out_and_is_replaced(tmp_path, caplog):
    hang = functools.partial(CounterEnv, fail_at=2, how="hang", flag=str(tmp_path / "hung"))
    with RayVectorCMDP([hang], step_timeout=1.0, seed=0) as venv, caplog.at_level(logging.WARNING, "cmdp"):
        venv.reset()
        venv.step(np.zeros(1, dtype=np.int64))
        start = time.monotonic()
        _, _, _, _, truncated, info = venv.step(np.zeros(1, dtype=np.int64))
        assert time.monotonic() - start < 15
        assert truncated[0] and info["restarted"][0]
        assert "did not answer within 1 s" in caplog.text


def test_too_many_restarts_raise_env_worker_error(caplog):
    always = functools.partial(CounterEnv, fail_at=1, how="raise")
    venv = RayVectorCMDP([CounterEnv, always], max_restarts=2, seed=0)
    venv.reset()
    with (
        caplog.at_level(logging.WARNING, "cmdp"),
        pytest.raises(EnvWorkerError, match=r"env actor 1 failed 3 times.*max_restarts=2"),
    ):
        for _ in range(5):
            venv.step(ZEROS2)
    assert caplog.text.count("replacing it") == 2
    with pytest.raises(RuntimeError, match="closed"):
        venv.step(ZEROS2)


def _broken_env():
    raise ValueError("cannot build this env")


def test_configuration_and_start_errors():
    venv = RayVectorCMDP([FourTupleEnv])
    venv.reset(seed=0)
    with pytest.raises(ConfigError, match="4-tuple"):  # a CMDPError in the actor is raised, not retried
        venv.step(np.zeros(1, dtype=np.int64))
    with pytest.raises(RuntimeError, match="closed"):
        venv.reset()
    with pytest.raises(EnvWorkerError, match="(?s)env actor 1 failed to start.*cannot build this env"):
        RayVectorCMDP([CounterEnv, _broken_env])
    with pytest.raises(ConfigError, match=r"env_fns\[0\] returned a NoneType"):
        RayVectorCMDP([lambda: None])
    with pytest.raises(ConfigError, match="cost_fn and max_episode_steps apply to gymnasium envs only"):
        RayVectorCMDP([functools.partial(cmdp.make, "GridWorld-v0")], max_episode_steps=5)
    with pytest.raises(ConfigError, match="Ray's max_restarts"):
        RayVectorCMDP([CounterEnv], actor_options={"max_restarts": 2})
    with pytest.raises(ConfigError, match="step_timeout"):
        RayVectorCMDP([CounterEnv], step_timeout=0)


def test_close_ends_the_actors():
    venv = RayVectorCMDP([CounterEnv, CounterEnv])
    handles = venv.actor_handles
    venv.close()
    venv.close()
    deadline = time.monotonic() + 60
    for handle in handles:
        while True:
            try:
                ray.get(handle.reset.remote(0), timeout=30)
            except ray.exceptions.RayActorError:
                break  # the actor is gone
            except ray.exceptions.RayTaskError as e:  # closed but not yet ended: ray.kill is asynchronous
                assert "already closed" in str(e) and time.monotonic() < deadline
                time.sleep(0.2)
            else:
                pytest.fail("a closed actor still steps its env")


class KillsAnActor(RayVectorCMDP):
    """Kills actor 1 from outside at its ``kill_at``-th step, as a lost machine would."""

    kill_at = 45

    def step(self, actions):
        self.steps_taken = getattr(self, "steps_taken", 0) + 1
        if self.steps_taken == self.kill_at:
            kill_actor(self.actor_handles[1])
        return super().step(actions)


def test_training_goes_on_after_an_actor_is_killed(caplog):
    from cmdp.algorithms import PPOLag

    env = KillsAnActor([CounterEnv, CounterEnv], seed=0, max_episode_steps=10)
    try:
        algo = PPOLag(
            env, cost_limit=5.0, seed=0, run_dir=False, num_envs=2, steps_per_epoch=64,
            minibatch_size=32, update_epochs=1, progress_bar=False,
        )  # fmt: skip
        with caplog.at_level(logging.WARNING, logger="cmdp"):
            algo.learn(192)
        assert algo.global_step == 192 and env.steps_taken == 96
        assert "env actor 1 (envs 1-1) failed: its actor died" in caplog.text
        assert np.isfinite(algo.evaluate(episodes=2)["ep_return"])
    finally:
        env.close()


def test_from_env_fns_rejects_unknown_vectorization():
    with pytest.raises(ConfigError, match="'sync', 'subproc', 'ray'"):
        from_env_fns([CounterEnv], vectorization="mpi")
