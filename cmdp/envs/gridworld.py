"""GridWorld: a tiny CMDP with an exact constrained optimum, computed by linear programming.

The CMDP (``GridWorld-v0``)
---------------------------
Default layout (``#`` wall, ``S`` start, ``G`` goal, ``H`` hazard, ``.`` free)::

    #######
    #.....#
    #.###.#
    #SHHHG#
    #######

Actions ``Discrete(4)``: 0 up, 1 right, 2 down, 3 left. A move into a wall leaves the agent in
place. With probability ``slip`` (default 0) the executed action is drawn uniformly from all
four instead.

Per step, after moving into cell ``s'``:

* reward ``goal_reward`` (default +1) if ``s'`` is a goal, else 0;
* cost 1.0 on channel ``"hazard"`` if ``s'`` is a hazard cell (also when a bump keeps the agent
  on one), else 0.0;
* the episode terminates when ``s'`` is a goal (``info["success"]`` is True), and otherwise
  terminates with probability ``end_prob`` (default 0.1; ``info["success"]`` False). This
  random termination is part of the CMDP, not a time limit: the engine must not bootstrap it.

Why random termination: with continuation probability ``beta = 1 - end_prob`` the expected
UNDISCOUNTED episode return and cost are exactly the ``beta``-discounted values of the
underlying MDP, so the linear program over (discounted) occupancy measures below gives exactly
what an evaluation that averages episode returns and costs measures, stationary policies on the
observed cell are optimal, and episodes are short (at most ``1 / end_prob`` steps on average).
The time limit ``max_episode_steps`` (default 200) only guards against pathological settings:
an episode survives it with probability at most ``beta ** max_episode_steps`` (7.1e-10 by
default), which bounds its effect on the expected return by ``beta ** T * goal_reward`` and on
the expected cost by ``beta ** T / end_prob`` (7.1e-9 by default). A solver's own discount
``gamma`` comes on top of ``beta``; ``gamma = 1`` makes its objective exactly the LP's. With
``gamma < 1`` it still prefers the same routes, so a Lagrangian solver whose episode cost
settles at the limit mixes the same routes as the LP and earns the same return.

Observation: one-hot ``float32`` vector over the non-wall cells in row-major order (the goal
included, so final observations are valid); the index of the hot entry is the state index used
by :func:`solve_lp` and :func:`evaluate_policy_exact`.

Why it is a CMDP worth solving: the short route runs through three hazard cells (4 steps); the
safe detour over the top takes 8 steps and, with random termination, reaches the goal less
often. The unconstrained optimum is the deterministic hazard route; at ``DEFAULT_COST_LIMIT``
the constrained optimum is stochastic: in the start cell it goes right (into the hazards) with
probability 0.369 and up with 0.631, deterministic elsewhere. Exact values (defaults:
``end_prob=0.1``, ``slip=0``; std = standard deviation of one episode's total):

=====================================  ================  ================  ===========
policy                                 ep. return (std)  ep. cost (std)    ep. length
=====================================  ================  ================  ===========
unconstrained optimum (hazard route)   0.72900 (0.444)   2.71000 (0.637)   3.439
constrained optimum, limit 1.0         0.57081 (0.495)   1.00000 (1.364)   4.863
safe detour only (limit 0)             0.47830 (0.500)   0                 5.695
uniformly random policy                0.0868            3.03              9.22
=====================================  ================  ================  ===========

The unconstrained cost is 2.71x the default limit, and the safe detour earns 83.8% of the
constrained optimum, so a solver that reaches >= 90% of it must spend part of its cost budget
(any mixture with P(right at start) in [0.142, 0.387] does both). The optimal multiplier (LP
dual) is 0.0925 reward per unit cost. A single episode's cost has std 1.36 at the optimum:
averaging N evaluation episodes leaves a standard error of 1.36 / sqrt(N) (0.03 for N=2000).

The module-level API works on any :class:`GridWorld` (including the two-channel variant in
:mod:`cmdp.envs.two_channel`) or on a :class:`TabularCMDP`:

* :func:`solve_lp` - the exact (constrained) optimum over stationary policies.
* :func:`evaluate_policy_exact` - exact expected return, costs, their standard deviations and
  the mean episode length of any stationary policy table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import gymnasium as gym
import numpy as np

from cmdp.core.registry import register
from cmdp.envs._common import BatchedCMDP, check_float, check_int
from cmdp.errors import ConfigError

DEFAULT_LAYOUT: tuple[str, ...] = (
    "#######",
    "#.....#",
    "#.###.#",
    "#SHHHG#",
    "#######",
)
"""The default map of ``GridWorld-v0``; see the module docstring."""

DEFAULT_COST_LIMIT = 1.0
"""Recommended limit on the expected episode cost (channel "hazard") of ``GridWorld-v0``."""

UP, RIGHT, DOWN, LEFT = range(4)
_MOVES = np.array([(-1, 0), (0, 1), (1, 0), (0, -1)])  # (d_row, d_col) per action


# ---- the tabular model --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TabularCMDP:
    """A finite CMDP with rewards and costs on entering a state and random termination.

    States are indexed ``0..S-1``; ``transition[s, a, s2]`` is the probability of moving from
    ``s`` to ``s2`` under action ``a``. Entering ``s2`` gives reward ``reward[s2]`` and costs
    ``cost[s2, k]``; the episode then ends if ``terminal[s2]``, and otherwise continues with
    probability ``continue_prob``. Episodes start in ``s`` with probability ``start[s]``.
    """

    transition: np.ndarray  # [S, A, S]
    reward: np.ndarray  # [S]
    cost: np.ndarray  # [S, K]
    terminal: np.ndarray  # [S] bool
    start: np.ndarray  # [S]
    continue_prob: float
    cost_names: tuple[str, ...]

    @property
    def num_states(self) -> int:
        return self.transition.shape[0]

    @property
    def num_actions(self) -> int:
        return self.transition.shape[1]

    def __post_init__(self) -> None:
        p = np.asarray(self.transition)
        if p.ndim != 3 or p.shape[0] != p.shape[2]:
            raise ValueError(f"transition must have shape [S, A, S], got {p.shape}")
        s = p.shape[0]
        for name, shape in (("reward", (s,)), ("terminal", (s,)), ("start", (s,))):
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {np.shape(getattr(self, name))}")
        if np.ndim(self.cost) != 2 or np.shape(self.cost)[0] != s or np.shape(self.cost)[1] != len(self.cost_names):
            raise ValueError(f"cost must have shape [S, K] = [{s}, {len(self.cost_names)}], got {np.shape(self.cost)}")
        if (p < 0).any() or not np.allclose(p.sum(axis=2), 1.0):
            raise ValueError("transition[s, a] must be probability distributions over next states")
        if not np.isclose(np.sum(self.start), 1.0) or (np.asarray(self.start)[np.asarray(self.terminal)] > 0).any():
            raise ValueError("start must be a probability distribution over non-terminal states")
        if not 0.0 <= self.continue_prob < 1.0:
            raise ValueError(f"continue_prob must be in [0, 1) so that episodes end, got {self.continue_prob}")

    def continuation(self) -> np.ndarray:
        """[S] probability that the episode goes on after entering each state."""
        return np.where(self.terminal, 0.0, self.continue_prob)


@dataclass(frozen=True, eq=False)
class LPSolution:
    """The optimum of a (constrained) CMDP over stationary policies.

    ``return_`` and ``costs`` (per channel) are expected undiscounted episode totals; ``cost`` is
    their sum over channels (what ``evaluate()["ep_cost"]`` reports). ``policy[s, a]`` is the
    optimal action distribution (uniform in states the policy never visits);
    ``occupancy[s, a]`` the expected number of times action ``a`` is taken in ``s`` per episode
    (zero in terminal states); ``multipliers[k]`` the optimal Lagrange multipliers (LP duals,
    >= 0; zero for channels without a limit or whose limit does not bind).
    """

    return_: float
    costs: np.ndarray
    cost: float
    policy: np.ndarray
    occupancy: np.ndarray
    multipliers: np.ndarray
    length: float
    cost_limit: tuple[float, ...] | None


@dataclass(frozen=True, eq=False)
class PolicyValue:
    """Exact episode statistics of a stationary policy: expectations and standard deviations
    of the undiscounted episode return, per-channel costs and their sum, and the mean length."""

    return_: float
    costs: np.ndarray
    cost: float
    return_std: float
    costs_std: np.ndarray
    cost_std: float
    length: float


def learned_policy_table(algo: Any) -> np.ndarray:
    """Action probabilities ``[S, A]`` of a trained solver's policy in every state of the
    gridworld it was trained on, ready for :func:`evaluate_policy_exact`."""
    import torch

    env = algo.env.unwrapped
    obs = algo.normalize_observation(np.eye(env.model().num_states, dtype=np.float32))
    with torch.no_grad():
        probs = algo.policy.act(torch.as_tensor(obs, dtype=torch.float32)).dist.logits.exp().double().numpy()
    return probs / probs.sum(axis=1, keepdims=True)


def _model(env_or_model: "GridWorld | TabularCMDP") -> TabularCMDP:
    if isinstance(env_or_model, TabularCMDP):
        return env_or_model
    if isinstance(env_or_model, GridWorld):
        return env_or_model.model()
    raise TypeError(f"expected a GridWorld env or a TabularCMDP, got {type(env_or_model).__name__}")


def _limits(model: TabularCMDP, cost_limit: float | Sequence[float | None] | None) -> list[float | None]:
    """One limit (or None) per channel; a single number applies to every channel."""
    k = len(model.cost_names)
    if cost_limit is None:
        return [None] * k
    if np.isscalar(cost_limit):
        limits: list[Any] = [cost_limit] * k
    else:
        limits = list(cost_limit)  # type: ignore[arg-type]
        if len(limits) != k:
            raise ConfigError(
                f"cost_limit has {len(limits)} values but the CMDP has {k} cost channels {list(model.cost_names)}"
            )
    for name, lim in zip(model.cost_names, limits):
        if lim is not None and (not np.isfinite(lim) or lim < 0):
            raise ConfigError(f"cost limit for channel {name!r} must be a finite number >= 0 or None, got {lim!r}")
    return [None if lim is None else float(lim) for lim in limits]


def solve_lp(
    env_or_model: "GridWorld | TabularCMDP", cost_limit: float | Sequence[float | None] | None
) -> LPSolution:
    """Exact optimum over stationary policies by linear programming on occupancy measures.

    Maximises ``sum x(s, a) r(s, a)`` over ``x >= 0`` subject to the flow equations
    ``sum_a x(s', a) = start(s') + sum_{s, a} P(s' | s, a) beta(s') x(s, a)`` for every
    non-terminal ``s'`` and ``sum x(s, a) c_k(s, a) <= limit_k``, where ``r`` and ``c_k`` are
    expected reward and cost on entering the next state and ``beta(s')`` the probability of
    continuing after entering ``s'``. ``x`` is the expected number of visits per episode, so
    the objective is the expected undiscounted episode return.

    ``cost_limit``: None (unconstrained), one number for every channel, or one number or None
    per channel. Raises ConfigError if no policy meets the limits.
    """
    from scipy.optimize import linprog

    m = _model(env_or_model)
    limits = _limits(m, cost_limit)
    live = np.flatnonzero(~m.terminal)  # decision states
    s_n, a_n = live.size, m.num_actions
    p = m.transition[live]  # [s_n, A, S]
    r = p @ m.reward  # [s_n, A] expected reward of each action
    c = p @ m.cost  # [s_n, A, K]
    flow = p[:, :, live] * m.continuation()[live]  # [s_n, A, s_n]: continuing into s'
    a_eq = np.zeros((s_n, s_n, a_n))
    a_eq[np.arange(s_n), np.arange(s_n), :] = 1.0
    a_eq -= flow.transpose(2, 0, 1)
    bound = [k for k, lim in enumerate(limits) if lim is not None]
    res = linprog(
        -r.reshape(-1),
        A_ub=c[:, :, bound].reshape(-1, len(bound)).T if bound else None,
        b_ub=np.array([limits[k] for k in bound]) if bound else None,
        A_eq=a_eq.reshape(s_n, -1),
        b_eq=m.start[live],
        bounds=(0, None),
        method="highs",
    )
    if res.status == 2:
        raise ConfigError(f"no stationary policy meets the cost limits {limits} for channels {list(m.cost_names)}")
    if res.status != 0:
        raise RuntimeError(f"the LP solver failed: {res.message}")
    x = np.maximum(res.x.reshape(s_n, a_n), 0.0)
    occupancy = np.zeros((m.num_states, a_n))
    occupancy[live] = x
    visits = occupancy.sum(axis=1, keepdims=True)
    policy = np.full((m.num_states, a_n), 1.0 / a_n)
    seen = visits[:, 0] > 1e-12
    policy[seen] = occupancy[seen] / visits[seen]
    multipliers = np.zeros(len(m.cost_names))
    if bound:
        multipliers[bound] = np.maximum(-np.asarray(res.ineqlin.marginals), 0.0)
    costs = np.einsum("sa,sak->k", x, c)
    return LPSolution(
        return_=float(-res.fun),
        costs=costs,
        cost=float(costs.sum()),
        policy=policy,
        occupancy=occupancy,
        multipliers=multipliers,
        length=float(x.sum()),
        cost_limit=None if cost_limit is None else tuple(float("nan") if v is None else v for v in limits),
    )


def evaluate_policy_exact(env_or_model: "GridWorld | TabularCMDP", policy: np.ndarray) -> PolicyValue:
    """Exact episode statistics of the stationary policy ``policy[s, a]`` (rows: action
    probabilities per state index, i.e. per one-hot observation index).

    Solves ``(I - M) m1 = P x`` and ``(I - M) m2 = P (x^2 + 2 x beta m1')`` for the first two
    moments of the return-to-go ``m1``, ``m2`` of every per-step quantity ``x`` (reward, each
    cost channel, their cost sum, and 1 for the length), with ``M = P_pi diag(beta)``.
    """
    m = _model(env_or_model)
    pol = np.asarray(policy, dtype=np.float64)
    if pol.shape != (m.num_states, m.num_actions):
        raise ValueError(f"policy must have shape {(m.num_states, m.num_actions)}, got {pol.shape}")
    if (pol < -1e-12).any() or not np.allclose(pol.sum(axis=1), 1.0, atol=1e-9):
        raise ValueError("policy rows must be probability distributions (non-negative, summing to 1)")
    p_pi = np.einsum("sa,sat->st", pol, m.transition)  # [S, S]
    beta = m.continuation()
    per_step = np.column_stack([m.reward, m.cost, m.cost.sum(axis=1), np.ones(m.num_states)])  # [S, Q]
    system = np.eye(m.num_states) - p_pi * beta
    m1 = np.linalg.solve(system, p_pi @ per_step)
    m2 = np.linalg.solve(system, p_pi @ (per_step**2 + 2 * per_step * beta[:, None] * m1))
    mean = m.start @ m1
    std = np.sqrt(np.maximum(m.start @ m2 - mean**2, 0.0))
    k = len(m.cost_names)
    return PolicyValue(
        return_=float(mean[0]),
        costs=mean[1 : 1 + k],
        cost=float(mean[1 + k]),
        return_std=float(std[0]),
        costs_std=std[1 : 1 + k],
        cost_std=float(std[1 + k]),
        length=float(mean[-1]),
    )


# ---- the vector env -----------------------------------------------------------------------


class GridWorld(BatchedCMDP):
    """Vector gridworld CMDP; see the module docstring for the exact task.

    Args:
        num_envs: copies stepped in one batch.
        seed: seeds the env's generator (``reset(seed=...)`` reseeds it).
        layout: rows of equal length; ``#`` wall, ``.`` free, ``S`` start (uniform over all
            ``S`` cells), ``G`` goal, and one letter per cost channel (``H`` for GridWorld).
            Cells outside the map act as walls.
        slip: probability that the executed action is uniform over the four actions.
        end_prob: probability that an episode terminates after a step that does not reach a
            goal, in (0, 1).
        goal_reward: reward for entering a goal cell, > 0.
        max_episode_steps: time limit (truncation); see the module docstring for its effect.

    Randomness: every step draws exactly three uniforms per env from the env's generator
    (slip, termination, next start cell), used or not, so a row's outcome depends only on its
    own state, action and uniforms.
    """

    cost_cells: ClassVar[Mapping[str, str]] = {"H": "hazard"}
    """Layout letter -> cost channel name; entering such a cell costs 1 on that channel."""
    default_layout: ClassVar[tuple[str, ...]] = DEFAULT_LAYOUT
    metadata = {"render_modes": []}
    _state_fields = ("_cell", "_t")

    def __init__(
        self,
        num_envs: int = 1,
        seed: int | None = None,
        *,
        layout: Sequence[str] | None = None,
        slip: float = 0.0,
        end_prob: float = 0.1,
        goal_reward: float = 1.0,
        max_episode_steps: int = 200,
    ) -> None:
        name = type(self).__name__
        super().__init__(num_envs, seed)
        self.slip = check_float(name, "slip", slip, lo=0.0, hi=1.0)
        self.end_prob = check_float(name, "end_prob", end_prob, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        self.goal_reward = check_float(name, "goal_reward", goal_reward, lo=0.0, lo_open=True)
        self.max_episode_steps = check_int(name, "max_episode_steps", max_episode_steps, lo=1)
        self.layout = self._check_layout(self.default_layout if layout is None else layout)
        self.cost_names = tuple(self.cost_cells.values())

        cells = [(r, c) for r, row in enumerate(self.layout) for c, ch in enumerate(row) if ch != "#"]
        index = {rc: i for i, rc in enumerate(cells)}
        self.cells: tuple[tuple[int, int], ...] = tuple(cells)
        """(row, column) of each state index."""
        n_cells = len(cells)
        self._next = np.empty((n_cells, 4), dtype=np.int64)  # intended move of each action
        for i, (r, c) in enumerate(cells):
            for a, (dr, dc) in enumerate(_MOVES):
                self._next[i, a] = index.get((r + dr, c + dc), i)
        chars = np.array([self.layout[r][c] for r, c in cells])
        self._goal = chars == "G"
        self._reward = np.where(self._goal, self.goal_reward, 0.0)
        self._cost = np.stack([(chars == ch).astype(np.float64) for ch in self.cost_cells], axis=1)
        self._starts = np.flatnonzero(chars == "S")
        self._onehot = np.eye(n_cells, dtype=np.float32)

        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(n_cells,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self._cell = np.zeros(self.num_envs, dtype=np.int64)
        self._t = np.zeros(self.num_envs, dtype=np.int64)

    def _check_layout(self, layout: Sequence[str]) -> tuple[str, ...]:
        name = type(self).__name__
        if isinstance(layout, str) or not all(isinstance(row, str) for row in layout) or not layout:
            raise ConfigError(f"{name}: layout must be a non-empty sequence of strings (rows), got {layout!r}")
        rows = tuple(layout)
        if len({len(r) for r in rows}) != 1:
            lengths = [len(r) for r in rows]
            raise ConfigError(f"{name}: layout rows must all have the same length, got lengths {lengths}")
        allowed = set("#.SG") | set(self.cost_cells)
        bad = sorted(set("".join(rows)) - allowed)
        if bad:
            raise ConfigError(f"{name}: layout has unknown characters {bad}; allowed: {''.join(sorted(allowed))}")
        text = "".join(rows)
        if "S" not in text or "G" not in text:
            raise ConfigError(f"{name}: layout needs at least one start 'S' and one goal 'G'")
        return rows

    def _config(self) -> dict[str, Any]:
        return {
            "layout": list(self.layout),
            "slip": self.slip,
            "end_prob": self.end_prob,
            "goal_reward": self.goal_reward,
            "max_episode_steps": self.max_episode_steps,
        }

    # ---- exact solution --------------------------------------------------------------------

    def model(self) -> TabularCMDP:
        """The tabular CMDP this env simulates (the time limit aside; see the module docstring)."""
        n_cells = len(self.cells)
        transition = np.zeros((n_cells, 4, n_cells))
        rows = np.arange(n_cells)
        for a in range(4):
            transition[rows, a, self._next[:, a]] += 1.0 - self.slip
            for b in range(4):
                transition[rows, a, self._next[:, b]] += self.slip / 4
        start = np.zeros(n_cells)
        start[self._starts] = 1.0 / self._starts.size
        return TabularCMDP(
            transition=transition,
            reward=self._reward.copy(),
            cost=self._cost.copy(),
            terminal=self._goal.copy(),
            start=start,
            continue_prob=1.0 - self.end_prob,
            cost_names=self.cost_names,
        )

    def solve_lp(self, cost_limit: float | Sequence[float | None] | None) -> LPSolution:
        """:func:`solve_lp` on this env."""
        return solve_lp(self, cost_limit)

    def evaluate_policy_exact(self, policy: np.ndarray) -> PolicyValue:
        """:func:`evaluate_policy_exact` on this env."""
        return evaluate_policy_exact(self, policy)

    def state_index(self, obs: np.ndarray) -> np.ndarray:
        """State indices of a batch of one-hot observations ``[n, S]``."""
        return np.asarray(obs).argmax(axis=-1)

    # ---- stepping --------------------------------------------------------------------------

    def _reset_rows(self, rows: np.ndarray) -> None:
        self._cell[rows] = self._starts[(self._rng.random(rows.size) * self._starts.size).astype(np.int64)]
        self._t[rows] = 0

    def _observe(self) -> np.ndarray:
        return self._onehot[self._cell]

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        self._require_started()
        a = self.check_actions(actions)
        u = self._rng.random((self.num_envs, 3))
        if self.slip > 0.0:
            slipped = u[:, 0] < self.slip
            # Reuse the slip uniform, rescaled to [0, 1), to pick the random action.
            a = np.where(slipped, (u[:, 0] * (4.0 / self.slip)).astype(np.int64), a)
        cell = self._next[self._cell, a]
        reward = self._reward[cell]
        cost = self._cost[cell]
        success = self._goal[cell]
        terminated = success | (u[:, 1] < self.end_prob)
        self._t += 1
        truncated = (self._t >= self.max_episode_steps) & ~terminated
        self._cell = cell
        obs = self._onehot[cell]
        info: dict[str, Any] = {"success": success}
        done = terminated | truncated
        if np.count_nonzero(done):
            info["final_obs"] = obs.copy()
            rows = np.flatnonzero(done)
            self._cell[rows] = self._starts[(u[rows, 2] * self._starts.size).astype(np.int64)]
            self._t[rows] = 0
            obs[rows] = self._onehot[self._cell[rows]]
        self._obs = obs
        return obs.copy(), reward, cost, terminated, truncated, info


def _make_gridworld(num_envs: int = 1, seed: int | None = None, **kwargs: Any) -> GridWorld:
    return GridWorld(num_envs=num_envs, seed=seed, **kwargs)


register(
    "GridWorld-v0",
    _make_gridworld,
    "Tiny gridworld: a 4-step route through 3 hazard cells vs an 8-step safe detour, random "
    "termination (p=0.1); exact constrained optimum by LP (cmdp.envs.gridworld.solve_lp).",
)
