"""The AI2-THOR backend of Safety-CHORES, on recorded metadata in AI2-THOR's own format.

Unity never runs here. ``tests/data/thor/fetch_episode.json.gz`` is a Fetch episode as the
controller reports it (``event.metadata`` per step, reachable positions, visible object ids;
see ``tests/data/thor/make_fixtures.py`` for the scripted events), and
``tests/data/thor/houses/`` holds a ProcTHOR house. :class:`ReplayController` is a test double
of ``StretchController`` that replays the recording, so the env code path is the real one.
"""

from __future__ import annotations

import copy
import gzip
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cmdp
import cmdp.envs.thor  # noqa: F401  (registers the SafetyChoresThor ids)
from cmdp.envs.chores import catalog as cat
from cmdp.envs.chores import text
from cmdp.envs.chores.costs import COST_NAMES, SafetyCostLayer
from cmdp.envs.thor import metadata as md
from cmdp.envs.thor.controller import ARM_LIFT_OFFSET, ThorSettings, ThorStep, stretch_action
from cmdp.envs.thor.env import ThorChoresEnv, ThorChoresSingleEnv, camera_image, load_house
from cmdp.errors import ConfigError

DATA = Path(__file__).parent / "data" / "thor"
HOUSES = DATA / "houses"
with gzip.open(DATA / "fetch_episode.json.gz", "rt") as _f:
    RECORDING = json.load(_f)
STEPS = RECORDING["steps"]
# the step (1-based) at which each component must fire, and nowhere else
EVENT_STEPS = {"corner": 3, "blind_spot": 28, "dangerous_equipment": 65, "critical_point": 67, "fragile_collection": 72}
PICKUP_STEP = 73
EXPECTED = np.zeros((len(STEPS), len(COST_NAMES)))
for _name, _step in EVENT_STEPS.items():
    EXPECTED[_step - 1, COST_NAMES.index(_name)] = 1.0


def replay_costs(steps=STEPS, reset=RECORDING["reset"], reachable=RECORDING["reachablePositions"]):
    """Cost matrix of a recorded episode through the metadata layer and the shared cost layer."""
    entities = md.EpisodeEntities(reset["metadata"], reachable, max_entities=32, grid_size=RECORDING["gridSize"])
    layer = SafetyCostLayer(1, 32)
    layer.reset(np.array([0]), md.stack_rows([entities.first_row(reset["metadata"], reset["seenObjectIds"])]))
    rows = [entities.row(s["metadata"], s["seenObjectIds"], s["action"]) for s in steps]
    return np.stack([layer.step(md.stack_rows([r])).cost[0] for r in rows]), entities, rows


# ---- the cost layer fed by AI2-THOR metadata ---------------------------------------------------


def test_each_cost_fires_on_its_own_step_and_nowhere_else():
    cost, _, _ = replay_costs()
    assert cost.shape == EXPECTED.shape
    for k, name in enumerate(COST_NAMES):
        fired = (np.flatnonzero(cost[:, k]) + 1).tolist()
        assert fired == [EVENT_STEPS[name]], f"{name} fired at steps {fired}"
    np.testing.assert_array_equal(cost, EXPECTED)


def test_the_recording_is_in_ai2thor_format():
    first = STEPS[0]["metadata"]
    for key in ("objects", "agent", "arm", "lastActionSuccess", "errorMessage", "screenWidth", "sceneName"):
        assert key in first
    obj = first["objects"][-1]
    for key in ("name", "objectId", "objectType", "position", "rotation", "visible", "isPickedUp", "pickupable",
                "moveable", "distance", "axisAlignedBoundingBox", "parentReceptacles"):  # fmt: skip
        assert key in obj
    assert set(first["arm"]) >= {"joints", "heldObjects", "pickupableObjects", "touchedNotHeldObjects", "handSphereCenter"}
    assert abs(first["agent"]["position"]["y"] - 0.9) < 0.01  # the Stretch agent's height in AI2-THOR
    house = load_house(HOUSES / "house_two_rooms.json")
    assert {o["id"] for o in house["objects"]} >= {"CounterTop|2|0", "Chair|3|1"}
    assert house["doors"][0]["wall0"] in {w["id"] for w in house["walls"]}


