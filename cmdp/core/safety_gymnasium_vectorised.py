"""safety-gymnasium's per-step observation, hazard cost and goal distance, computed with array
operations, and its repeated MuJoCo forwards skipped.

safety-gymnasium 1.0.0 computes its pseudo-lidar one object at a time in Python: for each
hazard, vase and goal it builds the egocentric vector with a 3x3 product, the distance and the
angle, and raises one bin and its two neighbours. Then it checks the whole observation against
its space and flattens it through gymnasium's generic code, and its hazard cost loops over the
hazards again for their distances; the reward and the goal check measure the distance to the goal
three times a step, each time looking up two bodies by name. On ``SafetyPointGoal1-v0`` that is
about half of the CPU time of a step; MuJoCo's own ``mj_step`` is about a sixth.

:func:`vectorise_task` replaces those parts of one env with array operations that do the same
floating-point operations in the same order on every object, so the results are meant to be
equal bit for bit, not merely close:

- the egocentric vector as ``x * m[0] + y * m[1] + z * m[2]`` with ``z = 0 - agent_z``, which is
  what NumPy's 3-vector-by-3x3 product computes (a batched matrix product, through BLAS, is not:
  it differs in the last bit);
- distance and angle through the same complex ``abs`` and ``angle`` ufuncs;
- each bin the maximum over the objects' readings and their aliases (a maximum is exact, so the
  order of the objects does not matter);
- the hazard cost summed over the hazards inside their radius in the hazards' order, as before;
- the goal distance with its two squares added in the order ``np.sum`` adds them;
- the positions of the agent, goal, hazards, vases and pillars read from MuJoCo's ``xpos`` by body
  index, where safety-gymnasium looks each body up by name at every read;
- the flat observation written into each key's slice of the space's layout, as gymnasium's
  ``flatten`` concatenates them. The space check (``Dict.contains``) is left out: it can only
  fail for readings outside [0, 1], which these computations cannot produce.

It also runs MuJoCo's ``mj_forward`` once a step where safety-gymnasium runs it three times:
after the physics steps, again before the cost and again before the observation, though nothing
between them moves the simulation, so the second and third compute what the first did. They are
skipped only between a step's physics and its observation, and only when nothing that may move
the simulation (a task's own ``specific_step``, a new goal, a reset) ran in between.

Whether all that holds is checked, not assumed: for the first :data:`VERIFIED_STEPS` results of
each part an env also computes safety-gymnasium's own and compares them (bytes, dtype, shape, and
for costs and distances the Python type), and it runs each forward it is to skip, comparing every
array of ``MjData`` and every contact before and after. On any difference it goes back to
safety-gymnasium's code for good and says so in a warning. The peer-env tests play vectorised and
plain envs side by side.

Only tasks that use safety-gymnasium's own ``obs`` with its pseudo-lidar and no vision have their
observation vectorised, and only its own ``dist_goal`` of a ``Goal`` their goal distance; a task
that overrides any of it, or a hazards class that overrides its cost, keeps its own code.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "vectorise_task",
    "VectorisedTask",
    "VERIFIED_STEPS",
    "pseudo_lidar",
    "egocentric_xy",
    "BodyPositions",
    "same_bits",
]

VERIFIED_STEPS = 1000
"""Results of each vectorised part per env computed both ways and compared before trusting."""


def vectorise_task(env: Any) -> bool:
    """Make a safety-gymnasium env compute its observation, hazard cost and goal distance with
    array operations. Returns True if it now does any of them; False (and the env unchanged)
    otherwise.
    """
    task = getattr(getattr(env, "unwrapped", env), "task", None)
    if task is None:
        return False
    if isinstance(getattr(task, "vectorised", None), VectorisedTask):
        return True
    try:
        from safety_gymnasium.bases.base_task import BaseTask
    except ImportError:
        return False
    if not isinstance(task, BaseTask):
        return False
    vectorised = VectorisedTask(task)
    if not vectorised.verified:
        return False
    task.vectorised = vectorised
    return True


class VectorisedTask:
    """One task's vectorised parts, and their verification.

    ``verified`` maps each replaced part ("observation", "hazard cost", "goal distance", "forward
    before the cost", "forward before the observation") to how many of its results have been
    checked against safety-gymnasium's own so far.
    """

    def __init__(self, task: Any) -> None:
        from safety_gymnasium.assets.geoms.goal import Goal
        from safety_gymnasium.assets.geoms.hazards import Hazards
        from safety_gymnasium.bases.base_agent import BaseAgent
        from safety_gymnasium.bases.base_task import BaseTask
        from safety_gymnasium.tasks.safe_navigation.goal.goal_level0 import GoalLevel0

        self.task = task
        self._agent_position = BodyPositions(task, ["agent"]) if type(task.agent).pos is BaseAgent.pos else None
        self.enabled = True
        self.verified: dict[str, int] = {}
        if _observation_is_vectorisable(task, BaseTask):
            space = task.obs_info.obs_space_dict
            self._slices: dict[str, slice] = {}
            start = 0
            for key, box in space.spaces.items():
                size = int(np.prod(box.shape))
                self._slices[key] = slice(start, start + size)
                start += size
            self._flat_size = start
            self._flat_dtype = np.result_type(*(box.dtype for box in space.spaces.values()))
            self._dtypes = {key: box.dtype for key, box in space.spaces.items()}
            self._lidar_observed = [obstacle for obstacle in task._obstacles if obstacle.is_lidar_observed]
            self._lidar_positions = [positions_of(obstacle, task) for obstacle in self._lidar_observed]
            self._compass_observed = [o for o in task._obstacles if getattr(o, "is_comp_observed", False)]
            task.obs = self._checked("observation", task.obs, self._observe, _same_observation, forwards=True)
        for hazards in task._obstacles:
            if (
                isinstance(hazards, Hazards)
                and type(hazards).cal_cost is Hazards.cal_cost
                and self._agent_position is not None
            ):
                fast = functools.partial(_hazard_cost, hazards, positions_of(hazards, task), self._agent_position)
                hazards.cal_cost = self._checked("hazard cost", hazards.cal_cost, fast, _same_costs)
        goal, agent = getattr(task, "goal", None), task.agent
        if (
            type(task).dist_goal is BaseTask.dist_goal
            and getattr(type(goal), "pos", None) is Goal.pos  # tasks without a goal have goal None
            and type(agent).pos is BaseAgent.pos
            and type(agent).dist_xy is BaseAgent.dist_xy
        ):
            self._goal_and_agent = BodyPositions(task, ["goal", "agent"])
            task.dist_goal = self._checked("goal distance", task.dist_goal, self._goal_distance, _same_value)
        self._forwarded = False  # MuJoCo's derived quantities are those of the present state
        if type(task).calculate_cost is BaseTask.calculate_cost and not (
            task._is_load_static_geoms and task.static_geoms_contact_cost
        ):
            self._plain_cost = task.calculate_cost
            self.verified["forward before the cost"] = 0
            task.calculate_cost = self._calculate_cost
            if "observation" in self.verified and type(task).specific_step is GoalLevel0.specific_step:  # a no-op
                self.verified["forward before the observation"] = 0
            self._track_forwards(task)

    def _track_forwards(self, task: Any) -> None:
        """Mark the simulation forwarded after a step's physics, and not after anything else that
        may move it; the observation ends a step's window either way."""
        physics = task.simulation_forward

        def simulation_forward(action: Any) -> Any:
            exception = physics(action)
            self._forwarded = not exception  # on an exception safety-gymnasium skips its forward
            return exception

        task.simulation_forward = simulation_forward
        # in safety-gymnasium, update_layout moves nothing and update_world ends with a forward of
        # its own, so the window would still be right after them; closing it there keeps it right
        # for a task whose new goal skips that forward
        for name in ("reset", "update_layout", "update_world", "obs"):
            setattr(task, name, self._unforwarding(getattr(task, name)))
        if "forward before the observation" not in self.verified:
            task.specific_step = self._unforwarding(task.specific_step)

    def _unforwarding(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def unforwarding(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            finally:
                self._forwarded = False

        return unforwarding

    def _forward(self, part: str) -> None:
        """MuJoCo's ``mj_forward``, unless the step's physics has already run it on this state and
        the first VERIFIED_STEPS runs of it here changed nothing."""
        import mujoco

        task = self.task
        if not (self.enabled and self._forwarded and part in self.verified):
            mujoco.mj_forward(task.model, task.data)
            return
        if self.verified[part] >= VERIFIED_STEPS:
            return
        before = _derived_quantities(task.data)
        mujoco.mj_forward(task.model, task.data)
        agrees = _same_quantities(before, _derived_quantities(task.data))
        self._tally(part, agrees, f"the {part} changed the simulation's state")

    def _tally(self, part: str, agrees: bool, difference: str) -> None:
        """Count one verified result of ``part``, or go back to safety-gymnasium's code for good."""
        if agrees:
            self.verified[part] += 1
            return
        self.enabled = False
        warnings.warn(
            f"safety-gymnasium task: {difference}; this env uses safety-gymnasium's code from now on",
            RuntimeWarning,
            stacklevel=3,
        )

    def _calculate_cost(self) -> dict:
        if not self.enabled:
            return self._plain_cost()
        self._forward("forward before the cost")
        cost: dict = {}  # as safety-gymnasium's calculate_cost, without static geoms
        for obstacle in self.task._obstacles:
            cost.update(obstacle.cal_cost())
        cost["cost_sum"] = sum(v for k, v in cost.items() if k.startswith("cost_"))
        return cost

    def _checked(
        self, part: str, plain: Callable[[], Any], fast: Callable[..., Any], same: Callable, forwards: bool = False
    ) -> Callable[[], Any]:
        """``fast`` in place of ``plain``, after its first VERIFIED_STEPS results equal plain's.

        ``forwards``: plain runs MuJoCo's ``mj_forward`` first; while both run, fast is told not to
        run it again (``forward=False``), so checking costs the simulation nothing.
        """
        self.verified[part] = 0

        def replacement() -> Any:
            if not self.enabled:
                return plain()
            if self.verified[part] >= VERIFIED_STEPS:
                return fast()
            reference = plain()
            agrees = same(fast(forward=False) if forwards else fast(), reference)
            self._tally(part, agrees, f"the vectorised {part} differed from safety-gymnasium's own")
            return reference

        return replacement

    def _observe(self, forward: bool = True) -> Any:
        task = self.task
        if forward:  # as safety-gymnasium's obs: sensors need it
            self._forward("forward before the observation")
        readings = dict(task.agent.obs_sensor())
        if self._lidar_observed:
            lidar = task.lidar_conf
            positions = [read() for read in self._lidar_positions]
            groups = np.repeat(np.arange(len(positions)), [len(p) for p in positions])
            ego = egocentric_xy(np.concatenate(positions), task.agent.pos, task.agent.mat)
            rows = pseudo_lidar(
                ego, lidar.num_bins, lidar.max_dist, lidar.exp_gain, lidar.alias, groups, len(positions)
            )
            for obstacle, row in zip(self._lidar_observed, rows):
                readings[obstacle.name + "_lidar"] = row
        for obstacle in self._compass_observed:
            readings[obstacle.name + "_comp"] = task._obs_compass(obstacle.pos)
        if not task.observation_flatten:
            return readings
        flat = np.empty(self._flat_size, dtype=self._flat_dtype)
        for key, where in self._slices.items():
            flat[where] = np.asarray(readings[key], dtype=self._dtypes[key]).reshape(-1)
        return flat

    def _goal_distance(self) -> Any:
        goal, agent = self._goal_and_agent()
        dx = goal[0] - agent[0]
        dy = goal[1] - agent[1]
        return np.sqrt(dx * dx + dy * dy)  # np.sum of the two squares adds them in this order


class BodyPositions:
    """The world positions (``xpos``) of named bodies, read by index rather than looked up by
    name one at a time as safety-gymnasium's ``pos`` properties do; shape (len(names), 3)."""

    def __init__(self, task: Any, names: list[str]) -> None:
        self.task, self.names = task, names
        self._model: Any = None
        self._ids = np.zeros(0, dtype=np.intp)

    def __call__(self) -> np.ndarray:
        model = self.task.model
        if model is not self._model:  # a reset may compile the world anew
            self._model, self._ids = model, np.array([model.body(name).id for name in self.names], dtype=np.intp)
        return self.task.data.xpos[self._ids]


def positions_of(obstacle: Any, task: Any) -> Callable[[], np.ndarray]:
    """A reader of an obstacle's positions (shape (n, 3)): by body index for the kinds whose
    ``pos`` property reads bodies named by a known pattern, else through that property."""
    names = _body_names(obstacle)
    if names is not None:
        return BodyPositions(task, names)
    return lambda: np.array(obstacle.pos, dtype=np.float64, ndmin=2)


def _body_names(obstacle: Any) -> list[str] | None:
    from safety_gymnasium.assets.free_geoms.vases import Vases
    from safety_gymnasium.assets.geoms.goal import Goal
    from safety_gymnasium.assets.geoms.hazards import Hazards
    from safety_gymnasium.assets.geoms.pillars import Pillars

    # each class's pos property reads exactly these bodies' xpos (safety-gymnasium 1.0.0)
    patterns = {Hazards: "hazard{}", Vases: "vase{}", Pillars: "pillar{}"}
    for kind, pattern in patterns.items():
        if type(obstacle).pos is kind.pos:
            return [pattern.format(i) for i in range(obstacle.num)]
    if type(obstacle).pos is Goal.pos:
        return ["goal"]
    return None


def egocentric_xy(positions: np.ndarray, agent_pos: np.ndarray, agent_mat: np.ndarray) -> np.ndarray:
    """The XY of each position (rows of ``positions``) in the agent's frame, as safety-gymnasium's
    ``_ego_xy`` computes it for one."""
    x = positions[:, 0] - agent_pos[0]
    y = positions[:, 1] - agent_pos[1]
    z = 0.0 - agent_pos[2]  # the position is put on the floor (z = 0) before subtracting
    ego = np.empty((len(positions), 2))
    ego[:, 0] = x * agent_mat[0, 0] + y * agent_mat[1, 0] + z * agent_mat[2, 0]
    ego[:, 1] = x * agent_mat[0, 1] + y * agent_mat[1, 1] + z * agent_mat[2, 1]
    return ego


def pseudo_lidar(
    ego_xy: np.ndarray,
    num_bins: int,
    max_dist: float | None,
    exp_gain: float,
    alias: bool,
    groups: np.ndarray | None = None,
    num_groups: int = 1,
) -> np.ndarray:
    """safety-gymnasium's pseudo-lidar of objects at the egocentric ``ego_xy`` (shape (n, 2)).

    ``groups`` gives each object's row of the result (shape (num_groups, num_bins)), so that the
    lidars of several kinds of object come from one pass; without it, one reading of all the
    objects (shape (num_bins,)).
    """
    reading = np.zeros(num_groups * num_bins)
    if len(ego_xy):
        z = np.empty(len(ego_xy), dtype=np.complex128)
        z.real, z.imag = ego_xy[:, 0], ego_xy[:, 1]
        dist = np.abs(z)
        angle = np.angle(z) % (np.pi * 2)
        bin_size = (np.pi * 2) / num_bins
        bins = (angle / bin_size).astype(np.intp)  # truncation, as int(); the angle is not negative
        if max_dist is None:
            sensor = np.exp(-exp_gain * dist)
        else:
            sensor = np.maximum(0, max_dist - dist) / max_dist
        row = 0 if groups is None else groups * num_bins
        np.maximum.at(reading, row + bins, sensor)
        if alias:
            share = (angle - bin_size * bins) / bin_size
            np.maximum.at(reading, row + (bins + 1) % num_bins, share * sensor)
            np.maximum.at(reading, row + (bins - 1) % num_bins, (1 - share) * sensor)
    return reading if groups is None else reading.reshape(num_groups, num_bins)


def _hazard_cost(hazards: Any, positions: Callable[[], np.ndarray], agent: Callable[[], np.ndarray]) -> dict:
    if not hazards.is_constrained:
        return {}
    cost: dict = {"cost_hazards": 0}
    offsets = positions()[:, :2] - agent()[0, :2]
    dist = np.sqrt(offsets[:, 0] * offsets[:, 0] + offsets[:, 1] * offsets[:, 1])
    for inside in np.flatnonzero(dist <= hazards.size):  # summed in the hazards' order, as before
        cost["cost_hazards"] += hazards.cost * (hazards.size - dist[inside])
    return cost


def _derived_quantities(data: Any) -> list[Any]:
    """Copies of everything ``mj_forward`` may write into ``data``: every array of ``MjData``, its
    counts and time, and every field of its contacts."""
    contact = data.contact
    names = _FIELDS.get(type(data))
    if names is None:  # the same for every MjData: looked up once
        names = _FIELDS[type(data)] = (
            [n for n in dir(data) if not n.startswith("_") and isinstance(getattr(data, n), np.ndarray)],
            [n for n in dir(contact) if not n.startswith("_")],
        )
    arrays, fields = names
    counts = [data.ncon, data.nefc, data.ne, data.nf, data.time]
    return [*(getattr(data, n).copy() for n in arrays), *(np.array(getattr(contact, n)) for n in fields), counts]


_FIELDS: dict[type, tuple[list[str], list[str]]] = {}


def _same_quantities(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(same_bits(x, y) for x, y in zip(a[:-1], b[:-1])) and a[-1] == b[-1]


def _observation_is_vectorisable(task: Any, base_task: type) -> bool:
    kind = type(task)
    methods = ("obs", "_obs_lidar", "_obs_lidar_pseudo", "_ego_xy")
    uses_base = all(getattr(kind, name) is getattr(base_task, name) for name in methods)
    return uses_base and not task.observe_vision and task.lidar_conf.type == "pseudo"


def _same_observation(a: Any, b: Any) -> bool:
    if isinstance(b, dict):
        return isinstance(a, dict) and a.keys() == b.keys() and all(same_bits(a[k], b[k]) for k in b)
    return same_bits(a, b)


def same_bits(a: Any, b: Any) -> bool:
    """Whether two arrays (or scalars) are equal bit for bit: dtype, shape and bytes."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _same_costs(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in b)


def _same_value(a: Any, b: Any) -> bool:
    return type(a) is type(b) and same_bits(a, b)
