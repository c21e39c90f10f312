"""Solver behaviour: each constrained solver reaches the LP constrained optimum of the gridworld.

The learned policy is read off as a table (action probabilities per one-hot state) and evaluated
EXACTLY with the gridworld's linear-system evaluation, so the assertions carry no Monte-Carlo
noise: mean episode cost at most 5% above the limit, and return at least 90% of the optimum.
The safe detour alone earns 83.8% of the optimum, so passing needs a stochastic policy that
spends the cost budget. PPO on the same task shows the check can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdp.algorithms import CPO, FOCOPS, PIDLag, PPO, PPOLag
from cmdp.envs.gridworld import DEFAULT_COST_LIMIT, evaluate_policy_exact, learned_policy_table, solve_lp
from cmdp.envs.two_channel import DEFAULT_COST_LIMITS

# a test-scale schedule: 90 epochs of 4096 steps (about 15-60 s each), the actor learning rate
# decaying linearly so that the last iterate settles instead of stopping mid-oscillation;
# everything else is the solvers' defaults
TRAIN = dict(lr_schedule="linear", progress_bar=False)
STEPS = 90 * 4096


def exact_value(algo):
    return evaluate_policy_exact(algo.env.unwrapped, learned_policy_table(algo))


@pytest.mark.slow
@pytest.mark.parametrize(
    "algo_cls, options",
    [(PPOLag, {}), (PIDLag, {}), (FOCOPS, {}), (CPO, {}), (PPOLag, {"advantage_scaling": "reward"})],
    ids=["PPOLag", "PIDLag", "FOCOPS", "CPO", "PPOLag-reward-scaling"],
)
def test_constrained_solver_reaches_lp_optimum(algo_cls, options):
    algo = algo_cls("GridWorld-v0", cost_limit=DEFAULT_COST_LIMIT, seed=0, run_dir=False, **TRAIN, **options)
    optimum = solve_lp(algo.env.unwrapped, DEFAULT_COST_LIMIT)
    algo.learn(STEPS)
    value = exact_value(algo)
    assert value.cost <= 1.05 * DEFAULT_COST_LIMIT, (value.cost, value.return_)
    assert value.return_ >= 0.9 * optimum.return_, (value.return_, optimum.return_, value.cost)
    # and the sampled evaluation agrees with the exact numbers
    result = algo.evaluate(episodes=2000, seed=5)
    assert result["ep_cost"] == pytest.approx(value.cost, abs=4 * value.cost_std / np.sqrt(2000))


@pytest.mark.slow
def test_ppo_exceeds_the_limit():
    algo = PPO("GridWorld-v0", cost_limit=DEFAULT_COST_LIMIT, seed=0, run_dir=False, **TRAIN)
    algo.learn(STEPS // 6)
    value = exact_value(algo)
    assert value.cost > 2.0 * DEFAULT_COST_LIMIT  # it takes the hazard route (optimum: 2.71)
    assert value.return_ > solve_lp(algo.env.unwrapped, DEFAULT_COST_LIMIT).return_


# The two-channel optimum randomises in two cells, and a Lagrangian iterate oscillates around
# such a mixed optimum: with the default damping (0.1) and 90 epochs PPOLag met both limits on 1
# seed of 3, and with 150 epochs on 2 (the third 6% over on water). Stronger proportional damping
# (0.3) and 150 epochs met them on all three (costs <= 1.04x the limits, return >= 0.99x the
# optimum), so the test runs that setting on three seeds instead of the one seed that passes.
TWO_CHANNEL = {
    "PPOLag": (dict(lambda_damping=0.3), 150 * 4096, (0, 1, 2)),
    "CPO": ({}, STEPS, (0,)),  # CPO's K=2 dual
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "algo_cls, seed", [(cls, seed) for cls in (PPOLag, CPO) for seed in TWO_CHANNEL[cls.name][2]]
)
def test_two_channel_cmdp_meets_both_limits(algo_cls, seed):
    config, steps, _ = TWO_CHANNEL[algo_cls.name]
    algo = algo_cls(
        "TwoChannelGrid-v0", cost_limit=list(DEFAULT_COST_LIMITS), seed=seed, run_dir=False, **TRAIN, **config
    )
    optimum = solve_lp(algo.env.unwrapped, list(DEFAULT_COST_LIMITS))
    unconstrained = solve_lp(algo.env.unwrapped, None)
    algo.learn(steps)
    value = exact_value(algo)
    for k, limit in enumerate(DEFAULT_COST_LIMITS):
        assert unconstrained.costs[k] > 1.5 * limit  # each constraint binds
        assert value.costs[k] <= 1.05 * limit, (k, value.costs, value.return_)
    assert value.return_ >= 0.9 * optimum.return_, (value.return_, optimum.return_)
    if hasattr(algo, "multiplier"):
        assert len(algo.multiplier.value) == 2 and np.all(algo.multiplier.value > 0)


# CPO's linear model on a long-episode continuous task. With 4096 samples per epoch (four
# 1000-step episodes) most of the cost gradient's length is sampling noise, so the textbook step
# (cross_fit=False) predicts every epoch that it brings the cost down to the limit while the cost
# stays at 53-59 on seeds 0-2 (mean of the last five measured epochs here: 55-56). Cross-fitted
# predictions hold it at 19-26 over the same schedule, with returns of 32-43 (standing still
# earns 0).
@pytest.mark.slow
def test_cpo_holds_the_limit_on_a_long_episode_task():
    algo = CPO("PointGoal-v0", cost_limit=25.0, seed=0, run_dir=False, progress_bar=False)
    costs, returns = [], []
    while algo.global_step < 40 * 4096:
        algo.learn(algo.global_step + 4096)
        if np.isfinite(algo.last_info.get("Metrics/EpCost", np.nan)):  # an episode ended this epoch
            costs.append(algo.last_info["Metrics/EpCost"])
            returns.append(algo.last_info["Metrics/EpRet"])
    assert len(costs) >= 8
    assert np.mean(costs[-5:]) <= 1.25 * 25.0, costs
    assert np.mean(returns[-5:]) >= 20.0, returns


def test_cpo_cross_fit_halves_split_by_env():
    from cmdp.algorithms.cpo import _halves

    rows = torch.arange(12)[:, None]
    flat = {"actions": rows, "obs": {"x": rows.float()}, "mask": None}
    first, second = _halves(flat, (3, 4))  # row t * 4 + env
    assert first["actions"].squeeze(1).tolist() == [0, 2, 4, 6, 8, 10]  # envs 0 and 2
    assert second["obs"]["x"].squeeze(1).tolist() == [1, 3, 5, 7, 9, 11]
    first, second = _halves(flat, (12, 1))  # one env: the two halves of the rollout
    assert first["actions"].squeeze(1).tolist() == list(range(6))
    segments = {
        "actions": torch.zeros(4, 5, 2),
        "mask": torch.ones(4, 5, dtype=torch.bool),
        "e_idx": torch.tensor([[0] * 5, [1] * 5, [1] * 5, [2] * 5]),
        "t_idx": torch.arange(5).repeat(4, 1),
        "state": (torch.arange(4), None),
    }
    first, second = _halves(segments, (5, 3))
    assert first["e_idx"][:, 0].tolist() == [0, 2] and first["state"][0].tolist() == [0, 3]
    assert second["e_idx"][:, 0].tolist() == [1, 1] and second["state"][1] is None
    assert _halves({"actions": rows[:1], "mask": None}, (1, 1)) is None  # too small to split


@pytest.mark.parametrize("cross_fit", [True, False])
def test_cpo_logs_the_cost_gradient_signal_only_when_cross_fitting(cross_fit):
    algo = CPO("GridWorld-v0", cost_limit=DEFAULT_COST_LIMIT, seed=0, run_dir=False, progress_bar=False,
               num_envs=4, steps_per_epoch=512, cross_fit=cross_fit)  # fmt: skip
    algo.learn(1024)
    info = algo.last_info
    assert info["CPO/case"] in (0.0, 1.0) and np.isfinite(info["CPO/nu/hazard"])
    if cross_fit:
        assert np.isfinite(info["CPO/signal/hazard"])
    else:  # its own Gram matrix would always say 1: no number rather than a meaningless one
        assert "CPO/signal/hazard" not in info