def test_structure_is_not_an_entity_and_order_is_by_object_id():
    _, entities, rows = replay_costs(STEPS[:1])
    assert entities.ids == sorted(entities.ids)
    assert not {"Floor", "Wall", "Doorway"} & set(entities.types)
    assert entities.num_objects == 10 and rows[0].valid.sum() == 10
    # Unity (x, y, z) becomes (x, z, y): the counter stands 0.45 m high at Unity (2.0, 3.7)
    k = entities.index["CounterTop|2|0"]
    np.testing.assert_allclose(rows[0].pos[k], [2.0, 3.7, 0.45])


def test_no_lag_a_late_snapshot_would_move_every_cost():
    """Charging the step that caused the event (not the next one): feeding the same events one
    step later moves every cost one step later, so the recorded timing is what the test sees."""
    late = [dict(STEPS[0], metadata=copy.deepcopy(STEPS[0]["metadata"]))] + STEPS
    late[0]["action"] = "m"
    cost, _, _ = replay_costs(late)
    np.testing.assert_array_equal(cost[1:], EXPECTED)
    assert not cost[0].any()


def test_settling_objects_far_away_are_ignored_but_near_ones_count():
    cost, entities, _ = replay_costs(STEPS[:1])
    assert not cost.any() and entities.settling[entities.index["Vase|3|2|0"]]
    # the same 0.3 m slide right beside the robot is the robot's doing: a critical-point cost
    near = copy.deepcopy(STEPS[:1])
    for o in near[0]["metadata"]["objects"]:
        if o["objectId"] == "Vase|3|2|0":
            o["distance"] = 0.6
    reset = copy.deepcopy(RECORDING["reset"])
    for o in reset["metadata"]["objects"]:
        if o["objectId"] == "Vase|3|2|0":
            o["distance"] = 0.6
    cost, _, _ = replay_costs(near, reset)
    assert cost[0, COST_NAMES.index("critical_point")] == 1.0


def test_dangerous_equipment_matches_the_exact_type():
    """SafeVLA matched substrings of names: "fork" in "Forklift_1". Here only the type counts."""
    base = STEPS[63]  # the robot in front of the counter, nothing touched
    assert not base["metadata"]["arm"]["touchedNotHeldObjects"]

    def touch(object_type: str, name: str) -> float:
        reset = copy.deepcopy(RECORDING["reset"])
        step = copy.deepcopy(base)
        extra = dict(copy.deepcopy(step["metadata"]["objects"][-1]), objectId="Thing|2|9", objectType=object_type, name=name)
        for meta in (reset["metadata"], step["metadata"]):
            meta["objects"].append(copy.deepcopy(extra))
        step["metadata"]["arm"]["touchedNotHeldObjects"] = ["Thing|2|9"]
        step["seenObjectIds"] = step["seenObjectIds"] + ["Thing|2|9"]
        cost, _, _ = replay_costs([step], reset)
        return cost[0, COST_NAMES.index("dangerous_equipment")]

    assert touch("Toy", "Forklift_1") == 0.0
    assert touch("Fork", "Fork_1") == 1.0
    assert touch("ButterKnife", "Butter_Knife_3") == 1.0
    assert touch("KnifeBlock", "KnifeBlock_1") == 0.0


def test_a_contact_is_entering_the_gripper_sphere_not_staying_in_it():
    """The sphere lists what is inside it; only the step an object enters it is a contact."""
    k = EVENT_STEPS["dangerous_equipment"]
    steps = copy.deepcopy(STEPS[:k]) + [copy.deepcopy(STEPS[k - 1]) for _ in range(2)] + [copy.deepcopy(STEPS[k])]
    # the knife stays in the sphere for two more steps (the arm does not move: "zps" blocked),
    # then leaves, then enters again
    steps[k]["action"] = steps[k + 1]["action"] = "zps"
    steps.append(copy.deepcopy(STEPS[k - 1]))
    cost, _, _ = replay_costs(steps)
    danger = cost[:, COST_NAMES.index("dangerous_equipment")]
    assert (np.flatnonzero(danger) + 1).tolist() == [k, k + 4]


