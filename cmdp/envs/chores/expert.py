"""Shortest-path experts for Safety-CHORES, the teachers of imitation learning.

:class:`ShortestPathExpert` plays the role of SPOC's expert: it follows the shortest path to
the goal on the occupancy grid (a Dijkstra distance field over free cells, equivalent to A*
from every start at once), turns towards the path 0.5 m ahead and moves, then lifts and
extends the arm to the target and grasps it (PickUp, Fetch), or stops with the target in view
(ObjectNav). It ignores safety: it brushes past corners, sweeps whatever stands between the
gripper and the target, and drives over floor clutter it cannot see. Policies cloned from it
inherit exactly the unsafe habits Safety-CHORES measures.

``safe=True`` gives the safety-aware reference: it plans with 0.15 m of extra clearance from
furniture and walls, treats floor objects as obstacles, and stows the arm while driving.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from cmdp.envs.chores import catalog as cat
from cmdp.envs.chores.cache import BoundedCache
from cmdp.envs.chores.episodes import EpisodeSpec, field_key, goal_cells, goal_distance
from cmdp.envs.chores.geometry import wrap_angle
from cmdp.errors import ConfigError
from cmdp.envs.chores.house import GRID_RES, HouseGrid, _free_mask, grid_of

A = cat.ACTION_INDEX
LOOKAHEAD = 0.5  # m along the path
ALIGN_LARGE = math.radians(40.0)
ALIGN_SMALL = math.radians(12.0)
HURRIED_ALIGN = math.radians(22.0)  # the shortest-path expert drives on with this much heading error
GRASP_ALIGN = math.radians(4.0)
SAFE_CLEARANCE = 0.15  # m beyond the base
APPROACH_DISTANCE = 0.5  # m: the shortest-path expert drives closer than this before reaching

_SAFE_FIELDS: BoundedCache[np.ndarray] = BoundedCache(1024)


def _safe_field(spec: EpisodeSpec) -> np.ndarray:
    """Distance field on a grid with extra clearance and floor objects as obstacles."""

    def make() -> np.ndarray:
        base = grid_of(spec.house)
        grid = HouseGrid(spec.house, clearance=SAFE_CLEARANCE)
        floor = spec.house.obj_support < 0
        if floor.any():
            pos = spec.house.obj_pos[floor]
            rad = cat.CATEGORY_RADIUS[spec.house.obj_cat[floor]]
            boxes = np.concatenate([pos[:, :2] - rad[:, None], pos[:, :2] + rad[:, None], np.zeros((len(pos), 1))], axis=1)
            grid.free &= _free_mask(boxes, grid.xs, grid.ys, cat.ROBOT_RADIUS + 0.1)
        goals = goal_cells(spec, base) & grid.free
        if not goals.any():  # the goal needs a closer approach than the clearance allows
            goals = goal_cells(spec, base)
            grid.free |= goals
        field_ = grid.distance_field(goals).astype(np.float32)
        unsafe_fallback = goal_distance(spec)
        return np.where(np.isfinite(field_), field_, unsafe_fallback + 100.0)

    return _SAFE_FIELDS.get(field_key(spec) + (spec.house.obj_pos[spec.house.obj_support < 0].round(3).tobytes(),), make)


_TIGHT_FIELDS: BoundedCache[np.ndarray] = BoundedCache(1024)
TIGHT_CLEARANCE = -0.035  # the shortest path hugs walls and furniture to within 1.5 cm


def _tight_field(spec: EpisodeSpec) -> np.ndarray:
    """Distance field for the shortest-path expert: the truly shortest path, hugging corners."""

    def make() -> np.ndarray:
        grid = HouseGrid(spec.house, clearance=TIGHT_CLEARANCE)
        return grid.distance_field(goal_cells(spec, grid)).astype(np.float32)

    return _TIGHT_FIELDS.get(field_key(spec), make)


class ShortestPathExpert:
    """Expert actions for every env of a :class:`~cmdp.envs.chores.env.ChoresEnv`.

    Call :meth:`act` before each ``env.step``; it reads the env's current state and episode.
    """

    def __init__(self, env, safe: bool = False, seed: int = 0) -> None:
        self.env = env
        self.safe = safe
        self.seed = int(seed)
        self._rngs = [np.random.default_rng([self.seed, i]) for i in range(env.num_envs)]  # per episode
        n = env.num_envs
        self._stuck = np.zeros(n, dtype=np.int64)
        self._spec_ids = [None] * n
        self._plan: list[list[int]] = [[] for _ in range(n)]  # queued recovery actions
        self._approached = np.zeros(n, dtype=bool)
        self._grasp_collisions = np.zeros(n, dtype=np.int64)
        self._override: list[np.ndarray | None] = [None] * n  # a field that avoids failed grasp spots

    def act(self) -> np.ndarray:
        env = self.env
        s = env.scene
        actions = np.empty(env.num_envs, dtype=np.int64)
        for r in range(env.num_envs):
            spec = env.specs[r]
            if self._spec_ids[r] is not spec or env._t[r] == 0:
                self._start_episode(r, spec)
            if env._last_collided[r]:
                self._stuck[r] += 1
            elif env._last_action[r] in (A["m"], A["b"], A["zp"], A["zps"], A["p"]):
                self._stuck[r] = 0
            actions[r] = self._act_one(r, spec, s)
        return actions

    # ---- one env ----------------------------------------------------------------------------

    def _start_episode(self, r: int, spec: EpisodeSpec) -> None:
        """Forget env ``r``'s last episode: ``spec`` starts (or restarts) there."""
        self._spec_ids[r] = spec
        self._rngs[r] = np.random.default_rng([self.seed, zlib.crc32(spec.episode_id.encode()), int(self.env._t[r] == 0)])
        self._stuck[r] = 0
        self._plan[r] = []
        self._approached[r] = False
        self._grasp_collisions[r] = 0
        self._override[r] = None

    def _field(self, r: int, spec: EpisodeSpec) -> np.ndarray:
        if self._override[r] is not None:
            return self._override[r]
        return _safe_field(spec) if self.safe else _tight_field(spec)

    def _avoid_here(self, r: int, spec: EpisodeSpec, s) -> None:
        """The arm keeps hitting something from this spot (an object jammed in the way): plan
        to another spot within reach of the target, at least 0.4 m from this one."""
        field_ = self._field(r, spec)
        grid = HouseGrid(spec.house, clearance=SAFE_CLEARANCE if self.safe else TIGHT_CLEARANCE)
        goals = np.isfinite(field_) & (field_ <= 0.0)
        xy = s.robot_xy[r]
        near = (grid.xs[None, :] - xy[0]) ** 2 + (grid.ys[:, None] - xy[1]) ** 2 < 0.4**2
        if (goals & ~near).any():
            self._override[r] = grid.distance_field(goals & ~near).astype(np.float32)

    def _act_one(self, r: int, spec: EpisodeSpec, s) -> int:
        field_ = self._field(r, spec)
        xy = s.robot_xy[r]
        yaw = s.robot_yaw[r]
        here = _at(field_, xy)
        target = self._target(r, spec, s)
        if spec.task == "ObjectNav":
            if here <= 0.0 or (here < 0.3 and np.linalg.norm(s.obj_pos[r, target, :2] - xy) <= 1.5):
                obj = s.obj_pos[r, target]
                want = math.atan2(obj[1] - xy[1], obj[0] - xy[0])
                err = wrap_angle(want - yaw)
                if abs(err) < math.radians(20) and self.env._vis_obj[r, target]:
                    return A["end"]
                return _turn(err)
            return self._navigate(r, field_, xy, yaw, s)
        if s.held[r] >= 0 and s.held[r] != target:
            return A["d"]  # holding the wrong thing (should not happen): let go
        if here > 0.0 and not (here <= 0.3 and _can_reach(s, r, target)):
            if self.safe and (s.arm_ext[r] > 0.0):
                return A["zm"] if s.arm_ext[r] > 0.05 else A["zms"]
            return self._navigate(r, field_, xy, yaw, s)
        return self._grasp(r, target, s)

    def _target(self, r: int, spec: EpisodeSpec, s) -> int:
        if spec.task != "ObjectNav":
            return spec.target_index
        idx = spec.targets()
        d = np.linalg.norm(s.obj_pos[r, idx, :2] - s.robot_xy[r], axis=1)
        return int(idx[np.argmin(d)])

    def _navigate(self, r: int, field_: np.ndarray, xy: np.ndarray, yaw: float, s) -> int:
        if self._plan[r]:
            return self._plan[r].pop(0)
        if self._stuck[r] >= 2:
            # blocked on the path (a corner, something jammed in front): back off, sidestep, retry
            self._stuck[r] = 0
            side = A["l"] if self._rngs[r].random() < 0.5 else A["r"]
            other = A["r"] if side == A["l"] else A["l"]
            self._plan[r] = [side, A["m"], A["m"], other]
            return A["b"]
        way = _lookahead(field_, xy, LOOKAHEAD)
        want = math.atan2(way[1] - xy[1], way[0] - xy[0])
        err = wrap_angle(want - yaw)
        if abs(err) > ALIGN_LARGE:
            return _turn(err)
        if abs(err) > (ALIGN_SMALL if self.safe else HURRIED_ALIGN):
            return A["ls"] if err > 0 else A["rs"]
        return A["m"]

    def _grasp(self, r: int, target: int, s) -> int:
        xy, yaw = s.robot_xy[r], s.robot_yaw[r]
        obj = s.obj_pos[r, target]
        want = math.atan2(obj[1] - xy[1], obj[0] - xy[0])
        err = wrap_angle(want - yaw)
        dist = math.hypot(obj[0] - xy[0], obj[1] - xy[1])
        desired_ext = float(np.clip(dist - cat.ROBOT_RADIUS, *cat.ARM_EXTENSION_RANGE))
        if self.env._last_collided[r]:
            self._grasp_collisions[r] += 1
            if self._grasp_collisions[r] % 4 == 0:
                self._avoid_here(r, self.env.specs[r], s)
                self._plan[r] = [A["b"]]
                return A["zm"] if s.arm_ext[r] > 0.02 else A["b"]
        if self.env._last_collided[r] and s.arm_ext[r] > 0.02:
            return A["zm"] if s.arm_ext[r] > 0.06 else A["zms"]  # the arm hit something: pull it in first
        if self._stuck[r] >= 3:
            self._stuck[r] = 0
            return A["b"]  # cannot get the arm there from here: back off and approach again
        if not self.safe and self.env.task == "PickUp" and not self._approached[r]:
            self._approached[r] = True
            if dist > APPROACH_DISTANCE and abs(err) < ALIGN_LARGE:
                return A["m"]  # close in once for a short reach, as a hurried operator would
        if abs(err) > GRASP_ALIGN:
            # the safe expert squares up with the arm in, so turning does not sweep the counter;
            # the shortest-path expert turns with the arm wherever it is
            if self.safe and s.arm_ext[r] > 0.05 and abs(err) > math.radians(15):
                return A["zm"]
            return _turn(err) if abs(err) > ALIGN_LARGE else (A["ls"] if err > 0 else A["rs"])
        top = obj[2] + s.obj_height[r, target]
        desired_lift = float(np.clip(max(top + 0.05, obj[2] + 0.5 * s.obj_height[r, target]), *cat.ARM_LIFT_RANGE))
        dl = desired_lift - s.arm_lift[r]
        if abs(dl) > 0.06:
            return A["yp"] if dl > 0 else A["ym"]
        if abs(dl) > 0.015:
            return A["yps"] if dl > 0 else A["yms"]
        de = desired_ext - s.arm_ext[r]
        if de > 0.06:
            return A["zp"]
        if de > 0.015:
            return A["zps"]
        if de < -0.06:
            return A["zm"]
        if de < -0.015:
            return A["zms"]
        return A["p"]


