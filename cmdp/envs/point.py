"""PointGoal: a Safety-Gym-like 2-D point robot that must reach goals while avoiding hazards.

The task (``PointGoal-v0``; ``PointGoalHard-v0`` has 12 hazards)
------------------------------------------------------------------
A point robot drives in a square arena ``[-arena_size, arena_size]^2`` (metres) bounded by
walls. Each episode draws a new layout: ``num_hazards`` circular hazard zones, the robot's
start pose and a goal disc. As in Safety-Gym's Goal task, reaching the goal does not end the
episode: the robot earns a bonus and a new goal is drawn, until the time limit
(``max_episode_steps``, default 1000 steps of 0.1 s) truncates the episode. Episodes never
terminate.

Reward per step: ``dist_before - dist_after`` (metres of progress towards the goal centre) plus
``goal_reward`` (default 1.0) on the step the robot's centre enters the goal disc.

Cost per step, channel ``"hazard"``: 1.0 when the robot's centre is strictly inside a hazard
disc after the step, else 0.0 (hazards never overlap, so at most 1 per step).

Why it is a CMDP worth solving: hazards are placed independently of start and goal, so the
straight line from the start to the first goal crosses a hazard in 56% of layouts (70% in
``PointGoalHard-v0``). A goal-greedy policy (what unconstrained PPO converges to) pays cost:
steering straight at each goal earns a return of ~130 and a cost of ~147 per 1000-step
episode. A zero-cost detour always exists: hazards keep a gap of ``hazard_gap`` metres to each
other and to the walls (so the hazard-free region is connected), the start is outside every
hazard and the goal disc overlaps no hazard.

Dynamics (unicycle with inertia; ``DT = 0.1`` s per step)
---------------------------------------------------------
Actions are ``Box([-1, 1]^2)``: ``a[0]`` forward thrust, ``a[1]`` turn rate; values outside the
box are clipped (NaN raises ActionShapeError before the state changes). Per step::

    omega    = TURN_RATE * a[1]                                  # rad/s
    heading  = heading + omega * DT                              # rad
    speed    = clip(speed * (1 - DRAG) + ACCEL * DT * a[0], -MAX_SPEED, MAX_SPEED)   # m/s
    position = position + speed * DT * (cos heading, sin heading)

A position that would leave the arena is clipped to the wall and the speed set to 0 (a bump).
At full thrust the robot reaches ``MAX_SPEED`` = 1 m/s, i.e. 0.1 m per step, within 3 steps.

Observation (float32, ``9 + 2 * lidar_bins`` values; 41 by default)
-------------------------------------------------------------------
=============  ===============================================================================
``[0:2]``      goal centre relative to the robot in the robot's frame (x ahead, y to the left),
               divided by ``arena_size``
``[2]``        distance to the goal centre / ``arena_size``
``[3]``        speed / ``MAX_SPEED`` (negative when reversing)
``[4]``        turn rate of the last step / ``TURN_RATE``
``[5:7]``      position / ``arena_size`` (how close the walls are)
``[7:9]``      cos and sin of the heading
``[9:9+B]``    hazard lidar, ``B = lidar_bins`` bins of bearing around the robot; bin ``b``
               looks at bearing ``(b + 0.5) * 360 / B`` degrees anticlockwise from ahead
``[9+B:]``     goal lidar, same bins
=============  ===============================================================================

Lidar (Safety-Gym's pseudo-lidar): an object at edge distance ``e`` (metres from the robot to
the object's disc, 0 inside it) has intensity ``exp(-lidar_exp_gain * e)``. Bin ``b`` reads the
maximum over objects of ``intensity * max(0, (cos d - cos W) / (1 - cos W))``, where ``d`` is
the angle between the object's bearing and the bin's and ``W = 360 / B`` degrees is the bin
width: 1 when the object is dead on the bin, about 0.75 in each of the two nearest bins when it
lies between them, 0 one bin width away.

Speed: all ``num_envs`` copies step as one numpy batch, never a python loop over envs; positions
and headings are complex numbers internally so a rotation is one multiplication. Layouts and
new goals are drawn by vectorised rejection sampling from the env's one generator.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from cmdp.core.registry import register
from cmdp.envs._common import BatchedCMDP, check_float, check_int, rejection_sample
from cmdp.errors import ActionShapeError, ConfigError

DT = 0.1
"""Seconds per env step."""
MAX_SPEED = 1.0
"""Top forward (and backward) speed, m/s."""
ACCEL = 4.0
"""Acceleration at full thrust, m/s^2."""
DRAG = 0.1
"""Fraction of the speed lost per step."""
TURN_RATE = 4.0
"""Turn rate at ``a[1] = 1``, rad/s (0.4 rad = 23 degrees per step)."""
START_CLEARANCE = 0.1
"""The start position is at least this far (m) outside every hazard disc and inside the walls."""
GOAL_MIN_DISTANCE = 0.7
"""A new goal's centre is at least this far (m) from the robot (Safety-Gym's keep-outs give ~0.7)."""
LAYOUT_ATTEMPTS = 20
"""Whole-layout restarts for envs whose sequential hazard placement got stuck."""
DEFAULT_COST_LIMIT = 25.0
"""Suggested limit on the expected cost per 1000-step episode (Safety-Gym's customary 25)."""


class PointGoal(BatchedCMDP):
    """Vector env of the point-goal task; see the module docstring for the exact task.

    Args:
        num_envs: copies stepped in one batch.
        seed: seeds the env's generator (``reset(seed=...)`` reseeds it).
        num_hazards: hazard discs per layout (>= 0).
        hazard_radius: hazard disc radius, m.
        hazard_gap: minimum clearance, m, between any two hazards and between hazards and walls.
        goal_radius: goal disc radius, m; the goal counts as reached when the robot's centre is
            strictly inside it.
        goal_reward: bonus added to the progress reward when a goal is reached.
        arena_size: half the side of the square arena, m.
        lidar_bins: bins per lidar (hazards and goal each).
        lidar_exp_gain: lidar intensity decay per metre of edge distance (0: no decay).
        max_episode_steps: time limit; the episode is truncated after this many steps.

    State (see ``state_dict``): ``_pos`` ``[n, 2]`` m; ``_heading`` ``[n, 2]`` (cos, sin);
    ``_speed`` ``[n]`` m/s; ``_omega`` ``[n]`` rad/s; ``_objects`` ``[num_hazards + 1, n, 2]``
    hazard centres then the goal centre, m; ``_prev_dist`` ``[n]`` m to the goal; ``_t`` ``[n]``
    steps into the episode. :attr:`hazards` and :attr:`goal` give them in ``[n, ...]`` layout.
    """

    cost_names = ("hazard",)
    metadata = {"render_modes": []}
    _state_fields = ("_pos", "_heading", "_speed", "_omega", "_objects", "_prev_dist", "_t")

    def __init__(
        self,
        num_envs: int = 1,
        seed: int | None = None,
        *,
        num_hazards: int = 8,
        hazard_radius: float = 0.3,
        hazard_gap: float = 0.2,
        goal_radius: float = 0.3,
        goal_reward: float = 1.0,
        arena_size: float = 2.0,
        lidar_bins: int = 16,
        lidar_exp_gain: float = 1.0,
        max_episode_steps: int = 1000,
    ) -> None:
        name = type(self).__name__
        super().__init__(num_envs, seed)
        self.num_hazards = check_int(name, "num_hazards", num_hazards, lo=0)
        self.hazard_radius = check_float(name, "hazard_radius", hazard_radius, lo=0.0, lo_open=True)
        self.hazard_gap = check_float(name, "hazard_gap", hazard_gap, lo=0.0, lo_open=True)
        self.goal_radius = check_float(name, "goal_radius", goal_radius, lo=0.0, lo_open=True)
        self.goal_reward = check_float(name, "goal_reward", goal_reward, lo=0.0)
        self.arena_size = check_float(name, "arena_size", arena_size, lo=0.0, lo_open=True)
        self.lidar_bins = check_int(name, "lidar_bins", lidar_bins, lo=3)
        self.lidar_exp_gain = check_float(name, "lidar_exp_gain", lidar_exp_gain, lo=0.0)
        self.max_episode_steps = check_int(name, "max_episode_steps", max_episode_steps, lo=1)
        self._hazard_span = self.arena_size - self.hazard_radius - self.hazard_gap
        if self.num_hazards and self._hazard_span <= 0:
            raise ConfigError(
                f"{name}: hazards of radius {self.hazard_radius:g} with gap {self.hazard_gap:g} do not fit "
                f"in an arena of half-size {self.arena_size:g}; need hazard_radius + hazard_gap < arena_size"
            )
        if 2 * (self.arena_size - self.goal_radius) <= GOAL_MIN_DISTANCE:
            raise ConfigError(
                f"{name}: goal_radius={self.goal_radius:g} is too large for arena_size={self.arena_size:g}; "
                f"need 2 * (arena_size - goal_radius) > {GOAL_MIN_DISTANCE}"
            )
        # Refuse crowded arenas up front instead of failing at some later reset: random
        # sequential placement of discs of radius (2r + gap) / 2 jams near 55% coverage.
        body = np.pi * ((2 * self.hazard_radius + self.hazard_gap) / 2) ** 2
        room = (2 * self._hazard_span + 2 * self.hazard_radius + self.hazard_gap) ** 2
        max_hazards = int(0.4 * room / body)
        if self.num_hazards > max_hazards:
            raise ConfigError(
                f"{name}: {self.num_hazards} hazards of radius {self.hazard_radius:g} with gap "
                f"{self.hazard_gap:g} crowd an arena of half-size {self.arena_size:g}; allowed "
                f"num_hazards <= {max_hazards} for these sizes"
            )

        b = self.lidar_bins
        self.obs_dim = 9 + 2 * b
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(self.obs_dim,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

        n, h = self.num_envs, self.num_hazards
        self._pos = np.zeros((n, 2))
        self._heading = np.zeros((n, 2))
        self._heading[:, 0] = 1.0
        self._speed = np.zeros(n)
        self._omega = np.zeros(n)
        self._objects = np.zeros((h + 1, n, 2))
        self._prev_dist = np.zeros(n)
        self._t = np.zeros(n, dtype=np.int64)

        # Lidar as one matrix product: rows [x * s, y * s, s * cos W] per object (x, y in the
        # robot frame, s = intensity / ((1 - cos W) * distance)) times [cos, sin, -1] per bin.
        width = 2 * np.pi / b
        centres = (np.arange(b) + 0.5) * width
        self._cos_width = float(np.cos(width))
        self._log_kernel_norm = -float(np.log1p(-self._cos_width))
        self._lidar_matrix = np.stack([np.cos(centres), np.sin(centres), -np.ones(b)])
        self._radii = np.concatenate([np.full(h, self.hazard_radius), [self.goal_radius]])[:, None]

    def _config(self) -> dict[str, Any]:
        return {
            "num_hazards": self.num_hazards,
            "hazard_radius": self.hazard_radius,
            "hazard_gap": self.hazard_gap,
            "goal_radius": self.goal_radius,
            "goal_reward": self.goal_reward,
            "arena_size": self.arena_size,
            "lidar_bins": self.lidar_bins,
            "lidar_exp_gain": self.lidar_exp_gain,
            "max_episode_steps": self.max_episode_steps,
        }

    @property
    def hazards(self) -> np.ndarray:
        """Hazard centres ``[num_envs, num_hazards, 2]`` in metres (a copy)."""
        return self._objects[:-1].transpose(1, 0, 2).copy()

    @property
    def goal(self) -> np.ndarray:
        """Goal centres ``[num_envs, 2]`` in metres (a copy)."""
        return self._objects[-1].copy()

    # ---- sampling ------------------------------------------------------------------------------

    def _sample_goals(self, rows: np.ndarray) -> np.ndarray:
        """New goal centres for ``rows``: the goal disc clear of every hazard, and the goal at
        least GOAL_MIN_DISTANCE from the robot."""
        hz = self._objects[:-1, rows].transpose(1, 0, 2)  # [k, h, 2]
        pos = self._pos[rows]
        keep_hazard = (self.hazard_radius + self.goal_radius) ** 2

        def valid(sub: np.ndarray, cand: np.ndarray) -> np.ndarray:
            ok = ((cand - pos[sub, None]) ** 2).sum(-1) >= GOAL_MIN_DISTANCE**2
            if self.num_hazards:
                ok &= (((cand[:, :, None] - hz[sub, None]) ** 2).sum(-1) >= keep_hazard).all(-1)
            return ok

        goals, placed = rejection_sample(self._rng, rows.size, self.arena_size - self.goal_radius, valid)
        if not placed.all():
            raise ConfigError(
                f"{type(self).__name__}: found no room for a goal clear of the hazards; "
                "use fewer or smaller hazards, a smaller goal_radius or a larger arena"
            )
        return goals

    def _sample_hazards(self, k: int) -> np.ndarray:
        """Hazard centres ``[k, h, 2]``: one hazard index at a time (vectorised over envs), each
        at least 2r + gap from the ones before; envs that get stuck start their layout again."""
        h = self.num_hazards
        out = np.zeros((k, h, 2))
        todo = np.arange(k)
        sep2 = (2 * self.hazard_radius + self.hazard_gap) ** 2
        for _ in range(LAYOUT_ATTEMPTS):
            hz = np.zeros((todo.size, h, 2))
            ok = np.ones(todo.size, dtype=bool)
            for j in range(h):
                placed = hz[:, :j]
                hz[:, j], found = rejection_sample(
                    self._rng,
                    todo.size,
                    self._hazard_span,
                    lambda sub, cand: (((cand[:, :, None] - placed[sub, None]) ** 2).sum(-1) >= sep2).all(-1),
                )
                ok &= found
            out[todo[ok]] = hz[ok]
            todo = todo[~ok]
            if todo.size == 0:
                return out
        raise ConfigError(
            f"{type(self).__name__}: could not place {h} hazards of radius {self.hazard_radius:g} with "
            f"gap {self.hazard_gap:g}; use fewer or smaller hazards or a larger arena"
        )

    def _reset_rows(self, rows: np.ndarray) -> None:
        k = rows.size
        hz = self._sample_hazards(k)
        self._objects[:-1, rows] = hz.transpose(1, 0, 2)
        start_keep = (self.hazard_radius + START_CLEARANCE) ** 2
        pos, placed = rejection_sample(
            self._rng,
            k,
            self.arena_size - START_CLEARANCE,
            lambda sub, cand: (((cand[:, :, None] - hz[sub, None]) ** 2).sum(-1) >= start_keep).all(-1),
        )
        if not placed.all():
            raise ConfigError(f"{type(self).__name__}: found no start position clear of the hazards")
        self._pos[rows] = pos
        angle = self._rng.uniform(-np.pi, np.pi, size=k)
        self._heading[rows] = np.stack([np.cos(angle), np.sin(angle)], axis=1)
        self._speed[rows] = 0.0
        self._omega[rows] = 0.0
        self._objects[-1, rows] = self._sample_goals(rows)
        self._prev_dist[rows] = np.linalg.norm(self._objects[-1, rows] - pos, axis=1)
        self._t[rows] = 0

    # ---- observation ---------------------------------------------------------------------------

    def _observe(self) -> np.ndarray:
        return self._compute_obs(slice(None))[0]

    def _compute_obs(self, rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        """Observations of ``rows`` and the distances ``[num_hazards + 1, k]`` (m) from the robot
        to every object centre (hazards, then the goal)."""
        pos = self._pos[rows].view(np.complex128)[:, 0]
        head = self._heading[rows].view(np.complex128)[:, 0]
        # Fancy-indexed rows come back in a transposed memory layout; views need C order.
        objects = np.ascontiguousarray(self._objects[:, rows]).view(np.complex128)[..., 0]  # [h + 1, k]
        ego = (objects - pos) * np.conj(head)  # object positions in the robot's frame
        dist = np.abs(ego)
        # exp(-gain * edge distance) / (1 - cos W), with the constant folded into the exponent
        scale = np.exp(np.minimum(self._radii - dist, 0.0) * self.lidar_exp_gain + self._log_kernel_norm)
        scale /= np.maximum(dist, 1e-12)
        k, b, h = pos.shape[0], self.lidar_bins, self.num_hazards
        rows3 = np.empty((h + 1, k, 3))
        np.multiply(ego.view(np.float64).reshape(h + 1, k, 2), scale[..., None], out=rows3[..., :2])
        np.multiply(scale * self._cos_width, dist, out=rows3[..., 2])
        lidar = (rows3.reshape(-1, 3) @ self._lidar_matrix).reshape(h + 1, k, b)

        # Assembled in float64 and cast once: ufunc writes that also cast cost twice as much.
        inv = 1.0 / self.arena_size
        out = np.empty((k, self.obs_dim))
        np.multiply(ego[-1].view(np.float64).reshape(k, 2), inv, out=out[:, 0:2])
        np.multiply(dist[-1], inv, out=out[:, 2])
        np.multiply(self._speed[rows], 1.0 / MAX_SPEED, out=out[:, 3])
        np.multiply(self._omega[rows], 1.0 / TURN_RATE, out=out[:, 4])
        np.multiply(self._pos[rows], inv, out=out[:, 5:7])
        out[:, 7:9] = self._heading[rows]
        if h:
            np.maximum.reduce(lidar[:-1], axis=0, out=out[:, 9 : 9 + b])
        else:
            out[:, 9 : 9 + b] = 0.0
        out[:, 9 + b :] = lidar[-1]
        np.maximum(out[:, 9:], 0.0, out=out[:, 9:])
        return out.astype(np.float32), dist

    # ---- step ----------------------------------------------------------------------------------

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        self._require_started()
        a = self.check_actions(actions)
        if np.count_nonzero(np.isnan(a)):  # NaN would survive clipping and poison the state
            raise ActionShapeError(f"actions contain NaN (env rows {np.flatnonzero(np.isnan(a).any(axis=1)).tolist()})")
        a = np.minimum(np.maximum(a, -1.0), 1.0).astype(np.float64)
        self._omega = TURN_RATE * a[:, 1]
        head = self._heading.view(np.complex128)[:, 0]
        head *= np.exp(self._omega * (1j * DT))  # writes through the view into _heading
        speed = np.minimum(np.maximum(self._speed * (1.0 - DRAG) + (ACCEL * DT) * a[:, 0], -MAX_SPEED), MAX_SPEED)
        pos = self._pos.view(np.complex128)[:, 0]
        moved = pos + (speed * DT) * head
        wall = self.arena_size
        np.minimum(np.maximum(moved.view(np.float64), -wall), wall, out=self._pos.reshape(-1))
        self._speed = np.where(pos != moved, 0.0, speed)

        goal = self._objects[-1].view(np.complex128)[:, 0]
        dist = np.abs(goal - pos)
        reward = self._prev_dist - dist
        reached = dist < self.goal_radius
        self._t += 1
        truncated = self._t >= self.max_episode_steps
        if np.count_nonzero(reached):  # count_nonzero: a quarter of the overhead of .any()
            reward += self.goal_reward * reached
            # A finishing episode keeps the goal it reached in its final observation.
            rows = np.flatnonzero(reached & ~truncated)
            if rows.size:
                self._objects[-1, rows] = self._sample_goals(rows)
        obs, dists = self._compute_obs(slice(None))
        self._prev_dist = dists[-1]
        cost = np.zeros((self.num_envs, 1))
        if self.num_hazards:
            cost[:, 0] = dists[:-1].min(axis=0) < self.hazard_radius
        info: dict[str, Any] = {}
        if np.count_nonzero(truncated):
            info["final_obs"] = obs.copy()
            rows = np.flatnonzero(truncated)
            self._reset_rows(rows)
            obs[rows] = self._compute_obs(rows)[0]
        self._obs = obs
        return obs.copy(), reward, cost, np.zeros(self.num_envs, dtype=bool), truncated, info


def _make_point_goal(num_envs: int = 1, seed: int | None = None, **kwargs: Any) -> PointGoal:
    return PointGoal(num_envs=num_envs, seed=seed, **kwargs)


HARD_SETTINGS: dict[str, Any] = {"num_hazards": 12, "hazard_gap": 0.15}
"""``PointGoalHard-v0``'s overrides of the PointGoal defaults (explicit kwargs win)."""


def _make_point_goal_hard(num_envs: int = 1, seed: int | None = None, **kwargs: Any) -> PointGoal:
    return PointGoal(num_envs=num_envs, seed=seed, **(HARD_SETTINGS | kwargs))


register(
    "PointGoal-v0",
    _make_point_goal,
    "Safety-Gym-like point robot reaching a stream of goals past 8 circular hazards (cost 'hazard'); "
    "41-dim lidar observation, 2-D thrust/turn actions, 1000-step episodes.",
)
register(
    "PointGoalHard-v0",
    _make_point_goal_hard,
    "PointGoal-v0 with 12 hazards and narrower gaps: 70% of straight start-to-goal paths cross a hazard.",
)