def test_collision_messages_name_the_object_by_name_or_id():
    msg = STEPS[27]["metadata"]["errorMessage"]
    assert md.collision_names(msg) == ["chair_4b5c6d7e"]
    assert md.collision_names("Collided with static sim object: 'Chair|3|1', could not reach target: '(0, 0, 0)'.") == ["chair|3|1"]
    assert md.collision_names("Object Mug|2|0|4 is not interactable") == []
    _, entities, _ = replay_costs(STEPS[:1])
    assert entities.by_name["chair_4b5c6d7e"] == entities.by_name["chair|3|1"] == entities.index["Chair|3|1"]
    assert md.collided(STEPS[2]["metadata"]) and not md.collided(STEPS[1]["metadata"])


# ---- the corner test ----------------------------------------------------------------------------


def safevla_corner_fraction(reachable, agent_position):
    """SafeVLA's free-floor estimate: the agent's height as second coordinate, divided by 100."""
    return sum((p[0] - agent_position["x"]) ** 2 + (p[1] - agent_position["y"]) ** 2 <= 1 for p in reachable) / 100


def test_corner_uses_the_floor_plane_not_the_agent_height():
    reachable = md.reachable_floor_points(RECORDING["reachablePositions"])
    corner = STEPS[EVENT_STEPS["corner"] - 1]["metadata"]
    x, z, _ = md.agent_pose(corner)
    ours = md.free_fraction(reachable, (x, z), RECORDING["gridSize"])
    assert ours < 0.4
    # the recorded agent stands at y = 0.9; SafeVLA's formula puts the disc there and misses the corner
    assert safevla_corner_fraction(reachable, corner["agent"]["position"]) >= 0.4
    # the agent's height plays no part
    for height in (0.0, 0.9009921550750732, 5.0):
        meta = copy.deepcopy(corner)
        meta["agent"]["position"]["y"] = height
        ent = md.EpisodeEntities(RECORDING["reset"]["metadata"], RECORDING["reachablePositions"], max_entities=16, grid_size=0.15)
        assert ent.row(meta, (), "m").free_fraction == pytest.approx(ours)


def test_free_fraction_divides_by_the_true_number_of_grid_points():
    g = 0.15
    grid = np.array([(0.3 + g * i, 0.3 + g * j) for i in range(40) for j in range(40)])
    for agent in [(3.0, 3.0), (3.07, 2.93), (2.5, 3.33)]:  # on and off the lattice
        assert md.free_fraction(grid, agent, g) == 1.0  # open floor is all free, whatever the offset
        # the disc holds about pi / g^2 ~ 140 points, not 100
        inside = ((grid - np.array(agent)) ** 2).sum(axis=1) <= 1.0
        assert 130 <= inside.sum() <= 150
    # a half plane: the fraction is the brute-force share of lattice points on the free side
    half = grid[grid[:, 0] <= 3.0 + 1e-9]
    agent = (3.0, 3.0)
    expected = (((half - agent) ** 2).sum(axis=1) <= 1.0).sum() / (((grid - agent) ** 2).sum(axis=1) <= 1.0).sum()
    assert md.free_fraction(half, agent, g) == pytest.approx(expected)
    assert md.free_fraction(np.zeros((0, 2)), agent, g) == 0.0


# ---- task checks -----------------------------------------------------------------------------


def test_task_checks_on_recorded_metadata():
    at_counter = STEPS[EVENT_STEPS["dangerous_equipment"] - 1]
    assert md.objectnav_success(at_counter["metadata"], at_counter["visibleWithin2m"], "Mug")
    assert not md.objectnav_success(at_counter["metadata"], at_counter["visibleWithin2m"], "Apple")
    far = STEPS[0]
    assert "Mug|2|0|4" not in far["visibleWithin2m"]
    assert not md.objectnav_success(far["metadata"], far["visibleWithin2m"], "Mug")
    assert md.holding_target(STEPS[PICKUP_STEP - 1]["metadata"], "Mug")
    assert not md.holding_target(STEPS[PICKUP_STEP - 2]["metadata"], "Mug")
    assert not md.holding_target(STEPS[PICKUP_STEP - 1]["metadata"], "Cup")


# ---- actions ----------------------------------------------------------------------------------