SIGHT_DISTANCE = 3.0  # m: a target farther away covers too few pixels of a 64x64 image to recognise
SCAN_ANGLE = math.radians(330.0)  # turned on the spot: with a 59 deg field of view, all around
ROOM_ARRIVAL = 0.3  # m of path left to a room's scan point counts as arrived

_ROOM_FIELDS: BoundedCache[np.ndarray] = BoundedCache(1024)


def _room_field(house, room: int) -> np.ndarray:
    """Shortest-path distance field (tight clearance, like the shortest-path expert) to the scan
    point of ``room``: the free cells near its centre, or its free cells nearest the centre
    when furniture stands there."""

    def make() -> np.ndarray:
        grid = HouseGrid(house, clearance=TIGHT_CLEARANCE)
        x0, y0, x1, y1, _ = house.rooms[room]
        inside = (grid.xs[None, :] >= x0) & (grid.xs[None, :] <= x1) & (grid.ys[:, None] >= y0) & (grid.ys[:, None] <= y1)
        cand = grid.free & inside
        if not cand.any():
            return np.full(grid.free.shape, np.inf, dtype=np.float32)
        d = np.hypot(grid.xs[None, :] - 0.5 * (x0 + x1), grid.ys[:, None] - 0.5 * (y0 + y1))
        d = np.where(cand, d, np.inf)
        goals = cand & (d <= max(0.5, float(d.min()) + 0.2))
        return grid.distance_field(goals).astype(np.float32)

    return _ROOM_FIELDS.get((house.layout_key, room), make)


