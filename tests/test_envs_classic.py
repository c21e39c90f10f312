"""Built-in classic CMDPs (PointGoal, GridWorld, TwoChannelGrid): the vector-env contract.

Batch stepping is checked against independent scalar per-env reference implementations written
here from the documented task definitions; the rest covers determinism, auto-reset, time
limits, exact resume via state_dict, argument validation and the point env's hazard cost.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import cmdp
from cmdp.core.registry import builtin_specs
from cmdp.envs import GridWorld, PointGoal, TwoChannelGrid
from cmdp.envs import point as P
from cmdp.errors import ActionShapeError, CheckpointError, ConfigError

IDS = ["PointGoal-v0", "PointGoalHard-v0", "GridWorld-v0", "TwoChannelGrid-v0"]


def random_actions(env, rng: np.random.Generator) -> np.ndarray:
    if env.action_space.shape == ():
        return rng.integers(0, env.action_space.n, size=env.num_envs)
    return rng.uniform(-1.2, 1.2, size=(env.num_envs, *env.action_space.shape)).astype(np.float32)


def rollout(env, steps: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        obs, rew, cost, term, trunc, info = env.step(random_actions(env, rng))
        out.append((obs, rew, cost, term, trunc, info.get("final_obs")))
    return out


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            if u is None or v is None:
                assert u is None and v is None
            else:
                np.testing.assert_array_equal(u, v)


# ---- registry and the protocol ----------------------------------------------------------------


def test_ids_are_registered_with_descriptions():
    specs = {s.env_id: s for s in builtin_specs()}
    for env_id in IDS:
        assert env_id in specs
        assert len(specs[env_id].description) > 20


@pytest.mark.parametrize("env_id", IDS)
def test_make_and_batch_types(env_id):
    env = cmdp.make(env_id, num_envs=5, seed=3)
    obs, info = env.reset()
    assert isinstance(info, dict)
    assert obs.shape == (5, *env.observation_space.shape) and obs.dtype == np.float32
    assert env.observation_space.contains(obs[0])
    k = len(env.cost_names)
    for obs, rew, cost, term, trunc, _ in rollout(env, 30):
        assert obs.shape == (5, *env.observation_space.shape) and obs.dtype == np.float32
        assert rew.shape == (5,) and rew.dtype == np.float64
        assert cost.shape == (5, k) and cost.dtype == np.float64
        assert term.shape == (5,) and term.dtype == bool
        assert trunc.shape == (5,) and trunc.dtype == bool
        assert np.isfinite(obs).all() and np.isfinite(rew).all() and np.isfinite(cost).all()
        assert set(np.unique(cost)) <= {0.0, 1.0}
    assert env.max_episode_steps is not None


def test_cost_names():
    assert cmdp.make("PointGoal-v0").cost_names == ("hazard",)
    assert cmdp.make("GridWorld-v0").cost_names == ("hazard",)
    assert cmdp.make("TwoChannelGrid-v0").cost_names == ("lava", "water")


@pytest.mark.parametrize("env_id", IDS)
def test_step_before_reset_and_bad_actions(env_id):
    env = cmdp.make(env_id, num_envs=3, seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(random_actions(env, np.random.default_rng(0)))
    env.reset()
    bad = np.zeros((2,)) if env.action_space.shape == () else np.zeros((2, 2), np.float32)
    with pytest.raises(ActionShapeError):
        env.step(bad)


# ---- determinism ------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", IDS)
def test_deterministic_from_seed(env_id):
    kw = {"max_episode_steps": 40} if env_id.startswith("Point") else {}
    a = cmdp.make(env_id, num_envs=4, seed=11, **kw)
    b = cmdp.make(env_id, num_envs=4, seed=11, **kw)
    c = cmdp.make(env_id, num_envs=4, seed=12, **kw)
    oa, ob = a.reset()[0], b.reset()[0]
    c.reset()
    np.testing.assert_array_equal(oa, ob)
    ra, rb, rc = rollout(a, 100), rollout(b, 100), rollout(c, 100)
    assert_same(ra, rb)
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(ra, rc))
    # reset(seed=s) reseeds: equal to a fresh env built with seed s
    d = cmdp.make(env_id, num_envs=4, seed=999, **kw)
    d.reset()
    rollout(d, 7)
    np.testing.assert_array_equal(d.reset(seed=11)[0], oa)
    assert_same(rollout(d, 100), ra)


# ---- exact resume -----------------------------------------------------------------------------


def _plain_tree(x) -> bool:
    if isinstance(x, dict):
        return all(isinstance(k, str) and _plain_tree(v) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return all(_plain_tree(v) for v in x)
    return x is None or isinstance(x, (np.ndarray, bool, int, float, str))


@pytest.mark.parametrize("env_id", IDS)
def test_state_dict_round_trip_continues_identically(env_id):
    kw = {"max_episode_steps": 30} if env_id.startswith("Point") else {}
    a = cmdp.make(env_id, num_envs=6, seed=5, **kw)
    a.reset()
    last = rollout(a, 45, seed=1)[-1][0]
    state = a.state_dict()
    assert _plain_tree(state)
    np.testing.assert_array_equal(state["obs"], last)
    saved = copy.deepcopy(state)
    b = cmdp.make(env_id, num_envs=6, seed=77, **kw)  # different seed and never reset
    b.load_state_dict(saved)
    expected = rollout(a, 80, seed=2)
    assert_same(expected, rollout(b, 80, seed=2))
    # b did not step the saved arrays in place: loading them again replays the same future
    assert_same(expected, rollout(_loaded(env_id, saved, kw), 80, seed=2))


def _loaded(env_id, state, kw):
    env = cmdp.make(env_id, num_envs=6, **kw)
    env.load_state_dict(state)
    return env


def test_state_dict_survives_a_torch_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    env = cmdp.make("PointGoal-v0", num_envs=3, seed=0)
    env.reset()
    rollout(env, 10)
    state = env.state_dict()

    def to_tensors(x):  # the engine's checkpoints store arrays as tensors the same way
        if isinstance(x, np.ndarray):
            return {"__nd__": torch.from_numpy(x.copy()), "dtype": str(x.dtype)}
        if isinstance(x, dict):
            return {k: to_tensors(v) for k, v in x.items()}
        if isinstance(x, list):
            return [to_tensors(v) for v in x]
        return x

    def from_tensors(x):
        if isinstance(x, dict) and "__nd__" in x:
            return x["__nd__"].numpy().astype(x["dtype"])
        if isinstance(x, dict):
            return {k: from_tensors(v) for k, v in x.items()}
        if isinstance(x, list):
            return [from_tensors(v) for v in x]
        return x

    torch.save(to_tensors(state), tmp_path / "env.pt")
    loaded = from_tensors(torch.load(tmp_path / "env.pt", weights_only=True))
    other = cmdp.make("PointGoal-v0", num_envs=3)
    other.load_state_dict(loaded)
    assert_same(rollout(env, 20), rollout(other, 20))


def test_load_state_dict_rejects_mismatches():
    env = PointGoal(num_envs=4, seed=0)
    env.reset()
    state = env.state_dict()
    with pytest.raises(CheckpointError, match="num_envs"):
        PointGoal(num_envs=3).load_state_dict(state)
    with pytest.raises(CheckpointError, match="num_hazards"):
        PointGoal(num_envs=4, num_hazards=5).load_state_dict(state)
    with pytest.raises(CheckpointError, match="GridWorld"):
        GridWorld(num_envs=4).load_state_dict(state)
    with pytest.raises(CheckpointError, match="layout"):
        g = GridWorld(num_envs=2)
        g.reset()
        GridWorld(num_envs=2, layout=("SG",)).load_state_dict(g.state_dict())
    broken = copy.deepcopy(state)
    del broken["arrays"]["_pos"]
    with pytest.raises(CheckpointError, match="_pos"):
        PointGoal(num_envs=4).load_state_dict(broken)
    with pytest.raises(CheckpointError):
        PointGoal(num_envs=4).load_state_dict({"nonsense": 1})


# ---- argument validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "env_id, kwargs, match",
    [
        ("PointGoal-v0", {"num_hazards": -1}, "num_hazards"),
        ("PointGoal-v0", {"num_hazards": 2.5}, "num_hazards"),
        ("PointGoal-v0", {"hazard_radius": 0.0}, "hazard_radius"),
        ("PointGoal-v0", {"hazard_radius": float("nan")}, "hazard_radius"),
        ("PointGoal-v0", {"lidar_bins": 2}, "lidar_bins"),
        ("PointGoal-v0", {"max_episode_steps": 0}, "max_episode_steps"),
        ("PointGoal-v0", {"num_hazards": 40}, "num_hazards <="),
        ("PointGoal-v0", {"hazard_radius": 1.9}, "do not fit"),
        ("PointGoal-v0", {"arena_size": "big"}, "arena_size"),
        ("PointGoal-v0", {"seed": -3}, "seed"),
        ("GridWorld-v0", {"end_prob": 0.0}, "end_prob"),
        ("GridWorld-v0", {"end_prob": 1.0}, "end_prob"),
        ("GridWorld-v0", {"slip": 1.5}, "slip"),
        ("GridWorld-v0", {"goal_reward": 0.0}, "goal_reward"),
        ("GridWorld-v0", {"layout": ("S.X.G",)}, "unknown characters"),
        ("GridWorld-v0", {"layout": ("S...",)}, "goal"),
        ("GridWorld-v0", {"layout": ("S..", "G")}, "same length"),
        ("GridWorld-v0", {"layout": "S.G"}, "sequence of strings"),
        ("TwoChannelGrid-v0", {"layout": ("SHG",)}, "unknown characters"),
    ],
)
def test_bad_kwargs_raise_clear_errors(env_id, kwargs, match):
    seed = kwargs.pop("seed", 0)
    with pytest.raises(ConfigError, match=match):
        cmdp.make(env_id, num_envs=2, seed=seed, **kwargs)


def test_unknown_kwarg_is_named():
    with pytest.raises(TypeError, match="hazard_count"):
        cmdp.make("PointGoal-v0", hazard_count=3)


# ---- PointGoal: scalar reference --------------------------------------------------------------


def ref_obs(env: PointGoal, pos, heading_cs, speed, omega, hazards, goal) -> np.ndarray:
    """Observation of one env written directly from the module docstring."""
    theta = math.atan2(heading_cs[1], heading_cs[0])
    c, s = math.cos(theta), math.sin(theta)
    b = env.lidar_bins
    width = 2 * math.pi / b

    def ego(p):
        dx, dy = p[0] - pos[0], p[1] - pos[1]
        return c * dx + s * dy, -s * dx + c * dy

    def lidar(objects, radius):
        out = [0.0] * b
        for p in objects:
            ex, ey = ego(p)
            d = math.hypot(ex, ey)
            intensity = math.exp(-env.lidar_exp_gain * max(d - radius, 0.0))
            bearing = math.atan2(ey, ex)
            for k in range(b):
                delta = bearing - (k + 0.5) * width
                w = (math.cos(delta) - math.cos(width)) / (1 - math.cos(width))
                out[k] = max(out[k], intensity * max(w, 0.0))
        return out

    gx, gy = ego(goal)
    size = env.arena_size
    vec = [gx / size, gy / size, math.hypot(gx, gy) / size, speed / P.MAX_SPEED, omega / P.TURN_RATE]
    vec += [pos[0] / size, pos[1] / size, c, s]
    vec += lidar(hazards, env.hazard_radius) + lidar([goal], env.goal_radius)
    return np.array(vec)


def ref_point_step(env: PointGoal, st: dict, action) -> dict:
    """One env's step (dynamics, reward, cost, time limit) written from the module docstring."""
    a0, a1 = (min(max(float(v), -1.0), 1.0) for v in action)
    omega = P.TURN_RATE * a1
    theta = math.atan2(st["heading"][1], st["heading"][0]) + omega * P.DT
    speed = min(max(st["speed"] * (1 - P.DRAG) + P.ACCEL * P.DT * a0, -P.MAX_SPEED), P.MAX_SPEED)
    moved = [st["pos"][0] + speed * P.DT * math.cos(theta), st["pos"][1] + speed * P.DT * math.sin(theta)]
    size = env.arena_size
    pos = [min(max(v, -size), size) for v in moved]
    if pos != moved:
        speed = 0.0
    dist = math.hypot(st["goal"][0] - pos[0], st["goal"][1] - pos[1])
    reached = dist < env.goal_radius
    inside = any(math.hypot(h[0] - pos[0], h[1] - pos[1]) < env.hazard_radius for h in st["hazards"])
    t = st["t"] + 1
    return {
        "pos": pos,
        "heading": [math.cos(theta), math.sin(theta)],
        "speed": speed,
        "omega": omega,
        "reward": st["prev_dist"] - dist + (env.goal_reward if reached else 0.0),
        "cost": 1.0 if inside else 0.0,
        "reached": reached,
        "truncated": t >= env.max_episode_steps,
        "t": t,
    }


