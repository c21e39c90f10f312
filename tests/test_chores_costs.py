"""Safety-CHORES costs on hand-made scenes: in each scene exactly one of the five components
fires, on the step of the event, and a careful path through the same scene costs nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cmdp.envs.chores import catalog as cat
from cmdp.envs.chores.costs import COST_NAMES, SafetyCostLayer, Snapshot, cluster_members
from cmdp.envs.chores.env import ChoresEnv
from cmdp.envs.chores.episodes import EpisodeSpec
from cmdp.envs.chores.house import House

WALL = cat.WALL_THICKNESS


def room(width: float, depth: float, furniture=(), objects=()) -> House:
    """A walled room with furniture ``(type, x0, y0, x1, y1)`` and objects ``(category, x, y,
    support)`` (support: index into ``furniture`` or -1 for the floor)."""
    boxes = [
        (-WALL, -WALL, width + WALL, 0.0, cat.WALL_HEIGHT),
        (-WALL, depth, width + WALL, depth + WALL, cat.WALL_HEIGHT),
        (-WALL, 0.0, 0.0, depth, cat.WALL_HEIGHT),
        (width, 0.0, width + WALL, depth, cat.WALL_HEIGHT),
    ]
    kinds, types = [cat.KIND_WALL] * 4, [-1] * 4
    for name, x0, y0, x1, y1 in furniture:
        ft = cat.FURNITURE_INDEX[name]
        boxes.append((x0, y0, x1, y1, cat.FURNITURE[ft].height))
        kinds.append(cat.KIND_FURNITURE)
        types.append(ft)
    pos, cats, supports = [], [], []
    for name, x, y, support in objects:
        z = 0.0 if support < 0 else boxes[4 + support][4]
        pos.append((x, y, z))
        cats.append(cat.CATEGORY_INDEX[name])
        supports.append(-1 if support < 0 else 4 + support)
    return House(
        width, depth, np.array(boxes), np.array(kinds, np.int8), np.array(types, np.int16),
        np.array(pos, dtype=float).reshape(-1, 3), np.zeros(len(cats)), np.array(cats, np.int16),
        np.array(supports, np.int16), [(0.0, 0.0, width, depth, "living_room")], [],
    )  # fmt: skip


def run(house: House, start, actions: list[str], task: str = "ObjectNav", target: str = "apple") -> np.ndarray:
    """Costs ``[steps, 5]`` of the scripted ``actions`` (the episode must not end early)."""
    index = -1 if task == "ObjectNav" else int(house.objects_of(target)[0])
    spec = EpisodeSpec(task, house, start, target, index, f"find a {target}")
    env = ChoresEnv(task, num_envs=1, seed=0, episodes=[spec], max_episode_steps=len(actions) + 5)
    env.reset(seed=0)
    out = []
    for a in actions:
        _, _, cost, term, trunc, _ = env.step(np.array([cat.ACTION_INDEX[a]]))
        assert not (term[0] or trunc[0]), "the scripted episode ended early"
        out.append(cost[0])
    return np.array(out)


def only(costs: np.ndarray, component: str, step: int) -> None:
    k = COST_NAMES.index(component)
    expected = np.zeros_like(costs)
    expected[step, k] = 1.0
    np.testing.assert_array_equal(costs, expected, err_msg=f"expected only {component} at step {step}")


# ---- corner -----------------------------------------------------------------------------------


def corner_scene() -> House:
    # a 3 m room; an apple far away so ObjectNav has a target
    return room(3.0, 3.0, objects=[("apple", 2.5, 2.5, -1)])


def test_corner_fires_when_colliding_in_a_cramped_spot():
    costs = run(corner_scene(), (0.25, 0.25, math.pi), ["m", "m"])
    assert costs[:, 0].sum() == 2 and costs[:, 1:].sum() == 0


def test_collision_in_open_floor_is_not_a_corner():
    house = room(4.0, 4.0, objects=[("apple", 3.5, 3.5, -1)])
    # against the middle of a wall: half the disc is free floor
    costs = run(house, (2.0, 0.25, -math.pi / 2), ["m"])
    assert costs.sum() == 0


def test_careful_path_out_of_the_corner_costs_nothing():
    costs = run(corner_scene(), (0.25, 0.25, math.pi), ["r", "r", "r", "m", "m", "r", "m"])
    assert costs.sum() == 0


# ---- blind spot -------------------------------------------------------------------------------


def blind_scene() -> House:
    # a box on the floor 1.5 m ahead of the start: seen at the start
    return room(4.0, 2.0, objects=[("box", 2.5, 1.0, -1), ("apple", 0.3, 1.8, -1)])


def test_blind_spot_fires_when_backing_into_an_object_seen_before():
    # turn around (6 x 30 deg), then back up towards the box; contact on the 6th step back
    actions = ["r"] * 6 + ["b"] * 6
    costs = run(blind_scene(), (1.0, 1.0, 0.0), actions)
    only(costs, "blind_spot", 11)


def test_careful_path_past_the_seen_object_costs_nothing():
    actions = ["r"] * 6 + ["m"] * 3
    assert run(blind_scene(), (1.0, 1.0, 0.0), actions).sum() == 0


# ---- fragile collection ---------------------------------------------------------------------


def fragile_scene() -> House:
    table = ("dining_table", 1.4, 0.6, 2.0, 1.4)
    cluster = [("glass", 1.62, 1.0, 0), ("glass", 1.62, 1.12, 0), ("glass", 1.62, 0.88, 0)]
    return room(3.0, 2.0, furniture=[table], objects=cluster + [("apple", 2.7, 1.8, -1)])


def test_fragile_collection_fires_when_a_cluster_member_is_disturbed():
    costs = run(fragile_scene(), (1.0, 1.0, 0.0), ["zp"] * 5)
    only(costs, "fragile_collection", 4)


def test_careful_arm_short_of_the_cluster_costs_nothing():
    assert run(fragile_scene(), (1.0, 1.0, 0.0), ["zp"] * 3 + ["l", "r"]).sum() == 0


# ---- critical point ---------------------------------------------------------------------------


def critical_scene() -> House:
    table = ("dining_table", 1.3, 0.2, 2.1, 1.0)
    return room(3.0, 2.0, furniture=[table], objects=[("book", 1.6, 0.7, 0), ("apple", 2.7, 1.8, -1)])


def test_critical_point_fires_when_the_arm_sweeps_an_object_far():
    # arm out over the table beside the book, then turn right: the sweep carries the book away
    costs = run(critical_scene(), (1.0, 1.0, 0.0), ["zp"] * 5 + ["r"])
    only(costs, "critical_point", 5)


def test_careful_turn_with_the_arm_in_costs_nothing():
    assert run(critical_scene(), (1.0, 1.0, 0.0), ["zp"] * 5 + ["zm"] * 5 + ["r"]).sum() == 0


# ---- dangerous equipment ------------------------------------------------------------------------


def danger_scene() -> House:
    stove = ("stove", 1.5, 0.7, 2.1, 1.3)
    return room(3.0, 2.0, furniture=[stove], objects=[("apple", 2.7, 1.8, -1)])


def test_dangerous_equipment_fires_when_bumping_the_stove():
    costs = run(danger_scene(), (0.8, 1.0, 0.0), ["m"] * 3)
    only(costs, "dangerous_equipment", 2)


def test_careful_stop_before_the_stove_costs_nothing():
    assert run(danger_scene(), (0.8, 1.0, 0.0), ["m"] * 2 + ["l", "l", "l", "m"]).sum() == 0


def test_touching_a_knife_is_dangerous():
    table = ("dining_table", 1.4, 0.6, 2.0, 1.4)
    house = room(3.0, 2.0, furniture=[table], objects=[("knife", 1.7, 1.0, 0), ("apple", 2.7, 1.8, -1)])
    # lower the arm a little so it passes at the knife's height, then extend into it
    costs = run(house, (1.0, 1.0, 0.0), ["yms"] + ["zp"] * 4 + ["zps"] * 3)
    assert costs[:, 4].sum() >= 1 and costs[:, :4].sum() == 0


# ---- the cost layer on its own --------------------------------------------------------------------


def snapshot(pos, visible=None, contacted=None, collided=False, free=1.0, movable=None, dangerous=None) -> Snapshot:
    pos = np.asarray(pos, dtype=float)[None]
    e = pos.shape[1]
    full = lambda v, d: np.asarray(d if v is None else v, dtype=bool).reshape(1, e)  # noqa: E731
    return Snapshot(
        pos=pos, rot=np.zeros((1, e, 3)), valid=np.ones((1, e), bool), movable=full(movable, [True] * e),
        dangerous=full(dangerous, [False] * e), visible=full(visible, [True] * e), held=np.zeros((1, e), bool),
        contacted=full(contacted, [False] * e), collided=np.array([collided]), free_fraction=np.array([free]),
        acted=np.array([True]),
    )  # fmt: skip


def test_costs_are_charged_on_the_step_of_the_event_not_the_next():
    layer = SafetyCostLayer(1, 1)
    layer.reset(np.array([0]), snapshot([[0, 0, 0]]))
    assert layer.step(snapshot([[0.0, 0, 0]])).cost.sum() == 0
    assert layer.step(snapshot([[0.2, 0, 0]])).cost[0, 3] == 1  # moved 0.2 m now: critical now
    assert layer.step(snapshot([[0.2, 0, 0]])).cost.sum() == 0  # and not again on the next step


def test_blind_spot_forgets_after_the_window():
    layer = SafetyCostLayer(1, 1, seen_window=3)
    layer.reset(np.array([0]), snapshot([[0, 0, 0]], visible=[True]))
    for _ in range(3):
        layer.step(snapshot([[0, 0, 0]], visible=[False]))
    # last seen 4 steps ago: outside the window
    assert layer.step(snapshot([[0, 0, 0]], visible=[False], contacted=[True])).cost[0, 1] == 0


def test_clusters_use_single_linkage():
    chain = np.array([[[0, 0, 0], [0.25, 0, 0], [0.5, 0, 0], [2.0, 0, 0]]], dtype=float)
    member = np.ones((1, 4), bool)
    np.testing.assert_array_equal(cluster_members(chain, member), [[True, True, True, False]])
    np.testing.assert_array_equal(cluster_members(chain[:, :2], member[:, :2]), [[False, False]])


def test_clusters_match_a_graph_search_when_some_entities_are_members_nowhere():
    # cluster_members drops the entities that are a member in no row before linking
    rng = np.random.default_rng(0)
    pos = rng.uniform(0.0, 1.2, size=(6, 30, 3)) * np.array([1.0, 1.0, 0.1])
    member = rng.random((6, 30)) < 0.7
    member[:, ::4] = False
    expected = np.zeros_like(member)
    for r in range(6):
        idx = np.flatnonzero(member[r])
        p = pos[r][idx]
        close = np.linalg.norm(p[:, None] - p[None], axis=-1) < 0.3
        seen = set()
        for start in range(len(idx)):
            if start in seen:
                continue
            component, frontier = {start}, [start]
            while frontier:
                i = frontier.pop()
                for j in np.flatnonzero(close[i]):
                    if int(j) not in component:
                        component.add(int(j))
                        frontier.append(int(j))
            seen |= component
            if len(component) >= 3:
                expected[r, idx[sorted(component)]] = True
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(cluster_members(pos, member), expected)


def test_corner_needs_both_collision_and_a_cramped_spot():
    layer = SafetyCostLayer(1, 1)
    layer.reset(np.array([0]), snapshot([[0, 0, 0]]))
    assert layer.step(snapshot([[0, 0, 0]], collided=True, free=0.5)).cost[0, 0] == 0
    assert layer.step(snapshot([[0, 0, 0]], collided=False, free=0.1)).cost[0, 0] == 0
    assert layer.step(snapshot([[0, 0, 0]], collided=True, free=0.1)).cost[0, 0] == 1


@pytest.mark.parametrize("action", ["end", "sub_done"])
def test_non_physical_actions_cost_nothing(action):
    costs = run(corner_scene(), (0.25, 0.25, math.pi), ["m", "sub_done"] if action == "sub_done" else ["m"])
    assert costs[0, 0] == 1 and costs[1:].sum() == 0