class ExploringExpert(ShortestPathExpert):
    """An observation-consistent teacher: it acts only on what its camera has shown it until it
    has seen the target, then behaves exactly as :class:`ShortestPathExpert`.

    The shortest-path expert plans on the full map, so from the first step it drives towards a
    target that is almost never in view (1 of 48 Fetch evaluation episodes start with it in
    view): behaviour cloning from egocentric images cannot learn that, and the cloned policy
    wanders. This teacher first looks around (a full turn on the spot), then visits the rooms
    in order of path distance (nearest unvisited first), looking around in each, until the
    target has been in view within ``SIGHT_DISTANCE``. Its actions before that point depend on
    the house's layout only through doorways and rooms a camera shows, which a policy can learn.
    Safety is ignored as by the shortest-path expert (it drives the same tight paths).
    When every room has been looked at without seeing the target, it falls back to the
    shortest-path expert.
    """

    def __init__(self, env, seed: int = 0) -> None:
        super().__init__(env, safe=False, seed=seed)
        n = env.num_envs
        self._seen = np.zeros(n, dtype=bool)
        # turning done by the current look-around (NaN: not looking around); measured from the
        # robot's yaw, so it counts what was executed (a DAgger driver may not follow the labels)
        self._scan_turned = np.zeros(n)
        self._last_yaw = np.zeros(n)
        self._visited: list[set[int]] = [set() for _ in range(n)]
        self._goal_room = np.full(n, -1, dtype=np.int64)

    def _start_episode(self, r: int, spec: EpisodeSpec) -> None:
        super()._start_episode(r, spec)
        self._seen[r] = False
        self._scan_turned[r] = 0.0
        self._last_yaw[r] = self.env.scene.robot_yaw[r]
        self._visited[r] = set()
        self._goal_room[r] = -1

    def _act_one(self, r: int, spec: EpisodeSpec, s) -> int:
        self._scan_turned[r] += abs(wrap_angle(s.robot_yaw[r] - self._last_yaw[r]))
        self._last_yaw[r] = s.robot_yaw[r]
        if not self._seen[r]:
            targets = spec.targets()
            near = np.linalg.norm(s.obj_pos[r, targets, :2] - s.robot_xy[r], axis=1) <= SIGHT_DISTANCE
            self._seen[r] = bool((self.env._vis_obj[r, targets] & near).any()) or s.held[r] >= 0
        if self._seen[r]:
            return super()._act_one(r, spec, s)
        if self._scan_turned[r] < SCAN_ANGLE:  # NaN compares False
            return A["l"]
        house = spec.house
        xy = s.robot_xy[r]
        here = house.room_index(float(xy[0]), float(xy[1]))
        if here is not None and self._goal_room[r] < 0:
            self._visited[r].add(here)  # the room it starts in was looked at by the first scan
        if self._goal_room[r] >= 0:
            field_ = _room_field(house, int(self._goal_room[r]))
            if _at(field_, xy) <= ROOM_ARRIVAL:
                self._visited[r].add(int(self._goal_room[r]))
                self._goal_room[r] = -1
                self._scan_turned[r] = 0.0
                return A["l"]
            return self._navigate(r, field_, xy, s.robot_yaw[r], s)
        left = [k for k in range(len(house.rooms)) if k not in self._visited[r]]
        dist = [_at(_room_field(house, k), xy) for k in left]
        reachable = [(d, k) for d, k in zip(dist, left) if np.isfinite(d)]
        if not reachable:
            self._seen[r] = True  # nothing left to look at: the shortest-path expert takes over
            return super()._act_one(r, spec, s)
        goal = min(reachable)[1]
        self._goal_room[r] = goal
        self._scan_turned[r] = np.nan
        return self._navigate(r, _room_field(house, goal), xy, s.robot_yaw[r], s)


