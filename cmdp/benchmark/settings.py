"""The benchmark's per-env settings, in one typed table.

Every env the grid knows has one :class:`EnvSettings` row: its cost limit, the training steps
of a cell in the small and in the full grid, how it is evaluated, and solver options. Env ids
are data: an id whose package is missing, or that :func:`cmdp.make` does not know yet (the
Safety-CHORES ids before that simulator lands), is skipped by the runner with a note, so adding
an env to the benchmark is adding a row here.

Why these numbers:

* GridWorld-v0 and TwoChannelGrid-v0: the limits are the envs' own recommended ones
  (``DEFAULT_COST_LIMIT``, ``DEFAULT_COST_LIMITS``), at which every limit binds. Episodes are
  about 5 steps long, so evaluation runs 200 of them: the per-episode cost has a standard
  deviation near 1.4, and the mean of 200 is within about 0.1 of the expectation.
* PointGoal-v0: limit 25 per 1000-step episode, the limit of Safety-Gym's published benchmarks
  (and of OmniSafe's). Episodes are long, so evaluation runs 10.
* Safety-CHORES (state observations): SafeVLA constrains the cumulative cost of an episode to
  about 2.3; cmdp puts one limit on each of the five components, so 2.3 is the budget of each.
  The built-in simulator trains at a few hundred steps/s here (PPOLag on Fetch, one thread),
  so the full grid gives each cell 200,000 steps, the budget of cmdp's own Fetch example.
* safety-gymnasium's SafetyPointGoal1-v0 and SafetyCarGoal1-v0: limit 25 as published; a
  tenth of OmniSafe's 1e7 steps in the full grid, because the simulator alone steps about
  1,600 times a second on the 2-core reference machine (over ten minutes per cell already).

Steps are rounded up to whole epochs (``steps_per_epoch`` env steps each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from cmdp.errors import ConfigError

__all__ = ["ENV_SETTINGS", "EnvSettings", "FULL_SEEDS", "SMALL_SEEDS", "settings_table"]

SMALL_SEEDS: tuple[int, ...] = (0, 1, 2)
FULL_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)


@dataclass(frozen=True, kw_only=True)
class EnvSettings:
    """How the benchmark trains and evaluates every solver on one env."""

    env_id: str
    """The id given to :func:`cmdp.make`."""
    cost_limit: float | tuple[float, ...]
    """Limit on the expected episode cost (per episode, not per step): one value for every
    cost channel, or one per channel in the env's channel order."""
    small_steps: int
    """Env steps (summed over envs) a cell trains for in the small grid."""
    full_steps: int
    """Env steps a cell trains for in the full grid (``--full``)."""
    in_small_grid: bool = True
    """Whether the small grid (the default) includes this env; ``--envs`` can always name it."""
    eval_episodes: int = 10
    """Episodes per evaluation (sampled actions, fresh evaluation envs)."""
    eval_points: int = 4
    """Evaluations during a cell's training, evenly spaced in epochs; the last one is at the
    end and gives the cell's final EpRet and EpCost."""
    config: Mapping[str, Any] = field(default_factory=dict)
    """Solver options for every solver on this env (e.g. ``env_kwargs``)."""
    solver_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per-solver options on top of ``config``, keyed by solver name."""

    def __post_init__(self) -> None:
        if not isinstance(self.env_id, str) or not self.env_id:
            raise ConfigError(f"EnvSettings.env_id must be a non-empty string, got {self.env_id!r}")
        limits = self.cost_limit if isinstance(self.cost_limit, tuple) else (self.cost_limit,)
        if not limits or not all(_is_number(x) and math.isfinite(x) and x >= 0 for x in limits):
            raise ConfigError(
                f"{self.env_id}: cost_limit must be a finite number >= 0 or a tuple of them, got {self.cost_limit!r}"
            )
        for name in ("small_steps", "full_steps", "eval_episodes", "eval_points"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{self.env_id}: {name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.config, Mapping) or not isinstance(self.solver_config, Mapping):
            raise ConfigError(f"{self.env_id}: config and solver_config must be mappings")
        if self.config.get("lr_schedule", "constant") != "constant":
            # a cell learns in chunks between evaluations, and learn() sets the schedule's horizon
            raise ConfigError(
                f"{self.env_id}: lr_schedule must stay 'constant' in the benchmark: a cell trains in "
                "chunks between evaluations and a linear schedule would decay to zero in each chunk"
            )
        frozen = {k: MappingProxyType(dict(v)) for k, v in self.solver_config.items()}
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))
        object.__setattr__(self, "solver_config", MappingProxyType(frozen))

    def steps(self, full: bool) -> int:
        return self.full_steps if full else self.small_steps

    def options(self, solver: str) -> dict[str, Any]:
        """The solver options of ``solver`` on this env: ``config`` updated by its own row."""
        return dict(self.config) | dict(self.solver_config.get(solver, {}))

    def limits(self) -> list[float]:
        return [float(x) for x in (self.cost_limit if isinstance(self.cost_limit, tuple) else (self.cost_limit,))]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _chores(task: str) -> EnvSettings:
    # From scratch, the sparse success reward alone gives an MLP nothing to learn from in these
    # budgets; one reward unit per metre of path progress (the env's reward_shaping) does.
    return EnvSettings(
        env_id=f"SafetyChores-{task}-v0",
        cost_limit=2.3,
        small_steps=50_000,
        full_steps=200_000,
        in_small_grid=False,
        eval_episodes=20,
        config={"env_kwargs": {"obs_mode": "state", "reward_shaping": 1.0}},
    )


def _safety_gymnasium(env_id: str) -> EnvSettings:
    return EnvSettings(
        env_id=env_id,
        cost_limit=25.0,
        small_steps=100_000,
        full_steps=1_000_000,
        in_small_grid=False,
        eval_episodes=10,
        config={"num_envs": 4},
    )


ENV_SETTINGS: tuple[EnvSettings, ...] = (
    EnvSettings(env_id="GridWorld-v0", cost_limit=1.0, small_steps=100_000, full_steps=400_000, eval_episodes=200),
    EnvSettings(
        env_id="TwoChannelGrid-v0", cost_limit=(0.5, 0.3), small_steps=100_000, full_steps=400_000, eval_episodes=200
    ),
    EnvSettings(env_id="PointGoal-v0", cost_limit=25.0, small_steps=100_000, full_steps=1_000_000, eval_episodes=10),
    _chores("ObjectNav"),
    _chores("PickUp"),
    _chores("Fetch"),
    _safety_gymnasium("SafetyPointGoal1-v0"),
    _safety_gymnasium("SafetyCarGoal1-v0"),
)
"""The default table, in the order of the results."""


def settings_table(rows: tuple[EnvSettings, ...] = ENV_SETTINGS) -> dict[str, EnvSettings]:
    """``rows`` keyed by env id; duplicate ids are an error."""
    table: dict[str, EnvSettings] = {}
    for row in rows:
        if not isinstance(row, EnvSettings):
            raise ConfigError(f"the settings table holds EnvSettings rows, got {row!r}")
        if row.env_id in table:
            raise ConfigError(f"env id {row.env_id!r} appears twice in the settings table")
        table[row.env_id] = row
    return table
