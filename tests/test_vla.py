"""The VLA policy: KV-cache acting equals full-sequence evaluation, the engine's segment
minibatches reproduce acting log-probabilities, every solver trains it, checkpoints are strict."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cmdp.algorithms import ALGORITHMS, PPO, get_algorithm
from cmdp.envs.chores import catalog as cat
from cmdp.envs.chores import text
from cmdp.errors import CheckpointError, ConfigError
from cmdp.policies.vla import VLAConfig, VLAPolicy, spaces_from_signature

IO = {
    "image_shape": [32, 32, 3], "vocab_size": text.VOCAB_SIZE, "max_tokens": text.MAX_TOKENS,
    "last_actions": cat.NUM_ACTIONS + 1, "num_actions": cat.NUM_ACTIONS, "num_costs": 5,
}  # fmt: skip
TINY = dict(
    d_model=32, num_layers=2, num_heads=4, ff_dim=64, context=5, cnn_channels=(8, 8), cnn_strides=(4, 2),
    text_dim=16, text_heads=2, critic_hidden=16,
)  # fmt: skip
ENV_KWARGS = {"obs_mode": "rgb", "image_size": (32, 32), "max_episode_steps": 6}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_policy(**overrides) -> VLAPolicy:
    obs_space, act_space = spaces_from_signature(IO)
    return VLAPolicy(obs_space, act_space, 5, VLAConfig(**(TINY | overrides)))


def random_obs(b: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return {
        "rgb_nav": torch.from_numpy(rng.integers(0, 256, (b, length, 32, 32, 3), dtype=np.uint8)),
        "rgb_manip": torch.from_numpy(rng.integers(0, 256, (b, length, 32, 32, 3), dtype=np.uint8)),
        "instruction": torch.from_numpy(rng.integers(0, text.VOCAB_SIZE, (b, length, text.MAX_TOKENS))),
        "holding": torch.from_numpy(rng.integers(0, 2, (b, length))),
        "last_action": torch.from_numpy(rng.integers(0, 21, (b, length))),
        "time_step": torch.from_numpy(rng.integers(0, 500, (b, length, 1))),
    }


@pytest.mark.parametrize("separate_critic", [False, True])
def test_kv_cache_steps_equal_the_full_sequence_forward(separate_critic):
    torch.manual_seed(0)
    policy = tiny_policy(separate_critic=separate_critic)
    b, warm, length = 3, 4, 14
    obs = random_obs(b, warm + length)
    starts = torch.zeros(b, warm + length, dtype=torch.bool)
    starts[:, 0] = True
    starts[0, warm + 3] = starts[0, warm + 11] = True  # episodes end inside the segment
    starts[1, warm] = True  # a segment that begins a new episode ignores the cached context
    state = policy.initial_state(b)
    logits, values, cost_values = [], [], []
    with torch.no_grad():
        for t in range(warm + length):
            if t == warm:
                cached = state
            out = policy.act({k: v[:, t] for k, v in obs.items()}, state, starts[:, t])
            state = out.state
            logits.append(out.dist.logits)
            values.append(out.value)
            cost_values.append(out.cost_value)
        full = policy.evaluate(
            {
                "obs": {k: v[:, warm:] for k, v in obs.items()},
                "episode_start": starts[:, warm:],
                "state": cached,
                "mask": torch.ones(b, length, dtype=torch.bool),
            }
        )
    # the window (5) is shorter than the segment, so the sliding mask is exercised too
    torch.testing.assert_close(full.dist.logits, torch.stack(logits[warm:], 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full.value, torch.stack(values[warm:], 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full.cost_value, torch.stack(cost_values[warm:], 1), atol=1e-5, rtol=1e-5)
    assert full.cost_value.shape == (b, length, 5)


def test_attention_is_limited_to_the_window_and_the_episode():
    torch.manual_seed(0)
    policy = tiny_policy(num_layers=1, context=3)
    b, length = 1, 8
    obs = random_obs(b, length)
    starts = torch.zeros(b, length, dtype=torch.bool)
    starts[0, 0] = starts[0, 5] = True
    batch = {"obs": obs, "episode_start": starts, "state": None, "mask": None}
    with torch.no_grad():
        base = policy.evaluate(batch).dist.logits
        changed = {k: v.clone() for k, v in obs.items()}
        changed["rgb_nav"][0, 2] = 255 - changed["rgb_nav"][0, 2]  # perturb step 2 only
        after = policy.evaluate(batch | {"obs": changed}).dist.logits
    moved = (after - base).abs().amax(-1)[0]
    # one layer, window 3: step 2 is seen by steps 2, 3, 4; step 5 starts a new episode
    assert torch.all(moved[[2, 3, 4]] > 1e-6)
    assert torch.all(moved[[0, 1, 5, 6, 7]] == 0)


def test_acting_state_has_a_fixed_size_whatever_the_step():
    policy = tiny_policy()
    obs = random_obs(2, 1)
    step_obs = {k: v[:, 0] for k, v in obs.items()}
    state = policy.initial_state(2)
    shapes = []
    with torch.no_grad():
        for t in range(40):
            state = policy.act(step_obs, state, torch.tensor([t == 0, t == 0])).state
            shapes.append({k: tuple(v.shape) for k, v in state.items()})
    assert all(s == shapes[0] for s in shapes)
    assert shapes[0]["kv"] == (2, 2, 2, 4, 32) and bool(state["valid"].all())


def test_actor_and_critic_parameters_are_disjoint_and_the_critic_loss_stays_in_the_critic():
    for separate in (False, True):
        policy = tiny_policy(separate_critic=separate)
        actor = {id(p) for p in policy.actor_parameters()}
        critic = {id(p) for p in policy.critic_parameters()}
        assert not actor & critic
        assert actor | critic == {id(p) for p in policy.parameters()}
        starts = torch.ones(2, 3, dtype=torch.bool)
        out = policy.evaluate({"obs": random_obs(2, 3), "episode_start": starts, "state": None, "mask": None})
        (out.value.sum() + out.cost_value.sum()).backward()
        assert all(p.grad is None for p in policy.actor_parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.critic_parameters())


def test_engine_segment_minibatches_reproduce_acting_log_probs():
    policy = tiny_policy()
    algo = PPO(
        "SafetyChores-Fetch-v0", seed=0, run_dir=False, policy=policy, num_envs=2, steps_per_epoch=40,
        minibatch_size=12, update_epochs=1, env_kwargs=ENV_KWARGS,
    )  # fmt: skip
    algo.learn(40)  # one epoch: the next rollout starts from a warm KV cache
    data, _, _ = algo._collect()
    assert bool(data["start_state"]["valid"].any())
    assert int(data["episode_start"].sum()) >= 4  # 6-step episodes end inside the 20-step rollout
    algo._advantages(data)
    seen = 0
    with torch.no_grad():
        for mb in algo._minibatches(data):
            out = algo.policy.evaluate(mb)
            m = mb["mask"]
            torch.testing.assert_close(out.dist.log_prob(mb["actions"])[m], mb["logp"][m], atol=1e-5, rtol=1e-5)
            seen += int(m.sum())
    assert seen == 40
    algo.close()


@pytest.mark.parametrize("separate_critic", [False, True])
def test_the_actor_only_pass_gives_the_evaluated_distribution(separate_critic):
    torch.manual_seed(4)
    policy = tiny_policy(separate_critic=separate_critic)
    starts = torch.zeros(3, 7, dtype=torch.bool)  # the segments continue the cached episodes
    starts[1, 4] = True  # and one starts a new episode inside its segment
    warm = policy.act({k: v[:, 0] for k, v in random_obs(3, 1, seed=5).items()}).state  # a cached context
    batch = {"obs": random_obs(3, 7), "episode_start": starts, "state": warm, "mask": None}
    with torch.no_grad():
        full = policy.evaluate(batch).dist.params()
        torch.testing.assert_close(policy.action_distribution(batch).params(), full, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["PPO", "PPOLag", "PIDLag", "FOCOPS", "CPO"])
def test_every_solver_trains_the_vla_on_the_rgb_env(name):
    algo_cls = get_algorithm(name)
    kwargs = {} if name == "PPO" else {"cost_limit": 1.0}
    algo = algo_cls(
        "SafetyChores-Fetch-v0", seed=0, run_dir=False, policy=tiny_policy(), num_envs=2, steps_per_epoch=24,
        minibatch_size=12, update_epochs=2, env_kwargs=ENV_KWARGS, **kwargs,
    )  # fmt: skip
    before = [p.detach().clone() for p in algo.policy.actor_parameters()]
    algo.learn(24)
    info = algo.last_info
    losses = {k: v for k, v in info.items() if k.startswith("Loss/")}
    assert "Loss/value" in losses and "Loss/cost_value" in losses and "Loss/pi" in losses
    assert all(math.isfinite(v) for v in info.values() if isinstance(v, float))
    changed = any(not torch.equal(a, b) for a, b in zip(before, algo.policy.actor_parameters()))
    assert changed or info.get("CPO/step_fraction") == 0.0
    algo.close()
    assert name in ALGORITHMS


def test_network_vla_builds_the_default_policy():
    algo = PPO(
        "SafetyChores-Fetch-v0", seed=0, run_dir=False, network="vla", num_envs=2, steps_per_epoch=8,
        minibatch_size=8, update_epochs=1, env_kwargs=ENV_KWARGS,
    )  # fmt: skip
    assert isinstance(algo.policy, VLAPolicy) and algo.policy.config == VLAConfig()
    algo.learn(8)
    assert math.isfinite(algo.last_info["Loss/pi"])
    algo.close()
    # with the one-step cost term, the built policy has the model the term needs
    algo = get_algorithm("PPOLag")(
        "SafetyChores-Fetch-v0", cost_limit=1.0, seed=0, run_dir=False, network="vla", num_envs=2,
        steps_per_epoch=8, minibatch_size=8, update_epochs=1, env_kwargs=ENV_KWARGS, step_cost_coef=1.0,
    )  # fmt: skip
    assert algo.policy.config == VLAConfig(step_cost_model=True)
    algo.learn(8)
    assert math.isfinite(algo.last_info["Loss/step_cost"])
    algo.close()


def test_bad_spaces_and_configs_are_rejected():
    import gymnasium as gym

    with pytest.raises(ConfigError, match="rgb Safety-CHORES observation dict"):
        VLAPolicy(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(20), 5)
    with pytest.raises(ConfigError, match="multiple of num_heads"):
        VLAConfig(d_model=30, num_heads=4)
    with pytest.raises(ConfigError, match="one stride per entry"):
        VLAConfig(cnn_channels=(8, 8), cnn_strides=(2,))
    policy = tiny_policy()
    big = {k: v[:, 0] for k, v in random_obs(1, 1).items()}
    big["rgb_nav"] = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
    with pytest.raises(ConfigError, match="built for"):
        policy.act(big)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(1)
    policy = tiny_policy()
    path = policy.save_pretrained(tmp_path / "il")
    assert path.name == "vla.pt"
    data = torch.load(path, weights_only=True)  # nothing in the file needs pickle's code paths
    assert data["config"]["d_model"] == 32
    loaded = VLAPolicy.from_pretrained(tmp_path / "il")
    batch = {"obs": random_obs(2, 4), "episode_start": torch.ones(2, 4, dtype=torch.bool), "state": None, "mask": None}
    with torch.no_grad():
        a, b = policy.evaluate(batch), loaded.evaluate(batch)
    torch.testing.assert_close(a.dist.logits, b.dist.logits, rtol=0, atol=0)
    torch.testing.assert_close(a.cost_value, b.cost_value, rtol=0, atol=0)
    # FLaRe's separate critic starts as a copy of the pretrained actor network
    flare = VLAPolicy.from_pretrained(path, separate_critic=True, context=9)
    assert flare.config.separate_critic and flare.config.context == 9
    for (ka, va), (kc, vc) in zip(flare.trunk.state_dict().items(), flare.critic_trunk.state_dict().items()):
        assert ka == kc and torch.equal(va, vc)
    with torch.no_grad():
        torch.testing.assert_close(flare.evaluate(batch).dist.logits, a.dist.logits, rtol=0, atol=0)


def random_boxes(b: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    corners = np.sort(rng.random((2, b, length, 2, 2)), axis=-2).reshape(2, b, length, 4)
    seen = rng.random((2, b, length, 1)) < 0.5
    boxes = np.where(seen, np.concatenate([np.ones_like(seen, float), corners], axis=-1), 0.0).astype(np.float32)
    return {"nav_target_box": torch.from_numpy(boxes[0]), "manip_target_box": torch.from_numpy(boxes[1])}


def test_a_detection_policy_reads_the_target_boxes_and_keeps_the_cache_exact(tmp_path):
    torch.manual_seed(2)
    obs_space, act_space = spaces_from_signature(IO | {"detection": True})
    policy = VLAPolicy(obs_space, act_space, 5, VLAConfig(**TINY))
    assert policy.io["detection"] and policy.env_kwargs == {"obs_mode": "rgb", "image_size": (32, 32), "detection": True}
    b, length = 2, 7
    obs = random_obs(b, length) | random_boxes(b, length)
    starts = torch.zeros(b, length, dtype=torch.bool)
    starts[:, 0] = True
    with torch.no_grad():
        full = policy.evaluate({"obs": obs, "episode_start": starts, "state": None, "mask": None}).dist.logits
        state, stepped = None, []
        for t in range(length):
            out = policy.act({k: v[:, t] for k, v in obs.items()}, state, starts[:, t])
            state, _ = out.state, stepped.append(out.dist.logits)
        torch.testing.assert_close(torch.stack(stepped, 1), full, rtol=1e-5, atol=1e-5)
        moved = obs | {"nav_target_box": obs["nav_target_box"].flip(-1)}
        other = policy.evaluate({"obs": moved, "episode_start": starts, "state": None, "mask": None}).dist.logits
    assert not torch.allclose(other, full)
    loaded = VLAPolicy.from_pretrained(policy.save_pretrained(tmp_path / "det"))
    assert loaded.io["detection"]
    with torch.no_grad():
        again = loaded.evaluate({"obs": obs, "episode_start": starts, "state": None, "mask": None}).dist.logits
    torch.testing.assert_close(again, full, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="detection=True"):
        policy.act({k: v[:, 0] for k, v in random_obs(1, 1).items()})
    # a policy without boxes ignores them, and older files (no "detection" entry) read none
    assert not tiny_policy().io["detection"] and tiny_policy().env_kwargs["detection"] is False


def test_mismatched_and_corrupted_checkpoints_raise_clear_errors(tmp_path):
    policy = tiny_policy()
    path = policy.save_pretrained(tmp_path / "vla.pt")
    data = torch.load(path, weights_only=True)
    weights = data["state_dict"]
    weights["extra.weight"] = torch.zeros(1)
    del weights["action_head.net.bias"]
    torch.save(data, tmp_path / "keys.pt")
    with pytest.raises(CheckpointError) as err:
        VLAPolicy.from_pretrained(tmp_path / "keys.pt")
    assert "missing keys ['action_head.net.bias']" in str(err.value)
    assert "unexpected keys ['extra.weight']" in str(err.value)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        VLAPolicy.from_pretrained(path, critic_hidden=8)
    with pytest.raises(ConfigError, match="unknown VLAConfig override"):
        VLAPolicy.from_pretrained(path, d_modle=64)
    raw = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        VLAPolicy.from_pretrained(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a pretrained VLA"):
        VLAPolicy.from_pretrained(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no pretrained VLA"):
        VLAPolicy.from_pretrained(tmp_path / "missing.pt")


def test_training_with_the_vla_resumes_exactly(tmp_path):
    from cmdp.algorithms import PPOLag

    common = dict(
        seed=0, num_envs=2, steps_per_epoch=24, minibatch_size=12, update_epochs=2, env_kwargs=ENV_KWARGS,
        cost_limit=1.0, progress_bar=False, tensorboard=False,
    )  # fmt: skip
    torch.manual_seed(0)
    straight = PPOLag("SafetyChores-Fetch-v0", policy=tiny_policy(), run_dir=tmp_path / "a", **common).learn(72)
    torch.manual_seed(0)
    PPOLag("SafetyChores-Fetch-v0", policy=tiny_policy(), run_dir=tmp_path / "b", **common).learn(48)
    resumed = PPOLag.load(tmp_path / "b" / "checkpoint.pt", policy=tiny_policy()).learn(72)
    # the KV cache at the interruption is part of the saved rollout state
    for (k, a), (_, b) in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().items()):
        assert torch.equal(a, b), k
    assert straight.solver_state() == resumed.solver_state()
    with pytest.raises(CheckpointError, match="do not fit"):
        PPOLag.load(tmp_path / "b" / "checkpoint.pt", policy=tiny_policy(d_model=16))


def test_the_shipped_il_policy_loads_strictly_and_finds_targets_on_its_own_observations():
    from pathlib import Path

    from cmdp.isa.imitation import evaluate_policy

    policy = VLAPolicy.from_pretrained(Path(__file__).parents[1] / "examples" / "assets" / "il_fetch" / "vla.pt")
    assert policy.env_kwargs == {"obs_mode": "rgb", "image_size": (64, 64), "detection": True}
    result = evaluate_policy(policy, "Fetch", episodes=16, num_envs=8, max_episode_steps=250, seed=0)
    assert result["episodes"] == 16
    # measured: 6 and 8 successes of these 16 episodes within 250 steps (seeds 0 and 1), where the
    # earlier blind IL policy had 1 and 0; a policy that stops reading its boxes falls below 4
    assert result["success_rate"] >= 0.25, result


def test_the_step_cost_model_is_a_critic_head_and_loads_onto_a_checkpoint_without_it(tmp_path):
    torch.manual_seed(3)
    plain = tiny_policy()
    path = plain.save_pretrained(tmp_path / "il")
    batch = {"obs": random_obs(2, 4), "episode_start": torch.ones(2, 4, dtype=torch.bool), "state": None, "mask": None}
    assert not plain.has_step_cost_model and plain.evaluate(batch).step_cost is None
    policy = VLAPolicy.from_pretrained(path, step_cost_model=True)
    assert policy.has_step_cost_model
    out = policy.evaluate(batch)
    assert out.step_cost.shape == (2, 4, cat.NUM_ACTIONS, 5)
    assert not out.step_cost.any()  # a new head predicts no cost for any action until it learns
    with torch.no_grad():  # the added head leaves the pretrained actor and critics as they were
        torch.testing.assert_close(out.dist.logits, plain.evaluate(batch).dist.logits, rtol=0, atol=0)
    head = {id(p) for p in policy.step_cost_head.parameters()}
    assert head <= {id(p) for p in policy.critic_parameters()}
    out.step_cost.sum().backward()  # its loss trains the head only, not the actor's features
    assert all(p.grad is None for p in policy.actor_parameters())
    again = VLAPolicy.from_pretrained(policy.save_pretrained(tmp_path / "sc"))
    assert again.has_step_cost_model
    torch.testing.assert_close(again.step_cost_head.weight, policy.step_cost_head.weight, rtol=0, atol=0)
    assert not VLAPolicy.from_pretrained(tmp_path / "sc", step_cost_model=False).has_step_cost_model
    with pytest.raises(ConfigError, match="one-step cost model"):
        PPO("SafetyChores-Fetch-v0", run_dir=False, policy=tiny_policy(), num_envs=2, steps_per_epoch=12,
            env_kwargs=ENV_KWARGS, step_cost_coef=1.0)  # fmt: skip
    with pytest.raises(ConfigError, match="step_cost_coef"):
        get_algorithm("CPO")(
            "SafetyChores-Fetch-v0", cost_limit=1.0, run_dir=False, policy=policy, num_envs=2, steps_per_epoch=12,
            env_kwargs=ENV_KWARGS, step_cost_coef=1.0,
        )  # fmt: skip


def policy_whose_model_says_moving_costs() -> VLAPolicy:
    """A tiny policy whose one-step cost model says: moving ahead (action 0) costs 1 on every
    channel, nothing else costs."""
    torch.manual_seed(0)
    policy = tiny_policy(step_cost_model=True)
    with torch.no_grad():
        policy.step_cost_head.weight.zero_()
        bias = torch.zeros(cat.NUM_ACTIONS, 5)
        bias[0] = 1.0
        policy.step_cost_head.bias.copy_(bias.flatten())
    return policy


def _move_probability(algo, data) -> float:
    with torch.no_grad():
        probs = [algo.policy.evaluate(mb).dist.logits.exp()[..., 0][mb["mask"]] for mb in algo._minibatches(data)]
    return float(torch.cat(probs).mean())


@pytest.mark.parametrize("coef", [0.0, 4.0])
def test_the_step_cost_term_moves_probability_off_the_action_the_model_says_costs(coef):
    """The model is set to say: moving ahead (action 0) costs 1 on every channel, nothing else
    costs. With the term on, one epoch's update lowers the probability of moving far more than
    the sampled advantages alone do."""
    policy = policy_whose_model_says_moving_costs()
    algo = get_algorithm("PPOLag")(
        "SafetyChores-Fetch-v0", cost_limit=1.0, seed=0, run_dir=False, policy=policy, num_envs=2,
        steps_per_epoch=48, minibatch_size=24, update_epochs=4, env_kwargs=ENV_KWARGS, lambda_init=2.0,
        actor_lr=3e-3, critic_lr=1e-9, target_kl=None, step_cost_coef=coef,
    )  # fmt: skip
    data, stats, _ = algo._collect()
    algo._advantages(data)  # the minibatches carry advantages; _update computes them again
    before = _move_probability(algo, data)
    algo._update(data, stats)
    after = _move_probability(algo, data)
    if coef == 0:
        assert after > 0.5 * before, (before, after)  # the sampled advantages alone move it little
    else:
        assert after < 0.25 * before, (before, after)
    algo.close()


def test_shield_mask_allows_the_actions_predicted_under_the_threshold_or_else_the_cheapest():
    from cmdp.policies.distributions import Categorical, shield_mask, shielded

    step_cost = torch.tensor(
        [
            [[0.2, 0.2], [0.0, -0.5], [1.0, 0.0]],  # sums 0.4, 0 (a negative prediction counts as 0), 1.0
            [[0.9, 0.0], [0.5, 0.5], [0.3, 0.4]],  # none at most 0.5: the cheapest (0.7) alone
        ]
    )
    mask = shield_mask(step_cost, 0.5)
    assert mask.tolist() == [[True, True, False], [False, False, True]]
    dist = shielded(Categorical(torch.zeros(2, 3)), mask)
    torch.testing.assert_close(dist.logits.exp(), torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    assert shielded(dist, None) is dist


def test_the_cost_shield_keeps_the_actions_predicted_costly_out_of_rollouts_and_updates():
    """The model says moving ahead (action 0) costs 1 on every channel. With the shield at 0.5 no
    rollout, evaluation or prediction moves ahead; the rollout stores the allowed actions and the
    update's log-probabilities of the taken actions are the shielded ones acting drew."""
    from cmdp.algorithms.engine import taken_log_prob

    policy = policy_whose_model_says_moving_costs()
    with torch.no_grad():
        policy.action_head.net.bias[0] += 3.0  # unshielded, the policy would mostly move ahead
    algo = get_algorithm("PPOLag")(
        "SafetyChores-Fetch-v0", cost_limit=1.0, seed=0, run_dir=False, policy=policy, num_envs=2,
        steps_per_epoch=48, minibatch_size=24, update_epochs=1, env_kwargs=ENV_KWARGS, critic_lr=1e-9,
        shield_threshold=0.5,
    )  # fmt: skip
    data, _, _ = algo._collect()
    assert (data["actions"] != 0).all()
    assert not data["action_mask"][..., 0].any() and data["action_mask"][..., 1:].all()
    algo._advantages(data)
    for mb in algo._minibatches(data):
        with torch.no_grad():
            dist = algo.policy.evaluate(mb).dist
            logp = taken_log_prob(dist, mb)
            # renormalised over the allowed actions: the unshielded log-probability less log(1 - p(move))
            renormalised = dist.log_prob(mb["actions"]) - torch.log1p(-dist.logits[..., 0].exp())
        assert float(dist.logits[..., 0].exp()[mb["mask"]].min()) > 0.4  # unshielded, moving is likely
        torch.testing.assert_close(logp[mb["mask"]], mb["logp"][mb["mask"]], rtol=0, atol=1e-5)
        torch.testing.assert_close(logp[mb["mask"]], renormalised[mb["mask"]], rtol=0, atol=1e-5)
    obs, _ = algo.env.reset(seed=1)
    actions, _ = algo.predict(obs, episode_start=np.ones(2, bool))
    assert (np.asarray(actions) != 0).all()
    algo.close()
    with pytest.raises(ConfigError, match="shield_threshold=0.5 needs a policy with a one-step cost model"):
        PPO("SafetyChores-Fetch-v0", run_dir=False, policy=tiny_policy(), num_envs=2, steps_per_epoch=12,
            env_kwargs=ENV_KWARGS, shield_threshold=0.5)  # fmt: skip


