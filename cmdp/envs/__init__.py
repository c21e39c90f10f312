"""Built-in CMDPs. Importing this module registers their ids with :func:`cmdp.make`."""

from cmdp.envs.gridworld import (
    DEFAULT_COST_LIMIT,
    GridWorld,
    LPSolution,
    PolicyValue,
    TabularCMDP,
    evaluate_policy_exact,
    solve_lp,
)
from cmdp.envs.point import PointGoal
from cmdp.envs.two_channel import DEFAULT_COST_LIMITS, TwoChannelGrid
from cmdp.envs import chores  # noqa: F401  (registers the Safety-CHORES ids)
from cmdp.envs import thor  # noqa: F401  (registers SafetyChoresThor-* ids; imports no ai2thor)

__all__ = [
    "DEFAULT_COST_LIMIT",
    "DEFAULT_COST_LIMITS",
    "GridWorld",
    "LPSolution",
    "PointGoal",
    "PolicyValue",
    "TabularCMDP",
    "TwoChannelGrid",
    "evaluate_policy_exact",
    "solve_lp",
]