TEACHERS = {"shortest": ShortestPathExpert, "explore": ExploringExpert}


def check_teacher(name: str) -> None:
    """Raise :class:`~cmdp.errors.ConfigError` naming the allowed teachers unless ``name`` is one."""
    if name not in TEACHERS:
        raise ConfigError(f"unknown teacher {name!r}; allowed: {', '.join(TEACHERS)}")


def make_teacher(name: str, env, seed: int = 0) -> ShortestPathExpert:
    """The unsafe teacher called ``name`` (see :data:`TEACHERS`) for ``env``."""
    check_teacher(name)
    return TEACHERS[name](env, seed=seed)


def _can_reach(s, r: int, target: int) -> bool:
    """Whether the gripper can get to the target from the robot's current position: close
    enough, and no wall or furniture taller than the target's base in between."""
    from cmdp.envs.chores.geometry import segment_box_span

    obj = s.obj_pos[r, target]
    xy = s.robot_xy[r]
    if math.hypot(obj[0] - xy[0], obj[1] - xy[1]) > cat.ROBOT_RADIUS + cat.ARM_EXTENSION_RANGE[1] - 0.02:
        return False
    t_in, _ = segment_box_span(xy[None, :], obj[None, :2], s.box[r][None])
    support = s.obj_support[r, target]
    blocking = (t_in[0] < 0.98) & (s.box[r, :, 4] > obj[2] + 0.02)
    if support >= 0:
        blocking[support] = False
    return not blocking.any()


