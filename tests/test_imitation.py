"""Imitation pretraining: expert demonstrations (recorded, resumable) and behaviour cloning
(lowers its loss, beats the random policy, resumes exactly)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdp.envs.chores import COST_NAMES
from cmdp.envs.chores import catalog as cat
from cmdp.envs.chores import text
from cmdp.errors import ConfigError
from cmdp.isa import demo_statistics, evaluate_policy, generate_demos, load_demos, train_bc, training_episodes
from cmdp.isa.imitation import _cloned_episodes, _segments
from cmdp.policies.vla import VLAConfig, VLAPolicy, spaces_from_signature

TINY = VLAConfig(
    d_model=32, num_layers=1, num_heads=2, ff_dim=64, context=8, cnn_channels=(8, 16), cnn_strides=(4, 2),
    text_dim=16, text_heads=2, critic_hidden=16,
)  # fmt: skip
IO = {
    "image_shape": [32, 32, 3], "vocab_size": text.VOCAB_SIZE, "max_tokens": text.MAX_TOKENS,
    "last_actions": cat.NUM_ACTIONS + 1, "num_actions": cat.NUM_ACTIONS, "num_costs": 5,
}  # fmt: skip
DEMO_ARGS = dict(task="PickUp", episodes=4, num_envs=2, seed=0, image_size=(32, 32), shard_size=2, max_episode_steps=80)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def specs():
    return training_episodes("PickUp", 4, seed=0)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, specs):
    out = tmp_path_factory.mktemp("demos")
    generate_demos(out_dir=out, episode_list=specs, progress=False, **DEMO_ARGS)
    return out


def test_demos_hold_whole_expert_episodes(demo_dir, specs):
    demos = load_demos(demo_dir)
    assert demos.num_episodes == 4 and demos.num_steps == int(demos.lengths.sum())
    assert list(demos.episode_ids) == [s.episode_id for s in specs]  # the fixed list, in order
    assert demos.success.any()
    assert np.array_equal(demos.actions, demos.executed)
    assert demos.obs["rgb_nav"].shape == (demos.num_steps, 32, 32, 3) and demos.obs["rgb_nav"].dtype == np.uint8
    for off, n in zip(demos.offsets, demos.lengths):
        assert np.array_equal(demos.obs["time_step"][off : off + n, 0], np.arange(n))
        # the observed last action is the one executed the step before
        assert np.array_equal(demos.obs["last_action"][off + 1 : off + n], demos.executed[off : off + n - 1])
    step_costs = np.add.reduceat(demos.costs, demos.offsets, axis=0)
    np.testing.assert_allclose(step_costs, demos.episode_costs)
    stats = demo_statistics(demo_dir)
    assert stats["success_rate"] == demos.success.mean() and stats["steps"] == demos.num_steps
    assert stats["ep_costs"] == pytest.approx(demos.summary()["ep_costs"])


def test_demo_generation_resumes_and_refuses_other_settings(demo_dir, specs, tmp_path):
    first, second = demo_dir / "shard-00000.npz", demo_dir / "shard-00001.npz"
    before = load_demos(demo_dir)
    stamp = first.stat().st_mtime_ns
    second.rename(tmp_path / "lost.npz")  # as if the run had been killed during the second shard
    with pytest.raises(ConfigError, match="incomplete"):
        load_demos(demo_dir)
    generate_demos(out_dir=demo_dir, episode_list=specs, progress=False, **DEMO_ARGS)
    assert first.stat().st_mtime_ns == stamp  # finished shards are not recorded again
    after = load_demos(demo_dir)
    for key in before.obs:
        assert np.array_equal(before.obs[key], after.obs[key])
    assert np.array_equal(before.actions, after.actions)
    with pytest.raises(ConfigError, match="other settings"):
        generate_demos(out_dir=demo_dir, episode_list=specs, progress=False, **(DEMO_ARGS | {"seed": 1}))


def test_action_noise_changes_what_runs_not_the_labels(tmp_path, specs):
    generate_demos(out_dir=tmp_path, episode_list=specs[:2], action_noise=0.5, progress=False,
                   **(DEMO_ARGS | {"episodes": 2}))  # fmt: skip
    demos = load_demos(tmp_path)
    assert (demos.actions != demos.executed).any()
    kept = load_demos(tmp_path, only_success=True)
    assert kept.num_episodes == int(demos.success.sum()) and kept.num_steps == int(demos.lengths[demos.success].sum())
    for off, n in zip(demos.offsets, demos.lengths):
        assert np.array_equal(demos.obs["last_action"][off + 1 : off + n], demos.executed[off : off + n - 1])


def test_behaviour_cloning_lowers_its_loss_and_beats_the_random_policy(demo_dir, specs, tmp_path):
    torch.manual_seed(0)
    random_policy = VLAPolicy(*spaces_from_signature(IO), 5, TINY)
    policy, history = train_bc(demo_dir, TINY, tmp_path / "bc", steps=120, batch_segments=4, lr=3e-3, warmup_steps=10,
                               log_every=20, progress=False)  # fmt: skip
    assert history[-1]["loss"] < 0.3 * history[0]["loss"]
    assert history[-1]["accuracy"] > 0.9
    assert (tmp_path / "bc" / "vla.pt").exists() and (tmp_path / "bc" / "progress.csv").exists()
    solved = [s for s, ok in zip(specs, load_demos(demo_dir).success) if ok]  # where the expert succeeded
    common = dict(episode_list=solved, num_envs=4, max_episode_steps=80)
    cloned = evaluate_policy(policy, "PickUp", deterministic=True, **common)
    random = evaluate_policy(random_policy, "PickUp", episodes=2 * len(solved), **common)
    assert cloned["success_rate"] >= 0.5
    assert cloned["success_rate"] > random["success_rate"]
    assert set(cloned["ep_costs"]) == set(COST_NAMES)


@pytest.mark.parametrize("image_shift", [0, 3])
def test_behaviour_cloning_resumes_exactly(demo_dir, tmp_path, image_shift):
    args = dict(batch_segments=2, lr=1e-3, warmup_steps=2, log_every=1, checkpoint_every=2, progress=False,
                image_shift=image_shift)  # fmt: skip
    straight, log_straight = train_bc(demo_dir, TINY, tmp_path / "a", steps=5, **args)
    train_bc(demo_dir, TINY, tmp_path / "b", steps=3, **args)  # stops at step 3 (as if interrupted)
    resumed, log_resumed = train_bc(demo_dir, TINY, tmp_path / "b", steps=5, **args)
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    assert log_straight == log_resumed
    with pytest.raises(ConfigError, match="other settings"):
        train_bc(demo_dir, TINY, tmp_path / "b", steps=6, **(args | {"lr": 2e-3}))
    _, log_bf16 = train_bc(demo_dir, TINY, tmp_path / "b", steps=6, **(args | {"bf16": True}))  # precision may change
    assert [row["step"] for row in log_bf16] == [1, 2, 3, 4, 5, 6]


def test_demo_store_memory_maps_the_same_demonstrations_and_bc_is_unchanged(demo_dir, specs, tmp_path):
    dagger = tmp_path / "dagger"
    driver = VLAPolicy(*spaces_from_signature(IO), 5, TINY)
    generate_demos(out_dir=dagger, episode_list=specs[:2], driver=driver, progress=False,
                   **(DEMO_ARGS | {"episodes": 2, "max_episode_steps": 20}))  # fmt: skip
    store = tmp_path / "store"
    for only_success in (False, True):
        in_memory = load_demos([demo_dir, dagger], only_success=only_success)
        mapped = load_demos([demo_dir, dagger], only_success=only_success, store=store)
        assert isinstance(mapped.obs["rgb_nav"], np.memmap)
        for key in in_memory.obs:
            assert np.array_equal(in_memory.obs[key], mapped.obs[key]), key
        for field in ("actions", "executed", "rewards", "costs", "lengths", "success", "episode_ids", "driven"):
            assert np.array_equal(getattr(in_memory, field), getattr(mapped, field)), field
        assert mapped.cost_names == in_memory.cost_names
    stamp = (store / "obs_rgb_nav.npy").stat().st_mtime_ns
    load_demos([demo_dir, dagger], only_success=True, store=store)
    assert (store / "obs_rgb_nav.npy").stat().st_mtime_ns == stamp  # same shards: the files are reused
    assert load_demos(demo_dir, only_success=True, store=store).num_episodes < mapped.num_episodes  # rewritten

    args = dict(steps=4, batch_segments=2, lr=1e-3, warmup_steps=2, log_every=1, progress=False)
    _, in_ram = train_bc([demo_dir, dagger], TINY, tmp_path / "a", **args)
    _, from_disk = train_bc([demo_dir, dagger], TINY, tmp_path / "b", demo_store=True, **args)
    assert from_disk == in_ram
    assert not (tmp_path / "b" / "demo_store").exists()  # removed once training completed
    with pytest.raises(ConfigError, match="demo_store"):
        train_bc(demo_dir, TINY, None, demo_store=True, **args)


def test_random_shift_translates_each_frame_by_its_own_offset():
    from cmdp.isa.imitation import random_shift

    pad = 2
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, size=(3, 40, 12, 10, 3), dtype=np.uint8))
    shifted = random_shift(images, pad, np.random.default_rng(1))
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    padded = np.pad(images.numpy(), [(0, 0), (0, 0), (pad, pad), (pad, pad), (0, 0)], mode="edge")
    offsets = set()
    for b in range(3):
        for t in range(40):
            found = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                     if np.array_equal(padded[b, t, dy : dy + 12, dx : dx + 10], shifted[b, t].numpy())]  # fmt: skip
            assert len(found) == 1, (b, t)  # random pixels: exactly one offset explains the frame
            offsets.add(found[0])
    assert len(offsets) == (2 * pad + 1) ** 2  # 120 frames draw their offsets independently


def test_bf16_autocast_gives_the_float32_loss_and_gradient_to_within_rounding(demo_dir):
    from cmdp.isa.imitation import _cloning_terms, _segment_batch

    demos = load_demos(demo_dir)
    torch.manual_seed(0)
    policy = VLAPolicy(*spaces_from_signature(IO), 5, TINY)
    batch = _segment_batch(demos, _segments(demos, _cloned_episodes(demos, True), 16, TINY.context))
    terms, grads = {}, {}
    for bf16 in (False, True):
        policy.zero_grad()
        terms[bf16] = _cloning_terms(policy, batch, bf16)
        (terms[bf16][0] / terms[bf16][2]).backward()
        grads[bf16] = torch.cat([p.grad.flatten() for p in policy.actor_parameters() if p.grad is not None])
    assert terms[True][0].dtype == torch.float32  # log-probabilities are summed in float32
    assert terms[True][0].item() == pytest.approx(terms[False][0].item(), rel=0.01)
    assert torch.nn.functional.cosine_similarity(grads[True], grads[False], dim=0) > 0.99


def test_held_out_episodes_are_scored_and_never_cloned(demo_dir, tmp_path):
    from cmdp.isa.imitation import BCConfig, _split_episodes

    demos = load_demos(demo_dir)
    cfg = BCConfig.from_kwargs(validation_episodes=1)
    train, held = _split_episodes(demos, cfg)
    assert len(held) == 1 and not set(train) & set(held)
    assert sorted([*train, *held]) == list(np.flatnonzero(demos.success))  # every cloned episode, once
    args = dict(steps=40, batch_segments=4, lr=3e-3, warmup_steps=5, log_every=20, progress=False)
    _, history = train_bc(demos, TINY, tmp_path / "v", validation_episodes=1, **args)
    assert all(0.0 <= row["val_accuracy"] <= 1.0 and row["val_loss"] > 0.0 for row in history)
    assert "BC/val_loss" in (tmp_path / "v" / "progress.csv").read_text().splitlines()[0]
    lo, hi = demos.offsets[held[0]], demos.offsets[held[0]] + demos.lengths[held[0]]
    for seg in _segments(demos, train, 16, TINY.context):  # what train_bc samples from
        assert seg.end <= lo or seg.start >= hi
    with pytest.raises(ConfigError, match="nothing to train on"):
        train_bc(demos, TINY, None, validation_episodes=len(train) + len(held), **args)


def test_dagger_round_records_expert_labels_on_the_policy_s_own_states(demo_dir, specs, tmp_path):
    torch.manual_seed(0)
    driver = VLAPolicy(*spaces_from_signature(IO), 5, TINY)
    args = DEMO_ARGS | {"episodes": 2, "max_episode_steps": 20}
    for out in (tmp_path / "a", tmp_path / "b"):
        generate_demos(out_dir=out, episode_list=specs[:2], driver=driver, progress=False, **args)
    a, b = load_demos(tmp_path / "a"), load_demos(tmp_path / "b")
    assert np.array_equal(a.executed, b.executed) and np.array_equal(a.obs["rgb_nav"], b.obs["rgb_nav"])  # seeded
    assert (a.actions != a.executed).mean() > 0.5  # an untrained policy rarely does what the expert would
    for off, n in zip(a.offsets, a.lengths):
        assert np.array_equal(a.obs["last_action"][off + 1 : off + n], a.executed[off : off + n - 1])
    both = load_demos([demo_dir, tmp_path / "a"], only_success=True)
    expert = load_demos(demo_dir, only_success=True)
    # the policy's episodes are kept whatever their outcome: their labels are the corrections
    assert both.num_episodes == expert.num_episodes + a.num_episodes
    assert not a.success.any()  # an untrained driver fails, and behaviour cloning still uses its steps:
    scored = sum(seg.end - seg.scored_from for seg in _segments(both, _cloned_episodes(both, True), 16, TINY.context))
    assert scored == both.num_steps
    with pytest.raises(ConfigError, match="other settings"):
        generate_demos(out_dir=tmp_path / "a", episode_list=specs[:2], driver=driver, driver_prob=0.5,
                       progress=False, **args)  # fmt: skip


def test_cli_takes_one_dagger_probability_or_one_per_round(tmp_path, capsys):
    from cmdp.isa.imitation import main

    for bad, why in ((["0.5", "0.7", "0.9"], "one per round"), (["1.5"], r"in \[0, 1\]")):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path), "--dagger-rounds", "2", "--dagger-prob", *bad])
        assert why.replace("\\", "") in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # rejected before any work


def test_demos_record_their_teacher(tmp_path, specs, demo_dir):
    import json
    import shutil

    args = DEMO_ARGS | {"episodes": 2, "shard_size": 2}
    generate_demos(out_dir=tmp_path, episode_list=specs[:2], teacher="explore", progress=False, **args)
    assert json.loads((tmp_path / "demos.json").read_text())["teacher"] == "explore"
    with pytest.raises(ConfigError, match="teacher"):
        generate_demos(out_dir=tmp_path, episode_list=specs[:2], progress=False, **args)
    with pytest.raises(ConfigError, match="unknown teacher"):
        generate_demos(out_dir=tmp_path / "x", episode_list=specs[:2], teacher="oracle", progress=False, **args)
    # demonstrations recorded before teachers could be chosen are the shortest-path expert's
    old = shutil.copytree(demo_dir, tmp_path / "old")
    manifest = json.loads((old / "demos.json").read_text())
    manifest.pop("teacher")
    (old / "demos.json").write_text(json.dumps(manifest))
    stamp = (old / "shard-00000.npz").stat().st_mtime_ns
    generate_demos(out_dir=old, episode_list=specs, progress=False, **DEMO_ARGS)
    assert json.loads((old / "demos.json").read_text())["teacher"] == "shortest"
    assert (old / "shard-00000.npz").stat().st_mtime_ns == stamp


def test_detection_demonstrations_carry_the_target_boxes_a_detection_policy_clones(demo_dir, specs, tmp_path):
    args = DEMO_ARGS | {"episodes": 2, "shard_size": 2}
    generate_demos(out_dir=tmp_path / "det", episode_list=specs[:2], detection=True, progress=False, **args)
    demos = load_demos(tmp_path / "det", detection=True)
    plain = load_demos(tmp_path / "det")  # the same shards serve a policy without boxes
    assert set(demos.obs) == set(plain.obs) | {"nav_target_box", "manip_target_box"}
    boxes = demos.obs["nav_target_box"]
    assert boxes.dtype == np.float32 and boxes.shape == (demos.num_steps, 5)
    assert 0 < boxes[:, 0].mean() < 1  # the target is in view on some steps, not on all
    seen = boxes[:, 0] == 1
    assert (boxes[seen, 1] < boxes[seen, 3]).all() and (boxes[seen, 2] < boxes[seen, 4]).all()
    np.testing.assert_array_equal(plain.obs["rgb_nav"], demos.obs["rgb_nav"])
    policy, history = train_bc(tmp_path / "det", TINY, tmp_path / "bc", steps=4, batch_segments=2, detection=True,
                               demo_store=True, progress=False)  # fmt: skip
    assert policy.io["detection"] and len(history) == 1
    assert VLAPolicy.from_pretrained(tmp_path / "bc" / "vla.pt").io["detection"]
    result = evaluate_policy(policy, "PickUp", episode_list=specs[:2], num_envs=2, max_episode_steps=10)
    assert result["episodes"] == 2
    with pytest.raises(ConfigError, match="recorded without target boxes"):
        train_bc(demo_dir, TINY, steps=1, detection=True, progress=False)
    with pytest.raises(ConfigError, match="does not read"):
        train_bc(demo_dir, steps=1, policy=VLAPolicy(*spaces_from_signature(IO), 5, TINY), detection=True, progress=False)
    with pytest.raises(ConfigError, match="DAgger driver"):
        generate_demos(out_dir=tmp_path / "x", episode_list=specs[:2], driver=policy, progress=False, **args)