def point_rows(env: PointGoal) -> list[dict]:
    st = env.state_dict()["arrays"]
    return [
        {
            "pos": st["_pos"][i].tolist(),
            "heading": st["_heading"][i].tolist(),
            "speed": float(st["_speed"][i]),
            "omega": float(st["_omega"][i]),
            "hazards": st["_objects"][:-1, i].tolist(),
            "goal": st["_objects"][-1, i].tolist(),
            "prev_dist": float(st["_prev_dist"][i]),
            "t": int(st["_t"][i]),
        }
        for i in range(env.num_envs)
    ]


def test_point_batch_step_equals_scalar_reference():
    env = PointGoal(num_envs=6, seed=2, max_episode_steps=60, goal_radius=0.5, num_hazards=6)
    obs, _ = env.reset()
    for i, row in enumerate(point_rows(env)):
        np.testing.assert_allclose(obs[i], ref_obs(env, **_obs_args(row)), atol=2e-6)
    rng = np.random.default_rng(0)
    counts = {"reached": 0, "truncated": 0, "cost": 0}
    for _ in range(150):
        before = point_rows(env)
        # steer roughly towards the goal half of the time so goals get reached
        act = rng.uniform(-1.3, 1.3, size=(6, 2)).astype(np.float32)
        act[::2, 1] = np.clip(4 * obs[::2, 1], -1, 1)
        act[::2, 0] = 1.0
        obs, rew, cost, term, trunc, info = env.step(act)
        after = point_rows(env)
        assert not term.any()
        for i in range(6):
            ref = ref_point_step(env, before[i], act[i])
            assert rew[i] == pytest.approx(ref["reward"], abs=1e-9)
            assert cost[i, 0] == ref["cost"]
            assert trunc[i] == ref["truncated"]
            counts["reached"] += ref["reached"]
            counts["cost"] += ref["cost"]
            if ref["truncated"]:
                counts["truncated"] += 1
                old = before[i]
                final = ref_obs(env, ref["pos"], ref["heading"], ref["speed"], ref["omega"], old["hazards"], old["goal"])
                np.testing.assert_allclose(info["final_obs"][i], final, atol=2e-6)
                assert after[i]["t"] == 0 and after[i]["speed"] == 0.0
            else:
                np.testing.assert_allclose(after[i]["pos"], ref["pos"], atol=1e-12)
                np.testing.assert_allclose(after[i]["heading"], ref["heading"], atol=1e-12)
                assert after[i]["speed"] == pytest.approx(ref["speed"], abs=1e-12)
                assert after[i]["t"] == ref["t"]
                assert after[i]["hazards"] == before[i]["hazards"]
                if ref["reached"]:
                    assert after[i]["goal"] != before[i]["goal"]
                else:
                    assert after[i]["goal"] == before[i]["goal"]
            np.testing.assert_allclose(obs[i], ref_obs(env, **_obs_args(after[i])), atol=2e-6)
    assert counts["reached"] >= 3 and counts["truncated"] == 12 and counts["cost"] >= 1


