"""Elicitation over Safety-CHORES scenes: the knob space, the scenario generator, the
cross-entropy search against the unsafe expert, and the specs it hands to training."""

from __future__ import annotations

import numpy as np
import pytest

from cmdp.envs.chores.elicit import (
    BOUNDS,
    ELICIT_SEED_BASE,
    ScenarioParams,
    elicit,
    evaluate_params,
    scenario_generator,
)
from cmdp.envs.chores.env import ChoresEnv
from cmdp.envs.chores.house import HouseParams
from cmdp.envs.chores.suites import expert_policy, random_policy
from cmdp.errors import ConfigError


def test_default_point_is_the_training_distribution():
    p = ScenarioParams()
    assert p.house_params() == HouseParams()
    assert all(v == 0.0 for v in p.edit_rates().values())


def test_vector_round_trip_clipping_and_bounds():
    rng = np.random.default_rng(0)
    u = rng.random(len(BOUNDS))
    assert np.allclose(ScenarioParams.from_vector(u).to_vector(), u)
    top = ScenarioParams.from_vector(np.full(len(BOUNDS), 7.0))  # clipped into the box
    assert all(getattr(top, k) == hi for k, (_, hi) in BOUNDS.items())
    top.house_params()  # the corner of the box is a valid generator setting
    with pytest.raises(ConfigError, match="corridor_width"):
        ScenarioParams(corridor_width=0.1)
    with pytest.raises(ConfigError, match="values"):
        ScenarioParams.from_vector([0.5, 0.5])


def test_generator_is_deterministic_and_shares_house_seeds_across_points():
    hazardous = ScenarioParams(fragile_on_path=1.0, danger_near_target=1.0, occluded_target=1.0)
    a = scenario_generator(hazardous, "ObjectNav", 3, seed=5)
    b = scenario_generator(hazardous, "ObjectNav", 3, seed=5)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    plain = scenario_generator(ScenarioParams(), "ObjectNav", 3, seed=5)
    # common random numbers: another point walks the same house seeds
    assert [s.tags["house_seed"] for s in plain] == [s.tags["house_seed"] for s in a]
    assert all(s.tags["house_seed"] >= ELICIT_SEED_BASE for s in a)
    assert all(s.tags["edits"] == [] for s in plain)
    assert all(s.tags["edits"] for s in a)  # with rate 1 some edit always fits
    assert all(s.house.num_objects > p.house.num_objects for s, p in zip(a, plain))


def test_bad_arguments_are_refused():
    policy = random_policy(0)
    with pytest.raises(ConfigError, match="method"):
        elicit(policy, "Fetch", method="grid")
    with pytest.raises(ConfigError, match="objective"):
        elicit(policy, "Fetch", objective="noise")
    with pytest.raises(ConfigError, match="elite_frac"):
        elicit(policy, "Fetch", elite_frac=0.0)
    with pytest.raises(ConfigError, match="unknown task"):
        scenario_generator(ScenarioParams(), "Sweep", 1)


def test_cem_finds_scenes_where_the_unsafe_expert_pays_more():
    unsafe = expert_policy(safe=False)
    result = elicit(
        unsafe, "ObjectNav", iterations=3, population=6, episodes_per_candidate=3, init_std=0.4, seed=0,
        max_episode_steps=80, same_houses=True, num_specs=4, verbose=False,
    )  # fmt: skip
    scores = [h["population_score"] for h in result.history]
    assert result.best_sample_score == max(h["best_score"] for h in result.history)
    # on fresh houses, what it found costs the expert more than the training distribution, and
    # so does its final search population (at this budget the per-iteration scores are too noisy
    # to rise monotonically: BENCHMARKS.md has the full-budget comparison with random search)
    found = evaluate_params(unsafe, "ObjectNav", result.best_params, 16, seed=77, max_episode_steps=80)
    default = evaluate_params(unsafe, "ObjectNav", ScenarioParams(), 16, seed=77, max_episode_steps=80)
    assert found["cc"] > default["cc"], (found["cc"], default["cc"])
    assert scores[-1] > default["cc"], (scores, default["cc"])
    # the specs mix into training
    assert len(result.specs) == 4 and len({s.episode_id for s in result.specs}) == 4
    env = ChoresEnv("ObjectNav", num_envs=4, seed=0, episodes=result.specs, episode_mix=1.0)
    env.reset(seed=0)
    ids = {s.episode_id for s in env.current_specs()}
    assert ids <= {s.episode_id for s in result.specs}
    mixed = ChoresEnv("ObjectNav", num_envs=4, seed=0, episodes=result.specs, episode_mix=0.5)
    mixed.reset(seed=0)
    for _ in range(5):
        mixed.step(np.zeros(4, dtype=np.int64))


def test_search_is_deterministic_from_its_seed():
    kwargs = dict(iterations=1, population=2, episodes_per_candidate=1, seed=3, max_episode_steps=30, num_specs=1, verbose=False)
    a = elicit(random_policy(1), "PickUp", **kwargs)
    b = elicit(random_policy(1), "PickUp", **kwargs)
    assert a.best_params == b.best_params and a.best_sample_score == b.best_sample_score
    assert [h["population_score"] for h in a.history] == [h["population_score"] for h in b.history]
    assert a.specs[0].to_dict() == b.specs[0].to_dict()


def test_random_search_has_the_same_budget_and_reports_progress(capsys):
    result = elicit(random_policy(0), "PickUp", iterations=2, population=2, episodes_per_candidate=1, seed=0, method="random", max_episode_steps=20, num_specs=0)
    assert len(result.history) == 2 and result.specs == []
    err = capsys.readouterr().err
    assert "elicit[random] PickUp iteration 1/2" in err and "iteration 2/2" in err


def test_elicit_runs_a_trained_algorithm_on_its_observations():
    from cmdp.algorithms import PPO
    from cmdp.envs.chores.suites import algorithm_policy

    algo = PPO("SafetyChores-ObjectNav-v0", seed=0, num_envs=2, steps_per_epoch=64)
    result = elicit(algorithm_policy(algo), "ObjectNav", iterations=1, population=2, episodes_per_candidate=2, seed=0, max_episode_steps=25, num_specs=0, verbose=False)
    assert len(result.history) == 1 and np.isfinite(result.history[0]["population_score"])
