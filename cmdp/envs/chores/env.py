"""The Safety-CHORES vector env: ObjectNav, PickUp and Fetch with five safety costs.

``cmdp.make("SafetyChores-Fetch-v0", num_envs=N, seed=S, obs_mode="state" | "rgb", ...)``
steps N houses as one numpy batch (:class:`ChoresEnv`).

Tasks (DESIGN.md section 5, after SafeVLA): **ObjectNav** ("find a mug") succeeds when the
robot takes ``end`` with an object of the target category visible within 2 m; **PickUp** and
**Fetch** ("go to a mug and grasp that mug") succeed when the target object is held (the
episode ends there). ``end`` ends any episode. Reward: ``success_reward`` (+10) on success,
nothing else unless ``reward_shaping`` > 0 adds that many reward units per metre of path
progress towards the goal region (a dense signal for training from scratch; SafeVLA's
fine-tuning uses the sparse reward). Horizon: 500 steps for training episodes, 600 for the
evaluation sets.

Costs: the five 0/1 channels of :mod:`cmdp.envs.chores.costs`, ``cost_names`` in order
``corner, blind_spot, fragile_collection, critical_point, dangerous_equipment``.

Observations
------------
``obs_mode="state"`` (float32 vector, for fast MLP training; ``STATE_LAYOUT`` names the slices):
target bearing and distance, path distance and the direction of the shortest path, 16 range
readings, the 6 nearest small objects (position in the robot frame, height, fragile, dangerous,
clustered, visible, present), arm state and gripper-to-target offset, free-floor fraction,
last collision, the last action one-hot, and the time fraction.

``obs_mode="rgb"`` (the VLA-style dict): ``rgb_nav`` and ``rgb_manip`` uint8 images
``[H, W, 3]``, ``instruction`` (``text.MAX_TOKENS`` token ids), ``holding`` (0/1),
``last_action`` (``catalog.NO_ACTION`` before the first step), ``time_step`` (steps so far).
``detection=True`` adds SPOC's detection sensors, ``nav_target_box`` and ``manip_target_box``:
the box of the target's pixels in each camera (:func:`target_boxes`), exact under occlusion. SPOC
trains variants with these ground-truth boxes; they stand in for a detector (or a pretrained
visual encoder) that cannot be downloaded here.

``info`` at every step: ``success`` (bool, read where an episode ended), ``collided``,
``cost_events`` ([N, 5] the step's costs again, for logs), and at episode ends ``episode``:
per finished env a dict with ``success``, ``length``, ``costs`` (per component),
``expert_length`` and ``episode_id``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np

from cmdp.core.vector import VectorCMDP
from cmdp.envs._common import check_float, check_int, check_seed
from cmdp.envs.chores import catalog as cat
from cmdp.envs.chores import text
from cmdp.envs.chores.costs import COST_NAMES, SafetyCostLayer, Snapshot, cluster_members
from cmdp.envs.chores.episodes import (
    OBJECTNAV_SUCCESS_DISTANCE,
    EpisodeSampler,
    EpisodeSpec,
    goal_distance_everywhere,
    specs_from,
)
from cmdp.envs.chores.geometry import rotate_to_frame
from cmdp.envs.chores.house import GRID_RES, HouseParams, grid_of
from cmdp.envs.chores.scene import Scene
from cmdp.envs.chores.sim import CameraGeometry, ChoresSim
from cmdp.errors import CheckpointError, ConfigError

TRAIN_HORIZON = 500
EVAL_HORIZON = 600
NEAREST = 6  # small objects described in the state observation
RANGE_RAYS = 16
RANGE_MAX = 3.0
HAZARD_RANGE = 2.5

_STATE_PARTS = (
    ("target", 5), ("ranges", RANGE_RAYS), ("nearby", NEAREST * 8), ("arm", 8), ("surroundings", 2),
    ("last_action", cat.NUM_ACTIONS + 1), ("time", 1),
)  # fmt: skip
STATE_LAYOUT: dict[str, slice] = {}
_o = 0
for _name, _size in _STATE_PARTS:
    STATE_LAYOUT[_name] = slice(_o, _o + _size)
    _o += _size
STATE_DIM = _o
# [8, 2] m: where the planning field is probed around the robot for the direction of the path
_RING = 0.3 * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], axis=1)


BOX_KEYS = ("nav_target_box", "manip_target_box")
"""The detection observations of ``detection=True``, one per camera (see :func:`target_boxes`)."""


def rgb_observation_space(image_size: tuple[int, int], horizon: int, detection: bool = False) -> gym.spaces.Dict:
    """The VLA-style observation space of ``obs_mode="rgb"`` (shared by the AI2-THOR backend);
    ``detection`` adds the target boxes of :data:`BOX_KEYS`."""
    h, w = image_size
    spaces: dict[str, gym.Space] = {
        "rgb_nav": gym.spaces.Box(0, 255, (h, w, 3), np.uint8),
        "rgb_manip": gym.spaces.Box(0, 255, (h, w, 3), np.uint8),
        "instruction": gym.spaces.Box(0, text.VOCAB_SIZE - 1, (text.MAX_TOKENS,), np.int64),
        "holding": gym.spaces.Discrete(2),
        "last_action": gym.spaces.Discrete(cat.NUM_ACTIONS + 1),
        "time_step": gym.spaces.Box(0, horizon, (1,), np.int64),
    }
    if detection:
        spaces |= {key: gym.spaces.Box(0.0, 1.0, (5,), np.float32) for key in BOX_KEYS}
    return gym.spaces.Dict(spaces)


def target_boxes(pixel_ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """SPOC's task-relevant object box: per env, the bounding box of the pixels that show a
    target object, float32 ``[N, 5]`` = ``(seen, x_min, y_min, x_max, y_max)`` with the corners
    as fractions of the image width and height (pixel edges, so a one-pixel object has a
    box of one pixel) and all zeros when no target pixel is in the image.

    ``pixel_ids`` ``[N, H, W]``: the small object each pixel shows (-1: none), from the
    renderer; ``targets`` ``[N, M]``: which objects are targets."""
    n, h, w = pixel_ids.shape
    padded = np.concatenate([targets, np.zeros((n, 1), dtype=bool)], axis=1)  # index -1: no object
    mask = np.take_along_axis(padded, np.where(pixel_ids < 0, targets.shape[1], pixel_ids).reshape(n, -1), 1).reshape(n, h, w)
    cols, rows = mask.any(axis=1), mask.any(axis=2)
    seen = cols.any(axis=1)
    out = np.zeros((n, 5), dtype=np.float32)
    out[:, 0] = seen
    out[:, 1] = cols.argmax(axis=1) / w
    out[:, 2] = rows.argmax(axis=1) / h
    out[:, 3] = (w - cols[:, ::-1].argmax(axis=1)) / w
    out[:, 4] = (h - rows[:, ::-1].argmax(axis=1)) / h
    out[~seen] = 0.0
    return out


@dataclass(frozen=True)
class DynamicsNoise:
    """Out-of-distribution dynamics: Gaussian move and turn errors (as fractions of the step)
    and the probability that an action does nothing."""

    move_noise: float = 0.0
    turn_noise: float = 0.0
    failure_prob: float = 0.0


class ChoresEnv(VectorCMDP):
    """N Safety-CHORES episodes stepped as one batch. See the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(
        self,
        task: str,
        num_envs: int = 1,
        seed: int | None = None,
        obs_mode: str = "state",
        split: str = "train",
        episodes: Sequence[EpisodeSpec | Mapping[str, Any]] | None = None,
        episode_mix: float | None = None,
        image_size: tuple[int, int] = (64, 64),
        detection: bool = False,
        camera: Any = None,
        manip_camera: Any = None,
        style: Any = None,
        max_episode_steps: int | None = None,
        success_reward: float = 10.0,
        reward_shaping: float = 0.0,
        house_params: HouseParams | Mapping[str, Any] | None = None,
        num_train_houses: int = 1_000,
        dynamics: DynamicsNoise | Mapping[str, float] | None = None,
        paraphrase: bool = False,
        render_mode: str | None = None,
        max_boxes: int | None = None,
        max_objects: int | None = None,
    ) -> None:
        name = "SafetyChores"
        if task not in text.TASKS:
            raise ConfigError(f"{name}: unknown task {task!r}; allowed: {', '.join(text.TASKS)}")
        self.task = task
        self.num_envs = check_int(name, "num_envs", num_envs, lo=1)
        self._seed = check_seed(name, seed)
        if obs_mode not in ("state", "rgb"):
            raise ConfigError(f"{name}: obs_mode must be 'state' or 'rgb', got {obs_mode!r}")
        self.obs_mode = obs_mode
        if split not in ("train", "eval"):
            raise ConfigError(f"{name}: split must be 'train' or 'eval', got {split!r}")
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"{name}: render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        if isinstance(house_params, Mapping):
            house_params = HouseParams.from_dict(house_params)
        self.house_params = house_params or HouseParams()
        if isinstance(dynamics, Mapping):
            dynamics = DynamicsNoise(**dynamics)
        self.dynamics = dynamics or DynamicsNoise()
        for field_ in ("move_noise", "turn_noise"):
            check_float(name, field_, getattr(self.dynamics, field_), lo=0.0, hi=2.0)
        check_float(name, "failure_prob", self.dynamics.failure_prob, lo=0.0, hi=1.0)
        self.success_reward = check_float(name, "success_reward", success_reward, lo=0.0)
        self.reward_shaping = check_float(name, "reward_shaping", reward_shaping, lo=0.0)
        fixed = None
        if episodes is not None:
            fixed = specs_from(episodes)
            bad = [s.task for s in fixed if s.task != task]
            if bad:
                raise ConfigError(f"{name}-{task}: the episode list holds {bad[0]} episodes")
        elif split == "eval":
            from cmdp.envs.chores.eval_sets import load_eval_set

            fixed = load_eval_set(task)
        self.split = split
        horizon = max_episode_steps if max_episode_steps is not None else (EVAL_HORIZON if split == "eval" else TRAIN_HORIZON)
        self.max_episode_steps = check_int(name, "max_episode_steps", horizon, lo=1)
        self.sampler = EpisodeSampler(
            task, self.num_envs, self.house_params, num_train_houses, fixed=fixed, mix=episode_mix, paraphrase=paraphrase
        )
        mb = max_boxes or max([self.house_params.max_boxes] + [s.house.num_boxes for s in fixed or []])
        mo = max_objects or max([self.house_params.max_objects] + [s.house.num_objects for s in fixed or []])
        self.scene = Scene(self.num_envs, mb, mo)
        self._rng = np.random.default_rng(self._seed)
        self._seed_base = 0 if self._seed is None else self._seed
        self.sim = ChoresSim(self.scene, self._rng, **vars(self.dynamics))
        # what counts as visible (costs, ObjectNav success) follows the navigation camera's
        # geometry in every observation mode, so an OOD camera suite changes both consistently
        self.camera_geometry = (
            CameraGeometry()
            if camera is None
            else CameraGeometry(
                height=camera.mount_height,
                pitch=np.deg2rad(camera.pitch),
                vfov=np.deg2rad(camera.vertical_fov),
                hfov=np.deg2rad(camera.horizontal_fov),
            )
        )
        self.costs = SafetyCostLayer(self.num_envs, mo + mb)
        self.cost_names = COST_NAMES
        self.action_space = gym.spaces.Discrete(cat.NUM_ACTIONS)
        self.image_size = tuple(int(v) for v in image_size)
        if not isinstance(detection, (bool, np.bool_)):
            raise ConfigError(f"{name}: detection must be True or False, got {detection!r}")
        if detection and obs_mode != "rgb":
            raise ConfigError(f"{name}: detection adds target boxes to the rgb observation; it needs obs_mode='rgb'")
        self.detection = bool(detection)
        self._camera, self._manip_camera, self._style = camera, manip_camera, style
        if obs_mode == "rgb":
            self._setup_rendering()
        self.observation_space = self._make_observation_space()
        n = self.num_envs
        self.specs: list[EpisodeSpec | None] = [None] * n
        self._t = np.zeros(n, dtype=np.int64)
        self._last_action = np.full(n, cat.NO_ACTION, dtype=np.int64)
        self._last_collided = np.zeros(n, dtype=bool)
        self._targets = np.zeros((n, mo), dtype=bool)  # objects that count as the target
        self._clustered = np.zeros((n, mo), dtype=bool)
        self._tokens = np.zeros((n, text.MAX_TOKENS), dtype=np.int64)
        # per-env planning grids, padded to one array so lookups are one gather for all envs
        self._fields = np.full((n, 1, 1), np.inf, dtype=np.float32)
        self._free_fraction = np.zeros((n, 1, 1), dtype=np.float32)
        self._prev_dist = np.zeros(n)
        self._path = np.zeros((n, self.max_episode_steps + 1, 2))
        self._events = np.zeros((n, self.max_episode_steps + 1, len(COST_NAMES)))
        self._ep_cost = np.zeros((n, len(COST_NAMES)))
        self._started = False
        self._vis_obj = np.zeros((n, mo), dtype=bool)

    # ---- spaces ---------------------------------------------------------------------------

    def _setup_rendering(self) -> None:
        from cmdp.envs.chores import render

        h, w = self.image_size
        self._camera = self._camera or render.CameraSpec(height=h, width=w)
        self._manip_camera = self._manip_camera or render.CameraSpec.manipulation(height=h, width=w)
        self._style = self._style or render.RenderStyle()

    def _make_observation_space(self) -> gym.Space:
        if self.obs_mode == "state":
            return gym.spaces.Box(-10.0, 10.0, (STATE_DIM,), np.float32)
        return rgb_observation_space(self.image_size, self.max_episode_steps, self.detection)

    # ---- episodes -------------------------------------------------------------------------

    def _start(self, rows: np.ndarray) -> None:
        s = self.scene
        for r in rows:
            r = int(r)
            spec = self.sampler.next(r, self._rng)
            self.specs[r] = spec
            self.sim.row_rngs[r] = np.random.default_rng(self._episode_seed(spec))
            s.load(r, spec.house, spec.start, spec.arm)
            self._set_grids(r, goal_distance_everywhere(spec), grid_of(spec.house).free_fraction)
            self._targets[r] = False
            self._targets[r, spec.targets()] = True
            self._tokens[r] = text.encode(spec.instruction)
        self._t[rows] = 0
        self._last_action[rows] = cat.NO_ACTION
        self._last_collided[rows] = False
        fragile_member = s.obj_valid[rows]
        self._clustered[rows] = cluster_members(s.obj_pos[rows], fragile_member)
        self._prev_dist[rows] = self._path_distance(rows)
        self._path[rows, 0] = s.robot_xy[rows]
        self._events[rows] = 0.0
        self._ep_cost[rows] = 0.0

    def _episode_seed(self, spec: EpisodeSpec) -> list[int]:
        """Seed of an episode's random events: from the env's seed and the episode's id for
        fixed episode lists (so a listed episode plays out the same whatever the number of envs
        or its place in the batch), from the env's generator for fresh training episodes."""
        if self.sampler.fixed is not None and spec.episode_id:
            return [self._seed_base, zlib.crc32(spec.episode_id.encode())]
        return [self._seed_base, int(self._rng.integers(2**63))]

    def reset(self, *, seed: int | None = None) -> tuple[Any, dict]:
        seed = check_seed("SafetyChores", seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            self._seed_base = seed
            self.sampler.cursor = np.arange(self.num_envs, dtype=np.int64)
        rows = np.arange(self.num_envs)
        self._start(rows)
        events = self._no_events()
        snap = self._snapshot(events, acted=np.zeros(self.num_envs, dtype=bool))
        self.costs.reset(rows, snap)
        self._started = True
        return self._observe(), {}

    def _no_events(self):
        from cmdp.envs.chores.sim import StepEvents

        n, b, m = self.num_envs, self.scene.max_boxes, self.scene.max_objects
        return StepEvents(
            np.zeros(n, bool), np.zeros((n, b), bool), np.zeros((n, m), bool), np.zeros((n, m), bool),
            np.full(n, -1), np.ones(n, bool),
        )  # fmt: skip

    # ---- the step -------------------------------------------------------------------------

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        if not self._started:
            raise RuntimeError("SafetyChores: call reset() before step()")
        actions = self.check_actions(actions)
        s = self.scene
        events = self.sim.step(actions)
        acted = cat.PHYSICAL_ACTIONS[actions]
        snap = self._snapshot(events, acted)
        step_costs = self.costs.step(snap)
        cost = step_costs.cost
        self._t += 1
        self._last_action = actions.copy()
        self._last_collided = events.collided
        # success and termination
        end = actions == cat.ACTION_INDEX["end"]
        if self.task == "ObjectNav":
            near = np.linalg.norm(s.obj_pos[..., :2] - s.robot_xy[:, None, :], axis=-1) <= OBJECTNAV_SUCCESS_DISTANCE
            success = end & (self._vis_obj & self._targets & near).any(axis=1)
            terminated = end
        else:
            held = s.held
            success = (held >= 0) & self._targets[np.arange(self.num_envs), np.maximum(held, 0)]
            terminated = end | success
        truncated = (self._t >= self.max_episode_steps) & ~terminated
        reward = np.where(success, self.success_reward, 0.0)
        if self.reward_shaping > 0:
            dist = self._path_distance(np.arange(self.num_envs))
            progress = np.clip(self._prev_dist - dist, -0.5, 0.5)
            reward = reward + self.reward_shaping * np.where(np.isfinite(progress), progress, 0.0)
            self._prev_dist = dist
        t_idx = np.minimum(self._t, self.max_episode_steps)
        rows = np.arange(self.num_envs)
        self._path[rows, t_idx] = s.robot_xy
        self._events[rows, t_idx] = cost
        self._ep_cost += cost
        obs = self._observe()
        info: dict[str, Any] = {
            "success": success,
            "collided": events.collided.copy(),
            "cost_events": cost,
        }
        done = terminated | truncated
        if done.any():
            idx = np.flatnonzero(done)
            info["final_obs"] = obs  # computed before the finished envs restart below
            info["episode"] = [
                {
                    "env": int(i),
                    "success": bool(success[i]),
                    "length": int(self._t[i]),
                    "costs": dict(zip(COST_NAMES, self._ep_cost[i].tolist())),
                    "expert_length": self.specs[i].expert_length,
                    "episode_id": self.specs[i].episode_id,
                }
                for i in idx
            ]
            self._last_episode = {int(i): (self._path[i, : t_idx[i] + 1].copy(), self._events[i, : t_idx[i] + 1].copy(), self.specs[i]) for i in idx}
            self._start(idx)
            snap = self._snapshot(self._no_events(), acted=np.zeros(self.num_envs, dtype=bool))
            self.costs.reset(idx, snap)
            obs = self._observe()
        return obs, reward, cost, terminated, truncated, info

    def _set_grids(self, row: int, field_: np.ndarray, free_fraction: np.ndarray) -> None:
        gy, gx = field_.shape
        _, py, px = self._fields.shape
        if gy > py or gx > px:  # grow the padded arrays to the largest house seen
            ny, nx = max(gy, py), max(gx, px)
            grown_f = np.full((self.num_envs, ny, nx), np.inf, dtype=np.float32)
            grown_f[:, :py, :px] = self._fields
            grown_ff = np.zeros((self.num_envs, ny, nx), dtype=np.float32)
            grown_ff[:, :py, :px] = self._free_fraction
            self._fields, self._free_fraction = grown_f, grown_ff
        self._fields[row] = np.inf
        self._fields[row, :gy, :gx] = field_
        self._free_fraction[row] = 0.0
        self._free_fraction[row, :gy, :gx] = free_fraction

    def _path_distance(self, rows: np.ndarray) -> np.ndarray:
        return self._lookup(self._fields, self.scene.robot_xy[rows, None, :], rows)[:, 0]

    def _lookup(self, maps: np.ndarray, points: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Values of the per-env grids ``maps`` ``[N, GY, GX]`` at points ``[R, P, 2]`` (nearest
        cell; points outside the grid read the border cell)."""
        _, gy, gx = maps.shape
        rows = np.arange(points.shape[0]) if rows is None else rows
        iy = np.minimum((np.maximum(points[..., 1], 0.0) * (1.0 / GRID_RES)).astype(np.int64), gy - 1)
        ix = np.minimum((np.maximum(points[..., 0], 0.0) * (1.0 / GRID_RES)).astype(np.int64), gx - 1)
        return maps[rows[:, None], iy, ix].astype(np.float64)

    def _snapshot(self, ev, acted: np.ndarray) -> Snapshot:
        s = self.scene
        n, m, b = s.num_envs, s.max_objects, s.max_boxes
        vis_obj, vis_box = self.sim.visibility(self.camera_geometry)
        self._vis_obj = vis_obj
        pos = np.empty((n, m + b, 3))  # small objects, then the furniture's centres
        pos[:, :m] = s.obj_pos
        pos[:, m:, 0] = 0.5 * (s.box[..., 0] + s.box[..., 2])
        pos[:, m:, 1] = 0.5 * (s.box[..., 1] + s.box[..., 3])
        pos[:, m:, 2] = 0.5 * s.box[..., 4]
        furniture = s.box_kind == cat.KIND_FURNITURE
        rot = np.zeros((n, m + b, 3))
        rot[:, :m, 0] = np.rad2deg(s.obj_tilt)
        rot[:, :m, 2] = np.rad2deg(s.obj_yaw)
        _, dangerous, _ = s.obj_category_flags()
        held = np.zeros((n, m + b), dtype=bool)
        hr = np.flatnonzero(s.held >= 0)
        held[hr, s.held[hr]] = True
        fell = np.concatenate([ev.fell, np.zeros((n, b), bool)], axis=1)
        free_fraction = self._lookup(self._free_fraction, s.robot_xy[:, None, :])[:, 0]
        return Snapshot(
            pos=pos,
            rot=rot,
            valid=np.concatenate([s.obj_valid, furniture], axis=1),
            movable=np.concatenate([s.obj_valid, np.zeros((n, b), bool)], axis=1),
            dangerous=np.concatenate([dangerous, s.box_dangerous], axis=1),
            visible=np.concatenate([vis_obj, vis_box], axis=1),
            held=held,
            contacted=np.concatenate([ev.contacted, ev.box_contact & furniture], axis=1),
            collided=ev.collided,
            free_fraction=free_fraction,
            acted=acted,
            fell=fell,
        )

    # ---- observations ---------------------------------------------------------------------

    def _observe(self) -> Any:
        if self.obs_mode == "state":
            return self._state_obs()
        from cmdp.envs.chores import render

        s = self.scene
        boxes = {}
        if self.detection:
            nav, nav_ids = render.render_nav(s, self._camera, self._style, ids=True)
            manip, manip_ids = render.render_manip(s, self._manip_camera, self._style, ids=True)
            boxes = {key: target_boxes(ids, self._targets) for key, ids in zip(BOX_KEYS, (nav_ids, manip_ids))}
        else:
            nav = render.render_nav(s, self._camera, self._style)
            manip = render.render_manip(s, self._manip_camera, self._style)
        return {
            "rgb_nav": nav,
            "rgb_manip": manip,
            "instruction": self._tokens.copy(),
            "holding": (s.held >= 0).astype(np.int64),
            "last_action": self._last_action.copy(),
            "time_step": self._t[:, None].copy(),
        } | boxes

    def _state_obs(self) -> np.ndarray:
        s = self.scene
        n, m = s.num_envs, s.max_objects
        out = np.zeros((n, STATE_DIM), dtype=np.float32)
        rows = np.arange(n)
        ri = rows[:, None]
        rx = s.obj_pos[..., 0] - s.robot_xy[:, 0, None]
        ry = s.obj_pos[..., 1] - s.robot_xy[:, 1, None]
        d = np.sqrt(rx**2 + ry**2)
        # target: nearest target instance
        ti = np.where(self._targets, d, np.inf).argmin(axis=1)
        t_dist = np.maximum(d[rows, ti], 1e-6)
        # the planning field at the robot, then on a ring around it
        probes = np.concatenate([s.robot_xy[:, None, :], s.robot_xy[:, None, :] + _RING[None]], axis=1)
        field = self._lookup(self._fields, probes)
        path, around = field[:, 0], field[:, 1:]
        best = np.where(np.isfinite(around), around, np.inf).argmin(axis=1)
        # the nearest small objects (not the held one)
        held_mask = np.arange(m)[None, :] == s.held[:, None]
        d_obj = np.where(s.obj_valid & ~held_mask, d, np.inf)
        k = min(NEAREST, m)
        near = np.argpartition(d_obj, k - 1, axis=1)[:, :k] if m > k else np.tile(np.arange(m), (n, 1))
        near = near[ri, d_obj[ri, near].argsort(axis=1)]
        present = d_obj[ri, near] <= HAZARD_RANGE
        grip = s.gripper()
        g_rel = s.obj_pos[rows, ti] - grip
        g_rel[:, 2] += 0.5 * s.obj_height[rows, ti]
        # every vector of the observation into the robot's frame in one go: the target, the way
        # along the path, the nearby objects, and the gripper-to-target offset
        world = np.concatenate(
            [
                np.stack([rx[rows, ti], ry[rows, ti]], axis=-1)[:, None], _RING[best][:, None],
                np.stack([rx[ri, near], ry[ri, near]], axis=-1), g_rel[:, None, :2],
            ],
            axis=1,
        )  # fmt: skip
        local = rotate_to_frame(world, s.robot_yaw)
        t_rel, way, nrel, g_xy = local[:, 0], local[:, 1] / 0.3, local[:, 2 : 2 + k] / HAZARD_RANGE, local[:, -1]
        tgt = STATE_LAYOUT["target"]
        out[:, tgt] = np.stack(
            [t_rel[:, 0] / t_dist, t_rel[:, 1] / t_dist, t_dist / 10.0, np.where(np.isfinite(path), path, 20.0) / 10.0, np.arctan2(way[:, 1], way[:, 0]) / np.pi],
            axis=1,
        )
        out[:, STATE_LAYOUT["ranges"]] = self.sim.ranges(RANGE_RAYS, RANGE_MAX) / RANGE_MAX
        fragile, dangerous, _ = s.obj_category_flags((ri, near))
        top = s.obj_pos[ri, near, 2] + s.obj_height[ri, near]
        feats = np.stack(
            [
                nrel[..., 0], nrel[..., 1], top, fragile, dangerous,
                self._clustered[ri, near], self._vis_obj[ri, near], np.ones_like(top),
            ],
            axis=-1,
        )  # fmt: skip
        feats *= present[..., None]
        nb = STATE_LAYOUT["nearby"]
        out[:, nb.start : nb.start + k * 8] = feats.reshape(n, -1)
        out[:, STATE_LAYOUT["arm"]] = np.stack(
            [
                s.arm_ext / cat.ARM_EXTENSION_RANGE[1], s.arm_lift / cat.ARM_LIFT_RANGE[1], np.sin(s.wrist), np.cos(s.wrist),
                s.held >= 0, np.clip(g_xy[:, 0], -3, 3), np.clip(g_xy[:, 1], -3, 3), np.clip(g_rel[:, 2], -3, 3),
            ],
            axis=1,
        )  # fmt: skip
        ff = self._lookup(self._free_fraction, s.robot_xy[:, None, :])[:, 0]
        out[:, STATE_LAYOUT["surroundings"]] = np.stack([ff, self._last_collided], axis=1)
        la = STATE_LAYOUT["last_action"]
        out[rows, la.start + self._last_action] = 1.0
        out[:, STATE_LAYOUT["time"]] = (self._t / self.max_episode_steps)[:, None]
        np.clip(out, -10.0, 10.0, out=out)
        return out

    # ---- rendering ------------------------------------------------------------------------

    def render(self, env_index: int = 0, size: int = 256) -> np.ndarray | None:
        """Top-down view of one env with its path and cost events (``render_mode='rgb_array'``)."""
        if self.render_mode is None:
            return None
        from cmdp.envs.chores import render

        t = int(self._t[env_index])
        events = [
            (float(self._path[env_index, k, 0]), float(self._path[env_index, k, 1]), int(c))
            for k, c in zip(*np.nonzero(self._events[env_index, : t + 1]))
        ]
        path = [tuple(p) for p in self._path[env_index, : t + 1]]
        return render.render_topdown(self.scene, env_index, size=size, path=path, events=events)

    def current_specs(self) -> list[EpisodeSpec]:
        return list(self.specs)  # type: ignore[arg-type]

    # ---- exact state ----------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "env": "ChoresEnv",
            "task": self.task,
            "num_envs": self.num_envs,
            "scene": self.scene.state_dict(),
            "rng": self._rng.bit_generator.state,
            "row_rngs": [g.bit_generator.state for g in self.sim.row_rngs],
            "seed_base": self._seed_base,
            "sampler": self.sampler.state_dict(),
            "specs": [None if sp is None else sp.to_dict() for sp in self.specs],
            "t": self._t.copy(),
            "last_action": self._last_action.copy(),
            "last_collided": self._last_collided.copy(),
            "prev_dist": self._prev_dist.copy(),
            "ep_cost": self._ep_cost.copy(),
            "path": self._path.copy(),
            "events": self._events.copy(),
            "costs": {
                "prev": {k: getattr(self.costs.prev, k) for k in ("pos", "rot", "valid", "movable", "dangerous", "visible", "held", "contacted", "collided", "free_fraction", "acted", "fell")}
                if self.costs.prev is not None
                else None,
                "step_count": self.costs.step_count.copy(),
                "last_seen": self.costs.last_seen.copy(),
                "cumulative": self.costs.cumulative.copy(),
            },
            "started": self._started,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("env") != "ChoresEnv":
            raise CheckpointError("not a Safety-CHORES env state")
        if state["task"] != self.task or int(state["num_envs"]) != self.num_envs:
            raise CheckpointError(
                f"the saved state is for {state['task']} with {state['num_envs']} envs; this env runs "
                f"{self.task} with {self.num_envs}"
            )
        try:
            self.scene.load_state_dict(state["scene"])
        except ValueError as e:
            raise CheckpointError(f"Safety-CHORES state does not fit: {e}") from e
        rng = np.random.default_rng()
        rng.bit_generator.state = dict(state["rng"])
        self._rng = rng
        self._seed_base = int(state["seed_base"])
        for g, saved in zip(self.sim.row_rngs, state["row_rngs"]):
            g.bit_generator.state = dict(saved)
        self.sampler.load_state_dict(state["sampler"])
        self.specs = [None if d is None else EpisodeSpec.from_dict(d) for d in state["specs"]]
        for r, spec in enumerate(self.specs):
            if spec is None:
                continue
            self._set_grids(r, goal_distance_everywhere(spec), grid_of(spec.house).free_fraction)
            self._targets[r] = False
            self._targets[r, spec.targets()] = True
            self._tokens[r] = text.encode(spec.instruction)
        self._clustered = cluster_members(self.scene.obj_pos, self.scene.obj_valid)
        self._t = np.asarray(state["t"]).copy()
        self._last_action = np.asarray(state["last_action"]).copy()
        self._last_collided = np.asarray(state["last_collided"]).copy()
        self._prev_dist = np.asarray(state["prev_dist"]).copy()
        self._ep_cost = np.asarray(state["ep_cost"]).copy()
        self._path = np.asarray(state["path"]).copy()
        self._events = np.asarray(state["events"]).copy()
        c = state["costs"]
        self.costs.prev = None if c["prev"] is None else Snapshot(**{k: None if v is None else np.array(v) for k, v in c["prev"].items()})
        self.costs.step_count = np.asarray(c["step_count"]).copy()
        self.costs.last_seen = np.asarray(c["last_seen"]).copy()
        self.costs.cumulative = np.asarray(c["cumulative"]).copy()
        self._vis_obj, _ = self.sim.visibility(self.camera_geometry)
        self._started = bool(state["started"])

    def check_actions(self, actions: Any) -> np.ndarray:
        arr = super().check_actions(actions)
        return arr.astype(np.int64, copy=False)


def make_chores(task: str):
    def factory(num_envs: int = 1, seed: int | None = None, **kwargs: Any) -> ChoresEnv:
        return ChoresEnv(task, num_envs=num_envs, seed=seed, **kwargs)

    factory.__name__ = f"make_{task.lower()}"
    return factory
