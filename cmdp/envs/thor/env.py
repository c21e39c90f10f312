"""Safety-CHORES on AI2-THOR: the single env that drives one controller, and the vector env.

:class:`ThorChoresSingleEnv` is a gymnasium env around one controller (a
:class:`~cmdp.envs.thor.controller.StretchController`, or any object with its methods, such as
the replaying test double of the tests). An episode:

1. picks a house file from ``houses_dir`` and resets the controller to it;
2. picks a target type present in the house (pickupable for PickUp and Fetch) and the
   instruction from the shared templates (:mod:`cmdp.envs.chores.text`);
3. places the agent with ``Teleport``: ObjectNav and Fetch on a random reachable position
   facing a random multiple of 30 degrees, PickUp on the reachable position nearest to a
   target, facing it;
4. builds the episode's entity table (:class:`~cmdp.envs.thor.metadata.EpisodeEntities`) and
   resets its one-env :class:`~cmdp.envs.chores.costs.SafetyCostLayer`.

Each step maps the SPOC action to the controller, turns the event's metadata into a snapshot
and charges the five costs on that same step. ObjectNav ends on ``end`` and succeeds if a
target-type object is visible within 2 m; PickUp and Fetch succeed, and end, when a target-type
object is held, and also end on ``end``. Reward ``success_reward`` (+10) on success, else 0.
The horizon (500 steps, 600 for ``split="eval"``) truncates.

Observations are those of the built-in simulator's ``obs_mode="rgb"``: ``rgb_nav`` and
``rgb_manip`` (the 396x224 frames cropped to 384x224 as SafeVLA, then resized to
``image_size``), ``instruction`` (token ids), ``holding`` (0/1), ``last_action``
(``catalog.NO_ACTION`` before the first step) and ``time_step``; with ``detection=True`` also
the target boxes of :data:`~cmdp.envs.chores.env.BOX_KEYS`, from each camera's instance
segmentation (:func:`segmentation_box`).

:class:`ThorChoresEnv` runs N single envs through :func:`cmdp.core.gym_adapter.from_env_fns`:
one worker process per controller (``vectorization="subproc"``, the default for N > 1, with
crash restart: AI2-THOR does crash) or all in this process (``"sync"``). It adds to ``info``
what the built-in env reports: ``success`` at every step, ``cost_events`` ([N, 5]),
``cost_breakdown`` ({cost name: [N]}) and, where episodes ended, ``episode`` (per finished env
its success, length and summed costs).
"""

from __future__ import annotations

import functools
import gzip
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np

from cmdp.core.gym_adapter import from_env_fns
from cmdp.core.vector import VectorCMDP
from cmdp.envs.chores import catalog as cat
from cmdp.envs.chores import text
from cmdp.envs.chores.costs import COST_NAMES, SafetyCostLayer
from cmdp.envs.thor import metadata as md
from cmdp.envs.thor.controller import CROP_FRACTION, StretchController, ThorSettings, ThorStep, preflight, type_word
from cmdp.errors import ConfigError

HOUSE_SUFFIXES = (".json", ".json.gz")
HOUSE_KEYS = ("rooms", "walls", "objects")  # what makes a dict a ProcTHOR house
PICKUP_START_RADIUS = 1.0  # m: PickUp starts on a reachable position this close to a target
MAX_HOUSE_TRIES = 20  # houses tried for one episode before the house set counts as unusable
MAX_START_TRIES = 20  # reachable positions tried for the start pose

ControllerFactory = Callable[[ThorSettings], Any]


# ---- houses -----------------------------------------------------------------------------------


def find_house_files(houses_dir: str | Path) -> list[Path]:
    """The house files in ``houses_dir``, sorted, or a ConfigError saying what is missing."""
    root = Path(houses_dir).expanduser()
    hint = (
        "Houses are never downloaded at run time: on a machine with network, save ProcTHOR houses "
        "one per file (e.g. from the prior package: prior.load_dataset('procthor-10k')) and copy "
        "the directory here"
    )
    if not root.is_dir():
        raise ConfigError(f"houses_dir {str(root)!r} is not a directory. {hint}")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(HOUSE_SUFFIXES))
    if not files:
        raise ConfigError(f"houses_dir {str(root)!r} holds no ProcTHOR house files (*.json, *.json.gz). {hint}")
    return files


