"""safety-gymnasium ids through cmdp.make, on safety-gymnasium 1.0.0 and gymnasium 0.29.

The first test fakes the package and runs everywhere. The others need safety-gymnasium, which
lives in the peer env (`bash benchmarks/peers/run_peer_tests.sh`), and are skipped elsewhere.
"""

from __future__ import annotations

import sys
import types

import gymnasium as gym
import numpy as np
import pytest

import cmdp
from cmdp.core import registry
from cmdp.errors import ConfigError

try:
    import safety_gymnasium

    SAFETY_GYMNASIUM_PROBLEM = None
except Exception as e:  # ImportError, or the dataclass ValueError without the 3.11 hook
    SAFETY_GYMNASIUM_PROBLEM = f"{type(e).__name__}: {e}"

needs_safety_gymnasium = pytest.mark.skipif(
    SAFETY_GYMNASIUM_PROBLEM is not None,
    reason=f"safety-gymnasium is not importable here ({SAFETY_GYMNASIUM_PROBLEM}); "
    "run bash benchmarks/peers/run_peer_tests.sh",
)


def test_ids_are_found_in_safe_registry_when_the_package_exports_no_registry(monkeypatch):
    # safety-gymnasium 1.0.0 keeps its ids in the set utils.registration.safe_registry; its ids
    # are in gymnasium's registry too, where make() would build them with the wrong adapter
    made = []

    class SixTupleEnv:
        observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        metadata: dict = {}

        def reset(self, seed=None):
            return np.zeros(2, np.float32), {}

        def step(self, action):
            return np.zeros(2, np.float32), 1.0, 0.5, False, False, {}

        def close(self):
            pass

    def fake_make(env_id, **kwargs):
        made.append(env_id)
        return SixTupleEnv()

    package = types.ModuleType("safety_gymnasium")
    package.make = fake_make
    utils = types.ModuleType("safety_gymnasium.utils")
    registration = types.ModuleType("safety_gymnasium.utils.registration")
    registration.safe_registry = {"SafetyFakeGoal0-v0"}
    for name, module in [("safety_gymnasium", package), ("safety_gymnasium.utils", utils),
                         ("safety_gymnasium.utils.registration", registration)]:
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(registry, "safety_gymnasium_available", lambda: True)

    assert registry._safety_gymnasium_ids() == ["SafetyFakeGoal0-v0"]
    env = cmdp.make("SafetyFakeGoal0-v0", num_envs=2, seed=0)
    env.reset()
    _, reward, cost, *_ = env.step(np.zeros((2, 1), np.float32))
    assert made == ["SafetyFakeGoal0-v0"] * 2
    np.testing.assert_array_equal(cost, [[0.5], [0.5]])  # the 6-tuple's cost, read by the safety adapter
    env.close()


