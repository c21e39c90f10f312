"""The ISA pipeline (cmdp.isa.pipeline): the model stage's validation, and an ISA fine-tune at
test scale that pays less cost than the unconstrained (FLaRe-style) fine-tune from the same start."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from cmdp.algorithms import load
from cmdp.envs.chores.costs import COST_NAMES
from cmdp.errors import ConfigError
from cmdp.isa import evaluate_policy, generate_demos, train_bc, training_episodes
from cmdp.isa.pipeline import DEFAULT_COST_LIMIT, align, assure_policies, constrain, elicit_scenarios, model
from cmdp.policies.vla import VLAConfig


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cost_limit=-0.1), ">= 0"),
        (dict(cost_limit=float("nan")), "finite"),
        (dict(cost_limit=[0.3] * 4), "one per component"),
        (dict(cost_limit=[[0.3] * 5]), "one per component"),
        (dict(cost_limit={"corners": 1.0}), "unknown cost components ['corners']"),
        (dict(task="Cook"), "unknown task 'Cook'"),
        (dict(obs_mode="depth"), "obs_mode"),
        (dict(obs_mode="state", detection=True), "needs obs_mode='rgb'"),
    ],
)
def test_model_rejects_bad_limits_tasks_and_modes(kwargs, message):
    with pytest.raises(ConfigError) as err:
        model(**kwargs)
    assert message in str(err.value)


def test_model_broadcasts_one_limit_and_takes_a_mapping_of_all_five():
    assert model("PickUp", 0.5).cost_limit == (0.5,) * len(COST_NAMES)
    assert model("PickUp").cost_limit == (DEFAULT_COST_LIMIT,) * len(COST_NAMES)
    full = {name: float(i) for i, name in enumerate(COST_NAMES)}
    assert model("Fetch", full).cost_limit == tuple(full[name] for name in COST_NAMES)
    assert model("Fetch", dict(reversed(full.items()))).cost_limit == model("Fetch", full).cost_limit
    assert model("ObjectNav", obs_mode="state").env_kwargs() == {"obs_mode": "state"}
    detecting = model("Fetch", detection=True)
    assert detecting.env_kwargs() == {"obs_mode": "rgb", "image_size": (64, 64), "detection": True}
    assert detecting.to_dict()["detection"] is True


def test_model_rejects_a_mapping_that_leaves_components_out():
    # a component left out used to get 0.3 silently; the user meant to limit every component
    with pytest.raises(ConfigError) as err:
        model("Fetch", {"corner": 1.0, "blind_spot": 1.0})
    message = str(err.value)
    assert "['fragile_collection', 'critical_point', 'dangerous_equipment']" in message
    assert "one number for all" in message and "all five" in message


def test_constrain_rejects_what_is_not_a_policy_and_unknown_solvers():
    cmdp = model("ObjectNav", obs_mode="state")
    with pytest.raises(ConfigError, match="policy network or a trained solver"):
        constrain("not a policy", cmdp, "PPOLag", 10)
    with pytest.raises(Exception, match="PPOLagg"):
        constrain(None, cmdp, "PPOLagg", 10)


# ISA at test scale: a tiny VLA cloned from eight PickUp expert episodes (32x32 cameras) is the
# common start; PPO (the FLaRe-style baseline) and PPOLag fine-tune copies of it on those
# episodes with the same seed and settings, and both are measured on the same episodes.
TINY = VLAConfig(
    d_model=32, num_layers=1, num_heads=2, ff_dim=64, context=8, cnn_channels=(8, 16), cnn_strides=(4, 2),
    text_dim=16, text_heads=2, critic_hidden=16,
)  # fmt: skip
HORIZON = 120
SOLVER = dict(
    num_envs=4,
    steps_per_epoch=512,
    minibatch_size=256,
    update_epochs=4,
    actor_lr=3e-3,
    normalize_obs=False,
    progress_bar=False,
    tensorboard=False,
    torch_threads=1,
    env_kwargs={"max_episode_steps": HORIZON},
)


@pytest.fixture(scope="module")
def fine_tunes(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    specs = training_episodes("PickUp", 8, seed=0)
    demos = generate_demos(
        "PickUp", 8, 4, 0, tmp_path_factory.mktemp("demos"), (32, 32),
        episode_list=specs, shard_size=4, max_episode_steps=HORIZON, progress=False,
    )  # fmt: skip
    torch.manual_seed(0)
    start, _ = train_bc(demos, TINY, None, steps=150, batch_segments=4, lr=3e-3, warmup_steps=10, progress=False)
    cmdp = model("PickUp", cost_limit=0.05, image_size=(32, 32))
    common = dict(episodes=specs, episode_mix=1.0, seed=1, run_dir=False, **SOLVER)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    ppo = constrain(start, cmdp, "PPO", 12_288, **common)
    isa = constrain(start, cmdp, "PPOLag", 12_288, **common)
    assert all(torch.equal(before[k], v) for k, v in start.state_dict().items()), "constrain() changed its input"
    measured = {
        name: evaluate_policy(policy, "PickUp", episode_list=specs * 2, num_envs=8, max_episode_steps=HORIZON, seed=3)
        for name, policy in (("start", start), ("PPO", ppo.policy), ("ISA", isa.policy))
    }
    yield cmdp, specs, start, ppo, isa, measured
    for algo in (ppo, isa):
        algo.close()
    torch.set_num_threads(threads)


def test_isa_lowers_cost_relative_to_ppo_from_the_same_start(fine_tunes):
    _, _, start, ppo, isa, measured = fine_tunes
    assert measured["start"]["ep_cost"] > 0.5, "the cloned start should pay cost, or the comparison shows nothing"
    ppo_cc, isa_cc = measured["PPO"]["ep_cost"], measured["ISA"]["ep_cost"]
    assert isa_cc < 0.5 * ppo_cc, measured
    assert isa_cc < 0.5 * measured["start"]["ep_cost"], measured
    assert float(np.max(isa.multiplier.value)) > 0.1  # the multipliers did the work
    assert start is not ppo.policy and start is not isa.policy
    assert any(not torch.equal(a, b) for a, b in zip(ppo.policy.parameters(), isa.policy.parameters()))


def test_a_fine_tune_with_elicited_episodes_resumes_from_its_checkpoint(fine_tunes, tmp_path):
    # the checkpoint holds the episode list among the env kwargs; it must load with weights_only
    _, specs, start, _, isa, _ = fine_tunes
    again = load(isa.save(tmp_path / "isa.pt"), policy=copy.deepcopy(start), progress_bar=False)
    try:
        assert again.global_step == isa.global_step
        assert all(torch.equal(a, b) for a, b in zip(again.policy.parameters(), isa.policy.parameters()))
        assert len(again.config.env_kwargs["episodes"]) == len(specs)
        again.learn(isa.global_step + SOLVER["steps_per_epoch"])
    finally:
        again.close()


def test_elicitation_is_the_same_for_a_seed_whatever_torch_drew_before(fine_tunes):
    # the tiny VLA samples its actions: the search's scores depend on torch's generator, which
    # elicit_scenarios seeds from its own seed and gives back as it found it
    cmdp, _, start, _, _, _ = fine_tunes
    budget = dict(iterations=2, population=3, episodes_per_candidate=2, num_specs=3, verbose=False)
    runs = []
    for before in (0, 1):
        torch.manual_seed(before)
        state = torch.get_rng_state()
        runs.append(elicit_scenarios(start, cmdp, seed=7, **budget))
        assert torch.equal(torch.get_rng_state(), state), "elicit_scenarios left torch's generator moved"
    scores = [[h["population_score"] for h in run.history] for run in runs]
    assert scores[0] == scores[1] and max(scores[0]) > 0, scores
    assert np.array_equal(runs[0].mean, runs[1].mean) and np.array_equal(runs[0].std, runs[1].std)
    assert [s.start for s in runs[0].specs] == [s.start for s in runs[1].specs]


def test_assurance_report_of_the_fine_tunes_has_the_required_fields(fine_tunes, tmp_path):
    cmdp, _, _, ppo, isa, _ = fine_tunes
    assure_policies({"PPO": ppo, "ISA": isa}, cmdp, episodes=4, seed=0, num_envs=4, gifs=0, progress=False, out_dir=tmp_path)
    data = json.loads((tmp_path / "assurance.json").read_text())
    policies = data["policies"]
    for name in ("PPO", "ISA"):
        entry = policies[name]
        for key in ("success_rate", "ep_cost", "ep_costs", "ep_length", "sel", "suites"):
            assert key in entry, (name, key)
        assert set(entry["ep_costs"]) == set(COST_NAMES)
    assert (tmp_path / "assurance.md").exists()


def test_align_runs_every_stage_and_writes_them(fine_tunes, tmp_path):
    start = fine_tunes[2]
    result = align(  # the 32x32 cameras come from the policy, not from an argument
        start,
        "PickUp",
        cost_limit=0.1,
        solver="PIDLag",
        total_steps=1024,
        elicit_options=dict(iterations=1, population=2, episodes_per_candidate=1, num_specs=4),
        assure_options=dict(episodes=4, num_envs=4, gifs=0, progress=False),
        out_dir=tmp_path,
        **SOLVER,
    )
    assert result.algorithm.global_step >= 1024
    assert result.report.summary("aligned")["episodes"] == 4
    assert len(result.elicitation.specs) == 4
    assert set(result.seconds) == {"elicit", "constrain", "assure"}
    written = json.loads((tmp_path / "model.json").read_text())
    assert written["cost_limit"] == dict.fromkeys(COST_NAMES, 0.1)
    assert tuple(written["image_size"]) == (32, 32) and written["detection"] is False
    assert (tmp_path / "elicitation.json").exists() and (tmp_path / "assure" / "assurance.json").exists()