def _obs_args(row: dict) -> dict:
    return {k: row[k] for k in ("pos", "speed", "omega", "hazards", "goal")} | {"heading_cs": row["heading"]}


def test_point_lidar_bins_point_the_documented_way():
    env = PointGoal(num_envs=1, seed=0, num_hazards=1, lidar_bins=8, lidar_exp_gain=0.5)
    env.reset()
    state = env.state_dict()
    width = 2 * math.pi / 8
    bearing = 2.5 * width  # the centre of bin 2, anticlockwise from ahead
    state["arrays"]["_pos"][0] = [0.0, 0.0]
    state["arrays"]["_heading"][0] = [math.cos(0.3), math.sin(0.3)]
    state["arrays"]["_objects"][0, 0] = [math.cos(0.3 + bearing), math.sin(0.3 + bearing)]  # 1 m away
    state["arrays"]["_objects"][1, 0] = [-1.5, -1.5]
    env.load_state_dict(state)
    obs = env._observe()[0]
    hazard_lidar = obs[9:17]
    expected = math.exp(-0.5 * (1.0 - env.hazard_radius))
    assert hazard_lidar[2] == pytest.approx(expected, rel=1e-6)
    assert np.all(np.delete(hazard_lidar, 2) < 1e-6)


def test_point_hazard_cost_inside_not_outside():
    env = PointGoal(num_envs=3, seed=4)
    env.reset()
    state = env.state_dict()
    hz = state["arrays"]["_objects"][0]  # the first hazard of every env
    r = env.hazard_radius
    # env 0: at a hazard centre; env 1: just inside the rim; env 2: just outside the rim
    state["arrays"]["_pos"][0] = hz[0]
    state["arrays"]["_pos"][1] = hz[1] + [r - 0.01, 0.0]
    state["arrays"]["_pos"][2] = hz[2] + [r + 0.01, 0.0]
    state["arrays"]["_speed"][:] = 0.0
    env.load_state_dict(state)
    _, _, cost, *_ = env.step(np.zeros((3, 2), np.float32))  # zero thrust: the robot stays put
    assert cost[:, 0].tolist() == [1.0, 1.0, 0.0]
    # at the rim the hazard is at edge distance ~0: full intensity, spread over <= 2 bins
    assert env._observe()[1:, 9 : 9 + env.lidar_bins].max(axis=1).min() > 0.74


