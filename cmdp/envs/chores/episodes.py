"""Episode specifications of Safety-CHORES and where episodes come from.

An :class:`EpisodeSpec` fixes one episode completely: the task, the house (a layout, so
specs are portable and exact), the robot's start pose, the target and the instruction. Specs
round-trip through JSON (``to_dict`` / ``from_dict``); evaluation sets ship as gzipped JSON
lists of them (see :mod:`cmdp.envs.chores.eval_sets`).

Training episodes are drawn by :func:`sample_episode` from training houses whose seeds lie in
``[0, num_train_houses)``; evaluation houses use seeds from ``EVAL_SEED_BASE`` upwards, so the
two never share a house. :class:`EpisodeSampler` hands each env its next episode: fresh
training episodes, a fixed list cycled in order, or a mixture of the two (how elicited
scenarios enter training).
"""

from __future__ import annotations

import gzip
import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from cmdp.envs.chores import catalog as cat
from cmdp.envs.chores import text
from cmdp.envs.chores.house import House, HouseGrid, HouseParams, generate_house, grid_of
from cmdp.errors import ConfigError

EVAL_SEED_BASE = 1_000_000
"""Evaluation houses use seeds >= this; training houses seeds below ``num_train_houses``."""
OBJECTNAV_SUCCESS_DISTANCE = 2.0  # m: ObjectNav succeeds on ``end`` with a target visible this close
OBJECTNAV_GOAL_DISTANCE = 1.2  # m: where the shortest-path expert aims to stop for ObjectNav
MIN_START_DISTANCE = 2.0  # m of path from the start to the goal region (ObjectNav, Fetch)


@dataclass
class EpisodeSpec:
    """One episode. ``target_index`` is the target object's index in ``house`` (PickUp, Fetch),
    or -1 for ObjectNav, where any object of ``target_category`` counts."""

    task: str
    house: House
    start: tuple[float, float, float]
    target_category: str
    target_index: int
    instruction: str
    episode_id: str = ""
    expert_length: int | None = None
    tags: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in text.TASKS:
            raise ConfigError(f"unknown task {self.task!r}; allowed: {', '.join(text.TASKS)}")
        if self.target_category not in cat.CATEGORY_INDEX:
            raise ConfigError(f"unknown target category {self.target_category!r}")
        if self.task != "ObjectNav":
            if not (0 <= self.target_index < self.house.num_objects):
                raise ConfigError(f"{self.task} needs a target object index in the house, got {self.target_index}")
            if self.house.obj_cat[self.target_index] != cat.CATEGORY_INDEX[self.target_category]:
                raise ConfigError("target_index does not point at an object of target_category")
        self.start = tuple(float(v) for v in self.start)

    def targets(self) -> np.ndarray:
        """Indices of the objects that count as the target."""
        if self.task == "ObjectNav":
            return self.house.objects_of(self.target_category)
        return np.array([self.target_index])

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "house": self.house.to_dict(),
            "start": [round(v, 4) for v in self.start],
            "target_category": self.target_category,
            "target_index": int(self.target_index),
            "instruction": self.instruction,
            "episode_id": self.episode_id,
            "expert_length": self.expert_length,
            "tags": self.tags,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EpisodeSpec":
        try:
            return cls(
                task=data["task"],
                house=House.from_dict(data["house"]),
                start=tuple(data["start"]),
                target_category=data["target_category"],
                target_index=int(data["target_index"]),
                instruction=data["instruction"],
                episode_id=data.get("episode_id", ""),
                expert_length=data.get("expert_length"),
                tags=dict(data.get("tags", {})),
            )
        except KeyError as e:
            raise ConfigError(f"episode spec lacks the key {e}") from None


def save_episodes(specs: Sequence[EpisodeSpec], path: str | Path) -> Path:
    path = Path(path)
    payload = json.dumps([s.to_dict() for s in specs], separators=(",", ":"))
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as f:
        f.write(payload)
    return path