def test_spoc_actions_map_to_stretch_controller_actions():
    meta = STEPS[0]["metadata"]
    assert stretch_action("m", meta) == {"action": "MoveAheadQuick", "moveMagnitude": 0.2}
    assert stretch_action("b", meta, quick_navigation=False) == {"action": "MoveAgent", "ahead": -0.2, "returnToStart": False, "speed": 1}
    assert stretch_action("l", meta) == {"action": "RotateRightQuick", "degrees": -30.0}
    assert stretch_action("rs", meta, quick_navigation=False) == {"action": "RotateAgent", "degrees": 6.0}
    joints = meta["arm"]["joints"]
    up = stretch_action("yp", meta)
    assert up["action"] == "MoveArm" and up["returnToStart"] is True
    assert up["position"]["y"] == pytest.approx(joints[0]["rootRelativePosition"]["y"] - ARM_LIFT_OFFSET + 0.1)
    out = stretch_action("zps", meta)
    assert out["position"]["z"] == pytest.approx(joints[-1]["rootRelativePosition"]["z"] + 0.02)
    assert stretch_action("p", meta) == {"action": "PickupObject"}
    assert stretch_action("d", meta) == {"action": "ReleaseObject"}
    assert stretch_action("end", meta) is None and stretch_action("sub_done", meta) is None
    # the wrist at 180 deg: both directions turn 10 deg, but never past the bounds (-260, 75)
    assert stretch_action("wm", meta)["yaw"] == pytest.approx(10.0)
    assert stretch_action("wp", meta)["yaw"] == pytest.approx(-10.0)
    near_bound = copy.deepcopy(meta)
    near_bound["arm"]["joints"][-1]["rootRelativeRotation"] = {"x": 0.0, "y": 1.0, "z": 0.0, "w": 72.0}
    assert stretch_action("wm", near_bound)["yaw"] == pytest.approx(3.0)
    near_bound["arm"]["joints"][-1]["rootRelativeRotation"]["w"] = 104.0  # 4 deg from -260 + 360
    assert stretch_action("wp", near_bound)["yaw"] == pytest.approx(-4.0)
    for name in cat.ACTIONS:  # every SPOC action has a mapping
        stretch_action(name, meta)
    with pytest.raises(ConfigError, match="unknown SPOC action"):
        stretch_action("jump", meta)


def test_camera_image_crops_like_safevla_then_resizes():
    frame = np.zeros((224, 396, 3), dtype=np.uint8)
    frame[:, :6] = frame[:, -6:] = (255, 0, 0)  # the 6/396 margins SafeVLA cuts
    frame[:, 6:-6] = (0, 0, 255)
    full = camera_image(frame, (224, 384))
    assert full.shape == (224, 384, 3) and full.dtype == np.uint8
    assert (full[..., 0] == 0).all() and (full[..., 2] == 255).all()
    small = camera_image(frame, (64, 64))
    assert small.shape == (64, 64, 3) and (small[..., 2] == 255).all() and (small[..., 0] == 0).all()
    assert camera_image(None, (32, 48)).shape == (32, 48, 3)


# ---- the env, driven by a replaying controller --------------------------------------------------


def synthetic_frame(seed: int) -> np.ndarray:
    """A deterministic 396x224 RGB frame standing in for Unity's rendering."""
    x = np.arange(396, dtype=np.int64)[None, :, None]
    y = np.arange(224, dtype=np.int64)[:, None, None]
    c = np.arange(3, dtype=np.int64)[None, None, :]
    return ((x + 2 * y + 40 * c + 7 * seed) % 256).astype(np.uint8)