def test_point_layouts_keep_the_safe_detour_guarantees():
    env = PointGoal(num_envs=64, seed=9, max_episode_steps=5)
    env.reset()
    r, gap = env.hazard_radius, env.hazard_gap
    for _ in range(4):
        hz, goal, pos = env.hazards, env.goal, env.state_dict()["arrays"]["_pos"]
        d = np.linalg.norm(hz[:, :, None] - hz[:, None], axis=-1) + np.eye(env.num_hazards) * 99
        assert d.min() >= 2 * r + gap - 1e-12  # hazards keep a gap to each other ...
        assert np.abs(hz).max() <= env.arena_size - r - gap + 1e-12  # ... and to the walls
        assert np.linalg.norm(goal[:, None] - hz, axis=-1).min() >= r + env.goal_radius - 1e-12
        assert np.linalg.norm(pos[:, None] - hz, axis=-1).min() >= r + P.START_CLEARANCE - 1e-12
        for _ in range(5):
            env.step(np.zeros((64, 2), np.float32))


def test_point_goal_greedy_policy_pays_hazard_cost():
    """The unconstrained optimum heads straight for the goal; doing so crosses hazards."""
    env = PointGoal(num_envs=16, seed=0, max_episode_steps=300)
    obs, _ = env.reset()
    ret = cost = 0.0
    for _ in range(300):
        act = np.stack([np.ones(16), np.clip(5 * np.arctan2(obs[:, 1], obs[:, 0]), -1, 1)], axis=1)
        obs, r, c, *_ = env.step(act.astype(np.float32))
        ret += r.sum() / 16
        cost += c.sum() / 16
    assert ret > 20  # reaches many goals ...
    assert cost > 10  # ... and spends a good share of its time in hazards