def load_episodes(path: str | Path) -> list[EpisodeSpec]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no episode file at {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is not a readable episode file: {e}") from e
    return [EpisodeSpec.from_dict(d) for d in data]


# ---- goals ----------------------------------------------------------------------------------


def goal_cells(spec: EpisodeSpec, grid: HouseGrid) -> np.ndarray:
    """Free cells where the task's goal is reached: within arm's reach of the target (PickUp,
    Fetch) or within ``OBJECTNAV_GOAL_DISTANCE`` of any target instance (ObjectNav)."""
    cells = np.zeros_like(grid.free)
    for i in spec.targets():
        xy, z = spec.house.obj_pos[i, :2], spec.house.obj_pos[i, 2]
        if spec.task == "ObjectNav":
            cells |= grid.reach_cells(xy, reach=OBJECTNAV_GOAL_DISTANCE, target_z=z)
        else:
            cells |= grid.reach_cells(xy, target_z=z)
    return cells


_FIELDS: "OrderedDict[tuple, np.ndarray]" = OrderedDict()


def goal_distance(spec: EpisodeSpec, max_cached: int = 2048) -> np.ndarray:
    """Shortest-path distance field (m) to the goal region of ``spec`` (cached)."""
    key = (spec.house.key, spec.task, spec.target_category, spec.target_index)
    field_ = _FIELDS.get(key)
    if field_ is None:
        grid = grid_of(spec.house)
        field_ = grid.distance_field(goal_cells(spec, grid)).astype(np.float32)
        _FIELDS[key] = field_
        if len(_FIELDS) > max_cached:
            _FIELDS.popitem(last=False)
    else:
        _FIELDS.move_to_end(key)
    return field_


# ---- sampling -------------------------------------------------------------------------------


class HouseCache:
    """Generated training houses by seed (LRU): generating one takes milliseconds, and a run
    revisits its houses."""

    def __init__(self, params: HouseParams, capacity: int = 1024) -> None:
        self.params = params
        self.capacity = capacity
        self._houses: "OrderedDict[int, House]" = OrderedDict()

    def get(self, seed: int) -> House:
        house = self._houses.get(seed)
        if house is None:
            house = generate_house(seed, self.params)
            self._houses[seed] = house
            if len(self._houses) > self.capacity:
                self._houses.popitem(last=False)
        else:
            self._houses.move_to_end(seed)
        return house


def _reachable_targets(house: House, grid: HouseGrid) -> list[tuple[str, int]]:
    out = []
    for name in cat.TARGET_CATEGORIES:
        for i in house.objects_of(name):
            if grid.reach_cells(house.obj_pos[i, :2], target_z=house.obj_pos[i, 2]).any():
                out.append((name, int(i)))
    return out


def sample_episode(
    task: str,
    house: House,
    rng: np.random.Generator,
    paraphrase: bool = False,
    episode_id: str = "",
    target_category: str | None = None,
) -> EpisodeSpec:
    """A random episode of ``task`` in ``house``: a reachable target and a start pose.

    ObjectNav and Fetch start at least ``MIN_START_DISTANCE`` of path from the goal region when
    the house allows it (else as far as it allows); PickUp starts within arm's reach of the
    target, facing it within 20 degrees, as SPOC's PickUp episodes start with the target in view.
    """
    grid = grid_of(house)
    options = _reachable_targets(house, grid)
    if target_category is not None:
        options = [o for o in options if o[0] == target_category]
    if not options:
        raise ConfigError(f"house {house.seed} has no reachable target{'' if target_category is None else ' ' + target_category}")
    name, index = options[int(rng.integers(len(options)))]
    instr_template = int(rng.integers(16))
    instruction = text.instruction(task, name, instr_template, paraphrase=paraphrase)
    spec = EpisodeSpec(task, house, (0.0, 0.0, 0.0), name, index if task != "ObjectNav" else -1, instruction, episode_id)
    dist = goal_distance(spec)
    target_xy = house.obj_pos[index, :2]
    if task == "PickUp":
        cells = grid.reach_cells(target_xy, target_z=house.obj_pos[index, 2]) & np.isfinite(dist)
        cells &= (grid.xs[None, :] - target_xy[0]) ** 2 + (grid.ys[:, None] - target_xy[1]) ** 2 <= 0.7**2
        if not cells.any():
            cells = grid.reach_cells(target_xy, target_z=house.obj_pos[index, 2])
        iy, ix = _choose(cells, rng)
        x, y = grid.xs[ix], grid.ys[iy]
        yaw = math.atan2(target_xy[1] - y, target_xy[0] - x) + float(rng.uniform(-0.35, 0.35))
    else:
        reachable = grid.free & np.isfinite(dist)
        far = reachable & (dist >= MIN_START_DISTANCE)
        cells = far if far.any() else reachable & (dist >= np.nanmax(np.where(reachable, dist, np.nan)) * 0.5)
        iy, ix = _choose(cells, rng)
        x, y = grid.xs[ix], grid.ys[iy]
        yaw = float(rng.integers(12)) * math.pi / 6
    spec.start = (round(float(x), 4), round(float(y), 4), round(float(math.remainder(yaw, 2 * math.pi)), 4))
    return spec


def _choose(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    flat = np.flatnonzero(mask.ravel())
    k = int(flat[rng.integers(flat.size)])
    return divmod(k, mask.shape[1])


class EpisodeSampler:
    """Chooses each env's next episode.

    ``fixed``: a list cycled in order, env ``i`` starting at position ``i`` and stepping by the
    number of envs (so N envs cover the list once, in order, between them). Without ``fixed``,
    fresh training episodes. With both and ``mix`` in (0, 1], each episode comes from ``fixed``
    (drawn at random) with probability ``mix``, else it is a fresh training episode.
    """

    def __init__(
        self,
        task: str,
        num_envs: int,
        params: HouseParams,
        num_train_houses: int = 10_000,
        fixed: Sequence[EpisodeSpec] | None = None,
        mix: float | None = None,
        paraphrase: bool = False,
    ) -> None:
        if task not in text.TASKS:
            raise ConfigError(f"unknown task {task!r}; allowed: {', '.join(text.TASKS)}")
        self.task = task
        self.num_envs = num_envs
        self.houses = HouseCache(params)
        self.num_train_houses = int(num_train_houses)
        if self.num_train_houses < 1 or self.num_train_houses > EVAL_SEED_BASE:
            raise ConfigError(f"num_train_houses must be in [1, {EVAL_SEED_BASE}], got {num_train_houses}")
        self.fixed = list(fixed) if fixed is not None else None
        if self.fixed is not None and not self.fixed:
            raise ConfigError("the episode list is empty")
        if mix is not None and not (0.0 <= float(mix) <= 1.0):
            raise ConfigError(f"mix must be in [0, 1], got {mix}")
        self.mix = mix
        self.paraphrase = paraphrase
        self.cursor = np.arange(num_envs, dtype=np.int64)
        self.count = 0

    def next(self, row: int, rng: np.random.Generator) -> EpisodeSpec:
        self.count += 1
        if self.fixed is not None and self.mix is None:
            spec = self.fixed[int(self.cursor[row]) % len(self.fixed)]
            self.cursor[row] += self.num_envs
            return spec
        if self.fixed is not None and rng.random() < float(self.mix):
            return self.fixed[int(rng.integers(len(self.fixed)))]
        seed = int(rng.integers(self.num_train_houses))
        house = self.houses.get(seed)
        return sample_episode(self.task, house, rng, self.paraphrase, episode_id=f"train-{seed}-{self.count}")

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor.copy(), "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.cursor = np.asarray(state["cursor"], dtype=np.int64).copy()
        self.count = int(state["count"])


def specs_from(source: Iterable[EpisodeSpec | Mapping[str, Any]]) -> list[EpisodeSpec]:
    return [s if isinstance(s, EpisodeSpec) else EpisodeSpec.from_dict(s) for s in source]
