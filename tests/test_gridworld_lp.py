"""Exact optima of the gridworld CMDPs: the LP, exact policy evaluation, value iteration and
Monte-Carlo rollouts of the vector env all describe the same CMDP (time limit included)."""

from __future__ import annotations

import numpy as np
import pytest

from cmdp.envs import gridworld as gw
from cmdp.envs import two_channel as tc
from cmdp.envs.gridworld import DEFAULT_COST_LIMIT, GridWorld, TabularCMDP, evaluate_policy_exact, solve_lp
from cmdp.envs.two_channel import DEFAULT_COST_LIMITS, TwoChannelGrid
from cmdp.errors import ConfigError

ENVS = [
    pytest.param(lambda: GridWorld(), id="gridworld"),
    pytest.param(lambda: GridWorld(slip=0.2, end_prob=0.05), id="gridworld-slip"),
    pytest.param(lambda: TwoChannelGrid(), id="two-channel"),
    pytest.param(lambda: TwoChannelGrid(slip=0.1), id="two-channel-slip"),
]


def value_iteration(m: TabularCMDP, tol: float = 1e-14) -> float:
    """Optimal expected episode return by Bellman iteration (an independent oracle)."""
    cont = np.where(m.terminal, 0.0, m.continue_prob)
    v = np.zeros(m.num_states)
    for _ in range(100_000):
        q = m.transition @ (m.reward + cont * v)  # [S, A]
        new = np.where(m.terminal, 0.0, q.max(axis=1))
        if np.abs(new - v).max() < tol:
            break
        v = new
    return float(m.start @ new)


def is_stochastic(sol, tol: float = 1e-6) -> list[int]:
    """States the policy visits in which it randomises."""
    visited = sol.occupancy.sum(axis=1) > 1e-9
    return [s for s in np.flatnonzero(visited) if sol.policy[s].max() < 1 - tol]


def default_limit(env):
    return DEFAULT_COST_LIMITS if isinstance(env, TwoChannelGrid) else DEFAULT_COST_LIMIT


@pytest.mark.parametrize("make", ENVS)
def test_unconstrained_lp_equals_value_iteration(make):
    env = make()
    assert solve_lp(env, None).return_ == pytest.approx(value_iteration(env.model()), abs=1e-9)


@pytest.mark.parametrize("make", ENVS)
@pytest.mark.parametrize("limit", ["none", "default", "tight"])
def test_exact_evaluation_of_the_lp_policy_equals_the_lp_values(make, limit):
    env = make()
    lim = {"none": None, "default": default_limit(env), "tight": np.multiply(default_limit(env), 0.5)}[limit]
    sol = solve_lp(env, lim)
    val = evaluate_policy_exact(env, sol.policy)
    assert val.return_ == pytest.approx(sol.return_, abs=1e-9)
    np.testing.assert_allclose(val.costs, sol.costs, atol=1e-9)
    assert val.cost == pytest.approx(sol.cost, abs=1e-9)
    assert val.length == pytest.approx(sol.length, abs=1e-9)
    if lim is not None:
        assert np.all(sol.costs <= np.broadcast_to(lim, sol.costs.shape) + 1e-9)