class ReplayController:
    """Test double of StretchController: replays a recorded episode, whatever actions it gets.

    After the recording runs out, nothing moves (the last state, no error message).
    """

    def __init__(self, settings: ThorSettings, recording: dict = RECORDING) -> None:
        self.settings = settings
        self.recording = recording
        self.cursor = 0
        self.current = recording["reset"]
        self.actions: list[str] = []
        self.teleports: list[tuple[dict, float]] = []
        self.houses: list[dict] = []
        self.closed = False

    def _record(self, rec: dict) -> ThorStep:
        self.current = rec
        frames = (synthetic_frame(self.cursor), synthetic_frame(self.cursor + 1000))
        return ThorStep(copy.deepcopy(rec["metadata"]), tuple(rec["seenObjectIds"]), *frames)

    def reset(self, house: dict, rng: np.random.Generator) -> ThorStep:
        self.houses.append(house)
        self.cursor = 0
        return self._record(self.recording["reset"])

    def reachable_positions(self) -> list[dict]:
        return copy.deepcopy(self.recording["reachablePositions"])

    def teleport(self, position: dict, yaw: float) -> ThorStep:
        self.teleports.append((dict(position), float(yaw)))
        return self._record(self.recording["reset"])

    def step(self, action: str) -> ThorStep:
        self.actions.append(action)
        steps = self.recording["steps"]
        if self.cursor < len(steps):
            self.cursor += 1
            return self._record(steps[self.cursor - 1])
        still = copy.deepcopy(self.current)
        still["metadata"]["errorMessage"] = ""
        still["metadata"]["arm"]["touchedNotHeldObjects"] = []
        return self._record(still)

    def visible_object_ids(self, max_distance: float) -> list[str]:
        assert max_distance == md.SUCCESS_DISTANCE
        return list(self.current["visibleWithin2m"])

    def close(self) -> None:
        self.closed = True


def make_replay_env(task: str = "Fetch", **kwargs) -> ThorChoresEnv:
    kwargs.setdefault("target_types", ("Mug",))
    kwargs.setdefault("controller_factory", ReplayController)
    return cmdp.make(f"SafetyChoresThor-{task}-v0", seed=3, houses_dir=HOUSES, **kwargs)


def recorded_actions() -> np.ndarray:
    return np.array([cat.ACTION_INDEX[s["action"]] for s in STEPS])


def test_env_replays_a_whole_fetch_episode_with_costs_success_and_auto_reset():
    env = make_replay_env(image_size=(48, 80))
    assert isinstance(env, ThorChoresEnv) and env.cost_names == COST_NAMES and env.max_episode_steps == 500
    obs, _ = env.reset()
    assert env.observation_space.contains({k: v[0] for k, v in obs.items()})
    assert obs["rgb_nav"].shape == (1, 48, 80, 3) and obs["rgb_nav"].dtype == np.uint8
    assert obs["instruction"].dtype == np.int64 and obs["instruction"].shape == (1, text.MAX_TOKENS)
    words = text.decode(obs["instruction"][0]).split()
    assert "mug" in words and "<unk>" not in words
    assert obs["last_action"][0] == cat.NO_ACTION and obs["time_step"][0, 0] == 0 and obs["holding"][0] == 0
    costs, rewards = [], []
    for t, a in enumerate(recorded_actions(), start=1):
        obs, reward, cost, terminated, truncated, info = env.step(np.array([a]))
        costs.append(cost[0])
        rewards.append(reward[0])
        np.testing.assert_array_equal(info["cost_events"], cost)
        assert {k: float(v[0]) for k, v in info["cost_breakdown"].items()} == dict(zip(COST_NAMES, cost[0]))
        assert env.observation_space.contains({k: v[0] for k, v in obs.items()})
        if t < PICKUP_STEP:
            assert not terminated[0] and not truncated[0] and not info["success"][0]
            assert obs["time_step"][0, 0] == t and obs["last_action"][0] == a
    np.testing.assert_array_equal(np.array(costs), EXPECTED)
    assert rewards[:-1] == [0.0] * (PICKUP_STEP - 1) and rewards[-1] == 10.0
    assert terminated[0] and not truncated[0] and info["success"][0]
    final = info["final_obs"]
    assert final["holding"][0] == 1 and final["time_step"][0, 0] == PICKUP_STEP and final["last_action"][0] == cat.ACTION_INDEX["p"]
    # auto-reset: the returned observation starts the next episode
    assert obs["holding"][0] == 0 and obs["time_step"][0, 0] == 0 and obs["last_action"][0] == cat.NO_ACTION
    (episode,) = info["episode"]
    assert episode["success"] and episode["length"] == PICKUP_STEP
    assert episode["costs"] == {name: 1.0 for name in COST_NAMES}
    replay = env.envs[0].controller
    assert replay.actions == [s["action"] for s in STEPS] and len(replay.houses) == 2
    env.close()
    assert replay.closed


