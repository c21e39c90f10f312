"""Episode specifications of Safety-CHORES and where episodes come from.

An :class:`EpisodeSpec` fixes one episode completely: the task, the house (a layout, so
specs are portable and exact), the robot's start pose, the target and the instruction. Specs
round-trip through JSON (``to_dict`` / ``from_dict``); evaluation sets ship as gzipped JSON
lists of them (see :mod:`cmdp.envs.chores.eval_sets`).

Training episodes are drawn by :func:`sample_episode` from training houses whose seeds lie in
``[0, num_train_houses)`` (1,000 by default: each is generated on first use, in about 10 ms, and
then cached; ProcTHOR-10k has 10,000 houses, and ``num_train_houses`` goes up to a million);
evaluation houses use seeds from ``EVAL_SEED_BASE`` upwards, so the
two never share a house. :class:`EpisodeSampler` hands each env its next episode: fresh
training episodes, a fixed list cycled in order, or a mixture of the two (how elicited
scenarios enter training).
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from cmdp.envs.chores import catalog as cat
from cmdp.envs.chores import text
from cmdp.envs.chores.cache import BoundedCache
from cmdp.envs.chores.geometry import point_box_distance2
from cmdp.envs.chores.house import GRID_RES, House, HouseGrid, HouseParams, add_object, generate_house, grid_of
from cmdp.errors import ConfigError

EVAL_SEED_BASE = 1_000_000
"""Evaluation houses use seeds >= this; training houses seeds below ``num_train_houses``."""
OBJECTNAV_SUCCESS_DISTANCE = 2.0  # m: ObjectNav succeeds on ``end`` with a target visible this close
OBJECTNAV_GOAL_DISTANCE = 1.2  # m: where the shortest-path expert aims to stop for ObjectNav
MIN_START_DISTANCE = 2.0  # m of path from the start to the goal region (ObjectNav, Fetch)
CRAMPED_START_PROB = 0.3  # PickUp: chance of starting in a cramped spot when the target has one
CRAMPED_START_FRACTION = 0.45
PICKUP_ARM_OUT_PROB = 0.5


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
    arm: tuple[float, float] | None = None  # (extension, lift) at the start; None: stowed

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
            "arm": None if self.arm is None else [round(float(v), 4) for v in self.arm],
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
                arm=None if data.get("arm") is None else tuple(float(v) for v in data["arm"]),
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


_FIELDS: BoundedCache[np.ndarray] = BoundedCache(2048)


def field_key(spec: EpisodeSpec) -> tuple:
    """What a goal distance field depends on: the layout, the task and where the targets are."""
    return (spec.house.layout_key, spec.task, spec.house.obj_pos[spec.targets()].round(4).tobytes())


def goal_distance(spec: EpisodeSpec) -> np.ndarray:
    """Shortest-path distance field (m) to the goal region of ``spec`` (cached)."""

    def make() -> np.ndarray:
        grid = grid_of(spec.house)
        return grid.distance_field(goal_cells(spec, grid)).astype(np.float32)

    return _FIELDS.get(field_key(spec), make)


_FILLED: BoundedCache[np.ndarray] = BoundedCache(2048)


def goal_distance_everywhere(spec: EpisodeSpec) -> np.ndarray:
    """:func:`goal_distance` extended to the cells off the planning grid (closer to a wall than
    the planning clearance, where a robot can still be): such a cell reads the distance of the
    nearest planned cell plus the straight distance to it. What the env observes and shapes its
    reward with, so both stay finite wherever the robot goes."""

    def make() -> np.ndarray:
        field_ = goal_distance(spec)
        finite = np.isfinite(field_)
        if finite.any() and not finite.all():
            gap, (iy, ix) = ndimage.distance_transform_edt(~finite, return_indices=True)
            return (field_[iy, ix] + gap * GRID_RES).astype(np.float32)
        return field_

    return _FILLED.get(field_key(spec), make)


# ---- sampling -------------------------------------------------------------------------------


class HouseCache:
    """Generated training houses by seed (least recently used dropped first): generating one
    takes milliseconds, and a run revisits its houses."""

    def __init__(self, params: HouseParams, capacity: int = 1024) -> None:
        self.params = params
        self.capacity = capacity
        self._houses: BoundedCache[House] = BoundedCache(capacity)

    def get(self, seed: int) -> House:
        return self._houses.get(seed, lambda: generate_house(seed, self.params))


_REACHABLE: BoundedCache[list[tuple[str, int]]] = BoundedCache(4096)


def _reachable_targets(house: House, grid: HouseGrid) -> list[tuple[str, int]]:
    """The (category, index) of every target object within reach of some free cell (cached)."""

    def make() -> list[tuple[str, int]]:
        return [
            (name, int(i))
            for name in cat.TARGET_CATEGORIES
            for i in house.objects_of(name)
            if grid.reach_cells(house.obj_pos[i, :2], target_z=house.obj_pos[i, 2]).any()
        ]

    return _REACHABLE.get(house.key, make)


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
    target, facing it within 40 degrees (in view), as SPOC's PickUp episodes start.
    """
    grid = grid_of(house)
    options = _reachable_targets(house, grid)
    if target_category is not None:
        options = [o for o in options if o[0] == target_category]
    if not options:
        raise ConfigError(f"house {house.seed} has no reachable target{'' if target_category is None else ' ' + target_category}")
    first = int(rng.integers(len(options)))
    instr_template = int(rng.integers(16))
    clear = _clear_of_floor_objects(house, grid)
    # The drawn target nearly always has a start; when it has none, the next targets are tried
    # in order (no further draws, so every other episode keeps its random stream).
    for name, index in options[first:] + options[:first]:
        instruction = text.instruction(task, name, instr_template, paraphrase=paraphrase)
        spec = EpisodeSpec(task, house, (0.0, 0.0, 0.0), name, index if task != "ObjectNav" else -1, instruction, episode_id)
        dist = goal_distance(spec)
        starts = None if task == "PickUp" else _navigation_starts(grid, dist, clear)
        if starts is None or starts.any():
            break
    else:
        raise ConfigError(f"house {house.seed} has no start cell from which a {task} target can be reached")
    target_xy = house.obj_pos[index, :2]
    if task == "PickUp":
        cells = grid.reach_cells(target_xy, target_z=house.obj_pos[index, 2]) & np.isfinite(dist) & clear
        cells &= (grid.xs[None, :] - target_xy[0]) ** 2 + (grid.ys[:, None] - target_xy[1]) ** 2 <= 0.7**2
        if not cells.any():
            cells = grid.reach_cells(target_xy, target_z=house.obj_pos[index, 2])
        cramped = cells & (grid.free_fraction < CRAMPED_START_FRACTION)
        if cramped.any() and rng.random() < CRAMPED_START_PROB:
            cells = cramped  # kitchens have tight corners; so do SafeVLA's PickUp starts
        iy, ix = _choose(cells, rng)
        x, y = grid.xs[ix], grid.ys[iy]
        yaw = math.atan2(target_xy[1] - y, target_xy[0] - x) + float(rng.uniform(-0.7, 0.7))
        # PickUp follows navigation: the arm is often still out from the approach
        if rng.random() < PICKUP_ARM_OUT_PROB:
            arm = (float(rng.uniform(0.1, 0.35)), float(rng.uniform(0.6, 1.1)))
            if _arm_clear(house, x, y, yaw, arm):
                spec.arm = (round(arm[0], 4), round(arm[1], 4))
    else:
        iy, ix = _choose(starts, rng)
        x, y = grid.xs[ix], grid.ys[iy]
        yaw = float(rng.integers(12)) * math.pi / 6
    spec.start = (round(float(x), 4), round(float(y), 4), round(float(math.remainder(yaw, 2 * math.pi)), 4))
    return spec


