"""The command line and its config files: precedence, errors, train/eval/resume, envs, algos.

Unit tests run the CLI against a fake solver registry (a stand-in ``cmdp.algorithms`` module),
so they test the CLI alone and take milliseconds. ``test_end_to_end_with_the_real_package``
trains and evaluates a real PPO run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import cmdp
from cmdp import cli
from cmdp.config_files import load_config_file, merge_configs, parse_set_overrides, parse_value
from cmdp.errors import ConfigError, UnknownNameError
from cmdp.runlog import RunLogger, read_progress


# ---- a fake solver registry ---------------------------------------------------------------


class FakeLag:
    """A solver double with the real API: logs through RunLogger, saves, loads, evaluates."""

    name = "FakeLag"
    constrained = True
    OPTIONS = {"num_envs": 16, "progress_bar": True, "actor_lr": 3e-4, "hidden_sizes": [64, 64], "env_kwargs": {}}
    created: list["FakeLag"] = []

    class Config:
        @staticmethod
        def describe() -> str:
            return "\n".join(f"{k} = {v!r}: fake option" for k, v in FakeLag.OPTIONS.items())

    def __init__(self, env, cost_limit=None, seed=0, run_dir=None, **config):
        if env == "Crash-v0":
            raise RuntimeError("a bug, not a user error")
        if env != "FakeEnv-v0":
            cmdp.make(env)  # the real registry's error for an unknown id
        for key in config:
            if key not in self.OPTIONS:
                raise ConfigError(f"unknown FakeLag option {key!r}")
        if config.get("actor_lr", 1.0) <= 0:
            raise ConfigError(f"actor_lr must be > 0, got {config['actor_lr']}")
        self.env_id, self.cost_limit, self.seed = env, cost_limit, seed
        self.config = {**self.OPTIONS, **config}
        self._run_dir_arg = run_dir
        self.run_dir: Path | None = None
        self.global_step = 0
        self.env = types.SimpleNamespace(cost_names=("hazard", "wall"), close=lambda: None)
        self.evaluations: list[dict] = []
        FakeLag.created.append(self)

    def learn(self, total_steps: int) -> "FakeLag":
        if self.run_dir is None:
            self.run_dir = Path(self._run_dir_arg)
        config = {"algo": self.name, "env_id": self.env_id, "seed": self.seed, "cost_limit": self.cost_limit,
                  "config": self.config}
        resume = self.global_step or None
        with RunLogger(self.run_dir, config, tensorboard=False, progress_bar=self.config["progress_bar"],
                       total_steps=total_steps, resume_step=resume) as logger:
            while self.global_step < total_steps:
                self.global_step += 100
                logger.log(self.global_step, {"Metrics/EpRet": self.global_step / 100, "Multiplier/hazard": 0.1})
        self.save(self.run_dir / "checkpoint.pt")
        return self

    def save(self, path) -> Path:
        state = {"env_id": self.env_id, "cost_limit": self.cost_limit, "seed": self.seed, "config": self.config,
                 "global_step": self.global_step, "run_dir": str(self.run_dir)}
        Path(path).write_text(json.dumps(state))
        return Path(path)

    @classmethod
    def load(cls, path, env=None, **overrides) -> "FakeLag":
        state = json.loads(Path(path).read_text())
        algo = cls(state["env_id"], cost_limit=state["cost_limit"], seed=state["seed"], run_dir=state["run_dir"],
                   **(state["config"] | overrides))
        algo.global_step = state["global_step"]
        algo.loaded_with = overrides
        return algo

    def evaluate(self, episodes=10, seed=None, deterministic=False) -> dict[str, Any]:
        self.evaluations.append({"episodes": episodes, "seed": seed, "deterministic": deterministic})
        limit = self.cost_limit
        limits = None if limit is None else (list(limit) if isinstance(limit, list) else [limit])
        return {"ep_return": 10.5, "ep_return_std": 1.25, "ep_length": 50.0, "ep_cost": 6.0,
                "ep_costs": {"hazard": 4.0, "wall": 2.0}, "cost_limit": limits, "episodes": episodes,
                "success_rate": 0.75}


class FakePPO(FakeLag):
    """Unconstrained fake."""

    name = "FakePPO"
    constrained = False


@pytest.fixture
def fake_algos(monkeypatch):
    """Put a stand-in ``cmdp.algorithms`` (FakeLag, FakePPO) where the CLI imports it from."""
    module = types.ModuleType("cmdp.algorithms")
    module.ALGORITHMS = {"FakeLag": FakeLag, "FakePPO": FakePPO}

    def get_algorithm(name: str):
        for key, cls in module.ALGORITHMS.items():
            if key.lower() == name.lower():
                return cls
        raise UnknownNameError(f"unknown algorithm {name!r}. Available: {', '.join(module.ALGORITHMS)}")

    module.get_algorithm = get_algorithm
    monkeypatch.setitem(sys.modules, "cmdp.algorithms", module)
    FakeLag.created.clear()
    return module


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---- train ------------------------------------------------------------------------------


def test_train_writes_the_run_and_prints_the_table(fake_algos, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "--algo", "fakelag", "--env", "FakeEnv-v0", "--cost-limit", "5", "3",
                         "--total-steps", "300", "--run-dir", str(run_dir), "--eval-episodes", "4")
    assert code == 0, err
    algo = FakeLag.created[-1]
    assert algo.cost_limit == [5.0, 3.0] and algo.seed == 0
    assert {p.name for p in run_dir.iterdir()} == {"config.json", "progress.csv", "checkpoint.pt", "eval.json"}
    assert [r["step"] for r in read_progress(run_dir)] == [100, 200, 300]
    assert algo.evaluations == [{"episodes": 4, "seed": None, "deterministic": False}]
    lines = out.splitlines()
    assert lines[0] == "FakeLag on FakeEnv-v0, 4 episodes (sampled actions)"
    assert "EpRet          10.5 ± 1.25" in out
    assert "SuccessRate    75.0%" in out
    assert "EpCost         6  (sum over channels)" in out
    assert "  hazard       4  limit 5  ok" in out
    assert "  wall         2  limit 3  ok" in out
    assert "train steps/s" in out and f"run dir        {run_dir}" in out
    assert "progress" not in out and "300/300" in err  # progress goes to stderr
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["ep_costs"] == {"hazard": 4.0, "wall": 2.0} and saved["settings"]["deterministic"] is False


def test_flags_override_set_which_overrides_the_config_file(fake_algos, tmp_path, capsys):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('algo = "FakeLag"\nenv = "FakeEnv-v0"\nseed = 3\ncost_limit = 2.5\ntotal_steps = 200\n'
                   'actor_lr = 0.1\nnum_envs = 2\nhidden_sizes = [32, 32]\n[env_kwargs]\nobs_mode = "rgb"\nsize = 5\n')
    code, _, err = run(capsys, "train", "--config", str(cfg), "--set", "actor_lr=0.2", "env_kwargs.obs_mode=state",
                       "--num-envs", "4", "--seed", "9", "--run-dir", str(tmp_path / "r"), "--no-progress",
                       "--eval-episodes", "0")
    assert code == 0, err
    algo = FakeLag.created[-1]
    assert algo.seed == 9 and algo.cost_limit == 2.5 and algo.global_step == 200
    assert algo.config == {"num_envs": 4, "progress_bar": False, "actor_lr": 0.2, "hidden_sizes": [32, 32],
                           "env_kwargs": {"obs_mode": "state", "size": 5}}
    assert err.startswith("cmdp: training FakeLag") and "/200" not in err  # --no-progress
    assert not (tmp_path / "r" / "eval.json").exists()


def test_a_runs_config_json_is_a_valid_config_file(fake_algos, tmp_path, capsys):
    first = tmp_path / "first"
    assert run(capsys, "train", "--algo", "FakeLag", "--env", "FakeEnv-v0", "--cost-limit", "4",
               "--set", "actor_lr=0.01", "--total-steps", "100", "--run-dir", str(first))[0] == 0
    code, _, err = run(capsys, "train", "--config", str(first / "config.json"), "--seed", "1",
                       "--total-steps", "100", "--run-dir", str(tmp_path / "second"))
    assert code == 0, err
    algo = FakeLag.created[-1]
    assert (algo.env_id, algo.cost_limit, algo.seed, algo.config["actor_lr"]) == ("FakeEnv-v0", 4.0, 1, 0.01)


def test_default_run_dir_is_named_after_algo_env_and_seed(fake_algos, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "train", "--algo", "FakePPO", "--env", "FakeEnv-v0", "--total-steps", "100",
                       "--seed", "2", "--no-progress")
    assert code == 0, err
    (made,) = (tmp_path / "runs").iterdir()
    assert made.name.startswith("FakePPO-FakeEnv-v0-s2-") and (made / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--algo", "NoSuchAlgo", "--env", "FakeEnv-v0"], "unknown algorithm 'NoSuchAlgo'"),
        (["--algo", "FakeLag", "--env", "NoSuchEnv-v0"], "unknown env id 'NoSuchEnv-v0'"),
        (["--algo", "FakeLag", "--env", "FakeEnv-v0", "--set", "actor_lr=-1"], "actor_lr must be > 0"),
        (["--algo", "FakeLag", "--env", "FakeEnv-v0", "--set", "no_such_option=1"], "unknown FakeLag option"),
        (["--algo", "FakeLag", "--env", "FakeEnv-v0", "--set", "actor_lr"], "expected key=value"),
        (["--algo", "FakeLag", "--env", "FakeEnv-v0", "--set", "hidden_sizes=[64,"], "looks like a list"),
        (["--algo", "FakeLag", "--env", "FakeEnv-v0", "--config", "exp.ini"], "unknown extension '.ini'"),
        (["--algo", "FakeLag", "--env", "FakeEnv-v0", "--set", "seed=-1"], "seed must be an integer >= 0"),
        (["--env", "FakeEnv-v0"], "train needs --algo"),
    ],
)
def test_user_errors_exit_2_with_a_message_and_no_traceback(fake_algos, tmp_path, capsys, argv, message):
    code, out, err = run(capsys, "train", "--total-steps", "100", "--run-dir", str(tmp_path / "r"), *argv)
    assert code == 2
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "r").exists()  # nothing created for a run that never started


def test_bugs_propagate_with_their_traceback(fake_algos, tmp_path):
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["train", "--algo", "FakeLag", "--env", "Crash-v0", "--total-steps", "100"])


def test_argparse_errors_return_2(capsys):
    code, _, err = run(capsys, "train", "--total-steps", "many")
    assert code == 2 and "not a whole number" in err
    assert run(capsys)[0] == 2  # no subcommand: help on stderr
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"cmdp {cmdp.__version__}"


def test_total_steps_accepts_scientific_notation(fake_algos, tmp_path, capsys):
    assert run(capsys, "train", "--algo", "FakePPO", "--env", "FakeEnv-v0", "--total-steps", "3e2",
               "--run-dir", str(tmp_path), "--no-progress")[0] == 0
    assert FakeLag.created[-1].global_step == 300


# ---- resume -----------------------------------------------------------------------------


def test_resume_continues_the_run_without_duplicated_steps(fake_algos, tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert run(capsys, "train", "--algo", "FakeLag", "--env", "FakeEnv-v0", "--cost-limit", "1",
               "--total-steps", "300", "--run-dir", str(run_dir), "--no-progress")[0] == 0
    with open(run_dir / "progress.csv", "a") as f:  # an epoch logged after the last checkpoint
        f.write("400,4.0,0.1\n")
    code, out, err = run(capsys, "train", "--resume", str(run_dir), "--total-steps", "500", "--no-progress")
    assert code == 0, err
    assert "resuming FakeLag from step 300 to 500" in err
    assert [r["step"] for r in read_progress(run_dir)] == [100, 200, 300, 400, 500]
    assert FakeLag.created[-1].loaded_with == {"progress_bar": False}
    code, _, err = run(capsys, "train", "--resume", str(run_dir), "--total-steps", "500")
    assert code == 2 and "already at step 500" in err
    code, _, err = run(capsys, "train", "--resume", str(run_dir), "--total-steps", "900", "--algo", "FakePPO")
    assert code == 2 and "drop --algo" in err


# ---- eval -------------------------------------------------------------------------------


def test_eval_loads_the_checkpoint_and_writes_eval_json(fake_algos, tmp_path, capsys):
    run_dir = tmp_path / "r"
    run(capsys, "train", "--algo", "FakeLag", "--env", "FakeEnv-v0", "--cost-limit", "3", "--total-steps", "100",
        "--run-dir", str(run_dir), "--eval-episodes", "0", "--no-progress")
    code, out, err = run(capsys, "eval", str(run_dir), "--episodes", "7", "--seed", "11", "--deterministic")
    assert code == 0, err
    assert FakeLag.created[-1].evaluations == [{"episodes": 7, "seed": 11, "deterministic": True}]
    assert out.startswith("FakeLag on FakeEnv-v0, 7 episodes (greedy actions)")
    assert "limit 3  over by 1" in out  # hazard: 4 > 3 (the one limit applies to each channel)
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["settings"] == {
        "checkpoint": str(run_dir / "checkpoint.pt"), "seed": 11, "deterministic": True, "shield_threshold": 0.0,
    }  # fmt: skip
    # a checkpoint file works as well as its directory
    assert run(capsys, "eval", str(run_dir / "checkpoint.pt"), "--episodes", "1")[0] == 0


def test_eval_errors(fake_algos, tmp_path, capsys):
    code, _, err = run(capsys, "eval", str(tmp_path / "missing"))
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "eval", str(tmp_path))
    assert code == 2 and "no checkpoint at" in err
    code, _, err = run(capsys, "eval", str(tmp_path), "--episodes", "0")
    assert code == 2 and "--episodes must be at least 1" in err


# ---- envs, algos ------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    env_id: str
    factory: Any
    description: str = ""


def test_envs_lists_ids_cost_channels_and_descriptions(monkeypatch, capsys):
    from cmdp.core import registry

    built = []

    def grid(num_envs, seed):
        built.append(num_envs)
        return types.SimpleNamespace(cost_names=("hazard", "wall"), close=lambda: None)

    def broken(num_envs, seed):
        raise OSError("assets missing")

    specs = [Spec("Grid-v0", grid, "A small grid.\nMore text."), Spec("Broken-v0", broken, "Needs assets.")]
    monkeypatch.setattr(registry, "builtin_specs", lambda: specs)
    monkeypatch.setattr(registry, "safety_gymnasium_available", lambda: False)
    code, out, _ = run(capsys, "envs")
    assert code == 0 and built == [1]
    lines = out.splitlines()
    assert lines[0] == "Built-in environments:"
    assert lines[1].split() == ["ID", "COST", "CHANNELS", "DESCRIPTION"]
    assert lines[2].split() == ["Grid-v0", "hazard,", "wall", "A", "small", "grid."]
    assert "Broken-v0" in lines[3] and "(cannot build: OSError: assets missing)" in lines[3]
    assert "Any gymnasium id works too" in out and "safety-gymnasium is not installed" in out
    monkeypatch.setattr(registry, "safety_gymnasium_available", lambda: True)
    assert "safety-gymnasium is installed" in run(capsys, "envs")[1]


def test_envs_with_the_real_registry(capsys):
    code, out, _ = run(capsys, "envs")
    assert code == 0 and "Any gymnasium id works too" in out


def test_algos_lists_solvers_and_shows_options(fake_algos, capsys):
    code, out, _ = run(capsys, "algos")
    assert code == 0
    assert "FakeLag  constrained    A solver double" in out and "FakePPO  unconstrained  Unconstrained fake." in out
    code, out, _ = run(capsys, "algos", "fakelag")
    assert code == 0 and "actor_lr = 0.0003: fake option" in out
    code, _, err = run(capsys, "algos", "nope")
    assert code == 2 and "unknown algorithm 'nope'" in err


def test_python_dash_m_cmdp_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "cmdp", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"cmdp {cmdp.__version__}"


def test_adding_a_subcommand_is_one_function(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))

    @cli.command("hello", "Say hello.", cli.arg("--name", default="world"))
    def hello(args):
        print(f"hello {args.name}")
        return 0

    assert run(capsys, "hello", "--name", "cmdp") == (0, "hello cmdp\n", "")


# ---- result table -----------------------------------------------------------------------


def test_result_table_single_channel_and_not_evaluated():
    table = cli.format_result({"ep_return": 1.0, "ep_cost": 7.0, "ep_costs": {"unsafe": 7.0}, "cost_limit": [5.0],
                               "episodes": 3}, title="PPOLag on X")
    assert table.splitlines() == [
        "PPOLag on X, 3 episodes (sampled actions)",
        "  EpRet            1",
        "  EpCost [unsafe]  7  limit 5  over by 2",
    ]
    assert cli.format_result(None, title="PPO on X", run_dir="runs/a").splitlines() == [
        "PPO on X: not evaluated (--eval-episodes 0)",
        "  run dir  runs/a",
    ]


# ---- config files and --set ---------------------------------------------------------------


def test_toml_yaml_and_json_files_load_to_the_same_dict(tmp_path):
    expected = {"actor_lr": 0.0003, "hidden_sizes": [64, 64], "target_kl": None, "normalize_obs": True,
                "env_kwargs": {"obs_mode": "state"}}
    (tmp_path / "a.yaml").write_text(
        "actor_lr: 3e-4   # a float, as in YAML 1.2\nhidden_sizes: [64, 64]\ntarget_kl: null\n"
        "normalize_obs: true\nenv_kwargs:\n  obs_mode: state\n"
    )
    (tmp_path / "a.json").write_text(json.dumps(expected))
    (tmp_path / "a.TOML").write_text(
        'actor_lr = 3e-4\nhidden_sizes = [64, 64]\nnormalize_obs = true\n[env_kwargs]\nobs_mode = "state"\n'
    )
    assert load_config_file(tmp_path / "a.yaml") == expected
    assert load_config_file(tmp_path / "a.json") == expected
    assert load_config_file(tmp_path / "a.TOML") == {k: v for k, v in expected.items() if k != "target_kl"}
    (tmp_path / "empty.yml").write_text("# nothing yet\n")
    assert load_config_file(tmp_path / "empty.yml") == {}


def test_unsafe_yaml_tags_are_rejected(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f'seed: 1\nx: !!python/object/apply:os.system ["touch {marker}"]\n')
    tag = "tag:yaml.org,2002:python/object/apply:os.system"
    with pytest.raises(ConfigError, match=rf"evil.yaml, line 2.*tag '{tag}' is not allowed"):
        load_config_file(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.toml", "a = 1\nb = \n", r"cannot parse TOML file .*bad.toml: .*line 2"),
        ("bad.yaml", "a: [1, 2\nb: 3\n", r"cannot parse YAML file .*bad.yaml, line 2"),
        ("bad.json", '{"a": 1,\n}', r"cannot parse JSON file .*bad.json, line 2"),
        ("list.yaml", "- 1\n- 2\n", "top level must be a mapping .* got a list"),
        ("keys.yaml", "1: a\n", "key 1 must be a string"),
        ("exp.ini", "[a]\n", r"unknown extension '.ini'; use one of .toml, .yaml, .yml, .json"),
        ("noext", "a = 1\n", r"unknown extension '\(none\)'"),
    ],
)
def test_config_file_errors_name_the_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config_file(tmp_path / name)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "nope.toml")


def test_set_values_are_parsed_as_literals_without_eval():
    assert parse_set_overrides(
        ["num_envs=4", "total=1_000", "lr=3e-4", "gamma=.99", "flag=true", "off=False", "kl=null",
         "sizes=[64,64]", "pair=(1, 2)", "names=['a', 'b']", "act=tanh", 'text="a b"', "limit=inf",
         "env_kwargs.obs_mode=state", "env_kwargs.size=5", "eq=a=b"]
    ) == {"num_envs": 4, "total": 1000, "lr": 3e-4, "gamma": 0.99, "flag": True, "off": False, "kl": None,
          "sizes": [64, 64], "pair": [1, 2], "names": ["a", "b"], "act": "tanh", "text": "a b",
          "limit": float("inf"), "env_kwargs": {"obs_mode": "state", "size": 5}, "eq": "a=b"}
    assert parse_value("__import__('os').system('true')") == "__import__('os').system('true')"  # a plain string
    assert parse_set_overrides(["a=1", "a=2"]) == {"a": 2}


@pytest.mark.parametrize(
    "item, message",
    [("lr", "expected key=value"), ("=1", "is not an option name"), ("a b=1", "is not an option name"),
     ("lr=", "empty value"), ("sizes=[64,", "looks like a list"), ("s={1: 2", "looks like a mapping"),
     ("x=(1, 2", "looks like a tuple"), ("f=[__import__('os')]", "looks like a list")],
)
def test_malformed_set_items_name_the_item(item, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_set_overrides([item])
    assert repr(item) in str(info.value)


def test_merge_configs_merges_nested_tables():
    base = {"a": 1, "env_kwargs": {"x": 1, "y": 2}}
    assert merge_configs(base, {"env_kwargs": {"y": 3}, "b": 2}) == {"a": 1, "env_kwargs": {"x": 1, "y": 3}, "b": 2}
    assert base == {"a": 1, "env_kwargs": {"x": 1, "y": 2}}


# ---- the real package ---------------------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_with_the_real_package(tmp_path, capsys):
    run_dir = tmp_path / "ppo"
    code, out, err = run(capsys, "train", "--algo", "PPO", "--env", "GridWorld-v0", "--total-steps", "2048",
                         "--set", "steps_per_epoch=1024", "minibatch_size=256", "--num-envs", "4",
                         "--eval-episodes", "3", "--run-dir", str(run_dir), "--no-progress")
    assert code == 0, err
    assert out.startswith("PPO on GridWorld-v0, 3 episodes") and "EpRet" in out
    for name in ("config.json", "progress.csv", "checkpoint.pt", "eval.json"):
        assert (run_dir / name).exists(), name
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert [r["step"] for r in read_progress(run_dir)] == [1024, 2048]
    assert json.loads((run_dir / "config.json").read_text())["algo"] == "PPO"

    code, out, err = run(capsys, "eval", str(run_dir), "--episodes", "2", "--seed", "5")
    assert code == 0, err
    assert out.startswith("PPO on GridWorld-v0, 2 episodes")
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["episodes"] == 2 and result["settings"]["seed"] == 5


def test_sigterm_interrupts_training_like_ctrl_c(tmp_path):
    """A scheduler's SIGTERM takes the Ctrl-C path: exit 130 with a resume hint, not a silent death."""
    import signal
    import time

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "cmdp", "train", "--algo", "PPO", "--env", "GridWorld-v0"]
    cmd += ["--total-steps", "100000000", "--run-dir", str(run_dir), "--no-progress", "--set", "checkpoint_every=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "cmdp: interrupted at step" in err and f"cmdp train --resume {run_dir}" in err
