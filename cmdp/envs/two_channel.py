"""TwoChannelGrid: a gridworld CMDP with two cost channels, "lava" and "water", and two limits.

The CMDP (``TwoChannelGrid-v0``)
--------------------------------
Default layout (``#`` wall, ``S`` start, ``G`` goal, ``L`` lava, ``W`` water, ``.`` free)::

    #######
    #...###
    #SL.WG#
    ###...#
    #######

Everything else is :class:`~cmdp.envs.gridworld.GridWorld` (actions, random termination with
``end_prob`` = 0.1, optional ``slip``, one-hot observations, the time limit and its bound):
entering an ``L`` cell costs 1 on channel ``"lava"``, entering a ``W`` cell 1 on ``"water"``.
:func:`cmdp.envs.gridworld.solve_lp` and :func:`~cmdp.envs.gridworld.evaluate_policy_exact`
give its exact optimum and policy values, with one limit per channel.

The corridor ``S L . W G`` is the 4-step route through both; a bump above bypasses the lava and
a bump below bypasses the water, each adding 2 steps. So there are four routes: through both
(4 steps), through the water only (6), through the lava only (6), and the safe route (8). The
unconstrained optimum goes through both and violates both limits of ``DEFAULT_COST_LIMITS`` =
(lava 0.5, water 0.3); each limit binds at the constrained optimum (both LP multipliers are
positive, and dropping either limit lets that channel's cost rise far above it); and the
constrained optimum randomises in two cells: at the start (lava 0.5 / bump 0.5) and before the
water (water 0.409 / bump 0.591). Exact values
(defaults; std = standard deviation of one episode's total):

======================================  ================  =========  ==========  ==========
policy                                  ep. return (std)  lava       water       ep. length
======================================  ================  =========  ==========  ==========
unconstrained optimum                   0.72900 (0.444)   1.00000    0.81000     3.439
constrained optimum, limits (0.5, 0.3)  0.58569 (0.493)   0.50000    0.30000     4.729
only the lava limit (0.5)               0.65975 (0.474)   0.50000    0.73305     4.062
only the water limit (0.3)              0.64179 (0.479)   1.00000    0.30000     4.224
safe route only                         0.47830 (0.500)   0          0           5.695
uniformly random policy                 0.07333           1.53927    0.24603     9.340
======================================  ================  =========  ==========  ==========

Optimal multipliers (LP duals): lava 0.1122, water 0.1710 reward per unit cost. The unconstrained
costs are 2.0x and 2.7x the limits; the safe route earns 81.7% of the constrained optimum.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from cmdp.core.registry import register
from cmdp.envs.gridworld import GridWorld

TWO_CHANNEL_LAYOUT: tuple[str, ...] = (
    "#######",
    "#...###",
    "#SL.WG#",
    "###...#",
    "#######",
)
"""The default map of ``TwoChannelGrid-v0``; see the module docstring."""

DEFAULT_COST_LIMITS: tuple[float, float] = (0.5, 0.3)
"""Recommended limits on the expected episode cost of ("lava", "water"), in channel order."""


class TwoChannelGrid(GridWorld):
    """:class:`~cmdp.envs.gridworld.GridWorld` with lava (``L``) and water (``W``) cost cells.

    Takes the same arguments as GridWorld; ``layout`` may use ``L`` and ``W`` (not ``H``).
    """

    cost_cells: ClassVar[Mapping[str, str]] = {"L": "lava", "W": "water"}
    default_layout: ClassVar[tuple[str, ...]] = TWO_CHANNEL_LAYOUT


def _make_two_channel(num_envs: int = 1, seed: int | None = None, **kwargs: Any) -> TwoChannelGrid:
    return TwoChannelGrid(num_envs=num_envs, seed=seed, **kwargs)


register(
    "TwoChannelGrid-v0",
    _make_two_channel,
    "Gridworld with two cost channels ('lava', 'water') and two limits (0.5, 0.3): both bind; "
    "exact optimum by LP (cmdp.envs.gridworld.solve_lp).",
)