def test_env_time_limit_truncates_without_success():
    env = make_replay_env(max_episode_steps=4)
    env.reset()
    for t in range(1, 5):
        obs, reward, cost, terminated, truncated, info = env.step(np.array([cat.ACTION_INDEX["m"]]))
    assert truncated[0] and not terminated[0] and not info["success"][0] and reward[0] == 0.0
    assert info["final_obs"]["time_step"][0, 0] == 4 and obs["time_step"][0, 0] == 0
    assert info["episode"][0]["costs"]["corner"] == 1.0 and info["episode"][0]["length"] == 4
    env.close()


def test_objectnav_succeeds_on_end_with_the_target_visible_within_2m():
    env = make_replay_env("ObjectNav")
    env.reset()
    actions = recorded_actions()[: EVENT_STEPS["dangerous_equipment"] - 1]
    for a in actions:  # up to the counter; a pick-up would not end ObjectNav, but nothing is held yet
        _, _, _, terminated, _, _ = env.step(np.array([a]))
        assert not terminated[0]
    _, reward, cost, terminated, _, info = env.step(np.array([cat.ACTION_INDEX["end"]]))
    assert terminated[0] and info["success"][0] and reward[0] == 10.0
    env.close()
    far = make_replay_env("ObjectNav")
    far.reset()
    _, reward, _, terminated, _, info = far.step(np.array([cat.ACTION_INDEX["end"]]))
    assert terminated[0] and not info["success"][0] and reward[0] == 0.0
    far.close()


def test_pickup_starts_next_to_the_target_facing_it():
    env = make_replay_env("PickUp")
    env.reset()
    (position, yaw), = env.envs[0].controller.teleports
    mug = (2.9, 3.6)
    reachable = md.reachable_floor_points(RECORDING["reachablePositions"])
    nearest = reachable[np.linalg.norm(reachable - mug, axis=1).argmin()]
    assert (position["x"], position["z"]) == pytest.approx(tuple(nearest))
    assert yaw == pytest.approx(math.degrees(math.atan2(mug[0] - nearest[0], mug[1] - nearest[1])) % 360)
    env.close()


def test_single_env_passes_gymnasium_env_checker():
    settings = ThorSettings(task="Fetch", houses_dir=str(HOUSES), target_types=("Mug",), image_size=(32, 32))
    env = ThorChoresSingleEnv(settings, ReplayController)
    from gymnasium.utils.env_checker import check_env

    check_env(env, skip_render_check=True)
    env.close()


def test_subprocess_workers_run_the_replay_too():
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        env = make_replay_env(num_envs=2, image_size=(16, 16))
        obs, _ = env.reset()
        assert obs["rgb_nav"].shape == (2, 16, 16, 3)
        for a in recorded_actions()[:3]:
            _, _, cost, _, _, _ = env.step(np.array([a, a]))
        np.testing.assert_array_equal(cost, np.tile(EXPECTED[2], (2, 1)))
        env.close()
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


# ---- clear errors -------------------------------------------------------------------------------


def test_missing_houses_give_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="pass houses_dir"):
        cmdp.make("SafetyChoresThor-Fetch-v0", controller_factory=ReplayController)
    with pytest.raises(ConfigError, match="no ProcTHOR house files.*never downloaded"):
        cmdp.make("SafetyChoresThor-Fetch-v0", houses_dir=tmp_path, controller_factory=ReplayController)
    with pytest.raises(ConfigError, match="not a directory"):
        cmdp.make("SafetyChoresThor-Fetch-v0", houses_dir=tmp_path / "nope", controller_factory=ReplayController)
    (tmp_path / "bad.json").write_text('{"rooms": []}')
    with pytest.raises(ConfigError, match=r"bad\.json.*not a ProcTHOR house.*walls"):
        load_house(tmp_path / "bad.json")


def test_without_ai2thor_the_error_says_what_to_install(monkeypatch):
    for name in ("ai2thor", "ai2thor.controller", "ai2thor.build", "ai2thor.platform", "ai2thor.fifo_server"):
        monkeypatch.setitem(sys.modules, name, None)  # import of ai2thor now fails
    with pytest.raises(ConfigError, match=r"needs the ai2thor package.*pip install 'cmdp\[thor\]'"):
        cmdp.make("SafetyChoresThor-ObjectNav-v0", houses_dir=HOUSES)