def test_a_solver_checkpoint_of_a_given_vla_loads_and_is_assured_without_being_given_it(tmp_path, capsys):
    """A run given a VLA object records its architecture, so load(), `cmdp eval` and `cmdp assure`
    rebuild it from the file alone, with the cost shield when asked for."""
    import json

    from cmdp import cli
    from cmdp.algorithms import load
    from cmdp.envs.chores.env import ChoresEnv
    from cmdp.isa.assure import make_policy

    policy = policy_whose_model_says_moving_costs()
    with torch.no_grad():
        policy.action_head.net.bias[0] += 3.0  # unshielded, the policy would mostly move ahead
    algo = PPO("SafetyChores-Fetch-v0", seed=0, run_dir=tmp_path / "run", policy=policy, num_envs=2,
               steps_per_epoch=12, progress_bar=False, tensorboard=False, env_kwargs=ENV_KWARGS)  # fmt: skip
    path = algo.save(tmp_path / "run" / "checkpoint.pt")
    algo.close()
    again = load(path, progress_bar=False, tensorboard=False)
    assert isinstance(again.policy, VLAPolicy) and again.policy.config == policy.config
    for (k, a), (_, b) in zip(policy.state_dict().items(), again.policy.state_dict().items()):
        assert torch.equal(a, b), k
    again.close()

    shielded = make_policy(str(path), task="Fetch", shield_threshold=0.5)
    try:
        env = ChoresEnv("Fetch", num_envs=2, **ENV_KWARGS)
        obs, _ = env.reset(seed=0)
        start = np.ones(2, dtype=bool)
        for _ in range(5):
            actions = shielded.act(env, obs, start)
            assert (np.asarray(actions) != 0).all()  # never the move the model calls costly
            obs, *_ = env.step(actions)
            start = np.zeros(2, dtype=bool)
    finally:
        shielded.close()

    out = tmp_path / "report"
    code = cli.main(["assure", str(tmp_path / "run"), "--episodes", "2", "--suites", "none", "--num-envs", "2",
                     "--gifs", "0", "--shield-threshold", "0.5", "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "assurance.json").read_text())
    assert report["settings"]["shield_threshold"] == 0.5 and "cost shield at 0.5" in report["source"]
    code = cli.main(["eval", str(tmp_path / "run"), "--episodes", "2", "--shield-threshold", "0.5"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "cost shield at 0.5" in captured.out
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["settings"]["shield_threshold"] == 0.5

    plain = PPO("SafetyChores-Fetch-v0", seed=0, run_dir=False, policy=tiny_policy(), num_envs=2, steps_per_epoch=12,
                progress_bar=False, tensorboard=False, env_kwargs=ENV_KWARGS)  # fmt: skip
    no_model = plain.save(tmp_path / "plain.pt")
    plain.close()
    with pytest.raises(ConfigError, match="needs a policy with a one-step cost model"):
        make_policy(str(no_model), shield_threshold=0.5)


def test_training_gradients_are_the_same_on_every_run_with_two_threads():
    """The step encoder gathers each distinct instruction's features for its rows; the backward
    of that gather must not depend on how two torch threads interleave (it did with text[which]:
    17 different gradients in 20 runs of one batch)."""
    torch.set_num_threads(2)  # the autouse fixture puts back the thread count
    torch.manual_seed(0)
    policy = tiny_policy(text_dim=32, context=16)
    obs = random_obs(16, 128)
    instructions = torch.randint(1, text.VOCAB_SIZE, (3, text.MAX_TOKENS))
    obs["instruction"] = instructions[torch.randint(0, 3, (16, 128))]
    batch = {"obs": obs, "episode_start": torch.zeros(16, 128, dtype=torch.bool), "state": None, "mask": None}
    grads = []
    for _ in range(12):
        policy.zero_grad()
        out = policy.evaluate(batch)
        (out.dist.logits.square().mean() + out.value.square().mean()).backward()
        grads.append([p.grad.clone() for p in policy.trunk.encoder.text.parameters() if p.grad is not None])
    assert grads[0], "the instruction encoder got no gradient"
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other))