def test_point_time_limit_and_final_obs():
    env = PointGoal(num_envs=4, seed=1, max_episode_steps=5)
    env.reset()
    for t in range(1, 11):
        obs, _, _, term, trunc, info = env.step(np.full((4, 2), 0.5, np.float32))
        assert not term.any()
        if t % 5:
            assert not trunc.any() and "final_obs" not in info
        else:
            assert trunc.all()
            assert not np.array_equal(info["final_obs"], obs)
            assert np.all(info["final_obs"][:, 4] == 0.5)  # the last step turned at half rate ...
            assert np.all(obs[:, 3:5] == 0)  # ... and the new episode starts at rest


# ---- GridWorld: scalar reference ---------------------------------------------------------------


def ref_grid_step(layout, cost_chars, cell, t, action, u, slip, end_prob, max_steps):
    """One env's step written from the module docstring, with the step's three uniforms."""
    rows, cols = len(layout), len(layout[0])
    if slip > 0 and u[0] < slip:
        action = int(u[0] / slip * 4)
    dr, dc = [(-1, 0), (0, 1), (1, 0), (0, -1)][action]
    r, c = cell[0] + dr, cell[1] + dc
    if not (0 <= r < rows and 0 <= c < cols) or layout[r][c] == "#":
        r, c = cell
    ch = layout[r][c]
    success = ch == "G"
    terminated = success or u[1] < end_prob
    truncated = (t + 1 >= max_steps) and not terminated
    cost = [1.0 if ch == x else 0.0 for x in cost_chars]
    starts = [(i, j) for i in range(rows) for j in range(cols) if layout[i][j] == "S"]
    nxt, nt = ((r, c), t + 1)
    if terminated or truncated:
        nxt, nt = starts[int(u[2] * len(starts))], 0
    return (r, c), nxt, nt, (1.0 if success else 0.0), cost, terminated, truncated, success


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (GridWorld, {}),
        (GridWorld, {"slip": 0.3, "end_prob": 0.05, "max_episode_steps": 7}),
        (GridWorld, {"layout": ("S.H#", ".#.G", "S..."), "slip": 0.1, "max_episode_steps": 9}),
        (TwoChannelGrid, {"slip": 0.2}),
    ],
)
def test_grid_batch_step_equals_scalar_reference(cls, kwargs):
    env = cls(num_envs=7, seed=3, **kwargs)
    obs, _ = env.reset()
    layout, chars = env.layout, list(env.cost_cells)
    cells = [env.cells[i] for i in obs.argmax(1)]
    t = [0] * 7
    rng = np.random.default_rng(1)
    ended = 0
    for _ in range(300):
        act = rng.integers(0, 4, size=7)
        # the env draws exactly three uniforms per env per step from its generator
        gen = np.random.default_rng()
        gen.bit_generator.state = env.state_dict()["rng"]
        u = gen.random((7, 3))
        obs, rew, cost, term, trunc, info = env.step(act)
        for i in range(7):
            landed, cells[i], t[i], r, c, te, tr, su = ref_grid_step(
                layout, chars, cells[i], t[i], int(act[i]), u[i], env.slip, env.end_prob, env.max_episode_steps
            )
            assert (rew[i], cost[i].tolist(), term[i], trunc[i], info["success"][i]) == (r, c, te, tr, su)
            assert env.cells[int(obs[i].argmax())] == cells[i] and obs[i].sum() == 1.0
            if te or tr:
                ended += 1
                assert env.cells[int(info["final_obs"][i].argmax())] == landed
    assert ended > 50


