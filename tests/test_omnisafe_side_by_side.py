"""The OmniSafe side-by-side benchmark's bookkeeping: run order, aggregation over seeds, verdict.

The training itself needs the peer env (omnisafe, safety-gymnasium); these parts do not.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def sbs(benchmark_script):
    with benchmark_script("omnisafe_side_by_side") as module:
        yield module


def _run(steps_per_s, cpu, ret, cost, det_ret=0.0, det_cost=0.0):
    return {
        "env_steps_per_s": steps_per_s,
        "env_steps_per_cpu_s": cpu,
        "eval_sampled": {"ep_return": ret, "ep_cost": cost},
        "eval_deterministic": {"ep_return": det_ret, "ep_cost": det_cost},
    }


def test_run_order_alternates_libraries_and_flips_from_pair_to_pair_across_seeds(sbs):
    pairs = (("PPOLag", "PPOLag"), ("CPO", "CPO"))
    order = sbs.run_order(pairs, (0, 1))
    assert order == [
        ("omnisafe", "PPOLag", 0), ("cmdp", "PPOLag", 0),
        ("cmdp", "CPO", 0), ("omnisafe", "CPO", 0),
        ("omnisafe", "PPOLag", 1), ("cmdp", "PPOLag", 1),
        ("cmdp", "CPO", 1), ("omnisafe", "CPO", 1),
    ]  # fmt: skip


def test_pairs_are_summarised_over_the_seeds_both_libraries_finished(sbs):
    results = {
        ("omnisafe", "PPOLag", 0): _run(100, 90, 4.0, 30.0),
        ("cmdp", "PPOLag", 0): _run(300, 200, 2.0, 20.0),
        ("omnisafe", "PPOLag", 1): _run(200, 110, 6.0, 50.0),
        ("cmdp", "PPOLag", 1): _run(500, 300, 4.0, 10.0),
        ("omnisafe", "PPOLag", 2): _run(1, 1, 100.0, 0.0),  # cmdp's seed 2 not finished: left out
        ("omnisafe", "CPO", 0): _run(100, 100, 1.0, 1.0),  # no cmdp CPO at all: no row
    }
    (pair,) = sbs.summarize_pairs(results, (0, 1, 2))
    assert (pair.theirs, pair.ours, pair.seeds) == ("PPOLag", "PPOLag", (0, 1))
    assert pair.steps_per_s == (150, 400) and pair.wall_ratio == pytest.approx(400 / 150)
    assert pair.cpu_ratio == pytest.approx(250 / 100)
    assert pair.sampled[0] == pytest.approx((5.0, 1.0, 40.0, 10.0))
    assert pair.sampled[1] == pytest.approx((3.0, 1.0, 15.0, 5.0))


def test_verdict_judges_the_targets_on_the_seed_means(sbs):
    settings = sbs.Settings(steps=10, steps_per_epoch=10, num_envs=1, cost_limit=25.0, seed=0, eval_episodes=3)
    results = {}
    for seed, (ours_cost, ours_ret) in enumerate([(20.0, 5.0), (28.0, 7.0)]):  # mean cost 24: within 25
        results[("omnisafe", "PPOLag", seed)] = _run(100, 100, 6.0, 40.0)
        results[("cmdp", "PPOLag", seed)] = _run(350, 320, ours_ret, ours_cost)
    text = " ".join(sbs.verdict(sbs.summarize_pairs(results, (0, 1)), settings, (0, 1)))
    assert "median ratio 3.50x wall (met), 3.20x CPU (met)" in text
    assert "cmdp 1 of 1 solvers, OmniSafe 0 of 1 (met)" in text
    assert "EpRet no worse than OmniSafe's counterpart: 1 of 1 (met)" in text
    assert "2 seeds" in text
    results[("cmdp", "PPOLag", 1)] = _run(350, 320, 1.0, 40.0)  # mean cost 30, mean return 3
    text = " ".join(sbs.verdict(sbs.summarize_pairs(results, (0, 1)), settings, (0, 1)))
    assert "cmdp 0 of 1 solvers, OmniSafe 0 of 1 (**not met**)" in text
    assert "EpRet no worse than OmniSafe's counterpart: 0 of 1 (**not met**)" in text


def test_training_tail_averages_the_last_tenth_of_both_libraries_curves(sbs, tmp_path, monkeypatch):
    monkeypatch.setattr(sbs, "versions", lambda: "the peer env's")  # omnisafe is not installed here
    settings = sbs.Settings(steps=10, steps_per_epoch=10, num_envs=1, cost_limit=25.0, seed=0, eval_episodes=3)
    # OmniSafe's curve is read from its own progress.csv: 20 epochs, the last two average 11 / 22
    rows = [(0.0, 90.0)] * 18 + [(10.0, 20.0), (12.0, 24.0)]
    (tmp_path / "progress.csv").write_text(
        "Metrics/EpRet,Metrics/EpCost,Metrics/LagrangeMultiplier\n" + "".join(f"{r},{c},0.1\n" for r, c in rows)
    )
    omnisafe = _run(100, 100, 6.0, 40.0) | {"log_dir": str(tmp_path), "load_at_start": 1.0, "load_at_end": 1.0}
    # cmdp's epochs are in its result; an epoch in which no episode finished is left out
    epochs = [{"ep_return": 0.0, "ep_cost": 90.0}] * 8 + [
        {"ep_return": None, "ep_cost": None},
        {"ep_return": 14.0, "ep_cost": 20.0},
    ]
    cmdp = _run(300, 300, 5.0, 30.0) | {"epochs": epochs, "load_at_start": 1.0, "load_at_end": 1.0}
    assert sbs.training_tail(omnisafe) == pytest.approx((11.0, 22.0))
    assert sbs.training_tail(cmdp) == pytest.approx((14.0, 20.0))  # 9 finished epochs: the last one
    results = {("omnisafe", "PPOLag", 0): omnisafe, ("cmdp", "PPOLag", 0): cmdp}
    (pair,) = sbs.summarize_pairs(results, (0,))
    text = " ".join(sbs.verdict([pair], settings))
    assert "cmdp 0 of 1 solvers, OmniSafe 0 of 1 (**not met**). EpRet no worse than OmniSafe's counterpart: 0 of 1" in text
    assert (
        "On the training tail instead (1 of 1 pairs have both curves): EpCost within the limit of 25: cmdp 1 of 1 "
        "solvers, OmniSafe 1 of 1 (met). EpRet no worse than OmniSafe's counterpart: 1 of 1 (met)." in text
    )
    # a run whose curve is gone (OmniSafe's log dir moved) reads n/a and leaves the tail out of the verdict
    (tmp_path / "progress.csv").unlink()
    (pair,) = sbs.summarize_pairs(results, (0,))
    assert pair.training_tail[0] is None
    assert "training tail instead" not in " ".join(sbs.verdict([pair], settings))
    (row,) = [line for line in sbs.build_table(results, settings, "cmd").splitlines() if line.startswith("| PPOLag")]
    assert row.endswith("| 6.00 / 40.0 | 5.00 / 30.0 | 0.00 / 0.0; 0.00 / 0.0 | n/a; 14.00 / 20.0 |")


def _file_name(sbs, library, settings):
    return sbs.result_path(Path("results"), library, "PPOLag", settings).name


def test_a_cmdp_variant_keeps_its_own_results_and_shares_omnisafes(sbs, tmp_path):
    import json
    from dataclasses import asdict

    base = sbs.Settings(steps=10, steps_per_epoch=10, num_envs=1, cost_limit=25.0, seed=0, eval_episodes=1)
    variant = sbs.replace(base, cmdp_options=sbs.parse_cmdp_options('{"minibatch_size": 64}', ["PPOLag"]))
    assert variant.cmdp_kwargs() == {"minibatch_size": 64}
    ours_default, ours_variant = (sbs.run_settings(s, "cmdp", 3) for s in (base, variant))
    theirs_default, theirs_variant = (sbs.run_settings(s, "omnisafe", 3) for s in (base, variant))
    assert theirs_variant == theirs_default  # OmniSafe's run is the same whatever cmdp variant runs
    assert ours_variant.cmdp_kwargs() == {"minibatch_size": 64} and ours_variant.seed == 3

    assert _file_name(sbs, "cmdp", ours_default) == "cmdp-PPOLag-seed3.json"
    assert _file_name(sbs, "cmdp", ours_variant) == "cmdp-PPOLag-minibatch_size=64-seed3.json"
    assert _file_name(sbs, "omnisafe", theirs_variant) == "omnisafe-PPOLag-seed3.json"

    saved = asdict(ours_default)
    del saved["cmdp_options"], saved["recompile_world"]  # as results written before variants existed
    for file in ("omnisafe-PPOLag-seed3.json", "cmdp-PPOLag-seed3.json"):
        (tmp_path / file).write_text(json.dumps({"settings": saved}))
    assert sbs.load_result(tmp_path / "omnisafe-PPOLag-seed3.json", theirs_variant) is not None
    old_cmdp_settings = sbs.replace(ours_default, recompile_world=True)  # its envs compiled at reset
    assert sbs.load_result(tmp_path / "cmdp-PPOLag-seed3.json", old_cmdp_settings) is not None
    assert sbs.load_result(tmp_path / "cmdp-PPOLag-seed3.json", ours_variant) is None  # not the variant's run
    assert sbs.load_result(tmp_path / "cmdp-PPOLag-seed3.json", sbs.replace(ours_default, seed=4)) is None


def test_bad_cmdp_options_stop_the_benchmark_before_any_training(sbs):
    assert sbs.parse_cmdp_options(None, ["PPOLag"]) == "" and sbs.parse_cmdp_options("{}", ["PPOLag"]) == ""
    with pytest.raises(SystemExit, match="not JSON"):
        sbs.parse_cmdp_options("{minibatch_size: 64}", ["PPOLag"])
    with pytest.raises(SystemExit, match="JSON object"):
        sbs.parse_cmdp_options("[64]", ["PPOLag"])
    from cmdp.errors import ConfigError

    with pytest.raises(ConfigError, match="minibatch_sise"):
        sbs.parse_cmdp_options('{"minibatch_sise": 64}', ["PPOLag", "CPO"])
    with pytest.raises(ConfigError, match="minibatch_size"):
        sbs.parse_cmdp_options('{"minibatch_size": 0}', ["PPOLag"])


def test_a_killed_cmdp_run_continues_from_its_last_epoch_as_if_never_stopped(sbs, tmp_path, monkeypatch):
    import cmdp.runlog

    monkeypatch.setattr(sbs, "evaluate_both_ways", lambda act, settings: {})  # needs safety-gymnasium
    settings = sbs.Settings(
        steps=3 * 512, steps_per_epoch=512, num_envs=1, cost_limit=1.0, seed=0, eval_episodes=1, env_id="GridWorld-v0"
    )
    whole = sbs.run_cmdp("PPOLag", settings, tmp_path, tmp_path / "whole.json")

    write_json, writes = cmdp.runlog.write_json, []

    def killed_after_two_epochs(path, data):
        write_json(path, data)
        writes.append(path)
        if len(writes) == 2:
            raise KeyboardInterrupt

    result = tmp_path / "cut.json"
    monkeypatch.setattr(cmdp.runlog, "write_json", killed_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        sbs.run_cmdp("PPOLag", settings, tmp_path, result)
    monkeypatch.setattr(cmdp.runlog, "write_json", write_json)
    ckpt, partial = sbs.resume_paths(result)
    assert ckpt.exists() and partial.exists()
    # a different run never picks up these files
    assert sbs.load_result(partial, sbs.replace(settings, seed=1)) is None

    resumed = sbs.run_cmdp("PPOLag", settings, tmp_path, result)
    assert resumed["resumed_at"] == [1024] and whole["resumed_at"] == []
    assert resumed["steps"] == whole["steps"] == 1536
    curve = lambda run: [(e["step"], e["ep_return"], e["ep_cost"], e["multipliers"]) for e in run["epochs"]]  # noqa: E731
    assert curve(resumed) == curve(whole)  # cmdp's exact resume: the same epochs, number for number
    assert not ckpt.exists() and not partial.exists()  # the result JSON stands for the finished run
    run = {"resumed_at": [1024]}
    assert "cmdp PPOLag seed 0 at step 1,024" in sbs._resumed_phrase({("cmdp", "PPOLag", 0): run})


def test_a_cmdp_run_alone_is_tabulated_beside_omnisafes_published_result(sbs):
    run = _run(650, 600, 14.0, 24.0, det_ret=15.0, det_cost=30.0) | {"epochs": [{"ep_return": 13.0, "ep_cost": 22.0}]}
    settings = sbs.Settings(steps=10_000_000, steps_per_epoch=20_000, num_envs=2, cost_limit=25.0, seed=0, eval_episodes=10)
    rows = "\n".join(sbs.unpaired_rows({("cmdp", "PPOLag", 0): run}, settings))
    assert "| PPOLag | 0 | 650 | 600 | 14.00 / 24.0 | 15.00 / 30.0 | 13.00 / 22.0 | 12.96 / 25.8 |" in rows
    assert "EpCost 24.0 within the limit of 25, EpRet 14.00 no worse than OmniSafe's published 12.96" in rows

    over = run | {"eval_sampled": {"ep_return": 12.0, "ep_cost": 26.0}}
    rows = "\n".join(sbs.unpaired_rows({("cmdp", "PPOLag", 0): over}, settings))
    assert "EpCost 26.0 **over** the limit of 25, EpRet 12.00 **below** OmniSafe's published 12.96" in rows
    # at another length the published result is shown for scale, not judged against
    shorter = sbs.replace(settings, steps=1_000_000)
    assert "published 12.96 (" not in "\n".join(sbs.unpaired_rows({("cmdp", "PPOLag", 0): run}, shorter))
    # a cmdp run that has its OmniSafe counterpart is a pair, not a row here
    assert sbs.unpaired_rows({("cmdp", "PPOLag", 0): run, ("omnisafe", "PPOLag", 0): run}, settings) == []


def test_cmdp_runs_that_recompile_the_world_are_kept_apart_and_older_results_count_as_recompiling(sbs, tmp_path):
    import json
    from dataclasses import asdict

    base = sbs.Settings(steps=10, steps_per_epoch=10, num_envs=1, cost_limit=25.0, seed=0, eval_episodes=1)
    recompiling = sbs.replace(base, recompile_world=True)
    ours_kept, ours_recompiled = (sbs.run_settings(s, "cmdp", 0) for s in (base, recompiling))
    theirs = sbs.run_settings(base, "omnisafe", 0)
    # OmniSafe's envs always compile at reset, whatever cmdp's do, so its run is shared
    assert theirs == sbs.run_settings(recompiling, "omnisafe", 0) and theirs.recompile_world
    assert not ours_kept.recompile_world and ours_recompiled.recompile_world

    assert _file_name(sbs, "cmdp", ours_kept) == "cmdp-PPOLag-seed0.json"
    assert _file_name(sbs, "cmdp", ours_recompiled) == "cmdp-PPOLag-recompile_world-seed0.json"
    assert _file_name(sbs, "omnisafe", theirs) == "omnisafe-PPOLag-seed0.json"

    # results written before cmdp kept the world were made by recompiling envs
    saved = asdict(ours_kept)
    del saved["recompile_world"]
    (tmp_path / "old.json").write_text(json.dumps({"settings": saved}))
    assert sbs.load_result(tmp_path / "old.json", ours_recompiled) is not None
    assert sbs.load_result(tmp_path / "old.json", ours_kept) is None
    phrase = sbs._world_phrase(ours_kept)
    assert "cmdp's keep the compiled model" in phrase and "safety_gymnasium_vectorised" in phrase
    assert phrase.startswith("OmniSafe's envs are safety-gymnasium's as shipped")
    assert sbs._world_phrase(ours_recompiled).startswith("Both libraries' envs are safety-gymnasium's as shipped")
