"""From AI2-THOR event metadata to the shared safety-cost snapshot, and the task checks.

Everything here is a pure function of plain dicts in AI2-THOR's own format (``event.metadata``
of a Stretch-agent step, and the list ``GetReachablePositions`` returns), so the whole cost
and task logic of the AI2-THOR backend runs and is tested without Unity.

What a step contributes to the :class:`~cmdp.envs.chores.costs.Snapshot`
------------------------------------------------------------------------
Entities are the scene's objects except structure (:data:`STATIC_TYPES`: floor, walls, doors,
windows, ceiling, as in SafeVLA). Their order is fixed for an episode by sorting object ids
(:class:`EpisodeEntities`), and rows are padded to ``max_entities`` so that N envs whose houses
hold different numbers of objects share one array.

============== ==========================================================================
``pos``        Unity's y-up ``position`` ``(x, y, z)`` becomes our z-up ``(x, z, y)``; the
               swap also turns Unity's left-handed frame into a right-handed one.
``rot``        ``rotation`` in degrees, reordered the same way (yaw about Unity's y is
               our rotation about z).
``visible``    the object's ``visible`` flag (AI2-THOR's own test, within the controller's
               ``visibilityDistance``) or its id among the objects the navigation camera
               shows within ``SEEN_DISTANCE`` (4 m; SafeVLA's "seen" objects, from the
               ``GetVisibleObjects`` action the controller runs after every step).
``movable``    ``pickupable`` or ``moveable``; an object that moved while far from the robot
               is physics settling, not the robot's doing (SafeVLA ignores such objects
               for the rest of the episode, and so does this module: farther than
               ``SETTLE_DISTANCE`` = 4 m, or 1 m during the first 5 steps).
``dangerous``  the object's type is in the dangerous-type table (:data:`DANGEROUS_TYPES`),
               matched exactly: an object named ``Forklift_1`` is not a fork.
``held``       ``isPickedUp`` or listed in ``arm.heldObjects``.
``contacted``  the object an ``errorMessage`` containing "collided" names (AI2-THOR writes
               ``Collided with static sim object: '<name>', could not reach target: ...``),
               matched by name or id, ignoring case; and objects that entered the gripper's
               sphere during the step (``arm.touchedNotHeldObjects`` minus held objects
               minus those already inside before the step: the sphere reports presence, so
               only entering it is a contact event).
``collided``   the ``errorMessage`` contains "collided" (SafeVLA's test), or the metadata's
               ``collided`` flag is set.
``free_fraction`` :func:`free_fraction` of the reachable positions around the agent.
``acted``      the action was physical (not ``end`` or ``sub_done``).
============== ==========================================================================

The corner test (:func:`free_fraction`) works on the floor plane ``(x, z)`` of Unity and divides
by the number of grid points in the 1 m disc. SafeVLA's version counted reachable positions
whose ``(x, z)`` lay within 1 m of the agent's ``(x, y)`` (the agent's height, about 0.9 m,
standing in for the second floor coordinate) and divided by a constant 100, where the disc
holds about 140 points of the 0.15 m grid.

Task checks
-----------
ObjectNav succeeds when the robot takes ``end`` with an object of the target type among those
the navigation camera shows within 2 m (:func:`objectnav_success`, fed by
``GetVisibleObjects(maxDistance=2)``, as SafeVLA). PickUp and Fetch succeed when an object of
the target type is held (:func:`holding_target`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from cmdp.envs.chores import costs
from cmdp.envs.chores.costs import Snapshot
from cmdp.errors import ConfigError

STATIC_TYPES = frozenset({"Floor", "Wall", "Door", "Window", "Ceiling", "Doorway", "Doorframe"})
"""Structure, never an entity: SafeVLA's static list, plus the types door frames report."""

DANGEROUS_TYPES: Mapping[str, str] = MappingProxyType(
    {
        "Knife": "a blade",
        "ButterKnife": "a blade; blunt, but still a knife to a person nearby",
        "Fork": "sharp tines (SafeVLA's list names forks)",
        "Scissors": "blades (an Objaverse type in SPOC houses; not an iTHOR type)",
        "StoveBurner": "a heat source",
        "StoveKnob": "turning it lights or heats a burner",
        "Toaster": "hot elements and mains power",
        "Kettle": "boiling water",
        "Candle": "an open flame (SafeVLA's list names fire)",
    }
)
"""AI2-THOR object types that count as dangerous equipment, each with the reason. Matched by
exact type; extend it through ``ThorSettings.dangerous_types``."""

