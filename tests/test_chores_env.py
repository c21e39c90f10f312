"""Safety-CHORES as an env: the protocol, gymnasium ids, determinism, exact resume, evaluation
sets, experts, and bad input."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import cmdp
from cmdp.envs.chores import catalog as cat
from cmdp.envs.chores.costs import COST_NAMES
from cmdp.envs.chores.env import STATE_DIM, STATE_LAYOUT, ChoresEnv
from cmdp.envs.chores.episodes import EVAL_SEED_BASE, EpisodeSpec, add_hazards, sample_episode
from cmdp.envs.chores import sim as chores_sim
from cmdp.envs.chores.eval_sets import EVAL_SIZES, load_eval_set
from cmdp.envs.chores.expert import run_expert
from cmdp.envs.chores.geometry import ray_box_entry, segment_box_span
from cmdp.envs.chores.house import HouseParams, House, generate_house
from cmdp.envs.chores.scene import Scene
from cmdp.errors import ConfigError

TASKS = ("ObjectNav", "PickUp", "Fetch")


def random_rollout(env, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        obs, r, c, te, tr, info = env.step(rng.integers(cat.NUM_ACTIONS, size=env.num_envs))
        out.append((obs.copy(), r.copy(), c.copy(), te.copy(), tr.copy()))
    return out


@pytest.mark.parametrize("task", TASKS)
def test_make_follows_the_vector_protocol(task):
    env = cmdp.make(f"SafetyChores-{task}-v0", num_envs=4, seed=0)
    assert env.cost_names == COST_NAMES and env.num_costs == 5
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, STATE_DIM) and obs.dtype == np.float32
    assert env.observation_space.contains(obs[0])
    finished = 0
    for obs, r, c, te, tr in random_rollout(env, 60):
        assert r.shape == (4,) and c.shape == (4, 5) and te.dtype == bool
        assert set(np.unique(c)) <= {0.0, 1.0}
        finished += int((te | tr).sum())
    assert finished > 0  # random 'end' actions finish episodes, and the env restarts them


def test_final_observation_is_the_last_of_the_finished_episode():
    env = ChoresEnv("ObjectNav", num_envs=2, seed=0)
    env.reset(seed=0)
    end = np.full(2, cat.ACTION_INDEX["end"])
    obs, _, _, term, _, info = env.step(end)
    assert term.all()
    final = info["final_obs"]
    la = STATE_LAYOUT["last_action"]
    assert (final[:, la][:, cat.ACTION_INDEX["end"]] == 1).all()  # the final obs saw the 'end'
    assert (obs[:, la][:, cat.NO_ACTION] == 1).all()  # the new episode has no last action yet


@pytest.mark.parametrize("task", TASKS)
def test_gymnasium_ids_pass_the_env_checker(task):
    env = gym.make(f"SafetyChores-{task}-v0")
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=3)
    _, _, _, _, step_info = env.step(0)
    assert step_info["cost"].shape == (5,) and list(step_info["cost_names"]) == list(COST_NAMES)
    assert "instruction" in info


def test_same_seed_same_trajectory_and_different_seed_differs():
    e1, e2, e3 = (ChoresEnv("Fetch", num_envs=3, seed=s) for s in (5, 5, 6))
    o1, _ = e1.reset(seed=5)
    o2, _ = e2.reset(seed=5)
    o3, _ = e3.reset(seed=6)
    np.testing.assert_array_equal(o1, o2)
    assert not np.array_equal(o1, o3)
    for x, y in zip(random_rollout(e1, 80, seed=1), random_rollout(e2, 80, seed=1)):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)


def test_state_dict_resumes_exactly():
    env = ChoresEnv("Fetch", num_envs=3, seed=2, dynamics={"move_noise": 0.2, "failure_prob": 0.1})
    env.reset(seed=2)
    random_rollout(env, 40, seed=3)
    state = env.state_dict()
    after = random_rollout(env, 60, seed=4)
    other = ChoresEnv("Fetch", num_envs=3, seed=99, dynamics={"move_noise": 0.2, "failure_prob": 0.1})
    other.reset(seed=99)
    other.load_state_dict(state)
    again = random_rollout(other, 60, seed=4)
    for x, y in zip(after, again):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)


def test_state_dict_rejects_another_task():
    env = ChoresEnv("Fetch", num_envs=2, seed=0)
    env.reset(seed=0)
    other = ChoresEnv("PickUp", num_envs=2, seed=0)
    with pytest.raises(cmdp.errors.CheckpointError, match="Fetch"):
        other.load_state_dict(env.state_dict())


def test_house_layouts_round_trip_through_json_and_are_deterministic():
    h = generate_house(17)
    assert House.from_dict(h.to_dict()).to_dict() == h.to_dict()
    assert generate_house(17).to_dict() == h.to_dict()
    assert generate_house(18).to_dict() != h.to_dict()
    cats = {cat.CATEGORIES[c].name for s in range(40) for c in generate_house(s).obj_cat}
    assert len(cats) >= 20
    assert cats & {"knife", "scissors", "lighter", "iron", "drill"} and cats & {"vase", "glass", "plate"}


def test_episode_specs_round_trip():
    spec = add_hazards(sample_episode("Fetch", generate_house(4), np.random.default_rng(0)), np.random.default_rng(1))
    back = EpisodeSpec.from_dict(spec.to_dict())
    assert back.to_dict() == spec.to_dict()
    assert back.house.num_objects > generate_house(4).num_objects  # hazards were added


@pytest.mark.parametrize("task", TASKS)
def test_evaluation_sets_have_the_published_sizes_and_their_own_houses(task):
    specs = load_eval_set(task)
    assert len(specs) == EVAL_SIZES[task]
    seeds = [s.house.seed for s in specs]
    assert len(set(seeds)) == len(seeds) and min(seeds) >= EVAL_SEED_BASE
    # the shortest-path expert solved at least 95% of them (its length is recorded for SEL)
    assert np.mean([s.expert_length is not None for s in specs]) >= 0.95


def test_expert_solves_evaluation_episodes_and_pays_every_cost():
    # a slice of the Fetch evaluation set (the full-set numbers are in BENCHMARKS.md)
    env = ChoresEnv("Fetch", num_envs=8, seed=0, split="eval")
    episodes = run_expert(env, 40)
    assert np.mean([e["success"] for e in episodes]) >= 0.95
    safe = run_expert(ChoresEnv("Fetch", num_envs=8, seed=0, split="eval"), 40, safe=True)
    cc = lambda eps: np.mean([sum(e["costs"].values()) for e in eps])  # noqa: E731
    assert cc(safe) < cc(episodes)


def test_objectnav_success_needs_the_target_in_view():
    env = ChoresEnv("ObjectNav", num_envs=4, seed=0)
    env.reset(seed=0)
    # 'end' at the start, far from every target: never a success
    _, reward, _, term, _, info = env.step(np.full(4, cat.ACTION_INDEX["end"]))
    assert term.all() and not info["success"].any() and (reward == 0).all()


def test_rejects_bad_input():
    with pytest.raises(ConfigError, match="task"):
        ChoresEnv("Cook")
    with pytest.raises(ConfigError, match="obs_mode"):
        ChoresEnv("Fetch", obs_mode="depth")
    with pytest.raises(ConfigError, match="HouseParams.cluster_rate"):
        HouseParams(cluster_rate=2.0)
    with pytest.raises(ConfigError, match="unknown HouseParams keys"):
        ChoresEnv("Fetch", house_params={"walls": 3})
    env = ChoresEnv("Fetch", num_envs=2, seed=0)
    env.reset(seed=0)
    with pytest.raises(cmdp.errors.ActionShapeError):
        env.step(np.array([0, 25]))
    with pytest.raises(cmdp.errors.ActionShapeError):
        env.step(np.array([0]))
    with pytest.raises(cmdp.errors.UnknownNameError, match="SafetyChores-Fetch-v0"):
        cmdp.make("SafetyChores-Fetch-v1")


def test_reward_shaping_rewards_progress():
    env = ChoresEnv("Fetch", num_envs=4, seed=0, reward_shaping=1.0)
    env.reset(seed=0)
    from cmdp.envs.chores.expert import ShortestPathExpert

    expert = ShortestPathExpert(env)
    total = np.zeros(4)
    for _ in range(15):
        _, r, _, _, _, _ = env.step(expert.act())
        total += r
    assert (total > 0.5).all()  # the expert made progress along its path in every env


def test_a_listed_episode_plays_out_the_same_whatever_the_number_of_envs():
    from cmdp.envs.chores.expert import ShortestPathExpert

    specs = load_eval_set("Fetch")[:6]
    outcomes = []
    for n in (1, 4):
        env = ChoresEnv("Fetch", num_envs=n, seed=0, episodes=specs, dynamics={"move_noise": 0.2, "failure_prob": 0.05})
        env.reset(seed=0)
        expert, got = ShortestPathExpert(env), {}
        while len(got) < len(specs):
            _, _, _, _, _, info = env.step(expert.act())
            for e in info.get("episode", []):
                got.setdefault(e["episode_id"], (e["length"], tuple(e["costs"].values())))
        outcomes.append(got)
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("task", ["ObjectNav", "Fetch"])
def test_a_target_whose_approaches_are_all_covered_by_floor_objects_still_gets_a_start(task):
    # in training house 700921 every free cell connected to the bread's goal region holds a floor
    # object; sampling this target once crashed the sampler (and with it a training run)
    from cmdp.envs.chores.episodes import goal_distance
    from cmdp.envs.chores.house import GRID_RES

    house = generate_house(700_921, HouseParams())
    spec = sample_episode(task, house, np.random.default_rng(0), target_category="bread")
    x, y, _ = spec.start
    assert np.isfinite(goal_distance(spec)[int(y / GRID_RES), int(x / GRID_RES)])


def test_the_sampler_draws_another_house_when_one_has_no_valid_episode(monkeypatch):
    from cmdp.envs.chores import episodes

    real, refused = episodes.sample_episode, []

    def refuse_the_first(task, house, rng, *args, **kwargs):
        if not refused:
            refused.append(house.seed)
            raise ConfigError(f"house {house.seed} has no start cell")
        return real(task, house, rng, *args, **kwargs)

    monkeypatch.setattr(episodes, "sample_episode", refuse_the_first)
    sampler = episodes.EpisodeSampler("Fetch", 1, HouseParams(), num_train_houses=50)
    spec = sampler.next(0, np.random.default_rng(0))
    assert refused and spec.house.seed != refused[0]


def _teacher_run(spec, teacher: str, steps: int) -> tuple[list[int], list[bool]]:
    """Actions of ``teacher`` on ``spec`` (one env) and, per step, whether it had seen the target."""
    from cmdp.envs.chores.expert import make_teacher

    env = ChoresEnv(spec.task, num_envs=1, seed=0, episodes=[spec], max_episode_steps=steps + 1)
    env.reset(seed=0)
    expert = make_teacher(teacher, env)
    actions, seen = [], []
    for _ in range(steps):
        a = expert.act()
        actions.append(int(a[0]))
        seen.append(bool(getattr(expert, "_seen", np.ones(1, bool))[0]))
        _, _, _, term, trunc, _ = env.step(a)
        if term[0] or trunc[0]:
            break
    return actions, seen


def test_exploring_teacher_acts_on_what_it_has_seen_until_it_sees_the_target():
    import dataclasses

    # the same episode with another target: until either target has been in view the exploring
    # teacher must act identically (it cannot know where the target is); the shortest-path
    # expert heads for each target from the first step
    for spec in load_eval_set("Fetch")[:40]:
        other = [i for i in np.flatnonzero(cat.CATEGORY_PICKUPABLE[spec.house.obj_cat]) if i != spec.target_index]
        if not other:
            continue
        alt = dataclasses.replace(spec, target_index=int(other[-1]),
                                  target_category=cat.CATEGORIES[spec.house.obj_cat[other[-1]]].name)  # fmt: skip
        acts_a, seen_a = _teacher_run(spec, "explore", 60)
        acts_b, seen_b = _teacher_run(alt, "explore", 60)
        blind = next((t for t in range(min(len(seen_a), len(seen_b))) if seen_a[t] or seen_b[t]), None)
        if blind is None or blind < 15:
            continue  # one of the targets came into view during the first look-around
        assert acts_a[:blind] == acts_b[:blind]
        assert acts_a[:11] == [cat.ACTION_INDEX["l"]] * 11  # it looks around first
        short_a, _ = _teacher_run(spec, "shortest", blind)
        short_b, _ = _teacher_run(alt, "shortest", blind)
        assert short_a != short_b
        break
    else:
        pytest.fail("no episode among the first 40 hides both targets for 15 steps")


def test_exploring_teacher_solves_evaluation_episodes():
    from cmdp.envs.chores.expert import make_teacher

    env = ChoresEnv("Fetch", num_envs=8, seed=0, episodes=load_eval_set("Fetch")[:24], max_episode_steps=600)
    env.reset(seed=0)
    expert = make_teacher("explore", env)
    done = []
    while len(done) < 24:
        _, _, _, _, _, info = env.step(expert.act())
        done += info.get("episode", [])
    assert np.mean([e["success"] for e in done[:24]]) >= 0.9
    with pytest.raises(ConfigError, match="explore"):  # the same check generate_demos makes
        make_teacher("oracle", env)


# ---- culling in the simulator never changes what happens -----------------------------------


def test_culling_far_boxes_and_objects_leaves_trajectories_unchanged(monkeypatch):
    """The simulator tests contacts, pushes and range rays only against boxes and objects within
    reach; with the cull widened to the whole house the same seed plays out bit for bit."""

    def rollout():
        env = ChoresEnv("PickUp", num_envs=6, seed=4, house_params={"surface_clutter": 6.0, "floor_clutter": 0.5})
        env.reset(seed=4)
        rng = np.random.default_rng(5)
        physical = np.flatnonzero(cat.PHYSICAL_ACTIONS)
        out = []
        for _ in range(150):
            obs, r, c, te, tr, info = env.step(rng.choice(physical, size=env.num_envs))
            out.append((obs, r, c, te, tr, info["collided"], env.scene.obj_pos.copy()))
        return out

    culled = rollout()
    monkeypatch.setattr(chores_sim, "CULL_SLACK", 100.0)  # every box and object counts as near
    for x, y in zip(culled, rollout()):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    assert any(step[5].any() for step in culled)  # the rollout did bump into things


def ranges_without_culling(scene: Scene, num_rays: int, max_range: float) -> np.ndarray:
    n, b = scene.box.shape[:2]
    ang = scene.robot_yaw[:, None] + np.linspace(0.0, 2 * np.pi, num_rays, endpoint=False)[None, :]
    direction = np.stack([np.cos(ang), np.sin(ang)], axis=-1)
    t_in = ray_box_entry(scene.robot_xy, direction, scene.box.reshape(n * b, 5), np.repeat(np.arange(n), b))
    return np.clip(t_in.reshape(n, b, num_rays).min(axis=1) - cat.ROBOT_RADIUS, 0.0, max_range)


def test_range_readings_of_a_wall_at_the_edge_of_the_sensing_range():
    limit = 3.0 + cat.ROBOT_RADIUS  # a box further from the centre than this reads max_range
    gaps = np.array([-1e-2, -1e-6, 0.0, 1e-6, 1e-2, 0.5])
    scene = Scene(len(gaps), 3, 1)
    for row, gap in enumerate(gaps):
        scene.box[row, 0] = (limit + gap, -1.0, limit + gap + 0.1, 1.0, 1.0)  # a wall straight ahead
    sim = chores_sim.ChoresSim(scene, np.random.default_rng(0))
    got = sim.ranges(16, 3.0)
    np.testing.assert_array_equal(got, ranges_without_culling(scene, 16, 3.0))
    np.testing.assert_allclose(got[:, 0], np.minimum(limit + gaps - cat.ROBOT_RADIUS, 3.0), atol=1e-6)
    assert (got[:, 1:] == 3.0).all()  # the other bearings pass the wall's end or reach past it


def test_range_readings_match_testing_every_box():
    rng = np.random.default_rng(1)
    houses = [generate_house(s) for s in range(8)]
    scene = Scene(8, max(h.num_boxes for h in houses), max(h.num_objects for h in houses))
    for row, house in enumerate(houses):
        scene.load(row, house, (rng.uniform(0, house.width), rng.uniform(0, house.depth), rng.uniform(-np.pi, np.pi)))
    sim = chores_sim.ChoresSim(scene, rng)
    for max_range in (0.5, 1.5, 3.0, 20.0):
        np.testing.assert_array_equal(sim.ranges(16, max_range), ranges_without_culling(scene, 16, max_range))


def test_a_box_off_a_sight_lines_bounding_rectangle_never_hides_the_target():
    """Visibility runs the slab test only on boxes overlapping the bounding rectangle of the
    camera-to-target segment: any other box must start at t >= 0.999 or be missed."""
    rng = np.random.default_rng(2)
    # coordinates on a coarse grid, so segments run along box edges and touch corners exactly
    a = rng.integers(0, 5, size=(4000, 2)) * 0.5
    b = rng.integers(0, 5, size=(4000, 2)) * 0.5
    lo = rng.integers(-1, 6, size=(4000, 2)) * 0.5
    boxes = np.concatenate([lo, lo + rng.integers(1, 4, size=(4000, 2)) * 0.5], axis=1)[:, [0, 1, 2, 3]]
    seg_lo, seg_hi = np.minimum(a, b), np.maximum(a, b)
    off = (boxes[:, 0] > seg_hi[:, 0]) | (boxes[:, 2] < seg_lo[:, 0]) | (boxes[:, 1] > seg_hi[:, 1]) | (boxes[:, 3] < seg_lo[:, 1])
    t_in, _ = segment_box_span(a, b, boxes[:, None, :])
    assert off.sum() > 1000
    assert (t_in[off, 0] >= 0.999).all()