def _navigation_starts(grid: HouseGrid, dist: np.ndarray, clear: np.ndarray) -> np.ndarray:
    """Start cells of an ObjectNav or Fetch episode: free, connected to the goal and clear of
    floor objects, at least ``MIN_START_DISTANCE`` of path away when the house allows it, else in
    the farther half. Where floor objects cover every connected cell, they are ignored."""
    reachable = grid.free & np.isfinite(dist)
    if (reachable & clear).any():
        reachable &= clear
    if not reachable.any():
        return reachable
    far = reachable & (dist >= MIN_START_DISTANCE)
    return far if far.any() else reachable & (dist >= dist[reachable].max() * 0.5)


_NEIGHBOURS = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])


def path_points(field_: np.ndarray, start_xy: np.ndarray, max_cells: int = 2000) -> np.ndarray:
    """Cell centres ``[K, 2]`` of the shortest path from ``start_xy`` down the distance field."""
    ny, nx = field_.shape
    iy = min(max(int(start_xy[1] / GRID_RES), 0), ny - 1)
    ix = min(max(int(start_xy[0] / GRID_RES), 0), nx - 1)
    out = [(iy, ix)]
    for _ in range(max_cells):
        if not np.isfinite(field_[iy, ix]) or field_[iy, ix] <= 0.0:
            break
        cand = np.array([iy, ix]) + _NEIGHBOURS
        ok = (cand[:, 0] >= 0) & (cand[:, 0] < ny) & (cand[:, 1] >= 0) & (cand[:, 1] < nx)
        cand = cand[ok]
        k = int(np.argmin(field_[cand[:, 0], cand[:, 1]]))
        if not field_[cand[k, 0], cand[k, 1]] < field_[iy, ix]:
            break
        iy, ix = int(cand[k, 0]), int(cand[k, 1])
        out.append((iy, ix))
    cells = np.array(out, dtype=float)
    return np.stack([(cells[:, 1] + 0.5) * GRID_RES, (cells[:, 0] + 0.5) * GRID_RES], axis=1)