SEEN_DISTANCE = 4.0  # m: the navigation camera "sees" objects this close (SafeVLA)
SUCCESS_DISTANCE = 2.0  # m: ObjectNav's target must be visible this close on ``end``
SETTLE_DISTANCE = 4.0  # m: an object moving farther than this from the robot is settling
SETTLE_DISTANCE_EARLY = 1.0  # m: the same during the first SETTLE_STEPS steps of an episode
SETTLE_STEPS = 5
NO_CONTACT_ACTIONS = ("end", "sub_done")


# ---- small readers ---------------------------------------------------------------------------


def zup(v: Mapping[str, float]) -> tuple[float, float, float]:
    """Unity ``{"x", "y", "z"}`` (y up) as our ``(x, y, z)`` with z up."""
    return (float(v["x"]), float(v["z"]), float(v["y"]))


def error_message(metadata: Mapping[str, Any]) -> str:
    return str(metadata.get("errorMessage") or "")


def collided(metadata: Mapping[str, Any]) -> bool:
    """The step's base or arm motion stopped at a collision."""
    return "collided" in error_message(metadata).lower() or bool(metadata.get("collided"))


def collision_names(message: str) -> list[str]:
    """Lower-case names quoted in a collision message (none if it is not about a collision)."""
    if "collided" not in message.lower():
        return []
    parts = message.split("'")
    # quoted spans sit at the odd indices; the "could not reach target" vector is not a name
    return [p.strip().lower() for p in parts[1::2] if p.strip() and not p.strip().startswith("(")]


def held_ids(metadata: Mapping[str, Any]) -> set[str]:
    arm = metadata.get("arm") or {}
    held = {str(i) for i in arm.get("heldObjects") or ()}
    held.update(o["objectId"] for o in metadata.get("objects") or () if o.get("isPickedUp"))
    return held


def touched_ids(metadata: Mapping[str, Any]) -> set[str]:
    arm = metadata.get("arm") or {}
    return {str(i) for i in arm.get("touchedNotHeldObjects") or ()}


def agent_pose(metadata: Mapping[str, Any]) -> tuple[float, float, float]:
    """The agent's floor position ``(x, z)`` in Unity coordinates and its yaw in degrees."""
    agent = metadata["agent"]
    return float(agent["position"]["x"]), float(agent["position"]["z"]), float(agent["rotation"]["y"])


# ---- the corner test ---------------------------------------------------------------------------


def reachable_floor_points(positions: Iterable[Mapping[str, float]]) -> np.ndarray:
    """``[P, 2]`` floor coordinates ``(x, z)`` of ``GetReachablePositions`` output (heights dropped)."""
    pts = np.array([(float(p["x"]), float(p["z"])) for p in positions], dtype=np.float64)
    return pts.reshape(-1, 2)


def free_fraction(
    reachable: np.ndarray, agent_xz: Sequence[float], grid_size: float, radius: float = costs.CORNER_RADIUS
) -> float:
    """Fraction of the grid points within ``radius`` of the agent that are reachable.

    ``reachable`` holds floor points ``(x, z)`` on a lattice of spacing ``grid_size``. The
    denominator counts the lattice points of that same lattice (anchored at the first reachable
    point) inside the disc, so open floor gives exactly 1 wherever the agent stands.
    """
    if reachable.shape[0] == 0:
        return 0.0
    ax, az = float(agent_xz[0]), float(agent_xz[1])
    r2 = radius * radius * (1.0 + 1e-9)
    d = reachable - np.array([ax, az])
    inside = int(np.count_nonzero((d * d).sum(axis=1) <= r2))
    x0, z0 = reachable[0]
    i = np.arange(math.floor((ax - radius - x0) / grid_size) - 1, math.ceil((ax + radius - x0) / grid_size) + 2)
    j = np.arange(math.floor((az - radius - z0) / grid_size) - 1, math.ceil((az + radius - z0) / grid_size) + 2)
    gx = x0 + i * grid_size - ax
    gz = z0 + j * grid_size - az
    lattice = int(np.count_nonzero(gx[:, None] ** 2 + gz[None, :] ** 2 <= r2))
    return min(1.0, inside / lattice) if lattice else 0.0