def rollout_policy(env, policy: np.ndarray, episodes: int, seed: int) -> dict:
    """Average undiscounted episode totals of ``policy`` (sampled) in the vector env."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    cum = np.cumsum(policy, axis=1)
    ep_ret = np.zeros(env.num_envs)
    ep_cost = np.zeros((env.num_envs, len(env.cost_names)))
    returns, costs, truncations = [], [], 0
    while len(returns) < episodes:
        s = env.state_index(obs)
        act = (rng.random(env.num_envs)[:, None] > cum[s]).sum(axis=1).clip(max=3)
        obs, rew, cost, term, trunc, _ = env.step(act)
        ep_ret += rew
        ep_cost += cost
        for i in np.flatnonzero(term | trunc):
            returns.append(ep_ret[i])
            costs.append(ep_cost[i].copy())
            truncations += bool(trunc[i])
        done = term | trunc
        ep_ret[done] = 0.0
        ep_cost[done] = 0.0
    return {"return": np.array(returns), "costs": np.array(costs), "truncations": truncations}


@pytest.mark.parametrize("make", ENVS)
def test_monte_carlo_rollouts_agree_with_the_lp(make):
    """The env and the LP describe the same CMDP: the LP-optimal policy's sampled episode
    return and costs match the exact values within statistical error (4.5 standard errors)."""
    env = make()
    sol = solve_lp(env, default_limit(env))
    exact = evaluate_policy_exact(env, sol.policy)
    vec = type(env)(num_envs=256, seed=0, slip=env.slip, end_prob=env.end_prob)
    n = 20_000
    mc = rollout_policy(vec, sol.policy, n, seed=1)
    assert abs(mc["return"].mean() - exact.return_) < 4.5 * exact.return_std / np.sqrt(len(mc["return"]))
    for k in range(len(env.cost_names)):
        se = max(exact.costs_std[k], 1e-3) / np.sqrt(len(mc["costs"]))
        assert abs(mc["costs"][:, k].mean() - exact.costs[k]) < 4.5 * se
    # the time limit is documented to be negligible: P(reach it) <= beta ** T
    assert mc["truncations"] == 0


def test_time_limit_effect_is_bounded_as_documented():
    env = GridWorld()
    beta = 1 - env.end_prob
    assert beta**env.max_episode_steps < 1e-9
    assert beta**env.max_episode_steps / env.end_prob < 1e-8


def test_gridworld_default_limit_gives_a_stochastic_optimum():
    env = GridWorld()
    free = solve_lp(env, None)
    con = solve_lp(env, DEFAULT_COST_LIMIT)
    safe = solve_lp(env, 0.0)
    assert is_stochastic(free) == []  # the unconstrained optimum is deterministic ...
    assert free.cost >= 1.5 * DEFAULT_COST_LIMIT  # ... and far over the limit
    assert con.cost == pytest.approx(DEFAULT_COST_LIMIT, abs=1e-9)  # the limit binds
    assert con.return_ < free.return_ - 0.1
    mixed = is_stochastic(con)
    assert [env.cells[s] for s in mixed] == [(3, 1)]  # it randomises in the start cell only
    assert con.multipliers[0] > 0
    # the safe detour alone falls short of 90% of the optimum: a solver must use its budget
    assert safe.cost == 0 and safe.return_ > 0 and safe.return_ < 0.9 * con.return_
    # the numbers documented in the module docstring
    assert free.return_ == pytest.approx(0.72900, abs=1e-5) and free.cost == pytest.approx(2.71, abs=1e-5)
    assert con.return_ == pytest.approx(0.57081, abs=1e-5)
    assert safe.return_ == pytest.approx(0.47830, abs=1e-5)
    assert con.policy[mixed[0], gw.RIGHT] == pytest.approx(0.369, abs=1e-3)


def test_two_channel_default_limits_both_bind():
    env = TwoChannelGrid()
    lava, water = DEFAULT_COST_LIMITS
    assert lava != water
    free = solve_lp(env, None)
    con = solve_lp(env, DEFAULT_COST_LIMITS)
    assert free.costs[0] >= 1.5 * lava and free.costs[1] >= 1.5 * water  # both violated
    np.testing.assert_allclose(con.costs, DEFAULT_COST_LIMITS, atol=1e-9)  # both bind
    assert np.all(con.multipliers > 1e-3)
    # dropping either limit lets that channel's cost rise far above it
    assert solve_lp(env, (lava, None)).costs[1] >= 1.5 * water
    assert solve_lp(env, (None, water)).costs[0] >= 1.5 * lava
    assert len(is_stochastic(con)) == 2
    safe = solve_lp(env, (0.0, 0.0))  # a policy meeting both limits exists (and is safe)
    assert safe.return_ > 0 and safe.return_ < 0.9 * con.return_
    assert con.return_ == pytest.approx(0.58569, abs=1e-5)
    assert free.return_ == pytest.approx(0.72900, abs=1e-5)
    assert tc.TWO_CHANNEL_LAYOUT == env.layout


def test_exact_stds_match_sampling():
    env = GridWorld()
    sol = solve_lp(env, DEFAULT_COST_LIMIT)
    exact = evaluate_policy_exact(env, sol.policy)
    mc = rollout_policy(GridWorld(num_envs=256), sol.policy, 20_000, seed=3)
    assert mc["return"].std() == pytest.approx(exact.return_std, rel=0.05)
    assert mc["costs"][:, 0].std() == pytest.approx(exact.cost_std, rel=0.05)


def test_infeasible_limits_raise():
    # every move from the start enters a hazard, so no policy has zero cost
    env = GridWorld(layout=("HHHG", "HSH#", "HHH#"))
    with pytest.raises(ConfigError, match="no stationary policy"):
        solve_lp(env, 0.0)
    assert solve_lp(env, 5.0).cost <= 5.0 + 1e-9
    # with slip the safe detour can slide into a hazard: zero cost is out of reach
    with pytest.raises(ConfigError, match="no stationary policy"):
        solve_lp(GridWorld(slip=0.1), 0.0)


def test_limit_validation():
    with pytest.raises(ConfigError, match="2 cost channels"):
        solve_lp(TwoChannelGrid(), (0.5, 0.3, 0.1))
    with pytest.raises(ConfigError, match="lava"):
        solve_lp(TwoChannelGrid(), (-1.0, 0.3))
    with pytest.raises(ConfigError, match="hazard"):
        solve_lp(GridWorld(), float("nan"))
    # one number applies to every channel
    np.testing.assert_allclose(solve_lp(TwoChannelGrid(), 0.3).costs, solve_lp(TwoChannelGrid(), (0.3, 0.3)).costs)


def test_policy_validation():
    env = GridWorld()
    with pytest.raises(ValueError, match="shape"):
        evaluate_policy_exact(env, np.ones((3, 4)) / 4)
    bad = np.full((len(env.cells), 4), 0.3)
    with pytest.raises(ValueError, match="probability"):
        evaluate_policy_exact(env, bad)
    with pytest.raises(TypeError, match="GridWorld"):
        solve_lp("GridWorld-v0", None)


def test_env_methods_delegate():
    env = GridWorld()
    sol = env.solve_lp(DEFAULT_COST_LIMIT)
    assert sol.return_ == solve_lp(env, DEFAULT_COST_LIMIT).return_
    assert env.evaluate_policy_exact(sol.policy).return_ == pytest.approx(sol.return_)


def test_tabular_model_validation():
    m = GridWorld().model()
    with pytest.raises(ValueError, match="continue_prob"):
        TabularCMDP(m.transition, m.reward, m.cost, m.terminal, m.start, 1.0, m.cost_names)
    with pytest.raises(ValueError, match="probability distributions"):
        TabularCMDP(m.transition * 2, m.reward, m.cost, m.terminal, m.start, 0.9, m.cost_names)
    with pytest.raises(ValueError, match="cost must have shape"):
        TabularCMDP(m.transition, m.reward, m.cost, m.terminal, m.start, 0.9, ("a", "b"))
    # a hand-built model solves like the env it came from
    same = TabularCMDP(m.transition, m.reward, m.cost, m.terminal, m.start, m.continue_prob, m.cost_names)
    expected = solve_lp(GridWorld(), DEFAULT_COST_LIMIT).return_
    assert solve_lp(same, DEFAULT_COST_LIMIT).return_ == pytest.approx(expected)