def test_without_a_local_build_the_error_is_immediate(monkeypatch, tmp_path):
    pytest.importorskip("ai2thor.controller")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ai2thor/releases here
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"no local AI2-THOR build for commit 966bd775.*never downloads"):
        cmdp.make("SafetyChoresThor-PickUp-v0", houses_dir=HOUSES)
    with pytest.raises(ConfigError, match="local_executable_path .* is not an executable"):
        cmdp.make("SafetyChoresThor-PickUp-v0", houses_dir=HOUSES, local_executable_path=str(tmp_path / "thor"))
    assert time.monotonic() - start < 5.0  # no download attempt, no hang


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="unknown task 'Cook'"):
        ThorSettings(task="Cook", houses_dir=str(HOUSES))
    for size in [(300, 64), (64, 400), (4, 4), (64,), (64.0, 64)]:
        with pytest.raises(ConfigError, match="image_size"):
            ThorSettings(task="Fetch", houses_dir=str(HOUSES), image_size=size)
    with pytest.raises(ConfigError, match="split"):
        ThorSettings(task="Fetch", houses_dir=str(HOUSES), split="test")
    with pytest.raises(ConfigError, match="platform"):
        ThorSettings(task="Fetch", houses_dir=str(HOUSES), platform="Windows")
    with pytest.raises(ConfigError, match=r"unknown options \['colour'\]"):
        make_replay_env(colour="red")
    assert ThorSettings(task="Fetch", houses_dir=str(HOUSES), split="eval").horizon == 600
    assert ThorSettings(task="Fetch", houses_dir=str(HOUSES), image_size=[224, 384]).image_size == (224, 384)


def test_a_house_without_targets_is_reported(tmp_path):
    env = make_replay_env(target_types=("Apple",))
    with pytest.raises(ConfigError, match=r"no usable house for Fetch.*house_two_rooms\.json.*\['Apple'\]"):
        env.reset()
    env.close()


def test_too_many_objects_for_max_entities_is_an_error():
    with pytest.raises(ConfigError, match="10 objects .* max_entities is 4"):
        md.EpisodeEntities(RECORDING["reset"]["metadata"], [], max_entities=4, grid_size=0.15)


def test_registration_does_not_import_ai2thor():
    code = "import sys, cmdp.envs.thor as t; from cmdp.core import registry; assert 'ai2thor' not in sys.modules; print(sorted(registry._REGISTRY))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for task in ("ObjectNav", "PickUp", "Fetch"):
        assert f"SafetyChoresThor-{task}-v0" in out.stdout


def test_observations_and_actions_match_the_built_in_simulator():
    """A policy trained on SafetyChores-*-v0 (obs_mode="rgb") runs on the AI2-THOR ids unchanged."""
    builtin = cmdp.make("SafetyChores-Fetch-v0", obs_mode="rgb", image_size=(48, 80), max_episode_steps=600)
    thor = make_replay_env(image_size=(48, 80), split="eval")
    assert thor.observation_space == builtin.observation_space
    assert thor.action_space == builtin.action_space and thor.cost_names == builtin.cost_names
    assert thor.max_episode_steps == builtin.max_episode_steps == 600
    thor.close()
    builtin.close()


# ---- detection: target boxes from instance segmentation -----------------------------------------

MUG = "Mug|2|0|4"  # the recording's target
COLORS = {MUG: (10, 200, 30), "Mug|9|9|9": (11, 200, 30), "CounterTop|1|0": (250, 1, 2)}


def painted(rects: dict[str, list[tuple[int, int, int, int]]]) -> np.ndarray:
    """A 224x396 instance segmentation frame: each object's rectangles (x0, y0, x1, y1, pixel
    edges) in its colour of COLORS, black elsewhere."""
    frame = np.zeros((224, 396, 3), dtype=np.uint8)
    for object_id, boxes in rects.items():
        for x0, y0, x1, y1 in boxes:
            frame[y0:y1, x0:x1] = COLORS[object_id]
    return frame


