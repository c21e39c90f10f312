"""Safety-CHORES assurance suites: the registry, determinism and house seeds, that every
out-of-distribution suite changes what it says it changes, that every extreme family raises
its cost component for the shortest-path expert while the clearance-keeping expert pays less,
and that a suite runs every episode exactly once."""

from __future__ import annotations

import numpy as np
import pytest

from cmdp.envs.chores import catalog as cat
from cmdp.envs.chores import text
from cmdp.envs.chores.costs import CLUSTER_DISTANCE, CORNER_FREE_FRACTION, COST_NAMES, cluster_members
from cmdp.envs.chores.episodes import EVAL_SEED_BASE, load_episodes, save_episodes
from cmdp.envs.chores.house import grid_of
from cmdp.envs.chores.suites import (
    KNOBS,
    SUITE_SEED_BASE,
    SUITES,
    Suite,
    algorithm_policy,
    build_suite,
    draw_episode,
    evaluate_suite,
    expert_policy,
    make_suite_env,
    random_policy,
    shortest_route,
)
from cmdp.errors import ConfigError

OOD = ("lighting", "colour", "camera", "dynamics", "instruction", "layout")
EXTREME = ("fragile_on_path", "danger_near_target", "cramped_start", "occluded_target", "dense_clutter")


def test_registry_names_kinds_and_targets():
    assert set(OOD) | set(EXTREME) | {"standard"} <= set(SUITES)
    assert all(SUITES[n].kind == "ood" for n in OOD)
    assert all(SUITES[n].kind == "extreme" and SUITES[n].target_component in COST_NAMES for n in EXTREME)
    assert len({SUITES[n].target_component for n in EXTREME}) == 5  # one family per component


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"kind": "bad"}, "kind"),
        ({"knobs": {"gamma": 1.0}}, "unknown knob"),
        ({"knobs": {"brightness": (2.0, 1.0)}}, "low <= high"),
        ({"scenario": "earthquake"}, "unknown scenario"),
        ({"target_component": "noise"}, "target_component"),
    ],
)
def test_suite_config_is_validated(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        Suite(**{"name": "x", "kind": "ood", "description": "", **kwargs})


@pytest.mark.parametrize(
    "args, words",
    [
        (("nope", "Fetch", 2, 0), "unknown suite"),
        (("standard", "Sweep", 2, 0), "unknown task"),
        (("standard", "Fetch", 0, 0), "size"),
        (("standard", "Fetch", 2, -1), "seed"),
    ],
)
def test_build_suite_rejects_bad_arguments(args, words):
    with pytest.raises(ConfigError, match=words):
        build_suite(*args)


def test_instances_are_deterministic_prefix_stable_and_in_their_own_houses(tmp_path):
    a = build_suite("fragile_on_path", "ObjectNav", 3, seed=4)
    b = build_suite("fragile_on_path", "ObjectNav", 2, seed=4)
    assert [s.to_dict() for s in a.episodes[:2]] == [s.to_dict() for s in b.episodes]
    c = build_suite("fragile_on_path", "ObjectNav", 2, seed=5)
    assert a.episodes[0].to_dict() != c.episodes[0].to_dict()
    seeds = [s.tags["house_seed"] for s in a.episodes + c.episodes]
    assert len(set(seeds)) == len(seeds)
    # above the training houses and the evaluation sets, below the elicitation houses
    assert all(SUITE_SEED_BASE <= hs < 2 * 10**9 and hs > EVAL_SEED_BASE + 300_000 for hs in seeds)
    # portable: the specs replay from their JSON form
    path = save_episodes(a.episodes, tmp_path / "suite.json.gz")
    assert [s.to_dict() for s in load_episodes(path)] == [s.to_dict() for s in a.episodes]


def test_ood_suites_share_the_standard_episodes_except_layout():
    standard = build_suite("standard", "Fetch", 3, seed=0)
    for name in ("lighting", "colour", "camera", "dynamics"):
        inst = build_suite(name, "Fetch", 3, seed=0)
        assert [s.house.to_dict() for s in inst.episodes] == [s.house.to_dict() for s in standard.episodes]
        assert [s.start for s in inst.episodes] == [s.start for s in standard.episodes]
        assert [s.episode_id for s in inst.episodes] == [s.episode_id for s in standard.episodes]


def test_a_shift_a_policy_cannot_perceive_changes_nothing_else():
    # same episodes and the same random stream per episode: a state-observation policy plays
    # the rendering suites exactly as the standard one
    runs = [evaluate_suite(build_suite(name, "PickUp", 4, seed=0), expert_policy(False), num_envs=4) for name in ("standard", "lighting", "colour")]
    assert runs[0]["per_episode"] == runs[1]["per_episode"] == runs[2]["per_episode"]


def _first_frames(instance, **kwargs):
    env = make_suite_env(instance, num_envs=2, obs_mode="rgb", **kwargs)
    obs, _ = env.reset(seed=0)
    return obs["rgb_nav"].astype(np.float64), env


def test_lighting_colour_and_camera_change_the_image():
    base, _ = _first_frames(build_suite("standard", "Fetch", 2, seed=1))
    dim, _ = _first_frames(build_suite("lighting", "Fetch", 2, seed=1))
    assert dim.mean() < 0.8 * base.mean()  # dimmer, and the contrast is lower too
    assert dim.std() < 0.7 * base.std()
    hue, _ = _first_frames(build_suite("colour", "Fetch", 2, seed=1))
    assert np.abs(hue - base).mean() > 5.0
    inst = build_suite("camera", "Fetch", 2, seed=1)
    moved, env = _first_frames(inst)
    assert np.abs(moved - base).mean() > 5.0
    geo = env.camera_geometry  # the camera that renders is the one that decides what is seen
    assert geo.height == pytest.approx(inst.knob_values["mount_height"])
    assert np.rad2deg(geo.vfov) == pytest.approx(inst.knob_values["vertical_fov"])
    assert np.rad2deg(geo.pitch) == pytest.approx(inst.knob_values["pitch"])


def test_knob_overrides_and_ranges():
    inst = build_suite("lighting", "ObjectNav", 1, seed=3)
    assert 0.4 <= inst.knob_values["brightness"] <= 0.6 and 0.5 <= inst.knob_values["contrast"] <= 0.7
    bright = build_suite("lighting", "ObjectNav", 1, seed=3, brightness=1.8)
    assert bright.knob_values["brightness"] == 1.8 and bright.env_kwargs["style"]["brightness"] == 1.8
    with pytest.raises(ConfigError, match="unknown knob"):
        build_suite("lighting", "ObjectNav", 1, seed=3, sharpness=2.0)
    assert set(KNOBS) >= {"brightness", "vertical_fov", "failure_prob"}


def test_dynamics_suite_perturbs_motion():
    standard = make_suite_env(build_suite("standard", "ObjectNav", 4, seed=2), num_envs=4)
    noisy = make_suite_env(build_suite("dynamics", "ObjectNav", 4, seed=2), num_envs=4)
    assert noisy.sim.move_noise > 0 and noisy.sim.turn_noise > 0 and noisy.sim.failure_prob > 0
    standard.reset(seed=0)
    noisy.reset(seed=0)
    assert np.allclose(standard.scene.robot_xy, noisy.scene.robot_xy)  # same episodes
    for action in ("l", "m", "r", "m", "m"):
        a = np.full(4, cat.ACTION_INDEX[action])
        standard.step(a)
        noisy.step(a)
    assert not np.allclose(standard.scene.robot_xy, noisy.scene.robot_xy)
    assert not np.allclose(standard.scene.robot_yaw, noisy.scene.robot_yaw)


def test_instruction_suite_uses_words_never_seen_in_training():
    seen = {w for templates in text.TEMPLATES.values() for t in templates for w in t.replace("{obj}", "").split()}
    for task in text.TASKS:
        inst = build_suite("instruction", task, 6, seed=0)
        standard = build_suite("standard", task, 6, seed=0)
        for s, ref in zip(inst.episodes, standard.episodes):
            assert s.target_category in s.instruction
            assert set(s.instruction.split()) - seen - {s.target_category}  # an unseen word
            assert s.instruction not in [t.format(obj=s.target_category) for t in text.TEMPLATES[task]]
            assert s.house.to_dict() == ref.house.to_dict()


def test_layout_suite_draws_other_houses():
    layout = build_suite("layout", "ObjectNav", 6, seed=0)
    standard = build_suite("standard", "ObjectNav", 6, seed=0)
    area = lambda inst: np.mean([s.house.width * s.house.depth for s in inst.episodes])  # noqa: E731
    rooms = lambda inst: np.mean([len(s.house.rooms) for s in inst.episodes])  # noqa: E731
    assert area(layout) > 1.6 * area(standard)
    assert rooms(layout) >= 5 > rooms(standard)
    assert all(s.house.params == SUITES["layout"].house_params for s in layout.episodes)


def test_extreme_edits_put_the_hazard_where_they_say():
    fragile = build_suite("fragile_on_path", "Fetch", 3, seed=0)
    for s in fragile.episodes:
        route, _ = shortest_route(s)
        placed = np.arange(s.house.num_objects - len(s.tags["placed"]), s.house.num_objects)
        assert all(cat.CATEGORY_FRAGILE[s.house.obj_cat[i]] and s.house.obj_support[i] < 0 for i in placed)
        gaps = np.linalg.norm(s.house.obj_pos[placed, None, :2] - route[None], axis=-1).min(axis=1)
        assert gaps.max() < 0.3  # on the route, within the base's half-width plus the object
        pair = np.linalg.norm(s.house.obj_pos[placed, None] - s.house.obj_pos[None, placed], axis=-1)
        assert ((pair < CLUSTER_DISTANCE).sum(axis=1) >= 2).all()  # linked to another member
    arm_path = build_suite("fragile_on_path", "PickUp", 3, seed=0)  # PickUp's path is the arm's
    for s in arm_path.episodes:
        placed = np.arange(s.house.num_objects - 3, s.house.num_objects)
        assert (s.house.obj_support[placed] == s.house.obj_support[s.target_index]).all()
        member = np.ones((1, s.house.num_objects), dtype=bool)
        assert cluster_members(s.house.obj_pos[None], member)[0, placed].all()
        first, target, start = s.house.obj_pos[placed[0], :2], s.house.obj_pos[s.target_index, :2], np.array(s.start[:2])
        assert np.linalg.norm(first - start) < np.linalg.norm(target - start)  # in front of the target
    danger = build_suite("danger_near_target", "Fetch", 3, seed=0)
    for s in danger.episodes:
        new = s.house.num_objects - 1
        assert cat.CATEGORY_DANGEROUS[s.house.obj_cat[new]]
        assert np.linalg.norm(s.house.obj_pos[new, :2] - s.house.obj_pos[s.target_index, :2]) < 0.45 or s.tags["where"] == "route_end"
    cramped = build_suite("cramped_start", "ObjectNav", 3, seed=0)
    for s in cramped.episodes:
        assert grid_of(s.house).free_fraction_at(np.array(s.start[:2])) < CORNER_FREE_FRACTION
        assert s.arm is not None and s.arm[0] >= 0.25
    dense = build_suite("dense_clutter", "ObjectNav", 4, seed=0)
    standard = build_suite("standard", "ObjectNav", 4, seed=0)
    assert np.mean([s.house.num_objects for s in dense.episodes]) > 2 * np.mean([s.house.num_objects for s in standard.episodes])


def test_a_suite_runs_every_episode_exactly_once():
    inst = build_suite("standard", "PickUp", 5, seed=0)
    result = evaluate_suite(inst, random_policy(0), num_envs=2, max_episode_steps=40)
    assert [ep["episode_id"] for ep in result["per_episode"]] == [s.episode_id for s in inst.episodes]
    assert result["episodes"] == 5 and 0.0 <= result["success_rate"] <= 1.0
    assert result["cc"] == pytest.approx(sum(result["costs"].values()))


def test_algorithm_policy_marks_episode_starts():
    class Recorder:
        def __init__(self):
            self.starts = []

        def predict(self, obs, state=None, episode_start=None, deterministic=False):
            self.starts.append(np.asarray(episode_start).copy())
            return np.full(len(obs), cat.ACTION_INDEX["end"]), state

    algo = Recorder()
    env = make_suite_env(build_suite("standard", "ObjectNav", 2, seed=0), num_envs=2)
    policy = algorithm_policy(algo)
    obs, _ = env.reset(seed=0)
    obs = env.step(policy(env, obs))[0]  # 'end' finishes both; the next observations start anew
    policy(env, obs)
    assert algo.starts[0].all() and algo.starts[1].all()
    obs = env.step(np.zeros(2, dtype=np.int64))[0]
    policy(env, obs)
    assert not algo.starts[2].any()


# ---- behaviour: each extreme family provokes its component ---------------------------------------

# (task, size) per family: the task whose episodes show the family fastest; episodes are cut at
# 200 steps (the expert needs under 150 when it is not stuck)
_FAMILY_RUNS = {
    "fragile_on_path": ("ObjectNav", 6),
    "danger_near_target": ("Fetch", 6),
    "cramped_start": ("Fetch", 6),
    "occluded_target": ("ObjectNav", 6),
    "dense_clutter": ("ObjectNav", 6),
}
_STEPS = 200


@pytest.fixture(scope="module")
def standard_results():
    out = {}
    for task in {t for t, _ in _FAMILY_RUNS.values()}:
        size = max(n for t, n in _FAMILY_RUNS.values() if t == task)
        standard = build_suite("standard", task, size, seed=0)
        out[task] = evaluate_suite(standard, expert_policy(False), num_envs=size, max_episode_steps=_STEPS)
    return out


@pytest.mark.parametrize("family", EXTREME)
def test_extreme_family_raises_its_component_and_care_pays_less(family, standard_results):
    task, size = _FAMILY_RUNS[family]
    component = SUITES[family].target_component
    inst = build_suite(family, task, size, seed=0)
    unsafe = evaluate_suite(inst, expert_policy(False), num_envs=size, max_episode_steps=_STEPS)
    safe = evaluate_suite(inst, expert_policy(True), num_envs=size, max_episode_steps=_STEPS)
    standard = standard_results[task]
    # more of the component, and in more episodes, than in the standard distribution
    assert unsafe["costs"][component] >= standard["costs"][component] + 0.5, (family, unsafe["costs"], standard["costs"])
    assert unsafe["incidence"][component] > standard["incidence"][component], (family, unsafe["incidence"], standard["incidence"])
    # keeping clearance and stowing the arm avoids it in more episodes (the share of episodes,
    # not the mean: one episode stuck against a wall would decide a mean of six)
    assert safe["incidence"][component] < unsafe["incidence"][component], (family, safe["incidence"], unsafe["incidence"])


# ---- PickUp: the families that meet the robot at its one step -------------------------------------
# PickUp starts within reach, so occluded_target and dense_clutter put their objects where the
# shortest-path expert's single step ahead bumps the target's furniture (see the module docstring)

_PICKUP_STEP_FAMILIES = ("occluded_target", "dense_clutter")
_PICKUP_SIZE = 6


@pytest.fixture(scope="module")
def pickup_standard():
    standard = build_suite("standard", "PickUp", _PICKUP_SIZE, seed=0)
    return evaluate_suite(standard, expert_policy(False), num_envs=_PICKUP_SIZE, max_episode_steps=_STEPS)


@pytest.mark.parametrize("family", _PICKUP_STEP_FAMILIES)
def test_pickup_step_edits_start_a_bump_away_and_leave_the_arm_way_clear(family):
    from cmdp.envs.chores.expert import APPROACH_DISTANCE
    from cmdp.envs.chores.sim import JOSTLE_RADIUS

    inst = build_suite(family, "PickUp", 3, seed=0)
    again = build_suite(family, "PickUp", 3, seed=0)
    assert [s.to_dict() for s in inst.episodes] == [s.to_dict() for s in again.episodes]
    assert {s.episode_id for s in inst.episodes} <= {f"pickup-house-{s.tags['house_seed']}" for s in inst.episodes}
    for s in inst.episodes:
        house, t = s.house, s.target_index
        target, start = house.obj_pos[t, :2], np.array(s.start[:2])
        dist = np.linalg.norm(target - start)
        # within reach (PickUp's start region), far enough for the shortest-path expert's step
        assert APPROACH_DISTANCE < dist <= cat.ROBOT_RADIUS + cat.ARM_EXTENSION_RANGE[1]
        heading = np.array([np.cos(s.start[2]), np.sin(s.start[2])])
        assert heading @ (target - start) / dist > 0.999 and s.arm is None  # facing the target, arm stowed
        placed = np.arange(house.num_objects - len(s.tags["placed"]), house.num_objects)
        assert len(placed) >= (3 if family == "occluded_target" else 4)
        assert (house.obj_support[placed] == house.obj_support[t]).all()
        assert not (cat.CATEGORY_FRAGILE[house.obj_cat[placed]] | cat.CATEGORY_DANGEROUS[house.obj_cat[placed]]).any()
        rel = house.obj_pos[placed, :2] - start
        across = np.abs(rel @ np.array([-heading[1], heading[0]]))
        assert (across > cat.CATEGORY_RADIUS[house.obj_cat[placed]] + 0.025).all()  # the arm bar passes them by
        bump = np.array(s.tags["at"])  # where the base meets the furniture
        assert (np.linalg.norm(house.obj_pos[placed, :2] - bump, axis=1) < JOSTLE_RADIUS - 0.05).all()
        # the episode the edit started from: the same house and target, objects only added
        ref, _ = draw_episode("PickUp", s.tags["house_seed"], SUITES[family].house_params, s.episode_id)
        assert s.target_index == ref.target_index and np.array_equal(s.house.boxes, ref.house.boxes)
        assert np.array_equal(s.house.obj_pos[: ref.house.num_objects], ref.house.obj_pos)


def test_occluded_target_objects_leave_the_view_with_the_step():
    from cmdp.envs.chores.suites import _visible_from

    for s in build_suite("occluded_target", "PickUp", 3, seed=0).episodes:
        house = s.house
        placed = np.arange(house.num_objects - len(s.tags["placed"]), house.num_objects)
        names = [cat.CATEGORIES[c].name for c in house.obj_cat[placed]]
        heading = np.array([np.cos(s.start[2]), np.sin(s.start[2])])
        start = np.array(s.start)
        closer = start + np.array([*(cat.MOVE_STEP / 2 * heading), 0.0])
        xy = house.obj_pos[placed, :2]
        poses = np.array([start] * len(placed) + [closer] * len(placed))
        seen = _visible_from(s, poses, names + names, int(house.obj_support[s.target_index]), np.concatenate([xy, xy]))
        assert seen[: len(placed)].all() and not seen[len(placed) :].any()


@pytest.mark.parametrize("family", _PICKUP_STEP_FAMILIES)
def test_pickup_step_families_raise_their_component_and_care_pays_less(family, pickup_standard):
    component = SUITES[family].target_component
    inst = build_suite(family, "PickUp", _PICKUP_SIZE, seed=0)
    unsafe = evaluate_suite(inst, expert_policy(False), num_envs=_PICKUP_SIZE, max_episode_steps=_STEPS)
    safe = evaluate_suite(inst, expert_policy(True), num_envs=_PICKUP_SIZE, max_episode_steps=_STEPS)
    # in clearly more episodes than in the standard distribution
    assert unsafe["incidence"][component] >= pickup_standard["incidence"][component] + 0.3, (family, unsafe["incidence"], pickup_standard["incidence"])
    assert unsafe["incidence"][component] >= 2 * pickup_standard["incidence"][component]
    # reaching from the start, without the step into the furniture, avoids it in more episodes
    assert safe["incidence"][component] < unsafe["incidence"][component], (family, safe["incidence"], unsafe["incidence"])
    assert safe["costs"][component] < unsafe["costs"][component]


def test_dense_clutter_leaves_objectnav_and_fetch_episodes_unedited():
    for task in ("ObjectNav", "Fetch"):
        inst = build_suite("dense_clutter", task, 2, seed=0)
        for s in inst.episodes:
            assert "scenario" not in s.tags and s.house.params == SUITES["dense_clutter"].house_params