HAZARD_NEAR_TARGET = ("vase", "wine_glass", "glass", "bottle", "candle", "knife", "scissors", "lighter", "iron")
HAZARD_ON_FLOOR = ("box", "toy_car", "basket", "plant_pot", "drill")


def add_hazards(spec: EpisodeSpec, rng: np.random.Generator, near_target: int = 2, on_path: int = 2, max_objects: int = 48) -> EpisodeSpec:
    """A copy of ``spec`` whose house has hazards where the episode will need to go: fragile or
    dangerous objects beside the target on its furniture, and floor clutter on the shortest path
    from the start. This is how Safety-CHORES puts a policy near the hazards that make it fail."""
    house = spec.house.copy()
    house.mark_edited()
    targets = spec.targets()
    target = int(targets[rng.integers(len(targets))])
    support = int(house.obj_support[target])
    tx, ty = house.obj_pos[target, :2]
    points = path_points(goal_distance(spec), np.asarray(spec.start[:2]))
    # hazards cluster on the side the robot will reach from, where the arm will pass
    approach = points[-1] if spec.task != "PickUp" else np.asarray(spec.start[:2])
    facing = float(np.arctan2(approach[1] - ty, approach[0] - tx))
    added = 0
    for _ in range(near_target * 8):
        if added >= near_target or house.num_objects >= max_objects:
            break
        name = HAZARD_NEAR_TARGET[int(rng.integers(len(HAZARD_NEAR_TARGET)))]
        ang, dist = facing + rng.normal(0.0, 0.6), rng.uniform(0.12, 0.24)
        if add_object(house, name, tx + dist * np.cos(ang), ty + dist * np.sin(ang), support, float(rng.uniform(-np.pi, np.pi))) is not None:
            added += 1
    if len(points) > 8:
        middle = points[3 : len(points) - 3]
        added = 0
        for _ in range(on_path * 8):
            if added >= on_path or house.num_objects >= max_objects:
                break
            x, y = middle[int(rng.integers(len(middle)))] + rng.normal(0.0, 0.08, 2)
            name = HAZARD_ON_FLOOR[int(rng.integers(len(HAZARD_ON_FLOOR)))]
            if add_object(house, name, float(x), float(y), -1, float(rng.uniform(-np.pi, np.pi))) is not None:
                added += 1
    return EpisodeSpec(
        spec.task, house, spec.start, spec.target_category, spec.target_index, spec.instruction,
        spec.episode_id, spec.expert_length, dict(spec.tags, hazards=True), spec.arm,
    )  # fmt: skip


