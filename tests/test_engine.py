"""The on-policy engine: configs, determinism, resume, bad input, evaluation, sequence policies."""

from __future__ import annotations

import copy
import logging
from fractions import Fraction

import numpy as np
import pytest
import torch

from cmdp.algorithms import CPO, FOCOPS, PIDLag, PPO, PPOLag, get_algorithm, load
from cmdp.errors import CheckpointError, ConfigError, NonFiniteError, UnknownNameError

from conftest import CornerBandit
FAST = dict(num_envs=4, steps_per_epoch=64, minibatch_size=32, update_epochs=2, progress_bar=False, normalize_obs=False)


def params(algo) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in algo.policy.parameters()])


def test_same_seed_same_result():
    a = PPOLag(CornerBandit(), cost_limit=5.0, seed=3, run_dir=False, **FAST).learn(256)
    b = PPOLag(CornerBandit(), cost_limit=5.0, seed=3, run_dir=False, **FAST).learn(256)
    assert torch.equal(params(a), params(b))
    assert a.multiplier.value.tolist() == b.multiplier.value.tolist()
    c = PPOLag(CornerBandit(), cost_limit=5.0, seed=4, run_dir=False, **FAST).learn(256)
    assert not torch.equal(params(a), params(c))


def test_ppolag_with_zero_multiplier_equals_ppo():
    # a limit that is never reached keeps lambda projected at 0: the Lagrangian is PPO's objective
    lag = PPOLag(CornerBandit(), cost_limit=1e6, seed=1, run_dir=False, lambda_init=0.0, **FAST).learn(256)
    ppo = PPO(CornerBandit(), seed=1, run_dir=False, **FAST).learn(256)
    assert lag.multiplier.value.tolist() == [0.0]
    assert torch.allclose(params(lag), params(ppo))


@pytest.mark.parametrize("algo_cls", [PPOLag, CPO])
def test_critic_warmup_freezes_actor_and_multipliers(algo_cls):
    def actor_params(algo):
        return torch.cat([p.detach().reshape(-1) for p in algo.policy.actor_parameters()])

    def critic_params(algo):
        return torch.cat([p.detach().reshape(-1) for p in algo.policy.critic_parameters()])

    algo = algo_cls(CornerBandit(), cost_limit=0.5, seed=0, run_dir=False, critic_warmup_steps=128, **FAST)
    actor0, critic0 = actor_params(algo), critic_params(algo)
    lam0 = algo.multiplier.value.tolist() if hasattr(algo, "multiplier") else None
    algo.learn(128)  # two epochs, both within the warm-up
    assert torch.equal(actor_params(algo), actor0)
    assert not torch.equal(critic_params(algo), critic0)
    if lam0 is not None:
        assert algo.multiplier.value.tolist() == lam0
    assert algo.last_info["Train/CriticWarmup"] == 1.0
    algo.learn(192)  # the first epoch past the warm-up trains the actor
    assert not torch.equal(actor_params(algo), actor0)
    assert "Train/CriticWarmup" not in algo.last_info


@pytest.mark.parametrize("algo_cls", [PPOLag, PIDLag, FOCOPS, CPO])
def test_resume_equals_uninterrupted(tmp_path, algo_cls):
    full = algo_cls(CornerBandit(), cost_limit=3.0, seed=0, run_dir=False, **FAST).learn(384)
    half = algo_cls(CornerBandit(), cost_limit=3.0, seed=0, run_dir=False, **FAST).learn(192)
    path = half.save(tmp_path / "ck.pt")
    with pytest.raises(CheckpointError, match="pass env="):
        algo_cls.load(path)
    resumed = algo_cls.load(path, env=CornerBandit())
    assert resumed.global_step == 192
    resumed.learn(384)
    assert resumed.global_step == full.global_step == 384
    assert torch.equal(params(resumed), params(full))
    if hasattr(full, "multiplier"):
        assert resumed.multiplier.state_dict() == full.multiplier.state_dict()