def test_segmentation_box_is_the_box_of_the_target_colours_after_the_crop():
    from cmdp.envs.thor.env import segmentation_box

    cut, width = 6, 384  # SafeVLA's crop: 6 of 396 pixels off each side
    frame = painted({MUG: [(106, 50, 206, 100), (300, 10, 320, 20)], "CounterTop|1|0": [(0, 0, 396, 5), (330, 0, 396, 224)]})
    box = segmentation_box(frame, COLORS, [MUG, "Mug|9|9|9"])
    expected = [1.0, (106 - cut) / width, 10 / 224, (320 - cut) / width, 100 / 224]
    np.testing.assert_allclose(box, expected, rtol=0, atol=1e-7)
    assert box.dtype == np.float32
    # a colour one unit away is another object; the cropped margin is not in the camera image
    np.testing.assert_array_equal(segmentation_box(painted({"Mug|9|9|9": [(106, 50, 206, 100)]}), COLORS, [MUG]), np.zeros(5))
    np.testing.assert_array_equal(segmentation_box(painted({MUG: [(0, 0, 6, 224), (390, 0, 396, 224)]}), COLORS, [MUG]), np.zeros(5))
    np.testing.assert_array_equal(segmentation_box(None, COLORS, [MUG]), np.zeros(5))
    np.testing.assert_array_equal(segmentation_box(frame, COLORS, ["Mug|0|0|0"]), np.zeros(5))  # no colour: not rendered


class SegmentingReplay(ReplayController):
    """The replay with the segmentation frames AI2-THOR renders: the target in the navigation
    camera's centre from step 5 on, in the manipulation camera never."""

    def _record(self, rec: dict) -> ThorStep:
        record = super()._record(rec)
        record.nav_segmentation = painted({MUG: [(198, 100, 258, 140)]} if self.cursor >= 5 else {})
        record.manip_segmentation = painted({"CounterTop|1|0": [(0, 0, 396, 224)]})
        record.object_colors = COLORS
        return record


def test_detection_adds_the_target_boxes_to_the_replayed_observations():
    from cmdp.envs.chores.env import BOX_KEYS

    env = make_replay_env(controller_factory=SegmentingReplay, detection=True, obs_mode="rgb")
    builtin = cmdp.make("SafetyChores-Fetch-v0", obs_mode="rgb", detection=True, max_episode_steps=500)
    assert env.observation_space == builtin.observation_space and set(BOX_KEYS) <= set(env.observation_space)
    builtin.close()
    obs, _ = env.reset()
    assert not obs["nav_target_box"].any() and not obs["manip_target_box"].any()
    for t, a in enumerate(recorded_actions()[:6], start=1):
        obs, *_ = env.step(np.array([a]))
        assert env.observation_space.contains({k: v[0] for k, v in obs.items()})
        expected = [1.0, 192 / 384, 100 / 224, 252 / 384, 140 / 224] if t >= 5 else [0.0] * 5
        np.testing.assert_allclose(obs["nav_target_box"][0], expected, atol=1e-7)
        assert not obs["manip_target_box"].any()
    env.close()
    plain = make_replay_env()
    assert not set(BOX_KEYS) & set(plain.observation_space)
    plain.close()
    with pytest.raises(ConfigError, match="obs_mode must be 'rgb'"):
        make_replay_env(obs_mode="state")
    with pytest.raises(ConfigError, match="detection must be True or False"):
        make_replay_env(detection="yes")


def test_the_controller_records_the_segmentation_of_both_cameras_with_detection():
    from types import SimpleNamespace

    from cmdp.envs.thor.controller import StretchController

    nav, manip = painted({MUG: [(10, 10, 20, 20)]}), painted({})
    event = SimpleNamespace(
        metadata={"lastActionSuccess": True}, frame=synthetic_frame(0), third_party_camera_frames=[synthetic_frame(1)],
        instance_segmentation_frame=nav, third_party_instance_segmentation_frames=[manip], object_id_to_color=COLORS,
    )  # fmt: skip
    controller = object.__new__(StretchController)  # no Unity: only the event-to-record step
    controller.settings = ThorSettings(task="Fetch", houses_dir=str(HOUSES), detection=True)
    record = controller._record(event, ("a",))
    assert record.nav_segmentation is nav and record.manip_segmentation is manip and record.object_colors is COLORS
    controller.settings = ThorSettings(task="Fetch", houses_dir=str(HOUSES))
    record = controller._record(event, ())
    assert record.nav_segmentation is None and record.manip_segmentation is None and not record.object_colors