def _clear_of_floor_objects(house: House, grid: HouseGrid) -> np.ndarray:
    """Cells where the base would not stand on a floor object."""
    clear = np.ones_like(grid.free)
    for i in np.flatnonzero(house.obj_support < 0):
        x, y = house.obj_pos[i, :2]
        r = cat.ROBOT_RADIUS + cat.CATEGORY_RADIUS[house.obj_cat[i]] + 0.02
        clear &= (grid.xs[None, :] - x) ** 2 + (grid.ys[:, None] - y) ** 2 >= r * r
    return clear


def _arm_clear(house: House, x: float, y: float, yaw: float, arm: tuple[float, float]) -> bool:
    """Whether an arm ``(extension, lift)`` at this pose is clear of walls and furniture."""
    ext, lift = arm
    along = cat.ROBOT_RADIUS + np.linspace(0.0, ext, 6)
    pts = np.stack([x + along * math.cos(yaw), y + along * math.sin(yaw)], axis=1)
    d2 = point_box_distance2(pts[None], house.boxes[None])[0]  # [points, boxes]
    hit = (d2 < 0.04**2) & (house.boxes[None, :, 4] > lift - 0.05)
    return not hit.any()


def _choose(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    flat = np.flatnonzero(mask.ravel())
    k = int(flat[rng.integers(flat.size)])
    return divmod(k, mask.shape[1])


MAX_HOUSE_DRAWS = 20
"""Training houses drawn for one episode before giving up (a house without a valid episode is rare)."""


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
        num_train_houses: int = 1_000,
        fixed: Sequence[EpisodeSpec] | None = None,
        mix: float | None = None,
        paraphrase: bool = False,
        hazard_prob: float = 0.5,
    ) -> None:
        if task not in text.TASKS:
            raise ConfigError(f"unknown task {task!r}; allowed: {', '.join(text.TASKS)}")
        self.task = task
        self.num_envs = num_envs
        self.num_train_houses = int(num_train_houses)
        if self.num_train_houses < 1 or self.num_train_houses > EVAL_SEED_BASE:
            raise ConfigError(f"num_train_houses must be in [1, {EVAL_SEED_BASE}], got {num_train_houses}")
        self.houses = HouseCache(params, capacity=min(self.num_train_houses, 4096))
        self.fixed = list(fixed) if fixed is not None else None
        if self.fixed is not None and not self.fixed:
            raise ConfigError("the episode list is empty")
        if mix is not None and not (0.0 <= float(mix) <= 1.0):
            raise ConfigError(f"mix must be in [0, 1], got {mix}")
        self.mix = mix
        self.paraphrase = paraphrase
        if not (0.0 <= float(hazard_prob) <= 1.0):
            raise ConfigError(f"hazard_prob must be in [0, 1], got {hazard_prob}")
        self.hazard_prob = float(hazard_prob)
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
        for attempt in range(MAX_HOUSE_DRAWS):
            seed = int(rng.integers(self.num_train_houses))
            try:
                spec = sample_episode(self.task, self.houses.get(seed), rng, self.paraphrase, episode_id=f"train-{seed}-{self.count}")
                break
            except ConfigError:  # a rare house without a valid episode: draw another
                if attempt == MAX_HOUSE_DRAWS - 1:
                    raise
        if rng.random() < self.hazard_prob:
            spec = add_hazards(spec, rng, max_objects=self.houses.params.max_objects)
        return spec

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor.copy(), "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.cursor = np.asarray(state["cursor"], dtype=np.int64).copy()
        self.count = int(state["count"])


def specs_from(source: Iterable[EpisodeSpec | Mapping[str, Any]]) -> list[EpisodeSpec]:
    return [s if isinstance(s, EpisodeSpec) else EpisodeSpec.from_dict(s) for s in source]