def test_average_last_puts_the_tail_mean_in_the_actor(tmp_path):
    def actor(algo):
        return torch.cat([p.detach().reshape(-1) for p in algo.policy.actor_parameters()])

    config = dict(FAST, average_last=0.5)  # 6 epochs of 64 steps: the last 3 are averaged
    algo = PPOLag(CornerBandit(), cost_limit=3.0, seed=0, run_dir=False, **config)
    tail, accumulate = [], algo._accumulate_tail

    def record(total_steps, info):
        accumulate(total_steps, info)
        if algo.global_step > 192:
            tail.append(actor(algo))

    algo._accumulate_tail = record
    algo.learn(384)
    assert len(tail) == 3 and algo.last_info["Train/AveragedIterates"] == 3
    assert torch.allclose(actor(algo), torch.stack(tail).mean(0), atol=1e-6)
    assert not torch.allclose(actor(algo), tail[-1], atol=1e-6)

    # interrupted inside the tail and resumed from its checkpoint: the same average
    part = PPOLag(CornerBandit(), cost_limit=3.0, seed=0, run_dir=False, **config)
    accumulate_part = part._accumulate_tail

    def stop(total_steps, info):
        accumulate_part(total_steps, info)
        if part.global_step == 256:
            part.save(tmp_path / "ck.pt")
            raise KeyboardInterrupt

    part._accumulate_tail = stop
    with pytest.raises(KeyboardInterrupt):
        part.learn(384)
    resumed = PPOLag.load(tmp_path / "ck.pt", env=CornerBandit())
    resumed.learn(384)
    assert torch.equal(params(resumed), params(algo))


def test_learn_callback_sees_every_epoch_and_can_stop():
    seen = []
    algo = PPOLag(CornerBandit(), cost_limit=3.0, seed=0, run_dir=False, **FAST)
    algo.learn(256, callback=lambda a, info: seen.append((a.global_step, info["Train/Epoch"])))
    assert seen == [(64, 1), (128, 2), (192, 3), (256, 4)]
    # False stops at once; a stopped run is not at its total, so no tail average is put in
    stopped = PPOLag(CornerBandit(), cost_limit=3.0, seed=0, run_dir=False, average_last=0.5, **FAST)
    stopped.learn(384, callback=lambda a, info: a.global_step < 256)
    assert stopped.global_step == 256 and stopped._tail.count == 1
    stopped.learn(384)  # finishing the run puts the average of its last three epochs in
    assert stopped._tail is None