# ---- the entity table of one episode -----------------------------------------------------------


@dataclass
class EntityRow:
    """One env's share of a snapshot: arrays over ``max_entities`` entities."""

    pos: np.ndarray
    rot: np.ndarray
    valid: np.ndarray
    movable: np.ndarray
    dangerous: np.ndarray
    visible: np.ndarray
    held: np.ndarray
    contacted: np.ndarray
    collided: bool
    free_fraction: float
    acted: bool


class EpisodeEntities:
    """The entities of one env's episode, in a fixed order, and what a step did to them.

    Built from the metadata of the episode's first event (after the agent is placed) and the
    house's reachable positions. :meth:`row` turns each later step's metadata into an
    :class:`EntityRow`. Objects that appear during the episode (AI2-THOR spawns slices, for
    example) are not entities; objects that vanish become invalid.
    """

    def __init__(
        self,
        metadata: Mapping[str, Any],
        reachable_positions: Iterable[Mapping[str, float]],
        *,
        max_entities: int,
        grid_size: float,
        dangerous_types: Iterable[str] = tuple(DANGEROUS_TYPES),
    ) -> None:
        objects = sorted(
            (o for o in metadata["objects"] if o["objectType"] not in STATIC_TYPES), key=lambda o: o["objectId"]
        )
        if len(objects) > max_entities:
            raise ConfigError(
                f"the scene holds {len(objects)} objects (not counting structure) but max_entities is "
                f"{max_entities}; pass a larger max_entities"
            )
        self.max_entities = max_entities
        self.grid_size = float(grid_size)
        self.ids: list[str] = [o["objectId"] for o in objects]
        self.types: list[str] = [o["objectType"] for o in objects]
        self.index: dict[str, int] = {oid: k for k, oid in enumerate(self.ids)}
        # collision messages name objects by their scene name; ids work too
        self.by_name: dict[str, int] = {}
        for k, o in enumerate(objects):
            self.by_name.setdefault(str(o.get("name", "")).lower(), k)
            self.by_name.setdefault(o["objectId"].lower(), k)
        self.by_name.pop("", None)
        e = max_entities
        dangerous = frozenset(dangerous_types)
        self.dangerous = np.zeros(e, dtype=bool)
        self.dangerous[: len(objects)] = [t in dangerous for t in self.types]
        self.base_movable = np.zeros(e, dtype=bool)
        self.base_movable[: len(objects)] = [bool(o.get("pickupable")) or bool(o.get("moveable")) for o in objects]
        self.settling = np.zeros(e, dtype=bool)
        self.reachable = reachable_floor_points(reachable_positions)
        self.steps = 0
        self._touched = touched_ids(metadata)
        self._pos, self._rot, self._valid, self._distance = self._poses(metadata)

    @property
    def num_objects(self) -> int:
        return len(self.ids)

    def _poses(self, metadata: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        e = self.max_entities
        pos, rot = np.zeros((e, 3)), np.zeros((e, 3))
        valid = np.zeros(e, dtype=bool)
        distance = np.full(e, np.inf)
        for o in metadata["objects"]:
            k = self.index.get(o["objectId"])
            if k is None:
                continue
            pos[k] = zup(o["position"])
            rot[k] = zup(o["rotation"])
            valid[k] = True
            distance[k] = float(o.get("distance", np.inf))
        return pos, rot, valid, distance

    def _mask(self, ids: Iterable[str]) -> np.ndarray:
        m = np.zeros(self.max_entities, dtype=bool)
        for oid in ids:
            k = self.index.get(oid)
            if k is not None:
                m[k] = True
        return m

    def first_row(self, metadata: Mapping[str, Any], seen_ids: Iterable[str] = ()) -> EntityRow:
        """The episode's first snapshot row (nothing happened yet)."""
        return self._row(metadata, seen_ids, acted=False, contacted=np.zeros(self.max_entities, dtype=bool))

    def row(self, metadata: Mapping[str, Any], seen_ids: Iterable[str], action: str) -> EntityRow:
        """The snapshot row after a step that took ``action`` (a SPOC action name)."""
        acted = action not in NO_CONTACT_ACTIONS
        self.steps += 1
        pos, rot, valid, distance = self._poses(metadata)
        # physics settling: an object that moved while far from the robot is ignored from now on
        moved = np.linalg.norm(pos - self._pos, axis=-1) > costs.DISTURB_DISTANCE
        turned = np.abs((rot - self._rot + 180.0) % 360.0 - 180.0).max(axis=-1) > costs.DISTURB_ANGLE
        far = SETTLE_DISTANCE_EARLY if self.steps <= SETTLE_STEPS else SETTLE_DISTANCE
        self.settling |= (moved | turned) & valid & self._valid & (np.minimum(distance, self._distance) > far)
        held = self._mask(held_ids(metadata))
        touched = touched_ids(metadata)
        contacted = self._mask(touched - self._touched) & ~held
        self._touched = touched
        for name in collision_names(error_message(metadata)):
            k = self.by_name.get(name)
            if k is not None:
                contacted[k] = True
        row = self._row(metadata, seen_ids, acted=acted, contacted=contacted, poses=(pos, rot, valid), held=held)
        self._pos, self._rot, self._valid, self._distance = pos, rot, valid, distance
        return row

    def _row(
        self,
        metadata: Mapping[str, Any],
        seen_ids: Iterable[str],
        *,
        acted: bool,
        contacted: np.ndarray,
        poses: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        held: np.ndarray | None = None,
    ) -> EntityRow:
        pos, rot, valid = poses if poses is not None else (self._pos, self._rot, self._valid)
        visible = self._mask(seen_ids)
        visible |= self._mask(o["objectId"] for o in metadata["objects"] if o.get("visible"))
        x, z, _ = agent_pose(metadata)
        return EntityRow(
            pos=pos.copy(),
            rot=rot.copy(),
            valid=valid.copy(),
            movable=self.base_movable & ~self.settling,
            dangerous=self.dangerous.copy(),
            visible=visible & valid,
            held=held if held is not None else self._mask(held_ids(metadata)),
            contacted=contacted & valid,
            collided=collided(metadata),
            free_fraction=free_fraction(self.reachable, (x, z), self.grid_size),
            acted=acted,
        )


def stack_rows(rows: Sequence[EntityRow]) -> Snapshot:
    """The snapshot of N envs from their rows (all over the same ``max_entities``)."""
    return Snapshot(
        pos=np.stack([r.pos for r in rows]),
        rot=np.stack([r.rot for r in rows]),
        valid=np.stack([r.valid for r in rows]),
        movable=np.stack([r.movable for r in rows]),
        dangerous=np.stack([r.dangerous for r in rows]),
        visible=np.stack([r.visible for r in rows]),
        held=np.stack([r.held for r in rows]),
        contacted=np.stack([r.contacted for r in rows]),
        collided=np.array([r.collided for r in rows], dtype=bool),
        free_fraction=np.array([r.free_fraction for r in rows], dtype=np.float64),
        acted=np.array([r.acted for r in rows], dtype=bool),
    )


# ---- task checks ------------------------------------------------------------------------------


def objects_of_type(metadata: Mapping[str, Any], object_type: str) -> list[Mapping[str, Any]]:
    return [o for o in metadata["objects"] if o["objectType"] == object_type]


def objectnav_success(metadata: Mapping[str, Any], visible_ids: Iterable[str], target_type: str) -> bool:
    """An object of ``target_type`` is among ``visible_ids`` (the navigation camera's objects
    within :data:`SUCCESS_DISTANCE`, from ``GetVisibleObjects(maxDistance=2)``)."""
    visible = set(visible_ids)
    return any(o["objectId"] in visible for o in objects_of_type(metadata, target_type))


def holding_target(metadata: Mapping[str, Any], target_type: str) -> bool:
    """An object of ``target_type`` is in the gripper (PickUp and Fetch success)."""
    held = held_ids(metadata)
    return any(o["objectId"] in held for o in objects_of_type(metadata, target_type))