def load_house(path: str | Path) -> dict[str, Any]:
    """Read one ProcTHOR house (plain or gzipped JSON) and check that it looks like one."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            house = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the house file {str(path)!r}: {e}") from e
    if not isinstance(house, dict):
        raise ConfigError(f"the house file {str(path)!r} holds a {type(house).__name__}, not a ProcTHOR house object")
    missing = [k for k in HOUSE_KEYS if not isinstance(house.get(k), list)]
    if missing:
        raise ConfigError(f"the house file {str(path)!r} is not a ProcTHOR house: it lacks the lists {missing}")
    return house


# ---- observations -----------------------------------------------------------------------------


def safevla_crop(frame: np.ndarray) -> np.ndarray:
    """The part of a rendered frame the policy sees: 6/396 of the width off each side, RGB."""
    frame = np.asarray(frame)
    cut = round(frame.shape[1] * CROP_FRACTION)
    return frame[:, cut : frame.shape[1] - cut, :3]


def camera_image(frame: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
    """A camera frame cropped as SafeVLA (:func:`safevla_crop`) and resized to ``size`` =
    (height, width), uint8 RGB. A missing frame (rendering off) is black."""
    h, w = size
    if frame is None:
        return np.zeros((h, w, 3), dtype=np.uint8)
    from PIL import Image

    crop = np.ascontiguousarray(safevla_crop(frame), dtype=np.uint8)
    if crop.shape[:2] == (h, w):
        return crop
    return np.asarray(Image.fromarray(crop).resize((w, h), Image.BILINEAR), dtype=np.uint8)


def segmentation_box(segmentation: np.ndarray | None, object_colors: Mapping[str, Any], target_ids: Sequence[str]) -> np.ndarray:
    """The built-in simulator's target box (:func:`cmdp.envs.chores.env.target_boxes`: float32
    ``(seen, x_min, y_min, x_max, y_max)`` as fractions of the image) from an AI2-THOR instance
    segmentation frame, cropped as the camera (:func:`safevla_crop`): the box of the pixels
    whose colour is that of one of ``target_ids`` in ``object_colors`` (``event.object_id_to_color``).
    All zeros when no target pixel is in view or the frame is missing."""
    from cmdp.envs.chores.env import target_boxes

    colors = [object_colors[i] for i in target_ids if i in object_colors]
    if segmentation is None or not colors:
        return np.zeros(5, dtype=np.float32)
    pixels = safevla_crop(segmentation).astype(np.int32)
    codes = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    wanted = [(int(r) << 16) | (int(g) << 8) | int(b) for r, g, b in colors]
    pixel_ids = np.where(np.isin(codes, wanted), 0, -1)[None]  # object 0: "a target"
    return target_boxes(pixel_ids, np.ones((1, 1), dtype=bool))[0]


def observation_space(settings: ThorSettings) -> gym.spaces.Dict:
    """The built-in simulator's ``obs_mode="rgb"`` space, at ``settings.image_size`` (with the
    target boxes when ``settings.detection``)."""
    from cmdp.envs.chores.env import rgb_observation_space

    return rgb_observation_space(settings.image_size, settings.horizon, settings.detection)


# ---- one env ----------------------------------------------------------------------------------


class ThorChoresSingleEnv(gym.Env):
    """One Safety-CHORES env on one AI2-THOR controller. See the module docstring.

    ``info`` at every step: ``cost`` (the five costs, the order of ``cost_names``),
    ``cost_breakdown`` ({name: cost}), ``collided`` and ``success``; ``reset`` reports the
    episode's ``house`` file, ``target_type`` and ``instruction``.
    """

    metadata = {"render_modes": []}

    def __init__(self, settings: ThorSettings, controller_factory: ControllerFactory | None = None) -> None:
        self.settings = settings
        self.house_files = find_house_files(settings.houses_dir)
        self.cost_names = COST_NAMES
        self.action_space = gym.spaces.Discrete(cat.NUM_ACTIONS)
        self.observation_space = observation_space(settings)
        self.controller = (controller_factory or StretchController)(settings)
        self.costs = SafetyCostLayer(1, settings.max_entities)
        self.entities: md.EpisodeEntities | None = None
        self.target_type = ""
        self._target_ids: list[str] = []  # objects of the target type: any of them completes the task
        self.house_file: Path | None = None
        self._tokens = np.zeros(text.MAX_TOKENS, dtype=np.int64)
        self._instruction = ""
        self._t = 0
        self._last: ThorStep | None = None
        self._last_action = cat.NO_ACTION

    # ---- episodes -------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        rng = self.np_random
        s = self.settings
        tried: list[str] = []
        for _ in range(min(MAX_HOUSE_TRIES, len(self.house_files))):
            path = self.house_files[int(rng.integers(len(self.house_files)))]
            tried.append(path.name)
            first = self.controller.reset(load_house(path), rng)
            types = sorted(
                {
                    o["objectType"]
                    for o in first.metadata["objects"]
                    if o["objectType"] in s.target_types and (s.task == "ObjectNav" or o.get("pickupable"))
                }
            )
            if not types:
                continue
            target = types[int(rng.integers(len(types)))]
            reachable = self.controller.reachable_positions()
            placed = self._place(reachable, first.metadata, target, rng) if reachable else None
            if placed is None:
                continue
            self._begin(path, target, reachable, placed, rng)
            info = {"house": path.name, "target_type": target, "instruction": self._instruction}
            return self._observe(placed), info
        raise ConfigError(
            f"no usable house for {s.task} among {sorted(set(tried))} in {s.houses_dir!r}: each needs an "
            f"object of the target types {list(s.target_types)}"
            + (" that is pickupable" if s.task != "ObjectNav" else "")
            + " and a free reachable position for the agent"
        )

    def _place(
        self, reachable: list[Mapping[str, float]], metadata: Mapping[str, Any], target: str, rng: np.random.Generator
    ) -> ThorStep | None:
        points = md.reachable_floor_points(reachable)
        if self.settings.task == "PickUp":
            goals = np.array([(o["position"]["x"], o["position"]["z"]) for o in md.objects_of_type(metadata, target)])
            d = np.linalg.norm(points[:, None, :] - goals[None, :, :], axis=-1)
            nearest = d.argmin(axis=1)
            dist = d[np.arange(len(points)), nearest]
            order = [int(i) for i in np.argsort(dist, kind="stable") if dist[i] <= PICKUP_START_RADIUS]
        else:
            order = [int(i) for i in rng.permutation(len(points))]
        for i in order[:MAX_START_TRIES]:
            if self.settings.task == "PickUp":
                dx, dz = goals[nearest[i]] - points[i]
                yaw = math.degrees(math.atan2(dx, dz)) % 360.0  # Unity: yaw 0 faces +z, 90 faces +x
            else:
                yaw = 30.0 * int(rng.integers(12))
            placed = self.controller.teleport(reachable[i], yaw)
            if placed is not None:
                return placed
        return None

    def _begin(
        self, path: Path, target: str, reachable: list[Mapping[str, float]], placed: ThorStep, rng: np.random.Generator
    ) -> None:
        s = self.settings
        self.house_file, self.target_type = path, target
        self._target_ids = [o["objectId"] for o in md.objects_of_type(placed.metadata, target)]
        template = int(rng.integers(len(text.TEMPLATES[s.task])))
        self._instruction = text.instruction(s.task, type_word(target), template)
        self._tokens = text.encode(self._instruction)
        self.entities = md.EpisodeEntities(
            placed.metadata, reachable, max_entities=s.max_entities, grid_size=s.grid_size, dangerous_types=s.dangerous_types
        )
        self.costs.reset(np.array([0]), md.stack_rows([self.entities.first_row(placed.metadata, placed.seen_ids)]))
        self._t = 0
        self._last_action = cat.NO_ACTION
        self._last = placed

    # ---- steps ----------------------------------------------------------------------------

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        if self.entities is None:
            raise RuntimeError("ThorChoresSingleEnv: call reset() before step()")
        index = int(action)
        if not 0 <= index < cat.NUM_ACTIONS:
            raise ConfigError(f"action {action!r} is outside Discrete({cat.NUM_ACTIONS})")
        name = cat.ACTIONS[index]
        record = self.controller.step(name)
        row = self.entities.row(record.metadata, record.seen_ids, name)
        cost = self.costs.step(md.stack_rows([row])).cost[0]
        self._t += 1
        self._last_action = index
        self._last = record
        if self.settings.task == "ObjectNav":
            terminated = name == "end"
            success = terminated and md.objectnav_success(
                record.metadata, self.controller.visible_object_ids(md.SUCCESS_DISTANCE), self.target_type
            )
        else:
            success = md.holding_target(record.metadata, self.target_type)
            terminated = success or name == "end"
        truncated = not terminated and self._t >= self.settings.horizon
        info = {
            "cost": cost.copy(),
            "cost_breakdown": dict(zip(COST_NAMES, cost.tolist())),
            "collided": row.collided,
            "success": bool(success),
        }
        reward = self.settings.success_reward if success else 0.0
        return self._observe(record), reward, terminated, truncated, info

    def _observe(self, record: ThorStep) -> dict[str, Any]:
        size = self.settings.image_size
        obs = {
            "rgb_nav": camera_image(record.nav_frame, size),
            "rgb_manip": camera_image(record.manip_frame, size),
            "instruction": self._tokens.copy(),
            "holding": int(bool(md.held_ids(record.metadata))),
            "last_action": int(self._last_action),
            "time_step": np.array([self._t], dtype=np.int64),
        }
        if self.settings.detection:
            from cmdp.envs.chores.env import BOX_KEYS

            for key, segmentation in zip(BOX_KEYS, (record.nav_segmentation, record.manip_segmentation)):
                obs[key] = segmentation_box(segmentation, record.object_colors, self._target_ids)
        return obs

    def close(self) -> None:
        controller, self.controller = getattr(self, "controller", None), None
        if controller is not None:
            controller.close()


def _single_env(settings: ThorSettings, controller_factory: ControllerFactory | None) -> ThorChoresSingleEnv:
    # module level so that worker processes can unpickle it
    return ThorChoresSingleEnv(settings, controller_factory)


# ---- the vector env ---------------------------------------------------------------------------


class ThorChoresEnv(VectorCMDP):
    """N Safety-CHORES envs on AI2-THOR. See the module docstring.

    Args:
        task: ``"ObjectNav"``, ``"PickUp"`` or ``"Fetch"``.
        num_envs, seed: as for every vector env (env i is seeded with ``seed + i``).
        houses_dir: local directory of ProcTHOR house JSON files (required).
        vectorization: any mode of :func:`~cmdp.core.gym_adapter.from_env_fns`: ``"subproc"``
            (one worker process per controller, restarted when it crashes; the default for
            ``num_envs > 1``) or ``"sync"`` (all in this process; the default for one env).
        controller_factory: ``factory(settings)`` returning a controller; default
            :class:`~cmdp.envs.thor.controller.StretchController`. Anything else skips the
            check for ``ai2thor`` and a local build.
        step_timeout: worker modes only: seconds a worker may take for a step or reset
            (default: the controller's ``server_timeout`` plus a minute).
        max_restarts: worker modes only: worker restarts in a row before giving up.
        **settings: fields of :class:`~cmdp.envs.thor.controller.ThorSettings`.
    """

    def __init__(
        self,
        task: str,
        num_envs: int = 1,
        seed: int | None = None,
        *,
        houses_dir: str | Path | None = None,
        vectorization: str | None = None,
        controller_factory: ControllerFactory | None = None,
        step_timeout: float | None = None,
        max_restarts: int = 3,
        **settings: Any,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ConfigError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        unknown = sorted(set(settings) - set(ThorSettings.__dataclass_fields__) - {"task", "houses_dir"})
        if unknown:
            allowed = sorted(set(ThorSettings.__dataclass_fields__) - {"task", "houses_dir"})
            raise ConfigError(f"SafetyChoresThor: unknown options {unknown}; allowed: {allowed}")
        self.settings = ThorSettings(task=task, houses_dir=None if houses_dir is None else str(houses_dir), **settings)
        find_house_files(self.settings.houses_dir)
        if controller_factory is None:
            preflight(self.settings)
        if vectorization is None:
            vectorization = "subproc" if num_envs > 1 else "sync"
        fn = functools.partial(_single_env, self.settings, controller_factory)
        self._inner = from_env_fns(
            [fn] * num_envs,
            cost_names=COST_NAMES,
            vectorization=vectorization,
            seed=seed,
            step_timeout=step_timeout if step_timeout is not None else self.settings.server_timeout + 60.0,
            max_restarts=max_restarts,
        )
        self.task = task
        self.num_envs = num_envs
        self.observation_space = self._inner.observation_space
        self.action_space = self._inner.action_space
        self.cost_names = COST_NAMES
        self.max_episode_steps = self.settings.horizon
        self._ep_cost = np.zeros((num_envs, len(COST_NAMES)))
        self._ep_len = np.zeros(num_envs, dtype=np.int64)

    def reset(self, *, seed: int | None = None) -> tuple[Any, dict]:
        obs, info = self._inner.reset(seed=seed)
        self._ep_cost[:] = 0.0
        self._ep_len[:] = 0
        return obs, info

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, reward, cost, terminated, truncated, info = self._inner.step(actions)
        info = dict(info)
        success = np.asarray(info.get("success", np.zeros(self.num_envs, dtype=bool)), dtype=bool)
        info["success"] = success
        info["cost_events"] = cost
        info["cost_breakdown"] = {name: cost[:, k] for k, name in enumerate(COST_NAMES)}
        self._ep_cost += cost
        self._ep_len += 1
        done = terminated | truncated
        if done.any():
            idx = np.flatnonzero(done)
            info["episode"] = [
                {
                    "env": int(i),
                    "success": bool(success[i]),
                    "length": int(self._ep_len[i]),
                    "costs": dict(zip(COST_NAMES, self._ep_cost[i].tolist())),
                }
                for i in idx
            ]
            self._ep_cost[idx] = 0.0
            self._ep_len[idx] = 0
        return obs, reward, cost, terminated, truncated, info

    @property
    def envs(self) -> list[ThorChoresSingleEnv]:
        """The single envs (``vectorization="sync"`` only), for inspection."""
        return list(getattr(self._inner, "envs", []))

    def close(self) -> None:
        inner = getattr(self, "_inner", None)
        if inner is not None:
            inner.close()