def test_resume_from_run_dir_with_logs(tmp_path):
    run = tmp_path / "run"
    algo = PPOLag(CornerBandit(), cost_limit=3.0, seed=0, run_dir=run, tensorboard=False, checkpoint_every=1, **FAST)
    algo.learn(128)
    assert (run / "checkpoint.pt").exists() and (run / "config.json").exists()
    rows = (run / "progress.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2  # header + two epochs
    again = load(run, env=CornerBandit())
    assert isinstance(again, PPOLag) and again.global_step == 128


def test_unknown_and_bad_config_values():
    with pytest.raises(ConfigError, match="minibatch_size"):
        PPOLag(CornerBandit(), cost_limit=1.0, minibatch_sise=8)
    with pytest.raises(ConfigError, match="clip_ratio must be > 0"):
        PPOLag(CornerBandit(), cost_limit=1.0, clip_ratio=-0.1)
    with pytest.raises(ConfigError, match="activation must be one of"):
        PPOLag(CornerBandit(), cost_limit=1.0, activation="sigmoid")
    with pytest.raises(ConfigError, match="steps_per_epoch .* multiple of num_envs"):
        PPOLag(CornerBandit(num_envs=4), cost_limit=1.0, num_envs=4, steps_per_epoch=30)
    with pytest.raises(ConfigError, match="update_epochs must be >= 1"):
        PPOLag(CornerBandit(), cost_limit=1.0, update_epochs=0)
    with pytest.raises(ConfigError, match="hidden_sizes must be"):
        PPOLag(CornerBandit(), cost_limit=1.0, hidden_sizes="64")


@pytest.mark.parametrize("scaling", ["shared", "reward"])
def test_advantage_scaling_combines_reward_and_cost_advantages(scaling):
    lam = 0.5
    algo = PPOLag(CornerBandit(), cost_limit=1.0, seed=0, run_dir=False, lambda_init=lam, advantage_scaling=scaling, **FAST)
    data, _, _ = algo._collect()
    algo._advantages(data)
    adv_r, adv_c = data["adv_r"], data["adv_c"][..., 0]
    if scaling == "shared":  # one scale for both: the multiplier stays reward per unit of cost
        combined = adv_r - lam * adv_c
        expected = (combined - combined.mean()) / (adv_r.std() + lam * adv_c.std())
    else:  # OmniSafe's: the reward advantage standardised, the cost advantage only centred
        expected = ((adv_r - adv_r.mean()) / adv_r.std() - lam * (adv_c - adv_c.mean())) / (1 + lam)
    assert torch.allclose(data["adv"], expected, atol=1e-5)
    # unconstrained PPO has no cost term, so both scalings standardise the reward advantage
    ppo = PPO(CornerBandit(), seed=0, run_dir=False, advantage_scaling=scaling, **FAST)
    data, _, _ = ppo._collect()
    ppo._advantages(data)
    assert torch.allclose(data["adv"], (data["adv_r"] - data["adv_r"].mean()) / data["adv_r"].std(), atol=1e-5)


def test_advantage_scaling_needs_normalised_advantages():
    with pytest.raises(ConfigError, match="advantage_scaling must be one of"):
        PPOLag(CornerBandit(), cost_limit=1.0, advantage_scaling="cost")
    with pytest.raises(ConfigError, match="set normalize_advantages=True"):
        PPOLag(CornerBandit(), cost_limit=1.0, advantage_scaling="reward", normalize_advantages=False)


def test_bad_cost_limits_and_steps():
    with pytest.raises(ConfigError, match="needs cost_limit"):
        PPOLag(CornerBandit())
    with pytest.raises(ConfigError, match=">= 0"):
        PPOLag(CornerBandit(), cost_limit=-1.0)
    with pytest.raises(ConfigError, match="2 values but the env has 1 cost channels"):
        PPOLag(CornerBandit(), cost_limit=[1.0, 2.0])
    algo = PPOLag(CornerBandit(), cost_limit=1.0, run_dir=False, **FAST)
    with pytest.raises(ConfigError, match="total_steps must be a positive integer"):
        algo.learn(0)
    with pytest.raises(ConfigError, match="seed"):
        PPOLag(CornerBandit(), cost_limit=1.0, seed=-1)


def test_registry_by_name():
    assert get_algorithm("ppolag") is PPOLag
    assert get_algorithm("CPPOPID") is PIDLag
    with pytest.raises(UnknownNameError, match="PPOLag"):
        get_algorithm("PPOLagg")


def test_nonfinite_reward_names_env_step_and_field():
    algo = PPO(CornerBandit(nan_at=5), seed=0, run_dir=False, **FAST)
    with pytest.raises(NonFiniteError, match=r"env 1 returned a non-finite reward at step 16"):
        algo.learn(64)


class NanFinalObservation(CornerBandit):
    def step(self, actions):
        obs, reward, cost, term, trunc, info = super().step(actions)
        if "final_obs" in info:
            info["final_obs"][2] = np.nan
        return obs, reward, cost, term, trunc, info


def test_nonfinite_final_observation_names_its_env():
    algo = PPO(NanFinalObservation(), seed=0, run_dir=False, **FAST)
    with pytest.raises(NonFiniteError, match=r"env 2 returned a non-finite final observation at step 36"):
        algo.learn(64)


def test_nonfinite_skip_mode_continues(caplog):
    algo = PPO(CornerBandit(nan_at=5), seed=0, run_dir=False, on_nonfinite="skip", **FAST)
    with caplog.at_level(logging.WARNING, logger="cmdp"):
        algo.learn(128)
    assert algo._nonfinite_skipped == 1
    assert "non-finite" in caplog.text
    assert all(torch.isfinite(p).all() for p in algo.policy.parameters())


def test_wrong_action_shape_is_a_clear_error():
    from cmdp.errors import ActionShapeError

    env = CornerBandit(num_envs=3)
    with pytest.raises(ActionShapeError, match=r"expected 3 discrete actions"):
        env.step(np.zeros(2, dtype=np.int64))
    with pytest.raises(ActionShapeError, match="outside Discrete"):
        env.step(np.array([0, 1, 2]))


def test_no_finished_episode_does_not_crash(caplog):
    # episodes of 1000 steps never finish within a 64-step epoch: the multiplier is driven by an
    # estimate from the running episodes once a length is known, and never by NaN
    algo = PPOLag(CornerBandit(horizon=1000), cost_limit=1.0, seed=0, run_dir=False, **FAST)
    with caplog.at_level(logging.WARNING, logger="cmdp"):
        algo.learn(128)
    assert "no episode finished" in caplog.text
    assert np.all(np.isfinite(algo.multiplier.value))
    assert algo.multiplier.value[0] > 0.001  # the estimate (cost rate x 1000) exceeds the limit


def test_no_finished_episode_is_no_warning_for_ppo(caplog):
    # PPO has no multiplier the estimate would drive, so telling the user about it is noise
    algo = PPO(CornerBandit(horizon=1000), seed=0, run_dir=False, **FAST)
    with caplog.at_level(logging.WARNING, logger="cmdp"):
        algo.learn(128)
    assert "no episode finished" not in caplog.text


def test_evaluate_reports_contract_keys():
    algo = PPOLag(CornerBandit(), cost_limit=5.0, seed=0, run_dir=False, **FAST)
    result = algo.evaluate(episodes=6, seed=1)
    for key in ("ep_return", "ep_length", "ep_cost", "ep_costs", "success_rate", "cost_limit"):
        assert key in result
    assert result["episodes"] == 6
    assert result["ep_length"] == 10
    assert result["ep_costs"]["unsafe"] == pytest.approx(result["ep_cost"])
    # reward and cost are tied: 1 per unsafe step, 0.2 per safe step
    assert result["ep_return"] == pytest.approx(10 * 0.2 + 0.8 * result["ep_cost"])
    assert result["success_rate"] == 1.0


def test_checkpoint_mismatch_and_corruption(tmp_path):
    algo = PPOLag(CornerBandit(), cost_limit=5.0, seed=0, run_dir=False, **FAST)
    path = algo.save(tmp_path / "ck.pt")

    class TwoCost(CornerBandit):
        def __init__(self):
            super().__init__()
            self.cost_names = ("unsafe", "other")

        def step(self, actions):
            o, r, c, te, tr, i = super().step(actions)
            return o, r, np.concatenate([c, c], 1), te, tr, i

    with pytest.raises(CheckpointError, match=r"cost_names: checkpoint has \['unsafe'\], env has \['unsafe', 'other'\]"):
        PPOLag.load(path, env=TwoCost())
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        PPOLag.load(tmp_path / "trunc.pt", env=CornerBandit())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        PPOLag.load(tmp_path / "junk.pt", env=CornerBandit())
    with pytest.raises(CheckpointError, match="no checkpoint"):
        PPOLag.load(tmp_path / "missing.pt", env=CornerBandit())
    # a whole file holding a Python object is not "corrupted": the error names the object
    torch.save({"format": "cmdp-checkpoint", "run": {"config": {"env_kwargs": {"x": Fraction(1, 3)}}}}, tmp_path / "obj.pt")
    with pytest.raises(CheckpointError, match="refuses: .*fractions.Fraction"):
        PPOLag.load(tmp_path / "obj.pt", env=CornerBandit())


def test_checkpoint_loads_with_weights_only(tmp_path):
    algo = PIDLag(CornerBandit(), cost_limit=5.0, seed=0, run_dir=False, **FAST).learn(128)
    path = algo.save(tmp_path / "ck.pt")
    data = torch.load(path, weights_only=True)
    assert data["counters"]["global_step"] == 128
    assert "actor_optimizer" in data and "critic_optimizer" in data and "solver" in data


class BanditShape:
    """An env kwarg that is a class instance with ``to_dict()``, like an episode spec."""

    def __init__(self, horizon: int, arm_rewards: tuple[float, float]) -> None:
        self.horizon, self.arm_rewards = horizon, arm_rewards

    def to_dict(self) -> dict:
        # numpy values, as specs built from numpy draws hold
        return {"horizon": np.int64(self.horizon), "arm_rewards": np.array(self.arm_rewards)}


def halved_unsafe_payout(actions: np.ndarray) -> np.ndarray:
    """An env kwarg that is a plain function: a checkpoint cannot store it."""
    return np.where(actions == 0, 0.5, 0.2)


class KwargBandit(CornerBandit):
    """CornerBandit built from an env id, shaped by its env kwargs."""

    def __init__(self, num_envs: int, shape: dict | None, payout) -> None:
        # the env gets the plain-data form, the same in the first run and in a resumed one
        assert shape is None or (type(shape) is dict and type(shape["horizon"]) is int), shape
        super().__init__(num_envs=num_envs, horizon=10 if shape is None else shape["horizon"])
        self.arm_rewards = np.array([1.0, 0.2]) if shape is None else np.asarray(shape["arm_rewards"])
        self.payout = payout

    def step(self, actions):
        arms = self.check_actions(actions)
        obs, _, cost, term, trunc, info = super().step(actions)
        reward = self.arm_rewards[arms] if self.payout is None else self.payout(arms)
        return obs, reward, cost, term, trunc, info


@pytest.fixture
def kwarg_bandit_id(monkeypatch):
    from cmdp.core import registry

    def factory(num_envs: int = 1, seed: int | None = None, shape=None, payout=None) -> KwargBandit:
        return KwargBandit(num_envs, shape, payout)

    env_id = "TestOnlyKwargBandit-v0"
    monkeypatch.setitem(registry._REGISTRY, env_id, registry.EnvSpec(env_id, factory))
    return env_id


def test_env_kwargs_with_to_dict_are_stored_as_plain_data_and_resume_exactly(tmp_path, kwarg_bandit_id):
    def run(steps):
        shape = BanditShape(horizon=6, arm_rewards=(0.9, 0.3))
        return PPOLag(kwarg_bandit_id, cost_limit=2.0, seed=0, run_dir=False, env_kwargs={"shape": shape}, **FAST).learn(steps)

    full, half = run(384), run(192)
    shape = half.config.env_kwargs["shape"]
    assert shape["horizon"] == 6 and type(shape["horizon"]) is int and half.env.horizon == 6
    path = half.save(tmp_path / "ck.pt")
    data = torch.load(path, weights_only=True)
    assert data["run"]["unstorable_env_kwargs"] == {}
    resumed = PPOLag.load(path)  # rebuilt from its id and the stored env kwargs alone
    assert resumed.config.env_kwargs["shape"]["horizon"] == 6
    assert np.array_equal(resumed.config.env_kwargs["shape"]["arm_rewards"], [0.9, 0.3])
    resumed.learn(384)
    assert torch.equal(params(resumed), params(full))
    assert resumed.multiplier.state_dict() == full.multiplier.state_dict()


def test_env_kwargs_holding_a_function_must_be_passed_again_to_load(tmp_path, kwarg_bandit_id):
    def run(steps):
        kwargs = {"payout": halved_unsafe_payout}
        return PPOLag(kwarg_bandit_id, cost_limit=2.0, seed=0, run_dir=False, env_kwargs=kwargs, **FAST).learn(steps)

    full, half = run(384), run(192)
    path = half.save(tmp_path / "ck.pt")  # saving leaves the function out instead of failing
    data = torch.load(path, weights_only=True)
    assert data["run"]["unstorable_env_kwargs"] == {"payout": "function halved_unsafe_payout"}
    with pytest.raises(CheckpointError) as err:
        PPOLag.load(path)
    message = str(err.value)
    assert "payout (function halved_unsafe_payout)" in message and "cannot store" in message
    assert "env_kwargs={'payout': <the same object>}" in message and "env=" in message
    resumed = PPOLag.load(path, env_kwargs={"payout": halved_unsafe_payout})
    assert resumed.config.env_kwargs["payout"] is halved_unsafe_payout
    resumed.learn(384)
    assert torch.equal(params(resumed), params(full))
    # a built env needs no env kwargs; the marker stays, so its own checkpoint asks again
    import cmdp

    built = PPOLag.load(path, env=cmdp.make(kwarg_bandit_id, num_envs=4, payout=halved_unsafe_payout))
    assert built.global_step == 192
    again = torch.load(built.save(tmp_path / "again.pt"), weights_only=True)
    assert again["run"]["unstorable_env_kwargs"] == {"payout": "function halved_unsafe_payout"}


def test_sequence_policy_segments_reproduce_acting_log_probs():
    algo = PPO(CornerBandit(horizon=7), seed=0, run_dir=False, network="gru", **FAST)
    algo.learn(64)  # one epoch so the state at the rollout start is not the initial state
    data, stats, _ = algo._collect()
    algo._advantages(data)
    seen = 0
    with torch.no_grad():
        for mb in algo._minibatches(data):
            out = algo.policy.evaluate(mb)
            logp = out.dist.log_prob(mb["actions"])
            m = mb["mask"]
            assert torch.allclose(logp[m], mb["logp"][m], atol=1e-5)
            # the actor-only pass gives the same distribution without running the critic GRU
            torch.testing.assert_close(algo.policy.action_distribution(mb).params(), out.dist.params(), rtol=0, atol=0)
            seen += int(m.sum())
    assert seen == 64


class InfoCostEnv:
    """A gymnasium env that reports its cost in info["cost"]: a 1-D corridor with a toll cell."""

    def __new__(cls):
        import gymnasium as gym

        class _Env(gym.Env):
            observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
            action_space = gym.spaces.Discrete(2)

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                self.x = 0
                return np.array([0.0], np.float32), {}

            def step(self, action):
                self.x += 1 if action == 1 else 0
                done = self.x >= 3
                return (np.array([self.x / 3], np.float32), float(done), done, False,
                        {"cost": float(self.x == 2 and action == 1), "success": done})

        return _Env()


def test_trains_on_a_callable_gymnasium_env_with_info_cost():
    algo = PPOLag(InfoCostEnv, cost_limit=0.5, seed=0, run_dir=False, **FAST)
    assert algo.env.cost_names == ("cost",)
    algo.learn(256)
    result = algo.evaluate(episodes=8)
    assert set(result["ep_costs"]) == {"cost"} and 0.0 <= result["ep_cost"] <= 1.0
    assert "success_rate" in result


def test_make_gymnasium_id_with_cost_fn_trains():
    algo = PPO("CartPole-v1", seed=0, run_dir=False,
               env_kwargs={"cost_fn": lambda obs, act, nxt, info: float(abs(nxt[0]) > 0.5)}, **FAST)
    algo.learn(128)
    assert algo.evaluate(episodes=2)["ep_length"] > 0


def test_dict_observations_and_continuous_actions_train_and_resume(tmp_path):
    import gymnasium as gym

    class DictEnv(gym.Env):
        observation_space = gym.spaces.Dict(
            {"pos": gym.spaces.Box(-5.0, 5.0, (2,), np.float32), "mode": gym.spaces.Discrete(3)}
        )
        action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.pos = self.np_random.uniform(-1, 1, 2).astype(np.float32)
            self.t = 0
            return {"pos": self.pos.copy(), "mode": int(self.t % 3)}, {}

        def step(self, action):
            self.pos = np.clip(self.pos + 0.1 * np.asarray(action), -5, 5).astype(np.float32)
            self.t += 1
            reward = -float(np.linalg.norm(self.pos))
            cost = float(self.pos[0] > 0.5)
            return {"pos": self.pos.copy(), "mode": int(self.t % 3)}, reward, False, self.t >= 16, {"cost": cost}

    algo = FOCOPS(DictEnv, cost_limit=1.0, seed=0, run_dir=False, **(FAST | {"normalize_obs": True}))
    algo.learn(128)
    path = algo.save(tmp_path / "dict.pt")
    again = FOCOPS.load(path, env=DictEnv)
    assert again.global_step == 128
    again.learn(192)
    result = again.evaluate(episodes=4)
    assert result["ep_length"] == 16
    actions, _ = again.predict({"pos": np.zeros((3, 2), np.float32), "mode": np.zeros(3, np.int64)})
    assert actions.shape == (3, 2) and np.all(np.abs(actions) <= 1.0)


def test_resume_built_in_env_with_observation_normalisation(tmp_path):
    cfg = dict(num_envs=4, steps_per_epoch=128, minibatch_size=64, update_epochs=2, progress_bar=False, tensorboard=False)
    full = PPOLag("PointGoal-v0", cost_limit=25.0, seed=2, run_dir=tmp_path / "full", **cfg).learn(512)
    half = PPOLag("PointGoal-v0", cost_limit=25.0, seed=2, run_dir=tmp_path / "half", **cfg).learn(256)
    resumed = load(tmp_path / "half")  # the env is rebuilt from its id, its state restored
    resumed.learn(512)
    assert torch.equal(params(resumed), params(full))
    rows = (tmp_path / "half" / "progress.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4  # header + 4 epochs, none duplicated by the resume
    assert half.global_step == 256


def test_anchor_kl_holds_a_fine_tune_near_its_start():
    # unanchored, PPO walks to the unsafe corner (arm 0 almost always); the anchor's KL term
    # keeps it near the 50/50 policy it started from, more tightly the larger its weight
    obs = torch.linspace(0, 0.9, 10)[:, None]
    kls, arm0 = [], []
    for weight in (0.0, 0.3, 3.0):
        algo = PPO(CornerBandit(), seed=0, run_dir=False, anchor_kl=weight, **dict(FAST, actor_lr=3e-3))
        with torch.no_grad():
            start = algo.policy.act(obs).dist.params()
        algo.learn(1024)
        with torch.no_grad():
            dist = algo.policy.act(obs).dist
        kls.append(float(dist.kl_from(start).mean()))
        arm0.append(float(dist.logits.exp()[:, 0].mean()))
        assert ("Train/AnchorKL" in algo.last_info) == (weight > 0)
    assert arm0[0] > 0.9 and kls[0] > 0.5
    assert kls[0] > 10 * kls[1] > 10 * kls[2]
    assert abs(arm0[2] - 0.5) < 0.05


@pytest.mark.parametrize("network", ["mlp", "gru"])
@pytest.mark.parametrize("env", ["bandit", "PointGoal-v0"])
def test_anchor_distributions_are_the_start_policys_at_every_step(network, env):
    # an anchor equal to the acting policy reproduces the distributions the rollout stored, for
    # flat samples and for segments scattered back to their steps (after a first epoch, so the
    # sequence policy starts from a carried state); discrete actions on a 1-d observation, and
    # Gaussian actions on a vector observation
    env = CornerBandit(horizon=7) if env == "bandit" else env
    algo = PPO(env, seed=0, run_dir=False, network=network, anchor_kl=1.0, **FAST)
    algo.learn(64)
    algo.anchor.load_state_dict(algo.policy.state_dict())
    data, _, _ = algo._collect()
    anchor = algo._anchor_distributions(data)
    assert anchor.keys() == data["old_dist"].keys()
    for key in anchor:
        assert anchor[key].shape == data["old_dist"][key].shape
        assert torch.allclose(anchor[key], data["old_dist"][key], atol=1e-5)


def test_anchor_kl_resume_equals_uninterrupted_and_needs_an_anchor(tmp_path):
    config = dict(FAST, anchor_kl=0.5, actor_lr=3e-3)
    # a pretrained start, unlike the network load() rebuilds from the config and seed
    pretrained = PPO(CornerBandit(), seed=5, run_dir=False, **config).learn(128).policy
    full = PPOLag(CornerBandit(), 3.0, 0, False, copy.deepcopy(pretrained), **config).learn(384)
    half = PPOLag(CornerBandit(), 3.0, 0, False, copy.deepcopy(pretrained), **config).learn(192)
    path = half.save(tmp_path / "ck.pt")
    resumed = PPOLag.load(path, env=CornerBandit())
    assert all(torch.equal(a, b) for a, b in zip(resumed.anchor.parameters(), pretrained.parameters()))
    resumed.learn(384)
    assert torch.equal(params(resumed), params(full))
    plain = PPOLag(CornerBandit(), cost_limit=3.0, seed=0, run_dir=False, **FAST).learn(64)
    with pytest.raises(CheckpointError, match="without anchor_kl"):
        PPOLag.load(plain.save(tmp_path / "plain.pt"), env=CornerBandit(), anchor_kl=1.0)
    with pytest.raises(ConfigError, match="CPO does not take anchor_kl"):
        CPO(CornerBandit(), cost_limit=3.0, run_dir=False, anchor_kl=1.0, **FAST)
