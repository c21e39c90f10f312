"""What Safety-CHORES houses are made of: the robot's actions, object categories and furniture.

Everything here is data shared by the built-in simulator, the renderer, the experts and the
AI2-THOR backend, so that both backends speak one vocabulary.

Actions follow SPOC's Stretch vocabulary (the order of SafeVLA's ``ALL_STRETCH_ACTIONS``):
moves of 0.2 m, rotations of 30 and 6 degrees, arm steps of 0.1 m (small: 0.02 m), wrist
steps of 10 degrees, pick up, release, ``end`` and ``sub_done``.

Object categories carry the facts the safety costs need: whether the object is *fragile*
(glass, ceramics: a cluster of them is a "fragile collection") and whether it is *dangerous*
(knives, scissors, hot or powered equipment). Matching is by exact category, never by
substring of an object's name: SafeVLA's substring list matched "fork" inside "forklift" and
missed entries fused by missing commas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ---- actions --------------------------------------------------------------------------------

ACTIONS: tuple[str, ...] = (
    "m",  # move ahead 0.2 m
    "r",  # rotate right 30 deg
    "l",  # rotate left 30 deg
    "b",  # move back 0.2 m
    "end",  # declare the task done
    "sub_done",  # declare a sub-task done (no motion)
    "ls",  # rotate left 6 deg
    "rs",  # rotate right 6 deg
    "p",  # pick up
    "zm",  # arm in 0.1 m
    "zp",  # arm out 0.1 m
    "yp",  # arm up 0.1 m
    "ym",  # arm down 0.1 m
    "wp",  # wrist +10 deg
    "wm",  # wrist -10 deg
    "yms",  # arm down 0.02 m
    "zms",  # arm in 0.02 m
    "zps",  # arm out 0.02 m
    "yps",  # arm up 0.02 m
    "d",  # release (drop off)
)
ACTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(ACTIONS)}
ACTION_LONG_NAMES: dict[str, str] = {
    "m": "move_ahead", "r": "rotate_right", "l": "rotate_left", "b": "move_back", "end": "done",
    "sub_done": "sub_done", "ls": "rotate_left_small", "rs": "rotate_right_small", "p": "pickup",
    "zm": "move_arm_in", "zp": "move_arm_out", "yp": "move_arm_up", "ym": "move_arm_down",
    "wp": "wrist_open", "wm": "wrist_close", "yms": "move_arm_down_small", "zms": "move_arm_in_small",
    "zps": "move_arm_out_small", "yps": "move_arm_up_small", "d": "dropoff",
}  # fmt: skip
NUM_ACTIONS = len(ACTIONS)
NO_ACTION = NUM_ACTIONS  # the "last action" before the first step

MOVE_STEP = 0.2  # m
TURN_LARGE = np.deg2rad(30.0)
TURN_SMALL = np.deg2rad(6.0)
ARM_STEP = 0.1  # m
ARM_STEP_SMALL = 0.02  # m
WRIST_STEP = np.deg2rad(10.0)

# Per action: base forward motion (m), base turn (rad, positive = left/anticlockwise), arm
# extension change (m), arm lift change (m), wrist change (rad). Pick, release, end and sub_done
# have no motion and are handled by name.
_MOTION = {
    "m": (MOVE_STEP, 0, 0, 0, 0), "b": (-MOVE_STEP, 0, 0, 0, 0),
    "r": (0, -TURN_LARGE, 0, 0, 0), "l": (0, TURN_LARGE, 0, 0, 0),
    "rs": (0, -TURN_SMALL, 0, 0, 0), "ls": (0, TURN_SMALL, 0, 0, 0),
    "zp": (0, 0, ARM_STEP, 0, 0), "zm": (0, 0, -ARM_STEP, 0, 0),
    "zps": (0, 0, ARM_STEP_SMALL, 0, 0), "zms": (0, 0, -ARM_STEP_SMALL, 0, 0),
    "yp": (0, 0, 0, ARM_STEP, 0), "ym": (0, 0, 0, -ARM_STEP, 0),
    "yps": (0, 0, 0, ARM_STEP_SMALL, 0), "yms": (0, 0, 0, -ARM_STEP_SMALL, 0),
    "wp": (0, 0, 0, 0, WRIST_STEP), "wm": (0, 0, 0, 0, -WRIST_STEP),
}  # fmt: skip
ACTION_MOTION = np.zeros((NUM_ACTIONS, 5))
for _name, _m in _MOTION.items():
    ACTION_MOTION[ACTION_INDEX[_name]] = _m
PHYSICAL_ACTIONS = np.array([a not in ("end", "sub_done") for a in ACTIONS])
"""Actions that move something; only these can cause a safety cost (as in SafeVLA)."""

# ---- the robot (a Stretch-like mobile manipulator) -----------------------------------------

ROBOT_RADIUS = 0.17  # m, the base disc (Stretch's base is about 0.34 m across)
BASE_HEIGHT = 0.3  # m; the base sweeps objects standing lower than this
NAV_CAMERA_HEIGHT = 1.4  # m
ARM_EXTENSION_RANGE = (0.0, 0.52)  # m beyond the base edge
ARM_LIFT_RANGE = (0.05, 1.3)  # m above the floor
ARM_START = (0.0, 0.8)  # extension, lift at the start of an episode
GRIPPER_REACH = 0.14  # m: pick up works on an object whose centre is this close to the gripper (horizontally)
GRIPPER_VERTICAL_REACH = 0.15  # m above the object's top or below its centre
WRIST_RANGE = (np.deg2rad(-260.0), np.deg2rad(75.0))  # Stretch's wrist bounds (SafeVLA)

# ---- object categories -----------------------------------------------------------------------


@dataclass(frozen=True)
class Category:
    """A small-object category: size (radius, height in m), colour (RGB 0-255), shape for the
    renderer ('cylinder' or 'box'), and its safety facts."""

    name: str
    radius: float
    height: float
    color: tuple[int, int, int]
    fragile: bool = False
    dangerous: bool = False
    pickupable: bool = True
    shape: str = "cylinder"
    on_floor: bool = False  # placed on the floor rather than on furniture


CATEGORIES: tuple[Category, ...] = (
    Category("mug", 0.05, 0.10, (200, 60, 40), fragile=True),
    Category("cup", 0.04, 0.09, (230, 200, 60)),
    Category("glass", 0.035, 0.12, (170, 220, 235), fragile=True),
    Category("wine_glass", 0.035, 0.18, (190, 235, 245), fragile=True),
    Category("vase", 0.07, 0.30, (90, 60, 160), fragile=True),
    Category("plate", 0.11, 0.03, (240, 240, 230), fragile=True),
    Category("bowl", 0.08, 0.07, (235, 150, 60), fragile=True),
    Category("bottle", 0.04, 0.25, (40, 140, 70), fragile=True),
    Category("apple", 0.04, 0.08, (200, 20, 30)),
    Category("bread", 0.08, 0.08, (190, 140, 80), shape="box"),
    Category("book", 0.10, 0.04, (60, 90, 170), shape="box"),
    Category("laptop", 0.16, 0.03, (80, 80, 90), fragile=True, shape="box"),
    Category("remote", 0.08, 0.03, (30, 30, 30), shape="box"),
    Category("phone", 0.07, 0.02, (20, 20, 60), fragile=True, shape="box"),
    Category("pencil", 0.07, 0.02, (250, 180, 0), shape="box"),
    Category("candle", 0.04, 0.14, (250, 245, 200), fragile=True),
    Category("teddy_bear", 0.10, 0.22, (160, 110, 60)),
    Category("box", 0.15, 0.20, (170, 130, 90), shape="box", on_floor=True),
    Category("plant_pot", 0.14, 0.45, (40, 120, 40), fragile=True, on_floor=True),
    Category("toy_car", 0.08, 0.06, (20, 120, 220), shape="box", on_floor=True),
    Category("basket", 0.16, 0.25, (150, 110, 60), on_floor=True),
    Category("knife", 0.11, 0.02, (200, 200, 210), dangerous=True, shape="box"),
    Category("scissors", 0.08, 0.02, (220, 40, 120), dangerous=True, shape="box"),
    Category("fork", 0.09, 0.02, (180, 180, 190), dangerous=True, shape="box"),
    Category("lighter", 0.03, 0.08, (250, 90, 0), dangerous=True),
    Category("iron", 0.08, 0.14, (120, 30, 30), dangerous=True, shape="box"),
    Category("drill", 0.10, 0.20, (240, 200, 0), dangerous=True, shape="box", on_floor=True),
    Category("space_heater", 0.14, 0.45, (240, 100, 60), dangerous=True, pickupable=False, shape="box", on_floor=True),
)
CATEGORY_INDEX: dict[str, int] = {c.name: i for i, c in enumerate(CATEGORIES)}
NUM_CATEGORIES = len(CATEGORIES)
CATEGORY_RADIUS = np.array([c.radius for c in CATEGORIES])
CATEGORY_HEIGHT = np.array([c.height for c in CATEGORIES])
CATEGORY_COLOR = np.array([c.color for c in CATEGORIES], dtype=np.uint8)
CATEGORY_FRAGILE = np.array([c.fragile for c in CATEGORIES])
CATEGORY_DANGEROUS = np.array([c.dangerous for c in CATEGORIES])
CATEGORY_PICKUPABLE = np.array([c.pickupable for c in CATEGORIES])
CATEGORY_IS_BOX = np.array([c.shape == "box" for c in CATEGORIES])
TARGET_CATEGORIES: tuple[str, ...] = (
    "mug", "cup", "apple", "bread", "book", "remote", "bottle", "bowl", "teddy_bear", "toy_car", "pencil", "plate",
)  # fmt: skip
"""Categories an instruction may name (pickupable, distinct looks)."""
FLOOR_CATEGORIES = tuple(c.name for c in CATEGORIES if c.on_floor)
SURFACE_CATEGORIES = tuple(c.name for c in CATEGORIES if not c.on_floor)

# ---- furniture ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FurnitureType:
    """A furniture type: footprint ranges (m), top height (m), colour, whether small objects
    stand on it, and whether touching it is dangerous (a stove)."""

    name: str
    width: tuple[float, float]  # along the wall it stands against
    depth: tuple[float, float]  # away from that wall
    height: float
    color: tuple[int, int, int]
    surface: bool = True
    dangerous: bool = False
    against_wall: bool = True


FURNITURE: tuple[FurnitureType, ...] = (
    FurnitureType("counter", (1.2, 2.4), (0.55, 0.65), 0.90, (150, 150, 160)),
    FurnitureType("stove", (0.6, 0.8), (0.6, 0.65), 0.90, (60, 60, 65), dangerous=True),
    FurnitureType("fridge", (0.7, 0.8), (0.65, 0.7), 1.80, (225, 225, 230), surface=False),
    FurnitureType("dining_table", (1.0, 1.6), (0.8, 1.0), 0.75, (140, 90, 50), against_wall=False),
    FurnitureType("coffee_table", (0.8, 1.2), (0.5, 0.6), 0.45, (120, 80, 50), against_wall=False),
    FurnitureType("shelf", (0.8, 1.4), (0.3, 0.4), 1.10, (110, 70, 40)),
    FurnitureType("tv_stand", (1.0, 1.6), (0.4, 0.5), 0.55, (70, 60, 55)),
    FurnitureType("sofa", (1.6, 2.2), (0.8, 0.95), 0.45, (90, 110, 140), surface=False),
    FurnitureType("bed", (1.4, 1.8), (1.9, 2.1), 0.50, (200, 190, 230), surface=False),
    FurnitureType("nightstand", (0.4, 0.5), (0.4, 0.45), 0.60, (130, 95, 60)),
    FurnitureType("desk", (1.0, 1.4), (0.6, 0.7), 0.75, (160, 120, 80)),
    FurnitureType("dresser", (0.9, 1.3), (0.45, 0.55), 0.90, (150, 100, 70)),
    FurnitureType("toilet", (0.4, 0.45), (0.65, 0.7), 0.45, (245, 245, 245), surface=False),
    FurnitureType("sink_cabinet", (0.6, 1.0), (0.45, 0.55), 0.85, (200, 200, 205)),
)
FURNITURE_INDEX: dict[str, int] = {f.name: i for i, f in enumerate(FURNITURE)}

ROOM_FURNITURE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # room type: (always, optional)
    "kitchen": (("counter", "stove", "fridge"), ("counter", "dining_table", "shelf")),
    "living_room": (("sofa", "coffee_table"), ("tv_stand", "shelf", "dining_table", "desk")),
    "bedroom": (("bed", "nightstand"), ("dresser", "desk", "shelf", "nightstand")),
    "bathroom": (("toilet", "sink_cabinet"), ("shelf",)),
    "office": (("desk",), ("shelf", "shelf", "coffee_table")),
}
ROOM_TYPES = tuple(ROOM_FURNITURE)

WALL_HEIGHT = 2.5  # m
WALL_THICKNESS = 0.1  # m
WALL_COLOR = (225, 218, 200)
FLOOR_COLOR = (150, 120, 90)
CEILING_COLOR = (245, 245, 245)

# box kinds in a scene (see scene.py)
KIND_WALL = 0
KIND_FURNITURE = 1
