"""The assure stage: metrics against a direct computation, the report files, GIF replays, the CLI.

One module-scoped run of the expert, the safe expert and random over a few Fetch episodes and
two small suites feeds most tests; the CLI tests run the real command on the shipped Fetch
evaluation set and on a PPOLag checkpoint trained for one epoch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmdp import cli
from cmdp.envs.chores.costs import COST_NAMES
from cmdp.envs.chores.env import EVAL_HORIZON, ChoresEnv
from cmdp.envs.chores.episodes import sample_episode
from cmdp.envs.chores.house import generate_house
from cmdp.envs.chores.suites import expert_policy, run_policy
from cmdp.errors import ConfigError
from cmdp.isa.assure import EVAL_SET, assure, episode_metrics, sel_score, with_expert_lengths

REQUIRED = ("success_rate", "ep_cost", "ep_costs", "ep_length", "sel")
NUM_ENVS = 4
SUITES = ("fragile_on_path", "dynamics")


@pytest.fixture(scope="module")
def fetch_specs():
    specs = []
    for k in range(6):
        house = generate_house(7_000 + k)
        specs.append(sample_episode("Fetch", house, np.random.default_rng(k), episode_id=f"fetch-test-{k}"))
    return with_expert_lengths(specs)


@pytest.fixture(scope="module")
def three(fetch_specs, tmp_path_factory):
    out = tmp_path_factory.mktemp("assure")
    report = assure(
        ["expert", "safe-expert", "random"], task="Fetch", suites=",".join(SUITES), eval_episodes=fetch_specs,
        suite_episodes=3, seed=0, out_dir=out, num_envs=NUM_ENVS, gifs=1, progress=False,
    )  # fmt: skip
    data = json.loads((out / "assurance.json").read_text())
    episodes = json.loads((out / "episodes.json").read_text())
    return report, data, episodes, out


def _direct(specs, safe: bool) -> list[dict]:
    """The expert's episodes run by the suites module's own loop, for comparison."""
    env = ChoresEnv("Fetch", num_envs=NUM_ENVS, seed=0, episodes=specs, max_episode_steps=EVAL_HORIZON)
    return run_policy(env, expert_policy(safe=safe, seed=0), [s.episode_id for s in specs], seed=0)


def test_metrics_match_a_direct_run_of_the_same_episodes(three, fetch_specs):
    _, data, _, _ = three
    for name, safe in (("expert", False), ("safe-expert", True)):
        eps = _direct(fetch_specs, safe)
        got = data["policies"][name]
        costs = np.array([[ep["costs"][c] for c in COST_NAMES] for ep in eps])
        success = np.array([ep["success"] for ep in eps])
        lengths = np.array([ep["length"] for ep in eps])
        expert = np.array([ep["expert_length"] for ep in eps], dtype=float)
        sel = np.where(success, expert / np.maximum(expert, lengths), 0.0)
        assert got["episodes"] == len(fetch_specs)
        assert got["success_rate"] == pytest.approx(success.mean())
        assert got["ep_cost"] == pytest.approx(costs.sum(axis=1).mean())
        for i, c in enumerate(COST_NAMES):
            assert got["ep_costs"][c] == pytest.approx(costs[:, i].mean())
        assert got["ep_length"] == pytest.approx(lengths.mean())
        assert got["sel"] == pytest.approx(sel.mean())


def test_every_set_has_the_required_fields_and_matches_its_episodes(three):
    _, data, episodes, _ = three
    assert data["task"] == "Fetch" and list(data["policies"]) == ["expert", "safe-expert", "random"]
    for name, policy in data["policies"].items():
        assert set(policy["suites"]) == set(SUITES)
        for set_name, fields in [(EVAL_SET, policy)] + list(policy["suites"].items()):
            for key in REQUIRED:
                assert key in fields, (name, set_name, key)
            assert set(fields["ep_costs"]) == set(COST_NAMES)
            eps = episodes[name][set_name]
            assert len({e["episode_id"] for e in eps}) == len(eps) == fields["episodes"]  # each episode once
            cc = [sum(e["costs"].values()) for e in eps]
            assert fields["ep_cost"] == pytest.approx(np.mean(cc))
            assert fields["success_rate"] == pytest.approx(np.mean([e["success"] for e in eps]))
            assert fields["sel"] == pytest.approx(np.mean([e["sel"] for e in eps]))
            won = [c for c, e in zip(cc, eps) if e["success"]]
            assert fields["ep_cost_success"] == (pytest.approx(np.mean(won)) if won else None)
    # every policy met the same episodes in every set
    for set_name in [EVAL_SET, *SUITES]:
        ids = [[e["episode_id"] for e in episodes[n][set_name]] for n in data["policies"]]
        assert ids[0] == ids[1] == ids[2]


def test_one_policy_also_puts_its_fields_at_the_top(fetch_specs, tmp_path):
    assure({"solo": "expert"}, task="Fetch", suites="none", eval_episodes=fetch_specs[:3], out_dir=tmp_path,
           num_envs=3, gifs=0, progress=False)  # fmt: skip
    data = json.loads((tmp_path / "assurance.json").read_text())
    assert data["policy"] == "solo" and data["suites"] == {}
    for key in REQUIRED:
        assert data[key] == data["policies"]["solo"][key]


def test_expert_succeeds_more_than_random_and_safe_expert_costs_less(three):
    _, data, _, _ = three
    p = data["policies"]
    assert p["expert"]["success_rate"] > p["random"]["success_rate"]
    assert p["safe-expert"]["ep_cost"] < p["expert"]["ep_cost"]
    # (per suite, 3 episodes are too few to compare heavy-tailed costs: tests/test_chores_suites.py
    # compares how often each family's component fires, on more episodes)


def test_sel_is_one_where_the_expert_matches_its_own_length(three):
    _, _, episodes, _ = three
    own = [e for e in episodes["expert"][EVAL_SET] if e["expert_length"] == e["length"]]
    assert own, "the expert should repeat its reference length on some episodes"
    assert all(e["success"] and e["sel"] == 1.0 for e in own)
    assert sel_score(True, 50, 100) == 0.5 and sel_score(True, 50, 40) == 1.0
    assert sel_score(False, 50, 50) == 0.0 and sel_score(True, None, 50) == 0.0  # SafeVLA: no expert length, 0


def test_metrics_of_no_successes_are_none_not_nan():
    from cmdp.isa.assure import EpisodeResult

    eps = [EpisodeResult("a", False, 10, dict.fromkeys(COST_NAMES, 1.0), None, 0, 0)]
    m = episode_metrics(eps)
    assert m["ep_cost"] == 5.0 and m["ep_cost_success"] is None and m["ep_cost_failure"] == 5.0
    assert m["sel"] == 0.0 and m["sel_missing"] == 1


def test_report_files_plots_and_exact_gifs(three):
    report, data, _, out = three
    md = (out / "assurance.md").read_text()
    assert "| policy | n | SR | CC | corner | blind spot | fragile | critical | danger | length | SEL |" in md
    for rel in data["files"]["gifs"] + [data["files"][k] for k in ("cost_histograms", "cost_components", "suites")]:
        assert (out / rel).stat().st_size > 0
        assert f"({rel})" in md  # linked from the Markdown
    for name in ("expert", "safe-expert"):
        worst = data["policies"][name]["worst_episodes"]
        assert len(worst) == 1 and worst[0]["cost"] > 0
        assert worst[0]["replay_exact"] is True  # the replay reproduced length, costs and path
        all_costs = [e.cost for r in report.policies[name].sets.values() for e in r.episodes]
        assert worst[0]["cost"] == max(all_costs)
    from PIL import Image

    with Image.open(out / data["policies"]["expert"]["worst_episodes"][0]["gif"]) as gif:
        assert gif.n_frames >= 2 and gif.size == (256, 256)


# ---- the command line ---------------------------------------------------------------------------


def test_cli_runs_expert_and_random_on_the_evaluation_set(tmp_path, capsys):
    out = tmp_path / "report"
    code = cli.main(["assure", "expert", "random", "--task", "Fetch", "--episodes", "4", "--suites", "none",
                     "--num-envs", "4", "--gifs", "0", "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| expert | eval | 4 |" in captured.out and "| random | eval | 4 |" in captured.out
    assert "assure: [1/2] expert on eval" in captured.err  # progress on stderr
    data = json.loads((out / "assurance.json").read_text())
    assert data["settings"]["episodes"] == 4 and data["policies"]["expert"]["episodes"] == 4


@pytest.fixture(scope="module")
def ppolag_run(tmp_path_factory):
    from cmdp.algorithms import PPOLag

    run_dir = tmp_path_factory.mktemp("ppolag")
    algo = PPOLag(
        "SafetyChores-Fetch-v0", cost_limit=1.0, seed=0, run_dir=str(run_dir), num_envs=4, steps_per_epoch=64,
        minibatch_size=32, update_epochs=1, hidden_sizes=(16,), progress_bar=False, tensorboard=False,
        env_kwargs={"obs_mode": "state"},
    )  # fmt: skip
    algo.learn(64)
    algo.save(run_dir / "checkpoint.pt")
    algo.close()
    return run_dir


def test_cli_assures_a_ppolag_checkpoint(ppolag_run, tmp_path, capsys):
    out = tmp_path / "report"
    code = cli.main(["assure", str(ppolag_run), "--task", "Fetch", "--episodes", "3", "--suites", "dynamics",
                     "--suite-episodes", "2", "--num-envs", "3", "--gifs", "1", "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads((out / "assurance.json").read_text())
    assert data["policy"] == ppolag_run.name and "PPOLag" in data["source"]
    assert "assure: [2/2]" in captured.err and ("assure: GIFs 1-" in captured.err) == bool(data["worst_episodes"])
    assert data["episodes"] == 3 and data["suites"]["dynamics"]["episodes"] == 2
    for worst in data["worst_episodes"]:  # a sampling policy replays exactly too (torch seeded)
        assert worst["replay_exact"] is True


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nosuch"], "unknown policy 'nosuch'"),
        (["missing/checkpoint.pt"], "no checkpoint at"),
        (["expert", "--suites", "lightning"], "unknown suite 'lightning'"),
        (["expert", "--task", "Fetchy"], "must be one of"),
        (["expert", "--episodes", "999"], "holds 172"),
        (["expert", "--num-envs", "0"], "num_envs must be >= 1"),
        (["expert", "--shield-threshold", "0.3"], "'expert' has no cost model"),
        (["random", "--shield-threshold", "-1"], "shield_threshold must be >= 0"),
    ],
)
def test_cli_bad_input_exits_2_with_a_message(argv, message, capsys, tmp_path):
    code = cli.main(["assure", *argv, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_cli_rejects_bad_checkpoints(ppolag_run, tmp_path, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    cases = [
        ([str(broken)], "corrupted"),
        ([str(empty)], "neither checkpoint.pt"),
        ([str(ppolag_run), "--task", "PickUp"], "trained on Fetch"),
        ([str(ppolag_run), "--shield-threshold", "0.3"], "needs a policy with a one-step cost model"),
    ]
    for argv, message in cases:
        code = cli.main(["assure", *argv, "--out", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err


@pytest.mark.parametrize("detection", [False, True])
def test_a_pretrained_vla_and_its_solver_are_assured_on_their_observations(fetch_specs, tmp_path, detection):
    from cmdp.algorithms import PPO
    from cmdp.isa.assure import AlgorithmPolicy
    from cmdp.policies.vla import VLAConfig, VLAPolicy

    env = ChoresEnv("Fetch", obs_mode="rgb", image_size=(32, 32), detection=detection)
    config = VLAConfig(d_model=16, num_layers=1, num_heads=2, ff_dim=16, context=8, cnn_channels=(8, 8),
                       cnn_strides=(4, 2), text_dim=8, text_heads=2, critic_hidden=8)  # fmt: skip
    vla = VLAPolicy(env.observation_space, env.action_space, len(COST_NAMES), config)
    vla.save_pretrained(tmp_path / "vla")
    solver = PPO("SafetyChores-Fetch-v0", policy=vla, env_kwargs=vla.env_kwargs, num_envs=2, steps_per_epoch=8,
                 minibatch_size=8, normalize_obs=False, run_dir=False, progress_bar=False, tensorboard=False)  # fmt: skip
    solver.learn(8)
    report = assure([str(tmp_path / "vla"), AlgorithmPolicy(solver, "solver")], task="Fetch", suites="none",
                    eval_episodes=fetch_specs[:2], num_envs=2, gifs=0, progress=False)  # fmt: skip
    assert list(report.policies) == ["vla", "solver"]
    assert report.policies["vla"].source.startswith("VLA ")
    for result in report.policies.values():
        assert [e.episode_id for e in result.sets[EVAL_SET].episodes] == [s.episode_id for s in fetch_specs[:2]]


def test_config_rejects_repeated_suites():
    from cmdp.isa.assure import AssureConfig

    with pytest.raises(ConfigError, match="listed twice"):
        AssureConfig(suites=("dynamics", "dynamics"))


def test_a_solver_is_assured_on_the_longer_evaluation_horizon_but_not_on_other_observations():
    from cmdp.envs.chores.env import ChoresEnv
    from cmdp.isa.assure import _same_layout

    train = ChoresEnv("Fetch", obs_mode="rgb", image_size=(32, 32), max_episode_steps=500)
    evaluation = ChoresEnv("Fetch", obs_mode="rgb", image_size=(32, 32), split="eval")
    bigger = ChoresEnv("Fetch", obs_mode="rgb", image_size=(64, 64), split="eval")
    state = ChoresEnv("Fetch", obs_mode="state", split="eval")
    assert train.observation_space != evaluation.observation_space  # the time_step bound differs
    assert _same_layout(train.observation_space, evaluation.observation_space)
    assert not _same_layout(train.observation_space, bigger.observation_space)
    assert not _same_layout(train.observation_space, state.observation_space)
