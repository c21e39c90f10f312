"""The batched world state of ``N`` Safety-CHORES houses: what the simulator steps and the
renderer draws.

Every env has its own house, so per-house arrays are padded to ``max_boxes`` boxes and
``max_objects`` small objects. Padding boxes sit far outside every house with zero height and
padding objects are marked invalid, so vectorised geometry never needs to branch on them.

Arrays (``N`` envs, ``B`` boxes, ``M`` objects), units metres and radians:

=====================  ==========================================================================
``box``                ``[N, B, 5]`` x0, y0, x1, y1, height (axis-aligned walls and furniture)
``box_kind``           ``[N, B]`` int8: ``KIND_WALL``, ``KIND_FURNITURE``, -1 for padding
``box_type``           ``[N, B]`` int16: furniture type index (catalog.FURNITURE), -1 otherwise
``box_color``          ``[N, B, 3]`` uint8
``box_dangerous``      ``[N, B]`` bool (a stove)
``obj_pos``            ``[N, M, 3]`` x, y of the centre, z of the base
``obj_yaw``            ``[N, M]`` heading of the object about z
``obj_tilt``           ``[N, M]`` 0 upright; pi/2 lying on its side (fallen)
``obj_cat``            ``[N, M]`` int16 category index (catalog.CATEGORIES), -1 for padding
``obj_valid``          ``[N, M]`` bool
``obj_radius``         ``[N, M]`` footprint radius (half the side for box-shaped objects)
``obj_height``         ``[N, M]``
``obj_color``          ``[N, M, 3]`` uint8
``obj_support``        ``[N, M]`` int16: index of the box it stands on, -1 floor
``robot_xy``           ``[N, 2]`` centre of the base
``robot_yaw``          ``[N]`` heading, anticlockwise from +x
``arm_ext``            ``[N]`` arm extension beyond the base edge
``arm_lift``           ``[N]`` height of the arm above the floor
``wrist``              ``[N]`` wrist angle
``held``               ``[N]`` int: index of the object in the gripper, -1 for none
``extent``             ``[N, 2]`` the house's width and depth
=====================  ==========================================================================

The arm points straight ahead of the robot: it runs from the base edge, ``ROBOT_RADIUS`` in
front of the centre, to the gripper, ``arm_ext`` further, at height ``arm_lift``
(:meth:`Scene.gripper`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cmdp.envs.chores import catalog as cat
from cmdp.envs.chores.house import House

PAD_COORD = -1000.0

_BOX_COLORS = np.array([f.color for f in cat.FURNITURE], dtype=np.uint8)
_BOX_DANGER = np.array([f.dangerous for f in cat.FURNITURE])


class Scene:
    """Padded state arrays of ``num_envs`` houses; see the module docstring."""

    def __init__(self, num_envs: int, max_boxes: int, max_objects: int) -> None:
        n, b, m = num_envs, max_boxes, max_objects
        self.num_envs, self.max_boxes, self.max_objects = n, b, m
        self.box = np.zeros((n, b, 5))
        self.box_kind = np.full((n, b), -1, dtype=np.int8)
        self.box_type = np.full((n, b), -1, dtype=np.int16)
        self.box_color = np.zeros((n, b, 3), dtype=np.uint8)
        self.box_dangerous = np.zeros((n, b), dtype=bool)
        self.obj_pos = np.zeros((n, m, 3))
        self.obj_yaw = np.zeros((n, m))
        self.obj_tilt = np.zeros((n, m))
        self.obj_cat = np.full((n, m), -1, dtype=np.int16)
        self.obj_valid = np.zeros((n, m), dtype=bool)
        self.obj_radius = np.zeros((n, m))
        self.obj_height = np.zeros((n, m))
        self.obj_color = np.zeros((n, m, 3), dtype=np.uint8)
        self.obj_support = np.full((n, m), -1, dtype=np.int16)
        self.robot_xy = np.zeros((n, 2))
        self.robot_yaw = np.zeros(n)
        self.arm_ext = np.zeros(n)
        self.arm_lift = np.zeros(n)
        self.wrist = np.zeros(n)
        self.held = np.full(n, -1, dtype=np.int64)
        self.extent = np.zeros((n, 2))
        self._pad_boxes(slice(None))

    # fields whose rows are state (saved and restored by the env)
    STATE_FIELDS = (
        "box", "box_kind", "box_type", "box_color", "box_dangerous", "obj_pos", "obj_yaw", "obj_tilt", "obj_cat",
        "obj_valid", "obj_radius", "obj_height", "obj_color", "obj_support", "robot_xy", "robot_yaw", "arm_ext",
        "arm_lift", "wrist", "held", "extent",
    )  # fmt: skip

    def _pad_boxes(self, rows) -> None:
        self.box[rows] = (PAD_COORD, PAD_COORD, PAD_COORD + 0.01, PAD_COORD + 0.01, 0.0)
        self.box_kind[rows] = -1
        self.box_type[rows] = -1
        self.box_color[rows] = 0
        self.box_dangerous[rows] = False

    def load(self, row: int, house: House, start: tuple[float, float, float], arm: tuple[float, float] | None = None) -> None:
        """Put ``house`` into env ``row`` with the robot at ``start = (x, y, yaw)`` and the arm at
        ``arm = (extension, lift)`` (default: stowed, ``catalog.ARM_START``)."""
        nb, no = house.num_boxes, house.num_objects
        if nb > self.max_boxes or no > self.max_objects:
            raise ValueError(
                f"house has {nb} boxes and {no} objects; this scene holds at most {self.max_boxes} "
                f"and {self.max_objects} (raise max_boxes / max_objects)"
            )
        self._pad_boxes(row)
        self.box[row, :nb] = house.boxes
        self.box_kind[row, :nb] = house.box_kind
        self.box_type[row, :nb] = house.box_type
        furniture = house.box_type >= 0
        colors = np.tile(np.array(cat.WALL_COLOR, dtype=np.uint8), (nb, 1))
        colors[furniture] = _BOX_COLORS[house.box_type[furniture]]
        self.box_color[row, :nb] = colors
        self.box_dangerous[row, :nb] = furniture & _BOX_DANGER[np.maximum(house.box_type, 0)]
        self.obj_valid[row] = False
        self.obj_cat[row] = -1
        self.obj_pos[row] = (PAD_COORD, PAD_COORD, 0.0)
        self.obj_radius[row] = 0.0
        self.obj_height[row] = 0.0
        self.obj_tilt[row] = 0.0
        self.obj_support[row] = -1
        c = house.obj_cat.astype(np.int64)
        self.obj_pos[row, :no] = house.obj_pos
        self.obj_yaw[row, :no] = house.obj_yaw
        self.obj_cat[row, :no] = house.obj_cat
        self.obj_valid[row, :no] = True
        self.obj_radius[row, :no] = cat.CATEGORY_RADIUS[c]
        self.obj_height[row, :no] = cat.CATEGORY_HEIGHT[c]
        self.obj_color[row, :no] = cat.CATEGORY_COLOR[c]
        self.obj_support[row, :no] = house.obj_support
        self.robot_xy[row] = start[:2]
        self.robot_yaw[row] = start[2]
        self.arm_ext[row], self.arm_lift[row] = cat.ARM_START if arm is None else arm
        self.wrist[row] = 0.0
        self.held[row] = -1
        self.extent[row] = (house.width, house.depth)

    # ---- derived geometry ------------------------------------------------------------------

    def heading(self) -> np.ndarray:
        """[N, 2] unit vector of the robot's heading."""
        return np.stack([np.cos(self.robot_yaw), np.sin(self.robot_yaw)], axis=1)

    def arm_base(self) -> np.ndarray:
        """[N, 2] where the arm leaves the base (the front of the base disc)."""
        return self.robot_xy + cat.ROBOT_RADIUS * self.heading()

    def gripper(self) -> np.ndarray:
        """[N, 3] the gripper's position: x, y, z."""
        tip = self.robot_xy + (cat.ROBOT_RADIUS + self.arm_ext)[:, None] * self.heading()
        return np.concatenate([tip, self.arm_lift[:, None]], axis=1)

    def obj_category_flags(self, index: Any = ...) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[N, M] fragile, dangerous and pickupable flags (False for padding), or those of the
        objects picked by ``index``, any numpy index into ``[N, M]`` arrays."""
        c = np.maximum(self.obj_cat[index], 0)
        v = self.obj_valid[index]
        return cat.CATEGORY_FRAGILE[c] & v, cat.CATEGORY_DANGEROUS[c] & v, cat.CATEGORY_PICKUPABLE[c] & v

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f: getattr(self, f).copy() for f in self.STATE_FIELDS}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        for f in self.STATE_FIELDS:
            cur = getattr(self, f)
            new = np.asarray(state[f])
            if new.shape != cur.shape:
                raise ValueError(f"scene field {f!r}: saved shape {new.shape}, expected {cur.shape}")
            setattr(self, f, new.astype(cur.dtype, copy=True))
