"""Writes the AI2-THOR fixtures of tests/test_thor_backend.py (run it to regenerate them).

Nothing here runs Unity: the files are hand-designed, in AI2-THOR's own formats.

``houses/house_two_rooms.json``
    A ProcTHOR house (schema 1.0.0): a kitchen ``[0, 4] x [0, 4]`` and a living room
    ``[4, 7] x [0, 4]`` (Unity x and z, metres) joined by a doorway at ``z`` in ``[0.8, 1.8]``;
    a counter with three cups, a knife, a mug and a book; a chair; a shelving unit with a vase.

``fetch_episode.json.gz``
    A Fetch episode ("fetch a mug") as the controller would report it: the reset event, the
    reachable positions (0.15 m grid) and, per step, the SPOC action, the step's
    ``event.metadata`` (Stretch agent; the objects' full metadata), the ids
    ``GetVisibleObjects(maxDistance=4)`` returns and, for ObjectNav checks, those within 2 m.
    The robot drives a scripted route; the script moves it, turns it and extends its arm, and
    a simple camera model (88 deg horizontal field of view, the interior wall occluding except
    through the doorway) decides what the navigation camera sees. The events the tests expect:

    ====  ===========================================================================
    1     a clean move; far away the vase slides 0.3 m (physics settling, ignored)
    3     the base hits the east wall in the living room's south-east corner
    28    the arm, extended west while the robot faces south, hits the chair (seen on
          the way, out of view now)
    65    the arm's gripper sphere reaches the knife (in view)
    67    a small turn drags the book 0.12 m
    72    a small turn nudges one of the three clustered cups by 0.07 m
    73    the mug is picked up
    ====  ===========================================================================
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

HERE = Path(__file__).parent
AGENT_Y = 0.9009921550750732  # the Stretch agent's position height in AI2-THOR
GRID = 0.15
HFOV = 88.0  # deg: 59 deg vertical at 384x224
SEEN = 4.0
VISIBILITY = 0.8673349051766235
DOOR = (0.8, 1.8)  # z range of the doorway in the wall x = 4

STATIC = [
    # (objectId, type, name, position)
    ("room|2", "Floor", "Floor_room_2", (2.0, 0.0, 2.0)),
    ("room|3", "Floor", "Floor_room_3", (5.5, 0.0, 2.0)),
    ("wall|2|0.00|0.00|4.00|0.00", "Wall", "wall_2_0", (2.0, 1.25, 0.0)),
    ("wall|3|7.00|0.00|7.00|4.00", "Wall", "wall_3_1", (7.0, 1.25, 2.0)),
    ("wall|2|4.00|0.00|4.00|4.00", "Wall", "wall_2_2", (4.0, 1.25, 2.0)),
    ("door|2|3", "Doorway", "Doorway_1", (4.0, 1.0, 1.3)),
]
# objectId, type, name, position (Unity x, y, z), yaw, pickupable, moveable, receptacle, size (x, y, z)
OBJECTS = [
    ("CounterTop|2|0", "CounterTop", "CounterTop_7a2c1f9e", (2.0, 0.45, 3.7), 0, False, False, True, (3.0, 0.9, 0.6)),
    ("Cup|2|0|0", "Cup", "Cup_0b1c2d3e", (1.6, 0.95, 3.6), 0, True, False, True, (0.08, 0.1, 0.08)),
    ("Cup|2|0|1", "Cup", "Cup_4f5a6b7c", (1.8, 0.95, 3.6), 90, True, False, True, (0.08, 0.1, 0.08)),
    ("Cup|2|0|2", "Cup", "Cup_8d9e0f1a", (1.7, 0.95, 3.75), 180, True, False, True, (0.08, 0.1, 0.08)),
    ("Knife|2|0|3", "Knife", "Knife_2b3c4d5e", (2.3, 0.91, 3.6), 90, True, False, False, (0.03, 0.02, 0.3)),
    ("Mug|2|0|4", "Mug", "Mug_6f7a8b9c", (2.9, 0.95, 3.6), 0, True, False, True, (0.1, 0.1, 0.1)),
    ("Book|2|0|5", "Book", "Book_0d1e2f3a", (3.4, 0.92, 3.55), 30, True, False, False, (0.2, 0.04, 0.25)),
    ("Chair|3|1", "Chair", "Chair_4b5c6d7e", (5.5, 0.45, 2.0), 90, False, True, True, (0.5, 0.9, 0.5)),
    ("ShelvingUnit|3|2", "ShelvingUnit", "ShelvingUnit_8f9a0b1c", (6.6, 0.9, 3.6), 270, False, False, True, (0.6, 1.8, 0.4)),
    ("Vase|3|2|0", "Vase", "Vase_2d3e4f5a", (6.6, 1.6, 3.6), 0, True, False, False, (0.12, 0.3, 0.12)),
]


def v(x: float, y: float, z: float) -> dict:
    return {"x": round(x, 6), "y": round(y, 6), "z": round(z, 6)}


# ---- the house --------------------------------------------------------------------------------


def house() -> dict:
    def wall(room: str, x0: float, z0: float, x1: float, z1: float) -> dict:
        return {
            "id": f"wall|{room}|{x0:.2f}|{z0:.2f}|{x1:.2f}|{z1:.2f}",
            "roomId": f"room|{room}",
            "material": {"name": "PureWhite"},
            "polygon": [v(x0, 0, z0), v(x1, 0, z1), v(x0, 2.5, z0), v(x1, 2.5, z1)],
        }

    def obj(oid: str, asset: str, pos, yaw: float, children=()) -> dict:
        return {
            "assetId": asset,
            "id": oid,
            "kinematic": not children and oid.count("|") < 3,
            "position": v(*pos),
            "rotation": v(0, yaw, 0),
            "layer": "Procedural0",
            "material": None,
            "children": list(children),
        }

    rooms = [("2", "Kitchen", 0.0, 4.0), ("3", "LivingRoom", 4.0, 7.0)]
    walls = []
    for rid, _, x0, x1 in rooms:
        walls += [wall(rid, x0, 0, x1, 0), wall(rid, x1, 0, x1, 4), wall(rid, x1, 4, x0, 4), wall(rid, x0, 4, x0, 0)]
    counter_children = [obj(o[0], f"{o[1]}_1", o[3], o[4]) for o in OBJECTS[1:7]]
    return {
        "doors": [
            {
                "assetId": "Doorway_1",
                "id": "door|2|3",
                "openable": False,
                "openness": 0,
                "room0": "room|2",
                "room1": "room|3",
                "wall0": "wall|2|4.00|0.00|4.00|4.00",
                "wall1": "wall|3|4.00|4.00|4.00|0.00",
                "holePolygon": [v(DOOR[0], 0, 0), v(DOOR[1], 2.1, 0)],
                "assetPosition": v(1.3, 1.05, 0),
            }
        ],
        "metadata": {
            "agent": {"horizon": 30, "position": v(6.2, 0.95, 0.5), "rotation": v(0, 90, 0), "standing": True},
            "roomSpecId": "kitchen-living-room",
            "schema": "1.0.0",
            "warnings": {},
        },
        "objects": [
            obj("CounterTop|2|0", "Counter_Top_1", OBJECTS[0][3], 0, counter_children),
            obj("Chair|3|1", "Chair_207_1", OBJECTS[7][3], 90),
            obj("ShelvingUnit|3|2", "Shelving_Unit_204_1", OBJECTS[8][3], 270, [obj("Vase|3|2|0", "Vase_Tall_1", OBJECTS[9][3], 0)]),
        ],
        "proceduralParameters": {
            "ceilingMaterial": {"name": "PureWhite"},
            "floorColliderThickness": 1.0,
            "lights": [
                {
                    "id": "DirectionalLight",
                    "position": v(0.84, 0.1855, -1.09),
                    "rotation": v(43.375, -3.902, -63.618),
                    "shadow": {"type": "Soft", "strength": 1, "normalBias": 0, "bias": 0, "nearPlane": 0.2, "resolution": "FromQualitySettings"},
                    "type": "directional",
                    "intensity": 0.35,
                    "indirectMultiplier": 1.0,
                    "rgb": {"r": 1.0, "g": 1.0, "b": 1.0},
                }
            ],
            "receptacleHeight": 0.7,
            "reflections": [],
            "skyboxId": "Sky1",
        },
        "rooms": [
            {
                "id": f"room|{rid}",
                "roomType": rtype,
                "floorMaterial": {"name": "OrangeWood"},
                "floorPolygon": [v(x0, 0, 0), v(x0, 0, 4), v(x1, 0, 4), v(x1, 0, 0)],
                "ceilings": [],
                "children": [],
                "layer": "Procedural0",
            }
            for rid, rtype, x0, x1 in rooms
        ],
        "walls": walls,
        "windows": [],
    }


# ---- reachable positions -------------------------------------------------------------------------


def reachable() -> list[dict]:
    """The 0.15 m grid of agent centres that keep 0.3 m from walls and furniture."""
    out = []
    for i in range(200):
        x = round(0.3 + GRID * i, 4)
        if x > 6.7:
            break
        for j in range(200):
            z = round(0.3 + GRID * j, 4)
            if z > 3.7:
                break
            if abs(x - 4.0) < 0.3 and not (DOOR[0] + 0.25 <= z <= DOOR[1] - 0.25):
                continue  # the interior wall, except through the doorway
            if 0.2 <= x <= 3.8 and z > 3.1:
                continue  # the counter
            if 4.95 <= x <= 6.05 and 1.45 <= z <= 2.55:
                continue  # the chair
            if x > 6.0 and z > 3.1:
                continue  # the shelving unit
            out.append(v(x, AGENT_Y, z))
    return out


# ---- the camera model --------------------------------------------------------------------------


def bearing(ax: float, az: float, yaw: float, p) -> float:
    """Angle of point p seen from the agent, relative to its heading, in (-180, 180]."""
    b = math.degrees(math.atan2(p[0] - ax, p[2] - az))
    return (b - yaw + 180.0) % 360.0 - 180.0


def occluded(ax: float, az: float, p) -> bool:
    """The interior wall x = 4 blocks the view unless the line passes through the doorway."""
    if (ax - 4.0) * (p[0] - 4.0) >= 0:
        return False
    t = (4.0 - ax) / (p[0] - ax)
    z = az + t * (p[2] - az)
    return not DOOR[0] <= z <= DOOR[1]


def camera(agent: dict, positions: dict[str, tuple], within: float) -> list[str]:
    ax, az, yaw = agent["x"], agent["z"], agent["yaw"]
    out = []
    for oid, p in positions.items():
        d = math.dist((ax, AGENT_Y, az), p)
        if d <= within and abs(bearing(ax, az, yaw, p)) <= HFOV / 2 and not occluded(ax, az, p):
            out.append(oid)
    return sorted(out)


# ---- metadata in AI2-THOR's format ---------------------------------------------------------------


def box(center, size) -> dict:
    cx, cy, cz = center
    sx, sy, sz = size
    corners = [
        [round(cx + dx * sx / 2, 5), round(cy + dy * sy / 2, 5), round(cz + dz * sz / 2, 5)]
        for dx in (1, -1) for dy in (1, -1) for dz in (1, -1)
    ]  # fmt: skip
    return {"cornerPoints": corners, "center": v(*center), "size": v(*size)}


def object_metadata(spec, pos, rot, agent, visible: bool, picked: bool, parents) -> dict:
    oid, otype, name, _, _, pickupable, moveable, receptacle, size = spec
    return {
        "name": name,
        "position": v(*pos),
        "rotation": v(*rot),
        "visible": visible,
        "isInteractable": visible,
        "receptacle": receptacle,
        "toggleable": False,
        "isToggled": False,
        "breakable": otype in ("Cup", "Mug", "Vase"),
        "isBroken": False,
        "canFillWithLiquid": otype in ("Cup", "Mug", "Vase"),
        "isFilledWithLiquid": False,
        "fillLiquid": None,
        "dirtyable": otype in ("Cup", "Mug"),
        "isDirty": False,
        "canBeUsedUp": False,
        "isUsedUp": False,
        "cookable": False,
        "isCooked": False,
        "temperature": "RoomTemp",
        "isHeatSource": False,
        "isColdSource": False,
        "sliceable": False,
        "isSliced": False,
        "openable": False,
        "isOpen": False,
        "openness": 0.0,
        "pickupable": pickupable,
        "isPickedUp": picked,
        "moveable": moveable,
        "mass": 0.5 if pickupable else 10.0,
        "salientMaterials": ["Ceramic"] if otype in ("Cup", "Mug", "Vase") else ["Wood"],
        "receptacleObjectIds": [],
        "distance": round(math.dist((agent["x"], AGENT_Y, agent["z"]), pos), 6),
        "objectType": otype,
        "objectId": oid,
        "assetId": f"{otype}_1",
        "parentReceptacles": parents,
        "controlledObjects": None,
        "isMoving": False,
        "axisAlignedBoundingBox": box(pos, size),
        "objectOrientedBoundingBox": None,
    }


def static_metadata(oid, otype, name, pos, agent) -> dict:
    spec = (oid, otype, name, pos, 0, False, False, otype == "Floor", (0.1, 2.5, 4.0))
    return object_metadata(spec, pos, (0.0, 0.0, 0.0), agent, False, False, None)


def joint(name: str, agent: dict, root_rel, rot=(-0.0, 1.0, -0.0, 180.0)) -> dict:
    yaw = math.radians(agent["yaw"])
    rx, ry, rz = root_rel
    wx = agent["x"] + rx * math.cos(yaw) + rz * math.sin(yaw)
    wz = agent["z"] - rx * math.sin(yaw) + rz * math.cos(yaw)
    q = {"x": rot[0], "y": rot[1], "z": rot[2], "w": rot[3]}
    return {
        "name": name,
        "position": v(wx, AGENT_Y - 0.4857 + ry, wz),
        "rootRelativePosition": v(rx, ry, rz),
        "rotation": q,
        "rootRelativeRotation": q,
        "localRotation": q,
        "armBaseHeight": None,
        "elbowOrientation": None,
    }


def arm_metadata(agent: dict, arm: dict, held: list[str], touched: list[str]) -> dict:
    lift = 0.16297650337219238 + arm["lift"]
    ext = arm["ext"]
    joints = [joint("stretch_robot_lift_jnt", agent, (0.0461, lift, -0.2788))]
    joints += [joint(f"stretch_robot_arm_{k}_jnt", agent, (0.083, lift, -0.024 + ext * k / 5)) for k in range(1, 6)]
    wrist = (0.0, 1.0, 0.0, 180.0)  # axis-angle: the wrist at 180 deg
    joints.append(joint("stretch_robot_wrist_1_jnt", agent, (-0.0001, lift - 0.0135, ext), wrist))
    joints.append(joint("stretch_robot_wrist_2_jnt", agent, (-0.0001, lift - 0.0643, ext), wrist))
    hand = joints[-1]["position"]
    return {
        "joints": joints,
        "heldObjects": held,
        "pickupableObjects": [o for o in touched if not o.startswith("Chair")],
        "touchedNotHeldObjects": touched,
        "handSphereCenter": v(hand["x"], hand["y"] - 0.1, hand["z"]),
        "handSphereRadius": 0.05999999865889549,
    }


def event_metadata(world: dict, last_action: str, error: str, success: bool) -> dict:
    agent = world["agent"]
    near = set(camera(agent, world["pos"], VISIBILITY))
    objects = [static_metadata(oid, t, n, p, agent) for oid, t, n, p in STATIC]
    for spec in OBJECTS:
        oid = spec[0]
        parents = ["CounterTop|2|0"] if oid.startswith(("Cup", "Knife", "Mug", "Book")) and oid not in world["held"] else None
        if oid == "Vase|3|2|0":
            parents = ["ShelvingUnit|3|2"]
        objects.append(
            object_metadata(spec, world["pos"][oid], world["rot"][oid], agent, oid in near, oid in world["held"], parents)
        )
    return {
        "objects": objects,
        "isSceneAtRest": True,
        "agent": {
            "name": "agent",
            "position": v(agent["x"], AGENT_Y, agent["z"]),
            "rotation": v(-0.0, agent["yaw"] % 360.0, 0.0),
            "cameraHorizon": 27.0,
            "isStanding": False,
            "inHighFrictionArea": False,
        },
        "heldObjectPose": None,
        "arm": arm_metadata(agent, world["arm"], sorted(world["held"]), sorted(world["touched"])),
        "fov": 59.0,
        "cameraPosition": v(agent["x"], 1.5, agent["z"]),
        "cameraOrthSize": 0.0,
        "thirdPartyCameras": [
            {"thirdPartyCameraId": 0, "position": v(agent["x"], 1.2, agent["z"]), "rotation": v(33.0, agent["yaw"] % 360.0, 0.0), "fieldOfView": 59.0}
        ],
        "collided": False,
        "collidedObjects": [],
        "inventoryObjects": [{"objectId": o, "objectType": o.split("|")[0]} for o in sorted(world["held"])],
        "sceneName": "Procedural",
        "lastAction": last_action,
        "errorMessage": error,
        "errorCode": "",
        "lastActionSuccess": success,
        "screenWidth": 396,
        "screenHeight": 224,
        "agentId": 0,
        "colors": [],
        "colorBounds": [],
        "flatSurfacesOnGrid": [],
        "distances": [],
        "normals": [],
        "isOpenableGrid": [],
        "segmentedObjectIds": [],
        "objectIdsInBox": [],
        "actionIntReturn": 0,
        "actionFloatReturn": 0.0,
        "actionStringsReturn": [],
        "actionFloatsReturn": [],
        "actionVector3sReturn": [],
        "visibleRange": False,
        "currentTime": 0.0,
        "sceneBounds": {"center": v(3.5, 1.25, 2.0), "size": v(7.2, 2.6, 4.2), "cornerPoints": []},
        "actionReturn": None,
    }


# ---- the scripted episode ----------------------------------------------------------------------

CONTROLLER_ACTION = {
    "m": "MoveAheadQuick", "b": "MoveBackQuick", "r": "RotateRightQuick", "l": "RotateRightQuick",
    "rs": "RotateRightQuick", "ls": "RotateRightQuick", "zp": "MoveArm", "zm": "MoveArm", "p": "PickupObject",
}  # fmt: skip
TURN = {"r": 30.0, "l": -30.0, "rs": 6.0, "ls": -6.0}


def episode() -> dict:
    world = {
        "agent": {"x": 6.2, "z": 0.5, "yaw": 90.0},
        "arm": {"lift": 0.8, "ext": 0.0},
        "pos": {o[0]: tuple(o[3]) for o in OBJECTS},
        "rot": {o[0]: (0.0, float(o[4]), 0.0) for o in OBJECTS},
        "held": set(),
        "touched": set(),
    }

    def record(action: str, error: str = "") -> dict:
        meta = event_metadata(world, CONTROLLER_ACTION.get(action, "Teleport"), error, not error)
        return {
            "action": action,
            "metadata": meta,
            "seenObjectIds": camera(world["agent"], world["pos"], SEEN),
            "visibleWithin2m": camera(world["agent"], world["pos"], 2.0),
        }

    steps = []

    def act(action: str, error: str = "", moves: bool = True, **events) -> None:
        a = world["agent"]
        if action in ("m", "b") and moves:
            sign = 1.0 if action == "m" else -1.0
            a["x"] = round(a["x"] + sign * 0.2 * math.sin(math.radians(a["yaw"])), 6)
            a["z"] = round(a["z"] + sign * 0.2 * math.cos(math.radians(a["yaw"])), 6)
        if action in TURN:
            a["yaw"] = (a["yaw"] + TURN[action]) % 360.0
        if action in ("zp", "zm") and moves:
            world["arm"]["ext"] = round(world["arm"]["ext"] + (0.1 if action == "zp" else -0.1), 6)
        for oid, delta in events.get("push", {}).items():
            world["pos"][oid] = tuple(round(p + d, 6) for p, d in zip(world["pos"][oid], delta))
        world["touched"] = set(events.get("touch", ()))
        for oid in events.get("pick", ()):
            world["held"].add(oid)
            world["pos"][oid] = (a["x"] + 0.5, 1.1, a["z"] + 0.4)
        steps.append(record(action, error))

    reset = record("reset")
    reset.pop("action")
    act("m", push={"Vase|3|2|0": (0.0, -0.3, 0.0)})  # settling far away
    act("m")
    act("m", "Collided with static structure in scene: 'wall|3|7.00|0.00|7.00|4.00', could not reach "
        "target: '(6.80, 0.90, 0.50)'.", moves=False)  # the corner  # fmt: skip
    for a in ["l"] * 6 + ["m"] * 2 + ["r"] * 3:  # face west, two steps west, face north
        act(a)
    for a in ["m"] * 7 + ["r"] * 6:  # north along x = 6.2 (the chair ahead-left), turn to face south
        act(a)
    act("zp", "Collided with static sim object: 'Chair_4b5c6d7e', could not reach target: "
        "'(0.08, 0.96, 0.08)'.", moves=False)  # the arm hits the chair, out of view  # fmt: skip
    for a in ["m"] * 4 + ["r"] * 3 + ["m"] * 18 + ["r"] * 3 + ["m"] * 8:  # south, west through the door, north
        act(a)
    act("zp", touch=["Knife|2|0|3"])  # the gripper reaches the knife
    act("zm")
    act("rs", push={"Book|2|0|5": (0.0, 0.0, 0.12)})  # the book dragged 0.12 m
    for a in ["ls"] * 4:  # turn left towards the cups
        act(a)
    act("ls", push={"Cup|2|0|1": (-0.07, 0.0, 0.0)})  # one cup of the cluster nudged 7 cm
    act("p", touch=["Mug|2|0|4"], pick=["Mug|2|0|4"])  # the mug is held
    return {
        "task": "Fetch",
        "targetType": "Mug",
        "gridSize": GRID,
        "house": "houses/house_two_rooms.json",
        "reset": reset,
        "reachablePositions": reachable(),
        "steps": steps,
    }


def main() -> None:
    (HERE / "houses").mkdir(exist_ok=True)
    with open(HERE / "houses" / "house_two_rooms.json", "w") as f:
        json.dump(house(), f, indent=1)
        f.write("\n")
    with gzip.GzipFile(HERE / "fetch_episode.json.gz", "wb", mtime=0) as f:
        f.write(json.dumps(episode(), separators=(",", ":")).encode())


if __name__ == "__main__":
    main()