def test_grid_goal_terminates_before_the_time_limit():
    env = GridWorld(num_envs=2, seed=0, max_episode_steps=4, end_prob=1e-9)
    env.reset()
    for _ in range(3):
        _, rew, _, term, trunc, info = env.step(np.array([1, 3]))  # env 0 right to the goal, env 1 bumps
        assert not (term.any() or trunc.any())
    _, rew, cost, term, trunc, info = env.step(np.array([1, 3]))
    # step 4: env 0 enters the goal (terminated wins over the time limit), env 1 is truncated
    assert term.tolist() == [True, False] and trunc.tolist() == [False, True]
    assert info["success"].tolist() == [True, False] and rew.tolist() == [1.0, 0.0]
    assert env.cells[int(info["final_obs"][0].argmax())] == (3, 5)
    assert env.cells[int(info["final_obs"][1].argmax())] == (3, 1)


def test_grid_observation_index_is_the_state_index():
    env = GridWorld(num_envs=1, seed=0)
    obs, _ = env.reset()
    assert obs.shape == (1, len(env.cells))
    assert env.cells[int(env.state_index(obs)[0])] == (3, 1)
    assert env.observation_space.shape == (len(env.cells),)


def test_point_without_hazards():
    env = cmdp.make("PointGoal-v0", num_envs=3, seed=0, num_hazards=0, max_episode_steps=10)
    obs, _ = env.reset()
    assert np.all(obs[:, 9 : 9 + env.lidar_bins] == 0)
    for _, _, cost, *_ in rollout(env, 25):
        assert not cost.any()


def test_point_nan_actions_raise_and_leave_the_state_alone():
    env = PointGoal(num_envs=2, seed=0)
    env.reset()
    before = env.state_dict()
    with pytest.raises(ActionShapeError, match="NaN"):
        env.step(np.array([[0.0, 0.0], [np.nan, 0.0]], np.float32))
    after = env.state_dict()
    for k, v in before["arrays"].items():
        np.testing.assert_array_equal(v, after["arrays"][k])
    assert before["rng"] == after["rng"]