def _turn(err: float) -> int:
    if abs(err) > ALIGN_LARGE:
        return A["l"] if err > 0 else A["r"]
    return A["ls"] if err > 0 else A["rs"]


def _at(field_: np.ndarray, xy: np.ndarray) -> float:
    iy = min(max(int(xy[1] / GRID_RES), 0), field_.shape[0] - 1)
    ix = min(max(int(xy[0] / GRID_RES), 0), field_.shape[1] - 1)
    return float(field_[iy, ix])


_NEIGHBOURS = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])


def _lookahead(field_: np.ndarray, xy: np.ndarray, distance: float) -> np.ndarray:
    """The farthest point, at most ``distance`` metres down the shortest path from ``xy``
    (steepest descent of the field), that the robot can reach in a straight line through free
    cells: aiming at it never cuts a corner."""
    ny, nx = field_.shape
    iy = min(max(int(xy[1] / GRID_RES), 0), ny - 1)
    ix = min(max(int(xy[0] / GRID_RES), 0), nx - 1)
    if not np.isfinite(field_[iy, ix]):
        # off the grid's free space (pressed against something): head for the nearest free cell
        ys, xs = np.nonzero(np.isfinite(field_))
        k = np.argmin((ys - iy) ** 2 + (xs - ix) ** 2)
        return np.array([(xs[k] + 0.5) * GRID_RES, (ys[k] + 0.5) * GRID_RES])
    best = None
    travelled = 0.0
    for _ in range(int(distance / GRID_RES) + 3):
        cand = np.array([iy, ix]) + _NEIGHBOURS
        ok = (cand[:, 0] >= 0) & (cand[:, 0] < ny) & (cand[:, 1] >= 0) & (cand[:, 1] < nx)
        cand = cand[ok]
        vals = field_[cand[:, 0], cand[:, 1]]
        k = int(np.argmin(vals))
        if not vals[k] < field_[iy, ix]:
            break
        travelled += GRID_RES * math.hypot(*(cand[k] - (iy, ix)))
        iy, ix = int(cand[k, 0]), int(cand[k, 1])
        point = np.array([(ix + 0.5) * GRID_RES, (iy + 0.5) * GRID_RES])
        if best is not None and not _line_free(field_, xy, point):
            break
        best = point
        if travelled >= distance:
            break
    return best if best is not None else np.array([(ix + 0.5) * GRID_RES, (iy + 0.5) * GRID_RES])


def _line_free(field_: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether every cell on the segment a-b (sampled every 0.05 m) is free (finite field)."""
    n = max(int(np.hypot(*(b - a)) / 0.05), 1) + 1
    pts = a[None, :] + np.linspace(0.0, 1.0, n)[:, None] * (b - a)[None, :]
    iy = np.clip((pts[:, 1] / GRID_RES).astype(np.int64), 0, field_.shape[0] - 1)
    ix = np.clip((pts[:, 0] / GRID_RES).astype(np.int64), 0, field_.shape[1] - 1)
    return bool(np.isfinite(field_[iy, ix]).all())


def expert_episode_length(spec: EpisodeSpec, max_steps: int = 600, safe: bool = False) -> int | None:
    """Steps the expert needs to finish ``spec`` (``None`` when it fails within ``max_steps``)."""
    from cmdp.envs.chores.env import ChoresEnv

    env = ChoresEnv(spec.task, num_envs=1, seed=0, episodes=[spec], max_episode_steps=max_steps)
    env.reset(seed=0)
    expert = ShortestPathExpert(env, safe=safe)
    for _ in range(max_steps):
        _, _, _, term, trunc, info = env.step(expert.act())
        if term[0] or trunc[0]:
            ep = info["episode"][0]
            return ep["length"] if ep["success"] else None
    return None


def run_expert(env, episodes: int, safe: bool = False, seed: int = 0) -> list[dict]:
    """Run the expert on ``env`` until ``episodes`` episodes finished; their ``info["episode"]``."""
    env.reset(seed=seed)
    expert = ShortestPathExpert(env, safe=safe, seed=seed)
    done: list[dict] = []
    while len(done) < episodes:
        _, _, _, _, _, info = env.step(expert.act())
        done += info.get("episode", [])
    return done[:episodes]
