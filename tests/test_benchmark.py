"""The benchmark grid: tables and plots from the cells, resume after a kill, the same numbers on
Ray, the `cmdp benchmark` command, and the settings checks."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmdp.algorithms import OnPolicyAlgorithm
from cmdp.benchmark import EnvSettings, GridConfig, plan_grid, run_cell, run_grid
from cmdp.benchmark import runner as runner_module
from cmdp.benchmark.cells import eval_schedule
from cmdp.benchmark.summary import aggregate, format_limits, late_evaluations, markdown_table
from cmdp.cli import main
from cmdp.errors import ConfigError

TINY = {"steps_per_epoch": 512, "num_envs": 4}
TABLE = (
    EnvSettings(
        env_id="GridWorld-v0", cost_limit=1.0, small_steps=1536, full_steps=3072, eval_episodes=40, eval_points=3, config=TINY
    ),
    EnvSettings(
        env_id="TwoChannelGrid-v0",
        cost_limit=(0.5, 0.3),
        small_steps=1024,
        full_steps=2048,
        eval_episodes=40,
        eval_points=2,
        config=TINY,
        solver_config={"PPOLag": {"lambda_lr": 0.05}},
    ),
    EnvSettings(env_id="NoSuchEnv-v0", cost_limit=1.0, small_steps=1024, full_steps=2048),
)
SOLVERS = ("PPO", "PPOLag")
SEEDS = (0, 1)


def tiny_config(out: Path, **kw) -> GridConfig:
    return GridConfig(out=out, solvers=SOLVERS, seeds=SEEDS, workers=1, **kw)


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    notes: list[str] = []
    report = run_grid(tiny_config(out), TABLE, note=notes.append, command="pytest tiny grid")
    return out, report, notes


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def results_by_cell(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((out / "cells").glob("*/result.json"))}


def test_tiny_grid_writes_tables_and_plots_that_match_the_cells(tiny_grid):
    out, report, notes = tiny_grid
    assert not report.failures
    cells = results_by_cell(out)
    assert len(cells) == len(SOLVERS) * 2 * len(SEEDS) == len(report.ran)
    assert any("skipping NoSuchEnv-v0" in n for n in notes)

    rows = read_csv(out / "results.csv")
    assert [(r["env"], r["solver"]) for r in rows] == [(e, s) for e in ("GridWorld-v0", "TwoChannelGrid-v0") for s in SOLVERS]
    for row in rows:
        mine = [c for c in cells.values() if (c["cell"]["env_id"], c["cell"]["solver"]) == (row["env"], row["solver"])]
        assert sorted(c["cell"]["seed"] for c in mine) == list(SEEDS)
        returns = [c["final"]["ep_return"] for c in mine]
        costs = [c["final"]["ep_cost"] for c in mine]
        assert float(row["ep_return_mean"]) == pytest.approx(np.mean(returns))
        assert float(row["ep_return_std"]) == pytest.approx(np.std(returns))
        assert float(row["ep_cost_mean"]) == pytest.approx(np.mean(costs))
        assert float(row["ep_cost_std"]) == pytest.approx(np.std(costs))
        names = mine[0]["cost_names"]
        channel_means = [float(x) for x in row["ep_cost_channels_mean"].split(";")]
        assert channel_means == pytest.approx([np.mean([c["final"]["ep_costs"][n] for c in mine]) for n in names])
        limits = [float(x) for x in row["cost_limit"].split(";")]
        over = [any(c["final"]["ep_costs"][n] > lim for n, lim in zip(names, limits)) for c in mine]
        assert float(row["over_limit_fraction"]) == pytest.approx(np.mean(over))
        late = [
            any(e["ep_costs"][n] > lim for n, lim in zip(names, limits))
            for c in mine
            for e in c["evaluations"][len(c["evaluations"]) // 2 :]
        ]
        later_half = {"GridWorld-v0": 2, "TwoChannelGrid-v0": 1}[row["env"]]  # of 3 and 2 evaluations
        assert len(late) == later_half * len(SEEDS) and float(row["late_over_fraction"]) == pytest.approx(np.mean(late))
        assert float(row["steps_per_second"]) == pytest.approx(np.mean([c["steps_per_second"] for c in mine]))
        success = np.mean([c["final"]["success_rate"] for c in mine])  # the gridworlds report reaching the goal
        assert float(row["success_rate"]) == pytest.approx(success)
    assert rows[0]["cost_limit"] == "1.0" and rows[2]["cost_limit"] == "0.5;0.3"
    assert rows[2]["cost_channels"] == "lava;water"

    assert len(read_csv(out / "cells.csv")) == len(cells)
    md = (out / "results.md").read_text()
    assert "Command: `pytest tiny grid`" in md and "Skipped: NoSuchEnv-v0" in md
    for row in rows:
        mean, std, success = (float(row[k]) for k in ("ep_return_mean", "ep_return_std", "success_rate"))
        pattern = rf"\| {row['env']} \| {row['solver']} \| 2 \| [\d,]+ \| {mean:.2f} ± {std:.2f} \| {100 * success:.0f}% \|"
        assert re.search(pattern, md)
    assert "lava " in md and "| 0.50, 0.30 |" in md and "| 1.00 |" in md

    for env in ("GridWorld-v0", "TwoChannelGrid-v0"):
        with Image.open(out / "plots" / f"{env}.png") as image:
            assert image.format == "PNG" and image.size[0] > 2 * image.size[1]  # return + cost panels
    assert not (out / "plots" / "NoSuchEnv-v0.png").exists()


def test_each_cell_records_spec_versions_evaluations_and_curve(tiny_grid):
    out, _, _ = tiny_grid
    cell = json.loads((out / "cells" / "PPOLag_TwoChannelGrid-v0_1" / "result.json").read_text())
    spec = cell["cell"]
    assert (spec["solver"], spec["env_id"], spec["seed"]) == ("PPOLag", "TwoChannelGrid-v0", 1)
    assert spec["cost_limit"] == [0.5, 0.3] and spec["config"]["lambda_lr"] == 0.05
    assert spec["eval_points"] == [512, 1024] and cell["steps"] == 1024
    for package in ("python", "numpy", "torch", "gymnasium", "cmdp"):
        assert cell["versions"][package]
    assert re.fullmatch(r"[0-9a-f]{40}", cell["cmdp_git_commit"])
    assert [e["step"] for e in cell["evaluations"]] == [512, 1024]
    assert cell["final"] == cell["evaluations"][-1] and cell["final"]["episodes"] == 40
    assert cell["curve"]["columns"] == ["step", "ep_return", "ep_cost/lava", "ep_cost/water"]
    assert [row[0] for row in cell["curve"]["rows"]] == [512, 1024]
    config = json.loads((out / "cells" / "PPOLag_TwoChannelGrid-v0_1" / "run" / "config.json").read_text())
    assert config["seed"] == 1 and config["config"]["lambda_lr"] == 0.05
    started = json.loads((out / "cells" / "PPOLag_TwoChannelGrid-v0_1" / "cell.json").read_text())
    assert started["cell"] == spec and started["versions"] == cell["versions"]


def test_killed_grid_reruns_only_unfinished_cells(tmp_path, monkeypatch):
    real_run_cell = runner_module.run_cell
    trained: list[str] = []
    kill_after: list[int] = [3]

    def counting(spec, cell_dir, *args, **kwargs):
        if len(trained) == kill_after[0]:
            raise KeyboardInterrupt  # the grid is killed while it starts its fourth cell
        trained.append(spec.name)
        return real_run_cell(spec, cell_dir, *args, **kwargs)

    monkeypatch.setattr(runner_module, "run_cell", counting)
    with pytest.raises(KeyboardInterrupt):
        run_grid(tiny_config(tmp_path), TABLE, note=lambda _: None)
    first = list(trained)
    assert sorted(results_by_cell(tmp_path)) == sorted(first)
    stamps = {name: (tmp_path / "cells" / name / "result.json").stat().st_mtime_ns for name in first}

    trained.clear()
    kill_after[0] = -1
    notes: list[str] = []
    report = run_grid(tiny_config(tmp_path), TABLE, note=notes.append)
    assert len(trained) == 8 - 3 and not set(trained) & set(first)
    assert sorted(report.ran) == sorted(trained) and len(report.results) == 8
    assert any("3 already finished, 5 to run" in n for n in notes)
    for name, stamp in stamps.items():  # finished cells are not rewritten
        assert (tmp_path / "cells" / name / "result.json").stat().st_mtime_ns == stamp
    assert len(read_csv(tmp_path / "results.csv")) == 4 and len(read_csv(tmp_path / "cells.csv")) == 8

    trained.clear()
    run_grid(tiny_config(tmp_path), TABLE, note=lambda _: None)
    assert trained == []  # a finished grid trains nothing


def test_half_finished_cell_resumes_from_its_checkpoint_with_the_same_numbers(tiny_grid, tmp_path, monkeypatch):
    out, _, _ = tiny_grid
    spec = next(c for c in plan_grid(tiny_config(out), TABLE, note=lambda _: None).cells if c.name == "PPOLag_GridWorld-v0_0")
    assert spec.eval_points == [512, 1024, 1536]
    calls = []
    real_evaluate = OnPolicyAlgorithm.evaluate

    def evaluate_then_die(self, *args, **kwargs):
        calls.append(self.global_step)
        if len(calls) == 2:  # killed after the second chunk's checkpoint, before its evaluation is saved
            raise KeyboardInterrupt
        return real_evaluate(self, *args, **kwargs)

    monkeypatch.setattr(OnPolicyAlgorithm, "evaluate", evaluate_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_cell(spec, tmp_path, report=lambda _: None)
    monkeypatch.setattr(OnPolicyAlgorithm, "evaluate", real_evaluate)
    lines: list[str] = []
    resumed = run_cell(spec, tmp_path, report=lines.append)
    assert resumed["resumed_from_step"] == 1024
    assert "resuming from its checkpoint at step 1,024" in lines[0]
    uninterrupted = json.loads((out / "cells" / spec.name / "result.json").read_text())
    assert resumed["evaluations"] == uninterrupted["evaluations"]
    assert resumed["curve"] == uninterrupted["curve"]  # no duplicated or lost epochs


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_grid_gives_the_numbers_of_the_local_grid(tiny_grid, ray_session, tmp_path):
    out, _, _ = tiny_grid
    config = GridConfig(out=tmp_path, solvers=SOLVERS, seeds=SEEDS, envs=("TwoChannelGrid-v0",), ray=True, workers=2)
    report = run_grid(config, TABLE, note=lambda _: None)
    assert ray_session.is_initialized()  # the grid leaves a session it did not start running
    assert len(report.ran) == 4 and not report.failures
    local = results_by_cell(out)
    for name, result in results_by_cell(tmp_path).items():
        assert result["evaluations"] == local[name]["evaluations"]
        assert result["curve"] == local[name]["curve"]
        assert result["cell"] == local[name]["cell"]


def test_worker_processes_give_the_numbers_of_the_local_grid(tiny_grid, tmp_path):
    out, _, _ = tiny_grid
    config = GridConfig(out=tmp_path, solvers=("PPOLag",), seeds=SEEDS, envs=("GridWorld-v0",), workers=2)
    report = run_grid(config, TABLE, note=lambda _: None)
    assert len(report.ran) == 2
    local = results_by_cell(out)
    for name, result in results_by_cell(tmp_path).items():
        assert result["evaluations"] == local[name]["evaluations"]


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(tmp_path, monkeypatch):
    real_run_cell = runner_module.run_cell

    def broken_for_seed_1(spec, cell_dir, *args, **kwargs):
        if spec.seed == 1:
            raise RuntimeError("env exploded")
        return real_run_cell(spec, cell_dir, *args, **kwargs)

    monkeypatch.setattr(runner_module, "run_cell", broken_for_seed_1)
    notes: list[str] = []
    config = GridConfig(out=tmp_path, solvers=("PPO",), seeds=SEEDS, envs=("GridWorld-v0",), workers=1)
    report = run_grid(config, TABLE, note=notes.append)
    assert list(report.failures) == ["PPO_GridWorld-v0_1"] and report.ran == ["PPO_GridWorld-v0_0"]
    assert "env exploded" in (tmp_path / "cells" / "PPO_GridWorld-v0_1" / "error.txt").read_text()
    assert any("FAILED PPO_GridWorld-v0_1" in n for n in notes)
    assert [r["seeds"] for r in read_csv(tmp_path / "results.csv")] == ["0"]


def test_progress_lines_name_the_cell_and_count_down_with_an_eta(tiny_grid):
    _, _, notes = tiny_grid
    done = [n for n in notes if "] done " in n]
    assert len(done) == 8
    assert done[0].startswith("[1/8] done  PPO_GridWorld-v0_0") and "7 left" in done[0] and "ETA" in done[0]
    assert done[-1].startswith("[8/8]") and "0 left" in done[-1]
    assert any(n.startswith("[0/8] start PPO on GridWorld-v0, seed 0: 1,536 steps") for n in notes)


def test_cli_benchmark_runs_a_grid_and_prints_the_table(tmp_path, capsys):
    code = main(
        ["benchmark", "--solvers", "ppolag", "--envs", "GridWorld-v0", "SafetyPointGoal1-v0", "--seeds", "3",
         "--steps", "1e3", "--workers", "1", "--out", str(tmp_path)]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| GridWorld-v0 | PPOLag | 1 | 4,096 |" in captured.out
    assert "skipping SafetyPointGoal1-v0" in captured.err and "[1/1] done" in captured.err
    result = json.loads((tmp_path / "cells" / "PPOLag_GridWorld-v0_3" / "result.json").read_text())
    assert result["cell"]["eval_points"] == [4096] and result["cell"]["eval_episodes"] == 200


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--envs", "CartPole-v1"], "no settings for 'CartPole-v1'"),
        (["--solvers", "PPOLagg"], "unknown algorithm 'PPOLagg'"),
        (["--envs", "NoSuchEnv-v0", "--cost-limit", "1"], "no cell to run"),
        (["--workers", "0"], "workers must be"),
    ],
)
def test_cli_benchmark_usage_errors(tmp_path, capsys, argv, message):
    assert main(["benchmark", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_finished_cell_with_other_settings_is_an_error(tiny_grid):
    out, _, _ = tiny_grid
    changed = (TABLE[0].__class__(**{**TABLE[0].__dict__, "small_steps": 2048}),) + TABLE[1:]
    with pytest.raises(ConfigError, match="other settings"):
        run_grid(tiny_config(out), changed, note=lambda _: None)


def test_settings_and_config_checks():
    with pytest.raises(ConfigError, match="cost_limit"):
        EnvSettings(env_id="X-v0", cost_limit=-1.0, small_steps=1, full_steps=1)
    with pytest.raises(ConfigError, match="small_steps"):
        EnvSettings(env_id="X-v0", cost_limit=1.0, small_steps=0, full_steps=1)
    with pytest.raises(ConfigError, match="lr_schedule"):
        EnvSettings(env_id="X-v0", cost_limit=1.0, small_steps=1, full_steps=1, config={"lr_schedule": "linear"})
    with pytest.raises(ConfigError, match="twice"):
        plan_grid(GridConfig(out="x"), TABLE + TABLE[:1])
    with pytest.raises(ConfigError, match="seeds"):
        GridConfig(out="x", seeds=(-1,))
    with pytest.raises(ConfigError, match="settings of GridWorld-v0 for PPOLag: unknown PPOLagConfig option 'lr'"):
        plan_grid(GridConfig(out="x", solvers=("PPOLag",), envs=("GridWorld-v0",)), (
            EnvSettings(env_id="GridWorld-v0", cost_limit=1.0, small_steps=1, full_steps=1, config={"lr": 1.0}),
        ))  # fmt: skip
    assert GridConfig(out="x", address="ray://head:10001").ray
    assert format_limits([2.3] * 5) == "2.30 each" and format_limits([0.5, 0.3]) == "0.50, 0.30"


def test_an_env_that_fails_to_build_is_skipped_with_its_error(monkeypatch):
    import cmdp
    from cmdp.core import registry

    def broken(**kwargs):
        raise TypeError("jnt(): incompatible function arguments")

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    cmdp.register("TestOnlyBroken-v0", broken)
    rows = TABLE + (EnvSettings(env_id="TestOnlyBroken-v0", cost_limit=1.0, small_steps=1, full_steps=1),)
    notes: list[str] = []
    config = GridConfig(out="x", solvers=("PPO",), envs=("GridWorld-v0", "TestOnlyBroken-v0"), seeds=(0,))
    plan = plan_grid(config, rows, note=notes.append)
    assert [c.env_id for c in plan.cells] == ["GridWorld-v0"]
    why = "building it failed: TypeError: jnt(): incompatible function arguments"
    assert plan.skipped == [("TestOnlyBroken-v0", why)]
    assert notes == [f"cmdp benchmark: skipping TestOnlyBroken-v0: {why}"]
    with pytest.raises(ConfigError, match="no cell to run: TestOnlyBroken-v0: building it failed: TypeError"):
        plan_grid(GridConfig(out="x", solvers=("PPO",), envs=("TestOnlyBroken-v0",), seeds=(0,)), rows, note=notes.append)


def test_late_evaluations_catch_a_swing_that_the_final_one_misses():
    def evaluation(step, lava, water):
        return {"step": step, "ep_return": 1.0, "ep_cost": lava + water, "ep_costs": {"lava": lava, "water": water}}

    def cell(seed, evaluations):
        return {
            "cell": {"env_id": "TwoChannelGrid-v0", "solver": "PPOLag", "seed": seed},
            "cost_names": ["lava", "water"],
            "cost_limit": [0.5, 0.3],
            "steps": evaluations[-1]["step"],
            "final": evaluations[-1],
            "over_limit": False,
            "evaluations": evaluations,
            "steps_per_second": 100.0,
        }

    # seed 0 ends under both limits, but its third of four evaluations is over on water; seed 1
    # has five evaluations, so its later half is the last three, one of them over on lava
    swings = cell(0, [evaluation(1, 0.9, 0.9), evaluation(2, 0.1, 0.1), evaluation(3, 0.4, 0.35), evaluation(4, 0.4, 0.2)])
    odd = cell(1, [evaluation(k, 0.0, 0.0) for k in (1, 2)] + [evaluation(3, 0.6, 0.0)] + [evaluation(k, 0.0, 0.0) for k in (4, 5)])
    assert [e["step"] for e in late_evaluations(odd)] == [3, 4, 5]
    (row,) = aggregate([swings, odd])
    assert (row.over_limit, row.late_over, row.late_evaluations) == (0, 2, 5)
    assert row.late_over_fraction == pytest.approx(0.4)
    assert "| 0/2 | 2/5 | 100 |" in markdown_table([row])


def test_eval_schedule_is_in_whole_epochs_and_ends_at_the_last_step():
    assert eval_schedule(100_000, 4096, 4) == [28672, 53248, 77824, 102400]
    assert eval_schedule(1000, 4096, 4) == [4096]
    assert eval_schedule(8192, 4096, 4) == [4096, 8192]


def _descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_sigterm_stops_the_grid_and_its_workers_at_once(tmp_path):
    """A SIGTERM reaches the grid's process alone, not its workers: they must be stopped, not
    waited for (a cell can run for hours, and an interrupted cell's result is dropped anyway)."""
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "cmdp", "benchmark", "--solvers", "PPO", "--envs", "GridWorld-v0"]
    cmd += ["--seeds", "0", "1", "--steps", "1e8", "--workers", "2", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        running = [tmp_path / "cells" / f"PPO_GridWorld-v0_{seed}" / "run" for seed in (0, 1)]
        while not all(r.exists() for r in running) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        workers = _descendants(proc.pid)
        assert workers
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)  # without stopping the workers: hours
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.kill()
        for worker in workers:  # never leave a failed run's workers training
            if _alive(worker):
                os.kill(worker, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "interrupted" in err and str(tmp_path) in err
    assert not [w for w in workers if _alive(w)]