@needs_safety_gymnasium
def test_make_steps_safety_point_goal_like_the_package_itself():
    ours = cmdp.make("SafetyPointGoal1-v0", num_envs=1, seed=7)
    theirs = safety_gymnasium.make("SafetyPointGoal1-v0")
    assert ours.cost_names == ("cost",) and ours.max_episode_steps == 1000
    assert type(ours.envs[0].unwrapped).__module__.startswith("safety_gymnasium")
    obs_a, _ = ours.reset()
    obs_b, _ = theirs.reset(seed=7)
    np.testing.assert_allclose(obs_a[0], obs_b, rtol=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        action = rng.uniform(-1, 1, size=2)
        obs_a, r_a, c_a, *_ = ours.step(action[None])
        obs_b, r_b, c_b, *_ = theirs.step(action)
        np.testing.assert_allclose(obs_a[0], obs_b, rtol=1e-5, atol=1e-6)
        assert r_a[0] == pytest.approx(r_b) and c_a[0, 0] == c_b
    ours.close()
    theirs.close()


@needs_safety_gymnasium
def test_ppolag_trains_and_evaluates_on_safety_point_goal(tmp_path):
    from cmdp.algorithms import PPOLag

    algo = PPOLag(
        "SafetyPointGoal1-v0",
        cost_limit=25.0,
        seed=0,
        run_dir=tmp_path,
        progress_bar=False,
        tensorboard=False,
        num_envs=1,
        steps_per_epoch=1000,
        update_epochs=2,
    )
    algo.learn(2000)
    info = algo.last_info
    assert info["Metrics/EpLen"] == 1000 and info["Metrics/Episodes"] == 1
    assert np.isfinite(info["Metrics/EpRet"]) and 0 <= info["Metrics/EpCost"] <= 1000
    result = algo.evaluate(episodes=1)
    assert result["ep_length"] == 1000 and np.isfinite(result["ep_return"]) and result["ep_cost"] >= 0
    assert (tmp_path / "progress.csv").read_text().count("\n") == 1 + 2  # a header and two epochs
    algo.close()


@needs_safety_gymnasium
def test_rollout_workers_collect_safety_point_goal_episodes():
    from cmdp.algorithms import CPO

    algo = CPO(
        "SafetyPointGoal1-v0",
        cost_limit=25.0,
        seed=0,
        run_dir=False,
        progress_bar=False,
        num_envs=2,
        steps_per_epoch=2000,
        rollout_workers=2,
    )
    try:
        algo.learn(2000)
        info = algo.last_info
        # each worker played its env's first episode to the end
        assert info["Metrics/EpLen"] == 1000 and info["Metrics/Episodes"] == 2
        assert np.isfinite(info["Metrics/EpRet"]) and 0 <= info["Metrics/EpCost"] <= 2000
        assert algo.env.obs_rms.count == 2 + 2000  # both workers' observations, merged
        assert np.all(algo.env.obs_rms.var >= 0) and np.any(algo.env.obs_rms.var > 1)
    finally:
        algo.close()


@needs_safety_gymnasium
def test_car_goal_builds_and_steps_on_the_installed_mujoco():
    # The Car has joint sensors; safety-gymnasium looks their joints up with a one-element array,
    # which mujoco 4 rejects unless benchmarks/peers/omnisafe_compat.py's import hook is in place
    env = cmdp.make("SafetyCarGoal1-v0", num_envs=2, seed=3)
    obs, _ = env.reset()
    assert obs.shape == (2, 72) and env.cost_names == ("cost",)
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs, reward, cost, *_ = env.step(rng.uniform(-1, 1, size=(2, 2)))
        assert np.isfinite(obs).all() and np.isfinite(reward).all() and (cost >= 0).all()
    env.close()


# ---- keeping the compiled world across resets (cmdp.core.safety_gymnasium_worlds) ----------


def _play_side_by_side(env_id, episodes, move_goal_at=None, steps_per_episode=1000):
    """Episodes of an env that compiles its world at every reset and of one that keeps it, on the
    same seeds and actions; returns the keeping env's reuse record and the number of steps."""
    from cmdp.core.safety_gymnasium_worlds import reuse_compiled_world

    compiling, keeping = safety_gymnasium.make(env_id), safety_gymnasium.make(env_id)
    assert reuse_compiled_world(keeping)
    steps, _ = _play_the_same_episodes(compiling, keeping, episodes, steps_per_episode, move_goal_at)
    return keeping.unwrapped.world_model_reuse, steps


def _play_the_same_episodes(reference, candidate, episodes, steps_per_episode, move_goal_at, seek_hazards=False):
    """Episodes of two envs on the same seeds and actions, compared bit for bit at every step
    (observation bytes and dtype, reward, cost and its type, episode ends, the info's cost terms);
    returns the number of steps, and of steps with a cost."""
    rng = np.random.default_rng(1)
    steps = costly = 0
    for episode in range(episodes):
        obs_a, _ = reference.reset(seed=100 + episode)
        obs_b, _ = candidate.reset(seed=100 + episode)
        assert obs_a.dtype == obs_b.dtype and obs_a.tobytes() == obs_b.tobytes()
        for t in range(steps_per_episode):
            if t == move_goal_at:
                # what reaching the goal does: the task draws a new goal and writes it into the
                # model's body_pos, which the next reset must undo
                for env in (reference, candidate):
                    env.unwrapped.task.update_world()
            action = rng.uniform(-1, 1, reference.action_space.shape)
            if seek_hazards and t % 200 < 100:  # random actions alone seldom enter a hazard
                task = reference.unwrapped.task
                ahead = task._ego_xy(task.hazards.pos[episode % len(task.hazards.pos)][:2])
                action = np.clip([ahead[0], 3 * ahead[1]], -1, 1)
            a, b = reference.step(action), candidate.step(action)
            steps += 1
            costly += a[2] > 0
            assert a[0].dtype == b[0].dtype and a[0].tobytes() == b[0].tobytes(), (episode, t)
            assert a[1:5] == b[1:5] and type(a[2]) is type(b[2]), (episode, t)
            assert a[5] == b[5], (episode, t)
            if a[3] or a[4]:
                break
    return steps, costly


@needs_safety_gymnasium
@pytest.mark.parametrize("env_id", ["SafetyPointGoal1-v0", "SafetyCarGoal1-v0"])
def test_an_env_that_keeps_its_compiled_world_plays_the_same_episodes_bit_for_bit(env_id):
    from cmdp.core.safety_gymnasium_worlds import VERIFIED_RESETS

    reuse, steps = _play_side_by_side(env_id, episodes=4, move_goal_at=300)
    assert steps == 4 * 1000
    # safety-gymnasium builds the world twice at the first reset: one compile, then every build
    # writes its layout into that model, the first VERIFIED_RESETS of them compiled as well and
    # compared
    assert reuse.enabled and reuse.patches == 1 + 3 and reuse.compiles == 1 + VERIFIED_RESETS


@needs_safety_gymnasium
def test_the_kept_model_equals_a_fresh_compile_of_each_new_layout():
    import mujoco

    from cmdp.core.safety_gymnasium_worlds import WorldModelReuse, physics_differences

    env = safety_gymnasium.make("SafetyPointGoal2-v0")  # more hazards and vases than level 1
    layouts = []
    for seed in range(12):
        env.reset(seed=seed)
        layouts.append(env.unwrapped.task.world.xml_string)
    assert len(set(layouts)) == 12
    reuse = WorldModelReuse()
    first = reuse.compile(layouts[0])
    for xml in layouts[1:]:
        kept = reuse.compile(xml)
        assert kept is first  # the same model, rewritten
        assert physics_differences(kept, mujoco.MjModel.from_xml_string(xml)) == []
    assert reuse.enabled and reuse.patches == 11


@needs_safety_gymnasium
def test_a_layout_that_differs_beyond_body_poses_is_compiled():
    # Button's layouts move geoms within bodies, which writing body poses would not reproduce
    reuse, steps = _play_side_by_side("SafetyPointButton1-v0", episodes=3, steps_per_episode=50)
    assert reuse.enabled and steps == 3 * 50
    # the first reset's second build rewrites the layout just compiled; every new one is compiled
    assert reuse.patches == 1 and reuse.compiles == 3


@needs_safety_gymnasium
def test_a_patch_that_misses_something_is_caught_by_the_verifying_compile(monkeypatch):
    from cmdp.core import safety_gymnasium_worlds

    patch = safety_gymnasium_worlds.WorldModelReuse._patch

    def patch_but_forget_the_last_body(self, xml):
        last = self.model.body_pos[-1].copy()  # a hazard, in SafetyPointGoal1
        patch(self, xml)
        self.model.body_pos[-1] = last

    monkeypatch.setattr(safety_gymnasium_worlds.WorldModelReuse, "_patch", patch_but_forget_the_last_body)
    with pytest.warns(RuntimeWarning, match="body_pos.*compiles at every reset"):
        reuse, steps = _play_side_by_side("SafetyPointGoal1-v0", episodes=3, steps_per_episode=50)
    assert steps == 3 * 50  # and every step equal: the rejected model was never used
    # first reset: a compile and a rewrite of that layout; second: a patch that its verifying
    # compile rejects; third: a compile
    assert not reuse.enabled and reuse.patches == 2 and reuse.compiles == 3


@needs_safety_gymnasium
def test_only_envs_that_cannot_render_keep_their_world_and_make_can_turn_it_off():
    from cmdp.core.safety_gymnasium_worlds import reuse_compiled_world

    assert not reuse_compiled_world(safety_gymnasium.make("SafetyPointGoal1-v0", render_mode="rgb_array"))
    assert not reuse_compiled_world(safety_gymnasium.make("SafetyPointGoal1Vision-v0"))
    env = safety_gymnasium.make("SafetyPointGoal1-v0")
    assert reuse_compiled_world(env) and reuse_compiled_world(env)  # a second call changes nothing
    env.reset(seed=0)
    env.reset(seed=1)
    assert env.unwrapped.world_model_reuse.patches == 2
    kept = cmdp.make("SafetyPointGoal1-v0", num_envs=1, seed=0)
    compiled = cmdp.make("SafetyPointGoal1-v0", num_envs=1, seed=0, recompile_world=True)
    assert hasattr(kept.envs[0].unwrapped, "world_model_reuse")
    assert not hasattr(compiled.envs[0].unwrapped, "world_model_reuse")
    with pytest.raises(ConfigError, match="recompile_world"):
        cmdp.make("SafetyPointGoal1-v0", recompile_world="no")
    kept.close()
    compiled.close()


# ---- the vectorised observation and hazard cost (cmdp.core.safety_gymnasium_vectorised) ------


def test_pseudo_lidar_reads_closeness_in_the_objects_bin_and_aliases_into_its_neighbours():
    # runs everywhere: the array code needs no safety-gymnasium (the peer tests compare it with it)
    from cmdp.core.safety_gymnasium_vectorised import egocentric_xy, pseudo_lidar

    bin_size = 2 * np.pi / 16
    ahead = np.array([[1.5, 0.0]])  # on the bin's lower edge: all of its alias goes to the bin below
    reading = pseudo_lidar(ahead, 16, 3.0, 1.0, True)
    np.testing.assert_allclose(reading[[0, 15]], [0.5, 0.5])
    assert np.count_nonzero(reading) == 2
    middle = 2.0 * np.array([[np.cos(2.5 * bin_size), np.sin(2.5 * bin_size)]])  # mid-bin 2, 1 m closer
    np.testing.assert_allclose(pseudo_lidar(middle, 16, 3.0, 1.0, True)[[1, 2, 3]], [1 / 6, 1 / 3, 1 / 6])
    np.testing.assert_allclose(pseudo_lidar(middle, 16, None, 1.0, False)[2], np.exp(-2.0))
    assert not pseudo_lidar(np.array([[0.0, 3.5]]), 16, 3.0, 1.0, True).any()  # beyond max_dist
    # the nearer object wins its bin; groups give each kind its own row
    both = np.concatenate([ahead, 0.5 * ahead])
    np.testing.assert_allclose(pseudo_lidar(both, 16, 3.0, 1.0, True)[0], 0.75)
    rows = pseudo_lidar(both, 16, 3.0, 1.0, True, np.array([1, 0]), 2)
    assert rows[1].tobytes() == reading.tobytes()
    assert rows[0].tobytes() == pseudo_lidar(0.5 * ahead, 16, 3.0, 1.0, True).tobytes()

    # an agent at (1, 2) facing +y (its x axis along the world's y): an object to its east is on its right
    facing_north = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ego = egocentric_xy(np.array([[2.0, 2.0, 0.0], [1.0, 4.0, 0.3]]), np.array([1.0, 2.0, 0.1]), facing_north)
    np.testing.assert_allclose(ego, [[0.0, -1.0], [2.0, 0.0]])


def _play_vectorised_beside_plain(env_id, episodes, steps_per_episode=1000, move_goal_at=None, seek_hazards=False):
    """Episodes of a plain env and of a vectorised one (both keeping their compiled world),
    compared bit for bit; returns the vectorised task's record and the number of steps with a cost."""
    from cmdp.core.safety_gymnasium_vectorised import vectorise_task
    from cmdp.core.safety_gymnasium_worlds import reuse_compiled_world

    plain, vectorised = safety_gymnasium.make(env_id), safety_gymnasium.make(env_id)
    for env in (plain, vectorised):
        reuse_compiled_world(env)
    assert vectorise_task(vectorised)
    _, costly = _play_the_same_episodes(plain, vectorised, episodes, steps_per_episode, move_goal_at, seek_hazards)
    return vectorised.unwrapped.task.vectorised, costly


@needs_safety_gymnasium
@pytest.mark.parametrize(("env_id", "seek_hazards"), [("SafetyPointGoal1-v0", True), ("SafetyCarGoal2-v0", False)])
def test_a_vectorised_task_plays_the_same_episodes_bit_for_bit(monkeypatch, env_id, seek_hazards):
    from cmdp.core import safety_gymnasium_vectorised

    # most steps after the verification, where only the vectorised code runs
    monkeypatch.setattr(safety_gymnasium_vectorised, "VERIFIED_STEPS", 100)
    record, costly = _play_vectorised_beside_plain(env_id, episodes=2, move_goal_at=300, seek_hazards=seek_hazards)
    parts = ("observation", "hazard cost", "goal distance", "forward before the cost", "forward before the observation")
    assert record.enabled and record.verified == dict.fromkeys(parts, 100)
    assert costly > 20  # hazards were entered, so the cost's sum ran on nonzero terms


@needs_safety_gymnasium
def test_a_vectorised_step_runs_mujocos_forward_once_where_safety_gymnasium_runs_it_three_times(monkeypatch):
    import mujoco

    from cmdp.core import safety_gymnasium_vectorised

    monkeypatch.setattr(safety_gymnasium_vectorised, "VERIFIED_STEPS", 5)
    forwards = []
    forward = mujoco.mj_forward
    monkeypatch.setattr(mujoco, "mj_forward", lambda model, data: forwards.append(1) or forward(model, data))
    plain, vectorised = safety_gymnasium.make("SafetyPointGoal1-v0"), safety_gymnasium.make("SafetyPointGoal1-v0")
    assert safety_gymnasium_vectorised.vectorise_task(vectorised)
    for env in (plain, vectorised):
        env.reset(seed=0)
        for _ in range(20):  # past the verification of both forwards
            env.step(np.zeros(2))
    counts = []
    for env in (plain, vectorised):
        forwards.clear()
        for _ in range(10):  # standing still: no goal reached, no new goal drawn
            env.step(np.zeros(2))
        counts.append(len(forwards))
    assert counts == [30, 10]
    record = vectorised.unwrapped.task.vectorised
    assert record.verified["forward before the cost"] == record.verified["forward before the observation"] == 5


@needs_safety_gymnasium
def test_a_vectorised_task_plays_the_same_episodes_when_goals_are_reached_within_steps(monkeypatch):
    from safety_gymnasium.tasks.safe_navigation.goal.goal_level0 import GoalLevel0

    from cmdp.core import safety_gymnasium_vectorised

    monkeypatch.setattr(safety_gymnasium_vectorised, "VERIFIED_STEPS", 20)
    reached = []

    def near_the_goal(task):  # goals reached often: each draws a new goal within the step
        reached.append(task.dist_goal() <= 1.5)
        return reached[-1]

    monkeypatch.setattr(GoalLevel0, "goal_achieved", property(near_the_goal))
    record, _ = _play_vectorised_beside_plain("SafetyPointGoal1-v0", episodes=1, steps_per_episode=300)
    assert record.enabled and record.verified["forward before the observation"] == 20
    assert sum(reached) > 40


@needs_safety_gymnasium
def test_a_skipped_forward_that_would_change_the_state_is_caught(monkeypatch):
    from safety_gymnasium.tasks.safe_navigation.goal.goal_level0 import GoalLevel0

    reward = GoalLevel0.calculate_reward

    def reward_that_moves_the_agent(task):  # a task that moves the simulation between its forwards
        task.data.qvel[0] = np.nextafter(task.data.qvel[0], np.inf)
        return reward(task)

    monkeypatch.setattr(GoalLevel0, "calculate_reward", reward_that_moves_the_agent)
    with pytest.warns(RuntimeWarning, match="the forward before the cost changed the simulation's state"):
        record, _ = _play_vectorised_beside_plain("SafetyPointGoal1-v0", episodes=1, steps_per_episode=50)
    assert not record.enabled and record.verified["forward before the cost"] == 0  # every step still equal


@needs_safety_gymnasium
@pytest.mark.parametrize("max_dist", [3.0, None])
def test_pseudo_lidar_equals_safety_gymnasiums_own_on_scattered_objects(max_dist):
    from cmdp.core.safety_gymnasium_vectorised import egocentric_xy, pseudo_lidar

    env = safety_gymnasium.make("SafetyPointGoal1-v0")
    task = env.unwrapped.task
    task.lidar_conf.max_dist = max_dist  # None: the exponential reading
    rng = np.random.default_rng(3)
    env.reset(seed=0)
    for _ in range(50):
        env.step(rng.uniform(-1, 1, 2))  # the agent turned and moved: a general rotation
        # objects near and far, several in one bin, some beyond max_dist
        positions = np.concatenate([rng.uniform(-4, 4, (12, 3)), task.agent.pos + rng.normal(0, 0.02, (4, 3))])
        ego = egocentric_xy(positions, task.agent.pos, task.agent.mat)
        ours = pseudo_lidar(ego, task.lidar_conf.num_bins, max_dist, task.lidar_conf.exp_gain, task.lidar_conf.alias)
        theirs = task._obs_lidar_pseudo(positions)
        assert ours.tobytes() == theirs.tobytes()
        grouped = pseudo_lidar(ego, 16, max_dist, task.lidar_conf.exp_gain, True, np.repeat([0, 1], 8), 2)
        assert grouped[0].tobytes() == task._obs_lidar_pseudo(positions[:8]).tobytes()
        assert grouped[1].tobytes() == task._obs_lidar_pseudo(positions[8:]).tobytes()


@needs_safety_gymnasium
def test_a_vectorised_reading_that_differs_is_caught_and_the_env_goes_back_to_its_own(monkeypatch):
    from cmdp.core import safety_gymnasium_vectorised

    lidar = safety_gymnasium_vectorised.pseudo_lidar

    def lidar_off_in_the_last_bit(*args, **kwargs):
        reading = lidar(*args, **kwargs)
        return np.nextafter(reading, 2.0) if np.any(reading) else reading

    monkeypatch.setattr(safety_gymnasium_vectorised, "pseudo_lidar", lidar_off_in_the_last_bit)
    with pytest.warns(RuntimeWarning, match="the vectorised observation differed"):
        record, _ = _play_vectorised_beside_plain("SafetyPointGoal1-v0", episodes=2, steps_per_episode=50)
    assert not record.enabled and record.verified["observation"] == 0  # every step still equal


@needs_safety_gymnasium
def test_only_tasks_with_safety_gymnasiums_own_observation_are_vectorised_and_make_can_turn_it_off():
    from cmdp.core.safety_gymnasium_vectorised import vectorise_task

    button = safety_gymnasium.make("SafetyPointButton1-v0")  # its task overrides obs
    assert vectorise_task(button) and list(button.unwrapped.task.vectorised.verified) == [
        "hazard cost",
        "goal distance",
        "forward before the cost",  # not the observation's: Button's obs is its own, forward and all
    ]
    circle = safety_gymnasium.make("SafetyPointCircle1-v0")  # no goal, no hazards
    assert vectorise_task(circle) and list(circle.unwrapped.task.vectorised.verified) == [
        "observation",
        "forward before the cost",
    ]
    vision = safety_gymnasium.make("SafetyPointGoal1Vision-v0")
    assert vectorise_task(vision) and "observation" not in vision.unwrapped.task.vectorised.verified
    env = safety_gymnasium.make("SafetyPointGoal1-v0")
    assert vectorise_task(env)
    observe = env.unwrapped.task.obs
    assert vectorise_task(env) and env.unwrapped.task.obs is observe  # a second call changes nothing
    fast = cmdp.make("SafetyPointGoal1-v0", num_envs=1, seed=0)
    plain = cmdp.make("SafetyPointGoal1-v0", num_envs=1, seed=0, vectorised_task=False)
    assert hasattr(fast.envs[0].unwrapped.task, "vectorised")
    assert not hasattr(plain.envs[0].unwrapped.task, "vectorised")
    with pytest.raises(ConfigError, match="vectorised_task"):
        cmdp.make("SafetyPointGoal1-v0", vectorised_task=1)
    fast.close()
    plain.close()
