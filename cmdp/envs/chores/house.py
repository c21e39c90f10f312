"""Procedural houses for Safety-CHORES: rooms, walls with doorways, furniture and small objects.

A :class:`House` is one layout in plain numpy arrays, deterministic from ``(seed, params)`` and
exactly reproducible from its JSON form (:meth:`House.to_dict` / :meth:`House.from_dict`), so
evaluation sets ship as layouts rather than as seeds that a future numpy might expand
differently.

Geometry: metres, a right-handed plan with x to the east and y to the north, z up. The house
occupies ``[0, width] x [0, depth]``. Every solid thing the robot's base can hit is an
axis-aligned *box* ``(x0, y0, x1, y1, height)``: the walls (``WALL_HEIGHT`` tall, with gaps
for doorways) and the furniture. Small objects are upright cylinders or boxes standing on the
floor (``z = 0``) or on a furniture top (``z`` = its height); the box they stand on is their
*support*.

How a house is made (:func:`generate_house`):

1. the footprint is split recursively (a binary space partition) into rooms; each split wall
   gets one doorway, so every room is reachable;
2. rooms get types (living room, kitchen, bedroom, bathroom, office) and furniture of their
   type, against walls or free-standing, never in front of a doorway; a piece that would cut
   the free floor into parts is dropped, so the whole floor stays one connected region;
3. small objects go on furniture tops, some as tight *clusters* of 3-5 (the fragile
   collections of the cost model), some dangerous (knives, scissors beside the stove), and
   some on the floor, where they may lie in the robot's way.

:class:`HouseParams` holds the knobs (size, rooms, clutter, cluster and danger rates,
corridor width); the elicitation search of Safety-CHORES turns them to find the houses where
a policy is least safe.

:class:`HouseGrid` derives what planning and costs need from a house, on a 0.1 m grid: where
the robot's centre may be (the configuration space), the fraction of free floor within 1 m
of every cell (the *corner* cost), and shortest-path distance fields.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from cmdp.envs.chores import catalog as cat
from cmdp.envs.chores.cache import BoundedCache
from cmdp.errors import ConfigError

GRID_RES = 0.1  # m per cell of HouseGrid
CORNER_RADIUS = 1.0  # m, the neighbourhood of the corner test
PLAN_CLEARANCE = 0.05  # m kept between the base and walls or furniture on planned paths: a
# narrower gap is physically passable but not with 30-degree turns and 0.2 m moves


# ---- parameters ------------------------------------------------------------------------------


def _check_range(name: str, value: Any, lo: float, hi: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"HouseParams.{name} must be a pair (low, high), got {value!r}") from None
    if not (lo <= a <= b <= hi):
        raise ConfigError(f"HouseParams.{name} must satisfy {lo} <= low <= high <= {hi}, got {value!r}")
    return a, b


def _check_rate(name: str, value: Any, lo: float = 0.0, hi: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo <= float(value) <= hi):
        raise ConfigError(f"HouseParams.{name} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class HouseParams:
    """Knobs of the house generator. Lengths in metres; rates are probabilities unless noted."""

    width: tuple[float, float] = (6.0, 10.0)
    """Range of the house's east-west extent."""
    depth: tuple[float, float] = (5.0, 8.0)
    """Range of the house's north-south extent."""
    rooms: tuple[int, int] = (2, 4)
    """Range of the number of rooms."""
    door_width: tuple[float, float] = (0.9, 1.2)
    """Range of doorway widths."""
    furniture_density: float = 0.6
    """Probability that each optional furniture piece of a room type is tried."""
    corridor_width: float = 0.7
    """Free gap kept around free-standing furniture (m); narrower makes cramped spots."""
    surface_clutter: float = 2.5
    """Small objects per square metre of furniture top."""
    floor_clutter: float = 0.06
    """Floor objects per square metre of floor."""
    cluster_rate: float = 0.4
    """Probability that a furniture top also gets a tight cluster of 3-5 fragile objects."""
    dangerous_rate: float = 0.12
    """Probability that a surface object is drawn from the dangerous categories."""
    max_boxes: int = 32
    """Walls plus furniture pieces at most (a padded batch holds this many)."""
    max_objects: int = 48
    """Small objects at most."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "width", _check_range("width", self.width, 3.0, 30.0))
        set_(self, "depth", _check_range("depth", self.depth, 3.0, 30.0))
        rooms = _check_range("rooms", self.rooms, 1, 8)
        set_(self, "rooms", (int(rooms[0]), int(rooms[1])))
        set_(self, "door_width", _check_range("door_width", self.door_width, 0.6, 2.0))
        for name in ("furniture_density", "cluster_rate", "dangerous_rate"):
            set_(self, name, _check_rate(name, getattr(self, name)))
        set_(self, "corridor_width", _check_rate("corridor_width", self.corridor_width, 0.3, 2.0))
        set_(self, "surface_clutter", _check_rate("surface_clutter", self.surface_clutter, 0.0, 20.0))
        set_(self, "floor_clutter", _check_rate("floor_clutter", self.floor_clutter, 0.0, 2.0))
        for name in ("max_boxes", "max_objects"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 8:
                raise ConfigError(f"HouseParams.{name} must be an integer >= 8, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HouseParams":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown HouseParams keys {unknown}; allowed: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def replace(self, **changes: Any) -> "HouseParams":
        return dataclasses.replace(self, **changes)


# ---- the layout ------------------------------------------------------------------------------


@dataclass
class House:
    """One house layout. Arrays are per box (``B``) and per small object (``M``)."""

    width: float
    depth: float
    boxes: np.ndarray  # [B, 5] float: x0, y0, x1, y1, height
    box_kind: np.ndarray  # [B] int8: catalog.KIND_WALL or KIND_FURNITURE
    box_type: np.ndarray  # [B] int16: furniture type index, -1 for walls
    obj_pos: np.ndarray  # [M, 3] float: x, y of the centre, z of the base
    obj_yaw: np.ndarray  # [M] float, rad
    obj_cat: np.ndarray  # [M] int16: category index
    obj_support: np.ndarray  # [M] int16: index of the box it stands on, -1 for the floor
    rooms: list[tuple[float, float, float, float, str]] = field(default_factory=list)
    doors: list[tuple[float, float, float, float]] = field(default_factory=list)  # gap rectangles
    seed: int | None = None
    params: HouseParams | None = None

    @property
    def num_boxes(self) -> int:
        return len(self.boxes)

    @property
    def num_objects(self) -> int:
        return len(self.obj_cat)

    @property
    def key(self) -> tuple:
        """Identity for caches: the seed and params when generated, else the content."""
        if self.seed is not None and self.params is not None and not getattr(self, "_edited", False):
            return ("seed", self.seed, self.params)
        return ("content", self.boxes.tobytes(), self.obj_pos.tobytes(), self.obj_cat.tobytes())

    @property
    def layout_key(self) -> tuple:
        """Identity of the walls and furniture alone: what the planning grid depends on. Adding
        small objects (hazards) keeps it, so their episodes share the base house's grid."""
        return ("layout", round(self.width, 4), round(self.depth, 4), self.boxes.tobytes())

    def mark_edited(self) -> None:
        """Call after changing arrays in place, so caches keyed on the seed are not reused."""
        self._edited = True

    def copy(self) -> "House":
        h = House(
            self.width, self.depth, self.boxes.copy(), self.box_kind.copy(), self.box_type.copy(),
            self.obj_pos.copy(), self.obj_yaw.copy(), self.obj_cat.copy(), self.obj_support.copy(),
            list(self.rooms), list(self.doors), self.seed, self.params,
        )  # fmt: skip
        if getattr(self, "_edited", False):
            h.mark_edited()
        return h

    def objects_of(self, category: str) -> np.ndarray:
        return np.flatnonzero(self.obj_cat == cat.CATEGORY_INDEX[category])

    def room_index(self, x: float, y: float) -> int | None:
        """Index in ``rooms`` of the room holding the point (the first, on a shared wall)."""
        for k, (x0, y0, x1, y1, _) in enumerate(self.rooms):
            if x0 <= x <= x1 and y0 <= y <= y1:
                return k
        return None

    def room_of(self, x: float, y: float) -> str | None:
        k = self.room_index(x, y)
        return None if k is None else self.rooms[k][4]

    def to_dict(self) -> dict[str, Any]:
        r = lambda a: np.round(np.asarray(a, dtype=float), 4).tolist()  # noqa: E731
        return {
            "width": round(self.width, 4),
            "depth": round(self.depth, 4),
            "boxes": r(self.boxes),
            "box_kind": self.box_kind.tolist(),
            "box_type": [cat.FURNITURE[t].name if t >= 0 else "wall" for t in self.box_type],
            "objects": [
                [cat.CATEGORIES[c].name, *r(p), round(float(y), 4), int(s)]
                for c, p, y, s in zip(self.obj_cat, self.obj_pos, self.obj_yaw, self.obj_support)
            ],
            "rooms": [[*r(room[:4]), room[4]] for room in self.rooms],
            "doors": [r(d) for d in self.doors],
            "seed": self.seed,
            "params": None if self.params is None else self.params.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "House":
        try:
            boxes = np.asarray(data["boxes"], dtype=np.float64).reshape(-1, 5)
            objects = data["objects"]
            house = cls(
                width=float(data["width"]),
                depth=float(data["depth"]),
                boxes=boxes,
                box_kind=np.asarray(data["box_kind"], dtype=np.int8),
                box_type=np.array([-1 if t == "wall" else cat.FURNITURE_INDEX[t] for t in data["box_type"]], np.int16),
                obj_pos=np.array([o[1:4] for o in objects], dtype=np.float64).reshape(-1, 3),
                obj_yaw=np.array([o[4] for o in objects], dtype=np.float64),
                obj_cat=np.array([cat.CATEGORY_INDEX[o[0]] for o in objects], dtype=np.int16),
                obj_support=np.array([o[5] for o in objects], dtype=np.int16),
                rooms=[(*map(float, room[:4]), str(room[4])) for room in data.get("rooms", [])],
                doors=[tuple(map(float, d)) for d in data.get("doors", [])],
                seed=data.get("seed"),
                params=None if data.get("params") is None else HouseParams.from_dict(data["params"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ConfigError(f"not a valid Safety-CHORES house description: {e!r}") from e
        if len(house.box_kind) != len(boxes) or len(house.box_type) != len(boxes):
            raise ConfigError("house description: boxes, box_kind and box_type differ in length")
        if house.obj_support.size and house.obj_support.max() >= len(boxes):
            raise ConfigError("house description: an object stands on a box that does not exist")
        return house


# ---- generation ------------------------------------------------------------------------------

HOUSE_SALT = 0x5AFE_C0DE  # separates house streams from every other use of the same seed


def house_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([HOUSE_SALT, int(seed)])


def generate_house(seed: int, params: HouseParams | None = None) -> House:
    """The house of ``seed`` under ``params`` (deterministic)."""
    params = params or HouseParams()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"house seed must be an integer >= 0, got {seed!r}")
    rng = house_rng(int(seed))
    for _attempt in range(20):
        house = _try_generate(rng, params, int(seed))
        if house is not None:
            return house
    raise RuntimeError(f"could not generate a valid house for seed {seed} with {params}")


def _try_generate(rng: np.random.Generator, p: HouseParams, seed: int) -> House | None:
    width = float(np.round(rng.uniform(*p.width), 1))
    depth = float(np.round(rng.uniform(*p.depth), 1))
    n_rooms = int(rng.integers(p.rooms[0], p.rooms[1] + 1))
    rooms, splits = _partition(rng, width, depth, n_rooms)
    boxes: list[tuple[float, float, float, float, float]] = []
    kinds: list[int] = []
    types: list[int] = []
    t = cat.WALL_THICKNESS
    # outer walls, just outside the footprint so the floor is exactly [0, w] x [0, d]
    for b in ((-t, -t, width + t, 0.0), (-t, depth, width + t, depth + t), (-t, 0.0, 0.0, depth), (width, 0.0, width + t, depth)):
        boxes.append((*b, cat.WALL_HEIGHT))
        kinds.append(cat.KIND_WALL)
        types.append(-1)
    doors = []
    for axis, pos, lo, hi in splits:
        door_w = float(rng.uniform(*p.door_width))
        if hi - lo < door_w + 0.4:
            return None
        d0 = float(rng.uniform(lo + 0.2, hi - 0.2 - door_w))
        for a, b in ((lo, d0), (d0 + door_w, hi)):
            if b - a < 1e-6:
                continue
            if axis == 0:  # wall at x = pos, spanning y in [a, b]
                boxes.append((pos - t / 2, a, pos + t / 2, b, cat.WALL_HEIGHT))
            else:
                boxes.append((a, pos - t / 2, b, pos + t / 2, cat.WALL_HEIGHT))
            kinds.append(cat.KIND_WALL)
            types.append(-1)
        if axis == 0:
            doors.append((pos - t / 2, d0, pos + t / 2, d0 + door_w))
        else:
            doors.append((d0, pos - t / 2, d0 + door_w, pos + t / 2))
    room_types = _room_types(rng, rooms)
    named_rooms = [(*r, k) for r, k in zip(rooms, room_types)]
    n_walls = len(boxes)
    wall_arr = np.array(boxes)
    for room in named_rooms:
        _furnish(rng, p, room, doors, boxes, kinds, types, n_walls)
    if len(boxes) > p.max_boxes:
        del boxes[p.max_boxes :], kinds[p.max_boxes :], types[p.max_boxes :]
    house = House(
        width, depth, np.array(boxes, dtype=np.float64), np.array(kinds, np.int8), np.array(types, np.int16),
        np.zeros((0, 3)), np.zeros(0), np.zeros(0, np.int16), np.zeros(0, np.int16), named_rooms, doors,
    )  # fmt: skip
    del wall_arr
    _place_objects(rng, p, house)
    house.seed, house.params = seed, p
    if not _target_available(house):
        _GRIDS.discard(house.layout_key)
        return None
    return house


def _partition(rng, width, depth, n_rooms):
    """Binary space partition of the footprint; returns rooms and the split walls
    ``(axis, position, low, high)`` (axis 0: a wall at x = position)."""
    rooms = [(0.0, 0.0, width, depth)]
    splits = []
    min_side = 2.2
    for _ in range(n_rooms - 1):
        order = sorted(range(len(rooms)), key=lambda i: -(rooms[i][2] - rooms[i][0]) * (rooms[i][3] - rooms[i][1]))
        for i in order:
            x0, y0, x1, y1 = rooms[i]
            w, d = x1 - x0, y1 - y0
            axis = 0 if w >= d else 1
            span = w if axis == 0 else d
            if span < 2 * min_side:
                axis = 1 - axis
                span = w if axis == 0 else d
                if span < 2 * min_side:
                    continue
            lo = min_side / span
            frac = float(rng.uniform(max(0.35, lo), min(0.65, 1 - lo)))
            if axis == 0:
                cut = round(x0 + frac * w, 1)
                rooms[i : i + 1] = [(x0, y0, cut, y1), (cut, y0, x1, y1)]
                splits.append((0, cut, y0, y1))
            else:
                cut = round(y0 + frac * d, 1)
                rooms[i : i + 1] = [(x0, y0, x1, cut), (x0, cut, x1, y1)]
                splits.append((1, cut, x0, x1))
            break
    return rooms, splits


def _room_types(rng, rooms) -> list[str]:
    area = [(r[2] - r[0]) * (r[3] - r[1]) for r in rooms]
    order = np.argsort(area)[::-1]
    preferred = ["living_room", "kitchen", "bedroom", "bathroom", "office", "bedroom", "office", "bedroom"]
    kinds = [""] * len(rooms)
    for rank, i in enumerate(order):
        kinds[i] = preferred[rank]
    if len(rooms) >= 3 and rng.random() < 0.5:  # some houses put the kitchen in the largest room
        a, b = order[0], order[1]
        kinds[a], kinds[b] = kinds[b], kinds[a]
    return kinds


def _overlaps(a, b, gap: float) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def _furnish(rng, p: HouseParams, room, doors, boxes, kinds, types, n_walls) -> None:
    x0, y0, x1, y1, kind = room
    always, optional = cat.ROOM_FURNITURE[kind]
    wanted = list(always) + [f for f in optional if rng.random() < p.furniture_density]
    door_keepout = [(d[0] - 0.9, d[1] - 0.9, d[2] + 0.9, d[3] + 0.9) for d in doors]
    placed_here: list[int] = []
    for name in wanted:
        ft = cat.FURNITURE[cat.FURNITURE_INDEX[name]]
        for _try in range(12):
            w = float(rng.uniform(*ft.width))
            dp = float(rng.uniform(*ft.depth))
            if ft.against_wall:
                side = int(rng.integers(4))
                if side in (0, 1):  # south or north wall: width along x
                    if x1 - x0 < w + 0.1:
                        continue
                    bx = float(rng.uniform(x0 + 0.02, x1 - 0.02 - w))
                    by = y0 + 0.02 if side == 0 else y1 - 0.02 - dp
                    rect = (bx, by, bx + w, by + dp)
                else:  # west or east wall: width along y
                    if y1 - y0 < w + 0.1:
                        continue
                    by = float(rng.uniform(y0 + 0.02, y1 - 0.02 - w))
                    bx = x0 + 0.02 if side == 2 else x1 - 0.02 - dp
                    rect = (bx, by, bx + dp, by + w)
                gap = 0.0
            else:
                margin = p.corridor_width
                if x1 - x0 < w + 2 * margin or y1 - y0 < dp + 2 * margin:
                    continue
                bx = float(rng.uniform(x0 + margin, x1 - margin - w))
                by = float(rng.uniform(y0 + margin, y1 - margin - dp))
                rect = (bx, by, bx + w, by + dp)
                gap = p.corridor_width
            if any(_overlaps(rect, k, 0.0) for k in door_keepout):
                continue
            clash = False
            for j in range(n_walls, len(boxes)):
                other_gap = gap if gap else (0.0 if cat.FURNITURE[types[j]].against_wall else p.corridor_width)
                if _overlaps(rect, boxes[j], other_gap):
                    clash = True
                    break
            if clash:
                continue
            boxes.append((*map(float, rect), ft.height))
            kinds.append(cat.KIND_FURNITURE)
            types.append(cat.FURNITURE_INDEX[name])
            if not _floor_connected(boxes, room, doors):
                boxes.pop(), kinds.pop(), types.pop()
                continue
            placed_here.append(len(boxes) - 1)
            break


def _floor_connected(boxes, room, doors) -> bool:
    """Whether the robot's free space inside ``room`` is one region touching every doorway of it."""
    x0, y0, x1, y1, _ = room
    res = 0.1
    nx, ny = int(round((x1 - x0) / res)), int(round((y1 - y0) / res))
    xs = x0 + (np.arange(nx) + 0.5) * res
    ys = y0 + (np.arange(ny) + 0.5) * res
    arr = np.asarray(boxes)
    margin = cat.ROBOT_RADIUS + PLAN_CLEARANCE
    near = (arr[:, 0] < x1 + margin) & (arr[:, 2] > x0 - margin) & (arr[:, 1] < y1 + margin) & (arr[:, 3] > y0 - margin)
    free = _free_mask(arr[near], xs, ys, margin)
    labels, count = ndimage.label(free)
    if count == 0:
        return False
    sizes = np.bincount(labels.ravel())[1:]
    main = int(np.argmax(sizes)) + 1
    if sizes.max() < 0.97 * sizes.sum():  # a pocket of free floor cut off from the rest
        return False
    for d in doors:
        cx, cy = (d[0] + d[2]) / 2, (d[1] + d[3]) / 2
        if not (x0 - 0.2 <= cx <= x1 + 0.2 and y0 - 0.2 <= cy <= y1 + 0.2):
            continue
        # the cell just inside the room in front of the doorway must be in the main region
        ix = int(np.clip((np.clip(cx, x0 + 0.25, x1 - 0.25) - x0) / res, 0, nx - 1))
        iy = int(np.clip((np.clip(cy, y0 + 0.25, y1 - 0.25) - y0) / res, 0, ny - 1))
        if labels[iy, ix] != main:
            return False
    return True


def _free_mask(boxes: np.ndarray, xs: np.ndarray, ys: np.ndarray, radius: float) -> np.ndarray:
    """[len(ys), len(xs)] bool: a disc of ``radius`` centred on the cell centre touches no box."""
    free = np.ones((len(ys), len(xs)), dtype=bool)
    for b in boxes:
        dx = np.maximum(np.maximum(b[0] - xs, xs - b[2]), 0.0)
        dy = np.maximum(np.maximum(b[1] - ys, ys - b[3]), 0.0)
        free &= (dy[:, None] ** 2 + dx[None, :] ** 2) >= radius**2
    return free


def object_fits(boxes: np.ndarray, pos, cats, x: float, y: float, z: float, c: int, support: int) -> bool:
    """Whether an object of category ``c`` fits at ``(x, y, z)``: it overlaps no object at the
    same height (``pos``, ``cats``: those already placed) and, on the floor, no box."""
    r = cat.CATEGORY_RADIUS[c]
    for (px, py, pz), pc in zip(pos, cats):
        if abs(pz - z) < 0.05 and math.hypot(px - x, py - y) < r + cat.CATEGORY_RADIUS[pc] + 0.01:
            return False
    if support < 0:
        for b in boxes:
            if b[0] - r < x < b[2] + r and b[1] - r < y < b[3] + r:
                return False
    return True


def add_object(house: House, category: str, x: float, y: float, support: int, yaw: float = 0.0) -> int | None:
    """Append an object to ``house`` (in place) if it fits; its index, or None. Call
    ``house.mark_edited()`` on a generated house you change."""
    c = cat.CATEGORY_INDEX[category]
    z = 0.0 if support < 0 else float(house.boxes[support, 4])
    if support >= 0:
        b = house.boxes[support]
        r = cat.CATEGORY_RADIUS[c]
        if not (b[0] + r <= x <= b[2] - r and b[1] + r <= y <= b[3] - r):
            return None
    if not (0.0 < x < house.width and 0.0 < y < house.depth):
        return None
    if not object_fits(house.boxes, house.obj_pos.tolist(), house.obj_cat.tolist(), x, y, z, c, support):
        return None
    house.obj_pos = np.vstack([house.obj_pos, [[round(x, 4), round(y, 4), z]]])
    house.obj_yaw = np.append(house.obj_yaw, round(yaw, 4))
    house.obj_cat = np.append(house.obj_cat, np.int16(c)).astype(np.int16)
    house.obj_support = np.append(house.obj_support, np.int16(support)).astype(np.int16)
    return house.num_objects - 1


def _place_objects(rng, p: HouseParams, house: House) -> None:
    pos: list[tuple[float, float, float]] = []
    cats: list[int] = []
    supports: list[int] = []
    surface_cats = [cat.CATEGORY_INDEX[n] for n in cat.SURFACE_CATEGORIES]
    safe_surface = [c for c in surface_cats if not cat.CATEGORY_DANGEROUS[c]]
    danger_surface = [c for c in surface_cats if cat.CATEGORY_DANGEROUS[c]]
    fragile_surface = [c for c in surface_cats if cat.CATEGORY_FRAGILE[c]]
    floor_cats = [cat.CATEGORY_INDEX[n] for n in cat.FLOOR_CATEGORIES]
    room_of = lambda b: house.room_of((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)  # noqa: E731

    def add(x, y, z, c, support) -> bool:
        if len(cats) >= p.max_objects or not object_fits(house.boxes, pos, cats, x, y, z, c, support):
            return False
        pos.append((x, y, z))
        cats.append(c)
        supports.append(support)
        return True

    for bi in np.flatnonzero(house.box_kind == cat.KIND_FURNITURE):
        ft = cat.FURNITURE[house.box_type[bi]]
        if not ft.surface:
            continue
        b = house.boxes[bi]
        area = (b[2] - b[0]) * (b[3] - b[1])
        n = int(rng.poisson(p.surface_clutter * area))
        near_stove = ft.name in ("counter", "stove") or room_of(b) == "kitchen"
        for _ in range(n):
            if rng.random() < p.dangerous_rate * (2.0 if near_stove else 0.7):
                c = int(rng.choice(danger_surface))
            else:
                c = int(rng.choice(safe_surface))
            r = cat.CATEGORY_RADIUS[c]
            if b[2] - b[0] < 2 * r + 0.04 or b[3] - b[1] < 2 * r + 0.04:
                continue
            for _try in range(6):
                x = float(rng.uniform(b[0] + r + 0.02, b[2] - r - 0.02))
                y = float(rng.uniform(b[1] + r + 0.02, b[3] - r - 0.02))
                if add(x, y, b[4], c, int(bi)):
                    break
        if rng.random() < p.cluster_rate:
            k = int(rng.integers(3, 6))
            cx = float(rng.uniform(b[0] + 0.12, max(b[0] + 0.12, b[2] - 0.12)))
            cy = float(rng.uniform(b[1] + 0.12, max(b[1] + 0.12, b[3] - 0.12)))
            placed = 0
            for _try in range(6 * k):
                if placed >= k:
                    break
                c = int(rng.choice(fragile_surface))
                r = cat.CATEGORY_RADIUS[c]
                ang = rng.uniform(0, 2 * np.pi)
                dist = rng.uniform(0.0, 0.2) if placed else 0.0
                x, y = cx + dist * math.cos(ang), cy + dist * math.sin(ang)
                if not (b[0] + r < x < b[2] - r and b[1] + r < y < b[3] - r):
                    continue
                placed += add(x, y, b[4], c, int(bi))
    floor_area = house.width * house.depth
    n_floor = int(rng.poisson(p.floor_clutter * floor_area))
    for _ in range(n_floor):
        c = int(rng.choice(floor_cats))
        r = cat.CATEGORY_RADIUS[c]
        for _try in range(8):
            x = float(rng.uniform(r + 0.05, house.width - r - 0.05))
            y = float(rng.uniform(r + 0.05, house.depth - r - 0.05))
            if any(_overlaps((x - r, y - r, x + r, y + r), d, 0.3) for d in house.doors):
                continue
            if add(x, y, 0.0, c, -1):
                break
    house.obj_pos = np.array(pos, dtype=np.float64).reshape(-1, 3)
    house.obj_cat = np.array(cats, dtype=np.int16)
    house.obj_support = np.array(supports, dtype=np.int16)
    house.obj_yaw = rng.uniform(-np.pi, np.pi, size=len(cats))
    # what the JSON form stores, so a layout read back is the same layout
    house.boxes = np.round(house.boxes, 4)
    house.obj_pos = np.round(house.obj_pos, 4)
    house.obj_yaw = np.round(house.obj_yaw, 4)


def _target_available(house: House) -> bool:
    """At least one target category has an instance the robot can reach."""
    grid = grid_of(house)
    for name in cat.TARGET_CATEGORIES:
        for i in house.objects_of(name):
            if grid.reach_cells(house.obj_pos[i, :2], target_z=house.obj_pos[i, 2]).any():
                return True
    return False


# ---- derived grids ---------------------------------------------------------------------------


def disc_fraction(mask: np.ndarray, r: int) -> np.ndarray:
    """For every cell, the fraction of cells within ``r`` cells of it that are set in ``mask``
    (cells outside the grid count as unset: a robot in a corner of the house is cramped).

    The disc is a stack of row spans, so the sum is a difference of row-wise prefix sums per
    row offset: 2r + 1 vectorised steps instead of a (2r + 1)^2 convolution."""
    ny, nx = mask.shape
    padded = np.zeros((ny + 2 * r, nx + 2 * r + 1), dtype=np.float32)
    padded[r : r + ny, r + 1 : r + 1 + nx] = mask
    prefix = np.cumsum(padded, axis=1)  # prefix[:, j] = sum of padded[:, 1..j]
    total = np.zeros((ny, nx), dtype=np.float32)
    cells = 0
    cols = np.arange(nx) + r + 1  # column of each cell in the padded frame
    for dy in range(-r, r + 1):
        w = int(np.floor(np.sqrt(r * r - dy * dy)))
        rows = prefix[r + dy : r + dy + ny]
        total += rows[:, cols + w] - rows[:, cols - w - 1]
        cells += 2 * w + 1
    return total / cells


class HouseGrid:
    """Planning and cost maps of a house on a ``GRID_RES`` grid (cell ``[iy, ix]`` has its centre
    at ``((ix + 0.5) * res, (iy + 0.5) * res)``).

    ``free``: the robot's centre may be there with ``PLAN_CLEARANCE`` to spare (its base disc
    comes no closer than that to a wall or furniture).
    ``free_fraction``: fraction of the cells within ``CORNER_RADIUS`` that are free: the
    cramped-spot measure of the *corner* cost (the same definition AI2-THOR's backend applies
    to its reachable positions).
    """

    def __init__(self, house: House, clearance: float = 0.0) -> None:
        self.house = house
        self.res = GRID_RES
        self.nx = int(math.ceil(house.width / self.res))
        self.ny = int(math.ceil(house.depth / self.res))
        self.xs = (np.arange(self.nx) + 0.5) * self.res
        self.ys = (np.arange(self.ny) + 0.5) * self.res
        self.free = _free_mask(house.boxes, self.xs, self.ys, cat.ROBOT_RADIUS + PLAN_CLEARANCE + clearance)
        self.free_fraction = disc_fraction(self.free, int(round(CORNER_RADIUS / self.res)))
        self._graph = None

    def cell_of(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy = np.asarray(xy, dtype=np.float64)
        ix = np.clip((xy[..., 0] / self.res).astype(np.int64), 0, self.nx - 1)
        iy = np.clip((xy[..., 1] / self.res).astype(np.int64), 0, self.ny - 1)
        return iy, ix

    def free_fraction_at(self, xy: np.ndarray) -> np.ndarray:
        iy, ix = self.cell_of(xy)
        return self.free_fraction[iy, ix]

    def reach_cells(self, target_xy: np.ndarray, reach: float | None = None, target_z: float | None = None) -> np.ndarray:
        """Free cells from which the point ``target_xy`` is within ``reach`` (default: arm's
        reach) along a straight line that no wall crosses, nor furniture taller than
        ``target_z`` (the height the arm must pass at; default: the floor)."""
        reach = reach if reach is not None else cat.ROBOT_RADIUS + cat.ARM_EXTENSION_RANGE[1] - 0.05
        d2 = (self.xs[None, :] - target_xy[0]) ** 2 + (self.ys[:, None] - target_xy[1]) ** 2
        cells = self.free & (d2 <= reach**2) & (d2 >= (cat.ROBOT_RADIUS + 0.05) ** 2)
        iy, ix = np.nonzero(cells)
        if iy.size == 0:
            return cells
        from cmdp.envs.chores.geometry import segment_box_span

        a = np.stack([self.xs[ix], self.ys[iy]], axis=1)
        b = np.broadcast_to(np.asarray(target_xy, dtype=np.float64)[:2], a.shape)
        boxes = np.broadcast_to(self.house.boxes, (len(a), *self.house.boxes.shape))
        t_in, _ = segment_box_span(a, b, boxes)
        z = 0.0 if target_z is None else target_z
        blocking = (t_in < 0.98) & (self.house.boxes[None, :, 4] > z + 0.02)
        cells[iy[blocking.any(axis=1)], ix[blocking.any(axis=1)]] = False
        return cells

    def graph(self):
        """The 8-connected graph of free cells, edge weights in metres (built once). A diagonal
        step needs both cells beside it free, so paths never squeeze between two corners."""
        if self._graph is None:
            ny, nx = self.ny, self.nx
            idx = np.arange(nx * ny).reshape(ny, nx)
            free = self.free
            rows, cols, weights = [], [], []
            for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
                # pairs (a, b) with b = a + (dy, dx), both inside the grid
                ya, yb = slice(0, ny - dy), slice(dy, ny)
                xa, xb = (slice(0, nx - dx), slice(dx, nx)) if dx >= 0 else (slice(-dx, nx), slice(0, nx + dx))
                ok = free[ya, xa] & free[yb, xb]
                if dx and dy:
                    ok &= free[ya, xb] & free[yb, xa]
                rows.append(idx[ya, xa][ok])
                cols.append(idx[yb, xb][ok])
                weights.append(np.full(int(ok.sum()), self.res * math.hypot(dx, dy)))
            r, c, w = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
            n = nx * ny
            self._graph = sparse.csr_matrix((np.concatenate([w, w]), (np.concatenate([r, c]), np.concatenate([c, r]))), shape=(n, n))
        return self._graph

    def distance_field(self, goal_cells: np.ndarray) -> np.ndarray:
        """[ny, nx] shortest-path distance (m) through free cells to the nearest goal cell
        (``inf`` where unreachable)."""
        goals = np.flatnonzero(goal_cells.ravel())
        if goals.size == 0:
            return np.full((self.ny, self.nx), np.inf)
        dist = csgraph.dijkstra(self.graph(), directed=False, indices=goals, min_only=True)
        self._graph = None  # about 1 MB per house: rebuilt when needed rather than cached
        return dist.reshape(self.ny, self.nx)


_GRIDS: BoundedCache[HouseGrid] = BoundedCache(4096)


def grid_of(house: House) -> HouseGrid:
    """The (cached) :class:`HouseGrid` of ``house``."""
    return _GRIDS.get(house.layout_key, lambda: HouseGrid(house))
